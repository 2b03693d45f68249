"""How often `rank`'s intervals hold every entry's effect at once, in simulations with known effects.

    python bench/bench_joint_coverage.py [--runs 1000] [--resamples 1000] [--out FILE]

Each scenario draws E entries' per-problem paired differences (an intervention against one baseline, on the same P
problems, as `rank --proxy steer` and `--proxy pilot` measure them) whose population means are known, many times. For
each draw it asks whether every entry's true effect lies inside its interval, for three kinds of interval:
- own: each entry's 95% interval (`mean_interval`: the percentile bootstrap, or with the range the count-based or
  score interval of `evaluation/bounded.py`; what `rank` reported alone before);
- max-t, spread: the 95% max-t band with each entry's draws measured in the spread of its draws (what the
  correlation proxy used before it had a standard error per resample);
- joint: what `rank` reports: the band with each draw measured in its own resample's standard error (the bootstrap-t;
  `simultaneous_mean_intervals` for `steer` and `pilot`, that error floored at half the spread; `cluster_bootstrap`
  with a clustered standard error for `correlation`), widened to hold the entry's own interval
  (`proxies.joint.set_joint`).
In the scenarios of Pass@k differences (`pass@1`, `sparse`, `one-sided`) the intervals know the differences' range,
(-1, 1), as `rank` does: an entry whose differences are zero on all problems but at most two gets the count-based
interval of `few_changes_interval` (the own at 97.5%, the joint at 1 - 0.1 * 0.05 / E) instead of the bootstrap's,
and an own interval of differences all in {-1, 0, 1} is Tango's score interval. The
nominal rate is 0.95 for the two bands; the own intervals are not meant to hold all at once, but each is meant to
hold its own effect 95% of the time ("own: each held", over all entries of all experiments). The last rows do the
same for the correlation proxy's AUROC under the null (no direction matters), with the cluster bootstrap over
problems of `cluster_bootstrap` and the AUROC's own score interval, and for its Pearson correlation with the gold
solutions' -NLL (the `nll` metric).
Coverage is given with its Monte Carlo standard error, sqrt(c (1 - c) / runs); `--only NAME` runs the scenarios of
one name.
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

from autoskill_fast.evaluation.passk import (MAX_FEW_CHANGES, few_changes, mean_interval,  # noqa: E402
                                             simultaneous_band, simultaneous_mean_intervals)
from autoskill_fast.proxies.correlation import (auroc_score_interval, auroc_with_error, cluster_bootstrap,  # noqa: E402
                                                pearson_with_error)
from autoskill_fast.proxies.joint import set_joint  # noqa: E402
from autoskill_fast.run.ranking import RankingEntry  # noqa: E402


def scenario(kind: str, problems: int, entries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(per-problem differences [P, E], their population means [E])."""
    shift = np.linspace(-0.05, 0.05, entries)
    if kind == "normal":
        return shift + 0.6 * rng.normal(size=(problems, entries)), shift
    if kind == "skewed":  # centred exponentials with a problem effect shared by all entries
        shared = rng.normal(size=(problems, 1)) * 0.4
        return shift + shared + 0.6 * (rng.exponential(size=(problems, entries)) - 1.0), shift
    if kind == "pass@1":  # one sample per problem and arm: differences in {-1, 0, 1}
        base = rng.random((problems, 1)) < 0.3
        steered = rng.random((problems, entries)) < 0.3 + shift
        return steered.astype(float) - base, shift
    if kind == "sparse":  # steering changes 15% of the problems' outcomes, each up or down
        changed = rng.random((problems, entries)) < 0.15
        up = rng.random((problems, entries)) < 0.5 + 5 * shift
        return changed * np.where(up, 1.0, -1.0), 0.15 * 10 * shift
    if kind == "sparse 4%":  # steering changes 4% of the problems' outcomes: most differences are zero
        changed = rng.random((problems, entries)) < 0.04
        up = rng.random((problems, entries)) < 0.5 + 5 * shift
        return changed * np.where(up, 1.0, -1.0), 0.04 * 10 * shift
    if kind == "sparse 1%":  # 1%: most entries change nothing on 50 problems
        changed = rng.random((problems, entries)) < 0.01
        up = rng.random((problems, entries)) < 0.5 + 5 * shift
        return changed * np.where(up, 1.0, -1.0), 0.01 * 10 * shift
    if kind == "one-sided":  # steering only helps: entry e turns a share 0.02-0.15 of failures into successes
        share = np.linspace(0.02, 0.15, entries)
        return (rng.random((problems, entries)) < share).astype(float), share
    if kind == "heavy tail":  # the last entry's differences have rare huge values (Student t, 1.5 degrees of freedom)
        values = shift + 0.6 * rng.normal(size=(problems, entries))
        values[:, -1] = shift[-1] + 0.6 * rng.standard_t(1.5, size=problems)
        return values, shift
    if kind == "alphas":  # groups of 4 entries (one direction at 4 strengths) that move together
        groups = entries // 4
        direction = rng.normal(size=(problems, groups)) * 0.6
        values = np.repeat(direction, 4, axis=1) * np.tile([0.5, 1.0, 1.5, 2.0], groups)
        return shift + values + 0.1 * rng.normal(size=(problems, entries)), shift
    raise ValueError(kind)


