"""The profile job: corpus -> batches -> forward with capture hooks -> pooled features -> statistics -> basis -> scores.

`extract` is the shared front half (it also serves `project`); `profile` adds streaming statistics, checkpoints every
few batches, resumes after a kill by replaying the (deterministic) batch order up to the last checkpoint, and writes the
run folder. Checkpoints are pointer-swapped: statistics go to a new file first, then `progress.json` names it, so a
kill at any moment leaves a consistent checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from . import corpus as corpus_mod
from .artifacts import load_json, save_json
from .basis import FeatureLayout, SkillBasis
from .batching import Batch, Tokenized, buckets, collate, tokenize
from .capture import PooledCapture
from .config import ProfileConfig
from .errors import AutoskillError, BadExampleError
from .features import FeatureWriter, iter_feature_shards
from .fitting import fit_basis, scores_from_features
from .models import LoadedModel, load_model
from .progress import Progress
from .stats import SketchedCovariance, StreamingCovariance, load_statistics

RUN_JSON = "run.json"
STATS_FILE = "stats.safetensors"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_COST_RATIO = 100  # the checkpoint interval is at least this many times the last save's duration


def resolve_layers(layers: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
    """Layer indices (negative ones count from the end); default: blocks 1 .. L-2, the paper's recipe."""
    if layers is None:
        if num_layers < 3:
            return tuple(range(num_layers))
        return tuple(range(1, num_layers - 1))
    resolved = []
    for layer in layers:
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise AutoskillError(f"layer {layer} out of range: the model has {num_layers} decoder blocks (0..{num_layers - 1})")
        resolved.append(index)
    if len(set(resolved)) != len(resolved):
        raise AutoskillError(f"--layers names a layer twice: {list(layers)}")
    return tuple(resolved)


CPU_TOKEN_BUDGET = 512
GPU_TOKEN_BUDGET = 32768


def resolve_token_budget(config: ProfileConfig, device: torch.device) -> ProfileConfig:
    """The config with its token budget fixed for the device (part of what a resumed run must match)."""
    if config.token_budget is not None:
        return config
    return replace(config, token_budget=GPU_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET)


def pooling_record(config: ProfileConfig, layout: FeatureLayout, tokenizer) -> dict[str, Any]:
    return {
        "mode": config.pooling.mode,
        "skip_bos": config.pooling.skip_bos,
        "bos_token_id": tokenizer.bos_token_id,
        "layer_ids": list(layout.layer_ids),
        "layer_scaling": config.pooling.layer_scaling,
        "max_length": config.pooling.max_length,
    }


