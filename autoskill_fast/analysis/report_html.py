"""The HTML report: one self-contained file (plotly.js inlined once) that opens offline in any browser.

Sections: run metadata, the scree plot with cumulative explained variance, a scatter of the corpus on two directions,
one card per direction with its pole examples (by projection and by cosine), and, when given, the comparison with
another model's profile of the same corpus. Every piece of corpus text is HTML-escaped; plot data goes through
plotly's JSON encoder, which escapes '<' and '>'.
"""

from __future__ import annotations

import html
import json
import torch

from ..errors import AutoskillError
from ..run.reading import ProfileRun, excerpt

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem; color: #1d2430; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; margin-top: 2rem; }
table.meta td { padding: 2px 12px 2px 0; vertical-align: top; } table.meta td:first-child { color: #57606a; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: .6rem 1rem; }
.card h3 { margin: .2rem 0; font-size: 1.05rem; } .label { color: #0969da; font-weight: 600; }
.muted { color: #57606a; font-size: .9rem; }
table.ex { border-collapse: collapse; width: 100%; font-size: .86rem; margin: .3rem 0 .6rem; }
table.ex td { border-top: 1px solid #eaeef2; padding: 3px 6px; vertical-align: top; }
table.ex td.score { white-space: nowrap; font-variant-numeric: tabular-nums; width: 5.5em; }
table.ex td.id { white-space: nowrap; color: #57606a; max-width: 9em; overflow: hidden; text-overflow: ellipsis; }
details summary { cursor: pointer; color: #57606a; } pre { white-space: pre-wrap; font-size: .8rem; }
table.matches { border-collapse: collapse; font-size: .88rem; } table.matches td, table.matches th { padding: 2px 10px; }
"""


class _Figures:
    """Turns plotly figures into <div>s; the first one carries plotly.js itself, inline."""

    def __init__(self):
        try:
            import plotly.graph_objects as go
            import plotly.io as pio
        except ImportError:
            raise AutoskillError("the HTML report needs plotly: pip install 'autoskill-fast[report]'") from None
        self.go, self.pio, self.count = go, pio, 0

    def div(self, fig, div_id: str, height: int = 420) -> str:
        fig.update_layout(height=height, margin={"l": 60, "r": 30, "t": 50, "b": 50}, template="plotly_white")
        self.count += 1
        return self.pio.to_html(fig, full_html=False, include_plotlyjs=self.count == 1, div_id=div_id,
                                config={"displaylogo": False, "responsive": True})


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _meta_table(run: ProfileRun) -> str:
    basis, record = run.basis, run.record
    corpus = record.corpus if record else {}
    counts = record.counts if record else {}
    timings = record.timings if record else {}
    rows = [
        ("run folder", str(run.folder)),
        ("model", run.model_name or "?"),
        ("corpus", corpus.get("path") or (record.corpus_config.get("path") if record else None) or "?"),
        ("examples scored", f"{run.n}" + (f" ({counts['skipped']} skipped)" if counts.get("skipped") else "")),
        ("directions", f"{basis.k} of a {basis.feature_dim}-dimensional feature (layers "
                       f"{list(basis.layout.layer_ids)} x {basis.layout.hidden_size})"),
        ("explained", f"{100 * float(basis.explained_variance_ratio_.sum()):.1f}% of the total variance"),
        ("pooling", json.dumps(basis.pooling, sort_keys=True)),
    ]
    if timings.get("total_s") is not None:
        rows.append(("profile time", f"{timings['total_s']:.1f}s"))
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    full = (html.escape(json.dumps(record.to_json(), indent=1, default=str)[:200_000]) if record
            else "(no run.json in this folder)")
    return (f"<table class=\"meta\">{cells}</table>\n"
            f"<details><summary>run.json</summary><pre>{full}</pre></details>")


def _index_axis(title: str, count: int) -> dict:
    """An x axis of integer indices (plotly would otherwise tick 0.5, 1.5, ... on a short range)."""
    return {"title": title, "tickmode": "linear", "tick0": 0, "dtick": max(1, count // 16)}


def _scree(figs: _Figures, run: ProfileRun) -> str:
    go = figs.go
    evr = run.basis.explained_variance_ratio_.to(torch.float64)
    x = list(range(run.basis.k))
    names = [f"{i}: {label}" if label else str(i) for i, label in enumerate(run.basis.labels)]
    fig = go.Figure([
        go.Bar(x=x, y=(100 * evr).tolist(), name="explained variance (%)", hovertext=names),
        go.Scatter(x=x, y=(100 * torch.cumsum(evr, 0)).tolist(), name="cumulative (%)", mode="lines+markers",
                   yaxis="y2"),
    ])
    fig.update_layout(title="Explained variance per direction", xaxis=_index_axis("direction", run.basis.k),
                      yaxis={"title": "% of total variance"},
                      yaxis2={"title": "cumulative %", "overlaying": "y", "side": "right", "range": [0, 100],
                              "tickmode": "linear", "dtick": 20, "showgrid": False},
                      legend={"orientation": "h", "y": -0.2})
    return figs.div(fig, "scree")


def _scatter(figs: _Figures, run: ProfileRun, dirs, pair: tuple[int, int], max_points: int) -> str:
    go = figs.go
    i, j = pair
    proj = run.scores.projection
    n = run.n
    shown = torch.linspace(0, n - 1, min(n, max_points)).round().to(torch.int64).unique()
    ids = run.scores.ids
    traces = [go.Scatter(x=proj[shown, i].tolist(), y=proj[shown, j].tolist(), mode="markers", name="examples",
                         marker={"size": 4, "color": "#8c959f", "opacity": 0.6},
                         hovertext=[ids[p] for p in shown.tolist()], hoverinfo="text+x+y")]
    for d, color in ((dirs[i], "#cf222e"), (dirs[j], "#0969da")):
        for end, symbol in (("top", "triangle-up"), ("bottom", "triangle-down")):
            examples = d.poles["projection"][end]
            # Scores are sorted by row, so an example's position is where its row sits.
            pos = torch.searchsorted(run.scores.row, torch.tensor([e.row for e in examples], dtype=torch.int64))
            traces.append(go.Scatter(x=proj[pos, i].tolist(), y=proj[pos, j].tolist(), mode="markers",
                                     name=f"{end} of direction {d.index}",
                                     marker={"size": 9, "color": color, "symbol": symbol},
                                     hovertext=[f"{e.id}: {excerpt(e.text, 80)}" for e in examples],
                                     hoverinfo="text"))
    label = {k: (f"direction {k}: {run.basis.labels[k]}" if run.basis.labels[k] else f"direction {k}") for k in pair}
    subset = f" ({len(shown)} of {n} examples shown)" if len(shown) < n else ""
    fig = go.Figure(traces)
    fig.update_layout(title=f"Corpus on directions {i} and {j} (centered projection){subset}",
                      xaxis_title=label[i], yaxis_title=label[j], legend={"orientation": "h", "y": -0.2})
    return figs.div(fig, "scatter", height=560)


def _examples_table(examples, chars: int, full_chars: int) -> str:
    rows = []
    for e in examples:
        short = html.escape(excerpt(e.text, chars))
        full = html.escape(e.text[:full_chars] + ("…" if len(e.text) > full_chars else ""))
        rows.append(f"<tr><td class=\"score\">{e.score:+.3f}</td><td class=\"id\" title=\"{html.escape(e.id)}\">"
                    f"{html.escape(e.id)}</td><td><details><summary>{short}</summary><pre>{full}</pre></details></td></tr>")
    return f"<table class=\"ex\">{''.join(rows)}</table>"


def _card(d, chars: int, full_chars: int) -> str:
    label = f" <span class=\"label\">{html.escape(d.label)}</span>" if d.label else ""
    parts = [f"<div class=\"card\" id=\"direction-{d.index}\" data-direction=\"{d.index}\">",
             f"<h3>Direction {d.index}{label}</h3>",
             f"<div class=\"muted\">{100 * d.explained_variance_ratio:.2f}% of variance (eigenvalue "
             f"{d.explained_variance:.4g}); cumulative {100 * d.cumulative_ratio:.1f}%</div>"]
    for kind, title in (("projection", "by centered projection"), ("cosine", "by cosine with the raw feature")):
        poles = d.poles[kind]
        open_attr = " open" if kind == "projection" else ""
        parts.append(f"<details{open_attr}><summary>Poles {title}</summary>"
                     f"<div class=\"muted\">+ end</div>{_examples_table(poles['top'], chars, full_chars)}"
                     f"<div class=\"muted\">- end</div>{_examples_table(poles['bottom'], chars, full_chars)}</details>")
    parts.append("</div>")
    return "\n".join(parts)


def _comparison_section(figs: _Figures, c) -> str:
    go = figs.go
    ka, kb = c.correlation.shape
    tick_a = [f"A{i}" for i in range(ka)]
    tick_b = [f"B{j}" for j in range(kb)]
    corr = go.Figure(go.Heatmap(z=c.correlation.tolist(), x=tick_b, y=tick_a, zmin=-1, zmax=1, colorscale="RdBu",
                                reversescale=True, colorbar={"title": "r"}))
    corr.update_layout(title=f"Correlation of the two models' scores ({c.by})", yaxis={"autorange": "reversed"})
    jac = go.Figure(go.Heatmap(z=c.jaccard.tolist(), x=tick_b, y=tick_a, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar={"title": "J"}))
    jac.update_layout(title=f"Pole overlap (Jaccard, {c.n_pole} examples per pole, signs aligned)",
                      yaxis={"autorange": "reversed"})
    cca = go.Figure(go.Bar(x=list(range(c.canonical.numel())), y=c.canonical.tolist(), name="canonical correlation"))
    cca.update_layout(title="Canonical correlations between the two score spaces",
                      xaxis=_index_axis("pair", c.canonical.numel()),
                      yaxis={"title": "correlation", "range": [0, 1]})
    rows = []
    for m in c.best_matches("a"):
        la, lb = c.labels_a[m["direction"]], c.labels_b[m["match"]]
        rows.append(f"<tr><td>A{m['direction']}{' ' + html.escape(la) if la else ''}</td>"
                    f"<td>B{m['match']}{' ' + html.escape(lb) if lb else ''}</td><td>{'+' if m['sign'] > 0 else '-'}</td>"
                    f"<td>{m['jaccard']:.3f}</td><td>{m['correlation']:+.3f}</td><td>{m['best_abs_correlation']:.3f}</td></tr>")
    size = max(420, min(900, 12 * max(ka, kb) + 150))
    return "\n".join([
        "<section id=\"compare\"><h2>Comparison with another model</h2>",
        f"<p>A = {html.escape(c.name_a)}, B = {html.escape(c.name_b)}: {c.n_shared} shared examples "
        f"({c.n_only_a} only in A, {c.n_only_b} only in B).</p>",
        figs.div(cca, "canonical"), figs.div(corr, "correlation", height=size), figs.div(jac, "jaccard", height=size),
        "<h3>Best match of each direction of A</h3><table class=\"matches\"><tr><th>A</th><th>B</th><th>sign</th>"
        "<th>Jaccard</th><th>r</th><th>max |r|</th></tr>" + "".join(rows) + "</table></section>",
    ])


def _ranking_section(figs: _Figures, ranking) -> str:
    """Which directions help (ranking.json): each (direction, sign[, alpha])'s effect with its interval, best first."""
    go = figs.go
    entries = ranking.entries
    names = [e.pole + (f" a{e.alpha:g}{e.alpha_unit}" if e.alpha is not None else "") for e in entries]
    fig = go.Figure(go.Scatter(
        x=names, y=[e.effect for e in entries], mode="markers",
        error_y={"type": "data", "symmetric": False, "array": [e.high - e.effect for e in entries],
                 "arrayminus": [e.effect - e.low for e in entries]}))
    statistic = entries[0].statistic if entries else ""
    fig.update_layout(title=f"{ranking.proxy} proxy: {statistic} (95% intervals), best first",
                      xaxis_title="direction and pole", yaxis_title="effect (larger is better)")
    fig.add_hline(y=0, line_dash="dot")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{e.effect:+.4f}</td><td>[{e.low:+.4f}, {e.high:+.4f}]</td>"
        f"<td>{'yes' if e.significant else 'no'}</td><td>{e.cost_s:.1f}</td><td>{html.escape(e.evaluation)}</td></tr>"
        for name, e in zip(names, entries))
    notes = "".join(f"<p class=\"muted\">{html.escape(n)}</p>" for n in ranking.notes)
    baseline = html.escape(json.dumps(ranking.baseline, default=str))
    return ("<section id=\"ranking\"><h2>Which directions help</h2>"
            f"<p>Proxy <b>{html.escape(ranking.proxy)}</b>, metric <b>{html.escape(ranking.metric)}</b>; "
            f"baseline: <code>{baseline}</code>. An effect is significant when its whole 95% interval lies above 0."
            "</p>" + notes + figs.div(fig, "ranking-plot") +
            "<table class=\"matches\"><tr><th>pole</th><th>effect</th><th>95% interval</th><th>significant</th>"
            "<th>cost (s)</th><th>evaluation</th></tr>" + rows + "</table></section>")


def render_report(run: ProfileRun, dirs, *, scatter: tuple[int, int] = (0, 1), comparison=None, ranking=None,
                  excerpt_chars: int = 240, max_points: int = 5000, full_text_chars: int = 1500) -> str:
    """The whole report for one run (its directions from `report.directions`), as one HTML string."""
    figs = _Figures()
    title = f"autoskill-fast report: {run.folder.name}"
    body = [f"<h1>{html.escape(title)}</h1>",
            "<section id=\"metadata\"><h2>Run</h2>" + _meta_table(run) + "</section>",
            "<section id=\"variance\"><h2>Explained variance</h2>" + _scree(figs, run) + "</section>",
            "<section id=\"scatter-section\"><h2>Corpus on two directions</h2>"
            + _scatter(figs, run, dirs, scatter, max_points) + "</section>",
            "<section id=\"directions\"><h2>Directions</h2><div class=\"cards\">"
            + "\n".join(_card(d, excerpt_chars, full_text_chars) for d in dirs) + "</div></section>"]
    if ranking is not None:
        body.insert(3, _ranking_section(figs, ranking))
    if comparison is not None:
        body.append(_comparison_section(figs, comparison))
    return _page(title, body)


def render_comparison_page(run_a: ProfileRun, run_b: ProfileRun, comparison) -> str:
    """A report of the comparison alone, with both runs' metadata."""
    figs = _Figures()
    title = f"autoskill-fast comparison: {run_a.folder.name} vs {run_b.folder.name}"
    body = [f"<h1>{html.escape(title)}</h1>", _comparison_section(figs, comparison),
            "<section id=\"metadata\"><h2>Run A</h2>" + _meta_table(run_a) + "<h2>Run B</h2>" + _meta_table(run_b)
            + "</section>"]
    return _page(title, body)
