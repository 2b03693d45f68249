"""inspect: pole examples, what each direction is made of, labeling prompts, labels, and the HTML report rendered in
headless Chromium."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.basis import SkillBasis
from autoskill_fast.cli import cli
from autoskill_fast.errors import AutoskillError
from autoskill_fast.analysis import inspection
from autoskill_fast.analysis.inspection import (InspectConfig, directions, format_directions, inspect, labeling_prompts,
                                                read_labels)
from autoskill_fast.run.reading import load_run
from headless_chromium import chromium_path, open_page
from synthetic_runs import make_run, read_jsonl

needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="chromium is not installed (apt-get install -y chromium): HTML not rendered")

HOSTILE = "<script>alert('x')</script> & \"quotes\""


def planted_scores():
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
    return proj, texts, ids


@pytest.fixture
def planted(tmp_path):
    """The planted scores in a run whose basis has no diagnostics (as one fitted before they existed)."""
    proj, texts, ids = planted_scores()
    return make_run(tmp_path / "run", proj, texts=texts, ids=ids)


LAYERS = (2, 5, 9)  # blocks of the diagnosed basis, 4 hidden coordinates each
CATEGORIES = ["arithmetic", "poetry", "a<b & c <b>d</b><br>e"]  # plotly's markup, to be shown as text


def composed_directions() -> torch.Tensor:
    """Three orthonormal directions over 3 blocks x 4 hidden coordinates, with known make-up:
    0: all on hidden coordinate 1 (blocks 2, 5, 9: 36%, 41%, 23%), the outlier;
    1: coordinates 0 and 2 of blocks 5 and 9 (25% each: concentration 50%, not above the threshold);
    2: coordinates 0, 2, 3 of block 2 (a third each)."""
    u = torch.zeros(3, 12)
    u[0, [1, 5, 9]] = torch.tensor([0.6, 0.64, 0.48])
    u[1, [4, 6, 8, 10]] = 0.5
    u[2, [0, 2, 3]] = 3 ** -0.5
    return u


@pytest.fixture
def diagnosed(tmp_path):
    """The planted scores in a run whose basis carries diagnostics; records carry a category (missing on rows
    100-119) and a number."""
    proj, texts, ids = planted_scores()
    fields = [({"category": CATEGORIES[i % 3]} if i < 100 else {}) | {"length": 1.5 * i} for i in range(120)]
    return make_run(tmp_path / "diagnosed", proj, texts=texts, ids=ids, components=composed_directions(),
                    layer_ids=LAYERS, diagnosed=True, fields=fields)


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
    assert all(d.concentration is None and d.layer_weights is None for d in dirs)  # a basis without diagnostics


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
    (tmp_path / "trailing.txt").write_text("first\nsecond\nthird\n\n \n")  # blank lines at the end label nothing
    assert read_labels(tmp_path / "trailing.txt", 3) == ["first", "second", "third"]
    (tmp_path / "long.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(AutoskillError, match="4 lines of labels for a basis of 3 directions"):
        read_labels(tmp_path / "long.txt", 3)
    (tmp_path / "bad.jsonl").write_text('{"direction": 7, "label": "z"}\n')
    with pytest.raises(AutoskillError, match=r"bad.jsonl:1: direction 7 out of range"):
        read_labels(tmp_path / "bad.jsonl", 3)
    (tmp_path / "broken.jsonl").write_text('{"direction": 0, "label": "ok"}\n{"direction": 1\n')
    with pytest.raises(AutoskillError, match=r"broken.jsonl:2: malformed JSON"):
        read_labels(tmp_path / "broken.jsonl", 3)
    with pytest.raises(AutoskillError, match="2 labels for a basis of 3"):
        (tmp_path / "short.json").write_text('["a", "b"]')
        read_labels(tmp_path / "short.json", 3)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))  # was a UnicodeDecodeError traceback
    with pytest.raises(AutoskillError, match=r"latin1.txt: not valid UTF-8 at byte 3"):
        read_labels(tmp_path / "latin1.txt", 3)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'["with a byte-order mark"]')  # as corpora may have
    assert read_labels(tmp_path / "bom.json", 1) == ["with a byte-order mark"]


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
    # A basis from before diagnostics: their section says so, and nothing fails.
    assert "This basis carries no diagnostics" in html and 'id="warnings"' not in html
    assert 'id="layer-weights"' not in html


def two_models(tmp_path, n=400):
    """Model B's directions are model A's, permuted and sign-flipped, plus noise."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    b = torch.stack([-a[:, 1], a[:, 0], a[:, 2]], dim=1) + 0.1 * torch.randn(n, 3, generator=g)
    texts = [f"text {i}" for i in range(n)]
    return (make_run(tmp_path / "a", a, texts=texts, model="model-a", config_hash="aaaa"),
            make_run(tmp_path / "b", b, texts=texts, model="model-b", config_hash="bbbb"))


