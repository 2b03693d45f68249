"""Pass@k and its uncertainty: the unbiased estimator per problem, and percentile-bootstrap intervals over problems.

Pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") is the chance that at least one of k
samples, drawn without replacement from the n generated for a problem, is correct. With c of the n correct, the
unbiased estimate is 1 - C(n-c, k) / C(n, k), computed here as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i), whose
factors lie in [0, 1) (no huge binomials, no overflow, any n). The score of an evaluation is its mean over problems.

The intervals resample problems (the unit that varies between benchmarks and between problem draws); the samples of
one problem stay together. A paired difference of two evaluations of the same problems resamples the same problem
indices for both, i.e. bootstraps the mean of the per-problem differences: problem difficulty, shared by both, cancels.
The bootstrap is vectorized: a [resamples, P] matrix of indices from `numpy.random.default_rng(seed)` (drawn in blocks
of rows when P is large), so 2000 resamples of a thousand problems take tens of milliseconds.

Joint intervals (`simultaneous_band`, `simultaneous_mean_intervals`) hold E effects measured on the same problems at
once, so that picking the best of E is covered; `rank` gives one to each of its entries.

Given the metric's range (`bounds`), two kinds of data get an interval of `bounded` instead of the bootstrap's: P
values all equal but for at most two (the bootstrap would give the point, or end where those few values put it) get
the count-based `few_changes_interval`; values on the range's ends and middle (a 0/1 metric, a paired difference of
one), where the bootstrap of a rare proportion is short, get the score interval (Wilson's, Tango's).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .bounded import MAX_FEW_CHANGES, few_changes, few_changes_interval, on_ends_and_middle, score_interval

_CHUNK_ELEMENTS = 1 << 22  # bootstrap indices drawn per block (16 MiB of int32): memory stays flat for any P


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap interval (or, for a metric with a known range, one of `bounded`)."""

    value: float
    """The estimate on the data as given (the mean over all problems, or of their paired differences)."""
    low: float
    """Lower end: the (1 - confidence) / 2 quantile of the bootstrap means (widened about the mean for an unbounded
    metric, `small_sample_widening`), or the lower end of `bounded`'s interval."""
    high: float
    """Upper end: the (1 + confidence) / 2 quantile of the bootstrap means (widened likewise), or the upper end of
    `bounded`'s."""
    confidence: float
    """Nominal coverage of [low, high], e.g. 0.95."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _integers(name: str, value: ArrayLike) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"pass_at_k: {name} must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise ValueError(f"pass_at_k: {name} must be integers, got {float(array[bad].flat[0])}")
    return array.astype(np.int64)


def pass_at_k(n: ArrayLike, c: ArrayLike, k: ArrayLike) -> float | np.ndarray:
    """Unbiased pass@k of a problem with `c` correct among `n` samples; n, c, k broadcast against each other.

    Returns a float for scalar inputs, else a float64 array of the broadcast shape. Needs integers with 0 <= c <= n
    and 1 <= k <= n; anything else raises ValueError naming the first offending element.
    """
    arrays = _integers("n", n), _integers("c", c), _integers("k", k)
    try:
        n_a, c_a, k_a = np.broadcast_arrays(*arrays)
    except ValueError:
        raise ValueError(f"pass_at_k: n, c and k must be scalars or arrays of one shape (that broadcast), got shapes "
                         f"{np.shape(n)}, {np.shape(c)} and {np.shape(k)}") from None
    for name, bad, rule in (("n", n_a < 0, "must not be negative"),
                            ("c", c_a < 0, "must not be negative"),
                            ("k", k_a < 1, "must be at least 1"),
                            ("c", c_a > n_a, "(correct samples) must not exceed n (samples)"),
                            ("k", k_a > n_a, "must not exceed n: pass@k needs at least k samples")):
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            where = f" at index {i}" if i else ""
            raise ValueError(f"pass_at_k: {name} {rule}{where} (n={n_a[i]}, c={c_a[i]}, k={k_a[i]})")

    flat_n, flat_c, flat_k = n_a.ravel(), c_a.ravel(), k_a.ravel()
    keys = flat_n * (int(flat_k.max(initial=0)) + 1) + flat_k  # one per (n, k) pair
    pairs, which = np.unique(keys, return_inverse=True)
    out = np.empty(flat_c.shape, dtype=np.float64)
    for j in range(len(pairs)):
        members = np.flatnonzero(which == j)
        n_j, k_j, most = flat_n[members[0]], flat_k[members[0]], int(flat_c[members].max())
        # survive[m] = prod_{i=n-m+1}^{n} (1 - k/i) = C(n-m, k) / C(n, k): the chance that k samples drawn from n miss
        # all m correct ones, for every m at once. Multiplying from i = n down keeps each partial product exact to
        # rounding; the factor at i = k is exactly 0 (those below it do not matter), so pass@k is exactly 1 whenever
        # n - c < k.
        i = np.arange(n_j, n_j - most, -1, dtype=np.float64)  # the factors up to the most correct: any n
        survive = np.concatenate([[1.0], np.cumprod(1.0 - k_j / i)])
        out[members] = 1.0 - survive[flat_c[members]]
    out = out.reshape(n_a.shape)
    return float(out) if out.ndim == 0 else out


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[resamples] means of `values` [P] over problem indices drawn with replacement; [resamples, E] of `values`
    [P, E] (E metrics of the same problems, each resample drawing one set of problems for all of them)."""
    return np.concatenate([picked.mean(axis=1) for picked in _resampled(values, resamples, seed)])


