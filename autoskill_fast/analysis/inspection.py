"""Seeing what each direction means: pole examples, labeling prompts, labels read back, and the HTML report.

For every direction: its explained variance, what it is made of (its weight per layer and its concentration on one
hidden coordinate, from the basis's diagnostics), and the examples at both ends, by the centered projection and by
the paper's cosine of the raw feature with the direction. `labeling_prompts` turns the poles into one contrastive
prompt per direction for any LLM; `read_labels` reads the answers back into the report and the basis metadata. The
corpus is read once, for the pole examples and, with `color_by`, the field that colours the scatter's examples. The
HTML itself is drawn in `report_html.py`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import save_jsonl, save_text
from ..basis import CONCENTRATION_WARNING
from ..config import ConfigError, CorpusConfig, cli
from ..data.corpus import Record
from ..errors import AutoskillError
from ..run.folder import REPORT_HTML
from ..run.ranking import RANKING_JSON, Ranking
from ..run.reading import ProfileRun, excerpt, fetch_records, load_run, record_text
from .comparison import compare_runs
from .ranking import SCORE_KINDS, pole_positions

PROMPT_EXAMPLE_CHARS = 700  # per example in a labeling prompt: enough to see the content, short enough for 5 + 5
REPORT_TEXT_CHARS = 1500  # per example in the report's expandable full text


def parse_pair(spec: str) -> tuple[int, int]:
    """"0,1" -> (0, 1)."""
    try:
        first, second = (int(p) for p in spec.split(","))
    except ValueError:
        raise AutoskillError(f"cannot read {spec!r}; give two direction indices, e.g. 0,1") from None
    return first, second


N_POLE = 50  # examples per pole in a comparison's overlaps, by default


@dataclass
class InspectConfig:
    """What `inspect` shows and writes."""

    run: str
    """The profile's output folder."""
    html: str | None = None
    """Where to write the HTML report; default <run>/report.html."""
    no_html: bool = False
    """Write no HTML report (the terminal summary and the other files only)."""
    n_examples: int = field(default=5, metadata=cli(short="-n"))
    """Examples at each end of each direction."""
    scatter: tuple[int, int] | None = field(default=None, metadata=cli(parse=parse_pair, metavar="I,J", shown="0,1"))
    """The two directions of the report's scatter plot (default 0,1; no scatter for a basis of one direction)."""
    labeling_prompts: str | None = None
    """Write one contrastive labeling prompt per direction to this JSONL file."""
    labels: str | None = None
    """Read direction labels from this file (JSONL, JSON or one label per line) into the report and the basis."""
    compare: str | None = None
    """Another profile of the same corpus (another model, or another run): adds the compare section."""
    n_pole: int = N_POLE
    """For compare: examples per pole in the Jaccard overlaps."""
    corpus: str | None = None
    """Read the records from this path instead of the one recorded in run.json."""
    excerpt_chars: int = 240
    """Characters of each example shown on its line of a card (the full text unfolds below it)."""
    max_points: int = 5000
    """At most this many examples in the scatter plot (an even subsample, plus the poles of its two directions)."""
    color_by: str | None = None
    """Colour the scatter's examples by this field of their records (a.b reaches a nested field): a legend for
    categories, a colour scale for numbers."""

    def __post_init__(self):
        owner = "InspectConfig"
        if self.n_examples <= 0:
            raise ConfigError(owner, "n_examples", f"must be positive, got {self.n_examples}")
        if self.scatter is not None:
            if len(self.scatter) != 2 or self.scatter[0] == self.scatter[1]:
                raise ConfigError(owner, "scatter", f"needs two different directions, got {self.scatter}")
            self.scatter = (int(self.scatter[0]), int(self.scatter[1]))
        if self.max_points < 2:
            raise ConfigError(owner, "max_points", f"must be at least 2, got {self.max_points}")
        if self.excerpt_chars < 10:
            raise ConfigError(owner, "excerpt_chars", f"must be at least 10, got {self.excerpt_chars}")
        if self.color_by is not None and not self.color_by.strip():
            raise ConfigError(owner, "color_by", "needs a field name, e.g. category")
        if self.color_by is not None and self.no_html:
            raise ConfigError(owner, "color_by", "colours the HTML report's scatter; drop no_html (--no-html)")
        for name in ("html", "scatter"):
            if getattr(self, name) is not None and self.no_html:
                raise ConfigError(owner, name, "is for the HTML report, which no_html (--no-html) leaves out; drop one")
        if self.n_pole <= 0:
            raise ConfigError(owner, "n_pole", f"must be positive, got {self.n_pole}")
        if self.compare is None and self.n_pole != N_POLE:
            raise ConfigError(owner, "n_pole", "sizes the poles of a comparison (compare, --compare); there is none")