@needs_chromium
def test_html_report_renders_in_chromium(tmp_path):
    """Labels, a ranking, a comparison and a scatter coloured by a number, on one page."""
    from autoskill_fast.run.ranking import Ranking, RankingEntry

    run_a, run_b = two_models(tmp_path)
    (tmp_path / "labels.json").write_text('["size vs shape", "counting vs colour", "third skill"]')
    entries = [RankingEntry(direction=d, sign=s, effect=0.1 * d * s, low=0.1 * d * s - 0.05, high=0.1 * d * s + 0.05,
                            statistic="NLL drop (nats/token)", evaluation=f"eval-{d}{s}", cost_s=1.5, alpha=0.5,
                            alpha_unit="norm", joint_low=0.1 * d * s - 0.08, joint_high=0.1 * d * s + 0.08)
               for d in range(3) for s in (1, -1)]
    Ranking("steer", "nll", "synthetic", entries, notes=["a planted note"]).save(run_a)
    result = inspect(InspectConfig(run=str(run_a), labels=str(tmp_path / "labels.json"), compare=str(run_b),
                                   n_examples=4, scatter=(0, 2), color_by="meta.n"))
    values, errors = open_page(result.html, {
        "plots": "document.querySelectorAll('.plotly').length",
        "svgs": "document.querySelectorAll('.js-plotly-plot .main-svg').length",
        "points": "document.querySelectorAll('#scatter .scatterlayer .point').length",
        "heatmaps": "document.querySelectorAll('#correlation .hm, #correlation image').length",
        "cards": "Array.from(document.querySelectorAll('.card')).map(c => c.dataset.direction)",
        "rows": "document.querySelectorAll('#direction-1 table.ex tbody tr').length",
        "text": "document.body.innerText",
        "scatter_title": "document.querySelector('#scatter .gtitle').textContent",
        "ranking_points": "document.querySelectorAll('#ranking-plot .scatterlayer .point').length",
        "ranking_bars": "document.getElementById('ranking-plot').data.map(t => t.error_y.array[0])",
        "first": "document.querySelector('#ranking table tr:nth-child(2) td').textContent",
        "colorbar": "document.querySelectorAll('#scatter .colorbar').length",
        "colors": "document.getElementById('scatter').data[0].marker.color.length",
        "null_traces": "document.getElementById('canonical').data.map(t => t.name)",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 6")
    assert errors == []
    assert values["plots"] == 6  # scree, ranking, scatter, canonical correlations, correlation and Jaccard heatmaps
    assert values["svgs"] >= 6
    assert values["points"] >= 400  # every example (all fit under max_points) plus the poles
    assert values["heatmaps"] >= 1
    assert values["cards"] == ["0", "1", "2"]
    assert values["rows"] == 4 * 4  # 4 examples x (highest, lowest) x (projection, cosine)
    for expected in ("counting vs colour", "size vs shape", "Direction 2", "Comparison with another model",
                     "400 shared examples", "model-a", "Explained variance per direction", "Null: the same statistic",
                     "3 of 3 canonical correlations exceed the null's 95th percentile", "Which directions help",
                     "a planted note", "This basis carries no diagnostics"):
        assert expected in values["text"], expected
    assert "directions 0 and 2" in values["scatter_title"] and "coloured by meta.n" in values["scatter_title"]
    assert values["ranking_points"] == 12 and values["first"] == "+2 a0.5norm"  # best first; joint and own
    assert values["ranking_bars"] == pytest.approx([0.08, 0.05])  # the joint interval behind the entry's own
    assert "joint 95% interval" in values["text"] and "[+0.1200, +0.2800]" in values["text"]
    assert values["colorbar"] == 1 and values["colors"] == 400  # a number with many values: a colour scale
    assert values["null_traces"] == ["canonical correlation", "null: mean", "null: 95th percentile"]


def test_directions_carry_their_make_up(diagnosed):
    dirs = directions(load_run(diagnosed), n=2)
    torch.testing.assert_close(torch.tensor([d.layer_weights for d in dirs]),
                               torch.tensor([[0.36, 0.4096, 0.2304], [0, 0.5, 0.5], [1, 0, 0]]))
    assert [d.concentration for d in dirs] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [(d.coordinate, d.coordinate_layers) for d in dirs] == [(1, [2, 5, 9]), (0, [5, 9]), (0, [2])]
    summary = format_directions(dirs)
    assert "direction 0: " in summary and "[100% hidden coordinate 1: an outlier, not a skill]" in summary
    assert summary.count("an outlier") == 1  # 50% is not above the threshold


def test_directions_of_rounding_are_flagged(tmp_path):
    """Eigenvalues of 1e-18 beside ones of 1e-4 (a corpus of fewer distinct examples than directions): flagged
    with the k to fit again with; a small but real direction (1e-6 of the first's variance) is not."""
    proj = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    flagged = make_run(tmp_path / "flagged", proj, eigenvalues=torch.tensor([3e-4, 1e-4, 3e-13, 2e-18, 1e-18]),
                       diagnosed=True)
    warnings = load_run(flagged).basis.warnings
    assert ("directions 2-4 explain at most 1e-08 of direction 0's variance: rounding, not directions of the corpus "
            "(fewer distinct examples than directions?); fit again with -k 2") in warnings
    small = make_run(tmp_path / "small", proj, eigenvalues=torch.tensor([1.0, 0.1, 1e-3, 1e-5, 1e-6]), diagnosed=True)
    assert not any("rounding" in w for w in load_run(small).basis.warnings)
    flat = make_run(tmp_path / "flat", proj, eigenvalues=torch.zeros(5), diagnosed=True)
    assert "the features do not vary over the corpus: every direction is rounding" in load_run(flat).basis.warnings


@needs_chromium
def test_report_shows_make_up_warnings_and_colours_in_chromium(diagnosed):
    """One page: the warnings before the metadata, the layer heatmap and concentration bars, the scatter coloured by
    a category (a legend), the pole tables with headers, and hostile text that stays text."""
    result = inspect(InspectConfig(run=str(diagnosed), n_examples=2, color_by="category"))
    weights = [d.layer_weights for d in result.directions]
    values, errors = open_page(result.html, {
        "alerts": "typeof window.__alerted",
        "sections": "Array.from(document.querySelectorAll('body > section')).map(s => s.id)",
        "warnings": "document.querySelector('#warnings').innerText",
        "plots": "document.querySelectorAll('.plotly').length",
        "z": "document.getElementById('layer-weights').data[0].z",
        "layers": "document.getElementById('layer-weights').data[0].x",
        "heatmap_drawn": "document.querySelectorAll('#layer-weights .hm, #layer-weights image').length",
        "bars": "document.querySelectorAll('#concentration .barlayer .point').length",
        "legend": "Array.from(document.querySelectorAll('#scatter .legendtext')).map(t => t.textContent)",
        "points": "document.querySelectorAll('#scatter .scatterlayer .point').length",
        "scatter_title": "document.querySelector('#scatter .gtitle').textContent",
        "headers": "Array.from(document.querySelector('#direction-1 table.ex thead').querySelectorAll('th'))"
                   ".map(t => t.textContent)",
        "rows": "document.querySelectorAll('#direction-1 table.ex tbody tr').length",
        "first_id": "document.querySelector('#direction-1 table.ex tbody td.id').textContent",
        "made_of": "document.querySelector('#direction-0 .made-of').className",
        "text": "document.body.innerText",
        "all_text": "document.body.textContent",
    }, ready="document.querySelectorAll('.js-plotly-plot').length >= 4")
    assert errors == []
    assert values["sections"][:2] == ["warnings", "metadata"]  # the warnings come first
    assert ("direction 0 is 100% hidden coordinate 1 (blocks 2, 5, 9): an outlier activation, not a skill; refit with "
            "--scaling coordinate") in values["warnings"]
    assert f"autoskill-fast fit {diagnosed} -k 3 --scaling coordinate" in values["warnings"]
    assert values["plots"] == 4  # scree, layer weights, concentration, scatter
    assert values["layers"] == ["2", "5", "9"]
    torch.testing.assert_close(torch.tensor(values["z"]), 100 * torch.tensor(weights))
    assert values["z"][0] == pytest.approx([36.0, 40.96, 23.04])
    assert values["heatmap_drawn"] >= 1 and values["bars"] == 3
    assert values["legend"][:4] == ["arithmetic", "a<b & c <b>d</b><br>e", "poetry", "(no category)"]  # by count, name
    assert {"highest on direction 0", "lowest on direction 1"} <= set(values["legend"])
    assert values["points"] >= 120 and "coloured by category" in values["scatter_title"]
    assert values["headers"] == ["rank", "id", "score", "text (click for more)"]
    assert values["rows"] == 2 * 2 * 2  # 2 examples x (highest, lowest) x (projection, cosine)
    assert values["first_id"] == "ex0005"  # the corpus's id field, not the row number
    assert "warn" in values["made_of"]
    for expected in ("What each direction is made of", "Highest scores (positive pole)",
                     "Lowest scores (negative pole)",
                     "100% of its squared norm on hidden coordinate 1 (blocks 2, 5, 9)", "ids: the corpus's 'uid' field",
                     "Hidden coordinates of largest variance"):
        assert expected in values["text"], expected
    assert "The paper's score. A raw feature's cosine is dominated by its largest coordinates" in values["all_text"]
    assert "+ end" not in values["all_text"]
    assert values["alerts"] == "undefined"
    assert "id</script><b>3" in values["all_text"] and "<script>alert('x')</script>" in values["all_text"]


def test_color_by_reads_only_the_plotted_rows_and_names_a_missing_field(diagnosed, monkeypatch, tmp_path):
    asked, fetch = [], inspection.fetch_records

    def counted(config, wanted):
        asked.append(set(wanted))
        return fetch(config, wanted)

    monkeypatch.setattr(inspection, "fetch_records", counted)
    html = tmp_path / "r.html"
    inspect(InspectConfig(run=str(diagnosed), n_examples=1, color_by="meta.source", max_points=12, html=str(html)))
    monkeypatch.undo()
    run = load_run(diagnosed)
    shown = set(inspection.scatter_positions(run.n, 12).tolist())
    poles = {e.row for d in directions(run, 1) for kind in d.poles.values() for end in kind.values() for e in end}
    assert len(asked) == 1 and asked[0] == shown | poles  # one pass, the plotted rows and the poles' rows only
    assert "coloured by meta.source" in html.read_text()
    missing = (r"corpus.jsonl: none of the 120 records in the scatter has a field 'topic' \(the first one has "
               r"category, length, meta, text, uid\); pass one of its fields to --color-by")
    with pytest.raises(AutoskillError, match=missing):
        inspect(InspectConfig(run=str(diagnosed), color_by="topic", html=str(html)))
    with pytest.raises(AutoskillError, match="InspectConfig.color_by: colours the HTML report"):
        InspectConfig(run=str(diagnosed), color_by="category", no_html=True)
    bad = CliRunner().invoke(cli, ["inspect", str(diagnosed), "--color-by", "topic", "--html", str(html)])
    assert bad.exit_code == 2 and "has a field 'topic'" in bad.output and "Traceback" not in bad.output


def test_cli_inspect(planted, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    result = CliRunner().invoke(cli, ["inspect", str(planted), "--labels", str(labels), "--labeling-prompts",
                                      str(tmp_path / "p.jsonl"), "--html", str(tmp_path / "r.html"), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "direction 1:" in result.output and "[ex0005] long division problem 0" in result.output
    assert "one" in result.output and f"report: {tmp_path / 'r.html'}" in result.output
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 3
    bad = CliRunner().invoke(cli, ["inspect", str(planted), "--scatter", "0,9", "--html", str(tmp_path / "x.html")])
    assert bad.exit_code == 2 and "direction 9 out of range" in bad.output
    # Options the run would ignore are refused (they were accepted, and nothing they asked for was done)
    for ignored, what in ((["--no-html", "--scatter", "0,2"], "--scatter: is for the HTML report"),
                          (["--no-html", "--html", str(tmp_path / "y.html")], "--html: is for the HTML report"),
                          (["--n-pole", "3"], "--n-pole: sizes the poles of a comparison")):
        bad = CliRunner().invoke(cli, ["inspect", str(planted), *ignored])
        assert bad.exit_code == 2 and what in bad.output, bad.output
    assert not (tmp_path / "y.html").exists()
    moved = CliRunner().invoke(cli, ["inspect", str(planted), "--no-html", "--corpus", str(tmp_path / "labels.txt")])
    assert moved.exit_code == 2 and "error:" in moved.output and "Traceback" not in moved.output


def test_a_basis_of_one_direction_is_inspected_without_a_scatter(tmp_path):
    """`profile -k 1` is allowed: its report has no scatter (the default pair 0,1 does not exist), a pair asked for
    is range-checked, and --color-by, which colours the scatter, is refused."""
    run = make_run(tmp_path / "one", torch.randn(20, 1, generator=torch.Generator().manual_seed(0)))
    result = inspect(InspectConfig(run=str(run), html=str(tmp_path / "one.html")))
    assert len(result.directions) == 1
    assert 'id="directions"' in result.html.read_text() and 'id="scatter-section"' not in result.html.read_text()
    two = make_run(tmp_path / "two", torch.randn(20, 2, generator=torch.Generator().manual_seed(1)))
    two_page = inspect(InspectConfig(run=str(two), html=str(tmp_path / "two.html"))).html.read_text()
    assert 'id="scatter-section"' in two_page
    for asked in ((1, 0), (0, 1)):
        with pytest.raises(AutoskillError, match="direction 1 out of range"):
            inspect(InspectConfig(run=str(run), scatter=asked, html=str(tmp_path / "none.html")))
    with pytest.raises(AutoskillError, match="--color-by colours the report's scatter on two directions, and this "
                                             "basis has one"):
        inspect(InspectConfig(run=str(run), color_by="meta"))


def test_inspect_without_run_json_needs_a_corpus(tmp_path):
    proj = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    run = make_run(tmp_path / "run", proj, ids=[str(i) for i in range(20)], write_run_json=False)
    with pytest.raises(AutoskillError, match="no corpus recorded in run.json; pass the corpus path"):
        inspect(InspectConfig(run=str(run), no_html=True))
    result = inspect(InspectConfig(run=str(run), no_html=True, corpus=str(run / "corpus.jsonl")))
    assert result.directions[0].poles["projection"]["top"][0].text.startswith("example number")
    named = make_run(tmp_path / "named", proj, write_run_json=False)  # ids ex00000... from a field nothing names
    with pytest.raises(AutoskillError, match="with no id field known .* a record's id here is its row number"):
        inspect(InspectConfig(run=str(named), no_html=True, corpus=str(named / "corpus.jsonl")))


def test_the_ranking_section_of_a_ranking_written_before_joint_intervals():
    """Rankings written before joint intervals have none: one trace and no joint columns; with them, both."""
    from autoskill_fast.analysis.report_html import _ranking_section
    from autoskill_fast.analysis.report_page import Figures
    from autoskill_fast.run.ranking import Ranking, RankingEntry

    old = [RankingEntry(0, 1, 0.1, 0.05, 0.15, "NLL drop"), RankingEntry(0, -1, -0.1, -0.15, -0.05, "NLL drop")]
    section = _ranking_section(Figures(), Ranking("steer", "nll", None, old))
    assert "joint 95%" not in section and "above 0 (own)" in section and section.count("<tr>") == 3
    assert "confirm a winner on other problems" in section
    new = [RankingEntry(0, 1, 0.1, 0.05, 0.15, "NLL drop", joint_low=0.01, joint_high=0.19),
           RankingEntry(0, -1, -0.1, -0.15, -0.05, "NLL drop", joint_low=-0.19, joint_high=-0.01)]
    section = _ranking_section(Figures(), Ranking("steer", "nll", None, new))
    assert "<th>joint 95% interval</th>" in section and "[+0.0100, +0.1900]" in section
    assert '"name":"joint 95%"' in section  # the joint intervals' trace, behind the own ones
