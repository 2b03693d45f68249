"""The `merge` job: the statistics of shard runs (`profile --shard i/n`) added exactly, and one basis fitted over all.
Sketched statistics (`--sketch-size`) merge too: the shards' shrinkages add, plus the merge's own (its error bound).

Scores too, when every shard saved its features. The merged folder's key is made from the shards' keys.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path

import torch

from ..basis import SkillBasis, diagnose, feature_scale
from ..capture.fingerprint import describe_mismatch, model_mismatch
from ..capture.layout import FeatureLayout, check_same_pooling
from ..config import check_fit_options, check_out
from ..decomposition.components import fit_components
from ..decomposition.statistics import SketchedCovariance, load_statistics, saved_statistics_kind
from ..errors import AutoskillError
from ..run.features import iter_feature_shards
from ..run.folder import STATS_FILE, RunFolder, basis_summary
from ..run.record import RunRecord
from ..run.scores import save_scores


def merge(run_dirs: list[str | Path], out: str | Path, *, k: int | None = None, tol: float = 1e-6,
          overwrite: bool = False) -> SkillBasis:
    """Merge the statistics of shard runs exactly and fit one basis; scores too when every shard saved features."""
    check_fit_options(k, tol)
    check_out("merge", str(out))
    if len(run_dirs) < 2:
        raise AutoskillError("merge needs at least two run folders")
    shards = [RunFolder(d) for d in run_dirs]
    records = [shard.record() for shard in shards]
    first = records[0]
    merged = None
    for shard, record in zip(shards, records):
        if record.status == "running":
            raise AutoskillError(f"{shard.path}: the run is not finished; rerun its profile command to resume it")
        mismatch = model_mismatch(first.model, record.model)
        if mismatch is not None:
            raise AutoskillError(f"{shard.path}: profiled another model than {shards[0].path} "
                                 f"({describe_mismatch(mismatch, first.model, record.model)}); merge shards of one model")
        if record.corpus.get("sha256") != first.corpus.get("sha256"):
            raise AutoskillError(f"{shard.path}: profiled another corpus than {shards[0].path}; merge shards of one "
                                 "corpus")
        difference = _difference(first, record)
        if difference is not None:
            raise AutoskillError(f"{shard.path}: profiled with another {difference[0]} than {shards[0].path} "
                                 f"({difference[1]}); merge shards profiled alike")
        check_same_pooling(first.pooling, record.pooling, what=f"shard {shard.path}", against=f"{shards[0].path} was "
                           "profiled", remedy="merge shards profiled alike (the same --layers, --pooling, "
                           "--first-token and --layer-scaling)")
        if record.layer_scale != first.layer_scale:
            raise AutoskillError(f"{shard.path}: its --layer-scaling pilot factors (measured on its own first batch) "
                                 f"differ from {shards[0].path}'s, so their statistics do not add; profile without "
                                 "--layer-scaling pilot and choose fit-time --scaling layer")
        rows = record.config.get("covariance_rows", "float32")
        if rows != first.config.get("covariance_rows", "float32"):
            raise AutoskillError(f"{shard.path}: profiled with --covariance-rows {rows}, {shards[0].path} with "
                                 f"{first.config.get('covariance_rows', 'float32')}; merge shards profiled alike")
        path = shard.stats_path(record)
        if merged is None:
            merged = load_statistics(path)
            continue
        kind = saved_statistics_kind(path)
        if kind is not type(merged):
            raise AutoskillError(f"{shard.path}: holds {_kind(kind)} statistics and {shards[0].path} "
                                 f"{_kind(type(merged))}; merge shards profiled alike (all with --sketch-size, or none)")
        merged.merge_saved(path)  # around the first shard's shift; exact sums are added a slice at a time
    parts = [_parts(record) for record in records]
    _check_disjoint(parts, shards)
    key = hashlib.sha256("|".join(sorted(r.key for r in records)).encode()).hexdigest()[:20]
    folder = RunFolder(out)
    folder.claim(key, overwrite=overwrite, describe=f"a merge of {len(shards)} shard runs")
    k = k or int(first.config.get("k", 0)) or (first.basis or {}).get("k")
    scaling = first.config.get("scaling", "none")
    layout = FeatureLayout.from_json(first.layout)
    variances = merged.variances()
    pca = fit_components(merged, k, tol=tol, scale=feature_scale(variances, scaling, layout))
    layer_scale = None if first.layer_scale is None else torch.tensor(first.layer_scale, dtype=torch.float32)
    basis = SkillBasis(pca, layout, model=first.model, pooling=first.pooling, run_key=key, scaling=scaling,
                       layer_scale=layer_scale)
    basis.diagnostics = diagnose(basis, variances)
    basis.save(folder.path)
    merged.save(folder / STATS_FILE, folder.key_metadata(key))
    feature_dirs = [shard.feature_dir(record) for shard, record in zip(shards, records)]
    if all(feature_dirs):
        save_scores(folder.path, basis, (s for d in feature_dirs for s in iter_feature_shards(d)))
    folder.write_record(RunRecord(
        status="complete", key=key, kind="merge",
        config={**first.config, "shard": [0, 1], "parts": [list(p) for own in parts for p in own], "k": k},
        environment={"dtype": first.environment.get("dtype")},
        model=first.model, corpus=first.corpus, pooling=first.pooling, layout=first.layout,
        counts={"profiled": merged.n, "skipped": sum(r.counts.get("skipped", 0) for r in records)},
        skipped=[s for r in records for s in r.skipped], basis=basis_summary(basis), layer_scale=first.layer_scale,
        merged_from=[str(s.path.resolve()) for s in shards],
        complete_shards=sum(Fraction(1, n) for own in parts for _, n in own) == 1))  # disjoint: they add up to all
    return basis


def _difference(first: RunRecord, record: RunRecord) -> tuple[str, str] | None:
    """What else makes two shards' rows incomparable (which texts of the corpus, how they are cut, in what precision):
    the option and its two values, or None."""
    shared = (set(first.corpus) & set(record.corpus)) - {"path", "bytes"}  # a record of an earlier version has fewer
    corpus_a, corpus_b = ({k: r.corpus[k] for k in sorted(shared)} for r in (first, record))
    checks = [("corpus reading (--text-field, --template, --messages-field, --id-field, --limit, --split)", corpus_a,
               corpus_b),
              ("--max-length", (first.config.get("pooling") or {}).get("max_length"),
               (record.config.get("pooling") or {}).get("max_length")),
              ("model dtype", first.environment.get("dtype"), record.environment.get("dtype"))]
    return next(((option, f"{b!r} vs {a!r}") for option, a, b in checks if None not in (a, b) and a != b), None)


def _parts(record: RunRecord) -> list[tuple[int, int]]:
    """The shards (i, n) whose rows a run holds: its --shard, or those a merge was made of."""
    return [tuple(part) for part in record.config.get("parts") or [record.config.get("shard", (0, 1))]]


def _check_disjoint(parts: list[list[tuple[int, int]]], shards: list[RunFolder]) -> None:
    """Shard i/n holds the rows with row % n == i: two shards share rows unless i differs modulo gcd of their n."""
    for a in range(len(parts)):
        for b in range(a):
            for (i, n), (j, m) in ((p, q) for p in parts[a] for q in parts[b]):
                if (i - j) % math.gcd(n, m) == 0:
                    raise AutoskillError(f"{shards[a].path} (shard {i}/{n}) and {shards[b].path} (shard {j}/{m}) hold "
                                         "some of the same rows, which a merge would count twice; merge disjoint "
                                         "shards")


def _kind(kind: type) -> str:
    return "sketched (--sketch-size)" if kind is SketchedCovariance else "exact"
