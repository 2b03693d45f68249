"""The pilot proxy end to end on a tiny random-weight Llama: pole pilots against a random pilot (NLL and Pass@k),
resume, adapters kept or removed, the base model untouched, and a run that profiled the dev set refused."""

from __future__ import annotations

import sys

import pytest
import torch

from autoskill_fast.capture.models import load_model
from autoskill_fast.config import CorpusConfig, ModelConfig, ProfileConfig
from autoskill_fast.errors import AutoskillError
from autoskill_fast.evaluation.problems import ProblemsConfig
from autoskill_fast.jobs.profiling import profile
from autoskill_fast.proxies import pilot as pilot_module
from autoskill_fast.proxies.job import RankConfig, rank
from autoskill_fast.evaluation.nll import collate_solutions
from autoskill_fast.proxies.pilot import example_order
from autoskill_fast.run.ranking import Ranking
from model_fixtures import write_jsonl

pytest.importorskip("peft")

DEV = 6
NAMES = ["Ada", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal"]
THINGS = ["apples", "pens", "coins", "books", "shells"]


def problems(n: int = 30) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        name, thing, a, b = NAMES[i % len(NAMES)], THINGS[i % len(THINGS)], 2 + i % 7, 3 + (5 * i) % 11
        if i % 2:
            question = f"{name} has {a} {thing} and finds {b} more. How many {thing} does {name} have?"
            answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"
        else:
            question = f"{name} buys {a} bags of {thing} with {b} {thing} in each. How many {thing} in all?"
            answer = f"Each bag has {b}, so {a} bags have {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {thing}.\n#### {a * b}"
        out.append({"question": question, "answer": answer})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """A corpus, a tiny model, and a run that profiled the pool of the corpus's split (dev: DEV problems)."""
    tmp = tmp_path_factory.mktemp("pilot")
    corpus = write_jsonl(tmp / "gsm.jsonl", problems())
    model_dir = tiny_model("llama")
    run = tmp / "run"
    profile(ProfileConfig(out=str(run), corpus=CorpusConfig(str(corpus), template="{question}\n{answer}", split="pool",
                                                            dev_size=DEV), model=ModelConfig(str(model_dir)), k=2,
                          quiet=True))
    loaded = load_model(ModelConfig(str(model_dir)), causal_lm=True)
    return tmp, corpus, model_dir, run, loaded


def config(run, corpus, **options) -> RankConfig:
    values = dict(run=str(run), proxy="pilot", metric="nll", problems=ProblemsConfig(path=str(corpus), dev_size=DEV),
                  directions=(0,), pilot_examples=6, pilot_steps=2, pilot_batch_size=3, pilot_lr=1e-2, lora_rank=2,
                  resamples=200, quiet=True)
    return RankConfig(**{**values, **options})


def test_pilot_ranks_both_poles_against_random_and_leaves_the_base_model(setup, monkeypatch):
    tmp, corpus, _, run, loaded = setup
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    fingerprint = loaded.fingerprint
    ranking = rank(config(run, corpus, directions=(0, 1)), loaded=loaded)

    assert {(e.direction, e.sign) for e in ranking.entries} == {(0, 1), (0, -1), (1, 1), (1, -1)}
    for entry in ranking.entries:
        assert entry.low <= entry.effect <= entry.high and entry.low < entry.high
        assert entry.joint_low < entry.low and entry.high < entry.joint_high  # four entries: wider than its own
        assert entry.cost_s > 0 and entry.details["train_s"] > 0 and entry.details["eval_s"] > 0
        assert entry.details["steps"] == 2 and entry.details["examples"] == 6
        assert len({entry.details["first_loss"], entry.details["final_loss"]}) == 2
        assert entry.details["adapter"] is None
    random_nll = ranking.baseline["nll"]["value"]
    for entry in ranking.entries:  # effect = random NLL - pole NLL
        assert entry.effect == pytest.approx(random_nll - entry.details["nll"]["value"], abs=1e-9)
    assert ranking.baseline["examples"] == 6 and ranking.baseline["pool"] == 30 - DEV
    assert Ranking.load(run).entries == ranking.entries

    # The base model: same tensors, no adapter left in it, same training flags and mode.
    after = loaded.model.state_dict()
    assert set(after) == set(state) and all(torch.equal(state[k], after[k]) for k in state)
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    assert not hasattr(loaded.model, "peft_config")
    assert pilot_module.fingerprint(loaded.model, loaded.name) == fingerprint

    # Adapters are removed at the end unless kept; the pilots' records stay, so a rerun trains and evaluates nothing.
    work = run / "rank" / "pilot" / "nll"
    assert not (work / "adapters").exists()
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.json*")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished pilot was trained again")

    monkeypatch.setattr(pilot_module, "train_lora", no_training)
    again = rank(config(run, corpus, directions=(0, 1)), loaded=loaded)
    assert [(e.pole, e.effect, e.low, e.high, e.joint_low, e.joint_high) for e in again.entries] == \
        [(e.pole, e.effect, e.low, e.high, e.joint_low, e.joint_high) for e in ranking.entries]
    assert all(e.details["reused"] for e in again.entries) and again.baseline["reused"]
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.json*")} == stamps
    # Asked to keep adapters that a finished run did not keep: none is named (it named folders that did not exist).
    kept = rank(config(run, corpus, directions=(0, 1), keep_adapters=True), loaded=loaded)
    assert all(e.details["adapter"] is None for e in kept.entries) and kept.baseline["adapter"] is None


