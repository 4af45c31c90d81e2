"""``python -m one_fast.train --dataset imagenet`` on the CPU (DALI's CPU mode) on a tiny
ImageNet-layout folder: an epoch, the input-pipeline accounting, exact resume, clear errors."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_fast import train
from one_fast.data.imagenet import dali_available
from one_fast.data.loaders import build_loaders
from one_fast.engine.checkpoint import load_checkpoint

from .data.imagenet_files import make_tiny_imagenet

ROOT = Path(__file__).resolve().parents[1]

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed "
                                "(pip install nvidia-dali-cuda130)")
# The imagenet preset's ONE ResNet-18 (m=3) on 32x32 crops: 2 steps of 8 an epoch, at lr 0.01
# (on such small images its first steps at 0.1 head for divergence).
FLAGS = ["--dataset", "imagenet", "--fused", "--image-size", "32", "--batch-size", "8",
         "--lr", "0.01", "--data-threads", "1", "--lr-milestones", "", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet_train"))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.slow
@needs_dali
def test_one_epoch_through_the_cli_then_exact_resume(tiny, tmp_path, capsys):
    data = ["--data-dir", str(tiny.root)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main([*FLAGS, *data, "--epochs", "2", "--out-dir", str(straight)]) == 0
    assert train.main([*FLAGS, *data, "--epochs", "1", "--out-dir", str(split)]) == 0
    out = capsys.readouterr().out
    assert "imagenet (19 train / 10 test, 3 classes, 32px), --method one, " in out
    assert "resnet18 m=3" in out
    assert "waited for data" in out  # the console line reports the input pipeline apart

    first = _records(split)[0]
    assert first["epoch"] == 1 and first["step"] == 2  # 19 images // batch 8
    assert set(first["test_acc"]) == {"branch_0", "branch_1", "branch_2", "ensemble"}
    source = first["input"]
    assert source["images_per_s"] > 0 and 0 <= source["wait_fraction"] <= 1
    assert first["step_images_per_s"] >= first["images_per_s"]  # waiting time taken out

    # --data-threads is this machine's setting, not the run's: the resumed process uses its
    # default (2 threads on CI), and the batches must not depend on it.
    assert train.main(["--resume", str(split), "--epochs", "2"]) == 0
    assert load_checkpoint(split)["config"]["data_threads"] is None
    assert "resumed from" in capsys.readouterr().out
    assert [r["epoch"] for r in _records(split)] == [1, 2]
    # The loader restarts epoch 2 exactly as the uninterrupted run ran it: same weights.
    a, b = load_checkpoint(straight)["model"], load_checkpoint(split)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _records(straight)[1]["train"] == _records(split)[1]["train"]


@pytest.mark.slow
@needs_dali
def test_two_gloo_processes_read_their_own_shards(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29541", "-m", "one_fast.train", *FLAGS, "--data-dir", str(tiny.root),
           "--epochs", "1", "--out-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout
    records = _records(out)
    assert len(records) == 1  # rank 0 alone logs
    # 19 images -> 9 per rank (one left out so both run the same steps) -> 1 step of 8.
    assert records[0]["step"] == 1 and records[0]["input"]["images_per_s"] > 0


def test_missing_dali_is_one_line_with_the_install_command(tiny, tmp_path, capsys,
                                                           monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    code = train.main([*FLAGS, "--data-dir", str(tiny.root), "--epochs", "1",
                       "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "pip install nvidia-dali-cuda130" in err and '-e ".[imagenet]"' in err


def test_bad_layout_is_one_line_naming_the_fix(tiny, tmp_path, capsys):
    root = tmp_path / "half"
    (root / "train" / "n00000001").mkdir(parents=True)
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"not sorted yet")
    code = train.main([*FLAGS, "--data-dir", str(root), "--epochs", "1",
                       "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "outside class folders" in err and "one_fast.prepare_imagenet" in err


def test_image_size_of_a_fixed_size_dataset_is_refused():
    with pytest.raises(ValueError, match="--image-size 64: --dataset digits has 16x16 images"):
        build_loaders("digits", 64, device="cpu", seed=0, image_size=64)
    _, _, info = build_loaders("digits", 64, device="cpu", seed=0, image_size=16)
    assert (info.num_classes, info.image_shape) == (10, (3, 16, 16))


def test_batch_larger_than_a_shard_names_the_flag():
    with pytest.raises(ValueError, match="--batch-size 800 is larger than the training set "
                                         r"\(718 images per process\)"):
        build_loaders("digits", 800, device="cpu", seed=0, world_size=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_dali
def test_cuda_graph_run_trains_on_gpu_decoded_batches_like_an_eager_run(tiny, tmp_path):
    """On CUDA, DALI decodes on the GPU and each batch is copied into the CUDA graph's static
    input buffers: the replayed run must see the same batches as an eager one (a batch
    overwritten before its copy finished would train on other images and land far away)."""
    gpu = ["--dataset", "imagenet", "--data-dir", str(tiny.root), "--image-size", "64",
           "--batch-size", "2", "--lr", "0.01", "--epochs", "1", "--lr-milestones", "",
           "--no-progress", "--no-compile", "--amp", "none", "--no-channels-last"]
    assert train.main([*gpu, "--cuda-graphs", "--out-dir", str(tmp_path / "graphs")]) == 0
    assert train.main([*gpu, "--no-cuda-graphs", "--out-dir", str(tmp_path / "eager")]) == 0
    graphed, eager = _records(tmp_path / "graphs")[0], _records(tmp_path / "eager")[0]
    assert graphed["cuda_graph_replays"] == 19 // 2 - 3  # every step after the 3 warm-up ones
    assert 0 <= graphed["input"]["wait_fraction"] <= 1 and graphed["input"]["images_per_s"] > 0
    assert graphed["train"] == pytest.approx(eager["train"], rel=1e-3)
    a = load_checkpoint(tmp_path / "graphs")["model"]
    b = load_checkpoint(tmp_path / "eager")["model"]
    for k in a:  # 9 SGD steps; cuDNN's atomics differ between runs at the 1e-5 level
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4,
                                   msg=lambda s, n=k: f"{n}: {s}")


@needs_dali
def test_imagenet_batches_arrive_in_the_given_dtype(tiny):
    train_loader, test_loader, _ = build_loaders(
        "imagenet", 4, device="cpu", seed=0, data_dir=tiny.root, image_size=16,
        data_threads=1, channels_last=True, dtype=torch.bfloat16)
    for batches in (train_loader.epoch_batches(0), test_loader.eval_batches()):
        images, labels = next(iter(batches))
        assert images.dtype == torch.bfloat16 and labels.dtype == torch.int64
        assert images.is_contiguous(memory_format=torch.channels_last)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("none", torch.float32)])
def test_trainer_asks_for_batches_in_the_steps_dtype(tiny, tmp_path, monkeypatch, amp, dtype):
    """The step's dtype (bf16 under bf16 autocast) is what the loaders are built with."""
    from one_fast.runs import trainer

    asked = {}

    def record(*args, **kwargs):
        asked.update(kwargs)
        raise _Stop

    monkeypatch.setattr(trainer, "build_loaders", record)
    with pytest.raises(_Stop):
        train.main([*FLAGS, "--data-dir", str(tiny.root), "--amp", amp, "--epochs", "1",
                    "--out-dir", str(tmp_path / "run")])
    assert asked["dtype"] == dtype
