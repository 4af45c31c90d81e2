"""The README's and the guides' (docs/*.md) commands and examples are the ones CI and users run."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.M | re.S)


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, language: str) -> list[str]:
    """The page's fenced blocks in `language`, in order."""
    return [body for lang, body in FENCED.findall(page.read_text()) if lang == language]


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return FENCED.sub("", page.read_text())


PYTHON_BLOCKS = [(page, i) for page in PAGES for i in range(len(blocks(page, "python")))]


@pytest.mark.parametrize("page, index", PYTHON_BLOCKS,
                         ids=[f"{name(page)}-{i}" for page, i in PYTHON_BLOCKS])
def test_python_example_runs(page, index, capsys):
    """Every ```python block runs as it stands, on the CPU, in a fresh namespace."""
    exec(compile(blocks(page, "python")[index], name(page), "exec"), {})
    assert capsys.readouterr().out, "the example prints what it shows"


def test_the_readme_shows_the_drop_in_loss():
    assert any("ONELoss(" in block for block in blocks(ROOT / "README.md", "python"))


def test_setup_is_two_commands_and_ci_runs_the_test_command():
    bash = re.findall(r"```bash\n(.*?)```", README, flags=re.S)  # as .ci/run reads them
    main, tests = bash[0].strip(), bash[1].strip()
    assert main.endswith("python -m one_fast.train --fused") and "\n" not in main
    assert tests.endswith("python -m pytest") and "\n" not in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "print(blocks[1].strip())" in ci and 'eval "$test_command"' in ci


def test_the_readme_reads_in_five_minutes():
    lines = README.count("\n")
    assert lines <= 210, f"README.md has {lines} lines: move detail into docs/"


# ---- links -------------------------------------------------------------------------------------

def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", prose(page), flags=re.M)}


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or ROOT not in linked.parents:
                broken.append(f"{name(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{name(page)}: {target} (no such heading)")
    assert not broken, broken
    linked_from_readme = set(re.findall(r"\]\(docs/([^)#]+)", README))
    unlinked = {page.name for page in PAGES[1:]} - linked_from_readme
    assert not unlinked, f"guides the README does not link: {sorted(unlinked)}"


# ---- commands ----------------------------------------------------------------------------------

COMMAND = re.compile(r"-m one_fast\.(\w+)([^`\n#]*)")
MODULES = {"experiments": "one_fast.experiments.__main__"}


def documented_commands() -> list[tuple[str, str, str]]:
    """(page, command, its arguments) for every `python -m one_fast.X ...` in code, fenced or
    inline (a fenced line's comment left out, a backslash continuation joined)."""
    found = []
    for page in PAGES:
        code = [*(block.replace("\\\n", " ") for block in blocks(page, "bash")),
                *(" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(page)))]
        for snippet in code:
            for command, arguments in COMMAND.findall(snippet):
                found.append((name(page), command, " ".join(arguments.split())))
    return found


def flags_of(command: str, capsys) -> set[str]:
    """The flags `python -m one_fast.COMMAND --help` lists."""
    module = importlib.import_module(MODULES.get(command, f"one_fast.{command}"))
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    return set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))


def test_documented_commands_exist_and_take_the_flags_shown(capsys):
    """Each documented command is a real command, and each flag it is shown with is one of its
    own (after `experiments ... --`: the trainer's). What the commands then do is tested with
    the commands (tests/deploy, tests/analysis, tests/experiments, tests/data, test_train)."""
    commands = documented_commands()
    shown = {command for _, command, _ in commands}
    assert shown >= {"train", "evaluate", "export", "predict", "analyze", "experiments",
                     "prepare_imagenet"}, shown
    known = {command: flags_of(command, capsys) for command in shown}
    wrong = []
    for page, command, arguments in commands:
        own, _, trainer = arguments.partition(" -- ") if command == "experiments" else (
            arguments, "", "")
        for given, flags in ((own, known[command]), (trainer, known.get("train", set()))):
            wrong += [f"{page}: one_fast.{command} {flag}"
                      for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", given)
                      if flag not in flags]
    assert not wrong, wrong


def test_documented_commands_write_only_under_runs():
    """Following the docs from the checkout leaves no untracked file: what they write goes
    under runs/ (which .gitignore ignores)."""
    assert "/runs/" in (ROOT / ".gitignore").read_text().split()
    outside = [f"{page}: {command} {arguments}"
               for page, command, arguments in documented_commands()
               for path in re.findall(r"--out(?:-dir)? (\S+)", arguments)
               if not path.startswith("runs/")]
    assert not outside, outside


def test_the_readme_names_every_extra_and_installs_them_keeping_the_native_kernel():
    """Each extra of setup.py is named in the README's Extras paragraph, and every documented
    install of an extra keeps --no-build-isolation (without it pip rebuilds in isolation and
    drops the native kernel)."""
    setup = (ROOT / "setup.py").read_text()
    extras = re.findall(r'^\s+"(\w+)": \[', setup[setup.index("extras_require"):], flags=re.M)
    assert {"triton", "tensorboard", "dev", "imagenet", "onnx"} <= set(extras), extras
    extras_paragraph = README[README.index("Extras:"):]
    extras_paragraph = extras_paragraph[:extras_paragraph.index("\n\n")]
    assert [e for e in extras if f"`[{e}]`" not in extras_paragraph] == []
    installs = [line for page in PAGES for line in page.read_text().splitlines()
                if re.search(r"pip install [^`]*-e \S*\.\[", line)]
    assert installs and [i for i in installs if "--no-build-isolation" not in i] == []
