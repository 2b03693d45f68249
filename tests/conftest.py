import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when autoskill_fast.kernels is first imported. Without
# a GPU, set it before any test module imports them, so the Triton kernels run on CPU tensors in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The model fixtures (default model, tiny random decoders), available to every test module.
from model_fixtures import default_model_dir, tiny_model  # noqa: E402, F401
from kernel_testing import impl  # noqa: E402, F401 (after TRITON_INTERPRET is set above)
