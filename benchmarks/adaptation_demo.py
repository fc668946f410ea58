"""The hybrid student's adaptation on the demo domain: SSF (the default) against BitFit (SSF's shifts only) and the
projector alone, each through the whole `pkd demo --student-family hybrid` pipeline (same data, same pre-trained
tiny CLIPs, same tuned teacher, same seed; only what stage II may train differs).

    python benchmarks/adaptation_demo.py            # about 4 minutes per variant on 2 cores
    python benchmarks/adaptation_demo.py --quick    # the demo's reduced sizes: checks the script
    python benchmarks/adaptation_demo.py --reuse /tmp/demo-hybrid   # a `pkd demo --student-family hybrid` folder:
                                                    # its generated data and pre-trained tiny CLIPs (stage 0)

A variant leaves the parameters it does not train out of the optimizer (they stay at identity: scale 1, shift 0),
so its run, export and evaluation are the demo's own. Figures: the student's top-1 on all classes and the
base-to-novel harmonic mean on the demo's test images, before distillation (zero-shot with its own text tower) and
after, and the top-1 agreement of the distilled student with the tuned teacher. Results:
benchmarks/results/adaptation_demo.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_report  # noqa: E402

VARIANTS = {  # what stage II trains in the tower, besides the projector
    "ssf": lambda name: True,
    "bitfit": lambda name: "ssf_scale" not in name,
    "nothing": lambda name: not name.startswith("tower."),
}


def run_variant(variant: str, out: Path, quick: bool, workers: int) -> dict:
    from promptkd_edge.demo.pipeline import AFTER, BEFORE, TUNED, DemoSize, run_demo
    from promptkd_edge.models.student import Student
    from promptkd_edge.utils.files import read_json

    keep = VARIANTS[variant]
    original = Student.trainable_parameters
    Student.trainable_parameters = lambda self: [p for n, p in self.named_parameters() if p.requires_grad and keep(n)]
    started = time.perf_counter()
    try:
        report = run_demo(out, size=DemoSize.quick() if quick else DemoSize(), student_family="hybrid",
                          workers=workers)
    finally:
        Student.trainable_parameters = original
    pick = {"before": BEFORE, "after": AFTER, "tuned teacher": TUNED}
    resolved = read_json(out / "run" / "config.json")["resolved"]
    return {"variant": variant, "seconds": round(time.perf_counter() - started, 1),
            "trainable_parameters": resolved["trainable_parameters"],
            "top1": {k: report.top1[v] for k, v in pick.items()}, "hm": {k: report.hm[v] for k, v in pick.items()},
            "agreement_with_teacher": report.agreement, "steps": report.distill["steps"],
            "final_loss": report.distill["final_loss"]}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# The hybrid student's adaptation on the demo domain", "",
             f"{r['date']}, {m['cpu']}, torch {m['torch']}; `pkd demo --student-family hybrid` "
             f"({'reduced sizes' if r['quick'] else 'full sizes'}), seed 0, one run per variant.", "",
             "| stage II trains | trained parameters | top-1 before | top-1 after | gain | HM before | HM after | "
             "gain | agreement with tuned teacher | final KD loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in r["variants"]:
        t, h = v["top1"], v["hm"]
        cells = [f"{v['variant']} + projector", f"{v['trainable_parameters']:,}", *[
            f"{100 * d['before']:.1f} % | {100 * d['after']:.1f} % | {100 * (d['after'] - d['before']):+.1f}"
            for d in (t, h)], f"{100 * v['agreement_with_teacher']:.1f} %", f"{v['final_loss']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reuse", type=Path, default=None, help="a demo folder whose data/ and weights/ to start from "
                    "(the demo reuses them only where their stamps match these sizes and seed)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    report: dict = {"quick": args.quick, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.reuse:
            for part in ("data", "weights"):
                shutil.copytree(args.reuse / part, Path(tmp) / "demo" / part)
        for variant in args.variants.split(","):
            print(f"[adaptation_demo] {variant} ...", flush=True)
            report["variants"].append(run_variant(variant, Path(tmp) / "demo", args.quick, args.workers))
            v = report["variants"][-1]
            print(f"[adaptation_demo] {variant}: top-1 {v['top1']['before']:.3f} -> {v['top1']['after']:.3f}, "
                  f"HM {v['hm']['before']:.3f} -> {v['hm']['after']:.3f} ({v['seconds']} s)", flush=True)
    write_report(report, args.out, "adaptation_demo" + ("-quick" if args.quick else ""), markdown)


if __name__ == "__main__":
    main()
