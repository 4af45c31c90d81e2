"""The README's commands and example are the ones CI and users actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "loss " in capsys.readouterr().out


def test_setup_is_two_commands_and_ci_runs_the_test_command():
    bash = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    main, tests = bash[0].strip(), bash[1].strip()
    assert main.endswith("python -m one_fast.train --fused") and "\n" not in main
    assert tests.endswith("python -m pytest") and "\n" not in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "print(blocks[1].strip())" in ci and 'eval "$test_command"' in ci
