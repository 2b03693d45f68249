"""Corpus readers (JSONL, Parquet, plain text, a `datasets.save_to_disk` folder), stable ids and the corpus fingerprint.

`iter_records` yields the original records unchanged, each with its row and id (what `select` writes back out);
`rendering.render` turns one into the text the model reads. Every error names the file and the line or row.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..config import CorpusConfig
from ..errors import AutoskillError


@dataclass
class Record:
    """One original record and where it came from."""

    row: int  # 0-based position among the corpus's records
    id: str  # the id field's value, or the row number ("row N" when the line, and so its id, could not be read)
    data: dict[str, Any]
    where: str  # "file:line" or "file row N", for messages
    problem: str | None = None  # why the line could not be read (data is then empty): see `iter_records`


@dataclass(frozen=True)
class _Unreadable:
    """A line that cannot be read as a record, and why: a bad example rather than a broken file."""

    reason: str


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")
DATASETS_CACHE = "cache-*.arrow"  # what `datasets` writes into a folder it loaded when mapping it: not the data


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return "datasets"
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
            raise AutoskillError(f"{path}: a DatasetDict; point --corpus at one split's folder "
                                 f"({', '.join(str(path / name) for name in splits) or 'none found'})")
        raise AutoskillError(f"{path}: a folder corpus must be a `datasets.save_to_disk` folder (state.json missing)")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if suffix.endswith(".parquet"):
        return "parquet"
    if suffix.endswith((".txt", ".text")):
        return "text"
    raise AutoskillError(f"{path}: unknown corpus format; use .jsonl, .parquet, .txt or a datasets folder, or pass --format")


def iter_records(config: CorpusConfig, *, unreadable: bool = False) -> Iterator[Record]:
    """The corpus's records in file order, each with its row number and id (at most `config.limit`; only the dev set
    or the pool of a split when asked).

    A line that cannot be read as a record (malformed JSON, not an object, not UTF-8, no value in the id field) is an
    error naming it; with `unreadable`, it is a record of its own instead, with `problem` saying why (its row kept, so
    the rows after it keep theirs), for the bad-example policy to count or refuse like any other bad example."""
    if config.split == "all":
        yield from _all_records(config, unreadable)
        return
    dev = split_dev_ids((_split_id(r, config) for r in _all_records(config, unreadable)), config.dev_size,
                        config.split_seed)
    for record in _all_records(config, unreadable):
        if (record.id in dev) == (config.split == "dev"):
            yield record


def _split_id(record: Record, config: CorpusConfig) -> str:
    """The id a split decides by; a line whose id could not be read belongs to neither part knowably."""
    if record.problem is not None and config.id_field is not None:
        raise AutoskillError(f"{record.where}: {record.problem}; without its id, which part of the --split it is in "
                             "cannot be known: fix or remove the line")
    return record.id


def split_dev_ids(ids: Iterable[str], dev_size: int, seed: int) -> set[str]:
    """The dev set of a deterministic split: the `dev_size` ids with the smallest sha256(seed, id)."""
    return set(heapq.nsmallest(dev_size, ids, key=lambda i: hashlib.sha256(f"{seed}\x00{i}".encode()).digest()))


def _all_records(config: CorpusConfig, unreadable: bool) -> Iterator[Record]:
    path = Path(config.path)
    if not path.exists():
        raise AutoskillError(f"{path}: corpus file not found")
    if path.suffix.lower() in COMPRESSED:
        raise AutoskillError(f"{path}: a compressed file; decompress it first (e.g. gunzip) and pass the result")
    fmt = config.format if config.format != "auto" else detect_format(path)
    readers = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet, "datasets": _read_datasets}
    if fmt not in readers:
        raise AutoskillError(f"unknown corpus format {fmt!r}; choose one of {sorted(readers)}")
    if path.is_dir() and fmt != "datasets":
        raise AutoskillError(f"{path}: a folder, and --format {fmt} reads one file; point --corpus at a file")
    if not path.is_dir() and fmt == "datasets":
        raise AutoskillError(f"{path}: a file, and --format datasets reads a `datasets.save_to_disk` folder")
    seen_ids: dict[str, str] = {}  # only with an id field: row numbers are unique already (memory stays flat)
    for row, (where, data) in enumerate(itertools.islice(readers[fmt](path), config.limit)):  # no record past it
        if isinstance(data, dict) and config.id_field is not None and data.get(config.id_field) is None:
            missing = f"missing id field {config.id_field!r}; fields present: {sorted(data)}"
            if not seen_ids:  # the first readable record: the field is more likely misnamed than missing from all
                raise AutoskillError(f"{where}: {missing}, and no record before it has one; check --id-field")
            data = _Unreadable(missing)
        if isinstance(data, _Unreadable):
            if not unreadable:
                raise AutoskillError(f"{where}: {data.reason}; fix or remove the line")
            yield Record(row, str(row) if config.id_field is None else f"row {row}", {}, where, problem=data.reason)
            continue
        rid = _record_id(data, row, config.id_field, where)
        if config.id_field is not None:
            if rid in seen_ids:
                raise AutoskillError(f"{where}: duplicate id {rid!r} (first seen at {seen_ids[rid]}); ids must be "
                                     "unique")
            seen_ids[rid] = where
        yield Record(row, rid, data, where)


def _record_id(data: dict[str, Any], row: int, id_field: str | None, where: str) -> str:
    return str(row) if id_field is None else str(data[id_field])


def _utf8_lines(path: Path) -> Iterator[tuple[str, str | _Unreadable]]:
    """("file:line", decoded line) for each line; a line that is not UTF-8 is `_Unreadable`."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                yield where, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # without a byte-order mark
            except UnicodeDecodeError as e:
                yield where, _Unreadable(f"not valid UTF-8 ({e.reason} at byte {e.start}); the file must be UTF-8")


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | _Unreadable]]:
    for where, line in _utf8_lines(path):
        if isinstance(line, _Unreadable):
            yield where, line
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if where.endswith(":1") and line.lstrip().startswith("["):
                hint = " (a JSON array? write one object per line: JSONL)"
            yield where, _Unreadable(f"malformed JSON ({e.msg} at column {e.colno}){hint}")
            continue
        except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting deeper than Python's stack
            yield where, _Unreadable(f"JSON that Python cannot read ({e})")
            continue
        if not isinstance(data, dict):
            data = _Unreadable(f"expected a JSON object per line, got {type(data).__name__}")
        yield where, data


