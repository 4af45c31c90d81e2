"""The compiled Triton kernel is a ``torch.library.triton_op``: ``torch.compile`` traces into
its launch (Inductor sees the kernel, not an opaque call) with the shared fake and autograd
contract. Checked on the CPU in a subprocess without the interpreter, nothing launched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def traced() -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "tests.loss.triton_op_trace"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compile_fullgraph_traces_into_the_kernel_launch(traced):
    assert traced["graph_breaks"] == 0
    assert traced["frames"] == 1
    assert traced["opaque_calls"] == [], "the op stayed an opaque call in the graph"
    assert traced["launches"] == 1
    assert traced["kernel_is_ours"] == [True]
    assert traced["num_warps"] == [[8]]  # the launcher's choice for (9, 3, 40) survives


def test_only_the_outputs_are_written(traced):
    """Inductor learns from the kernel's IR which buffers it writes: the outputs only, so it
    never copies the logits or the gate to protect them."""
    assert traced["cloned"] == [["loss_ptr", "ce_ptr", "ce_e_ptr", "kl_ptr", "grad_ptr",
                                 "grad_gate_ptr"]]


def test_autograd_contract_saves_the_kernel_gradients(traced):
    # forward graph outputs: the loss, and the two gradient buffers saved for the backward
    assert traced["forward_outputs"] == 3


def test_fake_implementation_matches_the_shared_contract(traced):
    assert traced["fake_matches_contract"] == [True, True, True]


def test_inferred_schema_is_the_fused_schema(traced):
    from one_fast.loss.fused_op import FUSED_SCHEMA

    # torch infers a Python int as SymInt
    assert traced["schema"].replace("SymInt", "int") == "one_fast::triton_one_loss" + FUSED_SCHEMA
