"""The `fit` job: refit a run's basis from its saved statistics, with another k, without the model.

It also completes a run whose fit failed after the forward pass (status "statistics" in run.json). Scores are
recomputed when the run saved its features; otherwise the old ones (of the old basis) are removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..basis import SkillBasis, diagnose, feature_scale
from ..capture.layout import FeatureLayout
from ..config import check_fit_options
from ..decomposition.components import fit_components
from ..decomposition.statistics import load_statistics
from ..errors import AutoskillError
from ..run.features import iter_feature_shards
from ..run.folder import RunFolder, basis_summary
from ..run.scores import save_scores


def fit(run_dir: str | Path, k: int, *, tol: float = 1e-6, scaling: str | None = None) -> SkillBasis:
    """Refit a run's basis with k directions from its saved statistics (rescoring if features were saved); `scaling`
    (none, layer, coordinate; default: the run's) is computed from the same statistics, with no second pass."""
    check_fit_options(k, tol)
    folder = RunFolder(run_dir)
    record = folder.record()
    if record.status == "running":
        raise AutoskillError(f"{folder.path}: the run is not finished; rerun its profile command to resume it")
    stats = load_statistics(folder.stats_path(record))
    if record.layer_scale is not None:
        layer_scale = torch.tensor(record.layer_scale, dtype=torch.float32)
    else:  # schema-1 records keep it in the basis only
        layer_scale = folder.basis(record).layer_scale if record.status == "complete" else None
    scaling = scaling or record.config.get("scaling", "none")
    layout = FeatureLayout.from_json(record.layout)
    variances = stats.variances()
    pca = fit_components(stats, k, tol=tol, scale=feature_scale(variances, scaling, layout))
    basis = SkillBasis(pca, layout, model=record.model, pooling=record.pooling, layer_scale=layer_scale, labels=None,
                       run_key=record.key, scaling=scaling)
    basis.diagnostics = diagnose(basis, variances)
    if record.status == "complete":  # until rescored, the run is not complete: a rerun of `fit` finishes it
        record.status = "statistics"
        folder.write_record(record)
    basis.save(folder.path)
    temporary = folder.feature_dir(record, temporary=True)  # a profile stopped after its fit, before its scores
    features = folder.feature_dir(record) or temporary
    if features is not None:
        save_scores(folder.path, basis, iter_feature_shards(features))
    else:
        folder.remove_scores()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    record.status, record.basis, record.error = "complete", basis_summary(basis), None
    record.config["k"], record.config["scaling"] = k, scaling
    folder.write_record(record)
    return basis
