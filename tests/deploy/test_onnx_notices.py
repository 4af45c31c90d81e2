"""export --format onnx prints no notices of torch's that are not about the model (torchvision
operators skipped, torch's own pytree deprecation), and still lets every other one through."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings

import pytest

from one_fast import export as export_command
from one_fast.deploy import formats

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(n) for n in ("onnx", "onnxscript", "onnxruntime")),
    reason="onnx, onnxscript and onnxruntime are not installed "
           "(pip install --no-build-isolation -e '.[onnx]')")
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"  # where torch logs them


class _Records(logging.Handler):
    """Collects the messages logged to the logger it is attached to."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _notices():
    """(log messages of torch's ONNX registry, warnings) emitted inside the block."""
    logger = logging.getLogger(REGISTRY_LOGGER)
    records = _Records()
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            yield records.messages, seen
    finally:
        logger.removeHandler(records)


def test_onnx_export_prints_only_its_report(trained_run, tmp_path, capfd):
    out = tmp_path / "one_e.onnx"
    with _notices() as (logged, seen):
        assert export_command.main([str(trained_run), "--member", "ensemble", "--format",
                                    "onnx", "--out", str(out)]) == 0
    assert logged == []  # torch's four "torchvision is not installed" lines
    assert [str(w.message) for w in seen] == []
    captured = capfd.readouterr()
    assert captured.err == "", captured.err
    assert captured.out.startswith(f"wrote {out} (onnx, ") and len(captured.out.splitlines()) == 3


def test_other_notices_pass_through():
    logger = logging.getLogger(REGISTRY_LOGGER)
    with _notices() as (logged, seen):
        with formats._onnx_export_quiet():
            logger.warning("torchvision is not installed. Skipping torchvision::nms")
            logger.warning("an operator this model uses has no ONNX translation")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning,
                          stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        logger.warning("torchvision is not installed. Skipping torchvision::nms")
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
    # Only inside the export are the expected lines dropped.
    assert logged == ["an operator this model uses has no ONNX translation",
                      "torchvision is not installed. Skipping torchvision::nms"]
