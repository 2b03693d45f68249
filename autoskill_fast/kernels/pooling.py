"""Weighted pooling of hidden states into one fp32 vector per example, minus an optional shift.

    out[b, :] = sum_s weights[b, s] * float32(hidden[b, s, :]) - shift

One op, four parts: `_masked_pool_kernel` (Triton), its launcher `masked_pool_triton`, the plain-torch reference
`masked_pool_ref` (also the CPU path and the fallback), and the public `masked_pool`, which dispatches. The weights
encode the pooling: mean pooling passes 1/n_valid on valid tokens and 0 elsewhere, response-only mean the same on the
response span, last-token pooling a one-hot.

A position whose weight is exactly 0 contributes exactly nothing, even when the hidden state there is NaN or Inf
(padding garbage): both paths select, they never multiply by zero.
"""

from __future__ import annotations

import functools

import torch

from .dispatch import interpreting, on_tensor_device, tl, triton, use_triton

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_SPLITS = 64


@triton.jit
def _masked_pool_kernel(
    hidden_ptr,  # [B, S, H] (or packed [T, H] when VARLEN) fp32 / bf16 / fp16, any strides
    weights_ptr,  # [B, S] (or [T] when VARLEN) fp32
    cu_seqlens_ptr,  # [B + 1] int32 / int64, only read when VARLEN
    shift_ptr,  # [H] fp32, only read when HAS_SHIFT
    out_ptr,  # [B, H] fp32 (any strides), or [num_splits, B, H] fp32 partial sums when num_splits > 1
    S,
    H,
    stride_hb,
    stride_hs,
    stride_hh,
    stride_wb,
    stride_ws,
    stride_shift,
    stride_osplit,
    stride_ob,
    stride_oh,
    num_splits,  # a runtime value (it varies with the batch size): one compiled kernel serves every split count
    VARLEN: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # Grid: (row b, block of BLOCK_H features, split of the sequence). Split k reads the sequence blocks k,
    # k + num_splits, ... so short and long rows spread their work the same way and no sequence length is needed
    # on the host (varlen lengths stay on the device; the launcher's caller checked that they stay within T).
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2).to(tl.int64)
    mask_h = offs_h < H
    if VARLEN:
        start = tl.load(cu_seqlens_ptr + b).to(tl.int64)
        seqlen = tl.load(cu_seqlens_ptr + b + 1).to(tl.int64) - start
        hidden_row = hidden_ptr + start * stride_hs
        weights_row = weights_ptr + start * stride_ws
    else:
        seqlen = S
        hidden_row = hidden_ptr + b * stride_hb
        weights_row = weights_ptr + b * stride_wb

    # A 2-D fp32 accumulator, reduced once at the end: each lane sums only seqlen / BLOCK_S terms, which keeps the
    # fp32 rounding error of long sequences small.
    acc = tl.zeros((BLOCK_S, BLOCK_H), dtype=tl.float32)
    for s0 in range(split * BLOCK_S, seqlen, num_splits * BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        w = tl.load(weights_row + offs_s * stride_ws, mask=offs_s < seqlen, other=0.0)
        keep = w != 0.0
        # Rows with weight 0 are not even read (padding costs no bandwidth); the select below is what guarantees
        # that NaN/Inf there cannot leak in (0 * NaN would be NaN).
        x = tl.load(hidden_row + offs_s[:, None] * stride_hs + offs_h[None, :] * stride_hh,
                    mask=keep[:, None] & mask_h[None, :], other=0.0)
        acc += tl.where(keep[:, None], w[:, None] * x.to(tl.float32), 0.0)
    pooled = tl.sum(acc, axis=0)
    if HAS_SHIFT:
        pooled -= tl.load(shift_ptr + offs_h * stride_shift, mask=mask_h, other=0.0)
    tl.store(out_ptr + split * stride_osplit + b * stride_ob + offs_h * stride_oh, pooled, mask=mask_h)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _default_blocks() -> tuple[int, int, int]:
    """(BLOCK_S, BLOCK_H, num_warps). The interpreter prefers big blocks (fewer Python-level programs)."""
    if interpreting():
        return 32, 64, 1
    return 32, 128, 4


def masked_pool_triton(hidden: torch.Tensor, weights: torch.Tensor, out: torch.Tensor,
                       shift: torch.Tensor | None = None, *, cu_seqlens: torch.Tensor | None = None,
                       num_splits: int | None = None, block_s: int | None = None,
                       block_h: int | None = None) -> torch.Tensor:
    """Launch `_masked_pool_kernel` (arguments as in `masked_pool`; no validation here).

    num_splits: programs per (row, feature block) along the sequence; None picks enough to fill the GPU when the
    batch is small and the sequences long. Above 1, partial sums go to an fp32 workspace [splits, B, H] that torch
    reduces (deterministic: no atomics).
    """
    default_s, default_h, num_warps = _default_blocks()
    block_s = block_s or default_s
    block_h = block_h or default_h
    varlen = cu_seqlens is not None
    if varlen:
        n_rows, seq_len = cu_seqlens.shape[0] - 1, hidden.shape[0]
        stride_hb, stride_hs, stride_hh = 0, hidden.stride(0), hidden.stride(1)
        stride_wb, stride_ws = 0, weights.stride(0)
        mean_len = triton.cdiv(seq_len, max(n_rows, 1))
    else:
        n_rows, seq_len = hidden.shape[0], hidden.shape[1]
        stride_hb, stride_hs, stride_hh = hidden.stride()
        stride_wb, stride_ws = weights.stride()
        mean_len = seq_len
    H = hidden.shape[-1]
    if n_rows == 0 or H == 0:
        return out
    n_hblocks = triton.cdiv(H, block_h)
    if num_splits is None:
        num_splits = 1
        if hidden.is_cuda:  # aim for ~4 programs per SM
            target = 4 * _sm_count(hidden.device.index or 0)
            num_splits = max(1, min(triton.cdiv(target, n_rows * n_hblocks), triton.cdiv(mean_len, block_s), MAX_SPLITS))
    dummy = weights  # never read: stands in for absent pointer arguments
    if num_splits == 1:
        dest, stride_osplit, stride_ob, stride_oh = out, 0, out.stride(0), out.stride(1)
    else:
        dest = torch.empty(num_splits, n_rows, H, dtype=torch.float32, device=out.device)
        stride_osplit, stride_ob, stride_oh = dest.stride()
    with on_tensor_device(hidden):
        _masked_pool_kernel[(n_rows, n_hblocks, num_splits)](
            hidden, weights, cu_seqlens if varlen else dummy,
            shift if (shift is not None and num_splits == 1) else dummy, dest,
            seq_len, H,
            stride_hb, stride_hs, stride_hh,
            stride_wb, stride_ws,
            shift.stride(0) if shift is not None else 0,
            stride_osplit, stride_ob, stride_oh,
            num_splits,
            VARLEN=varlen, HAS_SHIFT=shift is not None and num_splits == 1,
            BLOCK_S=block_s, BLOCK_H=block_h, num_warps=num_warps,
        )
    if num_splits > 1:
        out.copy_(dest.sum(dim=0))
        if shift is not None:
            out.sub_(shift)
    return out


def masked_pool_ref(hidden: torch.Tensor, weights: torch.Tensor, out: torch.Tensor,
                    shift: torch.Tensor | None = None, *, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch `masked_pool`: fp32 math, a select (not a product) to drop weight-0 positions."""
    keep = weights != 0
    if out.shape[0] == 0:
        return out
    if cu_seqlens is None:
        x_bsh = hidden.float().masked_fill(~keep[..., None], 0.0)
        pooled = torch.bmm(weights.float()[:, None, :], x_bsh).squeeze(1)
    else:
        n_rows, n_tokens = cu_seqlens.shape[0] - 1, hidden.shape[0]
        # Row of each token (cu_seqlens[b] <= t < cu_seqlens[b + 1]); tokens outside every row are dropped.
        positions = torch.arange(n_tokens, device=hidden.device, dtype=cu_seqlens.dtype)
        row_t = torch.searchsorted(cu_seqlens, positions, right=True) - 1
        keep = keep & (row_t >= 0) & (row_t < n_rows)
        x_th = hidden.float().masked_fill(~keep[:, None], 0.0) * weights.float().masked_fill(~keep, 0.0)[:, None]
        pooled = torch.zeros(n_rows, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        pooled.index_add_(0, row_t.clamp(0, n_rows - 1), x_th)
    if shift is not None:
        pooled -= shift.float()
    return out.copy_(pooled)


def _check_pool_args(hidden, weights, out, shift, cu_seqlens) -> None:
    if not hidden.is_floating_point():
        raise TypeError(f"masked_pool: hidden must be a float tensor, got {hidden.dtype}")
    if cu_seqlens is None:
        if hidden.ndim != 3:
            raise ValueError(f"masked_pool: hidden must be [B, S, H] (or [T, H] with cu_seqlens), got "
                             f"{tuple(hidden.shape)}")
        n_rows = hidden.shape[0]
        if weights.shape != hidden.shape[:2]:
            raise ValueError(f"masked_pool: weights must be [B, S] = {tuple(hidden.shape[:2])}, got "
                             f"{tuple(weights.shape)}")
    else:
        if hidden.ndim != 2:
            raise ValueError(f"masked_pool: with cu_seqlens, hidden must be packed [T, H], got {tuple(hidden.shape)}")
        if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"masked_pool: cu_seqlens must be a 1-D int32/int64 tensor [B + 1], got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        n_rows = cu_seqlens.shape[0] - 1
        # The kernel reads tokens cu_seqlens[b]:cu_seqlens[b + 1] unmasked by T: an offset past the packed tokens would
        # read another allocation. Checked here (one small device-to-host copy; the package's hooks pass no cu_seqlens).
        bounds = cu_seqlens.cpu()
        if bounds[0] < 0 or bounds[-1] > hidden.shape[0] or (bounds[1:] < bounds[:-1]).any():
            raise ValueError(f"masked_pool: cu_seqlens must rise from >= 0 to at most T = {hidden.shape[0]} packed "
                             f"tokens, got {bounds.tolist()[:8]}{' ...' if bounds.numel() > 8 else ''}")
        if weights.shape != hidden.shape[:1]:
            raise ValueError(f"masked_pool: with cu_seqlens, weights must be [T] = ({hidden.shape[0]},), got "
                             f"{tuple(weights.shape)}")
    if weights.dtype != torch.float32:
        raise TypeError(f"masked_pool: weights must be float32, got {weights.dtype}")
    if out.dtype != torch.float32 or out.shape != (n_rows, hidden.shape[-1]):
        raise ValueError(f"masked_pool: out must be float32 [B, H] = ({n_rows}, {hidden.shape[-1]}), got "
                         f"{out.dtype} {tuple(out.shape)}")
    if shift is not None and (shift.dtype != torch.float32 or shift.shape != (hidden.shape[-1],)):
        raise ValueError(f"masked_pool: shift must be float32 [H] = ({hidden.shape[-1]},), got {shift.dtype} "
                         f"{tuple(shift.shape)}")
    others = [t for t in (weights, out, shift, cu_seqlens) if t is not None]
    if any(t.device != hidden.device for t in others):
        raise ValueError(f"masked_pool: all tensors must be on hidden's device {hidden.device}, got "
                         f"{[str(t.device) for t in others]}")


def masked_pool(hidden: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, shift: torch.Tensor | None = None,
                *, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, :] = sum_s weights[b, s] * float32(hidden[b, s, :]) - shift, accumulated in fp32; written in place.

    hidden: [B, S, H] fp32 / bf16 / fp16 (any strides; a contiguous last dim is fastest), or packed [T, H] with
        cu_seqlens [B + 1] int32 / int64 (row b is tokens cu_seqlens[b]:cu_seqlens[b + 1]) and weights [T].
    weights: [B, S] (or [T]) fp32; a position with weight exactly 0 contributes nothing, even if hidden is NaN there.
    out: [B, H] fp32, may be a strided view (e.g. the column slice ``staging[:, j*H:(j+1)*H]`` of a [B, L*H] buffer).
    shift: [H] fp32 or None, subtracted in fp32.
    Returns out.
    """
    _check_pool_args(hidden, weights, out, shift, cu_seqlens)
    tensors = [t for t in (hidden, weights, out, shift, cu_seqlens) if t is not None]
    if hidden.dtype in KERNEL_DTYPES and use_triton(*tensors):
        return masked_pool_triton(hidden, weights, out, shift, cu_seqlens=cu_seqlens)
    return masked_pool_ref(hidden, weights, out, shift, cu_seqlens=cu_seqlens)
