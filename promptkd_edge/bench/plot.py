"""bench.png: p50 latency and images/s against batch size, one line per (model, backend, mode). Needs matplotlib."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptkd_edge.bench.record import MODES, BenchReport, ResultRow, as_report
from promptkd_edge.bench.tables import finite, machine, ordered_rows
from promptkd_edge.utils import files

_FIG_WIDTH_IN, _FIG_MIN_HEIGHT_IN, _DPI = 12.0, 5.0, 120
_LEGEND_COLUMNS, _LEGEND_ROW_IN = 4, 0.24
_LINESTYLES = {"student": "-", "teacher": "--"}
_E2E_LINESTYLES = {"end_to_end": ":", "end_to_end_frames": "-."}
_E2E_LABELS = {"end_to_end": " · end to end (files)", "end_to_end_frames": " · end to end (frames)"}
_MARKERS = {"student": "o", "teacher": "s"}


def can_plot() -> bool:
    """Whether matplotlib is installed (the [plot] or [train] extra); the core install writes no PNG."""
    return importlib.util.find_spec("matplotlib") is not None


def _series(report: BenchReport) -> list[tuple[str, list[ResultRow]]]:
    """(legend label, rows by batch) per (mode, model, backend)."""
    series = []
    for mode in MODES:
        groups: dict[tuple[str, str], list[ResultRow]] = {}
        for r in ordered_rows(report, mode):
            groups.setdefault((r.model, r.backend), []).append(r)
        for (model, backend), rows in groups.items():
            series.append((f"{model} · {backend}" + _E2E_LABELS.get(mode, ""), rows))
    return series


def _style_axes(axes: list[tuple[Any, str, str]], batches: set[int]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    for ax, title, ylabel in axes:
        ax.set_title(title)
        ax.set_xlabel("batch size (log₂)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        if batches:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks = sorted(batches)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
        else:
            ax.text(0.5, 0.5, "no timed results", ha="center", va="center", transform=ax.transAxes)


def write_plot(report: BenchReport | Mapping[str, Any], path: str | Path) -> Path:
    """p50 latency and images/s vs batch (log-log), one line per (model, backend, mode), as a PNG; returns the path."""
    report = as_report(report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    backends: dict[str, int] = {}
    for r in report.results:
        backends.setdefault(r.backend, len(backends))
    cmap = plt.get_cmap("tab10" if len(backends) <= 10 else "tab20")
    series = _series(report)
    limits = [lim for lim in report.limits or [] if finite(lim["limit_images_per_s"])]
    n_entries = len(series) + (1 if limits else 0)
    ncol = max(1, min(_LEGEND_COLUMNS, n_entries))
    legend_in = math.ceil(n_entries / ncol) * _LEGEND_ROW_IN + 0.15 if n_entries else 0.0
    height = max(_FIG_MIN_HEIGHT_IN, 3.0 + 0.9 + legend_in)

    fig, (lat_ax, tput_ax) = plt.subplots(1, 2, figsize=(_FIG_WIDTH_IN, height), dpi=_DPI)
    try:
        handles: list[Any] = []
        batches: set[int] = set()
        for label, rows in series:
            r0 = rows[0]
            style = dict(color=cmap(backends[r0.backend] % cmap.N),
                         linestyle=_E2E_LINESTYLES.get(r0.mode) or _LINESTYLES.get(r0.model, "-"),
                         marker=_MARKERS.get(r0.model, "^"), markersize=5, linewidth=1.6)
            for ax, key in ((lat_ax, "p50_ms"), (tput_ax, "images_per_s")):
                points = [(r.batch, getattr(r, key)) for r in rows
                          if finite(getattr(r, key)) and getattr(r, key) > 0 and r.batch > 0]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], **style)
                    batches.update(p[0] for p in points)
            handles.append(Line2D([], [], label=label, **style))
        if limits:
            for lim in limits:
                tput_ax.plot([lim["batch"]], [lim["limit_images_per_s"]], linestyle="none", marker="_",
                             markersize=14, markeredgewidth=2, color="0.35")
                batches.add(lim["batch"])
            handles.append(Line2D([], [], linestyle="none", marker="_", markersize=14, markeredgewidth=2,
                                  color="0.35", label="computed throughput ceiling"))
        _style_axes([(lat_ax, "Latency per call (p50)", "ms (log)"),
                     (tput_ax, "Throughput (at p50)", "images/s (log)")], batches)
        fig.suptitle(f"pkd bench {report.target['name']} on {machine(report.environment)}")
        if handles:
            fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.01), ncol=ncol, frameon=False,
                       fontsize="small")
        fig.subplots_adjust(left=0.07, right=0.98, wspace=0.22, top=1 - 0.7 / height,
                            bottom=(legend_in + 0.6) / height)
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return Path(path)
