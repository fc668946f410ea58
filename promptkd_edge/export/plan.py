"""`pkd export BUNDLE --trt`: a TensorRT plan built on the machine that runs it, from the bundle's FP32 master
graph (or its Q/DQ or mixed graph), gated against model.onnx on that machine and added to the bundle atomically."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.gate_batches import Chunk, describe, plan_batches, run_batches
from promptkd_edge.export.gate_run import embeddings_inside, run_for_gate
from promptkd_edge.export.graph import INPUT_NAME, int8_float_nodes
from promptkd_edge.export.options import ExportOptions, check_frame_plan
from promptkd_edge.export.out_folder import clean_leftovers
from promptkd_edge.export.precision import engine_graph_name, has_modelopt, quantize_for_tensorrt, to_fp16
from promptkd_edge.formats.bundle import ENGINES_DIR, MODEL_FILE, PREPROCESS_FILE
from promptkd_edge.formats.manifest import EngineEntry, Manifest, ModelEntry, write_manifest
from promptkd_edge.runtime.bundle import open_bundle, read_classes
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare
from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend
from promptkd_edge.utils.files import release, sha256_file, work_folder
from promptkd_edge.utils.progress import NullProgress, Progress


def _run_plan(engine: TensorRTBackend, arrays: np.ndarray, chunks: list[Chunk], progress: Progress
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(outputs, parity image of each row) of the plan on the gate's chunks, each in its own profile (Triton may
    serve a batch from any listed profile, so the gate runs them all: export/gate_batches.py)."""

    def run(batch: np.ndarray, profile: int) -> dict[str, np.ndarray]:
        return engine.run(batch, profile=profile)

    update = progress.task("parity: TensorRT engine", sum(len(c.rows) for c in chunks))
    return run_batches(run, arrays, chunks, update)


def add_engine(bundle_dir: str | os.PathLike, options: ExportOptions, *, progress: Progress | None = None,
               images: gate.ImageSet | None = None, reference: dict[str, np.ndarray] | None = None,
               manifest: Manifest | None = None) -> dict[str, Any]:
    """Build a TensorRT engine for a bundle on this machine, gate it for parity, record it in the manifest.

    Used by `pkd export RUN --trt` (reference = the PyTorch student) and by `pkd export BUNDLE --trt` on the
    target device (reference = ONNX Runtime on the bundle's FP32 model.onnx, itself gated at export). The gate runs
    the plan in batch sizes its profiles take and in every profile (export/gate_batches.py). Nothing is
    written into the bundle unless the engine is built and recorded: TensorRT and the GPU are checked first, and the
    graph, plan and trtexec script are made in a hidden staging folder and moved in with the new manifest.
    """
    from promptkd_edge.export.tensorrt_build import build_engine, check_can_build

    progress = progress or NullProgress()
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        bundle = open_bundle(bundle_dir)
        manifest = bundle.manifest
    model = manifest.model
    if model.precision != "fp32":
        raise PkdError(f"TensorRT engines are built from an FP32 model.onnx; this bundle's is {model.precision}: "
                       "export it again without --precision (or with --trt)")
    _, api, _ = check_can_build()
    spec = PreprocessSpec.load(bundle_dir / PREPROCESS_FILE)
    precision = options.precision
    if images is None:
        calibration = options.calibration_images if precision in ("int8", "fp8") else 0
        images = gate.collect_images(options.data, options.parity_images, calibration, spec.size, options.seed)
    fmt = model.input_format
    if fmt == "frame":
        check_frame_plan(precision)
    master = bundle_dir / MODEL_FILE
    gate_inputs = _gate_inputs(images, spec, fmt, model.frame, options.trt)
    reference, target_ref = _reference(master, model, gate_inputs, reference, options, progress)

    keep = model.fp32_nodes
    chunks = plan_batches(len(images.parity), options.trt.profiles, options.batch_size)  # before the build
    progress.note(f"the plan's parity gate will run {len(images.parity)} images in every profile: " + "; ".join(
        f"profile {d['profile']}: {d['batches']} batch(es) up to {d['max_batch']}" for d in describe(chunks)))
    clean_leftovers(bundle_dir, r"\.engine-(\d+)", progress)
    with work_folder(bundle_dir / f".engine-{os.getpid()}") as stage:
        (stage / ENGINES_DIR).mkdir()
        src, ref, conversion = _engine_graph(bundle_dir, stage, manifest, precision, api, keep, images, spec, fmt,
                                             options, progress)
        opts = dataclasses.replace(options.trt, precision=precision, keep_fp32_nodes=keep)
        dims = {"uint8": (spec.size[0], spec.size[1], 3), "frame": (-1, -1, 3)}.get(fmt, (3, *spec.size))
        progress.note(f"building the TensorRT {precision} engine from {ref} (this takes minutes on Jetson)")
        record = build_engine(src, stage / ENGINES_DIR, input_name=INPUT_NAME, input_dims=dims, options=opts,
                              onnx_ref=ref, progress_log=progress.note)
        record["conversion"] = conversion

        progress.note("parity gate: the engine against " + target_ref)
        engine = TensorRTBackend(stage / record["file"], record)
        try:
            runs = [_run_plan(engine, make(), chunks, progress) for make in gate_inputs]
        finally:
            engine.close()
        n = len(images.parity)
        got, rows = _joined([r[0] for r in runs]), np.concatenate([r[1] + k * n for k, r in enumerate(runs)])
        _, vectors, scale = read_classes(bundle_dir)
        entry = gate.judge({k: v[rows] for k, v in reference.items()}, got, precision,
                           f"tensorrt {record['tensorrt']} {record['gpu']}", images.source, class_vectors=vectors,
                           logit_scale=scale, reference=target_ref, profiles_run=describe(chunks),
                           engine=record["file"])
        record["parity_passed"] = entry.passed
        if not entry.passed and not options.force:
            raise PkdError(f"the TensorRT engine failed the parity gate ({'; '.join(entry.failures)}); "
                           "it was not added (--force keeps it, marked invalid)")
        _move_staged(stage, bundle_dir)
        manifest.record_engine(EngineEntry.from_dict(record))
        manifest.record_parity(entry)
        write_manifest(bundle_dir, manifest)
    return record


