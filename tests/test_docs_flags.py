"""Every `pkd` flag the documentation, the help screens' examples and the error messages name exists: a renamed or
removed option cannot leave a sentence behind that sends a user to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from promptkd_edge.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "export").rglob("*.md")])
SOURCES = sorted((REPO / "promptkd_edge").rglob("*.py"))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# other tools' flags the docs name alone, with the tool: a file here must define it, or the tool is not ours
FOREIGN = {"--system-site-packages": "python -m venv", "--no-deps": "pip",
           "--archs": "benchmarks/adaptation_choice.py", "--reuse": "benchmarks/adaptation_demo.py"}


def options() -> tuple[dict[str, set[str]], set[str]]:
    """({command: its flags}, the flags every command takes: the app's own and --help)."""
    group = typer.main.get_command(app)
    common = {o for p in group.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return {name: {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | common
            for name, command in group.commands.items()}, common


COMMANDS, COMMON = options()
ANY = set().union(*COMMANDS.values())


def invocations(text: str) -> list[tuple[str, str]]:
    """(command, the rest of its line) for each `pkd COMMAND ...` in `text`: continuation lines joined, cut at a
    closing backtick, a shell comment or a quote."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for match in re.finditer(r"(?<![\w/-])pkd ([a-z]+)([^\n`#\"']*)", text):
        if match.group(1) in COMMANDS:
            found.append((match.group(1), match.group(2)))
    return found


def lone_flags(text: str) -> list[str]:
    """Flags named on their own in prose: a code span that starts with one (`--no-smooth`, `--profile=i` is not
    ours: a span with '=' belongs to another tool's syntax)."""
    return [m.group(1) for m in re.finditer(r"`(--[a-z][a-z0-9-]*)(?:[ `\[])", text)]


def message_flags(text: str) -> list[str]:
    """Flags a validation or error message tells the user about ('--keep-checkpoints must be >= 1')."""
    return [m.group(1) for m in re.finditer(r"(--[a-z][a-z0-9-]*) must\b", text)]


def test_the_scan_sees_every_command_and_its_options():
    assert {"distill", "export", "predict", "bench", "doctor", "teacher"} <= set(COMMANDS)
    assert {"--resume", "--student", "--keep-checkpoints"} <= COMMANDS["distill"]
    assert "--int8-fallback" in COMMANDS["export"] and "--no-int8-fallback" in COMMANDS["export"]
    assert {"--debug", "--version", "--help"} <= COMMON
    assert invocations("run `pkd export RUN --out B --no-smooth` then\npkd predict B x.jpg \\\n  --top-k 3  # --cmt") \
        == [("export", " RUN --out B --no-smooth"), ("predict", " B x.jpg  --top-k 3  ")]
    assert lone_flags("`--no-smooth` turns it off, `--profile=i` is trtexec's") == ["--no-smooth"]


def test_other_tools_flags_are_theirs():
    for flag, tool in FOREIGN.items():
        assert flag not in ANY
        if tool.endswith(".py"):
            assert f'"{flag}"' in (REPO / tool).read_text(), f"{tool} has no {flag}"


def test_the_readme_lists_every_runtime_backend():
    from promptkd_edge.runtime.backends import NAMES

    listed = re.search(r"Backends: ((?:`[a-z]+`(?:, )?)+)\.", (REPO / "README.md").read_text())
    assert listed and re.findall(r"`([a-z]+)`", listed.group(1)) == list(NAMES)


@pytest.mark.parametrize("path", [*DOCS, *SOURCES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_exists(path: Path):
    text = path.read_text(encoding="utf-8")
    wrong = [f"pkd {command} {flag}" for command, rest in invocations(text) for flag in FLAG.findall(rest)
             if flag not in COMMANDS[command]]
    if path.suffix == ".md":
        wrong += [f"{flag} (named alone)" for flag in lone_flags(text) if flag not in ANY and flag not in FOREIGN]
    wrong += [f"{flag} (in a message)" for flag in message_flags(text) if flag not in ANY]
    assert not wrong, f"{path.relative_to(REPO)} names flags pkd does not have: {', '.join(sorted(set(wrong)))}"
