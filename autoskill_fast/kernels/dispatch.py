"""The one place that decides whether an op runs its Triton kernel or its plain-torch reference.

Rules, in order:
1. ``AUTOSKILL_FAST_DISABLE_TRITON=1`` -> always the reference.
2. ``AUTOSKILL_FAST_FORCE_TRITON=1`` -> always the Triton kernel, also on CPU tensors. This is for tests: on CPU it
   needs ``TRITON_INTERPRET=1`` set *before* Triton is first imported (Triton reads it when a kernel is decorated), and
   it raises instead of falling back, so a forced test can never silently test the reference.
3. Otherwise the kernel runs when every tensor is on CUDA and Triton imports. CUDA tensors without Triton fall back to
   the reference, announced once with ``warnings.warn``; CPU tensors use the reference silently (it is the CPU path).

When Triton is not installed, ``triton`` and ``tl`` below are stand-ins that let the kernel modules import (their
``@triton.jit`` functions become plain, never-called functions).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

DISABLE_ENV = "AUTOSKILL_FAST_DISABLE_TRITON"
FORCE_ENV = "AUTOSKILL_FAST_FORCE_TRITON"

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: str | None = None
except ImportError as exc:  # the reference path still works; dispatch says why the kernels do not
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    class _MissingTriton:
        """Stand-in for `triton` and `triton.language` so that kernel modules import without Triton."""

        constexpr = object  # used only in kernel signatures

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _MissingTriton()

HAS_TRITON = TRITON_IMPORT_ERROR is None

# Accuracy promised by every kernel, per input dtype, against fp64 math on the same (already rounded) inputs:
# |kernel - reference| <= atol + rtol * bound, where `bound` is the same sum computed on absolute values (sum |w||x|
# for pooling, |x|^T |x| for the covariance), so the test does not depend on cancellation. Inputs are upcast exactly
# and accumulated in fp32, so the error is fp32 summation error whatever the input dtype; fp32 inputs get a looser
# rtol because the GPU covariance kernel multiplies them with 3xTF32 (about fp32 accuracy, not bit-exact fp32).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {  # dtype -> (atol, rtol)
    torch.float32: (1e-6, 2e-5),
    torch.bfloat16: (1e-6, 1e-5),
    torch.float16: (1e-6, 1e-5),
}

_fallback_warned = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip() == "1"


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1`` at import time)."""
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; older versions read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def on_tensor_device(tensor: torch.Tensor):
    """The context a kernel is launched in. Triton launches on the current CUDA device and its current stream, not
    on the arguments' device: a tensor on another GPU (`--device cuda:1`) needs its device made current."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors should launch its Triton kernel (see the module docstring for the rules)."""
    global _fallback_warned
    if _flag(DISABLE_ENV):
        return False
    if _flag(FORCE_ENV):
        if not HAS_TRITON:
            raise RuntimeError(f"{FORCE_ENV}=1 but Triton does not import ({TRITON_IMPORT_ERROR}); install triton "
                               f"or unset {FORCE_ENV}")
        on_cuda = all(t.is_cuda for t in tensors)
        if not on_cuda and not interpreting():
            raise RuntimeError(f"{FORCE_ENV}=1 with CPU tensors needs TRITON_INTERPRET=1 set before triton is "
                               "first imported (e.g. at the top of tests/conftest.py)")
        return True
    if not all(t.is_cuda for t in tensors):
        return False
    if HAS_TRITON:
        return True
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"Triton is not available ({TRITON_IMPORT_ERROR}); autoskill_fast runs its plain-torch "
                      "reference kernels on CUDA, which is slower. Install triton>=3.0 (pip install "
                      "'autoskill-fast[gpu]') to use the fused kernels.", RuntimeWarning, stacklevel=3)
    return False
