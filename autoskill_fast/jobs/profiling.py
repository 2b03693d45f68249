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
from typing import Any

import torch
from torch import nn

from ..basis import SkillBasis
from ..capture.features import ResolvedPooling, drop_non_finite, pilot_layer_scale, resolve_pooling
from ..capture.hooks import PooledCapture
from ..capture.models import LoadedModel, load_model
from ..config import BadExamplePolicy, ProfileConfig, token_budget_for
from ..data.batching import Batch
from ..data.corpus import fingerprint as corpus_fingerprint
from ..data.corpus import iter_records
from ..data.stream import InputTally, iter_batches, iter_tokenized
from ..decomposition.pca import fit_components
from ..decomposition.statistics import SketchedCovariance, Statistics, StreamingCovariance
from ..errors import AutoskillError
from ..progress import Progress
from ..run.checkpoint import Checkpoint
from ..run.features import FeatureWriter, iter_feature_shards
from ..run.folder import FEATURES_DIR, STATS_FILE, TEMP_FEATURES_DIR, RunFolder, basis_summary, describe_run, run_key
from ..run.record import RunRecord
from ..run.scores import Scores

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
                 sketch_size: int | None = None, writer: FeatureWriter | None = None, context: str = ""):
        self.pooling = pooling
        self.capture = PooledCapture(model, pooling.layout, layer_scaling=pooling.config.layer_scaling)
        self.device = self.capture.device
        self.on_bad_example = on_bad_example
        self.sketch_size = sketch_size
        self.writer = writer
        self.context = context
        self.stats: Statistics | None = None
        self.counts = Counts()
        self.tally = InputTally()  # examples dropped in the forward pass (non-finite activations)
        self.forward_s = 0.0

    # ---- the three steps -------------------------------------------------------------------------------------------
    def prepare(self, state: dict[str, Any] | None = None, stats: Statistics | None = None) -> "Profiler":
        """Enter the hooks; start from a checkpoint's `state` and `stats` when given."""
        dim = self.pooling.layout.feature_dim
        if stats is not None:
            self.stats = stats
        elif self.sketch_size:
            self.stats = SketchedCovariance(dim, self.sketch_size, device=self.device)
        else:
            self.stats = StreamingCovariance(dim, device=self.device)
        if state:
            self.counts = Counts(**state["counts"])
            self.tally = InputTally(list(state["forward_skipped"]))
            self.forward_s = float(state["forward_s"])
            if state.get("layer_scale") is not None:
                self.capture.layer_scale = torch.tensor(state["layer_scale"], device=self.device)
        if self.stats.shift is not None:
            self.capture.shift = self.stats.shift.to(self.device, torch.float32)
        self.capture.__enter__()
        return self

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
            self.stats.update_shifted(rows)
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
    """Profile a model over a corpus and write the run folder; return the basis."""
    t_start = time.perf_counter()
    folder = RunFolder(config.out)
    loaded = loaded or load_model(config.model)
    t_loaded = time.perf_counter()
    resolved = resolve_pooling(config.pooling, loaded.model, loaded.tokenizer)
    config = replace(config, pooling=resolved.config, batching=replace(
        config.batching, token_budget=token_budget_for(config.batching, loaded.device.type)))
    _check_k_before_forward(config, resolved)
    model_fp, corpus_fp = loaded.fingerprint, corpus_fingerprint(config.corpus)
    key = run_key(config.to_json(), model_fp, corpus_fp)
    record = folder.claim(key, overwrite=config.overwrite, describe=describe_run(config.to_json()))
    if record is not None and record.status == "complete":
        log.info("%s: this run is already complete; `autoskill-fast fit` refits it with another k", folder.path)
        return folder.basis(record)
    if record is not None and record.status == "statistics":
        log.info("%s: the statistics of this run are saved; fitting k=%d from them", folder.path, config.k)
        from .refit import fit

        return fit(folder.path, config.k, tol=config.eig_tol)
    record = RunRecord(status="running", key=key, config=config.to_json(), model=model_fp, corpus=corpus_fp,
                       pooling=resolved.record, layout=resolved.layout.to_json(),
                       environment={"model_path": str(loaded.path), "dtype": str(loaded.dtype).removeprefix("torch."),
                                    "device": str(loaded.device), "world_size": 1})
    folder.write_record(record)

    profiler, tally = _run_batches(config, loaded, resolved, folder, key)
    stats = profiler.finish()
    counts = replace(profiler.counts, truncated=tally.truncated)
    skipped = tally.skipped + profiler.tally.skipped
    record.counts = {**asdict(counts), "profiled": stats.n, "skipped": len(skipped),
                     "padding_waste": 1 - counts.tokens / max(counts.padded_tokens, 1)}
    record.skipped = skipped
    scale = profiler.layer_scale
    record.layer_scale = None if scale is None else scale.tolist()
    if stats.n < 2:
        raise AutoskillError(f"{config.corpus.path}: only {stats.n} usable example(s) in this corpus (shard); "
                             "a basis needs at least 2")

    t_fit = time.perf_counter()
    basis = _fit_beside_write(stats, folder, record, config, resolved, profiler.layer_scale, model_fp, loaded.device)
    t_scores = time.perf_counter()
    features_dir = folder / (FEATURES_DIR if config.save_features else TEMP_FEATURES_DIR)
    if config.scores:
        Scores.from_features(basis, iter_feature_shards(features_dir)).save(folder.path)
        if not config.save_features:
            shutil.rmtree(features_dir, ignore_errors=True)
    t_end = time.perf_counter()
    forward_s = profiler.forward_s
    record.status, record.basis, record.error = "complete", basis_summary(basis), None
    record.timings = {"load_model_s": t_loaded - t_start, "forward_s": forward_s, "fit_s": t_scores - t_fit,
                      "scores_s": t_end - t_scores, "total_s": t_end - t_start,
                      "examples_per_s": counts.examples / max(forward_s, 1e-9),
                      "tokens_per_s": counts.tokens / max(forward_s, 1e-9)}
    folder.write_record(record)
    Checkpoint(folder.path, key).clear()
    return basis


