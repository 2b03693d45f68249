"""cov_update_ (Triton kernel interpreted on CPU, and the torch reference) against fp64 math, on square and
block-packed accumulators; symmetrize_upper; the GPU benchmark script's CPU smoke run."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoskill_fast.kernels import (TOLERANCES, PackedSymmetric, cov_update_, cov_update_triton, covariance,
                                    symmetrize_upper, symmetrize_upper_)
from autoskill_fast.kernels.dispatch import DISABLE_ENV, FORCE_ENV
from kernel_testing import DEVICE, DTYPES, needs_triton

REPO = Path(__file__).resolve().parents[1]




def expected_cov(init: torch.Tensor, x: torch.Tensor):
    """fp64 (init + x^T x, bound) with bound = |init| + |x|^T |x| for the tolerance."""
    x64 = x.double()
    return init.double() + x64.T @ x64, init.double().abs() + x64.abs().T @ x64.abs()


def assert_upper_close(got_dd: torch.Tensor, want_dd: torch.Tensor, bound_dd: torch.Tensor, dtype: torch.dtype):
    atol, rtol = TOLERANCES[dtype]
    upper = torch.ones_like(want_dd, dtype=torch.bool).triu()
    err = (got_dd.double() - want_dd).abs()[upper]
    limit = (atol + rtol * bound_dd)[upper]
    worst = (err - limit).argmax()
    assert (err <= limit).all(), f"error {err[worst]:.3g} > limit {limit[worst]:.3g} in the upper triangle"


def random_symmetric(D: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(D, D, generator=gen, dtype=torch.float64)
    return a + a.T


def make_cov(init_dd: torch.Tensor, packed: bool) -> torch.Tensor | PackedSymmetric:
    """The accumulator under test, holding init (square, or block-packed with the smallest tile: many block rows)."""
    return PackedSymmetric.from_dense(init_dd, tile=128).to(DEVICE) if packed else init_dd.clone().to(DEVICE)


def as_dense(cov: torch.Tensor | PackedSymmetric) -> torch.Tensor:
    """A square on the CPU whose upper triangle is the accumulator's; for packed ones, also checks the padding."""
    if isinstance(cov, torch.Tensor):
        return cov.cpu()
    cov = cov.to("cpu")
    for r0, r1, block in cov.block_rows():
        assert (block[r1 - r0:] == 0).all() and (block[:, cov.dim - r0:] == 0).all(), "wrote into the padding"
    return cov.to_dense()


