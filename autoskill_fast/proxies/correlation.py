"""The correlation proxy (no training, no intervention): does a direction's score go with verified correctness?

The seed's "utility metric that correlates activation strength along these directions with verifiable solution
correctness": the model samples its own solutions to the pool's problems (`eval`), each problem + solution text is
projected onto the basis (the basis's own pooling), and per direction the AUROC and the point-biserial correlation of
the score with correctness are reported; their sign says which pole goes with correct solutions. With the `nll`
metric, the text is each problem with its gold solution and the score is correlated with that solution's NLL
(lower is better).

Intervals resample problems (a problem's samples stay together). The joint intervals, from the same resamples, hold
every direction's value at once: a bootstrap-t, each resample's value measured in its own standard error (for the
AUROC, DeLong's placement values summed per problem as Obuchowski's clustered AUROC does; for Pearson's r, its
influence function). Pearson's own intervals are percentile bootstraps. Near an AUROC of 1, DeLong's error goes to 0
(it is 0 at an AUROC of 1) and the bootstrap sees little or no spread, so an AUROC's own interval is Newcombe's score
interval (`auroc_score_interval`), whose variance does not vanish there; the joint interval holds it, and the score
interval at the band's critical value (its variance as measured, so that in the middle it is about the band). In
simulations (bench/RESULTS.md) the joint intervals held all directions at once in 0.95-0.96 of experiments under
the null and 0.96-0.99 with one or three directions near an AUROC of 1 (the band alone: 0.34-0.91 there).
"""

from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..basis import SkillBasis
from ..capture.features import PooledBatches, resolve_pooling
from ..config import BatchingConfig
from ..data.stream import InputTally, iter_texts_tokenized
from ..evaluation.passk import simultaneous_band
from ..run.ranking import RankingEntry
from .joint import set_joint


