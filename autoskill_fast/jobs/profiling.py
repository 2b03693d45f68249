"""The profile job: corpus -> batches -> forward with capture hooks -> pooled features -> statistics -> basis -> scores.

`Profiler` is the per-batch step, the piece `profile()`, the benchmarks and a multi-process runner share:

    profiler = Profiler(model, resolved_pooling)
    with profiler:                      # prepare(): hooks in, statistics made (or restored from a checkpoint)
        for batch in batches:
            profiler.step(batch)        # capture, non-finite policy, shift, statistics, feature writer, counts
    stats = profiler.finish()

It owns the pilot shift and the per-layer scale, so the capture, the statistics and the feature writer always agree.
`profile()` adds the run folder (claimed first, so another run's folder is refused), checkpoints by time or batch
count, resume after a kill by replaying the (deterministic) batch order up to the last checkpoint, the fit (beside
the statistics' write), the scores and the record. It prints nothing: the CLI prints the summary.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..artifacts import TensorReader
from ..basis import SkillBasis, diagnose, feature_scale
from ..capture.features import ResolvedPooling, drop_non_finite, pilot_layer_scale, resolve_pooling
from ..capture.fingerprint import model_identity
from ..capture.hooks import PooledCapture
from ..capture.models import LoadedModel, batch_split_lengths, check_padding_side, load_model
from ..config import BadExamplePolicy, ProfileConfig, token_budget_for
from ..data.batching import Batch
from ..data.corpus import content_identity, iter_records
from ..data.corpus import fingerprint as corpus_fingerprint
from ..data.stream import InputTally, iter_batches, iter_tokenized
from ..decomposition.components import fit_components
from ..decomposition.statistics import SketchedCovariance, Statistics, StreamingCovariance
from ..errors import AutoskillError, StoppedByBadExample
from ..progress import Progress
from ..run.checkpoint import PROGRESS_JSON, Checkpoint
from ..run.features import FeatureWriter, iter_feature_shards
from ..run.folder import (CHECKPOINT_DIR, FEATURES_DIR, STATS_FILE, TEMP_FEATURES_DIR, RunFolder, basis_summary,
                          describe_run, run_key_of)
from ..run.record import RunRecord
from ..run.scores import SCORES_TENSORS, save_scores
from .world import World, current_world

log = logging.getLogger("autoskill_fast")
CHECKPOINT_COST_RATIO = 100  # the checkpoint interval is at least this many times the last save's duration
COUNT_RECORDS_BYTES = 64 << 20  # corpora up to this size are counted before the forward pass, to check k


@dataclass
class Counts:
    examples: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0
    batches: int = 0


class Profiler:
    """The per-batch step of a profile (module docstring). `writer` keeps the features (shifted back to raw values)."""

    def __init__(self, model: nn.Module, pooling: ResolvedPooling, *, on_bad_example: BadExamplePolicy = "error",
                 sketch_size: int | None = None, writer: FeatureWriter | None = None, context: str = "",
                 rows_dtype: torch.dtype | None = None):
        if not isinstance(pooling, ResolvedPooling):  # a PoolingConfig failed with "no attribute 'layout'"
            raise TypeError(f"Profiler takes the pooling resolved for its model, got {type(pooling).__name__}: pass "
                            "resolve_pooling(PoolingConfig(...), model, tokenizer) (autoskill_fast.capture.features)")
        self.pooling = pooling
        self.capture = PooledCapture(model, pooling.layout, layer_scaling=pooling.config.layer_scaling)
        self.device = self.capture.device
        self.on_bad_example = on_bad_example
        self.sketch_size = sketch_size
        self.rows_dtype = rows_dtype  # of the rows entering exact second-moment sums (None: fp32, as pooled)
        self.writer = writer
        self.context = context
        self.stats: Statistics | None = None
        self.counts = Counts()
        self.tally = InputTally()  # examples dropped in the forward pass (non-finite activations)
        self.forward_s = 0.0

    # ---- the three steps -------------------------------------------------------------------------------------------
    def prepare(self, state: dict[str, Any] | None = None, stats: Statistics | None = None) -> "Profiler":
        """Enter the hooks; start from a checkpoint's `state` and `stats` when given."""
        self.stats = stats if stats is not None else self.new_statistics()
        if isinstance(self.stats, StreamingCovariance):
            self.stats.rows_dtype = self.rows_dtype  # not part of what a checkpoint saves: a resume goes on the same way
        if state:
            self.counts = Counts(**state["counts"])
            self.tally = InputTally(list(state["forward_skipped"]))
            self.forward_s = float(state["forward_s"])
            if state.get("layer_scale") is not None:
                self.capture.layer_scale = torch.tensor(state["layer_scale"], device=self.device)
        self.follow_shift()
        self.capture.__enter__()
        return self

    def new_statistics(self, shift: torch.Tensor | None = None) -> Statistics:
        """Empty statistics of the kind this profile keeps (around `shift`, when given)."""
        dim = self.pooling.layout.feature_dim
        if self.sketch_size:
            return SketchedCovariance(dim, self.sketch_size, shift=shift, device=self.device)
        return StreamingCovariance(dim, shift=shift, device=self.device, rows_dtype=self.rows_dtype)

    def follow_shift(self) -> None:
        """Subtract the statistics' shift in the capture (after it was set, or moved to the other ranks' shift)."""
        if self.stats.shift is not None:
            self.capture.shift = self.stats.shift.to(self.device, torch.float32)

    def step(self, batch: Batch) -> None:
        """One batch: pooled rows (shifted by the pilot mean) into the statistics and the feature writer."""
        t0 = time.perf_counter()
        if self.counts.batches == 0 and self.pooling.config.layer_scaling == "pilot" \
                and self.capture.layer_scale is None:
            self.capture.layer_scale = pilot_layer_scale(self.capture, batch)
        rows, batch = drop_non_finite(self.capture(batch), batch, self.on_bad_example, self.tally,
                                      context=self.context)
        self.counts.batches += 1
        if len(batch):
            if self.stats.shift is None:
                # The pilot mean, rounded to fp32 so the kernel's fp32 subtraction and the fp64 statistics agree exactly.
                shift = rows.to(torch.float64).mean(dim=0).to(torch.float32)
                self.stats.set_shift(shift.to(torch.float64))
                self.capture.shift = shift.to(self.device)
                rows = rows - self.capture.shift
            self.stats.update_shifted(rows, owned=True)  # each batch's rows are new (PooledCapture)
            if self.writer is not None:
                self.writer.add(rows + self.capture.shift, batch.rows, batch.ids)
            self.counts.examples += len(batch)
            self.counts.tokens += batch.n_tokens
            self.counts.padded_tokens += batch.input_ids.numel()
        self.forward_s += time.perf_counter() - t0

    def finish(self) -> Statistics:
        """Leave the hooks; the statistics, flushed (every row counted)."""
        self.capture.__exit__(None, None, None)
        self.stats.flush()
        return self.stats

    def __enter__(self) -> "Profiler":
        return self.prepare()

    def __exit__(self, *exc) -> None:
        self.capture.__exit__(*exc)  # the hooks are removed whatever happened (finish() may have removed them)

    # ---- what a checkpoint keeps -----------------------------------------------------------------------------------
    @property
    def layer_scale(self) -> torch.Tensor | None:
        return None if self.capture.layer_scale is None else self.capture.layer_scale.cpu()

    def state(self) -> dict[str, Any]:
        """The position and tallies (the statistics are saved beside it)."""
        scale = self.layer_scale
        return {"batches": self.counts.batches, "counts": asdict(self.counts), "forward_s": self.forward_s,
                "forward_skipped": self.tally.skipped, "layer_scale": None if scale is None else scale.tolist()}


