"""The profile job against the paper's recipe computed the slow way, and its streaming invariants."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoskill_fast import (BatchingConfig, CorpusConfig, ModelConfig, PoolingConfig, ProfileConfig, SkillBasis, fit,
                            merge, profile)
from autoskill_fast.run.features import iter_feature_shards
from autoskill_fast.decomposition.statistics import StreamingCovariance, load_statistics
from autoskill_fast.errors import AutoskillError
from autoskill_fast.kernels import PackedSymmetric
from autoskill_fast.run.folder import RunFolder
from autoskill_fast.run.scores import Scores
from model_fixtures import write_jsonl
from reference import paper_features

WORDS = "the cat sat on a mat while seven ducks counted eggs and sold them for two dollars each day".split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    # At least two words: position 0 is left out of the mean, so a one-token text has nothing to pool.
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 40)))) for _ in range(n)]


BATCHING = ("token_budget", "max_batch_size", "sort_window", "padding_side")


def run(tmp_path, model_dir, corpus, name="run", **kw) -> SkillBasis:
    pooling = kw.pop("pooling", PoolingConfig())
    batching = BatchingConfig(**{key: kw.pop(key) for key in BATCHING if key in kw})
    config = ProfileConfig(corpus=corpus, out=str(tmp_path / name), model=ModelConfig(str(model_dir)),
                           pooling=pooling, batching=batching, quiet=True, save_features=True, **{"k": 4, **kw})
    return profile(config)


def load_features(folder) -> tuple[torch.Tensor, list[str]]:
    rows, feats, ids = [], [], []
    for f, r, i in iter_feature_shards(folder / "features"):
        feats.append(f)
        rows.append(r)
        ids.extend(i)
    order = torch.argsort(torch.cat(rows))
    return torch.cat(feats)[order], [ids[i] for i in order]


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    err = (actual.double() - expected.double()).norm(dim=-1) / expected.double().norm(dim=-1)
    assert err.max() <= rtol, f"max relative error {err.max():.2e} > {rtol:.0e}"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_features_match_paper_recipe(tmp_path, tiny_model, arch):
    model_dir = tiny_model(arch)
    texts = make_texts(23, seed=1)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])))
    basis = run(tmp_path, model_dir, corpus, token_budget=96)  # several batches, ragged lengths
    features, ids = load_features(tmp_path / "run")
    assert ids == [str(i) for i in range(len(texts))]
    expected = paper_features(model_dir, texts, basis.layout.layer_ids)
    assert basis.layout.layer_ids == (1, 2)  # blocks 1 .. L-2 of 4
    assert_rel_close(features, expected, 1e-5)


def with_bos_tokenizer(folder: Path) -> Path:
    """The tiny model folder with a tokenizer that puts its BOS token (<|im_start|>) before every text."""
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                  "tokens": ["<|im_start|>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos-tokenizer", "bos-tokenizer"])
def test_position_0_is_dropped_whatever_it_is_as_the_seed_code_does(tmp_path, tiny_model, bos):
    """SmolLM2's tokenizer adds no BOS (nor does Qwen2.5's): the seed code drops position 0 anyway, and so do we. The
    old rule (drop_bos) and --keep-first-token give what they say."""
    import shutil

    from transformers import AutoTokenizer

    model_dir = shutil.copytree(tiny_model("llama"), tmp_path / "model")
    if bos:
        with_bos_tokenizer(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert (tokenizer("a b")["input_ids"][0] == tokenizer.bos_token_id) == bos
    texts = make_texts(9, seed=2)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])))
    for rule in ("drop", "keep", "drop_bos"):
        basis = run(tmp_path, model_dir, corpus, name=rule, k=2, pooling=PoolingConfig(first_token=rule))
        features, _ = load_features(tmp_path / rule)
        assert_rel_close(features, paper_features(model_dir, texts, basis.layout.layer_ids, first_token=rule), 1e-5)
    drop, keep = load_features(tmp_path / "drop")[0], load_features(tmp_path / "keep")[0]
    assert not torch.allclose(drop, keep, rtol=1e-3)  # position 0 matters
    old = load_features(tmp_path / "drop_bos")[0]
    assert torch.equal(old, drop) if bos else torch.equal(old, keep)


def test_last_token_pooling(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    texts = make_texts(9, seed=2)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])))
    run(tmp_path, model_dir, corpus, name="last", k=2, pooling=PoolingConfig(mode="last", layers=(2,)))
    features, _ = load_features(tmp_path / "last")
    assert_rel_close(features, paper_features(model_dir, texts, (2,), pooling="last"), 1e-5)


@pytest.mark.slow
def test_default_model_matches_paper_recipe(tmp_path, default_model_dir):
    from autoskill_fast.config import default_corpus_path

    records = [json.loads(line) for line in default_corpus_path().read_text().splitlines()[:6]]
    texts = [f"{r['question']}\n{r['answer']}" for r in records]
    corpus = CorpusConfig(str(default_corpus_path()), template="{question}\n{answer}", limit=6)
    basis = run(tmp_path, default_model_dir, corpus, k=3, token_budget=1024)
    assert basis.layout.layer_ids == tuple(range(1, 29)) and basis.feature_dim == 28 * 576
    features, _ = load_features(tmp_path / "run")
    assert_rel_close(features, paper_features(default_model_dir, texts, basis.layout.layer_ids), 1e-5)


def stats_of(folder) -> StreamingCovariance:
    return StreamingCovariance.load(folder / "stats.safetensors")


def assert_same_stats(a: StreamingCovariance, b: StreamingCovariance, rtol=1e-5) -> None:
    assert a.n == b.n
    scale = a.covariance().abs().max()
    assert (a.mean - b.mean).abs().max() <= rtol * a.mean.abs().max()
    assert (a.covariance() - b.covariance()).abs().max() <= rtol * scale


def test_batching_padding_and_order_do_not_change_statistics(tmp_path, tiny_model):
    model_dir = tiny_model("qwen2")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(31, seed=3)])))
    run(tmp_path, model_dir, corpus, name="base", token_budget=4096)
    variants = {
        "small_batches": {"token_budget": 48},
        "left_padding": {"token_budget": 300, "padding_side": "left"},
        "tiny_windows": {"sort_window": 3, "max_batch_size": 2},
    }
    for name, kw in variants.items():
        run(tmp_path, model_dir, corpus, name=name, **kw)
        assert_same_stats(stats_of(tmp_path / "base"), stats_of(tmp_path / name))


def test_shards_that_hold_no_more_examples_than_k_are_profiled_for_their_merge(tmp_path, tiny_model, caplog):
    """8 shards of 29 examples hold 3 or 4 each: `-k 5` was refused for every one (at most n - 1 directions), though
    their merge has 29 examples. A shard's own basis keeps n - 1; the merge fits 5, as one pass does."""
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(29, seed=4)])))
    whole = run(tmp_path, model_dir, corpus, name="whole", k=5)
    with caplog.at_level("WARNING", logger="autoskill_fast"):
        shards = [run(tmp_path, model_dir, corpus, name=f"s{i}", k=5, shard=(i, 8)) for i in range(8)]
    assert [b.k for b in shards] == [3] * 5 + [2] * 3  # rows 0-28 dealt to 8 shards: 4 4 4 4 4 3 3 3 examples
    assert "this shard holds 3 examples, so its own basis keeps 2 directions; `merge` fits -k 5" in caplog.text
    assert run(tmp_path, model_dir, corpus, name="s7", k=5, shard=(7, 8)).k == 2  # the same command: complete
    merged = merge([tmp_path / f"s{i}" for i in range(8)], tmp_path / "merged")
    assert merged.k == 5
    assert_same_stats(stats_of(tmp_path / "whole"), stats_of(tmp_path / "merged"))
    assert torch.allclose(merged.components_, whole.components_, atol=1e-4)


