"""Eval throughput: the vllm backend against the hf backend, same problems, prompts, seeds and sampling.

    python bench/bench_eval.py [--problems 32] [--n 4] [--max-new-tokens 48] [--threads 1] [--reps 2]

Each repetition runs `evaluate` twice, hf then vllm, alternately (A B A B ...), each into a fresh folder, on the first
--problems GSM8K test problems with the default model in fp32, the seed protocol (raw prompt, temperature 1, top_p 1)
and batches of --batch-size problems. Reported per backend (median over repetitions): generated tokens per second of
generation (the samples' tokens, EOS included, over the seconds spent in `generate`: what the engine does), and end
to end (the same tokens over the whole evaluation: engine start, tokenization and grading included). Threads: the hf
side runs `torch.set_num_threads(--threads)`; vLLM's model worker is bound to cores 0..threads-1
(VLLM_CPU_OMP_THREADS_BIND, unless set), its scheduler process running beside it as vLLM's CPU build always has it.
vLLM runs in .venv-vllm (`bash scripts/vllm_env.sh`) or $AUTOSKILL_VLLM_PYTHON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from autoskill_fast.config import ModelConfig
from autoskill_fast.evaluation.generation import GenerationConfig
from autoskill_fast.evaluation.job import EvalConfig, evaluate
from autoskill_fast.evaluation.problems import ProblemsConfig
from autoskill_fast.evaluation.vllm_backend import vllm_python


def run(backend: str, out: Path, args) -> dict[str, float]:
    config = EvalConfig(out=str(out), problems=ProblemsConfig(limit=args.problems), model=ModelConfig(dtype="float32"),
                        generation=GenerationConfig(n=args.n, temperature=args.temperature, top_p=1.0,
                                                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                                    seed=args.seed, backend=backend), quiet=True)
    timings = evaluate(config).record["timings"]
    tokens = timings["generated_tokens"]
    return {"tokens": tokens, "generate_s": timings["generate_s"], "seconds": timings["seconds"],
            "load_s": timings.get("load_s", float("nan")), "gen_tok_s": tokens / timings["generate_s"],
            "e2e_tok_s": tokens / timings["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="problems per batch (both backends)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")
    python = vllm_python()
    version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                             capture_output=True, text=True).stdout.strip() or "?"
    results: dict[str, list[dict[str, float]]] = {"hf": [], "vllm": []}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        for rep in range(args.reps):
            for backend in ("hf", "vllm"):
                r = run(backend, Path(tmp) / f"{backend}-{rep}", args)
                results[backend].append(r)
                print(f"rep {rep} {backend:4s}: {r['tokens']} tokens, generate {r['generate_s']:.1f} s = "
                      f"{r['gen_tok_s']:.2f} tok/s; whole eval {r['seconds']:.1f} s = {r['e2e_tok_s']:.2f} tok/s"
                      + (f" (engine load {r['load_s']:.1f} s)" if backend == "vllm" else ""), flush=True)

    def median(backend: str, key: str) -> float:
        return statistics.median(r[key] for r in results[backend])

    print(f"\n{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} thread(s)), vLLM {version} via {python} (VLLM_CPU_OMP_THREADS_BIND="
          f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']}); default model fp32, {args.problems} GSM8K problems x "
          f"n={args.n}, "
          f"max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, batch {args.batch_size} problems, "
          f"{args.reps} interleaved repetitions")
    print(json.dumps({"args": vars(args), "results": results}))
    print("| backend | tokens | generate tok/s (median) | whole-eval tok/s (median) | whole eval s (median) |")
    print("|---|---|---|---|---|")
    for backend in ("hf", "vllm"):
        print(f"| {backend} | {statistics.median(r['tokens'] for r in results[backend]):.0f} | "
              f"{median(backend, 'gen_tok_s'):.2f} | {median(backend, 'e2e_tok_s'):.2f} | "
              f"{median(backend, 'seconds'):.1f} |")
    pairs = [v["gen_tok_s"] / h["gen_tok_s"] for h, v in zip(results["hf"], results["vllm"])]
    print(f"vllm / hf, generate tok/s: {median('vllm', 'gen_tok_s') / median('hf', 'gen_tok_s'):.2f}x "
          f"(per repetition: {', '.join(f'{p:.2f}' for p in pairs)}); whole eval: "
          f"{median('vllm', 'e2e_tok_s') / median('hf', 'e2e_tok_s'):.2f}x")


if __name__ == "__main__":
    main()
