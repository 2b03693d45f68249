"""Joint intervals for a ranking's entries: picking the best of many is covered.

Each entry's own 95% interval holds its effect in 95% of experiments, but among E entries with no effect at all the
best one lies above zero far more often than 2.5% of the time. The joint intervals (the bootstrap max-t band,
`evaluation.passk.simultaneous_band`) hold all E effects at once in 95% of experiments. They resample the same
problems for every entry, so entries that move together (one direction at two strengths) widen them less than
independent ones do.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.passk import simultaneous_mean_intervals
from ..run.ranking import RankingEntry


def set_joint_intervals(entries: list[RankingEntry], effects: list[tuple[list[str], np.ndarray]], *,
                        resamples: int) -> None:
    """Each entry's joint interval, from its per-problem effects (problem ids, [P]; larger is better, their mean its
    `effect`), resampling the problems all entries share."""
    if not entries:
        return
    shared = set.intersection(*(set(ids) for ids, _ in effects))
    order = [pid for pid in effects[0][0] if pid in shared]
    columns = []
    for ids, values in effects:
        position = {pid: i for i, pid in enumerate(ids)}
        columns.append(np.asarray(values, dtype=np.float64)[[position[pid] for pid in order]])
    _, low, high, _ = simultaneous_mean_intervals(np.stack(columns, axis=1), resamples=resamples)
    for entry, lo, hi in zip(entries, low, high):
        entry.joint_low, entry.joint_high = float(lo), float(hi)
