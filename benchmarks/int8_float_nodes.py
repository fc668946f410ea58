"""Which nodes an INT8 graph keeps float: one student's FP32 graph quantized with several float-node sets and
calibration methods, each against that FP32 graph on the same images.

    python benchmarks/int8_float_nodes.py --arch ViT-B-16-SigLIP2 --parity-images 1000   # random weights (16 min)
    python benchmarks/int8_float_nodes.py --run runs/pets --parity-images 400             # a trained run, its data
    python benchmarks/int8_float_nodes.py --arch pkd-tiny-map-vit --parity-images 16      # seconds

The FP32 graph is `pkd export`'s (prompts, projector and class vectors folded in, SmoothQuant a = 0.5 as the INT8
export applies it, or --smooth-alpha); INT8 is export/precision.py `quantize_int8` (ONNX Runtime QDQ, the export's own
code) with each float set: `head` (L2 norm and logits MatMul), `head+pool` (and any attention-pool head: what `pkd
export --precision int8` keeps), `head+pool+projector`, and `head+pool+fallback` (then the INT8 float fallback,
export/int8_fallback.py, on the calibration images: the export's default). Figures per variant: top-1 agreement,
agreement beyond near ties (the parity gate's rule and 99 % threshold), max and mean |delta logit|, min embedding
cosine. With --arch the student has random weights (export_families.py's run: 100 random class vectors, generated
images), so its figures measure the quantization against near-uniform logits; a trained run's data and class vectors
measure what a user gets.
Results: benchmarks/results/int8_float_nodes-<student>-<cpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import where_it_ran, write_report  # noqa: E402

from promptkd_edge.export import parity as gate  # noqa: E402
from promptkd_edge.export.gate_run import embeddings_inside  # noqa: E402
from promptkd_edge.export.graph import INPUT_NAME, attention_pool_nodes, head_nodes  # noqa: E402
from promptkd_edge.export.int8_fallback import float_fallback  # noqa: E402
from promptkd_edge.export.precision import quantize_int8  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402
from promptkd_edge.runtime.cpu import cpu_info  # noqa: E402
from promptkd_edge.runtime.preprocess import prepare  # noqa: E402
from promptkd_edge.utils.progress import LineProgress  # noqa: E402


def projector_nodes(model) -> list[str]:
    """The student's projector (FoldedStudent.projector), by the name scope the exporter records."""
    return [n.name for n in model.graph.node if any(
        p.key == "pkg.torch.onnx.name_scopes" and p.value.startswith("['', 'projector'") for p in n.metadata_props)]


def float_sets(model) -> dict[str, list[str]]:
    head, pool, projector = head_nodes(model), attention_pool_nodes(model), projector_nodes(model)
    return {"head": head, "head+pool": head + pool, "head+pool+projector": head + pool + projector}


def fp32_graph(run: Path, path: Path, calibration_images: int, parity_images: int, seed: int, alpha: float):
    """(parity inputs, calibration inputs, image source); the FP32 graph of `run` in `path`, as INT8 export makes it."""
    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.export.onnx_export import export_onnx
    from promptkd_edge.export.smooth import smooth
    from promptkd_edge.formats.run import RunDir, run_data
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.student import load_student

    run_dir = RunDir(run)
    student, vectors = load_student(run_dir.student), ClassVectors.load(run_dir.path)
    spec = student.preprocess
    images = gate.collect_images(run_data(run_dir.config), parity_images, calibration_images,
                                 spec.size, seed)
    calib, parity = prepare(images.calibration, spec), prepare(images.parity, spec)
    folded = FoldedStudent(student, vectors, "logits", "normalized")
    if alpha > 0:
        smooth(folded, calib, alpha)
    export_onnx(folded, path, spec.size)
    return parity, calib, images.source