def test_shards_merge_to_one_pass_and_basis_matches_numpy(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(29, seed=4)])))
    whole = run(tmp_path, model_dir, corpus, name="whole", k=5)
    for i in range(3):
        run(tmp_path, model_dir, corpus, name=f"s{i}", k=5, shard=(i, 3))
    merged = merge([tmp_path / f"s{i}" for i in range(3)], tmp_path / "merged")
    assert_same_stats(stats_of(tmp_path / "whole"), stats_of(tmp_path / "merged"))
    assert torch.allclose(merged.components_, whole.components_, atol=1e-4)

    features, _ = load_features(tmp_path / "whole")
    x = features.double().numpy()
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    np.testing.assert_allclose(whole.eigenvalues_.numpy(), evals[::-1][:5], rtol=1e-5)
    cosines = np.abs(np.sum(whole.components_.double().numpy() * evecs[:, ::-1][:, :5].T, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)

    from sklearn.decomposition import PCA

    pca = PCA(n_components=5, svd_solver="full").fit(x)
    np.testing.assert_allclose(whole.explained_variance_ratio_.numpy(), pca.explained_variance_ratio_, rtol=1e-5)
    scores = Scores.load(tmp_path / "whole")
    ref = pca.transform(x)
    signs = np.sign(np.sum(ref * scores.projection.double().numpy(), axis=0))
    np.testing.assert_allclose(scores.projection.numpy(), ref * signs, atol=1e-4 * np.abs(ref).max())
    merged_scores = Scores.load(tmp_path / "merged")
    assert merged_scores.ids == scores.ids
    assert RunFolder(tmp_path / "merged").record().complete_shards

    # Shards that share rows would count them twice; shards that read or cut the texts otherwise do not add.
    with pytest.raises(AutoskillError, match=r"whole \(shard 0/1\) and .*s0 \(shard 0/3\) hold some of the same "
                                             "rows"):
        merge([tmp_path / "s0", tmp_path / "s1", tmp_path / "whole"], tmp_path / "twice")
    with pytest.warns(Warning, match="was truncated"):
        run(tmp_path, model_dir, corpus, name="cut", k=5, shard=(1, 3), pooling=PoolingConfig(max_length=6))
    run(tmp_path, model_dir, replace(corpus, limit=20), name="limited", k=5, shard=(1, 3))
    for name, option in (("cut", "--max-length"), ("limited", "corpus reading")):
        with pytest.raises(AutoskillError, match=f"{name}: profiled with another {option}"):
            merge([tmp_path / "s0", tmp_path / name], tmp_path / f"with-{name}")
    run(tmp_path, model_dir, corpus, name="blocks", k=5, shard=(1, 3), pooling=PoolingConfig(layers=(1, 2, 3)))
    with pytest.raises(AutoskillError, match=r"s0 was profiled with another pooling than the shard .*blocks "
                                             r"\(layer_ids: .*merge shards profiled alike"):  # not "the basis was made"
        merge([tmp_path / "s0", tmp_path / "blocks"], tmp_path / "with-blocks")
    merge([tmp_path / "s0", tmp_path / "s2"], tmp_path / "two-thirds")
    assert not RunFolder(tmp_path / "two-thirds").record().complete_shards
    # A merge is a shard of the shards it was made of: it merges with the rest, and not with one of its own.
    tree = merge([tmp_path / "two-thirds", tmp_path / "s1"], tmp_path / "tree")
    assert RunFolder(tmp_path / "tree").record().complete_shards
    assert torch.allclose(tree.eigenvalues_, merged.eigenvalues_, rtol=1e-6)
    with pytest.raises(AutoskillError, match=r"s2 \(shard 2/3\) and .*two-thirds \(shard 2/3\) hold some of the same"):
        merge([tmp_path / "two-thirds", tmp_path / "s2"], tmp_path / "again")


def test_sketched_shards_merge_to_the_exact_basis(tmp_path, tiny_model):
    """Each shard's sketch is around its own pilot mean; a sketch large enough to hold every row (and the one extra
    row each merge adds) shrinks nothing, so the merge equals the exact whole run to fp32 rounding (of the features)."""
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(29, seed=4)])))
    whole = run(tmp_path, model_dir, corpus, name="whole", k=5)
    for i in range(3):
        run(tmp_path, model_dir, corpus, name=f"s{i}", k=5, shard=(i, 3), sketch_size=32)
    merged = merge([tmp_path / f"s{i}" for i in range(3)], tmp_path / "merged")
    stats = load_statistics(tmp_path / "merged" / "stats.safetensors")
    assert stats.n == 29 and stats.error_bound() == 0.0 and stats.sketch.negative.shape[0] == 2
    top = float(whole.eigenvalues_[0])
    assert torch.allclose(merged.eigenvalues_, whole.eigenvalues_, rtol=0, atol=1e-5 * top)
    cosines = torch.linalg.svdvals(merged.components_.double() @ whole.components_.double().T)
    assert bool((cosines >= 1 - 1e-6).all()), cosines
    assert torch.allclose(merged.mean_, whole.mean_, atol=1e-6 * float(whole.mean_.abs().max()))
    assert Scores.load(tmp_path / "merged").ids == Scores.load(tmp_path / "whole").ids
    refit = fit(tmp_path / "merged", 3)  # from the saved merged sketch, its exact rows included
    assert torch.allclose(refit.eigenvalues_, whole.eigenvalues_[:3], rtol=0, atol=1e-5 * top)
    run(tmp_path, model_dir, corpus, name="s1", k=5, shard=(1, 3), overwrite=True)  # exact this time
    with pytest.raises(AutoskillError, match=r"s1: holds exact statistics and .*s0 sketched"):
        merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "mixed")


