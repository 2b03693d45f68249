"""The correlation proxy's AUROC intervals near an AUROC of 1, where DeLong's error and the bootstrap's spread vanish:
Newcombe's score interval against the roots of its own polynomial, its coverage where the Wald interval's fails, and
how `cluster_bootstrap` uses it."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from numpy.polynomial import Polynomial

from autoskill_fast.proxies.correlation import auroc, auroc_score_interval, auroc_with_error, cluster_bootstrap


def newcombe_roots(value: float, positives: int, negatives: int, z2: float) -> list[float]:
    """The real roots in [0, 1] of (value - t)^2 P (2 - t)(1 + t) = z2 t (1 - t) ((2 - t)(1 + t) + (N - 1)((1 - t)(1 +
    t) + t (2 - t))), Newcombe's method-5 equation with its denominators multiplied out (N the mean count, P their
    product): a quartic, solved by numpy."""
    t = Polynomial([0.0, 1.0])
    half = (positives + negatives) / 2
    left = (value - t) ** 2 * positives * negatives * (2 - t) * (1 + t)
    right = z2 * t * (1 - t) * ((2 - t) * (1 + t) + (half - 1) * ((1 - t) * (1 + t) + t * (2 - t)))
    roots = (left - right).roots()
    return sorted(float(r.real) for r in roots if abs(r.imag) < 1e-9 and -1e-12 <= r.real <= 1 + 1e-12)


def newcombe_variance(theta: float, positives: int, negatives: int) -> float:
    half = (positives + negatives) / 2
    return theta * (1 - theta) / (positives * negatives) * (1 + (half - 1) * ((1 - theta) / (2 - theta)
                                                                              + theta / (1 + theta)))


@pytest.mark.parametrize("positives,negatives", [(1, 1), (3, 40), (17, 97), (250, 123)])
def test_the_score_interval_ends_are_the_roots_of_newcombes_quartic(positives, negatives):
    """Ends away from 0 and 1 are roots of the quartic; where the measured error is larger than the model's variance
    at the value, the quartic's z^2 is scaled by their ratio; at an AUROC of 0 or 1 (error 0) the interval still has
    width."""
    rng = np.random.default_rng(positives * 1000 + negatives)
    values = np.r_[rng.random(6), 0.0, 1.0, 0.5]
    for critical in (1.96, 3.1):
        for inflate in (0.5, 1.0, 2.5):  # the measured variance as a multiple of the model's at the value
            errors = np.sqrt(inflate * np.array([newcombe_variance(v, positives, negatives) for v in values]))
            low, high = auroc_score_interval(values, errors, positives, negatives, critical)
            for v, lo, hi in zip(values, low, high):
                scale = max(inflate, 1.0) if 0 < v < 1 else 1.0  # at 0 and 1 the error is 0: no ratio
                roots = newcombe_roots(v, positives, negatives, critical ** 2 * scale)
                assert lo <= v <= hi
                for end, inner in ((lo, lo > 0), (hi, hi < 1)):
                    if inner:
                        assert min(abs(end - r) for r in roots) < 1e-9, (v, end, roots)
            assert high[values == 1.0][0] == 1.0 and low[values == 1.0][0] < 1.0
            assert low[values == 0.0][0] == 0.0 and high[values == 0.0][0] > 0.0
    wide_low, wide_high = auroc_score_interval(np.array([0.9]), np.array([0.01]), 17, 97, 3.1)
    low, high = auroc_score_interval(np.array([0.9]), np.array([0.01]), 17, 97, 1.96)
    assert wide_low < low and high < wide_high
    assert np.isnan(auroc_score_interval(np.array([np.nan]), np.array([np.nan]), 17, 97, 1.96)[0]).all()
    assert np.isnan(auroc_score_interval(np.array([0.9]), np.array([0.01]), 0, 97, 1.96)[0]).all()
    everything = auroc_score_interval(np.array([0.9]), np.array([np.inf]), 17, 97, 1.96)
    assert (everything[0][0], everything[1][0]) == (0.0, 1.0)
    small = np.array([0.5 * np.sqrt(newcombe_variance(0.9, 17, 97))])  # a measured variance a quarter of V's
    floored = auroc_score_interval(np.array([0.9]), small, 17, 97, 1.96)
    measured = auroc_score_interval(np.array([0.9]), small, 17, 97, 1.96, joint=True)
    assert floored[0] < measured[0] and measured[1] < floored[1]
    assert 0.35 < (0.9 - measured[0][0]) / (0.9 - floored[0][0]) < 0.6  # about half as far: V grows away from 0.9


def _binormal(rng, problems, shift):
    """3 sampled solutions per problem; a problem's ease moves its correctness and its score together."""
    groups = np.repeat(np.arange(problems), 3)
    ease = rng.normal(size=problems)[groups]
    correct = rng.random(len(groups)) < 1 / (1 + np.exp(0.4 - 1.2 * ease))
    scores = (rng.normal(size=len(groups)) + shift * correct + 0.5 * ease)[:, None]
    return scores, correct, groups


