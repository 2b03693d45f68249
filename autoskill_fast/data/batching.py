"""Tokenization and batching: length buckets under a token budget, left or right padding, per-token pooling weights.

Examples are read `sort_window` at a time, sorted by length inside the window, and cut into batches whose padded size
(batch size x longest example) stays under the token budget, so padding waste stays small while memory stays bounded
on any corpus size. The order is a pure function of the corpus and the config, which is what makes resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..config import PoolingConfig
from ..errors import BadExampleError
from .rendering import Example


@dataclass
class Tokenized:
    example: Example
    input_ids: list[int]
    pool_start: int  # first token that is pooled
    pool_end: int  # one past the last token that is pooled
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    ids: list[str]
    rows: torch.Tensor  # [B] int64 corpus rows
    input_ids: torch.Tensor  # [B, S] int64
    attention_mask: torch.Tensor  # [B, S] int64
    position_ids: torch.Tensor  # [B, S] int64: 0.. over real tokens whatever the padding side
    weights: torch.Tensor  # [B, S] fp32 pooling weights (sum to 1 per row)
    n_tokens: int  # real tokens

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(example: Example, tokenizer, pooling: PoolingConfig, *, ids: list[int] | None = None) -> Tokenized:
    """Token ids and the span to pool; raises BadExampleError if nothing is left to pool. `ids`: the text's token ids
    when they are already known (`tokenizer(texts)` over many texts at once gives each text's own ids)."""
    if ids is None:
        ids = example.token_ids(tokenizer)
    truncated = pooling.max_length is not None and len(ids) > pooling.max_length
    if truncated and pooling.mode == "last":  # the last token is the one pooled: keep the end (and a leading BOS)
        bos = tokenizer.bos_token_id
        head = ids[:1] if bos is not None and ids[0] == bos else []
        ids = head + ids[len(ids) - pooling.max_length + len(head):]
    elif truncated:
        ids = ids[: pooling.max_length]
    if pooling.first_token == "drop":
        start = 1
    elif pooling.first_token == "drop_bos":
        start = 1 if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else 0
    else:
        start = 0
    if pooling.mode == "response_mean":
        if example.prompt is None:
            raise BadExampleError(example.id, "response-only pooling needs chat messages ending with an assistant reply")
        start = max(start, _reply_start(example, tokenizer))
    end = len(ids)
    if end <= start:
        what = ("the response was cut off by --max-length" if truncated else
                "no token left to pool after leaving out position 0 (use --keep-first-token, in Python "
                "PoolingConfig(first_token='keep'), for one-token examples)")
        raise BadExampleError(example.id, what)
    return Tokenized(example, ids, start, end, truncated)


def _reply_start(example: Example, tokenizer) -> int:
    """The first token of a chat example's reply: the first whose characters reach past the prompt (with a fast
    tokenizer's offsets; a token the tokenizer merged across the boundary, as "\\n" + "\\n\\n", belongs to the reply),
    else the prompt's own token count."""
    if not getattr(tokenizer, "is_fast", False):
        return len(example.token_ids(tokenizer, example.prompt))
    offsets = tokenizer(example.text, add_special_tokens=example.special_tokens,
                        return_offsets_mapping=True)["offset_mapping"]
    boundary = len(example.prompt)
    return next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(offsets))


def buckets(items: Iterable[Tokenized], *, token_budget: int, max_batch_size: int, sort_window: int,
            split_lengths: tuple[int, ...] = ()) -> Iterator[list[Tokenized]]:
    """Group items into length-sorted batches whose padded size stays within `token_budget`. No batch holds items on
    both sides of a length in `split_lengths` (at most it, and longer)."""
    window: list[Tokenized] = []
    for item in items:
        window.append(item)
        if len(window) >= sort_window:
            yield from _cut(window, token_budget, max_batch_size, split_lengths)
            window = []
    if window:
        yield from _cut(window, token_budget, max_batch_size, split_lengths)


def _cut(window: list[Tokenized], token_budget: int, max_batch_size: int,
         split_lengths: tuple[int, ...]) -> Iterator[list[Tokenized]]:
    # Longest first, so the first batch shows the peak memory early; ties keep corpus order (stable sort).
    window = sorted(window, key=len, reverse=True)
    batch: list[Tokenized] = []
    for item in window:
        # Sorted descending: the first item of a batch is its longest, so the padded size is len(batch[0]) * size.
        longest = len(batch[0]) if batch else len(item)
        full = len(batch) + 1 > max_batch_size or longest * (len(batch) + 1) > token_budget
        if batch and (full or any(len(item) <= length < longest for length in split_lengths)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def collate(items: list[Tokenized], *, pad_id: int, padding_side: str, mode: str) -> Batch:
    size, length = len(items), max(len(t) for t in items)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((size, length), dtype=torch.long)
    position_ids = torch.zeros((size, length), dtype=torch.long)
    weights = torch.zeros((size, length), dtype=torch.float32)
    for b, t in enumerate(items):
        n = len(t)
        offset = length - n if padding_side == "left" else 0
        input_ids[b, offset: offset + n] = torch.tensor(t.input_ids)
        attention_mask[b, offset: offset + n] = 1
        position_ids[b, offset: offset + n] = torch.arange(n)
        if mode == "last":
            weights[b, offset + t.pool_end - 1] = 1.0
        else:
            weights[b, offset + t.pool_start: offset + t.pool_end] = 1.0 / (t.pool_end - t.pool_start)
    return Batch(
        ids=[t.example.id for t in items],
        rows=torch.tensor([t.example.row for t in items], dtype=torch.long),
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        weights=weights,
        n_tokens=sum(len(t) for t in items),
    )
