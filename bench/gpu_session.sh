#!/usr/bin/env bash
# Every GPU benchmark the open issues name, in one call on a lent device, inside a fixed time budget (steps 1-3 took
# 290 s on an H200, 2026-11-27; bench/RESULTS.md has the numbers):
#   bash bench/gpu_session.sh            (results in $OUT, or bench/gpu-results/ when OUT is not set)
#   SMOKE=1 bash bench/gpu_session.sh    (the same steps on CPU with tiny shapes: checks this script, times nothing)
# In priority order, each step with its own limit, all of them inside BUDGET seconds (default 540):
# 1. bench/gpu_profile.py: overhead over the bare forward at Qwen2.5-3B and Llama-3-8B shapes (target <= 3%), also
#    with --covariance-rows bfloat16, the covariance kernel against a bf16 matmul (target >= 70%), the fit at
#    D = 122,880, peak memory, MFU.
# 2. bench/gpu_kernels.py: the Triton kernels against the device's two ceilings.
# 3. Profiles of a random-weight Qwen2.5-0.5B-shaped model over a synthetic corpus: plain, with --prefetch 4 (batches
#    prepared on a thread; the new item, so before torchrun's, which is measured already), and under a 1-GPU torchrun:
#    all timed (the pass alone: total less load, fit and scores), and their bases compared with the plain run's.
#    Then the tokenization of that corpus, 256 texts per tokenizer call against 1 (tokenize.json).
# 4. The tests of the CUDA paths, with whatever time is left (about 60 s with 8 workers on an H200): the tests marked
#    gpu first (the CUDA eigensolver, SkillPCA on CUDA against sklearn, device tensors written to safetensors), then
#    the kernel tests (each path against fp64 references, on the device). The CPU tests are CI's.
# The device has torch, triton and transformers but no internet: the package runs from the tree (PYTHONPATH), without
# its C++ core (the CUDA paths do not use it). The device returns at most 8 files: everything printed goes to one log,
# session.log, beside gpu_profile.json, gpu_kernels.json, runs.json and tokenize.json (each written again after every
# row, so a kill keeps what ran). A failed step does not stop the others, nor a failed row the rest of its step.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/gpu-results}"
SMOKE="${SMOKE:-0}"
BUDGET="${BUDGET:-540}"
PY="${PY:-python3}"  # the device's interpreter that holds torch
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec > >(tee -a "$LOG") 2>&1

# step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS, and never past the budget.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        echo "=== $name: skipped, ${left} s of the budget left"
        return
    fi
    echo "=== $name (at most ${limit} s; ${SECONDS} s into the session)"
    local start=$SECONDS
    timeout --kill-after "${KILL_AFTER:-5}" "$limit" "$@"
    echo "=== $name: exit $?, $((SECONDS - start)) s"
}

echo "=== session start $(date -Iseconds), budget ${BUDGET} s, smoke ${SMOKE}"
nvidia-smi 2>&1 | head -15
"$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton',
triton.__version__, 'transformers', transformers.__version__)"

if ((SMOKE)); then
    export TRITON_INTERPRET=1
    step gpu_profile 120 "$PY" bench/gpu_profile.py --cpu-smoke --json "$OUT/gpu_profile.json"
    step gpu_kernels 60 "$PY" bench/gpu_kernels.py --cpu-smoke --json "$OUT/gpu_kernels.json"
else
    step gpu_profile 240 "$PY" bench/gpu_profile.py --json "$OUT/gpu_profile.json"
    step gpu_kernels 90 "$PY" bench/gpu_kernels.py --json "$OUT/gpu_kernels.json"
fi

work=$(mktemp -d)
step torchrun_setup 60 "$PY" - "$work" "$SMOKE" <<'PY'
import random, sys, torch, transformers
from pathlib import Path
work, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
shape = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             vocab_size=1000) if smoke else dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, intermediate_size=4864, vocab_size=151936)  # Qwen2.5-0.5B
config = transformers.AutoConfig.for_model("qwen2", max_position_embeddings=32768, tie_word_embeddings=True, **shape)
with torch.device("cpu" if smoke else "cuda"):
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(work / "model")
# A word-level tokenizer over a small vocabulary: the benchmark measures the profile, not tokenization quality.
from tokenizers import Tokenizer, models, pre_tokenizers
words = "the a of to and in is it that for on with as was by at be this from or an".split() + [str(i) for i in range(100)]
vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>"] + words)}
tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                            eos_token="<s>")
fast.save_pretrained(work / "model")
rng = random.Random(0)
with open(work / "corpus.txt", "w") as f:
    for _ in range(200 if smoke else 16000):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(64, 512))) + "\n")
