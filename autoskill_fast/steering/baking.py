"""Bake a steering vector into a checkpoint that an unmodified engine (transformers, vLLM) serves at full speed.

A Llama-style block ends with `h + attn(...) + down_proj(...)`, so a bias on the MLP's `down_proj` equal to the chunk
adds the chunk to the block's output, at every position: the same as the forward hook in `hooks.py`, with no extra
op at inference (the bias is fused into the matmul). Turning on the config flag that creates that bias also creates
its siblings; they are written as zeros.

Architectures:
- Llama: `mlp_bias=True` (bias on gate/up/down projections in transformers and vLLM).
- Mistral: transformers' Mistral has no `mlp_bias`, so the checkpoint is re-expressed as Llama (same tensor names,
  same computation when there is no sliding window).
- Qwen2: vLLM's Qwen2 hard-codes its biases (qkv only) and silently drops any other `.bias` tensor, so the checkpoint
  is re-expressed as Llama with `attention_bias=True` (its qkv biases carried over, a zero `o_proj` bias added) and
  `mlp_bias=True`.
A model whose sliding window is shorter than its context cannot be re-expressed exactly (Llama has no windowed
attention in transformers): its `max_position_embeddings` is capped to the window, where both compute the same thing,
a warning says so plainly, and the check runs over inputs of at most the window. Anything else is refused with the list of what is supported.

Tensors are copied shard by shard from the source's safetensors files (dtype and names untouched), the config is
edited as JSON (so older transformers, e.g. vLLM's, read it), and tokenizer and generation config files are copied.
The vector and a record of the bake go to `steering/` in the output (outside the folder's top level, which engines
scan for weight files). `verify=True` reloads the written folder and compares its logits with hook steering of the
source model.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..artifacts import atomic_folder, load_json, save_json
from ..errors import AutoskillError
from ..capture.fingerprint import fingerprint_folder, weight_files
from .vector import SteeringVector

SUPPORTED = {
    "llama": "Llama (mlp_bias)",
    "mistral": "Mistral (re-expressed as Llama)",
    "qwen2": "Qwen2 (re-expressed as Llama with attention_bias)",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
STEER_JSON = "steer.json"  # the steer job's resolved config, beside the vector it made
VERIFY_TOKENS = 24  # the baked and hook-steered logits are compared over this many random tokens
# Source config keys with no Llama counterpart, dropped once `_window_cap` has accounted for them.
_WINDOW_KEYS = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")
_LAYER_KEY = re.compile(r"^(?P<prefix>.*layers\.(?P<layer>\d+))\."
                        r"(?P<module>mlp\.(?:gate|up|down)_proj|self_attn\.o_proj)\.weight$")


def bake(vector: SteeringVector, model_dir: str | Path, out: str | Path, *, verify: bool = True,
         recipe: dict[str, Any] | None = None) -> Path:
    """Write `out`: the model in `model_dir` with `vector` baked into its `down_proj` biases (and `recipe`, the steer
    job's config, as `steering/steer.json`). The folder appears whole or not at all."""
    from transformers import AutoConfig

    src, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoskillError(f"{out}: already exists and is not empty; choose another --out or delete it")
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    vector.check_model(fingerprint_folder(src, config, src.name), what=f"the model in {src}")
    raw = load_json(src / "config.json")
    new_config, notes = rewrite_config(raw, config)

    with atomic_folder(out) as tmp:
        biased, baked = _write_weights(src, tmp, vector, config,
                                       add_o_proj_bias=new_config.get("attention_bias", False)
                                       and not raw.get("attention_bias", False))
        save_json(tmp / "config.json", new_config)
        copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
        for name in copied:
            shutil.copy2(src / name, tmp / name)
        if not any(name.startswith("tokenizer") for name in copied):
            notes.append(f"no tokenizer files in {src}: add them before serving the baked model")
        vector.save(tmp / "steering")
        # The biases hold the vector rounded to the checkpoint's dtype (what any engine adds): how far from it.
        rounding = max(float((baked.chunks[layer] - chunk).abs().max()) for layer, chunk in vector.chunks.items())
        record = {"source": str(src.resolve()), "source_model_type": raw.get("model_type"),
                  "model_type": new_config["model_type"], "steered_layers": vector.layer_ids,
                  "biased_layers": biased, "rounding_max_abs_diff": rounding, "notes": notes}
        if verify:  # before it is visible at `out`: a server never picks up a wrong checkpoint
            check_len = min(VERIFY_TOKENS, int(new_config.get("max_position_embeddings") or VERIFY_TOKENS))
            record["verified_max_abs_diff"] = verify_bake(src, tmp, baked, seq_len=check_len)
            record["verified_tokens"] = check_len
        save_json(tmp / "steering" / "bake.json", record)
        if recipe is not None:
            save_json(tmp / "steering" / STEER_JSON, recipe)
    return out


def rewrite_config(raw: dict[str, Any], config) -> tuple[dict[str, Any], list[str]]:
    """The baked model's config.json (edited from the source's JSON) and notes on what changed beyond the biases."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise AutoskillError(f"cannot bake steering into a {model_type!r} checkpoint; supported: "
                             f"{', '.join(SUPPORTED.values())}. Use hook steering (`steer`) or --format llamacpp "
                             "instead")
    if raw.get("quantization_config"):
        raise AutoskillError("cannot bake steering into a quantized checkpoint; bake the unquantized model, then "
                             "quantize the result")
    if raw.get("auto_map"):
        raise AutoskillError("cannot bake steering into a checkpoint that ships its own model code (auto_map)")
    new = dict(raw)
    notes: list[str] = []
    if model_type != "llama":
        for key in _WINDOW_KEYS:
            new.pop(key, None)
        new["model_type"] = "llama"
        new["architectures"] = ["LlamaForCausalLM"]
        new["head_dim"] = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # Qwen2 has qkv biases and no o_proj bias; Llama ties them to one flag, so o_proj gets a zero bias.
        new["attention_bias"] = model_type == "qwen2"
        notes.append(f"re-expressed {model_type} as llama")
        window = _window_cap(config)
        if window is not None:
            rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
            if rope_type != "default":
                # Scaled RoPE variants read max_position_embeddings, so capping it would change the model.
                raise AutoskillError(f"cannot re-express this {model_type} exactly: it combines a sliding window "
                                     f"({window} tokens) with {rope_type!r} RoPE; use hook steering instead")
            new["max_position_embeddings"] = window
            note = (f"this {model_type} attends through a sliding window of {window} tokens, which the baked Llama "
                    f"checkpoint cannot represent: it is exact for inputs of up to {window} tokens only (its "
                    f"max_position_embeddings is capped from {raw.get('max_position_embeddings')} to {window}); for "
                    "longer inputs steer with hooks (`steer`) or a llama.cpp control vector (--format llamacpp)")
            warnings.warn(note, stacklevel=3)
            notes.append(note)
    new["mlp_bias"] = True
    return new, notes


def _window_cap(config) -> int | None:
    """The sliding window when some layer uses one shorter than the context, else None."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if config.model_type == "qwen2" and layer_types is None and not getattr(config, "use_sliding_window", False):
        return None
    return int(window) if int(window) < int(config.max_position_embeddings) else None


def _source_shards(src: Path) -> list[str]:
    shards = weight_files(src)
    if not shards:
        raise AutoskillError(f"{src}: no safetensors weights; save the model with save_pretrained (safetensors) first")
    return shards


def _write_weights(src: Path, dst: Path, vector: SteeringVector, config, *,
                   add_o_proj_bias: bool) -> tuple[list[int], SteeringVector]:
    """Copy every shard, adding the biases; return the layers that got a down_proj bias, and the vector as the
    checkpoint holds it (each chunk rounded, with any bias of the source, to the weights' dtype). A bias the source
    has stays in its shard, which need not be its weight's (save_pretrained splits them); a new one goes beside its
    weight."""
    num_layers = int(config.num_hidden_layers)
    shards = _source_shards(src)
    where: dict[str, str] = {}  # every key of the source -> its shard
    for shard in shards:
        with safe_open(str(src / shard), framework="pt") as f:
            where.update({key: shard for key in f.keys()})
    biases: dict[str, tuple[str, int, str]] = {}  # bias key -> (its weight's key, layer, module)
    for key in where:
        match = _LAYER_KEY.match(key)
        if match is not None and (match["module"] != "self_attn.o_proj" or add_o_proj_bias):
            biases[f"{match['prefix']}.{match['module']}.bias"] = (key, int(match["layer"]), match["module"])
    weight_map: dict[str, str] = {}
    biased: list[int] = []
    baked: dict[int, torch.Tensor] = {}
    total_size = 0
    for shard in shards:
        with safe_open(str(src / shard), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        for bias_key, (weight_key, layer, module) in biases.items():
            if where.get(bias_key, where[weight_key]) != shard:
                continue
            bias = tensors.get(bias_key)
            if bias is None:
                weight = tensors[weight_key]
                bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
            if module == "mlp.down_proj":
                biased.append(layer)
                if layer in vector.chunks:
                    steered = (bias.to(torch.float32) + vector.chunks[layer]).to(bias.dtype)
                    baked[layer] = steered.to(torch.float32) - bias.to(torch.float32)
                    bias = steered
            tensors[bias_key] = bias
        save_file(tensors, str(dst / shard), metadata={"format": "pt"})
        weight_map.update({key: shard for key in tensors})
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
    biased.sort()
    if biased != list(range(num_layers)):
        raise AutoskillError(f"{src}: found MLP down_proj weights for layers {biased} but the config says "
                             f"{num_layers} layers; the checkpoint does not have the expected tensor names")
    if (src / "model.safetensors.index.json").is_file():
        save_json(dst / "model.safetensors.index.json",
                  {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))})
    return biased, SteeringVector(baked, vector.model, vector.terms)


