"""inspect: pole examples, labeling prompts, labels, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.basis import SkillBasis
from autoskill_fast.cli import cli
from autoskill_fast.errors import AutoskillError
from autoskill_fast.analysis.inspection import InspectConfig, directions, inspect, labeling_prompts, read_labels
from autoskill_fast.run.reading import load_run
from headless_chromium import chromium_path, open_page
from synthetic_runs import make_run, read_jsonl

needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="chromium is not installed (apt-get install -y chromium): HTML not rendered")

HOSTILE = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture
def planted(tmp_path):
    """120 examples, 3 directions; rows 5-7 top of +1, rows 8-10 bottom (-1); row 3 has markup in its text and id."""
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(120, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    proj[5:8, 1] = torch.tensor([20.0, 19.0, 18.0])
    proj[8:11, 1] = -torch.tensor([20.0, 19.0, 18.0])
    texts = [f"plain example {i}" for i in range(120)]
    texts[5:8] = [f"long division problem {i}" for i in range(3)]
    texts[8:11] = [f"a poem about the sea {i}" for i in range(3)]
    texts[3] = HOSTILE
    ids = [f"ex{i:04d}" for i in range(120)]
    ids[3] = "id</script><b>3"
    proj[3] = torch.tensor([0.0, 0.0, 15.0])  # on the + end of direction 2, so it is shown
    return make_run(tmp_path / "run", proj, texts=texts, ids=ids)


def test_directions_have_planted_poles(planted):
    dirs = directions(load_run(planted), n=3)
    assert len(dirs) == 3
    d1 = dirs[1]
    assert [e.id for e in d1.poles["projection"]["top"]] == ["ex0005", "ex0006", "ex0007"]
    assert [e.id for e in d1.poles["projection"]["bottom"]] == ["ex0008", "ex0009", "ex0010"]
    assert d1.poles["projection"]["top"][0].score == pytest.approx(20.0)
    assert d1.poles["projection"]["top"][0].text == "long division problem 0"
    assert all(-1.0 <= e.score <= 1.0 for end in ("top", "bottom") for e in d1.poles["cosine"][end])
    evr = [d.explained_variance_ratio for d in dirs]
    assert dirs[-1].cumulative_ratio == pytest.approx(sum(evr))


def test_labeling_prompts(planted, tmp_path):
    dirs = directions(load_run(planted), n=3)
    prompts = labeling_prompts(dirs)
    assert [p["direction"] for p in prompts] == [0, 1, 2]
    p1 = prompts[1]
    assert p1["top_ids"] == ["ex0005", "ex0006", "ex0007"] and p1["bottom_ids"] == ["ex0008", "ex0009", "ex0010"]
    assert "[A1] long division problem 0" in p1["prompt"] and "[B3] a poem about the sea 2" in p1["prompt"]
    assert '"<A> vs <B>"' in p1["prompt"]
    assert p1["messages"] == [{"role": "user", "content": p1["prompt"]}]
    result = inspect(InspectConfig(run=str(planted), no_html=True, n_examples=3,
                                   labeling_prompts=str(tmp_path / "prompts.jsonl")))
    assert result.html is None
    assert [p["direction"] for p in read_jsonl(tmp_path / "prompts.jsonl")] == [0, 1, 2]


def test_read_labels_formats_and_errors(tmp_path):
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"direction": 1, "label": "arithmetic vs poetry", "raw": "..."}\n\n{"direction": 0, "label": " x "}\n')
    assert read_labels(jsonl, 3) == ["x", "arithmetic vs poetry", None]
    (tmp_path / "l.json").write_text('["a vs b", null, ""]')
    assert read_labels(tmp_path / "l.json", 3) == ["a vs b", None, None]
    (tmp_path / "d.json").write_text('{"2": "c vs d"}')
    assert read_labels(tmp_path / "d.json", 3) == [None, None, "c vs d"]
    (tmp_path / "l.txt").write_text("first\n\nthird\n")
    assert read_labels(tmp_path / "l.txt", 3) == ["first", None, "third"]
    (tmp_path / "bad.jsonl").write_text('{"direction": 7, "label": "z"}\n')
    with pytest.raises(AutoskillError, match=r"bad.jsonl:1: direction 7 out of range"):
        read_labels(tmp_path / "bad.jsonl", 3)
    (tmp_path / "broken.jsonl").write_text('{"direction": 0, "label": "ok"}\n{"direction": 1\n')
    with pytest.raises(AutoskillError, match=r"broken.jsonl:2: malformed JSON"):
        read_labels(tmp_path / "broken.jsonl", 3)
    with pytest.raises(AutoskillError, match="2 labels for a basis of 3"):
        (tmp_path / "short.json").write_text('["a", "b"]')
        read_labels(tmp_path / "short.json", 3)


def test_labels_go_into_the_basis(planted, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"direction": 1, "label": "long division vs sea poems"}\n')
    result = inspect(InspectConfig(run=str(planted), labels=str(labels), html=str(tmp_path / "r.html")))
    assert result.labels_saved
    assert SkillBasis.load(planted).labels == [None, "long division vs sea poems", None]
    assert result.directions[1].label == "long division vs sea poems"
    html = (tmp_path / "r.html").read_text()
    assert "long division vs sea poems" in html
    assert HOSTILE not in html and "&lt;script&gt;alert(" in html  # corpus text is escaped
    assert "<script src=" not in html  # plotly.js is inline: the file works offline
    assert html.count("Plotly.newPlot") == 2


def two_models(tmp_path, n=400):
    """Model B's directions are model A's, permuted and sign-flipped, plus noise."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    b = torch.stack([-a[:, 1], a[:, 0], a[:, 2]], dim=1) + 0.1 * torch.randn(n, 3, generator=g)
    texts = [f"text {i}" for i in range(n)]
    return make_run(tmp_path / "a", a, texts=texts, model="model-a"), make_run(tmp_path / "b", b, texts=texts, model="model-b")


