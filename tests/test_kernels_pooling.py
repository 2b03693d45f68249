"""masked_pool and the dispatch rules: Triton kernel (interpreted on CPU) and torch reference, each
compared with fp64 math on fresh random inputs over awkward shapes, masks, dtypes and strided layouts."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from autoskill_fast.kernels import TOLERANCES, dispatch, masked_pool, masked_pool_triton, pooling
from autoskill_fast.kernels.dispatch import DISABLE_ENV, FORCE_ENV
from kernel_testing import DEVICE, DTYPES, needs_triton

MASKS = ["all_valid", "empty_row", "left_pad", "right_pad", "random"]




def make_weights(kind: str, B: int, S: int, gen: torch.Generator) -> torch.Tensor:
    """[B, S] fp32 pooling weights: 1/n_valid on valid positions (random values for `random`), exactly 0 elsewhere."""
    lengths = torch.randint(0, S + 1, (B,), generator=gen)
    pos = torch.arange(S)
    if kind == "all_valid":
        valid = torch.ones(B, S, dtype=torch.bool)
    elif kind == "empty_row":
        valid = torch.ones(B, S, dtype=torch.bool)
        valid[B // 2] = False
    elif kind == "left_pad":
        valid = pos[None, :] >= (S - lengths)[:, None]
    elif kind == "right_pad":
        valid = pos[None, :] < lengths[:, None]
    elif kind == "random":
        valid = torch.rand(B, S, generator=gen) < 0.5
        return torch.where(valid, torch.randn(B, S, generator=gen), 0.0)
    else:
        raise ValueError(kind)
    n_valid = valid.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(valid, 1.0 / n_valid, 0.0).float()


def poison(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Write NaN / +Inf / -Inf where the weight is 0, as padding garbage would be."""
    garbage = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=hidden.dtype, device=hidden.device)
    pad = (weights == 0).nonzero(as_tuple=True)
    if pad[0].numel():
        hidden[pad] = garbage[torch.arange(pad[0].numel()) % 3].to(hidden.device)[:, None]
    return hidden


def expected_pool(hidden, weights, shift):
    """fp64 math: (pooled, bound) with bound = sum |w| |x| + |shift| for the tolerance."""
    keep = (weights != 0)[..., None]
    x = torch.where(keep, hidden.double(), 0.0)
    w = weights.double()[..., None]
    pooled, bound = (w * x).sum(dim=-2), (w.abs() * x.abs()).sum(dim=-2)
    if shift is not None:
        pooled, bound = pooled - shift.double(), bound + shift.double().abs()
    return pooled, bound


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    err = (got.double() - want).abs()
    limit = atol + rtol * bound
    assert torch.isfinite(got).all(), "non-finite output: padding leaked into the sum"
    worst = (err - limit).argmax()
    assert (err <= limit).all(), f"max error {err.flatten()[worst]:.3g} > limit {limit.flatten()[worst]:.3g}"


def run_pool(B, S, H, dtype, mask, seed, *, shift=True, strided=False, layers=3, layer=1):
    gen = torch.Generator().manual_seed(seed)
    weights = make_weights(mask, B, S, gen)
    if strided:  # hidden [B, 2S, H + 5] and weights [B, 2S] sliced: every dim strided but hidden's last
        hidden = torch.randn(B, 2 * S, H + 5, generator=gen).to(dtype)[:, ::2, 2:2 + H]
        weights = torch.zeros(B, 2 * S).index_copy_(1, torch.arange(0, 2 * S, 2), weights)[:, ::2]
    else:
        hidden = torch.randn(B, S, H, generator=gen).to(dtype)
    hidden = poison(hidden.to(DEVICE), weights.to(DEVICE))
    weights = weights.to(DEVICE)
    shift_h = torch.randn(H, generator=gen).to(DEVICE) if shift else None
    staging = torch.full((B, layers * H), 7.0, device=DEVICE)  # out is a column slice of a [B, L*H] buffer
    out = staging[:, layer * H:(layer + 1) * H]
    result = masked_pool(hidden, weights, out, shift_h)
    assert result.data_ptr() == out.data_ptr()
    want, bound = expected_pool(hidden.cpu(), weights.cpu(), None if shift_h is None else shift_h.cpu())
    assert_close(out.cpu(), want, bound, dtype)
    others = torch.cat([staging[:, :layer * H], staging[:, (layer + 1) * H:]], dim=1)
    assert (others == 7.0).all(), "masked_pool wrote outside its column slice"


@pytest.mark.parametrize("B,S,H", list(itertools.product([1, 3, 7], [1, 5, 97], [1, 64, 123])))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shapes(impl, B, S, H, dtype):
    run_pool(B, S, H, dtype, "random", seed=B * 10_000 + S * 100 + H)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masks_with_nan_padding(impl, mask, dtype):
    run_pool(7, 97, 123, dtype, mask, seed=MASKS.index(mask))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shift", [True, False])
def test_strided_inputs(impl, dtype, shift):
    run_pool(3, 97, 123, dtype, "left_pad", seed=5, shift=shift, strided=True, layers=4, layer=3)


def test_transposed_hidden(impl):
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(97, 3, 64, generator=gen).bfloat16().transpose(0, 1).to(DEVICE)  # [B, S, H], seq-major
    weights = make_weights("right_pad", 3, 97, gen).to(DEVICE)
    hidden = poison(hidden, weights)
    out = torch.empty(3, 64, device=DEVICE)
    masked_pool(hidden, weights, out)
    want, bound = expected_pool(hidden.cpu(), weights.cpu(), None)
    assert_close(out.cpu(), want, bound, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=str)
