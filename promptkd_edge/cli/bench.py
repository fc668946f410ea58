"""`pkd bench`: latency, throughput, memory and power of a bundle, a run or architectures, per backend and batch."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.bench.backends import rows_help
from promptkd_edge.bench.harness import BenchConfig
from promptkd_edge.cli.common import (
    app,
    config_values,
    console,
    defaults,
    err,
    errors_to_exit,
    make_progress,
    print_json,
    require,
)
from promptkd_edge.errors import PkdError
from promptkd_edge.utils.text import shown

_C = defaults(BenchConfig)

BENCH_EXAMPLES = """
[bold]Examples[/bold]

  # the exported bundle on every backend; those this machine cannot run are listed with the reason
  pkd bench bundles/pets

  # ViT-B-16 student against its ViT-L-14 teacher on CPU backends, batch 1 and 8 (random weights)
  pkd bench ViT-B-16 --compare-teacher --teacher ViT-L-14 --classes 100 --batch-sizes 1,8 \\
      --backends torch-eager-fp32,onnxruntime-cpu-fp32,onnxruntime-cpu-int8

  # GPU: eager fp16, compiled, CUDA graphs up to batch 256, with the fraction of the bf16 peak reached
  pkd bench runs/pets --device cuda --batch-sizes 1,8,32,128,256 --peak-tflops 790 --out bench/h200

  # a bundle with a text encoder: also class names per second (1000 names)
  pkd bench bundles/pets-open --text-names 1000

  # which student? several architectures (a comma list), each as a student of its family (random weights):
  # one table with ratios to the first (or --reference), published zero-shot top-1, a Pareto plot
  pkd bench ViT-B-16,MobileCLIP2-S0,ViT-B-16-SigLIP2,PE-Core-S-16-384 --backends openvino-cpu-bf16 \\
      --batch-sizes 1,8 --out bench/students

