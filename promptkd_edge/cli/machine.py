"""`pkd doctor`, `pkd bench`, `pkd models`: what this machine runs, how fast, and which models there are."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

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
from promptkd_edge.utils.text import shown, visible

_C = defaults(BenchConfig)

DOCTOR_EXAMPLES = ("[bold]Examples[/bold]\n\n  pkd doctor\n  pkd doctor --json\n  pkd doctor --no-trt-check\n  "
                   "pkd doctor --bundle bundles/pets   # the backend it runs on here and why; its plans here\n"
                   "  pkd doctor --bundle models/pets   # a Triton plan entry: its plan on this TensorRT and GPU\n"
                   "  pkd doctor --bundle deepstream/pets   # a DeepStream config: its plan on this TensorRT and GPU\n")


@app.command(epilog=DOCTOR_EXAMPLES)
@errors_to_exit
def doctor(
    trt_check: Annotated[bool, typer.Option("--trt-check/--no-trt-check", help="Where TensorRT exists, build and "
                                            "run a tiny engine end to end.")] = True,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Also load this bundle as `backend=auto` does and "
                                                "say which backend it runs on here and why (measured once, then "
                                                "cached), and whether each of its TensorRT plans loads on this "
                                                "TensorRT and GPU; a Triton plan entry folder or a DeepStream "
                                                "config (file or folder): its plan.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
) -> None:
    """What this machine can run: CPU flags, torch + CUDA, ONNX Runtime providers that really load, OpenVINO,
    TensorRT, GPU, Jetson; with --bundle, the backend a bundle runs on here."""
    from promptkd_edge.bench.doctor import plan_lines, probe, summary_rows

    report = probe(run_tensorrt_check=trt_check)
    if bundle is not None:
        report["bundle"] = _bundle_report(bundle)
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    table = Table(title="pkd doctor")
    for col in ("component", "status", "detail"):
        table.add_column(col)
    colour = {"ok": "green", "missing": "yellow", "warning": "red"}
    for component, status, detail in summary_rows(report):
        table.add_row(shown(component), f"[{colour.get(status, 'white')}]{status}[/]", shown(detail))
    console().print(table)
    if bundle is not None:
        b = report["bundle"]
        if b["backend"] is not None:
            why = b["choice"]["reason"] + (" (cached)" if b["choice"]["cached"] else "") if b["choice"] else \
                "a TensorRT plan or a GPU provider, or the only option"
            console().print(f"bundle {shown(bundle)} runs on {shown(b['backend'])}: {shown(why)}")
        for note in b["notes"]:
            console().print(f"  note: {shown(note)}")
        console().print(f"TensorRT plans of {shown(bundle)}:")
        for line in plan_lines(b["tensorrt_plans"]):
            console().print(f"  {shown(line)}")


def _bundle_report(path: Path) -> dict:
    """What `doctor --bundle` says of a bundle (the backend it runs on here, and its plans against this TensorRT
    and GPU) or of a Triton plan entry or DeepStream config (its plan only)."""
    from promptkd_edge.bench.doctor import check_plans, is_serving_entry
    from promptkd_edge.runtime.bundle import is_bundle

    report = {"path": str(path), "backend": None, "notes": [], "choice": None}
    if is_bundle(path) or not is_serving_entry(path):  # not a bundle: from_bundle says what is wrong
        from promptkd_edge.runtime import Classifier

        clf = Classifier.from_bundle(path)
        report.update(backend=clf.description, notes=clf.notes,
                      choice=clf.choice.to_dict() if clf.choice is not None else None)
        clf.close()
    report["tensorrt_plans"] = check_plans(path)
    return report


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

  Backends: torch-eager-fp32|fp16|bf16, torch-compile-fp32|bf16, torch-cudagraphs-bf16,
  onnxruntime-cpu-fp32|int8, openvino-cpu-fp32|bf16|int8|int8-bf16, auto (a bundle: what the runtime picks),
  onnxruntime-cuda-fp32, onnxruntime-tensorrt-fp16, tensorrt (or: all).
"""


