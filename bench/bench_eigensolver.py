"""Top-k eigensolver: autoskill_fast.decomposition.linalg.topk_eigh (compiled core) against numpy, scipy and torch baselines.

Matrix: A = M diag(lam) M^T in fp32, with M a dense random orthogonal matrix (two orthonormal DCTs with random signs and
a random permutation between them: O(D^2 log D) to build, no O(D^3) step) and a slowly decaying PCA-like spectrum:
lam_i = 1/i with a 5% log-normal jitter plus three spikes (10, 5, 3). The fp64 reference spectrum is `lam` itself,
known exactly, so no full eigendecomposition is needed for accuracy. Matrices are cached under --cache-dir.

Baselines, all on the same fp32 matrix in the same process: numpy.linalg.eigh (all pairs; k-independent, timed once
per D), scipy.linalg.eigh(subset_by_index=[D-k, D-1]) (LAPACK ?syevr for the top k), torch.lobpcg(largest=True,
tol=--tol, niter=--lobpcg-niter). A baseline whose time, extrapolated from the previous D (as D^3 for LAPACK, D^2
for lobpcg), exceeds --budget seconds is skipped and printed as "~N s (est.)"; scipy subset always runs at k =
--anchor-k. Accuracy, for every solver: the largest relative eigenvalue error max_i |lam_hat_i - lam_i| / lam_i, and
the largest residual ||A v - lam_hat v|| / lam_1, both in fp64. topk_eigh runs --repeats times (median); each
baseline once.

    PYTHONPATH=. python bench/bench_eigensolver.py [--threads 1] [--quick] [--dims 2048 8192 17280] [--ks 16 64 256]

Record the command, machine, date and thread count with the printed table in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS / torch threads for every solver (default 1)")
    parser.add_argument("--quick", action="store_true", help="D in {2048, 8192}, k in {16, 64}, 60 s budget")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192, 17280])
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--tol", type=float, default=1e-6, help="relative residual asked of topk_eigh and lobpcg")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of topk_eigh (median reported)")
    parser.add_argument("--budget", type=float, default=150.0, help="skip a baseline estimated above this (s)")
    parser.add_argument("--anchor-k", type=int, default=64, help="k at which scipy subset always runs (0: never)")
    parser.add_argument("--lobpcg-niter", type=int, default=50)
    parser.add_argument("--cache-dir", default="/tmp/autoskill_fast_bench")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.ks, args.budget, args.repeats, args.anchor_k = [2048, 8192], [16, 64], 60.0, 2, 0
    return args


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load their BLAS
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

from autoskill_fast.decomposition import linalg  # noqa: E402

SPIKES = (10.0, 5.0, 3.0)


def build_matrix(dim: int, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The fp32 test matrix and its exact fp64 spectrum (descending), cached as .npy files."""
    path = os.path.join(cache_dir, f"powerlaw_{dim}.npy")
    if os.path.exists(path) and os.path.exists(path + ".lam.npy"):
        return np.load(path), np.load(path + ".lam.npy")
    rng = np.random.default_rng(dim)
    lam = 1.0 / np.arange(1, dim + 1) * np.exp(0.05 * rng.standard_normal(dim))
    lam[: len(SPIKES)] += SPIKES
    lam = np.sort(lam)[::-1].copy()
    signs_in, signs_mid, perm = rng.choice([-1.0, 1.0], dim), rng.choice([-1.0, 1.0], dim), rng.permutation(dim)

    def apply_m(x: np.ndarray) -> np.ndarray:  # M x for the columns of x; M orthogonal
        y = scipy.fft.dct(x * signs_in[:, None], axis=0, norm="ortho")
        return scipy.fft.dct(y[perm] * signs_mid[:, None], axis=0, norm="ortho")

    b_t = apply_m(np.diag(lam)).T.copy()  # (M diag(lam))^T = diag(lam) M^T
    a = np.empty((dim, dim), np.float32)
    for start in range(0, dim, 1024):  # A = M (diag(lam) M^T), a column block at a time
        a[:, start:start + 1024] = apply_m(b_t[:, start:start + 1024])
    a = (a + a.T) / 2
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path, a)
    np.save(path + ".lam.npy", lam)
    return a, lam


