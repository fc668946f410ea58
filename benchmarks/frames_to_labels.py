"""From camera frame to label on this CPU: what an app gets against what the engine can do, before and after the
runtime's pipeline (issue 22's Goal).

    python benchmarks/frames_to_labels.py          # ViT-B-16 student bundle, batch 16, 64 1080p inputs: minutes
    python benchmarks/frames_to_labels.py --tiny   # seconds; checks the script itself

The student is ViT-B-16 with random weights (speed does not depend on them), made and exported FP32 as
benchmarks/export_cpu.py does. Per backend (`auto`: what `Classifier.from_bundle` picks here; `onnxruntime`: ONNX
Runtime on the CPU; auto's pick is not run twice), on the same inputs:

- model only: `Classifier.run` on a batch already preprocessed (images/s = batch / p50);
- end to end: `Classifier.logits` over all the inputs (1080p JPEG files, generated as `pkd bench` makes them, and
  1080p uint8 RGB frames in memory: those files decoded), before (workers=0: decode a batch, run it, the next) and
  after (the pipeline: the next batches decoded on worker threads while the backend runs the current one); images/s =
  inputs / p50 of the whole call, the first batch's decoding (nothing to overlap it with) included;
- preprocessing alone (decode + resize + normalize), sequential and on the workers, for the picture;
- ratio = end-to-end images/s over model-only images/s, and whether the pipelined top-1 equals the sequential one.

Results: benchmarks/results/frames_to_labels-<size>-cpu.json and .md (CPU model and flags recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import write_report  # noqa: E402

from promptkd_edge.bench.harness import camera_inputs  # noqa: E402
from promptkd_edge.bench.timing import time_calls  # noqa: E402
from promptkd_edge.runtime import Classifier, pipeline  # noqa: E402

SIZES = {"real": ("ViT-B-16", 768, 9), "tiny": ("pkd-tiny-student", 128, 3)}
DEFAULTS = {"real": {"images": 64, "frames": 16, "batch": 16, "iterations": 3, "parity_images": 16},
            "tiny": {"images": 6, "frames": 3, "batch": 2, "iterations": 2, "parity_images": 4}}


def make_bundle(root: Path, size: str, parity_images: int) -> Path:
    """The student run (random weights) exported to an FP32 bundle, as benchmarks/export_cpu.py does."""
    from export_cpu import make_run

    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions
    from promptkd_edge.models.openclip import register_tiny_configs

    register_tiny_configs()
    arch, dim, depth = SIZES[size]
    make_run(root / "run", arch, dim, depth)
    export_run(root / "run", root / "bundle", ExportOptions(precision="fp32", parity_images=parity_images))
    return root / "bundle"


def timed(fn: Callable[[], object], images: int, warmup: int, iterations: int) -> dict:
    t = time_calls(fn, images, warmup=warmup, iterations=iterations)
    return {"p50_ms": round(t.p50, 2), "ms_per_image": round(t.p50 / images, 2),
            "images_per_s": round(t.images_per_s, 2), "calls": len(t.samples_ms)}


def prepare_only(clf: Classifier, items: list, batch: int, workers: int) -> None:
    with closing(clf.prepared(items, batch, workers=workers)) as batches:
        for _ in batches:
            pass


def bench_backend(clf: Classifier, inputs: dict[str, list], args, after: int) -> dict:
    files = inputs["files"]
    x = clf.inputs(files[:args.batch])
    row: dict = {"backend": clf.description, "model_only": timed(lambda: clf.run(x), args.batch, args.warmup,
                                                                 args.iterations * 3)}
    model = row["model_only"]["images_per_s"]
    for kind, items in inputs.items():
        logits = {}
        for label, workers in (("before", 0), ("after", after)):
            logits[label] = clf.logits(items, args.batch, workers=workers)  # also the warm-up call
            cell = timed(lambda x=items, w=workers: clf.logits(x, args.batch, workers=w), len(items), 0,
                         args.iterations)
            cell["ratio_to_model"] = round(cell["images_per_s"] / model, 3)
            cell["workers"] = workers
            row[f"{kind} {label}"] = cell
            prep = timed(lambda x=items, w=workers: prepare_only(clf, x, args.batch, w), len(items), 0,
                         args.iterations)
            row[f"{kind} preprocessing {label}"] = prep
        row[f"{kind} top1 identical"] = bool(np.array_equal(logits["before"].argmax(1), logits["after"].argmax(1)))
        row[f"{kind} max abs logit diff"] = float(np.abs(logits["before"] - logits["after"]).max())
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the package's tiny student and a few inputs: seconds")
    ap.add_argument("--images", type=int, help="inputs per call (files, and frames cycled to as many)")
    ap.add_argument("--frames", type=int, help="distinct 1080p frames in memory")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--iterations", type=int, help="timed calls per cell (after an untimed one)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="the pipeline's threads (default: the runtime's)")
    ap.add_argument("--threads", type=int, default=None, help="backend threads (default: all usable)")
    ap.add_argument("--backends", default="auto,onnxruntime")
    ap.add_argument("--note", default="", help="a caveat recorded with the figures (e.g. cores shared)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    size = "tiny" if args.tiny else "real"
    for key, value in DEFAULTS[size].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    after = pipeline.resolve_workers(args.workers)
    arch, dim, depth = SIZES[size]
    report: dict = {"student": arch, "prompts": f"4 x {depth}", "teacher_dim": dim, "classes": 100,
                    "precision": "fp32", "batch": args.batch, "inputs": args.images, "workers_after": after,
                    "threads": args.threads, "note": args.note, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp, size, args.parity_images)
        found = camera_inputs(tmp, args.images, args.frames)
        frames = found["end_to_end_frames"][0]
        inputs = {"files": found["end_to_end"][0], "frames": [frames[i % len(frames)] for i in range(args.images)]}
        report["files"], report["frames"] = found["end_to_end"][1], found["end_to_end_frames"][1]
        ran = set()
        for name in args.backends.split(","):
            clf = Classifier.from_bundle(bundle, name, threads=args.threads)
            try:
                if clf.backend.description in ran:
                    report["rows"].append({"backend": f"{name}: {clf.description}", "skipped": "run above"})
                    continue
                ran.add(clf.backend.description)
                row = bench_backend(clf, inputs, args, after)
                row["asked"] = name
                if clf.choice is not None:
                    row["choice"] = clf.choice.reason
                report["rows"].append(row)
                print_row(row)
            finally:
                clf.close()
    report["threads_left"] = [t.name for t in threading.enumerate() if t.name.startswith(pipeline.THREAD_PREFIX)]
    written = write_report(report, args.out, f"frames_to_labels-{size}-cpu", markdown)
    return json.loads(written.read_text())


def print_row(row: dict) -> None:
    print(f"{row['backend']}: model only {row['model_only']['images_per_s']:.1f} img/s; " + "; ".join(
        f"{k} {row[k]['images_per_s']:.1f} img/s ({row[k]['ratio_to_model']:.2f})"
        for k in ("files before", "files after", "frames before", "frames after")), flush=True)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# From camera frame to label: {r['student']} student, end to end vs model only", "",
             f"{r['date']}, {m['cpu']} ({m['cpu_cores']} cores; flags: "
             f"{' '.join(m.get('cpu_speed_flags', [])) or 'not recorded'}), backend threads "
             f"{r['threads'] or 'all usable'}, pipeline workers {r['workers_after']}. Student {r['student']} (random "
             f"weights), prompts {r['prompts']}, {r['precision'].upper()} bundle, batch {r['batch']}, "
             f"{r['inputs']} inputs per call: {r['files']}; {r['frames']} (cycled to {r['inputs']}).", ""]
    if r["note"]:
        lines += [f"**Note:** {r['note']}", ""]
    lines += ["img/s of the whole call (the first batch's decoding included); ratio = img/s over model-only img/s; "
              "before = decode a batch, run it, the next (workers=0); after = the runtime's pipeline.", "",
              "| backend | model only img/s | input | before img/s | before ratio | after img/s | after ratio | "
              "preprocessing alone ms/img (before / after) | top-1 after = before |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['backend']} | — | — | — | — | — | — | — | {row['skipped']} |")
            continue
        for kind in ("files", "frames"):
            b, a = row[f"{kind} before"], row[f"{kind} after"]
            pb, pa = row[f"{kind} preprocessing before"], row[f"{kind} preprocessing after"]
            lines.append(f"| {row['backend']} | {row['model_only']['images_per_s']:.1f} | {kind} | "
                         f"{b['images_per_s']:.1f} | {b['ratio_to_model']:.2f} | {a['images_per_s']:.1f} | "
                         f"{a['ratio_to_model']:.2f} | {pb['ms_per_image']:.1f} / {pa['ms_per_image']:.1f} | "
                         f"{'yes' if row[f'{kind} top1 identical'] else 'NO'} |")
    choices = [row["choice"] for row in r["rows"] if row.get("choice")]
    lines += [""] + [f"auto: {c}" for c in choices] + ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