"""
BENCH_EXAMPLES += textwrap.fill("Backends: " + rows_help(), width=110, initial_indent="  ", subsequent_indent="  ",
                                break_on_hyphens=False) + "\n"


_BenchTarget = Annotated[str, typer.Argument(
    help="A bundle, a distillation run, an open_clip architecture name (random weights), or several (a comma list: "
         "compared as students).")]
_BenchBackends = Annotated[str, typer.Option(help="Comma list of backends, or all.")]
_BenchBatchSizes = Annotated[str, typer.Option(help="Comma list of batch sizes.")]
_BenchWarmup = Annotated[int, typer.Option(help="Untimed calls before timing, per backend and batch.")]
_BenchIterations = Annotated[int, typer.Option(help="Timed calls (at least), per backend and batch.")]
_BenchMinSeconds = Annotated[float, typer.Option(help="Time each batch for at least this long.")]
_BenchMaxSeconds = Annotated[float, typer.Option(help="Stop timing a batch after this long (>= 3 calls).")]
_BenchDevice = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
_BenchThreads = Annotated[int | None, typer.Option(
    help="CPU threads for torch and ONNX Runtime (default: all usable).")]
_BenchCompareTeacher = Annotated[bool, typer.Option(
    "--compare-teacher",
    help="Also time the teacher (its architecture, random weights); report the student's speed-up.")]
_BenchTeacher = Annotated[str | None, typer.Option(
    help="Teacher for --compare-teacher (default: the one the target was distilled from, else ViT-L-14).")]
_BenchClasses = Annotated[int, typer.Option(help="Classes of an architecture target's random class vectors.")]
_BenchEndToEnd = Annotated[bool, typer.Option(
    "--e2e/--no-e2e", help="Also time decode + preprocess + infer + top-k from image files and from frames in memory.")]
_BenchImages = Annotated[str | None, typer.Option(
    help="Image folder for end-to-end timing (default: generated 1920x1080 JPEGs).")]
_BenchE2eMaxBatch = Annotated[int, typer.Option(help="Time end to end only up to this batch size.")]
_BenchWorkers = Annotated[int | None, typer.Option(
    min=0,
    help="End to end: threads that decode the next batches while the backend runs (default: min(4, usable cores); 0: "
         "sequential).")]
_BenchPeakTflops = Annotated[float | None, typer.Option(
    help="The GPU's peak TFLOP/s (e.g. 790 bf16 on H200): report the fraction of the FLOP-bound throughput reached.")]
_BenchTextNames = Annotated[int, typer.Option(
    "--text-names",
    help="Also time the bundle's text encoder (export --text-encoder): names per second for this many class names, "
         "e.g. 1000.")]
_BenchReference = Annotated[str | None, typer.Option(
    help="Several architectures: the one the others' latency is divided by (default: the first).")]
_BenchOut = Annotated[Path | None, typer.Option(
    "--out",
    help="Folder for bench.json, .csv, .md and .png; several architectures: students.json, .md and "
         "students-pareto.png (default: bench-<target>-<time>).")]
_BenchAsJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


@app.command(epilog=BENCH_EXAMPLES)
@errors_to_exit
def bench(
    ctx: typer.Context, target: _BenchTarget, backends: _BenchBackends = "all",
    batch_sizes: _BenchBatchSizes = ",".join(map(str, _C.batch_sizes)), warmup: _BenchWarmup = _C.warmup,
    iterations: _BenchIterations = _C.iterations, min_seconds: _BenchMinSeconds = _C.min_seconds,
    max_seconds: _BenchMaxSeconds = _C.max_seconds, device: _BenchDevice = _C.device,
    threads: _BenchThreads = _C.threads, compare_teacher: _BenchCompareTeacher = _C.compare_teacher,
    teacher: _BenchTeacher = _C.teacher, classes: _BenchClasses = _C.classes,
    end_to_end: _BenchEndToEnd = _C.end_to_end, images: _BenchImages = _C.images,
    e2e_max_batch: _BenchE2eMaxBatch = _C.e2e_max_batch, workers: _BenchWorkers = _C.workers,
    peak_tflops: _BenchPeakTflops = _C.peak_tflops, text_names: _BenchTextNames = _C.text_names,
    reference: _BenchReference = None, out: _BenchOut = None, as_json: _BenchAsJson = False,
) -> None:
    """Latency and throughput per backend and batch: p50/p90/p99, compute vs end to end, memory, power; or, for
    several architectures, which student is fastest here."""
    import time

    from promptkd_edge.bench.backends import parse_backends
    from promptkd_edge.bench.harness import measure
    from promptkd_edge.bench.report import MODES, terminal_table, write_all
    from promptkd_edge.bench.students import architecture_list
    from promptkd_edge.formats.bundle import is_bundle

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise PkdError(f"--batch-sizes '{batch_sizes}' is not a comma list of integers") from None
    cfg = BenchConfig(**{**config_values(BenchConfig, ctx.params), "backends": parse_backends(backends),
                         "batch_sizes": sizes, "command": " ".join(["pkd", *sys.argv[1:]])}).validate()
    if compare_teacher or not is_bundle(Path(target).expanduser()):  # a bundle alone runs on the core install
        require("bench", "train")
    archs = architecture_list(target)
    if archs is not None:
        _bench_students(archs, cfg, reference=reference, out=out, as_json=as_json)
        return
    if reference is not None:
        raise PkdError("--reference divides one architecture's latency by another's: give several architectures "
                       "(a comma list) as the target")
    progress = make_progress(not as_json)
    report = measure(cfg, progress)
    progress.done()
    written = write_all(report, out or Path(f"bench-{Path(target).name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if as_json:
        print_json(report.to_dict())
        return
    for mode in MODES:
        if any(r.mode == mode for r in report.results):
            console().print(terminal_table(report, mode))
    for c in report.comparisons:
        console().print(f"student speed-up over the teacher, {c['backend']} batch {c['batch']} ({c['mode']}): "
                        f"[bold]{c['speedup']:.2f}x[/]")
    for u in report.unavailable:
        err().print(f"[yellow]not run[/] {u['model']} {u['backend']}: {shown(u['reason'])}", highlight=False)
    console().print(f"report: {', '.join(shown(p) for p in written.values())}")
    if "png" not in written:
        console().print("no bench.png: plotting needs matplotlib (pip install 'promptkd-edge[plot]')", markup=False)


def _bench_students(archs: list[str], cfg: BenchConfig, *, reference: str | None, out: Path | None,
                    as_json: bool) -> None:
    """`pkd bench A,B,...`: each architecture as a student of its family, compute only, in one table."""
    import time
    from dataclasses import replace

    from promptkd_edge.bench.students import ZERO_SHOT, measure_students, write_students
    from promptkd_edge.models.openclip import register_tiny_configs

    if cfg.compare_teacher:
        raise PkdError("--compare-teacher times one student against its teacher; give one architecture, or drop "
                       "it to compare several students")
    reference = reference or archs[0]
    if reference not in archs:
        raise PkdError(f"--reference {reference} is not one of the architectures compared ({', '.join(archs)})")
    register_tiny_configs()
    progress = make_progress(not as_json)
    report = measure_students(archs, replace(cfg, end_to_end=False), reference=reference, zero_shot=ZERO_SHOT,
                              command=cfg.command, progress=progress,
                              log=(lambda line: None) if as_json else (lambda line: progress.note(line)))
    progress.done()
    written = write_students(report, out or Path(f"bench-students-{time.strftime('%Y%m%d-%H%M%S')}"))
    if as_json:
        print_json(report)
        return
    console().print(_students_table(report))
    for backend, front in report["pareto"].items():
        console().print(f"Pareto front {shown(backend)} (batch {report['pareto_batch']} latency, top-1): "
                        f"{shown(' -> '.join(front)) or 'none'}")
    for u in report["unavailable"]:
        err().print(f"[yellow]not run[/] {shown(u['arch'])} {shown(u['backend'])}: {shown(u['reason'])}",
                    highlight=False)
    console().print(f"report: {', '.join(shown(p) for p in written.values())}")


def _students_table(report: dict):
    """The terminal's view of the students report: latency, its ratio to the reference, size, top-1."""
    from rich.table import Table

    from promptkd_edge.bench.tables import DASH, fmt

    batches = [str(b) for b in report["settings"]["batch_sizes"]]
    table = Table(title=f"students (ratios: p50 over {report['reference']}'s on the same backend and batch)")
    for col in ("arch", "family", "backend", *[f"p50 ms b{b}" for b in batches], *[f"x ref b{b}" for b in batches],
                "params M", "GFLOP", "top-1 %"):
        table.add_column(col, justify="left" if col in ("arch", "family", "backend") else "right")
    for r in report["table"]:
        top1 = f"{100 * r['zero_shot_top1']:.1f}" if r["zero_shot_top1"] is not None else DASH
        if r["backend"] is None:
            table.add_row(shown(r["arch"]), shown(r["family"]), shown(f"not measured: {r['reason']}"),
                          *[DASH] * (2 * len(batches) + 2), top1)
            continue
        cells = [r["batches"].get(b, {}) for b in batches]
        table.add_row(shown(r["arch"]), shown(r["family"]), shown(r["backend"]),
                      *[fmt(c.get("p50_ms")) for c in cells],
                      *[f"{c['p50_vs_reference']:.2f}" if c.get("p50_vs_reference") else DASH for c in cells],
                      fmt(r["params_m"]), fmt(r["gflops_per_image"]), top1)
    return table
