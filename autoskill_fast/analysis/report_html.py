"""The HTML report: one self-contained file (plotly.js inlined once, `report_page`) that opens offline in any browser.

Sections: the basis's warnings first (directions that are mostly one hidden coordinate, with the remedy), run
metadata, the scree plot with cumulative explained variance, what each direction is made of (a direction x layer
heatmap of its weight per layer, its concentration on one hidden coordinate), the ranking when there is one, a
scatter of the corpus on two directions (coloured by a corpus field if asked), one card per direction with its pole
examples (by projection, then by the paper's cosine), and, when given, the comparison with another profile of the
same corpus. A basis fitted before diagnostics existed gets a short note instead of their
section. Every piece of corpus text is HTML-escaped; plot data goes through plotly's JSON encoder, which escapes
'<' and '>'.
"""

from __future__ import annotations

import html
import json
from collections import Counter

import torch

from ..basis import CONCENTRATION_WARNING
from ..basis import block_ranges
from ..run.ranking import alpha_label
from ..run.reading import ProfileRun, excerpt
from .report_page import Figures, index_axis, meta_table, page

MAX_CATEGORIES = 20  # categories of --color-by with their own legend entry; the rarer ones share one
NUMERIC_DISTINCT = 12  # a numeric field with more distinct values than this gets a colour scale, not categories


def plain(text: str) -> str:
    """Text from the corpus or the user (values, ids, labels) as plotly shows it: its pseudo-HTML (<b>, <br>) would
    otherwise be rendered; plotly turns the entities back into the characters."""
    return html.escape(text, quote=False)


def _scree(figs: Figures, run: ProfileRun) -> str:
    go = figs.go
    evr = run.basis.explained_variance_ratio_.to(torch.float64)
    x = list(range(run.basis.k))
    names = [f"{i}: {plain(label)}" if label else str(i) for i, label in enumerate(run.basis.labels)]
    fig = go.Figure([
        go.Bar(x=x, y=(100 * evr).tolist(), name="explained variance (%)", hovertext=names),
        go.Scatter(x=x, y=(100 * torch.cumsum(evr, 0)).tolist(), name="cumulative (%)", mode="lines+markers",
                   yaxis="y2"),
    ])
    fig.update_layout(title="Explained variance per direction", xaxis=index_axis("direction", run.basis.k),
                      yaxis={"title": "% of total variance"},
                      yaxis2={"title": "cumulative %", "overlaying": "y", "side": "right", "range": [0, 100],
                              "tickmode": "linear", "dtick": 20, "showgrid": False},
                      legend={"orientation": "h", "y": -0.2})
    return figs.div(fig, "scree")


def _threshold(run: ProfileRun) -> float:
    return float(run.basis.diagnostics.get("concentration_warning", CONCENTRATION_WARNING))


def _warnings_section(run: ProfileRun) -> str:
    """The basis's warnings, which change how the rest is read, with what to do about them; empty when there are none
    (a comparison's own warning opens its section)."""
    basis = run.basis
    if not basis.warnings:
        return ""
    parts = ["<section id=\"warnings\" class=\"warnings\"><h2>Warnings</h2><ul>",
             *(f"<li>{html.escape(w)}</li>" for w in basis.warnings), "</ul>"]
    threshold = _threshold(run)
    if any(d.get("concentration", 0.0) > threshold for d in basis.diagnostics.get("directions") or []):
        parts.append("<p>A direction that is mostly one hidden coordinate follows an outlier (\"massive\") activation "
                     "of the model, not a skill; its cosine poles are the most exposed.")
        if basis.scaling != "coordinate":
            command = f"autoskill-fast fit {run.folder} -k {basis.k} --scaling coordinate"
            parts.append(f" Refit from the saved statistics, no model needed: <code>{html.escape(command)}</code> "
                         "(without saved features, then rescore with <code>autoskill-fast project</code>).")
        parts.append("</p>")
    return "".join(parts) + "</section>"


