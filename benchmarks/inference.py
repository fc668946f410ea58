"""Inference: the ViT-B-16 student (4 x 9 prompts, projector, class vectors) against its ViT-L-14 teacher,
224 px, per backend, compute-only and end to end, with `pkd bench`'s harness. One command per machine:

    python benchmarks/inference.py                      # CPU: eager, ONNX Runtime FP32/INT8, OpenVINO bf16; batch 1, 8
    python benchmarks/inference.py --device cuda        # GPU: eager fp32/fp16, compiled bf16, CUDA graphs, batch 1..256
    python benchmarks/inference.py --size tiny          # tiny models, seconds (checks the script)

Random weights (speed does not depend on them). Results: benchmarks/results/inference-<size>-<device>.{json,csv,md,png};
the schema is docs/bench-report.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptkd_edge.bench.backends import parse_backends  # noqa: E402
from promptkd_edge.bench.harness import BenchConfig, run_bench  # noqa: E402
from promptkd_edge.bench.report import markdown, write_all  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = {"real": ("ViT-B-16", "ViT-L-14"), "tiny": ("pkd-tiny-student", "pkd-tiny-teacher")}
PRESETS = {
    "cpu": dict(backends="torch-eager-fp32,onnxruntime-cpu-fp32,onnxruntime-cpu-int8,openvino-cpu-bf16",
                batch_sizes=[1, 8],
                warmup=2, iterations=10, min_seconds=0.0, max_seconds=60.0, e2e_max_batch=8),
    "cuda": dict(backends="torch-eager-fp16,torch-compile-bf16,torch-cudagraphs-bf16,onnxruntime-cuda-fp32,tensorrt",
                 batch_sizes=[1, 8, 32, 64, 128, 256], warmup=5, iterations=50, min_seconds=0.5, max_seconds=2.0,
                 e2e_max_batch=32),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backends", help="override the preset's comma list")
    ap.add_argument("--batch-sizes", help="override the preset, e.g. 1,8")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--peak-tflops", type=float, help="GPU peak (790 for H200 bf16): adds the FLOP-bound limit")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--out", type=Path, help="folder (default benchmarks/results)")
    args = ap.parse_args()
    register_tiny_configs()
    preset = dict(PRESETS[args.device])
    if args.backends:
        preset["backends"] = args.backends
    if args.batch_sizes:
        preset["batch_sizes"] = [int(b) for b in args.batch_sizes.split(",")]
    if args.iterations:
        preset["iterations"] = args.iterations
    student, teacher = SIZES[args.size]
    cfg = BenchConfig(target=student, backends=parse_backends(preset.pop("backends")), device=args.device,
                      compare_teacher=True, teacher=teacher, classes=args.classes, threads=args.threads,
                      end_to_end=not args.no_e2e, peak_tflops=args.peak_tflops,
                      command=" ".join(["python benchmarks/inference.py", *sys.argv[1:]]), **preset)
    report = run_bench(cfg)
    written = write_all(report, args.out or RESULTS, stem=f"inference-{args.size}-{args.device}")
    print(markdown(report))
    print("written:", ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    main()