def test_bfloat16_rows_enter_the_sums_rounded_and_nothing_else_changes(tmp_path, tiny_model):
    """--covariance-rows bfloat16: the second-moment sums are those of the centered features rounded to bf16 (fp64 sums
    on the CPU: exact), the count, sum and mean those of the features themselves; and it is another run (its key)."""
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(29, seed=6)])))
    rounded = run(tmp_path, model_dir, corpus, name="bf16", covariance_rows="bfloat16")
    plain = run(tmp_path, model_dir, corpus, name="fp32")
    stats, exact = stats_of(tmp_path / "bf16"), stats_of(tmp_path / "fp32")
    features, _ = load_features(tmp_path / "bf16")
    centered = (features - stats.shift.float()).bfloat16().double()  # what the kernel is given
    want = PackedSymmetric.from_dense(centered.T @ centered, tile=stats.sumsq.layout.tile)
    assert torch.allclose(stats.sumsq.data, want.data, rtol=1e-12, atol=1e-12 * float(want.data.abs().max()))
    assert torch.equal(stats.sum, exact.sum) and torch.equal(stats.shift, exact.shift) and stats.n == exact.n
    assert not torch.equal(stats.sumsq.data, exact.sumsq.data)  # the rounding is real
    cosines = torch.linalg.svdvals(rounded.components_.double() @ plain.components_.double().T)
    assert bool((cosines >= 1 - 1e-3).all()), cosines  # and small at this size (bench/RESULTS.md measures it)
    records = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("bf16", "fp32")]
    assert records[0]["key"] != records[1]["key"] and records[0]["config"]["covariance_rows"] == "bfloat16"
    run(tmp_path, model_dir, corpus, name="half0", shard=(0, 2), covariance_rows="bfloat16")
    run(tmp_path, model_dir, corpus, name="half1", shard=(1, 2))
    with pytest.raises(AutoskillError, match="half1: profiled with --covariance-rows float32, .*half0 with bfloat16"):
        merge([tmp_path / "half0", tmp_path / "half1"], tmp_path / "mixed")