def _check_k_before_forward(config: ProfileConfig, resolved: ResolvedPooling) -> None:
    """What can be known of k before the forward pass: at most D directions, and at most n - 1 for n examples (counted
    when the corpus is small enough to count in moments, or bounded by --limit)."""
    dim = resolved.layout.feature_dim
    if config.k > dim:
        raise AutoskillError(f"-k {config.k} is more directions than the features have dims ({dim}); use -k {dim} or less")
    index, n_shards = config.shard
    path = Path(config.corpus.path)
    if path.is_file() and path.stat().st_size <= COUNT_RECORDS_BYTES:
        most = sum(1 for record in iter_records(config.corpus) if record.row % n_shards == index)
    elif config.corpus.limit is not None:
        most = len(range(index, config.corpus.limit, n_shards))
    else:
        return
    if config.k > most - 1:
        raise AutoskillError(f"-k {config.k} is more directions than the data has: {most} examples give at most "
                             f"{max(most - 1, 0)}; lower -k")


def _run_batches(config: ProfileConfig, loaded: LoadedModel, resolved: ResolvedPooling, folder: RunFolder,
                 key: str) -> tuple[Profiler, InputTally]:
    """The forward pass over this run's batches, with checkpoints; resumes from the last one."""
    checkpoint = Checkpoint(folder.path, key)
    progress = checkpoint.load()
    keep_features = config.save_features or config.scores
    writer = None
    if keep_features:
        writer = FeatureWriter(folder / (FEATURES_DIR if config.save_features else TEMP_FEATURES_DIR),
                               dtype=getattr(torch, config.features_dtype),
                               resume_shards=progress["shards"] if progress else 0, metadata=folder.key_metadata(key))
    profiler = Profiler(loaded.model, resolved, on_bad_example=config.on_bad_example, sketch_size=config.sketch_size,
                        writer=writer, context=f"model {loaded.name}, dtype {str(loaded.dtype).removeprefix('torch.')}")
    stats = checkpoint.load_statistics(progress, loaded.device) if progress else None
    profiler.prepare(progress, stats)
    done = profiler.counts.batches
    tally = InputTally()
    bar = Progress(disable=config.quiet, initial_examples=profiler.counts.examples)
    last_save, interval = time.perf_counter(), config.checkpoint_seconds
    items = iter_tokenized(config.corpus, loaded.tokenizer, resolved.config, tally, shard=config.shard,
                           on_bad_example=config.on_bad_example)
    pad_id = loaded.tokenizer.pad_token_id
    batches = iter_batches(items, config.batching, token_budget=config.batching.token_budget, pad_id=pad_id,
                           mode=resolved.config.mode)
    try:
        for index, batch in enumerate(batches):
            if index < done:
                continue  # replayed up to the checkpoint: tokenized again, never run through the model
            profiler.step(batch)
            bar.update(len(batch), batch.n_tokens)
            every = config.checkpoint_every
            if (every and profiler.counts.batches % every == 0) or time.perf_counter() - last_save > interval:
                saving = time.perf_counter()
                shards = writer.flush() if writer is not None else 0
                checkpoint.save(profiler.stats, {**profiler.state(), "shards": shards})
                last_save = time.perf_counter()
                interval = max(config.checkpoint_seconds, CHECKPOINT_COST_RATIO * (last_save - saving))
    except BaseException:
        profiler.__exit__(None, None, None)  # the model is the caller's: leave no hook on it
        raise
    finally:
        bar.close()
    if writer is not None:
        writer.flush()
    return profiler, tally


def _fit_beside_write(stats: Statistics, folder: RunFolder, record: RunRecord, config: ProfileConfig,
                      resolved: ResolvedPooling, layer_scale: torch.Tensor | None, model_fp: dict[str, Any],
                      device: torch.device) -> SkillBasis:
    """Save the statistics (D^2 / 2 numbers, disk-bound) while the basis is solved (compute-bound). The statistics are
    saved even when the fit fails; the record then says so, and `fit` completes the run from them."""
    with ThreadPoolExecutor(max_workers=1) as writer_thread, _core_left_to_writer(device):
        stats_saved = writer_thread.submit(stats.save, folder / STATS_FILE, folder.key_metadata(record.key))
        try:
            pca = fit_components(stats, config.k, tol=config.eig_tol)
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
                       run_key=record.key)
    basis.save(folder.path)
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
