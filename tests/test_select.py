"""Selection on synthetic runs whose right answer is known: planted poles, planted clusters, ties, budgets, and
the two coverage metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.cli import cli
from autoskill_fast.errors import AutoskillError
from autoskill_fast.analysis.kcenter import farthest_point_order, farthest_point_order_ref
from autoskill_fast.analysis.selection import (Pole, SelectConfig, manifest_path, parse_poles, pole_order, random_order, select,
                                   top_positions)
from synthetic_runs import make_run, read_jsonl


def gaussian(n: int, k: int, seed: int, scale=None) -> torch.Tensor:
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return x * torch.as_tensor(scale, dtype=torch.float32) if scale is not None else x


@pytest.fixture
def planted(tmp_path):
    """300 examples on 4 directions; rows 10-14 far along +1 (in that order of size), rows 20-24 far along -1."""
    proj = gaussian(300, 4, 0, [3.0, 2.0, 1.0, 0.5])
    proj[10:15, 1] = torch.tensor([30.0, 29.0, 28.0, 27.0, 26.0])
    proj[20:25, 1] = -torch.tensor([30.0, 29.0, 28.0, 27.0, 26.0])
    return make_run(tmp_path / "run", proj), proj


# ---- poles ------------------------------------------------------------------------------------------------------


def test_top_positions_breaks_ties_by_position():
    values = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert top_positions(values, 2).tolist() == [1, 2]
    assert top_positions(values, 4).tolist() == [1, 2, 4, 3]
    assert top_positions(values, 6).tolist() == [1, 2, 4, 3, 0, 5]
    assert top_positions(values, 2, largest=False).tolist() == [5, 0]
    assert top_positions(values, 6, largest=False).tolist() == [5, 0, 3, 1, 2, 4]
    assert top_positions(-values, 3, largest=False).tolist() == [1, 2, 4]
    assert top_positions(torch.zeros(7), 3).tolist() == [0, 1, 2]


def test_pole_selection_returns_planted_examples(planted, tmp_path):
    run, _ = planted
    out = tmp_path / "plus.jsonl"
    selection = select(SelectConfig(run=str(run), out=str(out), budget=5, method="pole", directions=("+1",)))
    assert selection.positions.tolist() == [10, 11, 12, 13, 14]
    records = read_jsonl(out)
    assert [r["uid"] for r in records] == [f"ex{i:05d}" for i in range(10, 15)]
    assert [r["_autoskill"]["rank"] for r in records] == list(range(5))
    assert all(r["_autoskill"]["pole"] == "+" and r["_autoskill"]["direction"] == 1 for r in records)
    assert records[0]["_autoskill"]["score"] == pytest.approx(30.0)

    both = select(SelectConfig(run=str(run), out=str(tmp_path / "both.jsonl"), budget=10, method="pole",
                               directions=("1",)))
    assert both.positions.tolist() == [10, 20, 11, 21, 12, 22, 13, 23, 14, 24]  # round-robin over + and -
    minus = select(SelectConfig(run=str(run), out=str(tmp_path / "m.jsonl"), budget=3, method="pole",
                                directions=("-1",), by="cosine"))
    assert set(minus.positions.tolist()) <= set(range(20, 25))


def test_pole_records_are_unchanged_plus_one_key(planted, tmp_path):
    run, _ = planted
    out = tmp_path / "sel.jsonl"
    select(SelectConfig(run=str(run), out=str(out), budget=7, method="pole", directions=("+0", "-2")))
    original = {json.loads(line)["uid"]: json.loads(line) for line in (run / "corpus.jsonl").read_text().splitlines()}
    for record in read_jsonl(out):
        info = record.pop("_autoskill")
        assert record == original[info["id"]]
        assert info["row"] == int(info["id"][2:])
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["method"] == "pole" and manifest["budget"] == 7
    assert manifest["counts"] == {"candidates": 300, "selected": 7, "per_pole": {"+0": 4, "-2": 3}}
    assert manifest["basis"]["model"]["name"] == "synthetic-model" and len(manifest["basis"]["sha256"]) == 64


def test_poles_never_repeat_an_example():
    # Example 0 is the top of both directions; example 1 second on both.
    scores = torch.tensor([[9.0, 9.0], [8.0, 8.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    positions, picks = pole_order(scores, [Pole(0, 1), Pole(1, 1)], 4)
    assert positions.tolist() == [0, 1, 2, 3]
    assert picks == [(0, 0), (1, 1), (0, 2), (1, 2)]  # (pole, rank in its own order): direction 1 skipped taken ones
    assert len(set(positions.tolist())) == 4
    # Three identical directions fight over the same examples: each must rank deeper than its first guess.
    same = torch.arange(50.0)[:, None].repeat(1, 3)
    positions, picks = pole_order(same, [Pole(0, 1), Pole(1, 1), Pole(2, 1)], 50)
    assert positions.tolist() == list(range(49, -1, -1))
    assert [rank for _, rank in picks[:6]] == [0, 1, 2, 3, 4, 5]


def test_pole_ties_are_broken_by_row():
    scores = torch.tensor([[1.0], [2.0], [2.0], [0.0], [2.0]])
    assert pole_order(scores, [Pole(0, 1)], 3)[0].tolist() == [1, 2, 4]
    assert pole_order(scores, [Pole(0, -1)], 2)[0].tolist() == [3, 0]


def test_parse_poles_and_errors():
    assert parse_poles(["+0", "-2", "1"], 3) == [Pole(0, 1), Pole(2, -1), Pole(1, 1), Pole(1, -1)]
    assert parse_poles(["+0,-1"], 2) == [Pole(0, 1), Pole(1, -1)]
    with pytest.raises(AutoskillError, match="direction 5 out of range: the basis has 3 directions"):
        parse_poles(["+5"], 3)
    with pytest.raises(AutoskillError, match="bad direction 'x1'"):
        parse_poles(["x1"], 3)
    with pytest.raises(AutoskillError, match="named twice"):
        parse_poles(["+1", "1"], 3)


def test_budget_larger_than_corpus_is_a_clear_error(planted, tmp_path):
    run, _ = planted
    for method, extra in (("coverage", {}), ("random", {}), ("pole", {"directions": ("0",)}), ("text", {})):
        with pytest.raises(AutoskillError, match="budget 301 is larger than the 300 scored examples"):
            select(SelectConfig(run=str(run), out=str(tmp_path / "x.jsonl"), budget=301, method=method, **extra))
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(AutoskillError, match="SelectConfig.budget: must be positive"):
        SelectConfig(run=str(run), out="x", budget=0)
    with pytest.raises(AutoskillError, match="needs at least one direction"):
        SelectConfig(run=str(run), out="x", budget=3, method="pole")
    with pytest.raises(AutoskillError, match="only applies to the pole method"):
        SelectConfig(run=str(run), out="x", budget=3, method="coverage", directions=("1",))
    with pytest.raises(AutoskillError, match="--dims 9 is more than"):
        select(SelectConfig(run=str(run), out=str(tmp_path / "x.jsonl"), budget=3, dims=9))
    assert SelectConfig(run=str(run), out="x", budget=3).method == "coverage"
    assert SelectConfig(run=str(run), out="x", budget=3, ranking=str(run)).method == "pole"
    with pytest.raises(AutoskillError, match="a ranking selects at the poles of its best directions; --method random "
                                             "would ignore it"):
        SelectConfig(run=str(run), out="x", budget=3, method="random", ranking=str(run))


# ---- coverage ---------------------------------------------------------------------------------------------------


def clustered(seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Four big clusters of 150 in the plane of directions 0-1, and a 3-example cluster hidden inside one of them
    except along direction 2, whose variance is tiny: far away once whitened, within the noise before. Returns the
    scores and each example's cluster (4 = the small one)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, -3.0, 0.0], [3.0, 0.0, 0.2]])
    sizes = [150, 150, 150, 150, 3]
    noise = torch.tensor([0.3, 0.3, 0.003])
    parts, cluster = [], []
    for c, (center, size) in enumerate(zip(centers, sizes)):
        parts.append(center + torch.randn(size, 3, generator=g) * noise)
        cluster += [c] * size
    order = torch.randperm(len(cluster), generator=g)  # the small cluster at random rows
    return torch.cat(parts)[order], [cluster[i] for i in order.tolist()]


def test_coverage_reaches_the_small_cluster_before_repeating_another(tmp_path):
    proj, cluster = clustered()
    run = make_run(tmp_path / "run", proj)
    selection = select(SelectConfig(run=str(run), out=str(tmp_path / "cov.jsonl"), budget=12))
    picked = [cluster[p] for p in selection.positions.tolist()]
    first_repeat = next(t for t in range(len(picked)) if picked[t] in picked[:t])
    assert 4 in picked[:first_repeat], picked
    assert sorted(picked[:5]) == [0, 1, 2, 3, 4]
    distances = [r["distance"] for r in selection.reasons]
    assert all(a >= b - 1e-5 for a, b in zip(distances[1:], distances[2:]))  # greedy distances never increase
    # Without whitening the small cluster hides in the noise of its big neighbour: whitening is what finds it.
    raw_order, _ = farthest_point_order(proj, 12)
    assert 4 not in [cluster[p] for p in raw_order[:5].tolist()]


def test_coverage_starts_farthest_from_the_mean_and_budgets_are_nested(planted, tmp_path):
    run, proj = planted
    whitened = proj / proj.double().var(0).sqrt().float()
    big = select(SelectConfig(run=str(run), out=str(tmp_path / "b.jsonl"), budget=40))
    small = select(SelectConfig(run=str(run), out=str(tmp_path / "s.jsonl"), budget=15))
    assert big.positions[0] == int(torch.argmax(whitened.pow(2).sum(1)))
    assert torch.equal(big.positions[:15], small.positions)
    assert [r["uid"] for r in read_jsonl(tmp_path / "b.jsonl")][:15] == [r["uid"] for r in read_jsonl(tmp_path / "s.jsonl")]
    dims = select(SelectConfig(run=str(run), out=str(tmp_path / "d.jsonl"), budget=5, dims=2))
    assert dims.manifest["dims"] == 2


def test_whitened_coverage_scales_by_the_examples_own_spread_not_the_eigenvalues(tmp_path):
    """A sketched basis's eigenvalues are bounds, not the variances of its scores: whitening follows the scores."""
    proj, _, _ = dominant_split()
    truth = select(SelectConfig(run=str(make_run(tmp_path / "exact", proj)), out=str(tmp_path / "e.jsonl"), budget=8))
    wrong = torch.linspace(40.0, 1.0, proj.shape[1], dtype=torch.float64)  # far from proj's variances
    sketched = make_run(tmp_path / "sketched", proj, eigenvalues=wrong)
    selection = select(SelectConfig(run=str(sketched), out=str(tmp_path / "s.jsonl"), budget=8))
    assert selection.positions.tolist() == truth.positions.tolist()
    by_eigenvalues, _ = farthest_point_order(proj / wrong.sqrt().float(), 8)
    assert by_eigenvalues.tolist() != truth.positions.tolist()  # the test tells the two apart
    flat = proj.clone()
    flat[:, 3] = 1.5
    with pytest.raises(AutoskillError, match="direction 3 has no variance in these 200 examples and cannot be "
                                             "whitened; use --dims 3"):
        select(SelectConfig(run=str(make_run(tmp_path / "flat", flat)), out=str(tmp_path / "f.jsonl"), budget=2))
    noise = proj.clone()  # a direction of rounding noise: fewer distinct examples than directions
    noise[:, 4] = 1e-9 * torch.randn(len(noise), generator=torch.Generator().manual_seed(1))
    with pytest.raises(AutoskillError, match=r"direction 4 varies only \d\.\de-\d\d as much as the most varying "
                                             "direction in these 200 examples .* and cannot be whitened; use --dims 4"):
        select(SelectConfig(run=str(make_run(tmp_path / "noise", noise)), out=str(tmp_path / "n.jsonl"), budget=2))
    noise[:, 4] *= 1e7  # 1e-2: a small direction, whitened
    select(SelectConfig(run=str(make_run(tmp_path / "small", noise)), out=str(tmp_path / "m.jsonl"), budget=2))
    # bf16 scores give a rounding direction bf16's spread (3e-4 of the largest here), which passed the scores' own
    # check; the basis's eigenvalue (1e-12 of the first) says what it is.
    rounded = proj.clone()
    rounded[:, 4] = 3e-4 * 5 * torch.randn(len(rounded), generator=torch.Generator().manual_seed(2))
    eigenvalues = rounded.double().var(0)
    eigenvalues[4] = 1e-12 * eigenvalues[0]
    with pytest.raises(AutoskillError, match=r"direction 4 explains at most 1e-08 of direction 0's variance in the "
                                             r"basis \(rounding.* cannot be whitened; use --dims 4"):
        select(SelectConfig(run=str(make_run(tmp_path / "bf16", rounded, eigenvalues=eigenvalues)),
                            out=str(tmp_path / "b.jsonl"), budget=2))


