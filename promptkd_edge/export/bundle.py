"""`pkd export`: a distillation run -> a bundle folder (export/BUNDLE.md), every output gated for parity.

Recipe: load the student and its class vectors -> fold -> ONNX -> (FP16 / INT8 graph) -> run the exported
graph and the PyTorch student on the same images -> classes, preprocess, manifest -> (TensorRT engine, gated
again). The bundle is built in a temporary folder and renamed into place at the end: a failed export leaves
nothing behind (or, with `force`, a bundle whose manifest says `"valid": false`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge import __version__
from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.frame import DEFAULT_GATE_SIZES, METHODS, TRT_METHODS, frame_node_names
from promptkd_edge.export.gate_batches import Chunk, describe, plan_batches, run_batches
from promptkd_edge.export.gate_run import embeddings_inside, run_for_gate
from promptkd_edge.export.graph import (
    DEFAULT_OPSET,
    INPUT_NAME,
    head_nodes,
    int8_float_nodes,
    io_description,
    slim,
)
from promptkd_edge.export.int8_fallback import float_fallback
from promptkd_edge.export.precision import (
    engine_graph_name,
    has_modelopt,
    quantize_for_tensorrt,
    quantize_int8,
    to_fp16,
)
from promptkd_edge.formats.manifest import (
    MANIFEST_FILE,
    EngineEntry,
    Manifest,
    ModelEntry,
    ParityEntry,
    TensorInfo,
    TextEncoderEntry,
    write_manifest,
)
from promptkd_edge.runtime.bundle import is_bundle, open_bundle, read_classes, read_manifest
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from promptkd_edge.runtime.preprocess import INPUT_FORMATS, PreprocessSpec, prepare
from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend
from promptkd_edge.utils.files import (
    claim,
    destination,
    exchange,
    process_alive,
    read_json,
    release,
    remove_stale_work,
    sha256_file,
    work_folder,
    write_json,
)
from promptkd_edge.utils.progress import NullProgress, Progress

ONNX_PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_PRECISIONS = (*ONNX_PRECISIONS, "bf16")  # bf16: an FP32 model.onnx that OpenVINO computes in bf16, gated
TRT_PRECISIONS = ("fp32", "fp16", "int8", "fp8")


@dataclass
class ExportOptions:
    """What `pkd export` builds. Without `trt`, `precision` is model.onnx's (bf16: model.onnx stays FP32 and the bf16
    gate of OpenVINO on this CPU is required); with it, the engine's (model.onnx then stays FP32, the portable master
    every engine is built from and checked against)."""

    head: str = "logits"
    input_format: str = "normalized"  # runtime.preprocess.INPUT_FORMATS: normalized | uint8 | pixels
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    slim: bool = False
    data: str | None = None  # calibration/parity images; default: the run's own training data
    parity_images: int = 200
    calibration_images: int = 400
    calibration_method: str = "percentile"
    smooth: bool = True  # int8: SmoothQuant's scale migration before quantizing (export/smooth.py)
    int8_fallback: bool = True  # int8: keep float the nodes that cost agreement (export/int8_fallback.py)
    batch_size: int = 16
    force: bool = False
    overwrite: bool = False
    allow_incomplete: bool = False  # export a run that did not finish (its latest checkpoint's student)
    trt: Any = None  # promptkd_edge.export.tensorrt_build.TrtBuildOptions
    text_encoder: bool = False  # the teacher's text tower + tokenizer, for class names given on the device
    fast_decode: bool = True  # gate the faster JPEG decodes (export/decode_gate.py); the runtime uses those that pass
    frame_resize: str = "auto"  # input_format "frame": export/frame.py METHODS, or auto (the first that passes)
    frame_gate_sizes: list[tuple[int, int]] = field(default_factory=lambda: list(DEFAULT_GATE_SIZES))
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ExportOptions:
        allowed = TRT_PRECISIONS if self.trt is not None else EXPORT_PRECISIONS
        if self.precision not in allowed:
            hint = " (fp8 runs on TensorRT only: add --trt)" if self.precision == "fp8" else ""
            raise PkdError(f"precision '{self.precision}' is not one of {', '.join(allowed)}{hint}")
        if self.text_encoder and self.head == "logits":
            raise PkdError("--text-encoder needs --head embeddings or both: with --head logits the class vectors are "
                           "inside the graph, so class names given on the device could not be used")
        if self.input_format not in INPUT_FORMATS:
            raise PkdError(f"unknown input format '{self.input_format}'; choose one of {', '.join(INPUT_FORMATS)}")
        if self.input_format == "frame":
            self._validate_frame()
        if self.parity_images < 1:
            raise PkdError("--parity-images must be >= 1")
        if self.precision in ("int8", "fp8") and self.calibration_images < 1:
            raise PkdError("--calibration-images must be >= 1 for int8/fp8")
        return self

    def _validate_frame(self) -> None:
        if self.trt is None and self.precision != "fp32":
            raise PkdError(f"--frame-input exports an FP32 model.onnx (the in-graph resize is gated in FP32); "
                           f"precision {self.precision} is not offered with it: export without --frame-input, or "
                           "build a TensorRT fp16 plan with --trt")
        check_frame_plan(self.precision if self.trt is not None else "fp32")
        methods = frame_methods(self)
        if self.frame_resize != "auto" and self.frame_resize not in METHODS:
            raise PkdError(f"unknown --frame-resize '{self.frame_resize}'; choose auto or {', '.join(METHODS)}")
        if not methods:
            raise PkdError(f"--frame-resize {self.frame_resize} is not parsed by TensorRT (no antialiased Resize: "
                           f"NVIDIA/TensorRT#3560); choose {' or '.join(TRT_METHODS)} with --trt")
        sizes = []
        for s in self.frame_gate_sizes:
            try:
                h, w = (int(v) for v in s)
            except (TypeError, ValueError):
                raise PkdError(f"a frame gate size is HEIGHTxWIDTH, not {s!r}") from None
            if h < 1 or w < 1:
                raise PkdError(f"frame gate size {h}x{w} must be positive")
            sizes.append((h, w))
        if not sizes:
            raise PkdError("give at least one frame size for the --frame-input parity gate")
        self.frame_gate_sizes = sizes


def check_frame_plan(precision: str) -> None:
    """A frame graph's TensorRT plan is fp32 or fp16: INT8/FP8 calibration would quantize the in-graph resize."""
    if precision in ("int8", "fp8"):
        raise PkdError(f"a --frame-input bundle's TensorRT plan is fp32 or fp16, not {precision} (calibration would "
                       "quantize the in-graph resize): build fp16, or export without --frame-input for int8")