BOUNDED = {"pass@1", "sparse", "sparse 4%", "sparse 1%", "one-sided"}  # Pass@k differences: (-1, 1), as rank passes them


def mean_scenario(kind: str, problems: int, entries: int, runs: int, resamples: int) -> dict:
    rng = np.random.default_rng(0)
    bounds = (-1.0, 1.0) if kind in BOUNDED else None
    few, each = 0, 0
    held = {"own": 0, "max-t, spread": 0, "joint": 0}
    critical, width = [], []
    for run in range(runs):
        values, truth = scenario(kind, problems, entries, rng)
        own = [mean_interval(values[:, e], resamples=resamples, seed=run, bounds=bounds) for e in range(entries)]
        few += int((few_changes(values)[1] <= MAX_FEW_CHANGES).sum())
        own_low, own_high = np.array([o.low for o in own]), np.array([o.high for o in own])
        held["own"] += bool(np.all((own_low <= truth) & (truth <= own_high)))
        each += int(np.sum((own_low <= truth) & (truth <= own_high)))
        index = np.random.default_rng(run).integers(0, problems, size=(resamples, problems))
        low, high, _ = simultaneous_band(values.mean(axis=0), values[index].mean(axis=1))
        held["max-t, spread"] += bool(np.all((low <= truth) & (truth <= high)))
        _, low, high, c = simultaneous_mean_intervals(values, resamples=resamples, seed=run, bounds=bounds)
        entry = [RankingEntry(e, 1, o.value, o.low, o.high, "") for e, o in enumerate(own)]
        for e in range(entries):
            set_joint(entry[e], low[e], high[e])
        low, high = np.array([e.joint_low for e in entry]), np.array([e.joint_high for e in entry])
        held["joint"] += bool(np.all((low <= truth) & (truth <= high)))
        critical.append(c)
        if few_changes(values[:, :1])[1][0] > MAX_FEW_CHANGES:  # both intervals the bootstrap's
            width.append((high[0] - low[0]) / (own_high[0] - own_low[0]))
    return {"scenario": kind, "problems": problems, "entries": entries, "runs": runs,
            **{name: count / runs for name, count in held.items()}, "critical_median": float(np.nanmedian(critical)),
            "entry_0_width_over_own": float(np.median(width)), "few_changes_entries": few / (runs * entries),
            "own_each": each / (runs * entries)}


