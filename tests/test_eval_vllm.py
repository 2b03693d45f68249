"""The eval job's vllm backend against its hf backend, and its resume after a kill.

The tests marked `vllm` run the real engine (`bash scripts/test_vllm.sh`, which creates .venv-vllm on first use;
~7-10 min on 2 loaded CPU cores, most of it vLLM's start-up, paid once per evaluation): on the default model in
fp32, greedy decoding gives the same tokens, completions and grades on both backends; sampling at temperature 1 gives
the same length, stop and correctness statistics within sampling error; and a vLLM evaluation resumed after a kill
writes the samples an uninterrupted one does.

The other tests run everywhere: a stand-in for the worker (a script given as AUTOSKILL_VLLM_PYTHON that writes
canned, seed-determined outputs) checks the plumbing: a failing worker's error, the worker's process group killed when
this process stops early, and a resume after either.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoskill_fast.config import ModelConfig
from autoskill_fast.errors import AutoskillError
from autoskill_fast.evaluation import job, vllm_backend
from autoskill_fast.evaluation.generation import GenerationConfig, prompt_text
from autoskill_fast.evaluation.job import EvalConfig, evaluate
from autoskill_fast.evaluation.problems import ProblemsConfig, load_problems
from model_fixtures import write_jsonl

Z_MAX = 4.0  # two-sided: a correct backend exceeds it with probability 6e-5 per statistic


def samples(folder) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / job.SAMPLES_JSONL).read_text().splitlines()]


def by_problem(lines: list[dict], key: str) -> dict[str, np.ndarray]:
    grouped: dict[str, list[float]] = {}
    for line in lines:
        grouped.setdefault(line["id"], []).append(float(line[key]))
    return {pid: np.array(values) for pid, values in grouped.items()}


def paired_z(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """(mean of b - mean of a) over the same problems, divided by its standard error.

    Under the hypothesis that both backends sample from the same distribution, a problem's samples from either are
    independent draws of one distribution: its variance is estimated from all of them (pooled), and the variation
    between problems cancels because both backends answer every problem. A statistic that is constant on both sides
    gives 0 when the sides agree and infinity when they do not.
    """
    diff, var = 0.0, 0.0
    for pid, x in a.items():
        y = b[pid]
        diff += y.mean() - x.mean()
        var += np.var(np.concatenate([x, y]), ddof=1) * (1 / len(x) + 1 / len(y))
    if var == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / np.sqrt(var))


# --- the real engine ---------------------------------------------------------------------------------------------

def vllm_eval(tmp, name: str, backend: str, **generation) -> EvalConfig:
    """The default model in fp32 on the first problems of the embedded GSM8K."""
    limit = generation.pop("limit")
    return EvalConfig(out=str(tmp / name), problems=ProblemsConfig(limit=limit), model=ModelConfig(dtype="float32"),
                      generation=GenerationConfig(backend=backend, **generation), quiet=True)


@pytest.fixture(scope="module")
def engine_tmp(tmp_path_factory):
    try:
        vllm_backend.vllm_python()
    except AutoskillError as e:
        pytest.skip(str(e))
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("eval-vllm")


# Greedy: the chat template, because the raw prompt's greedy continuation on this model is an immediate EOS.
GREEDY = dict(limit=6, n=1, temperature=0.0, max_new_tokens=48, batch_size=3, chat=True)
# Sampled: the seed protocol (raw prompt, temperature 1), where the first token is EOS about half the time, so the
# lengths (1 to 32) and the stop rate vary a lot from sample to sample.
SAMPLED = dict(limit=8, n=8, temperature=1.0, top_p=1.0, max_new_tokens=32, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def sampled_vllm(engine_tmp):
    config = vllm_eval(engine_tmp, "sampled-vllm", "vllm", **SAMPLED)
    evaluate(config)
    return config


@pytest.mark.vllm
def test_greedy_vllm_matches_hf_token_for_token(engine_tmp):
    hf = evaluate(vllm_eval(engine_tmp, "greedy-hf", "hf", **GREEDY))
    vl = evaluate(vllm_eval(engine_tmp, "greedy-vllm", "vllm", **GREEDY))
    a, b = samples(hf.folder), samples(vl.folder)
    assert len(a) == len(b) == GREEDY["limit"]
    assert all(line["tokens"] > 10 for line in a), "the greedy completions should be real text"
    for x, y in zip(a, b):
        assert x == y, f"problem {x['id']}: hf {x['completion']!r} != vllm {y['completion']!r}"
    assert hf.record["pass_at_k"] == vl.record["pass_at_k"]
    timings = vl.record["timings"]
    assert timings["generated_tokens"] == sum(line["tokens"] for line in b) and timings["load_s"] > 0


@pytest.mark.vllm
def test_sampling_matches_hf_within_sampling_error(engine_tmp, sampled_vllm):
    hf = samples(evaluate(vllm_eval(engine_tmp, "sampled-hf", "hf", **SAMPLED)).folder)
    vl = samples(sampled_vllm.out)
    assert len(hf) == len(vl) == SAMPLED["limit"] * SAMPLED["n"]
    for key in ("tokens", "finished", "correct"):
        z = paired_z(by_problem(hf, key), by_problem(vl, key))
        assert abs(z) < Z_MAX, f"mean {key}: vllm - hf is {z:.1f} standard errors"
    # The n samples of a problem are n draws, not one repeated (vLLM seeds them seed, seed + 1, ...).
    distinct = [len({line["completion"] for line in vl if line["id"] == pid}) for pid in by_problem(vl, "tokens")]
    assert sum(d > 1 for d in distinct) >= len(distinct) // 2, distinct

    # Each backend against the model itself: how often the first token is EOS (an empty completion) is a sum of
    # Bernoulli(q_p) draws, q_p the model's exact probability of EOS after problem p's prompt.
    from autoskill_fast.capture.models import load_model

    loaded = load_model(ModelConfig(dtype="float32", device="cpu"), causal_lm=True)
    tok = loaded.tokenizer
    q = {}
    with torch.inference_mode():
        for p in load_problems(ProblemsConfig(limit=SAMPLED["limit"])):
            ids = tok(prompt_text(p.question, tok, chat=False), return_tensors="pt")["input_ids"]
            q[p.id] = torch.softmax(loaded.model(ids).logits[0, -1].double(), -1)[tok.eos_token_id].item()
    n = SAMPLED["n"]
    mean = n * sum(q.values())
    sd = np.sqrt(n * sum(v * (1 - v) for v in q.values()))
    for name, lines in (("hf", hf), ("vllm", vl)):
        empty = sum(line["tokens"] == 1 and line["finished"] for line in lines)
        assert abs(empty - mean) < Z_MAX * sd, (f"{name}: {empty} samples stop at once; the model says "
                                                f"{mean:.1f} ± {sd:.1f}")


@pytest.mark.vllm
def test_a_vllm_eval_resumed_after_a_kill_equals_an_uninterrupted_one(engine_tmp, sampled_vllm):
    # What a kill after the first batch leaves: eval.json still running (with the timings of earlier completed calls:
    # none), the first batch's lines, and a torn line.
    out = engine_tmp / "sampled-vllm-resumed"
    out.mkdir()
    record = json.loads((Path(sampled_vllm.out) / job.EVAL_JSON).read_text())
    (out / job.EVAL_JSON).write_text(json.dumps(record | {"status": "running", "timings": {}}))
    lines = (Path(sampled_vllm.out) / job.SAMPLES_JSONL).read_text().splitlines(keepends=True)
    first = [line for line in lines if json.loads(line)["batch"] == 0]
    assert 0 < len(first) < len(lines)
    (out / job.SAMPLES_JSONL).write_text("".join(first) + lines[len(first)][:40])
    resumed = evaluate(vllm_eval(engine_tmp, "sampled-vllm-resumed", "vllm", **SAMPLED))
    regenerated = sum(json.loads(line)["tokens"] for line in lines[len(first):])
    assert resumed.record["timings"]["generated_tokens"] == regenerated
    assert samples(out) == samples(sampled_vllm.out)


# --- a stand-in worker -------------------------------------------------------------------------------------------

FAKE_WORKER = """\
import json, os, subprocess, sys, time
args = sys.argv[2:]  # sys.argv[1] is vllm_worker.py
request = json.load(open(args[args.index("--request") + 1]))
mode = os.environ.get("FAKE_VLLM_MODE", "ok")
n, eos = request["sampling"]["n"], request["sampling"]["stop_token_ids"][0]
gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
if os.environ.get("FAKE_VLLM_SEEN"):
    with open(os.environ["FAKE_VLLM_SEEN"], "a") as seen:
        seen.write(json.dumps({"gpus": gpus, "tensor_parallel": request["engine"]["tensor_parallel"],
                               "batches": [batch["batch"] for batch in request["batches"]],
                               "dtype": request["engine"]["dtype"],
                               "stops": request["sampling"]["stop_token_ids"]}) + "\\n")
