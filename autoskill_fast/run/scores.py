"""Per-example scores against a basis: centered projection and the paper's cosine, in corpus row order.

On disk: `scores.safetensors` (projection [N, k] fp32, cosine [N, k] fp32, row [N] int64) and `scores.json`
(ids, the basis's k, the run key). Row i of every tensor is the example with id `ids[i]`, at corpus row `row[i]`.

`Scores` holds them in memory. A job writes them without ever holding all N: `ScoreWriter` scores rows as they come
and keeps them in part files (`.scores-parts/`), each sorted by row, and `write_scores` then writes the two files in
row order, one block of rows at a time, reading from each part only the rows of that block.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from safetensors import safe_open

from ..artifacts import atomic_file, load_json, load_tensors, safetensors_header, save_json, save_tensors
from ..basis import SkillBasis
from ..errors import AutoskillError

SCORES_TENSORS = "scores.safetensors"
SCORES_JSON = "scores.json"
SCORE_PARTS_DIR = ".scores-parts"
PART_ROWS = 1 << 16  # rows per part file at most, and PART_BYTES of scores: bound the writer's memory, whatever N
PART_BYTES = 32 << 20
BLOCK_ROWS = 1 << 16  # rows written at a time by write_scores: bounds its memory


@dataclass
class Scores:
    ids: list[str]
    row: torch.Tensor  # [N] int64
    projection: torch.Tensor  # [N, k] fp32
    cosine: torch.Tensor  # [N, k] fp32
    run_key: str | None = None  # the run whose basis scored them
    basis_digest: str | None = None  # that basis itself (`SkillBasis.digest`): a refit's basis is another

    def __post_init__(self):
        n = len(self.ids)
        if not (self.row.shape == (n,) and self.projection.shape[0] == n and self.cosine.shape == self.projection.shape):
            raise AutoskillError(
                f"scores disagree in size: {n} ids, rows {tuple(self.row.shape)}, projection "
                f"{tuple(self.projection.shape)}, cosine {tuple(self.cosine.shape)}"
            )

    @property
    def k(self) -> int:
        return self.projection.shape[1]

    def sorted_by_row(self) -> "Scores":
        order = torch.argsort(self.row, stable=True)
        return Scores([self.ids[i] for i in order.tolist()], self.row[order], self.projection[order], self.cosine[order],
                      self.run_key, self.basis_digest)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_tensors(folder / SCORES_TENSORS, {"projection": self.projection.float(), "cosine": self.cosine.float(),
                                               "row": self.row.long()})
        save_json(folder / SCORES_JSON, {"k": self.k, "n": len(self.ids), "run_key": self.run_key,
                                         "basis_digest": self.basis_digest, "ids": self.ids})

    @classmethod
    def load(cls, folder: str | Path) -> "Scores":
        folder = Path(folder)
        if not (folder / SCORES_TENSORS).exists():
            raise AutoskillError(f"{folder}: no {SCORES_TENSORS}; score a run with `autoskill-fast project {folder} "
                                 f"--out {folder}` (or run `autoskill-fast profile` with scores, the default)")
        t = load_tensors(folder / SCORES_TENSORS, required=("projection", "cosine", "row"))
        meta = load_json(folder / SCORES_JSON)
        if "ids" not in meta:
            raise AutoskillError(f"{folder / SCORES_JSON}: missing 'ids'; the file is corrupted")
        for name in ("projection", "cosine"):
            finite = torch.isfinite(t[name]).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
                example = meta["ids"][bad] if bad < len(meta["ids"]) else f"row {bad}"
                raise AutoskillError(f"{folder / SCORES_TENSORS}: a non-finite {name} score for example {example!r}; "
                                     "the file is corrupted: score the run again with `autoskill-fast project`")
        return cls(list(meta["ids"]), t["row"], t["projection"], t["cosine"], meta.get("run_key"),
                   meta.get("basis_digest"))


class ScoreWriter:
    """Scores of feature rows as they come, kept in part files of at most PART_ROWS rows, each sorted by corpus row.

    Several writers (the ranks of a torchrun job) may share a folder with different prefixes. `close` returns the
    writer's part files, which `write_scores` turns into the folder's scores."""

    def __init__(self, folder: str | Path, basis: SkillBasis, *, prefix: str = ""):
        self.folder = Path(folder) / SCORE_PARTS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.basis = basis
        self.prefix = prefix
        for stale in self.folder.glob(f"part-{prefix}[0-9]*.safetensors"):  # left by an interrupted call
            stale.unlink()
        self.parts: list[Path] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]] = []
        self._rows = self._bytes = 0

    def add(self, features: torch.Tensor, rows: torch.Tensor, ids: list[str]) -> None:
        projection = self.basis.project(features).to("cpu", torch.float32)
        cosine = self.basis.cosine(features).to("cpu", torch.float32)
        self._pending.append((projection, cosine, rows.to("cpu", torch.int64), list(ids)))
        self._rows += len(ids)
        self._bytes += 2 * projection.numel() * 4
        if self._rows >= PART_ROWS or self._bytes >= PART_BYTES:
            self._write_part()

    def close(self) -> list[Path]:
        """Write what is buffered; the writer's part files, in the order written."""
        self._write_part()
        return list(self.parts)

    def _write_part(self) -> None:
        if not self._pending:
            return
        projection, cosine, rows = (torch.cat([p[i] for p in self._pending]) for i in range(3))
        ids = [i for p in self._pending for i in p[3]]
        order = torch.argsort(rows, stable=True)
        encoded = [ids[i].encode("utf-8") for i in order.tolist()]
        offsets = torch.tensor(np.cumsum([0] + [len(e) for e in encoded]), dtype=torch.int64)
        id_bytes = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8) if offsets[-1] else \
            torch.zeros(0, dtype=torch.uint8)
        path = self.folder / f"part-{self.prefix}{len(self.parts):05d}.safetensors"
        save_tensors(path, {"projection": projection[order], "cosine": cosine[order], "row": rows[order],
                            "id_offsets": offsets, "id_bytes": id_bytes})
        self.parts.append(path)
        self._pending, self._rows, self._bytes = [], 0, 0