def test_varlen_matches_padded(impl, dtype, cu_dtype):
    gen = torch.Generator().manual_seed(3)
    lengths = [5, 0, 97, 1, 40]  # includes an empty row
    H = 123
    tail = 4  # tokens after the last row belong to no row and must be ignored
    hidden = torch.randn(sum(lengths) + tail, H, generator=gen).to(dtype)
    weights = torch.randn(hidden.shape[0], generator=gen)
    weights[torch.rand(hidden.shape[0], generator=gen) < 0.3] = 0.0
    weights[-tail:] = 1.0
    hidden[weights == 0] = float("nan")
    hidden[-tail:] = float("nan")
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=cu_dtype)
    shift = torch.randn(H, generator=gen)
    out = torch.empty(2 * len(lengths), H, device=DEVICE)[::2]  # row-strided out
    masked_pool(hidden.to(DEVICE), weights.to(DEVICE), out, shift.to(DEVICE), cu_seqlens=cu.to(DEVICE))
    starts = cu[:-1].tolist()
    rows = [expected_pool(hidden[a:a + n], weights[a:a + n], shift) for a, n in zip(starts, lengths)]
    want, bound = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    assert_close(out.cpu(), want, bound, dtype)


@needs_triton
@pytest.mark.parametrize("num_splits", [2, 3, 64])
@pytest.mark.parametrize("varlen", [False, True])
def test_split_sequence(num_splits, varlen):
    """The launcher's sequence split (used on GPUs when the batch is small) gives the same sums."""
    gen = torch.Generator().manual_seed(num_splits)
    B, S, H = 3, 97, 64
    weights = make_weights("random", B, S, gen)
    hidden = poison(torch.randn(B, S, H, generator=gen).half(), weights)
    shift = torch.randn(H, generator=gen)
    want, bound = expected_pool(hidden, weights, shift)
    out = torch.empty(B, 2 * H, device=DEVICE)[:, H:]
    if varlen:
        cu = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=DEVICE)
        masked_pool_triton(hidden.reshape(B * S, H).to(DEVICE), weights.reshape(-1).to(DEVICE), out,
                           shift.to(DEVICE), cu_seqlens=cu, num_splits=num_splits)
    else:
        masked_pool_triton(hidden.to(DEVICE), weights.to(DEVICE), out, shift.to(DEVICE), num_splits=num_splits)
    assert_close(out.cpu(), want, bound, torch.float16)


def test_weight_zero_is_exactly_nothing(impl):
    """A row whose weights are all 0 pools to exactly -shift, whatever garbage its hidden states hold."""
    hidden = torch.full((2, 5, 8), float("nan"), device=DEVICE)
    hidden[1] = 1.0
    weights = torch.zeros(2, 5, device=DEVICE)
    weights[1, 2] = 1.0
    shift = torch.arange(8, dtype=torch.float32, device=DEVICE)
    out = torch.empty(2, 8, device=DEVICE)
    masked_pool(hidden, weights, out, shift)
    assert torch.equal(out[0], -shift)
    assert torch.equal(out[1], 1.0 - shift)


def test_masked_pool_validates_arguments():
    hidden = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="weights must be"):
        masked_pool(hidden, torch.ones(2, 4), torch.empty(2, 4))
    with pytest.raises(TypeError, match="weights must be float32"):
        masked_pool(hidden, torch.ones(2, 3, dtype=torch.float64), torch.empty(2, 4))
    with pytest.raises(ValueError, match="out must be"):
        masked_pool(hidden, torch.ones(2, 3), torch.empty(2, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="shift must be"):
        masked_pool(hidden, torch.ones(2, 3), torch.empty(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="packed"):
        masked_pool(hidden, torch.ones(2, 3), torch.empty(2, 4), cu_seqlens=torch.tensor([0, 3]))
    packed = torch.randn(6, 4)
    # past the packed tokens (the kernel read there), before them, falling
    for bounds in ([0, 3, 40], [-1, 3, 6], [0, 4, 2]):
        with pytest.raises(ValueError, match="cu_seqlens must rise from >= 0 to at most T = 6"):
            masked_pool(packed, torch.ones(6), torch.empty(2, 4), cu_seqlens=torch.tensor(bounds))


# ---- dispatch -------------------------------------------------------------------------------------------------------

class _FakeCuda:
    is_cuda = True


def test_cpu_uses_reference_silently(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not dispatch.use_triton(torch.zeros(1))


def test_disable_wins(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    monkeypatch.setenv(FORCE_ENV, "1")
    assert not dispatch.use_triton(_FakeCuda())


def test_cuda_without_triton_warns_once(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    monkeypatch.setattr(dispatch, "TRITON_IMPORT_ERROR", "ImportError: No module named 'triton'")
    monkeypatch.setattr(dispatch, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="Triton is not available"):
        assert not dispatch.use_triton(_FakeCuda())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not dispatch.use_triton(_FakeCuda())


def test_force_without_triton_raises(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="Triton does not import"):
        dispatch.use_triton(torch.zeros(1))


@needs_triton
def test_force_routes_to_kernel(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    calls = []
    monkeypatch.setattr(pooling, "masked_pool_ref", lambda *a, **k: calls.append("ref"))
    monkeypatch.setattr(pooling, "masked_pool_triton", lambda *a, **k: calls.append("triton"))
    masked_pool(torch.zeros(1, 2, 3, device=DEVICE), torch.zeros(1, 2, device=DEVICE), torch.zeros(1, 3, device=DEVICE))
    masked_pool(torch.zeros(1, 2, 3, dtype=torch.float64, device=DEVICE), torch.zeros(1, 2, device=DEVICE),
                torch.zeros(1, 3, device=DEVICE))  # no fp64 kernel: the reference
    assert calls == ["triton", "ref"]
