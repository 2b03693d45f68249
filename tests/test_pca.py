"""SkillPCA against scikit-learn's PCA and IncrementalPCA on fresh random rows: fp64 and fp32, awkward shapes and
chunkings, the LAPACK and the block-Krylov paths, merges, save/load, Frequent Directions sketches and the errors.

The reference is scikit-learn's PCA(svd_solver="full") of the rows in fp64, its components flipped by the documented
sign rule (`canonical_signs`). Each returned direction is compared with the reference one through the angle between
them, bounded by the Davis-Kahan sin-theta theorem from its residual against the fp64 covariance and the gap to the
rest of the spectrum: tight where eigenvalues are well separated, fair where they are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA, IncrementalPCA

from autoskill_fast.decomposition import PrincipalComponents, SkillPCA, fit_components
from autoskill_fast.decomposition import pca as pca_module
from autoskill_fast.decomposition.linalg import EXACT_MAX_DIM_CPU, canonical_signs
from autoskill_fast.decomposition.statistics import StreamingCovariance
from autoskill_fast.errors import AutoskillError

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
KRYLOV = ("block-krylov", "torch-block-krylov")
# Per dtype of the rows, how far an eigenvalue (and the residual ||C v - lambda v|| of its direction against the fp64
# covariance C) may be off: (relative to the eigenvalue itself, relative to the top eigenvalue). fp64 rows: the issue's
# contract, every eigenvalue to 1e-6 of itself. fp32 rows: fp32 products over the fp64 sums round at about 1e-7 of the
# top eigenvalue and the solver's tol is 1e-6 of it, so small eigenvalues are accurate in absolute terms only.
ACCURACY = {torch.float64: (1e-6, 0.0), torch.float32: (0.0, 2e-6)}
# Rounding of the returned components (angles, entries, orthonormality): fp64 arithmetic, or fp32 storage/products.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6}
# Unit roundoff of transform / inverse_transform, which compute in the dtype of their input.
EPS = {torch.float64: float(np.finfo(np.float64).eps), torch.float32: float(np.finfo(np.float32).eps)}
# Two fits of the same rows (another chunking, order, a merge, a resumed run): fp64 sums differ in their last bits;
# fp32 products round those sums again, which moves fp32 results by about their own rounding.
SAME = {torch.float64: 1e-10, torch.float32: 1e-5}


# ---- rows and the reference -------------------------------------------------------------------------------------
def rows(n: int, d: int, seed: int, *, rank: int | None = None, decay: float = 0.75, floor: float = 0.1,
         offset: float = 100.0) -> np.ndarray:
    """[n, d] fp64: Gaussian scores with standard deviations 10 * decay^i (down to `floor`: distinct top eigenvalues
    above a flat bulk) along a random orthonormal basis, only the first `rank` of them if given, plus a large mean
    offset (what the centering must remove exactly)."""
    rng = np.random.default_rng(seed)
    r = d if rank is None else rank
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :r]
    std = np.maximum(10 * decay ** np.arange(r), floor)
    return (rng.standard_normal((n, r)) * std) @ basis.T + offset * rng.standard_normal(d)


def chunks(x, sizes: list[int]) -> list:
    """x cut into consecutive pieces of these sizes (0 gives an empty piece); the last piece takes the rest."""
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] <= len(x)
    return [x[a:b] for a, b in pairwise(bounds)] + [x[bounds[-1]:]]


def awkward_sizes(n: int, seed: int) -> list[int]:
    """A single row, an empty chunk, two rows, 97 rows (or what is left), another empty chunk, then random cuts."""
    sizes = [1, 0, 2, min(97, n - 3), 0]
    rest = n - sum(sizes)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, rest), size=min(3, rest - 1), replace=False))
    return sizes + np.diff(np.concatenate([[0], cuts])).astype(int).tolist()


@dataclass(frozen=True)
class Reference:
    """scikit-learn's PCA of fp64 rows, its components under the sign rule, and the fp64 covariance and spectrum."""

    pca: PCA
    components: np.ndarray  # [k, D], canonical signs
    flips: np.ndarray  # [k] +-1: pca.components_ * flips[:, None] == components
    cov: np.ndarray  # [D, D]
    spectrum: np.ndarray  # every eigenvalue of cov, descending


def reference(x64: np.ndarray, k: int) -> Reference:
    pca = PCA(k, svd_solver="full").fit(x64)
    components = canonical_signs(torch.from_numpy(pca.components_.T.copy())).T.numpy()
    flips = np.sign(np.sum(components * pca.components_, axis=1))
    assert np.array_equal(np.abs(flips), np.ones(k))
    cov = np.atleast_2d(np.cov(x64, rowvar=False))
    return Reference(pca, components, flips, cov, np.linalg.eigvalsh(cov)[::-1])


def assert_eigenvalues_close(got: np.ndarray, want: np.ndarray, top: float, dtype: torch.dtype, what: str) -> None:
    own, of_top = ACCURACY[dtype]
    err = np.abs(got - want)
    allowed = own * np.abs(want) + of_top * top
    assert np.all(err <= allowed), f"{what}: error {err} > allowed {allowed}"


