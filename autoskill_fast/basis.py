"""SkillBasis: the top-k principal directions of a model's pooled activations, with what they came from.

A basis is a fitted `PrincipalComponents` (what `SkillPCA` computes) plus its provenance: the model's fingerprint
(config and weights), how features were pooled, their layout over decoder blocks, an optional per-layer scale, and
direction labels. It refuses features from another model or pooling.

On disk it is two files in one folder: `basis.safetensors` (components [k, D] fp32, eigenvalues [k],
explained_variance_ratio [k], mean [D], optional layer_scale [L]) and `basis.json` (layout, model and pooling
records, counts, labels, the solver's report, and the key of the run that made it). Components follow scikit-learn's
convention: one unit direction per row, its entry of largest magnitude positive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Sequence

import torch

from .artifacts import load_json, load_tensors, save_json, save_tensors
from .capture.fingerprint import describe_mismatch, model_mismatch
from .capture.layout import FeatureLayout, pooling_config
from .config import BadExamplePolicy, BatchingConfig, CorpusConfig, PoolingConfig
from .decomposition.components import PrincipalComponents
from .decomposition.pca import as_tensor, like_input
from .errors import AutoskillError

BASIS_TENSORS = "basis.safetensors"
BASIS_JSON = "basis.json"
FORMAT_VERSION = 2  # 2: the run key and the weights fingerprint; version 1 files load too


@dataclass
class SkillBasis:
    """Top-k skill directions: fitted principal components and where they came from."""

    pca: PrincipalComponents
    layout: FeatureLayout
    model: dict[str, Any] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)
    layer_scale: torch.Tensor | None = None  # [L] fp32 per-layer scale applied before concatenation, if any
    labels: list[str | None] | None = None
    run_key: str | None = None  # the run whose statistics it was fitted from
    scaling: str = "none"  # the fit-time feature scaling ("none", "layer", "coordinate"); its vector is pca.scale
    diagnostics: dict[str, Any] = field(default_factory=dict)  # what each direction is made of (`diagnose`)

    def __post_init__(self):
        if self.pca.components.dtype != torch.float32:  # a basis keeps fp32 directions, in memory as on disk
            self.pca = replace(self.pca, components=self.pca.components.to(torch.float32))
        if self.pca.feature_dim != self.layout.feature_dim:
            raise AutoskillError(f"basis components have {self.pca.feature_dim} dims but the layout says "
                                 f"{self.layout.feature_dim}")
        if self.labels is None:
            self.labels = [None] * self.k
        if len(self.labels) != self.k:
            raise AutoskillError(f"basis has {self.k} directions but {len(self.labels)} labels")

    # ---- the fitted attributes (scikit-learn's names) ----------------------------------------------------------------
    @property
    def k(self) -> int:
        return self.pca.k

    @property
    def feature_dim(self) -> int:
        return self.pca.feature_dim

    @property
    def components_(self) -> torch.Tensor:
        return self.pca.components

    @property
    def eigenvalues_(self) -> torch.Tensor:
        """The covariance's eigenvalues: the variance each direction explains (scikit-learn's explained_variance_)."""
        return self.pca.explained_variance

    explained_variance_ = eigenvalues_

    @property
    def explained_variance_ratio_(self) -> torch.Tensor:
        return self.pca.explained_variance_ratio

    @property
    def mean_(self) -> torch.Tensor:
        return self.pca.mean

    @property
    def n_samples_(self) -> int:
        return self.pca.n_samples

    @property
    def total_variance_(self) -> float:
        return self.pca.total_variance

    @property
    def solver(self) -> dict[str, Any]:
        return self.pca.solver

    # ---- use -------------------------------------------------------------------------------------------------------
    def project(self, features_nd: torch.Tensor) -> torch.Tensor:
        """Centered projections (x - mean) @ components.T -> [N, k] fp32, on the features' device (numpy for
        numpy)."""
        x = as_tensor(features_nd, "features")
        return like_input(self.pca.transform(x.to(torch.float32) if x.dtype == torch.float64 else x), features_nd)

    def cosine(self, features_nd: torch.Tensor) -> torch.Tensor:
        """The paper's score: cosine of the raw (uncentered) feature with each direction -> [N, k] fp32 (numpy for
        numpy)."""
        return like_input(self.pca.cosine(as_tensor(features_nd, "features")), features_nd)

    def activation_direction(self, i: int) -> torch.Tensor:
        """Direction i in the units of the pooled activations: the direction divided by the fit-time feature scale
        (a step of alpha along it moves the scaled feature by alpha * u); [D] fp64."""
        return self.direction(i).to(torch.float64) * self.pca.inverse_scale()

    def direction(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.k:
            raise AutoskillError(f"direction {i} out of range: the basis has {self.k} directions (0..{self.k - 1})")
        return self.components_[i]

    def layer_chunks(self, i: int) -> dict[int, torch.Tensor]:
        """Direction i split by layer: {layer_id: [H]}."""
        return self.layout.split(self.direction(i))

    @property
    def pooling_config(self) -> PoolingConfig:
        """The pooling options that produce this basis's features."""
        return pooling_config(self.pooling)

    def features(self, model, tokenizer, texts: Sequence[str] | CorpusConfig, *,
                 batching: BatchingConfig | None = None, on_bad_example: BadExamplePolicy = "error"):
        """Pooled features of texts as this basis needs them (its pooling, its layer scale), in memory; refuses a
        model other than the one the basis was made from. Returns `capture.features.PooledFeatures`."""
        from .capture.features import pooled_features
        from .capture.fingerprint import fingerprint

        self.check_model(fingerprint(model, ""), what=f"the {type(model).__name__} given")
        return pooled_features(model, tokenizer, texts, pooling=self.pooling_config, batching=batching,
                               layer_scale=self.layer_scale, on_bad_example=on_bad_example)

    def check_model(self, model: dict[str, Any], *, what: str = "this model") -> None:
        """Refuse another model than the one this basis was made from (config and weights; never the folder name)."""
        key = model_mismatch(self.model, model)
        if key is not None:
            raise AutoskillError(f"basis was made from model {self.model.get('name')!r} but {what} differs: "
                                 f"{describe_mismatch(key, self.model, model)}; profile this model first")

    def digest(self) -> str:
        """A hash of the directions and of what maps features onto them (mean, scalings): a refit changes it. Hashed
        in fp32, as a basis is stored, so a basis and its saved copy agree."""
        h = hashlib.sha256(self.scaling.encode())
        for tensor in (self.components_, self.mean_, self.pca.scale, self.layer_scale):
            if tensor is not None:
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    @property
    def warnings(self) -> list[str]:
        return list(self.diagnostics.get("warnings", []))

    def with_labels(self, labels: list[str | None]) -> "SkillBasis":
        """A copy of this basis with new direction labels."""
        if len(labels) != self.k:
            raise AutoskillError(f"got {len(labels)} labels for a basis of {self.k} directions")
        return replace(self, labels=list(labels))

    # ---- persistence -----------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        tensors = self.pca.tensors(components_dtype=torch.float32)
        if self.layer_scale is not None:
            tensors["layer_scale"] = self.layer_scale.to(torch.float32)
        save_tensors(folder / BASIS_TENSORS, tensors)
        save_json(folder / BASIS_JSON, {
            "format_version": FORMAT_VERSION,
            "run_key": self.run_key,
            **self.pca.summary(),
            "layout": self.layout.to_json(),
            "model": self.model,
            "pooling": self.pooling,
            "scaling": self.scaling,
            "labels": self.labels,
            "diagnostics": self.diagnostics,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SkillBasis":
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        meta = load_json(folder / BASIS_JSON)
        if not isinstance(meta, dict):
            raise AutoskillError(f"{folder / BASIS_JSON}: expected a JSON object; the file is corrupted or from "
                                 "another tool")
        t = load_tensors(folder / BASIS_TENSORS, required=("components", "eigenvalues", "mean"))
        try:
            basis = cls(
                pca=PrincipalComponents.from_saved(t, meta),
                layout=FeatureLayout.from_json(meta["layout"]),
                model=meta.get("model") or {},
                pooling=meta.get("pooling") or {},
                layer_scale=t.get("layer_scale"),
                labels=meta.get("labels"),
                run_key=meta.get("run_key"),
                scaling=meta.get("scaling", "none"),
                diagnostics=meta.get("diagnostics") or {},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise AutoskillError(f"{folder / BASIS_JSON}: missing or malformed field ({e}); the file is corrupted or "
                                 "from another tool") from None
        return basis


# ---- fit-time scaling and what each direction is made of --------------------------------------------------------

CONCENTRATION_WARNING = 0.5  # a direction with more of its squared norm on one hidden coordinate is flagged
LAYER_SHARE = 0.01  # the layers named for a coordinate hold at least this share of its squared norm
# A direction whose variance is below this share of the first's is rounding, not a direction of the corpus (a corpus
# of fewer distinct examples than directions leaves eigenvalues of 1e-18 beside ones of 1e-4).
ROUNDING_VARIANCE = 1e-8


def feature_scale(variances_d: torch.Tensor | None, scaling: str, layout: FeatureLayout) -> torch.Tensor | None:
    """The fit-time feature scale [D] fp64 of a scaling: none (None), layer (each layer's chunk divided by the square
    root of its total variance) or coordinate (each feature by its standard deviation: PCA of the correlation matrix).
    A feature (or layer) with no variance gets 0: it cannot be standardized and stays out of the directions."""
    if scaling == "none":
        return None
    if scaling not in ("layer", "coordinate"):
        raise AutoskillError(f"unknown scaling {scaling!r}; choose none, layer or coordinate")
    if variances_d is None:
        raise AutoskillError(f"--scaling {scaling} needs each feature's variance, which a Frequent Directions sketch "
                             "does not keep; profile with exact statistics (no --sketch-size)")
    variances = variances_d.to(torch.float64).cpu()
    if scaling == "coordinate":
        spread = variances
    else:
        spread = torch.empty_like(variances)
        for j in range(len(layout.layer_ids)):
            columns = layout.layer_slice(j)
            spread[columns] = variances[columns].sum()
    return torch.where(spread > 0, spread.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(spread))


def block_ranges(values: list[int]) -> str:
    """[10, 11, 12, 15] -> "10-12, 15"."""
    runs = [[v for _, v in group] for _, group in groupby(enumerate(sorted(values)), lambda p: p[1] - p[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def diagnose(basis: SkillBasis, variances_d: torch.Tensor | None) -> dict[str, Any]:
    """Per direction: its weight per layer (share of its squared norm in each layer's chunk) and its concentration (the
    share of its squared norm on the single largest hidden coordinate, summed over layers; which coordinate and
    layers). Per hidden coordinate: its variance (summed over layers) relative to the median coordinate's (the ten
    largest). Warnings for directions that are mostly one coordinate (above `CONCENTRATION_WARNING`), and for those
    whose variance is rounding (below `ROUNDING_VARIANCE` of the first's)."""
    layout = basis.layout
    n_layers, hidden = len(layout.layer_ids), layout.hidden_size
    directions, warnings = [], []
    for i in range(basis.k):
        u2 = basis.direction(i).to(torch.float64).reshape(n_layers, hidden).pow(2)
        total = float(u2.sum()) or 1.0
        per_coordinate = u2.sum(0) / total
        coordinate = int(per_coordinate.argmax())
        share = float(per_coordinate[coordinate])
        column = u2[:, coordinate]
        layers = [layout.layer_ids[j] for j in range(n_layers) if column[j] >= LAYER_SHARE * column.sum()]
        directions.append({"layer_weights": (u2.sum(1) / total).tolist(), "concentration": share,
                           "coordinate": coordinate, "coordinate_layers": layers})
        if share > CONCENTRATION_WARNING:
            remedy = ("refit with --scaling coordinate" if basis.scaling != "coordinate"
                      else "even after standardizing, one coordinate dominates: inspect its examples")
            warnings.append(f"direction {i} is {100 * share:.0f}% hidden coordinate {coordinate} (blocks "
                            f"{block_ranges(layers)}): an outlier activation, not a skill; {remedy}")
    eigenvalues = basis.eigenvalues_.to(torch.float64)
    if basis.k and not eigenvalues[0] > 0:
        warnings.append("the features do not vary over the corpus: every direction is rounding")
    elif basis.k:
        rounding = (eigenvalues <= ROUNDING_VARIANCE * eigenvalues[0]).nonzero().flatten().tolist()
        if rounding:
            many = len(rounding) > 1
            warnings.append(f"direction{'s' if many else ''} {block_ranges(rounding)} explain{'' if many else 's'} at "
                            f"most {ROUNDING_VARIANCE:g} of direction 0's variance: rounding, not directions of the "
                            f"corpus (fewer distinct examples than directions?); fit again with -k {rounding[0]}")
    result: dict[str, Any] = {"directions": directions, "warnings": warnings,
                              "concentration_warning": CONCENTRATION_WARNING}
    if variances_d is not None:
        per_coordinate = variances_d.to(torch.float64).cpu().reshape(n_layers, hidden).sum(0)
        median = float(per_coordinate.median())
        ratios = per_coordinate / max(median, torch.finfo(torch.float64).tiny)
        top = torch.argsort(ratios, descending=True)[:10]
        result["coordinate_variance"] = {"median": median,
                                         "largest": [[int(h), float(ratios[h])] for h in top.tolist()]}
    return result
