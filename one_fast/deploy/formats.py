"""Write a deployable module to a file (pt2, ONNX, TorchScript, state_dict), checked, and read it.

Every file carries a JSON description (:data:`META_NAME`): what it computes (a member's logits or
the ensemble's), the architecture it was cut from and the :class:`~one_fast.deploy.inputs.InputSpec`
its inputs must follow, so ``python -m one_fast.predict FILE images...`` needs nothing else.

* ``pt2``: ``torch.export`` (the default) -- ``torch.export.load(f).module()(x)``; the
  description is an extra file of the archive.
* ``onnx``: ``torch.onnx.export`` (needs ``pip install onnx onnxscript``; running it needs
  onnxruntime); the description is in the model's metadata_props.
* ``torchscript``: ``torch.jit.trace`` -- ``torch.jit.load(f)(x)``; description as an extra file.
* ``state_dict``: ``torch.save`` of ``{"format", "state_dict", "meta"}``; the weights load
  strictly into the network ``meta`` describes (rebuilt by :func:`load_exported`).

The batch dimension is dynamic in pt2, ONNX and TorchScript alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write
from ..methods import create_method
from ..models import create_model
from ..models.own import build_own_model, create_own_model, is_own_arch
from .extract import PlainNetwork
from .inputs import InputSpec

FORMATS = ("pt2", "onnx", "torchscript", "state_dict")
META_NAME = "one_fast.json"
STATE_DICT_FORMAT = "one_fast.state_dict/1"
ONNX_INSTALL = ("pip install onnx onnxscript onnxruntime  (or: pip install --no-build-isolation "
                "-e \".[onnx]\")")
# How far a re-loaded artefact may be from the in-memory module on the check batch: torch's
# float32 defaults for the torch formats (same kernels, same order); ONNX Runtime runs its own
# convolution kernels, whose float32 sums are ordered differently.
_TOLERANCE = {"pt2": (1.3e-6, 1e-5), "torchscript": (1.3e-6, 1e-5),
              "state_dict": (0.0, 0.0), "onnx": (1e-4, 1e-4)}


class ExportError(RuntimeError):
    """The exported file does not reproduce the module, or the format cannot be written."""


@dataclass(frozen=True)
class ExportedModel:
    """A model read back from an exported file.

    Attributes:
        run: maps float32 input (N, C, H, W) to the file's output (N, C) on the CPU.
        meta: the file's description (see :func:`export_module`).
        inputs: what the inputs must look like.
        format: the file's format.
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    meta: dict
    inputs: InputSpec
    format: str


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _onnx_modules():
    """(onnx, onnxruntime-or-None), or an ExportError saying how to install them."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter needs it)
    except ImportError as err:
        raise ExportError(f"the onnx format needs the onnx and onnxscript packages "
                          f"({err.name} is missing): {ONNX_INSTALL}") from err
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    return onnx, onnxruntime


@contextlib.contextmanager
def _torchscript():
    """TorchScript is only written when asked for by name; torch's deprecation notice on every
    jit call would only repeat that pt2 (the default) is its successor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated",
                                category=DeprecationWarning)
        yield


# What torch.onnx.export says on every export that is not about this model: its registry skips
# torchvision's operators when torchvision is not installed (this network uses none), and
# torch's own pytree code trips its own deprecation. Anything else it says is shown.
_ONNX_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
_EXPECTED_ONNX_LOG = "torchvision is not installed. Skipping "
_EXPECTED_ONNX_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_EXPECTED_ONNX_LOG)


@contextlib.contextmanager
def _onnx_export_quiet():
    """torch.onnx.export without its expected notices (see above); other lines pass."""
    logger = logging.getLogger(_ONNX_REGISTRY_LOGGER)
    dropper = _DropExpected()
    logger.addFilter(dropper)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EXPECTED_ONNX_WARNING,
                                    category=FutureWarning)
            yield
    finally:
        logger.removeFilter(dropper)


def _batch_dim():
    return {"x": {0: torch.export.Dim("batch", min=1)}}


def _serialise(module: nn.Module, fmt: str, example: torch.Tensor, meta_text: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes=_batch_dim())
        torch.export.save(program, buffer, extra_files={META_NAME: meta_text})
    elif fmt == "torchscript":
        with torch.no_grad(), _torchscript():
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, buffer, _extra_files={META_NAME: meta_text})
    elif fmt == "state_dict":
        torch.save({"format": STATE_DICT_FORMAT, "state_dict": module.state_dict(),
                    "meta": meta_text}, buffer)
    else:
        onnx, _ = _onnx_modules()
        with _onnx_export_quiet():
            program = torch.onnx.export(module, (example,), input_names=["x"],
                                        output_names=["output"], dynamic_shapes=_batch_dim(),
                                        dynamo=True, verbose=False)
        proto = program.model_proto
        onnx.helper.set_model_props(proto, {META_NAME: meta_text})
        return proto.SerializeToString()
    return buffer.getvalue()


def _zip_kind(names: list[str]) -> str | None:
    tails = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in tails:
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "state_dict"
    return None


def _detect_format(data: bytes, where: str) -> str:
    if zipfile.is_zipfile(io.BytesIO(data)):
        kind = _zip_kind(zipfile.ZipFile(io.BytesIO(data)).namelist())
        if kind is not None:
            return kind
        raise ValueError(f"{where}: a zip archive, but not a pt2, TorchScript or one_fast "
                         f"state_dict file")
    if where.endswith(".onnx") or data[:1] == b"\x08":  # ONNX: a protobuf starting ir_version
        return "onnx"
    raise ValueError(f"{where}: not an exported model (pt2, onnx, torchscript or state_dict)")


