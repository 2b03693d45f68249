"""Exact coverage of the 95% interval of a 0/1 metric's mean, and of a paired difference of one, over every outcome.

    python bench/bench_exact_coverage.py [--out FILE]

A 0/1 metric (Pass@1 of one sample, Pass@k of k) on P problems is seen as x ones, x binomial: the chance that an
interval procedure holds the true share q is the sum of the chances of the x whose interval holds q, computed exactly
for every x (no simulation). A paired difference of one ({-1, 0, 1} per problem) is trinomial: the same sum over every
(ups, downs), at true chances of +1 and -1 on a grid. Two procedures, in the same run:
- before: `few_changes_interval` at 95% for at most two apart, the percentile bootstrap (2000 resamples) from three
  (what `mean_interval` did before the score interval);
- now: `mean_interval` with the metric's range: the count path at 97.5% (half the miss chance), the score interval
  (Wilson's, Tango's for three values) from three;
- for a 0/1 metric, Clopper-Pearson's exact interval, which never holds less than 95% (wider).
Printed per problem count: the coverage averaged over the grid of true shares, its minimum (the worst share), the
average over the shares where the bootstrap is weakest, and (0/1) the interval's expected width at a true share 0.2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta, binom, multinomial

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoskill_fast.evaluation.bounded import few_changes, few_changes_interval  # noqa: E402
from autoskill_fast.evaluation.passk import mean_interval  # noqa: E402


def before(values: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    common, changed = few_changes(values[:, None])
    if changed[0] <= 2:
        return few_changes_interval(float(common[0]), int(changed[0]), values.shape[0], bounds=bounds)
    estimate = mean_interval(values)
    return estimate.low, estimate.high


def now(values: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    estimate = mean_interval(values, bounds=bounds)
    return estimate.low, estimate.high


def clopper_pearson(values: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    """The exact (conservative) interval of a binomial share, for comparison (0/1 metrics only)."""
    ones, problems = int(values.sum()), values.shape[0]
    low = 0.0 if ones == 0 else beta.ppf(0.025, ones, problems - ones + 1)
    high = 1.0 if ones == problems else beta.ppf(0.975, ones + 1, problems - ones)
    return float(low), float(high)


PROCEDURES = {"before": before, "now": now}


def zero_one(problems: int) -> list[dict]:
    shares = np.linspace(0.0005, 0.9995, 2000)
    rows = []
    for name, procedure in {**PROCEDURES, "Clopper-Pearson": clopper_pearson}.items():
        ends = []
        for ones in range(problems + 1):
            values = np.zeros(problems)
            values[:ones] = 1.0
            ends.append(procedure(values, (0.0, 1.0)))
        ends = np.array(ends)
        held = np.array([binom.pmf(np.arange(problems + 1), problems, q)[(ends[:, 0] <= q) & (q <= ends[:, 1])].sum()
                         for q in shares])
        band = (shares >= 0.1) & (shares <= 0.3)
        width = float(binom.pmf(np.arange(problems + 1), problems, 0.2) @ (ends[:, 1] - ends[:, 0]))
        rows.append({"metric": "0/1", "problems": problems, "procedure": name, "mean": float(held.mean()),
                     "min": float(held.min()), "worst_share": float(shares[held.argmin()]),
                     "mean_shares_0.1_0.3": float(held[band].mean()), "width_at_0.2": width})
    return rows


def paired(problems: int) -> list[dict]:
    outcomes = [(up, down) for up in range(problems + 1) for down in range(problems + 1 - up)]
    counts = np.array([[up, down, problems - up - down] for up, down in outcomes])
    grid = [(p_up, p_down) for p_up in np.linspace(0.0, 0.4, 41) for p_down in (0.0, 0.01, 0.03, 0.1, 0.3)
            if p_up + p_down > 0]
    chances = [multinomial.pmf(counts, problems, [p_up, p_down, 1.0 - p_up - p_down]) for p_up, p_down in grid]
    rows = []
    for name, procedure in PROCEDURES.items():
        ends = []
        for up, down in outcomes:
            values = np.zeros(problems)
            values[:up], values[up:up + down] = 1.0, -1.0
            ends.append(procedure(values, (-1.0, 1.0)))
        ends = np.array(ends)
        held = np.array([chance[(ends[:, 0] <= truth + 1e-12) & (truth - 1e-12 <= ends[:, 1])].sum()
                         for chance, truth in zip(chances, (p_up - p_down for p_up, p_down in grid))])
        one_sided = np.array([p_down == 0.0 for _, p_down in grid])
        rows.append({"metric": "paired 0/1", "problems": problems, "procedure": name, "mean": float(held.mean()),
                     "min": float(held.min()), "worst_share": list(map(float, grid[int(held.argmin())])),
                     "mean_one_sided": float(held[one_sided].mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    print("| metric | problems | procedure | held, mean over shares | held, worst share | at | held, mean where weak | "
          "expected width at share 0.2 |")
    print("|---|---|---|---|---|---|---|---|")
    for metric, sizes, run in (("0/1", (20, 30, 50, 100, 200), zero_one), ("paired 0/1", (30, 50), paired)):
        for problems in sizes:
            for row in run(problems):
                rows.append(row)
                weak = row.get("mean_shares_0.1_0.3", row.get("mean_one_sided"))
                where = "shares 0.1-0.3" if metric == "0/1" else "no -1"
                at = row["worst_share"]
                at = f"q = {at:.3f}" if metric == "0/1" else f"(+1, -1) = ({at[0]:.2f}, {at[1]:.2f})"
                width = f"{row['width_at_0.2']:.3f}" if "width_at_0.2" in row else ""
                print(f"| {metric} | {problems} | {row['procedure']} | {row['mean']:.3f} | {row['min']:.3f} | {at} | "
                      f"{weak:.3f} ({where}) | {width} |", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "machine": platform.platform(),
                                              "date": datetime.date.today().isoformat()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