with open(args[args.index("--out") + 1], "a") as out:
    def write(record):
        out.write(json.dumps(record) + "\\n")
        out.flush()
    write({"kind": "load", "load_s": 0.5, "vllm": "fake"})
    for k, batch in enumerate(request["batches"]):
        if k == 1 and mode == "fail" or mode == "fail-gpu-" + str(gpus):
            sys.exit("RuntimeError: the fake engine died")
        if k == 1 and mode == "hang":  # an engine process of its own, as vLLM has, and both wait forever
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open(os.environ["FAKE_VLLM_PIDS"] + ".tmp", "w") as f:
                f.write(f"{os.getpid()} {child.pid}")
            os.replace(os.environ["FAKE_VLLM_PIDS"] + ".tmp", os.environ["FAKE_VLLM_PIDS"])
            time.sleep(600)
        outputs = [[{"token_ids": [100 + (batch["seed"] + 31 * i + 7 * s + j) % 1000 for j in range(3)]
                     + ([eos] if s % 2 == 0 else []), "finish_reason": "stop" if s % 2 == 0 else "length"}
                    for s in range(n)] for i, prompt in enumerate(batch["prompts"])]
        write({"kind": "batch", "batch": batch["batch"], "outputs": outputs, "generate_s": 0.25,
               "generated_tokens": sum(len(o["token_ids"]) for per in outputs for o in per)})
