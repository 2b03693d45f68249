"""What `--covariance-rows bfloat16` does to a basis, against the sampling noise the basis has anyway.

    python bench/bench_covariance_rows.py RUN [-k 16] [--bootstrap 20] [--out FILE]

RUN is a profile run with `--save-features` (float32 features). The script rebuilds its covariance twice, in fp64 from
the same rows: once from the centered features as they are (what the default float32 rows give), and once with the
centered features rounded to bf16 before the second moments (the mean from the features themselves), as the profiler
does with `--covariance-rows bfloat16`; the rows are centered by the run's saved shift, which is the pilot mean the
profile centered them by for a one-process run (not for a torchrun or merged run: use a one-process run). Each
covariance's top-k eigenpairs come from the rows (a QR of the [D, N + 1] row matrix, then a small eigenproblem), so
D x D never exists.

The yardstick is the bootstrap: the same fp32 basis recomputed from rows drawn with replacement, `--bootstrap` times.
For each direction the table gives its eigenvalue, the relative change of the eigenvalue with bf16 rows, the angle
between the fp32 and bf16 directions, and the median angle between the fp32 direction and its bootstrap replicates
(directions with close eigenvalues rotate into each other: the last column is the median of the largest principal
angle between the top-i subspaces, which does not depend on that).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def top_components(rows_nd: torch.Tensor, mean_d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of (R^T R - n m m^T) / (n - 1) for rows R [N, D] (fp64) and their mean m, from the rows."""
    n = rows_nd.shape[0]
    stacked = torch.cat([rows_nd, math.sqrt(n) * mean_d[None, :]]).T  # [D, N + 1]
    q, r = torch.linalg.qr(stacked)
    signs = torch.ones(r.shape[1], dtype=r.dtype)
    signs[-1] = -1.0
    values, vectors = torch.linalg.eigh((r * signs) @ r.T)
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    return values / (n - 1), q @ vectors


def angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(u @ v)))))


def subspace_angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    cosines = torch.linalg.svdvals(u.T @ v).clamp(max=1.0)
    return math.degrees(math.acos(float(cosines.min())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    from autoskill_fast.artifacts import TensorReader
    from autoskill_fast.run.features import iter_feature_shards

    run = Path(args.run)
    shards = list(iter_feature_shards(run / "features"))
    order = torch.argsort(torch.cat([rows for _, rows, _ in shards]))
    features = torch.cat([f for f, _, _ in shards])[order]
    if features.dtype != torch.float32:
        raise SystemExit(f"{run}: features are {features.dtype}; profile with --features-dtype float32")
    with TensorReader(run / "stats.safetensors", required=("shift",)) as reader:
        shift = reader.get("shift")
    centered = features - shift.float()  # fp32, as the capture kernel writes them
    n, dim = centered.shape
    exact = centered.double()
    mean = exact.mean(dim=0)
    rounded = centered.bfloat16().double()
    values32, vectors32 = top_components(exact, mean, args.k)
    values16, vectors16 = top_components(rounded, mean, args.k)
    generator = torch.Generator().manual_seed(0)
    boot_angles = [[] for _ in range(args.k)]
    boot_subspace = [[] for _ in range(args.k)]
    for _ in range(args.bootstrap):
        pick = torch.randint(0, n, (n,), generator=generator)
        sample = exact[pick]
        _, vectors = top_components(sample, sample.mean(dim=0), args.k)
        for i in range(args.k):
            boot_angles[i].append(angle_deg(vectors32[:, i], vectors[:, i]))
            boot_subspace[i].append(subspace_angle_deg(vectors32[:, :i + 1], vectors[:, :i + 1]))
    rows = []
    for i in range(args.k):
        rows.append({"direction": i, "eigenvalue": float(values32[i]),
                     "eigenvalue_rel_change": float((values16[i] - values32[i]) / values32[i]),
                     "angle_deg": angle_deg(vectors32[:, i], vectors16[:, i]),
                     "subspace_angle_deg": subspace_angle_deg(vectors32[:, :i + 1], vectors16[:, :i + 1]),
                     "bootstrap_angle_deg": statistics.median(boot_angles[i]),
                     "bootstrap_subspace_angle_deg": statistics.median(boot_subspace[i])})
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "run": str(run), "examples": n,
              "feature_dim": dim, "k": args.k, "bootstrap": args.bootstrap}
    print(json.dumps(header))
    print("\n| direction | eigenvalue | bf16: eigenvalue change | bf16: angle deg | bootstrap: angle deg (median) "
          "| bf16: top-i subspace angle deg | bootstrap: top-i subspace angle deg (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['direction']} | {r['eigenvalue']:.4g} | {r['eigenvalue_rel_change']:+.1e} | "
              f"{r['angle_deg']:.3g} | {r['bootstrap_angle_deg']:.3g} | {r['subspace_angle_deg']:.3g} | "
              f"{r['bootstrap_subspace_angle_deg']:.3g} |")
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
