"""Pooled features on disk: sharded safetensors files, each with its rows' corpus positions and ids.

`features/shard-00000.safetensors` holds `features` [n, D] (the chosen dtype) and `row` [n] int64, with the ids and the
run key in its metadata. Shards are written in processing order; a resumed run removes shards written after its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..artifacts import load_tensors, save_row_pieces
from ..errors import AutoskillError

# A shard is written when its buffered rows reach either bound, so the writer's memory is small whatever the corpus
# (a buffer of 64 MiB took 131k rows at D = 128, which a 100k corpus never filled and a 1M one did).
SHARD_BYTES = 64 << 20
SHARD_ROWS = 8192


def shard_path(folder: Path, index: int, prefix: str = "") -> Path:
    """A shard's file: `shard-00003.safetensors`, or `shard-r1-00003.safetensors` for rank 1 of a multi-process run."""
    return folder / f"shard-{prefix}{index:05d}.safetensors"


class FeatureWriter:
    """Buffers rows and writes a shard when the buffer is full (SHARD_BYTES or SHARD_ROWS) or on flush(); a shard is
    written from the buffered pieces, never concatenated in memory."""

    def __init__(self, folder: str | Path, *, dtype: torch.dtype = torch.float32, resume_shards: int = 0,
                 metadata: dict[str, str] | None = None, prefix: str = ""):
        self.folder = Path(folder)
        self.metadata = dict(metadata or {})
        self.dtype = dtype
        self.shards = resume_shards
        self.prefix = prefix
        self.folder.mkdir(parents=True, exist_ok=True)
        for index in range(resume_shards, 1 << 30):  # written after the checkpoint this run resumes from
            stale = shard_path(self.folder, index, prefix)
            if not stale.exists():
                break
            stale.unlink()
        self._rows: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []
        self._ids: list[str] = []
        self._bytes = 0

    def add(self, features_nd: torch.Tensor, rows_n: torch.Tensor, ids: list[str]) -> None:
        chunk = features_nd.to("cpu", self.dtype)
        self._rows.append(chunk)
        self._positions.append(rows_n.cpu().long())
        self._ids.extend(ids)
        self._bytes += chunk.numel() * chunk.element_size()
        if self._bytes >= SHARD_BYTES or len(self._ids) >= SHARD_ROWS:
            self.flush()

    def flush(self) -> int:
        """Write buffered rows as one shard; return the number of shards on disk."""
        if self._rows:
            save_row_pieces(shard_path(self.folder, self.shards, self.prefix),
                            {"features": self._rows, "row": self._positions},
                            metadata={**self.metadata, "ids": json.dumps(self._ids)})
            self.shards += 1
            self._rows, self._positions, self._ids, self._bytes = [], [], [], 0
        return self.shards


def iter_feature_shards(folder: str | Path) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(features [n, D], row [n], ids) per shard, in order; one shard in memory at a time."""
    folder = Path(folder)
    paths = sorted(folder.glob("shard-*.safetensors"))
    if not paths:
        raise AutoskillError(f"{folder}: no feature shards; profile with --save-features to keep them")
    for path in paths:
        tensors = load_tensors(path, required=("features", "row"))
        with safe_open(str(path), framework="pt") as f:
            ids = json.loads((f.metadata() or {}).get("ids", "null") or "null")
        if ids is None or len(ids) != tensors["row"].numel():
            raise AutoskillError(f"{path}: ids missing or inconsistent with the rows; the shard is corrupted")
        yield tensors["features"], tensors["row"], ids