@pytest.mark.slow  # a benchmark script end to end
def test_covariance_rows_benchmark_runs(tmp_path, tiny_model):
    import subprocess
    import sys

    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(40, seed=7)])))
    run(tmp_path, model_dir, corpus, name="run")
    script = Path(__file__).resolve().parents[1] / "bench" / "bench_covariance_rows.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "-k", "3", "--bootstrap", "2",
                           "--out", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["direction"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["angle_deg"] < 5 and abs(r["eigenvalue_rel_change"]) < 1e-2 for r in rows), rows


@pytest.mark.parametrize("rows", ["float32", "bfloat16"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_model, monkeypatch, rows):
    from autoskill_fast.capture import hooks as capture_mod

    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(37, seed=5)])))
    common = dict(token_budget=64, checkpoint_every=2, covariance_rows=rows)
    whole = run(tmp_path, model_dir, corpus, name="whole", **common)

    calls = {"n": 0}
    original = capture_mod.PooledCapture.__call__

    def dies_on_seventh_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # as if killed mid-run
        return original(self, batch)

    monkeypatch.setattr(capture_mod.PooledCapture, "__call__", dies_on_seventh_batch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model_dir, corpus, name="resumed", **common)
    progress = json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())
    assert progress["batches"] == 6
    # Its position counts the features written so far: a resume that would not write them is refused.
    unsaved = ProfileConfig(corpus=corpus, out=str(tmp_path / "resumed"), model=ModelConfig(str(model_dir)), k=4,
                            quiet=True, batching=BatchingConfig(token_budget=64), checkpoint_every=2,
                            covariance_rows=rows)
    with pytest.raises(AutoskillError, match="started with save_features=True and its checkpoint counts the features "
                                             "written so far; resume it with the same --save-features"):
        profile(unsaved)
    from autoskill_fast.capture import models as models_mod

    with monkeypatch.context() as patched:  # --dtype auto where it means bfloat16 (a GPU): the same run key
        patched.setattr(models_mod, "resolve_dtype", lambda dtype, device: torch.bfloat16)
        with pytest.raises(AutoskillError, match="started with the model in float32 and its checkpoint holds "
                                                 "statistics of float32 activations; resume it with --dtype float32"):
            run(tmp_path, model_dir, corpus, name="resumed", **common)
    monkeypatch.setattr(capture_mod.PooledCapture, "__call__", original)
    calls["n"] = 0
    resumed = run(tmp_path, model_dir, corpus, name="resumed", **common)

    a, b = stats_of(tmp_path / "whole"), stats_of(tmp_path / "resumed")
    assert a.n == b.n == 37
    assert torch.equal(a.sumsq.data, b.sumsq.data) and torch.equal(a.sum, b.sum) and torch.equal(a.shift, b.shift)
    assert torch.equal(whole.components_, resumed.components_)
    fa, ia = load_features(tmp_path / "whole")
    fb, ib = load_features(tmp_path / "resumed")
    assert ia == ib and torch.equal(fa, fb)
    assert not (tmp_path / "resumed" / "checkpoint").exists()

    # Killed while scoring (statistics and basis saved): the rerun scores from the kept features, with no forward.
    from autoskill_fast.run import scores as scores_mod

    config = ProfileConfig(corpus=corpus, out=str(tmp_path / "scoring"), model=ModelConfig(str(model_dir)), quiet=True,
                           k=4, batching=BatchingConfig(token_budget=64), covariance_rows=rows)
    original_read = scores_mod._read_block

    def killed(*args, **kwargs):  # killed while writing the scores in row order: parts written, files half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(scores_mod, "_read_block", killed)
    with pytest.raises(KeyboardInterrupt):
        profile(config)
    assert json.loads((tmp_path / "scoring" / "run.json").read_text())["status"] == "statistics"
    assert list((tmp_path / "scoring" / scores_mod.SCORE_PARTS_DIR).glob("part-*"))
    monkeypatch.setattr(scores_mod, "_read_block", original_read)

    def no_forward(self, batch):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(capture_mod.PooledCapture, "__call__", no_forward)
    profile(config)
    assert json.loads((tmp_path / "scoring" / "run.json").read_text())["status"] == "complete"
    assert not (tmp_path / "scoring" / ".features-tmp").exists()
    assert sorted(p.name for p in (tmp_path / "scoring").iterdir() if p.name.startswith(".")) == []  # no part, no temp
    scored, reference = Scores.load(tmp_path / "scoring"), Scores.load(tmp_path / "whole")
    assert scored.ids == reference.ids and torch.allclose(scored.projection.abs(), reference.projection.abs(), atol=1e-4)


