"""The native library (export/cpp) against the Python runtime on the same ViT-B-16 bundle, OpenVINO, in one run.

    python benchmarks/native.py                          # builds a real-size ViT-B-16 FP32 bundle (random weights)
    python benchmarks/native.py --bundle BUNDLE --iterations 10

For each image size and batch: the p50 of one `logits` call of the native `pkd::Classifier` (image views -> resize and
crop as preprocess.json says -> model input -> OpenVINO -> logits; what `pkd-classify` runs per batch), of the Python
`Classifier.logits` on the same kind of arrays, and, for each side, of OpenVINO's own inference alone on a ready input
tensor (same model file, same properties, one request), called alternately with it in the same process: a side's
per-call overhead is the median of its call minus the bare call that followed it.
Both sides run the precision the bundle's gate picks on this CPU (bf16 where its bf16 gate passed and the CPU has
it), `--threads` inference threads, a latency hint. The native timer is built against the installed library with
find_package(promptkd_edge) (benchmarks/native/). Results: benchmarks/results/native-<cpu>.{json,md} with the CPU
model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/native_build.py: configure + build export/cpp once

import numpy as np  # noqa: E402
from common import where_it_ran, write_report  # noqa: E402
from native_build import build, openvino_cmake_dir  # noqa: E402

from promptkd_edge.runtime import Classifier  # noqa: E402
from promptkd_edge.runtime.cpu import cpu_info  # noqa: E402


def make_bundle(work: Path) -> Path:
    """A real-size ViT-B-16 student (random weights, 4 prompts x 9 blocks, projector to 768, 100 classes), FP32."""
    import export_cpu
    import torch

    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    torch.set_num_threads(2)
    bundle = work / "bundle-vit-b-16"
    if not (bundle / "manifest.json").is_file():
        export_cpu.make_run(work / "run", "ViT-B-16", 768, 9, 100)
        export_run(work / "run", bundle, ExportOptions(parity_images=16))
    return bundle


def native_timer(work: Path) -> Path:
    """benchmarks/native/ built against the library installed from a Release build of export/cpp."""
    built = build()
    prefix = work / "prefix"
    subprocess.run(["cmake", "--install", str(built), "--prefix", str(prefix)], check=True, capture_output=True)
    folder = work / "timer"
    subprocess.run(["cmake", "-S", str(HERE / "native"), "-B", str(folder), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_PREFIX_PATH={prefix}", f"-DOpenVINO_DIR={openvino_cmake_dir()}"], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--build", str(folder)], check=True, capture_output=True)
    return folder / "pkd-native-bench"


def interleaved(library, bare, warmup: int, iterations: int) -> tuple[list[float], list[float]]:
    """ms of `library()` and of `bare()`, called alternately (so both see the same machine state)."""
    a, b = [], []
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        library()
        t1 = time.perf_counter()
        bare()
        t2 = time.perf_counter()
        if i >= warmup:
            a.append((t1 - t0) * 1e3)
            b.append((t2 - t1) * 1e3)
    return a, b


def python_side(bundle: Path, size: tuple[int, int], batch: int, args, precision: str) -> dict:
    from promptkd_edge.runtime.openvino_backend import shared_core

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(batch)]
    clf = Classifier.from_bundle(bundle, backend="openvino", threads=args.threads, precision=precision)
    core = shared_core()  # the runtime's own Core: one per process
    compiled = core.compile_model(core.read_model(str(bundle / "model.onnx")), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": args.threads})
    request = compiled.create_infer_request()
    shape = [batch, *[d.get_length() for d in list(compiled.input().get_partial_shape())[1:]]]
    dtype = np.uint8 if compiled.input().get_element_type().get_type_name() == "u8" else np.float32
    x = np.zeros(shape, dtype)
    try:
        library, bare = interleaved(lambda: clf.logits(images, batch_size=batch), lambda: request.infer({0: x}),
                                    args.warmup, args.iterations)
        return {"description": clf.description, "library": library, "openvino": bare}
    finally:
        clf.close()


def native_side(timer: Path, bundle: Path, size: tuple[int, int], batch: int, args, precision: str) -> dict:
    done = subprocess.run([str(timer), str(bundle), str(size[0]), str(size[1]), str(batch), str(args.warmup),
                           str(args.iterations), str(args.threads), "bf16" if precision == "bf16" else "f32"],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    return {"description": result["description"], "library": result["library_ms"], "openvino": result["openvino_ms"]}


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="a bundle to time (default: a ViT-B-16 one made here)")
    ap.add_argument("--work", type=Path, default=None, help="where the bundle and builds go (default: a temp folder)")
    ap.add_argument("--sizes", default="224x224,640x480", help="image sizes WxH (224x224: no resize)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = args.bundle or make_bundle(work)
        timer = native_timer(work)
        probe = Classifier.from_bundle(bundle, backend="openvino", threads=args.threads)
        precision = "bf16" if "bf16" in probe.description else "fp32"
        probe.close()
        rows = []
        for size in [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]:
            for batch in (int(b) for b in args.batches.split(",")):
                native = native_side(timer, bundle, size, batch, args, precision)
                python = python_side(bundle, size, batch, args, precision)
                row = {"size": f"{size[0]}x{size[1]}", "batch": batch, "native_ms": native["library"],
                       "native_openvino_ms": native["openvino"], "python_ms": python["library"],
                       "python_openvino_ms": python["openvino"], "native_backend": native["description"],
                       "python_backend": python["description"]}
                row.update({k.replace("_ms", "_p50"): p50(v) for k, v in list(row.items()) if k.endswith("_ms")})
                row["native_over_python"] = round(row["native_p50"] / row["python_p50"], 3)
                for side in ("native", "python"):  # the median of call-by-call differences
                    row[f"{side}_overhead_ms"] = p50([a - b for a, b in zip(row[f"{side}_ms"],
                                                                           row[f"{side}_openvino_ms"], strict=True)])
                print(f"[native] {row['size']} b{batch}: native {row['native_p50']} ms (OpenVINO alone "
                      f"{row['native_openvino_p50']}), Python {row['python_p50']} ms (OpenVINO alone "
                      f"{row['python_openvino_p50']}), ratio {row['native_over_python']}", flush=True)
                rows.append(row)
    report = {"bundle": str(args.bundle or "ViT-B-16 FP32, random weights (made here)"), "precision": precision,
              "threads": args.threads, "warmup": args.warmup, "iterations": args.iterations, "rows": rows}
    cpu = cpu_info()["model"] or "cpu"
    write_report(report, args.out, "native-" + re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-"), markdown)


def markdown(r: dict) -> str:
    lines = ["# Native library against the Python runtime (OpenVINO, CPU)", "",
             f"{where_it_ran(r)}, "
             f"{r['threads']} inference threads, {r['precision']}; bundle: {r['bundle']}. p50 of {r['iterations']} "
             f"calls after {r['warmup']} warm-up calls, ms per call. Overhead = median over calls of the side's call "
             "minus OpenVINO's own inference alone on a ready input (same model file and properties), called "
             "alternately with it in the same process.", "",
             "| images | batch | native ms | native: OpenVINO alone | native overhead | Python ms | Python: OpenVINO "
             "alone | Python overhead | native / Python |", "|---|---|---|---|---|---|---|---|---|"]
    for w in r["rows"]:
        lines.append(f"| {w['size']} | {w['batch']} | {w['native_p50']} | {w['native_openvino_p50']} | "
                     f"{w['native_overhead_ms']} | {w['python_p50']} | {w['python_openvino_p50']} | "
                     f"{w['python_overhead_ms']} | {w['native_over_python']} |")
    if r["rows"]:
        first = r["rows"][0]
        lines += ["", f"Backends: native `{first['native_backend']}`, Python `{first['python_backend']}`."]
    lines += ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