def _read_text(path: Path) -> Iterator[tuple[str, dict[str, Any] | _Unreadable]]:
    for where, line in _utf8_lines(path):
        yield where, line if isinstance(line, _Unreadable) else {"text": line.rstrip("\r\n")}


def _read_table_batches(path: Path, batches) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa

    row = 0
    try:
        for batch in batches:
            for data in batch.to_pylist():
                yield f"{path} row {row}", data
                row += 1
    except UnicodeDecodeError as e:
        raise AutoskillError(f"{path} row {row}: not valid UTF-8 ({e.reason}); re-encode the text columns") from None
    except (OSError, pa.ArrowException) as e:  # a damaged page or file
        raise AutoskillError(f"{path}: cannot read past row {row} ({type(e).__name__}: {e}); the file is damaged: "
                             "write it again") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise AutoskillError(f"{path}: cannot read as Parquet ({e})") from None
    yield from _read_table_batches(path, batches)


def _read_datasets(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa

    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
        files = [path / f["filename"] for f in state.get("_data_files", [])] or sorted(
            set(path.glob("*.arrow")) - set(path.glob(DATASETS_CACHE)))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise AutoskillError(f"{state_file}: not a datasets state file ({e}); save the dataset again with "
                             "save_to_disk, or point --corpus at one split's folder") from None
    if not files:
        raise AutoskillError(f"{path}: no .arrow files in this datasets folder")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise AutoskillError(f"{missing[0]}: named by {state_file.name} but missing; save the dataset again with "
                             "save_to_disk")

    def batches():
        for file in files:
            with pa.memory_map(str(file)) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except pa.ArrowInvalid:
                    reader = pa.ipc.open_file(source)
                    yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                    continue
                yield from reader

    yield from _read_table_batches(path, batches())


def fingerprint(config: CorpusConfig) -> dict[str, Any]:
    """What identifies the corpus: its content hash and how texts are made from it."""
    path = Path(config.path)
    if not path.exists():
        raise AutoskillError(f"{path}: corpus file not found")
    if config.format == "auto":
        detect_format(path)  # an unknown kind of file is told before anything is read
    digest = hashlib.sha256()
    # A datasets folder's files, but for the cache files `datasets` adds to it when a loaded copy is mapped
    files = sorted(p for p in path.rglob("*") if p.is_file() and not (p.parent == path and p.match(DATASETS_CACHE))) \
        if path.is_dir() else [path]
    size = 0
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return {
        "path": str(path.resolve()),
        "sha256": digest.hexdigest(),
        "bytes": size,
        "text_field": config.text_field,
        "template": config.template,
        "messages_field": config.messages_field,
        "id_field": config.id_field,
        "limit": config.limit,
        "split": None if config.split == "all" else {"part": config.split, "dev_size": config.dev_size,
                                                     "split_seed": config.split_seed},
        # Chat text is tokenized without the tokenizer's own special tokens (its template writes them) since this
        # key: runs from before, which had a second BOS with some tokenizers, are other runs.
        **({"special_tokens": "from the chat template"} if config.messages_field is not None else {}),
        # A file read in another format than its name says (JSON lines read as text) reads other records.
        **({"format": config.format} if config.format not in ("auto", _named_format(path)) else {}),
    }


def _named_format(path: Path) -> str | None:
    """The format a file's name (or a folder's content) says, or None when it says none."""
    try:
        return detect_format(path)
    except AutoskillError:
        return None


def same_reading(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two corpus fingerprints of the same file read with the same ids (else record "q7" of one is "7" of the other,
    and ids cannot match records)."""
    return a.get("sha256") == b.get("sha256") and a.get("id_field") == b.get("id_field")


def content_identity(fingerprint: dict[str, Any]) -> str:
    """What tells one corpus file's content from another's in its fingerprint, in words (its path is not part of it)."""
    return f"sha256 {fingerprint['sha256'][:16]}, {fingerprint['bytes']} bytes"