def _reference(master: Path, model: ModelEntry, gate_inputs: list[Callable[[], np.ndarray]],
               reference: dict[str, np.ndarray] | None, options: ExportOptions, progress: Progress
               ) -> tuple[dict[str, np.ndarray], str]:
    """(what the plan is compared with, its name): the PyTorch student's outputs where the caller has them, else
    ONNX Runtime on the bundle's FP32 graph (itself gated at export); a frame graph's is always itself."""
    if reference is not None and model.input_format != "frame":
        return reference, "pytorch"
    cpu = OnnxRuntimeBackend(master, providers="cpu", extra_outputs=embeddings_inside(master, model.head))
    try:
        reference = _joined([run_for_gate(cpu, make(), options.batch_size, progress,
                                          "parity: ONNX Runtime fp32 (reference)") for make in gate_inputs])
    finally:
        cpu.close()
    return reference, "onnxruntime-cpu fp32" + (" (the frame graph, gated against open_clip's transform at export)"
                                                if model.input_format == "frame" else "")


def _move_staged(stage: Path, bundle_dir: Path) -> None:
    """The staged plan, its graph and trtexec script moved into the bundle (the manifest that names them next)."""
    release(stage)
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        target = bundle_dir / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _gate_inputs(images: gate.ImageSet, spec: PreprocessSpec, fmt: str, frame: dict[str, Any] | None,
                 build: Any) -> list[Callable[[], np.ndarray]]:
    """Makers of the plan's gate inputs: the parity images in the model's input format; for a frame graph the
    parity images as frames of each size its export gate measured that the plan's frame profile takes (else of the
    profile's opt size), one size at a time (200 1080p frames take 1.2 GB)."""
    if fmt != "frame":
        batch = prepare(images.parity, spec, input_format=fmt)
        return [lambda: batch]
    from promptkd_edge.export.frame import frames_at

    lo, opt, hi = build.frame_sizes  # TrtBuildOptions
    sizes = [tuple(s) for s in (frame or {}).get("gate_sizes", [])
             if lo[0] <= s[0] <= hi[0] and lo[1] <= s[1] <= hi[1]]
    return [lambda size=size: frames_at(images.parity, size) for size in sizes or [opt]]


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _engine_graph(bundle_dir: Path, stage: Path, manifest: Manifest, precision: str, api: int,
                  keep: list[str], images: gate.ImageSet, spec: PreprocessSpec, fmt: str, options: ExportOptions,
                  progress: Progress) -> tuple[Path, str, dict[str, Any]]:
    """(path, name in the bundle, how it was made) of the graph TensorRT builds from: the FP32 master (TRT 10 sets
    FP16 with builder flags), a mixed FP16 graph (TRT 11 is strongly typed), an INT8 Q/DQ graph (TRT 11: FP16
    wherever it is not INT8) or an FP8 one. A graph the bundle already records is reused, so every device builds
    from the same one; a new one is written into `stage`."""
    master = bundle_dir / MODEL_FILE
    if precision == "fp32" or (precision == "fp16" and api < 11):
        return master, MODEL_FILE, {}
    name = engine_graph_name(precision, api)
    existing = bundle_dir / name
    if existing.is_file() and manifest.files.get(name) == sha256_file(existing):
        progress.note(f"using the bundle's {name}")
        made = [e.extra.get("conversion", {}) for e in manifest.engines if e.onnx == name]
        return existing, name, made[0] if made else {}
    dst = stage / name
    calib = prepare(images.calibration, spec, input_format=fmt) if images.calibration and fmt != "frame" else None
    progress.note(f"writing the {precision} graph {name} for TensorRT {api}")
    if precision == "fp16" and fmt == "frame":  # the in-graph resize stays FP32, untouched
        from promptkd_edge.export.frame import PREFIX, convert_behind

        inner = [k for k in keep if not k.startswith(PREFIX)]
        tool = convert_behind(master, dst, spec, manifest.model.frame["method"],
                              lambda src, out: to_fp16(src, out, inner, None, input_name=INPUT_NAME))
        return dst, name, {"tool": tool, "frame_transform": "fp32"}
    if precision == "fp16":
        return dst, name, {"tool": to_fp16(master, dst, keep, calib, input_name=INPUT_NAME)}
    if calib is None:
        raise PkdError(f"{precision} calibration needs images; none were found")
    by_onnxruntime = precision == "int8" and not has_modelopt("quantization")  # it reports its calibration batches
    import onnx

    float_nodes = int8_float_nodes(onnx.load(str(master), load_external_data=False), keep)
    conversion = quantize_for_tensorrt(
        master, dst, precision, api, calib, INPUT_NAME, float_nodes, method=options.calibration_method,
        on_batch=progress.task(f"{precision} calibration", len(calib)) if by_onnxruntime else None)
    return dst, name, {**conversion, "float_attention_pool_nodes": len(float_nodes) - len(keep)}
