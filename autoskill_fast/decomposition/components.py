"""The solved principal components of streaming statistics: `fit_components` solves them, `PrincipalComponents`
holds them (components, variances, mean, the fit-time feature scale) and maps rows onto them and back.

Shared by `SkillPCA` (any rows) and `SkillBasis` (a model's pooled features). Conventions are scikit-learn's PCA's;
see `decomposition.pca`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AutoskillError
from .linalg import EighConvergenceWarning, project

FP64_TOL_FLOOR = 1e-12  # fp64 products: the tightest residual (relative to the top eigenvalue) asked of Krylov


@dataclass(frozen=True)
class PrincipalComponents:
    """The top-k directions of a covariance and the variance they explain: what a PCA fit produces.

    With a feature `scale` s, they are the directions of diag(s) C diag(s) (s = 1 / standard deviation: the
    correlation matrix): a row x is centered, then multiplied by s, before it is projected."""

    components: torch.Tensor  # [k, D], orthonormal rows with canonical signs
    explained_variance: torch.Tensor  # [k] fp64, the (scaled) covariance's eigenvalues (ddof = 1), descending
    mean: torch.Tensor  # [D] fp64, in the rows' own units
    n_samples: int
    total_variance: float  # the (scaled) covariance's trace (ddof = 1)
    solver: dict[str, Any] = field(default_factory=dict)
    scale: torch.Tensor | None = None  # [D] fp64 feature scale, or None

    def __post_init__(self):
        k, d = self.components.shape
        if self.explained_variance.shape != (k,) or self.mean.shape != (d,):
            raise AutoskillError(f"principal components disagree in shape: components {tuple(self.components.shape)}, "
                                 f"variances {tuple(self.explained_variance.shape)}, mean {tuple(self.mean.shape)}")
        if self.scale is not None and self.scale.shape != (d,):
            raise AutoskillError(f"a feature scale of shape {tuple(self.scale.shape)} for {d} features")

    @property
    def k(self) -> int:
        return self.components.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.components.shape[1]

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        if self.total_variance <= 0:
            return torch.zeros_like(self.explained_variance)
        return self.explained_variance / self.total_variance

    @property
    def singular_values(self) -> torch.Tensor:
        return (self.explained_variance.clamp_min(0) * (self.n_samples - 1)).sqrt()

    def scaled_components(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """components * scale [k, D]: ((x - mean) * scale) @ components.T is (x - mean) @ scaled_components.T."""
        components = self.components.to(dtype)
        return components if self.scale is None else components * self.scale.to(dtype)

    def transform(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Centered (and scaled) projections ((x - mean) * scale) @ components.T -> [N, k], fp32 (fp64 for fp64
        input), on x's device."""
        self._check_dim(x_nd)
        work = torch.float64 if x_nd.dtype == torch.float64 else torch.float32
        return project(x_nd, self.mean.to(x_nd.device, work), self.scaled_components(work).to(x_nd.device))

    def inverse_transform(self, z_nk: torch.Tensor) -> torch.Tensor:
        """Back from scores to rows: (z @ components) / scale + mean -> [N, D] (0 where the scale is 0)."""
        if z_nk.ndim != 2 or z_nk.shape[1] != self.k:
            raise AutoskillError(f"scores of shape {tuple(z_nk.shape)} do not match the {self.k} components")
        work = torch.float64 if z_nk.dtype == torch.float64 else torch.float32
        rows = z_nk.to(work) @ self.components.to(z_nk.device, work)
        if self.scale is not None:
            rows = rows * self.inverse_scale().to(z_nk.device, work)
        return rows + self.mean.to(z_nk.device, work)

    def inverse_scale(self) -> torch.Tensor:
        """1 / scale [D] fp64 (0 where the scale is 0: a feature left out of the fit); all ones without a scale."""
        if self.scale is None:
            return torch.ones(self.feature_dim, dtype=torch.float64)
        return torch.where(self.scale > 0, 1.0 / self.scale.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(self.scale))

    def cosine(self, x_nd: torch.Tensor) -> torch.Tensor:
        """The paper's score: cosine of each raw (uncentered, scaled) row with each direction -> [N, k] fp32."""
        self._check_dim(x_nd)
        x = x_nd.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale.to(x.device, torch.float32)
        norms = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return (x @ self.components.to(x.device, torch.float32).T) / norms

    def _check_dim(self, x_nd: torch.Tensor) -> None:
        if x_nd.ndim != 2 or x_nd.shape[1] != self.feature_dim:
            raise AutoskillError(f"rows of shape {tuple(x_nd.shape)} do not match the {self.feature_dim} dims of "
                                 "the components")

    # ---- persistence (inside a SkillPCA or SkillBasis file) ---------------------------------------------------------
    def tensors(self, *, components_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        components = self.components if components_dtype is None else self.components.to(components_dtype)
        tensors = {"components": components.contiguous(), "eigenvalues": self.explained_variance.to(torch.float64),
                   "explained_variance_ratio": self.explained_variance_ratio.to(torch.float64),
                   "mean": self.mean.to(torch.float64)}
        if self.scale is not None:
            tensors["feature_scale"] = self.scale.to(torch.float64)
        return tensors

    def summary(self) -> dict[str, Any]:
        return {"k": self.k, "feature_dim": self.feature_dim, "n_samples": self.n_samples,
                "total_variance": self.total_variance, "solver": self.solver}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "PrincipalComponents":
        return cls(tensors["components"], tensors["eigenvalues"].to(torch.float64), tensors["mean"].to(torch.float64),
                   int(meta["n_samples"]), float(meta["total_variance"]), dict(meta.get("solver") or {}),
                   tensors.get("feature_scale"))


def fit_components(stats, k: int, *, tol: float = 1e-6, dtype: torch.dtype | None = None,
                   scale: torch.Tensor | None = None) -> PrincipalComponents:
    """The top-k principal components of streamed statistics (`decomposition.statistics.Statistics`), of the features
    multiplied by `scale` [D] when given."""
    stats.flush()
    rank_bound = min(stats.n - 1, stats.dim)
    if k > rank_bound:
        advice = f"ask for {rank_bound} or fewer" if rank_bound >= 1 else "add at least 2 examples"
        raise AutoskillError(f"k={k} is more directions than the data has: {stats.n} examples in {stats.dim} dims give "
                             f"at most {rank_bound}; {advice}")
    total_variance = stats.total_variance(scale=scale)
    if not math.isfinite(total_variance):
        raise AutoskillError("the statistics are not finite: the features' squares overflowed float64 (values near "
                             "1e154 or beyond); divide the features by a constant (the directions do not change)")
    requested = dtype
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EighConvergenceWarning)
        result = stats.top_eigenpairs(k, tol=tol, dtype=dtype, scale=scale)
    stalled = [w for w in caught if issubclass(w.category, EighConvergenceWarning)]
    if stalled and dtype != torch.float64 and stats.device.type == "cpu":
        # fp32 products stop near 1e-7 of the largest eigenvalue, which may be short of tol for a steep spectrum:
        # the fp64 sums on the CPU allow fp64 products (2.4x slower), which reach it.
        dtype = torch.float64
        result = stats.top_eigenpairs(k, tol=tol, dtype=dtype, scale=scale)
    else:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if dtype == torch.float64 and "krylov" in result.method:
        # Krylov residuals are relative to the top eigenvalue, so the k-th is only known to tol * lambda_0. fp64
        # products can do better: solve again with tol scaled by the spread of the top-k, so that every eigenvalue is
        # within tol of itself (scikit-learn's PCA to that precision), down to FP64_TOL_FLOOR.
        spread = float(result.eigenvalues[-1]) / max(float(result.eigenvalues[0]), torch.finfo(torch.float64).tiny)
        tight = max(tol * spread, FP64_TOL_FLOOR)
        if float(result.residuals.max()) > tight:
            result = stats.top_eigenpairs(k, tol=tight, dtype=dtype, scale=scale)
    seconds = time.perf_counter() - t0
    return PrincipalComponents(
        # canonical signs already (topk_eigh's rule); in the dtype asked for, whichever solver (fp64 exact for small
        # D, an fp64 retry) gave them
        components=result.eigenvectors.T.to("cpu", requested or result.eigenvectors.dtype).contiguous(),
        explained_variance=result.eigenvalues.to(torch.float64).cpu(),
        mean=stats.mean.cpu(),
        n_samples=stats.n,
        total_variance=total_variance,
        solver={"method": result.method, "tol": tol, "max_residual": float(result.residuals.max()), "seconds": seconds},
        scale=None if scale is None else scale.to(torch.float64).cpu(),
    )
