"""cov_update_ (Triton kernel interpreted on CPU, and the torch reference) against fp64 math; the packed-triangle
layout and its converters; the GPU benchmark script's CPU smoke run."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoskill_fast.kernels import (TOLERANCES, cov_update_, cov_update_triton, covariance, pack_upper,
                                    symmetrize_upper, symmetrize_upper_, unpack_upper)
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


@pytest.mark.parametrize("D,N", list(itertools.product([1, 97, 123, 200], [1, 13, 300])))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_cov_update(impl, D, N, dtype, packed):
    gen = torch.Generator().manual_seed(D * 1000 + N)
    x = torch.randn(N, D, generator=gen).to(dtype)
    init = random_symmetric(D, gen).float()  # the update adds into what is there
    cov = (pack_upper(init) if packed else init.clone()).to(DEVICE)
    result = cov_update_(cov, x.to(DEVICE), packed=packed)
    assert result.data_ptr() == cov.data_ptr()
    got = unpack_upper(cov.cpu(), D) if packed else cov.cpu()
    assert_upper_close(got, *expected_cov(init, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_strided_x_and_cov(impl, dtype, packed):
    """x is a row-strided column slice; the square cov is a strided view into a larger buffer."""
    gen = torch.Generator().manual_seed(7)
    N, D = 300, 123
    x = torch.randn(2 * N, D + 9, generator=gen).to(dtype)[::2, 4:4 + D]
    if packed:
        cov = torch.zeros(D * (D + 1) // 2, device=DEVICE)
    else:
        big = torch.full((D + 3, 2 * D), 5.0, device=DEVICE)
        cov = big[2:, :2 * D:2][:D].fill_(0.0)  # strides (2D, 2)
    cov_update_(cov, x.to(DEVICE), packed=packed)
    got = unpack_upper(cov.cpu(), D) if packed else cov.cpu()
    assert_upper_close(got, *expected_cov(torch.zeros(D, D), x), dtype)
    if not packed:
        assert (big[:2] == 5.0).all() and (big[2:, 1::2] == 5.0).all(), "wrote outside the cov view"


@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_any_batch_split_gives_the_same_sum(impl, packed):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 97, generator=gen).bfloat16()
    D = x.shape[1]
    cov = torch.zeros(D * (D + 1) // 2 if packed else (D, D), device=DEVICE)
    for lo, hi in [(0, 1), (1, 14), (14, 200), (200, 300)]:
        cov_update_(cov, x[lo:hi].to(DEVICE), packed=packed)
    got = unpack_upper(cov.cpu(), D) if packed else cov.cpu()
    assert_upper_close(got, *expected_cov(torch.zeros(D, D), x), torch.bfloat16)


@needs_triton
@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_small_tiles(packed):
    """Many tiles (diagonal, off-diagonal, ragged edges) and a K loop of several steps."""
    gen = torch.Generator().manual_seed(4)
    N, D = 77, 123
    x = torch.randn(N, D, generator=gen).half()
    cov = torch.zeros(D * (D + 1) // 2 if packed else (D, D), device=DEVICE)
    cov_update_triton(cov, x.to(DEVICE), packed=packed, block_d=16, block_n=16)
    got = unpack_upper(cov.cpu(), D) if packed else cov.cpu()
    assert_upper_close(got, *expected_cov(torch.zeros(D, D), x), torch.float16)


@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
def test_fp64_cov_upcasts_x(packed):
    """The CPU path: fp64 accumulator, fp32 rows upcast (not the accumulator downcast); several reference row blocks."""
    gen = torch.Generator().manual_seed(5)
    D = covariance.REF_BLOCK_ROWS + 77
    x = torch.randn(6, D, generator=gen) * 1e3
    init = random_symmetric(D, gen)
    cov = pack_upper(init) if packed else init.clone()
    cov_update_(cov, x, packed=packed)
    got = unpack_upper(cov, D) if packed else symmetrize_upper(cov)
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


def test_packed_layout_is_row_major_upper():
    D = 4
    cov = torch.arange(D * D, dtype=torch.float32).reshape(D, D)
    # row i holds cov[i, i:]; entry (i, j) at i * (2D - i + 1) / 2 + (j - i)
    assert pack_upper(cov).tolist() == [0, 1, 2, 3, 5, 6, 7, 10, 11, 15]
    packed = pack_upper(cov)
    for i, j in [(0, 0), (1, 3), (2, 2), (3, 3)]:
        assert packed[i * (2 * D - i + 1) // 2 + (j - i)] == cov[i, j]


@pytest.mark.parametrize("D", [1, 2, 97, covariance.REF_BLOCK_ROWS + 3])
def test_converters_round_trip(D):
    gen = torch.Generator().manual_seed(D)
    sym = random_symmetric(D, gen)
    garbage_below = sym.triu() + torch.randn(D, D, generator=gen, dtype=torch.float64).tril(-1)
    assert torch.equal(symmetrize_upper(garbage_below), sym)
    assert torch.equal(pack_upper(garbage_below), pack_upper(sym))
    assert torch.equal(unpack_upper(pack_upper(sym), D), sym)
    assert unpack_upper(pack_upper(sym), D, dtype=torch.float32).dtype == torch.float32
    in_place = garbage_below.clone()
    assert symmetrize_upper_(in_place) is in_place and torch.equal(in_place, sym)


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="packed cov must be"):
        cov_update_(torch.zeros(7), torch.zeros(2, 3), packed=True)
    with pytest.raises(ValueError, match=r"cov must be \[D, D\]"):
        cov_update_(torch.zeros(4, 4), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="cov must be float32 or float64"):
        cov_update_(torch.zeros(3, 3, dtype=torch.bfloat16), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unpack_upper"):
        unpack_upper(torch.zeros(5), 3)


@needs_triton
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
    assert out_json.exists()
