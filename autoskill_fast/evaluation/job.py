"""The `eval` job: Pass@k with verified answers (or the gold-solution NLL) of a model on a problem set.

    autoskill-fast eval --out evals/base --n 8 --k 1,8 --limit 100

The output folder holds `samples.jsonl` (one line per sample: id, sample index, completion, extracted answer,
correct, timed out, tokens; or per problem with `--metric nll`: id, nll, tokens) and `eval.json` (the config, the
model's fingerprint, the problems evaluated, the Pass@k table with 95% intervals over problems (`mean_interval`),
counts, grader timeouts, tokens/s). Both are written atomically; after a kill, rerunning the same command resumes: the
problems are cut into fixed batches, each batch's samples are appended once it is graded, and finished batches are
never generated again (an unfinished one is generated again exactly, its randomness being fixed per batch).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..artifacts import load_json, save_json
from ..capture.fingerprint import fingerprint_folder, model_identity
from ..capture.models import LoadedModel, load_model, resolve_device, resolve_dtype, resolve_model_path
from ..config import ConfigError, ModelConfig, check_out, cli, number_list
from ..data.corpus import content_identity
from ..errors import AutoskillError
from ..jobs.world import World, current_world
from ..progress import Progress
from .generation import (GenerationConfig, HFGenerator, batch_seed, model_generation_config, prompt_text,
                         stop_token_ids)
from .passk import Estimate, mean_interval, pass_at_k, pass_at_k_interval
from .problems import Problem, ProblemsConfig, load_problems, split_record
from .samples import SAMPLES_JSONL, append_batch, batches_of, join_in_batch_order, read_samples, rewrite_samples

EVAL_JSON = "eval.json"
Metric = Literal["passk", "nll"]


@dataclass
class EvalConfig:
    """The eval job: a model on a problem set, sampled, graded and summarized."""

    out: str
    """The output folder (rerun the same command to resume)."""
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    k: tuple[int, ...] = field(default=(1,), metadata=cli(parse=number_list(int, "the k values", "1,8"),
                                                            metavar="K1,K2", shown="1"))
    """The k of Pass@k, each at most n."""
    metric: Metric = "passk"
    """passk: sample, grade and count; nll: the mean negative log-likelihood of the gold solutions (no sampling)."""
    steering: str | None = None
    """A steering vector folder (`steer --format vector`), added by hooks to the model (hf backend)."""
    baseline: str | None = None
    """Another evaluation of the same problems: the paired difference (this minus it) goes into eval.json."""
    grade_timeout: float = 5.0
    """Seconds a single answer check may take before it is killed and counted wrong."""
    overwrite: bool = False
    """Replace an evaluation with other options in the output folder instead of refusing."""
    quiet: bool = False
    """No progress bar."""

    def __post_init__(self):
        owner = "EvalConfig"
        check_out(owner, self.out)
        self.k = tuple(int(k) for k in self.k)
        if not self.k or min(self.k) < 1:
            raise ConfigError(owner, "k", f"must be positive integers, got {self.k}")
        if self.metric == "passk" and max(self.k) > self.generation.n:
            raise ConfigError(owner, "k", f"Pass@{max(self.k)} needs at least {max(self.k)} samples per problem; "
                                          f"raise --n to {max(self.k)} or more")
        if self.metric not in ("passk", "nll"):
            raise ConfigError(owner, "metric", f"unknown value {self.metric!r}; choose passk or nll")
        if self.metric == "nll" and self.generation.backend != "hf":
            raise ConfigError(owner, "metric", "nll scores the gold solutions with transformers; use --backend hf")
        if not self.grade_timeout > 0:
            raise ConfigError(owner, "grade_timeout", f"must be positive, got {self.grade_timeout}")
        if self.steering is not None and self.generation.backend != "hf":
            raise ConfigError(owner, "steering", "a steering vector is applied by hooks on the hf backend; for "
                                                 "vllm, bake it (`steer --format hf`) and pass the baked folder as --model")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    """What an evaluation found (eval.json, in memory) and its per-problem numbers."""

    folder: Path
    record: dict[str, Any]
    ids: list[str]
    correct: np.ndarray | None  # [P] correct samples per problem (passk)
    nll: np.ndarray | None  # [P] mean gold-solution NLL per problem (nll)

    @property
    def n(self) -> int:
        return int(self.record["config"]["generation"]["n"])


PROTOCOL = 2  # 2: sampling without the model's generation_config.json defaults, ending at its end tokens too


def key_fields(config: EvalConfig, model_fp: dict[str, Any], problems: dict[str, Any], steering: str | None, *,
               dtype: str, stops: list[int] | None) -> dict[str, Any]:
    """What must match for an evaluation to be resumed: all but where it is written and how it is shown. The model
    folder and the problem file count by their resolved paths (another spelling of the same path is the same
    evaluation); `steering` is the vector's digest (what it adds, not where it lies: a vector rewritten in place is
    another evaluation); `dtype` the one the model runs in (`key_dtype`: --dtype auto is fp32 on a CPU, bf16 on a
    GPU); `stops` the tokens a sample ends at (`key_stops`). NLL samples nothing: the sampling options and the stops
    are not part of its key."""
    cfg = config.to_json()
    for volatile in ("out", "quiet", "overwrite", "k", "baseline", "steering"):
        cfg.pop(volatile)
    cfg["model"].pop("device", None)
    cfg["model"]["dtype"] = dtype
    if config.model.model is not None:  # None: the embedded default model
        cfg["model"]["model"] = str(Path(config.model.model).resolve())  # need not exist: a removed baked checkpoint
    cfg["problems"]["path"] = str(Path(config.problems.path).resolve())
    for how in ("vllm_engines", "tensor_parallel"):  # where the samples are computed, not what they are
        cfg["generation"].pop(how, None)
    if config.metric == "nll":
        for sampling in ("n", "temperature", "top_p", "max_new_tokens", "seed"):
            cfg["generation"].pop(sampling, None)
        stops = None
    fields = {"protocol": PROTOCOL, "config": cfg, "model": model_fp, "problems": problems, "steering": steering,
              "stops": stops}
    return json.loads(json.dumps(fields, default=str))  # as eval.json keeps it, so that a stored one compares equal


def eval_key(config: EvalConfig, model_fp: dict[str, Any], problems: dict[str, Any], steering: str | None, *,
             dtype: str, stops: list[int] | None) -> str:
    """The hash of `key_fields`."""
    return _hash_fields(key_fields(config, model_fp, problems, steering, dtype=dtype, stops=stops))


def _hash_fields(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _differing_fields(old: Any, new: Any, name: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, old value, new value) of each entry on which two key_fields records differ (a missing entry
    differs)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [difference for key in sorted(set(old) | set(new), key=str)
                for difference in _differing_fields(old.get(key), new.get(key), f"{name}.{key}" if name else key)]
    return [] if old == new else [(name, old, new)]


def key_dtype(config: EvalConfig, loaded: LoadedModel | None) -> str:
    """The dtype an evaluation's model runs in: the loaded model's, or --dtype as the hf backend resolves it on
    --device (`auto`: float32 on a CPU, bfloat16 on a GPU), which is also the dtype the vllm backend asks vLLM for."""
    if loaded is not None:
        return str(loaded.dtype).removeprefix("torch.")
    return str(resolve_dtype(config.model.dtype, resolve_device(config.model.device))).removeprefix("torch.")


def key_stops(config: EvalConfig, loaded: LoadedModel | None) -> list[int]:
    """The tokens a sample ends at (`generation.stop_token_ids`): the loaded model's, or read from its folder."""
    if loaded is not None:
        return stop_token_ids(loaded.tokenizer, getattr(loaded.model, "generation_config", None))
    from transformers import AutoTokenizer

    path, _ = resolve_model_path(config.model.model)
    remote = config.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
    return stop_token_ids(tokenizer, model_generation_config(path, trust_remote_code=remote))


