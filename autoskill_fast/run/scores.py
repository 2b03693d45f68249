"""Per-example scores against a basis: centered projection and the paper's cosine, in corpus row order.

On disk: `scores.safetensors` (projection [N, k] fp32, cosine [N, k] fp32, row [N] int64) and `scores.json`
(ids, the basis's k, the run key). Row i of every tensor is the example with id `ids[i]`, at corpus row `row[i]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from ..artifacts import load_json, load_tensors, save_json, save_tensors
from ..basis import SkillBasis
from ..errors import AutoskillError

SCORES_TENSORS = "scores.safetensors"
SCORES_JSON = "scores.json"


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

    @classmethod
    def from_features(cls, basis: SkillBasis, shards: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]], *,
                      allow_empty: bool = False) -> "Scores":
        """Projection and cosine of every feature row (one shard of (features, rows, ids) in memory at a time), in
        corpus row order. No rows at all is an error unless `allow_empty` (a rank whose slice was empty)."""
        ids: list[str] = []
        rows, projections, cosines = [], [], []
        for features, row, shard_ids in shards:
            projections.append(basis.project(features).cpu())
            cosines.append(basis.cosine(features).cpu())
            rows.append(row.cpu())
            ids.extend(shard_ids)
        if not rows:
            if not allow_empty:
                raise AutoskillError("no features to score")
            empty = torch.zeros(0, basis.k)
            return cls([], torch.zeros(0, dtype=torch.int64), empty, empty.clone(), basis.run_key, basis.digest())
        return cls(ids, torch.cat(rows), torch.cat(projections), torch.cat(cosines), basis.run_key,
                   basis.digest()).sorted_by_row()

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
            raise AutoskillError(f"{folder}: no {SCORES_TENSORS}; run `autoskill-fast profile` with scores (the default) "
                                 "or `autoskill-fast project`")
        t = load_tensors(folder / SCORES_TENSORS, required=("projection", "cosine", "row"))
        meta = load_json(folder / SCORES_JSON)
        if "ids" not in meta:
            raise AutoskillError(f"{folder / SCORES_JSON}: missing 'ids'; the file is corrupted")
        return cls(list(meta["ids"]), t["row"], t["projection"], t["cosine"], meta.get("run_key"),
                   meta.get("basis_digest"))
