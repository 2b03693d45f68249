"""samples.jsonl: an evaluation's samples (or per-problem scores), appended one finished batch at a time.

Each batch's lines are appended and synced together, its last line marked `batch_complete`; after a kill, the lines of
an unfinished batch (or a line torn mid-write) are dropped on resume and that batch is generated again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from ..artifacts import atomic_file

SAMPLES_JSONL = "samples.jsonl"
T = TypeVar("T")


def batches_of(items: list[T], size: int) -> list[list[T]]:
    """The fixed partition of an evaluation's problems into batches (the unit of seeding and of resume)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The lines of samples.jsonl; a torn last line (a kill mid-write) is dropped. Lines end at "\n" only: a sample's
    text may hold U+2028 and other characters that `str.splitlines` would also break at (JSON leaves them as they are)."""
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8").split("\n"):
        if not raw:
            continue  # the end of the file
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    return lines


def rewrite_samples(path: Path, lines: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def join_in_batch_order(path: Path, parts: list[Path] = ()) -> None:
    """`path`'s lines and those of `parts` (which are then deleted) as one `path`, in batch order: what one process
    appending batch after batch writes. Stable: a batch's lines keep their order. A line already there (a kill after
    the joined file was written and before every part was deleted) is kept once. Not rewritten when already so."""
    lines = read_samples(path) + [line for part in parts for line in read_samples(part)]
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for line in lines:
        sample = (line["batch"], line["id"], line.get("sample"))
        if sample not in seen:
            seen.add(sample)
            unique.append(line)
    batches = [line["batch"] for line in unique]
    if parts or len(unique) < len(lines) or batches != sorted(batches):
        unique.sort(key=lambda line: line["batch"])
        rewrite_samples(path, unique)
    for part in parts:
        part.unlink()


def append_batch(path: Path, lines: list[dict[str, Any]]) -> None:
    """Append one batch's lines and sync: the batch is complete on disk once this returns (its last line says so)."""
    if lines:
        lines[-1]["batch_complete"] = True
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
