"""The `pkd bench` report's files: JSON (the record, docs/bench-report.md), CSV, Markdown and PNG; all atomic.

Every writer takes a BenchReport (bench/record.py) or its JSON form (validated first). Missing or non-finite
numbers are null in the JSON, empty cells in the CSV and "—" in Markdown.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptkd_edge.bench.markdown import markdown
from promptkd_edge.bench.plot import can_plot, write_plot
from promptkd_edge.bench.record import (
    MODES,
    RESULT_FIELDS,
    SCHEMA,
    SCHEMA_VERSION,
    TARGET_KINDS,
    BenchReport,
    Environment,
    ResultRow,
    as_report,
    validate_report,
)
from promptkd_edge.bench.tables import terminal_table
from promptkd_edge.utils import files

__all__ = ["CSV_FIELDS", "MODES", "RESULT_FIELDS", "SCHEMA", "SCHEMA_VERSION", "TARGET_KINDS", "BenchReport",
           "Environment", "ResultRow", "can_plot", "markdown", "terminal_table", "validate_report", "write_all",
           "write_csv", "write_json", "write_markdown", "write_plot"]

CSV_FIELDS = [*RESULT_FIELDS[:1], "arch", *RESULT_FIELDS[1:], "compute_ratio"]


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(report: BenchReport | Mapping[str, Any], path: str | Path) -> Path:
    """The report as indented JSON (non-finite numbers as null), written atomically."""
    data = as_report(report).to_dict()
    validate_report(data)
    files.write_json(path, _json_safe(data))
    return Path(path)


def _csv_cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def write_csv(report: BenchReport | Mapping[str, Any], path: str | Path) -> Path:
    """One line per result row with a header; columns = CSV_FIELDS (RESULT_FIELDS with `arch` after `model`, then
    `compute_ratio`, empty on compute rows)."""
    report = as_report(report)
    arch = {m["role"]: m["arch"] for m in report.models}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in report.results:
        values = {**row.to_dict(), "arch": arch.get(row.model, "")}
        writer.writerow([_csv_cell(values.get(f)) for f in CSV_FIELDS])
    files.write_text(path, buf.getvalue())
    return Path(path)


def write_markdown(report: BenchReport | Mapping[str, Any], path: str | Path) -> Path:
    """`markdown(report)`, written atomically."""
    files.write_text(path, markdown(report))
    return Path(path)


def write_all(report: BenchReport | Mapping[str, Any], out_dir: Path, stem: str = "bench") -> dict[str, Path]:
    """Write `<stem>.json`, `.csv`, `.md` and (with matplotlib) `.png` into `out_dir`; returns
    {"json"|"csv"|"md"|"png": path}."""
    report = as_report(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "json": write_json(report, out_dir / f"{stem}.json"),
        "csv": write_csv(report, out_dir / f"{stem}.csv"),
        "md": write_markdown(report, out_dir / f"{stem}.md"),
    }
    if can_plot():
        written["png"] = write_plot(report, out_dir / f"{stem}.png")
    return written
