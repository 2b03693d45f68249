#!/usr/bin/env bash
# The vLLM proof for baked steering checkpoints (tests/test_vllm.py, marked `vllm`, deselected by default).
# Creates .venv-vllm on first use (~1.5-2.5 min, 3.4 GB), then runs the test (~3-4 min on 2 CPU cores).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/vllm_env.sh
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${PYTHON:-python3}" -m pytest -m vllm tests/test_vllm.py -v "$@"