def evaluate(config: EvalConfig, *, loaded: LoadedModel | None = None) -> EvalResult:
    """Run (or resume) an evaluation and write its folder.

    Under torchrun (hf backend) the batches are dealt to the ranks (batch b to rank b % world_size), each on its own
    device, each appending to its own part of the samples; rank 0 joins the parts in batch order, so the result equals
    a one-process run's (the randomness is per batch), and every rank returns it."""
    t0 = time.perf_counter()
    world = current_world()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise AutoskillError(f"{out}: is a file, not a folder; choose another --out")
    if world.distributed and config.generation.backend == "vllm":
        raise AutoskillError("the vllm backend starts its own engines over a node's GPUs (--vllm-engines, "
                             "--tensor-parallel): launch `eval --backend vllm` without torchrun")
    problems = load_problems(config.problems)
    problems_record = split_record(config.problems, problems)
    steering = _load_steering(config.steering)
    if world.distributed:
        config = replace(config, model=replace(config.model, device=str(world.device(config.model.device))))
    model_fp = _model_fingerprint(config, loaded)
    dtype = key_dtype(config, loaded)
    fields = key_fields(config, model_fp, problems_record, None if steering is None else steering.digest(),
                        dtype=dtype, stops=key_stops(config, loaded) if config.metric == "passk" else None)
    key = _hash_fields(fields)
    record = {"schema": 1, "status": "running", "key": key, "key_fields": fields, "dtype": dtype,
              "config": config.to_json(), "model": model_fp, "problems": problems_record,
              "steering": None if steering is None else str(Path(config.steering).resolve()), "world_size": world.size}
    done: set[str] | str = set()
    earlier: dict[str, Any] = {}
    if world.main:
        try:
            done = _claim(out, key, fields, config.overwrite)
            earlier = load_json(out / EVAL_JSON).get("timings") or {} if done else {}
            record["timings"] = earlier  # kept through another interruption
            if config.metric == "passk" and len(done) < len(problems):  # the golds of a finished one were checked
                _check_golds(problems, config.grade_timeout, config.problems.path)
            if config.baseline is not None:  # before any generation: a missing or other baseline fails now
                base = load_eval(config.baseline)
                if base.record["config"]["metric"] != config.metric or (
                        config.metric == "passk" and max(config.k) > base.n):
                    raise AutoskillError(f"--baseline {config.baseline}: measured {base.record['config']['metric']} "
                                         f"with {base.n} sample(s) per problem; compare with an evaluation of the "
                                         f"same metric and at least {max(config.k)} samples")
                _check_same_problem_file(base.record, record, f"--baseline {config.baseline}", out)
                protocol = (base.record.get("key_fields") or {}).get("protocol")
                if config.metric == "passk" and protocol != PROTOCOL:
                    raise AutoskillError(f"--baseline {config.baseline}: sampled by an earlier version (with the "
                                         "model's generation_config.json defaults, ending at EOS only); a paired "
                                         "difference needs both sampled alike: evaluate the baseline again")
            save_json(out / EVAL_JSON, record)
        except AutoskillError as e:
            done = f"error: {e}"
    done = world.broadcast_object(done)
    if isinstance(done, str):
        raise AutoskillError(done.removeprefix("error: "))
    world.check_shared(out)
    world.check_same({"model": model_identity(model_fp), "problems": content_identity(problems_record["corpus"])})

    def batch_done(throughput: dict[str, Any]) -> None:
        """After each batch appended: the cost so far goes into eval.json, so a kill loses none of it. Under torchrun it
        is rank 0's own tokens: a kill loses the other ranks' (the whole run's is written once it completes)."""
        if world.main:
            record["timings"] = _add_timings(earlier, {"seconds": time.perf_counter() - t0, **throughput})
            save_json(out / EVAL_JSON, record)

    def generate() -> dict[str, Any]:
        if config.generation.backend == "vllm":
            from .vllm_backend import run_vllm

            return run_vllm(config, problems, done, out / SAMPLES_JSONL, batch_done)
        model = loaded or load_model(config.model, causal_lm=True)
        if steering is not None:
            steering.check_model(model.fingerprint, what=f"the model {model.name}")
        part = out / (SAMPLES_JSONL if not world.distributed else f"{SAMPLES_JSONL}.rank{world.rank}")
        return _run_hf(config, model, steering, problems, done, part, world, batch_done)

    finished = len(done) == len(problems)  # done again: nothing to load or generate, and no cost to add
    throughput = world.together(generate) if not finished else {}
    throughputs = world.gather_objects(throughput)
    result = None
    if world.main:
        if world.distributed:
            _join_parts(out)
            # tokens add up over the ranks; their seconds ran side by side (the slowest rank's is the wall time)
            throughput = {name: (max if name.endswith("_s") else sum)(t.get(name, 0) for t in throughputs)
                          for name in throughput}
        lines = read_samples(out / SAMPLES_JSONL)
        result = _summarize(config, problems, lines, out, record)
        if config.baseline is not None:
            base = load_eval(config.baseline)
            measures = [f"pass@{k}" for k in config.k] if config.metric == "passk" else ["nll"]
            record["against_baseline"] = {
                m: compare_evals(base, result, k=int(m.removeprefix("pass@")) if m != "nll" else 1).to_json()
                for m in measures}
        record["timings"] = earlier if finished else _add_timings(earlier, {"seconds": time.perf_counter() - t0,
                                                                           **throughput})
        record["status"] = "complete"
        save_json(out / EVAL_JSON, record)
    return world.broadcast_object(result)


