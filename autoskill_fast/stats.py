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
from .kernels import cov_update_, pack_upper, symmetrize_upper, unpack_upper


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
        s2 = s2 + torch.outer(s1, delta) + torch.outer(delta, s1) + other.n * torch.outer(delta, delta)
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
        s2 = symmetrize_upper(self.sumsq.to(out_dtype))
        mu = (self.sum / self.n).to(out_dtype)
        s2 -= self.n * torch.outer(mu, mu)
        s2 /= self.n - ddof
        return s2

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
