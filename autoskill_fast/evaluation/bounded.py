"""Intervals for the mean of a metric with a known range (`bounds`), where the percentile bootstrap cannot see.

- **Few values apart** (`few_changes_interval`): P values all equal but for at most MAX_FEW_CHANGES (a steering vector
  that changed no problem, or two, every problem solved). The bootstrap would give the point, or end where the few
  values put it ([0, 0.06] for one +1 among 50 zeros, held by 0.65 of such entries in a simulation). The count-based
  interval holds whatever the values it did not see; for a 0/1 metric at 97.5% it ends where Clopper-Pearson's exact
  95% interval does.
- **Values on the range's ends and middle** (`score_interval`): a 0/1 metric (Pass@1 of one sample, Pass@k of k) and
  the paired differences of one ({-1, 0, 1}). The percentile bootstrap of a proportion is short where it is rare:
  exactly, for a 0/1 metric at 50 problems, it held 0.940 on average over true shares 0.1-0.3 and 0.897 at the worst
  share (`bench/bench_exact_coverage.py`). The score interval (Wilson's for two values, Tango's for three) inverts the
  test of each candidate mean with the variance that mean implies, not the one seen: 0.952 and 0.917 there. No
  interval that is not conservative avoids such a worst share (the counts are discrete); Clopper-Pearson's, which
  does, held 0.961-0.977 on average, 5-11% wider.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

MAX_FEW_CHANGES = 2  # from 3 apart, the bootstrap's interval, or the score interval of a metric on three points


def few_changes(values_pe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value [E], changed [E]): each column's most common value and how many of its P values differ from it."""
    values = np.asarray(values_pe, dtype=np.float64).reshape(values_pe.shape[0], -1)
    common, changed = np.empty(values.shape[1]), np.empty(values.shape[1], dtype=np.int64)
    for e in range(values.shape[1]):
        distinct, counts = np.unique(values[:, e], return_counts=True)
        common[e], changed[e] = distinct[np.argmax(counts)], values.shape[0] - counts.max()
    return common, changed


def few_changes_interval(value: float, changed: int, problems: int, *, confidence: float = 0.95,
                         bounds: tuple[float, float]) -> tuple[float, float]:
    """The interval of a mean of a metric within `bounds` whose `problems` observed values all equal `value` but for
    `changed` of them (at most MAX_FEW_CHANGES): [value - u (value - low), value + u (high - value)], missing the mean
    with chance at most 1 - `confidence` whatever the metric's distribution, counting every sample with at most
    MAX_FEW_CHANGES values apart from the rest (and only those: `mean_interval` spends half its miss chance here,
    since another interval used for the other samples can miss on the other side).

    The mean lies within s of the way from v to each bound, s the share of all problems whose value is not v; and with
    s > u, at most `changed` of P drawn differ from v with chance below B(changed; P, u), the binomial distribution
    function. Another value, holding the rest (at most a share 1 - u), may be the one seen with at most
    MAX_FEW_CHANGES apart: the miss chance is at most B(changed; P, u) + B(MAX_FEW_CHANGES; P, 1 - u) once u < 1/2,
    and u is where that equals 1 - confidence: with nothing changed about the rule of three, u about 3/P at 95% (0.058
    of 50 problems; 0.091 with one changed, 0.121 with two). Where no u < 1/2 does (at 95%: P <= 10, or 11 with two
    changed), the interval is the whole range.
    """
    if not 0 <= changed <= MAX_FEW_CHANGES or changed >= problems:
        raise ValueError(f"few_changes_interval needs 0 <= changed <= {MAX_FEW_CHANGES} and changed < problems, got "
                         f"{changed} of {problems}")
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"value {value} lies outside bounds {bounds}")
    miss = 1.0 - confidence

    def seen_so_few(share: float, most: int) -> float:
        return sum(math.comb(problems, i) * share ** i * (1.0 - share) ** (problems - i) for i in range(most + 1))

    def chance(share: float) -> float:
        return seen_so_few(share, changed) + seen_so_few(1.0 - share, MAX_FEW_CHANGES)

    if chance(0.5) >= miss:
        return float(low), float(high)
    below, above = 0.0, 0.5  # the chance falls over [0, 1/2], to below the miss at 1/2: bisect
    for _ in range(60):
        share = (below + above) / 2.0
        below, above = (share, above) if chance(share) > miss else (below, share)
    return value - above * (value - low), value + above * (high - value)


def on_ends_and_middle(values: np.ndarray, bounds: tuple[float, float]) -> tuple[int, int] | None:
    """(up, down): how many of `values` lie on the range's high and low end, when every other one lies on its middle
    (a 0/1 metric, or a paired difference of one); None when some value lies elsewhere."""
    low, high = bounds
    up, down = int(np.count_nonzero(values == high)), int(np.count_nonzero(values == low))
    middle = int(np.count_nonzero(values == (low + high) / 2.0))
    return (up, down) if up + down + middle == values.shape[0] else None


def score_interval(up: int, down: int, problems: int, *, confidence: float = 0.95,
                   bounds: tuple[float, float]) -> tuple[float, float]:
    """The score interval of the mean of a metric on three points, the ends of `bounds` and its middle, seen `up`
    times on the high end and `down` on the low one among `problems`: every mean whose score test the data pass.

    On the scale {-1, 0, 1}, a mean d has a most likely distribution given d (Tango's restricted maximum likelihood,
    the root of 2P q^2 + B q + C with q the chance of -1, B = -(up (1 - d) + down (1 - 3 d) - 2 middle d),
    C = -down d (1 - d)), whose variance of a value is 2q + d (1 - d); d passes when the statistic
    (up - down - P d) / sqrt(P (2q + d (1 - d))) lies within +-z. Tango (1998) for a paired difference of proportions;
    with no value in the middle it is Wilson's interval of a proportion (q = (1 - d) / 2, the variance 1 - d^2). The
    statistic falls as d grows (a test checks the accepted set against a brute-force likelihood for every outcome of
    4 and 9 problems; a review, up to 30), so the ends are bisected.
    """
    middle = problems - up - down
    if up < 0 or down < 0 or middle < 0 or problems < 1:
        raise ValueError(f"score_interval needs 0 <= up + down <= problems, problems >= 1, got {up}, {down} of "
                         f"{problems}")
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)

    def statistic(d: float) -> float:
        b = -(up * (1.0 - d) + down * (1.0 - 3.0 * d) - 2.0 * middle * d)
        c = -down * d * (1.0 - d)
        root = math.sqrt(max(b * b - 8.0 * problems * c, 0.0))
        q = (root - b) / (4.0 * problems) if b <= 0 else 2.0 * c / (-b - root)  # the larger root, without cancelling
        spread = math.sqrt(max(problems * (2.0 * q + d * (1.0 - d)), 0.0))
        apart = up - down - problems * d
        if spread > 0:
            return apart / spread
        return math.copysign(math.inf, apart) if apart else 0.0  # d = -1 or 1: only the data all there pass

    def end(inside: float, outside: float) -> float:  # the last d from `inside` toward `outside` that passes
        if abs(statistic(outside)) <= z:
            return outside
        for _ in range(60):
            d = (inside + outside) / 2.0
            inside, outside = (d, outside) if abs(statistic(d)) <= z else (inside, d)
        return inside

    estimate = (up - down) / problems
    low_d, high_d = end(estimate, -1.0), end(estimate, 1.0)
    low, high = bounds
    middle_value, half = (low + high) / 2.0, (high - low) / 2.0
    return max(low, middle_value + half * low_d), min(high, middle_value + half * high_d)