# ---- the job -------------------------------------------------------------------------------------------------------


def profile(config: ProfileConfig, *, loaded: LoadedModel | None = None) -> SkillBasis:
    """Profile a model over a corpus and write the run folder; return the basis.

    Under torchrun every rank profiles its slice of the corpus (rows with row % world_size == rank, within --shard),
    on its own device; the statistics are added on rank 0 (exactly, around one shift) at each checkpoint and at the
    end, and rank 0 saves the checkpoints, fits and writes the folder. Every rank returns the basis, or raises the
    same error.
    """
    t_start = time.perf_counter()
    world = current_world()
    folder = RunFolder(config.out)
    if world.distributed:
        if config.pooling.layer_scaling == "pilot":
            raise AutoskillError("--layer-scaling pilot with several processes: each rank would measure its own "
                                 "factors on its own first batch, and their statistics would not add; use fit-time "
                                 "--scaling layer (from the same statistics) instead")
        config = replace(config, model=replace(config.model, device=str(world.device(config.model.device))))
    corpus_fp = corpus_fingerprint(config.corpus)  # a missing corpus is told before the model loads
    loaded = loaded or load_model(config.model)
    t_loaded = time.perf_counter()
    resolved = resolve_pooling(config.pooling, loaded.model, loaded.tokenizer)
    check_padding_side(loaded.model.config, config.batching.padding_side)
    config = replace(config, pooling=resolved.config, batching=replace(
        config.batching, token_budget=token_budget_for(config.batching, loaded.device.type)))
    model_fp = loaded.fingerprint
    decision, record, key = "run", None, None
    if world.main:
        try:
            held = _held_record(folder)
            keyed = _spelled_as_recorded(held, config, model_fp, corpus_fp).to_json()  # read with the paths typed
            key = run_key_of(keyed, model_fp, corpus_fp, held)
            _check_k_before_forward(config, resolved)
            record = folder.claim(key, overwrite=config.overwrite, describe=describe_run(keyed), config=keyed)
            decision = record.status if record is not None and record.status != "running" else "run"
            if decision == "run":
                _check_resumed_world(folder, record, world)
                _check_resumed_outputs(folder, record, config, loaded)
                record = RunRecord(status="running", key=key, config=keyed, model=model_fp,
                                   corpus=corpus_fp, pooling=resolved.record, layout=resolved.layout.to_json(),
                                   environment={"model_path": str(loaded.path),
                                                "dtype": str(loaded.dtype).removeprefix("torch."),
                                                "device": str(loaded.device), "world_size": world.size,
                                                "backend": world.backend})
                folder.write_record(record)
        except AutoskillError as e:
            decision = f"error: {e}"
    decision, key = world.broadcast_object((decision, key))
    if decision.startswith("error: "):
        raise AutoskillError(decision.removeprefix("error: "))
    world.check_shared(folder.path)
    world.check_same({"model": model_identity(model_fp), "corpus": content_identity(corpus_fp)})
    if decision != "run":
        return _finished(folder, config, decision, world)

    profiler, tally = _run_batches(config, loaded, resolved, folder, key, world)
    stats = _reduce_statistics(world.together(profiler.finish), world)
    tallies = world.gather_objects({"counts": asdict(profiler.counts), "truncated": tally.truncated,
                                    "skipped": tally.skipped + profiler.tally.skipped, "forward_s": profiler.forward_s})
    basis = world.together(lambda: _write_run(config, folder, record, stats, tallies, profiler, resolved, model_fp,
                                              loaded.device, t_start, t_loaded), main_only=True)
    return world.together(lambda: basis if world.main else folder.basis(folder.record()))


