"""The negative log-likelihood of gold solutions, teacher-forced: a continuous metric that small models register.

At 135M parameters accuracy on GSM8K is near zero (SmolLM2-135M-Instruct: ~1.4% 5-shot), so an intervention cannot
move Pass@k measurably, while the held-out NLL of the worked solutions moves with it. Each problem contributes the
mean NLL (nats per token) of its solution's tokens given the prompt (the same prompt the generators use); problems are
batched, right-padded, and the loss is taken only over solution tokens.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Sequence

import torch

from .generation import prompt_text
from .problems import Problem


class NLLScorer:
    """Per-problem mean NLL of the gold solution; `tokens` and `seconds` count the work done."""

    def __init__(self, model, tokenizer, *, chat: bool = False, steering=None, max_tokens: int = 2048):
        self.model, self.tokenizer, self.chat, self.steering, self.max_tokens = model, tokenizer, chat, steering, max_tokens
        self.device = next(model.parameters()).device
        self.tokens = 0
        self.seconds = 0.0

    def pieces(self, problem: Problem) -> tuple[list[int], list[int]]:
        """(prompt ids, solution ids); the solution follows the prompt after a newline."""
        tok = self.tokenizer
        prompt = tok(prompt_text(problem.question, tok, chat=self.chat), add_special_tokens=not self.chat)["input_ids"]
        solution = tok("\n" + problem.solution.strip(), add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return prompt, (solution + eos)[: max(1, self.max_tokens - len(prompt))]

    @torch.inference_mode()
    def score(self, problems: Sequence[Problem]) -> list[float]:
        from ..steering.hooks import steer

        pieces = [self.pieces(p) for p in problems]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask, labels = collate_solutions(pieces, pad)
        target = labels != -100  # positions whose token is a solution token
        t0 = time.perf_counter()
        with steer(self.model, self.steering) if self.steering is not None else nullcontext():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        wanted = target[:, 1:]  # position t predicts token t + 1: only the solution's predictions are scored
        rows, cols = wanted.nonzero(as_tuple=True)
        predicted = logits[rows.to(self.device), cols.to(self.device)].float()  # [solution tokens, vocab]
        picked = torch.log_softmax(predicted, dim=-1).gather(-1, ids[rows, cols + 1][:, None].to(self.device))
        per_row = torch.zeros(len(pieces), dtype=torch.float64).index_add_(0, rows, picked.squeeze(-1).double().cpu())
        nll = -per_row / wanted.sum(1)
        self.seconds += time.perf_counter() - t0
        self.tokens += int(wanted.sum())
        return nll.tolist()


def collate_solutions(pieces: list[tuple[list[int], list[int]]],
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels) [B, S] of (prompt, solution) token lists, right-padded; labels are -100
    except on solution tokens (teacher forcing, as scored here and as a pilot trains)."""
    length = max(len(a) + len(b) for a, b in pieces)
    ids = torch.full((len(pieces), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (prompt, solution) in enumerate(pieces):
        n = len(prompt) + len(solution)
        ids[i, :n] = torch.tensor(prompt + solution)
        mask[i, :n] = 1
        labels[i, len(prompt):n] = torch.tensor(solution)
    return ids, mask, labels
