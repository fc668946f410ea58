"""Every CPU backend on the same exported ViT-B-16 student, in one process: what the runtime's default (`auto`) picks
against ONNX Runtime FP32, OpenVINO f32 and OpenVINO bf16 on the FP32 bundle, and against ONNX Runtime and OpenVINO
(f32 or bf16 beside the INT8 layers) on the INT8 bundle; PyTorch eager and torch.compile beside them, and each row's
share of this CPU's peak FLOP rate.

    python benchmarks/cpu_backends.py                      # ViT-B-16, 224 px, batch 1 and 8, all usable threads
    python benchmarks/cpu_backends.py --size tiny          # seconds; checks the script itself

`pkd export` makes both bundles (random weights, generated calibration and parity images) with every gate: the
FP32 bundle's OpenVINO bf16 entry is what lets `auto` use bf16. `auto` measures its options at the first load (a
fresh cache here) and the choice it made is in the report. Results: benchmarks/results/cpu_backends-<size>.{json,md}
with the CPU model and flags; the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import RESULTS, write_report  # noqa: E402
from export_cpu import SIZES, make_run  # noqa: E402

from promptkd_edge.bench.backends import parse_backends  # noqa: E402
from promptkd_edge.bench.harness import BenchConfig, run_bench  # noqa: E402
from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402
from promptkd_edge.runtime.cpu import cpu_info  # noqa: E402
from promptkd_edge.utils.files import read_json  # noqa: E402

FP32_BACKENDS = "onnxruntime-cpu-fp32,openvino-cpu-fp32,openvino-cpu-bf16,auto,torch-eager-fp32,torch-compile-fp32"
INT8_BACKENDS = "onnxruntime-cpu-int8,openvino-cpu-int8,openvino-cpu-int8-bf16,auto"
PEERS = {"fp32": ("onnxruntime-cpu-fp32", "openvino-cpu-fp32", "openvino-cpu-bf16"),
         "int8": ("onnxruntime-cpu-int8", "openvino-cpu-int8", "openvino-cpu-int8-bf16")}


def bench(bundle: Path, backends: str, args) -> dict:
    cfg = BenchConfig(target=str(bundle), backends=parse_backends(backends), device="cpu",
                      batch_sizes=[int(b) for b in args.batch_sizes.split(",")], warmup=args.warmup,
                      iterations=args.iterations, min_seconds=0.0, max_seconds=120.0, threads=args.threads,
                      end_to_end=False, command=" ".join(["python benchmarks/cpu_backends.py", *sys.argv[1:]]))
    return run_bench(cfg)


def ratios(report: dict, kind: str) -> list[dict]:
    """Per batch: auto's p50 over the fastest peer's (<= 1.0: auto is at least as fast)."""
    rows = {(r["backend"], r["batch"]): r for r in report["results"] if r["mode"] == "compute"}
    out = []
    for batch in sorted({b for _, b in rows}):
        peers = {p: rows[(p, batch)]["p50_ms"] for p in PEERS[kind] if (p, batch) in rows}
        auto = rows.get(("auto", batch))
        if not peers or auto is None:
            continue
        best = min(peers, key=peers.get)
        out.append({"bundle": kind, "batch": batch, "auto_p50_ms": auto["p50_ms"], "fastest_peer": best,
                    "fastest_peer_p50_ms": peers[best], "auto_over_fastest": round(auto["p50_ms"] / peers[best], 3),
                    "peers_p50_ms": peers})
    return out


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"# CPU backends: {report['arch']} student, {report['date']}", "",
             f"CPU: {cpu['model']}, {report['threads']} threads; flags: {' '.join(cpu['speed_flags'])}", "",
             "## Compute (batch in place), p50 ms", "",
             "| bundle | backend | batch | p50 ms | img/s | share of CPU peak | peak basis |",
             "|---|---|---:|---:|---:|---:|---|"]
    for kind, rep in report["runs"].items():
        limits = {(x["backend"], x["batch"]): x for x in rep["limits"]}
        for r in rep["results"]:
            lim = limits.get((r["backend"], r["batch"]), {})
            share = f"{100 * lim['fraction']:.1f} %" if lim.get("fraction") is not None else "-"
            lines.append(f"| {kind} | {r['backend']} | {r['batch']} | {r['p50_ms']:.1f} | {r['images_per_s']:.2f} "
                         f"| {share} | {lim.get('basis', '-')} |")
        for u in rep["unavailable"]:
            lines.append(f"| {kind} | {u['backend']} | | unavailable: {u['reason']} | | | |")
    lines += ["", "## The default backend against the fastest peer (same bundle, same batch)", "",
              "| bundle | batch | auto p50 ms | fastest peer | its p50 ms | auto / fastest |",
              "|---|---:|---:|---|---:|---:|"]
    for r in report["ratios"]:
        lines.append(f"| {r['bundle']} | {r['batch']} | {r['auto_p50_ms']:.1f} | {r['fastest_peer']} | "
                     f"{r['fastest_peer_p50_ms']:.1f} | {r['auto_over_fastest']:.3f} |")
    lines += ["", "## What auto picked", ""]
    for kind, choice in report["auto_choice"].items():
        lines.append(f"- {kind}: {choice}")
    lines += ["", "## Gates (top-1 agreement and embedding cosine against the PyTorch student)", "",
              "| bundle | target | precision | images | top-1 agreement | min cosine | max abs logit diff |",
              "|---|---|---|---:|---:|---:|---:|"]
    for kind, gates in report["gates"].items():
        for g in gates:
            target = g["target"] + (f" ({g['runtime']}, {g['thresholds_of']} thresholds)" if g.get("runtime") else "")
            lines.append(f"| {kind} | {target} | {g['precision']} | {g['images']} | "
                         f"{100 * g['top1_agreement']:.2f} % | {g['min_cosine']:.5f} | {g['max_abs_logit_diff']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--calibration-images", type=int, default=100)
    ap.add_argument("--parity-images", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    arch, dim, depth = SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="pkd-cpu-backends-") as tmp:
        os.environ["PKD_CACHE_DIR"] = str(Path(tmp) / "cache")  # auto measures its options afresh
        make_run(Path(tmp) / "run", arch, dim, depth)
        bundles = {}
        for kind in ("fp32", "int8"):
            bundles[kind] = Path(tmp) / f"bundle-{kind}"
            export_run(Path(tmp) / "run", bundles[kind], ExportOptions(
                precision=kind, parity_images=args.parity_images, calibration_images=args.calibration_images))
        runs = {"fp32": bench(bundles["fp32"], FP32_BACKENDS, args),
                "int8": bench(bundles["int8"], INT8_BACKENDS, args)}

        gates = {k: read_json(b / "manifest.json")["parity"] for k, b in bundles.items()}
    choice = {k: rep.get("backends", {}).get("student auto", "not run") for k, rep in runs.items()}
    report = {"arch": arch, "threads": runs["fp32"]["environment"]["threads"], "cpu": cpu_info(), "runs": runs,
              "ratios": ratios(runs["fp32"], "fp32") + ratios(runs["int8"], "int8"), "auto_choice": choice,
              "gates": gates}
    report["cpu"] = {k: v for k, v in report["cpu"].items() if k != "flags"}
    write_report(report, args.out or RESULTS / f"cpu_backends-{args.size}.json", f"cpu_backends-{args.size}", markdown)


if __name__ == "__main__":
    main()