def dominant_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """200 examples: a two-cluster split at +-5 along direction 0 (alternate rows) and six low-variance noise
    directions (sd 0.3), along each of which one example of cluster 0 sticks out (5.0). Returns the scores, each
    example's cluster and the six rows that stick out."""
    g = torch.Generator().manual_seed(seed)
    side = torch.arange(200) % 2
    proj = torch.cat([torch.where(side == 0, 5.0, -5.0)[:, None] + 0.1 * torch.randn(200, 1, generator=g),
                      0.3 * torch.randn(200, 6, generator=g)], dim=1)
    sticking_out = [0, 2, 4, 6, 8, 10]
    for j, row in enumerate(sticking_out):
        proj[row, 1 + j] = 5.0
    return proj, side, sticking_out


def test_coverage_metrics_on_a_dominant_split(tmp_path):
    """Euclidean coverage reaches both sides of the dominant split in its first two picks; whitened coverage spends
    its first six picks on one side, on examples that stick out along minor directions (each step proved below from
    the data's distances, then checked against what select returns)."""
    proj, side, sticking_out = dominant_split()
    run = make_run(tmp_path / "run", proj)
    picks = {}
    for metric in ("euclidean", "whitened"):
        selection = select(SelectConfig(run=str(run), out=str(tmp_path / f"{metric}.jsonl"), budget=8, metric=metric))
        assert selection.manifest["metric"] == metric and selection.manifest["space"] == f"{metric} projection"
        picks[metric] = selection.positions.tolist()

    # Euclidean: every pair across the split is farther apart than any pair on one side, so the farthest example
    # from the first pick is on the other side.
    distance = torch.cdist(proj.double(), proj.double())
    across = side[:, None] != side[None, :]
    assert distance[across].min() > distance[~across].max()
    assert side[picks["euclidean"][0]] != side[picks["euclidean"][1]]

    # Whitened: an example sticking out is the farthest from the mean, and every two of them are farther apart than
    # any of them from any other example, so the greedy picks take all six before anything else: one side only.
    white = (proj / proj.double().var(0).sqrt().float()).double()
    out = torch.zeros(200, dtype=torch.bool)
    out[sticking_out] = True
    norms = white.norm(dim=1)
    assert norms[out].min() > norms[~out].max()
    between = torch.cdist(white[out], white[out])
    assert between[~torch.eye(6, dtype=torch.bool)].min() > torch.cdist(white[out], white[~out]).max()
    assert sorted(picks["whitened"][:6]) == sticking_out
    assert set(side[picks["whitened"][:6]].tolist()) == {0}
    assert len(set(side[picks["euclidean"][:2]].tolist())) == 2

    result = CliRunner().invoke(cli, ["select", str(run), "--out", str(tmp_path / "cli.jsonl"), "-n", "2",
                                      "--metric", "euclidean"])
    assert result.exit_code == 0, result.output
    assert [r["_autoskill"]["row"] for r in read_jsonl(tmp_path / "cli.jsonl")] == picks["euclidean"][:2]
    with pytest.raises(AutoskillError, match="SelectConfig.metric: must be whitened or euclidean"):
        SelectConfig(run=str(run), out="x", budget=3, metric="cosine")