@dataclass
class InputTally:
    """What happened to the input on the way in: examples skipped (with why) and examples truncated."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    truncated: int = 0

    def skip(self, error: BadExampleError) -> None:
        self.skipped.append({"id": error.example_id, "reason": error.reason})


@dataclass
class Counts:
    examples: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0
    batches: int = 0


def iter_tokenized(config: ProfileConfig, tokenizer, tally: InputTally) -> Iterator[Tokenized]:
    """Records of this shard, rendered and tokenized, under the bad-example policy."""
    shard, n_shards = config.shard
    prompt_only = config.pooling.mode == "last" and config.corpus.messages_field is not None
    for record in corpus_mod.iter_records(config.corpus):
        if record.row % n_shards != shard:
            continue
        try:
            item = tokenize(corpus_mod.render(record, config.corpus, tokenizer, prompt_only=prompt_only), tokenizer, config.pooling)
        except BadExampleError as e:
            if config.on_bad_example == "error":
                raise AutoskillError(f"{record.where}: example {e.example_id!r}: {e.reason} "
                                     "(rerun with --on-bad-example skip to skip such examples)") from None
            tally.skip(e)
            continue
        tally.truncated += item.truncated
        yield item


def iter_batches(config: ProfileConfig, tokenizer, tally: InputTally) -> Iterator[Batch]:
    pad_id = tokenizer.pad_token_id
    items = iter_tokenized(config, tokenizer, tally)
    for group in buckets(items, token_budget=config.token_budget, max_batch_size=config.max_batch_size,
                         sort_window=config.sort_window):
        yield collate(group, pad_id=pad_id, padding_side=config.padding_side, mode=config.pooling.mode)


def check_finite(rows: torch.Tensor) -> list[int]:
    """Indices of rows with non-finite values."""
    finite = torch.isfinite(rows).all(dim=1)
    return [] if bool(finite.all()) else (~finite).nonzero().flatten().tolist()


def run_key(config: ProfileConfig, model_fp: dict, corpus_fp: dict) -> str:
    """What must match for a checkpoint to be resumed: everything that changes the statistics."""
    cfg = config.to_json()
    for volatile in ("out", "quiet", "checkpoint_every", "checkpoint_seconds", "k", "eig_tol", "scores", "save_features"):
        cfg.pop(volatile, None)
    cfg["model"].pop("device", None)
    blob = json.dumps({"config": cfg, "model": model_fp, "corpus": corpus_fp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class _Checkpoint:
    """Statistics + position + features written so far, swapped in by rewriting one small JSON pointer."""

    def __init__(self, folder: Path, key: str):
        self.dir = folder / CHECKPOINT_DIR
        self.key = key

    def load(self) -> dict[str, Any] | None:
        progress_path = self.dir / "progress.json"
        if not progress_path.exists():
            return None
        progress = load_json(progress_path)
        if progress.get("key") != self.key:
            raise AutoskillError(f"{self.dir}: holds a checkpoint of a different run (other model, corpus or options); "
                                 "use another --out or delete that folder")
        return progress

    def save(self, stats: StreamingCovariance | SketchedCovariance, progress: dict[str, Any]) -> None:
        name = f"stats-{progress['batches']:09d}.safetensors"
        stats.save(self.dir / name)
        old = load_json(self.dir / "progress.json").get("stats_file") if (self.dir / "progress.json").exists() else None
        save_json(self.dir / "progress.json", {**progress, "key": self.key, "stats_file": name})
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def profile(config: ProfileConfig, *, loaded: LoadedModel | None = None) -> SkillBasis:
    """Profile a model over a corpus and write the run folder; return the basis."""
    t_start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = loaded or load_model(config.model)
    config = resolve_token_budget(config, loaded.device)
    t_loaded = time.perf_counter()
    num_layers = len(loaded.blocks)
    layout = FeatureLayout(resolve_layers(config.pooling.layers, num_layers), int(loaded.model.config.hidden_size))
    pooling = pooling_record(config, layout, loaded.tokenizer)
    model_fp, corpus_fp = loaded.fingerprint, corpus_mod.fingerprint(config.corpus)
    key = run_key(config, model_fp, corpus_fp)

    if (out / RUN_JSON).exists():
        previous = load_json(out / RUN_JSON)
        if previous.get("key") == key and previous.get("status") == "complete":
            if not config.quiet:
                print(f"{out}: this run is already complete; use `autoskill-fast fit` to refit with another k")
            return SkillBasis.load(out)

    checkpoint = _Checkpoint(out, key)
    progress = checkpoint.load()
    if progress:
        stats = load_statistics(checkpoint.dir / progress["stats_file"], device=loaded.device)
    elif config.sketch_size:
        stats = SketchedCovariance(layout.feature_dim, config.sketch_size, device=loaded.device)
    else:
        stats = StreamingCovariance(layout.feature_dim, device=loaded.device)
    done_batches = progress["batches"] if progress else 0
    forward_skipped = InputTally(list(progress["forward_skipped"]) if progress else [])
    layer_scale = torch.tensor(progress["layer_scale"]) if progress and progress.get("layer_scale") else None

    keep_features = config.save_features or config.scores
    features_dir = out / ("features" if config.save_features else ".features-tmp")
    writer = FeatureWriter(features_dir, dtype=getattr(torch, config.features_dtype), resume_shards=progress["shards"] if progress else 0) if keep_features else None

    tally = InputTally()
    counts = Counts(**progress["counts"]) if progress else Counts()
    forward_s = progress["forward_s"] if progress else 0.0
    last_checkpoint, checkpoint_interval = time.perf_counter(), config.checkpoint_seconds
    bar = Progress(disable=config.quiet, initial_examples=counts.examples, initial_tokens=counts.tokens)
    capture = PooledCapture(loaded.model, loaded.blocks, layout, mode=config.pooling.mode,
                            layer_scaling=config.pooling.layer_scaling, device=loaded.device)
    if stats.shift is not None:
        capture.shift = stats.shift.to(torch.float32)
    capture.layer_scale = None if layer_scale is None else layer_scale.to(loaded.device)

    with capture:
        for index, batch in enumerate(iter_batches(config, loaded.tokenizer, tally)):
            if index < done_batches:
                continue  # replayed up to the checkpoint: tokenized again, never run through the model
            t0 = time.perf_counter()
            if index == 0 and config.pooling.layer_scaling == "pilot":
                capture.layer_scale = _pilot_layer_scale(capture, batch, layout).to(loaded.device)
            rows, batch = drop_non_finite(capture(batch), batch, config, forward_skipped)
            if not len(batch):
                continue
            if stats.shift is None:
                # The pilot mean, rounded to fp32 so the kernel's fp32 subtraction and the fp64 statistics agree exactly.
                shift = rows.to(torch.float64).mean(dim=0).to(torch.float32)
                stats.set_shift(shift.to(torch.float64))
                capture.shift = shift.to(loaded.device)
                rows = rows - capture.shift
            stats.update_shifted(rows)
            if writer is not None:
                writer.add(rows + capture.shift, batch.rows, batch.ids)
            forward_s += time.perf_counter() - t0
            counts.examples += len(batch)
            counts.tokens += batch.n_tokens
            counts.padded_tokens += batch.input_ids.numel()
            counts.batches = index + 1
            bar.update(len(batch), batch.n_tokens)
            every = config.checkpoint_every
            if (every and counts.batches % every == 0) or time.perf_counter() - last_checkpoint > checkpoint_interval:
                saving = time.perf_counter()
                shards = writer.flush() if writer is not None else 0
                checkpoint.save(stats, {"batches": counts.batches, "counts": vars(counts), "shards": shards,
                                        "forward_s": forward_s, "forward_skipped": forward_skipped.skipped,
                                        "layer_scale": None if capture.layer_scale is None else capture.layer_scale.tolist()})
                last_checkpoint = time.perf_counter()
                checkpoint_interval = max(config.checkpoint_seconds, CHECKPOINT_COST_RATIO * (last_checkpoint - saving))
    bar.close()
    counts.truncated = tally.truncated
    if stats.n < 2:
        raise AutoskillError(f"{config.corpus.path}: only {stats.n} usable example(s) in this corpus (shard); "
                             "a basis needs at least 2")
    if writer is not None:
        writer.flush()

    t_fit = time.perf_counter()
    stats.flush()  # from here on the sums are only read, by the writer and by the solver alike
    with ThreadPoolExecutor(max_workers=1) as writer_thread, _core_left_to_writer(loaded.device):
        # Writing the statistics (D^2 / 2 numbers, disk-bound) overlaps the solve (compute-bound); they are saved
        # even if the fit fails.
        stats_saved = writer_thread.submit(stats.save, out / STATS_FILE)
        try:
            basis = fit_basis(stats, config.k, layout, model=model_fp, pooling=pooling, tol=config.eig_tol,
                              layer_scale=None if capture.layer_scale is None else capture.layer_scale.cpu())
            basis.save(out)
        finally:
            stats_saved.result()  # a failed write is raised too (chained to the fit's error, if any)
    t_scores = time.perf_counter()
    if config.scores:
        scores_from_features(basis, iter_feature_shards(features_dir)).save(out)
        if not config.save_features:
            shutil.rmtree(features_dir, ignore_errors=True)
    t_end = time.perf_counter()
    all_skipped = tally.skipped + forward_skipped.skipped
    save_json(out / RUN_JSON, {
        "status": "complete",
        "key": key,
        "config": config.to_json(),
        "model": model_fp,
        "model_path": str(loaded.path),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "corpus": corpus_fp,
        "pooling": pooling,
        "layout": layout.to_json(),
        "counts": {**vars(counts), "profiled": stats.n, "skipped": len(all_skipped),
                   "padding_waste": 1 - counts.tokens / max(counts.padded_tokens, 1)},
        "skipped": all_skipped,
        "timings": {"load_model_s": t_loaded - t_start, "forward_s": forward_s, "fit_s": t_scores - t_fit,
                    "scores_s": t_end - t_scores, "total_s": t_end - t_start,
                    "examples_per_s": counts.examples / max(forward_s, 1e-9),
                    "tokens_per_s": counts.tokens / max(forward_s, 1e-9)},
        "basis": {"k": basis.k, "solver": basis.solver,
                  "explained_variance_ratio": basis.explained_variance_ratio_.tolist()},
    })
    checkpoint.clear()
    if not config.quiet:
        _summary(out, basis, counts, all_skipped, forward_s)
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


def _pilot_layer_scale(capture: PooledCapture, batch: Batch, layout: FeatureLayout) -> torch.Tensor:
    """Per-layer 1 / RMS norm of the pooled vectors on the first batch (fixed for the run)."""
    rows = capture(batch)
    norms = torch.stack([rows[:, layout.layer_slice(j)].norm(dim=1).pow(2).mean().sqrt() for j in range(len(layout.layer_ids))])
    return 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny)


def drop_non_finite(rows: torch.Tensor, batch: Batch, config: ProfileConfig, tally: InputTally) -> tuple[torch.Tensor, Batch]:
    """Rows and batch without the examples whose activations are not finite (an error under --on-bad-example error)."""
    bad = check_finite(rows)
    if not bad:
        return rows, batch
    ids = [batch.ids[i] for i in bad]
    if config.on_bad_example == "error":
        raise AutoskillError(f"non-finite activations for example(s) {ids[:5]} (model {config.model.model or 'default'}, "
                             f"dtype {config.model.dtype}); try --dtype float32, or --on-bad-example skip")
    for example_id in ids:
        tally.skip(BadExampleError(example_id, "non-finite activations"))
    keep = torch.ones(len(batch), dtype=torch.bool)
    keep[bad] = False
    batch.ids = [i for i, k in zip(batch.ids, keep.tolist()) if k]
    batch.rows = batch.rows[keep]
    return rows[keep.to(rows.device)], batch


def _summary(out: Path, basis: SkillBasis, counts: Counts, skipped: list, forward_s: float) -> None:
    evr = basis.explained_variance_ratio_
    top = ", ".join(f"{v:.3f}" for v in evr[:5].tolist())
    print(f"profiled {counts.examples} examples ({counts.tokens} tokens) in {forward_s:.1f}s "
          f"[{counts.examples / max(forward_s, 1e-9):.1f} ex/s, {counts.tokens / max(forward_s, 1e-9):.0f} tok/s]")
    if skipped:
        print(f"skipped {len(skipped)} example(s); ids in {out / RUN_JSON}")
    if counts.truncated:
        print(f"truncated {counts.truncated} example(s) to --max-length")
    print(f"basis: k={basis.k}, D={basis.feature_dim}; explained variance of the first directions: {top}; "
          f"top {basis.k} explain {float(evr.sum()):.3f}")
    print(f"wrote {out}")


def project(basis_dir: str | Path, config: ProfileConfig, *, loaded: LoadedModel | None = None):
    """Scores of a corpus against an existing basis (same model and pooling required); written to config.out."""
    basis = SkillBasis.load(basis_dir)
    loaded = loaded or load_model(config.model)
    config = resolve_token_budget(config, loaded.device)
    layout = FeatureLayout(resolve_layers(config.pooling.layers, len(loaded.blocks)), int(loaded.model.config.hidden_size))
    basis.check_compatible(loaded.fingerprint, pooling_record(config, layout, loaded.tokenizer), what="corpus features")
    if layout != basis.layout:
        raise AutoskillError(f"the basis uses layers {list(basis.layout.layer_ids)}, this run {list(layout.layer_ids)}; "
                             "pass the same --layers")
    capture = PooledCapture(loaded.model, loaded.blocks, layout, mode=config.pooling.mode,
                            layer_scaling=config.pooling.layer_scaling, device=loaded.device)
    capture.layer_scale = None if basis.layer_scale is None else basis.layer_scale.to(loaded.device)
    tally = InputTally()
    bar = Progress(disable=config.quiet, desc="project")

    def shards():
        with capture:
            for batch in iter_batches(config, loaded.tokenizer, tally):
                rows, batch = drop_non_finite(capture(batch), batch, config, tally)
                bar.update(len(batch), batch.n_tokens)
                yield rows, batch.rows, batch.ids

    scores = scores_from_features(basis, shards())
    bar.close()
    out = Path(config.out)
    scores.save(out)
    save_json(out / "project.json", {"basis": str(Path(basis_dir).resolve()), "config": config.to_json(),
                                     "corpus": corpus_mod.fingerprint(config.corpus), "n": len(scores.ids),
                                     "truncated": tally.truncated, "skipped": tally.skipped})
    return scores
