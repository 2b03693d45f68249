"""compare: matching by id, Jaccard on constructed overlaps, correlations, canonical correlations vs references, and
their permutation null."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.cli import cli
from autoskill_fast.analysis.comparison import (CompareConfig, canonical_correlations, canonical_null, compare,
                                                compare_runs, format_comparison, match_ids, null_edge, pole_jaccard,
                                                score_correlation, too_few_examples)
from autoskill_fast.analysis.report_html import render_comparison_page
from autoskill_fast.errors import AutoskillError
from autoskill_fast.run.reading import load_run
from headless_chromium import chromium_path, open_page
from model_fixtures import write_jsonl
from synthetic_runs import make_run


def test_match_ids():
    pos_a, pos_b = match_ids(["a", "b", "c", "d"], ["d", "x", "b"])
    assert pos_a.tolist() == [1, 3] and pos_b.tolist() == [2, 0]
    assert match_ids(["a"], ["b"])[0].numel() == 0


def test_jaccard_on_constructed_overlaps():
    n_ex = 20
    a = torch.linspace(10, -10, n_ex)[:, None]  # top 4 = rows 0-3, bottom 4 = rows 16-19
    b_same = a.clone()
    b_same[[0, 1]] = 0.0  # top 4 of B: rows 2-5 (|A&B| = 2 -> J = 2/6), bottom unchanged (J = 1)
    b_same[[2, 3]] += 20
    b_same[[4, 5]] += 20
    b = torch.cat([b_same, -a, torch.zeros(n_ex, 1).index_fill_(0, torch.tensor([7, 8, 9, 10]), 1.0)], dim=1)
    jac, sign = pole_jaccard(a, b, 4)
    assert jac.shape == (1, 3)
    assert jac[0, 0].item() == pytest.approx((2 / 6 + 1) / 2)
    assert sign[0, 0] == 1
    assert jac[0, 1].item() == pytest.approx(1.0) and sign[0, 1] == -1  # the same direction, flipped
    # Direction 2 of B: top = rows 7-10 (no overlap with A's poles), bottom = rows 0-3 (the zeros, ties by row): J(bottom
    # of B, top of A) = 1 when flipped -> mean (0 + 1) / 2 with the other pairing 0.
    assert jac[0, 2].item() == pytest.approx(0.5) and sign[0, 2] == -1


def test_score_correlation_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 3, generator=g)
    b = torch.cat([a[:, :1] * 2 + 0.1 * torch.randn(200, 1, generator=g), torch.randn(200, 2, generator=g),
                   torch.ones(200, 1)], dim=1)
    corr = score_correlation(a, b)
    expected = np.corrcoef(a.double().numpy().T, b[:, :3].double().numpy().T)[:3, 3:]
    np.testing.assert_allclose(corr[:, :3].numpy(), expected, rtol=1e-10, atol=1e-12)
    assert corr[:, 3].abs().max() == 0  # a constant column correlates with nothing


def cca_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Textbook CCA: singular values of Caa^-1/2 Cab Cbb^-1/2 (fine on well-conditioned data)."""
    a = a - a.mean(0)
    b = b - b.mean(0)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w ** -0.5) @ v.T

    m = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
    return np.linalg.svd(m, compute_uv=False)