def test_fit_refits_from_saved_statistics(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(20, seed=6)])))
    big = run(tmp_path, model_dir, corpus, name="r", k=6)
    small = fit(tmp_path / "r", 3)
    assert small.k == 3 and SkillBasis.load(tmp_path / "r").k == 3
    assert torch.allclose(small.components_, big.components_[:3], atol=1e-4)
    assert Scores.load(tmp_path / "r").k == 3


@pytest.mark.parametrize("fit_fails", [False, True])
def test_solve_leaves_a_core_to_the_statistics_writer(tmp_path, tiny_model, monkeypatch, fit_fails):
    from autoskill_fast.jobs import profiling as profile_mod

    seen = []
    real_fit = profile_mod.fit_components

    def recording_fit(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if fit_fails:
            raise RuntimeError("solver blew up")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(profile_mod, "fit_components", recording_fit)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(8, seed=9)])))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if fit_fails:
            with pytest.raises(RuntimeError, match="solver blew up"):
                run(tmp_path, tiny_model("llama"), corpus, k=2)
        else:
            run(tmp_path, tiny_model("llama"), corpus, k=2)
        assert seen == [1] and torch.get_num_threads() == 2
        assert (tmp_path / "run" / "stats.safetensors").is_file()  # written beside the solve, even when it failed
    finally:
        torch.set_num_threads(previous)


