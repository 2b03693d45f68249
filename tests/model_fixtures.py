"""Shared fixtures: the embedded default model and tiny random-weight decoders that use its tokenizer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_jsonl(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model, converted once from its GGUF file (cached across sessions)."""
    from autoskill_fast.capture.models import convert_gguf, default_gguf_path

    return convert_gguf(default_gguf_path())


TINY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir):
    """A factory: a tiny random-weight decoder of the given architecture, saved with the default model's tokenizer."""
    import transformers

    made: dict[str, Path] = {}

    def make(arch: str = "llama", num_layers: int = 4) -> Path:
        key = f"{arch}-{num_layers}"
        if key in made:
            return made[key]
        config_cls, model_cls, extra = TINY_CONFIGS[arch]
        config = getattr(transformers, config_cls)(
            vocab_size=49152, hidden_size=48, intermediate_size=96, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **extra,
        )
        torch.manual_seed(1234)
        model = getattr(transformers, model_cls)(config).eval()
        folder = tmp_path_factory.mktemp(key)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (default_model_dir / name).exists():
                shutil.copy(default_model_dir / name, folder / name)
        made[key] = folder
        return folder

    return make
