"""Asking the machine: where a command is, what it prints, what a system file says. Never raises.

These are the seams tests replace (`monkeypatch.setattr(system, "which", ...)`): callers use them as
`system.which(...)`, not through `from ... import which`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from promptkd_edge.errors import first_line

COMMAND_TIMEOUT_S = 10.0


def one_line(e: BaseException | str) -> str:
    """One line describing an error or a command's output: 'Type: first line' for an exception."""
    if isinstance(e, str):
        text = e.strip()
        return text.splitlines()[0] if text else "(no output)"
    return first_line(e)


def which(name: str) -> str | None:
    """Where command `name` is on PATH, or None."""
    return shutil.which(name)


def run_command(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `cmd`; (-1, reason) when it cannot run or times out."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    except OSError as e:
        return -1, one_line(e)
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def read_text(path: Path) -> str | None:
    """A text file's contents (undecodable bytes replaced), or None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