@dataclass
class Example:
    id: str
    row: int
    score: float
    text: str


@dataclass
class Direction:
    """One direction: its explained variance, what it is made of, and its pole examples by each kind of score."""

    index: int
    label: str | None
    explained_variance: float
    explained_variance_ratio: float
    cumulative_ratio: float
    poles: dict[str, dict[str, list[Example]]] = field(default_factory=dict)  # {"projection"|"cosine": {"top"|"bottom": [...]}}
    layer_weights: list[float] | None = None  # share of its squared norm per layer of the layout (None: not diagnosed)
    concentration: float | None = None  # share of its squared norm on its largest hidden coordinate, over layers
    coordinate: int | None = None  # that coordinate
    coordinate_layers: list[int] = field(default_factory=list)  # the blocks that carry it


@dataclass
class ColorField:
    """A corpus field's value for each example the scatter shows (`values` lacks an example whose record has none)."""

    name: str
    positions: torch.Tensor  # [M] int64: positions into the run's scores, ascending
    values: dict[int, Any]  # position -> the field's value


def directions(run: ProfileRun, n: int, corpus: str | None = None) -> list[Direction]:
    """Every direction of the run with its n top and n bottom examples (ids, scores, texts), reading the corpus once."""
    poles = _pole_positions(run, n)
    records = _read(run, _needed(poles), corpus)
    return _directions(run, poles, records, run.corpus_config(corpus))


def _pole_positions(run: ProfileRun, n: int) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    return {kind: pole_positions(getattr(run.scores, kind), n) for kind in SCORE_KINDS}


def _needed(poles) -> set[int]:
    return {p for top, bottom in poles.values() for lists in (top, bottom) for ps in lists for p in ps}


def _read(run: ProfileRun, positions: set[int], corpus: str | None) -> dict[int, Record]:
    """The records at these positions of the run's scores, by position, in one pass over the corpus."""
    rows = {int(run.scores.row[p]): p for p in positions}
    records = fetch_records(run.corpus_config(corpus), {r: run.scores.ids[p] for r, p in rows.items()})
    return {p: records[r] for r, p in rows.items()}


def _directions(run: ProfileRun, poles, records: dict[int, Record], config: CorpusConfig) -> list[Direction]:
    basis, scores = run.basis, run.scores
    evr = basis.explained_variance_ratio_.to(torch.float64)
    cumulative = torch.cumsum(evr, 0)
    texts = {p: record_text(records[p], config) for p in _needed(poles)}
    diagnosed = basis.diagnostics.get("directions") or []
    if len(diagnosed) != basis.k:
        diagnosed = [{}] * basis.k  # a basis fitted before diagnostics existed
    result = []
    for i in range(basis.k):
        made_of = diagnosed[i]
        d = Direction(i, basis.labels[i], float(basis.eigenvalues_[i]), float(evr[i]), float(cumulative[i]),
                      layer_weights=made_of.get("layer_weights"), concentration=made_of.get("concentration"),
                      coordinate=made_of.get("coordinate"),
                      coordinate_layers=list(made_of.get("coordinate_layers") or []))
        for kind, (top, bottom) in poles.items():
            values = getattr(scores, kind)
            d.poles[kind] = {end: [Example(scores.ids[p], int(scores.row[p]), float(values[p, i]), texts[p]) for p in ps]
                             for end, ps in (("top", top[i]), ("bottom", bottom[i]))}
        result.append(d)
    return result


def scatter_positions(n: int, max_points: int) -> torch.Tensor:
    """The examples the report's scatter shows: an even subsample of at most max_points, as ascending positions."""
    return torch.linspace(0, n - 1, min(n, max_points)).round().to(torch.int64).unique()


