"""SteeringVector: what to add to the output of each decoder block, and the model it belongs to.

A basis direction u is a unit vector over the concatenated pooled outputs of the blocks in the basis's layout. As a
steering vector it is split back into per-block chunks, and `coefficient * u_j` is added to the output of block
`layer_ids[j]` at every position (the paper: coefficient = alpha = 0.5). Because mean and last-token pooling are
linear in the hidden states, adding `v_j` to every position of block j moves block j's pooled feature by exactly
`v_j`; the later blocks' features move as well (see "What alpha means" below).

Per-layer scaling. A basis profiled with `--layer-scaling pilot` lives in scaled space: feature chunk j is
`layer_scale[j] * pooled_j`. To move the feature by `coefficient * u`, the hidden states must move by
`coefficient * u_j / layer_scale[j]`, so by default (`unscale=True`) chunks are divided by the scale: alpha keeps
its meaning "distance along the direction in feature space". `unscale=False` uses the raw chunks instead. A basis
made with `--layer-scaling l2` normalises every example's per-layer vector, which no fixed factor undoes: its chunks
are used as they are, and a warning says so. A basis fitted with a feature scaling (`fit --scaling layer|coordinate`)
has its directions in scaled feature space: the vector uses `basis.activation_direction`, the direction divided by
the scale, so that steering by alpha moves the scaled feature by alpha along the direction (always, whatever
`unscale` says: the fit-time scale is part of what the direction means).

What alpha means in the model. The chunk of block j is added to that block's output at every position, and the
residual stream carries it into every later block: the pooled features of the later blocks move too, so the
direction's score moves by more than alpha (measured on the README main job's basis of the default model, blocks
1-28: 11.1 alpha for direction 0, 9.4 alpha for direction 5, against score standard deviations of 82 and 48). With
`unit="std"` alpha counts the direction's standard deviations on the profiled corpus (sqrt of its eigenvalue),
which compares across directions and models; the effect on the score is measured, not assumed, by `rank --proxy
steer`.

On disk a vector is two files in one folder: `steering_vector.safetensors` (one fp32 [H] tensor per block, named
`layer.{id}`) and `steering_vector.json` (the model fingerprint, the blocks, and the recipe it was made from).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..artifacts import load_json, load_tensors, save_json, save_tensors
from ..basis import SkillBasis
from ..capture.fingerprint import describe_mismatch, model_mismatch
from ..errors import AutoskillError

VECTOR_TENSORS = "steering_vector.safetensors"
VECTOR_JSON = "steering_vector.json"
FORMAT_VERSION = 1


def _direction_index(value: Any, k: int) -> int:
    """A direction's index (a Python, numpy or torch integer) checked against the basis's k directions."""
    try:
        index = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        index = None
    if index is None:
        raise AutoskillError(f"a direction is an integer index of the basis, got {value!r} (alpha is a keyword: "
                             "from_basis(basis, 0, alpha=...))")
    if not 0 <= index < k:
        raise AutoskillError(f"direction {index} is out of range: the basis has {k} directions, 0 to {k - 1}")
    return index


@dataclass
class SteeringVector:
    """Per-block additions {layer_id: [H] fp32}, the fingerprint of the model they belong to, and their recipe."""

    chunks: dict[int, torch.Tensor]
    model: dict[str, Any] = field(default_factory=dict)
    terms: list[dict[str, Any]] = field(default_factory=list)
    """The recipe: one entry per basis direction used, with its signed coefficient (kept through the algebra)."""

    def __post_init__(self):
        if not self.chunks:
            raise AutoskillError("a steering vector needs at least one layer")
        chunks = {}
        for layer, chunk in self.chunks.items():
            if int(layer) < 0:
                raise AutoskillError(f"layer ids of a steering vector must be non-negative, got {layer}")
            chunks[int(layer)] = chunk.detach().to(torch.float32).reshape(-1).cpu()
        sizes = {c.numel() for c in chunks.values()}
        if len(sizes) != 1:
            raise AutoskillError(f"steering vector chunks have different sizes {sorted(sizes)}")
        if "hidden_size" in self.model and sizes != {int(self.model["hidden_size"])}:
            raise AutoskillError(f"steering vector chunks have {sizes.pop()} dims but the model's hidden size is "
                                 f"{self.model['hidden_size']}")
        self.chunks = dict(sorted(chunks.items()))

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_basis(cls, basis: SkillBasis, directions: int | Sequence[int], *, alpha: float = 0.5, sign: int = 1,
                   weights: Sequence[float] | None = None, layers: Iterable[int] | None = None,
                   unscale: bool = True, unit: str = "norm", source: str | None = None) -> "SteeringVector":
        """`sign * alpha * sum_i weights[i] * s_i * u_{directions[i]}`, split by the basis's layer layout.

        unit: "norm" (s_i = 1: alpha is measured on the unit-norm concatenated direction, as in the paper) or "std"
        (s_i = the direction's standard deviation on the profiled corpus, sqrt of its eigenvalue: alpha = 1 adds one
        typical spread along it, whatever the model's activation scale; the score moves by more, as the residual
        stream carries each block's chunk into the later blocks). `layers` keeps only those
        blocks (the others are not steered); `source` names the basis in the recipe.
        """
        if unit not in ("norm", "std"):
            raise AutoskillError(f"unit must be norm or std, got {unit!r}")
        if sign not in (1, -1):
            raise AutoskillError(f"sign must be +1 or -1, got {sign}")
        scalar = isinstance(directions, numbers.Real) or getattr(directions, "ndim", None) == 0
        directions = [_direction_index(i, basis.k) for i in ([directions] if scalar else list(directions))]
        if not directions:
            raise AutoskillError("give at least one basis direction")
        weights = [1.0] * len(directions) if weights is None else [float(w) for w in weights]
        if len(weights) != len(directions):
            raise AutoskillError(f"got {len(weights)} weights for {len(directions)} directions")
        if not math.isfinite(float(alpha)) or not all(math.isfinite(w) for w in weights):
            raise AutoskillError(f"alpha and weights must be finite numbers, got alpha {alpha} and weights {weights}")
        combined = torch.zeros(basis.feature_dim, dtype=torch.float64)
        terms = []
        for i, w in zip(directions, weights):
            scale = float(basis.eigenvalues_[int(i)].clamp_min(0).sqrt()) if unit == "std" else 1.0
            coefficient = sign * float(alpha) * w * scale
            combined += coefficient * basis.activation_direction(int(i))
            terms.append({"basis": source, "direction": int(i), "label": basis.labels[int(i)],
                          "coefficient": coefficient, "alpha": sign * float(alpha) * w, "unit": unit})
        chunks = {layer: chunk for layer, chunk in basis.layout.split(combined).items()}
        if unscale and basis.layer_scale is not None:
            scale = basis.layer_scale.to(torch.float64)
            chunks = {layer: chunks[layer] / scale[j] for j, layer in enumerate(basis.layout.layer_ids)}
        elif unscale and basis.pooling.get("layer_scaling") == "l2":
            warnings.warn("this basis was made with l2 layer scaling, which no fixed factor undoes: the steering "
                          "chunks are the basis direction's own, so alpha is measured against unit-norm layer "
                          "features, not hidden-state units", stacklevel=2)
        model = {**basis.model, "hidden_size": basis.layout.hidden_size}
        vector = cls(chunks, model, terms)
        return vector.restrict(layers) if layers is not None else vector

    def restrict(self, layers: Iterable[int]) -> "SteeringVector":
        """The same vector on the given blocks only."""
        keep = {int(i) for i in layers}
        missing = sorted(keep - set(self.chunks))
        if missing:
            raise AutoskillError(f"the steering vector has no chunk for blocks {missing}; it covers {self.layer_ids}")
        return SteeringVector({i: c for i, c in self.chunks.items() if i in keep}, dict(self.model),
                              [dict(t) for t in self.terms])

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def layer_ids(self) -> list[int]:
        return list(self.chunks)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.chunks.values())).numel()

    def norm(self) -> float:
        """Euclidean norm of the concatenated chunks."""
        return float(torch.stack([c.double().pow(2).sum() for c in self.chunks.values()]).sum().sqrt())

    def check_model(self, model_fp: dict[str, Any], *, what: str = "this model") -> None:
        """Refuse a model other than the one the vector was made for (config and weights; never the folder name)."""
        key = model_mismatch(self.model, model_fp)
        if key is not None:
            raise AutoskillError(f"the steering vector was made for model {self.model.get('name')!r} but {what} differs: "
                                 f"{describe_mismatch(key, self.model, model_fp)}; build the vector from a basis "
                                 "profiled on this model")
        num_layers = model_fp.get("num_layers")
        if num_layers is not None and max(self.chunks) >= int(num_layers):
            raise AutoskillError(f"the steering vector steers block {max(self.chunks)} but {what} has {num_layers}")

    # ---- algebra ---------------------------------------------------------------------------------------
    def _combine(self, other: "SteeringVector", other_sign: float) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.hidden_size != other.hidden_size:
            raise AutoskillError(f"cannot combine steering vectors of hidden sizes {self.hidden_size} and "
                                 f"{other.hidden_size}")
        key = model_mismatch(self.model, other.model)
        if key is not None:
            raise AutoskillError(f"cannot combine steering vectors of different models "
                                 f"({describe_mismatch(key, self.model, other.model)})")
        chunks = {i: c.clone() for i, c in self.chunks.items()}
        for i, c in other.chunks.items():
            chunks[i] = chunks[i] + other_sign * c if i in chunks else other_sign * c
        terms = [dict(t) for t in self.terms]
        terms += [{**t, "coefficient": other_sign * t["coefficient"]} for t in other.terms]
        return SteeringVector(chunks, {**other.model, **self.model}, terms)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0)

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> "SteeringVector":
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        s = float(scalar)
        return SteeringVector({i: s * c for i, c in self.chunks.items()}, dict(self.model),
                              [{**t, "coefficient": s * t["coefficient"]} for t in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> "SteeringVector":
        if not isinstance(scalar, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(scalar))

    def __neg__(self) -> "SteeringVector":
        return self * -1.0

    def digest(self) -> str:
        """A hash of what the vector adds (its blocks and their fp32 values): equal digests steer identically."""
        h = hashlib.sha256()
        for i in self.layer_ids:
            h.update(f"layer.{i}:".encode())
            h.update(self.chunks[i].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    # ---- persistence -----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_tensors(folder / VECTOR_TENSORS, {f"layer.{i}": c for i, c in self.chunks.items()})
        save_json(folder / VECTOR_JSON, {"format_version": FORMAT_VERSION, "layer_ids": self.layer_ids,
                                         "hidden_size": self.hidden_size, "norm": self.norm(),
                                         "model": self.model, "terms": self.terms})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SteeringVector":
        """Load from a vector folder, or from a baked model folder (which keeps its vector in `steering/`)."""
        folder = Path(folder)
        if folder.is_file():
            if folder.name != VECTOR_JSON:
                raise AutoskillError(f"{folder}: is a file, not a steering vector (a folder with {VECTOR_JSON}, made "
                                     "by `autoskill-fast steer`)")
            folder = folder.parent
        if not (folder / VECTOR_JSON).is_file() and (folder / "steering" / VECTOR_JSON).is_file():
            folder = folder / "steering"
        meta = load_json(folder / VECTOR_JSON)
        try:
            layer_ids = [int(i) for i in meta["layer_ids"]]
            tensors = load_tensors(folder / VECTOR_TENSORS, required=tuple(f"layer.{i}" for i in layer_ids))
            vector = cls({i: tensors[f"layer.{i}"] for i in layer_ids}, meta.get("model", {}), meta.get("terms", []))
        except KeyError as e:
            raise AutoskillError(f"{folder / VECTOR_JSON}: missing field {e}; the file is corrupted or from another "
                                 "tool") from None
        if vector.hidden_size != int(meta.get("hidden_size", vector.hidden_size)):
            raise AutoskillError(f"{folder / VECTOR_TENSORS}: chunks disagree with the recorded hidden size; the file "
                                 "is corrupted")
        return vector

    def __repr__(self) -> str:
        return (f"SteeringVector(model={self.model.get('name')!r}, layers={self.layer_ids}, "
                f"hidden_size={self.hidden_size}, norm={self.norm():.4g})")