def test_layer_scaling_options(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    texts = make_texts(12, seed=7)
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])))
    basis = run(tmp_path, model_dir, corpus, name="l2", pooling=PoolingConfig(layer_scaling="l2"))
    features, _ = load_features(tmp_path / "l2")
    ref = paper_features(model_dir, texts, basis.layout.layer_ids)
    for chunk, ref_chunk in zip(features.split(48, dim=1), ref.split(48, dim=1)):
        assert_rel_close(chunk, ref_chunk / ref_chunk.norm(dim=1, keepdim=True), 1e-5)
    basis = run(tmp_path, model_dir, corpus, name="pilot", pooling=PoolingConfig(layer_scaling="pilot"))
    assert basis.layer_scale is not None and basis.layer_scale.shape == (2,)
    features, _ = load_features(tmp_path / "pilot")
    for j, (chunk, ref_chunk) in enumerate(zip(features.split(48, dim=1), ref.split(48, dim=1))):
        assert_rel_close(chunk, ref_chunk * basis.layer_scale[j], 1e-5)

    # Shards measure their pilot factors on their own first batches: they do not add, and merge says so.
    for i in range(2):
        run(tmp_path, model_dir, corpus, name=f"p{i}", shard=(i, 2), pooling=PoolingConfig(layer_scaling="pilot"))
    with pytest.raises(AutoskillError, match="pilot factors .* differ"):
        merge([tmp_path / "p0", tmp_path / "p1"], tmp_path / "pm")


