"""Per-step metrics of both training stages, kept on the device and read off it once per log interval.

`.item()` on every step waits for the accelerator each time; a StepLog keeps each step's record (step, epoch,
lr, ...) and its tensors (the losses), and `flush` reads all of them in one transfer, writes one metrics line per
step and returns the last step's values.
"""

from __future__ import annotations

from typing import Any

import torch

from promptkd_edge.train.metrics_log import MetricsLog


class StepLog:
    """Steps not yet written: a record of plain values plus named scalar tensors, per step."""

    def __init__(self, metrics: MetricsLog | None):
        self.metrics = metrics  # None on the processes that write nothing (all ranks but 0)
        self._pending: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: dict[str, Any], values: dict[str, torch.Tensor]) -> None:
        """Buffer one step: `record` as given, `values` (0-d tensors) detached and still on the device."""
        self._pending.append((record, {name: value.detach() for name, value in values.items()}))

    def flush(self, seconds: float) -> dict[str, float]:
        """Read the buffered values (one device sync), write `record | values | seconds` per step and return the
        last step's values; empty when nothing was buffered."""
        if not self._pending:
            return {}
        flat = [value.float() for _, values in self._pending for value in values.values()]
        numbers = iter(torch.stack(flat).cpu().tolist())
        rows = [{name: next(numbers) for name in values} for _, values in self._pending]
        if self.metrics is not None:
            for (record, _), row in zip(self._pending, rows, strict=True):
                self.metrics.write(record | row | {"seconds": round(seconds, 3)})
        self._pending.clear()
        return rows[-1]