def _held_record(folder: RunFolder) -> RunRecord | None:
    """The record of the run the folder holds, if it holds one that can be read (claim says what is wrong if not)."""
    try:
        return folder.record() if folder.has_record() else None
    except AutoskillError:
        return None


def _spelled_as_recorded(record: RunRecord | None, config: ProfileConfig, model_fp: dict[str, Any],
                         corpus_fp: dict[str, Any]) -> ProfileConfig:
    """The config with --corpus and --model spelled as the folder's run.json spells them when they name the same
    file and weights (./c.jsonl for c.jsonl, a folder with a trailing slash, an absolute path typed from elsewhere):
    the same command typed another way resumes its run instead of being refused as another. For the key and the
    record only: files are read at the paths typed (a relative path recorded may name another file from here)."""
    if record is None:
        return config
    recorded = record.config
    corpus_path = (recorded.get("corpus") or {}).get("path")
    if isinstance(corpus_path, str) and record.corpus == corpus_fp:  # the same resolved file, content and fields
        config = replace(config, corpus=replace(config.corpus, path=corpus_path))
    if "model" in (recorded.get("model") or {}) and record.model == model_fp:  # the same weights
        config = replace(config, model=replace(config.model, model=recorded["model"]["model"]))
    return config


def _finished(folder: RunFolder, config: ProfileConfig, status: str, world: World) -> SkillBasis:
    """A run this folder already holds: complete (its basis, refitted from its statistics and rescored from its saved
    features if -k or --scaling now differ), or with statistics saved (fit from them)."""
    from .refit import fit

    if status == "complete":
        record = folder.record()
        basis = folder.basis(record)
        if (basis.k, basis.scaling) == (shard_k(config, basis.n_samples_), config.scaling):
            if config.save_features and folder.feature_dir(record) is None:
                raise AutoskillError(f"{folder.path}: this run is complete and kept no features, so --save-features "
                                     "asks for a second pass of the model: rerun with --overwrite (or another --out)")
            if config.scores and not (folder / SCORES_TENSORS).exists():
                raise AutoskillError(f"{folder.path}: this run is complete without scores; score it with "
                                     f"`autoskill-fast project {folder.path} --out {folder.path}`")
            log.info("%s: this run is already complete", folder.path)
            return basis
        if folder.feature_dir(record) is None:
            raise AutoskillError(f"{folder.path}: this run is complete with -k {basis.k} --scaling {basis.scaling} and "
                                 f"kept no features, so refitting it to -k {config.k} --scaling {config.scaling} here "
                                 f"would drop its scores; run `autoskill-fast fit {folder.path} -k {config.k} --scaling "
                                 f"{config.scaling}` and rescore with `autoskill-fast project {folder.path} --out "
                                 f"{folder.path}`, or rerun with -k "
                                 f"{basis.k} --scaling {basis.scaling}")
        log.info("%s: this run is complete with k=%d, --scaling %s; refitting k=%d, --scaling %s from its statistics",
                 folder.path, basis.k, basis.scaling, config.k, config.scaling)
    else:
        log.info("%s: the statistics of this run are saved; fitting k=%d from them", folder.path, config.k)
    world.together(lambda: fit(folder.path, config.k, tol=config.eig_tol, scaling=config.scaling), main_only=True)
    return world.together(lambda: folder.basis(folder.record()))


