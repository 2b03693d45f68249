"""PackedSymmetric (block-packed storage of a symmetric matrix) against dense fp64 math."""

from __future__ import annotations

import pytest
import torch

from autoskill_fast.kernels import BlockPackedLayout, PackedSymmetric
from autoskill_fast.kernels.packed import default_tile

SHAPES = [(1, 128), (97, 128), (128, 128), (129, 128), (300, 128), (700, 256), (2500, 128)]  # (D, tile)
# 1 to 20 block rows; at D = 2500 the block rows are multiplied in several column chunks (MATMUL_CHUNK_COLUMNS)


def random_symmetric(D: int, seed: int) -> torch.Tensor:
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a + a.T


def with_garbage_below(sym: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.randn(sym.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=sym.dtype)
    return sym.triu() + noise.tril(-1)


def test_layout_offsets_are_block_rows_back_to_back():
    layout = BlockPackedLayout(dim=300, tile=128)  # 3 block rows, padded to 384
    assert (layout.n_blocks, layout.padded_dim) == (3, 384)
    assert [layout.width(b) for b in range(3)] == [384, 256, 128]
    assert [layout.offset(b) for b in range(3)] == [0, 128 * 384, 128 * (384 + 256)]
    assert layout.numel == 128 * (384 + 256 + 128) == 128 * 128 * 6


def test_layout_and_storage_validation():
    with pytest.raises(ValueError, match="multiple of 128"):
        BlockPackedLayout(dim=10, tile=100)
    with pytest.raises(ValueError, match="dim >= 1"):
        BlockPackedLayout(dim=0, tile=128)
    with pytest.raises(ValueError, match="contiguous 1-D tensor of 16384 entries"):
        PackedSymmetric(torch.zeros(5), BlockPackedLayout(dim=10, tile=128))


@pytest.mark.parametrize("dim,tile", [(1, 128), (128, 128), (129, 128), (1000, 128), (16_128, 256), (4096, 128),
                                      (122_880, 512)])
def test_default_tile_keeps_the_padding_small(dim, tile):
    assert default_tile(dim) == tile
    layout = BlockPackedLayout(dim, tile)
    assert layout.numel <= 1.01 * min(BlockPackedLayout(dim, t).numel for t in (128, 256, 512))


def test_memory_is_half_the_square_for_large_matrices():
    layout = BlockPackedLayout(dim=122_880, tile=default_tile(122_880))  # Llama-3-8B, 30 x 4096
    assert layout.numel / 122_880**2 < 0.503
    assert layout.numel * 4 / 1e9 == pytest.approx(30.3, abs=0.1)  # GB in fp32


@pytest.mark.parametrize("D,tile", SHAPES)
def test_round_trip_reads_only_the_upper_triangle(D, tile):
    sym = random_symmetric(D, D)
    packed = PackedSymmetric.from_dense(with_garbage_below(sym, D), tile=tile)
    assert torch.equal(packed.to_dense(), sym)
    assert torch.equal(packed.diagonal(), sym.diagonal())
    assert packed.to_dense(torch.float32).dtype == torch.float32
    assert packed.shape == (D, D) and packed.layout.tile == tile


@pytest.mark.parametrize("D,tile", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matmul(D, tile, dtype):
    sym = random_symmetric(D, D)
    packed = PackedSymmetric.from_dense(with_garbage_below(sym, D), tile=tile).to(dtype=dtype)
    x = torch.randn(D, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = sym @ x
    got = packed @ x.to(dtype)
    assert got.dtype == dtype and got.shape == (D, 7)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    scale = float((sym.abs() @ x.abs()).max())
    assert float((got.double() - want).abs().max()) <= tol * scale
    assert torch.equal(packed.matmul(x.to(dtype), diagonal_tiles=packed.diagonal_tiles()), got)
    column = x[:, 1:2].to(dtype).T.contiguous().T  # a non-contiguous [D, 1]
    assert torch.allclose((packed @ column).double(), want[:, 1:2], rtol=0, atol=tol * scale)


def test_matmul_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"x must be \[3, c\]"):
        PackedSymmetric.zeros(3) @ torch.zeros(4, 2)


@pytest.mark.parametrize("D,tile", SHAPES)
def test_add_outer_updates_the_upper_triangle(D, tile):
    sym = random_symmetric(D, D)
    gen = torch.Generator().manual_seed(9)
    u, v = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    packed = PackedSymmetric.from_dense(sym, tile=tile)
    packed.add_outer_(u, v, alpha=0.5).add_outer_(v, u, alpha=0.5)
    assert torch.allclose(packed.to_dense(), sym + 0.5 * (torch.outer(u, v) + torch.outer(v, u)), atol=1e-12)


def test_add_across_tiles_dtypes_and_dims():
    a, b = random_symmetric(300, 1), random_symmetric(300, 2)
    same = PackedSymmetric.from_dense(a, tile=128).add_(PackedSymmetric.from_dense(b.float(), tile=128))
    assert torch.allclose(same.to_dense(), a + b.float().double(), atol=1e-12)
    other_tile = PackedSymmetric.from_dense(a, tile=128).add_(PackedSymmetric.from_dense(b, tile=256))
    assert torch.allclose(other_tile.to_dense(), a + b, atol=1e-12)
    with pytest.raises(ValueError, match="D=299 to one of D=300"):
        same.add_(PackedSymmetric.zeros(299))


def test_to_and_clone_copy_only_when_needed():
    packed = PackedSymmetric.zeros(10, dtype=torch.float64)
    assert packed.to(dtype=torch.float64) is packed
    assert packed.to(dtype=torch.float32).dtype == torch.float32
    copy = packed.clone()
    copy.data += 1
    assert float(packed.data.abs().sum()) == 0