def _bootstrap_means_and_errors(values: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The [resamples, E] means of `_bootstrap_means` over values [P, E], and each resample's own standard error of
    its means (the spread of the problems it drew / sqrt(P))."""
    means, errors = [], []
    for picked in _resampled(values, resamples, seed):
        means.append(picked.mean(axis=1))
        errors.append(picked.std(axis=1, ddof=1) / np.sqrt(values.shape[0]))
    return np.concatenate(means), np.concatenate(errors)


def _resampled(values: np.ndarray, resamples: int, seed: int):
    """`values` at problem indices drawn with replacement, [block, P, ...] at a time (memory flat for any P)."""
    rng = np.random.default_rng(seed)
    count = values.shape[0]
    block = max(1, _CHUNK_ELEMENTS // values.size)
    for start in range(0, resamples, block):
        yield values[rng.integers(0, count, size=(min(block, resamples - start), count), dtype=np.int32)]


def _check_bootstrap(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")


def _check_bounds(values: np.ndarray, bounds: tuple[float, float] | None) -> None:
    if bounds is None:
        return
    low, high = bounds
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    outside = (values < low) | (values > high)
    if outside.any():
        problem = int(np.argwhere(outside)[0][0])
        raise ValueError(f"values must lie within bounds {bounds}; problem {problem} has {float(values[outside][0])}")


def _per_problem(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array with one value per problem, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has a non-finite value at problem {int(np.argmin(np.isfinite(array)))}")
    return array


def mean_interval(values: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                  bounds: tuple[float, float] | None = None) -> Estimate:
    """The mean of a per-problem metric `values` [P] with a percentile-bootstrap interval over problems.

    With `bounds` (the metric's range, e.g. (0, 1) for Pass@k, (-1, 1) for a paired difference of it):
    - values that all equal one but for at most MAX_FEW_CHANGES of them (a steering vector that changed no problem,
      or two) get `few_changes_interval`, at half the miss chance: it misses on one side only (the true share of other
      values is larger than the few seen), and where it does, the interval of a sample that saw more of them can miss
      on the other (exactly, for a 0/1 metric at 50 problems, 0.911 held at the worst share when it took all of it;
      0.925 with Clopper-Pearson's interval from three on);
    - otherwise values that all lie on the range's ends and its middle get `score_interval`.
    Without, one value gives (-inf, inf), two or more all equal give the point itself, and otherwise the percentile
    interval is widened about the mean by `small_sample_widening`, which it needs on few problems (plain, it held a
    normal mean 53% of the time at 2 problems, 83% at 5, 90% at 10; widened, 92-95% from 2 to 30, and 86-92% for
    skewed values, which no symmetric form holds at so few; bench/RESULTS.md).
    """
    _check_bootstrap(confidence, resamples)
    values = _per_problem("values", values)
    _check_bounds(values, bounds)
    common, changed = few_changes(values[:, None])
    if bounds is not None and changed[0] <= MAX_FEW_CHANGES:
        low, high = few_changes_interval(float(common[0]), int(changed[0]), values.shape[0], bounds=bounds,
                                         confidence=(1.0 + confidence) / 2.0)
        return Estimate(float(values.mean()) if changed[0] else float(common[0]), low, high, float(confidence))
    counts = on_ends_and_middle(values, bounds) if bounds is not None else None
    if counts is not None:
        low, high = score_interval(*counts, values.shape[0], confidence=confidence, bounds=bounds)
        return Estimate(float(values.mean()), low, high, float(confidence))
    means = _bootstrap_means(values, resamples, seed)
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    mean = float(values.mean())
    if bounds is None and values.shape[0] == 1:
        return Estimate(mean, -math.inf, math.inf, float(confidence))  # one value says nothing of its spread
    if bounds is None:
        widen = small_sample_widening(values.shape[0], confidence)
        low, high = mean - widen * (mean - low), mean + widen * (high - mean)
    return Estimate(mean, float(low), float(high), float(confidence))


def small_sample_widening(count: int, confidence: float) -> float:
    """The factor that turns the percentile bootstrap interval of a mean of `count` values into one of Student's width:
    t(count - 1) sqrt(count / (count - 1)) / z, as in Hesterberg's expanded percentile interval (which widens by level
    instead; by scale, it holds from 2 values on). The bootstrap's spread is the values' own, divided by count rather
    than count - 1, and the normal quantile is too short for an estimated spread. 1.02 at 100 values, 1.22 at 10,
    1.58 at 5, 9.2 at 2, inf at 1."""
    if count < 2:
        return float("inf")
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    return student_t_quantile(confidence, count - 1) * float(np.sqrt(count / (count - 1))) / z


def student_t_quantile(confidence: float, df: int) -> float:
    """The t such that |T| < t with probability `confidence`, for Student's T with integer `df` degrees of freedom:
    the closed form of its distribution (Abramowitz and Stegun 26.7.3-4) inverted by bisection; above 100 degrees,
    their expansion about the normal quantile (26.7.5). To about 1e-9 relative for confidences up to 1 - 1e-9."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    df = int(df)
    if df > 100:
        z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
        terms = [(z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
                 (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
                 (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160]
        return z + sum(term / df ** (i + 1) for i, term in enumerate(terms))
    low, high = 0.0, 1.0
    while _student_t_within(high, df) < confidence:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (middle, high) if _student_t_within(middle, df) < confidence else (low, middle)
    return high


def _student_t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's T with integer `df` degrees of freedom."""
    theta = np.arctan(t / np.sqrt(df))
    cos2 = np.cos(theta) ** 2
    term, total = 1.0, 1.0
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ... up to cos^(df-3)))
        if df == 1:
            return float(2.0 * theta / np.pi)
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        return float(2.0 / np.pi * (theta + np.sin(theta) * np.cos(theta) * total))
    for j in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term *= cos2 * (2 * j - 1) / (2 * j)
        total += term
    return float(np.sin(theta) * total)


def paired_mean_difference(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000,
                           seed: int = 0, bounds: tuple[float, float] | None = None) -> Estimate:
    """mean(b) - mean(a) of a per-problem metric measured twice on the same problems, with a paired bootstrap;
    `bounds` is the differences' range (see `mean_interval`)."""
    a = _per_problem("a", a)
    b = _per_problem("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same problems in the same order, got {a.shape[0]} and "
                         f"{b.shape[0]} problems")
    # Resampling the same indices for both and differencing the means is bootstrapping the mean of b - a.
    return mean_interval(b - a, confidence=confidence, resamples=resamples, seed=seed, bounds=bounds)


def _pass_at_k_per_problem(name: str, correct: ArrayLike, n: ArrayLike, k: int) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.ndim != 1 or correct.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of correct counts, one per problem, got shape "
                         f"{correct.shape}")
    if np.ndim(n) not in (0, 1) or (np.ndim(n) == 1 and np.shape(n) != correct.shape):
        raise ValueError(f"n must be one sample count or one per problem ({correct.shape[0]}), got shape "
                         f"{np.shape(n)}")
    if np.ndim(k) != 0:
        raise ValueError(f"k must be one integer, got shape {np.shape(k)}")
    return np.asarray(pass_at_k(n, correct, k), dtype=np.float64).reshape(correct.shape)


def pass_at_k_interval(correct: ArrayLike, n: ArrayLike, k: int, *, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Estimate:
    """Mean pass@k over problems, `correct` [P] correct samples of `n` (one count, or [P]) each, with a bootstrap."""
    values = _pass_at_k_per_problem("correct", correct, n, k)
    return mean_interval(values, confidence=confidence, resamples=resamples, seed=seed, bounds=(0.0, 1.0))


def paired_pass_at_k_difference(correct_a: ArrayLike, correct_b: ArrayLike, n_a: ArrayLike, n_b: ArrayLike, k: int,
                                *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean pass@k of b minus that of a, two evaluations of the same problems (same order), with a paired bootstrap."""
    a = _pass_at_k_per_problem("correct_a", correct_a, n_a, k)
    b = _pass_at_k_per_problem("correct_b", correct_b, n_b, k)
    return paired_mean_difference(a, b, confidence=confidence, resamples=resamples, seed=seed, bounds=(-1.0, 1.0))


MIN_JOINT_RESAMPLES = 20  # the band reads the 95th percentile of a maximum over the resamples
RESAMPLE_ERROR_FLOOR = 0.5  # a resample's own standard error counts as at least this share of its entry's spread
FEW_CHANGES_MISS = 0.1  # joint intervals with a range: the miss chance's share kept for entries of few changes


def simultaneous_band(value_e: ArrayLike, draws_re: ArrayLike, *, confidence: float = 0.95,
                      errors_e: ArrayLike | None = None, draw_errors_re: ArrayLike | None = None,
                      bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(low [E], high [E], critical): intervals that contain all E true values together with chance about
    `confidence`, from bootstrap draws [R, E] of the E statistics taken on the same resamples (the bootstrap max-t
    band).

    Each draw's distance from its entry's value is measured in standard errors: by default the spread of the entry's
    draws; with `errors_e` (each entry's standard error on the data) and `draw_errors_re` (each resample's own), each
    draw in its own (the bootstrap-t, which stays near the nominal coverage when the statistic is skewed). A
    resample's own error counts as at least half its entry's spread: one that leaves out an outlying problem, or draws
    no change at all, would otherwise have a tiny error and a huge t, and one entry's outlier would widen every
    entry's band (one problem of 50 raised the critical value from 2.9 to 14.5 in a test).

    The critical value c is the `confidence` quantile, over the resamples, of the largest such distance among the
    entries, but never below the normal quantile of one entry's interval (1.96 at 95%); the band is value +- c
    standard errors, cut to `bounds` (the statistic's range) when given. With 20 independent entries c is about 3.0;
    less when the entries move together, as steering strengths of one direction do. A NaN draw (a resample where that
    entry's statistic is undefined) leaves that entry out of that resample's maximum. An entry whose draws do not
    vary, or whose value is not finite, gets its value as both ends."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    value = np.asarray(value_e, dtype=np.float64)
    draws = np.asarray(draws_re, dtype=np.float64)
    if value.ndim != 1 or draws.ndim != 2 or draws.shape[1] != value.shape[0]:
        raise ValueError(f"simultaneous_band needs values [E] and draws [R, E], got {value.shape} and {draws.shape}")
    if draws.shape[0] < MIN_JOINT_RESAMPLES:
        raise ValueError(f"simultaneous_band needs at least {MIN_JOINT_RESAMPLES} resamples, got {draws.shape[0]}")
    if (errors_e is None) != (draw_errors_re is None):
        raise ValueError("give both errors_e and draw_errors_re, or neither")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an entry with fewer than two finite draws: no spread
        spread = np.nanstd(draws, axis=0, ddof=1)
    varies = np.isfinite(spread) & (spread > 0) & np.isfinite(value)
    if not varies.any():
        return value.copy(), value.copy(), float("nan")
    scale, draw_scale = spread, spread[None, :]
    if errors_e is not None:
        scale = np.asarray(errors_e, dtype=np.float64)
        draw_errors = np.asarray(draw_errors_re, dtype=np.float64)
        if scale.shape != value.shape or draw_errors.shape != draws.shape:
            raise ValueError(f"errors_e must be [E] and draw_errors_re [R, E] like the draws, got {scale.shape} and "
                             f"{draw_errors.shape}")
        draw_scale = np.maximum(draw_errors, RESAMPLE_ERROR_FLOOR * spread[None, :])
    t = np.abs(draws[:, varies] - value[varies]) / draw_scale[:, varies]
    rows = np.isfinite(t).any(axis=1)
    if not rows.any():  # no resample has a finite distance (one cluster: no resample's error is defined)
        return value.copy(), value.copy(), float("nan")
    critical = max(float(np.quantile(np.nanmax(t[rows], axis=1), confidence)),
                   NormalDist().inv_cdf((1.0 + confidence) / 2.0))
    half = np.where(varies, critical * scale, 0.0)
    low, high = value - half, value + half
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return low, high, critical


def simultaneous_mean_intervals(values_pe: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000,
                                seed: int = 0, bounds: tuple[float, float] | None = None
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean [E], low [E], high [E], critical): the means of E per-problem metrics [P, E] of the same problems (e.g.
    the paired differences of E interventions against one baseline), with the joint intervals of `simultaneous_band`
    (bootstrap-t) over resamples of the problems, cut to `bounds`.

    Without `bounds`, an entry whose values are all equal (all of them, with one problem) gets its point; on few
    problems the band holds less than `confidence` (4 normal entries, each widened to its own interval as `rank`
    does: 0.75 at 2 problems, 0.84 at 3, 0.93 at 5; bench/RESULTS.md). With them,
    an entry whose values all equal one but for at most MAX_FEW_CHANGES gets `few_changes_interval` at
    1 - FEW_CHANGES_MISS (1 - confidence) / E, and the band of the others is taken at
    1 - (1 - FEW_CHANGES_MISS) (1 - confidence): shares fixed before the data are seen, so the chances of a miss add
    to at most 1 - confidence (Bonferroni) whichever entries turn out to change few problems. With 16 entries on 50
    problems an unchanged entry gets +-0.15, and the band's critical value grows about 1.5% (95.5% for 95%).
    """
    _check_bootstrap(confidence, resamples)
    values = np.asarray(values_pe, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"values must be [P, E] with P, E >= 1 (one row per problem), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"values has a non-finite value at problem {int(np.argmin(np.isfinite(values).all(axis=1)))}")
    _check_bounds(values, bounds)
    count, entries = values.shape
    common, changed = few_changes(values)
    mean = np.where(changed > 0, values.mean(axis=0), common)  # a sum of equal values may round off them
    low, high, critical = mean.copy(), mean.copy(), float("nan")
    banded = changed > 0
    if bounds is not None:
        miss = 1.0 - confidence
        banded = changed > MAX_FEW_CHANGES
        for e in np.flatnonzero(~banded):
            low[e], high[e] = few_changes_interval(common[e], int(changed[e]), count, bounds=bounds,
                                                   confidence=1.0 - FEW_CHANGES_MISS * miss / entries)
        confidence = 1.0 - (1.0 - FEW_CHANGES_MISS) * miss
    if banded.any():
        column = np.flatnonzero(banded)
        means, errors = _bootstrap_means_and_errors(values[:, column], resamples, seed)
        low[column], high[column], critical = simultaneous_band(
            mean[column], means, confidence=confidence, draw_errors_re=errors, bounds=bounds,
            errors_e=values[:, column].std(axis=0, ddof=1) / np.sqrt(count))
    return mean, low, high, critical
