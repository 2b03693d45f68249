"""SkillBasis: the top-k principal directions of pooled activations, with what they came from.

On disk a basis is two files in one folder: `basis.safetensors` (components [k, D], eigenvalues [k],
explained_variance_ratio [k], mean [D], optional layer_scale [L]) and `basis.json` (layout, model and pooling
fingerprints, counts, labels). Components follow scikit-learn's convention: one unit direction per row, with a
deterministic sign (the entry of largest magnitude is positive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import load_json, load_tensors, save_json, save_tensors
from .errors import AutoskillError

BASIS_TENSORS = "basis.safetensors"
BASIS_JSON = "basis.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureLayout:
    """How one feature vector is laid out: the pooled outputs of `layer_ids` (decoder-block indices), concatenated."""

    layer_ids: tuple[int, ...]
    hidden_size: int

    def __post_init__(self):
        if not self.layer_ids:
            raise AutoskillError("a feature layout needs at least one layer")
        if self.hidden_size <= 0:
            raise AutoskillError(f"hidden_size must be positive, got {self.hidden_size}")
        object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))

    @property
    def feature_dim(self) -> int:
        return len(self.layer_ids) * self.hidden_size

    def layer_slice(self, position: int) -> slice:
        """Columns of the `position`-th layer in `layer_ids` (not the layer index itself)."""
        return slice(position * self.hidden_size, (position + 1) * self.hidden_size)

    def split(self, vector_d: torch.Tensor) -> dict[int, torch.Tensor]:
        """A concatenated [..., D] vector as {layer_id: [..., H] chunk}."""
        if vector_d.shape[-1] != self.feature_dim:
            raise AutoskillError(f"vector has {vector_d.shape[-1]} dims, layout expects {self.feature_dim}")
        return {layer: vector_d[..., self.layer_slice(j)] for j, layer in enumerate(self.layer_ids)}

    def to_json(self) -> dict[str, Any]:
        return {"layer_ids": list(self.layer_ids), "hidden_size": self.hidden_size}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "FeatureLayout":
        return cls(tuple(obj["layer_ids"]), int(obj["hidden_size"]))


def canonical_signs(components_kd: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its entry of largest magnitude is positive (first such entry on ties)."""
    idx = components_kd.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(components_kd.gather(1, idx))
    signs[signs == 0] = 1
    return components_kd * signs