@pytest.mark.parametrize("n,d,budget,frontier", [(1, 3, 1, 4096), (97, 2, 97, 4096), (500, 5, 123, 16),
                                                 (1500, 8, 400, 1), (4097, 3, 300, 64)])
def test_farthest_point_order_matches_plain_greedy(n, d, budget, frontier):
    x = gaussian(n, d, seed=n) * torch.linspace(0.5, 3.0, d)
    expected, expected_dist = farthest_point_order_ref(x, budget)
    order, dist = farthest_point_order(x.double(), budget, frontier=frontier)
    assert torch.equal(order, expected)
    torch.testing.assert_close(dist, expected_dist, rtol=1e-9, atol=1e-9)
    # fp32: every pick is the farthest point up to fp32 rounding of the squared distances.
    order32, _ = farthest_point_order(x, budget, frontier=frontier)
    assert len(set(order32.tolist())) == budget
    assert_greedy(x.double(), order32, tol=1e-6)


def assert_greedy(x, order, tol):
    scale = float(x.pow(2).sum(1).max())
    nearest = x.pow(2).sum(1)
    for t, p in enumerate(order.tolist()):
        assert float(nearest.max() - nearest[p]) <= tol * scale, f"pick {t} is not the farthest point"
        to_p = (x - x[p]).pow(2).sum(1)
        nearest = to_p if t == 0 else torch.minimum(nearest, to_p)
        nearest[order[: t + 1]] = -1.0


