#!/usr/bin/env bash
# The tests that run vLLM (marked `vllm`, deselected by default): baked steering checkpoints served by vLLM
# (tests/test_vllm.py, ~3-4 min on 2 CPU cores) and the eval job's vllm backend against its hf backend
# (tests/test_eval_vllm.py, ~7-10 min). Creates .venv-vllm on first use (~1.5-2.5 min, 3.4 GB).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/vllm_env.sh
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${PYTHON:-python3}" -m pytest -m vllm tests/test_vllm.py tests/test_eval_vllm.py \
    -v "$@"
