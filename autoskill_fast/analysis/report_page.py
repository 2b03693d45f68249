"""The page of an HTML report: its style, the plotly figures (plotly.js inlined once, so the file opens offline), a
run's metadata table, and the document around the sections (`report_html` writes those)."""

from __future__ import annotations

import html
import json

from ..errors import AutoskillError
from ..run.reading import ProfileRun

_SCALING = {"none": "none (the paper's recipe: the raw pooled features)",
            "layer": "layer (each layer's chunk divided by the square root of its total variance)",
            "coordinate": "coordinate (every feature standardized: PCA of the correlation matrix)"}

CSS = """
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
table.ex th { text-align: left; font-weight: 600; color: #57606a; padding: 2px 6px; font-size: .8rem; }
table.ex td.rank { color: #57606a; width: 2.5em; } .end { font-weight: 600; margin-top: .4rem; }
table.ex td.score { white-space: nowrap; font-variant-numeric: tabular-nums; width: 5.5em; }
table.ex td.id { white-space: nowrap; color: #57606a; max-width: 9em; overflow: hidden; text-overflow: ellipsis; }
details summary { cursor: pointer; color: #57606a; } pre { white-space: pre-wrap; font-size: .8rem; }
table.matches { border-collapse: collapse; font-size: .88rem; } table.matches td, table.matches th { padding: 2px 10px; }
section.warnings { border: 2px solid #cf222e; background: #fff5f5; border-radius: 8px; padding: .2rem 1rem .6rem; }
section.warnings h2 { border: none; color: #cf222e; margin-top: .6rem; } .warn { color: #cf222e; font-weight: 600; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
"""


class Figures:
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


def page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def meta_table(run: ProfileRun) -> str:
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
        ("scaling", _SCALING.get(basis.scaling, basis.scaling)),
    ]
    if timings.get("total_s") is not None:
        rows.append(("profile time", f"{timings['total_s']:.1f}s"))
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    full = (html.escape(json.dumps(record.to_json(), indent=1, default=str)[:200_000]) if record
            else "(no run.json in this folder)")
    return (f"<table class=\"meta\">{cells}</table>\n"
            f"<details><summary>run.json</summary><pre>{full}</pre></details>")


def index_axis(title: str, count: int) -> dict:
    """An x axis of integer indices (plotly would otherwise tick 0.5, 1.5, ... on a short range)."""
    return {"title": title, "tickmode": "linear", "tick0": 0, "dtick": max(1, count // 16)}
