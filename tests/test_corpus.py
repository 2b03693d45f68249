"""Corpus readers, templates, chat rendering, ids."""

from __future__ import annotations

import re

import pytest
import torch

from autoskill_fast.config import CorpusConfig
from autoskill_fast.data.corpus import iter_records
from autoskill_fast.data.rendering import render
from autoskill_fast.errors import AutoskillError, BadExampleError
from model_fixtures import write_jsonl

RECORDS = [{"uid": f"q{i}", "question": f"What is {i}+{i}?", "answer": f"{2 * i}"} for i in range(5)]


def texts(config, tokenizer=None):
    return [(r.id, render(r, config, tokenizer).text) for r in iter_records(config)]


def test_jsonl_parquet_and_datasets_folder_agree(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "c.jsonl", RECORDS)
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "c.parquet")
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    expected = [(r["uid"], f"{r['question']}\n{r['answer']}") for r in RECORDS]
    for path in ("c.jsonl", "c.parquet", "ds"):
        config = CorpusConfig(str(tmp_path / path), template="{question}\n{answer}", id_field="uid")
        assert texts(config) == expected, path


def test_broken_datasets_folders_give_one_line_errors(tmp_path):
    """A state.json naming a missing .arrow file, or not JSON, raised FileNotFoundError and JSONDecodeError; a
    DatasetDict folder said only "state.json missing"."""
    import json
    import shutil

    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "dd"))
    shutil.copytree(tmp_path / "ds", tmp_path / "missing")
    state = json.loads((tmp_path / "missing" / "state.json").read_text())
    (tmp_path / "missing" / state["_data_files"][0]["filename"]).unlink()
    shutil.copytree(tmp_path / "ds", tmp_path / "bad")
    (tmp_path / "bad" / "state.json").write_text("{x")
    for folder, message in (("missing", "named by state.json but missing"), ("bad", "not a datasets state file"),
                            ("dd", "a DatasetDict; point --corpus at one split's folder")):
        with pytest.raises(AutoskillError, match=re.escape(message)):
            list(iter_records(CorpusConfig(str(tmp_path / folder))))
    with pytest.raises(AutoskillError, match=re.escape(str(tmp_path / "dd" / "train"))):
        list(iter_records(CorpusConfig(str(tmp_path / "dd"))))


def test_text_file_rows_and_limit(tmp_path):
    (tmp_path / "c.txt").write_text("first line\nsecond line\nthird\n", encoding="utf-8")
    assert texts(CorpusConfig(str(tmp_path / "c.txt"), limit=2)) == [("0", "first line"), ("1", "second line")]


def test_chat_messages_rendered_with_template(tmp_path, default_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    messages = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    config = CorpusConfig(str(tmp_path / "chat.jsonl"), messages_field="messages")
    example = render(next(iter_records(config)), config, tokenizer, need_prompt=True)
    assert example.text == tokenizer.apply_chat_template(messages, tokenize=False)
    assert example.prompt is not None and example.text.startswith(example.prompt) and example.text.endswith("5<|im_end|>\n")
    assert render(next(iter_records(config)), config, tokenizer).prompt is None  # rendered only when it is needed


def test_chat_replies_are_found_where_the_tokenizer_puts_them_and_only_when_pooled(tmp_path, default_model_dir):
    """A template whose generation prompt is not what the conversation renders (DeepSeek-R1's adds "<think>\\n") was
    refused for every pooling, though only response_mean needs the prompt; a reply starting with "\\n\\n" lost its first
    token (merged with the prompt's last "\\n" into one token); an empty reply pooled the template's end-of-turn
    tokens."""
    from transformers import AutoTokenizer

    from autoskill_fast.config import PoolingConfig
    from autoskill_fast.data.batching import tokenize

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    question = {"role": "user", "content": "Add 2 and 3."}
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [question, {"role": "assistant", "content": reply}]}
                                          for reply in ("\n\nIt is 5.", " ")])
    config = CorpusConfig(str(tmp_path / "chat.jsonl"), messages_field="messages")
    newlines, empty = iter_records(config)
    reply = PoolingConfig(mode="response_mean")
    item = tokenize(render(newlines, config, tokenizer, need_prompt=True), tokenizer, reply)
    assert tokenizer.decode(item.input_ids[item.pool_start:item.pool_end]).startswith("\n\n\nIt is 5.")
    with pytest.raises(BadExampleError, match="the assistant's reply is empty"):
        render(empty, config, tokenizer, need_prompt=True)
    thinking = AutoTokenizer.from_pretrained(default_model_dir)
    thinking.chat_template = thinking.chat_template.replace("'<|im_start|>assistant\n'",
                                                            "'<|im_start|>assistant\n<think>\n'")
    assert thinking.chat_template != tokenizer.chat_template
    assert render(newlines, config, thinking).text == tokenizer.apply_chat_template(newlines.data["messages"],
                                                                                    tokenize=False)
    with pytest.raises(BadExampleError, match="renders the prompt differently"):
        render(newlines, config, thinking, need_prompt=True)


