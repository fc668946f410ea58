"""A run's per-step metrics log (metrics.jsonl) and its loss curve (loss.png); the run folder's layout is
formats/run.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptkd_edge.utils.files import atomic_path
from promptkd_edge.utils.text import visible


class MetricsLog:
    """Append-only JSONL, one line per optimizer step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, or none when it is not there."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, out: Path, title: str = "pkd distill") -> None:
    """Loss per step (raw and smoothed) with the learning rate on a second axis, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:  # pyplot keeps every open figure: close it even when drawing or saving fails
        _draw(fig, ax, rows, title)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _draw(fig: Any, ax: Any, rows: list[dict[str, Any]], title: str) -> None:
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, ema, alpha = [], loss[0], min(1.0, 20 / max(len(loss), 1))  # an EMA over about 1/20 of the run
    for v in loss:
        ema = (1 - alpha) * ema + alpha * v
        smooth.append(ema)
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(steps, smooth, color="tab:blue", linewidth=2, label="loss (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("KD loss")
    ax.set_yscale("log" if min(loss) > 0 and max(loss) / max(min(loss), 1e-12) > 20 else "linear")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", linewidth=1, label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    epochs = sorted({r["epoch"] for r in rows})
    for e in epochs[1:]:
        ax.axvline(min(r["step"] for r in rows if r["epoch"] == e), color="gray", alpha=0.2, linewidth=0.8)
    ax.set_title(visible(title))  # a run named with control characters has no glyphs for them
    fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88))
    fig.tight_layout()
