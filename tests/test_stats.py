"""StreamingCovariance against fp64 numpy: any split, any order, merges across shifts, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoskill_fast.errors import AutoskillError
from autoskill_fast.stats import StreamingCovariance


def data(n: int, d: int, seed: int, offset: float = 50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A large common offset: what a naive sum-of-squares formula gets wrong in low precision.
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64) + offset


@pytest.mark.parametrize("n,d", [(2, 1), (97, 13), (300, 123)])
def test_matches_numpy_for_any_split(n, d):
    x = data(n, d, seed=n + d).float().double()  # the rows the stream sees are fp32; the reference is fp64 math on them
    ref_cov = np.atleast_2d(np.cov(x.numpy(), rowvar=False))
    rng = np.random.default_rng(0)
    cuts = sorted(set(rng.integers(1, n, size=min(5, n - 1)).tolist())) if n > 2 else [1]
    stats = StreamingCovariance(d)
    for part in np.split(np.arange(n), cuts):
        stats.update(x[part].float())
    np.testing.assert_allclose(stats.mean.numpy(), x.numpy().mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance().numpy(), ref_cov, atol=1e-5 * np.abs(ref_cov).max())
    assert stats.total_variance() == pytest.approx(float(np.trace(ref_cov)), rel=1e-6)


def test_merge_with_different_shifts_is_exact():
    x = data(250, 37, seed=1)
    a, b, whole = StreamingCovariance(37), StreamingCovariance(37), StreamingCovariance(37)
    a.update(x[:100])
    b.update(x[100:] + 0)  # b's pilot mean differs from a's
    assert not torch.equal(a.shift, b.shift)
    whole.update(x)
    a.merge(b)
    assert a.n == 250
    torch.testing.assert_close(a.mean, whole.mean, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(a.covariance(), whole.covariance(), rtol=1e-10, atol=1e-9)


def test_order_does_not_matter_and_state_round_trips(tmp_path):
    x = data(64, 9, seed=2)
    forward, backward = StreamingCovariance(9), StreamingCovariance(9)
    for i in range(0, 64, 8):
        forward.update(x[i:i + 8])
    backward.set_shift(forward.shift)
    for i in reversed(range(0, 64, 8)):
        backward.update(x[i:i + 8])
    torch.testing.assert_close(forward.covariance(), backward.covariance(), rtol=1e-12, atol=1e-12)
    forward.save(tmp_path / "s.safetensors")
    loaded = StreamingCovariance.load(tmp_path / "s.safetensors")
    assert loaded.n == 64 and torch.equal(loaded.covariance(), forward.covariance())


def test_errors_are_clear(tmp_path):
    stats = StreamingCovariance(4)
    with pytest.raises(AutoskillError, match="at least 2"):
        stats.update(torch.ones(1, 4))
        stats.covariance()
    with pytest.raises(AutoskillError, match="do not match"):
        stats.update(torch.ones(3, 5))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(AutoskillError, match="corrupted or truncated"):
        StreamingCovariance.load(tmp_path / "bad.safetensors")