def _check_resumed_world(folder: RunFolder, record: RunRecord | None, world: World) -> None:
    """A run is resumed by as many processes as started it: its checkpoint holds the position of each rank, whose rows
    are every world_size-th of the --shard."""
    if record is None or not (folder / CHECKPOINT_DIR).exists():
        return
    started = int(record.environment.get("world_size", 1))
    if started != world.size:
        how = (f"torchrun --nproc-per-node {started} (or as many processes over your nodes)" if started > 1
               else "one process (no torchrun)")
        raise AutoskillError(f"{folder.path}: this run was started by {started} process(es) and its checkpoint "
                             f"holds their positions; resume it with {how}, or pass --overwrite to start over with "
                             f"{world.size}")


def _check_resumed_outputs(folder: RunFolder, record: RunRecord | None, config: ProfileConfig,
                           loaded: LoadedModel) -> None:
    """A checkpoint's position counts the features written so far (to features/, or kept for the scores): a resume
    that writes them elsewhere, or not at all, would leave rows out of the scores. Its statistics are of activations
    in one dtype (--dtype auto is bfloat16 on a GPU, float32 on a CPU): the rest must be too."""
    if record is None or not (folder / CHECKPOINT_DIR).exists():
        return
    started, now = record.environment.get("dtype"), str(loaded.dtype).removeprefix("torch.")
    if started is not None and started != now:
        raise AutoskillError(f"{folder.path}: this run was started with the model in {started} and its checkpoint holds "
                             f"statistics of {started} activations; resume it with --dtype {started} (here the model "
                             f"is in {now}), or pass --overwrite to start over")
    for name, flag in (("save_features", "--save-features"), ("scores", "--scores / --no-scores")):
        before = record.config.get(name)
        if before is not None and before != getattr(config, name):
            raise AutoskillError(f"{folder.path}: this run was started with {name}={before} and its checkpoint counts "
                                 f"the features written so far; resume it with the same {flag}, or pass --overwrite "
                                 "to start over")


def _reduce_statistics(stats: Statistics, world: World) -> Statistics:
    """Every rank's statistics added into rank 0's, exactly: every rank first moves to one shift (the first rank with
    rows), then the sums are reduced (a sketch is sent to rank 0, which merges it). Every rank keeps that shift."""
    if not world.distributed:
        return stats
    stats.flush()
    meta = world.gather_objects((stats.n, None if stats.shift is None else stats.shift.cpu()))
    common = next((shift for n, shift in meta if n), None) if world.main else None
    common = world.broadcast_object(common)
    if common is None:
        return stats  # no rank has a row: the caller reports it
    stats.reshift_(common)
    if isinstance(stats, SketchedCovariance):
        return _merge_sketches(stats, world)
    world.reduce_sum_(stats.sum)
    world.reduce_sum_(stats.sumsq.data)
    if world.main:
        stats.set_count(sum(n for n, _ in meta))
    return stats