def test_farthest_point_ties_go_to_the_lower_row():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [1.0, 0.0]])
    order, dist = farthest_point_order(x, 6)
    # All of rows 0-3 and 5 are at distance 1 from the origin: row 0 first; then row 3 (distance 2); rows 1 and 2 tie
    # (sqrt 2): row 1; then row 2; then the centre (4) at distance 1, and the duplicate of row 1 last, at distance 0.
    assert order.tolist() == [0, 3, 1, 2, 4, 5]
    assert dist[-1] == 0
    assert farthest_point_order_ref(x, 6)[0].tolist() == order.tolist()


def test_farthest_point_order_errors():
    with pytest.raises(AutoskillError, match="budget 4 must be between 1 and the number of examples"):
        farthest_point_order(torch.zeros(3, 2), 4)
    with pytest.raises(AutoskillError, match="NaN"):
        farthest_point_order(torch.tensor([[0.0], [float("nan")]]), 1)


# ---- baselines --------------------------------------------------------------------------------------------------


def test_random_is_seeded_and_nested(planted, tmp_path):
    run, _ = planted
    a = select(SelectConfig(run=str(run), out=str(tmp_path / "a.jsonl"), budget=20, method="random", seed=7))
    b = select(SelectConfig(run=str(run), out=str(tmp_path / "b.jsonl"), budget=20, method="random", seed=7))
    c = select(SelectConfig(run=str(run), out=str(tmp_path / "c.jsonl"), budget=20, method="random", seed=8))
    assert torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert torch.equal(random_order(300, 5, 7), a.positions[:5])
    assert len(set(a.positions.tolist())) == 20


