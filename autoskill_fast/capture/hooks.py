"""The capture hooks: decoder-block outputs -> pooled rows in a staging buffer, during the forward pass.

`PooledCapture` is a context manager that hooks the chosen decoder blocks. For each batch it is given the per-token
pooling weights, and each hooked block pools its own output straight into its slice of a [B, D] fp32 staging buffer
(shifted by the pilot mean). The forward pass stops right after the last needed block: no later block, final norm or
LM head runs. Hidden states are never collected (`output_hidden_states` is not used). The hooks act only on the
forwards of the thread that calls the capture: another thread may run the same model meanwhile, untouched.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ..data.batching import Batch
from ..kernels import masked_pool
from .layout import FeatureLayout
from .models import decoder_blocks


class _StopForward(Exception):
    """Raised by the last needed block's hook to end the forward pass early."""


class PooledCapture:
    """Hooks on `blocks[layer_ids]` that write pooled, scaled, shifted rows for one batch at a time."""

    def __init__(self, model: nn.Module, layout: FeatureLayout, *, layer_scaling: str = "none"):
        blocks = decoder_blocks(model)
        for layer in layout.layer_ids:
            if not 0 <= layer < len(blocks):
                raise ValueError(f"layer {layer} out of range for a model with {len(blocks)} blocks")
        self.model = model
        self.blocks = blocks
        self.layout = layout
        self.layer_scaling = layer_scaling
        self.device = next(model.parameters()).device
        self.shift: torch.Tensor | None = None  # [D] fp32; None = raw rows
        self.layer_scale: torch.Tensor | None = None  # [L] fp32 constant per-layer factors ("pilot" scaling)
        self._handles: list = []
        self._last_layer = max(layout.layer_ids)
        self._weights: torch.Tensor | None = None
        self._staging: torch.Tensor | None = None
        self._thread: int | None = None  # the thread whose forward is being captured

    def __enter__(self) -> "PooledCapture":
        for position, layer in enumerate(self.layout.layer_ids):
            self._handles.append(self.blocks[layer].register_forward_hook(self._make_hook(position, layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, position: int, layer: int):
        columns = self.layout.layer_slice(position)

        def hook(_module, _args, output):
            if threading.get_ident() != self._thread:
                return None  # another thread's forward of the same model
            hidden = output[0] if isinstance(output, tuple) else output  # [B, S, H]
            out = self._staging[:, columns]  # a strided view: the kernel writes in place
            weights = self._weights
            if self.layer_scale is not None:
                # A constant scale folds into the weights: sum_s (c w_s) h_s = c * pooled.
                weights = weights * self.layer_scale[position]
            shift = None if self.shift is None or self.layer_scaling == "l2" else self.shift[columns]
            masked_pool(hidden, weights, out, shift)
            if self.layer_scaling == "l2":
                out.div_(out.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny))
                if self.shift is not None:
                    out.sub_(self.shift[columns])
            if layer == self._last_layer:
                raise _StopForward

        return hook

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> torch.Tensor:
        """Run the model on one batch; return its [B, D] fp32 rows (minus the shift, if one is set)."""
        if not self._handles:
            raise RuntimeError("PooledCapture must be entered (`with capture:`) before use")
        size = len(batch)
        self._staging = torch.empty(size, self.layout.feature_dim, dtype=torch.float32, device=self.device)
        self._weights = batch.weights.to(self.device, non_blocking=True)
        self._thread = threading.get_ident()
        try:
            self.model(
                input_ids=batch.input_ids.to(self.device, non_blocking=True),
                attention_mask=batch.attention_mask.to(self.device, non_blocking=True),
                position_ids=batch.position_ids.to(self.device, non_blocking=True),
                use_cache=False,
            )
        except _StopForward:
            pass
        else:
            raise RuntimeError("the forward pass ended without reaching the last hooked block")
        finally:
            self._thread = None
        rows, self._staging = self._staging, None
        return rows
