"""How often an unbounded metric's intervals (NLL effects, an eval's NLL) hold on few problems.

    python bench/bench_small_sample_coverage.py [--runs 1000] [--resamples 400] [--out FILE]

For P problems (2 to 30) the values are drawn from a known distribution (normal, or exponential shifted to mean 0:
skewed), many times; the table gives how often the interval holds the true mean, for the plain percentile bootstrap
and for `mean_interval` (the same, widened about the mean by `small_sample_widening` to Student's width), and how
often the joint intervals of 4 entries (`simultaneous_mean_intervals`, each widened to hold its entry's own interval,
as `rank` reports them) hold all 4 at once. Coverage comes with its Monte Carlo standard error, sqrt(c (1 - c) / runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoskill_fast.evaluation.passk import _bootstrap_means, mean_interval, simultaneous_mean_intervals  # noqa: E402

SIZES = (2, 3, 5, 10, 30)
DRAWS = {"normal": lambda rng, shape: rng.standard_normal(shape),
         "exponential": lambda rng, shape: rng.exponential(size=shape) - 1.0}


def coverage(held: int, runs: int) -> str:
    c = held / runs
    return f"{c:.3f} +- {math.sqrt(c * (1 - c) / runs):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, t0 = [], time.perf_counter()
    print("| values | problems | plain percentile | mean_interval (widened) | joint, 4 entries |")
    print("|---|---|---|---|---|")
    for name, draw in DRAWS.items():
        for size in SIZES:
            plain = widened = joint = 0
            for run in range(args.runs):
                values = draw(rng, (size, 4))
                low, high = np.quantile(_bootstrap_means(values[:, 0], args.resamples, run), [0.025, 0.975])
                plain += low <= 0.0 <= high
                own = [mean_interval(values[:, e], resamples=args.resamples, seed=run) for e in range(4)]
                widened += own[0].low <= 0.0 <= own[0].high
                _, band_low, band_high, _ = simultaneous_mean_intervals(values, resamples=args.resamples, seed=run)
                lows = np.minimum(band_low, [o.low for o in own])
                highs = np.maximum(band_high, [o.high for o in own])
                joint += bool(np.all((lows <= 0.0) & (0.0 <= highs)))
            row = {"values": name, "problems": size, "plain": plain / args.runs, "widened": widened / args.runs,
                   "joint": joint / args.runs}
            rows.append(row)
            print(f"| {name} | {size} | {coverage(plain, args.runs)} | {coverage(widened, args.runs)} | "
                  f"{coverage(joint, args.runs)} |", flush=True)
    seconds = time.perf_counter() - t0
    print(f"{args.runs} runs, {args.resamples} resamples, {seconds:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows, "runs": args.runs, "resamples": args.resamples,
                                        "seconds": seconds, "machine": platform.platform(),
                                        "date": datetime.date.today().isoformat()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
