"""Does preparing batches on a background thread (`--prefetch`) shorten a profile? (issue 12)

    python bench/bench_prefetch.py [--examples 100000] [--reps 3] [--threads 1,2] [--prefetch 0,4]

The corpus and model of bench_scale.py (a tiny random Llama over short synthetic texts, where reading, tokenizing and
padding are about half of the profile, as on a GPU whose forward is fast) and the default model over as many
lines of the embedded GSM8K corpus (where the forward dominates). Each profile runs as the CLI runs it, in its own
process, with `--prefetch 0` (each batch prepared in turn, as before) and `--prefetch N`, interleaved A B A B. The
table gives medians from run.json of the pass over the corpus (`total_s` less model load, fit and scores: reading,
tokenizing, padding, forward, statistics) and of `total_s`, each with its ratio to `--prefetch 0` in the same run.
`--threads 1` leaves the second core of a 2-core machine to the batch thread, as a GPU forward leaves the CPU free;
`--threads 2` puts the two threads on the same cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import REPO, make_corpus, make_model, run  # noqa: E402


def default_corpus(path: Path, n: int) -> Path:
    sys.path.insert(0, str(REPO))
    from autoskill_fast.config import default_corpus_path

    lines = default_corpus_path().read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(lines[i % len(lines)] + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100000, help="examples for the tiny model")
    parser.add_argument("--default-examples", type=int, default=400, help="examples for the default model (0: skip)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="torch threads per profile")
    parser.add_argument("--prefetch", default="0,4", help="values of --prefetch; the first is the baseline")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    depths = [int(d) for d in args.prefetch.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-prefetch-"))
    print(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                      "machine": platform.processor() or platform.machine()}), flush=True)
    workloads = [("tiny", ["--model", str(make_model(work / "model")), "--corpus",
                           str(make_corpus(work / "tiny.txt", args.examples))], args.examples)]
    if args.default_examples:
        workloads.append(("default", ["--corpus", str(default_corpus(work / "gsm8k.jsonl", args.default_examples)),
                                      "--text-field", "question"], args.default_examples))
    rows = []
    try:
        for name, options, n in workloads:
            for t in threads:
                env = dict(os.environ, OMP_NUM_THREADS=str(t), HF_HUB_OFFLINE="1")
                seconds: dict[int, list[float]] = {d: [] for d in depths}
                passes: dict[int, list[float]] = {d: [] for d in depths}
                for rep in range(args.reps):
                    for d in depths:  # interleaved, so drift on a shared machine falls on both
                        out = work / f"run-{name}-{t}-{d}"
                        run([sys.executable, "-m", "autoskill_fast", "profile", *options, "--out", str(out), "-k",
                             "8", "--quiet", "--threads", str(t), "--prefetch", str(d)], env)
                        timings = json.loads((out / "run.json").read_text())["timings"]
                        seconds[d].append(timings["total_s"])
                        passes[d].append(timings["total_s"] - timings["load_model_s"] - timings["fit_s"]
                                         - timings["scores_s"])
                        shutil.rmtree(out)
                base, base_pass = statistics.median(seconds[depths[0]]), statistics.median(passes[depths[0]])
                for d in depths:
                    row = {"workload": name, "examples": n, "threads": t, "prefetch": d, "total_runs_s": seconds[d],
                           "pass_runs_s": passes[d], "pass_s": statistics.median(passes[d]),
                           "pass_ratio": statistics.median(passes[d]) / base_pass,
                           "total_s": statistics.median(seconds[d]), "total_ratio": statistics.median(seconds[d]) / base}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'workload':>8} {'examples':>8} {'threads':>7} {'prefetch':>8} {'pass s':>8} {'ratio':>6} "
          f"{'total s':>8} {'ratio':>6}   (ratios to --prefetch {depths[0]})")
    for r in rows:
        print(f"{r['workload']:>8} {r['examples']:>8} {r['threads']:>7} {r['prefetch']:>8} {r['pass_s']:>8.2f} "
              f"{r['pass_ratio']:>6.3f} {r['total_s']:>8.2f} {r['total_ratio']:>6.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