def _composition(figs: Figures, run: ProfileRun, dirs) -> str:
    """What each direction is made of: its weight per layer (heatmap) and its concentration on one coordinate."""
    layer_ids = list(run.basis.layout.layer_ids)
    head = "<section id=\"composition\"><h2>What each direction is made of</h2>"
    if any(d.concentration is None or len(d.layer_weights or ()) != len(layer_ids) for d in dirs):
        return (head + "<p class=\"muted\">This basis carries no diagnostics (it was fitted before they existed); "
                f"refit it (<code>autoskill-fast fit {html.escape(str(run.folder))} -k {run.basis.k}</code>) to see "
                "each direction's layers and concentration.</p></section>")
    go, threshold = figs.go, _threshold(run)
    rows = [f"{d.index}: {d.label}" if d.label else str(d.index) for d in dirs]
    heat = go.Figure(go.Heatmap(z=[[100 * w for w in d.layer_weights] for d in dirs], x=[str(l) for l in layer_ids],
                                y=rows, zmin=0, colorscale="Blues", colorbar={"title": "%"},
                                hovertemplate="direction %{y}, block %{x}: %{z:.1f}%<extra></extra>"))
    heat.update_layout(title="Weight of each direction per layer (% of its squared norm)",
                       xaxis={"title": "block", "type": "category"},
                       yaxis={"title": "direction", "type": "category", "autorange": "reversed"})
    bars = go.Figure(go.Bar(
        x=[d.index for d in dirs], y=[100 * d.concentration for d in dirs],
        marker={"color": ["#cf222e" if d.concentration > threshold else "#0969da" for d in dirs]},
        hovertext=[f"hidden coordinate {d.coordinate} (blocks {block_ranges(d.coordinate_layers)})" for d in dirs]))
    bars.add_hline(y=100 * threshold, line_dash="dot", annotation_text="warning threshold")
    bars.update_layout(title="Concentration: % of each direction's squared norm on its largest hidden coordinate",
                       xaxis=index_axis("direction", len(dirs)), yaxis={"title": "%", "range": [0, 100]})
    table = "".join(
        f"<tr><td>{d.index}</td><td class=\"{'warn' if d.concentration > threshold else ''}\">"
        f"{100 * d.concentration:.1f}%</td><td>{d.coordinate}</td><td>{block_ranges(d.coordinate_layers)}</td>"
        f"<td>{layer_ids[max(range(len(layer_ids)), key=d.layer_weights.__getitem__)]}</td></tr>" for d in dirs)
    variance = run.basis.diagnostics.get("coordinate_variance")
    spread = ""
    if variance and variance.get("largest"):
        largest = ", ".join(f"{int(h)} ({ratio:.0f}x)" for h, ratio in variance["largest"][:5])
        spread = ("<p>Hidden coordinates of largest variance (summed over blocks), relative to the median "
                  f"coordinate's: {largest}.</p>")
    scaled = (f" (in the fitted feature space: scaling {html.escape(run.basis.scaling)})"
              if run.basis.scaling != "none" else "")
    return "\n".join([
        head, f"<p>Each direction is a unit vector over {len(layer_ids)} blocks x {run.basis.layout.hidden_size} "
        f"hidden coordinates{scaled}. Its weight per layer is the share of its squared norm in that block; its "
        "concentration, the share on its single largest hidden coordinate summed over blocks. Above "
        f"{100 * threshold:.0f}% a direction is flagged: an outlier coordinate, not a skill.</p>", spread,
        figs.div(heat, "layer-weights", height=max(320, min(900, 16 * len(dirs) + 160))),
        figs.div(bars, "concentration", height=360),
        "<details><summary>Concentration per direction</summary><table class=\"matches\"><tr><th>direction</th>"
        "<th>concentration</th><th>hidden coordinate</th><th>its blocks</th><th>heaviest block</th></tr>"
        + table + "</table></details></section>"])


