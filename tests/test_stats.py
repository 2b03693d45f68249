"""StreamingCovariance against fp64 numpy: any split, any order, merges across shifts, save/load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoskill_fast.errors import AutoskillError
from autoskill_fast.artifacts import save_tensors
from autoskill_fast.kernels import PackedSymmetric
from autoskill_fast.decomposition.statistics import StreamingCovariance, load_statistics


def data(n: int, d: int, seed: int, offset: float = 50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A large common offset: what a naive sum-of-squares formula gets wrong in low precision.
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64) + offset


@pytest.mark.parametrize("n,d", [(2, 1), (97, 13), (300, 123)])
def test_matches_numpy_for_any_split(n, d):
    x = data(n, d, seed=n + d).float().double()  # the rows the stream sees are fp32; the reference is fp64 math on them
    ref_cov = np.atleast_2d(np.cov(x.numpy(), rowvar=False))
    rng = np.random.default_rng(0)
    cuts = sorted(set(rng.integers(1, n, size=min(5, n - 1)).tolist())) if n > 2 else [1]
    stats = StreamingCovariance(d)
    for part in np.split(np.arange(n), cuts):
        stats.update(x[part].float())
    np.testing.assert_allclose(stats.mean.numpy(), x.numpy().mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance().numpy(), ref_cov, atol=1e-5 * np.abs(ref_cov).max())
    assert stats.total_variance() == pytest.approx(float(np.trace(ref_cov)), rel=1e-6)


def test_merge_with_different_shifts_is_exact():
    x = data(250, 37, seed=1)
    a, b, whole = StreamingCovariance(37), StreamingCovariance(37), StreamingCovariance(37)
    a.update(x[:100])
    b.update(x[100:] + 0)  # b's pilot mean differs from a's
    assert not torch.equal(a.shift, b.shift)
    whole.update(x)
    a.merge(b)
    assert a.n == 250
    torch.testing.assert_close(a.mean, whole.mean, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(a.covariance(), whole.covariance(), rtol=1e-10, atol=1e-9)


def test_order_does_not_matter_and_state_round_trips(tmp_path):
    x = data(64, 9, seed=2)
    forward, backward = StreamingCovariance(9), StreamingCovariance(9)
    for i in range(0, 64, 8):
        forward.update(x[i:i + 8])
    backward.set_shift(forward.shift)
    for i in reversed(range(0, 64, 8)):
        backward.update(x[i:i + 8])
    torch.testing.assert_close(forward.covariance(), backward.covariance(), rtol=1e-12, atol=1e-12)
    forward.save(tmp_path / "s.safetensors")
    loaded = StreamingCovariance.load(tmp_path / "s.safetensors")
    assert loaded.n == 64 and torch.equal(loaded.covariance(), forward.covariance())


def test_errors_are_clear(tmp_path):
    stats = StreamingCovariance(4)
    with pytest.raises(AutoskillError, match="at least 2"):
        stats.update(torch.ones(1, 4))
        stats.covariance()
    with pytest.raises(AutoskillError, match="do not match"):
        stats.update(torch.ones(3, 5))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(AutoskillError, match="corrupted or truncated"):
        StreamingCovariance.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("accum", [torch.float64, torch.float32], ids=str)
def test_loading_reads_the_sums_into_the_accumulator_once(tmp_path, monkeypatch, accum):
    """The packed sums go from the file straight into the new accumulator (never a whole tensor of them read first),
    and the loaded statistics are the saved ones exactly."""
    stats = StreamingCovariance(300, accum_dtype=accum)
    stats.update(data(97, 300, seed=9))
    stats.save(tmp_path / "s.safetensors")
    from autoskill_fast import artifacts

    read = []
    original = artifacts.TensorReader.get
    monkeypatch.setattr(artifacts.TensorReader, "get", lambda self, name: read.append(name) or original(self, name))
    loaded = load_statistics(tmp_path / "s.safetensors")
    assert "sumsq_packed" not in read and read
    assert loaded.n == 97 and loaded.sumsq.dtype == accum
    assert torch.equal(loaded.sumsq.data, stats.sumsq.data) and torch.equal(loaded.sum, stats.sum)
    assert torch.equal(loaded.shift, stats.shift)
    assert torch.equal(StreamingCovariance.from_state_dict(stats.state_dict()).sumsq.data, loaded.sumsq.data)


@pytest.mark.parametrize("saved_accum", [torch.float64, torch.float32], ids=str)
def test_merging_a_saved_file_equals_merging_it_loaded(tmp_path, saved_accum):
    """merge_saved adds the file's packed sums a slice at a time: the same numbers as merge(load_statistics(file)),
    whatever the slices (here 97 x 8 bytes, cutting tiles), the other's shift and dtype."""
    left, right = StreamingCovariance(300), StreamingCovariance(300, accum_dtype=saved_accum)
    left.update(data(61, 300, seed=10))
    right.update(data(45, 300, seed=11, offset=-20.0))  # another shift
    right.save(tmp_path / "right.safetensors")
    left.save(tmp_path / "left.safetensors")
    loaded = load_statistics(tmp_path / "left.safetensors").merge(load_statistics(tmp_path / "right.safetensors"))
    streamed = load_statistics(tmp_path / "left.safetensors").merge_saved(tmp_path / "right.safetensors",
                                                                          chunk_bytes=97 * 8)
    assert streamed.n == loaded.n == 106
    assert torch.equal(streamed.sumsq.data, loaded.sumsq.data) and torch.equal(streamed.sum, loaded.sum)
    assert torch.equal(streamed.shift, loaded.shift)
    # Into empty statistics: the file's own shift; an empty file adds nothing.
    empty = StreamingCovariance(300).merge_saved(tmp_path / "right.safetensors", chunk_bytes=1000)
    assert torch.equal(empty.shift, right.shift) and empty.n == 45
    assert torch.allclose(empty.covariance(), right.covariance(), rtol=0, atol=1e-12 * float(right.covariance().max()))
    nothing = StreamingCovariance(300)
    nothing.set_shift(torch.zeros(300, dtype=torch.float64))
    nothing.save(tmp_path / "nothing.safetensors")
    assert torch.equal(load_statistics(tmp_path / "left.safetensors").merge_saved(tmp_path / "nothing.safetensors")
                       .sumsq.data, left.sumsq.data)


