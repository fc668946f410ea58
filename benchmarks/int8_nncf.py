"""Our INT8 (ONNX Runtime QDQ after SmoothQuant) against NNCF's post-training INT8 on the same ViT-B-16 student, the
same calibration images and the same gate, on ONNX Runtime and OpenVINO: does NNCF earn a `--quantizer nncf`?

    python benchmarks/int8_nncf.py --nncf-python /opt/nncf-venv/bin/python      # ViT-B-16, about 12 minutes
    python benchmarks/int8_nncf.py --size tiny --nncf-python ...                 # seconds; checks the script

NNCF (with scikit-learn, scipy, ...) stays out of the project's environments: make a venv for it, e.g.
`python3.11 -m venv /opt/nncf-venv && /opt/nncf-venv/bin/pip install nncf==3.4.0 onnxruntime openvino`, and
pass its interpreter; the quantization runs there on arrays this script writes. NNCF runs with
`model_type=TRANSFORMER` (its own SmoothQuant and bias correction), default and performance presets, and on the
nodes ours quantizes (head and attention's activation products float). Students:
random weights, without and with planted activation outliers (benchmarks/int8_outliers.py). Every graph is compared
with ONNX Runtime on the FP32 `model.onnx` (itself within 2e-5 of PyTorch) under the INT8 thresholds.
Results: benchmarks/results/int8_nncf-<size>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import RESULTS, write_report  # noqa: E402
from export_cpu import SIZES  # noqa: E402
from int8_outliers import planted_run  # noqa: E402

from promptkd_edge.export import parity as gate  # noqa: E402
from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.gate_run import embeddings_inside  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, has_bf16  # noqa: E402
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare  # noqa: E402
from promptkd_edge.utils.files import read_json  # noqa: E402

NNCF_QUANTIZE = """
import json, sys, numpy as np, onnx, nncf
src, calib, dst, preset, ignored = sys.argv[1:6]
data = np.load(calib)
kw = dict(model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data))
if preset == "performance":
    kw["preset"] = nncf.QuantizationPreset.PERFORMANCE
