"""What does steering cost when generating? Baked vs unsteered model in vLLM; hooks vs none in transformers.

    OMP_NUM_THREADS=1 python bench/bench_steering.py [--prompts 8] [--max-tokens 64] [--repeat 3]

The default model is baked with a steering vector on blocks 1..28 (a random unit direction at the paper's alpha = 0.5:
the cost does not depend on the direction). vLLM (CPU build, in .venv-vllm: `bash scripts/vllm_env.sh`) runs in one
subprocess holding three engines at once, A/B/A (unsteered, baked, unsteered), then again B/A/B: after a warm-up pass
each, the timed passes alternate between the engines, so load from other processes on a shared machine falls on all
alike, and the two engines of the same model in each run measure the noise floor. transformers runs in this
process, alternating unsteered and hook-steered `generate` calls the same way. Every sequence has exactly
--max-tokens new tokens (EOS ignored). Reported: generated tokens/s, best pass (the least disturbed by other load)
and median, and the ratios within each engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from autoskill_fast.basis import SkillBasis
from autoskill_fast.decomposition.components import PrincipalComponents
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.config import ModelConfig
from autoskill_fast.capture.models import load_model
from autoskill_fast.steering import SteeringVector, bake, steer

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Give me three tips for learning Python.", "Explain why the sky is blue.", "What is 17 times 23?", "Name three famous painters.",
             "How do vaccines work?", "Describe a cat in two sentences.", "What causes the seasons?",
             "Suggest a name for a bakery.", "Why do we sleep?", "Summarize the plot of Hamlet."]


def steering_vector(loaded) -> SteeringVector:
    layers, hidden = tuple(range(1, loaded.model.config.num_hidden_layers - 1)), loaded.model.config.hidden_size
    dim = len(layers) * hidden
    direction = torch.nn.functional.normalize(torch.randn(1, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    components = PrincipalComponents(direction, torch.ones(1, dtype=torch.float64),
                                     torch.zeros(dim, dtype=torch.float64), 1, 1.0)
    basis = SkillBasis(components, FeatureLayout(layers, hidden), model=loaded.fingerprint)
    return SteeringVector.from_basis(basis, 0, alpha=0.5)


def bench_vllm(plain: Path, baked: Path, prompt_ids, args, tmp: Path) -> dict[str, list[float]]:
    python = Path(os.environ.get("AUTOSKILL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if not python.exists():
        raise SystemExit(f"no vLLM environment at {python}: run `bash scripts/vllm_env.sh`")
    (tmp / "prompts.json").write_text(json.dumps(prompt_ids))
    rates: dict[str, list[float]] = {"plain": [], "baked": [], "same_model_ratio": []}
    # Engines of the same model differ by a few percent depending on their position (seen here: up to 4%), so each
    # run is A/B/A, both ways round; the two copies of A give the noise floor (`same_model_ratio`).
    for order in ([plain, baked, plain], [baked, plain, baked]):
        cmd = [str(python), str(REPO / "scripts" / "vllm_generate.py"), "--prompts", str(tmp / "prompts.json"),
               "--max-tokens", str(args.max_tokens), "--dtype", args.vllm_dtype, "--repeat", str(args.repeat),
               "--interleave", "--out", str(tmp / "vllm.json")]
        for model in order:
            cmd += ["--model", str(model)]
        subprocess.run(cmd, check=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL if not args.verbose else None)
        runs = json.loads((tmp / "vllm.json").read_text())["runs"]
        per_engine = [[run["generated_tokens_per_pass"] / s for s in run["pass_s"]] for run in runs]
        for model, engine_rates in zip(order, per_engine):
            rates["baked" if model == baked else "plain"] += engine_rates
        rates["same_model_ratio"].append(statistics.median(per_engine[2]) / statistics.median(per_engine[0]))
    return rates


def bench_transformers(loaded, vector, prompts_text, args) -> dict[str, list[float]]:
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts_text, return_tensors="pt", padding=True, add_special_tokens=False)
    n = args.max_tokens

    def run() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] == inputs["input_ids"].shape[1] + n
        return len(prompts_text) * n / (time.perf_counter() - t)

    run()  # warm-up
    rates: dict[str, list[float]] = {"plain": [], "hooks": []}
    for i in range(args.repeat):
        for key in ("plain", "hooks") if i % 2 == 0 else ("hooks", "plain"):
            if key == "plain":
                rates[key].append(run())
            else:
                with steer(model, vector):
                    rates[key].append(run())
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="batch size (prompts generated together)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--vllm-dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--verbose", action="store_true", help="show vLLM's log")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(ModelConfig(model=None, dtype="float32", device="cpu"), causal_lm=True)
    vector = steering_vector(loaded)
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    prompts_text = [loaded.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                         tokenize=False) for q in questions]
    prompt_ids = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_text]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baked = bake(vector, loaded.path, tmp / "baked", verify=False)
        vllm = bench_vllm(loaded.path, baked, prompt_ids, args, tmp)
    hf = bench_transformers(loaded, vector, prompts_text, args)

    noise = vllm.pop("same_model_ratio")
    rates = {"vllm_plain": vllm["plain"], "vllm_baked": vllm["baked"], "transformers_plain": hf["plain"],
             "transformers_hooks": hf["hooks"]}
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"# steering cost: {platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"{args.prompts} prompts x {args.max_tokens} new tokens, {args.repeat} passes each, vLLM {args.vllm_dtype}, "
          "transformers float32")
    print(f"{'engine / model':22s} {'best tok/s':>10s} {'median':>8s}  passes")
    for key, values in rates.items():
        print(f"{key:22s} {best[key]:10.1f} {med[key]:8.1f}  {', '.join(f'{r:.1f}' for r in values)}")
    for name, a, b in [("vLLM baked / vLLM unsteered", "vllm_baked", "vllm_plain"),
                       ("transformers hooks / unsteered", "transformers_hooks", "transformers_plain"),
                       ("vLLM baked / transformers hooks", "vllm_baked", "transformers_hooks")]:
        print(f"{name:32s} best {best[a] / best[b]:.3f}   median {med[a] / med[b]:.3f}")
    print(f"noise floor, vLLM same model in two engines (A/B/A, B/A/B): {', '.join(f'{r:.3f}' for r in noise)}")


if __name__ == "__main__":
    main()
