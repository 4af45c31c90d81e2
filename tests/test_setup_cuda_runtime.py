"""setup.py's CUDA variant: the CUDA runtime of torch's nvidia wheels is linked when CUDA_HOME
has none (the GPU machines' layout), and ONE_FAST_NATIVE_CUDA_REQUIRED=1 refuses any fall-back
to the CPU variant. setup.py runs in a subprocess (it calls setup() when executed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LOAD = ("import sys; sys.argv = ['setup.py', '--name']; ns = {'__name__': 'setup'}\n"
         "exec(open('setup.py').read(), ns)\n")


def run_setup(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ONE_FAST_NATIVE_REQUIRED", "ONE_FAST_NATIVE_CUDA_REQUIRED")}
    return subprocess.run([sys.executable, "-c", _LOAD + code], cwd=ROOT, capture_output=True,
                          text=True, env={**clean, **env}, timeout=300)


def test_the_wheels_runtime_is_linked_when_cuda_home_has_none(tmp_path):
    site = tmp_path / "site"
    runtime = site / "nvidia" / "cu13" / "lib" / "libcudart.so.13"
    runtime.parent.mkdir(parents=True)
    runtime.write_bytes(b"")
    cuda_home_lib = tmp_path / "cuda_home_lib"  # like /usr/local/lib: no libcudart.so
    cuda_home_lib.mkdir()
    toolkit_lib = tmp_path / "toolkit_lib"  # a CUDA_HOME/lib64 that has one
    toolkit_lib.mkdir()
    (toolkit_lib / "libcudart.so").write_bytes(b"")
    # the wheels' namespace package, as torch's CUDA wheels lay it out, holding only ours
    code = ("import types; nvidia = types.ModuleType('nvidia')\n"
            f"nvidia.__path__ = [{str(site / 'nvidia')!r}]; sys.modules['nvidia'] = nvidia\n"
            f"made = ns['_cudart_link_dir']([{str(cuda_home_lib)!r}], '13.0', "
            f"{str(tmp_path / 'build')!r})\n"
            f"kept = ns['_cudart_link_dir']([{str(toolkit_lib)!r}], '13.0', "
            f"{str(tmp_path / 'build2')!r})\n"
            "import json; print(json.dumps([made, kept]))\n")
    out = run_setup(code)
    assert out.returncode == 0, out.stderr
    made, kept = json.loads(out.stdout.strip().splitlines()[-1])
    link = Path(made) / "libcudart.so"
    assert link.is_symlink() and Path(os.readlink(link)) == runtime
    assert kept is None  # CUDA_HOME's own runtime links as it is
    assert "linking the CUDA runtime of torch's wheels" in out.stderr


def test_cuda_required_refuses_a_cpu_only_build(tmp_path):
    """No CUDA variant can be built here (a CPU build of torch, or -- with CUDA_HOME pointing
    at an empty folder -- no nvcc): with the variable set, setup.py stops instead of building
    the CPU variant."""
    import torch

    out = run_setup("", ONE_FAST_NATIVE_CUDA_REQUIRED="1", CUDA_HOME=str(tmp_path))
    assert out.returncode != 0
    assert "CUDA variant not built" in out.stderr
    assert "ONE_FAST_NATIVE_CUDA_REQUIRED=1" in out.stderr
    assert ("is a CPU build" if torch.version.cuda is None else "nvcc not found") in out.stderr
