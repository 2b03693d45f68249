"""Synthetic profile run folders with planted structure: the right answer of select / inspect / compare is known.

The basis is the identity (features = scores, mean 0), so an example's centered projection is its row of
`projection` and its cosine is that row divided by its norm. `components` (with `layer_ids`) gives the basis other
unit directions over several layers instead, for what each direction is made of; the scores stay as given.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from autoskill_fast.basis import SkillBasis, diagnose
from autoskill_fast.decomposition.components import PrincipalComponents
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.run.folder import RunFolder
from autoskill_fast.run.record import RunRecord
from autoskill_fast.run.scores import Scores


def make_run(folder: Path, projection_nk: torch.Tensor, *, texts: list[str] | None = None, ids: list[str] | None = None,
             eigenvalues: torch.Tensor | None = None, model: str = "synthetic-model", extra_fields: bool = True,
             write_run_json: bool = True, config_hash: str = "0" * 8, components: torch.Tensor | None = None,
             layer_ids: tuple[int, ...] = (0,), diagnosed: bool = False,
             fields: list[dict] | None = None) -> Path:
    """Write basis.*, scores.*, run.json and corpus.jsonl (records {"uid", "text", "meta"}) into `folder`.

    `config_hash` is the model's identity (runs with the same one are the same model); `components` [k, L * H] are
    the basis's directions (orthonormal rows) over `layer_ids` (default: the identity, one layer); `diagnosed` stores
    `diagnose`'s diagnostics in the basis (default: none, as a basis fitted before they existed); `fields` adds keys
    to each record."""
    folder.mkdir(parents=True, exist_ok=True)
    n, k = projection_nk.shape
    ids = ids or [f"ex{i:05d}" for i in range(n)]
    texts = texts or [f"example number {i} about topic {i % 7}" for i in range(n)]
    projection = projection_nk.to(torch.float32)
    if eigenvalues is None:
        eigenvalues = projection.to(torch.float64).var(0)
    total = float(eigenvalues.sum()) * 1.25  # the top k explain 80%
    components = torch.eye(k) if components is None else components.to(torch.float32)
    dim = components.shape[1]
    hidden = dim // len(layer_ids)
    pca = PrincipalComponents(components, eigenvalues.to(torch.float64), torch.zeros(dim, dtype=torch.float64), n,
                              total)
    basis = SkillBasis(pca, FeatureLayout(tuple(layer_ids), hidden),
                       model={"name": model, "config_hash": config_hash, "num_layers": max(layer_ids) + 1,
                              "hidden_size": hidden},
                       pooling={"mode": "mean", "first_token": "drop", "layer_ids": list(layer_ids),
                                "layer_scaling": "none"},
                       run_key="synthetic")
    if diagnosed:  # the features are projection @ components (mean 0): their variances follow
        basis.diagnostics = diagnose(basis, (projection.double() @ components.double()).var(0))
    basis.save(folder)
    cosine = projection / projection.norm(dim=1, keepdim=True).clamp_min(1e-12)
    Scores(ids, torch.arange(n, dtype=torch.int64), projection, cosine, "synthetic").save(folder)
    corpus = folder / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i, (example_id, text) in enumerate(zip(ids, texts)):
            record = {"uid": example_id, "text": text}
            if extra_fields:
                record["meta"] = {"source": "synthetic", "n": i}
            if fields is not None:
                record.update(fields[i])
            f.write(json.dumps(record) + "\n")
    if write_run_json:
        RunFolder(folder).write_record(RunRecord(
            status="complete", key="synthetic",
            config={"corpus": {"path": str(corpus), "format": "auto", "text_field": "text", "template": None,
                               "messages_field": None, "id_field": "uid", "limit": None},
                    "model": {"model": model}, "k": k},
            model={"name": model}, corpus={"path": str(corpus), "sha256": "synthetic"}, pooling=basis.pooling,
            layout=basis.layout.to_json(), counts={"examples": n, "profiled": n, "skipped": 0},
            timings={"total_s": 1.5}))
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
