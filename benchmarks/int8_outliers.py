"""INT8 on a student with CLIP-like activation outliers: `pkd export --precision int8` with and without SmoothQuant.

    python benchmarks/int8_outliers.py                 # ViT-B-16, 3 planted channels x40 in every block
    python benchmarks/int8_outliers.py --size tiny     # seconds; checks the script (tiny needs --factor 150)

Real CLIP ViTs carry a few residual channels with activations tens of times larger than the rest; a random ViT has
none, so its INT8 gate passes easily. Here three of the 768 channels of every block get a 40x LayerNorm scale and
the weights after it 40x smaller (the function barely changes, the activations do), and the student is exported to
INT8 with `--no-smooth` and with the default smoothing, next to the same student without outliers. Random weights,
generated calibration and parity images. Results: benchmarks/results/int8_outliers-<size>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, write_report  # noqa: E402
from export_cpu import SIZES, make_run  # noqa: E402

from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.openclip import ModelSpec, load_clip, register_tiny_configs  # noqa: E402
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

CHANNELS = (7, 300, 555)


def planted_run(root: Path, arch: str, teacher_dim: int, depth: int, factor: float) -> None:
    """A run whose student's base weights (a local file) carry the planted outliers (factor 1: none)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = load_clip(ModelSpec.parse(arch))
    with torch.no_grad():
        for block in clip.model.visual.transformer.resblocks:
            width = block.ln_1.weight.shape[0]
            for ln, weight in ((block.ln_1, block.attn.in_proj_weight), (block.ln_2, block.mlp.c_fc.weight)):
                for c in (c % width for c in CHANNELS):
                    ln.weight[c] *= factor
                    ln.bias[c] *= factor
                    weight[:, c] /= factor
    root.mkdir(parents=True, exist_ok=True)
    weights = root / "base.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    make_run(root, f"{arch}:{weights}", teacher_dim, depth)


def speed(path: Path, size: tuple[int, int], threads: int | None) -> dict[str, float]:
    backend = OnnxRuntimeBackend(path, providers="cpu", threads=threads)
    out = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
        backend.run(x)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            backend.run(x)
            times.append(time.perf_counter() - t)
        out[f"b{batch}_ms"] = round(1000 * float(np.median(times)), 1)
    return out


def markdown(report: dict) -> str:
    lines = [f"# INT8 with planted activation outliers: {report['arch']}, {report['date']}", "",
             f"CPU: {report['machine']['cpu']}, flags: {' '.join(report['machine'].get('cpu_speed_flags', []))}", "",
             f"Planted: channels {report['channels']} x{report['factor']} in every block's ln_1 and ln_2 (the "
             "following weights / the factor)", "",
             "| student | INT8 export | gate | min cosine | top-1 agreement | max abs logit diff | outlier ratio "
             "(before / after smoothing) | ORT b1 ms | ORT b8 ms |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in report["rows"]:
        sm = r["smoothing"]
        ratio = f"{sm['outlier_ratio_before']} / {sm['outlier_ratio_after']}" if sm else "-"
        verdict = "pass" if r["passed"] else "FAIL"
        lines.append(f"| {r['student']} | {r['export']} | {verdict} | {r['min_cosine']:.5f} | "
                     f"{100 * r['top1_agreement']:.1f} % | {r['max_abs_logit_diff']:.3g} | {ratio} | {r['b1_ms']} | "
                     f"{r['b8_ms']} |")
    fp32 = report["fp32_speed"]
    lines += ["", f"FP32 model.onnx on the same ONNX Runtime: batch 1 {fp32['b1_ms']} ms, batch 8 {fp32['b8_ms']} ms."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--factor", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calibration-images", type=int, default=100)
    ap.add_argument("--parity-images", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    arch, dim, depth = SIZES[args.size]
    rows, fp32_speed = [], {}
    with tempfile.TemporaryDirectory(prefix="pkd-int8-outliers-") as tmp:
        for student, factor in (("no outliers", 1.0), (f"planted x{args.factor:g}", args.factor)):
            run = Path(tmp) / student.replace(" ", "-")
            planted_run(run, arch, dim, depth, factor)
            for label, smooth in (("--no-smooth", False), ("default (SmoothQuant)", True)):
                out = Path(tmp) / f"{run.name}-{smooth}"
                manifest = export_run(run, out, ExportOptions(
                    precision="int8", smooth=smooth, force=True, parity_images=args.parity_images,
                    calibration_images=args.calibration_images, int8_fallback=False))  # smoothing alone
                gate = manifest.parity[0]
                rows.append({"student": student, "export": label, "passed": gate.passed,
                             "min_cosine": gate.min_cosine, "top1_agreement": gate.top1_agreement,
                             "max_abs_logit_diff": gate.max_abs_logit_diff,
                             "smoothing": manifest.model.conversion.get("smoothing"),
                             **speed(out / "model.onnx", tuple(manifest.model.inputs[0].shape[2:]),
                                     args.threads)})
                print(rows[-1], flush=True)
            if not fp32_speed:
                fp32 = export_run(run, Path(tmp) / "fp32", ExportOptions(parity_images=8))
                fp32_speed = speed(Path(tmp) / "fp32" / "model.onnx", tuple(fp32.model.inputs[0].shape[2:]),
                                   args.threads)
    report = {"arch": arch, "channels": list(CHANNELS), "factor": args.factor, "rows": rows, "fp32_speed": fp32_speed,
              "command": " ".join(["python benchmarks/int8_outliers.py", *sys.argv[1:]])}
    write_report(report, args.out or RESULTS / f"int8_outliers-{args.size}.json", f"int8_outliers-{args.size}",
                 markdown)


if __name__ == "__main__":
    main()
