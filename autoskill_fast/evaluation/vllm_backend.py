"""The `eval` job's vllm backend: the same prompts, batches and seeds as the hf backend, sampled by vLLM's offline
engine in a worker process (vllm_worker.py), graded and appended batch by batch as the worker writes them.

The worker runs under whichever Python has vLLM: `$AUTOSKILL_VLLM_PYTHON`, else the repository's `.venv-vllm`
(`bash scripts/vllm_env.sh`: the CPU build, which needs transformers<5.20 and so lives apart), else this Python when it
has vLLM (`pip install vllm` on a GPU node). Prompts are tokenized here, with the model's own tokenizer, so both
backends feed the model the same token ids; completions are decoded here too. The model's dtype is resolved as for
the hf backend (auto: float32 on CPU, bfloat16 on GPU); --device is not passed on: vLLM runs on its build's device
(CUDA_VISIBLE_DEVICES chooses the GPU).

`--metric nll` is refused: it scores gold solutions with a forward pass, which the hf backend does (vLLM only
samples here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..capture.models import resolve_device, resolve_dtype, resolve_model_path
from ..errors import AutoskillError
from ..progress import Progress
from .generation import Completion, batch_seed, prompt_text
from .problems import Problem
from .samples import append_batch, batches_of

WORKER = Path(__file__).with_name("vllm_worker.py")
REPO_VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
WORKER_LOG = "vllm_worker.log"  # written to the output folder when the worker fails
POLL_S = 0.2
STDERR_LINES = 15


def vllm_python() -> str:
    """The Python that runs the worker (see the module docstring)."""
    chosen = os.environ.get("AUTOSKILL_VLLM_PYTHON")
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise AutoskillError(f"AUTOSKILL_VLLM_PYTHON={chosen}: not an executable Python; point it at the python "
                                 "of an environment with vLLM, or unset it")
        return chosen
    if REPO_VENV_PYTHON.is_file():
        return str(REPO_VENV_PYTHON)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise AutoskillError("--backend vllm needs vLLM, which is not installed: run `bash scripts/vllm_env.sh` (CPU, its "
                         "own .venv-vllm), or `pip install vllm` on a GPU node, or set AUTOSKILL_VLLM_PYTHON to a "
                         "python that has it")


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # 1 GiB of KV cache holds ~20k tokens of the default model in fp32; raise it for longer or wider batches.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # On CPU, vLLM binds its model worker's OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND, default auto: one per
    # physical core, less one it reserves for its scheduler); its other processes need only one thread each.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env


def run_vllm(config, problems: list[Problem], done: set[str], samples_path: Path) -> dict[str, Any]:
    """Sample, grade and append to `samples_path` every batch of an `EvalConfig`'s evaluation not yet complete; return
    the throughput (generated tokens, generate seconds, tokens/s, engine load seconds)."""
    if config.metric == "nll":
        raise AutoskillError("--metric nll scores the gold solutions with transformers; run it with --backend hf "
                             "(the vllm backend only samples)")
    from transformers import AutoConfig, AutoTokenizer

    gen = config.generation
    throughput = {"generated_tokens": 0, "generate_s": 0.0, "tokens_per_s": 0.0, "load_s": 0.0}
    batches = batches_of(problems, gen.batch_size)
    todo = [b for b, batch in enumerate(batches) if not all(p.id in done for p in batch)]
    if not todo:
        return throughput
    python = vllm_python()
    path, _ = resolve_model_path(config.model.model)
    remote = config.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    # Every problem is tokenized, not only those left, so that max_model_len (the engine's shape) does not depend on
    # where a run was resumed.
    texts = [prompt_text(p.question, tokenizer, chat=gen.chat) for p in problems]
    prompts = [tokenizer(text, add_special_tokens=not gen.chat)["input_ids"] for text in texts]
    longest = max(range(len(problems)), key=lambda i: len(prompts[i]))
    max_model_len = len(prompts[longest]) + gen.max_new_tokens
    context = getattr(AutoConfig.from_pretrained(path, trust_remote_code=remote), "max_position_embeddings", None)
    if context is not None and max_model_len > context:
        raise AutoskillError(f"problem {problems[longest].id}: its prompt ({len(prompts[longest])} tokens) plus "
                             f"--max-new-tokens {gen.max_new_tokens} exceeds the model's context of {context} tokens; "
                             "lower --max-new-tokens")
    dtype = resolve_dtype(config.model.dtype, resolve_device(config.model.device))
    request = {
        "engine": {"model": str(path), "dtype": str(dtype).removeprefix("torch."), "max_model_len": max_model_len,
                   "enforce_eager": True, "seed": gen.seed, "trust_remote_code": remote},
        "sampling": {"n": gen.n, "temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_new_tokens,
                     "eos_token_id": tokenizer.eos_token_id},
        "batches": [{"batch": b, "seed": batch_seed(gen.seed, b),
                     "prompts": prompts[b * gen.batch_size:(b + 1) * gen.batch_size]} for b in todo],
    }
    from .grading import Grader

    bar = Progress(disable=config.quiet, desc="eval", initial_examples=len(done))
    received = []
    with tempfile.TemporaryDirectory(prefix="autoskill-vllm-") as tmp, Grader(timeout=config.grade_timeout) as grader:
        tmp = Path(tmp)
        (tmp / "request.json").write_text(json.dumps(request), encoding="utf-8")
        with _Worker(python, tmp, samples_path.parent / WORKER_LOG) as worker:
            for record in worker.records():
                if record["kind"] == "load":
                    throughput["load_s"] = record["load_s"]
                    continue
                b = record["batch"]
                append_batch(samples_path, _graded_lines(b, batches[b], record["outputs"], tokenizer, grader))
                received.append(b)
                throughput["generated_tokens"] += record["generated_tokens"]
                throughput["generate_s"] += record["generate_s"]
                bar.update(len(batches[b]), record["generated_tokens"])
    bar.close()
    if received != todo:
        raise AutoskillError(f"the vLLM worker ({python}) exited without generating batches "
                             f"{sorted(set(todo) - set(received))}; rerun to resume")
    throughput["tokens_per_s"] = throughput["generated_tokens"] / max(throughput["generate_s"], 1e-9)
    return throughput


def _graded_lines(b: int, batch: list[Problem], outputs: list[list[dict[str, Any]]], tokenizer,
                  grader) -> list[dict[str, Any]]:
    """samples.jsonl lines of one batch, as the hf backend writes them."""
    lines = []
    for problem, samples_of in zip(batch, outputs):
        completions = [_completion(o["token_ids"], tokenizer) for o in samples_of]
        verdicts = grader.grade_many([(c.text, problem.gold) for c in completions])
        for i, (c, v) in enumerate(zip(completions, verdicts)):
            lines.append({"batch": b, "id": problem.id, "sample": i, "completion": c.text, "extracted": v.extracted,
                          "gold": problem.gold, "correct": v.correct, "timed_out": v.timed_out, "tokens": c.tokens,
                          "finished": c.finished})
    return lines


def _completion(token_ids: list[int], tokenizer) -> Completion:
    """As the hf backend counts and decodes a sample: its tokens up to and including EOS."""
    eos = tokenizer.eos_token_id
    finished = eos in token_ids
    used = token_ids[:token_ids.index(eos) + 1] if finished else token_ids
    return Completion(tokenizer.decode(used, skip_special_tokens=True), len(used), finished)


class _Worker:
    """The worker process on tmp/request.json, in its own process group (vLLM starts engine processes of its own),
    killed with them on leaving the `with` block if still running: after an error here, or a kill Python sees."""

    def __init__(self, python: str, tmp: Path, log_path: Path):
        self.python, self.tmp, self.log_path = python, tmp, log_path
        self.out_path, self.stdout_path, self.stderr_path = tmp / "out.jsonl", tmp / "stdout.log", tmp / "stderr.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> _Worker:
        self.out_path.touch()
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [self.python, str(WORKER), "--request", str(self.tmp / "request.json"), "--out", str(self.out_path)],
                stdout=stdout, stderr=stderr, env=worker_env(), start_new_session=True)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def records(self) -> Iterator[dict[str, Any]]:
        """Each line of out.jsonl as soon as it is whole; then raise if the worker failed."""
        with open(self.out_path, encoding="utf-8") as out:
            pending = ""
            while True:
                exited = self.process.poll() is not None  # checked before reading, so no last line is missed
                pending += out.read()
                *whole, pending = pending.split("\n")
                for line in whole:
                    yield json.loads(line)
                if exited:
                    break
                if not whole:
                    time.sleep(POLL_S)
        if self.process.returncode != 0:
            shutil.copyfile(self.stderr_path, self.log_path)
            with open(self.log_path, "ab") as log:
                log.write(b"\n--- stdout ---\n" + self.stdout_path.read_bytes())
            tail = [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
            raise AutoskillError(f"the vLLM worker ({self.python}) failed with exit code {self.process.returncode}; "
                                 "the batches it finished are saved: rerun to resume. Its log: "
                                 f"{self.log_path}. The last lines of its stderr:\n" + "\n".join(tail[-STDERR_LINES:]))
