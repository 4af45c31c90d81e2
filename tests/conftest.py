"""Test-wide setup: Triton's CPU interpreter where there is no GPU, a fixed seed, and the
``no_tf32`` fixture of the CUDA tests."""

from __future__ import annotations

import os

import pytest
import torch

# triton.jit decides interpreter-or-compiler when a kernel is defined (at import), so this must
# run before anything imports triton or one_fast: conftest.py is imported before test modules.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture
def no_tf32():
    """Exact float32 convolutions and matmuls on CUDA (TF32 off, restored afterwards), so two
    paths computing the same sum differ only by summation order."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
