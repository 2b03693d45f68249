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

from autoskill_fast.basis import FeatureLayout  # noqa: E402
from autoskill_fast.kernels import FORCE_ENV, pack_upper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_profile.py"
GIB = 2**30


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_runs_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(FORCE_ENV, None)  # CPU tensors take the torch references, with or without TRITON_INTERPRET
    out_json = tmp_path / "gpu_profile.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out_json)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header in ("cov storage", "floor ms", "profiler ms", "overhead %", "profiler tok/s", "peak profiler GiB",
                   "kernel TFLOP/s", "matmul TFLOP/s", "kernel/matmul", "fp32/matmul", "mean nothing"):
        assert header in proc.stdout, header
    results = json.loads(out_json.read_text())
    assert results["cpu_smoke"] and results["torch"] == torch.__version__
    assert [m["model"] for m in results["models"]] == ["qwen2.5-3b", "llama-3-8b"]
    for m in results["models"]:
        assert "skipped" not in m, m
        assert m["cov_storage"] == "square" and m["feature_dim"] == 2 * 64  # tiny: 2 layers of hidden 64
        assert m["floor_ms"] > 0 and m["profiler_ms"] > 0 and m["tokens_per_pass"] > 0
    assert all(c["ratio"] > 0 and c["fp32_ratio"] > 0 for c in results["covariance"])


def test_accumulator_choice_at_llama_3_8b_size():
    bench = _load_script()
    layout = FeatureLayout(tuple(range(1, 31)), 4096)  # D = 122,880: 56.25 GiB square, 28.1 GiB packed
    reserve = 10 * GIB
    assert bench.choose_accumulator(layout, 70 * GIB, reserve, "auto") == ("square", 122880)
    assert bench.choose_accumulator(layout, 60 * GIB, reserve, "auto") == ("packed", 122880)
    # 20 GiB left for a square: 4 * (17 * 4096)^2 bytes = 18.1 GiB fits, 18 layers' 20.25 GiB does not.
    assert bench.choose_accumulator(layout, 30 * GIB, reserve, "auto") == ("square, first 17 of 30 layers", 17 * 4096)
    assert bench.choose_accumulator(layout, 70 * GIB, reserve, "packed") == ("packed", 122880)
    with pytest.raises(MemoryError, match="packed accumulator"):
        bench.choose_accumulator(layout, 30 * GIB, reserve, "packed")


def test_packed_accumulator_matches_the_upper_triangle():
    bench = _load_script()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23, 37, generator=gen)
    acc = bench.PackedSecondMoment(37, torch.device("cpu"), stage_rows=8)
    for chunk in x.split(5):  # staged, flushed at 10 and 20 rows, then by hand
        acc.update_shifted(chunk)
    acc.flush()
    want = pack_upper(x.double().T @ x.double())
    torch.testing.assert_close(acc.sumsq.double(), want, rtol=1e-5, atol=1e-5)
    assert acc.n == 23
    torch.testing.assert_close(acc.sum, x.double().sum(0))