def _merge_sketches(stats: SketchedCovariance, world: World) -> SketchedCovariance:
    """Every rank's sketch merged into rank 0's, one rank at a time (rank 0 holds at most one other sketch). Sketches
    do not add like sums: the merge shrinks their union, so the bound is the ranks' shrinkages plus its own."""
    if not world.main:
        world.send_tensors(stats.state_dict() if stats.n else {})  # {}: a rank without rows
        return stats
    for rank in range(1, world.size):
        state = world.recv_tensors(rank, device=stats.device)
        if state:
            stats.merge(SketchedCovariance.from_state_dict(state, device=stats.device))
    return stats


def _write_run(config: ProfileConfig, folder: RunFolder, record: RunRecord, stats: Statistics, tallies: list[dict],
               profiler: Profiler, resolved: ResolvedPooling, model_fp: dict[str, Any], device: torch.device,
               t_start: float, t_loaded: float) -> SkillBasis:
    """Rank 0 (or the only process): the fit, the scores and the record of a finished forward pass."""
    counts = Counts(**{name: sum(t["counts"][name] for t in tallies) for name in asdict(Counts())})
    counts.truncated = sum(t["truncated"] for t in tallies)
    skipped = [s for t in tallies for s in t["skipped"]]
    forward_s = max(t["forward_s"] for t in tallies)  # the ranks run side by side
    record.counts = {**asdict(counts), "profiled": stats.n, "skipped": len(skipped),
                     "padding_waste": 1 - counts.tokens / max(counts.padded_tokens, 1)}
    record.skipped = skipped
    scale = profiler.layer_scale
    record.layer_scale = None if scale is None else scale.tolist()
    if stats.n < 2:
        raise AutoskillError(f"{config.corpus.path}: only {stats.n} usable example(s) in this corpus (shard); "
                             "a basis needs at least 2")
    t_fit = time.perf_counter()
    k = shard_k(config, stats.n)
    if k < config.k:
        log.warning("%s: this shard holds %d examples, so its own basis keeps %d directions; `merge` fits -k %d over "
                    "all the shards", folder.path, stats.n, k, config.k)
    basis = _fit_beside_write(stats, folder, record, replace(config, k=k), resolved, scale, model_fp, device)
    t_scores = time.perf_counter()
    features_dir = folder / (FEATURES_DIR if config.save_features else TEMP_FEATURES_DIR)
    if config.scores:
        save_scores(folder.path, basis, iter_feature_shards(features_dir))
        if not config.save_features:
            shutil.rmtree(features_dir, ignore_errors=True)
    t_end = time.perf_counter()
    record.status, record.basis, record.error = "complete", basis_summary(basis), None
    record.timings = {"load_model_s": t_loaded - t_start, "forward_s": forward_s, "fit_s": t_scores - t_fit,
                      "scores_s": t_end - t_scores, "total_s": t_end - t_start,
                      "examples_per_s": counts.examples / max(forward_s, 1e-9),
                      "tokens_per_s": counts.tokens / max(forward_s, 1e-9)}
    folder.write_record(record)
    shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)
    return basis


def shard_k(config: ProfileConfig, n: int) -> int:
    """The directions a run's own basis keeps: -k, or, for one shard of several (`--shard i/n`) with n examples, at
    most n - 1 (a shard of a small corpus may hold fewer than k + 1; its statistics are what `merge` needs)."""
    return config.k if config.shard[1] == 1 else min(config.k, n - 1)


def _check_k_before_forward(config: ProfileConfig, resolved: ResolvedPooling) -> None:
    """What can be known of k before the forward pass: at most D directions, and at most n - 1 for n examples (counted
    when the corpus is small enough to count in moments, or bounded by --limit)."""
    dim = resolved.layout.feature_dim
    if config.k > dim:
        raise AutoskillError(f"-k {config.k} is more directions than the features have dims ({dim}); use -k {dim} or less")
    index, n_shards = config.shard
    path = Path(config.corpus.path)
    if path.is_file() and path.stat().st_size <= COUNT_RECORDS_BYTES:
        # at most: a line that cannot be read counts (a bad example, for the policy to refuse once it is reached)
        most = sum(1 for record in iter_records(config.corpus, unreadable=True) if record.row % n_shards == index)
    elif config.corpus.limit is not None:
        most = len(range(index, config.corpus.limit, n_shards))
    else:
        return
    if most == 0:
        raise AutoskillError(f"{config.corpus.path}: no record to profile (none in the file, or none left by --split, "
                             "--limit or --shard)")
    if config.k > most - 1 and n_shards == 1:  # a shard's own basis keeps fewer (`shard_k`); merge fits all k
        raise AutoskillError(f"-k {config.k} is more directions than the data has: {most} examples give at most "
                             f"{max(most - 1, 0)}; lower -k")


