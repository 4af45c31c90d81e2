"""The backend registry (one_fast.loss.backends): its records agree with each other, every choice
of backend reads it, and every refusal says why in one line.

A stand-in backend ("narrow": the reference's entry points with a limit on m, T and dtypes)
placed first in the registry exercises the limits whatever this installation has built; spies
on the entry points show which backend actually ran.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_fast import ONELoss, available_backends, fused_linear_one_loss, one_loss
from one_fast.loss import native
from one_fast.loss.backends import BACKENDS, TRITON_INSTALLED, resolve_backend, unavailable_reason
from tests.loss.fused_linear_helpers import make_linear_inputs
from tests.loss.helpers import CPU, make_inputs

ROOT = Path(__file__).resolve().parents[2]
DEVICES = [CPU, torch.device("cuda"), torch.device("meta")]


def reasons_are_lines(device):
    """(name, reason) of the backends that cannot run on ``device``, each reason checked."""
    refused = []
    for name in BACKENDS:
        reason = unavailable_reason(name, device)
        if reason is not None:
            assert isinstance(reason, str) and reason.strip(), (name, reason)
            assert "\n" not in reason, reason
            assert name in reason.lower(), f"the reason does not name {name!r}: {reason}"
            refused.append((name, reason))
    return refused


@pytest.fixture
def registry():
    """The registry with "narrow" first and every entry point spied on; restored afterwards.

    Yields the list of (entry point, backend name) calls, in order."""
    saved = dict(BACKENDS)
    calls = []

    def spy(kind, name, fn):
        def wrapped(*args):
            calls.append((kind, name))
            return fn(*args)
        return wrapped

    narrow = dataclasses.replace(BACKENDS["reference"], name="narrow", max_branches=2,
                                 max_temperature=10.0, dtypes=(torch.float32,))
    BACKENDS.clear()
    for record in (narrow, *saved.values()):
        if record.row_terms is not None:
            record = dataclasses.replace(
                record, row_terms=spy("row_terms", record.name, record.row_terms),
                fused_op=spy("fused_op", record.name, record.fused_op))
        BACKENDS[record.name] = record
    yield calls
    BACKENDS.clear()
    BACKENDS.update(saved)


# ---- the records ---------------------------------------------------------------------------

def test_records_are_named_by_their_keys_and_the_last_takes_anything():
    assert {"reference", "triton", "native"} <= set(BACKENDS)
    for name, record in BACKENDS.items():
        assert record.name == name
    fallback = list(BACKENDS.values())[-1]  # what "auto" ends on: it must take any inputs
    assert fallback.name == "reference"
    assert (fallback.device_types, fallback.dtypes, fallback.max_branches,
            fallback.max_temperature, fallback.auto_device_types) == (None,) * 5
    for device in DEVICES:
        assert fallback.unavailable_reason(device) is None


def test_entry_points_exist_exactly_where_a_backend_can_run():
    for name, record in BACKENDS.items():
        runs_somewhere = any(record.unavailable_reason(d) is None for d in DEVICES)
        assert (record.row_terms is not None) == runs_somewhere, name
        assert (record.fused_op is not None) == runs_somewhere, name


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_available_backends_lists_what_runs_auto_order_first(device):
    runnable = [n for n in BACKENDS if unavailable_reason(n, device) is None]
    auto = [n for n in runnable if BACKENDS[n].auto_may_pick(device)]
    listed = available_backends(device)
    assert sorted(listed) == sorted(runnable)
    assert listed[:len(auto)] == auto  # in the registry's order
    assert resolve_backend("auto", device).name == listed[0] == auto[0]


def test_auto_never_picks_the_triton_interpreter():
    assert BACKENDS["triton"].auto_device_types == ("cuda",)
    listed = available_backends(CPU)
    if "triton" in listed:  # TRITON_INTERPRET=1 (tests/conftest.py)
        assert listed[-1] == "triton" and resolve_backend("auto", CPU).name != "triton"
    if TRITON_INSTALLED:
        assert available_backends("cuda")[0] == "triton"


# ---- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_unavailable_reasons_are_one_line_naming_the_backend(device):
    refused = reasons_are_lines(device)
    if device.type == "meta":  # neither kernel runs there, on any installation
        assert {"triton", "native"} <= {name for name, _ in refused}


def test_unknown_backend_name_is_an_error_listing_the_registry():
    with pytest.raises(ValueError, match=re.escape(str(sorted(BACKENDS)))):
        unavailable_reason("cuda-magic", CPU)


def test_explicit_unavailable_backend_raises_its_reason():
    logits, gate, target = (t.to("meta") for t in make_inputs(4, 3, 5))
    reason = unavailable_reason("native", "meta")
    with pytest.raises(ValueError, match=re.escape(reason)):
        one_loss(logits, gate, target, backend="native")


@pytest.mark.skipif(not TRITON_INSTALLED, reason="triton is not installed")
def test_triton_on_the_cpu_without_the_interpreter_says_how(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = unavailable_reason("triton", CPU)
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    assert "triton" not in available_backends(CPU)
    logits, gate, target = make_inputs(4, 3, 5)
    with pytest.raises(ValueError, match=re.escape(reason)):
        one_loss(logits, gate, target, backend="triton")
    hidden, weight, bias, gate, target = make_linear_inputs(4, 3, 2, 7)
    with pytest.raises(ValueError, match=re.escape(reason)):
        fused_linear_one_loss(hidden, weight, gate, target, bias=bias, backend="triton")


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


MISSING_NATIVE = {
    "not built": "sys.modules['one_fast._native'] = None",  # import fails: module not found
    "broken": ("class Broken:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'one_fast._native':\n"
               "            raise ImportError('undefined symbol: boom')\n"
               "sys.meta_path.insert(0, Broken())"),
}


@pytest.mark.parametrize("how", sorted(MISSING_NATIVE))
def test_missing_kernels_are_explained_and_refused(how):
    """Without triton and with the native extension unbuilt or broken, only the reference runs,
    and each reason is the one a user can act on."""
    out = run_python(
        "import sys, torch\n"
        "sys.modules['triton'] = None\n"
        f"{MISSING_NATIVE[how]}\n"
        "from one_fast.loss import available_backends, one_loss, unavailable_reason\n"
        "assert available_backends('cpu') == available_backends('cuda') == ['reference']\n"
        "z = torch.randn(4, 3, 5); g = torch.full((4, 3), 1 / 3); y = torch.zeros(4).long()\n"
        "for name in ('native', 'triton'):\n"
        "    try:\n"
        "        one_loss(z, g, y, backend=name)\n"
        "    except ValueError as exc:\n"
        "        assert unavailable_reason(name, 'cpu') in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(name + ' ran')\n"
        "print(unavailable_reason('native', 'cpu'))\n"
        "print(unavailable_reason('triton', 'cuda'))\n")
    native_reason, triton_reason = out.splitlines()
    assert "pip install --no-build-isolation -e ." in native_reason
    if how == "not built":
        assert "was not built" in native_reason
    else:
        assert "does not load (undefined symbol: boom)" in native_reason
    assert "triton is not installed" in triton_reason


# ---- limits: explicit refuses, auto moves on -------------------------------------------------

def test_max_branches_refused_when_named_skipped_by_auto(registry):
    logits, gate, target = make_inputs(4, 3, 5)
    with pytest.raises(ValueError, match="'narrow' takes at most 2 branches, got logits with "
                                         "m = 3; use backend='auto' or one of .*'reference'"):
        one_loss(logits, gate, target, backend="narrow")
    assert not registry  # refused before anything ran
    one_loss(logits, gate, target)
    assert registry[0][1] != "narrow"
    registry.clear()
    one_loss(logits[:, :2], torch.softmax(gate[:, :2], 1), target)
    assert registry == [("row_terms", "narrow")]


def test_max_temperature_and_dtypes_refused_when_named(registry):
    logits, gate, target = make_inputs(4, 2, 5)
    with pytest.raises(ValueError, match="'narrow' is not accurate in float32 at temperature "
                                         "20 > 10"):
        one_loss(logits, gate, target, backend="narrow", temperature=20.0)
    with pytest.raises(ValueError, match="'narrow' takes logits and gate of dtypes "
                                         "torch.float32, got torch.float64"):
        one_loss(logits, gate.double(), target, backend="narrow")
    assert resolve_backend("auto", CPU, 2, 3.0, (torch.float32, torch.float64)).name != "narrow"
    assert resolve_backend("auto", CPU, 2, 3.0, (torch.float32,)).name == "narrow"


def test_oneloss_backend_check_reads_the_registry(registry):
    assert ONELoss(backend="narrow").backend == "narrow"
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ONELoss(backend="wide")


@pytest.mark.skipif(not native.HAS_CPU, reason="native extension not built")
def test_native_refuses_a_dtype_it_does_not_take_and_auto_moves_on():
    logits, gate, target = make_inputs(4, 3, 5)
    low = logits.detach().to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="'native' takes logits and gate of dtypes"):
        one_loss(low, gate, target, backend="native")
    assert torch.isfinite(one_loss(low, gate, target))  # the reference


# ---- one_loss and fused_linear_one_loss choose alike -----------------------------------------

@pytest.mark.parametrize("m", [2, 3, 9])
@pytest.mark.parametrize("temperature", [3.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_linear_runs_the_backend_one_loss_runs(registry, m, temperature, dtype):
    hidden, weight, bias, gate, target = make_linear_inputs(5, 4, m, 7, dtype=dtype)
    opts = dict(temperature=temperature)
    fused_linear_one_loss(hidden, weight, gate, target, bias=bias, chunk_size=2,
                          **opts).backward()
    chunk_kernels = set(registry)
    registry.clear()
    logits = torch.einsum("nh,mvh->nmv", hidden, weight) + bias
    one_loss(logits, gate, target, **opts).backward()
    if m <= 2 and temperature <= 10 and dtype == torch.float32:
        want = "narrow"
    elif native.HAS_CPU and m <= native.MAX_BRANCHES and temperature <= 100:
        want = "native"
    else:
        want = "reference"
    assert registry == [("row_terms", want)]
    assert chunk_kernels == {("fused_op", want)}
