"""Streaming second moment: C += x^T x, upper triangle only, on a square or block-packed accumulator.

One op, four parts: `_cov_update_kernel` (Triton), its launcher `cov_update_triton`, the plain-torch reference
`cov_update_ref` (also the CPU path and the fallback), and the public `cov_update_`, which dispatches.
packed.py's `symmetrize_upper(_)` completes a square accumulator.

Storage of the symmetric D x D accumulator:
- square: a [D, D] tensor of which only the upper triangle (i <= j) is guaranteed to hold the sum; entries below
  the diagonal are unspecified (the Triton path writes the lower half of diagonal tiles, the reference does not).
- packed: a `PackedSymmetric` (see packed.py): the upper block triangle, block row after block row, half the memory.
"""

from __future__ import annotations

import torch

from .dispatch import interpreting, on_tensor_device, tl, triton, use_triton
from .packed import PackedSymmetric

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REF_BLOCK_ROWS = 512  # row-block height of the reference's triangular matmuls: large enough for BLAS efficiency
TILE_GROUP = 16  # tile rows visited together, column by column, in the kernel's launch order (see _tile_pairs)


@triton.jit
def _cov_update_kernel(
    x_ptr,  # [N, D] fp32 / bf16 / fp16, any strides
    cov_ptr,  # [D, D] fp32 (any strides), or the 1-D fp32 storage of a block-packed matrix when PACKED
    tiles_ptr,  # [n_tiles * (n_tiles + 1) // 2, 2] int32: (tile row, tile col) of each upper tile, row <= col
    N,
    D,
    stride_xn,
    stride_xd,
    stride_ci,
    stride_cj,
    padded_dim,  # PACKED: the packed layout's padded_dim (D rounded up to a multiple of TILE)
    PACKED: tl.constexpr,
    TILE: tl.constexpr,  # PACKED: the layout's tile, a multiple of BLOCK_D
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program per upper-triangle tile pair (ti <= tj): half the FLOPs of the full product. Each program reads
    # column blocks ti and tj of x once, accumulates in fp32 over all N rows, then reads-modifies-writes its tile of
    # C once, so C traffic per call is one pass over the triangle.
    pid = tl.program_id(0).to(tl.int64)
    ti = tl.load(tiles_ptr + 2 * pid).to(tl.int64)
    tj = tl.load(tiles_ptr + 2 * pid + 1).to(tl.int64)
    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < D
    mask_j = offs_j < D
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        a = tl.load(x_ptr + offs_n[:, None] * stride_xn + offs_i[None, :] * stride_xd,
                    mask=mask_n[:, None] & mask_i[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        b = tl.load(x_ptr + offs_n[:, None] * stride_xn + offs_j[None, :] * stride_xd,
                    mask=mask_n[:, None] & mask_j[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        if UPCAST:
            # Triton's CPU interpreter multiplies bf16 operands as their raw uint16 bits (triton-lang/triton#11584,
            # "not supported yet"); bf16 -> fp32 is exact, so the product equals a bf16 dot with an fp32 accumulator.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)
    rows = offs_i[:, None]
    cols = offs_j[None, :]
    mask = mask_i[:, None] & mask_j[None, :]
    if PACKED:
        # This tile lies in block row I of the layout (TILE is a multiple of BLOCK_D), which starts at
        # TILE * (I * padded_dim - TILE * I * (I - 1) / 2) and is a row-major [TILE, padded_dim - I * TILE] matrix.
        block = (ti * BLOCK_D) // TILE
        first = block * TILE
        start = TILE * (block * padded_dim - TILE * block * (block - 1) // 2)
        ptrs = cov_ptr + start + (rows - first) * (padded_dim - first) + (cols - first)
    else:
        ptrs = cov_ptr + rows * stride_ci + cols * stride_cj
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)


_tile_pairs_cache: dict[tuple[int, torch.device], torch.Tensor] = {}


def _tile_pairs(n_tiles: int, device: torch.device) -> torch.Tensor:
    """[n_pairs, 2] int32 upper-triangle tile coordinates (row <= col) in launch order, grouped as in Triton's matmul
    tutorial: the tiles of TILE_GROUP tile rows are visited column by column.

    Programs that run at the same time then read about 2 x TILE_GROUP column blocks of x, which L2 serves to all of
    them. In row-major order each program would bring its own column block from memory: at D = 122,880 the rows
    (1 GB in bf16) are far larger than L2, and the update would be bound by memory at ~128 FLOP per byte.
    """
    key = (n_tiles, device)
    if key not in _tile_pairs_cache:
        rows, cols = torch.triu_indices(n_tiles, n_tiles)
        order = torch.argsort((rows // TILE_GROUP * n_tiles + cols) * TILE_GROUP + rows % TILE_GROUP)
        pairs = torch.stack([rows[order], cols[order]], dim=1).to(torch.int32)
        _tile_pairs_cache[key] = pairs.to(device)
    return _tile_pairs_cache[key]


def _default_config(dtype: torch.dtype) -> dict:
    if interpreting():  # big tiles: the interpreter's cost is per program and per loop step, not per FLOP
        return dict(BLOCK_D=64, BLOCK_N=64, num_warps=1, num_stages=1)
    # 128 x 128 fp32 accumulator per program; K-steps of 64 (16-bit) or 32 (fp32) keep 3 pipeline stages of both
    # operands in 96 KiB of shared memory on Hopper/Ampere.
    return dict(BLOCK_D=128, BLOCK_N=64 if dtype != torch.float32 else 32, num_warps=8, num_stages=3)


def _fp32_dot_precision() -> str:
    """3xTF32 on NVIDIA (about fp32 accuracy at tensor-core speed); AMD's Triton does not offer it, so plain fp32."""
    return "ieee" if torch.version.hip else "tf32x3"


def cov_update_triton(cov: torch.Tensor | PackedSymmetric, x: torch.Tensor, *, block_d: int | None = None,
                      block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                      input_precision: str | None = None) -> torch.Tensor | PackedSymmetric:
    """Launch `_cov_update_kernel`: cov (fp32, square or packed) += x^T x on upper-triangle tiles. No validation.

    fp32 x is multiplied with 3xTF32 on NVIDIA (`input_precision="tf32x3"`): close to fp32 accuracy at tensor-core
    speed; plain TF32 would round x to 10 mantissa bits, worse than the accumulator deserves. 16-bit x goes straight
    to the tensor cores (products are exact in the fp32 accumulator). The tile and pipeline settings default to
    `_default_config`, the fp32 precision to tf32x3; bench/gpu_kernels.py --fp32-sweep times others (Triton's
    `tl.dot` precisions, e.g. bf16x3, bf16x6, ieee; the CPU interpreter knows only tf32, tf32x3 and ieee).
    """
    n_rows, dim = x.shape
    if n_rows == 0 or dim == 0:
        return cov
    config = _default_config(x.dtype)
    block_d = block_d or config["BLOCK_D"]
    block_n = block_n or config["BLOCK_N"]
    packed = isinstance(cov, PackedSymmetric)
    if packed and cov.layout.tile % block_d:
        raise ValueError(f"cov_update_triton: the packed tile {cov.layout.tile} is not a multiple of block_d={block_d}")
    pairs = _tile_pairs(triton.cdiv(dim, block_d), x.device)
    storage = cov.data if packed else cov
    stride_ci, stride_cj = (0, 0) if packed else cov.stride()
    with on_tensor_device(x):
        _cov_update_kernel[(pairs.shape[0],)](
            x, storage, pairs,
            n_rows, dim,
            x.stride(0), x.stride(1),
            stride_ci, stride_cj,
            cov.layout.padded_dim if packed else 0,
            PACKED=packed,
            TILE=cov.layout.tile if packed else 1,
            UPCAST=interpreting() and x.dtype == torch.bfloat16,
            INPUT_PRECISION=(input_precision or _fp32_dot_precision()) if x.dtype == torch.float32 else None,
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps or config["num_warps"],
            num_stages=num_stages or config["num_stages"],
        )
    return cov


def _row_blocks(dim: int, block: int = REF_BLOCK_ROWS):
    for i0 in range(0, dim, block):
        yield i0, min(i0 + block, dim)


def cov_update_ref(cov: torch.Tensor | PackedSymmetric, x: torch.Tensor) -> torch.Tensor | PackedSymmetric:
    """Plain-torch `cov_update_`, in cov's dtype (x is converted to it: fp32 x into an fp64 cov is upcast).

    Works by row blocks of the upper triangle, cov[i0:i1, i0:] += x[:, i0:i1]^T x[:, i0:] (a packed matrix's own
    block rows), so it also does about half the FLOPs of x^T x and never allocates a D x D temporary.
    """
    dim = x.shape[1]
    if x.shape[0] == 0:
        return cov
    xc = x.to(cov.dtype)
    if isinstance(cov, PackedSymmetric):
        for r0, r1, block in cov.block_rows():
            block[:r1 - r0, :dim - r0].addmm_(xc[:, r0:r1].T, xc[:, r0:])
        return cov
    for i0, i1 in _row_blocks(dim):
        cov[i0:i1, i0:].addmm_(xc[:, i0:i1].T, xc[:, i0:])
    return cov


def _check_cov_args(cov: torch.Tensor | PackedSymmetric, x: torch.Tensor) -> None:
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"cov_update_: x must be a float [N, D] tensor, got {x.dtype} {tuple(x.shape)}")
    dim = x.shape[1]
    if cov.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"cov_update_: cov must be float32 or float64, got {cov.dtype}")
    if isinstance(cov, PackedSymmetric):
        if cov.dim != dim:
            raise ValueError(f"cov_update_: the packed cov is {cov.dim} x {cov.dim} but x has {dim} columns")
    elif cov.ndim != 2 or cov.shape != (dim, dim):
        raise ValueError(f"cov_update_: cov must be [D, D] = ({dim}, {dim}) for x of {dim} columns, got "
                         f"{tuple(cov.shape)}")
    if cov.device != x.device:
        raise ValueError(f"cov_update_: cov is on {cov.device} but x is on {x.device}")


def cov_update_(cov: torch.Tensor | PackedSymmetric, x: torch.Tensor) -> torch.Tensor | PackedSymmetric:
    """In place C += x^T x, accumulated in fp32 (or fp64 when cov is fp64, as on the CPU path); returns cov.

    x: [N, D] fp32 / bf16 / fp16 (fp64 goes to the reference), any row stride. For a compute-bound update on a GPU,
        stage a few thousand rows per call.
    cov: [D, D] fp32 / fp64 of which only the upper triangle (i <= j) is guaranteed updated, or a `PackedSymmetric`
        (half the memory). The Triton kernel needs fp32 cov; an fp64 cov uses the reference (fp64 matmuls) on every
        device.
    """
    _check_cov_args(cov, x)
    storage = cov.data if isinstance(cov, PackedSymmetric) else cov
    if cov.dtype == torch.float32 and x.dtype in KERNEL_DTYPES and use_triton(storage, x):
        return cov_update_triton(cov, x)
    return cov_update_ref(cov, x)