def planted_cca(n: int, rhos: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views whose canonical correlations are `rhos` in the population, each scrambled by a random linear map."""
    rng = np.random.default_rng(seed)
    k = len(rhos)
    z = rng.standard_normal((n, k))
    e = rng.standard_normal((n, k))
    a_latent = z
    b_latent = z * np.array(rhos) + e * np.sqrt(1 - np.array(rhos) ** 2)
    a = a_latent @ rng.standard_normal((k, k)) + 5.0
    b = b_latent @ rng.standard_normal((k, k)) - 2.0
    return torch.from_numpy(a), torch.from_numpy(b)


def test_canonical_correlations_match_references():
    a, b = planted_cca(20_000, [0.9, 0.5, 0.0], seed=1)
    cc = canonical_correlations(a, b)
    np.testing.assert_allclose(cc.numpy(), cca_reference(a.numpy(), b.numpy()), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cc.numpy(), [0.9, 0.5, 0.0], atol=0.03)  # the planted population values
    # Invariant to invertible linear maps of either side (the axes inside a score space do not matter).
    mix = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(canonical_correlations(a @ mix, b * 1e-3), cc, rtol=1e-8, atol=1e-10)
    # scikit-learn's iterative CCA agrees on the first pair.
    from sklearn.cross_decomposition import CCA

    u, v = CCA(n_components=1, max_iter=2000, tol=1e-10).fit_transform(a.numpy(), b.numpy())
    assert abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]) == pytest.approx(float(cc[0]), abs=1e-4)


def test_canonical_correlations_rank_deficient_and_float32():
    a, b = planted_cca(5_000, [0.95, 0.3], seed=2)
    a_dup = torch.cat([a, a[:, :1] * 3 - a[:, 1:2]], dim=1)  # a third column in the span of the first two
    cc = canonical_correlations(a_dup, b)
    assert cc.numel() == 2
    torch.testing.assert_close(cc, canonical_correlations(a, b), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(canonical_correlations(a.float(), b.float()), cc, rtol=1e-5, atol=1e-5)
    same = canonical_correlations(a, a)
    torch.testing.assert_close(same, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


def two_models(tmp_path, n=400, drop_b=0):
    """B's directions are A's, permuted and one sign-flipped, plus noise; B lacks A's first `drop_b` examples."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    b = torch.stack([-a[:, 1], a[:, 0], a[:, 2]], dim=1) + 0.1 * torch.randn(n, 3, generator=g)
    ids = [f"q{i}" for i in range(n)]
    run_a = make_run(tmp_path / "a", a, ids=ids, model="model-a", config_hash="aaaa")
    run_b = make_run(tmp_path / "b", b[drop_b:], ids=ids[drop_b:], model="model-b", config_hash="bbbb")
    return run_a, run_b


def test_compare_runs_finds_the_permutation(tmp_path):
    run_a, run_b = two_models(tmp_path, drop_b=10)
    c = compare_runs(load_run(run_a), load_run(run_b), n_pole=20)
    assert (c.n_shared, c.n_only_a, c.n_only_b) == (390, 10, 0)
    best = c.best_matches("a")
    assert [(m["match"], m["sign"]) for m in best] == [(1, 1), (0, -1), (2, 1)]
    assert all(m["jaccard"] > 0.6 for m in best)
    assert c.correlation[1, 0] < -0.99 and c.correlation[0, 1] > 0.99
    assert c.canonical.min() > 0.99
    assert [m["match"] for m in c.best_matches("b")] == [1, 0, 2]
    assert json.loads(json.dumps(c.to_json()))["n_shared"] == 390
    # A real shared structure stands far above the permutation null, and 390 examples are plenty for 3 + 3 dims.
    assert c.null.shape == (20, 3) and float(c.null_mean.max()) < 0.2 and c.above_null == 3
    assert c.warnings == [] and c.models_differ and c.other == "another model"


# ---- the null of the canonical correlations ------------------------------------------------------------------------


def test_canonical_null_is_the_statistic_on_permuted_rows():
    a, b = planted_cca(300, [0.8, 0.2], seed=4)
    null = canonical_null(a, b, 3, seed=5)
    generator = torch.Generator().manual_seed(5)
    expected = torch.stack([canonical_correlations(a, b[torch.randperm(300, generator=generator)]) for _ in range(3)])
    torch.testing.assert_close(null, expected, rtol=1e-9, atol=1e-12)  # permuting Q_B = re-deriving it
    assert torch.equal(canonical_null(a, b, 3, seed=5), null) and not torch.equal(canonical_null(a, b, 3, seed=6), null)
    assert canonical_null(a, b, 0).shape == (0, 2)


def test_canonical_null_matches_the_theory_for_independent_scores():
    # Independent Gaussian scores, 20 examples per dimension: the largest canonical correlation sits just below the
    # Wachter edge (its fluctuations shrink as n^-2/3), and the null of one draw of them agrees.
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2000, 100, generator=g), torch.randn(2000, 100, generator=g)
    null = canonical_null(a, b, 10, seed=0)
    assert null_edge(2000, 100, 100) == pytest.approx(2 * (0.05 * 0.95) ** 0.5)
    assert float(null[:, 0].mean()) == pytest.approx(null_edge(2000, 100, 100), abs=0.02)
    assert float(canonical_correlations(a, b)[0]) == pytest.approx(null_edge(2000, 100, 100), abs=0.03)
    assert null_edge(64, 32, 32) == 1.0 and null_edge(640, 32, 32) == pytest.approx(0.436, abs=1e-3)


