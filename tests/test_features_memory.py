"""Pooled features in memory (what a tool author calls) against the features `profile --save-features` writes."""

from __future__ import annotations

import pytest
import torch
import transformers

from autoskill_fast import (BatchingConfig, CorpusConfig, ModelConfig, PoolingConfig, ProfileConfig, ProjectConfig,
                            load_model, pooled_features, profile, project)
from autoskill_fast.errors import AutoskillError
from autoskill_fast.run.features import iter_feature_shards
from autoskill_fast.run.scores import Scores
from model_fixtures import write_jsonl
from test_profile import make_texts


def saved_features(folder) -> torch.Tensor:
    feats, rows = [], []
    for f, r, _ in iter_feature_shards(folder / "features"):
        feats.append(f)
        rows.append(r)
    return torch.cat(feats)[torch.argsort(torch.cat(rows))]


@pytest.mark.parametrize("scaling", ["none", "pilot"])
def test_in_memory_features_equal_the_saved_ones(tmp_path, tiny_model, scaling):
    model_dir = tiny_model("llama")
    texts = make_texts(21, seed=11)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])))
    pooling = PoolingConfig(layer_scaling=scaling)
    batching = BatchingConfig(token_budget=80)  # several batches
    loaded = load_model(ModelConfig(str(model_dir)))
    basis = profile(ProfileConfig(out=str(tmp_path / "run"), corpus=corpus, model=ModelConfig(str(model_dir)),
                                  pooling=pooling, batching=batching, k=3, save_features=True, quiet=True),
                    loaded=loaded)
    pooled = pooled_features(loaded.model, loaded.tokenizer, texts, pooling=pooling, batching=batching)
    assert pooled.ids == [str(i) for i in range(len(texts))] and pooled.layout == basis.layout
    saved = saved_features(tmp_path / "run")  # written as (pooled - shift) + shift: equal to fp32 rounding
    torch.testing.assert_close(pooled.features, saved, rtol=1e-6, atol=1e-6 * float(saved.abs().max()))
    if scaling == "pilot":
        assert torch.equal(pooled.layer_scale, basis.layer_scale)

    # The basis gives its own pooling and layer scale; a model with its LM head serves as well as the base model.
    with_head = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    again = basis.features(with_head, loaded.tokenizer, texts, batching=BatchingConfig(token_budget=4096))
    torch.testing.assert_close(again.features, pooled.features, rtol=1e-5, atol=1e-6)
    summary = project(ProjectConfig(basis=str(tmp_path / "run"), out=str(tmp_path / "proj"), corpus=corpus,
                                    model=ModelConfig(str(model_dir)), quiet=True), loaded=loaded)
    scores = Scores.load(tmp_path / "proj")
    assert summary["n"] == len(scores.ids) == len(texts)
    torch.testing.assert_close(basis.project(again.features), scores.projection, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(Scores.load(tmp_path / "run").projection, scores.projection, rtol=1e-4, atol=1e-5)


def test_in_memory_features_bad_input(tmp_path, tiny_model):
    loaded = load_model(ModelConfig(str(tiny_model("llama"))))
    with pytest.raises(AutoskillError, match="text 1: example '1': empty text"):
        pooled_features(loaded.model, loaded.tokenizer, ["fine text", "  ", "also fine"])
    pooled = pooled_features(loaded.model, loaded.tokenizer, ["fine text", "  ", "also fine"], on_bad_example="skip")
    assert pooled.ids == ["0", "2"] and pooled.skipped == [{"id": "1", "reason": "empty text"}]
    assert pooled.features.shape == (2, pooled.layout.feature_dim)
    one = pooled_features(loaded.model, loaded.tokenizer, ["also fine"])
    torch.testing.assert_close(one.features[0], pooled.features[1], rtol=1e-5, atol=1e-6)  # batching changes nothing
    with pytest.raises(AutoskillError, match=r"texts: one string, not a list of them; pass \[text\]"):
        pooled_features(loaded.model, loaded.tokenizer, "also fine")


def test_a_basis_refuses_features_of_another_model(tmp_path, tiny_model):
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(9, seed=2)])))
    basis = profile(ProfileConfig(out=str(tmp_path / "run"), corpus=corpus, model=ModelConfig(str(tiny_model("llama"))),
                                  k=2, quiet=True))
    other = load_model(ModelConfig(str(tiny_model("qwen2"))))
    with pytest.raises(AutoskillError, match="basis was made from model"):
        basis.features(other.model, other.tokenizer, ["some text"])


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_feature_writer_writes_a_shard_per_bounded_buffer(tmp_path, monkeypatch, limit):
    """Shards close at SHARD_ROWS rows or SHARD_BYTES bytes, whichever comes first, and read back as what was added."""
    from autoskill_fast.run import features

    monkeypatch.setattr(features, "SHARD_ROWS", 10 if limit == "rows" else 10**9)
    monkeypatch.setattr(features, "SHARD_BYTES", 10**9 if limit == "rows" else 7 * 5 * 2)  # 7 rows of 5 bf16
    gen = torch.Generator().manual_seed(3)
    writer = features.FeatureWriter(tmp_path / "f", dtype=torch.bfloat16, metadata={"key": "k"})
    sizes, added, start = [3, 1, 4, 1, 5, 9, 2, 6], [], 0
    for n in sizes:
        chunk = torch.randn(n, 5, generator=gen)
        writer.add(chunk, torch.arange(start, start + n), [f"id-{i}" for i in range(start, start + n)])
        added.append(chunk.bfloat16())
        start += n
    n_shards = writer.flush()
    shards = list(features.iter_feature_shards(tmp_path / "f"))
    assert n_shards == len(shards) > 2
    cap, expected, pending = (10 if limit == "rows" else 7), [], 0
    for n in sizes:  # a shard closes as soon as its rows reach the bound
        pending += n
        if pending >= cap:
            expected, pending = expected + [pending], 0
    expected += [pending] if pending else []
    assert [len(r) for _, r, _ in shards] == expected
    assert torch.equal(torch.cat([f for f, _, _ in shards]), torch.cat(added))
    assert torch.equal(torch.cat([r for _, r, _ in shards]), torch.arange(start))
    assert [i for _, _, shard_ids in shards for i in shard_ids] == [f"id-{i}" for i in range(start)]


