"""Progress reporting for long work: a no-op for library use and tests, rich progress bars for the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

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
    """One bar per task on stderr (the previous one stays visible); notes print above the bars."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as _Progress

        self.console = Console(stderr=True)
        self.enabled = enabled
        self._bars = _Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                               console=self.console, disable=not enabled, transient=False)
        self._started = False

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def task(self, description: str, total: int) -> Update:
        if not self._started:
            self._bars.start()
            self._started = True
        task_id = self._bars.add_task(description, total=total, info="")

        def update(completed: int | None = None, **info: Any) -> None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            self._bars.update(task_id, completed=completed, info=text)

        return update

    def done(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False
