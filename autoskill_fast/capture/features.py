"""Pooled features in memory: a loaded model, its tokenizer and texts -> [N, D] features, no files written.

    from autoskill_fast import load_model, pooled_features, ModelConfig
    loaded = load_model(ModelConfig("/models/llama"), causal_lm=True)   # one load: features, scores, steering
    pooled = pooled_features(loaded.model, loaded.tokenizer, ["a text", "another"])
    pooled.features                                                      # [2, D] fp32, in input order
    scores = basis.project(pooled.features)                             # or basis.features(model, tok, texts)

The pooling options are `profile`'s (`PoolingConfig`); the batches are built as `profile` builds them, so the same
texts give the same features as `profile --save-features` writes. The Profiler runs the same pieces a batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..config import BadExamplePolicy, BatchingConfig, CorpusConfig, PoolingConfig, token_budget_for
from ..data.batching import Batch, Tokenized
from ..data.stream import InputTally, iter_batches, iter_texts_tokenized, iter_tokenized
from ..errors import AutoskillError, BadExampleError, StoppedByBadExample
from .fingerprint import fingerprint
from .hooks import PooledCapture
from .layout import FeatureLayout, pooling_record, resolve_layers
from .models import batch_split_lengths, check_padding_side, context_length, decoder_blocks


@dataclass
class ResolvedPooling:
    """Pooling options made concrete for one model: the blocks, the truncation, and the record stored with a basis."""

    config: PoolingConfig  # with max_length resolved
    layout: FeatureLayout
    record: dict[str, Any]


def resolve_pooling(pooling: PoolingConfig, model: nn.Module, tokenizer) -> ResolvedPooling:
    """The layout and truncation of `pooling` on `model`: default blocks 1 .. L-2, default max_length the model's
    context length (a longer example would run past its position table)."""
    blocks = decoder_blocks(model)
    layout = FeatureLayout(resolve_layers(pooling.layers, len(blocks)), int(model.config.hidden_size))
    limit = context_length(model.config)
    max_length = pooling.max_length if pooling.max_length is not None else limit
    if max_length is not None and limit is not None and max_length > limit:
        raise AutoskillError(f"max_length {max_length} is longer than the model's context ({limit} tokens); "
                             f"use {limit} or less")
    resolved = replace(pooling, max_length=max_length)
    return ResolvedPooling(resolved, layout, pooling_record(resolved, layout, tokenizer, max_length))


def drop_non_finite(rows: torch.Tensor, batch: Batch, policy: BadExamplePolicy, tally: InputTally, *,
                    context: str = "") -> tuple[torch.Tensor, Batch]:
    """Rows and batch without the examples whose activations are not finite (an error under the "error" policy;
    `context`, e.g. the model and dtype, goes into its message)."""
    finite = torch.isfinite(rows).all(dim=1)
    if bool(finite.all()):
        return rows, batch
    bad = (~finite).nonzero().flatten().tolist()
    ids = [batch.ids[i] for i in bad]
    if policy == "error":
        where = f" ({context})" if context else ""
        raise StoppedByBadExample(f"non-finite activations for example(s) {ids[:5]}{where}; try --dtype float32, or "
                             "--on-bad-example skip (in Python: ModelConfig(dtype='float32'), on_bad_example='skip')")
    for example_id in ids:
        tally.skip(BadExampleError(example_id, "non-finite activations"))
    keep = finite.cpu()
    batch = replace(batch, ids=[i for i, k in zip(batch.ids, keep.tolist()) if k], rows=batch.rows[keep])
    return rows[finite], batch


def pilot_layer_scale(capture: PooledCapture, batch: Batch) -> torch.Tensor:
    """Per-layer 1 / RMS norm of the pooled vectors on one batch ("pilot" layer scaling, fixed from the first batch)."""
    rows = capture(batch)
    layout = capture.layout
    norms = torch.stack([rows[:, layout.layer_slice(j)].norm(dim=1).pow(2).mean().sqrt()
                         for j in range(len(layout.layer_ids))])
    return 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class PooledFeatures:
    """Features of some texts, in input order, with what they are."""

    features: torch.Tensor  # [N, D] fp32, on the model's device
    ids: list[str]
    rows: torch.Tensor  # [N] int64: each feature row's position in the input (or corpus row)
    layout: FeatureLayout
    pooling: dict[str, Any]  # the pooling record (as stored with a basis)
    model: dict[str, Any]  # the model's fingerprint
    layer_scale: torch.Tensor | None = None  # [L] the per-layer factors applied ("pilot" scaling)
    skipped: list[dict[str, str]] = field(default_factory=list)
    truncated: int = 0


def pooled_features(model: nn.Module, tokenizer, texts: Sequence[str] | CorpusConfig, *,
                    pooling: PoolingConfig | None = None, batching: BatchingConfig | None = None,
                    layer_scale: torch.Tensor | None = None, on_bad_example: BadExamplePolicy = "error",
                    name: str = "") -> PooledFeatures:
    """Pool `model`'s decoder-block outputs over each text (or each record of a corpus), in memory.

    model: a transformers decoder, with or without its LM head (the forward stops after the last pooled block).
    pooling: as `profile`'s (default: the paper's recipe). layer_scale: fixed per-layer factors for "pilot" scaling
    (default: measured on the first batch, as `profile` does). Skipped examples (`on_bad_example="skip"`) are left out
    of the result and listed in `skipped`.
    """
    if isinstance(texts, str):
        raise AutoskillError("texts: one string, not a list of them; pass [text] for one example")
    pooling = pooling or PoolingConfig()
    resolved = resolve_pooling(pooling, model, tokenizer)
    tally = InputTally()
    if isinstance(texts, CorpusConfig):
        items = iter_tokenized(texts, tokenizer, resolved.config, tally, on_bad_example=on_bad_example)
    else:
        items = iter_texts_tokenized(texts, tokenizer, resolved.config, tally, on_bad_example=on_bad_example)
    rows, ids, features = [], [], []
    pooled = PooledBatches(model, tokenizer, items, resolved, batching or BatchingConfig(), tally,
                         layer_scale=layer_scale, on_bad_example=on_bad_example, context=name)
    for chunk, batch in pooled:
        features.append(chunk)
        rows.append(batch.rows)
        ids.extend(batch.ids)
    if not features:
        raise AutoskillError("no usable text to pool (every example was empty or skipped)")
    row = torch.cat(rows)
    order = torch.argsort(row)
    return PooledFeatures(torch.cat(features)[order.to(features[0].device)], [ids[i] for i in order.tolist()],
                          row[order], resolved.layout, resolved.record, fingerprint(model, name), pooled.layer_scale,
                          tally.skipped, tally.truncated)


class PooledBatches:
    """(features [B, D] fp32, batch) for each batch of tokenized `items`, in batch order, one batch in memory at a
    time: what `pooled_features` collects and `project` streams. `layer_scale` is measured on the first batch for
    "pilot" scaling when not given; it is kept in `.layer_scale`."""

    def __init__(self, model: nn.Module, tokenizer, items: Iterator[Tokenized], resolved: ResolvedPooling,
                 batching: BatchingConfig, tally: InputTally, *, layer_scale: torch.Tensor | None = None,
                 on_bad_example: BadExamplePolicy = "error", context: str = ""):
        check_padding_side(model.config, batching.padding_side)
        self.capture = PooledCapture(model, resolved.layout, layer_scaling=resolved.config.layer_scaling)
        self.batches = _batches(items, batching, tokenizer, resolved.config, self.capture.device,
                                batch_split_lengths(model.config))
        self.pilot = resolved.config.layer_scaling == "pilot"
        self.layer_scale = None if layer_scale is None else layer_scale.to(self.capture.device, torch.float32)
        self.tally, self.on_bad_example, self.context = tally, on_bad_example, context

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Batch]]:
        forward = InputTally()  # kept apart from the input's tally, which the batch thread fills meanwhile
        try:
            with self.capture:
                for batch in self.batches:
                    if self.layer_scale is None and self.pilot:
                        self.layer_scale = pilot_layer_scale(self.capture, batch)
                    self.capture.layer_scale = self.layer_scale
                    features, batch = drop_non_finite(self.capture(batch), batch, self.on_bad_example, forward,
                                                      context=self.context)
                    if len(batch):
                        yield features, batch
        finally:
            self.batches.close()
            self.tally.skipped.extend(forward.skipped)  # input skips, then forward skips: the same order every run


def _batches(items: Iterator[Tokenized], batching: BatchingConfig, tokenizer, pooling: PoolingConfig,
             device: torch.device, split_lengths: tuple[int, ...]) -> Iterator[Batch]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # pads are masked: any id will do
    return iter_batches(items, batching, token_budget=token_budget_for(batching, device.type), pad_id=pad_id,
                        mode=pooling.mode, split_lengths=split_lengths)
