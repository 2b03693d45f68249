"""Prompts and sampled solutions: the seed's protocol, and two backends that run it (transformers and vLLM).

The prompt is the seed code's, for fidelity: the raw problem followed by " Let's think step by step and output the
final answer within \\boxed{}.", with no chat template (`chat=True` renders it as one user turn with the tokenizer's
chat template instead). Sampling is at temperature 1.0 by default; temperature 0 is greedy.

Randomness is fixed per batch: batch b of the problem list (a fixed partition) is sampled with the seed
(seed, b), so a resumed evaluation regenerates an unfinished batch exactly as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from ..config import ConfigError, cli

INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
Backend = Literal["hf", "vllm"]


@dataclass
class GenerationConfig:
    """How solutions are sampled."""

    n: int = field(default=1, metadata=cli("--n"))
    """Samples per problem."""
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
        if self.temperature < 0:
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


class HFGenerator:
    """Batched sampling with transformers `generate` (left padding), optionally with a steering vector applied by
    hooks. The model must have its LM head (`load_model(..., causal_lm=True)`)."""

    def __init__(self, model, tokenizer, config: GenerationConfig, *, steering=None):
        self.model, self.tokenizer, self.config, self.steering = model, tokenizer, config, steering
        self.device = next(model.parameters()).device
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
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, num_return_sequences=returned, do_sample=sampling,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if sampling:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with steer(self.model, self.steering) if self.steering is not None else nullcontext():
            out = self.model.generate(input_ids=enc["input_ids"].to(self.device),
                                      attention_mask=enc["attention_mask"].to(self.device), **kwargs)
        self.seconds += time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        completions = []
        for row in new.tolist():
            ended = tok.eos_token_id in row
            used = row[:row.index(tok.eos_token_id) + 1] if ended else [t for t in row if t != tok.pad_token_id]
            self.generated_tokens += len(used)
            completions.append(Completion(tok.decode(used, skip_special_tokens=True), len(used), ended))
        return [completions[i * returned:(i + 1) * returned] * (cfg.n // returned) for i in range(len(prompts))]
