"""Distillation throughput (images/s) of `pkd distill`, with the teacher run every step and with the
teacher-feature cache, measured through the real recipe (data loading included) on generated images.

    python benchmarks/distill_throughput.py --size tiny                      # CPU, seconds
    python benchmarks/distill_throughput.py --size real --steps 4            # ViT-L-14 -> ViT-B-16, random weights
    python benchmarks/distill_throughput.py --size real --device cuda --batch-sizes 64,128,256 --steps 100

Steady state: the first `--warmup-steps` steps of each run are left out. Results go to
benchmarks/results/distill_throughput-<size>-<device>.json (and .md) with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import write_report  # noqa: E402
from PIL import Image  # noqa: E402

from promptkd_edge.train.config import DistillConfig  # noqa: E402
from promptkd_edge.train.distill import distill  # noqa: E402

SIZES = {
    # teacher, student, prompt depth, image side
    "tiny": ("pkd-tiny-teacher", "pkd-tiny-student", 4, 64),
    "real": ("ViT-L-14", "ViT-B-16", 9, 256),
}


def make_images(folder: Path, distinct: int, total: int, side: int) -> Path:
    """`distinct` random JPEGs, listed `total` times over in a file list (decode cost is real, disk is small)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(distinct):
        low = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
        names.append(f"{i:05d}.jpg")
    listing = folder / "list.txt"
    listing.write_text("\n".join(names[i % distinct] for i in range(total)) + "\n")
    return listing


def steady_throughput(run: Path, warmup_steps: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > warmup_steps] or rows
    if len(rows) < 2:
        return float("nan")
    first, last = rows[0], rows[-1]
    return (last["images_seen"] - first["images_seen"]) / max(last["seconds"] - first["seconds"], 1e-9)


def bench(size: str, device: str, batch: int, steps: int, warmup_steps: int, workers: int, precision: str,
          work: Path, cache_views: int, compile_: bool) -> list[dict]:
    teacher, student, depth, side = SIZES[size]
    total = batch * steps
    data = make_images(work / f"data-{batch}", min(total, 512), total, side)
    (work / "classes.txt").write_text("\n".join(f"class_{i}" for i in range(100)) + "\n")
    rows = []
    for mode, k in (("teacher every step", 0), ("teacher-feature cache", cache_views)):
        run = work / f"run-{batch}-{k}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = DistillConfig(teacher=teacher, student=student, classes=str(work / "classes.txt"), data=str(data),
                            epochs=1, warmup_epochs=0, batch_size=batch, workers=workers, prompt_depth=depth,
                            device=device, precision=precision, teacher_cache=k, cache_dir=str(work / "cache"),
                            log_every=1, compile=compile_, random_init=True)  # speed does not need weights
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        result = distill(cfg, run)
        wall = time.perf_counter() - t
        row = {"mode": mode, "batch": batch, "steps": result.steps, "images_per_second": steady_throughput(
            run, warmup_steps), "wall_seconds": round(wall, 1), "training_seconds": round(result.seconds, 1)}
        if k:
            # everything that is not training in this run is loading models + building the cache
            row["cache_views"] = k
            row["cache_build_and_setup_seconds"] = round(wall - result.seconds, 1)
        if torch.cuda.is_available():
            row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-sizes", default="32")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--cache-views", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/...)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="pkd-bench-") as tmp:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rows += bench(args.size, args.device, batch, args.steps, args.warmup_steps, args.workers,
                          args.precision, Path(tmp), args.cache_views, args.compile)
    report = {"benchmark": "distill_throughput", "size": args.size, "teacher": SIZES[args.size][0],
              "student": SIZES[args.size][1], "device": args.device, "precision": args.precision,
              "workers": args.workers, "steps": args.steps, "warmup_steps": args.warmup_steps, "results": rows,
              "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    write_report(report, args.out, f"distill_throughput-{args.size}-{args.device.split(':')[0]}", markdown)


def markdown(report: dict) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    lines = [f"# Distillation throughput: {report['teacher']} -> {report['student']} ({report['size']})", "",
             f"{report['date']}, {where}, torch {m['torch']}, device {report['device']}, precision "
             f"{report['precision']}, {report['workers']} loader workers, {report['steps']} steps per run "
             f"(first {report['warmup_steps']} left out). Command: `python benchmarks/{report['command']}`", "",
             "| mode | batch | images/s (steady) | cache build + setup (s) | peak GPU memory (GiB) |",
             "|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['mode']} | {r['batch']} | {r['images_per_second']:.1f} | "
                     f"{r.get('cache_build_and_setup_seconds', '')} | {r.get('peak_gpu_memory_gib', '')} |")
    by_batch: dict[int, dict[str, float]] = {}
    for r in report["results"]:
        by_batch.setdefault(r["batch"], {})[r["mode"]] = r["images_per_second"]
    lines.append("")
    for batch, modes in by_batch.items():
        if len(modes) == 2:
            a, b = modes["teacher every step"], modes["teacher-feature cache"]
            lines.append(f"- batch {batch}: the cache trains {b / a:.2f}x faster than running the teacher every step.")
    lines.append(f"- peak host RSS of the benchmark process: {report['peak_host_rss_gib']} GiB")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
