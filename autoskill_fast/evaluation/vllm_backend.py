"""The `eval` job's vllm backend: the same prompts, batches and seeds as the hf backend, sampled by vLLM's offline
engine in a worker process (vllm_worker.py), graded and appended batch by batch as the worker writes them.

The worker runs under whichever Python has vLLM: `$AUTOSKILL_VLLM_PYTHON`, else the repository's `.venv-vllm`
(`bash scripts/vllm_env.sh`: the CPU build, which needs transformers<5.20 and so lives apart), else this Python when it
has vLLM (`pip install vllm` on a GPU node). Prompts are tokenized here, with the model's own tokenizer, so both
backends feed the model the same token ids; completions are decoded here too. The model's dtype is resolved as for
the hf backend (auto: float32 on CPU, bfloat16 on GPU); --device is not passed on: vLLM runs on its build's device
(CUDA_VISIBLE_DEVICES chooses the GPU).

Several GPUs: `--tensor-parallel T` spreads each engine's model over T GPUs (vLLM's tensor_parallel_size), and
`--vllm-engines E` runs E engines side by side, engine e on the e-th group of T visible GPUs (its own
CUDA_VISIBLE_DEVICES), batch k of those left dealt to engine k % E. Each batch's samples depend only on its seeds, so
they are the ones one engine gives; batches are graded and appended as they arrive, and samples.jsonl is put back in
batch order at the end. A failing engine stops the others at once; the batches already appended are kept.

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..capture.models import resolve_device, resolve_dtype, resolve_model_path
from ..errors import AutoskillError
from ..progress import Progress
from .generation import batch_seed, completion_of, model_generation_config, prompt_text, stop_token_ids
from .problems import Problem
from .samples import append_batch, batches_of, join_in_batch_order

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


def engine_gpus(engines: int, tensor_parallel: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each engine (None: leave the environment as it is, for one engine): consecutive groups
    of `tensor_parallel` from the visible GPUs (CUDA_VISIBLE_DEVICES if set, else every GPU torch sees, else 0, 1, ...
    unchecked: a CPU build of torch here does not see the GPUs of the vLLM environment)."""
    if engines == 1:
        return [None]
    needed = engines * tensor_parallel
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        visible = [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
        source = f"CUDA_VISIBLE_DEVICES={listed}"
    else:
        import torch

        count = torch.cuda.device_count()
        visible = [str(i) for i in range(count if count else needed)]
        source = f"{count} GPU(s) visible"
    if len(visible) < needed:
        raise AutoskillError(f"--vllm-engines {engines} x --tensor-parallel {tensor_parallel} needs {needed} GPUs; "
                             f"{source}: use fewer engines")
    return [",".join(visible[e * tensor_parallel:(e + 1) * tensor_parallel]) for e in range(engines)]


def run_vllm(config, problems: list[Problem], done: set[str], samples_path: Path,
             batch_done: Callable[[dict[str, Any]], None] = lambda throughput: None) -> dict[str, Any]:
    """Sample, grade and append to `samples_path` every batch of an `EvalConfig`'s evaluation not yet complete; return
    the throughput (generated tokens, generate seconds, tokens/s, engine load seconds), which `batch_done` is also
    given after each batch appended."""
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
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
    # Every problem is tokenized, not only those left, so that max_model_len (the engine's shape) does not depend on
    # where a run was resumed.
    texts = [prompt_text(p.question, tokenizer, chat=gen.chat) for p in problems]
    prompts = [tokenizer(text, add_special_tokens=not gen.chat)["input_ids"] for text in texts]
    longest = max(range(len(problems)), key=lambda i: len(prompts[i]))
    max_model_len = len(prompts[longest]) + gen.max_new_tokens
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
    context = getattr(hf_config, "max_position_embeddings", None)
    if context is not None and max_model_len > context:
        raise AutoskillError(f"problem {problems[longest].id}: its prompt ({len(prompts[longest])} tokens) plus "
                             f"--max-new-tokens {gen.max_new_tokens} exceeds the model's context of {context} tokens; "
                             "lower --max-new-tokens")
    # as the hf backend resolves --dtype (job.key_dtype: the evaluation's key holds it)
    dtype = str(resolve_dtype(config.model.dtype, resolve_device(config.model.device))).removeprefix("torch.")
    gpus = engine_gpus(min(gen.vllm_engines, len(todo)), gen.tensor_parallel)
    engine = {"model": str(path), "dtype": dtype, "max_model_len": max_model_len,
              "enforce_eager": True, "seed": gen.seed, "trust_remote_code": remote,
              "tensor_parallel": gen.tensor_parallel}
    stops = stop_token_ids(tokenizer, model_generation_config(path, trust_remote_code=remote))
    sampling = {"n": gen.n, "temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_new_tokens,
                "stop_token_ids": stops}
    from .grading import Grader

    bar = Progress(disable=config.quiet, desc="eval", initial_examples=len(done))
    received, load_s, generate_s = [], [0.0] * len(gpus), [0.0] * len(gpus)
    with tempfile.TemporaryDirectory(prefix="autoskill-vllm-") as tmp, Grader(timeout=config.grade_timeout) as grader, \
            ExitStack() as running:
        workers = []
        for e, visible in enumerate(gpus):
            folder = Path(tmp) / f"engine-{e}"
            folder.mkdir()
            mine = todo[e::len(gpus)]
            request = {"engine": engine, "sampling": sampling,
                       "batches": [{"batch": b, "seed": batch_seed(gen.seed, b),
                                    "prompts": prompts[b * gen.batch_size:(b + 1) * gen.batch_size]} for b in mine]}
            (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
            log = samples_path.parent / (WORKER_LOG if len(gpus) == 1 else f"vllm_worker-{e}.log")
            workers.append(running.enter_context(_Worker(python, folder, log, gpus=visible)))
        for e, record in _records_of(workers):
            if record["kind"] == "load":
                load_s[e] = record["load_s"]
                continue
            b = record["batch"]
            append_batch(samples_path, _graded_lines(b, batches[b], record["outputs"], tokenizer, stops, grader))
            received.append(b)
            throughput["generated_tokens"] += record["generated_tokens"]
            generate_s[e] += record["generate_s"]
            _side_by_side(throughput, load_s, generate_s)
            batch_done(throughput)
            bar.update(len(batches[b]), record["generated_tokens"])
    bar.close()
    if sorted(received) != todo:
        raise AutoskillError(f"the vLLM worker ({python}) exited without generating batches "
                             f"{sorted(set(todo) - set(received))}; rerun to resume")
    join_in_batch_order(samples_path)  # engines side by side, or an earlier run's, may have appended out of order
    return throughput


def _side_by_side(throughput: dict[str, Any], load_s: list[float], generate_s: list[float]) -> None:
    """The engines ran side by side: their wall time is the slowest one's."""
    throughput["load_s"], throughput["generate_s"] = max(load_s), max(generate_s)
    throughput["tokens_per_s"] = throughput["generated_tokens"] / max(throughput["generate_s"], 1e-9)


def _records_of(workers: list["_Worker"]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(engine, record) for each line any worker writes, as soon as it is whole; a worker that failed is raised at
    once (leaving the `with` blocks then stops the others)."""
    running = dict(enumerate(workers))
    while running:
        progressed = False
        for e, worker in list(running.items()):
            exited = worker.process.poll() is not None  # checked before reading, so no last line is missed
            for record in worker.whole_lines():
                progressed = True
                yield e, record
            if exited:
                del running[e]
                worker.raise_if_failed()
        if running and not progressed:
            time.sleep(POLL_S)


def _graded_lines(b: int, batch: list[Problem], outputs: list[list[dict[str, Any]]], tokenizer, stops: list[int],
                  grader) -> list[dict[str, Any]]:
    """samples.jsonl lines of one batch, as the hf backend writes them."""
    lines = []
    for problem, samples_of in zip(batch, outputs):
        completions = [completion_of(o["token_ids"], stops, tokenizer) for o in samples_of]
        verdicts = grader.grade_many([(c.text, problem.gold) for c in completions])
        for i, (c, v) in enumerate(zip(completions, verdicts)):
            lines.append({"batch": b, "id": problem.id, "sample": i, "completion": c.text, "extracted": v.extracted,
                          "gold": problem.gold, "correct": v.correct, "timed_out": v.timed_out, "tokens": c.tokens,
                          "finished": c.finished})
    return lines


class _Worker:
    """The worker process on tmp/request.json, in its own process group (vLLM starts engine processes of its own),
    killed with them on leaving the `with` block if still running: after an error here, or a kill Python sees.
    `gpus`: its CUDA_VISIBLE_DEVICES (None: this process's own)."""

    def __init__(self, python: str, tmp: Path, log_path: Path, *, gpus: str | None = None):
        self.python, self.tmp, self.log_path, self.gpus = python, tmp, log_path, gpus
        self.out_path, self.stdout_path, self.stderr_path = tmp / "out.jsonl", tmp / "stdout.log", tmp / "stderr.log"
        self.process: subprocess.Popen | None = None
        self._out = None
        self._pending = ""

    def __enter__(self) -> _Worker:
        self.out_path.touch()
        env = worker_env()
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus
            env.pop("VLLM_PORT", None)  # engines side by side would all take it: each picks a free port
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [self.python, str(WORKER), "--request", str(self.tmp / "request.json"), "--out", str(self.out_path)],
                stdout=stdout, stderr=stderr, env=env, start_new_session=True)
        self._out = open(self.out_path, encoding="utf-8")
        return self

    def __exit__(self, *exc_info) -> None:
        self._out.close()
        try:  # also when the worker exited: engine processes it started (tensor parallel) may still hold GPUs
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def whole_lines(self) -> list[dict[str, Any]]:
        """The records written since the last call, up to the last whole line."""
        self._pending += self._out.read()
        *whole, self._pending = self._pending.split("\n")
        return [json.loads(line) for line in whole]

    def raise_if_failed(self) -> None:
        """After the process exited: an error with its log when it failed."""
        if self.process.returncode == 0:
            return
        shutil.copyfile(self.stderr_path, self.log_path)
        with open(self.log_path, "ab") as log:
            log.write(b"\n--- stdout ---\n" + self.stdout_path.read_bytes())
        tail = [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        where = "" if self.gpus is None else f" on GPUs {self.gpus}"
        raise AutoskillError(f"the vLLM worker ({self.python}){where} failed with exit code {self.process.returncode}; "
                             "the batches it finished are saved: rerun to resume. Its log: "
                             f"{self.log_path}. The last lines of its stderr:\n" + "\n".join(tail[-STDERR_LINES:]))
