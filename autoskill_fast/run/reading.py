"""Reading a profile run folder back: its basis, its scores, its record, and the original records it scored.

Everything downstream of a profile (select, inspect, compare) starts here. run.json is optional: without it a folder
with `basis.*` and `scores.*` still works, but the corpus must then be named explicitly to reach the records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..basis import BASIS_TENSORS, SkillBasis
from ..config import CorpusConfig
from ..data.corpus import Record, content_identity, fingerprint, iter_records
from ..data.rendering import render
from ..errors import AutoskillError, BadExampleError
from .folder import REPORT_HTML, RUN_FILES, RUN_JSON, RunFolder
from .ranking import RANKING_JSON
from .record import RunRecord
from .scores import Scores


@dataclass
class ProfileRun:
    """A profile's outputs. `scores` are sorted by corpus row, so a position in them is also a row order."""

    folder: Path
    basis: SkillBasis
    scores: Scores
    record: RunRecord | None  # run.json, when the folder has one
    _checked: set[str] = field(default_factory=set, repr=False)  # corpus paths found to be the file profiled

    @property
    def n(self) -> int:
        return len(self.scores.ids)

    def corpus_config(self, corpus_path: str | None = None) -> CorpusConfig:
        """How the profile read its corpus (from run.json), optionally at another path (a moved corpus)."""
        if self.record is None and corpus_path is None:
            raise AutoskillError(f"{self.folder}: no corpus recorded in {RUN_JSON}; pass the corpus path (--corpus)")
        moved = {} if corpus_path is None else {"path": str(corpus_path)}
        config = self.record.corpus_reading(**moved) if self.record is not None else CorpusConfig(**moved)
        self._check_rows_match(config)
        return config

    def _check_rows_match(self, config: CorpusConfig) -> None:
        """Records without an id field are found by their row, which no id can confirm: the corpus must then be the
        file profiled, byte for byte (its sha256 in run.json; hashed once per path)."""
        profiled = self.record.corpus if self.record is not None else {}
        if config.id_field is not None or not profiled.get("sha256") or config.path in self._checked:
            return
        now = fingerprint(config)
        if now["sha256"] != profiled["sha256"]:
            raise AutoskillError(f"{config.path}: is not the corpus this run profiled ({content_identity(now)}; "
                                 f"profiled: {content_identity(profiled)}); its records have no id field, so they are "
                                 "found by row, and these rows hold other records: pass the original corpus "
                                 "(--corpus) or profile again")
        self._checked.add(config.path)

    def check_output(self, path: str | Path, option: str, corpus: CorpusConfig | None = None, *,
                     report: bool = False) -> None:
        """Refuse an output file that is what this run reads: its corpus (`corpus`, else the one it profiled; a file
        in a corpus folder too, which would make the folder another corpus) or one of its own files (its report
        excepted, for `report`: inspect's --html rewrites it)."""
        out = Path(path)
        corpus_path = corpus.path if corpus is not None else (self.record.corpus.get("path") if self.record else None)
        if corpus_path and (same_file(out, Path(corpus_path)) or
                            Path(corpus_path).is_dir() and out.resolve().is_relative_to(Path(corpus_path).resolve())):
            raise AutoskillError(f"{option} {out} is {'in ' if Path(corpus_path).is_dir() else ''}the corpus "
                                 f"{self.folder} read; write it to another file")
        for name in (*RUN_FILES, RANKING_JSON):
            if not (report and name == REPORT_HTML) and same_file(out, self.folder / name, before_written=True):
                raise AutoskillError(f"{option} {out} is {name} of the run {self.folder}; write it to another file")

    def basis_fingerprint(self) -> dict[str, Any]:
        """What identifies the basis used: its model, k, sample count and a hash of its tensors file."""
        digest = hashlib.sha256((self.folder / BASIS_TENSORS).read_bytes()).hexdigest()
        return {"folder": str(self.folder.resolve()), "sha256": digest, "k": self.basis.k,
                "n_samples": self.basis.n_samples_, "model": self.basis.model}


    @property
    def model_name(self) -> str | None:
        return self.basis.model.get("name") or (self.record.model.get("name") if self.record else None)


