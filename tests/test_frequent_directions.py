"""FrequentDirections: exact in the low-rank regime, the sketch guarantee, mean correction, merging, resuming, and
accuracy against the exact covariance on a synthetic spectrum."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from autoskill_fast.errors import AutoskillError
from autoskill_fast.decomposition.frequent_directions import FrequentDirections


def synthetic(n: int, D: int, *, decay: float = 1.0, rank: int | None = None, offset: float = 0.0,
              seed: int = 0) -> torch.Tensor:
    """[n, D] fp64 rows: eigenvalues i^-decay in a random basis (only `rank` of them if given), mean `offset` * N(0,1)."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    std = torch.arange(1, D + 1, dtype=torch.float64) ** (-decay / 2)
    if rank is not None:
        std[rank:] = 0.0
    rows = (torch.randn(n, D, generator=gen, dtype=torch.float64) * std) @ basis.T
    return rows + offset * torch.randn(D, generator=gen, dtype=torch.float64)


def exact_components(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(torch.cov(x.T))
    return evals.flip(0)[:k], evecs.flip(1)[:, :k]


def max_principal_angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    cosines = torch.linalg.svdvals(u.T @ v).clamp(max=1.0)
    return math.degrees(math.acos(float(cosines.min())))


def sketch_of(fd: FrequentDirections) -> torch.Tensor:
    return fd.state_dict()["sketch"].double()


@pytest.mark.parametrize("D,ell,rank", [(12, 16, None), (40, 8, 6)])
@pytest.mark.parametrize("shift", ["zero", "pilot"])
def test_exact_when_rows_span_at_most_ell_dims(D, ell, rank, shift):
    """With shifted rows spanning <= l dims no shrink removes anything: components equal the exact covariance's,
    which also checks the rank-one mean correction (the offset is large and, with shift=zero, left in the rows)."""
    x = synthetic(300, D, rank=rank, offset=30.0, seed=D)
    if rank is not None:  # centered rows span `rank` dims; the mean adds one more: rank + 1 <= ell
        assert rank + 1 <= ell
    pilot = x[:50].mean(dim=0) if shift == "pilot" else torch.zeros(D, dtype=torch.float64)
    fd = FrequentDirections(D, ell, dtype=torch.float64)
    for lo in range(0, 300, 37):
        fd.update(x[lo:lo + 37] - pilot)
    k = rank or D
    evals, vectors = fd.components(k)
    want_evals, want_vectors = exact_components(x, k)
    assert torch.allclose(evals, want_evals, rtol=1e-9, atol=1e-9 * float(want_evals[0]))
    assert max_principal_angle_deg(vectors, want_vectors) < 1e-4
    assert fd.error_bound() < 1e-9 * float(want_evals[0])
    # Deterministic signs: largest-magnitude entry positive.
    pivots = vectors.abs().argmax(dim=0)
    assert (vectors[pivots, torch.arange(k)] > 0).all()


@pytest.mark.parametrize("ell", [8, 32])
def test_sketch_guarantee(ell):
    """0 <= Y^T Y - B^T B <= delta I, and delta <= ||Y - Y_k||_F^2 / (l - k) for k < l."""
    y = synthetic(1000, 64, decay=0.7, seed=ell)
    fd = FrequentDirections(64, ell, dtype=torch.float64).update(y)
    sketch = sketch_of(fd)
    residual_eigs = torch.linalg.eigvalsh(y.T @ y - sketch.T @ sketch)
    delta = float(fd.shrinkage)
    scale = float(torch.linalg.matrix_norm(y, ord=2)) ** 2
    assert residual_eigs.min() >= -1e-10 * scale
    assert residual_eigs.max() <= delta + 1e-10 * scale
    sq_singular = torch.linalg.svdvals(y) ** 2
    for k in range(ell):
        assert delta <= float(sq_singular[k:].sum()) / (ell - k) * (1 + 1e-9)


def test_eigenvalues_bracketed_and_compensated():
    """Exact eigenvalues lie in [raw, raw + error_bound] (Weyl); the compensated (upper) end is the closer one."""
    x = synthetic(3000, 128, decay=1.0, seed=1)
    pilot = x[:200].mean(dim=0)
    fd = FrequentDirections(128, 32)
    for lo in range(0, 3000, 500):
        fd.update((x[lo:lo + 500] - pilot).float())
    k = 8
    want, _ = exact_components(x, k)
    raw, _ = fd.components(k, compensate=False)
    compensated, _ = fd.components(k)
    bound = fd.error_bound()
    slack = 1e-5 * float(want[0])  # fp32 sketch storage
    assert (raw <= want + slack).all() and (want <= raw + bound + slack).all()
    assert torch.allclose(compensated, raw + bound)
    assert ((compensated - want).abs() / want).max() < 0.5 * ((raw - want).abs() / want).max()


def test_accuracy_against_exact_covariance():
    """A power-law spectrum (eigenvalue i^-1) in D=256 with l=64, k=8: the top-8 subspace within 2 degrees, the
    compensated eigenvalues within 2 %. (At D=1024, n=20000, l=128, k=16 the same holds: 0.8 deg, 0.26 %.)"""
    x = synthetic(4000, 256, decay=1.0, seed=2)
    pilot = x[:500].mean(dim=0)
    fd = FrequentDirections(256, 64)
    for lo in range(0, 4000, 500):
        fd.update((x[lo:lo + 500] - pilot).float())
    evals, vectors = fd.components(8)
    want_evals, want_vectors = exact_components(x, 8)
    assert max_principal_angle_deg(vectors, want_vectors) < 2.0
    assert ((evals - want_evals).abs() / want_evals).max() < 0.02


def test_batch_split_does_not_change_the_sketch():
    y = synthetic(700, 48, seed=3).float()
    one = FrequentDirections(48, 16).update(y)
    many = FrequentDirections(48, 16)
    for lo, hi in [(0, 1), (1, 33), (33, 400), (400, 700)]:
        many.update(y[lo:hi])
    assert torch.equal(sketch_of(one), sketch_of(many))
    assert one.count == many.count == 700
    assert torch.allclose(one.sum, many.sum, rtol=1e-12)


def test_merge_keeps_the_guarantee_and_exact_moments():
    x = synthetic(1200, 64, decay=0.8, offset=3.0, seed=4)
    pilot = x[:100].mean(dim=0)
    y = x - pilot
    left = FrequentDirections(64, 16, dtype=torch.float64).update(y[:500])
    right = FrequentDirections(64, 16, dtype=torch.float64).update(y[500:])
    merged = left.merge(right)
    assert merged.count == 1200
    assert torch.allclose(merged.sum, y.sum(dim=0), rtol=1e-12)
    sketch = sketch_of(merged)
    residual_eigs = torch.linalg.eigvalsh(y.T @ y - sketch.T @ sketch)
    scale = float(torch.linalg.matrix_norm(y, ord=2)) ** 2
    assert residual_eigs.min() >= -1e-10 * scale
    assert residual_eigs.max() <= float(merged.shrinkage) + 1e-10 * scale
    # Covariance estimate within the bound of the exact one.
    centered = sketch.T @ sketch - torch.outer(merged.sum, merged.sum) / merged.count
    err = torch.linalg.matrix_norm(centered / 1199 - torch.cov(x.T), ord=2)
    assert err <= merged.error_bound() * (1 + 1e-9)


def test_merge_in_exact_regime_equals_one_pass():
    x = synthetic(400, 10, offset=5.0, seed=5)
    one = FrequentDirections(10, 12, dtype=torch.float64).update(x)
    merged = FrequentDirections(10, 12, dtype=torch.float64).update(x[:150])
    merged.merge(FrequentDirections(10, 12, dtype=torch.float64).update(x[150:]))
    (e1, v1), (e2, v2) = one.components(5), merged.components(5)
    assert torch.allclose(e1, e2, rtol=1e-10)
    assert torch.allclose(v1, v2, atol=1e-8)


def test_a_sketch_merged_with_itself_holds_its_rows_twice():
    """Its buffer, sums and shrinkage were read while they changed (torch refused the overlapping copy)."""
    for n in (5, 13, 21):  # fewer rows than the sketch keeps, and more (torch refused those)
        x = synthetic(n, 40, offset=2.0, seed=n)
        doubled = FrequentDirections(40, 8, dtype=torch.float64).update(x)
        doubled.merge(doubled)
        reference = FrequentDirections(40, 8, dtype=torch.float64).update(x)
        reference.merge(FrequentDirections(40, 8, dtype=torch.float64).update(x))
        assert doubled.count == reference.count == 2 * n and torch.equal(doubled.sum, reference.sum)
        values, expected = doubled.components(2)[0], reference.components(2)[0]
        assert torch.allclose(values, expected, rtol=1e-12)
        assert float(doubled.shrinkage) == pytest.approx(float(reference.shrinkage))


@pytest.mark.parametrize("D,ell", [(10, 14), (33, 8)])
def test_merge_across_shifts_keeps_the_guarantee(D, ell):
    """Two sketches around their own pilot means (as two shards or two ranks make them) merge exactly: count, sum and
    mean exact, the covariance estimate within the bound (equal to the exact one when nothing was shrunk), and the
    other sketch left as it was."""
    x = synthetic(700, D, decay=1.5, offset=40.0, seed=D)
    a, b = x[:60].mean(dim=0), x[400:430].mean(dim=0) + 0.5  # two different shifts, neither the mean
    left = FrequentDirections(D, ell, dtype=torch.float64).update(x[:400] - a)
    right = FrequentDirections(D, ell, dtype=torch.float64).update(x[400:] - b)
    before = {key: value.clone() for key, value in right.state_dict().items()}
    merged = left.merge(right, offset=b - a)
    assert all(torch.equal(before[key], value) for key, value in right.state_dict().items())
    assert merged.count == 700
    assert torch.allclose(merged.sum, (x - a).sum(dim=0), rtol=1e-12, atol=1e-9)
    assert merged.positive.shape == merged.negative.shape == (1, D)  # the change of shift, kept exactly
    exact = torch.cov(x.T)
    evals, vectors = merged.components(min(D, ell) - 2, compensate=False)
    estimate = vectors @ torch.diag(evals) @ vectors.T
    top = float(torch.linalg.matrix_norm(exact, ord=2))
    bound = merged.error_bound()
    if D <= ell:  # the shifted rows span at most l dims: nothing shrunk
        assert bound < 1e-9 * top
        want_evals, want_vectors = exact_components(x, D)
        got_evals, got_vectors = merged.components(D)
        assert torch.allclose(got_evals, want_evals, rtol=1e-9, atol=1e-9 * top)
        assert max_principal_angle_deg(got_vectors, want_vectors) < 1e-4
    else:
        assert 0 < bound < 0.2 * top  # a real shrink, and an informative bound
        # Weyl: each exact eigenvalue lies in [sketch eigenvalue, sketch eigenvalue + bound].
        want_evals = torch.linalg.eigvalsh(exact).flip(0)[:evals.shape[0]]
        assert torch.all(evals <= want_evals + 1e-9 * top)
        assert torch.all(want_evals <= evals + bound + 1e-9 * top)
    assert float(torch.linalg.matrix_norm(estimate, ord=2)) <= top + 1e-9 * top


def test_reshift_changes_the_frame_not_the_estimate():
    """`reshift_` expresses the same rows around another shift: in the exact regime the components do not move, and the
    count and the sum are those of the rows around the new shift."""
    x = synthetic(300, 12, offset=25.0, seed=9)
    a, new = x[:40].mean(dim=0), x[100:140].mean(dim=0)
    fd = FrequentDirections(12, 16, dtype=torch.float64).update(x - a)
    want_evals, want_vectors = fd.components(12)
    fd.reshift_(a - new)
    assert torch.allclose(fd.sum, (x - new).sum(dim=0), rtol=1e-12, atol=1e-9)
    got_evals, got_vectors = fd.components(12)
    assert torch.allclose(got_evals, want_evals, rtol=1e-9, atol=1e-10 * float(want_evals[0]))
    assert max_principal_angle_deg(got_vectors, want_vectors) < 1e-4
    same = FrequentDirections(12, 16, dtype=torch.float64).update(x - a)
    same.reshift_(torch.zeros(12, dtype=torch.float64))  # no change of shift: nothing added
    assert same.positive.shape[0] == same.negative.shape[0] == 0


def test_a_far_shift_keeps_fp32_sketches_accurate():
    """The change of shift is kept in fp64 beside the fp32 sketch: moving unit-variance rows by a thousand standard
    deviations costs 8e-8 of an eigenvalue at most (the correction rounded to fp32 into the sketch cost 1.1e-5)."""
    x = synthetic(400, 16, decay=0.5, seed=12)
    fd = FrequentDirections(16, 20).update((x - x.mean(dim=0)).float())  # fp32 storage, nothing shrunk
    fd.reshift_(torch.full((16,), 1000.0, dtype=torch.float64))
    want_evals, want_vectors = exact_components(x, 16)
    got_evals, got_vectors = fd.components(16)
    assert float(((got_evals - want_evals).abs() / want_evals).max()) < 1e-6
    assert max_principal_angle_deg(got_vectors[:, :8], want_vectors[:, :8]) < 0.05


def test_negative_rows_round_trip_and_old_states_load(tmp_path):
    x = synthetic(200, 9, offset=3.0, seed=10)
    fd = FrequentDirections(9, 4, dtype=torch.float64).update(x[:120] - x[:10].mean(dim=0))
    fd.merge(FrequentDirections(9, 4, dtype=torch.float64).update(x[120:] - x[150:160].mean(dim=0)),
             offset=x[150:160].mean(dim=0) - x[:10].mean(dim=0))
    save_file(fd.state_dict(), str(tmp_path / "fd.safetensors"))
    restored = FrequentDirections.from_state_dict(load_file(str(tmp_path / "fd.safetensors")))
    assert torch.equal(restored.negative, fd.negative) and restored.negative.shape == (1, 9)
    assert torch.equal(restored.positive, fd.positive) and restored.positive.shape == (1, 9)
    assert torch.equal(restored.components(3)[1], fd.components(3)[1])
    old = {key: value for key, value in fd.state_dict().items() if key not in ("positive", "negative")}
    assert FrequentDirections.from_state_dict(old).negative.shape == (0, 9)  # saved before shifts could change
    with pytest.raises(AutoskillError, match="exact rows"):
        FrequentDirections.from_state_dict({**old, "positive": torch.zeros(1, 8, dtype=torch.float64),
                                            "negative": torch.zeros(1, 8, dtype=torch.float64)})
    with pytest.raises(AutoskillError, match="exact rows"):
        FrequentDirections.from_state_dict({**old, "positive": torch.zeros(1, 9, dtype=torch.float64)})


def test_resume_through_safetensors_equals_uninterrupted(tmp_path):
    y = synthetic(900, 40, seed=6).float()
    straight = FrequentDirections(40, 16).update(y)
    first = FrequentDirections(40, 16).update(y[:437])
    save_file(first.state_dict(), str(tmp_path / "fd.safetensors"))
    resumed = FrequentDirections.from_state_dict(load_file(str(tmp_path / "fd.safetensors"))).update(y[437:])
    for key, value in straight.state_dict().items():
        other = resumed.state_dict()[key]
        assert torch.equal(value, other) if key != "sum" else torch.allclose(value, other, rtol=1e-12), key
    assert torch.equal(straight.components(4)[1], resumed.components(4)[1])


def test_empty_state_round_trips(tmp_path):
    save_file(FrequentDirections(5, 3).state_dict(), str(tmp_path / "empty.safetensors"))
    restored = FrequentDirections.from_state_dict(load_file(str(tmp_path / "empty.safetensors")))
    assert restored.count == 0 and restored.dim == 5 and restored.sketch_size == 3


def test_errors():
    fd = FrequentDirections(6, 2)
    with pytest.raises(ValueError, match=r"rows must be \[N, 6\]"):
        fd.update(torch.zeros(3, 5))
    fd.update(torch.randn(1, 6))
    with pytest.raises(AutoskillError, match="at least 2"):
        fd.components(1)
    fd.update(torch.randn(9, 6))
    with pytest.raises(ValueError, match="k must be in"):
        fd.components(5)  # 2 sketch rows + the mean row: k <= 3
    with pytest.raises(AutoskillError, match="lacks"):
        FrequentDirections.from_state_dict({"sketch": torch.zeros(1, 6)})
