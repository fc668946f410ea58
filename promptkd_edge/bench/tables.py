"""How bench numbers read in tables: number formats, the result columns, row order, and the terminal table.

Missing or non-finite numbers render as "—".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from promptkd_edge.bench.record import MODES, BenchReport, Environment, ResultRow, as_report
from promptkd_edge.errors import PkdError
from promptkd_edge.utils.text import shown

if TYPE_CHECKING:
    from rich.table import Table

DASH = "—"
MODE_TITLES = {"compute": "Compute", "end_to_end": "End to end, files", "end_to_end_frames": "End to end, frames"}
_PIPELINE = ("through the runtime's pipeline (the next batch decoded and resized on worker threads while the backend "
             "runs this one), per batch in steady state; of compute = img/s over the compute row's")
MODE_NOTES = {
    "compute": "One call on a batch of input tensors already in place (on the device for GPU backends).",
    "end_to_end": f"From image files: decode + resize + preprocess + inference + top-k, {_PIPELINE}.",
    "end_to_end_frames": f"From uint8 frames in memory: resize + preprocess + inference + top-k, {_PIPELINE}.",
}


def finite(v: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, digits: int = 3) -> str:
    """A number with about `digits` significant figures, thousands separated; "—" when missing."""
    if not finite(v):
        return DASH
    if isinstance(v, int) or abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{min(decimals, 6)}f}"


def fmt_pct(v: Any) -> str:
    if not finite(v):
        return DASH
    pct = 100 * v
    return f"{pct:.1f}%" if abs(pct) < 10 else f"{pct:.0f}%"


def fmt_speedup(v: Any) -> str:
    return f"{v:.2f}×" if finite(v) else DASH


def machine(env: Environment) -> str:
    """What ran it, in a few words: the Jetson model, else the GPU, else the CPU."""
    if env.jetson and env.jetson.get("model"):
        return str(env.jetson["model"])
    if env.gpu and env.gpu.get("name"):
        return str(env.gpu["name"])
    return str(env.cpu or "unknown CPU")


# Table columns: (header, row attribute, formatter, optional: dropped from a table where every row lacks it).
COLUMNS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    ("model", "model", str, False),
    ("backend", "backend", str, False),
    ("batch", "batch", str, False),
    ("p50 ms", "p50_ms", fmt, False),
    ("p90 ms", "p90_ms", fmt, False),
    ("p99 ms", "p99_ms", fmt, False),
    ("img/s", "images_per_s", fmt, False),
    ("of compute", "compute_ratio", lambda v: f"{v:.2f}" if finite(v) else DASH, True),
    ("first call ms", "first_call_ms", fmt, True),
    ("peak RSS MiB", "peak_rss_mib", fmt, True),
    ("peak GPU MiB", "peak_gpu_mib", fmt, True),
    ("GPU MiB (NVML)", "gpu_process_mib", fmt, True),
    ("img/J", "images_per_joule", fmt, True),
]


def ordered_rows(report: BenchReport, mode: str) -> list[ResultRow]:
    """Rows of one mode, grouped by model (report order), then backend (first appearance), then batch."""
    roles = {m["role"]: i for i, m in enumerate(report.models)}
    backends: dict[str, int] = {}
    for r in report.results:
        backends.setdefault(r.backend, len(backends))
    rows = [r for r in report.results if r.mode == mode]
    return sorted(rows, key=lambda r: (roles.get(r.model, len(roles)), r.model, backends[r.backend], r.batch))


def columns_for(rows: Sequence[ResultRow]) -> list[tuple[str, str, Callable[[Any], str], bool]]:
    return [c for c in COLUMNS if not c[3] or any(finite(getattr(r, c[1])) for r in rows)]


def terminal_table(report: BenchReport | Mapping[str, Any], mode: str) -> Table:
    """The results of one mode (MODES) as a compact rich Table for the CLI."""
    from rich import box
    from rich.table import Table

    if mode not in MODES:
        raise PkdError(f"unknown bench mode {mode!r}; expected one of {', '.join(MODES)}")
    report = as_report(report)
    rows = ordered_rows(report, mode)
    cols = columns_for(rows)
    table = Table(title=f"{MODE_TITLES[mode]}: {MODE_NOTES[mode][0].lower()}{MODE_NOTES[mode][1:]}",
                  box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for i, (header, *_rest) in enumerate(cols):  # narrow terminals fold cells; nothing is cut to an ellipsis
        table.add_column(header, justify="right" if i >= 2 else "left", overflow="fold")
    if not rows:
        table.caption = "no results"
    for i, r in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        end_section = nxt is not None and (nxt.model, nxt.backend) != (r.model, r.backend)
        table.add_row(*(shown(c[2](getattr(r, c[1]))) for c in cols), end_section=end_section)
    return table
