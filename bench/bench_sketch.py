"""Frequent Directions sketch rows kept in fp32 vs fp64: update time and accuracy, measured in the same run.

The sketch's shrink already computes in fp64 (a [2l, D] fp64 copy of the buffer at each); fp64 storage removes the
copy's conversion and the rounding at each store, and doubles the buffer. Each configuration is timed `--reps` times,
alternating fp32 and fp64, on one thread; the accuracy column is the largest error of the top eigenvalues on rows that
span fewer dimensions than the sketch (where the sketch is exact in exact arithmetic), relative to the top one.

    python bench/bench_sketch.py --dim 8192 --sketch 128 --rows 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from autoskill_fast.decomposition.frequent_directions import FrequentDirections


def rows(n: int, dim: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(10, 1, rank, dtype=torch.float64)
    return (torch.randn(n, rank, generator=g, dtype=torch.float64) * scale) @ torch.randn(rank, dim, generator=g,
                                                                                          dtype=torch.float64)


def run(x: torch.Tensor, sketch: int, dtype: torch.dtype, batch: int) -> tuple[float, FrequentDirections]:
    fd = FrequentDirections(x.shape[1], sketch, dtype=dtype)
    t0 = time.perf_counter()
    for lo in range(0, x.shape[0], batch):
        fd.update(x[lo:lo + batch])
    return time.perf_counter() - t0, fd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--sketch", type=int, default=128)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = rows(args.rows, args.dim, args.sketch // 2, seed=0)  # spans l / 2 dims: the sketch is exact in exact math
    centred = (x - x.mean(0)).numpy()
    exact = np.linalg.eigvalsh(centred.T @ centred / (args.rows - 1) if args.dim <= 2048 else
                               (centred @ centred.T) / (args.rows - 1))[::-1][:8]
    times: dict[str, list[float]] = {"float32": [], "float64": []}
    errors = {}
    for _ in range(args.reps):
        for name in times:
            seconds, fd = run(x, args.sketch, getattr(torch, name), args.batch)
            times[name].append(seconds)
            values, _ = fd.components(8)
            errors[name] = float(np.abs(values.numpy() - exact).max() / exact[0])
    print(f"D={args.dim} l={args.sketch} rows={args.rows} batch={args.batch}, 1 thread, {args.reps} alternated reps")
    print(f"{'storage':>8} {'median s':>9} {'rows/s':>9} {'buffer MiB':>11} {'top-8 rel err':>14}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        buffer = 2 * args.sketch * args.dim * torch.finfo(getattr(torch, name)).bits / 8 / 2**20
        print(f"{name:>8} {median:9.3f} {args.rows / median:9.0f} {buffer:11.1f} {errors[name]:14.2e}")
    print(f"fp64 / fp32 time: {statistics.median(times['float64']) / statistics.median(times['float32']):.2f}")


if __name__ == "__main__":
    main()
