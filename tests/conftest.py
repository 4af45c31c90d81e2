"""Test-wide setup: Triton's CPU interpreter where there is no GPU, and a fixed seed."""

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