def test_text_baseline_covers_the_topics(tmp_path):
    topics = ["the cat chased a mouse around the garden", "stock prices fell sharply on the exchange today",
              "the rocket engine ignited and lifted off the pad"]
    texts = [f"{topics[i % 3]} {'again' * (i % 2)}".strip() for i in range(60)] + ["violin sonata in a minor key"]
    run = make_run(tmp_path / "run", gaussian(61, 3, 1), texts=texts)
    selection = select(SelectConfig(run=str(run), out=str(tmp_path / "t.jsonl"), budget=4, method="text"))
    chosen = [texts[p] for p in selection.positions.tolist()]
    assert "violin sonata in a minor key" in chosen
    assert {next(i for i, t in enumerate(topics) if c.startswith(t)) for c in chosen if "violin" not in c} == {0, 1, 2}
    again = select(SelectConfig(run=str(run), out=str(tmp_path / "t2.jsonl"), budget=2, method="text"))
    assert torch.equal(again.positions, selection.positions[:2])


def test_text_baseline_without_a_word_is_a_one_line_error(tmp_path):
    run = make_run(tmp_path / "run", gaussian(12, 3, 1), texts=[str(i % 10) for i in range(12)])
    with pytest.raises(AutoskillError, match="the text baseline found no word of two or more characters"):
        select(SelectConfig(run=str(run), out=str(tmp_path / "t.jsonl"), budget=3, method="text"))


