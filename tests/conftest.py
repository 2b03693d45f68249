import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when autoskill_fast.kernels is first imported. Without
# a GPU, set it before any test module imports them, so the Triton kernels run on CPU tensors in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
