"""`pkd export`: a distillation run -> a bundle folder (export/BUNDLE.md), every output gated for parity.

Recipe: load the student and its class vectors -> fold -> ONNX -> (FP16 / INT8 graph) -> run the exported
graph and the PyTorch student on the same images -> classes, preprocess, manifest -> (TensorRT engine, gated
again). The bundle is built in a temporary folder and renamed into place at the end: a failed export leaves
nothing behind (or, with `force`, a bundle whose manifest says `"valid": false`).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.frame import frame_node_names
from promptkd_edge.export.gate_run import embeddings_inside, run_for_gate
from promptkd_edge.export.graph import INPUT_NAME, head_nodes, int8_float_nodes, io_description, slim
from promptkd_edge.export.int8_fallback import float_fallback
from promptkd_edge.export.options import ExportOptions, frame_methods
from promptkd_edge.export.out_folder import check_out, clean_leftovers, move_into_place
from promptkd_edge.export.plan import add_engine
from promptkd_edge.export.precision import quantize_int8, to_fp16
from promptkd_edge.formats.bundle import FP32_MASTER_FILE, MODEL_FILE, PREPROCESS_FILE, read_manifest
from promptkd_edge.formats.manifest import (
    Manifest,
    ModelEntry,
    ParityEntry,
    TensorInfo,
    TextEncoderEntry,
    write_manifest,
)
from promptkd_edge.formats.run import STUDENT_FILE, describe_state, run_data, run_state
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare
from promptkd_edge.utils.files import destination, sha256_file, work_folder, write_json
from promptkd_edge.utils.progress import NullProgress, Progress
from promptkd_edge.utils.versions import recorded_versions


def _versions(opset: int) -> dict[str, Any]:
    import onnx  # noqa: F401 - imported: the versions recorded are the loaded modules' own
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    from promptkd_edge.runtime.openvino_backend import openvino_version

    return {**recorded_versions("torch", "onnx", "onnxruntime"), "openvino": openvino_version(), "opset": opset}


def _int8_graph(src: Path, fp32_path: Path, graph, keep: list[str], calib: np.ndarray, vectors, smoothing,
                options: ExportOptions, progress: Progress) -> dict[str, Any]:
    """model.onnx as the INT8 QDQ graph of `src` (head and attention pools float), with the float fallback unless
    turned off (export/int8_fallback.py); returns the manifest's conversion record."""
    float_nodes = int8_float_nodes(graph, keep)
    made = []  # each quantization's record; the last one wrote model.onnx

    def quantize(extra: Sequence[str] = ()) -> None:
        made.append(quantize_int8(src, fp32_path, calib, INPUT_NAME, [*float_nodes, *extra], target="cpu",
                                  method=options.calibration_method,
                                  on_batch=progress.task("int8 calibration", len(calib))))

    def gated(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return gate.with_logits(outputs, vectors.vectors.numpy(), vectors.logit_scale)

    quantize()
    fallback = float_fallback(src, fp32_path, calib, quantize, gated, embeddings_inside(src, options.head),
                              progress) if options.int8_fallback else None
    conversion = made[-1]
    conversion.update(float_fallback=fallback, smoothing=smoothing,
                      float_attention_pool_nodes=len(float_nodes) - len(keep))
    return conversion


def _torch_reference(student, vectors, arrays: np.ndarray, batch: int, progress: Progress) -> dict[str, np.ndarray]:
    """The PyTorch student as trained (BatchNorm, prompts, class vectors applied outside): the reference."""
    import torch

    embeddings = []
    update = progress.task("parity: PyTorch student", len(arrays))
    with torch.no_grad():
        for i in range(0, len(arrays), batch):
            embeddings.append(student(torch.from_numpy(arrays[i:i + batch])).float())
            update(min(i + batch, len(arrays)))
        e = torch.cat(embeddings)
        return {"embeddings": e.numpy(), "logits": vectors.logits(e).numpy()}


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, options: ExportOptions,
               progress: Progress | None = None) -> Manifest:
    """Export a distillation run into the bundle folder `out`; returns the manifest."""
    from promptkd_edge.formats.run import RunDir
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.student import load_student

    progress = progress or NullProgress()
    options.validate()
    run, out = RunDir(run_dir), destination(out, "--out")
    if not run.student.is_file():
        raise PkdError(f"{run.path} is not a distillation run (no student.safetensors)")
    check_out(out, options.overwrite, run.path)
    state = run_state(run)
    if state["complete"] is False and not options.allow_incomplete:
        raise PkdError(f"{run.path} did not finish (no summary.json): its student is {describe_state(state)}; "
                       f"resume it with `pkd distill --resume {run.path}`, or pass --allow-incomplete to export it "
                       "as it is")
    progress.note(f"exporting the student of {describe_state(state)}")
    if options.trt is not None:
        from promptkd_edge.export.tensorrt_build import check_can_build

        check_can_build()  # fail before minutes of export when TensorRT or a GPU is missing
    from promptkd_edge.export.cpu_gate import BF16_GRAPHS, bf16_unavailable

    no_bf16 = bf16_unavailable()
    if options.precision == "bf16" and no_bf16:
        raise PkdError(f"--precision bf16 is gated on this CPU, and cannot be here: {no_bf16}")
    student = load_student(run.student)
    vectors = ClassVectors.load(run.path)
    teacher = _text_teacher(vectors) if options.text_encoder else None  # fail before minutes of export
    spec = student.preprocess
    data = options.data or run_data(run.config)
    onnx_precision = "fp32" if options.trt is not None or options.precision == "bf16" else options.precision
    needs_calibration = onnx_precision == "int8" or (options.trt is not None and options.precision in ("int8", "fp8"))
    images = gate.collect_images(data, options.parity_images,
                                 options.calibration_images if needs_calibration else 0, spec.size, options.seed)
    progress.note(f"parity images: {len(images.parity)} ({images.source})")

    clean_leftovers(out.parent, r"\.(.+)\.(tmp|old)-(\d+)", progress)
    with work_folder(out.parent / f".{out.name}.tmp-{os.getpid()}") as tmp:
        manifest, reference = _export_into(tmp, run, student, vectors, spec, images, onnx_precision, options,
                                           progress, state)
        if onnx_precision in BF16_GRAPHS and not no_bf16 and options.input_format != "frame":
            # required with --precision bf16, else an offer (a frame graph is gated in FP32 only)
            _gate_bf16(tmp, manifest, images, reference, vectors, spec, options, progress)
        if options.fast_decode and options.input_format != "frame":  # a frame graph takes whole decoded frames
            from promptkd_edge.export.decode_gate import gate_decodes

            gate_decodes(tmp, manifest, images.parity, spec, images.source, vectors=vectors.vectors.numpy(),
                         scale=vectors.logit_scale, batch=options.batch_size, progress=progress)
            write_manifest(tmp, manifest)
        if teacher is not None:
            from promptkd_edge.export.text_encoder import export_text_encoder

            manifest.text_encoder = TextEncoderEntry.from_dict(export_text_encoder(
                teacher, vectors.names, vectors.template, tmp, opset=options.opset, progress=progress))
            write_manifest(tmp, manifest)
        if options.trt is not None:
            add_engine(tmp, options, progress=progress, images=images, reference=reference, manifest=manifest)
        manifest = read_manifest(tmp)
        if not manifest.valid and not options.force:
            raise PkdError(f"parity gate failed ({'; '.join(manifest.failures())}); no bundle written "
                           "(--force keeps it, marked invalid)")
        check_out(out, options.overwrite, run.path)  # again: minutes have passed
        move_into_place(tmp, out)
    return read_manifest(out)


