"""The pilot proxy: a small LoRA fine-tune on each pole's pool examples, against one on random pool examples.

For each direction d and sign s, the m pool examples furthest along s * d (`select --method pole`) train a LoRA
adapter on the run's model; m random pool examples train another, identically (the baseline every pole must beat).
Each adapted model is evaluated on the dev set like any `eval`; the effect of a pole is its pilot minus the random
pilot (a Pass@k gain, or an NLL drop), with the paired interval over dev problems of `mean_interval` (the bootstrap;
count-based where at most two problems' Pass@k differ, the score interval for differences in {-1, 0, 1}). That
interval covers the choice of dev problems only, not the training seed: one seed trains every pilot.

Training text and loss: the problem's prompt (the one `eval` uses), a newline and the worked solution, then EOS, cut
as `eval --metric nll` cuts it; the loss is the mean over solution tokens only. Every pilot starts from the same
adapter initialization and sees its examples in the same seeded order: AdamW on the adapters alone (constant rate, no
weight decay, gradients clipped to norm 1), LoRA on every linear layer of the blocks (attention and MLP projections),
alpha = 2 * rank, no dropout.

The base model is never modified: adapters are injected in place, trained, evaluated and unloaded, and the base
weights are checked afterwards (the model fingerprint and a sum of every tensor). Under RUN/rank/pilot/:
`<name>/` is a pilot's evaluation with its `pilot.json` (what it trained on, the options, losses, timings);
`adapters/<name>/` its adapter (peft, safetensors), removed at the end unless `--keep-adapters`. A pilot whose
pilot.json matches and whose evaluation is complete is never trained or evaluated again; one whose adapter is saved
is evaluated without training again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from ..analysis.selection import Pole, pole_order, random_order
from ..artifacts import atomic_folder, load_json, save_json
from ..basis import SkillBasis
from ..capture.fingerprint import fingerprint
from ..capture.models import LoadedModel
from ..errors import AutoskillError
from ..evaluation.job import (EVAL_JSON, SAMPLES_JSONL, EvalConfig, EvalResult, eval_key, evaluate, key_dtype,
                              key_stops, load_eval, paired_differences)
from ..evaluation.nll import NLLScorer, collate_solutions
from ..evaluation.passk import mean_interval
from ..evaluation.problems import Problem, load_problems, problem_from_record, split_record
from ..progress import Progress
from ..run.folder import RunFolder
from ..run.ranking import RankingEntry
from ..run.reading import ProfileRun, fetch_records
from .joint import set_joint_intervals

PILOT_JSON = "pilot.json"
ADAPTER_FILE = "adapter_model.safetensors"
MAX_GRAD_NORM = 1.0
PEFT_PIN = "peft==0.21.2"


def pilot_name(direction: int, sign: int) -> str:
    return f"d{direction}{'+' if sign > 0 else '-'}"


@dataclass
class Pilot:
    """One pilot's outcome: its record (pilot.json) and its evaluation."""

    name: str
    record: dict[str, Any]
    result: EvalResult
    eval_s: float
    reused: bool  # neither trained nor evaluated in this call