def test_too_few_examples_is_reported_with_the_null(tmp_path):
    """Independent random scores of 64 examples x 32 directions: canonical correlations near 1, and so is the null;
    the comparison says so (before, it showed the correlations alone)."""
    g = torch.Generator().manual_seed(0)
    ids = [f"q{i}" for i in range(64)]
    run_a = make_run(tmp_path / "a", torch.randn(64, 32, generator=g), ids=ids)
    run_b = make_run(tmp_path / "b", torch.randn(64, 32, generator=g), ids=ids)
    c = compare_runs(load_run(run_a), load_run(run_b), n_pole=8)
    assert float(c.canonical[0]) > 0.999 and float(c.canonical.mean()) > 0.6  # looks like a strong match ...
    assert c.null is not None and float(c.null_mean[0]) > 0.999  # ... but so do unrelated examples
    assert (c.canonical - c.null_mean).abs().max() < 0.15
    assert c.above_null <= 4  # exchangeable with the null: about 5% of 32 pairs exceed its 95th percentile
    assert c.warnings == [too_few_examples(64, 32, 32)]
    assert "64 shared examples are too few for 32 + 32 score dimensions (fewer than 640" in c.warnings[0]
    assert too_few_examples(640, 32, 32) is None
    summary = format_comparison(c)
    assert "warning: 64 shared examples are too few" in summary
    assert "null (B's rows permuted, 20 draws, seed 0)" in summary and "above the null's 95th percentile" in summary
    saved = json.loads(json.dumps(c.to_json()))
    assert saved["canonical_null"]["permutations"] == 20 and len(saved["canonical_null"]["p95"]) == 32
    assert saved["warnings"] == c.warnings
    # The same model (one fingerprint) profiled twice is "another run", not "another model".
    assert not c.models_differ and "(another run)" in summary.splitlines()[0]
    page = render_comparison_page(load_run(run_a), load_run(run_b), c)
    assert "Comparison with another run" in page and "another model" not in page
    assert "warning: 64 shared examples are too few" in page and "Null: the same statistic" in page


def test_compare_errors(tmp_path):
    run_a = make_run(tmp_path / "a", torch.randn(10, 2), ids=[f"a{i}" for i in range(10)])
    run_b = make_run(tmp_path / "b", torch.randn(10, 2), ids=[f"b{i}" for i in range(10)])
    with pytest.raises(AutoskillError, match="share 0 example id"):
        compare(CompareConfig(run_a=str(run_a), run_b=str(run_b)))
    with pytest.raises(AutoskillError, match="CompareConfig.by: must be"):
        CompareConfig(run_a="a", run_b="b", by="nope")
    with pytest.raises(AutoskillError, match="CompareConfig.permutations: must be 0 or more"):
        CompareConfig(run_a="a", run_b="b", permutations=-1)


def test_runs_that_took_their_ids_differently_are_refused(tmp_path):
    """One file profiled with --id-field and without: the ids 1..n of one were matched with the row numbers of the
    other, each example paired with its neighbour, and no warning."""
    ids = [str(i) for i in range(1, 41)]
    scores = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))

    def run(name, sha, id_field):
        folder = make_run(tmp_path / name, scores, ids=ids)
        record = json.loads((folder / "run.json").read_text())
        record["corpus"].update(sha256=sha, id_field=id_field)
        (folder / "run.json").write_text(json.dumps(record))
        return str(folder)

    by_field, by_row, by_other = run("field", "s1", "id"), run("row", "s1", None), run("other", "s1", "uid")
    for a, b in ((by_field, by_row), (by_row, by_field), (by_field, by_other)):
        with pytest.raises(AutoskillError, match="so the same id names different examples.*the same --id-field"):
            compare(CompareConfig(run_a=a, run_b=b))
    # Two files whose id fields name the same examples (a problem set and its solutions) still compare.
    elsewhere = run("elsewhere", "s2", "uid")
    assert compare(CompareConfig(run_a=by_field, run_b=elsewhere)).n_shared == 40


