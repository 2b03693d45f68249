"""In-process steering: `with steer(model, vector): ...` adds the vector to decoder-block outputs by forward hooks.

Nothing in the model is modified: the hooks return a new output tensor, and they are removed when the block exits,
also after an exception. The addition happens at every position, prompt and generated tokens alike, which is what a
bias on each block's MLP `down_proj` does in a baked checkpoint (see `bake.py`) and what llama.cpp's control vectors do.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..errors import AutoskillError
from ..capture.fingerprint import fingerprint
from ..capture.models import decoder_blocks
from .vector import SteeringVector


@contextmanager
def steer(model: nn.Module, vector: SteeringVector, *, check_model: bool = True) -> Iterator[nn.Module]:
    """Steer `model` (a transformers decoder, with or without its LM head) inside the block.

    Refuses a model whose fingerprint differs from the vector's unless `check_model=False`. The hooks act on every
    forward of the model while the block is open, from any thread (as the model's own parameters would). They run
    after hooks registered before them: transformers records `output_hidden_states` by hooks it adds on the first
    forward that asks, so if that forward came before this block, the hidden states it returns for a steered block
    lack the vector (later blocks and the logits are steered).
    """
    blocks = decoder_blocks(model)
    if check_model:
        vector.check_model(fingerprint(model, ""), what=f"the {type(model).__name__} being steered")
    if max(vector.chunks) >= len(blocks):
        raise AutoskillError(f"the steering vector steers block {max(vector.chunks)} but the model has {len(blocks)}")
    handles = []
    try:
        for layer, chunk in vector.chunks.items():
            block = blocks[layer]
            param = next(block.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            dtype = param.dtype if param is not None else torch.float32
            handles.append(block.register_forward_hook(_add_hook(chunk.to(device=device, dtype=dtype))))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _add_hook(chunk_h: torch.Tensor):
    def hook(_module, _args, output):
        # transformers 5 decoder blocks return the hidden states; older versions a tuple whose first item they are.
        hidden = output[0] if isinstance(output, tuple) else output  # [B, S, H]
        delta = chunk_h if chunk_h.dtype == hidden.dtype and chunk_h.device == hidden.device \
            else chunk_h.to(device=hidden.device, dtype=hidden.dtype)
        steered = hidden + delta
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook
