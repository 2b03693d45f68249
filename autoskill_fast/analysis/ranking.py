"""Ranking examples by their scores: the most extreme positions of a direction, and the poles of every direction.

Shared by selection (pole picks), inspection (the examples shown at each end) and comparison (pole overlaps).
"""

from __future__ import annotations

import torch

SCORE_KINDS = ("projection", "cosine")


def top_positions(values_n: torch.Tensor, m: int, *, largest: bool = True) -> torch.Tensor:
    """Positions of the m largest (or smallest) values, most extreme first; equal values in ascending position."""
    n = values_n.numel()
    m = min(m, n)
    if m >= n:
        return torch.argsort(values_n, descending=largest, stable=True)
    threshold = torch.topk(values_n, m, largest=largest, sorted=False).values
    # Every tie at the threshold is a candidate (in ascending position); the stable sort then orders ties by position.
    if largest:
        candidates = (values_n >= threshold.min()).nonzero().flatten()
    else:
        candidates = (values_n <= threshold.max()).nonzero().flatten()
    return candidates[torch.argsort(values_n[candidates], descending=largest, stable=True)][:m]


def pole_positions(values_nk: torch.Tensor, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per direction: positions of its n largest and n smallest values, most extreme first (ties by position)."""
    top = [top_positions(values_nk[:, i], n).tolist() for i in range(values_nk.shape[1])]
    bottom = [top_positions(values_nk[:, i], n, largest=False).tolist() for i in range(values_nk.shape[1])]
    return top, bottom


def pole_indicators(values_nk: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Membership [N, k] (bool) of each example in each direction's top-n and bottom-n sets."""
    indicators = []
    for poles in pole_positions(values_nk, n):
        member = torch.zeros(values_nk.shape, dtype=torch.bool)
        for i, positions in enumerate(poles):
            member[positions, i] = True
        indicators.append(member)
    return indicators[0], indicators[1]
