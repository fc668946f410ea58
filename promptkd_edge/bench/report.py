"""The `pkd bench` report: its schema, a validator, and the outputs people read (JSON, CSV, Markdown, PNG, terminal).

The report is a plain dict (see docs/bench-report.md); every writer here is atomic (`promptkd_edge.utils.files`).
Missing or non-finite numbers render as "—" in tables and Markdown, and as empty cells in the CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkd_edge.errors import PkdError
from promptkd_edge.utils import files
from promptkd_edge.utils.text import shown

if TYPE_CHECKING:
    from rich.table import Table

SCHEMA = "promptkd-edge/bench"
SCHEMA_VERSION = 1
MODES = ("compute", "end_to_end")
TARGET_KINDS = ("bundle", "run", "architecture")
RESULT_FIELDS = [
    "model", "backend", "device", "precision", "batch", "mode", "iterations",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "images_per_s", "first_call_ms",
    "peak_rss_mib", "peak_gpu_mib", "power_w", "images_per_joule",
]
CSV_FIELDS = [*RESULT_FIELDS[:1], "arch", *RESULT_FIELDS[1:]]
DASH = "—"

MODE_TITLES = {"compute": "Compute", "end_to_end": "End to end"}
MODE_NOTES = {
    "compute": "One call on a batch of input tensors already in place (on the device for GPU backends).",
    "end_to_end": "From image files: decode + preprocess + inference + top-k, per batch of files.",
}

# Field specs: "str" | "int" | "number" | "bool" | "dict" | "list", with a trailing "?" when null is allowed.
_TOP = {"schema": "str", "schema_version": "int", "created": "str", "command": "str", "target": "dict",
        "models": "list", "environment": "dict", "settings": "dict", "results": "list", "unavailable": "list",
        "comparisons": "list"}
_OPTIONAL_TOP = {"limits": "list"}
_TARGET = {"kind": "str", "name": "str", "path": "str?"}
_MODEL = {"role": "str", "description": "str", "arch": "str", "image_size": "list?", "params_m": "number?",
          "gflops_per_image": "number?", "classes": "int?"}
_ENVIRONMENT = {"cpu": "str?", "cores": "int?", "threads": "int?", "gpu": "dict?", "jetson": "dict?",
                "versions": "dict", "python": "str", "platform": "str"}
_SETTINGS = {"batch_sizes": "list", "warmup": "int", "iterations": "int", "min_seconds": "number",
             "end_to_end": "bool", "end_to_end_images": "str?"}
_RESULT = {"model": "str", "backend": "str", "device": "str", "precision": "str", "batch": "int", "mode": "str",
           "iterations": "int?", "p50_ms": "number?", "p90_ms": "number?", "p99_ms": "number?",
           "mean_ms": "number?", "min_ms": "number?", "images_per_s": "number?", "first_call_ms": "number?",
           "peak_rss_mib": "number?", "peak_gpu_mib": "number?", "power_w": "number?",
           "images_per_joule": "number?"}
_UNAVAILABLE = {"model": "str?", "backend": "str", "reason": "str"}
_COMPARISON = {"backend": "str", "batch": "int", "mode": "str", "teacher_p50_ms": "number?",
               "student_p50_ms": "number?", "speedup": "number?"}
_LIMIT = {"model": "str", "backend": "str", "batch": "int", "limit_images_per_s": "number?", "basis": "str?",
          "fraction": "number?"}
assert list(_RESULT) == RESULT_FIELDS

_TYPE_WORDS = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
               "dict": "an object", "list": "a list"}


# ---------------------------------------------------------------------------------------------------- validation


def _is(value: Any, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _is(value, kind[:-1])
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def _bad(where: str, problem: str) -> PkdError:
    return PkdError(f"invalid bench report: {where} {problem}")


def _check(obj: Mapping[str, Any], spec: Mapping[str, str], where: str, required: bool = True) -> None:
    for key, kind in spec.items():
        path = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                raise _bad(path, "is missing")
            continue
        value = obj[key]
        if not _is(value, kind):
            word = _TYPE_WORDS[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise _bad(path, f"must be {word}, not {type(value).__name__} {shown}")


def _check_list(report: Mapping[str, Any], key: str, spec: Mapping[str, str]) -> None:
    for i, item in enumerate(report.get(key, [])):
        if not isinstance(item, dict):
            raise _bad(f"{key}[{i}]", f"must be an object, not {type(item).__name__}")
        _check(item, spec, f"{key}[{i}]")


def validate_report(report: Any) -> None:
    """Raise PkdError naming the first missing or ill-typed key of a bench report; extra keys are allowed."""
    if not isinstance(report, dict):
        raise PkdError(f"invalid bench report: expected a JSON object, not {type(report).__name__}")
    _check(report, _TOP, "")
    _check(report, _OPTIONAL_TOP, "", required=False)
    if report["schema"] != SCHEMA:
        raise _bad("schema", f"is {report['schema']!r}, expected {SCHEMA!r}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise PkdError(f"bench report has schema_version {report['schema_version']}; "
                       f"this promptkd-edge reads schema_version {SCHEMA_VERSION}")
    _check(report["target"], _TARGET, "target")
    if report["target"]["kind"] not in TARGET_KINDS:
        raise _bad("target.kind", f"is {report['target']['kind']!r}, expected one of {', '.join(TARGET_KINDS)}")
    _check(report["environment"], _ENVIRONMENT, "environment")
    for section in ("gpu", "jetson"):
        if report["environment"][section] is not None:
            _check(report["environment"][section], {"gpu": {"name": "str"}, "jetson": {"model": "str?"}}[section],
                   f"environment.{section}")
    _check(report["settings"], _SETTINGS, "settings")
    for i, b in enumerate(report["settings"]["batch_sizes"]):
        if not _is(b, "int"):
            raise _bad(f"settings.batch_sizes[{i}]", f"must be an integer, not {type(b).__name__} {b!r}")
    _check_list(report, "models", _MODEL)
    _check_list(report, "results", _RESULT)
    for i, row in enumerate(report["results"]):
        if row["mode"] not in MODES:
            raise _bad(f"results[{i}].mode", f"is {row['mode']!r}, expected one of {', '.join(MODES)}")
    _check_list(report, "unavailable", _UNAVAILABLE)
    _check_list(report, "comparisons", _COMPARISON)
    _check_list(report, "limits", _LIMIT)


# ---------------------------------------------------------------------------------------------------- formatting


def _finite(v: Any) -> bool:
    return _is(v, "number") and math.isfinite(v)


def _fmt(v: Any, digits: int = 3) -> str:
    """A number with about `digits` significant figures, thousands separated; "—" when missing."""
    if not _finite(v):
        return DASH
    if isinstance(v, int) or abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{min(decimals, 6)}f}"


def _fmt_pct(v: Any) -> str:
    if not _finite(v):
        return DASH
    pct = 100 * v
    return f"{pct:.1f}%" if abs(pct) < 10 else f"{pct:.0f}%"


def _fmt_speedup(v: Any) -> str:
    return f"{v:.2f}×" if _finite(v) else DASH


def _machine(env: Mapping[str, Any]) -> str:
    """What ran it, in a few words: the Jetson model, else the GPU, else the CPU."""
    jetson, gpu = env.get("jetson"), env.get("gpu")
    if jetson and jetson.get("model"):
        return str(jetson["model"])
    if gpu and gpu.get("name"):
        return str(gpu["name"])
    return str(env.get("cpu") or "unknown CPU")


def _created(text: str) -> str:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.utcoffset() is not None and when.utcoffset().total_seconds() == 0:
        return when.strftime("%Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M %z").strip()


# Table columns: (header, row key, formatter, optional: dropped from a table where every row lacks it).
_COLUMNS: list[tuple[str, str, Any, bool]] = [
    ("model", "model", str, False),
    ("backend", "backend", str, False),
    ("batch", "batch", str, False),
    ("p50 ms", "p50_ms", _fmt, False),
    ("p90 ms", "p90_ms", _fmt, False),
    ("p99 ms", "p99_ms", _fmt, False),
    ("img/s", "images_per_s", _fmt, False),
    ("first call ms", "first_call_ms", _fmt, True),
    ("peak RSS MiB", "peak_rss_mib", _fmt, True),
    ("peak GPU MiB", "peak_gpu_mib", _fmt, True),
    ("img/J", "images_per_joule", _fmt, True),
]


def _ordered_rows(report: Mapping[str, Any], mode: str) -> list[dict[str, Any]]:
    """Rows of one mode, grouped by model (report order), then backend (first appearance), then batch."""
    roles = {m["role"]: i for i, m in enumerate(report["models"])}
    backends: dict[str, int] = {}
    for r in report["results"]:
        backends.setdefault(r["backend"], len(backends))
    rows = [r for r in report["results"] if r["mode"] == mode]
    return sorted(rows, key=lambda r: (roles.get(r["model"], len(roles)), r["model"], backends[r["backend"]],
                                       r["batch"]))


def _columns_for(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Any, bool]]:
    return [c for c in _COLUMNS if not c[3] or any(_finite(r.get(c[1])) for r in rows)]


# ---------------------------------------------------------------------------------------------------- Markdown


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _gpu_line(gpu: Mapping[str, Any]) -> str:
    parts = []
    if gpu.get("driver"):
        parts.append(f"driver {gpu['driver']}")
    if _finite(gpu.get("memory_gib")):
        parts.append(f"{gpu['memory_gib']:.1f} GiB")
    if gpu.get("compute_capability"):
        parts.append(f"compute capability {gpu['compute_capability']}")
    clocks = gpu.get("clocks_mhz") or {}
    if _finite(clocks.get("sm")):
        clock = f"SM clock {clocks['sm']:.0f} MHz"
        if _finite(clocks.get("max_sm")):
            clock += f", max {clocks['max_sm']:.0f} MHz"
        parts.append(clock)
    elif _finite(clocks.get("max_sm")):
        parts.append(f"max SM clock {clocks['max_sm']:.0f} MHz")
    if _finite(gpu.get("power_limit_w")):
        parts.append(f"power limit {gpu['power_limit_w']:.0f} W")
    return f"{gpu['name']}" + (f" ({', '.join(parts)})" if parts else "")


def _jetson_line(jetson: Mapping[str, Any]) -> str:
    parts = []
    if jetson.get("l4t"):
        parts.append(f"L4T {jetson['l4t']}" + (f" (JetPack {jetson['jetpack']})" if jetson.get("jetpack") else ""))
    if jetson.get("power_mode") is not None:
        parts.append(f"power mode {jetson['power_mode']}")
    clocks = jetson.get("jetson_clocks")
    if clocks is not None:
        parts.append("jetson_clocks " + (("on" if clocks else "off") if isinstance(clocks, bool) else str(clocks)))
    return f"{jetson.get('model') or 'Jetson'}" + (f": {', '.join(parts)}" if parts else "")


def _where_it_ran(env: Mapping[str, Any]) -> list[str]:
    cpu = env.get("cpu") or "unknown CPU"
    counts = [f"{env['cores']} cores" if env.get("cores") is not None else "",
              f"{env['threads']} threads" if env.get("threads") is not None else ""]
    counts = [c for c in counts if c]
    flags = f"; flags: {' '.join(env['cpu_flags'])}" if env.get("cpu_flags") else ""
    lines = [f"- **CPU:** {cpu}" + (f" ({', '.join(counts)})" if counts else "") + flags]
    lines.append(f"- **GPU:** {_gpu_line(env['gpu']) if env.get('gpu') else 'none'}")
    if env.get("jetson"):
        lines.append(f"- **Jetson:** {_jetson_line(env['jetson'])}")
    versions = [f"{name} {v}" if v else f"{name} (not installed)" for name, v in env["versions"].items()]
    if versions:
        lines.append(f"- **Software:** {' · '.join(versions)}")
    lines.append(f"- **Python:** {env['python']} on {env['platform']}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    batches = ", ".join(str(b) for b in settings["batch_sizes"])
    lines = [f"- **Batch sizes:** {batches}",
             f"- **Timing:** {_count(settings['warmup'], 'warm-up call')}, then at least "
             f"{_count(settings['iterations'], 'timed call')}"
             + (f" and at least {settings['min_seconds']:g} s" if settings["min_seconds"] > 0 else "")
             + " per measurement; latency is per call (one batch), img/s = batch / p50; percentiles interpolate "
             "linearly between closest ranks"]
    if settings["end_to_end"]:
        upto = f", batches up to {settings['end_to_end_max_batch']}" if settings.get("end_to_end_max_batch") else ""
        lines.append(f"- **End to end:** {settings.get('end_to_end_images') or 'measured'}{upto} "
                     f"(the calls behind each row: `iterations` in the CSV)")
    else:
        lines.append("- **End to end:** not measured")
    lines += [f"- **Note:** {note}" for note in settings.get("notes", [])]
    return lines


def _models_table(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for m in report["models"]:
        size = m.get("image_size")
        size_text = "×".join(str(s) for s in size) if size else DASH
        rows.append([m["role"], m["description"], m["arch"], size_text, _fmt(m.get("params_m")),
                     _fmt(m.get("gflops_per_image")), _fmt(m.get("classes"))])
    return _md_table(["role", "model", "arch", "input", "params (M)", "GFLOP/image", "classes"], rows,
                     [False, False, False, False, True, True, True])


def _highlights(report: Mapping[str, Any]) -> list[str]:
    """Per model: the lowest latency at its smallest batch and the highest throughput, in compute mode."""
    lines = []
    for m in report["models"]:
        rows = [r for r in report["results"] if r["model"] == m["role"] and r["mode"] == "compute"]
        timed = [r for r in rows if _finite(r["p50_ms"])]
        if not timed:
            continue
        smallest = min(r["batch"] for r in timed)
        fast = min((r for r in timed if r["batch"] == smallest), key=lambda r: r["p50_ms"])
        text = f"- **{m['role']}:** lowest latency {_fmt(fast['p50_ms'])} ms at batch {smallest} ({fast['backend']})"
        through = [r for r in rows if _finite(r["images_per_s"])]
        if through:
            best = max(through, key=lambda r: r["images_per_s"])
            text += f"; highest throughput {_fmt(best['images_per_s'])} img/s at batch {best['batch']} " \
                    f"({best['backend']})"
        lines.append(text)
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown document for people."""
    validate_report(report)
    target, env = report["target"], report["environment"]
    out = [f"# Inference benchmark: {target['name']}", ""]
    where = f"{target['kind']} `{target['name']}`" + (f" (`{target['path']}`)" if target.get("path") else "")
    out += [f"Target: {where} · on {_machine(env)} · {_created(report['created'])}", ""]
    highlights = _highlights(report)
    if highlights:
        out += ["## Highlights", "", *highlights, ""]
    if report["models"]:
        out += ["## Models", "", *_models_table(report), ""]
    out += ["## Where it ran", "", *_where_it_ran(env), ""]
    out += ["## Settings", "", *_settings_lines(report["settings"]), ""]
    for mode in MODES:
        rows = _ordered_rows(report, mode)
        if not rows:
            continue
        cols = _columns_for(rows)
        out += [f"## {MODE_TITLES[mode]}", "", MODE_NOTES[mode]]
        if any(c[1] == "first_call_ms" for c in cols):
            out.append("*first call* = session creation or engine load plus the first inference.")
        out.append("")
        out += _md_table([c[0] for c in cols], ([c[2](r.get(c[1])) for c in cols] for r in rows),
                         [i >= 2 for i in range(len(cols))])
        out.append("")
    if report["comparisons"]:
        rows = [[c["backend"], c["batch"], MODE_TITLES.get(c["mode"], c["mode"]).lower(), _fmt(c["teacher_p50_ms"]),
                 _fmt(c["student_p50_ms"]), _fmt_speedup(c["speedup"])] for c in report["comparisons"]]
        out += ["## Teacher vs student", "", "Same backend, batch and mode; speedup = teacher p50 / student p50.", ""]
        out += _md_table(["backend", "batch", "mode", "teacher p50 ms", "student p50 ms", "speedup"], rows,
                         [False, True, False, True, True, True])
        out.append("")
    if report.get("limits"):
        measured = {(r["model"], r["backend"], r["batch"]): r["images_per_s"] for r in report["results"]
                    if r["mode"] == "compute"}
        rows = [[lim["model"], lim["backend"], lim["batch"], _fmt(lim["limit_images_per_s"]),
                 _fmt(measured.get((lim["model"], lim["backend"], lim["batch"]))), _fmt_pct(lim["fraction"]),
                 lim.get("basis") or DASH] for lim in report["limits"]]
        out += ["## Throughput ceilings", "", "A computed upper bound; *reached* = measured img/s / ceiling.", ""]
        out += _md_table(["model", "backend", "batch", "ceiling img/s", "measured img/s", "reached", "basis"], rows,
                         [False, False, True, True, True, True, False])
        out.append("")
    text = report.get("text_encoder")
    if text:
        out += ["## Text encoder", "", f"Class names to class vectors with the bundle's text encoder (tokenizer "
                f"included; {text['parameters'] or '?'} parameters, {text['files_mb']} MB of ONNX).", ""]
        out += _md_table(["backend", "names", "seconds", "names/s"],
                         ([r["backend"], r["names"], _fmt(r["seconds"]), _fmt(r["names_per_s"])] for r in text["rows"]),
                         [False, True, True, True])
        out.append("")
    if report["unavailable"]:
        out += ["## Not measured", ""]
        out += [f"- **{u['backend']}**" + (f" ({u['model']})" if u.get("model") else "") + f": {u['reason']}"
                for u in report["unavailable"]]
        out.append("")
    out += ["## Command", "", "```", report["command"], "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- files


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """The report as indented JSON (non-finite numbers as null), written atomically."""
    validate_report(report)
    files.write_json(path, _json_safe(dict(report)))
    return Path(path)


def _csv_cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def write_csv(report: Mapping[str, Any], path: str | Path) -> Path:
    """One line per result row with a header; columns = CSV_FIELDS (RESULT_FIELDS with `arch` after `model`)."""
    validate_report(report)
    arch = {m["role"]: m["arch"] for m in report["models"]}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in report["results"]:
        values = {**row, "arch": arch.get(row["model"], "")}
        writer.writerow([_csv_cell(values.get(f)) for f in CSV_FIELDS])
    files.write_text(path, buf.getvalue())
    return Path(path)


def write_markdown(report: Mapping[str, Any], path: str | Path) -> Path:
    """`markdown(report)`, written atomically."""
    files.write_text(path, markdown(report))
    return Path(path)


# ---------------------------------------------------------------------------------------------------- plot

_FIG_WIDTH_IN, _FIG_MIN_HEIGHT_IN, _DPI = 12.0, 5.0, 120
_LEGEND_COLUMNS, _LEGEND_ROW_IN = 4, 0.24
_LINESTYLES = {"student": "-", "teacher": "--"}
_MARKERS = {"student": "o", "teacher": "s"}


def write_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """p50 latency and images/s vs batch (log-log), one line per (model, backend, mode), as a PNG; returns the path."""
    validate_report(report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    backends: dict[str, int] = {}
    for r in report["results"]:
        backends.setdefault(r["backend"], len(backends))
    cmap = plt.get_cmap("tab10" if len(backends) <= 10 else "tab20")
    series: list[tuple[str, list[dict[str, Any]]]] = []
    for mode in MODES:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in _ordered_rows(report, mode):
            groups.setdefault((r["model"], r["backend"]), []).append(r)
        for (model, backend), rows in groups.items():
            label = f"{model} · {backend}" + (" · end to end" if mode == "end_to_end" else "")
            series.append((label, rows))
    limits = [lim for lim in report.get("limits", []) if _finite(lim["limit_images_per_s"])]
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
            style = dict(color=cmap(backends[r0["backend"]] % cmap.N),
                         linestyle=":" if r0["mode"] == "end_to_end" else _LINESTYLES.get(r0["model"], "-"),
                         marker=_MARKERS.get(r0["model"], "^"), markersize=5, linewidth=1.6)
            for ax, key in ((lat_ax, "p50_ms"), (tput_ax, "images_per_s")):
                points = [(r["batch"], r[key]) for r in rows if _finite(r[key]) and r[key] > 0 and r["batch"] > 0]
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
        for ax, title, ylabel in ((lat_ax, "Latency per call (p50)", "ms (log)"),
                                  (tput_ax, "Throughput (at p50)", "images/s (log)")):
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
        fig.suptitle(f"pkd bench {report['target']['name']} on {_machine(report['environment'])}")
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


def can_plot() -> bool:
    """Whether matplotlib is installed (the [plot] or [train] extra); the core install writes no PNG."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_all(report: Mapping[str, Any], out_dir: Path, stem: str = "bench") -> dict[str, Path]:
    """Write `<stem>.json`, `.csv`, `.md` and (with matplotlib) `.png` into `out_dir`; returns
    {"json"|"csv"|"md"|"png": path}."""
    validate_report(report)
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


# ---------------------------------------------------------------------------------------------------- terminal


def terminal_table(report: Mapping[str, Any], mode: str) -> Table:
    """The results of one mode ("compute" or "end_to_end") as a compact rich Table for the CLI."""
    from rich import box
    from rich.table import Table

    if mode not in MODES:
        raise PkdError(f"unknown bench mode {mode!r}; expected one of {', '.join(MODES)}")
    validate_report(report)
    rows = _ordered_rows(report, mode)
    cols = _columns_for(rows)
    table = Table(title=f"{MODE_TITLES[mode]}: {MODE_NOTES[mode][0].lower()}{MODE_NOTES[mode][1:]}",
                  box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for i, (header, *_rest) in enumerate(cols):  # narrow terminals fold cells; nothing is cut to an ellipsis
        table.add_column(header, justify="right" if i >= 2 else "left", overflow="fold")
    if not rows:
        table.caption = "no results"
    for i, r in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        end_section = nxt is not None and (nxt["model"], nxt["backend"]) != (r["model"], r["backend"])
        table.add_row(*(shown(c[2](r.get(c[1]))) for c in cols), end_section=end_section)
    return table