@pytest.mark.parametrize("shift,wald_at_most,score_at_least", [(1.0, 1.0, 0.93), (4.0, 0.8, 0.93)])
def test_the_score_interval_holds_where_delongs_wald_interval_does_not(shift, wald_at_most, score_at_least):
    """50 problems of 3 samples, 400 seeded experiments. At a true AUROC of 0.83 both hold about 95%; at 0.998 the
    Wald interval (value +- 1.96 DeLong errors) held 0.68 of 2000 in a trial, the score interval 0.99."""
    truth = float(auroc(*_binormal(np.random.default_rng(0), 100_000, shift)[:2])[0])
    held = {"wald": 0, "score": 0}
    z = NormalDist().inv_cdf(0.975)
    for seed in range(400):
        scores, correct, groups = _binormal(np.random.default_rng(1 + seed), 50, shift)
        value, error = auroc_with_error(scores, correct, groups)
        low, high = auroc_score_interval(value, error, int(correct.sum()), int((~correct).sum()), z)
        held["wald"] += bool(value[0] - z * error[0] <= truth <= value[0] + z * error[0])
        held["score"] += bool(low[0] <= truth <= high[0])
    assert held["wald"] <= wald_at_most * 400 and held["score"] >= score_at_least * 400, (truth, held)


def test_cluster_bootstrap_takes_the_statistics_own_interval():
    """With `interval`: the own intervals are it at 1.96; the joint ones hold them, the band, and its joint form at
    the band's critical value, one value for every entry (read back from the ends of two perfectly separating
    directions, whose band is a point), or at the Bonferroni quantile where no direction varies."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(40), 3)
    correct = rng.random(120) < 0.4
    scores = rng.normal(size=(120, 5))
    scores[:, 2:4] = correct[:, None] + 0.01 * rng.random((120, 2))  # AUROC 1 on every resample
    scores[:, 4] = correct + 0.3 * rng.normal(size=120)  # near 1, and its draws vary
    positives, negatives = int(correct.sum()), int((~correct).sum())

    def statistic(rows, clusters):
        return auroc_with_error(scores[rows], correct[rows], clusters)

    def interval(value, error, critical, *, joint=False):
        return auroc_score_interval(value, error, positives, negatives, critical, joint=joint)

    def critical_at(low):  # the critical value whose score interval of an AUROC of 1 ends at `low`
        return (1 - low) / np.sqrt(newcombe_variance(low, positives, negatives))

    b = cluster_bootstrap(statistic, groups, resamples=200, bounds=(0.0, 1.0), interval=interval)
    value, error = statistic(np.arange(120), groups)
    own = interval(value, error, NormalDist().inv_cdf(0.975))
    np.testing.assert_array_equal(b.low, own[0])
    np.testing.assert_array_equal(b.high, own[1])
    assert np.all(value[2:4] == 1.0) and np.all(b.low[2:4] < 1.0) and 0.96 < value[4] < 1.0
    plain = cluster_bootstrap(statistic, groups, resamples=200, bounds=(0.0, 1.0))
    assert np.all(plain.joint_low[2:4] == 1.0) and np.all(plain.joint_high[2:4] == 1.0)  # the band alone: a point
    assert np.all(b.joint_low <= np.fmin(plain.joint_low, b.low)) and np.all(b.joint_high >= np.fmax(plain.joint_high,
                                                                                                      b.high))
    critical = critical_at(b.joint_low[2])
    assert critical == pytest.approx(critical_at(b.joint_low[3]), rel=1e-6)
    assert 2.0 < critical and critical != pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 10), rel=1e-3)
    near = interval(value[4:], error[4:], critical, joint=True)
    assert b.joint_low[4] <= near[0][0] < b.low[4]  # the near-perfect direction is held at the band's critical value

    only = cluster_bootstrap(lambda rows, clusters: tuple(v[2:4] for v in statistic(rows, clusters)), groups,
                             resamples=200, bounds=(0.0, 1.0), interval=interval)
    assert critical_at(only.joint_low[0]) == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 4), rel=1e-6)  # 2 entries
    assert np.all(only.joint_high == 1.0)
    mixed = cluster_bootstrap(lambda rows, clusters: tuple(v[[2, 0]] for v in statistic(rows, clusters)), groups,
                              resamples=200, bounds=(0.0, 1.0), interval=interval)
    # one separating direction beside a null one: the band's critical value came from the null one alone, so the
    # separating one gets at least the Bonferroni quantile for the two
    assert critical_at(mixed.joint_low[0]) >= NormalDist().inv_cdf(1 - 0.05 / 4) - 1e-6
    with pytest.raises(ValueError, match="standard error"):
        cluster_bootstrap(lambda rows, _: (auroc(scores[rows], correct[rows]), None), groups, resamples=50,
                          interval=interval)
    one = np.zeros(6, dtype=int)  # one problem: no resample has an error, and nothing breaks
    alone = cluster_bootstrap(lambda rows, clusters: auroc_with_error(scores[:6][rows], np.arange(6)[rows] % 2 == 0,
                                                                      clusters),
                              one, resamples=50, bounds=(0.0, 1.0),
                              interval=lambda value, error, critical, *, joint=False: auroc_score_interval(
                                  value, error, 3, 3, critical, joint=joint))
    assert np.all(np.isfinite(alone.low)) and np.all(alone.joint_low <= alone.low)


def test_rank_correlation_gives_its_entries_the_score_intervals(monkeypatch, tmp_path):
    """`rank --proxy correlation` (pass@k) wiring, with the evaluation and the scoring stood in for: the entries'
    intervals are `cluster_bootstrap`'s with the score interval over the counts of correct and wrong samples, own and
    joint (the joint form as measured: with the floor, a near-perfect direction's joint interval would be wider)."""
    from types import SimpleNamespace

    from autoskill_fast.evaluation.job import EvalConfig
    from autoskill_fast.proxies import job

    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(40), 3)
    correct = rng.random(120) < 0.4
    scores = rng.normal(size=(120, 3))
    scores[:, 0] = correct + 0.3 * rng.normal(size=120)  # near 1
    ids = [f"p{g}" for g in range(40)]
    lines = [{"id": ids[g], "completion": f"solution {r}", "correct": bool(correct[r])} for r, g in enumerate(groups)]
    monkeypatch.setattr(job, "load_problems", lambda config: [SimpleNamespace(id=i, question="q", solution="s")
                                                              for i in ids])
    monkeypatch.setattr(job, "evaluate", lambda config, loaded: SimpleNamespace(
        folder=str(tmp_path), ids=ids, record={"pass_at_k": {"1": float(correct.mean())}}))
    monkeypatch.setattr(job, "read_samples", lambda path: lines)
    monkeypatch.setattr(job, "_pool_scores", lambda work, basis, loaded, texts, batching: scores)
    entries, baseline = job._correlation(job.RankConfig(run=str(tmp_path), resamples=200), SimpleNamespace(k=3),
                                         SimpleNamespace(config={}), SimpleNamespace(model=None, tokenizer=None),
                                         tmp_path, [0, 1, 2], EvalConfig(out=str(tmp_path)))
    assert baseline["samples"] == 120 and baseline["correct"] == int(correct.sum())

    def statistic(rows, clusters):
        return auroc_with_error(scores[rows], correct[rows], clusters)

    def bootstrapped(floor_joint):
        def interval(value, error, critical, *, joint=False):
            return auroc_score_interval(value, error, int(correct.sum()), int((~correct).sum()), critical,
                                        joint=joint and not floor_joint)
        return cluster_bootstrap(statistic, groups, resamples=200, bounds=(0.0, 1.0), interval=interval)

    expected, floored = bootstrapped(False), bootstrapped(True)
    for entry in entries:
        if entry.sign == 1:
            d = entry.direction
            assert (entry.low, entry.high) == pytest.approx((expected.low[d] - 0.5, expected.high[d] - 0.5))
            assert (entry.joint_low, entry.joint_high) == pytest.approx((expected.joint_low[d] - 0.5,
                                                                         expected.joint_high[d] - 0.5))
    assert expected.joint_low[0] > floored.joint_low[0] + 1e-3  # the test tells the two forms apart
