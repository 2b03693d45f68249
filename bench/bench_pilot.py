"""The pilot proxy end to end on the default model (SmolLM2-135M-Instruct), on CPU.

    python bench/bench_pilot.py --threads 1 [--pool-limit 400] [--directions 0] [--examples 64] [--steps 24]

The embedded GSM8K test set, cut to its first --pool-limit problems, is split by id into a dev set (--dev-size) and a
pool (the rest). The pool is profiled (the paper's recipe: mean pooling over blocks 1..L-2, no scaling, k directions),
then `rank --proxy pilot --metric nll` trains one LoRA pilot per pole of each direction on the m pool examples at that
pole, and one on m random pool examples (the baseline), identically, and measures each pilot's gold-solution NLL on
the dev set. Printed: each pole's NLL drop against the random pilot with its 95% paired-bootstrap interval (over dev
problems; one training seed), the cost of every pilot, the per-step training time and the training throughput that
the GPU estimate starts from. Everything is written under --out (a rerun resumes: finished pilots are reused).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/bench_pilot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pool-limit", type=int, default=400, help="problems of GSM8K test used (before the split)")
    parser.add_argument("--dev-size", type=int, default=100)
    parser.add_argument("--k", type=int, default=8, help="directions of the profiled basis")
    parser.add_argument("--directions", default="0", help="directions ranked, e.g. 0 or 0,1")
    parser.add_argument("--examples", type=int, default=64, help="m: examples per pilot")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    import peft
    import transformers

    from autoskill_fast.capture.models import load_model
    from autoskill_fast.config import CorpusConfig, ModelConfig, ProfileConfig, parse_layers
    from autoskill_fast.evaluation.job import EvalConfig, evaluate
    from autoskill_fast.evaluation.problems import ProblemsConfig
    from autoskill_fast.jobs.profiling import profile
    from autoskill_fast.proxies.job import RankConfig, rank

    out = Path(args.out)
    started = datetime.now(timezone.utc)
    corpus = CorpusConfig(limit=args.pool_limit, split="pool", dev_size=args.dev_size)
    run_json = out / "run" / "run.json"
    if not (run_json.is_file() and json.loads(run_json.read_text()).get("status") == "complete"):
        profile(ProfileConfig(out=str(out / "run"), corpus=corpus, k=args.k, quiet=True))
    # else: the profile of an earlier call is reused as it is (a newer version may profile with other defaults)
    record = json.loads((out / "run" / "run.json").read_text())
    profile_s = record["timings"]["total_s"]  # of the run that computed it (a rerun finds it complete)

    loaded = load_model(ModelConfig(), causal_lm=True)
    config = RankConfig(run=str(out / "run"), proxy="pilot", metric="nll",
                        problems=ProblemsConfig(limit=args.pool_limit, dev_size=args.dev_size),
                        directions=parse_layers(args.directions), pilot_examples=args.examples, pilot_steps=args.steps,
                        pilot_batch_size=args.batch_size, pilot_lr=args.lr, lora_rank=args.rank)
    t1 = time.perf_counter()
    ranking = rank(config, loaded=loaded)
    rank_s = time.perf_counter() - t1
    # The untrained model on the same dev set, for scale only (pilots learn the answer format too: compare pilots
    # with each other, not with this).
    base_eval = evaluate(EvalConfig(out=str(out / "base"), problems=replace(config.problems, split="dev"), metric="nll",
                                    quiet=True), loaded=loaded)

    base = ranking.baseline
    pilots = [("random", base)] + [(f"{'+' if e.sign > 0 else '-'}{e.direction}", e.details) for e in ranking.entries]
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), torch {torch.__version__} ({torch.get_num_threads()} thread(s)), transformers "
          f"{transformers.__version__}, peft {peft.__version__}, python {sys.version.split()[0]}")
    print(f"pool: {base['pool']} GSM8K test problems (first {args.pool_limit}, dev {args.dev_size} split off by id); "
          f"profile {record['counts'].get('profiled')} examples in {profile_s:.0f} s; basis k={args.k}; "
          f"explained variance of the ranked directions: "
          + ", ".join(f"d{d} {record['basis']['explained_variance_ratio'][d]:.3f}" for d in config.directions))
    print(f"pilots: m={base['examples']}, {base['steps']} steps x {base['batch_size']}, lr {base['lr']}, LoRA r="
          f"{base['lora_rank']} ({base['trainable_parameters'] / 1e6:.2f} M trainable), seed {base['seed']}; "
          f"untrained model's dev NLL {base_eval.record['nll']['value']:.4f} [{base_eval.record['nll']['low']:.4f}, "
          f"{base_eval.record['nll']['high']:.4f}]\n")
    print("| pilot | dev NLL (95% CI) | NLL drop vs random (95% CI) | train loss: first step / last epoch | "
          "tokens/step | train s | s/step | eval s | cost s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, d in pilots:
        nll = d["nll"]
        entry = next((e for e in ranking.entries if e.details is d), None)
        drop = "(baseline)" if entry is None else f"{entry.effect:+.4f} [{entry.low:+.4f}, {entry.high:+.4f}]"
        cost = d["train_s"] + d["eval_s"]
        print(f"| {name} | {nll['value']:.4f} [{nll['low']:.4f}, {nll['high']:.4f}] | {drop} | {d['first_loss']:.3f} / "
              f"{d['last_epoch_loss']:.3f} | {d['trained_tokens'] / d['steps']:.0f} | {d['train_s']:.0f} | "
              f"{d['step_s']:.1f} | {d['eval_s']:.0f} | {cost:.0f} |")
    tokens = sum(d["trained_tokens"] for _, d in pilots)
    train_s = sum(d["train_s"] for _, d in pilots)
    steps = sum(d["steps"] for _, d in pilots)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    flops = 4 * n_params * tokens  # forward 2N + backward to the activations 2N per token; no base weight gradients
    print(f"\ntraining, all pilots: {tokens / steps:.0f} tokens/step (prompt + solution, padding excluded), "
          f"{train_s / steps:.1f} s/step, {tokens / train_s:.0f} tokens/s, ~{flops / train_s / 1e9:.1f} GFLOP/s "
          f"(4 x {n_params / 1e6:.1f} M parameters per token); profile {profile_s:.0f} s, rank {rank_s:.0f} s "
          "(this call)")
    tokens_per_step, step_s = tokens / steps, train_s / steps
    summary = {"date": started.isoformat(), "machine": platform.node(), "cpu": platform.processor(),
               "threads": torch.get_num_threads(), "args": vars(args), "profile_s": profile_s, "rank_s": rank_s,
               "untrained_nll": base_eval.record["nll"],
               "tokens_per_step": tokens_per_step, "step_s": step_s, "parameters": n_params,
               "baseline": base, "entries": [{"pole": e.pole, "effect": e.effect, "low": e.low, "high": e.high,
                                              "cost_s": e.cost_s, "details": e.details} for e in ranking.entries]}
    (out / "bench_pilot.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
