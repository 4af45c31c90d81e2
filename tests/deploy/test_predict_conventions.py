"""predict's input conventions: float .npy batches are pixels in [0, 1] (``--normalized``: values
already normalised), anything else is refused with one line; an exported file holds one member,
so ``--member`` naming another is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from one_fast import export as export_command
from one_fast import predict as predict_command
from one_fast.runs import load_run

N = 4  # test digits per batch


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_run(trained_run)


@pytest.fixture(scope="module")
def student(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("conventions") / "student.pt2"
    assert export_command.main([str(trained_run), "--out", str(out)]) == 0
    return out


def _predict(argv, capsys) -> list[dict]:
    assert predict_command.main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["predictions"]


def _refused(argv, capsys) -> str:
    assert predict_command.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _probabilities(rows: list[dict]) -> torch.Tensor:
    """(rows, 10) probabilities, by class index."""
    out = torch.zeros(len(rows), 10, dtype=torch.float64)
    for k, row in enumerate(rows):
        for top in row["top"]:
            out[k, top["class"]] = top["probability"]
    return out


def test_float_pixels_in_unit_range_predict_as_their_uint8_pixels(loaded, student, tmp_path,
                                                                 capsys):
    pixels = loaded.dataset.test_images[:N].numpy()  # uint8 (N, 3, 16, 16)
    np.save(tmp_path / "u8.npy", pixels)
    np.save(tmp_path / "unit.npy", pixels.astype(np.float32) / 255)
    as_u8 = _predict([str(student), str(tmp_path / "u8.npy"), "--top-k", "10"], capsys)
    as_unit = _predict([str(student), str(tmp_path / "unit.npy"), "--top-k", "10"], capsys)
    torch.testing.assert_close(_probabilities(as_unit), _probabilities(as_u8), atol=1e-5, rtol=0)


def test_normalized_flag_takes_values_as_they_are(loaded, student, tmp_path, capsys):
    pixels = loaded.dataset.test_images[:N]
    np.save(tmp_path / "u8.npy", pixels.numpy())
    np.save(tmp_path / "normalized.npy", loaded.inputs.normalize(pixels).numpy())
    as_u8 = _predict([str(student), str(tmp_path / "u8.npy"), "--top-k", "10"], capsys)
    given = _predict([str(student), str(tmp_path / "normalized.npy"), "--top-k", "10",
                      "--normalized"], capsys)
    torch.testing.assert_close(_probabilities(given), _probabilities(as_u8), atol=1e-6, rtol=0)
    # Normalised values (negative and above 1) without the flag are not pixels in [0, 1].
    err = _refused([str(student), str(tmp_path / "normalized.npy")], capsys)
    assert "float values must be pixels in [0, 1]" in err and "--normalized" in err
    err = _refused([str(student), str(tmp_path / "u8.npy"), "--normalized"], capsys)
    assert "uint8 values are 0-255 pixels" in err


def test_float_pixels_in_0_255_are_refused(loaded, student, tmp_path, capsys):
    batch = tmp_path / "f255.npy"
    np.save(batch, loaded.dataset.test_images[:N].numpy().astype(np.float32))
    err = _refused([str(student), str(batch)], capsys)
    assert "f255.npy: float values must be pixels in [0, 1]" in err
    assert "found values in [0, 255]" in err and "divide 0-255 pixels by 255" in err
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 3, 16, 16), np.nan, np.float32))
    assert "holds NaN or infinite values" in _refused([str(student), str(nan), "--normalized"],
                                                      capsys)


def test_member_other_than_the_exported_one_is_refused(loaded, student, trained_run, tmp_path,
                                                       capsys):
    batch = tmp_path / "u8.npy"
    np.save(batch, loaded.dataset.test_images[:N].numpy())
    err = _refused([str(student), str(batch), "--member", "2"], capsys)
    assert "--member 2: " in err and "holds one member (branch 0)" in err
    assert "python -m one_fast.export RUN_DIR --member 2" in err
    assert _refused([str(student), str(batch), "--member", "ensemble"], capsys)
    same = _predict([str(student), str(batch), "--member", "0"], capsys)
    assert same == _predict([str(student), str(batch)], capsys)
    # A run folder holds every member: --member picks one there.
    assert len(_predict([str(trained_run), str(batch), "--member", "2"], capsys)) == N