names = json.loads(ignored)
if names:
    kw["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
quantized = nncf.quantize(onnx.load(src), nncf.Dataset([data[i:i + 1] for i in range(len(data))],
                                                       lambda x: {"image": x}), **kw)
onnx.save(quantized, dst)
print(nncf.__version__)
"""
# NNCF's own choice of what to quantize, and the same nodes ours quantizes (the weight-bearing MatMul/Gemm/Conv
# outside the head: attention's activation products and the head stay float)
VARIANTS = {"NNCF default": ("default", False), "NNCF performance": ("performance", False),
            "NNCF default, our node set": ("default", True)}


def ignored_nodes(fp32: Path) -> list[str]:
    """The nodes of an FP32 graph that our INT8 export leaves float and NNCF would quantize."""
    import onnx

    from promptkd_edge.export.graph import head_nodes
    from promptkd_edge.export.precision import QUANTIZED_OPS, quantizable_nodes

    model = onnx.load(str(fp32))
    ours = set(quantizable_nodes(model, head_nodes(model)))
    return [n.name for n in model.graph.node if n.op_type in (*QUANTIZED_OPS, "MatMul") and n.name not in ours]


def backends(path: Path, inside: dict[str, str] | None, bf16: bool) -> dict[str, object]:
    """`inside`: the FP32 graph's unit-feature tensor, read by name (quantizers keep names; NNCF's SmoothQuant puts
    a Mul between it and the logits MatMul, whose input is then no longer the features)."""
    out = {"onnxruntime": OnnxRuntimeBackend(path, providers="cpu", precision="int8", extra_outputs=inside),
           "openvino-f32": OpenVinoBackend(path, precision="fp32", extra_outputs=inside)}
    if bf16:
        out["openvino-bf16"] = OpenVinoBackend(path, precision="bf16", extra_outputs=inside)
    return out


def run_all(backend, arrays: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    outs: dict[str, list] = {}
    for i in range(0, len(arrays), batch):
        for k, v in backend.run(arrays[i:i + batch]).items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def speed(backend, shape: tuple[int, ...], calls: int) -> dict[str, float]:
    out = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        backend.run(x)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            backend.run(x)
            times.append(time.perf_counter() - t)
        out[f"b{batch}_ms"] = round(1000 * statistics.median(times), 1)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# INT8: ours against NNCF {report['nncf']} on {report['arch']}, {report['date']}", "",
             f"CPU: {m['cpu']}, flags: {' '.join(m.get('cpu_speed_flags', []))}; {report['threads'] or 'all'} "
             f"threads; {report['calibration_images']} calibration and {report['parity_images']} parity images "
             "(generated); reference: ONNX Runtime on the FP32 model.onnx; INT8 thresholds: top-1 agreement >= 99 %, "
             "min embedding cosine >= 0.99.", "",
             "| student | INT8 graph | runtime | gate | min cosine | top-1 agreement | max abs logit diff | b1 ms | "
             "b8 ms |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        verdict = "pass" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(f"| {r['student']} | {r['graph']} | {r['runtime']} | {verdict} | "
                     f"{r['min_cosine']:.5f} | {100 * r['top1_agreement']:.1f} % | {r['max_abs_logit_diff']:.3g} | "
                     f"{r['b1_ms']} | {r['b8_ms']} |")
    lines += ["", f"Decision: {report['decision']}"]
    return "\n".join(lines) + "\n"


def decide(rows: list[dict]) -> str:
    """NNCF earns `--quantizer nncf` where one of its graphs passes every gate and, for every student, is clearly
    faster than ours (its fastest runtime at batch 8 at least 5 % quicker than our fastest) or more accurate (a
    higher min cosine than ours on every runtime)."""
    students = sorted({r["student"] for r in rows})

    def of(graph: str, student: str) -> list[dict]:
        return [r for r in rows if r["graph"] == graph and r["student"] == student]

    wins = []
    for graph in sorted({r["graph"] for r in rows} - {"ours"}):
        if not all(r["passed"] for s in students for r in of(graph, s)):
            continue
        if all(min(r["b8_ms"] for r in of(graph, s)) < 0.95 * min(r["b8_ms"] for r in of("ours", s))
               for s in students):
            wins.append(f"{graph} is faster")
        if all(r["min_cosine"] > o["min_cosine"] for s in students
               for r, o in zip(of(graph, s), of("ours", s), strict=True)):
            wins.append(f"{graph} is more accurate")
    if wins:
        return "worth offering: " + "; ".join(wins)
    failed = sorted({r["graph"] for r in rows if r["graph"] != "ours" and not r["passed"]})
    return ("not offered: " + (f"{', '.join(failed)} failed the INT8 gate; " if failed else "")
            + "no NNCF graph that passes every gate is 5 % faster than our fastest runtime or more accurate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nncf-python", default=sys.executable, help="an interpreter that can import nncf")
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--factor", type=float, default=40.0)
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--parity-images", type=int, default=100)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    arch, dim, depth = SIZES[args.size]
    bf16 = has_bf16()
    rows, nncf_version = [], None
    with tempfile.TemporaryDirectory(prefix="pkd-int8-nncf-") as tmp:
        for student, factor in (("no outliers", 1.0), (f"planted x{args.factor:g}", args.factor)):
            run = Path(tmp) / student.replace(" ", "-")
            planted_run(run, arch, dim, depth, factor)
            fp32, int8 = Path(tmp) / f"{run.name}-fp32", Path(tmp) / f"{run.name}-int8"
            export_run(run, fp32, ExportOptions(parity_images=8))
            export_run(run, int8, ExportOptions(precision="int8", force=True, parity_images=8,
                                                calibration_images=args.calibration_images))
            spec = PreprocessSpec.load(fp32 / "preprocess.json")
            images = gate.collect_images(None, args.parity_images, args.calibration_images, spec.size)
            calibration, parity = prepare(images.calibration, spec), prepare(images.parity, spec)
            np.save(Path(tmp) / "calibration.npy", calibration)
            master = fp32 / "model.onnx"
            reference = run_all(OnnxRuntimeBackend(master, providers="cpu",
                                                   extra_outputs=embeddings_inside(master, "logits")), parity)
            graphs = {"ours": int8 / "model.onnx"}
            for i, (variant, (preset, same_nodes)) in enumerate(VARIANTS.items()):
                dst = Path(tmp) / f"{run.name}-nncf-{i}.onnx"
                ignored = json.dumps(ignored_nodes(master) if same_nodes else [])
                done = subprocess.run([args.nncf_python, "-c", NNCF_QUANTIZE, str(master),
                                       str(Path(tmp) / "calibration.npy"), str(dst), preset, ignored],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"NNCF failed ({args.nncf_python}):\n{done.stderr[-2000:]}")
                nncf_version = done.stdout.strip().splitlines()[-1]
                graphs[variant] = dst
            for graph, path in graphs.items():
                for runtime, backend in backends(path, embeddings_inside(master, "logits"), bf16).items():
                    figures = gate.compare(reference, run_all(backend, parity), "int8", runtime, images.source)
                    rows.append({"student": student, "graph": graph, "runtime": runtime,
                                 "passed": figures["passed"], "min_cosine": figures["min_cosine"],
                                 "top1_agreement": figures["top1_agreement"],
                                 "max_abs_logit_diff": figures["max_abs_logit_diff"],
                                 "failures": figures["failures"],
                                 **speed(backend, parity.shape[1:], args.calls)})
                    backend.close()
                    print(rows[-1], flush=True)
            smoothing = read_json(int8 / "manifest.json")["model"]["conversion"].get("smoothing")
            print(f"{student}: our smoothing {smoothing}", flush=True)
    report = {"arch": arch, "nncf": nncf_version, "threads": None, "calibration_images": args.calibration_images,
              "parity_images": args.parity_images, "rows": rows, "decision": decide(rows)}
    write_report(report, args.out or RESULTS / f"int8_nncf-{args.size}.json", f"int8_nncf-{args.size}", markdown)


if __name__ == "__main__":
    main()