def component_distances(pca: SkillPCA, ref: Reference, dtype: torch.dtype,
                        accuracy: tuple[float, float] | None = None) -> np.ndarray:
    """Checks the sign rule, orthonormality, residuals (`accuracy`, default ACCURACY[dtype]) and the Davis-Kahan bound
    of every component of `pca` against `ref`; returns ||v_i - u_i|| per component (what the transforms may be off
    by)."""
    v = pca.components_.double().numpy()
    values = pca.explained_variance_.numpy()
    k = len(values)
    top = ref.spectrum[0]
    assert np.all(v[np.arange(k), np.abs(v).argmax(axis=1)] > 0), "largest-magnitude entries must be positive"
    assert np.abs(v @ v.T - np.eye(k)).max() <= FLOOR[dtype]
    residuals = np.linalg.norm(ref.cov @ v.T - v.T * values, axis=0)
    own, of_top = accuracy or ACCURACY[dtype]
    assert np.all(residuals <= own * values + of_top * top + FLOOR[dtype] * top), residuals / top
    u = ref.components
    distances = np.linalg.norm(v - u, axis=1)
    for i in range(k):
        gap = np.abs(values[i] - np.delete(ref.spectrum, i)).min()
        allowed = 1.5 * residuals[i] / gap + FLOOR[dtype]  # Davis-Kahan, plus rounding
        sin_theta = np.linalg.norm(v[i] - u[i] * (u[i] @ v[i]))
        assert sin_theta <= allowed, f"component {i}: sin(theta)={sin_theta:.2e} > {allowed:.2e}"
        assert distances[i] <= 1.01 * allowed + FLOOR[dtype], f"component {i}: signs differ or entries are off"
    return distances


def check_matches_sklearn(pca: SkillPCA, x: np.ndarray, k: int, dtype: torch.dtype,
                          ref: Reference | None = None) -> None:
    """Every fitted attribute and both transforms of `pca`, fitted on the rows x (in `dtype`), against sklearn's PCA
    of x in fp64."""
    x64 = x.astype(np.float64)
    ref = ref or reference(x64, k)
    n, d = x.shape
    top = ref.spectrum[0]
    assert pca.n_samples_seen_ == n and pca.n_features_in_ == d and pca.components_.shape == (k, d)

    values = pca.explained_variance_
    assert values.dtype == torch.float64 and pca.mean_.dtype == torch.float64
    values = values.numpy()
    assert np.all(np.diff(values) < 0)
    assert_eigenvalues_close(values, ref.pca.explained_variance_, top, dtype, "explained_variance_")
    total = ref.spectrum.sum()
    assert_eigenvalues_close(pca.explained_variance_ratio_.numpy() * total, ref.pca.explained_variance_ratio_ * total,
                             top, dtype, "explained_variance_ratio_")
    assert_eigenvalues_close(pca.singular_values_.numpy() ** 2 / (n - 1), ref.pca.singular_values_ ** 2 / (n - 1),
                             top, dtype, "singular_values_")
    scale = np.abs(x64).max()
    np.testing.assert_allclose(pca.mean_.numpy(), ref.pca.mean_, rtol=0, atol=1e-13 * scale)  # fp64 sums either way

    distances = component_distances(pca, ref, dtype)
    eps = EPS[dtype]
    centered = x64 - ref.pca.mean_
    scores = pca.transform(x)
    assert isinstance(scores, np.ndarray) and scores.dtype == x.dtype and scores.shape == (n, k)
    want = ref.pca.transform(x64) * ref.flips
    # Each centered row's norm times ||v_i - u_i||, plus the rounding of centering and one dot product in `dtype`.
    allowed = (np.linalg.norm(centered, axis=1)[:, None] * (distances + FLOOR[dtype])
               + 4 * eps * (np.linalg.norm(x64, axis=1) + np.linalg.norm(ref.pca.mean_))[:, None])
    assert np.all(np.abs(scores - want) <= allowed), np.abs(scores - want).max()

    back = pca.inverse_transform(scores)
    assert isinstance(back, np.ndarray) and back.dtype == x.dtype and back.shape == (n, d)
    want_back = ref.pca.inverse_transform(ref.pca.transform(x64))  # the rows projected on the top k: no sign in it
    # ||V^T V - U^T U|| <= 2 sum_i ||v_i - u_i||, plus the rounding of both transforms in `dtype`.
    allowed = (2 * np.linalg.norm(centered, axis=1) * (distances.sum() + k * FLOOR[dtype])
               + 8 * eps * (np.linalg.norm(x64, axis=1) + np.linalg.norm(ref.pca.mean_)))
    errors = np.linalg.norm(back - want_back, axis=1)
    assert np.all(errors <= allowed), (errors / allowed).max()


def assert_same_fit(got: SkillPCA, want: SkillPCA, dtype: torch.dtype) -> None:
    """Two fits of the same rows agree to rounding (`SAME`)."""
    assert got.n_samples_seen_ == want.n_samples_seen_
    values = want.explained_variance_.numpy()
    np.testing.assert_allclose(got.explained_variance_.numpy(), values, rtol=SAME[dtype], atol=SAME[dtype] * values[0])
    mean = want.mean_.numpy()
    np.testing.assert_allclose(got.mean_.numpy(), mean, rtol=0, atol=1e-12 * np.abs(mean).max())
    np.testing.assert_allclose(got.components_.double().numpy(), want.components_.double().numpy(), rtol=0,
                               atol=SAME[dtype])


# ---- against scikit-learn's PCA ---------------------------------------------------------------------------------
SHAPES = [(97, 5, 3), (123, 33, 7), (401, 97, 10), (123, 300, 4), (401, 700, 8), (97, 700, 5)]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n,d,k", SHAPES)
def test_fit_matches_sklearn_pca(n, d, k, dtype_name):
    dtype = DTYPES[dtype_name]
    x = rows(n, d, seed=1000 * n + d).astype(NUMPY[dtype])
    pca = SkillPCA(k).fit(x)
    assert pca.result().solver["method"] in (KRYLOV if d > EXACT_MAX_DIM_CPU else ("lapack-syevr", "torch-eigh"))
    check_matches_sklearn(pca, x, k, dtype)