def test_merging_a_saved_file_of_another_tile_or_kind(tmp_path):
    left = StreamingCovariance(200)
    left.update(data(30, 200, seed=12))
    other = StreamingCovariance(200, tile=256)  # the default at D = 200 is 128
    other.update(data(20, 200, seed=13))
    other.save(tmp_path / "tile256.safetensors")
    want = StreamingCovariance.from_state_dict(left.state_dict()).merge(other)
    got = StreamingCovariance.from_state_dict(left.state_dict()).merge_saved(tmp_path / "tile256.safetensors")
    assert torch.allclose(got.covariance(), want.covariance(), rtol=0, atol=1e-12 * float(want.covariance().max()))
    from autoskill_fast.decomposition.statistics import SketchedCovariance

    sketch = SketchedCovariance(200, 16)
    sketch.update(data(20, 200, seed=14))
    sketch.save(tmp_path / "sketch.safetensors")
    with pytest.raises(AutoskillError, match="cannot merge a sketch into exact statistics"):
        left.merge_saved(tmp_path / "sketch.safetensors")
    narrow = StreamingCovariance(100)
    narrow.update(data(5, 100, seed=15))
    narrow.save(tmp_path / "narrow.safetensors")
    with pytest.raises(AutoskillError, match="narrow.safetensors: statistics of 100 dims; cannot merge them into 200"):
        left.merge_saved(tmp_path / "narrow.safetensors")


