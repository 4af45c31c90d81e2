"""benchmarks/gpu_check: the plan fits the GPU machines' 9-minute budget, in the order that
decides most first; stages stop at their caps and leave their results; a failed preflight or
a missing native CUDA kernel stops the check. All on the CPU (nothing here needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_caps_sum_within_nine_minutes(tmp_path):
    stages = gpu_check.plan(tmp_path)
    assert gpu_check.BUDGET_S == 9 * 60
    assert sum(s.cap_s for s in stages) <= gpu_check.BUDGET_S
    assert all(s.cap_s >= 0 for s in stages)


def test_order_puts_what_decides_most_first(tmp_path):
    names = [s.name for s in gpu_check.plan(tmp_path)]
    assert names[:4] == ["preflight", "install", "native check", "precision"]
    assert names[4:8] == [f"epoch {mode}" for mode in
                          ("eager", "compiled", "compiled+graphs", "bf16")]
    assert names[8:] == ["loss benchmarks", "step benchmarks", "remaining GPU tests",
                         "other benchmarks"]
    fatal = [s.name for s in gpu_check.plan(tmp_path) if s.fatal]
    assert fatal == ["preflight", "native check"]
    assert "install" not in [s.name for s in gpu_check.plan(tmp_path, install=False)]


def test_epoch_modes_differ_in_what_they_say():
    flags = gpu_check.EPOCH_MODES
    assert flags["eager"][:2] == ("--no-compile", "--no-cuda-graphs")
    assert flags["compiled"][:2] == ("--compile", "--no-cuda-graphs")
    assert flags["compiled+graphs"][:2] == ("--compile", "--cuda-graphs")
    assert flags["bf16"] == ("--compile", "--cuda-graphs", "--amp", "bf16")
    assert "--depth" in gpu_check.EPOCH_FLAGS and "32" in gpu_check.EPOCH_FLAGS


@pytest.mark.parametrize("mode", list(gpu_check.EPOCH_MODES))
def test_epoch_commands_are_valid_trainer_configs(mode, tmp_path):
    from one_fast.cli.train_flags import config_from_args
    from one_fast.config import validate_config

    config = config_from_args([*gpu_check.EPOCH_FLAGS, *gpu_check.EPOCH_MODES[mode],
                               "--out-dir", str(tmp_path)])
    validate_config(config)
    assert (config.dataset, config.depth, config.batch_size, config.epochs) == (
        "synthetic", 32, 128, 2)
    assert config.amp == ("bf16" if mode == "bf16" else "none")


def test_dry_run_prints_the_plan_with_caps_and_needs_no_gpu():
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                              "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stages = gpu_check.plan(Path("RESULTS"))
    for stage in stages:
        cap = f"{stage.cap_s:>4} s" if stage.cap_s else " left"
        assert f"{stage.name:<22} {cap}" in out.stdout
    total = sum(s.cap_s for s in stages)
    assert f"total of the caps: {total} s" in out.stdout
    assert "fits the 540 s budget" in out.stdout


def test_dry_run_fails_when_the_caps_exceed_the_budget(monkeypatch, capsys):
    monkeypatch.setenv("GPU_CHECK_SECONDS", "100")
    assert gpu_check.main(["--dry-run"]) == 1
    assert "EXCEEDS the 100 s budget" in capsys.readouterr().out


def _stage(name, code, cap, **kw):
    return gpu_check.Stage(name, cap, (sys.executable, "-c", code), name, **kw)


def test_a_pytest_stage_that_collects_nothing_says_so(tmp_path):
    """pytest's exit 5 ("no tests collected") is not a plain "ok" for a pytest stage, and a
    failure for any other command."""
    stages = [_stage("empty", "import sys; sys.exit(5)", 5, junit="empty.xml"),
              _stage("command", "import sys; sys.exit(5)", 5)]
    gpu_check.run_plan(stages, tmp_path, budget_s=30, log=gpu_check.Log(tmp_path / "c.log"))
    records = json.loads((tmp_path / "stages.json").read_text())
    assert [r["outcome"] for r in records] == ["ok (nothing collected)", "FAILED"]


def test_stages_stop_at_their_caps_and_record_as_they_go(tmp_path):
    slow = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
            "    print('interrupted')\n    raise SystemExit(2)")
    stages = [
        _stage("quick", "print('hello')", 2),
        _stage("slow", slow, 1),  # gets its own second plus what "quick" left unused
        _stage("after", "import sys; sys.exit(3)", 2),
        _stage("last", "print('still runs')", 2),
    ]
    log = gpu_check.Log(tmp_path / "check.log")
    assert not gpu_check.run_plan(stages, tmp_path, budget_s=30, log=log)
    records = json.loads((tmp_path / "stages.json").read_text())
    assert [r["stage"] for r in records] == ["quick", "slow", "after", "last"]
    assert [r["outcome"] for r in records] == ["ok", "TIMED OUT", "FAILED", "ok"]
    assert records[1]["seconds"] < 10  # stopped by SIGINT, not after 60 s
    assert records[1]["limit_s"] > 1  # the first stage's unused time carried over
    assert (tmp_path / "slow.log").read_text().strip() == "interrupted"
    assert "still runs" in (tmp_path / "check.log").read_text()


def test_a_failed_fatal_stage_stops_the_check(tmp_path):
    stages = [_stage("preflight", "import sys; sys.exit(1)", 2, fatal=True),
              _stage("never", "print('ran')", 2)]
    assert not gpu_check.run_plan(stages, tmp_path, 30, gpu_check.Log(tmp_path / "c.log"))
    records = json.loads((tmp_path / "stages.json").read_text())
    assert [r["stage"] for r in records] == ["preflight"]
    assert not (tmp_path / "never.log").exists()


def test_stages_beyond_the_budget_are_skipped(tmp_path):
    stages = [_stage("a", "import time; time.sleep(1.5)", 3), _stage("b", "pass", 3)]
    gpu_check.run_plan(stages, tmp_path, budget_s=1.2, log=gpu_check.Log(tmp_path / "c.log"))
    records = json.loads((tmp_path / "stages.json").read_text())
    assert records[0]["outcome"] == "TIMED OUT"
    assert records[1]["outcome"] == "SKIPPED (no time left)"


def test_native_check_stops_with_the_builds_message(tmp_path, capsys, monkeypatch):
    """When the native backend cannot run on CUDA the check says why and quotes the build's
    own lines from install.log."""
    import one_fast.loss

    monkeypatch.setattr(one_fast.loss, "unavailable_reason",
                        lambda name, device: "built without its CUDA kernel")
    (tmp_path / "install.log").write_text(
        "Building editable for one_fast\none_fast: CUDA build of the native extension failed "
        "(error: cannot find -lcudart); building the CPU variant\nSuccessfully installed\n")
    assert gpu_check.native_check(tmp_path) == 1
    out = capsys.readouterr().out
    assert "native backend missing on CUDA" in out
    assert "cannot find -lcudart" in out
    recorded = json.loads((tmp_path / "native.json").read_text())
    assert recorded["reason"] == "built without its CUDA kernel"


def test_native_check_passes_when_the_native_backend_runs_on_cuda(tmp_path, monkeypatch):
    import one_fast.loss

    monkeypatch.setattr(one_fast.loss, "unavailable_reason", lambda name, device: None)
    assert gpu_check.native_check(tmp_path) == 0


def test_junit_counts_and_epoch_results_are_summarised(tmp_path):
    (tmp_path / "r.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.a" name="ok"/><testcase classname="tests.a" name="bad">'
        '<failure message="x"/></testcase><testcase classname="tests.a" name="s">'
        '<skipped/></testcase></testsuite></testsuites>')
    counts = gpu_check.junit_counts(tmp_path / "r.xml")
    assert counts == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1,
                      "failed": ["tests.a::bad"]}
    run_dir = tmp_path / "epochs" / "bf16"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "images_per_s": 900.0, "epoch_time_s": 55.6}) + "\n"
        + json.dumps({"epoch": 2, "images_per_s": 40000.0, "epoch_time_s": 1.25}) + "\n")
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    line = gpu_check._epoch_collector("bf16")(tmp_path)
    assert line["measured_epoch"]["images_per_s"] == 40000.0
    assert not (run_dir / "checkpoint.pt").exists()
    gpu_check.write_json(tmp_path / "stages.json", [{"stage": "epoch bf16", "outcome": "ok",
                                                     "exit": 0, "seconds": 60}])
    gpu_check.summary(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "| bf16 | 900 | 40000 |" in text and "| epoch bf16 | ok | 0 | 60 s |" in text


@pytest.mark.skipif(sys.platform != "linux", reason="Linux process groups")
def test_without_a_gpu_the_check_refuses(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)],
                         cwd=ROOT, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "",
                                        "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_stage_ends_when_its_process_does_even_if_a_child_keeps_the_output_open(tmp_path):
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)'])\n"
            "print('parent done')")
    log = gpu_check.Log(tmp_path / "c.log")
    assert gpu_check.run_plan([_stage("leaves a child", code, 30)], tmp_path, 60, log)
    (record,) = json.loads((tmp_path / "stages.json").read_text())
    assert record["outcome"] == "ok" and record["seconds"] < 10