def _rebuild(state: dict, meta: dict) -> nn.Module:
    if is_own_arch(meta["arch"]):  # a network of the user's own (--arch module:...)
        options = meta["arch_options"]
        if meta["member"] != "ensemble":  # the student is the user's own class
            student = build_own_model(meta["arch"], options["arch_kwargs"])
            student.load_state_dict(state, strict=True)
            return student.eval()
        network = create_own_model(meta["arch"], num_branches=meta["num_branches"], **options)
        network.load_state_dict(state, strict=True)
        return PlainNetwork(network, "ensemble", create_method(meta["method"]))
    network = create_model(meta["arch"], num_classes=meta["inputs"]["num_classes"],
                           num_branches=meta["num_branches"], **meta["arch_options"])
    network.arch, network.arch_options = meta["arch"], dict(meta["arch_options"])
    network.load_state_dict(state, strict=True)
    if meta["member"] == "ensemble":
        return PlainNetwork(network, "ensemble", create_method(meta["method"]))
    return PlainNetwork(network, "member")


def load_exported_bytes(data: bytes, where: str = "<bytes>") -> ExportedModel:
    """:func:`load_exported` for a file's content (``where`` names it in errors)."""
    fmt = _detect_format(data, where)
    if fmt == "pt2":
        extra = {META_NAME: ""}
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
        meta_text, run = extra[META_NAME], program.module()
    elif fmt == "torchscript":
        extra = {META_NAME: ""}
        with _torchscript():
            run = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
        run.eval()
        meta_text = extra[META_NAME]
    elif fmt == "state_dict":
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != STATE_DICT_FORMAT:
            raise ValueError(f"{where}: a torch file, but not a one_fast state_dict export")
        meta_text = saved["meta"]
        run = _rebuild(saved["state_dict"], json.loads(meta_text))
    else:
        onnx, onnxruntime = _onnx_modules()
        if onnxruntime is None:
            raise ExportError(f"running an ONNX file needs onnxruntime: {ONNX_INSTALL}")
        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        meta_text = props.get(META_NAME, "")
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
    if not meta_text:
        raise ValueError(f"{where}: no {META_NAME} description (not written by one_fast.export)")
    meta = json.loads(meta_text)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return run(x.float().cpu())

    return ExportedModel(run=forward, meta=meta, inputs=InputSpec.from_dict(meta["inputs"]),
                         format=fmt)


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Read a file written by :func:`export_module` (the format is recognised from its content).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a file this module writes.
        ExportError: an ONNX file without onnx / onnxruntime installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    return load_exported_bytes(path.read_bytes(), str(path))


def verify(module: nn.Module, loaded: ExportedModel, example: torch.Tensor) -> float:
    """Largest absolute difference between the file's and the module's output on ``example``.

    Raises:
        ExportError: shapes differ, the outputs differ beyond the format's tolerance, or the
            predicted classes differ.
    """
    with torch.no_grad():
        expected = module(example).float().cpu()
    got = loaded.run(example)
    rtol, atol = _TOLERANCE[loaded.format]
    if got.shape != expected.shape:
        raise ExportError(f"the {loaded.format} file gives outputs of shape {tuple(got.shape)}, "
                          f"the module {tuple(expected.shape)}")
    try:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    except AssertionError as err:
        raise ExportError(f"the {loaded.format} file does not reproduce the module: {err}") \
            from err
    if not torch.equal(got.argmax(1), expected.argmax(1)):
        raise ExportError(f"the {loaded.format} file predicts other classes than the module")
    return float((got - expected).abs().max()) if got.numel() else 0.0


def export_module(module: nn.Module, fmt: str, out: str | os.PathLike, meta: dict,
                  example: torch.Tensor) -> tuple[Path, float]:
    """Export ``module`` to ``out`` in format ``fmt``, after checking the file reproduces it.

    The file is built in memory, read back the way :func:`load_exported` reads it and run on
    ``example``; only then is it written (atomically: ``out`` is either untouched or complete).

    Args:
        module: an extracted member or ensemble (CPU, eval mode): a :class:`PlainNetwork`, or
            a member of a ``--arch module:...`` network as the user's own class.
        fmt: one of :data:`FORMATS`.
        out: the file to write.
        meta: JSON-ready description stored in the file; must hold "arch", "arch_options",
            "num_branches", "member" (an index or "ensemble"), "method" and "inputs"
            (an InputSpec's dict).
        example: float32 (N, C, H, W) check batch (N >= 2; also the trace input).

    Returns:
        (path written, largest absolute output difference on the check batch).

    Raises:
        ValueError: unknown format.
        ExportError: the format cannot be written here, or the file does not reproduce the
            module (nothing is written then).
    """
    _check_format(fmt)
    module.eval()
    meta_text = json.dumps({**meta, "format": fmt}, sort_keys=True)
    data = _serialise(module, fmt, example, meta_text)
    loaded = load_exported_bytes(data, f"the {fmt} export")
    difference = verify(module, loaded, example)
    path = Path(out)
    atomic_write(path, lambda f: f.write(data))
    return path, difference