def _run_batches(config: ProfileConfig, loaded: LoadedModel, resolved: ResolvedPooling, folder: RunFolder,
                 key: str, world: World) -> tuple[Profiler, InputTally]:
    """This rank's forward pass over its batches, with the run's checkpoints; resumes from the last one.

    The ranks of a multi-process run meet every `MEET_EVERY` batches of their own (or `--checkpoint-every`, if fewer),
    each posting in one small all-reduce whether it is done, whether it failed (then every rank stops with its error)
    and, rank 0, whether it wants a checkpoint (`_Meetings`). A checkpoint adds every rank's statistics into rank 0's,
    which saves them once, with every rank's position; the other ranks go on from empty statistics around the same
    shift. So a run keeps one copy of the D^2 / 2 sums on disk, not one per rank."""
    checkpoint = Checkpoint(folder.path, key)
    progress = world.broadcast_object(world.together(lambda: _saved_progress(checkpoint, world), main_only=True))
    profiler, writer, stats = world.together(lambda: _resumed_profiler(config, loaded, resolved, folder, key, world,
                                                                       checkpoint, progress))
    profiler.prepare(_rank_state(progress, world), stats)  # the hooks go in on every rank or on none
    done = profiler.counts.batches
    tally = InputTally()
    bar = Progress(disable=config.quiet or not world.main, initial_examples=profiler.counts.examples)
    items = iter_tokenized(config.corpus, loaded.tokenizer, resolved.config, tally, shard=_rank_shard(config, world),
                           on_bad_example=config.on_bad_example)
    batches = iter_batches(items, config.batching, token_budget=config.batching.token_budget,
                           pad_id=loaded.tokenizer.pad_token_id, mode=resolved.config.mode,
                           split_lengths=batch_split_lengths(loaded.model.config))
    meetings = _Meetings(world, config, saved_at=progress["batches"] if progress else 0)
    try:
        steps, failure = _steps(batches, done, profiler, bar), None
        while True:
            try:
                next(steps)
            except StopIteration:
                break
            except Exception as e:  # this rank stops, and tells the others at their next meeting
                if not world.distributed:
                    if isinstance(e, StoppedByBadExample) and profiler.counts.batches > meetings.saved_at:
                        _save_checkpoint(checkpoint, profiler, writer, world, profiler.counts.batches)
                    raise
                failure = e
                break
            if profiler.counts.batches % meetings.period == 0:
                _, save = meetings.meet(profiler.counts.batches, finished=False)
                if save:
                    meetings.timed(lambda: _save_checkpoint(checkpoint, profiler, writer, world, meetings.saved_at))
        while world.distributed:  # this rank is done: it meets the others until every rank is
            finished, save = meetings.meet(profiler.counts.batches, finished=True, failure=failure)
            if finished:
                break
            if save:
                meetings.timed(lambda: _save_checkpoint(checkpoint, profiler, writer, world, meetings.saved_at))
        if writer is not None:  # on every rank or on none
            world.together(writer.flush)
    except BaseException:
        profiler.__exit__(None, None, None)  # the model is the caller's: leave no hook on it
        raise
    finally:
        batches.close()  # stops the thread that prepares batches ahead
        bar.close()
    return profiler, tally


MEET_EVERY = 16  # batches between the meetings of a multi-process run's ranks (without --checkpoint-every)


def _rank_shard(config: ProfileConfig, world: World) -> tuple[int, int]:
    """Rank r takes every world_size-th row of the --shard."""
    index, n_shards = config.shard
    return index + n_shards * world.rank, n_shards * world.size


def _saved_progress(checkpoint: Checkpoint, world: World) -> dict[str, Any] | None:
    """Rank 0: the checkpoint's position (every rank's, for several) and the shift of its statistics."""
    if world.distributed and (checkpoint.dir / "rank-0" / PROGRESS_JSON).exists():
        raise AutoskillError(f"{checkpoint.dir}: holds one checkpoint per rank, written by an earlier version of "
                             "autoskill-fast; finish the run with that version, or pass --overwrite to start over")
    progress = checkpoint.load()
    if progress is None:
        return None
    if world.distributed:
        ranks = progress.get("ranks")
        if not isinstance(ranks, list) or len(ranks) != world.size:
            raise AutoskillError(f"{checkpoint.dir}: this checkpoint does not hold the positions of {world.size} "
                                 "ranks; pass --overwrite to start over")
        with TensorReader(checkpoint.dir / progress["stats_file"]) as reader:
            progress["shift"] = reader.get("shift")
    return progress


