"""The steering proxy: evaluate the dev set steered along each direction and sign (and each alpha of a small sweep),
against the unsteered model with the same seeds; the paired difference, with its paired interval of `mean_interval`
(the bootstrap; count-based where steering changed at most two problems' Pass@k, the score interval for differences
in {-1, 0, 1}), is the effect. On the hf backend the vector is added by hooks; on the vllm backend each (direction,
sign, alpha) is baked into a checkpoint that an unmodified vLLM serves (removed after its evaluation unless kept, and
not baked again for a finished evaluation)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from ..artifacts import load_json, save_json
from ..basis import SkillBasis
from ..capture.fingerprint import fingerprint_folder, model_identity
from ..capture.models import LoadedModel, resolve_model_path
from ..evaluation.job import (EvalConfig, EvalResult, evaluate, finished_evaluation, key_dtype, key_stops,
                              paired_differences)
from ..evaluation.passk import mean_interval
from ..run.ranking import RankingEntry, alpha_label
from ..steering.baking import bake
from ..steering.vector import SteeringVector
from .joint import set_joint_intervals


def steering_name(direction: int, sign: int, alpha: float, unit: str) -> str:
    return f"d{direction}{'+' if sign > 0 else '-'}a{alpha_label(alpha)}{unit}"


def steer_proxy(basis: SkillBasis, base_config: EvalConfig, work: Path, *, directions: list[int],
                alphas: list[float], unit: str, loaded: LoadedModel | None, keep_checkpoints: bool = False,
                source: str | None = None, resamples: int = 2000) -> tuple[list[RankingEntry], dict]:
    """Entries (direction, sign, alpha) with effect = steered minus unsteered (Pass@k gain, or NLL drop)."""
    k = base_config.k[0]
    base = evaluate(replace(base_config, out=str(work / "base")), loaded=loaded)
    nll = base_config.metric == "nll"
    bounds = None if nll else (-1.0, 1.0)  # a Pass@k difference's range
    statistic = "NLL drop (nats/token), steered vs unsteered" if nll else f"pass@{k} difference, steered - unsteered"
    entries, effects = [], []
    served = None  # vllm: the base model's identity and dtype, read once
    for direction in directions:
        for sign in (1, -1):
            for alpha in alphas:
                name = steering_name(direction, sign, alpha, unit)
                vector = SteeringVector.from_basis(basis, direction, alpha=alpha, sign=sign, unit=unit, source=source)
                vector_dir = vector.save(work / "vectors" / name)
                config = replace(base_config, out=str(work / name))
                if base_config.generation.backend == "vllm":
                    served = served or _served_base(base_config)
                    steered, bake_s = _baked_evaluation(vector, name, config, work, keep_checkpoints, served)
                else:
                    steered, bake_s = evaluate(replace(config, steering=str(vector_dir)), loaded=loaded), 0.0
                ids, differences = paired_differences(base, steered, k=k)
                gains = -differences if nll else differences  # lower NLL is better
                effects.append((ids, gains))
                gain = mean_interval(gains, resamples=resamples, bounds=bounds)
                entries.append(RankingEntry(direction=direction, sign=sign, effect=gain.value, low=gain.low,
                                            high=gain.high, statistic=statistic, evaluation=str(work / name),
                                            cost_s=bake_s + steered.record["timings"]["seconds"], alpha=alpha,
                                            alpha_unit=unit,
                                            details={"vector_norm": vector.norm()}))
    set_joint_intervals(entries, effects, resamples=resamples, bounds=bounds)
    baseline = {"evaluation": str(work / "base"), "cost_s": base.record["timings"]["seconds"],
                **({"nll": base.record["nll"]} if nll else {f"pass@{k}": base.record["pass_at_k"][str(k)]})}
    return entries, baseline


def _served_base(config: EvalConfig) -> tuple[str, str, list[int]]:
    """The base model's identity, the dtype vLLM serves it in and the tokens its samples end at (a baked checkpoint
    keeps the base's config, tokenizer and generation config, so these are the same for it)."""
    from transformers import AutoConfig

    model_dir, _ = resolve_model_path(config.model.model)
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return (model_identity(fingerprint_folder(model_dir, hf_config, model_dir.name)), key_dtype(config, None),
            key_stops(config, None))


def _baked_evaluation(vector: SteeringVector, name: str, config: EvalConfig, work: Path, keep_checkpoint: bool,
                      served: tuple[str, str, list[int]]) -> tuple[EvalResult, float]:
    """The evaluation of the model with `vector` baked into a checkpoint that vLLM serves, and the seconds the bake
    took. A note beside the checkpoint keeps the base model's identity, the dtype it is served in (`served`) and the
    baked model's fingerprint, so a rerun whose evaluation is finished reuses it without baking again (a full copy of
    the model) while the base model and the dtype are the same; a checkpoint of another base model is baked again."""
    base, dtype, stops = served
    model_dir, _ = resolve_model_path(config.model.model)
    # resolved: the checkpoint's path is part of its evaluation's key, which another spelling of the run must not change
    baked = (work / "checkpoints" / f"{name}-{vector.digest()[:12]}").resolve()  # a refit's vector: a new bake
    note_path = baked.parent / f"{baked.name}.json"
    config = replace(config, model=replace(config.model, model=str(baked)))
    note = load_json(note_path) if note_path.is_file() else {}
    note = note if isinstance(note, dict) else {}
    same = note.get("base") == base and note.get("dtype") == dtype and isinstance(note.get("fingerprint"), dict)
    if same and not (keep_checkpoint and not (baked / "config.json").is_file()):
        finished = finished_evaluation(config, note["fingerprint"], dtype=dtype, stops=stops)
        if finished is not None:
            if not keep_checkpoint:
                shutil.rmtree(baked, ignore_errors=True)  # left by a run stopped before it removed it
            return finished, float(note.get("bake_s", 0.0))
    bake_s = 0.0
    if note and not same:
        shutil.rmtree(baked, ignore_errors=True)  # a kept checkpoint of another base model or dtype
    if not (baked / "config.json").is_file():
        t0 = time.perf_counter()
        shutil.rmtree(baked, ignore_errors=True)
        bake(vector, model_dir, baked)
        bake_s = time.perf_counter() - t0
    steered = evaluate(config)
    if same and not bake_s:
        bake_s = float(note.get("bake_s", 0.0))  # baked by an earlier run, whose evaluation this one finished
    save_json(note_path, {"base": base, "dtype": dtype, "fingerprint": steered.record["model"], "bake_s": bake_s})
    if not keep_checkpoint:
        shutil.rmtree(baked, ignore_errors=True)
    return steered, bake_s