def field_value(data: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(found, value) of a record's field: the key itself, else a dotted path into nested objects ("meta.source")."""
    if name in data:
        return True, data[name]
    node: Any = data
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def color_field(name: str, positions: torch.Tensor, records: dict[int, Record], corpus_path: str) -> ColorField:
    """The field's value for each shown example; an error naming the field when no shown record has it."""
    values = {}
    for p in positions.tolist():
        found, value = field_value(records[p].data, name)
        if found and value is not None:
            values[p] = value
    if not values:
        sample = records[int(positions[0])].data
        raise AutoskillError(f"{corpus_path}: none of the {len(positions)} records in the scatter has a field "
                             f"{name!r} (the first one has {', '.join(sorted(map(str, sample))) or 'no fields'}); "
                             "pass one of its fields to --color-by")
    return ColorField(name, positions, values)


def labeling_prompts(dirs: list[Direction], *, by: str = "projection", chars: int = PROMPT_EXAMPLE_CHARS) -> list[dict[str, Any]]:
    """One contrastive prompt per direction: its top (A) and bottom (B) examples, asking for an "A vs B" label."""
    prompts = []
    for d in dirs:
        top, bottom = d.poles[by]["top"], d.poles[by]["bottom"]
        group_a = "\n".join(f"[A{j + 1}] {excerpt(e.text, chars)}" for j, e in enumerate(top))
        group_b = "\n".join(f"[B{j + 1}] {excerpt(e.text, chars)}" for j, e in enumerate(bottom))
        prompt = (
            "A language model's internal representations separate the examples below along one direction "
            f"(direction {d.index}, {100 * d.explained_variance_ratio:.2f}% of the variance over the corpus). "
            "Group A holds the examples furthest along one side, group B those furthest along the other.\n\n"
            f"Group A:\n{group_a}\n\nGroup B:\n{group_b}\n\n"
            "What skill, task or property distinguishes group A from group B? Answer with one short label of the "
            'form "<A> vs <B>" (a few words per side), and nothing else.'
        )
        prompts.append({"direction": d.index, "prompt": prompt, "messages": [{"role": "user", "content": prompt}],
                        "top_ids": [e.id for e in top], "bottom_ids": [e.id for e in bottom]})
    return prompts


def read_labels(path: str | Path, k: int) -> list[str | None]:
    """Direction labels from a file, as a list of k (None where a direction has none).

    Accepted: JSONL with {"direction": i, "label": "..."} per line (answers to the labeling prompts, other keys
    ignored), a JSON list of k labels or a JSON object {"i": "label"}, or plain text with one label per line.
    """
    path = Path(path)
    if not path.is_file():
        raise AutoskillError(f"{path}: labels file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as corpora may have
    except UnicodeDecodeError as e:
        raise AutoskillError(f"{path}: not valid UTF-8 at byte {e.start} ({e.reason}); save the labels as UTF-8") from None
    labels: list[str | None] = [None] * k

    def put(index: Any, label: Any, where: str) -> None:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise AutoskillError(f"{where}: direction {index!r} is not an integer") from None
        if not 0 <= i < k:
            raise AutoskillError(f"{where}: direction {i} out of range: the basis has {k} directions (0..{k - 1})")
        if label is not None and not isinstance(label, str):
            raise AutoskillError(f"{where}: the label of direction {i} must be text, got {type(label).__name__}")
        labels[i] = (label.strip() or None) if isinstance(label, str) else None

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: a label may hold U+2028
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise AutoskillError(f"{where}: malformed JSON ({e.msg}); expected {{\"direction\": i, \"label\": \"...\"}}") from None
            if not isinstance(item, dict) or "direction" not in item or "label" not in item:
                raise AutoskillError(f"{where}: expected {{\"direction\": i, \"label\": \"...\"}}")
            put(item["direction"], item["label"], where)
    elif suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise AutoskillError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(obj, list):
            if len(obj) != k:
                raise AutoskillError(f"{path}: {len(obj)} labels for a basis of {k} directions")
            for i, label in enumerate(obj):
                put(i, label, f"{path} item {i}")
        elif isinstance(obj, dict):
            for index, label in obj.items():
                put(index, label, f"{path} key {index!r}")
        else:
            raise AutoskillError(f"{path}: expected a JSON list of labels or an object {{\"i\": \"label\"}}")
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # blank lines at the end label nothing (one within: no label)
            lines.pop()
        if len(lines) > k:
            raise AutoskillError(f"{path}: {len(lines)} lines of labels for a basis of {k} directions")
        for i, line in enumerate(lines):
            put(i, line, f"{path}:{i + 1}")
    return labels


@dataclass
class InspectResult:
    directions: list[Direction]
    html: Path | None = None
    prompts: Path | None = None
    labels_saved: bool = False
    comparison: Any = None


def inspect(config: InspectConfig) -> InspectResult:
    """Pole examples of every direction, and the files asked for: HTML report, labeling prompts, labels saved."""
    run = load_run(config.run)
    scatter = config.scatter or ((0, 1) if run.basis.k > 1 else None)  # one direction: no plane to show
    for i in scatter or ():
        run.basis.direction(i)  # range check, with the basis's own message
    if scatter is None and config.color_by:
        raise AutoskillError("--color-by colours the report's scatter on two directions, and this basis has one")
    result = InspectResult([])
    if config.labels:
        run.basis = run.basis.with_labels(read_labels(config.labels, run.basis.k))
        run.basis.save(run.folder)
        result.labels_saved = True
    corpus = run.corpus_config(config.corpus)
    report = None if config.no_html else Path(config.html) if config.html else run.folder / REPORT_HTML
    if config.labeling_prompts:
        run.check_output(config.labeling_prompts, "--labeling-prompts", corpus)
        if report is not None and Path(config.labeling_prompts).resolve() == report.resolve():
            raise AutoskillError(f"--labeling-prompts {config.labeling_prompts} is where the report goes; write the "
                                 "prompts to another file (or --no-html)")
    if report is not None:
        run.check_output(report, "--html", corpus, report=True)
    poles = _pole_positions(run, config.n_examples)
    shown = scatter_positions(run.n, config.max_points)
    records = _read(run, _needed(poles) | (set(shown.tolist()) if config.color_by else set()), config.corpus)
    result.directions = _directions(run, poles, records, corpus)
    color = color_field(config.color_by, shown, records, corpus.path) if config.color_by else None
    if config.labeling_prompts:
        result.prompts = save_jsonl(config.labeling_prompts, labeling_prompts(result.directions))
    if config.compare:
        result.comparison = compare_runs(run, load_run(config.compare), n_pole=config.n_pole)
    if not config.no_html:
        from .report_html import render_report

        html = render_report(run, result.directions, shown=shown, scatter=scatter, comparison=result.comparison,
                             ranking=_current_ranking(run), excerpt_chars=config.excerpt_chars,
                             full_text_chars=REPORT_TEXT_CHARS,
                             color=color, id_note=_id_note(run, records))
        result.html = save_text(report, html)
    return result


def _current_ranking(run: ProfileRun) -> Ranking | None:
    """The run's ranking.json for the report, if it ranks this basis; one of a basis since refitted is left out, with
    a warning (select and steer refuse it too)."""
    if not (run.folder / RANKING_JSON).is_file():
        return None
    ranking = Ranking.load(run.folder)
    try:
        ranking.check_basis(run.basis, run.folder / RANKING_JSON)
    except AutoskillError as e:
        warnings.warn(f"{e}; the report leaves it out", stacklevel=2)
        return None
    return ranking


def _id_note(run: ProfileRun, records: dict[int, Record]) -> str | None:
    """Where the report's example ids come from, in one line (None when the run recorded no corpus options)."""
    stored = run.record.corpus_config if run.record is not None else None
    if stored is None:
        return None
    if stored.get("id_field"):
        return f"ids: the corpus's {stored['id_field']!r} field"
    note = "ids: corpus row numbers (the profile had no --id-field)"
    fields = {key for record in records.values() for key in record.data}
    named = sorted(f for f in fields if f.lower() in ("id", "uid", "_id", "qid", "example_id"))
    if named:
        note += f"; the records have {named[0]!r}: profile with --id-field {named[0]} to see it here"
    return note


def format_directions(dirs: list[Direction], *, limit: int = 8, per_end: int = 2, chars: int = 80,
                      threshold: float = CONCENTRATION_WARNING) -> str:
    """A short terminal summary: the first `limit` directions with a few examples at each end (by projection), and
    which of them are mostly one hidden coordinate (above `threshold` of their squared norm)."""
    lines = []
    for d in dirs[:limit]:
        label = f"  {d.label}" if d.label else ""
        outlier = ""
        if d.concentration is not None and d.concentration > threshold:
            outlier = f"  [{100 * d.concentration:.0f}% hidden coordinate {d.coordinate}: an outlier, not a skill]"
        lines.append(f"direction {d.index}: {100 * d.explained_variance_ratio:.2f}% of variance "
                     f"(cumulative {100 * d.cumulative_ratio:.1f}%){label}{outlier}")
        for end, sign in (("top", "+"), ("bottom", "-")):
            for e in d.poles["projection"][end][:per_end]:
                lines.append(f"  {sign} {e.score:+9.3f}  [{e.id}] {excerpt(e.text, chars)}")
    if len(dirs) > limit:
        lines.append(f"... {len(dirs) - limit} more directions in the report")
    return "\n".join(lines)
