"""The feature layout (which blocks, concatenated in which order) and the record of how features were pooled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import PoolingConfig
from ..errors import AutoskillError


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


def resolve_layers(layers: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
    """Layer indices (negative ones count from the end); default: blocks 1 .. L-2, the paper's recipe."""
    if layers is None:
        if num_layers < 3:
            return tuple(range(num_layers))
        return tuple(range(1, num_layers - 1))
    resolved = []
    for layer in layers:
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise AutoskillError(f"layer {layer} out of range: the model has {num_layers} decoder blocks "
                                 f"(0..{num_layers - 1})")
        resolved.append(index)
    if len(set(resolved)) != len(resolved):
        raise AutoskillError(f"the layers name a block twice: {list(layers)} are blocks {resolved}")
    return tuple(resolved)


# The pooling options that change what a feature means (not how fast it was computed); a basis refuses features
# pooled any other way.
POOLING_MEANING = ("mode", "first_token", "layer_ids", "layer_scaling")


def pooling_record(pooling: PoolingConfig, layout: FeatureLayout, tokenizer, max_length: int | None) -> dict[str, Any]:
    """How features were pooled, as stored with a basis (`max_length`: the resolved truncation)."""
    return {
        "mode": pooling.mode,
        "first_token": pooling.first_token,
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "layer_ids": list(layout.layer_ids),
        "layer_scaling": pooling.layer_scaling,
        "max_length": max_length,
    }


def first_token_rule(record: dict[str, Any]) -> str:
    """A pooling record's rule for position 0 (records of version 0.1 had `skip_bos`: drop position 0 only if BOS)."""
    if "first_token" in record:
        return record["first_token"]
    return "drop_bos" if record.get("skip_bos", True) else "keep"


def pooling_config(record: dict[str, Any]) -> PoolingConfig:
    """The pooling options that reproduce a stored pooling record."""
    return PoolingConfig(mode=record.get("mode", "mean"), layers=tuple(record["layer_ids"]) if record.get("layer_ids")
                         else None, first_token=first_token_rule(record),
                         layer_scaling=record.get("layer_scaling", "none"), max_length=record.get("max_length"))


def check_same_pooling(expected: dict[str, Any], actual: dict[str, Any], *, what: str,
                       against: str = "the basis was made", remedy: str = "use the basis's pooling options") -> None:
    """Refuse features pooled otherwise than `expected` (a pooling record), naming the options that differ:
    "{against} with another pooling than the {what} (...); {remedy}"."""
    mine, theirs = _meaning(expected), _meaning(actual)
    differ = [k for k in POOLING_MEANING if mine[k] != theirs[k]]
    if differ:
        detail = ", ".join(f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in differ)
        why = ""
        if "first_token" in differ and "drop_bos" in (mine["first_token"], theirs["first_token"]):
            why = (" (bases made before version 0.2 left position 0 out of the mean only when it was a BOS token; now "
                   "it is always left out, as in the seed code: profile again, or pass --first-token drop_bos to use "
                   "the old rule)")
        raise AutoskillError(f"{against} with another pooling than the {what} ({detail}){why}; {remedy}")


def _meaning(record: dict[str, Any]) -> dict[str, Any]:
    return {**{k: record.get(k) for k in POOLING_MEANING}, "first_token": first_token_rule(record)}