def pilot_proxy(config, basis: SkillBasis, folder: RunFolder, record, loaded: LoadedModel, work: Path,
                directions: list[int], eval_base: EvalConfig) -> tuple[list[RankingEntry], dict[str, Any]]:
    """Entries (direction, sign) with effect = the pole pilot minus the random pilot (Pass@k gain, or NLL drop)."""
    _require_peft()
    if eval_base.generation.backend != "hf":
        raise AutoskillError("the pilot proxy evaluates its adapters in process: use --backend hf")
    scores = folder.scores(record).sorted_by_row()
    n = len(scores.ids)
    m = min(config.pilot_examples, n)
    trainer = _Trainer(config, basis, folder, record, loaded, work, eval_base, scores)
    plans = [("random", None, random_order(n, m, config.pilot_seed))]
    for direction in directions:
        for sign in (1, -1):
            positions, _ = pole_order(scores.projection, [Pole(direction, sign)], m)
            plans.append((pilot_name(direction, sign), Pole(direction, sign), positions))
    examples = trainer.examples(sorted({int(p) for _, _, positions in plans for p in positions.tolist()}))

    k = eval_base.k[0]
    nll = eval_base.metric == "nll"
    bounds = None if nll else (-1.0, 1.0)  # a Pass@k difference's range
    random = trainer.run("random", [examples[p] for p in plans[0][2].tolist()], None)
    random_ids = set(random.record["ids"])
    entries, effects = [], []
    for name, pole, positions in plans[1:]:
        pilot = trainer.run(name, [examples[p] for p in positions.tolist()], pole)
        ids, differences = paired_differences(random.result, pilot.result, k=k)
        gains = -differences if nll else differences  # lower NLL is better
        effects.append((ids, gains))
        gain = mean_interval(gains, resamples=config.resamples, bounds=bounds)
        column = scores.projection[positions, pole.direction].double()
        entries.append(RankingEntry(
            direction=pole.direction, sign=pole.sign, effect=gain.value, low=gain.low, high=gain.high,
            statistic="NLL drop (nats/token), pole pilot vs random pilot" if nll else
            f"pass@{k} difference, pole pilot - random pilot", evaluation=str(work / name),
            cost_s=pilot.record["train_s"] + pilot.eval_s,
            details={**_summary(pilot, k, nll, trainer.keep_adapters, work),
                     "overlap_with_random": len(random_ids & set(pilot.record["ids"])),
                     "mean_score": float(column.mean()), "pool_score_std": float(
                         scores.projection[:, pole.direction].double().std())}))
    set_joint_intervals(entries, effects, resamples=config.resamples, bounds=bounds)
    if not config.keep_adapters:
        for name, _, _ in plans:
            shutil.rmtree(work / "adapters" / name, ignore_errors=True)
        if (work / "adapters").is_dir() and not any((work / "adapters").iterdir()):
            (work / "adapters").rmdir()
    baseline = {"evaluation": str(work / "random"), "cost_s": random.record["train_s"] + random.eval_s,
                "pool": n, **_summary(random, k, nll, config.keep_adapters, work)}
    if m == n:
        baseline["note"] = (f"the pool has only {n} examples: every pilot trains on all of them, in another order; "
                            "lower --pilot-examples or profile a larger pool")
    return entries, baseline