def _colored_traces(go, proj, shown: list[int], pair, ids, color) -> list:
    """The shown examples coloured by a field (an `inspection.ColorField`): one trace per category (a legend), or one
    with a colour scale."""
    i, j = pair
    name = color.name

    def trace(positions, label, marker):
        hover = [plain(f"{ids[p]}: {name} = {excerpt(str(color.values.get(p, '')), 60)}") for p in positions]
        return go.Scatter(x=proj[positions, i].tolist(), y=proj[positions, j].tolist(), mode="markers",
                          name=plain(label), marker={"size": 5, "opacity": 0.75, **marker}, hovertext=hover,
                          hoverinfo="text+x+y")

    missing = [p for p in shown if p not in color.values]
    present = [p for p in shown if p in color.values]
    values = [color.values[p] for p in present]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    traces = []
    if numeric and len(set(values)) > NUMERIC_DISTINCT:
        traces.append(trace(present, name, {"color": values, "colorscale": "Viridis", "showscale": True,
                                            "colorbar": {"title": plain(name), "x": 1.02}}))
    else:
        keys = {p: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for p, v in zip(present, values)}
        counts = Counter(keys.values())
        named = sorted(counts, key=lambda key: (-counts[key], key))[:MAX_CATEGORIES]
        for key in named:
            traces.append(trace([p for p in present if keys[p] == key], excerpt(key, 40), {}))
        kept = set(named)
        rest = [p for p in present if keys[p] not in kept]
        if rest:
            traces.append(trace(rest, f"other ({len(counts) - len(named)} values)", {"color": "#d0d7de"}))
    if missing:
        traces.append(trace(missing, f"(no {name})", {"color": "#8c959f", "symbol": "x"}))
    return traces


def _scatter(figs: Figures, run: ProfileRun, dirs, pair: tuple[int, int], shown: torch.Tensor, color) -> str:
    go = figs.go
    i, j = pair
    proj = run.scores.projection
    n = run.n
    ids = run.scores.ids
    if color is None:
        traces = [go.Scatter(x=proj[shown, i].tolist(), y=proj[shown, j].tolist(), mode="markers", name="examples",
                             marker={"size": 4, "color": "#8c959f", "opacity": 0.6},
                             hovertext=[plain(ids[p]) for p in shown.tolist()], hoverinfo="text+x+y")]
    else:
        traces = _colored_traces(go, proj, shown.tolist(), pair, ids, color)
    for d, tint in ((dirs[i], "#cf222e"), (dirs[j], "#0969da")):
        for end, symbol, word in (("top", "triangle-up", "highest"), ("bottom", "triangle-down", "lowest")):
            examples = d.poles["projection"][end]
            # Scores are sorted by row, so an example's position is where its row sits.
            pos = torch.searchsorted(run.scores.row, torch.tensor([e.row for e in examples], dtype=torch.int64))
            traces.append(go.Scatter(x=proj[pos, i].tolist(), y=proj[pos, j].tolist(), mode="markers",
                                     name=f"{word} on direction {d.index}",
                                     marker={"size": 10, "color": tint, "symbol": symbol,
                                             "line": {"width": 1, "color": "#1d2430"}},
                                     hovertext=[plain(f"{e.id}: {excerpt(e.text, 80)}") for e in examples],
                                     hoverinfo="text"))
    label = {k: (f"direction {k}: {plain(run.basis.labels[k])}" if run.basis.labels[k] else f"direction {k}")
             for k in pair}
    subset = f" ({len(shown)} of {n} examples shown)" if len(shown) < n else ""
    colored = f", coloured by {plain(color.name)}" if color is not None else ""
    fig = go.Figure(traces)
    fig.update_layout(title=f"Corpus on directions {i} and {j} (centered projection){colored}{subset}",
                      xaxis_title=label[i], yaxis_title=label[j], legend={"orientation": "h", "y": -0.2})
    return figs.div(fig, "scatter", height=560)