@pytest.mark.parametrize("D,N", list(itertools.product([1, 97, 123, 200], [1, 13, 300])))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_cov_update(impl, D, N, dtype, packed):
    gen = torch.Generator().manual_seed(D * 1000 + N)
    x = torch.randn(N, D, generator=gen).to(dtype)
    init = random_symmetric(D, gen).float()  # the update adds into what is there
    cov = make_cov(init, packed)
    assert cov_update_(cov, x.to(DEVICE)) is cov
    assert_upper_close(as_dense(cov), *expected_cov(init, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_strided_x_and_cov(impl, dtype, packed):
    """x is a row-strided column slice; the square cov is a strided view into a larger buffer."""
    gen = torch.Generator().manual_seed(7)
    N, D = 300, 123
    x = torch.randn(2 * N, D + 9, generator=gen).to(dtype)[::2, 4:4 + D]
    if packed:
        cov = PackedSymmetric.zeros(D, device=DEVICE, tile=128)
    else:
        big = torch.full((D + 3, 2 * D), 5.0, device=DEVICE)
        cov = big[2:, :2 * D:2][:D].fill_(0.0)  # strides (2D, 2)
    cov_update_(cov, x.to(DEVICE))
    assert_upper_close(as_dense(cov), *expected_cov(torch.zeros(D, D), x), dtype)
    if not packed:
        assert (big[:2] == 5.0).all() and (big[2:, 1::2] == 5.0).all(), "wrote outside the cov view"


@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_any_batch_split_gives_the_same_sum(impl, packed):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 97, generator=gen).bfloat16()
    D = x.shape[1]
    cov = make_cov(torch.zeros(D, D), packed)
    for lo, hi in [(0, 1), (1, 14), (14, 200), (200, 300)]:
        cov_update_(cov, x[lo:hi].to(DEVICE))
    assert_upper_close(as_dense(cov), *expected_cov(torch.zeros(D, D), x), torch.bfloat16)


@needs_triton
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_small_tiles(packed):
    """Many tiles (diagonal, off-diagonal, ragged edges; several block rows of the packed layout) and a K loop of
    several steps."""
    gen = torch.Generator().manual_seed(4)
    N, D = 77, 300
    x = torch.randn(N, D, generator=gen).half()
    cov = make_cov(torch.zeros(D, D), packed)
    cov_update_triton(cov, x.to(DEVICE), block_d=16, block_n=16)
    assert_upper_close(as_dense(cov), *expected_cov(torch.zeros(D, D), x), torch.float16)


@pytest.mark.parametrize("n_tiles", [1, 5, covariance.TILE_GROUP, covariance.TILE_GROUP + 1, 3 * covariance.TILE_GROUP + 7])
def test_tile_pairs_cover_the_upper_triangle_in_groups_of_rows(n_tiles):
    pairs = covariance._tile_pairs(n_tiles, torch.device("cpu")).tolist()
    assert sorted(map(tuple, pairs)) == [(i, j) for i in range(n_tiles) for j in range(i, n_tiles)]
    group = covariance.TILE_GROUP
    groups = [i // group for i, _ in pairs]
    assert groups == sorted(groups)  # one group of tile rows after another
    for g in set(groups):  # within a group: column by column, rows ascending within a column
        cols_rows = [(j, i) for i, j in pairs if i // group == g]
        assert cols_rows == sorted(cols_rows)


@needs_triton
def test_packed_tile_must_hold_whole_kernel_tiles():
    with pytest.raises(ValueError, match="not a multiple of block_d"):
        cov_update_triton(PackedSymmetric.zeros(5, device=DEVICE), torch.zeros(2, 5, device=DEVICE), block_d=96)


@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_fp64_cov_upcasts_x(packed):
    """The CPU path: fp64 accumulator, fp32 rows upcast (not the accumulator downcast); several reference row blocks."""
    gen = torch.Generator().manual_seed(5)
    D = covariance.REF_BLOCK_ROWS + 77
    x = torch.randn(6, D, generator=gen) * 1e3
    init = random_symmetric(D, gen)
    cov = PackedSymmetric.from_dense(init) if packed else init.clone()
    cov_update_(cov, x)
    got = cov.to_dense() if packed else symmetrize_upper(cov)
    want = init + x.double().T @ x.double()
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-13, atol=1e-9)


@needs_triton
def test_fp64_cov_goes_to_reference(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    calls = []
    monkeypatch.setattr(covariance, "cov_update_ref", lambda *a, **k: calls.append("ref"))
    monkeypatch.setattr(covariance, "cov_update_triton", lambda *a, **k: calls.append("triton"))
    cov_update_(torch.zeros(3, 3, dtype=torch.float64, device=DEVICE), torch.zeros(2, 3, device=DEVICE))
    cov_update_(torch.zeros(3, 3, device=DEVICE), torch.zeros(2, 3, dtype=torch.float64, device=DEVICE))
    cov_update_(torch.zeros(3, 3, device=DEVICE), torch.zeros(2, 3, dtype=torch.bfloat16, device=DEVICE))
    assert calls == ["ref", "ref", "triton"]


@pytest.mark.parametrize("D", [1, 2, 97, covariance.REF_BLOCK_ROWS + 3])
def test_symmetrize_upper(D):
    gen = torch.Generator().manual_seed(D)
    sym = random_symmetric(D, gen)
    garbage_below = sym.triu() + torch.randn(D, D, generator=gen, dtype=torch.float64).tril(-1)
    assert torch.equal(symmetrize_upper(garbage_below), sym)
    in_place = garbage_below.clone()
    assert symmetrize_upper_(in_place) is in_place and torch.equal(in_place, sym)


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="the packed cov is 4 x 4 but x has 3 columns"):
        cov_update_(PackedSymmetric.zeros(4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"cov must be \[D, D\]"):
        cov_update_(torch.zeros(4, 4), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="cov must be float32 or float64"):
        cov_update_(torch.zeros(3, 3, dtype=torch.bfloat16), torch.zeros(2, 3))


@needs_triton
@pytest.mark.slow  # a benchmark script end to end
@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU run is the benchmark itself")
def test_gpu_benchmark_cpu_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop(DISABLE_ENV, None)
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_kernels.py"), "--cpu-smoke", "--json",
                           str(out_json)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "covariance" in proc.stdout and "pooling" in proc.stdout
    sweep = [r for r in json.loads(out_json.read_text())["results"] if r["op"] == "covariance-fp32-sweep"]
    assert [r["input_precision"] for r in sweep][:3] == ["tf32x3", "tf32x3", "ieee"], sweep  # tiles, then precisions
    assert all(r["max_rel_err_vs_fp64"] < 1e-5 for r in sweep), sweep