# ---- records and the CLI ----------------------------------------------------------------------------------------


def test_changed_corpus_is_refused(planted, tmp_path):
    run, _ = planted
    lines = (run / "corpus.jsonl").read_text().splitlines()
    moved = tmp_path / "moved.jsonl"
    moved.write_text("\n".join(lines[1:]) + "\n")  # one record fewer: every row shifts
    with pytest.raises(AutoskillError, match="corpus changed since it was profiled"):
        select(SelectConfig(run=str(run), out=str(tmp_path / "x.jsonl"), budget=3, corpus=str(moved)))
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join(lines) + "\n")
    select(SelectConfig(run=str(run), out=str(tmp_path / "y.jsonl"), budget=3, corpus=str(same)))


def _by_row(run: Path) -> Path:
    """The run as a profile of its corpus without an id field: ids are row numbers, the file's sha256 recorded."""
    from autoskill_fast.config import CorpusConfig
    from autoskill_fast.data.corpus import fingerprint

    record = json.loads((run / "run.json").read_text())
    record["config"]["corpus"]["id_field"] = None
    record["corpus"] = fingerprint(CorpusConfig(path=record["config"]["corpus"]["path"]))
    (run / "run.json").write_text(json.dumps(record))
    return run


def test_a_corpus_without_ids_must_be_the_file_profiled(tmp_path):
    """Rows are all that finds a record without an id field: a line inserted at the top shifted every record, and
    select, inspect and compare used the wrong ones without a word (select took the other pole's texts)."""
    from autoskill_fast.analysis.comparison import CompareConfig, compare
    from autoskill_fast.analysis.inspection import InspectConfig, inspect

    projection = torch.linspace(-1, 1, 30)[:, None].repeat(1, 2)
    run = _by_row(make_run(tmp_path / "run", projection, ids=[str(i) for i in range(30)]))
    corpus = run / "corpus.jsonl"
    first = select(SelectConfig(run=str(run), out=str(tmp_path / "a.jsonl"), budget=3, method="pole", directions=("+0",)))
    assert [r["text"] for r in read_jsonl(tmp_path / "a.jsonl")] == [f"example number {i} about topic {i % 7}"
                                                                      for i in (29, 28, 27)]
    assert first.positions.tolist() == [29, 28, 27]
    corpus.write_text('{"uid": "new", "text": "an inserted record"}\n' + corpus.read_text())
    with pytest.raises(AutoskillError, match="is not the corpus this run profiled .*found by row"):
        select(SelectConfig(run=str(run), out=str(tmp_path / "b.jsonl"), budget=3, method="pole", directions=("+0",)))
    with pytest.raises(AutoskillError, match="is not the corpus this run profiled"):
        inspect(InspectConfig(run=str(run), no_html=True, n_examples=2))
    other = _by_row(make_run(tmp_path / "other", projection, ids=[str(i) for i in range(30)],
                             texts=[f"another text {i}" for i in range(30)]))
    with pytest.raises(AutoskillError, match="profiled different corpus files .* named by row number"):
        compare(CompareConfig(run_a=str(run), run_b=str(other)))
    (other / "run.json").unlink()  # nothing says which file it profiled: compared, with a warning that says so
    unchecked = compare(CompareConfig(run_a=str(run), run_b=str(other), permutations=0))
    assert any("has no run.json, so whether both profiled one corpus file is not checked" in w
               for w in unchecked.warnings)
    # the original file at another path is fine; with an id field, the ids are checked row by row as before
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(corpus.read_text().splitlines(keepends=True)[1:]))
    select(SelectConfig(run=str(run), out=str(tmp_path / "c.jsonl"), budget=3, method="pole", directions=("+0",),
                        corpus=str(moved)))
    assert read_jsonl(tmp_path / "c.jsonl") == read_jsonl(tmp_path / "a.jsonl")


