"""What identifies a model: its config and its weights, never the folder it was loaded from.

A basis, a steering vector and a run record `fingerprint(model)`; `check_same_model` is the one rule every consumer
applies. The weights enter as a hash of a fixed sample of every tensor (16 evenly spaced entries, rounded to bfloat16
so that loading in fp32 or bf16 gives the same hash) with the tensors' names and shapes. Loading in fp16 is not
promised to match: fp16 rounds an fp32 checkpoint's weights first (about 6% of them then round to another bfloat16
neighbour), and a bf16 checkpoint's smallest and largest ones (outside fp16's normal range). A renamed copy of a
model matches itself; a fine-tune with the same config does not. The hash of a checkpoint folder is computed from its
safetensors files without loading them (`fingerprint_folder`), and equals the hash of the loaded model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import AutoskillError

# Config entries that do not change what the model computes.
VOLATILE_CONFIG_KEYS = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "architectures",
                        "quantization_config", "use_cache", "_attn_implementation_autoset", "attn_implementation"}
# The entries that must agree (the name is only how the model was loaded; "weights" is compared when both have it).
IDENTITY_KEYS = ("model_type", "config_hash", "num_layers", "hidden_size", "weights")
WEIGHT_SAMPLES = 16  # entries sampled from every tensor


def config_hash(config: Any) -> str:
    cfg = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(model: nn.Module, name: str) -> dict[str, Any]:
    """The identity of a loaded model (base or with its LM head; any dtype or device)."""
    cfg = model.config
    prefix = getattr(model, "base_model_prefix", "") or ""
    return {**config_identity(cfg, name), "weights": _weights_hash(_module_samples(model, prefix))}


def config_identity(config: Any, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model_type": getattr(config, "model_type", None),
        "config_hash": config_hash(config),
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
    }


def fingerprint_folder(folder: str | Path, config: Any, name: str) -> dict[str, Any]:
    """The identity of a checkpoint folder, from the safetensors files transformers loads (weights None when it has
    none)."""
    files = [Path(folder) / file for file in weight_files(folder)]
    weights = _weights_hash(_file_samples(files)) if files else None
    return {**config_identity(config, name), "weights": weights}


def weight_files(folder: str | Path) -> list[str]:
    """The safetensors files of a checkpoint folder that transformers loads: the shards its index names, else
    model.safetensors, else every *.safetensors. Others beside them (Mistral's consolidated.safetensors, in the
    original format) are not the model's weights."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AutoskillError(f"{index}: not a safetensors index ({e}); the checkpoint is damaged") from None
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    return sorted(p.name for p in folder.glob("*.safetensors"))


def model_identity(fingerprint: dict[str, Any]) -> str:
    """What tells one model from another in a fingerprint, in words (its name, a folder, is not part of it)."""
    return ", ".join(f"{key} {fingerprint.get(key)}" for key in IDENTITY_KEYS)


def model_mismatch(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """The first identity entry on which two fingerprints disagree (None: the same model, as far as both know)."""
    for key in IDENTITY_KEYS:
        if expected.get(key) is not None and actual.get(key) is not None and expected[key] != actual[key]:
            return key
    return None


def describe_mismatch(key: str, expected: dict[str, Any], actual: dict[str, Any]) -> str:
    if key == "weights":
        return ("the same architecture and config with other weights (a fine-tune, or another checkpoint; or the "
                "model loaded in float16, which rounds some weights twice: load it in bfloat16 or float32); the "
                "directions of one model do not transfer to another")
    return f"{key} {expected[key]!r} vs {actual[key]!r}"


# ---- the weight samples ------------------------------------------------------------------------------------------


def _sample_positions(numel: int) -> list[int]:
    if numel <= WEIGHT_SAMPLES:
        return list(range(numel))
    return [i * (numel - 1) // (WEIGHT_SAMPLES - 1) for i in range(WEIGHT_SAMPLES)]


def _normalized(name: str, prefix: str) -> str | None:
    """The tensor's name without the base model's prefix; None for the LM head (a base model has none)."""
    if prefix and name.startswith(prefix + "."):
        name = name[len(prefix) + 1:]
    return None if name.startswith("lm_head.") else name


def _module_samples(model: nn.Module, prefix: str) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    for name, tensor in model.state_dict().items():
        key = _normalized(name, prefix)
        if key is None or not tensor.dtype.is_floating_point:
            continue
        flat = tensor.detach().reshape(-1)
        positions = torch.tensor(_sample_positions(flat.numel()), dtype=torch.long, device=flat.device)
        yield key, tuple(tensor.shape), flat[positions]


def _file_samples(files: list[Path]) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                key = _normalized(name, "model")
                if key is None:
                    continue
                tensor = f.get_slice(name)
                shape = tuple(tensor.get_shape())
                if tensor.get_dtype() not in ("F64", "F32", "F16", "BF16"):
                    continue
                numel = 1
                for size in shape:
                    numel *= size
                values = []
                for position in _sample_positions(numel):  # one entry each: the reader seeks, nothing else is read
                    index, rest = [], position
                    for size in reversed(shape):
                        index.append(rest % size)
                        rest //= size
                    index.reverse()
                    values.append(tensor[tuple(slice(i, i + 1) for i in index)].reshape(-1))
                yield key, shape, torch.cat(values) if values else torch.zeros(0)


def _weights_hash(samples: Iterable[tuple[str, tuple[int, ...], torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for key, shape, values in sorted(samples, key=lambda s: s[0]):
        digest.update(f"{key}:{list(shape)}:".encode())
        digest.update(values.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
