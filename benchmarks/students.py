"""A measured choice of student: every family's real-size student on every CPU backend of this machine, in one run.

    python benchmarks/students.py                    # the default architectures below, batch 1 and 8
    python benchmarks/students.py --tiny             # the package's tiny architectures: seconds (checks the script)
    python benchmarks/students.py --archs ViT-B-16,MobileCLIP2-S0 --backends cpu

Each architecture is the student as the package builds it (random weights: speed does not depend on them): the
open_clip image tower with its family's adaptation (models/towers.py) folded for export, the projector and
`--classes` random class vectors, timed by `pkd bench`'s harness (bench/harness.py: its ONNX export where a
backend needs ONNX, its timing, FLOP count, peak memory). Beside the figures: the best pretrained tag's published
zero-shot ImageNet top-1 from open_clip's results table (promptkd_edge/bench/zero_shot_imagenet.json, with its
source), ratios to the reference architecture (ViT-B-16) on the same backend and batch, and a Pareto plot
(batch-1 latency against top-1, one panel per backend). An architecture that no family covers, or that fails to
build or export, is a row with its one-line reason. `pkd bench A,B,...` runs the same measurement. Results:
benchmarks/results/students-<cpu>-<threads>t[-tiny]/students.{json,md} and students-pareto.png, with the CPU
model and flags; the figures are comparable only within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptkd_edge.bench.backends import parse_backends  # noqa: E402
from promptkd_edge.bench.harness import BenchConfig  # noqa: E402
from promptkd_edge.bench.record import Environment  # noqa: E402
from promptkd_edge.bench.students import (  # noqa: E402
    DEFAULT_STUDENTS,
    REFERENCE,
    TINY_REFERENCE,
    ZERO_SHOT,
    cpu_backends,
    measure_students,
    slug,
    tiny_archs,
    write_students,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_ARCHS = DEFAULT_STUDENTS
DEFAULT_BACKENDS = "torch-eager-fp32,onnxruntime-cpu-fp32,openvino-cpu-fp32,openvino-cpu-bf16"
PRESETS = {  # timing settings: real sizes need few calls per figure on 2 cores; tiny ones check the script
    "real": dict(warmup=3, iterations=10, max_seconds=60.0, classes=1000),
    "tiny": dict(warmup=1, iterations=3, max_seconds=5.0, classes=10),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every architecture of `args` and write students.{json,md} and students-pareto.png to args.out."""
    from promptkd_edge.models.openclip import register_tiny_configs

    register_tiny_configs()
    preset = PRESETS["tiny" if args.tiny else "real"]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()] if args.archs else (
        tiny_archs() if args.tiny else list(DEFAULT_ARCHS))
    reference = args.reference or (TINY_REFERENCE if args.tiny else REFERENCE)
    backends = cpu_backends() if args.backends == "cpu" else parse_backends(args.backends)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    cfg = BenchConfig(target="", backends=backends, batch_sizes=batch_sizes, device="cpu", threads=args.threads,
                      end_to_end=False, min_seconds=0.0,
                      **{k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()})
    zero_shot = Path(args.zero_shot)
    report = measure_students(archs, cfg, reference=reference, zero_shot=zero_shot if zero_shot.is_file() else None,
                              command=" ".join(["python benchmarks/students.py", *args.argv]))
    env = Environment.from_dict(report["environment"])
    out = Path(args.out) if args.out else RESULTS / (f"students-{slug(env.cpu or 'cpu')}-{env.threads}t"
                                                     + ("-tiny" if args.tiny else ""))
    print(write_students(report, out)["md"])
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", help=f"comma list of open_clip architectures (default: {','.join(DEFAULT_ARCHS)}; "
                    "with --tiny: the package's tiny ones)")
    ap.add_argument("--tiny", action="store_true", help="the package's tiny architectures, few timed calls")
    ap.add_argument("--backends", default=DEFAULT_BACKENDS,
                    help="comma list of `pkd bench` backends, or 'cpu' for every CPU backend it has")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=None, help="default: every usable core")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None, help="at most this long per (backend, batch)")
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--reference", help=f"the ratios' denominator (default {REFERENCE}; tiny: {TINY_REFERENCE})")
    ap.add_argument("--zero-shot", default=str(ZERO_SHOT), help="published zero-shot top-1 per architecture (JSON)")
    ap.add_argument("--out", help="output folder (default benchmarks/results/students-<cpu>-<threads>t[-tiny])")
    args = ap.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