def correlation_null(kind: str, problems: int, runs: int, resamples: int) -> dict:
    """The correlation proxy with no direction mattering: 6 directions (two of them moving together). `AUROC`: 3
    sampled solutions per problem, correctness unrelated to the scores; `Pearson`: one gold solution per problem, its
    -NLL (skewed) unrelated to the scores. "max-t, spread" studentizes by the draws' spread; "joint" is what `rank`
    reports, the bootstrap-t (a clustered standard error per resample), holding the own interval (for the AUROC,
    Newcombe's score interval, `auroc_score_interval`, as `rank` gives it)."""
    held = {"own": 0, "max-t, spread": 0, "joint": 0}
    samples, center = (3, 0.5) if kind == "AUROC" else (1, 0.0)
    for run in range(runs):
        rng = np.random.default_rng(100 + run)
        groups = np.repeat(np.arange(problems), samples)
        scores = rng.normal(size=(samples * problems, 6))
        scores[:, 5] = scores[:, 4] + 0.3 * rng.normal(size=samples * problems)
        interval = None
        if kind == "AUROC":
            correct = rng.random(samples * problems) < 0.4

            def statistic(rows, clusters):
                return auroc_with_error(scores[rows], correct[rows], clusters)

            def interval(value, error, critical, *, joint=False):  # rank's AUROC interval
                return auroc_score_interval(value, error, int(correct.sum()), int((~correct).sum()), critical,
                                            joint=joint)
        else:
            target = -rng.exponential(size=problems)

            def statistic(rows, clusters):
                return pearson_with_error(scores[rows], target[rows], clusters)
        bounds = (0.0, 1.0) if kind == "AUROC" else (-1.0, 1.0)
        b = cluster_bootstrap(statistic, groups, resamples=resamples, seed=run, bounds=bounds, interval=interval)
        spread = cluster_bootstrap(lambda rows, clusters: (statistic(rows, clusters)[0], None), groups,
                                   resamples=resamples, seed=run, bounds=bounds)
        held["own"] += bool(np.all((b.low <= center) & (center <= b.high)))
        held["max-t, spread"] += bool(np.all((spread.joint_low <= center) & (center <= spread.joint_high)))
        held["joint"] += bool(np.all((b.joint_low <= center) & (center <= b.joint_high)))
    return {"scenario": f"{kind}, null", "problems": problems, "entries": 12, "runs": runs,
            **{name: count / runs for name, count in held.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated experiments per scenario")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per experiment (rank's)")
    parser.add_argument("--auroc-runs", type=int, default=300, help="simulated experiments per correlation scenario")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--only", help="run only the scenarios of this name (e.g. 'sparse 4%%')")
    parser.add_argument("--differences-only", action="store_true", help="leave out the correlation rows")
    args = parser.parse_args()
    plan = [("normal", 200, 10), ("skewed", 50, 10), ("skewed", 200, 10), ("pass@1", 50, 10), ("pass@1", 200, 10),
            ("sparse", 50, 10), ("sparse", 200, 10), ("sparse 4%", 50, 4), ("heavy tail", 50, 10),
            ("sparse 4%", 200, 4), ("sparse 1%", 50, 16), ("one-sided", 50, 16), ("one-sided", 200, 16),
            ("alphas", 100, 16), ("skewed", 200, 30)]
    plan = [row for row in plan if args.only in (None, row[0])]
    rows = []
    start = time.perf_counter()
    print("| scenario | problems | entries | own: all held | max-t, spread | joint (rank) | median critical value | "
          "entry 0: joint / own width | entries of <= 2 changes | own: each held |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    se = lambda c, n: math.sqrt(c * (1 - c) / n)  # noqa: E731
    for kind, problems, entries in plan:
        row = mean_scenario(kind, problems, entries, args.runs, args.resamples)
        rows.append(row)
        n = row["runs"]
        print(f"| {kind} | {problems} | {entries} | {row['own']:.3f} | {row['max-t, spread']:.3f} +- "
              f"{se(row['max-t, spread'], n):.3f} | **{row['joint']:.3f}** +- {se(row['joint'], n):.3f} | "
              f"{row['critical_median']:.2f} | {row['entry_0_width_over_own']:.2f} | {row['few_changes_entries']:.2f} | "
              f"{row['own_each']:.3f} |",
              flush=True)
    for kind in ("AUROC", "Pearson"):
        for problems in (40, 200) if args.only in (None, f"{kind}, null") and not args.differences_only else ():
            row = correlation_null(kind, problems, args.auroc_runs, args.resamples)
            rows.append(row)
            n = row["runs"]
            print(f"| {kind}, null (correlation) | {problems}{' x 3 samples' if kind == 'AUROC' else ''} | "
                  f"6 (x 2 poles) | {row['own']:.3f} | {row['max-t, spread']:.3f} +- "
                  f"{se(row['max-t, spread'], n):.3f} | **{row['joint']:.3f}** +- {se(row['joint'], n):.3f} | | | | |",
                  flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "rows": rows, "runs": args.runs, "resamples": args.resamples, "machine": platform.platform(),
            "date": datetime.date.today().isoformat()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
