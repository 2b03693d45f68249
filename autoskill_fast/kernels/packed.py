"""Block-packed storage of a symmetric matrix: half the memory of the square, and every product is a GEMM.

The [D, D] matrix is cut into tiles of `tile` x `tile` (D padded up to a multiple of `tile`). Only the upper block
triangle is stored, one block row after another: block row I is a dense row-major [tile, padded_dim - I * tile]
matrix holding rows I * tile ... and columns I * tile ... of the matrix. So

    storage = [ block row 0 | block row 1 | ... ]
    block row I starts at tile * (I * padded_dim - tile * I * (I - 1) / 2)

which is tile^2 * n_blocks * (n_blocks + 1) / 2 entries: D^2 / 2 plus about D * tile / 2. Llama-3-8B's 122,880 dims
with tile 512 are 7.6e9 entries (30.4 GB in fp32) against 15.1e9 (60.4 GB) for the square.

Why blocks rather than LAPACK's row-by-row packing: a block row is an ordinary strided matrix, so the streaming update
(`cov_update_`, one `addmm_` or Triton tile per block) and the product with a block of vectors
(`PackedSymmetric.matmul`, three GEMMs per block row) run at BLAS / tensor-core speed without unpacking, and a
product reads the stored half once.

Only the upper triangle is meaningful: entries of a diagonal tile below its diagonal are unspecified (the Triton
kernel skips those sub-tiles; the reference writes them), so readers symmetrize diagonal tiles from their upper part.
Padding rows and columns (beyond D) stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

TILE_MULTIPLE = 128  # tiles are whole multiples of the Triton kernel's BLOCK_D (128 on GPU, 64 interpreted)
TILES = (512, 256, 128)  # candidates, preferred in this order: taller block rows make fewer, larger GEMMs
TILE_SLACK = 1.01  # a taller tile may cost this much more memory than the most compact one
SYMMETRIZE_BLOCK_ROWS = 512  # rows per copy of `symmetrize_upper_`
MATMUL_CHUNK_COLUMNS = 1024  # a tile-high chunk of a block row: 0.5-2 MB in fp32, which stays in L2 for its second use


def default_tile(dim: int) -> int:
    """The tile of a new matrix: the tallest candidate within 1% of the smallest storage (the padding of D up to a
    multiple of the tile, and the full diagonal tiles, cost about D * tile / 2 entries). At D = 1000 that is 128 (59%
    of the square, against 79% with 512); at D = 16,128 it is 256; at 122,880 (a multiple of 512) it is 512."""
    sizes = {tile: BlockPackedLayout(dim, tile).numel for tile in TILES}
    smallest = min(sizes.values())
    return next(tile for tile in TILES if sizes[tile] <= TILE_SLACK * smallest)


@dataclass(frozen=True)
class BlockPackedLayout:
    """Where each block row of a block-packed [dim, dim] symmetric matrix lives in its 1-D storage."""

    dim: int  # D, the matrix order
    tile: int  # block height and width, a multiple of TILE_MULTIPLE

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"a packed matrix needs dim >= 1, got {self.dim}")
        if self.tile < 1 or self.tile % TILE_MULTIPLE:
            raise ValueError(f"tile must be a positive multiple of {TILE_MULTIPLE}, got {self.tile}")

    @property
    def n_blocks(self) -> int:
        return -(-self.dim // self.tile)

    @property
    def padded_dim(self) -> int:
        return self.n_blocks * self.tile

    @property
    def numel(self) -> int:
        return self.tile * self.tile * self.n_blocks * (self.n_blocks + 1) // 2

    def offset(self, block: int) -> int:
        """Start of block row `block` in the storage."""
        return self.tile * (block * self.padded_dim - self.tile * block * (block - 1) // 2)

    def width(self, block: int) -> int:
        """Columns stored in block row `block` (padding included)."""
        return self.padded_dim - block * self.tile


class PackedSymmetric:
    """A symmetric [D, D] fp32/fp64 matrix in block-packed storage (module docstring); `data` is the 1-D storage."""

    def __init__(self, data: torch.Tensor, layout: BlockPackedLayout):
        if data.ndim != 1 or data.numel() != layout.numel or not data.is_contiguous():
            raise ValueError(f"a block-packed matrix of D={layout.dim}, tile={layout.tile} is a contiguous 1-D "
                             f"tensor of {layout.numel} entries, got shape {tuple(data.shape)}")
        self.data = data
        self.layout = layout

    @classmethod
    def zeros(cls, dim: int, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              tile: int | None = None) -> "PackedSymmetric":
        layout = BlockPackedLayout(dim, tile or default_tile(dim))
        return cls(torch.zeros(layout.numel, dtype=dtype, device=device), layout)

    @classmethod
    def from_dense(cls, matrix_dd: torch.Tensor, *, tile: int | None = None) -> "PackedSymmetric":
        """Pack the upper triangle of a square matrix (its lower triangle is not read)."""
        if matrix_dd.ndim != 2 or matrix_dd.shape[0] != matrix_dd.shape[1]:
            raise ValueError(f"from_dense: expected a square matrix, got {tuple(matrix_dd.shape)}")
        packed = cls.zeros(matrix_dd.shape[0], dtype=matrix_dd.dtype, device=matrix_dd.device, tile=tile)
        for r0, r1, block in packed.block_rows():
            block[:r1 - r0, :packed.dim - r0] = matrix_dd[r0:r1, r0:]
        return packed

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def block_row(self, block: int) -> torch.Tensor:
        """Block row `block` as a [tile, width] view (padding included)."""
        start, width = self.layout.offset(block), self.layout.width(block)
        return self.data[start:start + self.layout.tile * width].view(self.layout.tile, width)

    def block_rows(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(first row, end row, [tile, width] view) per block row; rows r0..r1-1 of the matrix are its valid rows."""
        for block in range(self.layout.n_blocks):
            r0 = block * self.layout.tile
            yield r0, min(r0 + self.layout.tile, self.dim), self.block_row(block)

    def diagonal_tiles(self) -> list[torch.Tensor]:
        """The full symmetric [h, h] diagonal tiles (new tensors, built from their upper triangles)."""
        tiles = []
        for r0, r1, block in self.block_rows():
            upper = block[:r1 - r0, :r1 - r0].triu()
            tiles.append(upper + upper.triu(1).T)
        return tiles

    def diagonal(self) -> torch.Tensor:
        return torch.cat([block[:r1 - r0, :r1 - r0].diagonal() for r0, r1, block in self.block_rows()])

    # ---- arithmetic --------------------------------------------------------------------------------------
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PackedSymmetric":
        data = self.data.to(device=device, dtype=dtype)
        return self if data is self.data else PackedSymmetric(data, self.layout)

    def clone(self) -> "PackedSymmetric":
        return PackedSymmetric(self.data.clone(), self.layout)

    def add_(self, other: "PackedSymmetric") -> "PackedSymmetric":
        """self += other (any dtype or device; another tile goes through a dense copy, D^2 entries)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot add a packed matrix of D={other.dim} to one of D={self.dim}")
        if other.layout != self.layout:
            other = PackedSymmetric.from_dense(other.to_dense(), tile=self.layout.tile)
        self.data += other.data.to(self.device, self.dtype)
        return self

    def add_outer_(self, u: torch.Tensor, v: torch.Tensor, *, alpha: float = 1.0) -> "PackedSymmetric":
        """Upper triangle += alpha * u v^T. Adding u v^T and v u^T makes a symmetric update."""
        u = u.to(self.device, self.dtype)
        v = v.to(self.device, self.dtype)
        for r0, r1, block in self.block_rows():
            block[:r1 - r0, :self.dim - r0].addr_(u[r0:r1], v[r0:], alpha=alpha)
        return self

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The full symmetric [D, D] matrix (a new tensor: D^2 entries)."""
        full = torch.empty(self.dim, self.dim, dtype=dtype or self.dtype, device=self.device)
        for r0, r1, block in self.block_rows():
            full[r0:r1, r0:] = block[:r1 - r0, :self.dim - r0]
        return symmetrize_upper_(full)

    def matmul(self, x_dc: torch.Tensor, *, diagonal_tiles: list[torch.Tensor] | None = None) -> torch.Tensor:
        """self @ x for x [D, c], in self's dtype, reading the stored half from memory once.

        diagonal_tiles: `diagonal_tiles()` computed once, for repeated products (saves symmetrizing them each time).
        """
        if x_dc.ndim != 2 or x_dc.shape[0] != self.dim:
            raise ValueError(f"matmul: x must be [{self.dim}, c], got {tuple(x_dc.shape)}")
        x = x_dc.to(self.device, self.dtype)
        out = torch.zeros_like(x)
        tiles = diagonal_tiles if diagonal_tiles is not None else self.diagonal_tiles()
        # The tiles right of the diagonal, and (by symmetry) those below it. On CPU each chunk of columns is used twice
        # while it is in cache, so a product reads the stored half from memory once (10-15% faster); a GPU takes
        # whole block rows (thousands of small launches per product would cost more than the second read).
        chunk = MATMUL_CHUNK_COLUMNS if self.device.type == "cpu" else self.dim
        for (r0, r1, block), diag in zip(self.block_rows(), tiles):
            out[r0:r1].addmm_(diag, x[r0:r1])
            for c0 in range(r1, self.dim, chunk):
                c1 = min(c0 + chunk, self.dim)
                right = block[:r1 - r0, c0 - r0:c1 - r0]
                out[r0:r1].addmm_(right, x[c0:c1])
                out[c0:c1].addmm_(right.T, x[r0:r1])
        return out

    __matmul__ = matmul


def symmetrize_upper_(cov: torch.Tensor) -> torch.Tensor:
    """In place: copy the upper triangle of a square [D, D] onto its lower triangle; returns cov."""
    dim = cov.shape[0]
    for i0 in range(0, dim, SYMMETRIZE_BLOCK_ROWS):
        i1 = min(i0 + SYMMETRIZE_BLOCK_ROWS, dim)
        cov[i1:, i0:i1].copy_(cov[i0:i1, i1:].T)
        diag = cov[i0:i1, i0:i1]
        diag.copy_(diag.triu() + diag.triu(1).T)
    return cov


def symmetrize_upper(cov: torch.Tensor) -> torch.Tensor:
    """Full symmetric [D, D] from a square whose upper triangle is valid (a new tensor; see `symmetrize_upper_`)."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"symmetrize_upper: expected a square matrix, got {tuple(cov.shape)}")
    return symmetrize_upper_(cov.clone())
