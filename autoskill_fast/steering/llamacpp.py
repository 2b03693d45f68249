"""Export a steering vector as a llama.cpp control-vector GGUF (`llama-cli --control-vector FILE`).

What llama.cpp reads (checked in its source):
- `common_control_vector_load_one` (common/common.cpp) takes every 1-D F32 tensor named `direction.N`, rejects N = 0,
  and stores it at offset `(N - 1) * n_embd` of a buffer that starts at layer 1; metadata keys are not read.
- `llama_adapter_cvec::apply` (src/llama-adapter.cpp) fills `tensors[il]` from offset `(il - 1) * n_embd`, so
  `direction.N` lands in `tensors[N]`, and each model graph calls `build_cvec(cur, il)` on the block output (`l_out`)
  of layer `il`, counted from 0. So `direction.N` is added to the output of decoder block N, the same block index as
  in transformers, at every position; the output of block 0 cannot be steered.
We write `direction.1 .. direction.{max layer}` contiguously (zeros for blocks left alone, so readers that stop at the
first gap see every one), plus the keys llama.cpp's own `cvector-generator` writes: `general.architecture =
controlvector`, `controlvector.model_hint` (the llama.cpp architecture name) and `controlvector.layer_count` (the
number of direction tensors). The vector's scale is in the data: load it with strength 1 (`--control-vector`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..artifacts import atomic_file
from ..errors import AutoskillError
from .vector import SteeringVector

# transformers model_type -> llama.cpp architecture name (llama.cpp converts Mistral checkpoints to "llama").
_LLAMACPP_ARCH = {"mistral": "llama"}


def export_llamacpp(vector: SteeringVector, path: str | Path) -> Path:
    """Write `path` (a .gguf file) with one `direction.N` tensor per block 1 .. max(vector.layer_ids)."""
    try:
        import gguf
    except ImportError:
        raise AutoskillError("--format llamacpp needs the package gguf: pip install gguf") from None
    path = Path(path)
    last = max(vector.layer_ids)
    block0 = vector.chunks.get(0)
    if block0 is not None and bool(block0.abs().max() > 0):
        others = [layer for layer in vector.layer_ids if layer > 0]
        hint = f", e.g. --layers {','.join(map(str, others))}" if others else ""
        raise AutoskillError(f"llama.cpp cannot steer the output of block 0 (it rejects direction.0): leave block 0 "
                             f"out with --layers{hint}")
    if last == 0:
        raise AutoskillError("the steering vector only touches block 0, which llama.cpp cannot steer")
    model_type = vector.model.get("model_type") or "llama"
    with atomic_file(path) as tmp:
        _write_gguf(gguf, vector, tmp, last, _LLAMACPP_ARCH.get(model_type, model_type))
    return path


def _write_gguf(gguf, vector: SteeringVector, tmp: Path, last: int, model_hint: str) -> None:
    writer = gguf.GGUFWriter(str(tmp), arch="controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_int32("controlvector.layer_count", last)
    writer.add_string("autoskill.steering", json.dumps({"model": vector.model, "terms": vector.terms}))
    zeros = np.zeros(vector.hidden_size, dtype=np.float32)
    for layer in range(1, last + 1):
        chunk = vector.chunks.get(layer)
        writer.add_tensor(f"direction.{layer}", zeros if chunk is None else chunk.numpy().astype(np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def read_llamacpp(path: str | Path) -> tuple[dict[str, object], dict[int, np.ndarray]]:
    """(metadata, {block: direction}) of a control-vector GGUF, read back with gguf.GGUFReader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, object] = {}
    for name, kv in reader.fields.items():
        if name.startswith(("general.", "controlvector.", "autoskill.")):
            meta[name] = kv.contents()
    directions = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix == "direction":
            directions[int(index)] = np.asarray(tensor.data, dtype=np.float32).reshape(-1).copy()
    return meta, directions
