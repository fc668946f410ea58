"""`pkd demo`: the embedded demo, both PromptKD stages on a generated night-camera domain."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import accuracy_table, app, console, errors_to_exit, make_progress, print_json, require
from promptkd_edge.utils.text import shown

DEMO_EXAMPLES = """
[bold]Examples[/bold]

  pkd demo                      # everything into ./demo-output, about 3 minutes on 2 CPU cores
  pkd demo --out /tmp/d --json
  pkd demo --student-family timm-vit --out demo-timm   # the same pipeline with a SigLIP-like timm ViT student
"""


@app.command(epilog=DEMO_EXAMPLES)
@errors_to_exit
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, weights and the run.")] = Path("demo-output"),
    quick: Annotated[bool, typer.Option("--quick", help="A reduced demo (seconds; numbers meaningless).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the generated domain and of training.")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 2,
    student_family: Annotated[str, typer.Option("--student-family", help="The student's tower family: "
                                                "openclip-vit (the paper's ViT, default), timm-vit (a SigLIP-like "
                                                "timm ViT with a MAP pool) or hybrid (a FastViT-like tower, "
                                                "MobileCLIP2-S*).")] = "openclip-vit",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """The embedded demo: textures seen by a camera at night, tiny CLIPs, both PromptKD stages, and what distillation
    gains over the student's own zero-shot head. Downloads nothing."""
    require("demo", "train", "export")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from promptkd_edge.demo.pipeline import DemoSize, run_demo

    report = run_demo(out, size=DemoSize.quick() if quick else DemoSize(), seed=seed, workers=workers,
                      student_family=student_family, progress=make_progress(not as_json))
    if as_json:
        print_json(report.to_dict())
        return
    from rich.table import Table

    times = Table(title="time (s)")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in report.seconds.items():
        times.add_row(stage, f"{seconds:.1f}")
    times.add_row("[bold]total[/]", f"[bold]{sum(report.seconds.values()):.1f}[/]")
    acc = accuracy_table(f"test split ({report.test_images} images, {report.classes} classes, chance "
                         f"{100 / report.classes:.0f} %)", report.top1, report.base, report.novel, report.hm,
                         {"student after / teacher tuned": report.agreement})
    console().print(times)
    console().print(acc)
    console().print(report.domain, markup=False, highlight=False)
    console().print(demo_gains(report.gains), markup=False, highlight=False)
    console().print(f"teacher run: {shown(report.teacher['run'])}; student run: {shown(report.distill['run'])} "
                    "(student.safetensors, metrics.jsonl, loss.png)")


def demo_gains(g: dict[str, float]) -> str:
    """The demo's headline: what distillation did for the student, in points and share of the teacher gap."""
    def closed(metric: str) -> str:
        share = g.get(f"{metric}_gap_closed")
        return f"{100 * share:.0f} %" if share is not None else "n/a (the teacher is not ahead)"

    if "top1_points" not in g:
        return "PromptKD: no gain figures (the report lacks the student before/after rows)"
    hm = f" and {g['hm_points']:+.1f} of base/novel HM" if "hm_points" in g else ""
    return (f"PromptKD: the distilled student scores {g['top1_points']:+.1f} points of all-class top-1{hm} over its "
            f"own zero-shot head and closes {closed('top1')} (top-1) / {closed('hm')} (HM) of the gap to the tuned "
            "teacher, without a single label.")