@needs_chromium
def test_html_report_renders_in_chromium(planted, tmp_path):
    run_a, run_b = two_models(tmp_path)
    (tmp_path / "labels.json").write_text('["size vs shape", "counting vs colour", "third skill"]')
    result = inspect(InspectConfig(run=str(run_a), labels=str(tmp_path / "labels.json"), compare=str(run_b),
                                   n_examples=4, scatter=(0, 2)))
    values, errors = open_page(result.html, {
        "plots": "document.querySelectorAll('.plotly').length",
        "svgs": "document.querySelectorAll('.js-plotly-plot .main-svg').length",
        "points": "document.querySelectorAll('#scatter .scatterlayer .point').length",
        "heatmaps": "document.querySelectorAll('#correlation .hm, #correlation image').length",
        "cards": "Array.from(document.querySelectorAll('.card')).map(c => c.dataset.direction)",
        "rows": "document.querySelectorAll('#direction-1 table.ex tr').length",
        "text": "document.body.innerText",
        "scatter_title": "document.querySelector('#scatter .gtitle').textContent",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 5")
    assert errors == []
    assert values["plots"] == 5  # scree, scatter, canonical correlations, correlation and Jaccard heatmaps
    assert values["svgs"] >= 5
    assert values["points"] >= 400  # every example (all fit under max_points) plus the poles
    assert values["heatmaps"] >= 1
    assert values["cards"] == ["0", "1", "2"]
    assert values["rows"] == 4 * 4  # 4 examples x (top, bottom) x (projection, cosine)
    for expected in ("counting vs colour", "size vs shape", "Direction 2", "Comparison with another model",
                     "400 shared examples", "model-a", "Explained variance per direction"):
        assert expected in values["text"], expected
    assert "directions 0 and 2" in values["scatter_title"]


@needs_chromium
def test_hostile_text_stays_text_in_chromium(planted):
    result = inspect(InspectConfig(run=str(planted), n_examples=2))
    values, errors = open_page(result.html, {
        "alerts": "typeof window.__alerted",
        "text": "document.body.innerText",
        "plots": "document.querySelectorAll('.plotly').length",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 2")
    assert errors == []
    assert values["plots"] == 2
    assert "id</script><b>3" in values["text"] and "<script>alert('x')</script>" in values["text"]


def test_cli_inspect(planted, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    result = CliRunner().invoke(cli, ["inspect", str(planted), "--labels", str(labels), "--labeling-prompts",
                                      str(tmp_path / "p.jsonl"), "--html", str(tmp_path / "r.html"), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "direction 1:" in result.output and "[ex0005] long division problem 0" in result.output
    assert "one" in result.output and f"report: {tmp_path / 'r.html'}" in result.output
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 3
    bad = CliRunner().invoke(cli, ["inspect", str(planted), "--scatter", "0,9", "--no-html"])
    assert bad.exit_code == 2 and "direction 9 out of range" in bad.output
    moved = CliRunner().invoke(cli, ["inspect", str(planted), "--no-html", "--corpus", str(tmp_path / "labels.txt")])
    assert moved.exit_code == 2 and "error:" in moved.output and "Traceback" not in moved.output


def test_inspect_without_run_json_needs_a_corpus(tmp_path):
    proj = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    run = make_run(tmp_path / "run", proj, ids=[str(i) for i in range(20)], write_run_json=False)
    with pytest.raises(AutoskillError, match="no corpus recorded in run.json; pass the corpus path"):
        inspect(InspectConfig(run=str(run), no_html=True))
    result = inspect(InspectConfig(run=str(run), no_html=True, corpus=str(run / "corpus.jsonl")))
    assert result.directions[0].poles["projection"]["top"][0].text.startswith("example number")


@needs_chromium
def test_the_ranking_section_renders(planted, tmp_path):
    from autoskill_fast.run.ranking import Ranking, RankingEntry

    entries = [RankingEntry(direction=d, sign=s, effect=0.1 * d * s, low=0.1 * d * s - 0.05, high=0.1 * d * s + 0.05,
                            statistic="NLL drop (nats/token)", evaluation=f"eval-{d}{s}", cost_s=1.5, alpha=0.5,
                            alpha_unit="norm") for d in range(3) for s in (1, -1)]
    Ranking("steer", "nll", "synthetic", entries, notes=["a planted note"]).save(planted)
    result = inspect(InspectConfig(run=str(planted), n_examples=2))
    values, errors = open_page(result.html, {
        "text": "document.body.innerText",
        "points": "document.querySelectorAll('#ranking-plot .scatterlayer .point').length",
        "first": "document.querySelector('#ranking table tr:nth-child(2) td').textContent",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 3")
    assert errors == []
    assert "Which directions help" in values["text"] and "a planted note" in values["text"]
    assert values["points"] == 6 and values["first"] == "+2 a0.5norm"  # best first
