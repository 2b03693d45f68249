"""The eval job: problems and splits, samples and Pass@k tables, the NLL metric, steering, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoskill_fast.config import CorpusConfig, ModelConfig
from autoskill_fast.data.corpus import iter_records
from autoskill_fast.errors import AutoskillError
from autoskill_fast.evaluation import generation as generation_mod
from autoskill_fast.evaluation.generation import GenerationConfig
from autoskill_fast.evaluation.job import EvalConfig, compare_evals, evaluate, load_eval
from autoskill_fast.evaluation.problems import ProblemsConfig, gold_answer, load_problems
from helpers import planted_grader
from model_fixtures import write_jsonl


def test_samples_keep_texts_with_characters_that_splitlines_breaks_at(tmp_path):
    from autoskill_fast.evaluation.samples import append_batch, read_samples

    odd = "a\u2028b\u2029c\x85d\re"  # JSON escapes \r; it leaves the others as they are
    first = [{"batch": 0, "text": odd}, {"batch": 0, "text": "plain"}]
    second = [{"batch": 1, "text": odd + "!"}]
    append_batch(tmp_path / "samples.jsonl", [dict(line) for line in first])
    append_batch(tmp_path / "samples.jsonl", [dict(line) for line in second])
    assert [line["text"] for line in read_samples(tmp_path / "samples.jsonl")] == [odd, "plain", odd + "!"]
    with open(tmp_path / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write('{"batch": 2, "text": "torn')  # a kill mid-write: the torn line is dropped
    assert len(read_samples(tmp_path / "samples.jsonl")) == 3


def gsm8k_like(tmp_path, n=10):
    records = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
                "answer": f"He has {i} + {i + 2} = {2 * i + 2} apples.\n#### {2 * i + 2:,}"} for i in range(n)]
    records[3]["answer"] = "The answer is \\boxed{\\frac{1}{2}}."
    return write_jsonl(tmp_path / "problems.jsonl", records)


def test_gold_answers_and_problem_errors(tmp_path):
    assert gold_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert gold_answer("the result is \\boxed{\\frac{3}{4}} indeed") == "\\frac{3}{4}"
    assert gold_answer("no final answer here") is None
    # Only thousands separators are dropped; the answer is its own line, not the rest of the text.
    assert gold_answer("x\n#### -3, 3") == "-3, 3" and gold_answer("#### (1, 2)\n") == "(1, 2)"
    assert gold_answer("#### 1,234,567") == "1234567"
    assert gold_answer("so\n#### 18\nCheck: 18 - 5 = 13") == "18"
    assert gold_answer("#### Step 1\nso the answer is \\boxed{5}") == "5"  # a heading, not an answer
    assert gold_answer("####  \n") is None
    assert gold_answer("so\r\n#### 72\r\n") == "72" and gold_answer("The answer is #### 72") == "72"
    problems = load_problems(ProblemsConfig(path=str(gsm8k_like(tmp_path))))
    assert [p.gold for p in problems[:4]] == ["2", "4", "6", "\\frac{1}{2}"] and problems[9].gold == "20"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no answer"}])
    with pytest.raises(AutoskillError, match=r"bad.jsonl:1: no gold answer in field 'answer'"):
        load_problems(ProblemsConfig(path=str(bad)))
    with pytest.raises(AutoskillError, match=r"field 'problem' is missing.*--question-field"):
        load_problems(ProblemsConfig(path=str(gsm8k_like(tmp_path)), question_field="problem"))


def test_golds_are_read_as_the_completions_final_lines_and_from_a_field_of_their_own(tmp_path):
    # A "####" line's trailing period and unit words are not part of the answer (a completion's are not either).
    assert gold_answer("so\n#### 7.") == "7" and gold_answer("so\n#### 18 dollars") == "18"
    assert gold_answer("so\n#### $1,450 per week") == "1450" and gold_answer("so \\boxed{7.}") == "7"
    assert gold_answer("so\n#### 2 x") == "2 x" and gold_answer("#### 1/2") == "1/2"  # not a number and a word
    # MATH-500 and AIME keep the bare answer apart; a number is read as its text.
    path = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "p0", "solution": "long", "answer": 70},
                                                 {"problem": "p1", "solution": "long", "answer": "\\frac{3}{4}"},
                                                 {"problem": "p2", "solution": "long", "answer": 1e-05}])
    config = ProblemsConfig(path=str(path), question_field="problem", answer_field="solution", gold_field="answer")
    assert [p.gold for p in load_problems(config)] == ["70", "\\frac{3}{4}", "0.00001"]
    with pytest.raises(AutoskillError, match=r"aime.jsonl:1: no gold answer in field 'answer' .*; if the answer is "
                                             r"in a field of its own, name it with --gold-field"):
        load_problems(ProblemsConfig(path=str(path), question_field="problem"))
    with pytest.raises(AutoskillError, match=r"aime.jsonl:1: no gold answer in field 'final' \(--gold-field\)"):
        load_problems(replace(config, gold_field="final"))
    with pytest.raises(AutoskillError, match=r"field 'answer' holds no text \(list \[1\]\)"):
        load_problems(ProblemsConfig(path=str(write_jsonl(tmp_path / "l.jsonl", [{"question": "q", "answer": [1]}]))))


def test_the_split_is_deterministic_disjoint_and_shared_with_profile_corpora(tmp_path):
    path = str(gsm8k_like(tmp_path, 40))
    dev = load_problems(ProblemsConfig(path=path, split="dev", dev_size=7, split_seed=3))
    pool = load_problems(ProblemsConfig(path=path, split="pool", dev_size=7, split_seed=3))
    assert len(dev) == 7 and len(pool) == 33 and not {p.id for p in dev} & {p.id for p in pool}
    assert dev == load_problems(ProblemsConfig(path=path, split="dev", dev_size=7, split_seed=3))
    assert {p.id for p in dev} != {p.id for p in load_problems(ProblemsConfig(path=path, split="dev", dev_size=7,
                                                                               split_seed=4))}
    # The file's order does not matter: the split is a function of the ids.
    shuffled = tmp_path / "shuffled.jsonl"
    lines = (tmp_path / "problems.jsonl").read_text().splitlines()
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    with_ids = [json.loads(line) | {"uid": f"q{i}"} for i, line in enumerate(lines)]
    a = write_jsonl(tmp_path / "a.jsonl", with_ids)
    b = write_jsonl(tmp_path / "b.jsonl", list(reversed(with_ids)))
    dev_a = {p.id for p in load_problems(ProblemsConfig(path=str(a), id_field="uid", split="dev", dev_size=5))}
    dev_b = {p.id for p in load_problems(ProblemsConfig(path=str(b), id_field="uid", split="dev", dev_size=5))}
    assert dev_a == dev_b
    pool_corpus = CorpusConfig(path, template="{question}\n{answer}", split="pool", dev_size=7, split_seed=3)
    assert [r.id for r in iter_records(pool_corpus)] == [p.id for p in pool]


def tiny_eval(tmp_path, tiny_model, name="e", **kw):
    generation = GenerationConfig(**{"n": 2, "max_new_tokens": 6, "batch_size": 3, **kw.pop("generation", {})})
    return EvalConfig(out=str(tmp_path / name), problems=ProblemsConfig(path=str(gsm8k_like(tmp_path))),
                      model=ModelConfig(str(tiny_model("llama"))), generation=generation, quiet=True, **kw)


def test_samples_and_the_pass_at_k_table(tmp_path, tiny_model, monkeypatch):
    # A grader that calls every even problem's first sample correct: the table is then known exactly.
    from autoskill_fast.evaluation import grading

    monkeypatch.setattr(grading, "Grader", planted_grader(
        lambda i, completion, gold: i == 0 and gold.isdigit() and int(gold) % 4 == 2))
    result = evaluate(tiny_eval(tmp_path, tiny_model, k=(1, 2)))
    lines = [json.loads(line) for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and {line["sample"] for line in lines} == {0, 1}
    assert all(set(line) >= {"id", "sample", "completion", "extracted", "correct", "timed_out", "tokens"} for line in lines)
    golds = [p.gold for p in load_problems(ProblemsConfig(path=str(tmp_path / "problems.jsonl")))]
    solved = np.array([g.isdigit() and int(g) % 4 == 2 for g in golds])
    record = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert record["status"] == "complete" and record["counts"]["correct"] == int(solved.sum())
    assert record["pass_at_k"]["1"]["value"] == pytest.approx(solved.mean() / 2)
    assert record["pass_at_k"]["2"]["value"] == pytest.approx(solved.mean())
    assert record["pass_at_k"]["1"]["low"] <= solved.mean() / 2 <= record["pass_at_k"]["1"]["high"]
    assert list(result.correct) == list(solved.astype(int))


def test_a_killed_eval_resumes_to_the_same_samples(tmp_path, tiny_model, monkeypatch):
    whole = evaluate(tiny_eval(tmp_path, tiny_model, name="whole"))
    original = generation_mod.HFGenerator.generate
    calls = {"n": 0}

    def dies_on_third_batch(self, prompts, seed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, prompts, seed)

    monkeypatch.setattr(generation_mod.HFGenerator, "generate", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_eval(tmp_path, tiny_model, name="resumed"))
    partial = (tmp_path / "resumed" / "samples.jsonl").read_text().splitlines()
    assert len(partial) == 12  # two whole batches of 3 problems x 2 samples
    with open(tmp_path / "resumed" / "samples.jsonl", "a") as f:
        f.write('{"batch": 2, "id": "6", "sam')  # a line torn by the kill
    monkeypatch.setattr(generation_mod.HFGenerator, "generate", original)
    resumed = evaluate(tiny_eval(tmp_path, tiny_model, name="resumed"))
    assert (tmp_path / "resumed" / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    assert resumed.record["pass_at_k"] == whole.record["pass_at_k"]
    # The killed run's two batches were recorded as they were appended: the resumed one reports the whole cost.
    assert resumed.record["timings"]["generated_tokens"] == whole.record["timings"]["generated_tokens"]
    # Calling a complete evaluation again generates nothing and keeps its cost as it was (what `rank` reports).
    monkeypatch.setattr(generation_mod.HFGenerator, "generate", lambda *a, **k: pytest.fail("generated again"))
    again = evaluate(tiny_eval(tmp_path, tiny_model, name="whole"))
    assert again.record["timings"] == whole.record["timings"] and whole.record["timings"]["generated_tokens"] > 0
    assert again.record["pass_at_k"] == whole.record["pass_at_k"]
    # Another spelling of the same problem file and model folder is the same evaluation.
    config = tiny_eval(tmp_path, tiny_model, name="whole")
    respelled = replace(config, problems=replace(config.problems, path=os.path.relpath(config.problems.path)),
                        model=replace(config.model, model=f"{config.model.model}/."))
    assert evaluate(respelled).record["pass_at_k"] == whole.record["pass_at_k"]
    # A kill after the ranks' parts were joined and before they were deleted leaves each line twice: kept once.
    twice = tmp_path / "twice"
    shutil.copytree(tmp_path / "whole", twice)
    (twice / "samples.jsonl.rank1").write_text((twice / "samples.jsonl").read_text())
    (twice / "eval.json").write_text(json.dumps(json.loads((twice / "eval.json").read_text()) | {"status": "running"}))
    assert evaluate(tiny_eval(tmp_path, tiny_model, name="twice")).record["pass_at_k"] == whole.record["pass_at_k"]
    assert (twice / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    monkeypatch.setattr(generation_mod.HFGenerator, "generate", original)
    with pytest.raises(AutoskillError, match=r"holds an evaluation with other options \(generation.seed 0 now 1\); "
                                             r"pass --overwrite"):
        evaluate(tiny_eval(tmp_path, tiny_model, name="resumed", generation={"seed": 1}))
    with pytest.raises(AutoskillError, match=r"other options \(grade_timeout 5.0 now 9.0\)"):
        evaluate(tiny_eval(tmp_path, tiny_model, name="resumed", grade_timeout=9.0))

    # Samples left without their eval.json (or by another evaluation's ranks) are not taken for this one's, nor
    # removed unless asked.
    stray = tmp_path / "stray"
    shutil.copytree(tmp_path / "whole", stray)
    (stray / "eval.json").unlink()
    (stray / "samples.jsonl.rank1").write_text((stray / "samples.jsonl").read_text())
    with pytest.raises(AutoskillError, match="holds samples.jsonl but no eval.json"):
        evaluate(tiny_eval(tmp_path, tiny_model, name="stray"))
    assert (stray / "samples.jsonl.rank1").exists()
    evaluate(tiny_eval(tmp_path, tiny_model, name="stray", overwrite=True))
    assert (stray / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    assert not (stray / "samples.jsonl.rank1").exists()


@torch.no_grad()
def test_nll_equals_teacher_forcing_by_hand_and_steering_changes_it(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoskill_fast.evaluation.generation import prompt_text

    config = tiny_eval(tmp_path, tiny_model, metric="nll")
    result = evaluate(config)
    model_dir = tiny_model("llama")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    expected = []
    for problem in load_problems(config.problems):
        prompt = tok(prompt_text(problem.question, tok, chat=False))["input_ids"]
        solution = tok("\n" + problem.solution.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + solution])
        logprobs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        picked = logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt) - 1:]
        expected.append(float(-picked.mean()))
    np.testing.assert_allclose(result.nll, expected, rtol=1e-4)
    assert result.record["nll"]["low"] <= result.record["nll"]["value"] <= result.record["nll"]["high"]

    # A steering vector (by hooks) moves every problem's NLL; the paired comparison sees it.
    from autoskill_fast.capture.fingerprint import fingerprint
    from autoskill_fast.steering import SteeringVector

    fp = fingerprint(model, "tiny")
    vector = SteeringVector({1: torch.randn(48, generator=torch.Generator().manual_seed(0)) * 3.0}, fp)
    vector.save(tmp_path / "vector")
    steered = evaluate(replace(config, out=str(tmp_path / "steered"), steering=str(tmp_path / "vector"),
                               baseline=str(tmp_path / "e")))
    assert not np.allclose(steered.nll, result.nll)
    diff = compare_evals(load_eval(tmp_path / "e"), steered)
    assert diff.value == pytest.approx(float(np.mean(steered.nll - result.nll)))
    assert steered.record["against_baseline"]["nll"]["value"] == pytest.approx(diff.value)

    # NLL samples nothing: other sampling options are the same evaluation (resumed as finished, nothing redone).
    same = evaluate(replace(config, generation=replace(config.generation, seed=5, max_new_tokens=99, n=4)))
    assert np.array_equal(same.nll, result.nll) and same.record["timings"] == result.record["timings"]
    # The key holds the dtype the model runs in: --dtype auto is float32 on a CPU; bfloat16 is another evaluation.
    as_fp32 = evaluate(replace(config, model=replace(config.model, dtype="float32")))
    assert as_fp32.record["timings"] == result.record["timings"]
    with pytest.raises(AutoskillError, match="holds an evaluation with other options"):
        evaluate(replace(config, model=replace(config.model, dtype="bfloat16")))
    from autoskill_fast.evaluation import job as job_mod

    with monkeypatch.context() as patched:  # --dtype auto where it means bfloat16 (a GPU): another evaluation
        patched.setattr(job_mod, "resolve_dtype", lambda dtype, device: torch.bfloat16)
        with pytest.raises(AutoskillError, match="holds an evaluation with other options"):
            evaluate(config)
    # Problems are paired by id: an evaluation of another file is refused as a baseline, before anything is scored.
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": f"q{i}", "answer": "#### 1"} for i in range(10)])
    with pytest.raises(AutoskillError, match="--baseline .* and .* evaluate different problem files"):
        evaluate(replace(config, out=str(tmp_path / "other"), problems=ProblemsConfig(path=str(other)),
                         baseline=str(tmp_path / "e")))
    assert not (tmp_path / "other" / "samples.jsonl").exists()

    # The same folder and vector path holding another vector (a refit wrote it there) is another evaluation.
    (vector * 2.0).save(tmp_path / "vector")
    with pytest.raises(AutoskillError, match="holds an evaluation with other options"):
        evaluate(replace(config, out=str(tmp_path / "steered"), steering=str(tmp_path / "vector")))


def test_eval_does_not_replace_samples_it_did_not_write(tmp_path, tiny_model):
    """A samples.jsonl without its eval.json (eval writes the record first) is not this tool's: it was replaced
    without a word."""
    config = tiny_eval(tmp_path, tiny_model, metric="nll")
    folder = Path(config.out)
    folder.mkdir()
    (folder / "samples.jsonl").write_text('{"my": "data"}\n')
    with pytest.raises(AutoskillError, match="holds samples.jsonl but no eval.json.*pass --overwrite"):
        evaluate(config)
    assert (folder / "samples.jsonl").read_text() == '{"my": "data"}\n'
    result = evaluate(replace(config, overwrite=True))
    assert len(result.nll) == 10 and '"my"' not in (folder / "samples.jsonl").read_text()


def test_eval_config_errors():
    with pytest.raises(AutoskillError, match=r"EvalConfig.k: Pass@8 needs at least 8 samples"):
        EvalConfig(out="x", generation=GenerationConfig(n=4), k=(1, 8))
    with pytest.raises(AutoskillError, match="GenerationConfig.temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(AutoskillError, match="bake it"):
        EvalConfig(out="x", steering="v", generation=GenerationConfig(backend="vllm"))


def test_greedy_with_several_samples_repeats_the_one_answer(tmp_path, tiny_model):
    result = evaluate(tiny_eval(tmp_path, tiny_model, generation={"n": 3, "temperature": 0.0}, k=(1, 3)))
    lines = [json.loads(line) for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    by_problem = {}
    for line in lines:
        by_problem.setdefault(line["id"], []).append(line["completion"])
    assert len(by_problem) == 10 and all(len(set(c)) == 1 and len(c) == 3 for c in by_problem.values())
    assert result.record["pass_at_k"]["1"]["value"] == result.record["pass_at_k"]["3"]["value"]


def test_sampling_options_are_ours_alone_and_the_models_end_tokens_stop_a_sample(tmp_path, tiny_model):
    """A model's generation_config.json may hold sampling defaults (a repetition penalty): transformers applied them
    and vLLM did not, so the two backends sampled from different distributions. Its end tokens are kept (both
    backends stop at them, as vLLM does by default)."""
    from autoskill_fast.capture.models import load_model
    from autoskill_fast.evaluation.generation import HFGenerator, model_generation_config, stop_token_ids

    greedy = {"n": 1, "temperature": 0.0, "max_new_tokens": 24}
    few = ProblemsConfig(path=str(gsm8k_like(tmp_path)), limit=4)
    plain = evaluate(replace(tiny_eval(tmp_path, tiny_model, name="plain", generation=greedy), problems=few))
    folder = tmp_path / "with-defaults"
    shutil.copytree(tiny_model("llama"), folder)
    defaults = json.loads((folder / "generation_config.json").read_text())
    defaults.update(repetition_penalty=3.0, no_repeat_ngram_size=1)  # no token twice
    (folder / "generation_config.json").write_text(json.dumps(defaults))
    config = tiny_eval(tmp_path, tiny_model, name="defaults", generation=greedy)
    same = evaluate(replace(config, model=ModelConfig(str(folder)), problems=few))
    texts = [[json.loads(line)["completion"] for line in (Path(r.folder) / "samples.jsonl").read_text().splitlines()]
             for r in (plain, same)]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1

    # A token that greedy decoding emits fourth becomes an end token: the sample ends there, finished.
    loaded = load_model(ModelConfig(str(folder)), causal_lm=True)
    generator = HFGenerator(loaded.model, loaded.tokenizer, GenerationConfig(**greedy))
    prompt = ["What is 2 + 2?"]
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    row = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=2, eos_token_id=2,
                                repetition_penalty=1.0, no_repeat_ngram_size=0)[0, ids.shape[1]:].tolist()
    token = next(t for i, t in enumerate(row) if i >= 3 and t not in row[:i] and t != 2)
    cut = row.index(token) + 1
    assert not generator.generate(prompt, 0)[0][0].finished
    defaults["eos_token_id"] = [2, token]
    (folder / "generation_config.json").write_text(json.dumps(defaults))
    loaded = load_model(ModelConfig(str(folder)), causal_lm=True)
    assert stop_token_ids(loaded.tokenizer, loaded.model.generation_config) == [2, token]
    assert stop_token_ids(loaded.tokenizer, model_generation_config(folder)) == [2, token]  # what vLLM stops at
    stopped = HFGenerator(loaded.model, loaded.tokenizer, GenerationConfig(**greedy)).generate(prompt, 0)[0][0]
    assert stopped.finished and stopped.tokens == cut
    assert stopped.text == loaded.tokenizer.decode(row[:cut], skip_special_tokens=True)
    # The stops are part of what an evaluation is: the finished one is not taken for this one's.
    with pytest.raises(AutoskillError, match=rf"other options \(stops \[2\] now \[2, {token}\]\)"):
        evaluate(replace(config, model=ModelConfig(str(folder)), problems=few))


def test_a_line_profile_skipped_is_left_out_of_a_problem_set_with_the_same_split(tmp_path):
    """`profile --on-bad-example skip` keeps a malformed line's row; the dev set and the problems were read without
    it, and stopped: "fix or remove the line", which made the file another one that no run of it matched."""
    lines = [json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(12)]
    lines[10] = '{"question": "cut off'
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    config = ProblemsConfig(path=str(tmp_path / "p.jsonl"), dev_size=3, split_seed=0)
    pool = CorpusConfig(str(tmp_path / "p.jsonl"), split="pool", dev_size=3, split_seed=0)
    profiled = {r.id for r in iter_records(pool, unreadable=True)}  # what `profile --split pool` reads
    assert config.dev_ids().isdisjoint(profiled) and len(config.dev_ids() | profiled) == 12
    with pytest.warns(UserWarning, match=r"1 line\(s\) of .*p.jsonl cannot be read as problems and are left out: "
                                          r".*p.jsonl:11 \(malformed JSON"):
        everything = load_problems(config)
    assert [p.id for p in everything] == [str(i) for i in range(12) if i != 10]


def test_a_baseline_sampled_by_an_earlier_protocol_is_refused(tmp_path, tiny_model):
    passk = evaluate(tiny_eval(tmp_path, tiny_model, name="passk", generation={"n": 1, "max_new_tokens": 2}))
    record = json.loads((passk.folder / "eval.json").read_text())
    record["key_fields"]["protocol"] = 1
    (passk.folder / "eval.json").write_text(json.dumps(record))
    with pytest.raises(AutoskillError, match="--baseline .*passk: sampled by an earlier version"):
        evaluate(tiny_eval(tmp_path, tiny_model, name="again", generation={"n": 1, "max_new_tokens": 2},
                           baseline=str(passk.folder)))