def _rank_state(progress: dict[str, Any] | None, world: World) -> dict[str, Any] | None:
    """This rank's position and tallies in the checkpoint (None: no checkpoint)."""
    if not progress:
        return None
    return progress["ranks"][world.rank] if world.distributed else progress


def _resumed_profiler(config: ProfileConfig, loaded: LoadedModel, resolved: ResolvedPooling, folder: RunFolder,
                      key: str, world: World, checkpoint: Checkpoint, progress: dict[str, Any] | None
                      ) -> tuple[Profiler, FeatureWriter | None, Statistics]:
    """This rank's profiler (not yet prepared), its feature writer and its statistics, at its position in the
    checkpoint (if any): rank 0 (or the only process) with the saved statistics, another rank with empty statistics
    around their shift."""
    state = _rank_state(progress, world)
    writer = None
    if config.save_features or config.scores:
        writer = FeatureWriter(folder / (FEATURES_DIR if config.save_features else TEMP_FEATURES_DIR),
                               dtype=getattr(torch, config.features_dtype),
                               resume_shards=state["shards"] if state else 0, metadata=folder.key_metadata(key),
                               prefix=f"r{world.rank}-" if world.distributed else "")
    rows_dtype = None if config.covariance_rows == "float32" else getattr(torch, config.covariance_rows)
    profiler = Profiler(loaded.model, resolved, on_bad_example=config.on_bad_example, sketch_size=config.sketch_size,
                        writer=writer, context=f"model {loaded.name}, dtype {str(loaded.dtype).removeprefix('torch.')}",
                        rows_dtype=rows_dtype)
    if progress and world.main:
        return profiler, writer, checkpoint.load_statistics(progress, loaded.device)
    return profiler, writer, profiler.new_statistics(progress["shift"] if progress else None)


def _steps(batches: Iterator[Batch], done: int, profiler: Profiler, bar: Progress) -> Iterator[None]:
    """Each batch after the first `done` through the profiler (those are replayed up to the checkpoint: tokenized
    again, never run through the model); yields after each."""
    for index, batch in enumerate(batches):
        if index < done:
            continue
        profiler.step(batch)
        bar.update(len(batch), batch.n_tokens)
        yield