def _summary(pilot: Pilot, k: int, nll: bool, keep: bool, work: Path) -> dict[str, Any]:
    r = pilot.record
    epoch = -(-len(r["ids"]) // r["settings"]["batch_size"])  # steps per pass over the examples
    measure = {"nll": pilot.result.record["nll"]} if nll else {f"pass@{k}": pilot.result.record["pass_at_k"][str(k)]}
    return {**measure, "examples": len(r["ids"]), "steps": r["settings"]["steps"],
            "batch_size": r["settings"]["batch_size"], "lr": r["settings"]["lr"],
            "lora_rank": r["settings"]["lora_rank"],
            "trainable_parameters": r["trainable_parameters"], "trained_tokens": r["trained_tokens"],
            "first_loss": r["losses"][0], "final_loss": r["losses"][-1],
            "last_epoch_loss": sum(r["losses"][-epoch:]) / len(r["losses"][-epoch:]), "train_s": r["train_s"],
            "step_s": r["train_s"] / max(len(r["losses"]), 1), "eval_s": pilot.eval_s, "reused": pilot.reused,
            "seed": r["settings"]["seed"], "adapter": _kept_adapter(work / "adapters" / pilot.name, keep)}


def _kept_adapter(adapter: Path, keep: bool) -> str | None:
    """Where a kept adapter lies; None when not kept, or not there (a pilot reused from a run that did not keep it)."""
    return str(adapter) if keep and (adapter / ADAPTER_FILE).is_file() else None


class _Trainer:
    """Trains, saves, evaluates and reuses the pilots of one ranking (all share the options and the base model)."""

    def __init__(self, config, basis: SkillBasis, folder: RunFolder, record, loaded: LoadedModel, work: Path,
                 eval_base: EvalConfig, scores):
        self.loaded, self.work, self.eval_base, self.scores = loaded, work, eval_base, scores
        self.keep_adapters, self.quiet = config.keep_adapters, config.quiet
        self.corpus = ProfileRun(folder.path, basis, scores, record).corpus_config()
        self.problems = config.problems
        self.settings = {
            "steps": config.pilot_steps, "batch_size": config.pilot_batch_size, "lr": config.pilot_lr,
            "lora_rank": config.lora_rank, "lora_alpha": 2 * config.lora_rank, "lora_dropout": 0.0,
            "target_modules": "all-linear", "weight_decay": 0.0, "max_grad_norm": MAX_GRAD_NORM, "seed": config.pilot_seed,
            "chat": eval_base.generation.chat, "question_field": self.problems.question_field,
            "answer_field": self.problems.answer_field, "question_template": self.problems.question_template,
            "dtype": str(loaded.dtype).removeprefix("torch.")}
        self.identity = {"settings": self.settings, "model": loaded.fingerprint, "run_key": basis.run_key,
                         "corpus": record.corpus.get("sha256")}
        dev = load_problems(eval_base.problems)
        self.dev_record = split_record(eval_base.problems, dev)
        self.scorer = NLLScorer(loaded.model, loaded.tokenizer, chat=eval_base.generation.chat)

    def examples(self, positions: list[int]) -> dict[int, Problem]:
        """The pool examples at these score positions, as problems (question and worked solution) of the run's
        corpus."""
        ids, rows = self.scores.ids, self.scores.row.tolist()
        records = fetch_records(self.corpus, {rows[p]: ids[p] for p in positions})
        return {p: problem_from_record(records[rows[p]], self.problems) for p in positions}

    def run(self, name: str, examples: list[Problem], pole: Pole | None) -> Pilot:
        """Train (or reuse) and evaluate one pilot."""
        folder, adapter = self.work / name, self.work / "adapters" / name
        ids = [e.id for e in examples]
        key = _hash({**self.identity, "ids": ids})
        eval_config = replace(self.eval_base, out=str(folder), overwrite=True)  # the folder is this pilot's own
        state = load_json(folder / PILOT_JSON) if (folder / PILOT_JSON).is_file() else None
        if state is not None and state.get("key") != key:
            if not self.eval_base.overwrite:
                raise AutoskillError(f"{folder}: holds a pilot trained on other examples or with other options; pass "
                                     "--overwrite to train it again with these options, or rank another run")
            state = None  # trained again below, over the old pilot's files
        stops = key_stops(eval_config, self.loaded) if eval_config.metric == "passk" else None
        if state is not None and _complete(folder, eval_key(eval_config, state["model"], self.dev_record, None,
                                                            dtype=key_dtype(eval_config, self.loaded), stops=stops)):
            result = load_eval(folder)
            return Pilot(name, state, result, float(result.record.get("timings", {}).get("seconds", 0.0)), True)
        model = self.loaded.model
        if state is not None and (adapter / ADAPTER_FILE).is_file():
            with adapted(model, self.settings, adapter):
                adapted_loaded = replace(self.loaded, model=model)  # a new LoadedModel: the adapted fingerprint
                if adapted_loaded.fingerprint == state["model"]:
                    return self._evaluate(name, state, eval_config, adapted_loaded)
        for stale in (EVAL_JSON, SAMPLES_JSONL, PILOT_JSON):  # results of weights no longer at hand
            (folder / stale).unlink(missing_ok=True)
        with adapted(model, self.settings, None) as peft_model:
            state = self._train(peft_model, examples, key, name, pole, adapter)
            return self._evaluate(name, state, eval_config, replace(self.loaded, model=model))

    def _evaluate(self, name: str, state: dict[str, Any], eval_config: EvalConfig,
                  adapted_loaded: LoadedModel) -> Pilot:
        t0 = time.perf_counter()
        result = evaluate(eval_config, loaded=adapted_loaded)
        return Pilot(name, state, result, time.perf_counter() - t0, False)

    def _train(self, peft_model, examples: list[Problem], key: str, name: str, pole: Pole | None,
               adapter: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        pad_id = self.loaded.tokenizer.pad_token_id
        progress = Progress(disable=self.quiet, desc=f"pilot {name}")
        losses, tokens = train_lora(peft_model, [self.scorer.pieces(e) for e in examples], self.settings,
                                    pad_id=0 if pad_id is None else pad_id, device=self.loaded.device,
                                    progress=progress)
        progress.close()
        train_s = time.perf_counter() - t0
        _save_adapter(peft_model, adapter)
        state = {"schema": 1, "key": key, "name": name, "pole": None if pole is None else pole.name,
                 "ids": [e.id for e in examples], "settings": self.settings,
                 "model": fingerprint(self.loaded.model, self.loaded.name), "base_model": self.loaded.fingerprint,
                 "losses": losses, "trained_tokens": tokens,
                 "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
                 "train_s": train_s, "device": str(self.loaded.device), "threads": torch.get_num_threads()}
        save_json(self.work / name / PILOT_JSON, state)  # written last: it marks the adapter as complete
        return state


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _complete(folder: Path, key: str) -> bool:
    path = folder / EVAL_JSON
    if not path.is_file():
        return False
    record = load_json(path)
    return isinstance(record, dict) and record.get("status") == "complete" and record.get("key") == key


def _require_peft():
    try:
        import peft
    except ImportError:
        raise AutoskillError(f'the pilot proxy needs peft: pip install "{PEFT_PIN}"') from None
    return peft


# ---- adapters on a borrowed model ----------------------------------------------------------------------------------


def _weights_checksum(model: torch.nn.Module) -> tuple[str, list[float]]:
    """The model's fingerprint hash and the fp32 sum of every tensor (every entry counts, unlike the fingerprint)."""
    with torch.no_grad():
        sums = [float(t.sum(dtype=torch.float32)) for _, t in sorted(model.state_dict().items())
                if t.dtype.is_floating_point]
    return fingerprint(model, "")["weights"], sums


@contextmanager
def adapted(model: torch.nn.Module, settings: dict[str, Any], adapter: Path | None) -> Iterator[Any]:
    """The model with LoRA adapters injected in place (fresh and seeded, or loaded from `adapter`), as a PeftModel;
    on exit the adapters are unloaded and the base weights, training flags and mode are checked or restored."""
    peft = _require_peft()
    before = _weights_checksum(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a transformers API deprecated in v6
        if adapter is None:
            lora = peft.LoraConfig(r=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                                   lora_dropout=settings["lora_dropout"], target_modules=settings["target_modules"],
                                   bias="none", task_type="CAUSAL_LM")
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
                torch.manual_seed(settings["seed"])  # every pilot starts from the same adapter initialization
                peft_model = peft.get_peft_model(model, lora)
        else:
            peft_model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    try:
        yield peft_model
    finally:
        peft_model.unload()  # the original layers go back in place; nothing is merged into them
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, False))
        model.train(training)
        after = _weights_checksum(model)
        if after != before:
            raise AutoskillError("the base model's weights changed during a pilot fine-tune (a bug): do not use this "
                                 "model object further; reload it")


def _save_adapter(peft_model, adapter: Path) -> None:
    """The adapter's safetensors and config, written to a temporary folder and renamed into place."""
    shutil.rmtree(adapter, ignore_errors=True)  # an adapter of an earlier, unfinished run
    with atomic_folder(adapter) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)


# ---- the training loop ---------------------------------------------------------------------------------------------


def example_order(count: int, total: int, seed: int) -> list[int]:
    """`total` indices into `count` examples: seeded permutations, one epoch after another."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < total:
        order += torch.randperm(count, generator=generator).tolist()
    return order[:total]


def train_lora(peft_model, pieces: list[tuple[list[int], list[int]]], settings: dict[str, Any], *, pad_id: int,
               device: torch.device, progress: Progress | None = None) -> tuple[list[float], int]:
    """Train the adapters of `peft_model` on (prompt ids, solution ids) pairs; returns (loss per step, tokens seen).

    The loss of a step is the mean NLL over the solution tokens of its batch (the model shifts labels by one).
    """
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps, size = settings["steps"], settings["batch_size"]
    order = example_order(len(pieces), steps * size, settings["seed"])
    losses, tokens = [], 0
    peft_model.train()
    for step in range(steps):
        ids, mask, labels = collate_solutions([pieces[i] for i in order[step * size:(step + 1) * size]], pad_id)
        tokens += int(mask.sum())
        loss = peft_model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(ids.shape[0], int(mask.sum()))
    peft_model.eval()
    return losses, tokens
