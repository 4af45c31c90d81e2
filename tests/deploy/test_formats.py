"""Exported files: each format reproduces the module it was written from, at any batch size,
and carries its description; nothing is written unless the check passes."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from one_fast.deploy import (
    FORMATS,
    ExportError,
    InputSpec,
    describe,
    export_module,
    extract_branch,
    extract_ensemble,
    load_exported,
)
from one_fast.deploy import formats as formats_module
from one_fast.methods import create_method
from one_fast.models import create_model

HAVE_ONNX = all(importlib.util.find_spec(name) is not None
                for name in ("onnx", "onnxscript", "onnxruntime"))
SPEC = InputSpec(dataset="toy", num_classes=6, channels=3, height=12, width=12,
                 mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), class_names=tuple("abcdef"))


def params_of(fmt):
    if fmt == "onnx":
        return pytest.param(fmt, marks=pytest.mark.skipif(
            not HAVE_ONNX, reason="onnx, onnxscript and onnxruntime are not installed "
                                  "(pip install -e '.[onnx]')"))
    return fmt


@pytest.fixture(scope="module")
def network():
    model = create_model("resnet", num_classes=6, num_branches=3, depth=8)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 12, 12))  # move BatchNorm statistics off their init
    return model.eval()


@pytest.mark.parametrize("fmt", [params_of(f) for f in FORMATS])
@pytest.mark.parametrize("member", [1, "ensemble"])
def test_round_trip(network, tmp_path, fmt, member):
    module = extract_ensemble(network) if member == "ensemble" else extract_branch(network, 1)
    meta = describe(module, member, create_method("one"), SPEC, source={"run_dir": "x"})
    out = tmp_path / f"model.{fmt}"
    path, difference = export_module(module, fmt, out, meta, torch.randn(4, 3, 12, 12))
    assert path == out and out.is_file()
    loaded = load_exported(out)
    assert loaded.format == fmt
    assert loaded.inputs == SPEC
    assert loaded.meta["member"] == member and loaded.meta["params"] == meta["params"]
    tolerance = 1e-4 if fmt == "onnx" else 1e-5
    assert difference <= tolerance
    for n in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(n, 3, 12, 12)
        with torch.no_grad():
            expected = module(x)
        torch.testing.assert_close(loaded.run(x), expected, rtol=tolerance, atol=tolerance)


def test_description(network):
    student = extract_branch(network, 0)
    meta = describe(student, 0, create_method("one"), SPEC)
    assert meta["num_branches"] == 1 and meta["arch"] == "resnet"
    assert meta["arch_options"]["depth"] == 8
    assert meta["params"] == sum(p.numel() for p in create_model(
        "resnet", num_classes=6, num_branches=1, depth=8).parameters())
    assert meta["flops_per_image"] > 0 and meta["output"] == "logits"
    assert not any(module.training for module in (student, student.network, *student.modules()))
    averaged = describe(extract_ensemble(network, "dml"), "ensemble", create_method("dml"),
                        SPEC)
    assert averaged["output"] == "log_probabilities" and averaged["num_branches"] == 3
    assert averaged["flops_per_image"] > meta["flops_per_image"]


def test_state_dict_file_loads_into_the_plain_network(network, tmp_path):
    student = extract_branch(network, 2)
    meta = describe(student, 2, create_method("one"), SPEC)
    export_module(student, "state_dict", tmp_path / "s.pt", meta, torch.randn(2, 3, 12, 12))
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    plain = create_model("resnet", num_classes=6, num_branches=1, depth=8)
    plain.load_state_dict(saved["state_dict"], strict=True)


def test_a_file_that_does_not_reproduce_the_module_is_not_written(network, tmp_path,
                                                                  monkeypatch):
    student = extract_branch(network, 0)
    meta = describe(student, 0, create_method("one"), SPEC)
    target = tmp_path / "s.pt2"
    target.write_bytes(b"previous")
    real_load = formats_module.load_exported_bytes

    def corrupted(data, where):  # the file read back computes something else
        loaded = real_load(data, where)
        return formats_module.ExportedModel(run=lambda x: loaded.run(x) + 1e-3,
                                            meta=loaded.meta, inputs=loaded.inputs,
                                            format=loaded.format)

    monkeypatch.setattr(formats_module, "load_exported_bytes", corrupted)
    with pytest.raises(ExportError, match="does not reproduce"):
        export_module(student, "pt2", target, meta, torch.randn(2, 3, 12, 12))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt2"]  # no temp file left


def test_unknown_format_and_missing_onnx(network, tmp_path, monkeypatch):
    student = extract_branch(network, 0)
    meta = describe(student, 0, create_method("one"), SPEC)
    with pytest.raises(ValueError, match="--format must be one of pt2, onnx"):
        export_module(student, "tflite", tmp_path / "x", meta, torch.randn(2, 3, 12, 12))
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails
    with pytest.raises(ExportError, match="pip install onnx"):
        export_module(student, "onnx", tmp_path / "x.onnx", meta, torch.randn(2, 3, 12, 12))
    assert not (tmp_path / "x.onnx").exists()


def test_reading_what_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model"):
        load_exported(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an exported model"):
        load_exported(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a one_fast state_dict export"):
        load_exported(other)
