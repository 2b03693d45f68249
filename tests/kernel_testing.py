"""What the kernel tests share: the device, whether the Triton path can run here, and a fixture routing to each path."""

from __future__ import annotations

import pytest
import torch

from autoskill_fast.kernels import dispatch
from autoskill_fast.kernels.dispatch import DISABLE_ENV, FORCE_ENV

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_RUNNABLE = dispatch.HAS_TRITON and (DEVICE == "cuda" or dispatch.interpreting())
SKIP_REASON = ("Triton is not installed" if not dispatch.HAS_TRITON else
               "no GPU and TRITON_INTERPRET=1 was not set before triton was imported (tests/conftest.py sets it)")
needs_triton = pytest.mark.skipif(not TRITON_RUNNABLE, reason=SKIP_REASON)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=["ref", pytest.param("triton", marks=needs_triton)])
def impl(request, monkeypatch):
    """Route the public kernel functions to one implementation through the dispatch environment variables."""
    if request.param == "triton":
        monkeypatch.setenv(FORCE_ENV, "1")
        monkeypatch.delenv(DISABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(DISABLE_ENV, "1")
    return request.param