"""


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    python = tmp_path / "fake-python"
    python.write_text(f"#!{sys.executable}\n{FAKE_WORKER}")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AUTOSKILL_VLLM_PYTHON", str(python))
    return python


def fake_eval(tmp_path, tiny_model, name: str, *, engines: int = 1, tensor_parallel: int = 1, **kw) -> EvalConfig:
    problems = write_jsonl(tmp_path / "problems.jsonl", [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(6)])
    generation = GenerationConfig(backend="vllm", n=2, max_new_tokens=8, batch_size=2, vllm_engines=engines,
                                  tensor_parallel=tensor_parallel)
    return EvalConfig(out=str(tmp_path / name), problems=ProblemsConfig(path=str(problems)),
                      model=ModelConfig(str(tiny_model("llama"))), generation=generation, quiet=True, **kw)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_failed_worker_is_reported_and_the_eval_resumes(tmp_path, tiny_model, fake_vllm, monkeypatch):
    reference = evaluate(fake_eval(tmp_path, tiny_model, "reference"))
    assert reference.record["timings"]["load_s"] == 0.5 and reference.record["counts"]["samples"] == 12
    first = samples(reference.folder)
    assert [(line["tokens"], line["finished"]) for line in first[:2]] == [(4, True), (3, False)]

    monkeypatch.setenv("FAKE_VLLM_MODE", "fail")
    config = fake_eval(tmp_path, tiny_model, "interrupted")
    with pytest.raises(AutoskillError, match=r"(?s)exit code 1.*rerun to resume.*the fake engine died"):
        evaluate(config)
    assert {line["batch"] for line in samples(config.out)} == {0}
    assert "the fake engine died" in (Path(config.out) / vllm_backend.WORKER_LOG).read_text()
    monkeypatch.setenv("FAKE_VLLM_MODE", "ok")
    resumed = evaluate(config)
    # The failed run's batch 0 (2 problems x (4 + 3) tokens) was recorded as it was appended: the whole cost, 42.
    assert resumed.record["timings"]["generated_tokens"] == reference.record["timings"]["generated_tokens"] == 42
    assert samples(config.out) == first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stopping_early_kills_the_worker_and_its_engine(tmp_path, tiny_model, fake_vllm, monkeypatch):
    reference = samples(evaluate(fake_eval(tmp_path, tiny_model, "reference")).folder)
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    monkeypatch.setenv("FAKE_VLLM_PIDS", str(pids))
    real_append = vllm_backend.append_batch

    class Killed(BaseException):  # like KeyboardInterrupt, past every `except Exception`
        pass

    def append_then_die(path, lines):  # stopped right after the first batch is on disk, the worker still running
        real_append(path, lines)
        while not pids.exists():
            time.sleep(0.05)
        raise Killed

    monkeypatch.setattr(vllm_backend, "append_batch", append_then_die)
    config = fake_eval(tmp_path, tiny_model, "killed")
    with pytest.raises(Killed):
        evaluate(config)
    worker, engine = (int(pid) for pid in pids.read_text().split())
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while (alive(worker) or alive(engine)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker) and not alive(engine)
    monkeypatch.setattr(vllm_backend, "append_batch", real_append)
    monkeypatch.setenv("FAKE_VLLM_MODE", "ok")
    evaluate(config)
    assert samples(config.out) == reference


@pytest.mark.slow  # four evaluations, each starting its grader: 11 s
def test_engines_side_by_side_write_one_engines_samples(tmp_path, tiny_model, fake_vllm, monkeypatch):
    reference = evaluate(fake_eval(tmp_path, tiny_model, "reference"))
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("FAKE_VLLM_SEEN", str(seen))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    two = evaluate(fake_eval(tmp_path, tiny_model, "two", engines=2, tensor_parallel=2))
    engines = sorted((json.loads(line) for line in seen.read_text().splitlines()), key=lambda e: e["gpus"])
    assert [{k: e[k] for k in ("gpus", "tensor_parallel", "batches")} for e in engines] == [
        {"gpus": "0,1", "tensor_parallel": 2, "batches": [0, 2]}, {"gpus": "2,3", "tensor_parallel": 2, "batches": [1]}]
    assert samples(two.folder) == samples(reference.folder)  # in batch order, whichever engine finished first
    assert two.record["timings"]["generated_tokens"] == reference.record["timings"]["generated_tokens"]
    assert two.record["key"] == reference.record["key"]  # how many engines is not part of what is evaluated

    # One engine fails: the others stop, what was appended is kept, and a rerun (here with one engine) completes it.
    seen.unlink()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,1,7")
    monkeypatch.setenv("FAKE_VLLM_MODE", "fail-gpu-1")
    config = fake_eval(tmp_path, tiny_model, "failed", engines=3)
    with pytest.raises(AutoskillError, match=r"(?s)on GPUs 1 failed with exit code 1.*the fake engine died"):
        evaluate(config)
    assert sorted(json.loads(line)["gpus"] for line in seen.read_text().splitlines()) == ["1", "5", "7"]
    assert (Path(config.out) / "vllm_worker-1.log").is_file()
    assert {line["batch"] for line in samples(config.out)} <= {0, 2}
    monkeypatch.setenv("FAKE_VLLM_MODE", "ok")
    resumed = evaluate(fake_eval(tmp_path, tiny_model, "failed"))
    assert samples(resumed.folder) == samples(reference.folder)


def test_vllm_gets_the_dtype_its_evaluation_is_keyed_by_and_the_models_stop_tokens(tmp_path, tiny_model, fake_vllm,
                                                                                     monkeypatch):
    """The key held "auto (<the checkpoint's dtype>)" while vLLM was asked for the dtype the hf rule gives (bfloat16
    where this environment sees a GPU): evaluations in two dtypes shared a key, and eval.json did not say which ran."""
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("FAKE_VLLM_SEEN", str(seen))
    folder = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(settings | {"eos_token_id": [2, 7]}))
    config = replace(fake_eval(tmp_path, tiny_model, "cpu"), model=ModelConfig(str(folder)))
    on_cpu = evaluate(config)
    asked = json.loads(seen.read_text().splitlines()[-1])
    assert asked["dtype"] == on_cpu.record["dtype"] == "float32" and asked["stops"] == [2, 7]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    on_gpu = evaluate(replace(config, out=str(tmp_path / "gpu")))
    asked = json.loads(seen.read_text().splitlines()[-1])
    assert asked["dtype"] == on_gpu.record["dtype"] == "bfloat16" and on_gpu.record["key"] != on_cpu.record["key"]
    with pytest.raises(AutoskillError, match=r"other options \(model.dtype \"float32\" now \"bfloat16\"\)"):
        evaluate(replace(config, out=str(tmp_path / "cpu")))
    # Without generation_config.json, transformers derives one from config.json, end tokens included: so does vLLM's.
    (folder / "generation_config.json").unlink()
    hf_config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(hf_config | {"eos_token_id": [2, 9]}))
    evaluate(replace(config, out=str(tmp_path / "derived")))
    assert json.loads(seen.read_text().splitlines()[-1])["stops"] == [2, 9]


def test_engine_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert vllm_backend.engine_gpus(1, 4) == [None]  # one engine: the environment as it is
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert vllm_backend.engine_gpus(4, 2) == ["0,1", "2,3", "4,5", "6,7"]
    with pytest.raises(AutoskillError, match="--vllm-engines 3 x --tensor-parallel 3 needs 9 GPUs; 8 GPU"):
        vllm_backend.engine_gpus(3, 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a CPU build of torch beside a GPU build of vLLM
    assert vllm_backend.engine_gpus(2, 1) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 6,2")
    assert vllm_backend.engine_gpus(3, 1) == ["3", "6", "2"]
    with pytest.raises(AutoskillError, match="needs 4 GPUs; CUDA_VISIBLE_DEVICES=3, 6,2"):
        vllm_backend.engine_gpus(2, 2)
    from autoskill_fast.config import ConfigError

    with pytest.raises(ConfigError, match="vllm_engines.*applies to --backend vllm"):
        GenerationConfig(vllm_engines=2)
    with pytest.raises(ConfigError, match="tensor_parallel.*must be positive"):
        GenerationConfig(backend="vllm", tensor_parallel=0)


def test_refusals(tmp_path, tiny_model, fake_vllm, monkeypatch):
    with pytest.raises(AutoskillError, match="EvalConfig.metric: nll .* use --backend hf"):
        evaluate(fake_eval(tmp_path, tiny_model, "nll", metric="nll"))
    monkeypatch.delenv("AUTOSKILL_VLLM_PYTHON")
    monkeypatch.setattr(vllm_backend, "REPO_VENV_PYTHON", tmp_path / "none" / "python")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(AutoskillError, match=r"bash scripts/vllm_env.sh.*pip install vllm"):
        vllm_backend.vllm_python()
    monkeypatch.setenv("AUTOSKILL_VLLM_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(AutoskillError, match="not an executable Python"):
        vllm_backend.vllm_python()


def test_a_rerun_of_the_vllm_steer_proxy_bakes_no_checkpoint_for_a_finished_evaluation(tmp_path, tiny_model, fake_vllm,
                                                                                        monkeypatch):
    """Each (direction, sign, alpha) is baked into a full copy of the model for vLLM, then removed. A rerun (after an
    interruption, or with another option; the run's folder spelled otherwise) reuses the finished evaluations without
    baking them again; one whose evaluation is gone, whose base model is not the one noted or whose dtype changed is
    baked again, and so is one whose checkpoint is asked to be kept."""
    from transformers import AutoModelForCausalLM

    from autoskill_fast.basis import SkillBasis
    from autoskill_fast.capture.fingerprint import fingerprint
    from autoskill_fast.capture.layout import FeatureLayout
    from autoskill_fast.decomposition.components import PrincipalComponents
    from autoskill_fast.proxies import steering as steering_module

    model_dir = tiny_model("llama")
    hidden = 48
    components = torch.nn.functional.normalize(torch.randn(2, 2 * hidden, generator=torch.Generator().manual_seed(3)),
                                               dim=1)
    basis = SkillBasis(PrincipalComponents(components, torch.tensor([2.0, 1.0], dtype=torch.float64),
                                           torch.zeros(2 * hidden, dtype=torch.float64), 50, 3.0),
                       FeatureLayout((1, 2), hidden),
                       model=fingerprint(AutoModelForCausalLM.from_pretrained(model_dir), "tiny"))
    bakes = []
    real_bake = steering_module.bake
    monkeypatch.setattr(steering_module, "bake", lambda vector, *a: bakes.append(vector.digest()) or
                        real_bake(vector, *a))
    work = tmp_path / "work"

    def run(folder=work, keep=False, **options):
        config = fake_eval(tmp_path, tiny_model, "unused")
        config = replace(config, model=replace(config.model, **options), overwrite=bool(options))
        return steering_module.steer_proxy(basis, config, folder, directions=[0], alphas=[1.0], unit="norm",
                                           loaded=None, keep_checkpoints=keep)

    first, _ = run()
    assert len(bakes) == 2 and len(first) == 2
    assert not any(path.is_dir() for path in (work / "checkpoints").iterdir())  # removed after their evaluations
    notes = sorted((work / "checkpoints").glob("*.json"))
    assert len(notes) == 2
    monkeypatch.chdir(tmp_path)
    again, _ = run(Path("work"))  # the same run, spelled otherwise
    assert len(bakes) == 2  # nothing baked again
    assert [(e.pole, e.effect, e.low, e.high, e.joint_low, e.joint_high, e.cost_s) for e in again] == \
        [(e.pole, e.effect, e.low, e.high, e.joint_low, e.joint_high, e.cost_s) for e in first]
    run(keep=True)  # checkpoints asked for: baked, though their evaluations are done, and kept
    assert len(bakes) == 4 and sum(path.is_dir() for path in (work / "checkpoints").iterdir()) == 2
    run()  # not asked for: a finished evaluation's checkpoint left over is removed, nothing baked
    assert len(bakes) == 4 and not any(path.is_dir() for path in (work / "checkpoints").iterdir())
    shutil.rmtree(work / "d0+a1norm")  # that evaluation is gone: baked and evaluated again
    note = json.loads(notes[1].read_text())
    notes[1].write_text(json.dumps(note | {"base": "another model"}))  # a base model other than the one noted
    third, _ = run()
    assert sorted(bakes[4:]) == sorted(bakes[:2])
    assert [(e.pole, e.effect) for e in third] == [(e.pole, e.effect) for e in first]
    noted = json.loads(notes[1].read_text())  # noted anew, from the checkpoint it baked
    assert {**noted, "bake_s": None} == {**note, "bake_s": None} and noted["bake_s"] > 0
    run(dtype="bfloat16")  # served in another dtype (--overwrite): baked and evaluated again
    assert len(bakes) == 8
    assert {json.loads((work / name / job.EVAL_JSON).read_text())["config"]["model"]["dtype"]
            for name in ("base", "d0+a1norm", "d0-a1norm")} == {"bfloat16"}
