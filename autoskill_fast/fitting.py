"""From statistics to a basis, and from features to scores; the `fit` and `merge` jobs.

`fit` refits k directions from a run's saved statistics without the model; `merge` adds the statistics of shard runs
(`profile --shard i/n`) exactly and fits one basis over all of them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import torch

from .artifacts import load_json, save_json
from .basis import FeatureLayout, SkillBasis, canonical_signs
from .errors import AutoskillError
from .features import iter_feature_shards
from .scores import Scores
from .stats import SketchedCovariance, StreamingCovariance, load_statistics


def fit_basis(stats: StreamingCovariance | SketchedCovariance, k: int, layout: FeatureLayout, *, model: dict[str, Any], pooling: dict[str, Any],
              tol: float = 1e-6, layer_scale: torch.Tensor | None = None) -> SkillBasis:
    """The top-k eigenpairs of the streamed covariance as a SkillBasis."""
    rank_bound = min(stats.n - 1, stats.dim)
    if k > rank_bound:
        raise AutoskillError(f"-k {k} is more directions than the data has: {stats.n} examples in {stats.dim} dims "
                             f"give at most {rank_bound}; use -k {rank_bound} or less")
    t0 = time.perf_counter()
    result = stats.top_eigenpairs(k, tol=tol)
    solve_s = time.perf_counter() - t0
    total = stats.total_variance()
    components = canonical_signs(result.eigenvectors.T.to(torch.float64)).to(torch.float32)
    eigenvalues = result.eigenvalues.to(torch.float64).cpu()
    return SkillBasis(
        components_=components.cpu().contiguous(),
        eigenvalues_=eigenvalues,
        explained_variance_ratio_=eigenvalues / total if total > 0 else torch.zeros_like(eigenvalues),
        mean_=stats.mean.cpu(),
        n_samples_=stats.n,
        total_variance_=total,
        layout=layout,
        model=model,
        pooling=pooling,
        layer_scale=layer_scale,
        solver={"method": result.method, "tol": tol, "max_residual": float(result.residuals.max()), "seconds": solve_s},
    )


def scores_from_features(basis: SkillBasis, shards: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> Scores:
    """Projection and cosine of every stored feature row, in corpus row order; one shard in memory at a time."""
    ids: list[str] = []
    rows, projections, cosines = [], [], []
    for features, row, shard_ids in shards:
        projections.append(basis.project(features).cpu())
        cosines.append(basis.cosine(features).cpu())
        rows.append(row.cpu())
        ids.extend(shard_ids)
    return Scores(ids, torch.cat(rows), torch.cat(projections), torch.cat(cosines)).sorted_by_row()


def _load_run(folder: Path) -> tuple[dict[str, Any], StreamingCovariance | SketchedCovariance]:
    from .profile import RUN_JSON, STATS_FILE

    run = load_json(folder / RUN_JSON)
    if run.get("status") != "complete":
        raise AutoskillError(f"{folder}: the run is not complete; rerun its profile command to resume it")
    return run, load_statistics(folder / STATS_FILE)


def _features_dir(folder: Path) -> Path | None:
    path = folder / "features"
    return path if any(path.glob("shard-*.safetensors")) else None


def fit(run_dir: str | Path, k: int, *, tol: float = 1e-6) -> SkillBasis:
    """Refit a run's basis with k directions from its saved statistics (rescoring if features were saved)."""
    from .profile import RUN_JSON

    folder = Path(run_dir)
    run, stats = _load_run(folder)
    old = SkillBasis.load(folder)
    basis = fit_basis(stats, k, old.layout, model=old.model, pooling=old.pooling, tol=tol, layer_scale=old.layer_scale)
    basis.save(folder)
    features = _features_dir(folder)
    if features is not None:
        scores_from_features(basis, iter_feature_shards(features)).save(folder)
    elif (folder / "scores.safetensors").exists():
        (folder / "scores.safetensors").unlink()
        (folder / "scores.json").unlink(missing_ok=True)
    run["basis"] = {"k": basis.k, "solver": basis.solver, "explained_variance_ratio": basis.explained_variance_ratio_.tolist()}
    run["config"]["k"] = k
    save_json(folder / RUN_JSON, run)
    return basis


def merge(run_dirs: list[str | Path], out: str | Path, *, k: int | None = None, tol: float = 1e-6) -> SkillBasis:
    """Merge the statistics of shard runs exactly and fit one basis; scores too when every shard saved features."""
    from .profile import RUN_JSON, STATS_FILE

    if len(run_dirs) < 2:
        raise AutoskillError("merge needs at least two run folders")
    folders = [Path(d) for d in run_dirs]
    runs, merged = [], None
    first_basis = SkillBasis.load(folders[0])
    for folder in folders:
        run, stats = _load_run(folder)
        basis = SkillBasis.load(folder)
        basis.check_compatible(first_basis.model, first_basis.pooling, what=f"statistics in {folder}")
        if runs and run["corpus"]["sha256"] != runs[0]["corpus"]["sha256"]:
            raise AutoskillError(f"{folder}: profiled another corpus than {folders[0]}; merge shards of one corpus")
        runs.append(run)
        merged = stats if merged is None else merged.merge(stats)
    shards = [tuple(r["config"]["shard"]) for r in runs]
    if len(set(shards)) != len(shards):
        raise AutoskillError(f"the runs include the same shard twice: {shards}")
    k = k or first_basis.k
    basis = fit_basis(merged, k, first_basis.layout, model=first_basis.model, pooling=first_basis.pooling, tol=tol,
                      layer_scale=first_basis.layer_scale)
    out = Path(out)
    basis.save(out)
    merged.save(out / STATS_FILE)
    feature_dirs = [_features_dir(f) for f in folders]
    if all(feature_dirs):
        shards_iter = (s for d in feature_dirs for s in iter_feature_shards(d))
        scores_from_features(basis, shards_iter).save(out)
    n_of = [r["config"]["shard"][1] for r in runs]
    save_json(out / RUN_JSON, {
        "status": "complete",
        "merged_from": [str(f.resolve()) for f in folders],
        "complete_shards": len(runs) == n_of[0] and len(set(n_of)) == 1,
        "config": {**runs[0]["config"], "shard": [0, 1], "k": k},
        "model": runs[0]["model"],
        "corpus": runs[0]["corpus"],
        "pooling": runs[0].get("pooling"),
        "layout": first_basis.layout.to_json(),
        "counts": {"profiled": merged.n, "skipped": sum(r["counts"]["skipped"] for r in runs)},
        "skipped": [s for r in runs for s in r.get("skipped", [])],
        "basis": {"k": basis.k, "solver": basis.solver, "explained_variance_ratio": basis.explained_variance_ratio_.tolist()},
    })
    return basis