def test_cli_compare(tmp_path):
    run_a, run_b = two_models(tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(run_a), str(run_b), "--n-pole", "20", "--json",
                                      str(tmp_path / "c.json"), "--html", str(tmp_path / "c.html"),
                                      "--permutations", "7", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "400 shared examples" in result.output and "canonical correlations (3)" in result.output
    assert "(another model)" in result.output and "null (B's rows permuted, 7 draws, seed 3)" in result.output
    assert "3 of 3 above the null's 95th percentile" in result.output and "warning" not in result.output
    assert "A0   -> B1   (+)" in result.output and "A1   -> B0   (-)" in result.output
    saved = json.loads((tmp_path / "c.json").read_text())
    assert len(saved["jaccard"]) == 3 and len(saved["canonical_correlations"]) == 3
    assert saved["canonical_null"]["permutations"] == 7 and saved["canonical_null"]["seed"] == 3
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): compare page not rendered")
    values, errors = open_page(tmp_path / "c.html", {
        "plots": "document.querySelectorAll('.plotly').length",
        "text": "document.body.innerText",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 3")
    assert errors == []
    assert values["plots"] == 3
    assert "model-b" in values["text"] and "Best match of each direction of A" in values["text"]
    assert "Comparison with another model" in values["text"] and "Null: the same statistic" in values["text"]


# ---- end to end: profile -> inspect / select / compare ----------------------------------------------------------

ARITHMETIC = ["{a} plus {b} equals {c}", "what is {a} times {b}? it is {c}", "subtract {b} from {c} to get {a}"]
PROSE = ["the old lighthouse keeper watched the storm roll in", "she folded the letter and hid it in a drawer",
         "a quiet village woke to the smell of fresh bread"]


def mixed_corpus(path, n=40):
    records = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        text = (ARITHMETIC[i % 3].format(a=a, b=b, c=a + b) if i % 2 else f"{PROSE[i % 3]} ({i})")
        records.append({"qid": f"q{i:03d}", "text": text, "kind": "math" if i % 2 else "prose"})
    return write_jsonl(path, records), records


def test_end_to_end_on_tiny_models(tmp_path, tiny_model):
    from autoskill_fast import CorpusConfig, ModelConfig, ProfileConfig, profile
    from autoskill_fast.analysis.inspection import InspectConfig, inspect
    from autoskill_fast.analysis.selection import SelectConfig, select

    path, records = mixed_corpus(tmp_path / "corpus.jsonl")
    corpus = CorpusConfig(str(path), id_field="qid")
    for arch in ("llama", "qwen2"):
        profile(ProfileConfig(corpus=corpus, out=str(tmp_path / arch), model=ModelConfig(str(tiny_model(arch))), k=4,
                              quiet=True))
    result = inspect(InspectConfig(run=str(tmp_path / "llama"), compare=str(tmp_path / "qwen2"), n_examples=3,
                                   labeling_prompts=str(tmp_path / "prompts.jsonl")))
    assert len(result.directions) == 4 and result.html.stat().st_size > 1_000_000
    assert all(d.concentration is not None for d in result.directions)  # a fresh profile carries its diagnostics
    assert 'id="layer-weights"' in result.html.read_text()
    by_id = {r["qid"]: r for r in records}
    for example in result.directions[0].poles["projection"]["top"]:
        assert example.text == by_id[example.id]["text"]
    assert result.comparison.n_shared == 40 and result.comparison.canonical.numel() == 4
    for method, extra in (("coverage", {}), ("pole", {"directions": ("0", "+1")}), ("random", {}), ("text", {})):
        out = tmp_path / f"{method}.jsonl"
        select(SelectConfig(run=str(tmp_path / "llama"), out=str(out), budget=8, method=method, **extra))
        chosen = [json.loads(line) for line in out.read_text().splitlines()]
        assert len({r["qid"] for r in chosen}) == 8
        for record in chosen:
            info = record.pop("_autoskill")
            assert record == by_id[info["id"]] and info["method"] == method


@pytest.mark.slow
def test_end_to_end_on_default_model_and_corpus(tmp_path, default_model_dir):
    """GSM8K problems through the embedded SmolLM2: profile, inspect with labeling prompts, select by coverage."""
    from autoskill_fast import CorpusConfig, ModelConfig, ProfileConfig, profile
    from autoskill_fast.config import default_corpus_path
    from autoskill_fast.analysis.inspection import InspectConfig, inspect
    from autoskill_fast.analysis.selection import SelectConfig, select

    corpus = CorpusConfig(str(default_corpus_path()), template="{question}\n{answer}", limit=32)
    out = tmp_path / "run"
    profile(ProfileConfig(corpus=corpus, out=str(out), model=ModelConfig(str(default_model_dir)), k=8, quiet=True))
    result = inspect(InspectConfig(run=str(out), labeling_prompts=str(tmp_path / "prompts.jsonl")))
    assert len(result.directions) == 8
    assert all("####" in e.text for d in result.directions for e in d.poles["projection"]["top"])
    prompts = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 8 and all("Group A:" in p["prompt"] for p in prompts)
    originals = [json.loads(line) for line in default_corpus_path().read_text().splitlines()[:32]]
    selection = select(SelectConfig(run=str(out), out=str(tmp_path / "cov.jsonl"), budget=12))
    chosen = [json.loads(line) for line in (tmp_path / "cov.jsonl").read_text().splitlines()]
    for record, position in zip(chosen, selection.positions.tolist()):
        info = record.pop("_autoskill")
        assert record == originals[int(info["id"])] and info["row"] == position
    if chromium_path() is not None:
        values, errors = open_page(result.html, {"plots": "document.querySelectorAll('.plotly').length"},
                                   ready="document.querySelectorAll('.js-plotly-plot').length >= 4")
        assert errors == [] and values["plots"] == 4  # scree, layer weights, concentration, scatter
