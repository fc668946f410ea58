"""The bench report as a Markdown document for people (bench.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from promptkd_edge.bench.record import MODES, BenchReport, Environment, as_report
from promptkd_edge.bench.tables import (
    DASH,
    MODE_NOTES,
    MODE_TITLES,
    columns_for,
    finite,
    fmt,
    fmt_pct,
    fmt_speedup,
    machine,
    ordered_rows,
)


def _created(text: str) -> str:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.utcoffset() is not None and when.utcoffset().total_seconds() == 0:
        return when.strftime("%Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M %z").strip()


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
    if finite(gpu.get("memory_gib")):
        parts.append(f"{gpu['memory_gib']:.1f} GiB")
    if gpu.get("compute_capability"):
        parts.append(f"compute capability {gpu['compute_capability']}")
    clocks = gpu.get("clocks_mhz") or {}
    if finite(clocks.get("sm")):
        clock = f"SM clock {clocks['sm']:.0f} MHz"
        if finite(clocks.get("max_sm")):
            clock += f", max {clocks['max_sm']:.0f} MHz"
        parts.append(clock)
    elif finite(clocks.get("max_sm")):
        parts.append(f"max SM clock {clocks['max_sm']:.0f} MHz")
    if finite(gpu.get("power_limit_w")):
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


def _where_it_ran(env: Environment) -> list[str]:
    cpu = env.cpu or "unknown CPU"
    counts = [f"{env.cores} cores" if env.cores is not None else "",
              f"{env.threads} threads" if env.threads is not None else ""]
    counts = [c for c in counts if c]
    flags = f"; flags: {' '.join(env.cpu_flags)}" if env.cpu_flags else ""
    lines = [f"- **CPU:** {cpu}" + (f" ({', '.join(counts)})" if counts else "") + flags]
    lines.append(f"- **GPU:** {_gpu_line(env.gpu) if env.gpu else 'none'}")
    if env.jetson:
        lines.append(f"- **Jetson:** {_jetson_line(env.jetson)}")
    versions = [f"{name} {v}" if v else f"{name} (not installed)" for name, v in env.versions.items()]
    if versions:
        lines.append(f"- **Software:** {' · '.join(versions)}")
    lines.append(f"- **Python:** {env.python} on {env.platform}")
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
        frames = f"; {settings['end_to_end_frames']}" if settings.get("end_to_end_frames") else ""
        workers = settings.get("end_to_end_workers")
        threads = "" if workers is None else (f"; decoded on {_count(workers, 'worker thread')} ahead of the backend"
                                              if workers else "; decoded on the calling thread (no pipeline)")
        lines.append(f"- **End to end:** {settings.get('end_to_end_images') or 'measured'}{frames}{upto}{threads} "
                     f"(the calls behind each row: `iterations` in the CSV)")
    else:
        lines.append("- **End to end:** not measured")
    lines += [f"- **Note:** {note}" for note in settings.get("notes", [])]
    return lines


def _models_table(report: BenchReport) -> list[str]:
    rows = []
    for m in report.models:
        size = m.get("image_size")
        size_text = "×".join(str(s) for s in size) if size else DASH
        rows.append([m["role"], m["description"], m["arch"], size_text, fmt(m.get("params_m")),
                     fmt(m.get("gflops_per_image")), fmt(m.get("classes"))])
    return _md_table(["role", "model", "arch", "input", "params (M)", "GFLOP/image", "classes"], rows,
                     [False, False, False, False, True, True, True])


def _highlights(report: BenchReport) -> list[str]:
    """Per model: the lowest latency at its smallest batch and the highest throughput, in compute mode."""
    lines = []
    for m in report.models:
        rows = [r for r in report.results if r.model == m["role"] and r.mode == "compute"]
        timed = [r for r in rows if finite(r.p50_ms)]
        if not timed:
            continue
        smallest = min(r.batch for r in timed)
        fast = min((r for r in timed if r.batch == smallest), key=lambda r: r.p50_ms)
        text = f"- **{m['role']}:** lowest latency {fmt(fast.p50_ms)} ms at batch {smallest} ({fast.backend})"
        through = [r for r in rows if finite(r.images_per_s)]
        if through:
            best = max(through, key=lambda r: r.images_per_s)
            text += f"; highest throughput {fmt(best.images_per_s)} img/s at batch {best.batch} ({best.backend})"
        lines.append(text)
    return lines


def _results_sections(report: BenchReport) -> list[str]:
    out: list[str] = []
    for mode in MODES:
        rows = ordered_rows(report, mode)
        if not rows:
            continue
        cols = columns_for(rows)
        out += [f"## {MODE_TITLES[mode]}", "", MODE_NOTES[mode]]
        if any(c[1] == "first_call_ms" for c in cols):
            out.append("*first call* = session creation or engine load plus the first inference.")
        out.append("")
        out += _md_table([c[0] for c in cols], ([c[2](getattr(r, c[1])) for c in cols] for r in rows),
                         [i >= 2 for i in range(len(cols))])
        out.append("")
    return out


def _comparison_and_limit_sections(report: BenchReport) -> list[str]:
    out: list[str] = []
    if report.comparisons:
        rows = [[c["backend"], c["batch"], MODE_TITLES.get(c["mode"], c["mode"]).lower(), fmt(c["teacher_p50_ms"]),
                 fmt(c["student_p50_ms"]), fmt_speedup(c["speedup"])] for c in report.comparisons]
        out += ["## Teacher vs student", "", "Same backend, batch and mode; speedup = teacher p50 / student p50.", ""]
        out += _md_table(["backend", "batch", "mode", "teacher p50 ms", "student p50 ms", "speedup"], rows,
                         [False, True, False, True, True, True])
        out.append("")
    if report.limits:
        measured = {(r.model, r.backend, r.batch): r.images_per_s for r in report.results if r.mode == "compute"}
        rows = [[lim["model"], lim["backend"], lim["batch"], fmt(lim["limit_images_per_s"]),
                 fmt(measured.get((lim["model"], lim["backend"], lim["batch"]))), fmt_pct(lim["fraction"]),
                 lim.get("basis") or DASH] for lim in report.limits]
        out += ["## Throughput ceilings", "", "A computed upper bound; *reached* = measured img/s / ceiling.", ""]
        out += _md_table(["model", "backend", "batch", "ceiling img/s", "measured img/s", "reached", "basis"], rows,
                         [False, False, True, True, True, True, False])
        out.append("")
    return out


def _text_encoder_section(text: Mapping[str, Any] | None) -> list[str]:
    if not text:
        return []
    out = ["## Text encoder", "", f"Class names to class vectors with the bundle's text encoder (tokenizer "
           f"included; {text['parameters'] or '?'} parameters, {text['files_mb']} MB of ONNX).", ""]
    out += _md_table(["backend", "names", "seconds", "names/s"],
                     ([r["backend"], r["names"], fmt(r["seconds"]), fmt(r["names_per_s"])] for r in text["rows"]),
                     [False, True, True, True])
    return [*out, ""]


def markdown(report: BenchReport | Mapping[str, Any]) -> str:
    """The report as a Markdown document for people."""
    report = as_report(report)
    target = report.target
    out = [f"# Inference benchmark: {target['name']}", ""]
    where = f"{target['kind']} `{target['name']}`" + (f" (`{target['path']}`)" if target.get("path") else "")
    out += [f"Target: {where} · on {machine(report.environment)} · {_created(report.created)}", ""]
    highlights = _highlights(report)
    if highlights:
        out += ["## Highlights", "", *highlights, ""]
    if report.models:
        out += ["## Models", "", *_models_table(report), ""]
    out += ["## Where it ran", "", *_where_it_ran(report.environment), ""]
    out += ["## Settings", "", *_settings_lines(report.settings), ""]
    out += _results_sections(report)
    out += _comparison_and_limit_sections(report)
    out += _text_encoder_section(report.text_encoder)
    if report.unavailable:
        out += ["## Not measured", ""]
        out += [f"- **{u['backend']}**" + (f" ({u['model']})" if u.get("model") else "") + f": {u['reason']}"
                for u in report.unavailable]
        out.append("")
    out += ["## Command", "", "```", report.command, "```", ""]
    return "\n".join(out)