@pytest.mark.parametrize("accum", [torch.float64, torch.float32], ids=str)
def test_rows_dtype_rounds_only_what_enters_the_second_moments(accum):
    x = data(97, 123, seed=16)
    stats = StreamingCovariance(123, accum_dtype=accum, rows_dtype=torch.bfloat16, stage_rows=40)
    stats.set_shift(x[:10].mean(dim=0))
    centered = (x - stats.shift).float()
    for chunk in centered.split(33):
        stats.update_shifted(chunk)
    stats.flush()
    rounded = centered.bfloat16().double()
    want = rounded.T @ rounded
    got = stats.sumsq.to_dense(torch.float64)
    upper = torch.triu(torch.ones(123, 123, dtype=torch.bool))
    rtol = 1e-12 if accum == torch.float64 else 1e-6
    assert float((got - want)[upper].abs().max()) <= rtol * float(want.abs().max())
    assert torch.allclose(stats.sum, centered.double().sum(dim=0), rtol=1e-12, atol=1e-9)  # the mean is not rounded
    plain = StreamingCovariance(123, accum_dtype=accum)
    plain.set_shift(stats.shift)
    plain.update_shifted(centered)
    plain.flush()
    assert not torch.equal(plain.sumsq.data, stats.sumsq.data)


def test_covariance_rows_option(tmp_path):
    from autoskill_fast.config import ConfigError, ProfileConfig
    from autoskill_fast.run.folder import run_key

    with pytest.raises(ConfigError, match="covariance_rows.*not to a sketch"):
        ProfileConfig(out="x", covariance_rows="bfloat16", sketch_size=200)
    with pytest.raises(ConfigError, match="covariance_rows"):
        ProfileConfig(out="x", covariance_rows="float16")
    config = ProfileConfig(out="x").to_json()
    before_the_option = {k: v for k, v in config.items() if k != "covariance_rows"}
    assert run_key(config, {}, {}) == run_key(before_the_option, {}, {})  # runs begun before it still resume
    assert run_key({**config, "covariance_rows": "bfloat16"}, {}, {}) != run_key(config, {}, {})


def test_sums_are_block_packed_and_half_the_square():
    stats = StreamingCovariance(1000)
    assert isinstance(stats.sumsq, PackedSymmetric) and stats.sumsq.layout.tile == 128
    assert stats.sumsq.data.numel() < 0.6 * 1000 * 1000


@pytest.mark.parametrize("accum", [torch.float64, torch.float32], ids=str)
def test_covariance_operator_is_the_covariance(accum):
    x = data(200, 300, seed=4)
    stats = StreamingCovariance(300, accum_dtype=accum)
    for chunk in x.split(33):
        stats.update(chunk)
    cov = torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    q = torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for ddof in (0, 1):
        want = torch.from_numpy(np.cov(x.numpy(), rowvar=False, ddof=ddof))
        for dtype in (torch.float64, torch.float32):
            operator = stats.covariance_operator(ddof=ddof, dtype=dtype)
            got = operator @ q
            assert got.dtype == dtype
            rtol = 1e-10 if dtype == accum == torch.float64 else 1e-5
            assert float((got.double() - want @ q).abs().max()) <= rtol * float((want.abs() @ q.abs()).max())
        assert torch.allclose(stats.covariance_operator(ddof=ddof).to_dense().double(), want,
                              rtol=0, atol=(1e-10 if accum == torch.float64 else 1e-4) * float(cov.abs().max()))
    # times a power of 4, through a scaled copy (fp64 sums, fp32 products) or a scaled product (the sums' dtype)
    for dtype in (torch.float64, torch.float32):
        plain, scaled = stats.covariance_operator(dtype=dtype), stats.covariance_operator(dtype=dtype, factor=4.0 ** -9)
        assert torch.equal(scaled @ q, (plain @ q) * 4.0 ** -9)
    assert torch.equal(stats.covariance_operator(factor=16.0).to_dense(), stats.covariance_operator().to_dense() * 16)
    for factor in (2.0, 3.0, 0.0, -4.0):
        with pytest.raises(ValueError, match="factor must be a power of 4"):
            stats.covariance_operator(factor=factor)


