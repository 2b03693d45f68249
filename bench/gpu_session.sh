#!/usr/bin/env bash
# Every GPU benchmark the open issues name, in one call on a lent device (about 10 minutes on an H100):
#   bash bench/gpu_session.sh            (results in $OUT, or bench/gpu-results/ when OUT is not set)
# 1. bench/gpu_profile.py: overhead over the bare forward at Qwen2.5-3B and Llama-3-8B shapes (target <= 3%), the
#    covariance kernel against a bf16 matmul (target >= 70%), the fit at D = 122,880, peak memory, MFU.
# 2. bench/gpu_kernels.py: the Triton kernels against the device's two ceilings.
# 3. A 1-GPU torchrun profile of a random-weight Qwen2.5-0.5B-shaped model over a synthetic corpus, against the same
#    profile without torchrun (the world of one), both timed.
# The device has torch, triton and transformers but no internet: the package runs from the tree (PYTHONPATH), without
# its C++ core (the CUDA paths do not use it). Each step writes its own log; a failed step does not stop the others.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
    > "$OUT/versions.txt" 2>&1

timeout 420 python bench/gpu_profile.py --json "$OUT/gpu_profile.json" > "$OUT/gpu_profile.txt" 2>&1
echo "gpu_profile exit $?" >> "$OUT/status.txt"
timeout 180 python bench/gpu_kernels.py --json "$OUT/gpu_kernels.json" > "$OUT/gpu_kernels.txt" 2>&1
echo "gpu_kernels exit $?" >> "$OUT/status.txt"

work=$(mktemp -d)
python - "$work" > "$OUT/torchrun_setup.txt" 2>&1 <<'PY'
import json, random, sys, torch, transformers
from pathlib import Path
work = Path(sys.argv[1])
config = transformers.AutoConfig.for_model("qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                           num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                                           max_position_embeddings=32768, tie_word_embeddings=True)
with torch.device("cuda"):
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
    for _ in range(20000):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(64, 512))) + "\n")
print("ready")
PY
for launcher in "torchrun --standalone --nproc-per-node 1" "python"; do
    name=$(echo "$launcher" | cut -d' ' -f1)
    start=$SECONDS
    timeout 240 $launcher -m autoskill_fast profile --model "$work/model" --corpus "$work/corpus.txt" \
        --out "$work/run-$name" -k 64 --quiet --no-scores > "$OUT/profile_$name.txt" 2>&1
    code=$?
    echo "profile via $name: exit $code, $((SECONDS - start)) s wall (see run_$name.json for its own timings)" \
        >> "$OUT/status.txt"
    cp "$work/run-$name/run.json" "$OUT/run_$name.json" 2>/dev/null
done
rm -rf "$work"
cat "$OUT/status.txt"
