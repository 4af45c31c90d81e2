"""The precision check on CUDA: the same tiny table in bf16 and in fp32, side by side."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from one_fast.experiments.report import render
from one_fast.experiments.runner import resolve_precision, run_table

from .digits_table import TINY, tiny_options, tiny_table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_and_fp32_runs_land_in_their_own_folders_and_columns(tmp_path):
    assert resolve_precision("auto") == "bf16"  # what the trainer itself uses on CUDA
    table = tiny_table().only(["m2"])
    texts = {}
    for precision in ("bf16", "none"):
        options = tiny_options(tmp_path, seeds=(0,), epochs=1)
        # Eager steps: precision is under test here, not compilation (which costs minutes).
        options = replace(options, precision=precision,
                          extra_flags=(*TINY, "--no-compile", "--no-cuda-graphs"))
        result = run_table(table, options, say=lambda _: None)
        (run,) = result.runs
        assert result.outcome(run).status == "finished", result.outcome(run).error
        stored = json.loads((run.run_dir / "checkpoint.json").read_text())["config"]
        assert stored["amp"] == precision
        assert run.run_dir.parent.name == ("bf16-e1" if precision == "bf16" else "fp32-e1")
        texts[precision] = render(result, options)
    assert "| m2 (digits ResNet-32) | ONE | bf16 |" in texts["bf16"]
    assert "| m2 (digits ResNet-32) | ONE | fp32 |" in texts["none"]