def test_top_eigenpairs_from_the_packed_sums_match_numpy():
    """D = 1100 (three block rows): the Krylov path, fp32 products over the fp64 sums, against numpy fp64."""
    gen = torch.Generator().manual_seed(5)
    D = 1100
    x = (torch.randn(400, D, generator=gen, dtype=torch.float64) * torch.arange(1, D + 1) ** -0.5
         + 7.0).float()
    stats = StreamingCovariance(D)
    for chunk in x.split(128):
        stats.update(chunk)
    result = stats.top_eigenpairs(12)
    assert result.method in ("block-krylov", "torch-block-krylov")
    values, vectors = np.linalg.eigh(np.cov(x.double().numpy(), rowvar=False))
    values, vectors = values[::-1][:12], vectors[:, ::-1][:, :12]
    assert np.abs(result.eigenvalues.double().numpy() - values).max() <= 2e-6 * values[0]
    assert float(result.residuals.max()) <= 1e-6
    overlap = np.abs(np.sum(result.eigenvectors.double().numpy() * vectors, axis=0))
    gaps = np.minimum(np.abs(np.diff(values, prepend=np.inf)), np.abs(np.diff(values, append=-np.inf)))
    assert np.all((overlap > 1 - 1e-6) | (gaps < 1e-3 * values[0]))


def test_packed_state_round_trips_and_row_packed_files_are_refused(tmp_path):
    x = data(50, 300, seed=6)
    stats = StreamingCovariance(300)
    stats.update(x)
    stats.save(tmp_path / "s.safetensors")
    loaded = StreamingCovariance.load(tmp_path / "s.safetensors")
    assert loaded.sumsq.layout == stats.sumsq.layout and torch.equal(loaded.sumsq.data, stats.sumsq.data)
    # The row-by-row packed triangle of a pre-release development format (row i holds S2[i, i:]): never released, so no
    # converter; it is refused by name.
    dense = stats.sumsq.to_dense()
    legacy = {"count": torch.tensor([50]), "shift": stats.shift, "sum": stats.sum,
              "sumsq_upper": torch.cat([dense[i, i:] for i in range(300)])}
    save_tensors(tmp_path / "old.safetensors", legacy)
    with pytest.raises(AutoskillError, match=r"old.safetensors: missing tensors \['sumsq_packed', 'sumsq_tile'\]"):
        load_statistics(tmp_path / "old.safetensors")


def test_corrupted_packed_state_is_named(tmp_path):
    stats = StreamingCovariance(20)
    stats.update(data(5, 20, seed=7))
    state = stats.state_dict()
    save_tensors(tmp_path / "short.safetensors", dict(state, sumsq_packed=state["sumsq_packed"][:-1].clone()))
    with pytest.raises(AutoskillError, match="corrupted"):
        StreamingCovariance.load(tmp_path / "short.safetensors")
    save_tensors(tmp_path / "partial.safetensors", {k: v for k, v in state.items() if k != "sumsq_tile"})
    with pytest.raises(AutoskillError, match=r"missing tensors \['sumsq_tile'\]"):
        StreamingCovariance.load(tmp_path / "partial.safetensors")