def test_chat_text_gets_the_bos_its_template_writes_and_no_second_one(tmp_path, default_model_dir):
    """A tokenizer that adds a BOS (Llama-3, Mistral, Gemma) with a chat template that writes one too: the chat text is
    tokenized without the tokenizer's own, as a server tokenizes it; plain text still gets the tokenizer's BOS."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from autoskill_fast.config import PoolingConfig
    from autoskill_fast.data import stream

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.bos_token = "<|endoftext|>"  # its own is <|im_start|>, which its chat template starts with anyway
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{tokenizer.bos_token} $A",
                                                             special_tokens=[(tokenizer.bos_token, bos)])
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    assert tokenizer("hi")["input_ids"][0] == bos
    messages = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}] * 3)
    write_jsonl(tmp_path / "plain.jsonl", [{"text": "Add 2 and 3."}])
    chat = CorpusConfig(str(tmp_path / "chat.jsonl"), messages_field="messages")
    served = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert served[:2].count(bos) == 1 and served[:len(prompt)] == prompt
    for mode, expected in (("mean", served), ("response_mean", served), ("last", prompt)):  # last: the prompt's
        items = list(stream.iter_tokenized(chat, tokenizer, PoolingConfig(mode=mode), stream.InputTally()))
        assert [item.input_ids for item in items] == [expected] * 3, mode
    assert items[0].pool_end == len(prompt)
    items = list(stream.iter_tokenized(chat, tokenizer, PoolingConfig(mode="response_mean"), stream.InputTally()))
    assert items[0].pool_start == len(prompt)  # the response starts where the prompt, tokenized the same way, ends
    plain = list(stream.iter_tokenized(CorpusConfig(str(tmp_path / "plain.jsonl")), tokenizer, PoolingConfig(),
                                       stream.InputTally()))
    assert plain[0].input_ids[0] == bos and plain[0].input_ids[1] != bos


@pytest.mark.parametrize("content,match", [
    (b'{"text": "ok"}\n{"text": broken}\n', r"c.jsonl:2: malformed JSON"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"c.jsonl:2: not valid UTF-8"),
    (b'{"text": "ok"}\n[1, 2]\n', r"c.jsonl:2: expected a JSON object"),
    (b'{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n', r"c.jsonl:2: duplicate id '1'"),
])
def test_bad_files_name_file_and_line(tmp_path, content, match):
    (tmp_path / "c.jsonl").write_bytes(content)
    with pytest.raises(AutoskillError, match=match):
        texts(CorpusConfig(str(tmp_path / "c.jsonl"), id_field="id" if b'"id"' in content else None))


def test_lines_that_cannot_be_read_are_records_of_their_own_when_asked(tmp_path):
    """For profile's bad-example policy: each keeps its row (the rows after it keep theirs) and says why."""
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "a"}\n{"text": bro\n[1]\n{"text": "caf\xe9"}\n\n{"text": "e"}\n')
    records = list(iter_records(CorpusConfig(str(tmp_path / "c.jsonl")), unreadable=True))
    assert [(r.row, r.id) for r in records] == [(0, "0"), (1, "1"), (2, "2"), (3, "3"), (4, "4")]
    assert [r.problem.split(" (")[0] if r.problem else None for r in records] == [
        None, "malformed JSON", "expected a JSON object per line, got list", "not valid UTF-8", None]
    with pytest.raises(BadExampleError, match=r"c.jsonl:2: example '1': malformed JSON"):
        render(records[1], CorpusConfig(str(tmp_path / "c.jsonl")))
    # With an id field: a later record without it is a bad example; the first, a misnamed --id-field. A split by id
    # cannot place a line whose id it cannot read.
    write_jsonl(tmp_path / "ids.jsonl", [{"uid": "a", "text": "a"}, {"text": "b"}, {"uid": "c", "text": "c"}])
    by_id = CorpusConfig(str(tmp_path / "ids.jsonl"), id_field="uid")
    assert [r.id for r in iter_records(by_id, unreadable=True)] == ["a", "row 1", "c"]
    with pytest.raises(AutoskillError, match=r"ids.jsonl:1: missing id field 'uuid'.*; check --id-field"):
        list(iter_records(CorpusConfig(str(tmp_path / "ids.jsonl"), id_field="uuid"), unreadable=True))
    with pytest.raises(AutoskillError, match=r"ids.jsonl:2: missing id field 'uid'.*which part of the --split"):
        list(iter_records(CorpusConfig(str(tmp_path / "ids.jsonl"), id_field="uid", split="dev"), unreadable=True))
    (tmp_path / "array.json").write_text('[{"text": "a"},\n{"text": "b"}]\n')
    with pytest.raises(AutoskillError, match=r"array.json:1: malformed JSON .*a JSON array\? write one object per"):
        texts(CorpusConfig(str(tmp_path / "array.json")))


def test_files_that_are_not_what_their_format_reads_are_one_line_errors(tmp_path):
    """A folder read with --format jsonl and a damaged Parquet page gave tracebacks; a gzipped JSONL read with
    --format jsonl said to re-encode it as UTF-8."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "shards").mkdir()
    with pytest.raises(AutoskillError, match=r"shards: a folder, and --format jsonl reads one file"):
        texts(CorpusConfig(str(tmp_path / "shards"), format="jsonl"))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    with pytest.raises(AutoskillError, match=r"c.jsonl.gz: a compressed file; decompress it first"):
        texts(CorpusConfig(str(tmp_path / "c.jsonl.gz"), format="jsonl"))
    pq.write_table(pa.Table.from_pylist([{"text": f"row {i} " * 50} for i in range(2000)]), tmp_path / "c.parquet",
                   compression="none", row_group_size=500)
    data = bytearray((tmp_path / "c.parquet").read_bytes())
    data[len(data) // 2:len(data) // 2 + 2000] = b"\xff" * 2000  # a damaged page in the middle
    (tmp_path / "c.parquet").write_bytes(bytes(data))
    with pytest.raises(AutoskillError, match=r"c.parquet: cannot read past row \d+ .*the file is damaged"):
        texts(CorpusConfig(str(tmp_path / "c.parquet")))


def test_the_fingerprint_holds_what_is_read_and_only_that(tmp_path):
    """A datasets folder's fingerprint changed when `datasets` wrote a cache file into it (mapping a loaded copy),
    and a file read in another format than its name says had the fingerprint of the same file read as named (merge
    took shards read both ways for one corpus)."""
    import datasets

    from autoskill_fast.data.corpus import fingerprint

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    before = fingerprint(CorpusConfig(str(tmp_path / "ds")))
    datasets.load_from_disk(str(tmp_path / "ds")).map(lambda r: {"n": len(r["question"])})
    assert list((tmp_path / "ds").glob("cache-*.arrow"))
    assert fingerprint(CorpusConfig(str(tmp_path / "ds"))) == before
    assert [r.id for r in iter_records(CorpusConfig(str(tmp_path / "ds")))] == [str(i) for i in range(5)]
    write_jsonl(tmp_path / "c.jsonl", RECORDS)
    named = fingerprint(CorpusConfig(str(tmp_path / "c.jsonl")))
    assert fingerprint(CorpusConfig(str(tmp_path / "c.jsonl"), format="jsonl")) == named  # what the name says
    assert fingerprint(CorpusConfig(str(tmp_path / "c.jsonl"), format="text"))["format"] == "text"


def test_json_python_cannot_read_names_its_line(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "x", "n": ' + deep + b'}\n{"text": "ok", "n": ' +
                                       b"9" * 5000 + b"}\n")
    with pytest.raises(AutoskillError, match=r"c.jsonl:2: JSON that Python cannot read \(.*recursion"):
        texts(CorpusConfig(str(tmp_path / "c.jsonl")))
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "ok", "n": ' + b"9" * 5000 + b"}\n")
    with pytest.raises(AutoskillError, match=r"c.jsonl:2: JSON that Python cannot read \(.*4300 digits"):
        texts(CorpusConfig(str(tmp_path / "c.jsonl")))


def test_a_byte_order_mark_is_not_text_and_limit_reads_no_further(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n{broken\n')
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbffirst\nsecond\n")
    assert texts(CorpusConfig(str(tmp_path / "c.jsonl"), limit=2)) == [("0", "first"), ("1", "second")]
    assert texts(CorpusConfig(str(tmp_path / "c.txt"))) == [("0", "first"), ("1", "second")]
    with pytest.raises(AutoskillError, match="c.jsonl:3: malformed JSON"):
        texts(CorpusConfig(str(tmp_path / "c.jsonl")))


@pytest.mark.parametrize("template,problem", [("{q} {", "Single '{'"), ("{q} {}", "{} names no field"),
                                              ("{0}", "{0} names no field")])
def test_a_template_str_format_cannot_read_is_a_config_error(template, problem):
    from autoskill_fast.evaluation.problems import ProblemsConfig

    with pytest.raises(AutoskillError, match=f"CorpusConfig.template: {re.escape(problem)}"):
        CorpusConfig("c.jsonl", template=template)
    with pytest.raises(AutoskillError, match=f"ProblemsConfig.question_template: {re.escape(problem)}"):
        ProblemsConfig(path="c.jsonl", question_template=template)


def test_records_a_template_or_chat_template_cannot_render_are_bad_examples(tmp_path, default_model_dir):
    from transformers import AutoTokenizer

    write_jsonl(tmp_path / "c.jsonl", [{"q": "a", "n": 3, "meta": {"src": "x"}}, {"q": "b", "n": "three",
                                                                               "meta": {"src": "y"}}])
    config = CorpusConfig(str(tmp_path / "c.jsonl"), template="{q} {n:d} {meta[src]}")
    records = list(iter_records(config))
    assert render(records[0], config).text == "a 3 x"  # a field's item is named by its field
    with pytest.raises(BadExampleError, match=r"c.jsonl:2: example '1': the template cannot format this record "
                                              r"\(ValueError: Unknown format code 'd'"):
        render(records[1], config)

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "ok"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": parts}])
    (tmp_path / "s.jsonl").write_text('{"text": "lone \\ud800 surrogate"}\n')
    chat = CorpusConfig(str(tmp_path / "chat.jsonl"), messages_field="messages")
    with pytest.raises(BadExampleError, match=r"chat.jsonl:1: example '0': the chat template cannot render these "
                                              r"messages \(TypeError"):
        render(next(iter_records(chat)), chat, tokenizer)
    plain = CorpusConfig(str(tmp_path / "s.jsonl"))
    with pytest.raises(BadExampleError, match=r"s.jsonl:1: example '0': the text holds '\\ud800' at character 5, a "
                                              "lone surrogate"):
        render(next(iter_records(plain)), plain)
    # A message without content (an assistant's tool call) is the template's to render, not refused before it.
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m.get('content') or "
                               "m['tool_calls'][0]['name'] }}\n{% endfor %}")
    write_jsonl(tmp_path / "tools.jsonl", [{"messages": [{"role": "user", "content": "2 + 2?"},
                                                         {"role": "assistant", "tool_calls": [{"name": "calc"}]}]}])
    tools = CorpusConfig(str(tmp_path / "tools.jsonl"), messages_field="messages")
    assert render(next(iter_records(tools)), tools, tokenizer).text == "user: 2 + 2?\nassistant: calc\n"


def test_missing_field_and_empty_text_are_bad_examples(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"text": "fine"}, {"body": "x"}, {"text": "   "}, {"id": 3, "text": None}])
    config = CorpusConfig(str(tmp_path / "c.jsonl"))
    records = list(iter_records(config))
    assert render(records[0], config).text == "fine"
    with pytest.raises(BadExampleError, match=r"c.jsonl:2: example '1': missing text field 'text'"):
        render(records[1], config)
    with pytest.raises(BadExampleError, match="empty text"):
        render(records[2], config)
    with pytest.raises(BadExampleError, match=r"c.jsonl:4: example '3': text field 'text' is null$"):  # not "missing"
        render(records[3], config)


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_tokenizing_many_texts_per_call_changes_nothing(tmp_path, default_model_dir, monkeypatch, chunk):
    """Texts are tokenized TOKENIZE_CHUNK per call (a fast tokenizer encodes them in parallel): every example gets the
    ids of its own call, bad and truncated examples are told and tallied in corpus order, whatever the chunk size."""
    from transformers import AutoTokenizer

    from autoskill_fast.config import PoolingConfig
    from autoskill_fast.data import stream
    from autoskill_fast.data.batching import tokenize

    monkeypatch.setattr(stream, "TOKENIZE_CHUNK", chunk)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    records = [{"text": f"Problem {i}: " + "seven ducks sold eggs " * (i % 5) + "é 中 🙂"} for i in range(11)]
    records[2] = {"body": "no text field"}
    records[5] = {"text": "   "}
    records[7] = {"text": "x"}  # one token: nothing left to pool once position 0 is dropped
    records[9] = {"text": "long " * 100}  # truncated at 64 tokens
    config = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", records)))
    pooling = PoolingConfig(max_length=64)
    tally = stream.InputTally()
    with pytest.warns(stream.TruncationWarning, match="example '9'"):
        items = list(stream.iter_tokenized(config, tokenizer, pooling, tally, on_bad_example="skip"))
    assert [item.example.id for item in items] == ["0", "1", "3", "4", "6", "8", "9", "10"]
    for item in items:
        alone = tokenize(item.example, tokenizer, pooling)  # one text, one call
        assert (item.input_ids, item.pool_start, item.pool_end, item.truncated) == \
            (alone.input_ids, alone.pool_start, alone.pool_end, alone.truncated)
    assert [s["id"] for s in tally.skipped] == ["2", "5", "7"] and tally.truncated == 1
    with pytest.raises(AutoskillError, match=r"c.jsonl:3: example '2': missing text field"):
        list(stream.iter_tokenized(config, tokenizer, pooling, stream.InputTally()))


def _counted(n: int, produced: list, closed: list, fail_at: int | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise AutoskillError(f"item {i} is bad")
            produced.append(i)
            yield i
    finally:
        closed.append(True)


@pytest.mark.parametrize("depth", [0, 1, 3, 64])
def test_prefetched_items_come_in_order_and_errors_where_they_were_raised(depth):
    from autoskill_fast.data.stream import prefetched

    produced, closed = [], []
    assert list(prefetched(_counted(97, produced, closed), depth)) == list(range(97))
    assert closed == [True]
    got, closed = [], []
    with pytest.raises(AutoskillError, match="item 41 is bad"):
        for item in prefetched(_counted(97, [], closed, fail_at=41), depth):
            got.append(item)
    assert got == list(range(41)) and closed == [True]  # every item before the bad one, then its error


def test_prefetched_runs_at_most_depth_ahead_and_stops_when_closed():
    import threading
    import time

    from autoskill_fast.data.stream import prefetched

    produced, closed = [], []
    before = threading.active_count()
    items = prefetched(_counted(1000, produced, closed), 3)
    assert next(items) == 0 and next(items) == 1
    deadline = time.monotonic() + 10
    while len(produced) < 6 and time.monotonic() < deadline:  # 2 taken, 3 queued, 1 waiting to be queued
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(produced) == 6
    items.close()
    assert closed == [True] and threading.active_count() == before  # the thread is joined, the source closed


def test_batches_prepared_ahead_equal_batches_prepared_in_turn(tmp_path, default_model_dir):
    from transformers import AutoTokenizer

    from autoskill_fast.config import BatchingConfig, PoolingConfig
    from autoskill_fast.data import stream

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    records = [{"text": f"Problem {i}: " + "ducks sold eggs " * (i % 13)} for i in range(301)]
    records[200] = {"text": ""}
    config = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", records)))
    runs = []
    for prefetch in (0, 2):
        tally = stream.InputTally()
        items = stream.iter_tokenized(config, tokenizer, PoolingConfig(), tally, on_bad_example="skip")
        batching = BatchingConfig(max_batch_size=7, sort_window=50, prefetch=prefetch)
        batches = list(stream.iter_batches(items, batching, token_budget=256, pad_id=0, mode="mean"))
        runs.append((batches, tally.skipped))
    (in_turn, skipped_in_turn), (ahead, skipped_ahead) = runs
    assert len(in_turn) == len(ahead) > 40
    for a, b in zip(in_turn, ahead):
        assert a.ids == b.ids and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert skipped_in_turn == skipped_ahead == [{"id": "200", "reason": "empty text"}]


def test_truncation_keeps_the_token_that_is_pooled(default_model_dir):
    """Under --pooling last the pooled token is the last: cutting the end off pooled a token from the middle of a
    long prompt. Now the end is kept (after a leading BOS); mean pooling keeps the start, as before."""
    from types import SimpleNamespace

    from autoskill_fast.config import PoolingConfig
    from autoskill_fast.data.batching import tokenize
    from autoskill_fast.data.rendering import Example

    bos = 1
    tokenizer = SimpleNamespace(bos_token_id=bos)
    ids = [bos] + list(range(100, 120))
    example = Example(0, "0", "unused")
    last = tokenize(example, tokenizer, PoolingConfig(mode="last", max_length=6), ids=ids)
    assert last.truncated and last.input_ids == [bos, 115, 116, 117, 118, 119] and last.pool_end == 6
    no_bos = tokenize(example, tokenizer, PoolingConfig(mode="last", max_length=6), ids=ids[1:])
    assert no_bos.input_ids == [114, 115, 116, 117, 118, 119]
    mean = tokenize(example, tokenizer, PoolingConfig(max_length=6), ids=ids)
    assert mean.truncated and mean.input_ids == ids[:6]


def test_a_tool_call_turn_reads_without_none(tmp_path):
    from autoskill_fast.run.reading import record_text

    write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "2 + 2?"},
                                                     {"role": "assistant", "content": None, "tool_calls": []}]}])
    config = CorpusConfig(str(tmp_path / "c.jsonl"), messages_field="messages")
    assert record_text(next(iter_records(config)), config) == "user: 2 + 2?\nassistant: "