@dataclass
class SkillBasis:
    """Top-k skill directions. Fitted attributes end in `_` (as in scikit-learn)."""

    components_: torch.Tensor  # [k, D] fp32, unit rows
    eigenvalues_: torch.Tensor  # [k] fp64, descending (the covariance's eigenvalues = explained variance)
    explained_variance_ratio_: torch.Tensor  # [k] fp64
    mean_: torch.Tensor  # [D] fp64
    n_samples_: int
    total_variance_: float
    layout: FeatureLayout
    model: dict[str, Any] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)
    layer_scale: torch.Tensor | None = None  # [L] fp32 per-layer scale applied before concatenation, if any
    labels: list[str | None] | None = None
    solver: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        k, d = self.components_.shape
        if d != self.layout.feature_dim:
            raise AutoskillError(f"basis components have {d} dims but the layout says {self.layout.feature_dim}")
        if self.labels is None:
            self.labels = [None] * k
        if len(self.labels) != k:
            raise AutoskillError(f"basis has {k} directions but {len(self.labels)} labels")

    @property
    def k(self) -> int:
        return self.components_.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.components_.shape[1]

    # ---- use -------------------------------------------------------------------------------------------
    def project(self, features_nd: torch.Tensor) -> torch.Tensor:
        """Centered projections (x - mean) @ components.T -> [N, k] fp32."""
        from .linalg import project

        self._check_dim(features_nd)
        device = features_nd.device  # features captured on a GPU are projected there
        return project(features_nd, self.mean_.to(device, torch.float32), self.components_.to(device))

    def cosine(self, features_nd: torch.Tensor) -> torch.Tensor:
        """The paper's score: cosine of the raw (uncentered) feature with each direction -> [N, k] fp32."""
        self._check_dim(features_nd)
        x = features_nd.to(torch.float32)
        norms = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return (x @ self.components_.to(x.device).T) / norms

    def whiten(self, scores_nk: torch.Tensor) -> torch.Tensor:
        """Scores divided by each direction's standard deviation (unit variance on the profiled corpus)."""
        std = self.eigenvalues_.clamp_min(0).sqrt().to(scores_nk.device, torch.float32)
        return scores_nk / std.clamp_min(torch.finfo(torch.float32).tiny)

    def direction(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.k:
            raise AutoskillError(f"direction {i} out of range: the basis has {self.k} directions (0..{self.k - 1})")
        return self.components_[i]

    def layer_chunks(self, i: int) -> dict[int, torch.Tensor]:
        """Direction i split by layer: {layer_id: [H]}."""
        return self.layout.split(self.direction(i))

    def check_compatible(self, model: dict[str, Any], pooling: dict[str, Any], *, what: str = "features") -> None:
        """Refuse features from another model or pooling than the one this basis was made from."""
        for key in ("name", "config_hash", "num_layers", "hidden_size"):
            if key in self.model and key in model and self.model[key] != model[key]:
                raise AutoskillError(
                    f"basis was made from model {self.model.get('name')!r} ({key}={self.model[key]!r}) but the "
                    f"{what} come from {model.get('name')!r} ({key}={model[key]!r}); profile this model first"
                )
        mine, theirs = _pooling_key(self.pooling), _pooling_key(pooling)
        if mine != theirs:
            raise AutoskillError(f"basis was made with pooling {mine} but the {what} use {theirs}; use the same pooling options")

    def _check_dim(self, features_nd: torch.Tensor) -> None:
        if features_nd.ndim != 2 or features_nd.shape[1] != self.feature_dim:
            raise AutoskillError(
                f"features of shape {tuple(features_nd.shape)} do not match the basis ({self.feature_dim} dims)"
            )

    # ---- persistence -----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        tensors = {
            "components": self.components_.to(torch.float32),
            "eigenvalues": self.eigenvalues_.to(torch.float64),
            "explained_variance_ratio": self.explained_variance_ratio_.to(torch.float64),
            "mean": self.mean_.to(torch.float64),
        }
        if self.layer_scale is not None:
            tensors["layer_scale"] = self.layer_scale.to(torch.float32)
        save_tensors(folder / BASIS_TENSORS, tensors)
        save_json(
            folder / BASIS_JSON,
            {
                "format_version": FORMAT_VERSION,
                "k": self.k,
                "feature_dim": self.feature_dim,
                "n_samples": self.n_samples_,
                "total_variance": self.total_variance_,
                "layout": self.layout.to_json(),
                "model": self.model,
                "pooling": self.pooling,
                "labels": self.labels,
                "solver": self.solver,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SkillBasis":
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        meta = load_json(folder / BASIS_JSON)
        t = load_tensors(folder / BASIS_TENSORS, required=("components", "eigenvalues", "explained_variance_ratio", "mean"))
        try:
            layout = FeatureLayout.from_json(meta["layout"])
            basis = cls(
                components_=t["components"],
                eigenvalues_=t["eigenvalues"],
                explained_variance_ratio_=t["explained_variance_ratio"],
                mean_=t["mean"],
                n_samples_=int(meta["n_samples"]),
                total_variance_=float(meta["total_variance"]),
                layout=layout,
                model=meta.get("model", {}),
                pooling=meta.get("pooling", {}),
                layer_scale=t.get("layer_scale"),
                labels=meta.get("labels"),
                solver=meta.get("solver", {}),
            )
        except KeyError as e:
            raise AutoskillError(f"{folder / BASIS_JSON}: missing field {e}; the file is corrupted or from another tool") from None
        if basis.mean_.shape != (basis.feature_dim,) or basis.eigenvalues_.shape != (basis.k,):
            raise AutoskillError(f"{folder / BASIS_TENSORS}: tensor shapes disagree with each other; the file is corrupted")
        return basis

    def with_labels(self, labels: list[str | None]) -> "SkillBasis":
        if len(labels) != self.k:
            raise AutoskillError(f"got {len(labels)} labels for a basis of {self.k} directions")
        self.labels = list(labels)
        return self


def _pooling_key(pooling: dict[str, Any]) -> dict[str, Any]:
    """The pooling options that change what a feature means (not how fast it was computed)."""
    return {k: pooling.get(k) for k in ("mode", "skip_bos", "layer_ids", "layer_scaling")}
