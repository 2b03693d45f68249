"""Joint intervals for a ranking's entries: picking the best of many is covered.

Each entry's own 95% interval holds its effect in 95% of experiments, but among E entries with no effect at all the
best one lies above zero far more often than 2.5% of the time. The joint intervals (the bootstrap max-t band,
`evaluation.passk.simultaneous_band`) hold all E effects at once in about 95% of experiments. They resample the same
problems for every entry, so entries that move together (one direction at two strengths) widen them less than
independent ones do. A joint interval is never narrower than its entry's own interval, whose shape may differ from the
band's (a percentile interval follows a skewed statistic's asymmetry; a count-based or score interval of a 0/1 metric,
or an AUROC's score interval near 1, reaches where the bootstrap cannot see); where it reaches further, it is taken.
"""

from __future__ import annotations

import numpy as np

from ..errors import AutoskillError
from ..evaluation.passk import simultaneous_mean_intervals
from ..run.ranking import RankingEntry


def set_joint_intervals(entries: list[RankingEntry], effects: list[tuple[list[str], np.ndarray]], *, resamples: int,
                        bounds: tuple[float, float] | None = None) -> None:
    """Each entry's joint interval, from its per-problem effects (problem ids, [P]; larger is better, their mean its
    `effect`) on the same problems, each resample drawing one set of problems for all entries; cut to `bounds`."""
    if not entries:
        return
    order = sorted(effects[0][0])  # the problems in one order whatever each evaluation's: the same resamples
    for entry, (ids, _) in zip(entries, effects):
        if set(ids) != set(order):
            raise AutoskillError(f"{entry.evaluation} and {entries[0].evaluation} evaluated different problems "
                                 f"({len(set(ids) ^ set(order))} in one only); rerun them on the same dev set")
    columns = []
    for ids, values in effects:
        position = {pid: i for i, pid in enumerate(ids)}
        columns.append(np.asarray(values, dtype=np.float64)[[position[pid] for pid in order]])
    _, low, high, _ = simultaneous_mean_intervals(np.stack(columns, axis=1), resamples=resamples, bounds=bounds)
    for entry, lo, hi in zip(entries, low, high):
        set_joint(entry, lo, hi)


def set_joint(entry: RankingEntry, low: float, high: float) -> None:
    """The entry's joint interval: the band's [low, high], widened to hold its own interval."""
    entry.joint_low, entry.joint_high = float(min(low, entry.low)), float(max(high, entry.high))