def run_onnx(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16-SigLIP2", help="a student made here with random weights")
    ap.add_argument("--run", type=Path, default=None, help="a distillation run instead (its data, its class vectors)")
    ap.add_argument("--parity-images", type=int, default=1000)
    ap.add_argument("--calibration-images", type=int, default=100)
    ap.add_argument("--methods", default="percentile", help="calibration methods: percentile,minmax,entropy")
    ap.add_argument("--sets", default="head,head+pool,head+pool+projector,head+pool+fallback",
                    help="+fallback: then the INT8 float fallback on the calibration images, as the export does")
    ap.add_argument("--smooth-alpha", type=float, default=0.5, help="SmoothQuant's a (the export's 0.5); 0: none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            import export_families

            run = Path(tmp) / "run"
            export_families.make_run(run, args.arch)
        master = Path(tmp) / "fp32.onnx"
        parity, calib, source = fp32_graph(run, master, args.calibration_images, args.parity_images, args.seed,
                                              args.smooth_alpha)
        reference = run_onnx(master, parity, args.threads)
        sets = float_sets(onnx.load(str(master), load_external_data=False))
        for method in args.methods.split(","):
            for name in args.sets.split(","):
                start = time.perf_counter()
                dst = Path(tmp) / "int8.onnx"
                float_nodes = sets[name.removesuffix("+fallback")]
                quantize_int8(master, dst, calib, INPUT_NAME, float_nodes, method=method)
                fallback = None
                if name.endswith("+fallback"):  # what `pkd export --precision int8` does next (the default)
                    def requantize(extra, dst=dst, float_nodes=float_nodes, method=method):
                        quantize_int8(master, dst, calib, INPUT_NAME, [*float_nodes, *extra], method=method)

                    fallback = float_fallback(master, dst, calib, requantize, lambda outputs: outputs,
                                              embeddings_inside(master, "logits"), LineProgress())
                got = run_onnx(dst, parity, args.threads)
                f = gate.compare({"logits": reference}, {"logits": got}, "int8", "onnxruntime-cpu int8", source)
                kept = fallback["nodes"] if fallback else []
                rows.append({"float": name, "float_nodes": len(float_nodes) + len(kept), "method": method,
                             "fallback": fallback,
                             **{k: f[k] for k in ("top1_agreement", "top1_agreement_beyond_ties", "near_tie_flips",
                                                  "max_abs_logit_diff", "mean_abs_logit_diff", "min_cosine",
                                                  "passed")}, "seconds": round(time.perf_counter() - start, 1)})
                print(f"[int8_float_nodes] {name} {method}: agreement {f['top1_agreement']:.4f}, beyond ties "
                      f"{f['top1_agreement_beyond_ties']:.4f}, max |d| {f['max_abs_logit_diff']:.3f}, mean |d| "
                      f"{f['mean_abs_logit_diff']:.4f}", flush=True)
                for leftover in Path(tmp).glob("int8.onnx*"):
                    leftover.unlink()
    student = str(args.run) if args.run else f"{args.arch} (random weights, 100 random class vectors)"
    report = {"student": student, "smooth_alpha": args.smooth_alpha, "parity_images": len(parity),
              "calibration_images": len(calib), "image_source": source, "threads": args.threads, "rows": rows}
    cpu = cpu_info()["model"] or "cpu"
    name = re.sub(r"[^a-z0-9]+", "-", f"{args.run.name if args.run else args.arch}-{cpu}".lower()).strip("-")
    write_report(report, args.out, f"int8_float_nodes-{name}", markdown)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# INT8: which nodes stay float", "",
             f"{where_it_ran(r)}, torch {m['torch']}. Student: {r['student']}; {r['parity_images']} parity "
             f"images, {r['calibration_images']} calibration images ({r['image_source']}). Reference: the FP32 "
             f"graph the INT8 export starts from (SmoothQuant a = {r.get('smooth_alpha', 0.5)}); the gate passes at "
             ">= 99 % agreement beyond "
             "near ties (reference probabilities < 1 point apart).", "",
             "| float nodes | count | calibration | top-1 agreement | beyond ties | ties | max abs d logit | mean abs "
             "d logit | min cosine | gate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for w in r["rows"]:
        lines.append(f"| {w['float']} | {w['float_nodes']} | {w['method']} | {100 * w['top1_agreement']:.1f} % | "
                     f"{100 * w['top1_agreement_beyond_ties']:.1f} % | {w['near_tie_flips']} | "
                     f"{w['max_abs_logit_diff']:.3f} | {w['mean_abs_logit_diff']:.4f} | {w['min_cosine']:.5f} | "
                     f"{'pass' if w['passed'] else 'FAIL'} |")
    lines += ["", f"Command: `python benchmarks/{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