def test_pooled_features_leave_another_threads_forwards_of_the_same_model_alone(tiny_model):
    """A tool may serve the model from one thread while another pools features with it: the capture hooks act only
    on the forwards of the thread that pools (before, the other thread's forward failed inside them). The pooling
    forward is held at its first block until the other thread's whole forward has run, so the two always overlap."""
    import threading

    from transformers.utils import logging as hf_logging

    from autoskill_fast.capture.models import decoder_blocks

    host_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        bars = hf_logging.is_progress_bar_enabled()
        loaded = load_model(ModelConfig(str(tiny_model("llama"))))
        # loading quiets transformers for its own reports, then gives the host's settings back
        assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled() == bars
    finally:
        hf_logging.set_verbosity(host_verbosity)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        want = loaded.model(input_ids=ids).last_hidden_state
    texts = make_texts(6, seed=4)
    alone = pooled_features(loaded.model, loaded.tokenizer, texts).features
    pooling_thread, paused, served, seen = threading.get_ident(), threading.Event(), threading.Event(), []

    def hold_the_pooling_forward(_module, _args):
        if threading.get_ident() == pooling_thread and not served.is_set():
            paused.set()
            assert served.wait(60), "the other thread's forward did not finish"

    def serve():
        assert paused.wait(60)
        try:
            with torch.inference_mode():
                got = loaded.model(input_ids=ids).last_hidden_state
            seen.append("same output" if torch.equal(got, want) else "changed output")
        except Exception as e:  # noqa: BLE001 - any failure of the other thread's forward is the finding
            seen.append(repr(e))
        finally:
            served.set()

    holder = decoder_blocks(loaded.model)[0].register_forward_pre_hook(hold_the_pooling_forward)
    other = threading.Thread(target=serve)
    other.start()
    try:
        pooled = pooled_features(loaded.model, loaded.tokenizer, texts)
    finally:
        holder.remove()
        served.set()
        other.join()
    assert seen == ["same output"]
    torch.testing.assert_close(pooled.features, alone, rtol=1e-5, atol=1e-6)


def test_a_basis_scores_numpy_as_numpy_and_a_vector_names_a_bad_direction(tmp_path, tiny_model):
    import numpy as np

    from autoskill_fast.steering import SteeringVector

    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(9, seed=5)])))
    basis = profile(ProfileConfig(out=str(tmp_path / "run"), corpus=corpus, model=ModelConfig(str(tiny_model("llama"))),
                                  k=2, quiet=True))
    feats = torch.randn(4, basis.feature_dim, generator=torch.Generator().manual_seed(6))
    for method in (basis.project, basis.cosine):
        as_numpy = method(feats.numpy())
        assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, method(feats).numpy())
    for directions, message in ((1.5, "a direction is an integer index of the basis, got 1.5"),
                                (["0"], "a direction is an integer index of the basis, got '0'"),
                                ([True], "a direction is an integer index of the basis, got True"),
                                ([0, 2], "direction 2 is out of range: the basis has 2 directions, 0 to 1"),
                                ([-1], "direction -1 is out of range")):
        with pytest.raises(AutoskillError, match=message):
            SteeringVector.from_basis(basis, directions)
    by_index = SteeringVector.from_basis(basis, [0, 1], weights=[1.0, -1.0])
    for indices in (torch.tensor([0, 1]), np.array([0, 1]), torch.topk(torch.tensor([2.0, 1.0]), 2).indices):
        assert SteeringVector.from_basis(basis, indices, weights=[1.0, -1.0]).terms == by_index.terms
    assert SteeringVector.from_basis(basis, torch.tensor(1)).terms == SteeringVector.from_basis(basis, 1).terms


