"""Frequent Directions: a deterministic, mergeable one-pass sketch of the covariance, for when D x D does not fit.

The sketch B (at most `sketch_size` = l rows of D) keeps 0 <= Y^T Y - B^T B <= delta * I for the rows Y it has seen,
with delta (the total shrinkage, tracked exactly) <= ||Y - Y_k||_F^2 / (l - k) for every k < l (Liberty 2013;
Ghashami, Liberty, Phillips and Woodruff 2016). Rows go into a 2l-row buffer; a full buffer is shrunk back to l rows
by one small eigendecomposition, so each row costs O(l D) amortized. Two sketches merge by shrinking the union of
their rows, with the same guarantee (the merged shrinkage: both sketches', plus that of shrinking the union).

Centering. The caller passes rows y = x - shift, with the shift fixed before the first row (a pilot mean, as for the
exact `StreamingCovariance`). The sketch sees these *uncentered* shifted rows; it also keeps their exact count n and
fp64 sum, so the centered scatter is  Y^T Y - s s^T / n,  estimated by B^T B - s s^T / n  with the same error bound
(the rank-one correction is exact). The shift does not enter the bound, but a shift near the mean keeps the stored
rows (fp32 by default) from rounding away the variance under a large common offset. `components` divides by n - ddof.

Another shift. Rows y around one shift are y + d around a shift d lower, and
sum (y + d)(y + d)^T = Y^T Y + (s + n d)(s + n d)^T / n - s s^T / n.
So `reshift_(d)` keeps two exact fp64 rows beside the sketch: P gains (s + n d) / sqrt(n), added at the end, and N gains
s / sqrt(n), subtracted like the mean. The sketch itself is untouched, so the bound is too, and fp64 keeps the
correction exact to rounding even when d is many standard deviations. Sketches made around different shifts (shards,
ranks, actors: each fixes its own pilot mean) merge this way, at two rows of D each.
"""

from __future__ import annotations

import torch

from ..errors import AutoskillError
from .linalg import canonical_signs


