"""Loading exact statistics (a resume, `fit`) and merging two saved ones (`merge`): peak host memory and time.

    python bench/bench_load_stats.py [--dim 16128] [--dtypes float64,float32] [--reps 3] [--out FILE]

"direct" is what the code does now: `load_statistics` reads the packed sums straight into the accumulator, and
`merge_saved` adds a second file's sums into it a slice at a time. "whole file" is what it did before: safetensors'
`load_file`, then a copy into a new accumulator (`from_state_dict`), for each file, then `merge`.

Each load runs in its own process (getrusage's peak RSS is per process), the two ways interleaved A B A B. The file is
written once per dtype from 64 random rows, by another process: this one never imports torch, so it stays small (a
child's peak RSS starts from its parent's RSS at the fork). The table gives medians of the peak RSS above the process's
RSS before the load (torch imported, nothing else), of the seconds, and the ratios direct / whole-file measured in the
same run.
D = 16,128 is the default model's feature dim: 1.04 GB of fp64 sums (the CPU accumulator), 0.52 GB in fp32 (the GPU
one, whose Llama-3-8B size is 30 GB per rank).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import torch
sys.path.insert(0, {repo!r})
from autoskill_fast.artifacts import load_tensors
from autoskill_fast.decomposition.statistics import load_statistics, statistics_from_state

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

paths = {paths!r}
before = rss_mib()
start = time.perf_counter()
if {way!r} == "direct":
    stats = load_statistics(paths[0])
    for path in paths[1:]:
        stats.merge_saved(path)
else:
    stats = statistics_from_state(load_tensors(paths[0]))
    for path in paths[1:]:
        stats.merge(statistics_from_state(load_tensors(path)))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_above_mib": peak - before, "n": stats.n,
                  "sums_mib": stats.sumsq.data.numel() * stats.sumsq.data.element_size() / 2**20}}))
"""


WRITER = """
import sys
import torch
sys.path.insert(0, {repo!r})
from autoskill_fast.decomposition.statistics import StreamingCovariance

stats = StreamingCovariance({dim}, accum_dtype=torch.{dtype})
stats.update(torch.randn(64, {dim}, generator=torch.Generator().manual_seed({seed})))
stats.save({path!r})
"""


def write_statistics(path: Path, dim: int, dtype: str, seed: int) -> None:
    """In a process of its own: this one stays small, because a child's peak RSS starts from its parent's RSS at the
    fork (Linux keeps the high-water mark across exec)."""
    subprocess.run([sys.executable, "-c", WRITER.format(repo=str(REPO), dim=dim, dtype=dtype, path=str(path),
                                                        seed=seed)],
                   check=True)


def load_once(paths: list[Path], way: str) -> dict:
    code = CHILD.format(repo=str(REPO), way=way, paths=[str(p) for p in paths])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"the {way} load failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=16128)
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-load-stats-"))
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "dim": args.dim, "reps": args.reps}
    print(json.dumps(header), flush=True)
    rows = []
    try:
        for dtype in args.dtypes.split(","):
            paths = [work / f"stats-{dtype}-{i}.safetensors" for i in range(2)]
            for seed, path in enumerate(paths):
                write_statistics(path, args.dim, dtype, seed)
            for op, files in (("load", paths[:1]), ("merge of 2", paths)):
                runs = {"whole-file": [], "direct": []}
                for _ in range(args.reps):
                    for way in runs:
                        runs[way].append(load_once(files, way))
                med = {way: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_above_mib")}
                       for way, rs in runs.items()}
                rows.append({"op": op, "dtype": dtype, "sums_mib": runs["direct"][0]["sums_mib"],
                             **{f"{way}_{key}": value for way, m in med.items() for key, value in m.items()},
                             "rss_ratio": med["direct"]["peak_above_mib"] / med["whole-file"]["peak_above_mib"],
                             "time_ratio": med["direct"]["seconds"] / med["whole-file"]["seconds"], "runs": runs})
            for path in paths:
                path.unlink()
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
    print("\n| op | dtype | sums MiB | whole-file: peak above MiB | direct: peak above MiB | **RSS direct / "
          "whole-file** | whole-file s | direct s | time direct / whole-file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['dtype']} | {r['sums_mib']:.0f} | {r['whole-file_peak_above_mib']:.0f} | "
              f"{r['direct_peak_above_mib']:.0f} | **{r['rss_ratio']:.2f}** | {r['whole-file_seconds']:.2f} | "
              f"{r['direct_seconds']:.2f} | {r['time_ratio']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