def load_run(folder: str | Path) -> ProfileRun:
    """Load a run folder written by `profile` (basis, scores and, when present, run.json), each artifact checked to
    belong to the folder's run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AutoskillError(f"{folder}: not a folder; pass the output folder of `autoskill-fast profile`")
    run = RunFolder(folder)
    record = run.record() if run.has_record() else None
    basis = run.basis(record)
    scores = run.scores(record).sorted_by_row()
    if scores.k != basis.k:
        raise AutoskillError(f"{folder}: scores have {scores.k} directions but the basis has {basis.k}; the scores are "
                             "from another fit: rerun `autoskill-fast project` against this basis")
    if scores.basis_digest is not None and scores.basis_digest != basis.digest():
        raise AutoskillError(f"{folder}: its scores were made by an earlier basis of this run (a fit stopped before "
                             f"rescoring); rerun `autoskill-fast fit {folder} -k {basis.k}`")
    return ProfileRun(folder, basis, scores, record)


def fetch_records(config: CorpusConfig, wanted: dict[int, str]) -> dict[int, Record]:
    """The original records at the given rows, checking each one still has the id the profile scored.

    `wanted` maps corpus row -> expected id. Reading stops after the last wanted row.
    """
    found: dict[int, Record] = {}
    if not wanted:
        return found
    last = max(wanted)
    for record in iter_records(config, unreadable=True):  # a line the profile skipped as unreadable is not wanted
        if record.row in wanted:
            if record.problem is not None:
                raise AutoskillError(f"{record.where}: {record.problem}, but the profile scored a record at this row "
                                     f"(id {wanted[record.row]!r}); the corpus changed since it was profiled: pass "
                                     "the original corpus (--corpus) or profile again")
            if record.id != wanted[record.row]:
                unknown = ("; with no id field known (a run folder without run.json records none), a record's id "
                           "here is its row number" if config.id_field is None else "")
                raise AutoskillError(
                    f"{record.where}: this record has id {record.id!r} but the profile scored {wanted[record.row]!r} "
                    "at this row; the corpus changed since it was profiled: pass the original corpus (--corpus) "
                    f"or profile again{unknown}")
            found[record.row] = record
        if record.row >= last:
            break
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise AutoskillError(f"{config.path}: has no record at row {missing[0]} (id {wanted[missing[0]]!r}), which the "
                             "profile scored; the corpus is shorter than when it was profiled: pass the original corpus")
    return found


def record_text(record: Record, config: CorpusConfig) -> str:
    """The text of a record as a person reads it. Chat records become 'role: content' lines (no tokenizer needed)."""
    if config.messages_field is not None:
        messages = record.data.get(config.messages_field)
        if isinstance(messages, list):
            return "\n".join(f"{m.get('role', '?')}: {m.get('content') or ''}" for m in messages if isinstance(m, dict))
        return ""
    try:
        return render(record, config).text
    except BadExampleError:
        return ""


def iter_texts(config: CorpusConfig, rows: Iterable[int], ids: list[str]) -> list[str]:
    """Texts of the given rows (ascending, with their ids), reading the corpus once."""
    rows = list(rows)
    records = fetch_records(config, dict(zip(rows, ids)))
    return [record_text(records[r], config) for r in rows]


def excerpt(text: str, chars: int) -> str:
    """The start of a text on one line, cut at `chars` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: max(chars - 1, 0)].rstrip() + "…"


def same_file(a: Path, b: Path, *, before_written: bool = False) -> bool:
    """Whether two paths name one file (a link too); with `before_written`, also two that will (one path, resolved)."""
    try:
        return a.samefile(b)
    except OSError:
        return before_written and a.resolve() == b.resolve()