class FrequentDirections:
    """Frequent Directions sketch of the second moment of [N, D] rows, with exact count and sum for centering.

    dim: feature dimension D.
    sketch_size: rows kept (l). Top-k components are reliable for k well below l (the bound has l - k below it);
        l >= 2k is a sound default. Memory: a [2l, D] buffer in `dtype`.
    dtype: storage dtype of the sketch rows (the shrink step computes in fp64).
    """

    def __init__(self, dim: int, sketch_size: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device | None = None):
        if dim < 1 or sketch_size < 1:
            raise ValueError(f"FrequentDirections needs dim >= 1 and sketch_size >= 1, got {dim} and {sketch_size}")
        self.dim = int(dim)
        self.sketch_size = int(sketch_size)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._buffer = torch.zeros(2 * self.sketch_size, self.dim, dtype=dtype, device=self.device)  # [2l, D]
        self._filled = 0  # rows of _buffer in use; after a shrink the first l rows hold the sketch
        self.count = 0
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)  # sum of the (shifted) rows
        self.shrinkage = torch.zeros((), dtype=torch.float64, device=self.device)  # total delta subtracted
        # [c, D] fp64 each: exact rows whose outer products are added to (P) and subtracted from (N) the sketch's, a
        # pair per change of shift (module docstring)
        self.positive = torch.zeros(0, self.dim, dtype=torch.float64, device=self.device)
        self.negative = torch.zeros(0, self.dim, dtype=torch.float64, device=self.device)

    # ---- accumulation ------------------------------------------------------------------------------------
    def update(self, x_nd: torch.Tensor) -> "FrequentDirections":
        """Add [N, D] rows (already shifted by the caller's fixed shift)."""
        if x_nd.ndim != 2 or x_nd.shape[1] != self.dim:
            raise ValueError(f"FrequentDirections.update: rows must be [N, {self.dim}], got {tuple(x_nd.shape)}")
        x_nd = x_nd.to(self.device)
        self.count += x_nd.shape[0]
        self.sum += x_nd.sum(dim=0, dtype=torch.float64)
        self._append(x_nd)
        return self

    def merge(self, other: "FrequentDirections", *, offset: torch.Tensor | None = None) -> "FrequentDirections":
        """Add another sketch's rows, count, sum, shrinkage and exact rows. `offset` [D]: what to add to the other's
        rows to express them around this sketch's shift (its shift minus ours); None when both used the same shift.
        The other sketch is left as it was."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge a sketch of {other.dim} dims into one of {self.dim} dims")
        if other is self:  # its rows, sums and shrinkage are read while they change
            other = FrequentDirections.from_state_dict({name: t.clone() for name, t in self.state_dict().items()},
                                                       device=self.device)
        self._append(other._buffer[:other._filled].to(self.device))
        self.count += other.count
        self.sum += other.sum.to(self.device)
        self.shrinkage += other.shrinkage.to(self.device)
        self.positive = torch.cat([self.positive, other.positive.to(self.device)])
        self.negative = torch.cat([self.negative, other.negative.to(self.device)])
        if offset is not None and other.count:
            self._shift_rows(other.sum.to(self.device), other.count, offset)
        return self

    def reshift_(self, offset: torch.Tensor) -> "FrequentDirections":
        """The same sketch for the rows y + offset [D] (the rows around a shift `offset` lower): exact, see above."""
        if self.count:
            self._shift_rows(self.sum.clone(), self.count, offset)
        return self

    def _shift_rows(self, sum_d: torch.Tensor, count: int, offset: torch.Tensor) -> None:
        """Rows with sum `sum_d` and `count`, already in the sketch, become those rows + offset."""
        offset = offset.to(self.device, torch.float64)
        if not bool(offset.any()):
            return
        self.positive = torch.cat([self.positive, ((sum_d + count * offset) / count ** 0.5)[None, :]])
        self.negative = torch.cat([self.negative, (sum_d / count ** 0.5)[None, :]])
        self.sum += count * offset

    def _append(self, rows: torch.Tensor) -> None:
        capacity = self._buffer.shape[0]
        start = 0
        while start < rows.shape[0]:
            take = min(capacity - self._filled, rows.shape[0] - start)
            self._buffer[self._filled:self._filled + take] = rows[start:start + take]
            self._filled += take
            start += take
            if self._filled == capacity:
                self._shrink()

    def _shrink(self) -> None:
        """Shrink the buffer to l rows: B <- diag(sqrt(s_i^2 - delta)) V^T with delta = s_{l+1}^2 (0-based s[l])."""
        rows = self._buffer[:self._filled].to(torch.float64)  # [m, D], m <= 2l
        # Eigendecomposition of the small Gram matrix instead of an SVD of the wide buffer: same O(m^2 D) work as
        # one matmul, and the eigenvalues that matter (>= delta) are the large ones, which fp64 resolves well.
        evals, evecs = torch.linalg.eigh(rows @ rows.T)
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)  # descending: s_i^2 and u_i
        keep = self.sketch_size
        delta = evals[keep] if evals.shape[0] > keep else evals.new_zeros(())
        # u_i^T B = s_i v_i^T, so scaling it by sqrt(1 - delta / s_i^2) gives sqrt(s_i^2 - delta) v_i^T.
        top = evals[:keep]
        scale = torch.where(top > delta, ((top - delta) / top.clamp_min(torch.finfo(top.dtype).tiny)).sqrt(),
                            torch.zeros_like(top))
        sketch = (evecs[:, :keep] * scale).T @ rows  # [<= l, D]
        self._buffer.zero_()
        self._buffer[:sketch.shape[0]] = sketch.to(self.dtype)
        self._filled = keep
        self.shrinkage += delta

    # ---- results -----------------------------------------------------------------------------------------
    def components(self, k: int, *, ddof: int = 1, compensate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k eigenpairs of the estimated covariance of the rows, (B^T B + P^T P - N^T N - s s^T / n) / (n - ddof).

        Returns (eigenvalues [k] fp64, descending; vectors [D, k] fp64, orthonormal columns, each with its
        largest-magnitude entry positive). The estimate is within `error_bound(ddof)` of the exact covariance in
        spectral norm, and exact when the shifted rows span at most l dimensions.

        compensate: each exact eigenvalue lies in [sketch eigenvalue, sketch eigenvalue + error_bound] (Weyl).
            True returns the upper end: every shrink subtracts its delta from all l retained directions, so a direction
            that stayed in the sketch throughout (the top ones, for k well below l and a decaying spectrum) lost
            exactly the total shrinkage, and adding it back is nearly exact. With l near 2k on a flat spectrum the
            top directions do not stay, and the upper end can be many times the exact eigenvalue (14-20 times on
            white noise at l = 2k = 20, D = 1000-2000; still within the bound). False returns the raw sketch
            eigenvalues (the lower end).
        """
        exact = 2 * self.negative.shape[0] + 1  # the exact rows and the mean
        max_k = min(self.dim, self._filled + exact)
        if not 1 <= k <= max_k:
            raise ValueError(f"FrequentDirections.components: k must be in [1, {max_k}] (sketch rows + {exact}, "
                             f"at most dim), got {k}")
        if self.count <= ddof:
            raise AutoskillError(f"the sketch holds {self.count} rows; at least {ddof + 1} are needed")
        # The estimate is M^T J M with M = [B; P; N; s^T / sqrt(n)] and J = diag(1, ..., 1, -1, ..., -1): its
        # eigenvectors lie in the row space of M. With M^T = Q R, M^T J M = Q (R J R^T) Q^T, so a small eigenproblem
        # gives them exactly.
        sketch = self._buffer[:self._filled].to(torch.float64)
        mean_row = (self.sum / self.count ** 0.5)[None, :]
        added = torch.cat([sketch, self.positive])
        q, r = torch.linalg.qr(torch.cat([added, self.negative, mean_row]).T)  # [D, m + 2c + 1] (fewer if > D)
        signs = torch.ones(r.shape[1], dtype=r.dtype, device=r.device)
        signs[added.shape[0]:] = -1.0
        evals, evecs = torch.linalg.eigh((r * signs) @ r.T)
        evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        vectors = canonical_signs(q @ evecs)
        if compensate:
            evals = evals + self.shrinkage
        return evals / (self.count - ddof), vectors

    def error_bound(self, *, ddof: int = 1) -> float:
        """Upper bound on the spectral-norm error of the covariance estimate (total shrinkage / (n - ddof))."""
        if self.count <= ddof:
            raise AutoskillError(f"the sketch holds {self.count} rows; at least {ddof + 1} are needed")
        return float(self.shrinkage) / (self.count - ddof)

    # ---- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-compatible). Restoring it and continuing equals never having stopped."""
        return {
            "sketch": self._buffer[:self._filled].clone(),  # [filled, D] in the storage dtype
            "sketch_size": torch.tensor([self.sketch_size], dtype=torch.int64),
            "count": torch.tensor([self.count], dtype=torch.int64),
            "sum": self.sum.clone(),
            "shrinkage": self.shrinkage.reshape(1).clone(),
            "positive": self.positive.clone(),  # [c, D] fp64
            "negative": self.negative.clone(),  # [c, D] fp64
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor],
                        device: str | torch.device | None = None) -> "FrequentDirections":
        missing = {"sketch", "sketch_size", "count", "sum", "shrinkage"} - state.keys()
        if missing:
            raise AutoskillError(f"Frequent Directions state lacks {sorted(missing)}; it was not saved by "
                                 "FrequentDirections.state_dict()")
        rows = state["sketch"]
        if state["sketch_size"].numel() != 1 or state["count"].numel() != 1 or state["shrinkage"].numel() != 1:
            raise AutoskillError("Frequent Directions state is inconsistent: its sketch_size, count and shrinkage "
                                 "must be one number each; the file is corrupted")
        dim, sketch_size = state["sum"].numel(), int(state["sketch_size"][0])
        if rows.ndim != 2 or rows.shape[1] != dim or rows.shape[0] > 2 * sketch_size:
            raise AutoskillError(f"Frequent Directions state is inconsistent: sketch {tuple(rows.shape)} for "
                                 f"{dim} dims and sketch_size {sketch_size}; the file is corrupted")
        sketch = cls(dim, sketch_size, dtype=rows.dtype, device=device)
        sketch._buffer[:rows.shape[0]] = rows.to(sketch.device)
        sketch._filled = rows.shape[0]
        sketch.count = int(state["count"][0])
        sketch.sum = state["sum"].to(sketch.device, torch.float64).clone()
        sketch.shrinkage = state["shrinkage"].to(sketch.device, torch.float64).reshape(()).clone()
        empty = torch.zeros(0, dim, dtype=torch.float64)  # absent in sketches saved before shifts could change
        positive, negative = state.get("positive", empty), state.get("negative", empty)
        if positive.ndim != 2 or positive.shape != negative.shape or positive.shape[1] != dim:
            raise AutoskillError(f"Frequent Directions state is inconsistent: exact rows {tuple(positive.shape)} and "
                                 f"{tuple(negative.shape)} for {dim} dims; the file is corrupted")
        sketch.positive = positive.to(sketch.device, torch.float64).clone()
        sketch.negative = negative.to(sketch.device, torch.float64).clone()
        return sketch
