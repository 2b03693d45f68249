"""autoskill_fast.decomposition.linalg against fp64 numpy: eigenpairs (all methods, both dtypes, awkward spectra) and projection.

Eigenvectors are compared through principal angles between the returned and the reference invariant subspaces of
each cluster of eigenvalues, bounded by the Davis-Kahan sin-theta theorem from the measured residual and the gap,
so the same check is tight for well-separated eigenvalues and fair for clusters and repeats.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from autoskill_fast.decomposition import linalg
from autoskill_fast.decomposition.linalg import EighConvergenceWarning, core_available, project, topk_eigh

needs_core = pytest.mark.skipif(not core_available(), reason="autoskill_fast._core is not built (pip install -e .)")
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# Per dtype: Krylov tol asked for, and the floors of eigenvalue error / residual / orthonormality, relative to ||A||.
TOL = {torch.float32: 1e-6, torch.float64: 1e-10}
FLOOR = {torch.float32: 2e-6, torch.float64: 1e-12}
ORTH = {torch.float32: 1e-5, torch.float64: 1e-11}


# ---- matrices: fp64 numpy, with their exact spectrum where known ------------------------------------------------
def _orthogonal(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _from_spectrum(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    q = _orthogonal(rng, len(eigenvalues))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def make_matrix(kind: str, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":  # semicircle spectrum, half of it negative, small gaps at the top
        x = rng.standard_normal((dim, dim))
        return (x + x.T) / 2
    if kind == "covariance":  # PSD, power-law spectrum with a spike, as in PCA of activations
        x = rng.standard_normal((2 * dim + 3, dim)) * (np.arange(1, dim + 1) ** -0.5)
        x[:, 0] *= 10
        x -= x.mean(axis=0)
        return x.T @ x / len(x)
    if kind == "low_rank":  # covariance of fewer samples than dimensions: a large multiple zero eigenvalue
        x = rng.standard_normal((max(1, dim // 5), dim))
        return x.T @ x
    if kind == "clustered":  # repeated (multiplicity 3) and nearly repeated eigenvalues, some negative
        values = np.linspace(-1, 1, dim)
        values[-3:] = 2.0
        values[-6:-3] = 1.5 + np.array([0, 1e-9, 2e-9])
        return _from_spectrum(rng, values)
    if kind == "negative_definite":  # evenly spaced; the top-k are far smaller in magnitude than ||A||
        return _from_spectrum(rng, -1.0 - 0.05 * np.arange(dim))
    raise ValueError(kind)


def _reference(a64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(a64)
    return values[::-1].copy(), vectors[:, ::-1].copy()


def check_eigenpairs(a64: np.ndarray, k: int, result: linalg.EighResult, dtype: torch.dtype, tol: float) -> None:
    """Eigenvalues, residuals (reported and recomputed), orthonormality and subspaces against fp64 numpy."""
    values_ref, vectors_ref = _reference(a64)
    norm = max(abs(values_ref[0]), abs(values_ref[-1]), np.finfo(np.float64).tiny)
    values = result.eigenvalues.double().numpy()
    vectors = result.eigenvectors.double().numpy()
    assert result.eigenvalues.dtype == dtype and result.eigenvectors.dtype == dtype
    assert values.shape == (k,) and vectors.shape == (a64.shape[0], k) and result.residuals.shape == (k,)
    assert np.all(np.diff(values) <= 0), "eigenvalues must be descending"

    bound = max(tol, FLOOR[dtype])
    scale = max(abs(values[0]), abs(values[-1]), np.finfo(np.float64).tiny)
    assert np.abs(values - values_ref[:k]).max() <= 2 * bound * norm
    assert result.residuals.max() <= bound * norm / scale
    recomputed = np.linalg.norm(a64 @ vectors - vectors * values, axis=0) / scale
    assert recomputed.max() <= 2 * bound * norm / scale
    assert np.abs(vectors.T @ vectors - np.eye(k)).max() <= ORTH[dtype]

    # Clusters: eigenvalues of the full spectrum closer than `sep` belong together; one straddling k has no unique
    # top-k subspace, so only its eigenvalues are checked.
    sep = 1e-4 * norm
    starts = [0] + [i for i in range(1, len(values_ref)) if values_ref[i - 1] - values_ref[i] > sep]
    bounds = starts + [len(values_ref)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > k:
            break
        gap = min(values_ref[lo - 1] - values_ref[lo] if lo > 0 else np.inf,
                  values_ref[hi - 1] - values_ref[hi] if hi < len(values_ref) else np.inf)
        residual = np.linalg.norm(a64 @ vectors[:, lo:hi] - vectors[:, lo:hi] * values[lo:hi], ord=2)
        ref = vectors_ref[:, lo:hi]
        sin_theta = np.linalg.norm(vectors[:, lo:hi] - ref @ (ref.T @ vectors[:, lo:hi]), ord=2)  # largest angle
        allowed = 1.5 * residual / (gap - 2 * bound * norm) + ORTH[dtype]  # Davis-Kahan, plus rounding
        assert sin_theta <= allowed, f"cluster {lo}:{hi}: sin(theta)={sin_theta:.2e} > {allowed:.2e}"
    # Deterministic signs: the largest-magnitude entry of every eigenvector is positive.
    assert np.all(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)] > 0)


SHAPES = [(1, 1), (2, 1), (2, 2), (97, 1), (97, 5), (97, 97), (123, 60), (123, 122), (513, 16), (513, 500)]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("method", ["exact", "krylov", "torch", "auto"])
@pytest.mark.parametrize("dim,k", SHAPES)
def test_topk_eigh_matches_numpy_on_gaussian(dim, k, method, dtype_name):
    dtype = DTYPES[dtype_name]
    a64 = make_matrix("gaussian", dim, seed=dim * 1000 + k)
    result = topk_eigh(torch.from_numpy(a64).to(dtype), k, method=method, tol=TOL[dtype])
    check_eigenpairs(torch.from_numpy(a64).to(dtype).double().numpy(), k, result, dtype, TOL[dtype])


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("method", ["exact", "krylov", "torch"])
@pytest.mark.parametrize("kind", ["covariance", "low_rank", "clustered", "negative_definite"])
@pytest.mark.parametrize("dim,k", [(123, 7), (513, 40)])
def test_topk_eigh_awkward_spectra(kind, dim, k, method, dtype_name):
    dtype = DTYPES[dtype_name]
    a = torch.from_numpy(make_matrix(kind, dim, seed=dim + k)).to(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = topk_eigh(a, k, method=method, tol=TOL[dtype])
    check_eigenpairs(a.double().numpy(), k, result, dtype, TOL[dtype])
    if caught:  # only allowed where tol (relative to the top-k) is below what the dtype resolves (relative to ||A||)
        assert [w.category for w in caught] == [EighConvergenceWarning]
        values = np.linalg.eigvalsh(a.double().numpy())
        scale = max(abs(float(result.eigenvalues[0])), abs(float(result.eigenvalues[-1])))
        assert torch.finfo(dtype).eps * np.abs(values).max() / scale > TOL[dtype]
        assert float(result.residuals.max()) > TOL[dtype]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_torch_krylov_matches_numpy(dtype_name):
    """The torch block Krylov (the CUDA path and the CPU fallback) on CPU tensors."""
    dtype = DTYPES[dtype_name]
    for kind, dim, k in [("covariance", 513, 40), ("clustered", 123, 7), ("low_rank", 123, 30), ("gaussian", 97, 97)]:
        a = torch.from_numpy(make_matrix(kind, dim, seed=3)).to(dtype)
        values, vectors, residuals, _, converged = linalg._krylov_torch(a, k, TOL[dtype], 300, 16, seed=0)
        assert converged
        result = linalg.EighResult(values, linalg.canonical_signs(vectors), residuals, "torch-block-krylov")
        check_eigenpairs(a.double().numpy(), k, result, dtype, TOL[dtype])


@needs_core
def test_core_and_torch_krylov_agree():
    """Same algorithm, different random streams: both reach tol, so they agree to about tol * lambda_0."""
    a = torch.from_numpy(make_matrix("covariance", 513, seed=5))
    core = topk_eigh(a, 20, method="krylov", tol=1e-10)
    values, vectors, _, _, _ = linalg._krylov_torch(a, 20, 1e-10, 300, linalg._default_block_size(20, False), seed=0)
    torch.testing.assert_close(core.eigenvalues, values, rtol=0, atol=2e-10 * float(values[0]))
    torch.testing.assert_close(core.eigenvectors, linalg.canonical_signs(vectors), rtol=0, atol=1e-6)


@pytest.mark.parametrize("core", ["core", "torch"])
def test_identity_and_zero_matrices_break_down_cleanly(core, monkeypatch):
    """Invariant starting blocks (A = I) and A = 0 need random restarts inside the Krylov solver, in C++ and in torch
    (the CUDA path, and the CPU path without the core: A = 0 once gave it a basis that was not orthonormal)."""
    if core == "torch":
        monkeypatch.setenv(linalg.DISABLE_CORE_ENV, "1")
    for a in (torch.eye(97, dtype=torch.float64), torch.zeros(97, 97, dtype=torch.float64)):
        for method in ("krylov", "exact", "torch"):
            result = topk_eigh(a, 20, method=method)
            torch.testing.assert_close(result.eigenvalues, torch.full((20,), float(a[0, 0]), dtype=torch.float64))
            assert float(result.residuals.max()) <= 1e-12
            torch.testing.assert_close(result.eigenvectors.T @ result.eigenvectors, torch.eye(20, dtype=torch.float64))


def test_krylov_is_deterministic_per_seed():
    a = torch.from_numpy(make_matrix("covariance", 513, seed=1)).float()
    first, second = topk_eigh(a, 16, method="krylov", seed=7), topk_eigh(a, 16, method="krylov", seed=7)
    assert torch.equal(first.eigenvectors, second.eigenvectors) and torch.equal(first.eigenvalues, second.eigenvalues)
    other = topk_eigh(a, 16, method="krylov", seed=8)
    torch.testing.assert_close(other.eigenvalues, first.eigenvalues, rtol=0, atol=2e-6 * float(first.eigenvalues[0]))


def test_auto_picks_exact_for_small_and_krylov_for_large_cpu():
    expected = "block-krylov" if core_available() else "torch-block-krylov"
    small = torch.from_numpy(make_matrix("covariance", 97, seed=0))
    large = torch.from_numpy(make_matrix("covariance", 1200, seed=0)).float()
    assert topk_eigh(small, 3).method in ("lapack-syevr", "torch-eigh")
    assert topk_eigh(large, 8).method == expected
    assert topk_eigh(large, 300).method in ("lapack-syevr", "torch-eigh")  # basis would be most of the space


def test_max_iter_reached_warns_and_returns_what_was_reached():
    a = torch.from_numpy(make_matrix("gaussian", 513, seed=0))
    with pytest.warns(EighConvergenceWarning, match="max_iter=3 block products were used up"):
        result = topk_eigh(a, 10, method="krylov", max_iter=3)
    assert result.eigenvalues.shape == (10,) and float(result.residuals.max()) > 1e-6


def test_unreachable_tol_in_fp32_stops_early_with_a_warning():
    a = torch.from_numpy(make_matrix("covariance", 513, seed=0)).float()
    with pytest.warns(EighConvergenceWarning, match="rounding in float32 stopped progress"):
        result = topk_eigh(a, 8, method="krylov", tol=1e-12)
    assert float(result.residuals.max()) < 1e-5  # what fp32 reaches is still returned


@pytest.mark.parametrize("method", ["exact", "krylov", "torch"])
def test_bad_matrix_input_is_named(method):
    good = torch.eye(5)
    with pytest.raises(ValueError, match="square"):
        topk_eigh(torch.zeros(4, 5), 1, method=method)
    with pytest.raises(TypeError, match="float32 or float64"):
        topk_eigh(torch.eye(5, dtype=torch.float16), 1, method=method)
    with pytest.raises(TypeError, match="float32 or float64"):
        topk_eigh(torch.eye(5, dtype=torch.int64), 1, method=method)
    for k in (0, 6, 2.0):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
            topk_eigh(good, k, method=method)
    bad = torch.eye(5)
    bad[3, 1] = bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        topk_eigh(bad, 2, method=method)
    with pytest.raises(ValueError, match="not symmetric"):
        topk_eigh(torch.arange(25.0).reshape(5, 5), 2, method=method)
    with pytest.raises(ValueError, match="tol"):
        topk_eigh(good, 1, method=method, tol=0.0)
    with pytest.raises(ValueError, match="method"):
        topk_eigh(good, 1, method="lanczos")


@needs_core
def test_core_boundary_names_the_offending_argument():
    core = linalg._core
    a = np.eye(4, dtype=np.float32)
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        core.topk_eigh_exact([[1.0]], 1)
    with pytest.raises(TypeError, match="a must be float32 or float64, got int64"):
        core.topk_eigh_krylov(np.eye(4, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="a must be C-contiguous"):
        core.topk_eigh_krylov(np.asfortranarray(a + np.ones((4, 4), np.float32)), 1)
    with pytest.raises(ValueError, match=r"a contains NaN or Inf \(first at row 2, column 1\)"):
        bad = a.copy()
        bad[2, 1] = np.inf
        core.topk_eigh_exact(bad, 1)
    with pytest.raises(ValueError, match="max_steps"):
        core.topk_eigh_krylov(a, 1, max_steps=0)
    x, mean, comps = np.ones((3, 4), np.float32), np.zeros(4, np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match="mean must have the dtype of components"):
        core.project(x, mean.astype(np.float64), comps)
    with pytest.raises(ValueError, match="shapes do not match"):
        core.project(x, mean[:3].copy(), comps)
    with pytest.raises(ValueError, match="components must be 2-D"):
        core.project(x, mean, comps[0].copy())
    with pytest.raises(ValueError, match="components contains NaN or Inf"):
        core.project(x, mean, np.full((2, 4), np.nan, np.float32))


# ---- projection -------------------------------------------------------------------------------------------------
PROJECT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _project_reference(x: torch.Tensor, mean: torch.Tensor, comps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    centred = x.double().numpy() - mean.double().numpy()
    return centred @ comps.double().numpy().T, np.abs(centred) @ np.abs(comps.double().numpy()).T


@pytest.mark.parametrize("x_dtype", PROJECT_DTYPES)
@pytest.mark.parametrize("rows,dim,k", [(1, 1, 1), (0, 7, 3), (97, 123, 5), (4097, 513, 16)])
def test_project_matches_fp64(rows, dim, k, x_dtype):
    gen = torch.Generator().manual_seed(rows + dim)
    mean = 100 * torch.randn(dim, generator=gen)  # |mean| >> std: centring must happen before the product
    x = (mean + torch.randn(rows, dim, generator=gen)).to(x_dtype)
    comps = torch.linalg.qr(torch.randn(dim, k, generator=gen)).Q.T.contiguous()
    out = project(x, mean, comps)
    expected_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    assert out.shape == (rows, k) and out.dtype == expected_dtype
    ref, bound = _project_reference(x, mean, comps)
    rtol = 1e-12 if expected_dtype == torch.float64 else 2e-5
    assert np.all(np.abs(out.double().numpy() - ref) <= 1e-6 + rtol * bound)


def test_project_non_contiguous_and_fp64_components():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 200, generator=gen)[:, ::2]  # [50, 100] with stride 2
    mean, comps = torch.randn(100, generator=gen).double(), torch.randn(4, 100, generator=gen).double()
    out = project(x, mean, comps)
    assert out.dtype == torch.float64
    ref, bound = _project_reference(x, mean, comps)
    assert np.all(np.abs(out.numpy() - ref) <= 1e-12 * bound)


def test_project_names_the_non_finite_row_and_bad_shapes():
    x = torch.zeros(10, 4)
    x[6, 2] = float("nan")
    with pytest.raises(ValueError, match="row 6"):
        project(x, torch.zeros(4), torch.eye(4)[:2])
    with pytest.raises(ValueError, match="shapes do not match"):
        project(torch.zeros(3, 4), torch.zeros(5), torch.eye(4)[:2])
    with pytest.raises(TypeError, match="floating"):
        project(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(4), torch.eye(4)[:2])


# ---- the extension missing --------------------------------------------------------------------------------------
def test_missing_extension_falls_back_to_torch_with_one_warning(monkeypatch):
    monkeypatch.setattr(linalg, "_core", None)
    monkeypatch.setattr(linalg, "CORE_IMPORT_ERROR", "ImportError: no module named autoskill_fast._core")
    monkeypatch.setattr(linalg, "_fallback_warned", False)
    assert not core_available()
    a = torch.from_numpy(make_matrix("covariance", 513, seed=2))
    with pytest.warns(RuntimeWarning, match=r"_core is not available .*pip install -e \.") as record:
        result = topk_eigh(a, 12, method="krylov")
    assert len([w for w in record if "_core" in str(w.message)]) == 1
    assert result.method == "torch-block-krylov"
    check_eigenpairs(a.numpy(), 12, result, torch.float64, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # announced once only
        assert topk_eigh(a, 3, method="exact").method == "torch-eigh"
        x = torch.randn(5, 513, dtype=torch.float64)
        torch.testing.assert_close(project(x, a[0], a[:3]), (x - a[0]) @ a[:3].T)


def test_disable_env_ignores_the_extension(monkeypatch):
    monkeypatch.setenv(linalg.DISABLE_CORE_ENV, "1")
    assert not core_available()
    assert topk_eigh(torch.from_numpy(make_matrix("covariance", 513, seed=2)), 4, method="krylov").method == \
        "torch-block-krylov"


# ---- GPU ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cuda_paths_match_numpy(dtype_name):
    dtype = DTYPES[dtype_name]
    a64 = make_matrix("covariance", 2500, seed=0)
    a = torch.from_numpy(a64).to(dtype)
    for method in ("krylov", "torch", "auto"):
        result = topk_eigh(a.cuda(), 24, method=method, tol=TOL[dtype])
        assert result.eigenvectors.is_cuda
        cpu = linalg.EighResult(result.eigenvalues.cpu(), result.eigenvectors.cpu(), result.residuals, result.method)
        check_eigenpairs(a.double().numpy(), 24, cpu, dtype, TOL[dtype])
    x, mean, comps = torch.randn(300, 2500).to(dtype), torch.randn(2500), torch.randn(24, 2500)
    torch.testing.assert_close(project(x.cuda(), mean.cuda(), comps.cuda()).cpu(), project(x, mean, comps),
                               rtol=1e-5, atol=1e-4)


# ---- symmetric operators (matrices known by their products, e.g. packed) ---------------------------------------
class DenseOperator(linalg.SymmetricOperator):
    """A symmetric matrix seen only through products, counting them."""

    def __init__(self, a: torch.Tensor):
        self.a, self.shape, self.dtype, self.device = a, tuple(a.shape), a.dtype, a.device
        self.products = 0

    def __matmul__(self, x):
        self.products += 1
        return self.a @ x.to(self.dtype)

    def to_dense(self):
        return self.a.clone()


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("core", [True, False], ids=["core", "torch"])
@pytest.mark.parametrize("kind,dim,k", [("covariance", 513, 16), ("clustered", 600, 9), ("gaussian", 777, 40)])
def test_operator_krylov_matches_numpy(kind, dim, k, core, dtype_name, monkeypatch):
    if core and not core_available():
        pytest.skip("autoskill_fast._core is not built")
    if not core:
        monkeypatch.setenv(linalg.DISABLE_CORE_ENV, "1")
    dtype = DTYPES[dtype_name]
    a64 = make_matrix(kind, dim, seed=dim)
    operator = DenseOperator(torch.from_numpy(a64).to(dtype))
    result = topk_eigh(operator, k, tol=TOL[dtype], method="auto")
    assert result.method == ("block-krylov" if core else "torch-block-krylov") and operator.products > 0
    check_eigenpairs(a64.astype(np.float32).astype(np.float64) if dtype == torch.float32 else a64, k, result,
                     dtype, TOL[dtype])


def test_operator_small_or_exact_is_densified():
    a64 = make_matrix("gaussian", 97, seed=1)
    operator = DenseOperator(torch.from_numpy(a64))
    for method in ("auto", "exact", "torch"):
        result = topk_eigh(operator, 5, method=method)
        assert result.method in ("lapack-syevr", "torch-eigh") and operator.products == 0
        check_eigenpairs(a64, 5, result, torch.float64, TOL[torch.float64])


@needs_core
def test_core_operator_boundary_errors():
    from autoskill_fast import _core

    eye = np.eye(40)
    with pytest.raises(ValueError, match=r"must return an array of shape \(40, 8\)"):
        _core.topk_eigh_krylov_operator(lambda x: np.zeros((39, x.shape[1])), 40, "float64", 3, block_size=8)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        _core.topk_eigh_krylov_operator(lambda x: eye @ x, 40, "float16", 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 40\]"):
        _core.topk_eigh_krylov_operator(lambda x: eye @ x, 40, "float64", 41)
    with pytest.raises(ValueError, match="NaN or Inf"):
        _core.topk_eigh_krylov_operator(lambda x: np.full(x.shape, np.nan), 40, "float64", 3)

    def fails(x):
        raise RuntimeError("product failed on purpose")

    with pytest.raises(RuntimeError, match="product failed on purpose"):
        _core.topk_eigh_krylov_operator(fails, 40, "float32", 3)
    seen = []
    values, *_ = _core.topk_eigh_krylov_operator(lambda x: seen.append(x.dtype) or eye @ x, 40, "float32", 3)
    assert seen and set(seen) == {np.dtype(np.float32)} and np.allclose(values, 1.0)


@pytest.mark.parametrize("core", ["core", "torch"])
@pytest.mark.parametrize("magnitude", [1e-200, 1e-160, 1e200])
def test_krylov_on_fp64_entries_far_from_one_equals_it_on_the_matrix_scaled_to_one(magnitude, core, monkeypatch):
    """The solver's fp64 sums of squares underflowed near 1e-150: every product looked zero, each direction was
    replaced by a random one, and wrong pairs came back reported converged (eigenvalues a third of the truth)."""
    if core == "core" and not core_available():
        pytest.skip("autoskill_fast._core is not built")
    if core == "torch":
        monkeypatch.setenv(linalg.DISABLE_CORE_ENV, "1")
    a64 = make_matrix("covariance", 513, seed=4)
    result = topk_eigh(torch.from_numpy(a64 * magnitude), 5, method="krylov", tol=1e-10)
    reference = np.linalg.eigvalsh(a64)[::-1][:5]
    np.testing.assert_allclose(result.eigenvalues.numpy() / magnitude, reference, rtol=1e-9)
    unit = topk_eigh(torch.from_numpy(a64), 5, method="krylov", tol=1e-10)
    torch.testing.assert_close(result.eigenvectors, unit.eigenvectors, rtol=0, atol=1e-6)


class LaterNaN(DenseOperator):
    def __matmul__(self, x):
        out = super().__matmul__(x)
        return out if self.products < 3 else out * float("nan")


def test_an_operator_whose_products_turn_non_finite_later_is_named(monkeypatch):
    """A fixed matrix shows a NaN in its first product; an operator's later products were not checked (LAPACK then
    said it "returned 0 eigenpairs")."""
    for core in ([True] if core_available() else []) + [False]:
        if not core:
            monkeypatch.setenv(linalg.DISABLE_CORE_ENV, "1")
        with pytest.raises(ValueError, match="the operator's product holds NaN or Inf"):
            topk_eigh(LaterNaN(torch.from_numpy(make_matrix("covariance", 513, seed=2))), 8, method="krylov")


def test_the_seed_is_checked_before_the_solver():
    for seed in (-1, 2 ** 64, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            topk_eigh(torch.eye(600), 2, method="krylov", seed=seed)


def test_a_sign_decided_between_near_equal_entries_takes_the_first():
    """Two-valued one-hot columns give a direction whose two largest entries are equal and opposite: the sign was
    decided by rounding (another chunking of the same rows flipped every score of it)."""
    v = torch.tensor([[0.1, 0.5 - 1e-9], [-0.7 + 1e-9, -0.5], [0.7, 0.3], [0.0, 0.4]], dtype=torch.float64)
    signed = linalg.canonical_signs(v)
    assert float(signed[1, 0]) > 0 and float(signed[0, 1]) > 0  # column 0: row 1 first of the tie; column 1: row 0
    assert torch.equal(linalg.canonical_signs(-v), signed)
    clear = torch.tensor([[0.5], [-0.6]])  # a clear largest entry is still the one made positive
    assert float(linalg.canonical_signs(clear)[1, 0]) > 0


@needs_core
def test_overlapping_solves_restore_the_thread_count_the_first_found():
    """Two fits in two Python threads interleaved the save and restore of the process-wide OpenBLAS count, and left
    it at 1."""
    before = linalg._core.get_num_threads()
    first, second = linalg._core_threads(1), linalg._core_threads(1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to start ends first
    assert linalg._core.get_num_threads() == 1  # the second still solves
    second.__exit__(None, None, None)
    assert linalg._core.get_num_threads() == before
