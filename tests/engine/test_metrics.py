"""metrics.jsonl logging, TensorBoard scalars, NVML telemetry and peak memory."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from one_fast.engine import (
    MetricsLogger,
    gpu_telemetry,
    peak_memory_key,
    peak_memory_mb,
    peak_memory_record,
    read_metrics,
)
from one_fast.engine import metrics as metrics_mod


def record(epoch, with_acc=True):
    rec = {
        "epoch": epoch, "step": 10 * epoch, "lr": 0.1, "kl_weight": 0.5 * epoch,
        "train": {"loss": 2.0 / epoch, "ce_branches": 1.5 / epoch, "ce_ensemble": 0.4 / epoch,
                  "kl": 0.01 * epoch},
        "images_per_s": 1234.5, "epoch_time_s": 1.25, "peak_rss_mb": 321.0,
    }
    if with_acc:
        rec["test_acc"] = {"branch_0": 0.5, "branch_1": 0.55, "branch_2": 0.6, "ensemble": 0.7}
    return rec


def strict_json(line):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def test_logger_writes_valid_jsonl(tmp_path):
    run = tmp_path / "run"
    with MetricsLogger(run) as logger:
        logger.log(record(1))
        logger.log({**record(2, with_acc=False), "lr": torch.tensor(0.05),
                    "images_per_s": np.float32(99.5), "step": np.int64(20),
                    "train": {"loss": float("nan"), "kl": float("inf")}, "note": "x"})
        # flushed per record: readable while the logger is still open
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    parsed = [strict_json(line) for line in lines]
    assert parsed[0] == record(1)
    assert parsed[1]["lr"] == pytest.approx(0.05) and parsed[1]["step"] == 20
    assert parsed[1]["images_per_s"] == 99.5
    assert parsed[1]["train"] == {"loss": None, "kl": None}  # non-finite → null
    assert read_metrics(run) == parsed == read_metrics(run / "metrics.jsonl")


def test_logger_appends_on_resume(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(record(1))
    with MetricsLogger(tmp_path) as logger:
        logger.log(record(2))
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


def test_disabled_logger_writes_nothing(tmp_path):
    run = tmp_path / "rank1"
    with MetricsLogger(run, enabled=False, tensorboard=True) as logger:
        logger.log(record(1))
        logger.log({"anything": object()})  # not even validated
    assert not run.exists()


def test_bad_records_are_rejected(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(TypeError, match="train/bad"):
            logger.log({"epoch": 1, "train": {"bad": object()}})
        with pytest.raises(TypeError, match="shape"):
            logger.log({"epoch": 1, "x": torch.zeros(3)})
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(record(1))


def test_read_metrics_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(1)) + "\n" + '{"epoch": 2, "tr')
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["epoch"] for r in read_metrics(path)] == [1]
    path.write_text('{"epoch": 1, "tr\n' + json.dumps(record(2)) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "none.jsonl")


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    # Simulate an install without TensorBoard (whether or not it is installed here).
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, tensorboard=True)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        for epoch in (1, 2, 3):
            logger.log({**record(epoch), "gpu": {"name": "X", "power_w": 100.0 + epoch}})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/kl", "test_acc/branch_0", "test_acc/ensemble", "lr",
            "gpu/power_w"} <= tags
    assert "epoch" not in tags and "gpu/name" not in tags
    kl = events.Scalars("train/kl")
    assert [e.step for e in kl] == [1, 2, 3]
    assert [e.value for e in kl] == pytest.approx([0.01, 0.02, 0.03])


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", torch.device("cpu")])
def test_gpu_telemetry_is_empty_without_a_gpu(device):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_telemetry(device) == {}


class _FakeNVML(types.ModuleType):
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, fail_init=False):
        super().__init__("pynvml")
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("not found")

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return b"Fake H100"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 55


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(**kwargs):
        fake = _FakeNVML(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(metrics_mod, "_nvml", None)
        monkeypatch.setattr(metrics_mod, "_nvml_handles", {})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
        return fake
    return install


def test_gpu_telemetry_reads_nvml(fake_gpu):
    fake = fake_gpu()
    out = gpu_telemetry("cuda:1")
    assert out == {"name": "Fake H100", "util_percent": 87.0, "memory_util_percent": 40.0,
                   "memory_used_mb": 3072.0, "memory_total_mb": 81920.0, "power_w": 250.5,
                   "temperature_c": 55.0}  # unsupported power limit left out
    assert metrics_mod._nvml_handles[1] == ("handle", 1)  # CUDA_VISIBLE_DEVICES "3,1" → 1
    gpu_telemetry("cuda")
    assert metrics_mod._nvml_handles[0] == ("handle", 3)
    assert fake.inits == 1  # initialised once
    assert gpu_telemetry("cpu") == {}


def test_gpu_telemetry_never_raises(fake_gpu):
    fake = fake_gpu(fail_init=True)
    assert gpu_telemetry("cuda") == {}
    assert gpu_telemetry("cuda") == {}
    assert fake.inits == 1  # the failure is cached too


def test_peak_memory_cpu():
    value = peak_memory_mb("cpu")
    assert isinstance(value, float) and 10 < value < 1e6  # this process's max RSS in MiB
    assert peak_memory_key("cpu") == "peak_rss_mb"
    assert peak_memory_key("cuda:0") == "peak_memory_mb"
    assert peak_memory_mb("meta") is None
    record = peak_memory_record("cpu")
    assert list(record) == ["peak_rss_mb"] and record["peak_rss_mb"] >= value


def test_trim_metrics_keeps_what_the_checkpoint_holds(tmp_path):
    from one_fast.engine.metrics import trim_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "train": {"loss": 1.0 / e}}) for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "tr')  # killed mid-write
    assert trim_metrics(tmp_path, 2) == 2  # epoch 3 was logged, its checkpoint never written
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    other = tmp_path / "other"
    assert trim_metrics(tmp_path, 1, into=other) == 1
    assert (other / "metrics.jsonl").read_text() == lines[0] + "\n"
    assert path.read_text().count("\n") == 2  # the source is left as it was
    path.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        trim_metrics(tmp_path, 2)