def _examples_table(examples, chars: int, full_chars: int) -> str:
    rows = []
    for rank, e in enumerate(examples, start=1):
        short = html.escape(excerpt(e.text, chars))
        full = html.escape(e.text[:full_chars] + ("…" if len(e.text) > full_chars else ""))
        rows.append(f"<tr><td class=\"rank\">{rank}</td><td class=\"id\" title=\"{html.escape(e.id)}\">"
                    f"{html.escape(e.id)}</td><td class=\"score\">{e.score:+.3f}</td>"
                    f"<td><details><summary>{short}</summary><pre>{full}</pre></details></td></tr>")
    return ("<table class=\"ex\"><thead><tr><th>rank</th><th>id</th><th>score</th><th>text (click for more)</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


_POLE_KINDS = (
    ("projection", "Poles by centered projection", ""),
    ("cosine", "Poles by cosine with the raw feature (the paper's score)",
     "The paper's score. A raw feature's cosine is dominated by its largest coordinates, so one outlier coordinate "
     "can decide these lists."),
)


def _card(d, chars: int, full_chars: int, threshold: float) -> str:
    label = f" <span class=\"label\">{html.escape(d.label)}</span>" if d.label else ""
    parts = [f"<div class=\"card\" id=\"direction-{d.index}\" data-direction=\"{d.index}\">",
             f"<h3>Direction {d.index}{label}</h3>",
             f"<div class=\"muted\">{100 * d.explained_variance_ratio:.2f}% of variance (eigenvalue "
             f"{d.explained_variance:.4g}); cumulative {100 * d.cumulative_ratio:.1f}%</div>"]
    if d.concentration is not None:
        outlier = d.concentration > threshold
        parts.append(f"<div class=\"{'warn' if outlier else 'muted'} made-of\">{100 * d.concentration:.0f}% of its "
                     f"squared norm on hidden coordinate {d.coordinate} (blocks {block_ranges(d.coordinate_layers)})"
                     f"{': an outlier coordinate, not a skill' if outlier else ''}</div>")
    for kind, title, note in _POLE_KINDS:
        poles = d.poles[kind]
        open_attr = " open" if kind == "projection" else ""
        note_html = f"<div class=\"muted\">{note}</div>" if note else ""
        parts.append(f"<details{open_attr}><summary>{title}</summary>{note_html}"
                     f"<div class=\"end\">Highest scores (positive pole)</div>"
                     f"{_examples_table(poles['top'], chars, full_chars)}"
                     f"<div class=\"end\">Lowest scores (negative pole)</div>"
                     f"{_examples_table(poles['bottom'], chars, full_chars)}</details>")
    parts.append("</div>")
    return "\n".join(parts)


def _comparison_section(figs: Figures, c) -> str:
    go = figs.go
    ka, kb = c.correlation.shape
    tick_a = [f"A{i}" for i in range(ka)]
    tick_b = [f"B{j}" for j in range(kb)]
    corr = go.Figure(go.Heatmap(z=c.correlation.tolist(), x=tick_b, y=tick_a, zmin=-1, zmax=1, colorscale="RdBu",
                                reversescale=True, colorbar={"title": "r"}))
    corr.update_layout(title=f"Correlation of the two {'models' if c.models_differ else 'runs'}' scores ({c.by})",
                       yaxis={"autorange": "reversed"})
    jac = go.Figure(go.Heatmap(z=c.jaccard.tolist(), x=tick_b, y=tick_a, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar={"title": "J"}))
    jac.update_layout(title=f"Pole overlap (Jaccard, {c.n_pole} examples per pole, signs aligned)",
                      yaxis={"autorange": "reversed"})
    pairs = list(range(c.canonical.numel()))
    cca = go.Figure(go.Bar(x=pairs, y=c.canonical.tolist(), name="canonical correlation"))
    null = ""
    if c.null_mean is not None:
        for values, name, dash in ((c.null_mean, "null: mean", "solid"), (c.null_p95, "null: 95th percentile", "dot")):
            cca.add_trace(go.Scatter(x=pairs, y=values.tolist(), name=name, mode="lines",
                                     line={"color": "#cf222e", "dash": dash}))
        null = (f"<p>Null: the same statistic with B's rows permuted ({c.null.shape[0]} draws, seed {c.seed}), which "
                f"pairs each example of A with a random one of B: mean {float(c.null_mean.mean()):.3f}; "
                f"{c.above_null} of {c.canonical.numel()} canonical correlations exceed the null's 95th percentile. "
                "Only those above the null say the two score spaces share structure.</p>")
    cca.update_layout(title="Canonical correlations between the two score spaces, against the permutation null",
                      xaxis=index_axis("pair", c.canonical.numel()),
                      yaxis={"title": "correlation", "range": [0, 1]}, legend={"orientation": "h", "y": -0.2})
    rows = []
    for m in c.best_matches("a"):
        la, lb = c.labels_a[m["direction"]], c.labels_b[m["match"]]
        rows.append(f"<tr><td>A{m['direction']}{' ' + html.escape(la) if la else ''}</td>"
                    f"<td>B{m['match']}{' ' + html.escape(lb) if lb else ''}</td><td>{'+' if m['sign'] > 0 else '-'}</td>"
                    f"<td>{m['jaccard']:.3f}</td><td>{m['correlation']:+.3f}</td><td>{m['best_abs_correlation']:.3f}</td></tr>")
    size = max(420, min(900, 12 * max(ka, kb) + 150))
    same = "" if c.models_differ else " (two runs of the same model)"
    warnings = "".join(f"<p class=\"warn\">warning: {html.escape(w)}</p>" for w in c.warnings)
    return "\n".join([
        f"<section id=\"compare\"><h2>Comparison with {c.other}</h2>",
        f"<p>A = {html.escape(c.name_a)}, B = {html.escape(c.name_b)}{same}: {c.n_shared} shared examples "
        f"({c.n_only_a} only in A, {c.n_only_b} only in B).</p>", warnings, null,
        figs.div(cca, "canonical"), figs.div(corr, "correlation", height=size), figs.div(jac, "jaccard", height=size),
        "<h3>Best match of each direction of A</h3><table class=\"matches\"><tr><th>A</th><th>B</th><th>sign</th>"
        "<th>Jaccard</th><th>r</th><th>max |r|</th></tr>" + "".join(rows) + "</table></section>",
    ])


def _ranking_section(figs: Figures, ranking) -> str:
    """Which directions help (ranking.json): each (direction, sign[, alpha])'s effect with its interval, best first."""
    go = figs.go
    entries = ranking.entries
    names = [e.pole + (f" a{alpha_label(e.alpha)}{e.alpha_unit}" if e.alpha is not None else "") for e in entries]
    effects = [e.effect for e in entries]
    joint = ranking.joint
    fig = go.Figure()
    if joint:  # drawn first, in grey, behind each entry's own interval
        fig.add_trace(go.Scatter(x=names, y=effects, mode="markers", marker={"opacity": 0}, name="joint 95%",
                                 error_y={"type": "data", "symmetric": False, "color": "#aaa",
                                          "array": [e.joint_high - e.effect for e in entries],
                                          "arrayminus": [e.effect - e.joint_low for e in entries]}))
    fig.add_trace(go.Scatter(x=names, y=effects, mode="markers", name="own 95%",
                             error_y={"type": "data", "symmetric": False, "array": [e.high - e.effect for e in entries],
                                      "arrayminus": [e.effect - e.low for e in entries]}))
    statistic = entries[0].statistic if entries else ""
    fig.update_layout(title=f"{ranking.proxy} proxy: {statistic} (95% intervals), best first",
                      xaxis_title="direction and pole", yaxis_title="effect (larger is better)", showlegend=joint)
    fig.add_hline(y=0, line_dash="dot")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{e.effect:+.4f}</td><td>[{e.low:+.4f}, {e.high:+.4f}]</td>"
        f"<td>{'yes' if e.significant else 'no'}</td>"
        + (f"<td>[{e.joint_low:+.4f}, {e.joint_high:+.4f}]</td><td>{'yes' if e.jointly_significant else 'no'}</td>"
           if joint else "")
        + f"<td>{e.cost_s:.1f}</td><td>{html.escape(e.evaluation)}</td></tr>"
        for name, e in zip(names, entries))
    notes = "".join(f"<p class=\"muted\">{html.escape(n)}</p>" for n in ranking.notes)
    baseline = html.escape(json.dumps(ranking.baseline, default=str))
    joint_head = "<th>joint 95% interval</th><th>above 0 (joint)</th>" if joint else ""
    return ("<section id=\"ranking\"><h2>Which directions help</h2>"
            f"<p>Proxy <b>{html.escape(ranking.proxy)}</b>, metric <b>{html.escape(ranking.metric)}</b>; "
            f"baseline: <code>{baseline}</code>. An effect is marked when its whole 95% interval lies above 0; "
            f"{html.escape(ranking.multiplicity_note)}.</p>" + notes + figs.div(fig, "ranking-plot") +
            "<table class=\"matches\"><tr><th>pole</th><th>effect</th><th>95% interval</th><th>above 0 (own)</th>"
            + joint_head + "<th>cost (s)</th><th>evaluation</th></tr>" + rows + "</table></section>")


