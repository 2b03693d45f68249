"""Fused kernels of the capture and statistics stages, each a Triton kernel with a plain-torch reference beside it.

`masked_pool` pools hidden states into per-example features; `cov_update_` adds rows into the upper triangle of a
second-moment matrix, square or block-packed (`PackedSymmetric`). Which implementation runs is decided in
`dispatch.use_triton` (CUDA + Triton, unless AUTOSKILL_FAST_DISABLE_TRITON=1; AUTOSKILL_FAST_FORCE_TRITON=1 forces the
kernels, e.g. under TRITON_INTERPRET=1).
"""

from .covariance import (
    cov_update_,
    cov_update_ref,
    cov_update_triton,
)
from .dispatch import DISABLE_ENV, FORCE_ENV, HAS_TRITON, TOLERANCES, use_triton
from .packed import BlockPackedLayout, PackedSymmetric, symmetrize_upper, symmetrize_upper_
from .pooling import masked_pool, masked_pool_ref, masked_pool_triton

__all__ = [
    "BlockPackedLayout",
    "DISABLE_ENV",
    "FORCE_ENV",
    "HAS_TRITON",
    "TOLERANCES",
    "cov_update_",
    "cov_update_ref",
    "cov_update_triton",
    "masked_pool",
    "masked_pool_ref",
    "masked_pool_triton",
    "PackedSymmetric",
    "symmetrize_upper",
    "symmetrize_upper_",
    "use_triton",
]