def test_a_corpus_typed_as_a_relative_path_is_read_from_any_directory(planted, tmp_path, monkeypatch):
    """run.json keeps the path as typed and the file it resolved to: select and inspect read the typed one from the
    current directory, so from another one they took another file's records of the same ids (or found none)."""
    from autoskill_fast.analysis.inspection import InspectConfig, inspect

    run, _ = planted
    record = json.loads((run / "run.json").read_text())
    record["config"]["corpus"]["path"] = "corpus.jsonl"  # profiled from inside the run folder
    record["corpus"]["path"] = str((run / "corpus.jsonl").resolve())
    (run / "run.json").write_text(json.dumps(record))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    profiled = read_jsonl(run / "corpus.jsonl")
    (elsewhere / "corpus.jsonl").write_text("".join(json.dumps({"uid": r["uid"], "text": f"UNRELATED {i}"}) + "\n"
                                                    for i, r in enumerate(profiled)))
    monkeypatch.chdir(elsewhere)
    select(SelectConfig(run=str(run), out=str(tmp_path / "s.jsonl"), budget=3, method="pole", directions=("+0",)))
    selected = read_jsonl(tmp_path / "s.jsonl")
    assert selected and not any("UNRELATED" in r["text"] for r in selected)
    shown = json.dumps([d.to_json() if hasattr(d, "to_json") else str(d)
                        for d in inspect(InspectConfig(run=str(run), no_html=True, n_examples=2)).directions])
    assert "example number" in shown and "UNRELATED" not in shown