def test_longrope_examples_are_batched_apart_from_longer_ones(default_model_dir, monkeypatch):
    """Phi-3's LongRoPE takes the long or the short factors for a whole batch from its longest position, so a short
    example batched with one past the original context got the long ones (0.5-0.8% off its features alone). Batches
    no longer straddle that length: one batch for all equals one batch each, to fp32 rounding."""
    from transformers import AutoTokenizer

    from autoskill_fast.capture import features as capture_features
    from autoskill_fast.data.batching import Tokenized, buckets
    from autoskill_fast.data.rendering import Example

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    head_dim = 16
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
            "short_factor": [1.0] * (head_dim // 2), "long_factor": [4.0 + i for i in range(head_dim // 2)]}
    config = transformers.Phi3Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     original_max_position_embeddings=32, rope_parameters=rope, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).eval()
    assert capture_features.batch_split_lengths(model.config) == (32,)
    texts = make_texts(3, seed=2) + [" ".join(["the cat sat on a mat"] * 12)]
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]
    assert max(lengths) > 32 >= min(lengths)
    pooling = PoolingConfig(layers=(0, 1))

    def features(budget):
        return pooled_features(model, tokenizer, texts, pooling=pooling,
                               batching=BatchingConfig(token_budget=budget)).features

    alone = features(1)
    torch.testing.assert_close(features(100_000), alone, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(capture_features, "batch_split_lengths", lambda config: ())
    assert not torch.allclose(features(100_000), alone, rtol=1e-3, atol=1e-4)  # what batching together did

    items = [Tokenized(Example(n, str(n), ""), [0] * n, 1, n, False) for n in (40, 33, 32, 31, 5, 64)]
    groups = list(buckets(items, token_budget=10_000, max_batch_size=64, sort_window=100, split_lengths=(32,)))
    assert [[len(item) for item in group] for group in groups] == [[64, 40, 33], [32, 31, 5]]


def test_left_padding_is_refused_for_a_model_that_ignores_the_mask(default_model_dir):
    """RWKV's forward ignores the attention mask: left pads ran through its state (99% off the features alone)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = transformers.RwkvConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=3, attention_hidden_size=32,
                                     intermediate_size=64, context_length=128)
    torch.manual_seed(0)
    model = transformers.RwkvForCausalLM(config).eval()
    texts = make_texts(4, seed=5)
    with pytest.raises(AutoskillError, match="rwkv ignores the attention mask, so left pads would run through its "
                                             "state before each example; use right padding"):
        pooled_features(model, tokenizer, texts, pooling=PoolingConfig(layers=(0, 1)),
                        batching=BatchingConfig(padding_side="left"))
    together = pooled_features(model, tokenizer, texts, pooling=PoolingConfig(layers=(0, 1)),
                               batching=BatchingConfig(padding_side="right", token_budget=100_000))
    alone = pooled_features(model, tokenizer, texts, pooling=PoolingConfig(layers=(0, 1)),
                            batching=BatchingConfig(token_budget=1))
    torch.testing.assert_close(together.features, alone.features, rtol=1e-5, atol=1e-6)
    from autoskill_fast.capture.models import check_padding_side

    with pytest.raises(AutoskillError, match="xlstm ignores the attention mask"):  # its forward takes none
        check_padding_side(transformers.xLSTMConfig(), "left")
    check_padding_side(transformers.xLSTMConfig(), "right")


def test_the_last_block_is_pooled_before_the_final_norm(tiny_model):
    """What the README says of `--layers -1`: a block's output is what it hands on, so the last block's is taken
    before the model's final norm; transformers' hidden_states[-1] is after it (and the two differ)."""
    loaded = load_model(ModelConfig(str(tiny_model("llama", num_layers=3))))
    texts = make_texts(3, seed=6)
    pooled = pooled_features(loaded.model, loaded.tokenizer, texts, pooling=PoolingConfig(layers=(2,))).features
    for text, row in zip(texts, pooled):
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        outputs = []
        hook = loaded.model.layers[2].register_forward_hook(
            lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
        try:
            with torch.inference_mode():
                after_norm = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        finally:
            hook.remove()
        block_output = outputs[0].reshape(ids.shape[1], -1)
        torch.testing.assert_close(row, block_output[1:].double().mean(0).float(), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(row, after_norm[0, 1:].mean(0), rtol=1e-2, atol=1e-3)
