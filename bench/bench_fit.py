"""The fit from streamed statistics: block Krylov over the packed sums against the square-covariance path it replaced.

    OMP_NUM_THREADS=1 python bench/bench_fit.py [--dim 16128] [--k 16] [--rows 1024] [--reps 3] [--threads 1]

Statistics of `--rows` random rows (a rank-256 signal plus isotropic noise, shifted away from zero) are streamed into a
`StreamingCovariance` once (fp64 block-packed sums, as on CPU). Then, in the same process, alternating:
  packed   `StreamingCovariance.top_eigenpairs(k)`: the C++ block Krylov solver over `CovarianceOperator` (products
           with the packed sums rounded once to fp32, the centring term added per product; no D x D matrix)
  square   what version 0.1 did: `covariance()` (the full symmetric fp64 D x D) then `topk_eigh` on it (C++ block
           Krylov with fp64 products)
Reported: median seconds, the memory each path allocates beyond the sums (analytic: packed = the fp32 copy of the sums
and its diagonal tiles; square = the fp64 D x D), the largest residual, and the largest eigenvalue difference between
the two paths relative to the top eigenvalue. The default D is the default model's 28 x 576 layers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from autoskill_fast.decomposition.linalg import core_available, topk_eigh  # noqa: E402
from autoskill_fast.decomposition.statistics import StreamingCovariance  # noqa: E402


def streamed_statistics(dim: int, rows: int, seed: int = 0) -> StreamingCovariance:
    gen = torch.Generator().manual_seed(seed)
    signal = torch.randn(rows, 256, generator=gen) @ torch.randn(256, dim, generator=gen) / 16
    x = signal + 0.3 * torch.randn(rows, dim, generator=gen) + 3.0
    stats = StreamingCovariance(dim)
    for chunk in x.split(256):
        stats.update(chunk)
    stats.flush()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=16128)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if core_available():
        from autoskill_fast import _core

        _core.set_num_threads(args.threads)
    stats = streamed_statistics(args.dim, args.rows)

    def packed():
        return stats.top_eigenpairs(args.k)

    def square():
        return topk_eigh(stats.covariance(), args.k)

    paths = {"packed": packed, "square": square}
    times: dict[str, list[float]] = {name: [] for name in paths}
    results = {}
    for rep in range(args.reps):
        for name in (list(paths) if rep % 2 == 0 else list(paths)[::-1]):
            start = time.perf_counter()
            results[name] = paths[name]()
            times[name].append(time.perf_counter() - start)
    sums_gb = stats.sumsq.data.numel() * 8 / 1e9
    extra_gb = {"packed": stats.sumsq.data.numel() * 4 / 1e9 + args.dim * stats.sumsq.layout.tile * 4 / 1e9,
                "square": args.dim * args.dim * 8 / 1e9}
    top = float(results["square"].eigenvalues[0])
    diff = float((results["packed"].eigenvalues.double() - results["square"].eigenvalues.double()).abs().max()) / top
    print(f"D={args.dim}, k={args.k}, {args.rows} rows, {args.threads} thread(s), median of {args.reps}; "
          f"core: {core_available()}; fp64 packed sums: {sums_gb:.2f} GB")
    print(f"{'path':8s} {'seconds':>8s} {'extra GB':>9s} {'max residual':>13s} {'solver':>20s}")
    for name in paths:
        print(f"{name:8s} {statistics.median(times[name]):8.2f} {extra_gb[name]:9.2f} "
              f"{float(results[name].residuals.max()):13.1e} {results[name].method:>20s}")
    print(f"square / packed time: {statistics.median(times['square']) / statistics.median(times['packed']):.2f}x; "
          f"eigenvalues differ by {diff:.1e} of the top one")


if __name__ == "__main__":
    main()
