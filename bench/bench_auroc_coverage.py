"""How often the correlation proxy's AUROC intervals hold the true AUROC, from one half to nearly 1 (simulation).

    python bench/bench_auroc_coverage.py [--runs 2000] [--bootstrap-runs 300] [--resamples 500] [--out FILE]

Each experiment samples 3 solutions for each of P problems; a problem's ease moves its solutions' correctness and
their scores together (clusters), and a direction's score separates correct from wrong solutions by `shift`:
- binormal: score = normal + shift * correct + 0.5 * ease;
- exponential: score = exponential * exp(shift * correct + 0.3 * ease) (Hanley and McNeil's variance model is exact
  for exponential scores without clusters).
The true AUROC is measured on 100,000 problems of the same model. Part 1 (`--runs` experiments a row, no bootstrap):
each direction's own interval, DeLong's Wald interval (value +- 1.96 clustered errors, what the bootstrap-t band is
made of) against `auroc_score_interval` (Newcombe's score interval, scaled up by the clustered variance where that is
larger), with their mean widths. Part 2 (`--bootstrap-runs` experiments, `--resamples` resamples each): `rank`'s
whole procedure, `cluster_bootstrap` without and with the score interval, on 6 directions (one or three separating,
the others with no effect): the first separating direction's own interval, and all 6 joint intervals at once.
`--runs 0` runs part 2 alone.
Coverage is given with its Monte Carlo standard error, sqrt(c (1 - c) / runs).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoskill_fast.proxies.correlation import (auroc, auroc_score_interval, auroc_with_error,  # noqa: E402
                                                cluster_bootstrap)

Z = 1.959963984540054
SHIFTS = {"binormal": (0.0, 1.0, 2.0, 3.0, 4.0, 5.0), "exponential": (0.5, 1.5, 2.5, 3.5, 4.5)}


def experiment(family: str, shift: float, problems: int, directions: int, rng: np.random.Generator,
               separating: int = 1):
    """(scores [3P, directions], correct [3P], problem of each row [3P]); the first `separating` directions separate
    (each with its own noise), the others do not."""
    groups = np.repeat(np.arange(problems), 3)
    ease = rng.normal(size=problems)[groups]
    correct = rng.random(len(groups)) < 1 / (1 + np.exp(0.4 - 1.2 * ease))
    scores = rng.normal(size=(len(groups), directions))
    for d in range(separating):
        if family == "binormal":
            scores[:, d] += shift * correct + 0.5 * ease
        else:
            scores[:, d] = rng.exponential(size=len(groups)) * np.exp(shift * correct + 0.3 * ease)
    return scores, correct, groups


def true_auroc(family: str, shift: float) -> float:
    scores, correct, _ = experiment(family, shift, 100_000, 1, np.random.default_rng(12345))
    return float(auroc(scores, correct)[0])


def own_intervals(family: str, shift: float, problems: int, runs: int) -> dict:
    truth = true_auroc(family, shift)
    held, width = {"wald": 0, "score": 0}, {"wald": 0.0, "score": 0.0}
    for run in range(runs):
        scores, correct, groups = experiment(family, shift, problems, 1, np.random.default_rng(1000 + run))
        value, error = auroc_with_error(scores, correct, groups)
        ends = {"wald": (max(value[0] - Z * error[0], 0.0), min(value[0] + Z * error[0], 1.0)),
                "score": [e[0] for e in auroc_score_interval(value, error, int(correct.sum()),
                                                             int((~correct).sum()), Z)]}
        for name, (low, high) in ends.items():
            held[name] += bool(low <= truth <= high)
            width[name] += high - low
    return {"family": family, "shift": shift, "problems": problems, "true_auroc": truth, "runs": runs,
            **{f"{name}_held": held[name] / runs for name in held},
            **{f"{name}_width": width[name] / runs for name in width}}


def whole_procedure(family: str, shift: float, problems: int, runs: int, resamples: int, separating: int = 1) -> dict:
    truth = true_auroc(family, shift)
    truths = np.r_[np.full(separating, truth), np.full(6 - separating, 0.5)]
    held = {f"{kind}_{what}": 0 for kind in ("before", "now") for what in ("own", "joint_all")}
    for run in range(runs):
        scores, correct, groups = experiment(family, shift, problems, 6, np.random.default_rng(1000 + run),
                                             separating)

        def statistic(rows, clusters):
            return auroc_with_error(scores[rows], correct[rows], clusters)

        def interval(value, error, critical, *, joint=False):
            return auroc_score_interval(value, error, int(correct.sum()), int((~correct).sum()), critical,
                                        joint=joint)

        for kind, extra in (("before", {}), ("now", {"interval": interval})):
            b = cluster_bootstrap(statistic, groups, resamples=resamples, seed=run, bounds=(0.0, 1.0), **extra)
            # rank's joint interval is never narrower than the entry's own (proxies.joint.set_joint)
            joint_low, joint_high = np.fmin(b.joint_low, b.low), np.fmax(b.joint_high, b.high)
            held[f"{kind}_own"] += bool(b.low[0] <= truth <= b.high[0])
            held[f"{kind}_joint_all"] += bool(np.all((joint_low <= truths) & (truths <= joint_high)))
    return {"family": family, "shift": shift, "problems": problems, "separating": separating, "true_auroc": truth,
            "runs": runs, "resamples": resamples, **{name: count / runs for name, count in held.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="experiments per row of part 1")
    parser.add_argument("--bootstrap-runs", type=int, default=300, help="experiments per row of part 2 (0: skip)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples per experiment in part 2")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    def margin(c: float, runs: int) -> str:
        return f"{c:.3f} +- {np.sqrt(c * (1 - c) / runs):.3f}"

    started = time.perf_counter()
    own, whole = [], []
    if args.runs:
        print("| scores | problems | true AUROC | Wald (DeLong) held | width | score held | width |")
        print("|---|---|---|---|---|---|---|")
    for family, shifts in SHIFTS.items() if args.runs else ():
        for problems in (50, 200):
            for shift in shifts:
                row = own_intervals(family, shift, problems, args.runs)
                own.append(row)
                print(f"| {family} | {problems} x 3 | {row['true_auroc']:.4f} | {margin(row['wald_held'], args.runs)} | "
                      f"{row['wald_width']:.3f} | {margin(row['score_held'], args.runs)} | {row['score_width']:.3f} |",
                      flush=True)
    if args.bootstrap_runs:
        print("\n| scores | problems | separating | true AUROC | own, before | own, now | all 6 joint, before | "
              "all 6 joint, now |")
        print("|---|---|---|---|---|---|---|---|")
        for family, shift, separating in (("binormal", 0.0, 1), ("binormal", 2.0, 1), ("binormal", 3.0, 1),
                                          ("binormal", 4.0, 1), ("binormal", 5.0, 1), ("exponential", 3.5, 1),
                                          ("exponential", 4.5, 1), ("binormal", 3.0, 3), ("binormal", 4.0, 3),
                                          ("exponential", 4.5, 3)):
            row = whole_procedure(family, shift, 50, args.bootstrap_runs, args.resamples, separating)
            whole.append(row)
            n = args.bootstrap_runs
            print(f"| {family} | 50 x 3 | {separating} | {row['true_auroc']:.4f} | {margin(row['before_own'], n)} | "
                  f"{margin(row['now_own'], n)} | {margin(row['before_joint_all'], n)} | "
                  f"{margin(row['now_joint_all'], n)} |", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                                        "processor": platform.processor(), "seconds": elapsed, "args": vars(args) | {
                                            "out": str(args.out)}, "own": own, "whole": whole}, indent=1) + "\n")


if __name__ == "__main__":
    main()
