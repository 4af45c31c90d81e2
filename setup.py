"""Package build for one_fast (metadata lives here; tool settings in pyproject.toml).

The optional native extension ``one_fast._native`` (the fused ONE loss in C++/CUDA, sources in
``kernels/``) is built with torch's C++ extension tooling, which needs torch importable at build
time -- install with ``pip install --no-build-isolation -e .`` after installing torch (plain
``pip install -e .`` builds in an isolated environment without torch, so the extension is
skipped; that notice goes to the terminal itself, since pip hides a successful build's output).
Then:

* torch with CUDA and ``nvcc`` found: the CPU and CUDA variant (sm_80, sm_90a or sm_90, and
  compute_90 PTX; ``TORCH_CUDA_ARCH_LIST`` overrides the list);
* only a C++ compiler: the CPU variant;
* neither, no torch, or a failed build: the package installs without it, with a one-line notice
  (``backend="native"`` is then unavailable; every other backend works).

The CUDA variant links torch's CUDA runtime (``-lcudart``). When ``CUDA_HOME`` (e.g. /usr/local,
where nvcc is on the PATH) holds no ``libcudart.so``, the one that torch's own CUDA wheels
installed (``nvidia/cu13/lib/libcudart.so.13``, without the unversioned name the linker looks
for) is linked through a ``libcudart.so`` link made in the build's temporary folder.

Environment: ``ONE_FAST_NATIVE=0`` skips the extension, ``ONE_FAST_NATIVE_CUDA=0`` builds the CPU
variant only, ``ONE_FAST_NATIVE_REQUIRED=1`` turns a skipped or failed build into an error (CI),
``ONE_FAST_NATIVE_CUDA_REQUIRED=1`` likewise for the CUDA variant: no nvcc, or a CUDA build that
fails, is an error instead of a fall-back to the CPU variant (CI on torch's CUDA build).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

KERNELS = "kernels"
CPU_SOURCES = [f"{KERNELS}/binding/one_loss_op.cpp", f"{KERNELS}/one_loss_cpu.cpp"]
CUDA_SOURCES = [f"{KERNELS}/one_loss_cuda.cu"]
HEADERS = [f"{KERNELS}/one_loss_api.h", f"{KERNELS}/one_loss_row.h"]  # rebuild when they change
REQUIRED = os.environ.get("ONE_FAST_NATIVE_REQUIRED", "0") == "1"
CUDA_REQUIRED = os.environ.get("ONE_FAST_NATIVE_CUDA_REQUIRED", "0") == "1"
BUILD_COMMAND = "pip install --no-build-isolation -e ."


def _visible(line: str) -> None:
    """Print ``line`` where the user sees it: stderr, and the terminal when there is one (pip
    captures a build's stdout and stderr and shows them only with -v or on failure)."""
    print(line, file=sys.stderr, flush=True)
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(line + "\n")
    except OSError:  # no controlling terminal (CI, nohup): stderr is all there is
        pass


# pip runs this file once per PEP 517 hook: egg_info (build requirements), dist_info (metadata),
# then the build (editable_wheel or bdist_wheel). Only a build builds the kernel, so only a build
# gives the notice: once per install, not three times.
BUILD_COMMANDS = frozenset({"build", "build_ext", "bdist_wheel", "editable_wheel", "develop",
                            "install", "bdist_egg"})


def _building() -> bool:
    """Whether this invocation builds (a command of BUILD_COMMANDS is on the command line)."""
    return any(arg in BUILD_COMMANDS for arg in sys.argv[1:])


def _notice(message: str) -> None:
    if REQUIRED:
        raise RuntimeError(f"one_fast native extension: {message} (ONE_FAST_NATIVE_REQUIRED=1)")
    if not _building():
        return
    _visible(f"one_fast: native C++ kernel NOT built: {message}; the package works without it "
             f"(backend='native' and the fused CPU loss are unavailable)")


def _cpu_only(message: str) -> None:
    """Say why the CUDA variant is not built (an error under ONE_FAST_NATIVE_CUDA_REQUIRED=1)."""
    if CUDA_REQUIRED:
        raise RuntimeError(f"one_fast native extension: CUDA variant not built: {message} "
                           "(ONE_FAST_NATIVE_CUDA_REQUIRED=1)")
    print(f"one_fast: native extension for the CPU only: {message}", file=sys.stderr)


def _nvcc_release(cuda_home: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _nvcc_arch_flags(release: tuple[int, int]) -> list[str]:
    """sm_80 and sm_90a (sm_90 before CUDA 12), plus compute_90 PTX for newer GPUs."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []  # torch turns the user's list into -gencode flags
    sm90 = "90a" if release >= (12, 0) else "90"
    return ["-gencode=arch=compute_80,code=sm_80",
            f"-gencode=arch=compute_{sm90},code=sm_{sm90}",
            "-gencode=arch=compute_90,code=compute_90"]


def _cuda_release(torch, cpp_extension) -> tuple[int, int] | None:
    """nvcc's release when the CUDA variant can be built here (else None, with a reason)."""
    if os.environ.get("ONE_FAST_NATIVE_CUDA", "1") == "0":
        return None
    if torch.version.cuda is None:
        if CUDA_REQUIRED:
            _cpu_only(f"torch {torch.__version__} is a CPU build")
        return None
    cuda_home = cpp_extension.CUDA_HOME
    release = _nvcc_release(cuda_home) if cuda_home else None
    if release is None:
        _cpu_only("nvcc not found")
        return None
    if release[0] != int(torch.version.cuda.split(".")[0]):  # torch refuses a major mismatch
        _cpu_only(f"nvcc {release[0]}.{release[1]} does not match torch's CUDA "
                  f"{torch.version.cuda}")
        return None
    return release


def _wheel_cudart(cuda_major: str) -> str | None:
    """The CUDA runtime library that torch's ``nvidia-*`` wheels installed, or None: CUDA 13
    wheels put it in ``nvidia/cu13/lib``, CUDA 12 ones in ``nvidia/cuda_runtime/lib``."""
    try:
        import nvidia  # the wheels' namespace package
    except ImportError:
        return None
    for root in nvidia.__path__:
        for pattern in (f"cu{cuda_major}/lib/libcudart.so.{cuda_major}*",
                        f"cuda_runtime/lib/libcudart.so.{cuda_major}*"):
            found = sorted(glob.glob(os.path.join(root, pattern)))
            if found:
                return found[0]
    return None


def _cudart_link_dir(library_dirs: list[str], cuda_version: str, build_temp: str) -> str | None:
    """A folder to add to ``library_dirs`` so that ``-lcudart`` links, or None if one of
    ``library_dirs`` (CUDA_HOME's) already has ``libcudart.so`` or no runtime is found.

    The folder holds one link, ``libcudart.so`` -> the wheel's ``libcudart.so.<major>``; the
    extension then records that soname, which torch has already loaded when it imports it.
    """
    if any(os.path.exists(os.path.join(d, "libcudart.so")) for d in library_dirs):
        return None
    runtime = _wheel_cudart(cuda_version.split(".")[0])
    if runtime is None:
        return None
    folder = os.path.join(build_temp, "one_fast_cudart")
    os.makedirs(folder, exist_ok=True)
    link = os.path.join(folder, "libcudart.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(runtime, link)
    print(f"one_fast: linking the CUDA runtime of torch's wheels ({runtime})", file=sys.stderr)
    return folder


def _native_extension() -> tuple[list, dict]:
    """The extension module and build command for this machine, or nothing (with a notice)."""
    if os.environ.get("ONE_FAST_NATIVE", "1") == "0":
        print("one_fast: native extension skipped (ONE_FAST_NATIVE=0)", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _notice("torch is not importable at build time (pip's build isolation hides it); "
                f"install torch first, then build it with: {BUILD_COMMAND}")
        return [], {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _notice(f"no C++ compiler ({compiler!r} not found)")
        return [], {}

    # -fno-trapping-math lets the compiler if-convert and vectorise the CPU loops (selects in
    # exp and the sums); nothing here reads floating-point exception flags.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")  # at::parallel_for over rows uses torch's OpenMP runtime
        link_flags.append("-fopenmp")
    cpu_ext = cpp_extension.CppExtension("one_fast._native", CPU_SOURCES, depends=HEADERS,
                                         extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=link_flags)
    release = _cuda_release(torch, cpp_extension)
    ext = cpu_ext
    if release is not None:
        ext = cpp_extension.CUDAExtension(
            "one_fast._native", CPU_SOURCES + CUDA_SOURCES,
            depends=HEADERS, define_macros=[("ONE_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "-std=c++17", "--threads=0",
                                         *_nvcc_arch_flags(release)]},
            extra_link_args=link_flags)

    class BuildOptionalExtension(cpp_extension.BuildExtension):
        """Build the native extension, but never fail the install because of it: a failed CUDA
        build falls back to the CPU variant, a failed CPU build to no extension (a notice)."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:  # toolchain checks before any compilation
                if CUDA_REQUIRED:
                    raise
                _notice(f"build failed ({type(exc).__name__}: {exc})".splitlines()[0])

        def build_extension(self, extension):
            cuda = extension.sources != cpu_ext.sources
            if cuda:
                folder = _cudart_link_dir(extension.library_dirs, torch.version.cuda,
                                          self.build_temp)
                if folder is not None:
                    extension.library_dirs.append(folder)
            try:
                super().build_extension(extension)
                return
            except Exception as exc:  # compiler, linker or ninja errors
                failure = f"({type(exc).__name__}: {exc})".splitlines()[0]
            if not cuda:
                _notice(f"build failed {failure}")
                return
            if CUDA_REQUIRED:
                raise RuntimeError(f"one_fast native extension: CUDA build failed {failure} "
                                   "(ONE_FAST_NATIVE_CUDA_REQUIRED=1)")
            print(f"one_fast: CUDA build of the native extension failed {failure}; building "
                  "the CPU variant", file=sys.stderr)
            # Turn the finalised extension itself into the CPU variant (setuptools attached its
            # own bookkeeping to this object when it finalised the command; a fresh Extension
            # object would lack it), then build that.
            for field in ("sources", "define_macros", "include_dirs", "library_dirs",
                          "libraries", "extra_compile_args", "extra_link_args"):
                setattr(extension, field, getattr(cpu_ext, field))
            try:
                super().build_extension(extension)
            except Exception as exc:
                _notice(f"build failed ({type(exc).__name__}: {exc})".splitlines()[0])

    return [ext], {"build_ext": BuildOptionalExtension}


ext_modules, cmdclass = _native_extension()

setup(
    name="one_fast",
    version="0.1.0",
    description="Fast training engine for ONE: Knowledge Distillation by On-the-Fly Native Ensemble",
    python_requires=">=3.10",
    packages=find_packages(include=["one_fast", "one_fast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scikit-learn",  # the embedded default dataset (handwritten digits)
        "tqdm",  # progress bars
        "matplotlib",  # the training-curves plot
    ],
    extras_require={
        # The Triton kernel. CUDA builds of torch already install triton (torch.compile needs
        # it); CPU users need it only to run the kernel through Triton's interpreter (tests).
        "triton": ["triton; platform_system == 'Linux'"],
        "tensorboard": ["tensorboard"],  # --tensorboard
        "cluster": ["submitit>=1.5"],  # python -m one_fast.experiments --launcher slurm
        "dev": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "ruff",
            "import-linter",  # lint-imports: the layers contract in pyproject.toml
            "nvidia-ml-py",
            "scikit-learn",
            "tensorboard",
            "triton; platform_system == 'Linux'",  # the interpreter tests of the Triton kernel
            "submitit>=1.5",  # the launcher tests (local executor; a real Slurm in .ci/run)
        ],
        "imagenet": ["nvidia-dali-cuda130"],  # the ImageNet input pipeline (GPU JPEG decoding)
        "onnx": ["onnx", "onnxscript", "onnxruntime"],  # export --format onnx, and running it
        # Tests of branch() on Hugging Face vision models (tests/models/own/test_transformers.py
        # skips without it; no weights are downloaded).
        "hf": ["transformers"],
    },
)