def auroc(scores_nk: np.ndarray, labels_n: np.ndarray) -> np.ndarray:
    """Per column, the chance that a positive example scores above a negative one (ties count half): [k].
    NaN where the labels are all one class."""
    scores = np.asarray(scores_nk, dtype=np.float64)
    labels = np.asarray(labels_n, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = _average_ranks(scores)  # [N, k], 1-based, ties averaged
    u = ranks[labels].sum(axis=0) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def auroc_with_error(scores_nk: np.ndarray, labels_n: np.ndarray, clusters_n: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`auroc` [k] and its standard error [k] for rows that come in clusters (`clusters_n`: a problem's sampled
    solutions, numbered 0..G-1), from DeLong et al.'s (1988) placement values: a correct row's share of wrong rows
    below it, a wrong row's share of correct rows above it (ties half), summed per cluster (Obuchowski 1997). NaN
    where the labels are all one class."""
    scores = np.asarray(scores_nk, dtype=np.float64)
    labels = np.asarray(labels_n, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return np.full(scores.shape[1], np.nan), np.full(scores.shape[1], np.nan)
    ranks = _average_ranks(scores)
    negatives_below = ranks[labels] - _average_ranks(scores[labels])  # [M, k]: a rank among all minus among its own
    positives_below = ranks[~labels] - _average_ranks(scores[~labels])  # [N, k]
    value = negatives_below.sum(axis=0) / (positives * negatives)
    contributions = np.empty_like(scores)  # each row's share of the AUROC's deviation
    contributions[labels] = (negatives_below / negatives - value) / positives
    contributions[~labels] = ((positives - positives_below) / positives - value) / negatives
    return value, _clustered_error(contributions, clusters_n)


def auroc_score_interval(value_k: np.ndarray, error_k: np.ndarray, positives: int, negatives: int,
                         critical: float | np.ndarray, *, joint: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(low [k], high [k]): the AUROCs theta that pass (value - theta)^2 <= critical^2 s V(theta), Newcombe's (2006,
    method 5) score interval. V is Hanley and McNeil's variance of an AUROC of theta with the counts of positives and
    negatives both set to their mean, N = (positives + negatives) / 2, P = positives x negatives:
        V(theta) = theta (1 - theta) / P (1 + (N - 1) ((1 - theta) / (2 - theta) + theta / (1 + theta))).
    s is the measured variance (`error_k`, DeLong's, clustered by problem) over V at the value: at least 1 for an
    entry's own interval (near 1 the measured error rests on a handful of discordant pairs and runs short), as
    measured for a joint interval (`joint`: the band it joins is calibrated on the measured errors; the score
    interval adds only V's shape, which does not shrink to a point near 0 or 1 as the measured error does; near 1,
    where s is far below 1, it is then mostly shorter than the own interval, which the joint one holds); 1 where it
    is undefined (an AUROC of 0 or 1, one cluster), the whole range where the error is infinite. sqrt(V) is concave
    (both theta (1 - theta) and the bracket are), so |value - theta| - critical sqrt(s V) is convex and the set is one
    interval around the value: each end is found by bisection. NaN where the value is or where one class is empty."""
    value = np.asarray(value_k, dtype=np.float64)
    error = np.asarray(error_k, dtype=np.float64)
    if positives <= 0 or negatives <= 0:
        return np.full_like(value, np.nan), np.full_like(value, np.nan)
    pairs, half = positives * negatives, (positives + negatives) / 2.0

    def variance(theta):
        return theta * (1 - theta) / pairs * (1 + (half - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))

    at_value = variance(value)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(at_value > 0, error * error / at_value, np.where(np.isinf(error), np.inf, 1.0))
    scale = np.where(np.isnan(scale), 1.0, scale if joint else np.maximum(scale, 1.0))

    def outside(theta):
        with np.errstate(invalid="ignore"):  # an infinite scale times a variance of 0 at the range's ends
            return (value - theta) ** 2 > critical * critical * scale * variance(theta)

    def end(toward: float) -> np.ndarray:  # the last theta from the value toward 0 or 1 inside the set
        inside, beyond = value.copy(), np.full_like(value, toward)
        for _ in range(60):
            middle = (inside + beyond) / 2
            out = outside(middle)
            beyond, inside = np.where(out, middle, beyond), np.where(out, inside, middle)
        return np.where(outside(np.full_like(value, toward)), inside, toward)

    finite = np.isfinite(value)
    low, high = end(0.0), end(1.0)
    return np.where(finite, low, np.nan), np.where(finite, high, np.nan)


def _clustered_error(contributions_nk: np.ndarray, clusters_n: np.ndarray) -> np.ndarray:
    """The standard error [k] of a statistic whose deviation is the sum of its rows' `contributions`, the rows of one
    cluster moving together: sqrt(G / (G - 1) * sum over clusters of (their rows' sum)^2); NaN with one cluster."""
    clusters = np.asarray(clusters_n)
    count = int(clusters.max()) + 1
    if count < 2:
        return np.full(contributions_nk.shape[1], np.nan)
    order = np.argsort(clusters, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(clusters[order]) != 0])
    sums = np.add.reduceat(contributions_nk[order], starts, axis=0)
    return np.sqrt(count / (count - 1) * (sums * sums).sum(axis=0))


def _average_ranks(x_nk: np.ndarray) -> np.ndarray:
    order = np.argsort(x_nk, axis=0, kind="stable")
    ranks = np.empty_like(x_nk)
    n = x_nk.shape[0]
    for j in range(x_nk.shape[1]):
        sorted_values = x_nk[order[:, j], j]
        # Ties: every member of a run of equal values gets the run's mean rank.
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        ends = np.r_[starts[1:], n]
        mean_rank = (starts + ends + 1) / 2.0
        ranks[order[:, j], j] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(x_nk: np.ndarray, y_n: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column with y (the point-biserial correlation when y is 0/1): [k]."""
    x = np.asarray(x_nk, dtype=np.float64) - np.mean(x_nk, axis=0)
    y = np.asarray(y_n, dtype=np.float64) - np.mean(y_n)
    denominator = np.sqrt((x * x).sum(axis=0) * (y * y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (x * y[:, None]).sum(axis=0) / denominator, np.nan)


def pearson_with_error(x_nk: np.ndarray, y_n: np.ndarray, clusters_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pearson` [k] and its standard error [k] from r's influence function, zx zy - r (zx^2 + zy^2) / 2 of the
    standardized values, summed per cluster (`clusters_n`, numbered 0..G-1). NaN where a column or y is constant."""
    x = np.asarray(x_nk, dtype=np.float64) - np.mean(x_nk, axis=0)
    y = np.asarray(y_n, dtype=np.float64) - np.mean(y_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        zx = x / np.sqrt((x * x).mean(axis=0))
        zy = (y / np.sqrt((y * y).mean()))[:, None]
        value = (zx * zy).mean(axis=0)
        influence = zx * zy - value / 2.0 * (zx * zx + zy * zy)
    return value, _clustered_error(influence / len(y), clusters_n)


class Bootstrapped(NamedTuple):
    """A statistic [k] with its own intervals (percentile, or the statistic's own `interval`) and the joint ones
    (max-t: all k at once)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    joint_low: np.ndarray
    joint_high: np.ndarray


Interval = Callable[..., tuple[np.ndarray, np.ndarray]]  # (value [k], error [k], critical, *, joint) -> (low, high)


def cluster_bootstrap(statistic: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]],
                      groups_n: np.ndarray, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0,
                      bounds: tuple[float, float] | None = None, interval: Interval | None = None) -> Bootstrapped:
    """`statistic(rows, clusters)` -> (value [k], standard error [k] or None) on the rows given, `clusters` numbering
    their groups 0..G-1 (a group drawn twice is two clusters): on all rows, with its percentile intervals when whole
    groups (problems) are resampled with replacement, and the joint intervals of `simultaneous_band` from the same
    resamples (the bootstrap-t when the statistic gives standard errors; cut to `bounds`, the statistic's range).
    Resamples where the statistic is undefined (NaN) are left out.

    `interval(value, error, critical, joint=...)` -> (low [k], high [k]), the statistic's own interval at a critical
    value [k] or scalar (the AUROC's `auroc_score_interval`), replaces the percentile intervals (at the normal
    quantile of `confidence`), and each joint interval holds both it and its joint form at the band's critical value;
    an entry whose draws do not vary at all (an AUROC of 1 on every resample), which the band cannot see, at no less
    than the Bonferroni quantile for k entries."""
    _, groups = np.unique(np.asarray(groups_n), return_inverse=True)
    members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    sizes = np.array([len(m) for m in members])
    rng = np.random.default_rng(seed)
    value, error = statistic(np.arange(len(groups)), groups)
    if interval is not None and error is None:
        raise ValueError("cluster_bootstrap's interval needs a statistic that gives its standard error")
    draws, draw_errors = [], []
    for picks in rng.integers(0, len(members), size=(resamples, len(members))):
        draw, draw_error = statistic(np.concatenate([members[g] for g in picks]),
                                     np.repeat(np.arange(len(picks)), sizes[picks]))
        draws.append(draw)
        draw_errors.append(draw_error)
    draws = np.array(draws)
    errors = {} if error is None else {"errors_e": error, "draw_errors_re": np.array(draw_errors)}
    joint_low, joint_high, critical = simultaneous_band(value, draws, confidence=confidence, bounds=bounds,
                                                        **errors)
    if interval is None:
        alpha = (1 - confidence) / 2
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(draws).any()
            low = np.nanquantile(draws, alpha, axis=0) if finite else np.full_like(value, np.nan)
            high = np.nanquantile(draws, 1 - alpha, axis=0) if finite else np.full_like(value, np.nan)
        return Bootstrapped(value, low, high, joint_low, joint_high)
    low, high = interval(value, error, NormalDist().inv_cdf((1 + confidence) / 2))
    # The band's critical value is read from the entries whose draws vary; one whose draws do not (an AUROC of 1 on
    # every resample) took no part in it and gets at least the union bound's share of the miss chance over the k.
    bonferroni = NormalDist().inv_cdf(1 - (1 - confidence) / (2 * len(value)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN draws
        still = ~(np.nanmax(draws, axis=0) > np.nanmin(draws, axis=0))
    critical_k = np.where(still | ~np.isfinite(critical), np.fmax(critical, bonferroni), critical)
    wide_low, wide_high = interval(value, error, critical_k, joint=True)
    return Bootstrapped(value, low, high, np.fmin(np.fmin(joint_low, low), wide_low),
                        np.fmax(np.fmax(joint_high, high), wide_high))


def score_texts(basis: SkillBasis, model, tokenizer, texts: list[str], batching: BatchingConfig) -> np.ndarray:
    """Centered projections [N, k] of texts on the basis, pooled as the basis was, one batch in memory at a time."""
    resolved = resolve_pooling(basis.pooling_config, model, tokenizer)
    tally = InputTally()
    items = iter_texts_tokenized(texts, tokenizer, resolved.config, tally, on_bad_example="skip")
    scores = np.full((len(texts), basis.k), np.nan)
    pooled = PooledBatches(model, tokenizer, items, resolved, batching, tally, layer_scale=basis.layer_scale)
    for features, batch in pooled:
        scores[batch.rows.numpy()] = basis.project(features).to(torch.float64).cpu().numpy()
    return scores


def entries_from(bootstrapped: Bootstrapped, *, center: float, statistic: str, evaluation: str, cost_s: float,
                 extra: dict[str, np.ndarray] | None = None) -> list[RankingEntry]:
    """Both poles of every direction: the + pole's effect is value - center, the - pole's its mirror. A joint
    interval is never narrower than its entry's own (`joint.set_joint`)."""
    entries = []
    for d, value in enumerate(bootstrapped.value):
        if not np.isfinite(value):
            continue
        details = {name: float(v[d]) for name, v in (extra or {}).items()}
        for sign in (1, -1):
            low, high = sorted((sign * (bootstrapped.low[d] - center), sign * (bootstrapped.high[d] - center)))
            joint_low, joint_high = sorted((sign * (bootstrapped.joint_low[d] - center),
                                            sign * (bootstrapped.joint_high[d] - center)))
            entry = RankingEntry(direction=d, sign=sign, effect=float(sign * (value - center)), low=float(low),
                                 high=float(high), statistic=statistic, evaluation=evaluation, cost_s=cost_s,
                                 details=details)
            set_joint(entry, joint_low, joint_high)
            entries.append(entry)
    return entries
