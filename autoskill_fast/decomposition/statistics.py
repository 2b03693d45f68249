"""Streaming count, mean and covariance of pooled features: shifted, mergeable, checkpointable.

The accumulators are sums of shifted rows, S1 = sum(x - s) and S2 = sum (x - s)(x - s)^T, with the shift s a pilot
mean fixed before the first update. Because s is close to the true mean, S2 - S1 S1^T / n loses almost nothing to
cancellation even when S2 is accumulated in fp32 on a GPU; on CPU it is fp64. Two accumulators merge exactly
(Chan et al.'s pairwise formula, re-expressed for different shifts), so shards computed apart add up to one pass.
Only the upper triangle of S2 is kept, block-packed (`PackedSymmetric`: half the memory of the square, 30 GB in fp32
for Llama-3-8B's 122,880 dims), and the basis is solved from it in place: `CovarianceOperator` gives the Krylov solver
products with (S2 - S1 S1^T / n) / (n - ddof) without ever forming the D x D covariance.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..artifacts import TensorReader, save_tensors
from ..errors import AutoskillError
from ..kernels import PackedSymmetric, cov_update_
from ..kernels.packed import BlockPackedLayout
from .frequent_directions import FrequentDirections
from .linalg import EighResult, SymmetricOperator, topk_eigh

STATE_KEYS = ("count", "shift", "sum", "sumsq_packed", "sumsq_tile")
MERGE_SLICE_BYTES = 1 << 26  # a saved file's sums are added 64 MiB at a time (16 reads a GB: no slower than one)


class Statistics:
    """What every streaming statistics of [N, D] rows offers: count, shift, mean, total variance, top eigenpairs,
    exact merge, save. Rows are added shifted by a fixed `shift` (a pilot mean): `update_shifted(x - shift)`, or
    `update(x)`, which fixes the shift to the first rows' mean. `StreamingCovariance` is exact, `SketchedCovariance`
    a Frequent Directions sketch."""

    dim: int
    device: torch.device
    shift: torch.Tensor | None
    work_dtype: torch.dtype = torch.float32  # what `update` subtracts the shift in

    @property
    def n(self) -> int:
        raise NotImplementedError

    def set_shift(self, shift_d: torch.Tensor) -> None:
        """Fix the point rows are taken around, rounded to `work_dtype` (kept in fp64): what `update` subtracts is then
        exactly the shift the mean is counted from."""
        if self.n:
            raise AutoskillError("the shift of the statistics is fixed once rows have been added")
        self.shift = shift_d.detach().to(self.device, torch.float64).to(self.work_dtype).to(torch.float64).clone()

    def update(self, x_nd: torch.Tensor) -> None:
        """Add raw rows; the first call with rows fixes the shift to their mean if none was set."""
        self._check_rows(x_nd)
        if x_nd.shape[0] == 0:  # no rows: nothing to add, and no mean to take the shift from
            return
        if self.shift is None:
            self.set_shift(x_nd.detach().to(torch.float64).mean(dim=0))
        work = self.work_dtype  # the subtraction in the accumulation's precision: fp64 on CPU keeps every digit
        if x_nd.dtype == torch.float64:  # rows given in fp64 are centred before any rounding (fp32 accumulators)
            self.update_shifted((x_nd.to(self.device) - self.shift).to(work), owned=True)
        else:
            self.update_shifted(x_nd.to(self.device, work) - self.shift.to(work), owned=True)

    def update_shifted(self, xc_nd: torch.Tensor, *, owned: bool = False) -> None:
        """Add rows that already had the shift subtracted. `owned`: the caller hands them over and will not write them
        again (exact statistics stage rows until a flush: others are copied)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make every added row count in the results (a no-op where nothing is staged)."""

    def merge(self, other: "Statistics") -> "Statistics":
        raise NotImplementedError

    def clear_(self) -> "Statistics":
        """No rows, around the same shift, in the same memory (a rank of a multi-process run whose rows were added
        into rank 0's statistics goes on from here)."""
        raise NotImplementedError

    def merge_saved(self, path: str | Path) -> "Statistics":
        """`merge` of the statistics saved at `path` (exact ones never whole in memory: see StreamingCovariance)."""
        return self.merge(load_statistics(path, device=self.device))

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError

    def total_variance(self, *, ddof: int = 1, scale: torch.Tensor | None = None) -> float:
        """The covariance's trace; of diag(scale) C diag(scale) when a feature scale is given."""
        raise NotImplementedError

    def variances(self, *, ddof: int = 1) -> torch.Tensor | None:
        """Each feature's variance [D] fp64 (the covariance's diagonal), or None when the statistics do not hold it."""
        return None

    def top_eigenpairs(self, k: int, *, tol: float = 1e-6, dtype: torch.dtype | None = None,
                       scale: torch.Tensor | None = None) -> EighResult:
        """Top-k eigenpairs of the covariance, or of diag(scale) C diag(scale) (e.g. the correlation matrix when scale
        is 1 / standard deviation)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors to save. Large ones are the statistics' own, not copies (a Llama-3-8B state is 30 GB): save or
        copy them before adding more rows."""
        raise NotImplementedError

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        save_tensors(path, self.state_dict(), metadata=metadata)

    def _check_rows(self, x_nd: torch.Tensor) -> None:
        if x_nd.ndim != 2 or x_nd.shape[1] != self.dim:
            raise AutoskillError(f"rows of shape {tuple(x_nd.shape)} do not match the statistics' {self.dim} dims")

    def _require_rows(self, n: int) -> None:
        if self.n < n:
            raise AutoskillError(f"statistics hold {self.n} examples; at least {n} are needed")


class StreamingCovariance(Statistics):
    """Exact streaming first and second moments of [N, D] rows."""

    def __init__(self, dim: int, *, shift: torch.Tensor | None = None, accum_dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", stage_rows: int | None = None, tile: int | None = None,
                 rows_dtype: torch.dtype | None = None):
        self.dim = int(dim)
        # The dtype rows enter the second-moment sums in (None: their own). bf16 is the GPU kernel's full rate; the
        # sum (so the mean) is always taken from the rows as given.
        self.rows_dtype = rows_dtype
        self.device = torch.device(device)
        # Rows are staged and added in blocks: C += X^T X then reads and writes C once per block, so the update is
        # compute-bound (a few thousand rows on a GPU; a few hundred keep CPU GEMMs efficient and memory small).
        self.stage_rows = stage_rows or (4096 if self.device.type == "cuda" else 256)
        self._staged: list[torch.Tensor] = []
        self._staged_n = 0
        # fp64 where it is cheap (CPU); fp32 on accelerators, where fp64 matmuls are slow and the shift keeps fp32 exact enough.
        self.accum_dtype = accum_dtype or (torch.float64 if self.device.type == "cpu" else torch.float32)
        self.work_dtype = torch.float64 if self.accum_dtype == torch.float64 else torch.float32  # the GPU kernel: fp32
        self._n = 0
        self.shift: torch.Tensor | None = None if shift is None else shift.to(self.device, torch.float64).clone()
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self.sumsq = PackedSymmetric.zeros(self.dim, dtype=self.accum_dtype, device=self.device, tile=tile)

    @property
    def n(self) -> int:
        return self._n

    # ---- accumulation ------------------------------------------------------------------------------------
    def update_shifted(self, xc_nd: torch.Tensor, *, owned: bool = False) -> None:
        """Add rows that already had the shift subtracted (as the fused capture kernel writes them); `owned`: the
        caller will not write them again, so they are staged without a copy."""
        if self.shift is None:
            raise AutoskillError("set_shift() must be called before update_shifted()")
        self._check_rows(xc_nd)
        if xc_nd.shape[0] == 0:
            return
        given = xc_nd
        xc_nd = xc_nd.to(self.device)
        self.sum += xc_nd.sum(dim=0, dtype=torch.float64)
        self._n += xc_nd.shape[0]
        staged = xc_nd if self.rows_dtype is None else xc_nd.to(self.rows_dtype)
        # Staged rows are read at the next flush: a buffer the caller refills by then must not change them.
        self._staged.append(staged.clone() if staged is given and not owned else staged)
        self._staged_n += xc_nd.shape[0]
        if self._staged_n >= self.stage_rows:
            self.flush()

    def flush(self) -> None:
        """Add the staged rows into the second-moment sums (done before any result is read or saved)."""
        if self._staged:
            block = self._staged[0] if len(self._staged) == 1 else torch.cat(self._staged)
            self._staged, self._staged_n = [], 0
            cov_update_(self.sumsq, block)

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Add another accumulator's rows (exact: re-expresses the other's sums around this shift)."""
        if not isinstance(other, StreamingCovariance):
            raise AutoskillError("cannot merge a sketch into exact statistics; merge statistics of one kind")
        if other.dim != self.dim:
            raise AutoskillError(f"cannot merge statistics of {other.dim} dims into {self.dim} dims")
        if other.n == 0:
            return self
        other.flush()
        return self._add_sums(other.shift, other.sum, other.n, lambda: self.sumsq.add_(other.sumsq))

    def merge_saved(self, path: str | Path, *, chunk_bytes: int = MERGE_SLICE_BYTES) -> "StreamingCovariance":
        """`merge(load_statistics(path))` with the same result, without the saved statistics in memory: their packed
        sums are added a slice of `chunk_bytes` at a time (the merged sums and one slice; a merge of Llama-3-8B shards
        on a CPU then needs one accumulator's memory, not two)."""
        with _naming(path), TensorReader(path) as reader:
            if "sumsq_packed" not in reader:
                return self.merge(statistics_from_state({k: reader.get(k) for k in reader.keys()}, device=self.device,
                                                        source=str(path)))  # a sketch, or not statistics: refused
            state = _small_state(reader, path)
            dtype, shape = reader.spec("sumsq_packed")
            layout = _packed_layout(state, dtype, shape)
            if layout.dim != self.dim:
                raise AutoskillError(f"{path}: statistics of {layout.dim} dims; cannot merge them into {self.dim} dims")
            n = int(state["count"][0])
            if n == 0:
                return self
            if layout != self.sumsq.layout:  # another tile: the slices do not line up (not written by this version)
                return self.merge(load_statistics(path, device=self.device))

            def add_slices() -> None:
                data = self.sumsq.data
                # The same rounding as merge's `add_` (the other's sums cast to ours), so the same numbers.
                slices = reader.slices("sumsq_packed", chunk_bytes=chunk_bytes, pinned=data.device.type == "cuda")
                for start, piece in slices:
                    data[start:start + piece.numel()] += piece.to(data.device, data.dtype)

            return self._add_sums(state["shift"].to(self.device, torch.float64), state["sum"].to(self.device), n,
                                  add_slices)

    def _add_sums(self, shift: torch.Tensor, sum_d: torch.Tensor, n: int,
                  add_second_moments: Callable[[], Any]) -> "StreamingCovariance":
        """Add rows (count n, sums around `shift`), their second-moment sums added by `add_second_moments`."""
        self.flush()
        if self.n == 0 and self.shift is None:
            self.shift = shift.to(self.device).clone()
        delta = shift.to(self.device) - self.shift  # the other rows around our shift: (x - s') + delta
        s1 = sum_d.to(self.device, torch.float64)
        add_second_moments()
        _add_shift_terms(self.sumsq, s1, delta, n)
        self.sum += s1 + n * delta
        self._n += n
        return self

    def clear_(self) -> "StreamingCovariance":
        self._staged, self._staged_n = [], 0
        self._n = 0
        self.sum.zero_()
        self.sumsq.data.zero_()
        return self

    def set_count(self, n: int) -> None:
        """The count after the sums of several processes were added in place (a collective reduce)."""
        self._n = int(n)

    def reshift_(self, shift_d: torch.Tensor) -> "StreamingCovariance":
        """The same statistics around another shift (exact: sums of (x - s) become sums of (x - s_new)). Ranks of a
        multi-process run agree on one shift before their sums are added by a collective."""
        new = shift_d.detach().to(self.device, torch.float64)
        if self.shift is None or self._n == 0:
            self.shift = new.clone()
            return self
        if torch.equal(new, self.shift):  # already there (the ranks after their first checkpoint): no O(D^2) update
            return self
        self.flush()
        delta = self.shift - new
        _add_shift_terms(self.sumsq, self.sum, delta, self._n)
        self.sum += self._n * delta
        self.shift = new.clone()
        return self

    # ---- results -----------------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        self._require_rows(1)
        return self.shift + self.sum / self.n

    def covariance(self, *, ddof: int = 1) -> torch.Tensor:
        """Full symmetric [D, D] covariance in fp64 (CPU) or the accumulation dtype (GPU): D^2 entries, so for
        small D; the fit uses `covariance_operator` instead."""
        out_dtype = torch.float64 if self.device.type == "cpu" else self.accum_dtype
        return self.covariance_operator(ddof=ddof).to_dense(out_dtype)

    def covariance_operator(self, *, ddof: int = 1, dtype: torch.dtype | None = None,
                            factor: float = 1.0) -> "CovarianceOperator":
        """The covariance (times `factor`, a power of 4) as a `SymmetricOperator` over the packed sums, its products in
        `dtype` (default: the sums' dtype): no D x D copy."""
        self._require_rows(ddof + 1)
        self.flush()
        return CovarianceOperator(self.sumsq, self.sum / self.n, self.n, ddof, dtype=dtype, factor=factor)

    def top_eigenpairs(self, k: int, *, tol: float = 1e-6, dtype: torch.dtype | None = None,
                       scale: torch.Tensor | None = None) -> EighResult:
        """Top-k eigenpairs of the covariance (or of diag(scale) C diag(scale)): block Krylov over products in `dtype`
        (default fp32: fp64 basis and Rayleigh-Ritz, residuals near 1e-7 of the top eigenvalue, under the default tol;
        fp64 where every digit matters), or exact LAPACK on the fp64 covariance for small D.

        Variances far from 1 are solved as the covariance times a power of 4 that brings the largest near 1 (exact:
        the directions do not change, the eigenvalues are divided back in fp64). Unscaled, variances below ~1e-38 were
        rounded to 0 by the fp32 products (every eigenvalue 0), sums above ~1e38 overflowed them, and eigenvalues
        below ~1e-150 underflowed the solver's fp64 norms (wrong pairs, reported converged)."""
        variances = self.variances()
        factor = _normalizing_factor(variances)
        if scale is not None and self.sumsq.dtype == torch.float64 and _spread(variances) > 2.0 ** 100:
            # fp32 products would round the smallest variances to 0, and scaling (whitening) weighs them like the rest
            dtype = torch.float64
        operator = self.covariance_operator(dtype=dtype or torch.float32, factor=factor)
        if scale is not None:  # diag(s / sqrt(f)) (f C) diag(s / sqrt(f)) is the scaled covariance itself
            return topk_eigh(ScaledOperator(operator, scale.to(torch.float64) / math.sqrt(factor)), k, tol=tol)
        result = topk_eigh(operator, k, tol=tol)
        if factor == 1.0:
            return result
        return replace(result, eigenvalues=result.eigenvalues.to(torch.float64) / factor)

    def total_variance(self, *, ddof: int = 1, scale: torch.Tensor | None = None) -> float:
        variances = self.variances(ddof=ddof)
        if scale is not None:
            variances = variances * scale.to(variances.device, torch.float64) ** 2
        return float(variances.sum())

    def variances(self, *, ddof: int = 1) -> torch.Tensor:
        self._require_rows(ddof + 1)
        self.flush()
        diag = self.sumsq.diagonal().to(torch.float64)
        return ((diag - self.sum * self.sum / self.n) / (self.n - ddof)).clamp_min(0)

    # ---- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shift is None:
            raise AutoskillError("cannot save statistics before the shift is set")
        self.flush()
        return {
            "count": torch.tensor([self.n], dtype=torch.int64),
            "shift": self.shift,
            "sum": self.sum,
            "sumsq_packed": self.sumsq.data,  # the accumulator itself: half the bytes of the square, no copy
            "sumsq_tile": torch.tensor([self.sumsq.layout.tile], dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu") -> "StreamingCovariance":
        packed = state["sumsq_packed"]
        return cls._restore(state, packed.dtype, tuple(packed.shape), lambda data: data.copy_(packed), device)

    @classmethod
    def _restore(cls, state: dict[str, torch.Tensor], packed_dtype: torch.dtype, packed_shape: tuple[int, ...],
                 fill: Callable[[torch.Tensor], Any], device: str | torch.device) -> "StreamingCovariance":
        """Statistics from their small tensors and `fill`, which writes the packed sums into the new accumulator's
        own storage (a copy, or reads from the file): one copy of the sums on the device, never two."""
        layout = _packed_layout(state, packed_dtype, packed_shape)
        stats = cls(layout.dim, shift=state["shift"], accum_dtype=packed_dtype, device=device, tile=layout.tile)
        fill(stats.sumsq.data)
        stats._n = int(state["count"][0])
        stats.sum = state["sum"].to(stats.device, torch.float64).clone()
        return stats

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "StreamingCovariance":
        return load_statistics(path, device=device, expect=cls)


class ScaledOperator(SymmetricOperator):
    """diag(s) A diag(s) for a symmetric operator A and a feature scale s [D]: products s * (A @ (s * x))."""

    def __init__(self, operator: SymmetricOperator, scale_d: torch.Tensor):
        self.operator = operator
        self.shape, self.dtype, self.device = operator.shape, operator.dtype, operator.device
        if scale_d.shape != (self.shape[0],):
            raise AutoskillError(f"a feature scale of shape {tuple(scale_d.shape)} for {self.shape[0]} features")
        self.scale = scale_d.to(self.device, torch.float64)

    def __matmul__(self, x_dc: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(self.dtype)[:, None]
        return (self.operator @ (x_dc.to(self.device, self.dtype) * s)) * s

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dense = self.operator.to_dense(dtype)
        s = self.scale.to(dense.dtype)
        return dense.mul_(s[:, None]).mul_(s[None, :])


def _packed_layout(state: dict[str, torch.Tensor], packed_dtype: torch.dtype,
                   packed_shape: tuple[int, ...]) -> BlockPackedLayout:
    """The layout of saved exact statistics, checked against their small tensors and their packed sums' spec."""
    dim = state["shift"].numel()
    if state["shift"].ndim != 1 or state["sum"].shape != (dim,) or state["count"].numel() != 1:
        raise AutoskillError(f"statistics tensors have inconsistent sizes (count {tuple(state['count'].shape)}, shift "
                             f"{tuple(state['shift'].shape)}, sum {tuple(state['sum'].shape)}); the file is corrupted")
    try:
        layout = BlockPackedLayout(dim, int(state["sumsq_tile"].flatten()[0]))
    except (ValueError, IndexError) as exc:
        raise AutoskillError(f"statistics tensors have inconsistent sizes ({exc}); the file is corrupted")
    if packed_shape != (layout.numel,):
        raise AutoskillError(f"statistics tensors have inconsistent sizes (the packed sums of D={dim}, tile="
                             f"{layout.tile} are {layout.numel} numbers, got shape {packed_shape}); the file is "
                             "corrupted")
    if packed_dtype not in (torch.float32, torch.float64):
        raise AutoskillError(f"the second-moment sums are {packed_dtype}, not float32/float64; the file is corrupted")
    return layout


@contextmanager
def _naming(path: str | Path) -> Iterator[None]:
    """Errors in reading saved statistics name their file (`merge` reads several)."""
    try:
        yield
    except AutoskillError as e:
        message = str(e)
        raise AutoskillError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (KeyError, IndexError) as e:  # a tensor missing, or one of no elements where a number was expected
        raise AutoskillError(f"{path}: statistics tensors missing or empty ({type(e).__name__}: {e}); the file is "
                             "corrupted") from None


def _small_state(reader: TensorReader, path: str | Path) -> dict[str, torch.Tensor]:
    """Exact statistics' tensors but the packed sums."""
    missing = [k for k in STATE_KEYS if k not in reader]
    if missing:
        raise AutoskillError(f"{path}: missing tensors {missing}; not statistics of autoskill-fast")
    return {name: reader.get(name) for name in STATE_KEYS if name != "sumsq_packed"}


def _sq_norm_shift(s1: torch.Tensor, n: int, delta: torch.Tensor) -> torch.Tensor:
    """What sum |y|^2 of rows y (with sum s1) gains when they become y + delta: 2 s1 . delta + n |delta|^2."""
    return 2 * (s1 @ delta) + n * (delta @ delta)


def _add_shift_terms(sumsq: PackedSymmetric, s1: torch.Tensor, delta: torch.Tensor, n: int) -> None:
    """Second-moment sums of rows y (with sum s1) -> those of y + delta: + s1 delta^T + delta s1^T + n delta delta^T."""
    sumsq.add_outer_(s1, delta).add_outer_(delta, s1).add_outer_(delta, delta, alpha=n)


class CovarianceOperator(SymmetricOperator):
    """(S2 - n m m^T) / (n - ddof), m = S1 / n, as products with the packed S2: the covariance without its square.

    Each product reads the packed sums once and adds the rank-one centring term, in `dtype`. When that is the sums'
    own dtype (fp32 on a GPU) the sums are read in place: no copy of the 30 GB that Llama-3-8B's sums take. When it is
    lower (the fp64 sums of the CPU path multiplied in fp32: 2.4x faster products, which dominate the solve), the sums
    are rounded once into a packed copy of half their bytes. `to_dense` keeps the sums' precision unless told otherwise.
    """

    def __init__(self, sumsq: PackedSymmetric, mean_shifted: torch.Tensor, n: int, ddof: int, *,
                 dtype: torch.dtype | None = None, factor: float = 1.0):
        self.sumsq = sumsq
        self.shape = sumsq.shape
        self.dtype = dtype or sumsq.dtype
        self.device = sumsq.device
        self.mean_shifted = mean_shifted.to(self.device)
        self.n, self.ddof = n, ddof
        self.factor = float(factor)  # the operator is factor * the covariance (a power of 4: exact, its root too)
        if not (self.factor > 0 and math.frexp(math.sqrt(self.factor))[0] == 0.5):
            raise ValueError(f"CovarianceOperator: factor must be a power of 4, got {factor}")
        self._products: tuple[PackedSymmetric, list[torch.Tensor], torch.Tensor, float] | None = None

    def _prepare_products(self) -> tuple[PackedSymmetric, list[torch.Tensor], torch.Tensor, float]:
        """The packed sums in the product dtype (one cast, made on the first product), their diagonal tiles, the mean
        scaled like them, and what is left of the factor to multiply each product by. A cast to a lower dtype takes
        the factor in (fp64 sums far from 1 would leave fp32's range); sums read in place leave it to the product."""
        if self._products is None:
            if self.factor == 1.0 or self.sumsq.dtype == self.dtype:
                packed, root, after = self.sumsq.to(dtype=self.dtype), 1.0, self.factor
            else:
                packed = PackedSymmetric(torch.empty_like(self.sumsq.data, dtype=self.dtype), self.sumsq.layout)
                step = 1 << 22  # a slice at a time: no full-size temporary in the sums' dtype
                for start in range(0, packed.data.numel(), step):
                    packed.data[start:start + step] = self.sumsq.data[start:start + step] * self.factor
                root, after = math.sqrt(self.factor), 1.0
            mean = (self.mean_shifted.to(torch.float64) * root).to(self.dtype)  # small: shifted by a pilot mean
            self._products = (packed, packed.diagonal_tiles(), mean, after)
        return self._products

    def __matmul__(self, x_dc: torch.Tensor) -> torch.Tensor:
        packed, tiles, mean, after = self._prepare_products()
        x = x_dc.to(self.device, self.dtype)
        out = packed.matmul(x, diagonal_tiles=tiles)
        out.addr_(mean, mean @ x, alpha=-self.n)
        out.div_(self.n - self.ddof)
        return out if after == 1.0 else out.mul_(after)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The full [D, D] covariance (times the factor) in `dtype` (default: the sums' own precision)."""
        cov = self.sumsq.to_dense(dtype)
        mean = self.mean_shifted.to(cov.dtype)
        cov.addr_(mean, mean, alpha=-self.n)
        cov.div_(self.n - self.ddof)
        return cov if self.factor == 1.0 else cov.mul_(self.factor)


NORMAL_VARIANCES = (2.0 ** -40, 2.0 ** 40)  # a largest variance in here is solved as it is


def _spread(variances_d: torch.Tensor) -> float:
    """The largest variance over the smallest positive one (1 when none is positive)."""
    positive = variances_d[variances_d > 0]
    return float(positive.max() / positive.min()) if positive.numel() else 1.0


def _normalizing_factor(variances_d: torch.Tensor) -> float:
    """1, or the power of 4 that brings the largest variance near 1 when it lies outside `NORMAL_VARIANCES`."""
    largest = float(variances_d.max()) if variances_d.numel() else 0.0
    if not (math.isfinite(largest) and largest > 0) or NORMAL_VARIANCES[0] <= largest <= NORMAL_VARIANCES[1]:
        return 1.0
    exponent = max(-500, min(500, round(math.log2(largest) / 2)))
    return math.ldexp(1.0, -2 * exponent)


class SketchedCovariance(Statistics):
    """The fallback when D x D cannot fit: a Frequent Directions sketch of l rows in place of the second moment.

    Memory is O(l D) instead of O(D^2). Count, mean and total variance stay exact (count, sum and the sum of squared
    norms are tracked in fp64); the top eigenpairs are within the sketch's reported error bound (`error_bound`). The
    sketch rows are kept in fp64: its shrinks compute in fp64 anyway (a [2l, D] fp64 copy at each), and fp32 storage
    would add a rounding error of about 1e-7 of the top eigenvalue at every shrink, which the bound does not count.
    Sketches made around different shifts merge: the change of shift is exact (two fp64 rows kept beside the sketch:
    `FrequentDirections.reshift_`); the merged bound is the sketches' shrinkages plus that of the merge's own shrink.
    """

    def __init__(self, dim: int, sketch_size: int, *, shift: torch.Tensor | None = None, device: str | torch.device = "cpu"):
        self.dim = int(dim)
        self.device = torch.device(device)
        self.sketch = FrequentDirections(self.dim, sketch_size, dtype=torch.float64, device=self.device)
        self.work_dtype = torch.float64  # `update` subtracts the shift in fp64: the count, mean and total stay exact
        self.shift: torch.Tensor | None = None if shift is None else shift.to(self.device, torch.float64).clone()
        self.sq_norm = torch.zeros((), dtype=torch.float64, device=self.device)

    @property
    def n(self) -> int:
        return self.sketch.count

    @property
    def sum(self) -> torch.Tensor:
        return self.sketch.sum

    def update_shifted(self, xc_nd: torch.Tensor, *, owned: bool = False) -> None:
        if self.shift is None:
            raise AutoskillError("set_shift() must be called before update_shifted()")
        self._check_rows(xc_nd)
        xc_nd = xc_nd.to(self.device)
        self.sq_norm += xc_nd.to(torch.float64).pow(2).sum()
        self.sketch.update(xc_nd)  # the count and sum from the rows as given (fp64 exact)

    def merge(self, other: "SketchedCovariance") -> "SketchedCovariance":
        """Add another sketch's rows, re-expressed around this shift when theirs differs (the other is unchanged)."""
        if other.dim != self.dim:
            raise AutoskillError(f"cannot merge sketched statistics of {other.dim} features into {self.dim}")
        if other.shift is None:
            return self
        if other is self:  # its rows twice: merge a copy, which the merge leaves as it is
            other = SketchedCovariance.from_state_dict({k: v.clone() for k, v in self.state_dict().items()},
                                                       device=self.device)
        if self.shift is None or self.n == 0:
            self.shift = other.shift.to(self.device).clone()
        offset = other.shift.to(self.device) - self.shift  # the other's rows around our shift: y + offset
        self.sq_norm += other.sq_norm.to(self.device) + _sq_norm_shift(other.sum.to(self.device), other.n, offset)
        self.sketch.merge(other.sketch, offset=offset)
        return self

    def clear_(self) -> "SketchedCovariance":
        self.sketch = FrequentDirections(self.dim, self.sketch.sketch_size, dtype=self.sketch.dtype, device=self.device)
        self.sq_norm.zero_()
        return self

    def reshift_(self, shift_d: torch.Tensor) -> "SketchedCovariance":
        """The same statistics around another shift (exact: two fp64 rows kept beside the sketch)."""
        new = shift_d.detach().to(self.device, torch.float64)
        if self.shift is not None and self.n and not torch.equal(new, self.shift):
            offset = self.shift - new
            self.sq_norm += _sq_norm_shift(self.sum, self.n, offset)
            self.sketch.reshift_(offset)
        self.shift = new.clone()
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.sketch.sum / self.n

    def total_variance(self, *, ddof: int = 1, scale: torch.Tensor | None = None) -> float:
        if scale is not None:
            raise AutoskillError("a Frequent Directions sketch keeps no per-feature variances: scaling needs exact "
                                 "statistics (profile without --sketch-size)")
        if self.n <= ddof:
            raise AutoskillError(f"statistics hold {self.n} examples; at least {ddof + 1} are needed")
        return float((self.sq_norm - self.sketch.sum.pow(2).sum() / self.n) / (self.n - ddof))

    def error_bound(self) -> float:
        return self.sketch.error_bound()

    def top_eigenpairs(self, k: int, *, tol: float = 1e-6, dtype: torch.dtype | None = None,
                       scale: torch.Tensor | None = None) -> EighResult:
        """The sketch's top-k (its own fp64 eigensolve: `tol` and `dtype` do not apply); the residuals reported are
        the sketch's error bound relative to the top eigenvalue."""
        if scale is not None:
            raise AutoskillError("a Frequent Directions sketch keeps no per-feature variances: scaling needs exact "
                                 "statistics (profile without --sketch-size)")
        if k > self.sketch.sketch_size // 2:
            raise AutoskillError(f"-k {k} is too many directions for a sketch of {self.sketch.sketch_size} rows; "
                                 f"profile with --sketch-size {2 * k} or more")
        values, vectors = self.sketch.components(k)
        bound = torch.full((k,), self.error_bound() / max(float(values[0]), 1e-300), dtype=torch.float64)
        return EighResult(values, vectors, bound, "frequent-directions")

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shift is None:
            raise AutoskillError("cannot save statistics before the shift is set")
        return {**{f"fd.{k}": v for k, v in self.sketch.state_dict().items()}, "shift": self.shift,
                "sq_norm": self.sq_norm.reshape(1)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu") -> "SketchedCovariance":
        missing = [name for name in ("shift", "sq_norm") if name not in state]
        if missing:
            raise AutoskillError(f"sketched statistics lack {missing}; the file is corrupted")
        sketch = FrequentDirections.from_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fd.")}, device=device)
        if state["shift"].shape != (sketch.dim,) or state["sq_norm"].numel() != 1:
            raise AutoskillError(f"sketched statistics of {sketch.dim} dims with a shift of shape "
                                 f"{tuple(state['shift'].shape)} and a sq_norm of {state['sq_norm'].numel()} numbers; "
                                 "the file is corrupted")
        stats = cls(sketch.dim, sketch.sketch_size, shift=state["shift"], device=device)
        stats.sketch = sketch
        stats.sq_norm = state["sq_norm"].to(stats.device, torch.float64).reshape(()).clone()  # not the state's own
        return stats


def statistics_from_state(state: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
                          source: str = "the statistics") -> Statistics:
    """Exact or sketched statistics, whichever the state holds (`source` names it in errors)."""
    if "fd.sketch" in state:
        return SketchedCovariance.from_state_dict(state, device=device)
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise AutoskillError(f"{source}: missing tensors {missing}; not statistics of autoskill-fast")
    return StreamingCovariance.from_state_dict(state, device=device)


def saved_statistics_kind(path: str | Path) -> type:
    """StreamingCovariance or SketchedCovariance: what the file at `path` holds, from its header alone."""
    with TensorReader(path) as reader:
        return SketchedCovariance if "fd.sketch" in reader else StreamingCovariance


def load_statistics(path: str | Path, *, device: str | torch.device = "cpu",
                    expect: type | None = None) -> Statistics:
    """Exact or sketched statistics, whichever the file holds (`expect`: the class the caller needs). The packed sums
    of exact statistics are read straight into the accumulator on `device` (through one pinned slice for a GPU), so
    no second copy of them is ever in host memory: resuming 8 ranks of Llama-3-8B statistics does not need 8 x 30 GB
    of host RAM, and `fit` on a CPU holds the sums once."""
    with _naming(path), TensorReader(path) as reader:
        if "fd.sketch" in reader or "sumsq_packed" not in reader:
            stats = statistics_from_state({name: reader.get(name) for name in reader.keys()}, device=device,
                                          source=str(path))
        else:
            small = _small_state(reader, path)
            dtype, shape = reader.spec("sumsq_packed")
            stats = StreamingCovariance._restore(small, dtype, shape,
                                                 lambda data: reader.read_into("sumsq_packed", data), device)
    if expect is not None and not isinstance(stats, expect):
        raise AutoskillError(f"{path} holds {type(stats).__name__} statistics, not {expect.__name__}")
    return stats
