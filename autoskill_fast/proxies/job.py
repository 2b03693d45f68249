"""The `rank` job: which directions of a run's basis help, with which sign and by how much (the paper's proxies).

    autoskill-fast rank runs/gsm8k --proxy correlation --metric nll
    autoskill-fast rank runs/gsm8k --proxy steer --metric nll --directions 0-3 --alphas 0.5,2 --alpha-unit std
    autoskill-fast rank runs/gsm8k --proxy pilot --metric nll --pilot-examples 64 --pilot-steps 24

The problems are cut into a dev set and a pool by the deterministic split of `--dev-size` / `--split-seed`:
correlation samples the model's own solutions to the pool, steer and pilot measure on the dev set (pilot trains on
pool examples selected from the run). Every evaluation is an ordinary `eval` folder under RUN/rank/<proxy>/<metric>/, so
a killed ranking resumes. The result is RUN/ranking.json (best first), which `inspect` shows and `select --ranking`
and `steer --ranking` use.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..artifacts import save_tensors
from ..basis import SkillBasis
from ..capture.models import LoadedModel, load_model
from ..config import BatchingConfig, ConfigError, ModelConfig, cli, number_list, parse_layers, template_fields
from ..data.corpus import fingerprint, iter_records, same_reading
from ..errors import AutoskillError
from ..evaluation.generation import GenerationConfig
from ..evaluation.job import EvalConfig, Metric, evaluate
from ..evaluation.samples import SAMPLES_JSONL, read_samples
from ..evaluation.problems import ProblemsConfig, load_problems, question_of
from ..run.folder import RunFolder
from ..run.ranking import Ranking, RankingEntry
from .correlation import (auroc_score_interval, auroc_with_error, cluster_bootstrap, entries_from, pearson,
                          pearson_with_error, score_texts)

Proxy = Literal["correlation", "steer", "pilot"]
MIN_RESAMPLES = 100
AlphaUnit = Literal["norm", "std"]


@dataclass
class RankConfig:
    """Rank a run's directions with one of the paper's proxies."""

    run: str
    """The profile run whose basis is ranked (ranking.json is written there)."""
    proxy: Proxy = "correlation"
    """correlation: score vs correctness of the model's own pool solutions (no intervention); steer: the dev set
    steered along each direction; pilot: a small LoRA fine-tune on each pole's pool examples against random ones."""
    metric: Metric = "passk"
    """passk: verified answers; nll: the gold solutions' negative log-likelihood (what a small model registers)."""
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    k: int = 1
    """The k of the Pass@k the effects are measured in."""
    directions: tuple[int, ...] | None = field(default=None, metadata=cli(parse=parse_layers, metavar="DIRECTIONS"))
    """Directions to rank, e.g. 0-3 or 0,2,5 (default: the first four; correlation: all)."""
    alphas: tuple[float, ...] = field(default=(0.5,), metadata=cli(parse=number_list(float, "the alphas", "0.5,2"),
                                                                 metavar="A1,A2", shown="0.5"))
    """steer: the strengths tried."""
    alpha_unit: AlphaUnit = "norm"
    """steer: alpha on the unit-norm concatenated direction (the paper's 0.5), or in the direction's standard deviations
    on the profiled corpus (comparable across models)."""
    pilot_examples: int = 1000
    """pilot: examples selected per pole (and for the random baseline), at most the pool."""
    pilot_steps: int = 50
    """pilot: optimizer steps of each fine-tune."""
    pilot_batch_size: int = 8
    """pilot: examples per step."""
    pilot_lr: float = 2e-4
    """pilot: learning rate of the LoRA adapters."""
    lora_rank: int = 16
    """pilot: the rank of the LoRA adapters (on every attention and MLP projection)."""
    keep_adapters: bool = False
    """pilot: keep each pilot's LoRA adapter under RUN/rank/pilot/ (the base model is never modified)."""
    keep_checkpoints: bool = False
    """steer on vllm: keep each baked checkpoint."""
    pilot_seed: int = 0
    """pilot: the seed of the random pilot's selection, the adapters' initialization and the order of examples."""
    resamples: int = 1000
    """Bootstrap resamples of every interval (at least 100: the joint intervals read the 95th percentile of a
    maximum over them)."""
    overwrite: bool = False
    """Redo the evaluations (and pilots) under RUN/rank/ that were made with other options, or of a basis since
    refitted; without it they are kept and the rank stops at the first one."""
    quiet: bool = False
    """No progress bars."""

    def __post_init__(self):
        owner = "RankConfig"
        if self.proxy not in ("correlation", "steer", "pilot"):
            raise ConfigError(owner, "proxy", f"unknown value {self.proxy!r}; choose correlation, steer or pilot")
        if self.k < 1:
            raise ConfigError(owner, "k", f"must be positive, got {self.k}")
        if self.metric == "passk" and self.k > self.generation.n:
            raise ConfigError(owner, "k", f"pass@{self.k} needs --n {self.k} or more samples per problem")
        for name in ("pilot_examples", "pilot_steps", "pilot_batch_size", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(owner, name, f"must be positive, got {getattr(self, name)}")
        if self.resamples < MIN_RESAMPLES:
            raise ConfigError(owner, "resamples", f"must be at least {MIN_RESAMPLES} (the joint intervals read the "
                                                  f"95th percentile of a maximum over them), got {self.resamples}")
        if not self.alphas or not all(a > 0 and math.isfinite(a) for a in self.alphas):
            raise ConfigError(owner, "alphas", f"must be positive strengths (the sign is tried both ways), got "
                                               f"{self.alphas}")
        if len(set(self.alphas)) < len(self.alphas):
            raise ConfigError(owner, "alphas", f"names a strength twice: {list(self.alphas)}")
        if self.directions is not None and (not self.directions or len(set(self.directions)) < len(self.directions)):
            raise ConfigError(owner, "directions", f"must name each direction once, in a range written low to high "
                                                   f"(e.g. 0-3), got {list(self.directions)}")
        if not (self.pilot_lr > 0 and math.isfinite(self.pilot_lr)):
            raise ConfigError(owner, "pilot_lr", f"must be a positive learning rate, got {self.pilot_lr}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank(config: RankConfig, *, loaded: LoadedModel | None = None) -> Ranking:
    """Run the proxy and write RUN/ranking.json."""
    folder = RunFolder(config.run)
    record = folder.record()
    basis = folder.basis(record)
    directions = list(config.directions) if config.directions is not None else \
        list(range(basis.k if config.proxy == "correlation" else min(4, basis.k)))
    for d in directions:  # before the model is loaded
        basis.direction(d)  # range check with the basis's own message
    model = config.model if config.model.model is not None else replace(
        config.model, model=(record.config.get("model") or {}).get("model"))
    loaded = loaded or load_model(model, causal_lm=True)
    basis.check_model(loaded.fingerprint, what=f"the model {loaded.name}")
    dev_ids = config.problems.dev_ids()
    notes, overlap = _check_pool(folder, record, config.problems, dev_ids, needs_pool=config.proxy == "pilot")
    work = folder / "rank" / config.proxy / config.metric
    eval_base = EvalConfig(out=str(work), problems=replace(config.problems, split="dev"), model=model,
                           generation=config.generation, k=(config.k,), metric=config.metric, quiet=config.quiet,
                           overwrite=config.overwrite)
    if config.proxy == "correlation":
        entries, baseline = _correlation(config, basis, record, loaded, work, directions, eval_base)
    elif config.proxy == "steer":
        from .steering import steer_proxy

        entries, baseline = steer_proxy(basis, eval_base, work, directions=directions, alphas=list(config.alphas),
                                        unit=config.alpha_unit, loaded=loaded, keep_checkpoints=config.keep_checkpoints,
                                        source=str(folder.path.resolve()), resamples=config.resamples)
    else:
        from .pilot import pilot_proxy

        entries, baseline = pilot_proxy(config, basis, folder, record, loaded, work, directions, eval_base)
        notes += [baseline.pop("note")] if "note" in baseline else []  # a pool too small to tell poles from random
    ranking = Ranking(config.proxy, config.metric, basis.run_key, entries, config.to_json(),
                      {"ids": sorted(dev_ids), "corpus": fingerprint(replace(config.problems, split="all").corpus),
                       "dev_size": config.problems.dev_size, "split_seed": config.problems.split_seed,
                       "run_overlap": None if overlap is None else sorted(overlap)},
                      baseline, notes, basis.digest())
    ranking.save(folder.path)
    return ranking


SCORES_CACHE = "pool_scores.safetensors"


def _pool_scores(work: Path, basis: SkillBasis, loaded: LoadedModel, texts: list[str],
                 batching: BatchingConfig) -> np.ndarray:
    """`score_texts` of the pool's texts, kept beside the ranking's evaluation: a rerun (other --resamples or
    --directions) pools them again only when the basis or its pooling, the model or its dtype, the texts or the
    batching changed (a forward pass over every pool solution: the proxy's main cost after the evaluation)."""
    key = hashlib.sha256(json.dumps([basis.digest(), basis.pooling_config, loaded.fingerprint, str(loaded.dtype),
                                     asdict(batching)], sort_keys=True, default=str).encode())
    for text in texts:
        key.update(text.encode() + b"\0")
    path = work / SCORES_CACHE
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                if f.metadata().get("key") == key.hexdigest():
                    return f.get_tensor("scores").numpy()
        except (SafetensorError, OSError):  # a damaged cache is pooled again
            pass
    scores = score_texts(basis, loaded.model, loaded.tokenizer, texts, batching)
    save_tensors(path, {"scores": torch.from_numpy(scores)}, {"key": key.hexdigest()})
    return scores


def _check_pool(folder: RunFolder, record, problems: ProblemsConfig, dev_ids: set[str], *,
                needs_pool: bool) -> tuple[list[str], set[str] | None]:
    """(notes, the run's examples found in the dev set: None when they could not be looked for). The run's examples
    (the pool that is selected and trained on) must not include the dev set: refused when this proxy trains on them,
    noted and recorded otherwise (`select --ranking` refuses them later). Examples of the same file read with the same
    ids are matched by id; otherwise by the text of their question, as `eval` asks it (field or template)."""
    same_file = same_reading(record.corpus, fingerprint(replace(problems, split="all").corpus))
    if same_file:
        overlap = set(folder.scores(record).ids) & dev_ids
    else:
        dev_questions = {" ".join(p.question.split()) for p in load_problems(replace(problems, split="dev"))}
        try:
            questions = {r.id: _normalized_question(r, problems)  # as it was profiled
                         for r in iter_records(record.corpus_reading(), unreadable=True)}
        except AutoskillError as e:
            return [f"the pool's disjointness from the dev set could not be checked ({e})"], None
        if not any(questions.values()):
            return ["the pool's disjointness from the dev set could not be checked: no record of the run's corpus has "
                    "a question as --question-field / --question-template ask it"], None
        overlap = {rid for rid, question in questions.items() if question in dev_questions}
    pool = ("--split pool with the same --dev-size and --split-seed" if same_file else
            "a corpus without the dev set's problems")
    if overlap and needs_pool:
        raise AutoskillError(f"{folder.path}: the profiled corpus holds {len(overlap)} of the dev set's problems (e.g. "
                             f"{sorted(overlap)[:3]}); profile {pool} to train pilots on it")
    if overlap:
        return [f"{len(overlap)} of the run's examples are in the dev set: selecting from this run with this ranking "
                f"is refused; profile {pool} to select"], overlap
    return [], overlap


def _normalized_question(record, problems: ProblemsConfig) -> str | None:
    """A run record's question, whitespace normalized; None for a record that has none (not a problem)."""
    try:
        return " ".join(question_of(record, problems).split())
    except AutoskillError:
        return None


def _correlation(config: RankConfig, basis: SkillBasis, record, loaded: LoadedModel, work: Path,
                 directions: list[int], eval_base: EvalConfig) -> tuple[list[RankingEntry], dict[str, Any]]:
    t0 = time.perf_counter()
    pool = replace(config.problems, split="pool")
    problems = {p.id: p for p in load_problems(pool)}
    eval_config = replace(eval_base, out=str(work / "eval"), problems=pool)
    result = evaluate(eval_config, loaded=loaded)
    template = (record.config.get("corpus") or {}).get("template")
    batching = BatchingConfig()
    if config.metric == "nll":
        ids = result.ids
        texts = [_text(template, problems[i].question, problems[i].solution) for i in ids]
        scores = _pool_scores(work, basis, loaded, texts, batching)[:, directions]
        keep = _scored_rows(scores)
        scores, target = scores[keep], -result.nll[keep]  # a larger score should go with a lower NLL
        groups = np.arange(len(target))

        def statistic(rows, clusters):
            return pearson_with_error(scores[rows], target[rows], clusters)

        bootstrapped = cluster_bootstrap(statistic, groups, resamples=config.resamples, bounds=(-1.0, 1.0))
        entries = entries_from(bootstrapped, center=0.0, statistic="correlation of the score with -NLL of the "
                               "gold solution (Pearson)", evaluation=str(work / "eval"),
                               cost_s=time.perf_counter() - t0)
        baseline = {"nll": result.record["nll"], "problems": len(target)}
    else:
        lines = read_samples(Path(result.folder) / SAMPLES_JSONL)
        texts = [_text(template, problems[line["id"]].question, line["completion"]) for line in lines]
        position = {pid: i for i, pid in enumerate(result.ids)}
        scores = _pool_scores(work, basis, loaded, texts, batching)[:, directions]
        keep = _scored_rows(scores)
        labels = np.array([bool(line["correct"]) for line in lines])[keep]
        groups = np.array([position[line["id"]] for line in lines])[keep]
        scores = scores[keep]
        if labels.all() or not labels.any():
            raise AutoskillError(f"all {len(labels)} sampled solutions are {'correct' if labels.all() else 'wrong'}: "
                                 "the correlation with correctness is undefined; sample more (--n, --limit) or use "
                                 "--metric nll")

        def statistic(rows, clusters):
            return auroc_with_error(scores[rows], labels[rows], clusters)

        def interval(value, error, critical, *, joint=False):
            return auroc_score_interval(value, error, int(labels.sum()), int((~labels).sum()), critical, joint=joint)

        bootstrapped = cluster_bootstrap(statistic, groups, resamples=config.resamples, bounds=(0.0, 1.0),
                                         interval=interval)
        biserial = pearson(scores, labels.astype(np.float64))
        entries = entries_from(bootstrapped, center=0.5, statistic="AUROC of the score for correct solutions, "
                               "minus 0.5", evaluation=str(work / "eval"), cost_s=time.perf_counter() - t0,
                               extra={"point_biserial": biserial})
        baseline = {"samples": len(labels), "correct": int(labels.sum()),
                    f"pass@{config.k}": result.record["pass_at_k"].get(str(config.k))}
    for entry in entries:
        entry.direction = directions[entry.direction]
    return entries, baseline


def _scored_rows(scores: np.ndarray) -> np.ndarray:
    """The texts that could be scored (a text empty after tokenization is skipped, and its row left NaN)."""
    keep = np.isfinite(scores).all(axis=1)
    if not keep.any():
        raise AutoskillError(f"none of the {len(keep)} texts could be scored (each was empty after tokenization)")
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} of {len(keep)} texts could not be scored (empty after tokenization) and "
                      "are left out of the correlation", stacklevel=2)
    return keep


def _text(template: str | None, question: str, answer: str) -> str:
    """A problem with a solution, written as the profile wrote its texts when its template used these fields."""
    if template and set(template_fields(template)) <= {"question", "answer"}:
        return template.format(question=question, answer=answer)
    return f"{question}\n{answer}"
