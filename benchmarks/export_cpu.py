"""ONNX Runtime FP32 and INT8 against PyTorch eager on this CPU, for the exported ViT-B-16 student.

    python benchmarks/export_cpu.py                              # ViT-B-16, 224 px, batch 1 and 8, 2 threads
    python benchmarks/export_cpu.py --size tiny --iterations 50  # seconds; checks the script itself

The student is ViT-B-16 with random weights (speed does not depend on them), 4 prompts x 9 layers, a projector
to 768 (the ViT-L-14 teacher's space) and 100 class vectors. `pkd export` makes the FP32 and INT8 bundles
(INT8 calibrated on generated images); each is timed on the same inputs with warm-up, median and p90 of the
timed calls. Results: benchmarks/results/export_cpu-<size>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import where_it_ran, write_report  # noqa: E402

from promptkd_edge.bench.timing import time_calls  # noqa: E402
from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.class_vectors import ClassVectors  # noqa: E402
from promptkd_edge.models.openclip import ModelSpec, load_clip, register_tiny_configs  # noqa: E402
from promptkd_edge.models.student import StudentConfig, build_student, save_student  # noqa: E402
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

SIZES = {"real": ("ViT-B-16", 768, 9), "tiny": ("pkd-tiny-student", 128, 3)}


def make_run(root: Path, arch: str, teacher_dim: int, depth: int, classes: int = 100, adjust=None):
    """A run folder of `arch`'s student (random weights, seed 0; `adjust(student)` before it is saved) and
    `classes` random class vectors; returns (student, vectors)."""
    torch.manual_seed(0)
    config = StudentConfig(spec=arch, teacher_dim=teacher_dim, prompt_tokens=4, prompt_depth=depth, init_seed=0)
    student = build_student(load_clip(ModelSpec.parse(arch)), config).eval()
    if adjust is not None:
        adjust(student)
    root.mkdir(parents=True, exist_ok=True)
    save_student(student, root / "student.safetensors")
    vectors = ClassVectors([f"class{i}" for i in range(classes)],
                           torch.nn.functional.normalize(torch.randn(classes, teacher_dim), dim=-1),
                           "ViT-L-14", "a photo of a {}.", 100.0)
    vectors.save(root)
    return student, vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--calibration-images", type=int, default=100)
    ap.add_argument("--parity-images", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    torch.set_num_threads(args.threads)
    arch, dim, depth = SIZES[args.size]
    report: dict = {"student": arch, "prompts": f"4 x {depth}", "teacher_dim": dim, "classes": 100,
                    "threads": args.threads, "rows": [], "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student, vectors = make_run(tmp / "run", arch, dim, depth)
        size = student.preprocess.size
        backends = {"pytorch eager fp32": None}
        for precision in ("fp32", "int8"):
            t0 = time.perf_counter()
            m = export_run(tmp / "run", tmp / precision, ExportOptions(
                precision=precision, parity_images=args.parity_images, calibration_images=args.calibration_images))
            gate = m.parity[0].to_dict()
            report["bundles"][precision] = {
                "export_seconds": round(time.perf_counter() - t0, 1),
                "model_mb": round((tmp / precision / "model.onnx").stat().st_size / 1e6, 1),
                "parity": {k: gate[k] for k in ("images", "image_source", "top1_agreement", "max_abs_logit_diff",
                                                "min_cosine", "passed")},
                "conversion": m.model.conversion}
            backends[f"onnxruntime cpu {precision}"] = OnnxRuntimeBackend(tmp / precision / "model.onnx",
                                                                          providers="cpu", threads=args.threads)
        rng = np.random.default_rng(0)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
            xt = torch.from_numpy(x)
            for name, backend in backends.items():
                if backend is None:
                    def call(xt=xt):
                        with torch.inference_mode():
                            return vectors.logits(student(xt))
                else:
                    def call(backend=backend, x=x):
                        return backend.run(x)
                t = time_calls(call, batch, warmup=args.warmup, iterations=args.iterations)
                report["rows"].append({"backend": name, **t.to_dict()})
                print(f"{name:24s} batch {batch}: p50 {t.p50:8.1f} ms  p90 {t.p90:8.1f} ms  "
                      f"{t.images_per_s:7.2f} img/s")
    base = {r["batch"]: r["p50_ms"] for r in report["rows"] if r["backend"] == "pytorch eager fp32"}
    for r in report["rows"]:
        r["speedup_vs_eager"] = base[r["batch"]] / r["p50_ms"]
    write_report(report, args.out, f"export_cpu-{args.size}", markdown)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Exported {r['student']} student on CPU: ONNX Runtime FP32 / INT8 vs PyTorch eager", "",
             f"{where_it_ran(r)}, "
             f"{r['threads']} threads, torch {m['torch']}. Student {r['student']} "
             f"(random weights), prompts {r['prompts']}, projector to {r['teacher_dim']}, {r['classes']} classes; "
             "input already preprocessed (compute only).", "",
             "| backend | batch | p50 ms | p90 ms | img/s | vs eager |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['backend']} | {row['batch']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | "
                     f"{row['images_per_s']:.2f} | {row['speedup_vs_eager']:.2f}x |")
    lines += ["", "| bundle | export s | model MB | parity images | top-1 agreement | max abs logit diff | "
              "min cosine | gate |", "|---|---|---|---|---|---|---|---|"]
    for name, b in r["bundles"].items():
        p = b["parity"]
        lines.append(f"| {name} | {b['export_seconds']} | {b['model_mb']} | {p['images']} ({p['image_source']}) | "
                     f"{100 * p['top1_agreement']:.1f} % | {p['max_abs_logit_diff']:.3g} | {p['min_cosine']:.5f} | "
                     f"{'pass' if p['passed'] else 'FAIL'} |")
    lines += ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
