"""evaluate, export and predict on a real (short) digits run: from the run folder to a student
file and its predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast import predict as predict_command
from one_fast.engine.metrics import read_metrics
from one_fast.models import create_model
from one_fast.runs import load_run


def run_json(main, argv, capsys):
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def fails(main, argv, capsys, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_run(trained_run)


def test_evaluate_reproduces_the_runs_last_test_record(trained_run, capsys):
    result = run_json(evaluate_command.main, [str(trained_run)], capsys)
    last = [r for r in read_metrics(trained_run) if "test_acc" in r][-1]
    assert result["accuracy"] == last["test_acc"]  # exactly
    assert set(result["accuracy"]) == {"branch_0", "branch_1", "branch_2", "ensemble"}
    assert result["matches_recorded"] is True and result["images"] == 360


def test_evaluate_per_class_adds_up(trained_run, loaded, capsys):
    result = run_json(evaluate_command.main, [str(trained_run), "--per-class", "--split",
                                              "train", "--batch-size", "100"], capsys)
    assert result["split"] == "train" and result["recorded"] is None
    labels = loaded.dataset.train_labels
    counts = torch.bincount(labels, minlength=10).double()
    for name, accuracy in result["accuracy"].items():
        per_class = torch.tensor(result["per_class"][name], dtype=torch.float64)
        assert float((per_class * counts).sum() / counts.sum()) == pytest.approx(accuracy,
                                                                                 abs=1e-12)
    assert result["class_names"] == [str(d) for d in range(10)]


def test_evaluate_prints_a_table(trained_run, capsys):
    assert evaluate_command.main([str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and "equal to the run's last metrics.jsonl test record" in out


def test_without_a_checkpoint(tmp_path, capsys):
    for main in (evaluate_command.main, export_command.main):
        argv = [str(tmp_path)] if main is evaluate_command.main else [str(tmp_path), "--out",
                                                                     str(tmp_path / "s.pt2")]
        fails(main, argv, capsys, "no checkpoint at")
    fails(predict_command.main, [str(tmp_path), "x.png"], capsys, "no checkpoint at")
    fails(evaluate_command.main, [str(tmp_path / "absent")], capsys, "no run folder")


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "state_dict"])
def test_export_writes_a_checked_student(trained_run, loaded, tmp_path, capsys, fmt):
    out = tmp_path / f"student.{fmt}"
    assert export_command.main([str(trained_run), "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plain = create_model("resnet", num_classes=10, num_branches=1, depth=8)
    n_params = sum(p.numel() for p in plain.parameters())
    assert f"{n_params:,} parameters" in text and "FLOPs per 3x16x16 image" in text
    deployed = export_command.load_exported(out)
    x = loaded.inputs.normalize(loaded.dataset.test_images[:20])
    with torch.no_grad():
        expected = loaded.model(x)[0][:, 0]
    torch.testing.assert_close(deployed.run(x), expected, rtol=1e-5, atol=1e-5)
    if fmt == "state_dict":
        plain.load_state_dict(torch.load(out, weights_only=True)["state_dict"], strict=True)


def test_export_the_ensemble(trained_run, loaded, tmp_path, capsys):
    out = tmp_path / "ensemble.pt2"
    assert export_command.main([str(trained_run), "--member", "ensemble", "--out",
                                str(out)]) == 0
    x = loaded.inputs.normalize(loaded.dataset.test_images[:20])
    with torch.no_grad():
        logits, gate = loaded.model(x)
    torch.testing.assert_close(export_command.load_exported(out).run(x),
                               torch.einsum("nm,nmc->nc", gate, logits), rtol=1e-5, atol=1e-5)


def test_export_bad_arguments(trained_run, tmp_path, capsys):
    out = str(tmp_path / "s.pt2")
    fails(export_command.main, [str(trained_run), "--member", "3", "--out", out], capsys,
          "--member 3 is out of range: the network has 3 branches (0..2)")
    fails(export_command.main, [str(trained_run), "--member", "first", "--out", out], capsys,
          "--member must be a branch index")
    fails(export_command.main, [str(trained_run), "--format", "tflite", "--out", out], capsys,
          "--format must be one of pt2, onnx, torchscript, state_dict")
    assert not (tmp_path / "s.pt2").exists()


@pytest.fixture(scope="module")
def student_file(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "student.pt2"
    assert export_command.main([str(trained_run), "--out", str(out)]) == 0
    return out


def write_digits(loaded, folder, n=4):
    """The first n test digits as grey PNGs (16x16, as the dataset holds them)."""
    paths = []
    for k in range(n):
        path = folder / f"digit{k}.png"
        Image.fromarray(loaded.dataset.test_images[k, 0].numpy(), mode="L").save(path)
        paths.append(str(path))
    return paths


def test_predict_pngs_with_the_exported_student(loaded, student_file, tmp_path, capsys):
    paths = write_digits(loaded, tmp_path)
    result = run_json(predict_command.main, [str(student_file), *paths, "--top-k", "3"],
                      capsys)
    x = loaded.inputs.normalize(loaded.dataset.test_images[:4])
    with torch.no_grad():
        probabilities = torch.softmax(loaded.model(x)[0][:, 0], 1)
    for row, expected in zip(result["predictions"], probabilities, strict=True):
        top = row["top"]
        assert len(top) == 3
        assert top[0]["class"] == int(expected.argmax())
        assert top[0]["name"] == str(top[0]["class"])  # digits are named 0-9
        assert top[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def test_predict_npy_and_run_folder_agree(trained_run, loaded, student_file, tmp_path, capsys):
    batch = tmp_path / "batch.npy"
    np.save(batch, loaded.dataset.test_images[:3].permute(0, 2, 3, 1).numpy())  # (N, H, W, C)
    from_file = run_json(predict_command.main, [str(student_file), str(batch)], capsys)
    from_run = run_json(predict_command.main, [str(trained_run), str(batch)], capsys)
    assert [r["input"] for r in from_file["predictions"]] == [f"batch.npy[{k}]" for k in range(3)]
    for a, b in zip(from_file["predictions"], from_run["predictions"], strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        for ta, tb in zip(a["top"], b["top"], strict=True):
            assert ta["probability"] == pytest.approx(tb["probability"], abs=1e-6)


def test_predict_bad_inputs(student_file, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small)
    fails(predict_command.main, [str(student_file), str(small)], capsys,
          "image is 8x8 (WxH), the network was trained on 16x16 digits images; pass --resize")
    assert predict_command.main([str(student_file), str(small), "--resize"]) == 0
    capsys.readouterr()
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(rgba)
    fails(predict_command.main, [str(student_file), str(rgba)], capsys,
          "image mode RGBA is not supported")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    fails(predict_command.main, [str(student_file), str(text)], capsys, "not a readable image")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 8, 8), np.uint8))
    fails(predict_command.main, [str(student_file), str(wrong)], capsys,
          "expected a batch of shape (N, 3, 16, 16) or (N, 16, 16, 3), got (2, 3, 8, 8)")
    fails(predict_command.main, [str(student_file), str(tmp_path / "absent.png")], capsys,
          "no such input file")
    fails(predict_command.main, [str(student_file), str(small), "--top-k", "11"], capsys,
          "--top-k must be in 1..10")


@pytest.mark.slow
def test_the_documented_commands_from_a_shell(trained_run, loaded, tmp_path):
    """evaluate -> export -> predict as a user types them (fresh interpreters)."""
    import subprocess
    import sys

    def command(*argv):
        done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "equal to the run's last metrics.jsonl test record" in command(
        "one_fast.evaluate", str(trained_run))
    student = tmp_path / "student.pt2"
    assert "checked against the in-memory model" in command(
        "one_fast.export", str(trained_run), "--out", str(student))
    paths = write_digits(loaded, tmp_path, n=2)
    out = command("one_fast.predict", str(student), *paths, "--top-k", "1")
    assert "digit0.png: " in out and "digit1.png: " in out


def test_evaluate_loss_terms(trained_run, loaded, capsys):
    result = run_json(evaluate_command.main, [str(trained_run), "--loss"], capsys)
    terms, w = result["loss_terms"], result["kl_weight"]
    assert list(terms) == ["loss", "ce_branches", "ce_ensemble", "kl"]
    assert w == loaded.config.kl_weight  # no ramp-up in this run
    assert terms["loss"] == pytest.approx(
        terms["ce_branches"] + terms["ce_ensemble"] + w * 3.0 ** 2 * terms["kl"], rel=1e-5)
    x = loaded.inputs.normalize(loaded.dataset.test_images)
    with torch.no_grad():
        logits, gate = loaded.model(x)
    logits, gate = logits.double(), gate.double()
    y = loaded.dataset.test_labels
    ensemble = torch.einsum("nm,nmc->nc", gate, logits)
    ce_ensemble = torch.nn.functional.cross_entropy(ensemble, y)
    ce_branches = sum(torch.nn.functional.cross_entropy(logits[:, i], y) for i in range(3))
    assert terms["ce_ensemble"] == pytest.approx(float(ce_ensemble), rel=1e-5)
    assert terms["ce_branches"] == pytest.approx(float(ce_branches), rel=1e-5)


def test_a_run_folder_with_inputs_json_needs_no_dataset(trained_run, loaded, tmp_path, capsys,
                                                        monkeypatch):
    import dataclasses
    import shutil

    from one_fast.deploy import save_input_spec
    from one_fast.runs import loading as runs

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    names = tuple(f"digit-{d}" for d in range(10))
    save_input_spec(copy, dataclasses.replace(loaded.inputs, class_names=names))

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(runs, "run_dataset", no_dataset)
    paths = write_digits(loaded, tmp_path, n=1)
    result = run_json(predict_command.main, [str(copy), *paths, "--top-k", "1"], capsys)
    assert result["predictions"][0]["top"][0]["name"].startswith("digit-")


def test_the_trainer_writes_inputs_json_so_predict_needs_no_dataset(trained_run, loaded,
                                                                    tmp_path, capsys,
                                                                    monkeypatch):
    from one_fast.deploy import input_spec, read_input_spec
    from one_fast.runs import loading as runs

    # written at run start from the training data (not by a later command)
    assert read_input_spec(trained_run) == input_spec(loaded.dataset, loaded.config.data_dir)

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(runs, "run_dataset", no_dataset)
    paths = write_digits(loaded, tmp_path, n=2)
    result = run_json(predict_command.main, [str(trained_run), *paths], capsys)
    assert len(result["predictions"]) == 2