class _Meetings:
    """Where the ranks of a multi-process run decide together, every `period` batches of their own (see
    `_run_batches`); a world of one decides alone, after every batch.

    A rank does not wait at a meeting for the others: it posts its flags (one small all-reduce, started) and goes on,
    and acts at its next meeting on what every rank posted at this one. So a rank waits only when it is a whole
    period ahead of the slowest, instead of at every meeting. A checkpoint is the exception: every rank joins it, so
    the ranks meet in step there, and they first check that none failed since.

    A checkpoint is due once --checkpoint-seconds have passed on rank 0 (an interval at least CHECKPOINT_COST_RATIO
    times the last save's duration), and with --checkpoint-every N at the first meeting at or after each N-th batch
    (from the second meeting on): the ranks still running are all at the same batch at a meeting (they meet every
    `period` batches from one start), so the meeting before it can tell. One due by time is taken at the meeting
    after the one that found it."""

    def __init__(self, world: World, config: ProfileConfig, *, saved_at: int):
        self.world = world
        self.every = config.checkpoint_every
        self.period = min(self.every or MEET_EVERY, MEET_EVERY) if world.distributed else 1
        self.seconds = self.interval = config.checkpoint_seconds
        self.last_save = time.perf_counter()
        self.saved_at = saved_at  # the batch the last checkpoint was taken at (0: none yet)
        self._posted: Callable[[], list[int]] | None = None  # the sums of this rank's last meeting, on their way
        if world.distributed and saved_at:  # resumed: as just after that checkpoint (`meet` keeps its sums)
            self._posted = lambda: [1, 0, 0, saved_at]

    def meet(self, batches: int, *, finished: bool, failure: Exception | None = None) -> tuple[bool, bool]:
        """(every rank is finished, save a checkpoint now), the same on every rank; raises on every rank when one
        failed (`failure`: this rank's, posted until then)."""
        late = self.world.main and time.perf_counter() - self.last_save > self.interval
        flags = [int(not finished), int(failure is not None), int(late), 0 if finished else batches]
        if not self.world.distributed:
            running, late, at = self._read(flags, failure)
            return False, self._due(late, at)
        due = False
        if self._posted is not None:
            running, late, at = self._read(self._posted(), failure)
            self._posted = None
            if not running:
                return True, False
            due = self._due(late, at + self.period)  # the batch the running ranks are at now
        self._posted = self.world.sum_ints_async(flags)
        if not due:
            return False, False
        sums = self._posted()
        running, _, at = self._read(sums, failure)  # in step: no rank failed or finished since
        if not running:
            self._posted = None
            return True, False
        self._posted = lambda: [sums[0], 0, 0, sums[3]]  # read again at the next meeting, less the wish just met
        self.saved_at = at
        return False, True

    def _read(self, sums: list[int], failure: Exception | None) -> tuple[int, bool, int]:
        """(ranks running, rank 0 wants a checkpoint by time, the batch the running ranks are at)."""
        running, failed, late, batch_sum = sums
        if failed:
            self.world.settle(failure)
        return running, bool(late), batch_sum // running if running else 0

    def _due(self, late: bool, now: int) -> bool:
        """Whether a checkpoint is due at batch `now`."""
        if late or (self.every and now // self.every > self.saved_at // self.every):
            self.saved_at = now
            return True
        return False

    def timed(self, save: Callable[[], None]) -> None:
        started = time.perf_counter()
        save()
        self.last_save = time.perf_counter()
        self.interval = max(self.seconds, CHECKPOINT_COST_RATIO * (self.last_save - started))


def _save_checkpoint(checkpoint: Checkpoint, profiler: Profiler, writer: FeatureWriter | None, world: World,
                     at: int) -> None:
    """The statistics and position of every rank, saved by rank 0 (or the only process) as the checkpoint at batch
    `at`. Several ranks first add their statistics into rank 0's, and go on from empty ones."""
    state = world.together(lambda: {**profiler.state(), "shards": writer.flush() if writer is not None else 0})
    if not world.distributed:
        checkpoint.save(profiler.stats, state)
        return
    _reduce_statistics(profiler.stats, world)
    if not world.main:
        profiler.stats.clear_()  # its rows are in rank 0's statistics now
    profiler.follow_shift()
    states = world.gather_objects(state)

    def save() -> None:
        if profiler.stats.shift is not None:  # else no rank has a row yet: nothing to keep
            checkpoint.save(profiler.stats, {"batches": at, "ranks": states})

    world.together(save, main_only=True)  # the others wait in the store, not in a collective: a write may be slow


def _fit_beside_write(stats: Statistics, folder: RunFolder, record: RunRecord, config: ProfileConfig,
                      resolved: ResolvedPooling, layer_scale: torch.Tensor | None, model_fp: dict[str, Any],
                      device: torch.device) -> SkillBasis:
    """Save the statistics (D^2 / 2 numbers, disk-bound) while the basis is solved (compute-bound). The statistics are
    saved even when the fit fails; the record then says so, and `fit` completes the run from them."""
    with ThreadPoolExecutor(max_workers=1) as writer_thread, _core_left_to_writer(device):
        stats_saved = writer_thread.submit(stats.save, folder / STATS_FILE, folder.key_metadata(record.key))
        try:
            variances = stats.variances()
            pca = fit_components(stats, config.k, tol=config.eig_tol,
                                 scale=feature_scale(variances, config.scaling, resolved.layout))
        except Exception as e:
            stats_saved.result()
            record.status, record.error = "statistics", str(e)
            folder.write_record(record)
            if isinstance(e, AutoskillError):
                raise AutoskillError(f"{e}. The statistics are saved in {folder.path}: finish the run with "
                                     f"`autoskill-fast fit {folder.path} -k N`") from None
            raise
        finally:
            stats_saved.result()  # a failed write is raised too (chained to the fit's error, if any)
    record.status = "statistics"
    basis = SkillBasis(pca, resolved.layout, model=model_fp, pooling=resolved.record, layer_scale=layer_scale,
                       run_key=record.key, scaling=config.scaling)
    basis.diagnostics = diagnose(basis, variances)
    basis.save(folder.path)
    folder.write_record(record)  # statistics and basis saved: a rerun scores from them, not from the model again
    return basis


@contextmanager
def _core_left_to_writer(device: torch.device):
    """On CPU, torch computes on one thread fewer while the statistics are written beside the solve. On every core, the
    solve's GEMMs (split evenly between threads) wait for the one that shares a core with the writer, and slow the
    write too: on 2 cores the overlapped write and solve took 3.8-4.0 s with the solve on 2 threads, 3.2-3.4 s on 1."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and previous > 1:
        torch.set_num_threads(previous - 1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
