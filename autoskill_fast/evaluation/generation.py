"""Prompts and sampled solutions: the seed's protocol, and two backends that run it (transformers and vLLM).

The prompt is the seed code's, for fidelity: the raw problem followed by " Let's think step by step and output the
final answer within \\boxed{}.", with no chat template (`chat=True` renders it as one user turn with the tokenizer's
chat template instead). Sampling is at temperature 1.0 by default; temperature 0 is greedy.

Randomness is fixed per batch: batch b of the problem list (a fixed partition) is sampled with the seed
(seed, b), so a resumed evaluation regenerates an unfinished batch exactly as an uninterrupted one would.

Only the options here shape the sampling: a model's generation_config.json may hold defaults of its own (a
repetition penalty, top-k), which neither backend applies. From that file only the end-of-sequence tokens are taken:
a sample ends at the tokenizer's end-of-sequence token or at any the file lists (an instruct model's end of turn, as
Llama-3-Instruct's <|eot_id|>), as vLLM ends it by default (`stop_token_ids`).
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch

from ..config import ConfigError, cli

INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
Backend = Literal["hf", "vllm"]


@dataclass
class GenerationConfig:
    """How solutions are sampled."""

    n: int = field(default=1, metadata=cli("--n", short="-n"))
    """Samples per problem (`-n` is the same option, and the one that torchrun lets through: it takes `--n` for an
    abbreviation of its own options)."""
    temperature: float = 1.0
    """Sampling temperature (the seed's protocol: 1.0); 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches this."""
    max_new_tokens: int = 512
    """Tokens generated per sample at most."""
    seed: int = 0
    """The sampling seed."""
    chat: bool = False
    """Render the prompt with the tokenizer's chat template (default: the raw problem, as the seed code does)."""
    backend: Backend = "hf"
    """hf: transformers generate (CPU or GPU, in process); vllm: vLLM's offline engine (its own environment here)."""
    batch_size: int = 8
    """Problems per batch (hf: one generate call with n samples each; also the unit of resume)."""
    vllm_engines: int = 1
    """vllm: engines run side by side, each on GPUs of its own (CUDA_VISIBLE_DEVICES), the batches dealt among them;
    the samples are those one engine gives. (The hf backend spreads over GPUs under torchrun.)"""
    tensor_parallel: int = 1
    """vllm: the GPUs each engine spreads the model over (vLLM's tensor_parallel_size)."""

    def __post_init__(self):
        owner = "GenerationConfig"
        for name in ("n", "max_new_tokens", "batch_size", "vllm_engines", "tensor_parallel"):
            if getattr(self, name) < 1:
                raise ConfigError(owner, name, f"must be positive, got {getattr(self, name)}")
        for name in ("vllm_engines", "tensor_parallel"):
            if getattr(self, name) > 1 and self.backend != "vllm":
                raise ConfigError(owner, name, "applies to --backend vllm; the hf backend runs one process per GPU "
                                               "under torchrun")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):  # NaN decoded greedily, without a word
            raise ConfigError(owner, "temperature", f"must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(owner, "top_p", f"must be in (0, 1], got {self.top_p}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(owner, "backend", f"unknown value {self.backend!r}; choose hf or vllm")


def prompt_text(question: str, tokenizer, *, chat: bool) -> str:
    """The prompt of one problem (see the module docstring)."""
    text = question.strip() + INSTRUCTION
    if not chat:
        return text
    if getattr(tokenizer, "chat_template", None) is None:
        from ..errors import AutoskillError

        raise AutoskillError("--chat needs a tokenizer with a chat template; this model has none")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch `batch` of an evaluation seeded `seed` (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{batch}".encode()).digest()[:8], "little") >> 1


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens (up to and including EOS)
    finished: bool  # ended with EOS (not cut at max_new_tokens)


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """The tokens a sample ends at (see the module docstring): the tokenizer's end-of-sequence token, then those of a
    transformers `GenerationConfig` (the model's generation_config.json; None when it has none)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    listed = getattr(generation_config, "eos_token_id", None)
    for token in [listed] if isinstance(listed, int) else (listed or []):
        if int(token) not in ids:
            ids.append(int(token))
    if not ids:
        from ..errors import AutoskillError

        raise AutoskillError("the model's tokenizer has no end-of-sequence token and its generation_config.json lists "
                             "none: samples could not end before --max-new-tokens; use a model that has one")
    return ids


def model_generation_config(path: Path, *, trust_remote_code: bool = False):
    """A model folder's generation config as transformers gives a loaded model it: its generation_config.json, else
    the one derived from config.json (which may list end tokens too)."""
    from transformers import AutoConfig
    from transformers import GenerationConfig as Settings

    if (path / "generation_config.json").is_file():
        return Settings.from_pretrained(path, local_files_only=True)
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    return Settings.from_model_config(hf_config)


def completion_of(token_ids: list[int], stops: list[int], tokenizer) -> Completion:
    """A sample as both backends count and decode it: its tokens up to and including the first stop token."""
    end = next((i for i, token in enumerate(token_ids) if token in stops), None)
    used = token_ids if end is None else token_ids[:end + 1]
    return Completion(tokenizer.decode(used, skip_special_tokens=True), len(used), end is not None)


class HFGenerator:
    """Batched sampling with transformers `generate` (left padding), optionally with a steering vector applied by
    hooks. The model must have its LM head (`load_model(..., causal_lm=True)`)."""

    def __init__(self, model, tokenizer, config: GenerationConfig, *, steering=None):
        self.model, self.tokenizer, self.config, self.steering = model, tokenizer, config, steering
        self.device = next(model.parameters()).device
        self.stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.generated_tokens = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], seed: int) -> list[list[Completion]]:
        """n completions for each prompt."""
        from contextlib import nullcontext

        from ..steering.hooks import steer

        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=not self.config.chat)
        finally:
            tok.padding_side = side
        cfg = self.config
        sampling = cfg.temperature > 0
        # Greedy decoding has one answer per prompt: it is generated once and given to each of the n samples.
        returned = cfg.n if sampling else 1
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.stops[0]
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, num_return_sequences=returned, do_sample=sampling,
                      pad_token_id=pad, eos_token_id=self.stops)
        if sampling:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with steer(self.model, self.steering) if self.steering is not None else nullcontext(), \
                _library_defaults(self.model):
            out = self.model.generate(input_ids=enc["input_ids"].to(self.device),
                                      attention_mask=enc["attention_mask"].to(self.device), **kwargs)
        self.seconds += time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        completions = []
        for row in new.tolist():  # a row that did not stop ran to max_new_tokens: no padding follows it
            completion = completion_of(row, self.stops, tok)
            self.generated_tokens += completion.tokens
            completions.append(completion)
        return [completions[i * returned:(i + 1) * returned] * (cfg.n // returned) for i in range(len(prompts))]


@contextmanager
def _library_defaults(model) -> Iterator[None]:
    """`generate` fills the options it is not given from `model.generation_config` (the model's
    generation_config.json): for the call, that is transformers' own defaults instead (see the module docstring)."""
    from transformers import GenerationConfig as Defaults

    saved = getattr(model, "generation_config", None)
    model.generation_config = Defaults()
    try:
        yield
    finally:
        model.generation_config = saved