def test_a_pool_too_small_for_its_pilots_is_a_note_of_the_ranking(setup, monkeypatch):
    """It was kept in the baseline's record, which neither the CLI nor the report shows."""
    tmp, corpus, _, run, loaded = setup
    note = "the pool has only 24 examples: every pilot trains on all of them, in another order"
    monkeypatch.setattr(pilot_module, "pilot_proxy", lambda *args, **kwargs: ([], {"note": note}))
    assert note in rank(config(run, corpus), loaded=loaded).notes


def test_kept_adapters_resume_an_interrupted_evaluation(setup, monkeypatch):
    tmp, corpus, _, run, loaded = setup
    run_copy = tmp / "run-kept"
    import shutil

    shutil.copytree(run, run_copy, ignore=shutil.ignore_patterns("rank", "ranking.json"))
    ranking = rank(config(run_copy, corpus, keep_adapters=True), loaded=loaded)
    work = run_copy / "rank" / "pilot" / "nll"
    for name in ("random", "d0+", "d0-"):
        assert (work / "adapters" / name / "adapter_model.safetensors").is_file()
        assert (work / "adapters" / name / "adapter_config.json").is_file()
    assert {e.details["adapter"] for e in ranking.entries} == {str(work / "adapters" / n) for n in ("d0+", "d0-")}

    # A pilot killed during its evaluation: its adapter is loaded again, not retrained, and gives the same numbers.
    (work / "d0+" / "samples.jsonl").unlink()
    (work / "d0+" / "eval.json").unlink()
    monkeypatch.setattr(pilot_module, "train_lora", lambda *a, **k: pytest.fail("a saved adapter was trained again"))
    again = rank(config(run_copy, corpus, keep_adapters=True), loaded=loaded)
    before = {e.pole: e.effect for e in ranking.entries}
    assert {e.pole: e.effect for e in again.entries} == pytest.approx(before, abs=1e-6)
    assert not next(e for e in again.entries if e.pole == "+0").details["reused"]
    assert next(e for e in again.entries if e.pole == "-0").details["reused"]

    # Other options for the same pilot names are refused, unless --overwrite: then they are trained again.
    with pytest.raises(AutoskillError, match="holds a pilot trained on other examples or with other options; pass "
                                             "--overwrite"):
        rank(config(run_copy, corpus, keep_adapters=True, pilot_steps=3), loaded=loaded)
    monkeypatch.undo()
    redone = rank(config(run_copy, corpus, keep_adapters=True, pilot_steps=3, overwrite=True), loaded=loaded)
    assert {e.details["steps"] for e in redone.entries} == {3} and not any(e.details["reused"] for e in redone.entries)
    assert not redone.baseline["reused"]


def test_a_run_that_profiled_the_dev_set_is_refused(setup):
    tmp, corpus, model_dir, _, loaded = setup
    whole = tmp / "run-whole"
    profile(ProfileConfig(out=str(whole), corpus=CorpusConfig(str(corpus), template="{question}\n{answer}"),
                          model=ModelConfig(str(model_dir)), k=2, quiet=True))
    with pytest.raises(AutoskillError, match="the profiled corpus holds 6 of the dev set.s problems"):
        rank(config(whole, corpus), loaded=loaded)
    assert not (whole / "rank" / "pilot").exists()


def test_missing_peft_is_one_clear_line(setup, monkeypatch):
    tmp, corpus, _, run, loaded = setup
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(AutoskillError, match=r'pip install "peft==0\.21\.2"'):
        rank(config(run, corpus), loaded=loaded)


def test_training_batches_mask_prompt_and_padding():
    ids, mask, labels = collate_solutions([([5, 6, 7], [8, 9]), ([5], [10, 11, 12])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 9], [-100, 10, 11, 12, -100]]
    order = example_order(4, 10, seed=0)
    assert sorted(order[:4]) == sorted(order[4:8]) == [0, 1, 2, 3] and order == example_order(4, 10, seed=0)


def test_pilot_with_pass_at_k_generates_from_the_adapted_model(setup):
    from autoskill_fast.evaluation.generation import GenerationConfig

    tmp, corpus, _, run, loaded = setup
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ranking = rank(config(run, corpus, metric="passk", generation=GenerationConfig(n=2, max_new_tokens=4,
                                                                                      batch_size=6)), loaded=loaded)
    assert {e.pole for e in ranking.entries} == {"+0", "-0"}
    for entry in ranking.entries:
        assert entry.statistic.startswith("pass@1 difference") and entry.low <= entry.effect <= entry.high
        assert "pass@1" in entry.details
    assert "pass@1" in ranking.baseline and ranking.baseline["examples"] == 6
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())
