"""Problems with a verifiable answer: a question, a worked solution and its gold answer, each with a stable id.

The embedded GSM8K test set is the default (the gold is what follows `####` in the solution); any JSONL, Parquet or
datasets folder works with `--question-field` / `--answer-field` (or a template for the question). `split` cuts one
problem set into a dev set and a selection pool, deterministically from the ids (the corpus's own split,
`data.corpus.split_dev_ids`), so `profile --split pool` and `eval --split dev` of one file never share an example.
Whatever trains or selects on a pool checks it is disjoint from the dev set it is evaluated on (`rank`, `select
--ranking`).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import (ConfigError, CorpusConfig, CorpusFormat, Split, check_template, cli, default_corpus_path,
                      template_fields)
from ..data.corpus import fingerprint, iter_records, split_dev_ids
from ..errors import AutoskillError

_GSM8K_GOLD = re.compile(r"####[ \t]*(\S.*?)[ \t\r]*$", re.M)  # "#### answer", to the end of its line
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,234" -> "1234"; "-3, 3" and "(1,2)" keep theirs


@dataclass
class ProblemsConfig:
    """Which problems, and which part of them."""

    path: str | None = field(default=None, metadata=cli("--corpus"))
    """JSONL, Parquet or a datasets folder of problems. Default: the embedded GSM8K test set (1,319 problems)."""
    format: CorpusFormat = "auto"
    """The file format; auto = from the suffix."""
    question_field: str = "question"
    """The field holding the problem."""
    answer_field: str = "answer"
    """The field holding the worked solution: its gold answer follows "####", or is its last \\boxed{}."""
    gold_field: str | None = None
    """The field holding the bare final answer, for a problem set that keeps it apart from the solution (MATH-500's
    and AIME's "answer"); default: the solution's "####" line, or its last \\boxed{}."""
    question_template: str | None = None
    """A template for the question over several fields, e.g. "{problem}\\n{choices}"."""
    id_field: str | None = None
    """The field holding a stable id (default: the row number)."""
    limit: int | None = None
    """Use only the first N problems (before the split)."""
    split: Split = "all"
    """all problems, or the dev set, or the selection pool (the rest) of a deterministic split by id."""
    dev_size: int = 100
    """Problems in the dev set."""
    split_seed: int = 0
    """The split's seed (independent of the sampling seed)."""

    def __post_init__(self):
        owner = "ProblemsConfig"
        if self.split not in ("all", "dev", "pool"):
            raise ConfigError(owner, "split", f"unknown value {self.split!r}; choose one of all, dev, pool")
        if self.dev_size < 1:
            raise ConfigError(owner, "dev_size", f"must be positive, got {self.dev_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(owner, "limit", f"must be positive, got {self.limit}")
        check_template(owner, "question_template", self.question_template)
        if self.path is None:
            self.path = str(default_corpus_path())
        self.path = str(self.path)

    @property
    def corpus(self) -> CorpusConfig:
        return CorpusConfig(self.path, format=self.format, id_field=self.id_field, limit=self.limit, split=self.split,
                            dev_size=self.dev_size, split_seed=self.split_seed)

    def dev_ids(self) -> set[str]:
        """The ids of this problem set's dev set (whichever part `split` chose)."""
        whole = CorpusConfig(self.path, format=self.format, id_field=self.id_field, limit=self.limit)
        # as the split itself and `profile --split` read the file: a line that cannot be read keeps its row's id
        return split_dev_ids((r.id for r in iter_records(whole, unreadable=True)), self.dev_size, self.split_seed)


@dataclass(frozen=True)
class Problem:
    id: str
    row: int
    question: str
    solution: str  # the worked solution, as the corpus has it
    gold: str  # the final answer


def gold_answer(solution: str) -> str | None:
    """The gold answer of a worked solution: its last line's "#### answer" (GSM8K), else its last
    \\boxed{} (a "#### Step 1" heading of such a solution is not its answer), else its last "#### answer" line, else
    None. A "####" answer is read as `grading.final_line_answer` reads a completion's (a number followed by words, e.g.
    "18 dollars", is the number), with thousands separators dropped; other commas are part of it. A trailing period is
    not part of an answer."""
    from .grading import extract_boxed, final_line_answer

    answers = _GSM8K_GOLD.findall(solution)
    last_line = solution.rstrip().rpartition("\n")[2]
    if answers and not _GSM8K_GOLD.search(last_line) and (boxed := extract_boxed(solution)) is not None:
        return _bare(boxed)
    if answers:
        return _THOUSANDS.sub("", final_line_answer(answers[-1]))
    boxed = extract_boxed(solution)
    return None if boxed is None else _bare(boxed)


def _bare(answer: str) -> str:
    """An answer without a trailing period ("7." is 7 at the end of a sentence)."""
    return answer.strip().removesuffix(".")


def load_problems(config: ProblemsConfig) -> list[Problem]:
    """The problems of `config` (its part of the split), in corpus order. A line that cannot be read as a record is
    left out with a warning, as `profile --on-bad-example skip` leaves it out (its row and the ids after it kept):
    fixing the file would make it another file, which a profile of it no longer matches."""
    problems, unreadable = [], []
    for record in iter_records(config.corpus, unreadable=True):
        if record.problem is not None:
            unreadable.append(f"{record.where} ({record.problem})")
            continue
        problem = problem_from_record(record, config)
        if not problem.gold:
            if config.gold_field is not None:
                raise AutoskillError(f"{record.where}: no gold answer in field {config.gold_field!r} (--gold-field)")
            raise AutoskillError(f"{record.where}: no gold answer in field {config.answer_field!r} (expected "
                                 "'#### answer' or a \\boxed{answer}); if the answer is in a field of its own, name "
                                 "it with --gold-field")
        problems.append(problem)
    if unreadable:
        warnings.warn(f"{len(unreadable)} line(s) of {config.path} cannot be read as problems and are left out: "
                      f"{unreadable[0]}", stacklevel=2)
    if not problems:
        raise AutoskillError(f"{config.path}: no problems in its {config.split} part; check --dev-size and --limit")
    return problems


def problem_from_record(record, config: ProblemsConfig) -> Problem:
    """One corpus record as a problem: its question (field or template), worked solution and gold answer ("" when the
    solution states none)."""
    data = record.data
    question = question_of(record, config)
    solution = _text_field(data, config.answer_field, record.where, "--answer-field")
    if config.gold_field is None:
        return Problem(record.id, record.row, question, solution, gold_answer(solution))
    gold = _as_text(data.get(config.gold_field))  # "" when absent: a pool example needs none
    return Problem(record.id, record.row, question, solution, _bare(gold))


def question_of(record, config: ProblemsConfig) -> str:
    """A record's question, as `eval` asks it (the question field, or the template over fields)."""
    data = record.data
    if config.question_template is not None:
        missing = [f for f in template_fields(config.question_template) if data.get(f) is None]
        if missing:
            raise AutoskillError(f"{record.where}: missing field(s) {missing} used by the question template")
        try:
            question = config.question_template.format(**data)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
            raise AutoskillError(f"{record.where}: the question template cannot format this record "
                                 f"({type(e).__name__}: {e})") from None
    else:
        question = _text_field(data, config.question_field, record.where, "--question-field")
    return question


def _text_field(data: dict[str, Any], name: str, where: str, flag: str) -> str:
    value = _as_text(data.get(name))
    if not value.strip():
        state = "is missing" if name not in data else f"holds no text ({type(data[name]).__name__} {data[name]!r:.40})"
        raise AutoskillError(f"{where}: field {name!r} {state}; fields present: {sorted(data)}; name another with "
                             f"{flag}")
    return value


def _as_text(value: Any) -> str:
    """A field's text: a string as it is, a number as it reads (an answer field of 18), else ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")  # 1e-05 as 0.00001: math-verify reads "1e-05" as e - 5
    return ""


def split_record(config: ProblemsConfig, problems: list[Problem]) -> dict[str, Any]:
    """What identifies the problems evaluated: the corpus, the split, and the ids."""
    return {"corpus": fingerprint(config.corpus), "split": config.split, "dev_size": config.dev_size,
            "split_seed": config.split_seed, "count": len(problems),
            "ids_sha256": hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()}
