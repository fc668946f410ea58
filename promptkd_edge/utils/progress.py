"""Progress reporting for long work: a no-op for library use and tests, rich progress bars for the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from promptkd_edge.utils.text import visible

Update = Callable[..., None]


class Progress(Protocol):
    def note(self, message: str) -> None: ...

    def task(self, description: str, total: int) -> Update: ...

    def done(self) -> None: ...


class NullProgress:
    def note(self, message: str) -> None:
        pass

    def task(self, description: str, total: int) -> Update:
        return lambda completed=None, **info: None

    def done(self) -> None:
        pass


class RichProgress:
    """One bar per task on stderr (the previous one stays visible); notes print above the bars. Notes and task
    descriptions are plain text (paths and names from users' files are never read as markup)."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as _Progress

        self.console = Console(stderr=True, emoji=False)
        self.enabled = enabled
        self._bars = _Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(),
                               TextColumn("{task.fields[info]}", markup=False),
                               console=self.console, disable=not enabled, transient=False)
        self._started = False

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(visible(message), markup=False, highlight=False)

    def task(self, description: str, total: int) -> Update:
        if not self._started:
            self._bars.start()
            self._started = True
        task_id = self._bars.add_task(visible(description), total=total, info="")

        def update(completed: int | None = None, **info: Any) -> None:
            self._bars.update(task_id, completed=completed, info=visible(_info_text(info)))

        return update

    def done(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False


def _info_text(info: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())


class LineProgress:
    """For logs and CI (stderr is not a terminal): plain lines, a task's progress at most every `every` seconds and
    when it completes, instead of bars that a log file cuts ("500/5...", "0:00:...")."""

    def __init__(self, every: float = 15.0, stream: Any = None):
        import sys

        self.every, self.stream = every, stream or sys.stderr

    def _print(self, line: str) -> None:
        print(visible(line), file=self.stream, flush=True)

    def note(self, message: str) -> None:
        self._print(message)

    def task(self, description: str, total: int) -> Update:
        import time

        start = time.monotonic()
        state = {"last": start, "done": False}

        def update(completed: int | None = None, **info: Any) -> None:
            now = time.monotonic()
            finished = completed is not None and total and completed >= total
            if state["done"] or (not finished and now - state["last"] < self.every):
                return
            state["last"], state["done"] = now, bool(finished)
            count = f"{completed}/{total}" if completed is not None else f"?/{total}"
            pct = f" ({100 * completed / total:.0f} %)" if completed is not None and total else ""
            extra = _info_text(info)
            self._print(f"{description}: {count}{pct}, {now - start:.0f} s" + (f", {extra}" if extra else ""))

        return update

    def done(self) -> None:
        pass
