"""`pkd doctor`: what this machine can run, and which backend a bundle runs on here and why."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import app, console, errors_to_exit, print_json
from promptkd_edge.utils.text import shown

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
    from promptkd_edge.bench.doctor import probe, summary_rows
    from promptkd_edge.bench.plan_check import plan_lines

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
    from promptkd_edge.bench.plan_check import check_plans, is_serving_entry
    from promptkd_edge.formats.bundle import is_bundle

    report = {"path": str(path), "backend": None, "notes": [], "choice": None}
    if is_bundle(path) or not is_serving_entry(path):  # not a bundle: from_bundle says what is wrong
        from promptkd_edge.runtime import Classifier

        clf = Classifier.from_bundle(path)
        report.update(backend=clf.description, notes=clf.notes,
                      choice=clf.choice.to_dict() if clf.choice is not None else None)
        clf.close()
    report["tensorrt_plans"] = check_plans(path)
    return report