def _export_into(tmp: Path, run, student, vectors, spec: PreprocessSpec, images: gate.ImageSet,
                 onnx_precision: str, options: ExportOptions, progress: Progress, state: dict[str, Any]
                 ) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Write model.onnx and its companions into `tmp`, gate it; returns (manifest, the PyTorch reference)."""
    import onnx

    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.export.onnx_export import export_onnx

    fmt = options.input_format
    graph_fmt = "normalized" if fmt == "frame" else fmt  # a frame graph is the normalised one behind the resize
    progress.note("folding prompts, projector and class vectors into one graph")
    folded = FoldedStudent(student, vectors if options.head != "embeddings" else None, options.head, graph_fmt)
    calib = prepare(images.calibration, spec, input_format=graph_fmt) if images.calibration else None
    smoothing = None
    if onnx_precision == "int8" and options.smooth and calib is not None:
        from promptkd_edge.export.smooth import smooth

        progress.note("int8: migrating activation outliers into the weights (SmoothQuant, a = 0.5)")
        smoothing = smooth(folded, calib)
    fp32_path = tmp / MODEL_FILE
    progress.note(f"exporting ONNX (opset {options.opset}, dynamic batch)")
    export_onnx(folded, fp32_path, spec.size, opset=options.opset)
    slimmed = slim(fp32_path) if options.slim else None
    graph = onnx.load(str(fp32_path), load_external_data=False)
    keep = head_nodes(graph)
    conversion: dict[str, Any] = {}
    if onnx_precision != "fp32":
        src = tmp / FP32_MASTER_FILE
        os.replace(fp32_path, src)
        progress.note(f"converting to {onnx_precision}")
        if onnx_precision == "fp16":
            conversion = {"tool": to_fp16(src, fp32_path, keep, calib), "kept_fp32": ["LayerNormalization",
                          "Softmax", "L2 norm", "logits MatMul"]}
        else:
            conversion = _int8_graph(src, fp32_path, graph, keep, calib, vectors, smoothing, options, progress)
        src.unlink()

    progress.note("parity gate: PyTorch student against the exported graph")
    float_inputs = prepare(images.parity, spec)
    reference = _torch_reference(student, vectors, float_inputs, options.batch_size, progress)
    model_inputs = prepare(images.parity, spec, input_format=graph_fmt) if graph_fmt != "normalized" else float_inputs
    backend = OnnxRuntimeBackend(fp32_path, providers="cpu", precision=onnx_precision,
                                 extra_outputs=embeddings_inside(fp32_path, options.head))
    try:
        got = run_for_gate(backend, model_inputs, options.batch_size, progress,
                           f"parity: ONNX Runtime {onnx_precision}")
    finally:
        backend.close()
    entry = gate.judge(reference, got, onnx_precision, "onnxruntime-cpu", images.source,
                       class_vectors=vectors.vectors.numpy(), logit_scale=vectors.logit_scale,
                       calibration_overlap=images.overlap)
    frame, frame_figures = None, []
    if fmt == "frame":
        entry.target += " (the graph behind the frame transform, on open_clip's crops)"
        frame, frame_figures = _frame_graph(tmp, fp32_path, student, vectors, spec, images, options, progress)
        keep = keep + frame_node_names(onnx.load(str(fp32_path)))  # FP32 on TensorRT too: pixels to 0.5 of 255

    vectors.save(tmp)
    write_json(tmp / PREPROCESS_FILE, spec.to_dict())
    shutil.copy2(run.student, tmp / STUDENT_FILE)
    inputs, outputs = io_description(onnx.load(str(fp32_path), load_external_data=False))
    inputs[0]["layout"] = "NHWC" if fmt in ("uint8", "frame") else "NCHW"
    model = ModelEntry(file=MODEL_FILE, precision=onnx_precision, head=options.head, input_format=fmt,
                       inputs=[TensorInfo.from_dict(t) for t in inputs],
                       outputs=[TensorInfo.from_dict(t) for t in outputs], num_classes=len(vectors.names),
                       embedding_dim=vectors.dim, logit_scale=vectors.logit_scale, fp32_nodes=keep,
                       conversion=conversion, slim_nodes_removed=slimmed, frame=frame)
    manifest = Manifest(
        model=model, valid=entry.passed,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source={"run": str(run.path.resolve()), "student_spec": student.config.spec,
                "teacher": vectors.teacher, "student_sha256": sha256_file(run.student), **state},
        versions=_versions(options.opset), parity=[entry, *(ParityEntry.from_dict(f) for f in frame_figures)])
    write_manifest(tmp, manifest)
    return manifest, reference


def _frame_graph(tmp: Path, fp32_path: Path, student, vectors, spec: PreprocessSpec, images: gate.ImageSet,
                 options: ExportOptions, progress: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Put the gated normalised graph behind the in-graph frame transform (export/frame.py), measured against the
    PyTorch student on open_clip's transform of the same frames; returns (model.frame, its parity figures)."""
    from promptkd_edge.export.frame import build_frame_graph

    normalized = tmp / ".model.normalized.onnx"
    os.replace(fp32_path, normalized)
    sizes = options.frame_gate_sizes
    progress.note(f"frame input: measuring the in-graph resize on {len(images.parity)} parity images as frames of "
                  + ", ".join(f"{w}x{h}" for h, w in sizes))

    def reference(crops: np.ndarray) -> dict[str, np.ndarray]:
        return _torch_reference(student, vectors, crops, options.batch_size, NullProgress())

    try:
        return build_frame_graph(normalized, fp32_path, spec, images.parity, reference, vectors.vectors.numpy(),
                                 vectors.logit_scale, methods=frame_methods(options), sizes=sizes,
                                 batch=options.batch_size, source=images.source,
                                 extra_outputs=embeddings_inside(normalized, options.head), note=progress.note)
    finally:
        normalized.unlink(missing_ok=True)