@pytest.mark.slow  # a benchmark script end to end
def test_fit_benchmark_runs_and_both_paths_agree():
    script = Path(__file__).resolve().parents[1] / "bench" / "bench_fit.py"
    proc = subprocess.run([sys.executable, str(script), "--dim", "700", "--k", "6", "--rows", "300", "--reps", "1"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    diff = float(proc.stdout.split("eigenvalues differ by ")[1].split()[0])
    assert diff < 1e-5 and "packed" in proc.stdout and "square" in proc.stdout


def test_bad_dtype_or_tile_in_a_packed_state_is_named(tmp_path):
    stats = StreamingCovariance(20)
    stats.update(data(5, 20, seed=8))
    state = stats.state_dict()
    save_tensors(tmp_path / "ints.safetensors", dict(state, sumsq_packed=state["sumsq_packed"].long()))
    with pytest.raises(AutoskillError, match="not float32/float64"):
        StreamingCovariance.load(tmp_path / "ints.safetensors")
    save_tensors(tmp_path / "tile.safetensors", dict(state, sumsq_tile=torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(AutoskillError, match="corrupted"):
        StreamingCovariance.load(tmp_path / "tile.safetensors")


@pytest.mark.parametrize("kind", ["exact", "sketched"])
def test_cleared_statistics_go_on_as_new_ones_around_the_same_shift(kind):
    """A rank of a multi-process run whose rows went into rank 0's statistics clears its own and goes on: from there
    it must equal statistics made new around that shift, bit for bit (a resumed run makes them new)."""
    from autoskill_fast.decomposition.statistics import SketchedCovariance

    def make(shift=None):
        if kind == "exact":
            return StreamingCovariance(11, shift=shift, stage_rows=5)
        return SketchedCovariance(11, 6, shift=shift)

    x = data(40, 11, seed=9)
    used = make()
    used.update(x[:20])
    used.update(x[20:23])  # exact: 3 rows staged, not yet in the sums
    memory = used.sumsq.data.data_ptr() if kind == "exact" else None
    shift = used.shift.clone()
    assert used.clear_() is used
    assert used.n == 0 and torch.equal(used.shift, shift)
    if kind == "exact":
        assert used.sumsq.data.data_ptr() == memory  # cleared in place: no second accumulator on the device
    fresh = make(shift)
    for stats in (used, fresh):
        stats.update(x[23:31])
        stats.update(x[31:])
    assert used.n == fresh.n == 17
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(used.state_dict()[name], tensor), name
    torch.testing.assert_close(used.mean, x[23:].mean(0), rtol=1e-12, atol=1e-9)


def test_a_buffer_the_caller_refills_before_the_flush_changes_nothing():
    """update_shifted stages rows until a flush: it must keep them, not the caller's buffer (which the fused capture
    kernel, or a caller reading a file in blocks, refills)."""
    x = data(20, 4, seed=21, offset=0.0)
    stats = StreamingCovariance(4, shift=torch.zeros(4, dtype=torch.float64))
    buffer = torch.empty(5, 4, dtype=torch.float64)
    for lo in range(0, 20, 5):
        buffer.copy_(x[lo:lo + 5])
        stats.update_shifted(buffer)
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10)


def test_float64_rows_are_centred_before_a_float32_accumulator_rounds_them():
    """On a GPU the sums are fp32: rows given in fp64 far from zero must lose their offset before they are rounded."""
    x = data(200, 3, seed=22, offset=0.0) * 1e-3 + 1e4  # a spread 1e7 times smaller than the offset
    stats = StreamingCovariance(3, accum_dtype=torch.float32)
    for lo in range(0, 200, 50):
        stats.update(x[lo:lo + 50])
    np.testing.assert_allclose(stats.variances().numpy(), x.numpy().var(axis=0, ddof=1), rtol=1e-4)


def test_float32_rows_around_a_float32_shift_give_the_mean_exactly():
    """An fp32 accumulator subtracts the shift in fp32: the shift it keeps is that fp32 value, so the mean counted
    from it is the rows' mean (it was off by the shift's rounding, 4e-4 at an offset of 1e4)."""
    x = (torch.randn(300, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 1e4).float()
    stats = StreamingCovariance(4, accum_dtype=torch.float32)
    for lo in range(0, 300, 100):
        stats.update(x[lo:lo + 100])
    np.testing.assert_allclose(stats.mean.numpy(), x.double().mean(0).numpy(), rtol=0, atol=2e-7)


@pytest.mark.parametrize("sketch", [False, True])
def test_an_empty_block_adds_nothing_and_fixes_no_shift(sketch):
    """An empty first block has no mean: it set a NaN shift (a NaN mean; a sketch's next update failed)."""
    from autoskill_fast.decomposition.statistics import SketchedCovariance

    x = data(50, 3, seed=4)
    stats = SketchedCovariance(3, 8) if sketch else StreamingCovariance(3)
    stats.update(x[:0])
    assert stats.n == 0 and stats.shift is None
    stats.update(x)
    np.testing.assert_allclose(stats.mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.total_variance(), x.numpy().var(axis=0, ddof=1).sum(), rtol=1e-10)


@pytest.mark.parametrize("damage,problem", [
    (lambda s: dict(s, sum=s["sum"][:-1]), r"inconsistent sizes \(count \(1,\), shift \(6,\), sum \(5,\)\)"),
    (lambda s: dict(s, count=torch.zeros(0, dtype=torch.int64)), "inconsistent sizes"),
    (lambda s: {k: v for k, v in s.items() if k != "shift"}, r"missing tensors \['shift'\]"),
])
def test_a_damaged_statistics_file_is_named_in_its_error(tmp_path, damage, problem):
    stats = StreamingCovariance(6)
    stats.update(data(9, 6, seed=23))
    save_tensors(tmp_path / "bad.safetensors", damage({k: v.clone() for k, v in stats.state_dict().items()}))
    stats.save(tmp_path / "good.safetensors")
    for read in (lambda: load_statistics(tmp_path / "bad.safetensors"),
                 lambda: load_statistics(tmp_path / "good.safetensors").merge_saved(tmp_path / "bad.safetensors")):
        with pytest.raises(AutoskillError, match=f"bad.safetensors: .*{problem}"):
            read()


def test_sketched_state_errors_copies_and_a_merge_with_itself(tmp_path):
    from autoskill_fast.decomposition.statistics import SketchedCovariance

    x = data(40, 7, seed=24)
    a = SketchedCovariance(7, 6)
    a.update(x)
    total = a.total_variance()
    b = SketchedCovariance.from_state_dict(a.state_dict())
    b.update(x)  # a copy made through the state dict shares nothing with the original
    assert a.total_variance() == total and a.n == 40
    doubled = SketchedCovariance.from_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    doubled.merge(SketchedCovariance.from_state_dict({k: v.clone() for k, v in a.state_dict().items()}))
    a.merge(a)
    assert a.n == 80 and torch.equal(a.mean, doubled.mean) and a.total_variance() == doubled.total_variance()
    state = a.state_dict()
    for name, damaged in (("shift", dict(state, shift=state["shift"][:-1])),
                          ("sq_norm", {k: v for k, v in state.items() if k != "sq_norm"}),
                          ("fd.count", dict(state, **{"fd.count": torch.zeros(0, dtype=torch.int64)}))):
        save_tensors(tmp_path / f"{name}.safetensors", damaged)
        with pytest.raises(AutoskillError, match=f"{name}.safetensors: .*the file is corrupted"):
            load_statistics(tmp_path / f"{name}.safetensors")
    with pytest.raises(AutoskillError, match="set_shift"):
        SketchedCovariance(7, 6).update_shifted(x)


def test_a_sketch_of_rows_spanning_fewer_dims_than_its_size_is_exact_to_fp64_rounding():
    """The sketch's rows are kept in fp64: with rows spanning at most l dims nothing is shrunk away, and the top
    eigenvalues equal the exact ones to fp64 rounding (fp32 rows were 1e-7 of the top eigenvalue off)."""
    from autoskill_fast.decomposition.statistics import SketchedCovariance

    g = torch.Generator().manual_seed(25)
    x = (torch.randn(500, 10, generator=g, dtype=torch.float64) * torch.linspace(10, 1, 10, dtype=torch.float64)) @ \
        torch.randn(10, 300, generator=g, dtype=torch.float64) + 3.0
    sketch = SketchedCovariance(300, 20)
    for lo in range(0, 500, 64):
        sketch.update(x[lo:lo + 64])
    exact = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1][:8]
    got = sketch.top_eigenpairs(8).eigenvalues.numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-10 * exact[0])