def verify_bake(source_dir: str | Path, baked_dir: str | Path, vector: SteeringVector, *, seq_len: int = VERIFY_TOKENS,
                rtol: float = 1e-5) -> float:
    """Max |logits(baked) - logits(source steered by hooks with `vector`)| in fp32 on random tokens; raise if it is
    not tiny. `vector` is the one the checkpoint holds (rounded to its dtype: `_write_weights`).

    Holds both models in fp32 memory at once; skip it (`verify=False`) for models that do not fit twice.
    """
    from transformers import AutoModelForCausalLM

    from .hooks import steer

    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, local_files_only=True).eval()
    baked, info = AutoModelForCausalLM.from_pretrained(baked_dir, dtype=torch.float32, output_loading_info=True,
                                                       local_files_only=True)
    baked.eval()
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise AutoskillError(f"{baked_dir}: the baked checkpoint does not load cleanly: {problems}")
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, source.config.vocab_size, (2, seq_len), generator=generator)
    with torch.inference_mode():  # no autograd graph: two models in memory are enough
        with steer(source, vector):
            expected = source(input_ids=input_ids).logits
        got = baked(input_ids=input_ids).logits
    diff = float((got - expected).abs().max())
    # Summation order differs (bias inside the matmul vs after the residual add): allow fp32 rounding at logit scale.
    tolerance = rtol * max(1.0, float(expected.abs().max())) * max(1, int(source.config.num_hidden_layers))
    if not diff <= tolerance:
        raise AutoskillError(f"{baked_dir}: baked logits differ from hook steering by {diff:.3g} (tolerance "
                             f"{tolerance:.3g}); the checkpoint is wrong, please report this with the model's config")
    return diff

