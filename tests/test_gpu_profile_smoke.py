"""bench/gpu_profile.py without a GPU: its --cpu-smoke run end to end, and the accumulator choice it makes on a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")  # the script reuses bench/gpu_kernels.py's helpers, which import triton

from autoskill_fast.kernels import FORCE_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_profile.py"
GIB = 2**30


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a benchmark script end to end: 12 s
def test_cpu_smoke_runs_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(FORCE_ENV, None)  # CPU tensors take the torch references, with or without TRITON_INTERPRET
    out_json = tmp_path / "gpu_profile.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out_json)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header in ("cov dims", "floor ms", "profiler ms", "overhead %", "profiler tok/s", "peak profiler GiB",
                   "kernel TFLOP/s", "matmul TFLOP/s", "kernel/matmul", "fp32/matmul", "fit s", "mean nothing"):
        assert header in proc.stdout, header
    results = json.loads(out_json.read_text())
    assert results["cpu_smoke"] and results["torch"] == torch.__version__
    assert [m["model"] for m in results["models"]] == ["qwen2.5-3b", "llama-3-8b"]
    for m in results["models"]:
        assert "skipped" not in m, m
        assert m["cov_storage"] == "all layers" and m["feature_dim"] == 2 * 64  # tiny: 2 layers of hidden 64
        assert m["floor_ms"] > 0 and m["profiler_ms"] > 0 and m["tokens_per_pass"] > 0
        assert m["fit_k"] == 64 and m["fit_max_residual"] <= 1e-6 and m["fit_s"] > 0
        assert 0 < m["block_params_profiler"] <= m["block_params_floor"] and m["mfu_profiler"] > 0  # tiny: 2 blocks, both pooled
    assert all(c["ratio"] > 0 and c["fp32_ratio"] > 0 for c in results["covariance"])


def test_accumulator_fit_at_llama_3_8b_size():
    bench = _load_script()
    reserve = 10 * GIB
    assert bench.packed_bytes(122880) / GIB == pytest.approx(28.2, abs=0.05)  # D = 122,880, block-packed fp32
    assert bench.accumulator_fits(122880, 40 * GIB, reserve)
    assert not bench.accumulator_fits(122880, 30 * GIB, reserve)


def test_a_failed_row_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    """The device runs the script once, unattended: one row's error (a model that fails to build, a kernel setting
    the device cannot hold) lost every row after it and the JSON, which was written only at the end."""
    bench = _load_script()

    def fails(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench, "bench_model", fails)
    out_json = tmp_path / "gpu_profile.json"
    out = bench.main(["--cpu-smoke", "--models", "qwen2.5-3b", "--json", str(out_json)])
    assert out["models"] == [{"model": "qwen2.5-3b", "error": "RuntimeError: CUDA error: an illegal memory access was "
                                                               "encountered"}]
    assert [c["D"] for c in out["covariance"]] == [64, 96] and all("ratio" in c for c in out["covariance"])
    assert json.loads(out_json.read_text())["models"] == out["models"]
