"""Streaming count, mean and covariance of pooled features: shifted, mergeable, checkpointable.

The accumulators are sums of shifted rows, S1 = sum(x - s) and S2 = sum (x - s)(x - s)^T, with the shift s a pilot
mean fixed before the first update. Because s is close to the true mean, S2 - S1 S1^T / n loses almost nothing to
cancellation even when S2 is accumulated in fp32 on a GPU; on CPU it is fp64. Two accumulators merge exactly
(Chan et al.'s pairwise formula, re-expressed for different shifts), so shards computed apart add up to one pass.
Only the upper triangle of S2 is maintained (the Triton kernel computes only those tiles).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import load_tensors, save_tensors
from .errors import AutoskillError
from .frequent_directions import FrequentDirections
from .kernels import cov_update_, pack_upper, symmetrize_upper, unpack_upper
from .linalg import EighResult, topk_eigh


class StreamingCovariance:
    """Exact streaming first and second moments of [N, D] rows."""

    def __init__(self, dim: int, *, shift: torch.Tensor | None = None, accum_dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", stage_rows: int | None = None):
        self.dim = int(dim)
        self.device = torch.device(device)
        # Rows are staged and added in blocks: C += X^T X then reads and writes C once per block, so the update is
        # compute-bound (a few thousand rows on a GPU; a few hundred keep CPU GEMMs efficient and memory small).
        self.stage_rows = stage_rows or (4096 if self.device.type == "cuda" else 256)
        self._staged: list[torch.Tensor] = []
        self._staged_n = 0
        # fp64 where it is cheap (CPU); fp32 on accelerators, where fp64 matmuls are slow and the shift keeps fp32 exact enough.
        self.accum_dtype = accum_dtype or (torch.float64 if self.device.type == "cpu" else torch.float32)
        self.n = 0
        self.shift: torch.Tensor | None = None if shift is None else shift.to(self.device, torch.float64).clone()
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self.sumsq = torch.zeros(self.dim, self.dim, dtype=self.accum_dtype, device=self.device)  # upper triangle valid

    # ---- accumulation ------------------------------------------------------------------------------------
    def set_shift(self, shift_d: torch.Tensor) -> None:
        if self.n:
            raise AutoskillError("the shift of a StreamingCovariance is fixed once rows have been added")
        self.shift = shift_d.detach().to(self.device, torch.float64).clone()

    def update(self, x_nd: torch.Tensor) -> None:
        """Add raw rows; the first call sets the shift to its own mean if none was given."""
        self._check_rows(x_nd)
        if self.shift is None:
            self.set_shift(x_nd.detach().to(torch.float64).mean(dim=0))
        work = torch.float64 if self.accum_dtype == torch.float64 else torch.float32  # keep the GPU kernel in fp32
        self.update_shifted(x_nd.to(self.device, work) - self.shift.to(work))

    def update_shifted(self, xc_nd: torch.Tensor) -> None:
        """Add rows that already had the shift subtracted (as the fused capture kernel writes them)."""
        if self.shift is None:
            raise AutoskillError("set_shift() must be called before update_shifted()")
        self._check_rows(xc_nd)
        if xc_nd.shape[0] == 0:
            return
        xc_nd = xc_nd.to(self.device)
        self.sum += xc_nd.sum(dim=0, dtype=torch.float64)
        self.n += xc_nd.shape[0]
        self._staged.append(xc_nd)
        self._staged_n += xc_nd.shape[0]
        if self._staged_n >= self.stage_rows:
            self.flush()

    def flush(self) -> None:
        """Add the staged rows into the second-moment sums (done before any result is read or saved)."""
        if self._staged:
            block = self._staged[0] if len(self._staged) == 1 else torch.cat(self._staged)
            self._staged, self._staged_n = [], 0
            cov_update_(self.sumsq, block)

    def _check_rows(self, x_nd: torch.Tensor) -> None:
        if x_nd.ndim != 2 or x_nd.shape[1] != self.dim:
            raise AutoskillError(f"rows of shape {tuple(x_nd.shape)} do not match the statistics' {self.dim} dims")

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Add another accumulator's rows (exact: re-expresses the other's sums around this shift)."""
        if other.dim != self.dim:
            raise AutoskillError(f"cannot merge statistics of {other.dim} dims into {self.dim} dims")
        if other.n == 0:
            return self
        self.flush()
        other.flush()
        if self.n == 0 and self.shift is None:
            self.shift = other.shift.to(self.device).clone()
        delta = other.shift.to(self.device) - self.shift  # other rows around our shift: (x - s') + delta
        s1 = other.sum.to(self.device)
        s2 = symmetrize_upper(other.sumsq.to(self.device, torch.float64))
        s2.addr_(s1, delta).addr_(delta, s1).addr_(delta, delta, alpha=other.n)
        self.sum += s1 + other.n * delta
        self.sumsq += s2.to(self.accum_dtype)
        self.n += other.n
        return self

    # ---- results -----------------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        self._require_rows(1)
        return self.shift + self.sum / self.n

    def covariance(self, *, ddof: int = 1) -> torch.Tensor:
        """Full symmetric [D, D] covariance in fp64 (CPU) or the accumulation dtype (GPU)."""
        self._require_rows(ddof + 1)
        self.flush()
        out_dtype = torch.float64 if self.device.type == "cpu" else self.accum_dtype
        s2 = symmetrize_upper(self.sumsq.to(out_dtype))  # the one D x D copy; everything below is in place
        mu = (self.sum / self.n).to(out_dtype)
        s2.addr_(mu, mu, alpha=-self.n)
        s2 /= self.n - ddof
        return s2

    def top_eigenpairs(self, k: int, *, tol: float = 1e-6) -> EighResult:
        """Top-k eigenpairs of the covariance (the C++ / on-device block Krylov solver)."""
        return topk_eigh(self.covariance(), k, tol=tol)

    def total_variance(self, *, ddof: int = 1) -> float:
        self._require_rows(ddof + 1)
        self.flush()
        diag = self.sumsq.diagonal().to(torch.float64)
        return float((diag.sum() - (self.sum * self.sum).sum() / self.n) / (self.n - ddof))

    def _require_rows(self, n: int) -> None:
        if self.n < n:
            raise AutoskillError(f"statistics hold {self.n} examples; at least {n} are needed")

    # ---- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shift is None:
            raise AutoskillError("cannot save statistics before the shift is set")
        self.flush()
        return {
            "count": torch.tensor([self.n], dtype=torch.int64),
            "shift": self.shift,
            "sum": self.sum,
            "sumsq_upper": pack_upper(self.sumsq),  # half the bytes of the square
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu") -> "StreamingCovariance":
        dim = state["shift"].numel()
        packed = state["sumsq_upper"]
        if packed.numel() != dim * (dim + 1) // 2 or state["sum"].numel() != dim:
            raise AutoskillError("statistics tensors have inconsistent sizes; the file is corrupted")
        stats = cls(dim, shift=state["shift"], accum_dtype=packed.dtype, device=device)
        stats.n = int(state["count"][0])
        stats.sum = state["sum"].to(stats.device, torch.float64).clone()
        stats.sumsq = unpack_upper(packed.to(stats.device), dim)
        return stats

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        save_tensors(path, self.state_dict(), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "StreamingCovariance":
        return cls.from_state_dict(load_tensors(path, required=("count", "shift", "sum", "sumsq_upper")), device=device)


class SketchedCovariance:
    """The fallback when D x D cannot fit: a Frequent Directions sketch of l rows in place of the second moment.

    Memory is O(l D) instead of O(D^2). Count, mean and total variance stay exact (count, sum and the sum of squared
    norms are tracked in fp64); the top eigenpairs are within the sketch's reported error bound (`error_bound`).
    Merging needs the same shift on both sides (runs resumed from one checkpoint, or given one shift).
    """

    def __init__(self, dim: int, sketch_size: int, *, shift: torch.Tensor | None = None, device: str | torch.device = "cpu"):
        self.dim = int(dim)
        self.device = torch.device(device)
        self.sketch = FrequentDirections(self.dim, sketch_size, dtype=torch.float32, device=self.device)
        self.shift: torch.Tensor | None = None if shift is None else shift.to(self.device, torch.float64).clone()
        self.sq_norm = torch.zeros((), dtype=torch.float64, device=self.device)

    @property
    def n(self) -> int:
        return self.sketch.count

    @property
    def sum(self) -> torch.Tensor:
        return self.sketch.sum

    def set_shift(self, shift_d: torch.Tensor) -> None:
        if self.n:
            raise AutoskillError("the shift of the statistics is fixed once rows have been added")
        self.shift = shift_d.detach().to(self.device, torch.float64).clone()

    def update_shifted(self, xc_nd: torch.Tensor) -> None:
        if xc_nd.ndim != 2 or xc_nd.shape[1] != self.dim:
            raise AutoskillError(f"rows of shape {tuple(xc_nd.shape)} do not match the statistics' {self.dim} dims")
        xc_nd = xc_nd.to(self.device)
        self.sq_norm += xc_nd.to(torch.float64).pow(2).sum()
        self.sketch.update(xc_nd.to(torch.float32))

    def merge(self, other: "SketchedCovariance") -> "SketchedCovariance":
        if self.n and other.n and not torch.equal(self.shift, other.shift.to(self.device)):
            raise AutoskillError("sketched statistics merge only with the same shift; profile shards with exact "
                                 "statistics (no --sketch-size) to merge them")
        if self.shift is None:
            self.shift = other.shift.to(self.device).clone()
        self.sketch.merge(other.sketch)
        self.sq_norm += other.sq_norm.to(self.device)
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.sketch.sum / self.n

    def total_variance(self, *, ddof: int = 1) -> float:
        if self.n <= ddof:
            raise AutoskillError(f"statistics hold {self.n} examples; at least {ddof + 1} are needed")
        return float((self.sq_norm - self.sketch.sum.pow(2).sum() / self.n) / (self.n - ddof))

    def error_bound(self) -> float:
        return self.sketch.error_bound()

    def top_eigenpairs(self, k: int, *, tol: float = 1e-6) -> EighResult:
        if k > self.sketch.sketch_size // 2:
            raise AutoskillError(f"-k {k} is too many directions for a sketch of {self.sketch.sketch_size} rows; "
                                 f"use --sketch-size {2 * k} or more")
        values, vectors = self.sketch.components(k)
        bound = torch.full((k,), self.error_bound() / max(float(values[0]), 1e-300), dtype=torch.float64)
        return EighResult(values, vectors, bound, "frequent-directions")

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shift is None:
            raise AutoskillError("cannot save statistics before the shift is set")
        return {**{f"fd.{k}": v for k, v in self.sketch.state_dict().items()}, "shift": self.shift,
                "sq_norm": self.sq_norm.reshape(1)}

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        save_tensors(path, self.state_dict(), metadata=metadata)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu") -> "SketchedCovariance":
        sketch = FrequentDirections.from_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fd.")}, device=device)
        stats = cls(sketch.dim, sketch.sketch_size, shift=state["shift"], device=device)
        stats.sketch = sketch
        stats.sq_norm = state["sq_norm"].to(stats.device, torch.float64).reshape(())
        return stats


def load_statistics(path: str | Path, *, device: str | torch.device = "cpu") -> StreamingCovariance | SketchedCovariance:
    """Exact or sketched statistics, whichever the file holds."""
    state = load_tensors(path)
    if "fd.sketch" in state:
        return SketchedCovariance.from_state_dict(state, device=device)
    missing = [k for k in ("count", "shift", "sum", "sumsq_upper") if k not in state]
    if missing:
        raise AutoskillError(f"{path}: missing tensors {missing}; not a statistics file of autoskill-fast")
    return StreamingCovariance.from_state_dict(state, device=device)
