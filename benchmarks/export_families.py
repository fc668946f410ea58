"""Real-size students of the new families exported and gated on this CPU: MobileCLIP2-S0 (FastViT-MCi hybrid,
SSF folded and re-parameterised), ViT-B-16-SigLIP2 (timm ViT, MAP head) and PE-Core-S-16-384 (timm EVA-style ViT,
rotary positions), each at FP32, INT8 (ONNX Runtime) and bf16 (OpenVINO), by `pkd export`'s own code.

    python benchmarks/export_families.py                       # the three, fp32,int8,bf16 (about 15 minutes)
    python benchmarks/export_families.py --archs pkd-tiny-mci,pkd-tiny-map-vit --parity-images 8   # seconds

Each student has random weights (open_clip's init) and its adaptation perturbed away from identity (prompts drawn
as at init; SSF scales 1 + N(0, 0.05), shifts N(0, 0.05)), so folding is exercised; a projector to 768 (a ViT-L-14
teacher's space) and 100 random class vectors. The parity and calibration images are generated (no dataset here).
A gate that fails is a row with the export's one-line reason. Results: benchmarks/results/export_families-<cpu>
.{json,md}, with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import export_cpu  # noqa: E402
import torch  # noqa: E402
from common import where_it_ran, write_report  # noqa: E402

from promptkd_edge.errors import PkdError, first_line  # noqa: E402
from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402
from promptkd_edge.runtime import Classifier  # noqa: E402
from promptkd_edge.runtime.cpu import cpu_info  # noqa: E402
from promptkd_edge.utils.progress import LineProgress  # noqa: E402

DEFAULT_ARCHS = "MobileCLIP2-S0,ViT-B-16-SigLIP2,PE-Core-S-16-384"
BACKEND_OF = {"fp32": "onnxruntime", "int8": "onnxruntime", "bf16": "openvino"}


def make_run(root: Path, arch: str, teacher_dim: int = 768, classes: int = 100) -> dict:
    """A distillation run folder for `arch` (export_cpu.make_run, with the adaptation moved off identity)."""
    student, _ = export_cpu.make_run(root, arch, teacher_dim, 9, classes, adjust=_off_identity)
    trainable = sum(p.numel() for p in student.trainable_parameters())
    return {"family": student.tower.family, "adaptation": student.tower.adaptation,
            "prompt_depth": student.config.prompt_depth, "trainable_params": trainable,
            "params_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 2)}


def _off_identity(student) -> None:
    """SSF scale (ones) / shift (zeros) moved by N(0, 0.05); prompts stay as drawn at init."""
    with torch.no_grad():
        for name, p in student.tower.named_parameters():
            if p.requires_grad and "prompt" not in name:
                p.add_(0.05 * torch.randn_like(p))


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def export_one(run: Path, out: Path, precision: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    try:
        m = export_run(run, out, ExportOptions(precision=precision, parity_images=args.parity_images,
                                               calibration_images=args.calibration_images),
                       progress=LineProgress() if args.verbose else None)
    except PkdError as e:
        return {"precision": precision, "passed": False, "reason": first_line(e, with_type=False),
                "export_seconds": round(time.perf_counter() - started, 1)}
    row = {"precision": precision, "export_seconds": round(time.perf_counter() - started, 1),
           "model_mb": round(sum(f.stat().st_size for f in out.glob("model.onnx*")) / 1e6, 1),
           "gates": [{k: getattr(g, k) for k in ("target", "precision", "runtime", "required", "images",
                                                  "top1_agreement", "max_abs_logit_diff", "min_cosine", "passed",
                                                  "failures")} for g in m.parity],
           "conversion": m.model.conversion, "ops": op_counts(out / "model.onnx")}
    row["passed"] = all(g["passed"] for g in row["gates"] if g["required"] is not False)  # offers may fail
    clf = Classifier.from_bundle(out, backend=BACKEND_OF[precision], threads=args.threads)
    try:
        row["loaded_on"] = clf.description
        row["predicts"] = clf.predict([torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy()])[0].label
    finally:
        clf.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=DEFAULT_ARCHS)
    ap.add_argument("--precisions", default="fp32,int8,bf16")
    ap.add_argument("--parity-images", type=int, default=50)
    ap.add_argument("--calibration-images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true", help="print the export's progress notes")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    torch.set_num_threads(args.threads)
    report: dict = {"parity_images": args.parity_images, "calibration_images": args.calibration_images,
                    "threads": args.threads, "students": []}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in (a.strip() for a in args.archs.split(",") if a.strip()):
            print(f"[export_families] {arch} ...", flush=True)
            entry: dict = {"arch": arch}
            try:
                entry |= make_run(Path(tmp) / arch / "run", arch)
            except PkdError as e:
                entry["reason"] = first_line(e, with_type=False)
                report["students"].append(entry)
                continue
            entry["bundles"] = [export_one(Path(tmp) / arch / "run", Path(tmp) / arch / p, p, args)
                                for p in args.precisions.split(",")]
            for b in entry["bundles"]:
                print(f"[export_families] {arch} {b['precision']}: {'pass' if b['passed'] else 'FAIL'} "
                      f"({b.get('reason') or ', '.join(_gate(g) for g in b['gates'])})", flush=True)
            report["students"].append(entry)
    cpu = cpu_info()["model"] or "cpu"
    write_report(report, args.out, "export_families-" + re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-"),
                 markdown)


def _gate(g: dict) -> str:
    what = g["runtime"] or f"{g['target']} {g['precision']}"
    if g["top1_agreement"] is None:
        return f"{what}: {'pass' if g['passed'] else 'fail'}"
    offer = "" if g["required"] is not False else " (offer)"
    return (f"{what}{offer}: top-1 {100 * g['top1_agreement']:.1f} %, max |d logit| {g['max_abs_logit_diff']:.3g}, "
            f"min cos {g['min_cosine']:.5f}")


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Real-size students of every family: export and gates on CPU", "",
             f"{where_it_ran(r)}, "
             f"{r['threads']} threads, torch {m['torch']}. Random weights, adaptation moved off identity, "
             f"projector to 768, 100 classes; {r['parity_images']} generated parity images, "
             f"{r['calibration_images']} generated calibration images (INT8).", "",
             "| student | family · adaptation | trainable | precision | export s | model MB | gates (what: top-1 "
             "agreement, max abs logit diff, min cosine) | result | ops |", "|---|---|---|---|---|---|---|---|---|"]
    for s in r["students"]:
        if "bundles" not in s:
            lines.append(f"| {s['arch']} | | | | | | not built: {s['reason']} | | |")
            continue
        for b in s["bundles"]:
            gates = b.get("reason") or "; ".join(_gate(g) for g in b["gates"])
            fallback = (b.get("conversion") or {}).get("float_fallback") or {}
            if fallback.get("needed"):
                gates += (f"; INT8 float fallback: {len(fallback['nodes'])} of {fallback['candidates']} quantized "
                          f"nodes kept float (calibration images: top-1 "
                          f"{100 * fallback['before']['top1_agreement_beyond_ties']:.2f} -> "
                          f"{100 * fallback['after']['top1_agreement_beyond_ties']:.2f} %)")
            ops = sum(b.get("ops", {}).values()) or ""
            lines.append(f"| {s['arch']} | {s['family']} · {s['adaptation']} | "
                         f"{s['trainable_params']:,} | {b['precision']} | {b['export_seconds']} | "
                         f"{b.get('model_mb', '')} | {gates} | {'pass' if b['passed'] else 'FAIL'} | {ops} |")
    lines += ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
