"""Profile throughput and peak memory against the baselines, measured in the same run (issue 2 / issue 3, bench 1).

    python bench/bench_profile.py --examples 64 --threads 1 --reps 2

Methods, all on the same model (the embedded default), the same GSM8K texts and k:
  ours     autoskill_fast.profile (bucketed batches, hooks, early stop, streaming covariance, top-k solver)
  floor    the bare base model (no capture, no LM head) on the very batches `ours` runs: the floor
  careful  corpus order, fixed batches padded to their longest, full causal LM with output_hidden_states in the model's
           dtype, masked mean in torch, sklearn IncrementalPCA.partial_fit per batch
  paper    batch size 1, fp32 output_hidden_states, concatenate, sklearn PCA on the in-memory matrix
Each method runs in its own subprocess (so peak RSS is its own), interleaved A B C D A B C D; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

METHODS = ("ours", "floor", "careful", "paper")


def load_texts(n: int) -> list[str]:
    from autoskill_fast.config import default_corpus_path

    lines = default_corpus_path().read_text(encoding="utf-8").splitlines()[:n]
    return [f"{r['question']}\n{r['answer']}" for r in map(json.loads, lines)]


def run_method(method: str, n: int, k: int, batch_size: int) -> dict:
    import torch

    from autoskill_fast import CorpusConfig, ModelConfig, ProfileConfig, profile
    from autoskill_fast.config import default_corpus_path
    from autoskill_fast.capture.models import load_model

    texts = load_texts(n)
    loaded = load_model(ModelConfig())
    layers = list(range(1, len(loaded.blocks) - 1))
    corpus = CorpusConfig(str(default_corpus_path()), template="{question}\n{answer}", limit=n)
    tokenizer = loaded.tokenizer
    t0 = time.perf_counter()
    if method == "ours":
        with tempfile.TemporaryDirectory() as out:
            profile(ProfileConfig(corpus=corpus, out=out, k=k, quiet=True), loaded=loaded)
    elif method == "floor":
        from autoskill_fast.capture.features import resolve_pooling
        from autoskill_fast.config import BatchingConfig, PoolingConfig, token_budget_for
        from autoskill_fast.data.stream import InputTally, iter_batches, iter_tokenized

        pooling = resolve_pooling(PoolingConfig(), loaded.model, tokenizer).config  # as profile() resolves it
        batching = BatchingConfig()
        items = iter_tokenized(corpus, tokenizer, pooling, InputTally())
        batches = iter_batches(items, batching, token_budget=token_budget_for(batching, loaded.device.type),
                               pad_id=tokenizer.pad_token_id, mode=pooling.mode)
        with torch.inference_mode():
            for batch in batches:
                loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, use_cache=False)
    else:
        from sklearn.decomposition import PCA, IncrementalPCA
        from transformers import AutoModelForCausalLM

        full = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
        t0 = time.perf_counter()  # the LM-head model load is not the method's cost
        if method == "careful":
            ipca = IncrementalPCA(n_components=k)
            with torch.inference_mode():
                for i in range(0, n, batch_size):
                    enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True)
                    hidden = full(**enc, output_hidden_states=True).hidden_states
                    mask = enc["attention_mask"].unsqueeze(-1).float()
                    feats = torch.cat([(hidden[l + 1] * mask).sum(1) / mask.sum(1) for l in layers], dim=1)
                    if feats.shape[0] >= k:
                        ipca.partial_fit(feats.numpy())
        else:
            rows = []
            with torch.inference_mode():
                for text in texts:
                    ids = tokenizer(text, return_tensors="pt")["input_ids"]
                    hidden = full(ids, output_hidden_states=True).hidden_states
                    start = 1 if ids[0, 0].item() == tokenizer.bos_token_id else 0
                    rows.append(torch.cat([hidden[l + 1][0, start:].mean(0) for l in layers]))
            PCA(n_components=k).fit(torch.stack(rows).numpy())
    seconds = time.perf_counter() - t0
    return {"method": method, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="the careful baseline's fixed batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_method(args.child, args.examples, args.k, args.batch_size)))
        return

    methods = args.methods.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    times: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, float] = {}
    for rep in range(args.reps):
        for method in methods:
            cmd = [sys.executable, __file__, "--child", method, "--examples", str(args.examples), "--k", str(args.k),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            times[method].append(result["seconds"])
            rss[method] = max(rss.get(method, 0.0), result["peak_rss_mb"])
            print(f"rep {rep}: {method:8s} {result['seconds']:8.2f} s  peak RSS {result['peak_rss_mb']:7.0f} MB", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"\n{args.examples} GSM8K examples, k={args.k}, {args.threads} thread(s), median of {args.reps}")
    print(f"{'method':8s} {'seconds':>8s} {'ex/s':>7s} {'peak MB':>8s}  ours is ...")
    for m in methods:
        ratio = med[m] / med["ours"] if "ours" in med else float("nan")
        print(f"{m:8s} {med[m]:8.2f} {args.examples / med[m]:7.2f} {rss[m]:8.0f}  {ratio:5.2f}x faster" if m != "ours"
              else f"{m:8s} {med[m]:8.2f} {args.examples / med[m]:7.2f} {rss[m]:8.0f}")
    if "floor" in med and "ours" in med:
        print(f"overhead of ours over the floor: {100 * (med['ours'] / med['floor'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