def test_fp64_eigenvalues_far_below_the_top_are_accurate_to_themselves():
    """A steep spectrum (the 10th eigenvalue 4e-6 of the first) on the Krylov path: residuals of tol times the top
    eigenvalue left the smallest off by 2e-3 of itself; fp64 rows must keep every eigenvalue to 1e-6 of itself."""
    x = rows(401, 700, seed=7, decay=0.5, floor=1e-3)
    pca = SkillPCA(10).fit(x)
    assert pca.result().solver["method"] in KRYLOV
    ref = reference(x, 10)
    assert ref.spectrum[9] < 1e-5 * ref.spectrum[0]
    check_matches_sklearn(pca, x, 10, torch.float64, ref)


# ---- chunking, order, and scikit-learn's IncrementalPCA --------------------------------------------------------
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n,d,k", [(123, 33, 7), (401, 97, 10), (401, 700, 8)])
def test_any_chunking_or_order_gives_the_same_fit(n, d, k, dtype_name):
    dtype = DTYPES[dtype_name]
    x = rows(n, d, seed=n + d).astype(NUMPY[dtype])
    whole = SkillPCA(k).fit(x)
    ref = reference(x.astype(np.float64), k)
    sizes = awkward_sizes(n, seed=d)
    for order in (slice(None), slice(None, None, -1)):
        streamed = SkillPCA(k)
        for piece in chunks(x[order], sizes):
            assert streamed.partial_fit(piece) is streamed
        assert_same_fit(streamed, whole, dtype)
        check_matches_sklearn(streamed, x, k, dtype, ref)


def test_fit_in_bounded_chunks_equals_one_chunk(monkeypatch):
    x = rows(401, 97, seed=3)
    whole = SkillPCA(6).fit(x)
    monkeypatch.setattr(pca_module, "FIT_CHUNK_ELEMENTS", 97 * 37 + 5)  # 37 rows a chunk, the last one short
    chunked = SkillPCA(6).fit(x)
    assert_same_fit(chunked, whole, torch.float64)


def test_fitted_attributes_follow_new_rows():
    """Attributes are solved when first read, kept while no rows arrive (an empty chunk adds none) and solved again
    after new rows: reading them between chunks changes nothing."""
    x = rows(300, 40, seed=4)
    pca = SkillPCA(5)
    solved = None
    for piece in chunks(x, [1, 60, 0, 100]):
        pca.partial_fit(piece)
        if pca.n_samples_seen_ > 5:
            assert (pca.components_ is solved) == (len(piece) == 0)
            solved = pca.components_
            assert_same_fit(pca, SkillPCA(5).fit(x[:pca.n_samples_seen_]), torch.float64)
    check_matches_sklearn(pca, x, 5, torch.float64)


@pytest.mark.parametrize("n,d,k", [(123, 33, 4), (401, 97, 6), (401, 700, 6)])
def test_matches_sklearn_incremental_pca(n, d, k):
    """IncrementalPCA keeps only n_components directions between batches, so it equals PCA (to rounding) only when the
    centered rows span at most n_components dims: rows of rank k here. Its batches need >= k rows each."""
    x = rows(n, d, seed=n * d, rank=k)
    sizes = [k, 2 * k + 1, 50]  # awkward, each >= k (the last piece takes the rest)
    ipca = IncrementalPCA(k)
    pca = SkillPCA(k)
    for piece in chunks(x, sizes):
        ipca.partial_fit(piece)
        pca.partial_fit(piece)
    batched = IncrementalPCA(k, batch_size=37).fit(x)
    ref = reference(x, k)
    check_matches_sklearn(pca, x, k, torch.float64, ref)
    np.testing.assert_allclose(pca.explained_variance_ratio_.sum().item(), 1.0, rtol=1e-9)  # rank k: all of it
    for other in (ipca, batched):
        assert other.n_samples_seen_ == pca.n_samples_seen_
        np.testing.assert_allclose(pca.explained_variance_.numpy(), other.explained_variance_, rtol=1e-9)
        np.testing.assert_allclose(pca.explained_variance_ratio_.numpy(), other.explained_variance_ratio_, rtol=1e-9)
        np.testing.assert_allclose(pca.singular_values_.numpy(), other.singular_values_, rtol=1e-9)
        np.testing.assert_allclose(pca.mean_.numpy(), other.mean_, rtol=0, atol=1e-12 * np.abs(x).max())
        flipped = canonical_signs(torch.from_numpy(other.components_.T.copy())).T.numpy()
        np.testing.assert_allclose(pca.components_.numpy(), flipped, rtol=0, atol=1e-8)
        flips = np.sign(np.sum(flipped * other.components_, axis=1))
        np.testing.assert_allclose(pca.transform(x), other.transform(x) * flips, rtol=0, atol=1e-8 * np.abs(x).max())