def save_scores(folder: str | Path, basis: SkillBasis, shards: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]],
                *, allow_empty: bool = False) -> int:
    """Score every (features, rows, ids) shard and write the scores to `folder` in row order, holding one shard and one
    part in memory whatever the number of rows; returns that number."""
    writer = ScoreWriter(folder, basis)
    for features, rows, ids in shards:
        writer.add(features, rows, ids)
    return write_scores(folder, writer.close(), k=basis.k, run_key=basis.run_key, basis_digest=basis.digest(),
                        allow_empty=allow_empty)


def write_scores(folder: str | Path, parts: list[Path], *, k: int, run_key: str | None, basis_digest: str | None,
                 allow_empty: bool = False) -> int:
    """`scores.safetensors` and `scores.json` in corpus row order from ScoreWriter parts (each sorted by row), then the
    parts removed; returns the number of rows. Memory: 24 bytes per row for the order, plus one block of rows."""
    folder = Path(folder)
    part_rows = []
    for path in parts:
        with safe_open(str(path), framework="np") as f:
            part_rows.append(f.get_tensor("row"))
    starts = np.cumsum([0] + [len(r) for r in part_rows])
    n = int(starts[-1])
    if n == 0 and not allow_empty:
        raise AutoskillError("no features to score")
    rows = np.concatenate(part_rows) if part_rows else np.zeros(0, dtype=np.int64)
    order = np.argsort(rows, kind="stable")  # output position -> global index (part start + index in the part)
    del rows, part_rows
    tensors_header = safetensors_header({"projection": (torch.float32, (n, k)), "cosine": (torch.float32, (n, k)),
                                         "row": (torch.int64, (n,))})
    regions = [len(tensors_header), len(tensors_header) + 4 * n * k, len(tensors_header) + 8 * n * k]
    json_head = json.dumps({"k": k, "n": n, "run_key": run_key, "basis_digest": basis_digest}, indent=2)
    with atomic_file(folder / SCORES_TENSORS) as tensors_tmp, atomic_file(folder / SCORES_JSON) as json_tmp, \
            open(tensors_tmp, "r+b") as out, open(json_tmp, "w", encoding="utf-8") as ids_out:
        out.write(tensors_header)
        out.truncate(regions[2] + 8 * n)
        ids_out.write(json_head[:-2] + ',\n  "ids": [')
        for start in range(0, n, BLOCK_ROWS):
            block = _read_block(parts, starts, order[start:start + BLOCK_ROWS], k)
            for region, values in zip(regions, block[:3]):
                _pwrite_all(out.fileno(), values.tobytes(), region + start * values[0:1].nbytes)
            ids_out.write(("," if start else "") + ",".join("\n    " + json.dumps(i) for i in block[3]))
        ids_out.write("\n  ]\n}\n")
    shutil.rmtree(folder / SCORE_PARTS_DIR, ignore_errors=True)
    return n


def _read_block(parts: list[Path], starts: np.ndarray, block: np.ndarray, k: int):
    """(projection [B, k], cosine [B, k], row [B], ids) of the global indices `block`, in that order. A part's rows in
    a block are consecutive in the part (both are sorted by row), so each part is read as one slice, then closed (a
    mapping left open would keep its pages in the process's memory)."""
    owner = np.searchsorted(starts, block, side="right") - 1
    projection = np.empty((len(block), k), dtype=np.float32)
    cosine = np.empty_like(projection)
    row = np.empty(len(block), dtype=np.int64)
    ids: list[str | None] = [None] * len(block)
    for p in np.unique(owner):
        where = np.nonzero(owner == p)[0]
        local = block[where] - starts[p]
        lo, hi = int(local.min()), int(local.max()) + 1
        with safe_open(str(parts[p]), framework="np") as f:
            projection[where] = f.get_slice("projection")[lo:hi][local - lo]
            cosine[where] = f.get_slice("cosine")[lo:hi][local - lo]
            row[where] = f.get_slice("row")[lo:hi][local - lo]
            offsets = f.get_slice("id_offsets")[lo:hi + 1]
            text = f.get_slice("id_bytes")[int(offsets[0]):int(offsets[-1])].tobytes() if offsets[-1] > offsets[0] \
                else b""
        for w, i in zip(where.tolist(), (local - lo).tolist()):
            ids[w] = text[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]].decode("utf-8")
    return projection, cosine, row, ids


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """os.pwrite until every byte is written (one call may write less, e.g. over 2 GiB on Linux)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