def frame_methods(options: ExportOptions) -> tuple[str, ...]:
    """The in-graph resize methods an export measures, in order: TensorRT parses no antialiased Resize."""
    allowed = TRT_METHODS if options.trt is not None else METHODS
    return allowed if options.frame_resize == "auto" else tuple(m for m in (options.frame_resize,) if m in allowed)


def _versions(opset: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from promptkd_edge.runtime.openvino_backend import openvino_version

    return {"promptkd_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino_version(), "opset": opset}


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


def _run_plan(engine: TensorRTBackend, arrays: np.ndarray, chunks: list[Chunk], progress: Progress
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(outputs, parity image of each row) of the plan on the gate's chunks, each in its own profile (Triton may
    serve a batch from any listed profile, so the gate runs them all: export/gate_batches.py)."""

    def run(batch: np.ndarray, profile: int) -> dict[str, np.ndarray]:
        return engine.run(batch, profile=profile)

    update = progress.task("parity: TensorRT engine", sum(len(c.rows) for c in chunks))
    return run_batches(run, arrays, chunks, update)


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
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.student import load_student
    from promptkd_edge.train.run_dir import RunDir

    progress = progress or NullProgress()
    options.validate()
    run, out = RunDir(run_dir), destination(out, "--out")
    if not run.student.is_file():
        raise PkdError(f"{run.path} is not a distillation run (no student.safetensors)")
    _check_out(out, options.overwrite, run.path)
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

    _clean_leftovers(out.parent, r"\.(.+)\.(tmp|old)-(\d+)", progress)
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
        _check_out(out, options.overwrite, run.path)  # again: minutes have passed
        _move_into_place(tmp, out)
    return read_manifest(out)


BUNDLE_WORK_FILES = ("model.onnx", "model.fp32-master.onnx", "manifest.json", "preprocess.json", "classes.json",
                     "engines")


def _clean_leftovers(folder: Path, pattern: str, progress: Progress) -> None:
    """An export killed mid-way leaves its hidden work folder (up to the model's size: 350 MB for ViT-B-16); remove
    those whose process is provably gone (utils/files.py `why_in_use`: on shared storage another host's may be
    running), say so, and name those left alone. A bundle moved aside by --overwrite (`.NAME.old-PID`) stays while
    NAME is missing: the kill came between the two renames and it may be the only copy."""
    def keep(match: re.Match[str]) -> bool:
        return match.groups()[-2:-1] == ("old",) and not (folder / match.group(1)).exists()

    removed, left = remove_stale_work(folder, pattern, BUNDLE_WORK_FILES, keep)
    for path, size in removed:
        progress.note(f"removed {path} ({size / 2**20:.1f} MB), left by an interrupted export")
    for path, why in left:
        progress.note(f"left {path} alone: {why}; remove it yourself once no export uses it")
    for path in folder.iterdir() if folder.is_dir() else ():
        match = re.fullmatch(pattern, path.name)
        if match and keep(match) and not process_alive(int(match.group(3))):
            progress.note(f"{path} holds a bundle that an interrupted --overwrite moved aside; rename it to "
                          f"{folder / match.group(1)} to restore it")


def run_data(config_path: Path) -> str | None:
    """The data folder a run was distilled on (its config.json), or None: where the gates' images come from."""
    try:
        return read_json(config_path, "run config").get("config", {}).get("data") or None
    except PkdError:
        return None


def run_state(run) -> dict[str, Any]:
    """Which training state a run's student.safetensors is (train/distill.py writes it right after each checkpoint
    and summary.json when the last epoch is done): `complete`, and `epoch` (epochs done), `step`, `step_in_epoch`,
    `epochs` (planned) and `checkpoint` where known. Recorded in the manifest's `source`. A folder without
    config.json (which `pkd distill` writes before its first step) was not trained by it: `complete` is None."""
    if not run.config.is_file() and not run.summary.is_file():
        return {"complete": None}
    config = _read_or_empty(run.config, "run config").get("config", {})
    epochs = config.get("epochs") if isinstance(config, dict) else None
    if run.summary.is_file():
        summary = read_json(run.summary, "run summary")
        return {"complete": True, "epoch": summary.get("epochs"), "step": summary.get("steps"), "epochs": epochs}
    state: dict[str, Any] = {"complete": False, "epochs": epochs, "checkpoint": None}
    latest = _read_or_empty(run.checkpoints / "latest.json", "checkpoint pointer").get("checkpoint")
    if isinstance(latest, str) and latest and "/" not in latest and latest not in (".", ".."):
        from promptkd_edge.train.checkpoint import matches_checkpoint

        meta = _read_or_empty(run.checkpoints / latest / "state.json", "checkpoint")
        state.update(checkpoint=latest, **{k: meta.get(k) for k in ("epoch", "step", "step_in_epoch")})
        # distill writes student.safetensors, then its checkpoint: a kill between leaves a newer student
        state["student_matches_checkpoint"] = matches_checkpoint(run.checkpoints, latest, run.student)
    return state


def _read_or_empty(path: Path, what: str) -> dict[str, Any]:
    return read_json(path, what) if path.is_file() else {}


def describe_state(state: dict[str, Any]) -> str:
    """One phrase for `run_state`'s record, e.g. "checkpoint step-00000012 (epoch 1 of 2 done + 3 steps, step 12)"."""
    of = f" of {state['epochs']}" if state.get("epochs") is not None else ""
    if state["complete"] is None:
        return "a student not trained by `pkd distill` (no config.json: its training state is not recorded)"
    if state["complete"]:
        return f"the finished run ({state.get('epoch')}{of} epochs, step {state.get('step')})"
    if state.get("checkpoint") is None:
        return "an unfinished run with no readable checkpoint (which training step it is cannot be told)"
    if state.get("student_matches_checkpoint") is False:
        return (f"an unfinished run whose student.safetensors is not its latest checkpoint {state['checkpoint']} "
                "(the run was stopped between writing the two: which training step it holds is not recorded)")
    more = f" + {state['step_in_epoch']} steps" if state.get("step_in_epoch") else ""
    return (f"checkpoint {state['checkpoint']} of an unfinished run (epoch {state.get('epoch')}{of} done{more}, "
            f"step {state.get('step')})")


def _check_out(out: Path, overwrite: bool, run: Path) -> None:
    """`out` (resolved) may be new, an empty folder or, with `overwrite`, a bundle holding nothing else; never the
    run exported, a folder inside it or one holding it."""
    src = run.resolve()
    if out == src or src in out.parents or out in src.parents:
        where = "is" if out == src else "is inside" if src in out.parents else "holds"
        raise PkdError(f"--out {out} {where} the run being exported ({src}); choose a folder outside it")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise PkdError(f"--out {out} exists and is not a folder; choose another --out (--overwrite replaces only "
                       "a bundle)")
    if not any(out.iterdir()):
        return
    if not overwrite:
        what = "a bundle" if is_bundle(out) else "not empty"
        raise PkdError(f"{out} already exists and is {what}; choose another --out or pass --overwrite")
    try:
        manifest = read_manifest(out)
    except PkdError as e:
        why = "it has no manifest.json" if not (out / MANIFEST_FILE).is_file() else str(e)
        raise PkdError(f"--overwrite replaces only a bundle, and {out} is not one ({why}); choose another "
                       "--out") from None
    known = {MANIFEST_FILE, *manifest.files}
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and p.relative_to(out).as_posix() not in known
                     and not any(part.startswith(".") or part == "ort-trt-cache" for part in p.relative_to(out).parts))
    if foreign:
        shown_names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PkdError(f"{out} is a bundle but also holds files that are not part of it ({shown_names}), which "
                       "--overwrite would delete; move them out or choose another --out")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Put the finished bundle `tmp` at `out`: a bundle there is swapped with it in one atomic step where the file
    system can (else moved aside first, so a kill between the renames leaves it as `.NAME.old-PID`), then removed."""
    release(tmp)
    if not (os.path.lexists(out) and any(out.iterdir())):
        os.replace(tmp, out)  # new, or an empty folder
        return
    if exchange(tmp, out):
        old = tmp
        with contextlib.suppress(OSError):  # a full disk: without its record the old one is named, not removed
            claim(old)
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        with contextlib.suppress(OSError):
            claim(old)
        os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


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
    fp32_path = tmp / "model.onnx"
    progress.note(f"exporting ONNX (opset {options.opset}, dynamic batch)")
    export_onnx(folded, fp32_path, spec.size, opset=options.opset)
    slimmed = slim(fp32_path) if options.slim else None
    graph = onnx.load(str(fp32_path), load_external_data=False)
    keep = head_nodes(graph)
    conversion: dict[str, Any] = {}
    if onnx_precision != "fp32":
        src = tmp / "model.fp32-master.onnx"
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
    write_json(tmp / "preprocess.json", spec.to_dict())
    shutil.copy2(run.student, tmp / "student.safetensors")
    inputs, outputs = io_description(onnx.load(str(fp32_path), load_external_data=False))
    inputs[0]["layout"] = "NHWC" if fmt in ("uint8", "frame") else "NCHW"
    model = ModelEntry(file="model.onnx", precision=onnx_precision, head=options.head, input_format=fmt,
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
    spec = PreprocessSpec.load(bundle_dir / "preprocess.json")
    precision = options.precision
    if images is None:
        calibration = options.calibration_images if precision in ("int8", "fp8") else 0
        images = gate.collect_images(options.data, options.parity_images, calibration, spec.size, options.seed)
    fmt = model.input_format
    if fmt == "frame":
        check_frame_plan(precision)
    master = bundle_dir / "model.onnx"
    gate_inputs = _gate_inputs(images, spec, fmt, model.frame, options.trt)
    if reference is None or fmt == "frame":  # a frame graph's reference: itself on ONNX Runtime, gated at export
        cpu = OnnxRuntimeBackend(master, providers="cpu", extra_outputs=embeddings_inside(master, model.head))
        try:
            reference = _joined([run_for_gate(cpu, make(), options.batch_size, progress,
                                              "parity: ONNX Runtime fp32 (reference)") for make in gate_inputs])
        finally:
            cpu.close()
        target_ref = "onnxruntime-cpu fp32" + (" (the frame graph, gated against open_clip's transform at export)"
                                               if fmt == "frame" else "")
    else:
        target_ref = "pytorch"

    keep = model.fp32_nodes
    chunks = plan_batches(len(images.parity), options.trt.profiles, options.batch_size)  # before the build
    progress.note(f"the plan's parity gate will run {len(images.parity)} images in every profile: " + "; ".join(
        f"profile {d['profile']}: {d['batches']} batch(es) up to {d['max_batch']}" for d in describe(chunks)))
    _clean_leftovers(bundle_dir, r"\.engine-(\d+)", progress)
    with work_folder(bundle_dir / f".engine-{os.getpid()}") as stage:
        (stage / "engines").mkdir()
        src, ref, conversion = _engine_graph(bundle_dir, stage, manifest, precision, api, keep, images, spec, fmt,
                                             options, progress)
        opts = dataclasses.replace(options.trt, precision=precision, keep_fp32_nodes=keep)
        dims = {"uint8": (spec.size[0], spec.size[1], 3), "frame": (-1, -1, 3)}.get(fmt, (3, *spec.size))
        progress.note(f"building the TensorRT {precision} engine from {ref} (this takes minutes on Jetson)")
        record = build_engine(src, stage / "engines", input_name=INPUT_NAME, input_dims=dims, options=opts,
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
        release(stage)
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = bundle_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        manifest.record_engine(EngineEntry.from_dict(record))
        manifest.record_parity(entry)
        write_manifest(bundle_dir, manifest)
    return record


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
    master = bundle_dir / "model.onnx"
    if precision == "fp32" or (precision == "fp16" and api < 11):
        return master, "model.onnx", {}
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
