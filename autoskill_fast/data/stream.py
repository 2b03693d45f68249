"""From a corpus to the batches a rank runs: its shard of the records, rendered, tokenized, under the bad-example
policy, in length buckets. The order is a pure function of the corpus and the options, which makes resume exact."""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

from ..config import BadExamplePolicy, BatchingConfig, CorpusConfig, PoolingConfig
from ..errors import BadExampleError, StoppedByBadExample
from .batching import Batch, Tokenized, buckets, collate, tokenize
from .corpus import iter_records
from .rendering import Example, render


class TruncationWarning(UserWarning):
    """An example was cut to the maximum length (said once per run; every truncation is counted)."""


@dataclass
class InputTally:
    """What happened to the input on the way in: examples skipped (with why) and examples truncated."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    truncated: int = 0

    def skip(self, error: BadExampleError) -> None:
        self.skipped.append({"id": error.example_id, "reason": error.reason})


def iter_tokenized(corpus: CorpusConfig, tokenizer, pooling: PoolingConfig, tally: InputTally, *,
                   shard: tuple[int, int] = (0, 1), on_bad_example: BadExamplePolicy = "error") -> Iterator[Tokenized]:
    """The records of one shard (rows with row % n == i), rendered and tokenized, under the bad-example policy."""
    index, n_shards = shard
    prompt_only = pooling.mode == "last" and corpus.messages_field is not None  # the paper's safety setup
    need_prompt = pooling.mode == "response_mean"

    def examples():
        for record in iter_records(corpus, unreadable=True):  # a line that cannot be read is a bad example
            if record.row % n_shards == index:
                yield record.where, lambda record=record: render(record, corpus, tokenizer, prompt_only=prompt_only,
                                                                 need_prompt=need_prompt)

    return _tokenized(examples(), tokenizer, pooling, tally, on_bad_example)


def iter_texts_tokenized(texts: Iterable[str], tokenizer, pooling: PoolingConfig, tally: InputTally, *,
                         on_bad_example: BadExamplePolicy = "error") -> Iterator[Tokenized]:
    """Texts given in memory (example i has row i and id "i"), tokenized under the bad-example policy."""

    def examples():
        for row, text in enumerate(texts):
            yield f"text {row}", lambda row=row, text=text: _text_example(row, text)

    return _tokenized(examples(), tokenizer, pooling, tally, on_bad_example)


def _text_example(row: int, text: str) -> Example:
    if not isinstance(text, str):
        raise BadExampleError(str(row), f"is {type(text).__name__}, not text")
    if not text.strip():
        raise BadExampleError(str(row), "empty text")
    return Example(row, str(row), text)


TOKENIZE_CHUNK = 256  # texts per tokenizer call: a fast tokenizer encodes them in parallel, outside the GIL


def _tokenized(examples: Iterator[tuple[str, Callable[[], Example]]], tokenizer, pooling: PoolingConfig,
               tally: InputTally, on_bad_example: BadExamplePolicy) -> Iterator[Tokenized]:
    def bad(where: str, error: BadExampleError) -> None:
        if on_bad_example == "error":
            raise StoppedByBadExample(f"{where}: example {error.example_id!r}: {error.reason} "
                                 "(rerun with --on-bad-example skip, in Python on_bad_example='skip', to skip such "
                                 "examples)") from None
        tally.skip(error)

    for chunk in _chunks(examples, TOKENIZE_CHUNK):
        rendered: list[tuple[str, Example | BadExampleError]] = []
        for where, make in chunk:
            try:
                rendered.append((where, make()))
            except BadExampleError as e:
                rendered.append((where, e))
        token_ids = _token_ids([example for _, example in rendered if isinstance(example, Example)], tokenizer)
        for where, example in rendered:  # in corpus order, as if each had been tokenized on its own
            if isinstance(example, BadExampleError):
                bad(where, example)
                continue
            try:
                item = tokenize(example, tokenizer, pooling, ids=next(token_ids))
            except BadExampleError as e:
                bad(where, e)
                continue
            if item.truncated and not tally.truncated:
                warnings.warn(f"{where}: example {item.example.id!r} is longer than {pooling.max_length} tokens and "
                              "was truncated (set --max-length to choose the limit); truncations are counted in the "
                              "run's record", TruncationWarning, stacklevel=2)
            tally.truncated += item.truncated
            yield item


def _token_ids(examples: list[Example], tokenizer) -> Iterator[list[int]]:
    """Each example's token ids, in order, from one tokenizer call per kind (with or without special tokens)."""
    ids: list[list[int] | None] = [None] * len(examples)
    for special in (True, False):
        which = [i for i, example in enumerate(examples) if example.special_tokens == special]
        if which:
            encoded = tokenizer([examples[i].text for i in which], add_special_tokens=special)["input_ids"]
            for i, row in zip(which, encoded):
                ids[i] = row
    return iter(ids)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_batches(items: Iterator[Tokenized], batching: BatchingConfig, *, token_budget: int, pad_id: int,
                 mode: str, split_lengths: tuple[int, ...] = ()) -> Iterator[Batch]:
    """Length-bucketed, padded batches of tokenized examples (`token_budget`: the budget resolved for the device; no
    batch straddles a length in `split_lengths`, where the model computes otherwise), prepared `batching.prefetch`
    batches ahead on a background thread. Close the iterator when leaving it early."""

    def batches():
        for group in buckets(items, token_budget=token_budget, max_batch_size=batching.max_batch_size,
                             sort_window=batching.sort_window, split_lengths=split_lengths):
            yield collate(group, pad_id=pad_id, padding_side=batching.padding_side, mode=mode)

    return prefetched(batches(), batching.prefetch)


T = TypeVar("T")
_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, produced on a background thread up to `depth` ahead of the caller (0: in turn, on the caller's
    thread). The corpus is read, rendered, tokenized and padded while the caller runs the model: the tokenizer and
    torch release the GIL, and so does the caller while it waits on a device. Same items in the same order; an error
    raised while producing an item is raised here, where that item would have come. Closing this iterator (or
    finishing it) stops and joins the thread; a thread left blocked would hold the corpus file open."""
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((None, _END))
        except BaseException as e:  # handed to the caller, raised in its thread
            put((None, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="autoskill-fast batches", daemon=True)
    thread.start()
    try:
        while True:
            item, outcome = ready.get()
            if outcome is _END:
                return
            if outcome is not None:
                raise outcome
            yield item
    finally:
        stop.set()
        thread.join()