def test_chat_response_mean_and_prompt_last_token(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model("llama")
    texts = make_texts(8, seed=8)
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in zip(texts, reversed(texts))]
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "chat.jsonl", records)), messages_field="messages")
    run(tmp_path, model_dir, corpus, name="resp", k=2, pooling=PoolingConfig(mode="response_mean"))
    run(tmp_path, model_dir, corpus, name="last", k=2, pooling=PoolingConfig(mode="last", layers=(1,)))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    expected_resp, expected_last = [], []
    with torch.no_grad():
        for record in records:
            msgs = record["messages"]
            prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs, tokenize=False)
            n_prompt = len(tokenizer(prompt)["input_ids"])
            ids = tokenizer(full, return_tensors="pt")["input_ids"]
            hidden = model(ids, output_hidden_states=True).hidden_states
            expected_resp.append(torch.cat([hidden[l + 1][0, n_prompt:].mean(0) for l in (1, 2)]))
            prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            expected_last.append(model(prompt_ids, output_hidden_states=True).hidden_states[2][0, -1])
    assert_rel_close(load_features(tmp_path / "resp")[0], torch.stack(expected_resp), 1e-5)
    assert_rel_close(load_features(tmp_path / "last")[0], torch.stack(expected_last), 1e-5)


def test_frequent_directions_fallback_against_exact(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(60, seed=9)])))
    exact = run(tmp_path, model_dir, corpus, name="exact", k=4, token_budget=128)
    # A sketch with room for every row is exact (up to fp32 storage of the sketch rows).
    roomy = run(tmp_path, model_dir, corpus, name="roomy", k=4, token_budget=128, sketch_size=64)
    torch.testing.assert_close(roomy.eigenvalues_, exact.eigenvalues_, rtol=1e-4, atol=0)
    assert torch.allclose((roomy.components_ * exact.components_).sum(1).abs(), torch.ones(4), atol=1e-4)
    assert roomy.total_variance_ == pytest.approx(exact.total_variance_, rel=1e-9)
    # A small sketch: every eigenvalue within the bound it reports, and the top direction still found.
    small = run(tmp_path, model_dir, corpus, name="small", k=4, token_budget=128, sketch_size=12)
    bound = small.solver["max_residual"] * float(small.eigenvalues_[0])
    assert (small.eigenvalues_ - exact.eigenvalues_).abs().max() <= bound + 1e-9 * float(exact.eigenvalues_[0])
    assert float((small.components_[0] * exact.components_[0]).sum().abs()) > 0.95
    assert json.loads((tmp_path / "small" / "run.json").read_text())["basis"]["solver"]["method"] == "frequent-directions"


def test_the_exported_profiler_step_by_step_gives_profile_s_statistics(tmp_path, tiny_model):
    """The per-batch step README names for tools that run their own loop: Profiler(model, resolved pooling), then
    prepare, step per batch of iter_batches(iter_tokenized(...)), finish. A PoolingConfig is refused by name (it
    failed with "no attribute 'layout'")."""
    from autoskill_fast import Profiler, load_model
    from autoskill_fast.capture.features import resolve_pooling
    from autoskill_fast.data.stream import InputTally, iter_batches, iter_tokenized

    model_dir = tiny_model("llama")
    corpus = CorpusConfig(str(write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(23, seed=2)])))
    run(tmp_path, model_dir, corpus, name="whole", k=4)
    loaded = load_model(ModelConfig(str(model_dir)))
    with pytest.raises(TypeError, match="Profiler takes the pooling resolved for its model, got PoolingConfig"):
        Profiler(loaded.model, PoolingConfig())
    resolved = resolve_pooling(PoolingConfig(), loaded.model, loaded.tokenizer)
    profiler = Profiler(loaded.model, resolved).prepare()
    tokenized = iter_tokenized(corpus, loaded.tokenizer, resolved.config, InputTally())
    for batch in iter_batches(tokenized, BatchingConfig(), token_budget=256, pad_id=loaded.tokenizer.pad_token_id,
                              mode=resolved.config.mode):
        profiler.step(batch)
    stats = profiler.finish()
    assert_same_stats(stats, stats_of(tmp_path / "whole"))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())  # the hooks are gone