def accuracy(a: np.ndarray, lam: np.ndarray, values: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    """(max relative eigenvalue error, max residual / lam_1), in fp64, A multiplied in row blocks."""
    values, vectors = np.asarray(values, np.float64), np.asarray(vectors, np.float64)
    k = len(values)
    eig_err = float(np.max(np.abs(values - lam[:k]) / lam[:k]))
    product = np.empty_like(vectors)
    for start in range(0, a.shape[0], 2048):
        product[start:start + 2048] = a[start:start + 2048].astype(np.float64) @ vectors
    norms = np.linalg.norm(vectors, axis=0)
    residual = np.linalg.norm(product - vectors * values, axis=0) / norms / lam[0]
    return eig_err, float(residual.max())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def fmt_time(seconds: float | None, estimate: float | None = None) -> str:
    if seconds is None:
        return f"~{estimate:.0f} s (est.)" if estimate is not None else "n/a"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    if linalg.core_available():
        linalg._core.set_num_threads(ARGS.threads)
    load = os.getloadavg()
    print(f"# topk_eigh benchmark  {datetime.date.today()}  {platform.machine()} {os.cpu_count()} CPUs  "
          f"threads={ARGS.threads}  torch {torch.__version__}  numpy {np.__version__}  scipy {scipy.__version__}")
    core = linalg._core.blas_config if linalg.core_available() else f"NOT BUILT: {linalg.CORE_IMPORT_ERROR}"
    print(f"# core: {core}")
    print(f"# load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  tol={ARGS.tol}  "
          f"lobpcg niter={ARGS.lobpcg_niter}  budget={ARGS.budget:.0f} s")
    columns = ["D", "k", "topk_eigh", "numpy eigh", "x", "scipy subset", "x", "torch.lobpcg", "x", "err ours",
               "res ours", "err numpy", "err scipy", "err lobpcg", "res lobpcg", "ours extra MB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    previous: dict[str, tuple[int, float]] = {}  # baseline -> (D, seconds) of its last measured run

    def estimate(name: str, dim: int) -> float | None:
        """Time extrapolated from the last measured D: D^3 for the LAPACK solvers, D^2 for lobpcg (products)."""
        if name not in previous:
            return None
        dim0, seconds = previous[name]
        return seconds * (dim / dim0) ** (2 if name.startswith("lobpcg") else 3)

    for dim in ARGS.dims:
        a, lam = build_matrix(dim, ARGS.cache_dir)
        a_t = torch.from_numpy(a)
        numpy_time, numpy_err = None, None
        est = estimate("numpy", dim)
        if est is None or est <= ARGS.budget:
            numpy_time, (w_all, v_all) = timed(lambda: np.linalg.eigh(a))
            previous["numpy"] = (dim, numpy_time)
        for k in ARGS.ks:
            if numpy_time is not None:
                numpy_err = accuracy(a, lam, w_all[::-1][:k], v_all[:, ::-1][:, :k])[0]
            scipy_time, scipy_err = None, None
            est_scipy = estimate(f"scipy{k}", dim)
            if est_scipy is None or est_scipy <= ARGS.budget or k == ARGS.anchor_k:
                scipy_time, (w, v) = timed(lambda: scipy.linalg.eigh(a, subset_by_index=[dim - k, dim - 1]))
                scipy_err = accuracy(a, lam, w[::-1], v[:, ::-1])[0]
                previous[f"scipy{k}"] = (dim, scipy_time)
            lob_time, lob_acc = None, (None, None)
            est_lob = estimate(f"lobpcg{k}", dim)
            if 3 * k < dim and (est_lob is None or est_lob <= ARGS.budget):
                gen = torch.Generator().manual_seed(0)
                x0 = torch.randn(dim, k, generator=gen)
                lob_time, (w, v) = timed(lambda: torch.lobpcg(a_t, k=k, X=x0, largest=True, tol=ARGS.tol,
                                                              niter=ARGS.lobpcg_niter))
                lob_acc = accuracy(a, lam, w.numpy(), v.numpy())
                previous[f"lobpcg{k}"] = (dim, lob_time)
            ours = []
            for _ in range(ARGS.repeats):
                seconds, result = timed(lambda: linalg.topk_eigh(a_t, k, tol=ARGS.tol))
                ours.append(seconds)
            ours_time = statistics.median(ours)
            err, res = accuracy(a, lam, result.eigenvalues.numpy(), result.eigenvectors.numpy())
            block = linalg._default_block_size(k, on_cuda=False)  # working set of the Krylov solver: Q, W in fp64
            extra_mb = 16 * dim * min(max(2 * k + 2 * block, k + 6 * block), dim) / 2**20

            def ratio(seconds: float | None, est_value: float | None) -> str:
                if seconds is not None:
                    return f"{seconds / ours_time:.1f}x"
                return f"~{est_value / ours_time:.0f}x (est.)" if est_value is not None else "n/a"

            def sci(x: float | None) -> str:
                return "n/a" if x is None else f"{x:.1e}"

            print(f"| {dim} | {k} | {fmt_time(ours_time)} ({result.method}) | {fmt_time(numpy_time, est)} | "
                  f"{ratio(numpy_time, est)} | {fmt_time(scipy_time, est_scipy)} | {ratio(scipy_time, est_scipy)} | "
                  f"{fmt_time(lob_time, est_lob)} | {ratio(lob_time, est_lob)} | {sci(err)} | {sci(res)} | "
                  f"{sci(numpy_err)} | {sci(scipy_err)} | {sci(lob_acc[0])} | {sci(lob_acc[1])} | {extra_mb:.0f} |",
                  flush=True)
        del a, a_t
    load = os.getloadavg()
    print(f"# load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