# ---- merge ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n,d,k", [(123, 33, 7), (401, 700, 8)])
def test_merge_of_two_halves_equals_one_pass(n, d, k, dtype_name):
    dtype = DTYPES[dtype_name]
    x = rows(n, d, seed=2 * n + d).astype(NUMPY[dtype])
    whole = SkillPCA(k).fit(x)
    first, second = SkillPCA(k).fit(x[:n // 3]), SkillPCA(k)
    for piece in chunks(x[n // 3:], [1, 0, 40]):
        second.partial_fit(piece)
    assert not torch.equal(first.stats.shift, second.stats.shift)  # the merge re-expresses the sums around one shift
    assert first.merge(second) is first
    assert first.n_samples_seen_ == n
    assert_same_fit(first, whole, dtype)  # and the fit `first` had solved before the merge is not kept
    into_empty = SkillPCA(k).merge(SkillPCA(k)).merge(SkillPCA(k).fit(x[:n // 3])).merge(second)
    assert_same_fit(into_empty, whole, dtype)
    check_matches_sklearn(into_empty, x, k, dtype)


def test_merge_of_fp32_and_fp64_rows_solves_in_fp64():
    x = rows(200, 500, seed=5)
    merged = SkillPCA(6).fit(x[:120].astype(np.float32)).merge(SkillPCA(6).fit(x[120:]))
    one_pass = SkillPCA(6)
    one_pass.partial_fit(x[:120].astype(np.float32))
    one_pass.partial_fit(x[120:])
    check_matches_sklearn(merged, np.concatenate([x[:120].astype(np.float32).astype(np.float64), x[120:]]), 6,
                          torch.float64)
    assert_same_fit(merged, one_pass, torch.float64)


def test_merge_errors_are_clear():
    x = rows(60, 8, seed=6)
    exact, sketched = SkillPCA(2).fit(x), SkillPCA(2, sketch_size=8).fit(x)
    with pytest.raises(AutoskillError, match="cannot merge exact statistics with a sketch"):
        exact.merge(sketched)
    with pytest.raises(AutoskillError, match="cannot merge exact statistics with a sketch"):
        SkillPCA(2, sketch_size=8).fit(x).merge(SkillPCA(2).fit(x))
    with pytest.raises(AutoskillError, match="cannot merge statistics of 9 dims into 8 dims"):
        exact.merge(SkillPCA(2).fit(rows(60, 9, seed=6)))
    with pytest.raises(AutoskillError, match="can only merge another SkillPCA, got ndarray"):
        exact.merge(x)
    assert exact.n_samples_seen_ == 60


# ---- input and output types -------------------------------------------------------------------------------------
def test_numpy_in_numpy_out_torch_in_torch_out():
    x = rows(97, 33, seed=8)
    from_numpy, from_torch = SkillPCA(4).fit(x), SkillPCA(4).fit(torch.from_numpy(x))
    assert torch.equal(from_numpy.components_, from_torch.components_)
    for fitted in (from_numpy, from_torch):
        for rows_in in (x, x.astype(np.float32)):
            scores = fitted.transform(rows_in)
            assert isinstance(scores, np.ndarray) and scores.dtype == rows_in.dtype
            back = fitted.inverse_transform(scores)
            assert isinstance(back, np.ndarray) and back.dtype == rows_in.dtype and back.shape == x.shape
            as_torch = fitted.transform(torch.from_numpy(rows_in))
            assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.from_numpy(rows_in).dtype
            np.testing.assert_array_equal(as_torch.numpy(), scores)
            assert isinstance(fitted.inverse_transform(as_torch), torch.Tensor)
    # fit_transform is fit, then transform of the same rows.
    scores = SkillPCA(4).fit_transform(torch.from_numpy(x))
    assert isinstance(scores, torch.Tensor)
    np.testing.assert_allclose(scores.numpy(), from_numpy.transform(x), rtol=0, atol=1e-12 * np.abs(x).max())


def test_int_rows_are_float64_and_odd_layouts_are_the_same_rows():
    x = np.random.default_rng(9).integers(-50, 50, size=(123, 17)) + np.arange(17) * 1000
    as_int = SkillPCA(3).fit(x)
    as_float = SkillPCA(3).fit(x.astype(np.float64))
    assert torch.equal(as_int.components_, as_float.components_)
    assert torch.equal(as_int.explained_variance_, as_float.explained_variance_)
    scores = as_int.transform(x)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, as_float.transform(x.astype(np.float64)))
    check_matches_sklearn(as_int, x.astype(np.float64), 3, torch.float64)
    # Fortran order, a transposed torch tensor, and negative strides are the same rows.
    xf = x.astype(np.float64)
    for layout in (np.asfortranarray(xf), torch.from_numpy(np.ascontiguousarray(xf.T)).T):
        assert_same_fit(SkillPCA(3).fit(layout), as_float, torch.float64)
    backwards = SkillPCA(3)
    for piece in chunks(xf[::-1], awkward_sizes(123, seed=1)):  # [1, D] and [0, D] views with a negative stride
        backwards.partial_fit(piece)
    assert_same_fit(backwards, as_float, torch.float64)


def test_bfloat16_rows_are_their_exact_values():
    x = torch.from_numpy(rows(97, 33, seed=10)).to(torch.bfloat16)
    pca = SkillPCA(4).fit(x)
    assert_same_fit(pca, SkillPCA(4).fit(x.float()), torch.float32)
    assert pca.transform(x).dtype == torch.float32


# ---- persistence ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sketch_size", [None, 24])
def test_save_load_round_trip_and_resume(tmp_path, sketch_size):
    x = rows(401, 97, seed=11)
    straight = SkillPCA(6, sketch_size=sketch_size)
    resumed = SkillPCA(6, sketch_size=sketch_size)
    for piece in chunks(x, [150]):
        straight.partial_fit(piece)
    resumed.partial_fit(x[:150])
    unsolved = resumed.save(tmp_path / "unsolved")
    resumed.result()  # solve, so that the fitted components are saved too
    resumed.save(tmp_path / "solved")
    for folder in (unsolved, tmp_path / "solved"):
        loaded = SkillPCA.load(folder)
        assert loaded.n_components == 6 and loaded.sketch_size == sketch_size and loaded.n_samples_seen_ == 150
        assert repr(loaded) == repr(resumed)
        for name in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_"):
            assert torch.equal(getattr(loaded, name), getattr(resumed, name)), name
        np.testing.assert_array_equal(loaded.transform(x), resumed.transform(x))
    loaded = SkillPCA.load(tmp_path / "solved")
    loaded.partial_fit(x[150:])
    if sketch_size is None:
        assert_same_fit(loaded, straight, torch.float64)  # the save flushed the staged rows: sums differ in last bits
    else:  # the sketch state is restored bit for bit
        for name in ("components_", "explained_variance_", "mean_"):
            assert torch.equal(getattr(loaded, name), getattr(straight, name)), name


def test_non_finite_rows_are_refused_before_they_enter_the_sums():
    pca = SkillPCA(2)
    pca.partial_fit(rows(10, 5, seed=13))
    bad = rows(4, 5, seed=14)
    bad[2, 3] = float("inf")
    with pytest.raises(AutoskillError, match=r"X holds a non-finite value \(row 2, column 3 of these rows\)"):
        pca.partial_fit(bad)
    assert pca.n_samples_seen_ == 10


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(AutoskillError, match="cannot save a SkillPCA that has seen no rows"):
        SkillPCA(2).save(tmp_path / "empty")
    with pytest.raises(AutoskillError, match="pca.json: file not found"):
        SkillPCA.load(tmp_path / "nothing")
    folder = SkillPCA(2).fit(rows(20, 5, seed=12)).save(tmp_path / "pca")
    meta = json.loads((folder / "pca.json").read_text())
    del meta["n_components"]
    (folder / "pca.json").write_text(json.dumps(meta))
    with pytest.raises(AutoskillError, match="missing or malformed 'n_components'.*not a saved SkillPCA"):
        SkillPCA.load(folder)
    meta["n_components"], meta["tol"] = 2, None
    (folder / "pca.json").write_text(json.dumps(meta))
    with pytest.raises(AutoskillError, match="missing or malformed .*NoneType.* not a saved SkillPCA"):
        SkillPCA.load(folder)
    (folder / "pca.json").write_text("[1, 2]")
    with pytest.raises(AutoskillError, match="pca.json: expected a JSON object; not a saved SkillPCA"):
        SkillPCA.load(folder)


# ---- Frequent Directions sketches -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_sketch_holding_every_row_is_exact(dtype_name):
    """97 rows never fill a sketch of 100 (its buffer holds 200): no shrink, the fp32 rows of the sketch are the
    shifted rows themselves, so the answer is the exact one to fp32 storage."""
    dtype = DTYPES[dtype_name]
    x = rows(97, 33, seed=13).astype(NUMPY[dtype])
    pca = SkillPCA(5, sketch_size=100).fit(x)
    assert pca.stats.error_bound() == 0.0 and pca.result().solver["method"] == "frequent-directions"
    ref = reference(x.astype(np.float64), 5)
    top = ref.spectrum[0]
    np.testing.assert_allclose(pca.explained_variance_.numpy(), ref.pca.explained_variance_, rtol=0, atol=1e-6 * top)
    np.testing.assert_allclose(pca.explained_variance_ratio_.numpy(), ref.pca.explained_variance_ratio_, rtol=0,
                               atol=1e-6 * top / ref.spectrum.sum())
    component_distances(pca, ref, torch.float32)
    np.testing.assert_allclose(pca.mean_.numpy(), ref.pca.mean_, rtol=0, atol=1e-13 * np.abs(x).max())


def test_sketch_mean_and_total_variance_are_exact_under_a_large_offset():
    x = rows(97, 33, seed=13, offset=1000.0)
    pca = SkillPCA(5, sketch_size=100).fit(x)
    np.testing.assert_allclose(pca.mean_.numpy(), x.mean(axis=0), rtol=0, atol=1e-10 * np.abs(x).max())
    assert pca.result().total_variance == pytest.approx(np.var(x, axis=0, ddof=1).sum(), rel=1e-10)


def test_sketches_around_different_shifts_merge_exactly():
    """Each SkillPCA fixes its shift to its own first rows' mean; merged, two sketches that hold every row give the
    exact PCA of all rows (to fp32 storage), with the mean and total variance exact."""
    x = rows(150, 33, seed=16, offset=50.0)
    left, right = SkillPCA(5, sketch_size=100).fit(x[:70]), SkillPCA(5, sketch_size=100).fit(x[70:])
    assert not torch.equal(left.stats.shift, right.stats.shift)
    merged = left.merge(right)
    assert merged.n_samples_seen_ == 150 and merged.stats.error_bound() == 0.0
    ref = reference(x, 5)
    top = ref.spectrum[0]
    np.testing.assert_allclose(merged.explained_variance_.numpy(), ref.pca.explained_variance_, rtol=0,
                               atol=1e-6 * top)
    component_distances(merged, ref, torch.float32)
    np.testing.assert_allclose(merged.mean_.numpy(), x.mean(axis=0), rtol=0, atol=1e-10 * np.abs(x).max())
    assert merged.result().total_variance == pytest.approx(np.var(x, axis=0, ddof=1).sum(), rel=1e-10)


@pytest.mark.parametrize("sketch_size", [12, 40])
def test_small_sketch_is_within_its_reported_bound(sketch_size):
    """Exact eigenvalues lie in [raw, raw + bound]; SkillPCA returns the upper end, so within the bound of them, and
    each direction within the angle Davis-Kahan allows a covariance that far off."""
    x = rows(2000, 97, seed=14, decay=0.8)
    pca = SkillPCA(5, sketch_size=sketch_size)
    for piece in chunks(x, [1, 0, 333, 700]):
        pca.partial_fit(piece)
    bound = pca.stats.error_bound()
    ref = reference(x, 5)
    top = ref.spectrum[0]
    assert 0 < bound < 0.05 * top  # a real shrink, and an informative bound
    slack = 1e-5 * top  # fp32 storage of the sketch rows
    values = pca.explained_variance_.numpy()
    assert np.all(np.abs(values - ref.pca.explained_variance_) <= bound + slack)
    assert pca.result().solver["max_residual"] == pytest.approx(bound / values[0])
    v = pca.components_.double().numpy()
    # ||(C - C_sketch) v|| <= bound, and the sketch's eigenvalue is within bound of the exact one: Davis-Kahan.
    gaps = np.array([np.abs(ref.spectrum[i] - np.delete(ref.spectrum, i)).min() for i in range(5)]) - bound
    assert gaps[0] > 2 * bound  # at least the top direction is resolved
    for i in np.flatnonzero(gaps > 2 * bound):
        sin_theta = np.linalg.norm(v[i] - ref.components[i] * (ref.components[i] @ v[i]))
        assert sin_theta <= (bound + slack) / gaps[i], f"component {i}"
    assert pca.result().total_variance == pytest.approx(ref.spectrum.sum(), rel=1e-6)


# ---- PrincipalComponents and fit_components ---------------------------------------------------------------------
def test_fit_components_of_statistics_is_what_skillpca_fits():
    x = torch.from_numpy(rows(123, 60, seed=15))
    stats = StreamingCovariance(60)
    stats.update(x)
    fitted = fit_components(stats, 5, dtype=torch.float64)
    pca = SkillPCA(5).fit(x)
    assert fitted.k == 5 and fitted.feature_dim == 60 and fitted.n_samples == 123
    np.testing.assert_allclose(fitted.explained_variance.numpy(), pca.explained_variance_.numpy(), rtol=1e-12)
    np.testing.assert_allclose(fitted.components.numpy(), pca.components_.numpy(), rtol=0, atol=1e-12)
    assert fitted.solver["method"] == pca.result().solver["method"] and fitted.solver["max_residual"] < 1e-12
    check_matches_sklearn(pca, x.numpy(), 5, torch.float64)
    # The paper's cosine score: raw rows (not centered) against each unit direction.
    want = x.numpy() @ pca.components_.numpy().T / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.cosine(x).numpy(), want, rtol=0, atol=1e-6)
    restored = PrincipalComponents.from_saved(fitted.tensors(), fitted.summary())
    for name in ("components", "explained_variance", "mean", "explained_variance_ratio", "singular_values"):
        assert torch.equal(getattr(restored, name), getattr(fitted, name)), name
    with pytest.raises(AutoskillError, match=r"disagree in shape: components \(5, 60\), variances \(4,\)"):
        PrincipalComponents(fitted.components, fitted.explained_variance[:4], fitted.mean, 123, 1.0)
    with pytest.raises(AutoskillError, match=r"rows of shape \(3, 59\) do not match the 60 dims"):
        fitted.cosine(x[:3, :59])


def test_constant_rows_explain_no_variance():
    pca = SkillPCA(2).fit(np.full((5, 3), 7.0))
    assert pca.explained_variance_.tolist() == [0.0, 0.0] and pca.singular_values_.tolist() == [0.0, 0.0]
    assert pca.explained_variance_ratio_.tolist() == [0.0, 0.0]  # scikit-learn divides 0 by 0 here
    np.testing.assert_array_equal(pca.transform(np.full((2, 3), 7.0)), np.zeros((2, 2)))


# ---- errors -----------------------------------------------------------------------------------------------------
def test_too_many_components_names_the_limit():
    with pytest.raises(AutoskillError, match=r"k=5 is more directions than the data has: 5 examples in 10 dims give "
                                             r"at most 4; ask for 4 or fewer"):
        SkillPCA(5).fit(rows(5, 10, seed=16))
    with pytest.raises(AutoskillError, match="8 examples in 3 dims give at most 3; ask for 3 or fewer"):
        _ = SkillPCA(4).partial_fit(rows(8, 3, seed=16)).components_
    with pytest.raises(AutoskillError, match="1 examples in 3 dims give at most 0; add at least 2 examples"):
        SkillPCA(1).fit(rows(1, 3, seed=16))


@pytest.mark.parametrize("n_components", [0, -1, 2.0, True, "3"])
def test_n_components_must_be_a_positive_integer(n_components):
    with pytest.raises(AutoskillError, match="n_components must be a positive integer"):
        SkillPCA(n_components)


def test_other_errors_are_clear():
    with pytest.raises(AutoskillError, match="sketch_size=5 is too small for n_components=3; use at least 6"):
        SkillPCA(3, sketch_size=5)
    with pytest.raises(AutoskillError, match="tol must be a positive number, got 0.0"):
        SkillPCA(3, tol=0.0)
    pca = SkillPCA(2)
    with pytest.raises(AutoskillError, match="seen no rows yet; call fit or partial_fit first"):
        pca.transform(np.ones((3, 4)))
    with pytest.raises(AutoskillError, match="seen no rows yet"):
        _ = pca.n_features_in_
    assert pca.n_samples_seen_ == 0 and repr(pca) == "SkillPCA(n_components=2)"
    with pytest.raises(AutoskillError, match="X has no rows; fit needs at least one"):
        SkillPCA(2).fit(np.ones((0, 4)))
    x = rows(20, 4, seed=17)
    pca.partial_fit(x)
    with pytest.raises(AutoskillError, match="X has 5 features but this SkillPCA was fitted with 4"):
        pca.partial_fit(np.ones((3, 5)))
    with pytest.raises(AutoskillError, match=r"rows of shape \(3, 5\) do not match the 4 dims"):
        pca.transform(np.ones((3, 5)))
    with pytest.raises(AutoskillError, match=r"scores of shape \(3, 3\) do not match the 2 components"):
        pca.inverse_transform(np.ones((3, 3)))
    with pytest.raises(AutoskillError, match=r"X must be 2-D \[n_samples, n_features\], got shape \(4,\)"):
        pca.transform(np.ones(4))
    with pytest.raises(AutoskillError, match="X is a list that is not a 2-D table of numbers"):
        pca.partial_fit([[1.0, 2.0, 3.0, 4.0], [1.0]])
    with pytest.raises(AutoskillError, match="X must be a numpy array or a torch tensor, got str"):
        pca.partial_fit("1 2 3 4")
    with pytest.raises(AutoskillError, match=r"X is complex \(torch.complex64\); give real rows"):
        pca.partial_fit(torch.ones(3, 4, dtype=torch.complex64))
    assert pca.n_samples_seen_ == 20 and repr(pca) == "SkillPCA(n_components=2, n_samples_seen_=20)"
    for bad in (np.array([[1, "a"], [2, 3]], dtype=object), np.ones((5, 3), dtype=np.longdouble),
                np.ones((5, 3), dtype=">f8"), np.ones((5, 3), dtype=np.complex128)):  # tracebacks from torch before
        with pytest.raises(AutoskillError, match=r"X holds .* values; give real numbers in the machine's byte order"):
            SkillPCA(1).fit(bad)
    with pytest.raises(AutoskillError, match=r"X has no features \(shape \(5, 0\)\)"):
        SkillPCA(1).fit(np.zeros((5, 0)))
    with pytest.raises(AutoskillError, match="the statistics are not finite: the features' squares overflowed float64"):
        SkillPCA(2).fit(rows(50, 6, seed=1) * 1e200)


@pytest.mark.parametrize("magnitude,dtype_name", [(1e-30, "fp32"), (1e30, "fp32"), (1e-100, "fp64"), (1e120, "fp64")])
@pytest.mark.parametrize("d", [97, 700])  # exact and Krylov
def test_rows_far_from_unit_scale_fit_as_the_same_rows_at_unit_scale(magnitude, dtype_name, d):
    """The fp32 products of the Krylov path rounded variances below ~1e-38 to 0 (every eigenvalue 0, silently) and
    overflowed sums above ~1e38; the fp64 solver's norms underflowed below ~1e-150 (wrong pairs reported converged)."""
    dtype = DTYPES[dtype_name]
    x = rows(401, d, seed=d)
    scaled = SkillPCA(6).fit((x * magnitude).astype(NUMPY[dtype]))
    unit = SkillPCA(6).fit(x.astype(NUMPY[dtype]))
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(scaled.explained_variance_.numpy() / magnitude ** 2, unit.explained_variance_.numpy(),
                               rtol=rtol)
    cosines = (scaled.components_.double() * unit.components_.double()).sum(dim=1)
    assert float(cosines.min()) > 1 - 1e-4  # the same directions, with the same signs
    assert scaled.components_.dtype == unit.components_.dtype == dtype


def test_components_come_in_the_rows_dtype_whichever_solver_ran():
    """fp32 rows gave fp64 components up to D = 384 (the exact fp64 solve) and fp32 above."""
    for d in (EXACT_MAX_DIM_CPU, EXACT_MAX_DIM_CPU + 1):
        for dtype in DTYPES.values():
            pca = SkillPCA(3).fit(rows(60, d, seed=d).astype(NUMPY[dtype]))
            assert pca.components_.dtype == dtype and pca.transform(torch.ones(2, d, dtype=dtype)).dtype == dtype


def test_options_take_numpy_integers_and_refuse_what_is_not_a_number():
    """scikit-learn's conventions: numpy integers are integers; strings, fractional sizes and a device this torch does
    not have are refused when the SkillPCA is made, not at the first fit."""
    x = rows(30, 6, seed=21)
    assert np.array_equal(SkillPCA(np.int64(2), sketch_size=np.int32(6)).fit(x).components_.shape, (2, 6))
    for options, message in (({"sketch_size": 6.5}, "sketch_size must be an integer"),
                             ({"sketch_size": "8"}, "sketch_size must be an integer"),
                             ({"tol": "1e-6"}, "tol must be a positive number, got '1e-6'"),
                             ({"tol": float("nan")}, "tol must be a positive number"),
                             ({"device": "nonsense"}, "device 'nonsense' cannot be used here")):
        with pytest.raises(AutoskillError, match=message):
            SkillPCA(2, **options)
    if not torch.cuda.is_available():
        with pytest.raises(AutoskillError, match="device 'cuda' cannot be used here .*; use device='cpu' or None"):
            SkillPCA(2, device="cuda")
    # a nested list is a table of rows, as numpy reads it
    listed = SkillPCA(2).fit(x.tolist())
    np.testing.assert_array_equal(listed.components_.numpy(), SkillPCA(2).fit(x).components_.numpy())


def test_an_unfitted_attribute_is_missing_to_hasattr_and_a_changed_option_solves_again(tmp_path):
    pca = SkillPCA(3)
    assert not hasattr(pca, "components_") and getattr(pca, "mean_", None) is None
    with pytest.raises(AutoskillError, match="seen no rows yet"):
        _ = pca.components_
    x = rows(40, 7, seed=22)
    pca.fit(x)
    assert hasattr(pca, "components_") and pca.components_.shape == (3, 7)
    pca.n_components = 2  # as scikit-learn's set_params then fit would: the next read solves for 2
    np.testing.assert_array_equal(pca.components_.numpy(), SkillPCA(2).fit(x).components_.numpy())
    loaded = SkillPCA.load(pca.save(tmp_path / "pca"))
    assert loaded._solved_for == (2, pca.tol) and torch.equal(loaded.components_, pca.components_)


def test_scikit_learn_clones_and_sets_the_parameters(tmp_path):
    from sklearn.base import clone

    pca = SkillPCA(3, sketch_size=8, tol=1e-7, device="cpu").fit(rows(40, 7, seed=25))
    copy = clone(pca)
    assert copy.get_params() == pca.get_params() and copy.n_samples_seen_ == 0
    assert clone(SkillPCA.load(pca.save(tmp_path / "saved"))).get_params()["device"] == "cpu"
    assert pca.set_params(n_components=2) is pca and pca.n_samples_seen_ == 40 and pca.components_.shape == (2, 7)
    pca.set_params(sketch_size=None)  # exact statistics now: the sketch's rows are forgotten, as fit would
    assert pca.n_samples_seen_ == 0 and pca.sketch_size is None
    with pytest.raises(AutoskillError, match="SkillPCA has no parameter 'n_component'"):
        pca.set_params(n_component=2)
    with pytest.raises(AutoskillError, match="tol must be a positive number"):
        pca.set_params(tol=-1.0)
    assert pca.tol == 1e-7
    # components solved for other options are not saved as these options' (load would trust them)
    exact = SkillPCA(4).fit(rows(40, 9, seed=26))
    _ = exact.components_
    exact.set_params(n_components=2)
    loaded = SkillPCA.load(exact.save(tmp_path / "changed"))
    assert loaded.components_.shape == (2, 9)
    np.testing.assert_array_equal(loaded.components_.numpy(), exact.components_.numpy())


def test_fit_names_the_row_of_x_that_is_not_finite_and_keeps_the_earlier_fit(monkeypatch):
    """`fit` adds X in chunks; a NaN in a later chunk was named by its row within that chunk, and the chunks before it
    were kept. X is checked whole (in blocks) before anything is forgotten or added."""
    monkeypatch.setattr(pca_module, "FIT_CHUNK_ELEMENTS", 5 * 4)  # chunks of 5 rows of 4
    earlier = rows(30, 4, seed=23)
    pca = SkillPCA(2).fit(earlier)
    before = pca.components_.clone()
    x = rows(23, 4, seed=24)
    x[17, 2] = np.nan
    with pytest.raises(AutoskillError, match=r"row 17, column 2\); nothing was fitted"):
        pca.fit(x)
    assert pca.n_samples_seen_ == 30 and torch.equal(pca.components_, before)
    x[17, 2], x[21, 0] = 0.0, np.inf
    with pytest.raises(AutoskillError, match=r"row 21, column 0 of these rows\); nothing of them was added"):
        pca.partial_fit(x)
    assert pca.n_samples_seen_ == 30


# ---- GPU ----------------------------------------------------------------------------------------------------------
CUDA_ACCURACY = (0.0, 1e-5)  # the sums themselves accumulate in fp32 on a GPU: rounding of about sqrt(n) * 1e-7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cuda_rows_match_sklearn(dtype_name):
    """Statistics on a GPU accumulate shifted rows in fp32 whatever the rows' dtype, so both dtypes get fp32-level
    accuracy (relative to the top eigenvalue); streamed, merged and scored on the device."""
    dtype = DTYPES[dtype_name]
    x = rows(401, 700, seed=18).astype(NUMPY[dtype])
    x_cuda = torch.from_numpy(x).cuda()
    streamed = SkillPCA(8)
    for piece in chunks(x_cuda, awkward_sizes(401, seed=0)):
        streamed.partial_fit(piece)
    merged = SkillPCA(8).fit(x_cuda[:200]).merge(SkillPCA(8).fit(x_cuda[200:]))
    ref = reference(x.astype(np.float64), 8)
    for pca in (streamed, merged):
        assert pca.stats.device.type == "cuda" and pca.n_samples_seen_ == 401
        own, of_top = CUDA_ACCURACY
        err = np.abs(pca.explained_variance_.numpy() - ref.pca.explained_variance_)
        assert np.all(err <= own * ref.pca.explained_variance_ + of_top * ref.spectrum[0]), err / ref.spectrum[0]
        np.testing.assert_allclose(pca.mean_.numpy(), ref.pca.mean_, rtol=0, atol=1e-6 * np.abs(x).max())
        distances = component_distances(pca, ref, torch.float32, CUDA_ACCURACY)
        scores = pca.transform(x_cuda)
        assert scores.is_cuda and scores.dtype == x_cuda.dtype
        centered_norms = np.linalg.norm(x - ref.pca.mean_, axis=1, keepdims=True)
        np.testing.assert_array_less(np.abs(scores.cpu().numpy() - ref.pca.transform(x.astype(np.float64)) * ref.flips),
                                     centered_norms * (distances + 1e-5))