def render_report(run: ProfileRun, dirs, *, shown: torch.Tensor, scatter: tuple[int, int] | None = (0, 1),
                  comparison=None, ranking=None, excerpt_chars: int = 240, full_text_chars: int = 1500, color=None,
                  id_note: str | None = None) -> str:
    """The whole report for one run, as one HTML string: its directions (`inspection.directions`), the positions the
    scatter shows (`inspection.scatter_positions`) and, optionally, the field that colours them
    (`inspection.color_field`). No scatter without a pair of directions (`scatter` None: a basis of one)."""
    figs = Figures()
    title = f"autoskill-fast report: {run.folder.name}"
    threshold = _threshold(run)
    note = f"<p class=\"muted\">{html.escape(id_note)}</p>" if id_note else ""
    body = [f"<h1>{html.escape(title)}</h1>", _warnings_section(run),
            "<section id=\"metadata\"><h2>Run</h2>" + meta_table(run) + "</section>",
            "<section id=\"variance\"><h2>Explained variance</h2>" + _scree(figs, run) + "</section>",
            _composition(figs, run, dirs)]
    if ranking is not None:
        body.append(_ranking_section(figs, ranking))
    if scatter is not None:
        body.append("<section id=\"scatter-section\"><h2>Corpus on two directions</h2>"
                    + _scatter(figs, run, dirs, scatter, shown, color) + "</section>")
    body += ["<section id=\"directions\"><h2>Directions</h2>" + note + "<div class=\"cards\">"
             + "\n".join(_card(d, excerpt_chars, full_text_chars, threshold) for d in dirs) + "</div></section>"]
    if comparison is not None:
        body.append(_comparison_section(figs, comparison))
    return page(title, [part for part in body if part])


def render_comparison_page(run_a: ProfileRun, run_b: ProfileRun, comparison) -> str:
    """A report of the comparison alone, with both runs' metadata."""
    figs = Figures()
    title = f"autoskill-fast comparison: {run_a.folder.name} vs {run_b.folder.name}"
    body = [f"<h1>{html.escape(title)}</h1>", _comparison_section(figs, comparison),
            "<section id=\"metadata\"><h2>Run A</h2>" + meta_table(run_a) + "<h2>Run B</h2>" + meta_table(run_b)
            + "</section>"]
    return page(title, body)