@app.command(epilog=BENCH_EXAMPLES)
@errors_to_exit
def bench(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A bundle, a distillation run, an open_clip architecture name "
                                          "(random weights), or several (a comma list: compared as students).")],
    backends: Annotated[str, typer.Option(help="Comma list of backends, or all.")] = "all",  # all: BenchConfig's None
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = ",".join(map(str, _C.batch_sizes)),
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing, per backend and batch.")] = _C.warmup,
    iterations: Annotated[int, typer.Option(help="Timed calls (at least), per backend and batch.")] = _C.iterations,
    min_seconds: Annotated[float, typer.Option(help="Time each batch for at least this long.")] = _C.min_seconds,
    max_seconds: Annotated[float, typer.Option(help="Stop timing a batch after this long (>= 3 calls).")
                           ] = _C.max_seconds,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = _C.device,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch and ONNX Runtime (default: all "
                                                "usable).")] = _C.threads,
    compare_teacher: Annotated[bool, typer.Option("--compare-teacher", help="Also time the teacher (its "
                                                  "architecture, random weights); report the student's speed-up.")
                               ] = _C.compare_teacher,
    teacher: Annotated[str | None, typer.Option(help="Teacher for --compare-teacher (default: the one the target was "
                                                "distilled from, else ViT-L-14).")] = _C.teacher,
    classes: Annotated[int, typer.Option(help="Classes of an architecture target's random class vectors.")
                       ] = _C.classes,
    end_to_end: Annotated[bool, typer.Option("--e2e/--no-e2e", help="Also time decode + preprocess + infer + top-k "
                                             "from image files and from frames in memory.")] = _C.end_to_end,
    images: Annotated[str | None, typer.Option(help="Image folder for end-to-end timing (default: generated 1920x1080 "
                                               "JPEGs).")] = _C.images,
    e2e_max_batch: Annotated[int, typer.Option(help="Time end to end only up to this batch size.")
                             ] = _C.e2e_max_batch,
    workers: Annotated[int | None, typer.Option(min=0, help="End to end: threads that decode the next batches "
                                                "while the backend runs (default: min(4, usable cores); 0: "
                                                "sequential).")] = _C.workers,
    peak_tflops: Annotated[float | None, typer.Option(help="The GPU's peak TFLOP/s (e.g. 790 bf16 on H200): report "
                                                      "the fraction of the FLOP-bound throughput reached.")
                           ] = _C.peak_tflops,
    text_names: Annotated[int, typer.Option("--text-names", help="Also time the bundle's text encoder (export "
                                            "--text-encoder): names per second for this many class names, e.g. "
                                            "1000.")] = _C.text_names,
    reference: Annotated[str | None, typer.Option(help="Several architectures: the one the others' latency is "
                                                  "divided by (default: the first).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for bench.json, .csv, .md and .png; several "
                                             "architectures: students.json, .md and students-pareto.png (default: "
                                             "bench-<target>-<time>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Latency and throughput per backend and batch: p50/p90/p99, compute vs end to end, memory, power; or, for
    several architectures, which student is fastest here."""
    import time

    from promptkd_edge.bench.backends import parse_backends
    from promptkd_edge.bench.harness import measure
    from promptkd_edge.bench.report import MODES, terminal_table, write_all
    from promptkd_edge.bench.students import architecture_list
    from promptkd_edge.runtime.bundle import is_bundle

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


MODELS_EXAMPLES = "[bold]Examples[/bold]\n\n  pkd models\n  pkd models --filter ViT-L --json\n"


@app.command(epilog=MODELS_EXAMPLES)
@errors_to_exit
def models(
    filter: Annotated[str, typer.Option("--filter", help="Only architectures containing this text.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON on stdout.")] = False,
) -> None:
    """List open_clip architectures (including the package's tiny ones): their pretrained tags and, as a student,
    their tower family and the adaptation it gets (none: not usable as a student)."""
    require("models", "train")
    import open_clip

    from promptkd_edge.models.openclip import list_architectures
    from promptkd_edge.models.towers import family_of, supported_families

    families = supported_families()
    rows = {}
    for arch in (a for a in list_architectures() if filter in a):
        family = family_of(arch)
        rows[arch] = {"tags": open_clip.list_pretrained_tags_by_model(arch),
                      "family": family if family in families else None}
    if as_json:
        print_json(rows)
        return
    from rich.text import Text

    for family, adaptation in families.items():
        console().print(Text(f"{family}: ", style="bold") + Text(adaptation), highlight=False)
    console().print()
    for arch, row in rows.items():  # Text, not markup: names are printed as they are
        tags = row["tags"]
        console().print(Text(visible(arch), style="bold") + Text(f" [{row['family'] or 'no student adaptation'}]")
                        + Text(f": {visible(', '.join(tags))}" if tags else ""), highlight=False)
