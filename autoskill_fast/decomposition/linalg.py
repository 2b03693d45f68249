"""Top-k eigenpairs of a covariance matrix, and projection onto them.

Two ops, each with a compiled CPU path (``autoskill_fast._core``, C++ over OpenBLAS/LAPACK) and a torch path (CUDA
tensors, and the CPU fallback when the extension is not built):

- `topk_eigh`: the k algebraically largest eigenpairs of a full symmetric matrix, or of a `SymmetricOperator` (a
  matrix known by its products, e.g. a packed covariance: the Krylov solvers need nothing else). Methods:
  ``"exact"`` (LAPACK ``dsyevr`` for the index range D-k+1..D on CPU; ``torch.linalg.eigh`` on CUDA), ``"krylov"``
  (thick-restart block Lanczos: BLAS-3 products of the matrix with D x b blocks, fp64 basis and Rayleigh-Ritz;
  `_krylov_torch` is the same algorithm as ``csrc/eigensolver.cpp`` in torch), ``"torch"`` (``torch.linalg.eigh``,
  all D pairs), and ``"auto"`` (`_choose_method`, the one place where the path is decided).
- `project`: ``(x - mean) @ components.T`` in row blocks, in fp32 at least.

The matrix must be the full symmetric matrix (both triangles are read; a cheap spot check rejects clearly
non-symmetric input). Residuals are relative: ``||A v - lambda v|| / max(|lambda_0|, |lambda_{k-1}|)``, the largest
magnitude among the returned eigenvalues (for a covariance: its top eigenvalue, i.e. ||A||). An eigenvalue far below
the top one is therefore accurate to about ``tol * lambda_0`` in absolute terms, not relative to itself. Products in
fp32 carry rounding of about 1e-7 * ||A||: the default ``tol=1e-6`` is reached on covariances, but when the top-k are
much smaller in magnitude than ||A|| (an indefinite matrix) fp32 may not reach tol; the Krylov solver then stops at
that floor with an `EighConvergenceWarning` and returns the residuals it reached. Eigenvectors have a deterministic
sign: the largest-magnitude entry of each is positive (`canonical_signs`: near-ties go to the first).
``AUTOSKILL_FAST_DISABLE_CORE=1`` ignores the compiled extension. Block Krylov resolves an eigenvalue of multiplicity
up to its block size (16-32 on CPU) reliably. fp64 matrices whose entries lie far from 1 are solved scaled by a power
of two (`_krylov_factor`).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

DISABLE_CORE_ENV = "AUTOSKILL_FAST_DISABLE_CORE"
METHODS = ("auto", "exact", "krylov", "torch")
DEFAULT_MAX_ITER = 300  # block products with the matrix before giving up with an EighConvergenceWarning
EXACT_MAX_DIM_CPU = 384  # "auto" on CPU: LAPACK up to this size (measured crossover, bench/RESULTS.md)
EIGH_MAX_DIM_CUDA = 2048  # "auto" on CUDA: torch.linalg.eigh up to this size, block Krylov above
PROJECT_CHUNK_ELEMENTS = 1 << 24  # torch path: rows per chunk * D, bounds the fp32 copy of a bf16 chunk

try:  # scipy_openblas32 loads libscipy_openblas RTLD_GLOBAL first, so _core finds it wherever pip put it
    import scipy_openblas32  # noqa: F401

    from .. import _core

    CORE_IMPORT_ERROR: str | None = None
except ImportError as exc:
    _core = None
    CORE_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_fallback_warned = False


class EighConvergenceWarning(RuntimeWarning):
    """The block Krylov solver stopped before every residual reached tol; the result carries what was reached."""


class SymmetricOperator:
    """A symmetric [D, D] matrix known by its products with blocks of vectors, for `topk_eigh`.

    Subclasses set `shape` (D, D), `dtype` (float32 / float64: the precision of the products), `device`, and define
    `__matmul__(x [D, c]) -> A x [D, c]` and `to_dense() -> [D, D]` (used where an exact solver is chosen: small D).
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __matmul__(self, x_dc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class EighResult:
    eigenvalues: torch.Tensor  # [k], descending, dtype and device of the matrix
    eigenvectors: torch.Tensor  # [D, k], orthonormal columns (on CPU, eigenvectors.T is contiguous)
    residuals: torch.Tensor  # [k] fp64 on CPU, ||A v - lambda v|| / max(|lambda_0|, |lambda_{k-1}|, tiny)
    method: str  # "lapack-syevr", "block-krylov", "torch-block-krylov" or "torch-eigh"


def core_available() -> bool:
    """Whether the compiled extension imported (and is not disabled by AUTOSKILL_FAST_DISABLE_CORE=1)."""
    return _core is not None and os.environ.get(DISABLE_CORE_ENV, "0").strip() != "1"


def _use_core(*tensors: torch.Tensor) -> bool:
    """CPU tensors go to the compiled core when it is available; its absence is announced once."""
    global _fallback_warned
    if any(t.is_cuda for t in tensors):
        return False
    if core_available():
        return True
    if not _fallback_warned and _core is None:
        _fallback_warned = True
        warnings.warn(f"autoskill_fast._core is not available ({CORE_IMPORT_ERROR}); the CPU eigensolver and "
                      "projection run in torch instead, which is slower. Build the C++ core with `pip install -e .` "
                      "(needs a C++17 compiler; pybind11 and scipy-openblas32 come with the build requirements).",
                      RuntimeWarning, stacklevel=3)
    return False


def _default_block_size(k: int, on_cuda: bool) -> int:
    # CPU: 16-32 columns per product balance BLAS-3 efficiency (a product's cost is mostly one pass over the matrix
    # for narrow blocks) against Krylov efficiency (narrow blocks need fewer vectors). A GPU wants wider GEMMs.
    if on_cuda:
        return min(128, max(32, k))
    return 16 if k <= 24 else 32


def _choose_method(method: str, matrix: torch.Tensor, k: int, block_size: int) -> str:
    """The one place that picks the solver ("exact", "krylov" or "torch") for a call."""
    dim = matrix.shape[0]
    if method != "auto":
        return method
    # Krylov pays off when its basis (about k + 6 blocks) is a small part of the space.
    krylov_basis = max(2 * k + 2 * block_size, k + 6 * block_size)
    if matrix.is_cuda:
        return "torch" if dim <= EIGH_MAX_DIM_CUDA or 3 * krylov_basis >= dim else "krylov"
    return "exact" if dim <= EXACT_MAX_DIM_CPU or 3 * krylov_basis >= dim else "krylov"


def _check_eigh_args(matrix: torch.Tensor | SymmetricOperator, k: int, tol: float, method: str,
                     max_iter: int | None, seed: int) -> None:
    if not isinstance(matrix, (torch.Tensor, SymmetricOperator)):
        raise TypeError(f"matrix must be a torch.Tensor or a SymmetricOperator, got {type(matrix).__name__}")
    if matrix.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"matrix must be float32 or float64, got {matrix.dtype}; convert it with .double()")
    if len(matrix.shape) != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"matrix must be a non-empty square [D, D] tensor, got shape {tuple(matrix.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= matrix.shape[0]:
        raise ValueError(f"k must be an integer in [1, {matrix.shape[0]}], got {k!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive integer or None, got {max_iter!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _check_symmetric_sample(matrix: torch.Tensor) -> None:
    """The spot check of the C++ boundary, for the torch paths: a few thousand pairs, O(1) cost."""
    dim = matrix.shape[0]
    if dim < 2:
        return
    gen = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(dim, (2, 4096), generator=gen).to(matrix.device)
    upper, lower = matrix[rows, cols].double(), matrix[cols, rows].double()
    diag_max = float(matrix.diagonal().abs().max())
    allowed = 1e-3 * torch.maximum(upper.abs(), lower.abs()) + 100 * torch.finfo(matrix.dtype).eps * diag_max
    bad = torch.nonzero((upper - lower).abs() > allowed).flatten()
    if len(bad):
        i, j = int(rows[bad[0]]), int(cols[bad[0]])
        raise ValueError(f"matrix is not symmetric: matrix[{i}, {j}] = {float(matrix[i, j])} but matrix[{j}, {i}] = "
                         f"{float(matrix[j, i])} (pass a full symmetric matrix, e.g. (a + a.T) / 2)")


def _relative_residuals(matrix: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    product = (matrix @ vectors).double()  # the product in the matrix dtype, as the solvers do
    scale = max(abs(float(values[0])), abs(float(values[-1])), torch.finfo(matrix.dtype).tiny)
    return torch.linalg.vector_norm(product - vectors.double() * values.double(), dim=0) / scale


SIGN_TIE = 1e-4  # entries within this fraction of a column's largest magnitude tie for deciding its sign


def canonical_signs(vectors_dk: torch.Tensor) -> torch.Tensor:
    """The sign rule of every direction autoskill-fast returns: flip each column of [D, k] so that its entry of largest
    magnitude is positive, the first one among those within `SIGN_TIE` of it (scikit-learn's PCA, >= 1.5, takes the
    first exact maximum). Data that makes a direction's two largest entries equal and opposite (one-hot columns of a
    two-valued field) would otherwise have its sign decided by rounding, which differs with the chunking of the rows."""
    magnitude = vectors_dk.abs()
    near_top = magnitude >= (1 - SIGN_TIE) * magnitude.amax(dim=0, keepdim=True)
    rows = near_top.to(torch.uint8).argmax(dim=0)  # the first True of each column
    signs = torch.sign(vectors_dk[rows, torch.arange(vectors_dk.shape[1], device=vectors_dk.device)])
    return vectors_dk * torch.where(signs == 0, torch.ones_like(signs), signs)


def _eigh_torch(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(matrix)  # ascending; reads the lower triangle
    return values[-k:].flip(0), vectors[:, -k:].flip(1)


def _krylov_torch(matrix: torch.Tensor, k: int, tol: float, max_steps: int, block_size: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, bool]:
    """Thick-restart block Lanczos in torch: the algorithm of csrc/eigensolver.cpp step for step (with torch's
    random stream, so results agree to tol, not bitwise).

    The basis Q [D, m], W = A Q and the O(D m b) work are fp64 on the matrix's device; only the product with A runs
    in the matrix dtype (the block is rounded to it first, so Q holds exactly what A multiplied). The small
    Rayleigh-Ritz problem H = Q^T A Q [m, m] is solved on the CPU in fp64. Returns (values, vectors, residuals,
    steps, converged).
    """
    n, dev, f64 = matrix.shape[0], matrix.device, torch.float64
    is_operator = isinstance(matrix, SymmetricOperator)
    b = min(block_size, n)
    mmax = min(max(2 * k + 2 * b, k + 6 * b), n)
    full_space = mmax == n  # never restart: at m == n the Rayleigh-Ritz step is exact
    keep = mmax if full_space else min(mmax - b, k + (mmax - k) // 2)
    gen = torch.Generator().manual_seed(seed)

    def randn(cols: int) -> torch.Tensor:
        return torch.randn(n, cols, generator=gen, dtype=f64).to(dev)

    def project_out(x: torch.Tensor, m: int) -> torch.Tensor:
        return x - q[:, :m] @ (q[:, :m].T @ x)

    q = torch.zeros(n, mmax, dtype=f64, device=dev)
    w = torch.zeros_like(q)
    h = torch.zeros(mmax, mmax, dtype=f64)
    p = torch.linalg.qr(randn(b)).Q
    m, steps, next_check, prev_check, prev_log, best_est, best_step = 0, 0, 0, -1, 0.0, math.inf, 0
    anorm = 0.0  # running lower bound of ||A||: the largest ||A p|| seen
    tiny = torch.finfo(matrix.dtype).tiny
    while True:
        bw = p.shape[1]
        p_low = p.to(matrix.dtype)
        q[:, m:m + bw] = p_low.to(f64)
        w[:, m:m + bw] = (matrix @ p_low).to(f64)
        w_new = w[:, m:m + bw]
        if (steps == 0 or is_operator) and not bool(torch.isfinite(w_new).all()):  # a matrix shows it at once
            raise ValueError("matrix contains NaN or Inf" if steps == 0 else "the operator's product holds NaN or Inf: "
                             "its matrix is not finite")
        steps += 1
        coef = q[:, :m + bw].T @ w_new  # new block column of H = Q^T A Q
        h[:m, m:m + bw] = coef[:m].cpu()
        h[m:m + bw, :m] = coef[:m].T.cpu()
        diag = coef[m:].cpu()
        h[m:m + bw, m:m + bw] = 0.5 * (diag + diag.T)
        m += bw
        exhausted = m == n
        bw_last = bw
        if not exhausted:  # next block: P Rf = (I - Q Q^T) A Q_last, two Gram-Schmidt passes, then QR
            p, rf = torch.linalg.qr(project_out(w_new - q[:, :m] @ coef, m))
            w_norm = torch.linalg.vector_norm(w_new, dim=0)
            anorm = max(anorm, float(w_norm.max()))
            # Heavy cancellation in some column (or a zero product, A Q_last = 0): one more pass.
            if not bool(((rf.diagonal().abs() >= 1e-3 * w_norm) & (w_norm > 0)).all()):
                p, r2 = torch.linalg.qr(project_out(p, m))
                rf = r2 @ rf
                lost = (rf.diagonal().abs() <= torch.clamp(64 * torch.finfo(f64).eps * w_norm, min=1e-2 * tol * anorm))
                for j in torch.nonzero(lost | (w_norm == 0)).flatten().tolist():  # no Krylov information left
                    p[:, j] = 0
                    x = randn(1)
                    for _ in range(2):
                        x = project_out(x, m)
                        x = x - p @ (p.T @ x)
                    p[:, j] = x.flatten() / torch.linalg.vector_norm(x)
            next_bw = min(b, n - m) if full_space else b
            if next_bw < bw:  # only n - m directions are left: a basis of the complement
                p = torch.linalg.qr(project_out(project_out(randn(next_bw), m), m)).Q
            rf = rf.cpu()
        restart = not full_space and m + b > mmax
        out_of_steps = steps >= max_steps and m >= k
        if not (exhausted or restart or out_of_steps or (m >= k + bw_last and steps >= next_check)):
            continue
        theta, s = torch.linalg.eigh(h[:m, :m])
        theta, s = theta.flip(0), s.flip(1)
        scale = max(abs(float(theta[0])), abs(float(theta[k - 1])), tiny)
        est = 0.0 if exhausted else float(torch.linalg.vector_norm(rf @ s[m - bw_last:, :k], dim=0).max()) / scale
        anorm = max(anorm, abs(float(theta[0])), abs(float(theta[k - 1])))
        target = max(tol, torch.finfo(matrix.dtype).eps * anorm / scale)  # what the dtype can resolve
        if est < 0.9 * best_est:
            best_est, best_step = est, steps
        stalled = steps - best_step >= 30
        if exhausted or est <= target or out_of_steps or stalled:
            s_k = s[:, :k].to(dev)
            vectors, products = q[:, :m] @ s_k, w[:, :m] @ s_k  # A V = W S: no product with A
            values = theta[:k].to(matrix.dtype)
            residuals = torch.linalg.vector_norm(products - vectors * values.to(dev, f64), dim=0).cpu() / scale
            reached = float(residuals.max())
            if reached <= target or exhausted or out_of_steps or stalled or est <= 1e-2 * target:
                return values.to(dev), vectors.to(matrix.dtype), residuals, steps, reached <= tol
        log_ratio = math.log(max(est / target, 1.0 + 1e-12))  # schedule the next check from the convergence rate
        gap = 1
        if prev_check >= 0 and prev_log > log_ratio:
            gap = min(8, max(1, int(0.7 * log_ratio / ((prev_log - log_ratio) / (steps - prev_check)))))
        prev_check, prev_log, next_check = steps, log_ratio, steps + gap
        if restart:  # thick restart: the best `keep` Ritz vectors (and A times them) become the basis
            s_keep = s[:, :keep].to(dev)
            q[:, :keep] = q[:, :m] @ s_keep
            w[:, :keep] = w[:, :m] @ s_keep
            h.zero_()
            h[:keep, :keep] = torch.diag(theta[:keep])
            m = keep


def topk_eigh(matrix: torch.Tensor | SymmetricOperator, k: int, *, tol: float = 1e-6, method: str = "auto",
              max_iter: int | None = None, seed: int = 0) -> EighResult:
    """The k algebraically largest eigenpairs of the full symmetric [D, D] fp32/fp64 `matrix`, descending.

    matrix: a tensor, or a `SymmetricOperator` (products only; the Krylov solvers use nothing else, the exact ones
    densify it). method: "auto" (see `_choose_method`), "exact", "krylov" or "torch" (module docstring). tol:
    relative residual every returned pair must reach (Krylov only; the exact methods report what they reach).
    max_iter: block products allowed to the Krylov solver (default 300); when it stops early an
    EighConvergenceWarning says why and the result carries the residuals reached. seed: starting block of the Krylov
    solver (deterministic per seed, device and thread count).
    """
    _check_eigh_args(matrix, k, tol, method, max_iter, seed)
    block_size = _default_block_size(k, matrix.is_cuda)
    chosen = _choose_method(method, matrix, k, block_size)
    max_steps = DEFAULT_MAX_ITER if max_iter is None else max_iter
    if isinstance(matrix, SymmetricOperator):
        if chosen == "krylov":
            return _krylov(matrix, k, tol, max_steps, block_size, seed)
        matrix = matrix.to_dense()
    dense = matrix.detach()
    if chosen == "krylov":
        factor = _krylov_factor(dense)
        if factor == 1.0:
            return _krylov(dense, k, tol, max_steps, block_size, seed)
        result = _krylov(dense * factor, k, tol, max_steps, block_size, seed)
        return EighResult(result.eigenvalues / factor, result.eigenvectors, result.residuals, result.method)
    if chosen == "exact" and _use_core(dense):
        values, vectors, residuals, _, _ = _core.topk_eigh_exact(dense.contiguous().numpy(), k)
        values, vectors, residuals = map(torch.from_numpy, (values, vectors, residuals.astype("float64")))
        return EighResult(values, canonical_signs(vectors), residuals, "lapack-syevr")
    if not bool(torch.isfinite(dense).all()):
        raise ValueError("matrix contains NaN or Inf")
    _check_symmetric_sample(dense)
    values, vectors = _eigh_torch(dense, k)
    residuals = _relative_residuals(dense, values, vectors).cpu()
    return EighResult(values, canonical_signs(vectors), residuals, "torch-eigh")


KRYLOV_NORMAL_RANGE = (2.0 ** -300, 2.0 ** 300)  # fp64 entries outside it: the solver's sums of squares leave fp64


def _krylov_factor(dense: torch.Tensor) -> float:
    """1, or the power of two that brings an fp64 matrix's largest |entry| to 1 when it lies outside
    `KRYLOV_NORMAL_RANGE` (an exact scaling: the Krylov solver's norms underflowed near 1e-150 and returned wrong
    pairs reported converged). fp32 entries cannot leave it. (Covariances come normalized: `StreamingCovariance`.)"""
    if dense.dtype != torch.float64:
        return 1.0
    largest = float(dense.abs().amax())
    if not (math.isfinite(largest) and largest > 0) or KRYLOV_NORMAL_RANGE[0] <= largest <= KRYLOV_NORMAL_RANGE[1]:
        return 1.0
    return math.ldexp(1.0, -math.frexp(largest)[1])


_core_threads_lock = threading.Lock()
_core_threads_held = {"solves": 0, "previous": 0}


@contextmanager
def _core_threads(n: int):
    """The core's OpenBLAS on `n` threads for a while. Used while torch computes an operator's products: idle
    OpenBLAS threads spin-wait beside torch's and took a core away (2x slower products on 2 cores), and the core's
    own O(D m b) work is small. The thread count is the process's: solves in several Python threads share one
    setting, and the last to finish restores the count found by the first (each restoring its own left 1 behind)."""
    with _core_threads_lock:
        if _core_threads_held["solves"] == 0:
            _core_threads_held["previous"] = _core.get_num_threads()
            _core.set_num_threads(n)
        _core_threads_held["solves"] += 1
    try:
        yield
    finally:
        with _core_threads_lock:
            _core_threads_held["solves"] -= 1
            if _core_threads_held["solves"] == 0:
                _core.set_num_threads(_core_threads_held["previous"])


@contextmanager
def _full_precision_fp32_matmuls():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _krylov(matrix: torch.Tensor | SymmetricOperator, k: int, tol: float, max_steps: int, block_size: int,
            seed: int) -> EighResult:
    """The block Krylov solver: the compiled one for CPU matrices and operators, `_krylov_torch` on CUDA."""
    operator = isinstance(matrix, SymmetricOperator)
    if matrix.device.type == "cpu" and _use_core():
        if operator:
            def multiply(x):
                product = (matrix @ torch.from_numpy(x)).to(torch.float64)
                if not bool(torch.isfinite(product).all()):  # an operator's products are not one fixed matrix's
                    raise ValueError("the operator's product holds NaN or Inf: its matrix is not finite")
                return product.numpy()

            dtype = str(matrix.dtype).removeprefix("torch.")
            with _core_threads(1):
                raw = _core.topk_eigh_krylov_operator(multiply, matrix.shape[0], dtype, k, tol=tol, max_steps=max_steps,
                                                      block_size=block_size, seed=seed)
        else:
            raw = _core.topk_eigh_krylov(matrix.contiguous().numpy(), k, tol=tol, max_steps=max_steps,
                                         block_size=block_size, seed=seed)
        values, vectors, residuals, steps, converged = raw
        values, vectors, residuals = map(torch.from_numpy, (values, vectors, residuals.astype("float64")))
        name = "block-krylov"
    else:
        if not operator:
            _check_symmetric_sample(matrix)
        with _full_precision_fp32_matmuls():  # TF32 products on CUDA would put a 1e-3 floor under residuals
            values, vectors, residuals, steps, converged = _krylov_torch(matrix, k, tol, max_steps, block_size, seed)
        name = "torch-block-krylov"
    if not converged:
        reason = (f"max_iter={max_steps} block products were used up; raise max_iter or loosen tol"
                  if steps >= max_steps else
                  f"rounding in {str(matrix.dtype).removeprefix('torch.')} stopped progress (fp32 reaches about 1e-7 "
                  "of the largest |eigenvalue| of the matrix, which may be far above the top-k ones); loosen tol or "
                  "pass a float64 matrix")
        warnings.warn(f"topk_eigh: the block Krylov solver stopped with a largest relative residual of "
                      f"{float(residuals.max()):.2e} > tol={tol:.1e}: {reason}. The eigenpairs are returned with the "
                      "residuals they reached.", EighConvergenceWarning, stacklevel=3)
    return EighResult(values, canonical_signs(vectors), residuals, name)


def _check_projection_args(x: torch.Tensor, mean: torch.Tensor, components_kd: torch.Tensor) -> torch.dtype:
    """Validates shapes and dtypes; returns the compute dtype (fp64 if any input is fp64, else fp32)."""
    for name, t, ndim in (("x", x, 2), ("mean", mean, 1), ("components_kd", components_kd, 2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise TypeError(f"{name} must be a floating tensor (fp32, fp64, bf16, fp16), got {t.dtype}")
    if mean.shape[0] != x.shape[1] or components_kd.shape[1] != x.shape[1]:
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, mean {tuple(mean.shape)}, components_kd "
                         f"{tuple(components_kd.shape)} (expected x [N, D], mean [D], components_kd [k, D])")
    if len({x.device, mean.device, components_kd.device}) != 1:
        raise ValueError(f"x, mean and components_kd must be on one device, got {x.device}, {mean.device}, "
                         f"{components_kd.device}")
    return torch.float64 if torch.float64 in (x.dtype, mean.dtype, components_kd.dtype) else torch.float32


def project(x: torch.Tensor, mean: torch.Tensor, components_kd: torch.Tensor) -> torch.Tensor:
    """(x - mean) @ components_kd.T -> [N, k], computed in fp32 (fp64 if any input is fp64) in blocks of rows.

    x [N, D] fp32/fp64/bf16/fp16, mean [D], components_kd [k, D]. CPU: the compiled core (centring and one GEMM per
    block, threaded by OpenBLAS, no full-size copy of x); CUDA: torch. Raises ValueError naming the first row of x
    that holds a NaN or Inf.
    """
    dtype = _check_projection_args(x, mean, components_kd)
    x = x.detach()
    mean_c = mean.detach().to(dtype).contiguous()
    comps = components_kd.detach().to(dtype).contiguous()
    if _use_core(x) and x.dtype != torch.float16:  # fp16 (rare) takes the torch path
        bf16 = x.dtype == torch.bfloat16  # numpy has no bfloat16: pass the bits, the core widens them
        x_np = x.contiguous().view(torch.int16).numpy().view("uint16") if bf16 else x.contiguous().numpy()
        return torch.from_numpy(_core.project(x_np, mean_c.numpy(), comps.numpy(), x_is_bfloat16=bf16))
    out = torch.empty(x.shape[0], comps.shape[0], dtype=dtype, device=x.device)
    rows = max(1, PROJECT_CHUNK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        block = x[start:start + rows].to(dtype) - mean_c  # centre first: |mean| >> std would cancel otherwise
        bad = ~torch.isfinite(block).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"x contains NaN or Inf in row {start + int(bad.nonzero()[0])}")
        out[start:start + rows] = block @ comps.T
    return out
