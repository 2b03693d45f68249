"""SkillPCA: a streaming, mergeable, exact PCA with scikit-learn's conventions, for any [N, D] rows.

    pca = SkillPCA(16)
    for chunk in chunks:                 # numpy or torch, CPU or CUDA, any chunking
        pca.partial_fit(chunk)
    scores = pca.transform(x)            # (x - mean_) @ components_.T, the input's type back
    pca.merge(other_pca)                 # exact: the statistics of both, as one pass over both
    pca.save("pca/"); SkillPCA.load("pca/")

Nothing here knows about language models: `SkillBasis` is a fitted `PrincipalComponents` plus where it came from.
The statistics are exact by default (`StreamingCovariance`: the block-packed upper half of the second moment, D^2 / 2
numbers, and the compiled block-Krylov solver over products with it); `sketch_size` keeps a Frequent Directions sketch
of that many rows instead (O(sketch_size * D) memory, eigenvalues within a reported bound).

Conventions, as scikit-learn's PCA: `explained_variance_` are the covariance's eigenvalues with ddof = 1,
`explained_variance_ratio_` divides them by the total variance (the covariance's trace), `singular_values_` are
sqrt(explained_variance_ * (n - 1)), and each component's entry of largest magnitude is positive (`canonical_signs`,
the rule scikit-learn >= 1.5 applies too). Rows passed in float64 are solved with float64 products (every digit
kept, every eigenvalue within tol of itself); float32 rows with float32 products over the float64 sums (residuals
near 1e-7 of the top eigenvalue).
Fitted attributes are solved when first read after new rows, and kept until more rows arrive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import load_json, load_tensors, save_json, save_tensors
from ..errors import AutoskillError, NotFittedError
from .components import PrincipalComponents, fit_components

PCA_JSON = "pca.json"
PCA_TENSORS = "pca.safetensors"
FIT_CHUNK_ELEMENTS = 1 << 24  # `fit` adds rows in chunks of about this many numbers (bounded extra memory)


def as_tensor(x: Any, what: str = "X") -> torch.Tensor:
    """A 2-D real floating torch tensor from numpy, torch or nested-list input (no copy where possible); ints become
    float64."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise AutoskillError(f"{what} is a list that is not a 2-D table of numbers ({e})") from None
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8 or not x.dtype.isnative:
            raise AutoskillError(f"{what} holds {x.dtype.str} ({x.dtype.name}) values; give real numbers in the "
                                 f"machine's byte order, e.g. np.asarray({what}, dtype=np.float64)")
        # A [1, D] or [0, D] view with a negative row stride counts as contiguous, so ascontiguousarray keeps it, and
        # torch.from_numpy refuses negative strides: copy those.
        x = torch.from_numpy(x.copy() if any(s < 0 for s in x.strides) else np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise AutoskillError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.dtype.is_complex:
        raise AutoskillError(f"{what} is complex ({x.dtype}); give real rows")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    if x.ndim != 2:
        raise AutoskillError(f"{what} must be 2-D [n_samples, n_features], got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise AutoskillError(f"{what} has no features (shape {tuple(x.shape)})")
    return x.detach()


def first_non_finite(x: torch.Tensor) -> tuple[int, int] | None:
    """(row, column) of the first NaN or Inf of x [n, D], checked in blocks of rows (no [n, D] mask at once)."""
    rows = max(1, FIT_CHUNK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        finite = torch.isfinite(x[start:start + rows]).all(dim=1)
        if not bool(finite.all()):
            row = start + int((~finite).nonzero()[0])
            return row, int((~torch.isfinite(x[row])).nonzero()[0])
    return None


def like_input(result: torch.Tensor, template: Any) -> Any:
    """`result` as the caller's type: numpy in, numpy out."""
    return result.cpu().numpy() if isinstance(template, np.ndarray) else result


def _usable_device(device: Any) -> torch.device:
    """`device` as a torch.device this torch can put a tensor on, or a one-line error."""
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, TypeError, AssertionError) as e:  # an unknown name; a device this build or machine lacks
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise AutoskillError(f"device {device!r} cannot be used here ({reason}); use device='cpu' or None (the "
                             "device of the rows)") from None
    return resolved


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class SkillPCA:
    """Streaming PCA (scikit-learn's `IncrementalPCA` interface), exact and mergeable; see the module docstring.

    n_components: directions kept. sketch_size: keep a Frequent Directions sketch of this many rows instead of the exact
    D x D statistics (at least 2 * n_components). tol: relative residual of every eigenpair (relative to the top
    eigenvalue; to each eigenvalue itself for float64 rows). device: where the statistics live (default: the device of
    the first rows).
    """

    def __init__(self, n_components: int, *, sketch_size: int | None = None, tol: float = 1e-6,
                 device: str | torch.device | None = None):
        if not _is_integer(n_components) or n_components < 1:
            raise AutoskillError(f"n_components must be a positive integer, got {n_components!r}")
        if sketch_size is not None and not _is_integer(sketch_size):
            raise AutoskillError(f"sketch_size must be an integer (rows of the sketch) or None, got {sketch_size!r}")
        if sketch_size is not None and sketch_size < 2 * n_components:
            raise AutoskillError(f"sketch_size={sketch_size} is too small for n_components={n_components}; use at "
                                 f"least {2 * n_components}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not 0 < tol < float("inf"):
            raise AutoskillError(f"tol must be a positive number, got {tol!r}")
        self.n_components = int(n_components)
        self.sketch_size = None if sketch_size is None else int(sketch_size)
        self.tol = float(tol)
        self.device = device  # as given (scikit-learn's clone compares it), resolved below
        self._device = None if device is None else _usable_device(device)
        self._reset()

    def _reset(self) -> None:
        self.stats = None  # decomposition.statistics.Statistics, made on the first rows
        self._float64 = False  # whether any rows came in float64 (then the products are float64 too)
        self._fitted: PrincipalComponents | None = None
        self._solved_for: tuple[int, float] | None = None  # (n_components, tol) of the last solve

    # ---- scikit-learn's parameters (clone, pipelines, grid search) --------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_components": self.n_components, "sketch_size": self.sketch_size, "tol": self.tol,
                "device": self.device}

    def set_params(self, **params: Any) -> "SkillPCA":
        """Change options, checked as the constructor checks them. A new n_components or tol applies at the next
        solve; a new sketch_size or device forgets the rows seen (their statistics are of another kind or place)."""
        unknown = sorted(set(params) - set(self.get_params()))
        if unknown:
            raise AutoskillError(f"SkillPCA has no parameter {unknown[0]!r}; it has {sorted(self.get_params())}")
        checked = type(self)(**{**self.get_params(), **params})
        forget = (checked.sketch_size, checked._device) != (self.sketch_size, self._device)
        self.n_components, self.sketch_size, self.tol = checked.n_components, checked.sketch_size, checked.tol
        self.device, self._device = checked.device, checked._device
        if forget:
            self._reset()
        return self

    # ---- fitting ---------------------------------------------------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None) -> "SkillPCA":
        """Add rows [n, D]. The components are solved when a fitted attribute is next read."""
        x = as_tensor(X)
        self._statistics_for(x)
        bad = first_non_finite(x)
        if bad is not None:
            raise AutoskillError(f"X holds a non-finite value (row {bad[0]}, column {bad[1]} of these rows); nothing "
                                 "of them was added")
        self._add(x)
        return self

    def fit(self, X: Any, y: Any = None) -> "SkillPCA":
        """Forget earlier rows, add X (in chunks of bounded size) and solve. Bad X leaves the earlier fit as it was."""
        x = as_tensor(X)
        bad = first_non_finite(x)
        if bad is not None:
            raise AutoskillError(f"X holds a non-finite value (row {bad[0]}, column {bad[1]}); nothing was fitted")
        if x.shape[0] == 0:
            raise AutoskillError("X has no rows; fit needs at least one")
        self._reset()
        self._statistics_for(x)
        rows = max(1, FIT_CHUNK_ELEMENTS // max(1, x.shape[1]))
        for start in range(0, x.shape[0], rows):
            self._add(x[start:start + rows])
        self.result()
        return self

    def _statistics_for(self, x: torch.Tensor) -> None:
        """Make the statistics for rows like x, or check that x has the features of those made."""
        if self.stats is None:
            self.stats = self._new_statistics(x.shape[1], self._device or x.device)
        elif x.shape[1] != self.stats.dim:
            raise AutoskillError(f"X has {x.shape[1]} features but this SkillPCA was fitted with {self.stats.dim}")

    def _add(self, x: torch.Tensor) -> None:
        if x.shape[0]:
            self.stats.update(x)
            self._float64 |= x.dtype == torch.float64
            self._fitted = None

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        return self.fit(X).transform(X)

    def merge(self, other: "SkillPCA") -> "SkillPCA":
        """Add another SkillPCA's rows (exact for exact statistics). Returns self."""
        if not isinstance(other, SkillPCA):
            raise AutoskillError(f"can only merge another SkillPCA, got {type(other).__name__}")
        if other.stats is None:
            return self
        if self.stats is None:
            self.stats = self._new_statistics(other.stats.dim, self._device or other.stats.device)
        if type(self.stats) is not type(other.stats):
            raise AutoskillError("cannot merge exact statistics with a sketch; use the same sketch_size on both sides")
        self.stats.merge(other.stats)
        self._float64 |= other._float64
        self._fitted = None
        return self

    def _new_statistics(self, dim: int, device: torch.device):
        from .statistics import SketchedCovariance, StreamingCovariance  # the kernels (and Triton) only when fitting

        if self.sketch_size is not None:
            return SketchedCovariance(dim, self.sketch_size, device=device)
        return StreamingCovariance(dim, device=device)

    def result(self) -> PrincipalComponents:
        """The fitted components (solved now if rows arrived, or n_components or tol changed, since the last solve)."""
        if self.stats is None or self.stats.n == 0:
            raise NotFittedError("this SkillPCA has seen no rows yet; call fit or partial_fit first")
        solved_for = (self.n_components, self.tol)
        if self._fitted is None or self._solved_for != solved_for:
            self._fitted = fit_components(self.stats, self.n_components, tol=self.tol,
                                          dtype=torch.float64 if self._float64 else torch.float32)
            self._solved_for = solved_for
        return self._fitted

    # ---- fitted attributes (scikit-learn's names) ------------------------------------------------------------------
    @property
    def components_(self) -> torch.Tensor:
        return self.result().components

    @property
    def explained_variance_(self) -> torch.Tensor:
        return self.result().explained_variance

    @property
    def explained_variance_ratio_(self) -> torch.Tensor:
        return self.result().explained_variance_ratio

    @property
    def singular_values_(self) -> torch.Tensor:
        return self.result().singular_values

    @property
    def mean_(self) -> torch.Tensor:
        return self.result().mean

    @property
    def n_samples_seen_(self) -> int:
        return 0 if self.stats is None else self.stats.n

    @property
    def n_features_in_(self) -> int:
        if self.stats is None:
            raise NotFittedError("this SkillPCA has seen no rows yet")
        return self.stats.dim

    # ---- use -------------------------------------------------------------------------------------------------------
    def transform(self, X: Any) -> Any:
        """(X - mean_) @ components_.T -> [n, n_components], as numpy for numpy input."""
        return like_input(self.result().transform(as_tensor(X)), X)

    def inverse_transform(self, Z: Any) -> Any:
        return like_input(self.result().inverse_transform(as_tensor(Z, "Z")), Z)

    # ---- persistence -----------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """`folder/pca.safetensors` (the statistics, and the components when solved) + `folder/pca.json`."""
        if self.stats is None:
            raise AutoskillError("cannot save a SkillPCA that has seen no rows")
        folder = Path(folder)
        tensors = {f"stats.{name}": t for name, t in self.stats.state_dict().items()}
        meta: dict[str, Any] = {"format_version": 1, "n_components": self.n_components, "sketch_size": self.sketch_size,
                                "tol": self.tol, "float64": self._float64}
        # The components when solved for the options now (not for those set_params changed since: load trusts them).
        if self._fitted is not None and self._solved_for == (self.n_components, self.tol):
            tensors.update(self._fitted.tensors())
            meta["fitted"] = self._fitted.summary()
        save_tensors(folder / PCA_TENSORS, tensors)
        save_json(folder / PCA_JSON, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> "SkillPCA":
        from .statistics import statistics_from_state

        folder = Path(folder)
        meta = load_json(folder / PCA_JSON)
        if not isinstance(meta, dict):
            raise AutoskillError(f"{folder / PCA_JSON}: expected a JSON object; not a saved SkillPCA")
        tensors = load_tensors(folder / PCA_TENSORS)
        try:
            pca = cls(int(meta["n_components"]), sketch_size=meta.get("sketch_size"), tol=float(meta["tol"]),
                      device=device)
            state = {name[len("stats."):]: t for name, t in tensors.items() if name.startswith("stats.")}
            pca.stats = statistics_from_state(state, device=device, source=str(folder / PCA_TENSORS))
            pca._float64 = bool(meta.get("float64", False))
            if "fitted" in meta:
                pca._fitted = PrincipalComponents.from_saved(tensors, meta["fitted"])
                pca._solved_for = (pca.n_components, pca.tol)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise AutoskillError(f"{folder}: missing or malformed {e} in {PCA_JSON} or {PCA_TENSORS}; not a saved "
                                 "SkillPCA") from None
        return pca

    def __repr__(self) -> str:
        seen = f", n_samples_seen_={self.n_samples_seen_}" if self.stats is not None else ""
        sketch = f", sketch_size={self.sketch_size}" if self.sketch_size else ""
        return f"SkillPCA(n_components={self.n_components}{sketch}{seen})"