print("model and corpus ready in", work)
PY
for name in python prefetch torchrun; do
    launcher="$PY"  # torchrun is `python -m torch.distributed.run`, whichever folder its script landed in
    [[ $name == torchrun ]] && launcher="$PY -m torch.distributed.run --standalone --nproc-per-node 1"
    extra=()
    [[ $name == prefetch ]] && extra=(--prefetch 4)  # batches prepared on a thread while the GPU runs (default: off)
    # torchrun's workers run in a session of their own: give its agent time to stop them before it is killed
    KILL_AFTER=30 step "profile via $name" 90 $launcher -m autoskill_fast profile --model "$work/model" \
        --corpus "$work/corpus.txt" --out "$work/run-$name" -k 64 --quiet --no-scores ${extra[@]+"${extra[@]}"}
done
step compare_runs 30 "$PY" - "$work" "$OUT/runs.json" <<'PY'
import json, sys, torch
from pathlib import Path
from autoskill_fast.run.folder import load_basis
work, out = Path(sys.argv[1]), Path(sys.argv[2])
names = ("python", "prefetch", "torchrun")
runs = {name: json.loads((work / f"run-{name}" / "run.json").read_text()) for name in names
        if (work / f"run-{name}" / "run.json").exists()}
result = dict(runs=runs)
def pass_s(timings):  # the forward pass and its input, without loading the model, fitting and scoring
    return timings["total_s"] - timings["load_model_s"] - timings["fit_s"] - timings.get("scores_s", 0.0)

for name in ("prefetch", "torchrun"):  # each against the plain run: the same basis, and its time
    if name in runs and "python" in runs:
        a, b = (load_basis(work / f"run-{n}") for n in (name, "python"))
        cosines = torch.linalg.svdvals(a.components_.double() @ b.components_.double().T)
        result[name] = dict(subspace_cosine_min=float(cosines.min()),
                            eigenvalue_max_rel_diff=float(((a.pca.explained_variance - b.pca.explained_variance).abs()
                                                           / a.pca.explained_variance[0]).max()),
                            mean_max_abs_diff=float((a.mean_ - b.mean_).abs().max()),
                            total_s_ratio=runs[name]["timings"]["total_s"] / runs["python"]["timings"]["total_s"],
                            pass_s_ratio=pass_s(runs[name]["timings"]) / pass_s(runs["python"]["timings"]))
        print(name, "against python:", result[name])
out.write_text(json.dumps(result, indent=1))
print(json.dumps(runs, indent=1)[:6000])
PY
step tokenize 45 "$PY" - "$work" "$OUT/tokenize.json" <<'PY'
# The corpus's tokenization and batching alone (what --prefetch overlaps with the forward), 256 texts per tokenizer
# call (the default: a fast tokenizer encodes them in parallel) against 1, interleaved, twice each.
import json, sys, time
from pathlib import Path
from transformers import AutoTokenizer
from autoskill_fast.config import BatchingConfig, CorpusConfig, PoolingConfig
from autoskill_fast.data import stream
work, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(work / "model")
rows = []
for chunk in (256, 1, 256, 1):
    stream.TOKENIZE_CHUNK = chunk
    t0, tokens = time.perf_counter(), 0
    items = stream.iter_tokenized(CorpusConfig(str(work / "corpus.txt")), tokenizer, PoolingConfig(), stream.InputTally())
    for batch in stream.iter_batches(items, BatchingConfig(), token_budget=65536, pad_id=tokenizer.pad_token_id,
                                     mode="mean"):
        tokens += batch.n_tokens
    rows.append(dict(texts_per_call=chunk, seconds=time.perf_counter() - t0, tokens=tokens))
    print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps(dict(rows=rows), indent=1))
PY
rm -rf "$work"

if ((SMOKE)); then
    echo "=== cuda_tests: skipped in smoke mode"
else
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist, where installed
    step gpu_tests 90 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider --continue-on-collection-errors \
        $workers -m gpu $(grep -l "mark.gpu" tests/test_*.py)
    step kernel_tests 120 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider $workers \
        tests/test_kernels_covariance.py tests/test_kernels_pooling.py
fi
echo "=== session end, ${SECONDS} s"
exec >&- 2>&-  # the log's tee ends with its input: wait for it, so the last lines are in $OUT when it is collected
wait
