"""Installation: the notice when the native kernel is skipped, and life without triton."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (
        "TRITON_INTERPRET", "ONE_FAST_NATIVE_REQUIRED", "ONE_FAST_NATIVE_CUDA_REQUIRED")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


def _notices(*argv: str) -> list[str]:
    """The 'native C++ kernel' lines setup.py prints, run with ``argv`` and torch hidden (as
    pip's build isolation hides it)."""
    result = python(f"import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', "
                    f"*{list(argv)!r}]; exec(open('setup.py').read())")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "native C++ kernel" in line]


def test_build_without_torch_says_how_to_build_the_native_kernel():
    """pip's build isolation hides torch from setup.py: the build must say so, in one line."""
    notice = _notices("editable_wheel", "--help")
    assert len(notice) == 1, notice
    assert "NOT built" in notice[0] and "pip install --no-build-isolation -e ." in notice[0]


def test_the_notice_is_printed_once_per_install():
    """pip runs setup.py once per PEP 517 hook (egg_info, dist_info, then the build): only the
    build prints the notice, so an install shows it once, not three times."""
    editable = [_notices(*hook, "--help") for hook in (["egg_info"], ["dist_info"],
                                                       ["editable_wheel"])]
    wheel = [_notices(*hook, "--help") for hook in (["egg_info"], ["dist_info"],
                                                    ["bdist_wheel"])]
    assert [len(n) for n in editable] == [0, 0, 1]
    assert [len(n) for n in wheel] == [0, 0, 1]
    assert _notices("--name") == []


def test_cpu_paths_work_without_triton():
    """triton is an extra: the reference and native losses and the trainer import without it."""
    result = python(
        "import sys; sys.modules['triton'] = None\n"
        "import torch, one_fast.train\n"
        "from one_fast.loss import one_loss, available_backends\n"
        "z = torch.randn(4, 3, 5, requires_grad=True)\n"
        "g = torch.softmax(torch.randn(4, 3), 1); y = torch.randint(0, 5, (4,))\n"
        "names = available_backends('cpu')\n"
        "assert 'triton' not in names\n"
        "for b in names:\n"
        "    one_loss(z, g, y, backend=b).backward()\n"
        "print(names)\n")
    assert result.returncode == 0, result.stderr
    assert "reference" in result.stdout