def _gate_bf16(bundle: Path, manifest: Manifest, images: gate.ImageSet, reference: dict[str, np.ndarray],
               vectors, spec: PreprocessSpec, options: ExportOptions, progress: Progress) -> None:
    """Gate OpenVINO bf16 on the new graph against the PyTorch student under the bundle's own thresholds (bf16's
    for an FP32 graph, INT8's for an INT8 graph); record it in the manifest."""
    from promptkd_edge.export.cpu_gate import gate_bf16

    required = options.precision == "bf16"
    offer = " (offered: the runtime uses bf16 where it passes; --precision bf16 requires it)"
    progress.note("parity gate: OpenVINO bf16 on this CPU" + ("" if required else offer))
    model = manifest.model
    inputs = prepare(images.parity, spec, input_format=model.input_format)
    entry = gate_bf16(bundle / model.file, model.head, inputs, reference, vectors.vectors.numpy(),
                      vectors.logit_scale, images.source, "pytorch", batch=options.batch_size, required=required,
                      progress=progress, thresholds="int8" if model.precision == "int8" else "bf16")
    if not entry.passed and not required:
        progress.note(f"OpenVINO bf16 failed its gate ({'; '.join(entry.failures)}): recorded as failed, so "
                      "the runtime computes this bundle in f32")
    manifest.record_parity(entry)
    write_manifest(bundle, manifest)


def _text_teacher(vectors):
    """The run's teacher, for --text-encoder (its weights must be on disk, as for `pkd classes`)."""
    from promptkd_edge.models.teacher import load_teacher, require_weights

    teacher = load_teacher(vectors.teacher)
    require_weights(teacher, vectors.teacher, "a text encoder made from it")
    return teacher


