"""The `project` job: a corpus scored against an existing basis, with the basis's own model check and pooling.

Features are pooled a batch at a time and projected straight away into part files (nothing of size N x D, nor N x k,
is kept in memory), so a corpus of any size can be scored; the scores go to `scores.safetensors` / `scores.json`, in
corpus row order, with a `project.json` record.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..artifacts import save_json
from ..basis import BASIS_JSON
from ..capture.features import PooledBatches, resolve_pooling
from ..capture.fingerprint import model_identity
from ..capture.layout import check_same_pooling, pooling_record
from ..capture.models import LoadedModel, load_model
from ..config import CorpusConfig, ModelConfig, ProjectConfig
from ..data.corpus import content_identity
from ..data.corpus import fingerprint as corpus_fingerprint
from ..data.stream import InputTally, iter_tokenized
from ..errors import AutoskillError
from ..progress import Progress
from ..run.folder import RUN_JSON, RunFolder, load_basis
from ..run.scores import SCORES_TENSORS, ScoreWriter, write_scores
from .world import current_world

PROJECT_JSON = "project.json"


def _run_defaults(config: ProjectConfig) -> ProjectConfig:
    """`project RUN --out RUN` in Python as on the command line: the corpus and the model left at their defaults are
    the run's own, so that the scores are of its rows. (The CLI also keeps the run's corpus when only some of its
    reading options are typed, and its --on-bad-example when that is not typed; in Python "error" is not told from a
    default, so it stays.)"""
    run = RunFolder(config.basis)
    if not run.has_record():
        return config
    record = run.record()
    if config.corpus == CorpusConfig():
        config = replace(config, corpus=record.corpus_reading())
    if config.model == ModelConfig():
        recorded = record.config.get("model") or {}
        config = replace(config, model=ModelConfig(**{k: v for k, v in recorded.items() if k in ("model", "dtype")}))
    return config


def _check_rescoring(run: Path, corpus_fp: dict) -> None:
    """`project RUN --out RUN` scores a complete run that has no scores (fit without saved features, a merge, or
    --no-scores), under its own basis and of its own rows: anything else is refused."""
    record = RunFolder(run).record()
    if record.status != "complete":
        raise AutoskillError(f"{run}: this run is not complete ({record.status}); finish it with its profile command, "
                             "which scores it")
    if (run / SCORES_TENSORS).exists():
        raise AutoskillError(f"{run}: already has scores; write another projection to a folder of its own")
    if tuple(record.config.get("shard") or (0, 1)) != (0, 1) or record.complete_shards is False:
        raise AutoskillError(f"{run}: holds some shards of its corpus, and `project` scores all of it; merge the "
                             "remaining shards in first, or write the projection to a folder of its own")
    profiled = record.corpus
    differ = [key for key in sorted(set(profiled) | set(corpus_fp)) if key not in ("path", "bytes")
              and key in profiled and profiled.get(key) != corpus_fp.get(key)]
    if differ:
        what = ("its content" if differ == ["sha256"] else
                ", ".join(f"{key} {corpus_fp.get(key)!r} (profiled: {profiled.get(key)!r})" for key in differ))
        raise AutoskillError(f"{corpus_fp['path']}: is not read as {run} read its corpus ({what}); a run's scores must "
                             "be of its own rows: leave out --corpus and its options (the run's own are the default "
                             "here), or write the projection to a folder of its own")


def project(config: ProjectConfig, *, loaded: LoadedModel | None = None) -> dict:
    """Scores of a corpus against an existing basis (same model and pooling required), written to config.out (read
    them with `Scores.load(config.out)`); returns what `project.json` records (n, truncated, skipped, ...).

    Under torchrun each rank scores its slice of the corpus (row % world_size == rank) on its own device into its own
    part files; rank 0 writes them in corpus row order, and every rank returns the record."""
    t0 = time.perf_counter()
    world = current_world()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise AutoskillError(f"{out}: is a file, not a folder; choose another output folder")
    in_place = out.resolve() == Path(config.basis).resolve()  # rescoring a run whose scores are gone
    if in_place:
        config = _run_defaults(config)
    corpus_fp = corpus_fingerprint(config.corpus)  # a missing corpus is told before the model loads
    if in_place:
        _check_rescoring(out, corpus_fp)
    elif (out / RUN_JSON).exists() or (out / BASIS_JSON).exists():
        raise AutoskillError(f"{out}: holds a profile run or a basis, whose scores `project` would replace; write the "
                             "projection to a folder of its own (or, to score a run that has none, --out the run)")
    world.check_shared(out)
    basis = load_basis(config.basis)
    run = RunFolder(config.basis)
    if config.model.model is None and run.has_record():  # as steer and rank: the model the run profiled
        profiled = (run.record().config.get("model") or {}).get("model")
        config = replace(config, model=replace(config.model, model=profiled))
    if world.distributed:
        config = replace(config, model=replace(config.model, device=str(world.device(config.model.device))))
    loaded = loaded or load_model(config.model)
    basis.check_model(loaded.fingerprint, what=f"the model {loaded.name}")
    world.check_same({"model": model_identity(loaded.fingerprint), "corpus": content_identity(corpus_fp)})
    pooling = basis.pooling_config
    if config.pooling is not None:  # options given must describe the basis's pooling; --max-length applies
        layout = resolve_pooling(config.pooling, loaded.model, loaded.tokenizer).layout
        check_same_pooling(basis.pooling, pooling_record(config.pooling, layout, loaded.tokenizer, None),
                           what="pooling options given")
        if config.pooling.max_length is not None:
            pooling = replace(pooling, max_length=config.pooling.max_length)
    resolved = resolve_pooling(pooling, loaded.model, loaded.tokenizer)
    if resolved.layout != basis.layout:
        raise AutoskillError(f"the basis uses blocks {list(basis.layout.layer_ids)} of hidden size "
                             f"{basis.layout.hidden_size}; this model gives {list(resolved.layout.layer_ids)} of "
                             f"{resolved.layout.hidden_size}")
    tally = InputTally()
    items = iter_tokenized(config.corpus, loaded.tokenizer, resolved.config, tally, shard=(world.rank, world.size),
                           on_bad_example=config.on_bad_example)
    pooled = PooledBatches(loaded.model, loaded.tokenizer, items, resolved, config.batching, tally,
                           layer_scale=basis.layer_scale, on_bad_example=config.on_bad_example,
                           context=f"model {loaded.name}")
    bar = Progress(disable=config.quiet or not world.main, desc="project")

    writer = ScoreWriter(out, basis, prefix=f"r{world.rank}-" if world.distributed else "")

    def score_slice() -> list:
        try:
            for features, batch in pooled:
                writer.add(features, batch.rows, batch.ids)
                bar.update(len(batch), batch.n_tokens)
            return writer.close()
        finally:
            bar.close()

    parts = world.together(score_slice)
    gathered = world.gather_objects((parts, tally.truncated, tally.skipped))

    def write_summary() -> dict:
        n = write_scores(out, [p for part, _, _ in gathered for p in part], k=basis.k, run_key=basis.run_key,
                         basis_digest=basis.digest(), allow_empty=True)
        if n == 0:
            raise AutoskillError("no example of the corpus could be scored")
        summary = {"basis": str(Path(config.basis).resolve()), "basis_run_key": basis.run_key,
                   "config": config.to_json(), "corpus": corpus_fp, "n": n,
                   "truncated": sum(t for _, t, _ in gathered),
                   "skipped": [s for _, _, skipped in gathered for s in skipped], "world_size": world.size,
                   "seconds": time.perf_counter() - t0}
        if not in_place:  # a run folder keeps its own record, run.json
            save_json(out / PROJECT_JSON, summary)
        return summary

    return world.broadcast_object(world.together(write_summary, main_only=True))
