"""Does profiling stay linear in time and flat in memory up to a million examples? (issue 12)

    python bench/bench_scale.py [--sizes 10000,100000,1000000] [--procs 1,2] [--threads 1] [--scores on,off]
        [--out bench/scale.json]

A tiny random model (Llama, 2 blocks, hidden 64, the default model's tokenizer; random weights, nothing downloaded)
over synthetic corpora of short examples (8-24 words from a fixed vocabulary, seeded; one per line, .txt), profiled by
the CLI exactly as a user runs it: `python -m autoskill_fast profile` for one process and `torchrun --standalone
--nproc-per-node 2` (gloo, CPU) for two. For each size it reports the process wall time, the profile's own time from
run.json (`total_s`: model load, forward, fit, scores; not the interpreter's start), time per example, and the peak
resident memory of the whole process tree (the ranks together), sampled every 0.1 s with psutil. Each configuration
runs with scores (the default: the output holds an [N, k] score matrix and N ids, which grow with N by design) and
with --no-scores (what the profile itself holds). Targets: per-example time at the largest size within 10% of the
smallest; peak memory within 10% from 100k to 1M.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat while seven ducks counted eggs and sold them for two dollars each day then "
         "went home to rest before the market opened again at nine").split()


def make_model(folder: Path) -> Path:
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from autoskill_fast.capture.models import convert_gguf, default_gguf_path

    tokenizer_dir = convert_gguf(default_gguf_path())
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def make_corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) + "\n")
    return path


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of the process and all its children, sampled every 0.1 s)."""
    import psutil

    t0 = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return wall, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--scores", default="on,off", help="with scores (on), --no-scores (off), or both (on,off)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    procs = [int(p) for p in args.procs.split(",")]
    score_modes = [{"on": True, "off": False}[m] for m in args.scores.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "threads_per_process": args.threads, "sizes": sizes}
    print(json.dumps(header), flush=True)
    model = make_model(work / "model")
    rows = []
    try:
        for n in sizes:
            corpus = make_corpus(work / f"corpus-{n}.txt", n)
            for p in procs:
                for scores in score_modes:
                    out = work / f"run-{n}-{p}-{scores}"
                    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 str(p)] if p > 1 else [sys.executable])
                    command = [*launcher, "-m", "autoskill_fast", "profile", "--model", str(model), "--corpus",
                               str(corpus), "--out", str(out), "-k", "8", "--quiet", "--threads", str(args.threads)]
                    if not scores:
                        command.append("--no-scores")
                    wall, peak = run(command, env)
                    record = json.loads((out / "run.json").read_text())
                    total = record["timings"]["total_s"]
                    row = {"examples": n, "processes": p, "scores": scores, "wall_s": wall, "profile_s": total,
                           "us_per_example": 1e6 * total / n, "forward_s": record["timings"]["forward_s"],
                           "peak_rss_mib": peak, "tokens": record["counts"]["tokens"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
            (work / f"corpus-{n}.txt").unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'examples':>9} {'procs':>5} {'scores':>6} {'wall s':>8} {'profile s':>9} {'us/example':>10} "
          f"{'peak RSS MiB':>12}")
    for r in rows:
        print(f"{r['examples']:>9} {r['processes']:>5} {str(r['scores']):>6} {r['wall_s']:>8.1f} {r['profile_s']:>9.1f} "
              f"{r['us_per_example']:>10.1f} {r['peak_rss_mib']:>12.0f}")
    for p in procs:
        for scores in score_modes:
            mine = [r for r in rows if r["processes"] == p and r["scores"] == scores]
            if len(mine) >= 2:
                first, last = mine[0], mine[-1]
                mid = next((r for r in mine if r["examples"] == 100000), None)
                memory = f", peak RSS 1M/100k {last['peak_rss_mib'] / mid['peak_rss_mib']:.3f}" if mid and mid is not last else ""
                print(f"{p} process(es), scores={scores}: time per example {last['examples']}/{first['examples']} = "
                      f"{last['us_per_example'] / first['us_per_example']:.3f}{memory}")
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