def _add_timings(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """This call's timings plus those of the earlier calls that completed this evaluation's other problems (a resumed
    evaluation reports its whole cost, not only the resumption's)."""
    total = {name: value + earlier.get(name, 0) if isinstance(value, (int, float)) else value
             for name, value in now.items()}
    if "tokens_per_s" in total:  # a rate does not add: it is recomputed from the totals
        tokens = total.get("generated_tokens", total.get("scored_tokens", 0))
        total["tokens_per_s"] = tokens / max(total.get("generate_s", total.get("forward_s", 0.0)), 1e-9)
    return total


def _drop_samples(out: Path) -> None:
    for path in (out / SAMPLES_JSONL, *out.glob(f"{SAMPLES_JSONL}.rank*")):
        path.unlink(missing_ok=True)


def _join_parts(out: Path) -> None:
    """The ranks' samples (and any from earlier runs) as one samples.jsonl, in batch order."""
    join_in_batch_order(out / SAMPLES_JSONL, sorted(out.glob(f"{SAMPLES_JSONL}.rank*")))


def _check_golds(problems: list[Problem], timeout: float, path: str) -> None:
    """Every gold parses (graded against itself) before anything is generated: a bad one is an error now, not after
    hours of sampling."""
    from .grading import Grader

    with Grader(timeout=timeout) as grader:
        for problem in problems:
            where = f"{path}: problem {problem.id!r} (row {problem.row})"
            try:
                correct = grader.grade(f"\\boxed{{{problem.gold}}}", problem.gold).correct
            except AutoskillError as e:  # math-verify reads no answer from it
                raise AutoskillError(f"{where}: {e}") from None
            if not correct:
                raise AutoskillError(f"{where}: its gold answer {problem.gold!r} does not equal itself when graded; "
                                     "fix the answer field")


def _model_fingerprint(config: EvalConfig, loaded: LoadedModel | None) -> dict[str, Any]:
    if loaded is not None:
        return loaded.fingerprint
    from transformers import AutoConfig

    path, name = resolve_model_path(config.model.model)
    return fingerprint_folder(path, AutoConfig.from_pretrained(path, local_files_only=True), name)


def _load_steering(folder: str | None):
    if folder is None:
        return None
    from ..steering.vector import SteeringVector

    return SteeringVector.load(folder)


def _claim(out: Path, key: str, fields: dict[str, Any], overwrite: bool) -> set[str]:
    """The ids whose samples are complete in `out` (the same evaluation), after dropping an unfinished batch."""
    record_path = out / EVAL_JSON
    if not record_path.is_file():
        # eval.json is written before any sample: samples without it are not this tool's, or their record was removed
        strays = [path.name for path in (out / SAMPLES_JSONL, *out.glob(f"{SAMPLES_JSONL}.rank*")) if path.exists()]
        if strays and not overwrite:
            raise AutoskillError(f"{out}: holds {strays[0]} but no {EVAL_JSON}, so nothing says which evaluation made "
                                 "it; pass --overwrite to replace it (or, for `eval`, choose another --out)")
        _drop_samples(out)
        return set()
    record = load_json(record_path)
    if not isinstance(record, dict) or record.get("key") != key:
        if not overwrite:
            raise AutoskillError(f"{out}: holds an evaluation with other options ({_what_differs(record, fields)}); "
                                 "pass --overwrite to replace it (or, for `eval`, choose another --out)")
        _drop_samples(out)
        record_path.unlink()
        return set()
    _join_parts(out)  # the parts of an interrupted multi-process run, whatever its size
    lines = read_samples(out / SAMPLES_JSONL)
    complete = {line["batch"] for line in lines if line.get("batch_complete")}  # a batch's last line marks it whole
    keep = [line for line in lines if line["batch"] in complete]
    rewrite_samples(out / SAMPLES_JSONL, keep)  # without an unfinished batch, or a line torn by the kill
    return {line["id"] for line in keep}


def _what_differs(record: Any, fields: dict[str, Any]) -> str:
    """The options on which an earlier evaluation's record and this one's key fields differ, in words."""
    earlier = record.get("key_fields") if isinstance(record, dict) else None
    if not isinstance(earlier, dict):
        return ("model, dtype, problems, sampling, metric or steering vector; it was made by an earlier version, "
                "which did not record which")
    differences = _differing_fields(earlier, fields)
    if not differences:
        return "the same options under another key: made by another version"
    shown = [f"{name.removeprefix('config.')} {_shown(old)} now {_shown(new)}" for name, old, new in differences[:3]]
    more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
    return "; ".join(shown) + more


def _shown(value: Any, width: int = 60) -> str:
    """A value as JSON, its end kept when long (two paths differ at their ends)."""
    text = json.dumps(value)
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _run_hf(config: EvalConfig, loaded: LoadedModel, steering, problems: list[Problem], done: set[str],
            samples: Path, world: World, batch_done: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    gen = config.generation
    bar = Progress(disable=config.quiet or not world.main, desc="eval", initial_examples=len(done))
    if config.metric == "nll":
        from .nll import NLLScorer

        scorer = NLLScorer(loaded.model, loaded.tokenizer, chat=gen.chat, steering=steering)

        def scored() -> dict[str, Any]:
            return {"scored_tokens": scorer.tokens, "forward_s": scorer.seconds,
                    "tokens_per_s": scorer.tokens / max(scorer.seconds, 1e-9)}

        for b, batch in enumerate(batches_of(problems, gen.batch_size)):
            if b % world.size != world.rank or all(p.id in done for p in batch):
                continue
            before = scorer.tokens
            values = scorer.score(batch)
            append_batch(samples, [{"batch": b, "id": p.id, "nll": v} for p, v in zip(batch, values)])
            batch_done(scored())
            bar.update(len(batch), scorer.tokens - before)
        bar.close()
        return scored()
    from .grading import Grader

    generator = HFGenerator(loaded.model, loaded.tokenizer, gen, steering=steering)

    def generated() -> dict[str, Any]:
        return {"generated_tokens": generator.generated_tokens, "generate_s": generator.seconds,
                "tokens_per_s": generator.generated_tokens / max(generator.seconds, 1e-9)}

    with Grader(timeout=config.grade_timeout) as grader:
        for b, batch in enumerate(batches_of(problems, gen.batch_size)):
            if b % world.size != world.rank or all(p.id in done for p in batch):
                continue
            prompts = [prompt_text(p.question, loaded.tokenizer, chat=gen.chat) for p in batch]
            completions = generator.generate(prompts, batch_seed(gen.seed, b))
            lines = []
            for problem, samples_of in zip(batch, completions):
                verdicts = grader.grade_many([(c.text, problem.gold) for c in samples_of])
                for i, (c, v) in enumerate(zip(samples_of, verdicts)):
                    lines.append({"batch": b, "id": problem.id, "sample": i, "completion": c.text,
                                  "extracted": v.extracted, "gold": problem.gold, "correct": v.correct,
                                  "timed_out": v.timed_out, "tokens": c.tokens, "finished": c.finished})
            append_batch(samples, lines)
            batch_done(generated())
            bar.update(len(batch), sum(c.tokens for s in completions for c in s))
    bar.close()
    return generated()


def _summarize(config: EvalConfig, problems: list[Problem], lines: list[dict[str, Any]], out: Path,
               record: dict[str, Any]) -> EvalResult:
    ids = [p.id for p in problems]
    position = {pid: i for i, pid in enumerate(ids)}
    if config.metric == "nll":
        nll = np.full(len(ids), np.nan)
        for line in lines:
            nll[position[line["id"]]] = line["nll"]
        if np.isnan(nll).any():
            raise AutoskillError(f"{out / SAMPLES_JSONL}: some problems have no score; rerun the command to finish")
        record["nll"] = mean_interval(nll).to_json()
        record["counts"] = {"problems": len(ids)}
        return EvalResult(out, record, ids, None, nll)
    correct = np.zeros(len(ids), dtype=np.int64)
    seen = np.zeros(len(ids), dtype=np.int64)
    timeouts = 0
    for line in lines:
        i = position[line["id"]]
        seen[i] += 1
        correct[i] += bool(line["correct"])
        timeouts += bool(line["timed_out"])
    n = config.generation.n
    if (seen != n).any():
        raise AutoskillError(f"{out / SAMPLES_JSONL}: some problems do not have {n} samples; rerun the command to "
                             "finish")
    table = {str(k): pass_at_k_interval(correct, n, k).to_json() for k in config.k}
    record["pass_at_k"] = table
    record["counts"] = {"problems": len(ids), "samples": int(seen.sum()), "correct": int(correct.sum()),
                        "problems_solved": int((correct > 0).sum()), "grader_timeouts": timeouts}
    return EvalResult(out, record, ids, correct, None)


def _check_comparable(a: EvalResult, b: EvalResult, k: int) -> None:
    metrics = a.record["config"]["metric"], b.record["config"]["metric"]
    if metrics[0] != metrics[1]:
        raise AutoskillError(f"{a.folder} measured {metrics[0]} and {b.folder} {metrics[1]}: compare two Pass@k "
                             "evaluations, or two NLL evaluations")
    if metrics[0] == "passk" and k > min(a.n, b.n):
        raise AutoskillError(f"pass@{k} needs {k} samples per problem; {a.folder} has {a.n} and {b.folder} {b.n}")
    _check_same_problem_file(a.record, b.record, a.folder, b.folder)


def _check_same_problem_file(a: dict[str, Any], b: dict[str, Any], a_name: Any, b_name: Any) -> None:
    """Problems are paired by id, and ids are row numbers by default: "0" of another file is another problem."""
    corpora = [(record.get("problems") or {}).get("corpus") or {} for record in (a, b)]
    if corpora[0].get("sha256") != corpora[1].get("sha256"):
        raise AutoskillError(f"{a_name} and {b_name} evaluate different problem files ({corpora[0].get('path')} and "
                             f"{corpora[1].get('path')}); problems are paired by id, so compare evaluations of the "
                             "same file")


def load_eval(folder: str | Path) -> EvalResult:
    """A finished evaluation, with its per-problem numbers."""
    folder = Path(folder)
    record = load_json(folder / EVAL_JSON)
    if not isinstance(record, dict) or record.get("status") != "complete":
        raise AutoskillError(f"{folder}: not a finished evaluation; rerun its eval command")
    lines = read_samples(folder / SAMPLES_JSONL)
    ids = list(dict.fromkeys(line["id"] for line in lines))
    position = {pid: i for i, pid in enumerate(ids)}
    if record["config"]["metric"] == "nll":
        nll = np.zeros(len(ids))
        for line in lines:
            nll[position[line["id"]]] = line["nll"]
        return EvalResult(folder, record, ids, None, nll)
    correct = np.zeros(len(ids), dtype=np.int64)
    for line in lines:
        correct[position[line["id"]]] += bool(line["correct"])
    return EvalResult(folder, record, ids, correct, None)


def finished_evaluation(config: EvalConfig, model_fp: dict[str, Any], *, dtype: str,
                        stops: list[int] | None) -> EvalResult | None:
    """The finished evaluation in `config.out` that `evaluate(config)` would reuse whole, given the fingerprint,
    dtype and stop tokens its model would have (so a model no longer on disk, such as a removed baked checkpoint, need
    not be made again to know); None when there is none."""
    record = load_json(Path(config.out) / EVAL_JSON) if (Path(config.out) / EVAL_JSON).is_file() else None
    if not isinstance(record, dict) or record.get("status") != "complete":
        return None
    steering = _load_steering(config.steering)
    key = eval_key(config, model_fp, split_record(config.problems, load_problems(config.problems)),
                   None if steering is None else steering.digest(), dtype=dtype,
                   stops=stops if config.metric == "passk" else None)
    return load_eval(config.out) if record.get("key") == key else None


def paired_differences(a: EvalResult, b: EvalResult, *, k: int = 1) -> tuple[list[str], np.ndarray]:
    """The problems both evaluated, in a's order, and b minus a on each [P] (pass@k, or mean NLL)."""
    _check_comparable(a, b, k)
    position_b = {pid: i for i, pid in enumerate(b.ids)}
    shared = [(i, position_b[pid]) for i, pid in enumerate(a.ids) if pid in position_b]
    if not shared:
        raise AutoskillError(f"{a.folder} and {b.folder} share no problem; compare evaluations of the same problems")
    ia, ib = (np.array(side) for side in zip(*shared))
    ids = [a.ids[i] for i in ia]
    if a.nll is not None:
        return ids, b.nll[ib] - a.nll[ia]
    return ids, np.asarray(pass_at_k(b.n, b.correct[ib], k)) - np.asarray(pass_at_k(a.n, a.correct[ia], k))


def compare_evals(a: EvalResult, b: EvalResult, *, k: int = 1, resamples: int = 2000) -> Estimate:
    """b minus a on the problems both evaluated (Pass@k, or NLL), with the interval of `mean_interval` over the
    problems' paired differences (for Pass@k with its range, (-1, 1))."""
    return mean_interval(paired_differences(a, b, k=k)[1], resamples=resamples,
                         bounds=None if a.nll is not None else (-1.0, 1.0))