def test_previous_annotation_is_kept(planted, tmp_path):
    run, proj = planted
    first = tmp_path / "first.jsonl"
    select(SelectConfig(run=str(run), out=str(first), budget=50, method="random"))
    records = read_jsonl(first)
    rerun = make_run(tmp_path / "rerun", proj[:50], ids=[r["uid"] for r in records], texts=[r["text"] for r in records])
    (rerun / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    select(SelectConfig(run=str(rerun), out=str(tmp_path / "second.jsonl"), budget=2, method="random"))
    second = read_jsonl(tmp_path / "second.jsonl")
    assert all(r["_autoskill"]["previous"]["method"] == "random" for r in second)


def test_cli_select(planted, tmp_path):
    run, _ = planted
    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(cli, ["select", str(run), "--out", str(out), "-n", "6", "--method", "pole",
                                      "-d", "-1", "-d", "+0"])
    assert result.exit_code == 0, result.output
    assert "selected 6 of 300 examples (pole)" in result.output
    assert {r["uid"] for r in read_jsonl(out)} >= {"ex00020", "ex00021", "ex00022"}
    bad = CliRunner().invoke(cli, ["select", str(run), "--out", str(out), "-n", "1000"])
    assert bad.exit_code == 2
    assert "error: budget 1000 is larger than the 300 scored examples" in bad.output
    assert "Traceback" not in bad.output
    bad_dir = CliRunner().invoke(cli, ["select", str(run), "--out", str(out), "-n", "2", "--method", "pole", "-d", "+7"])
    assert bad_dir.exit_code == 2 and "direction 7 out of range" in bad_dir.output
    corpus = run / "corpus.jsonl"
    before = corpus.read_bytes()
    over = CliRunner().invoke(cli, ["select", str(run), "--out", str(run / "." / "corpus.jsonl"), "-n", "5"])
    assert over.exit_code == 2 and f"is the corpus {run} read; write it to another file" in over.output, over.output
    assert corpus.read_bytes() == before
    # The other commands' outputs overwrote the corpus, or the run's own files, without a word
    record, basis = (run / "run.json").read_bytes(), (run / "basis.json").read_bytes()
    for command, what in ((["select", run, "--out", run / "run.json", "-n", "5"], "is run.json of the run"),
                          (["inspect", run, "--no-html", "--labeling-prompts", corpus], "is the corpus"),
                          (["inspect", run, "--html", run / "basis.json"], "--html"),
                          (["compare", run, run, "--json", run / "run.json"], "--json"),
                          (["compare", run, run, "--html", corpus], "--html")):
        result = CliRunner().invoke(cli, [str(a) for a in command])
        assert result.exit_code == 2 and what in result.output and "write it to another file" in result.output, \
            (command, result.output)
    assert (corpus.read_bytes(), (run / "run.json").read_bytes(), (run / "basis.json").read_bytes()) == \
        (before, record, basis)
    # The report is inspect's to rewrite, and only through --html: the prompts were written, then replaced by it
    for command, what in ((["inspect", run, "--labeling-prompts", run / "report.html"], "is report.html of the run"),
                          (["inspect", run, "--labeling-prompts", tmp_path / "x", "--html", tmp_path / "x"],
                           "is where the report goes"),
                          (["compare", run, run, "--html", run / "report.html"], "is report.html of the run"),
                          (["select", run, "--out", run / "report.html", "-n", "5"], "is report.html of the run")):
        result = CliRunner().invoke(cli, [str(a) for a in command])
        assert result.exit_code == 2 and what in result.output, (command, result.output)
    # A file written into a corpus folder (datasets.save_to_disk) makes it another corpus
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "data-00000-of-00001.arrow").write_bytes(b"arrow")
    profiled = json.loads((run / "run.json").read_text())
    profiled["corpus"]["path"] = profiled["config"]["corpus"]["path"] = str(folder)
    (run / "run.json").write_text(json.dumps(profiled))
    for out in (folder / "sel.jsonl", folder / "data-00000-of-00001.arrow"):
        result = CliRunner().invoke(cli, ["select", str(run), "--out", str(out), "-n", "5"])
        assert result.exit_code == 2 and "is in the corpus" in result.output, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["data-00000-of-00001.arrow"]


def test_records_are_fetched_past_a_line_the_profile_skipped_as_unreadable(tmp_path):
    """`profile --on-bad-example skip` passes over a malformed line; fetching the records it scored (select, the
    pilot's examples) stopped at that line."""
    from autoskill_fast.config import CorpusConfig
    from autoskill_fast.run.reading import fetch_records

    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"text": cut\n{"text": "c"}\n')
    config = CorpusConfig(str(tmp_path / "c.jsonl"))
    found = fetch_records(config, {0: "0", 2: "2"})
    assert {row: record.data["text"] for row, record in found.items()} == {0: "a", 2: "c"}
    with pytest.raises(AutoskillError, match=r"c.jsonl:2: malformed JSON .*, but the profile scored a record at this "
                                             r"row \(id '1'\); the corpus changed"):
        fetch_records(config, {1: "1"})
