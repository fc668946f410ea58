"""`pkd export --frame-input`: a graph that takes whole uint8 frames [B, H, W, 3] of any H and W and does open_clip's
eval transform itself (shortest side to the model size, bicubic, centre crop, /255, mean/std), so ONNX Runtime,
OpenVINO and TensorRT resize on their own device and the CPU only hands over bytes.

The resize is ONNX Resize (opset >= 18), separable like PIL's (the horizontal pass, rounded to uint8 as PIL
stores it, then the vertical pass), cubic_coeff_a -0.5 (PIL's bicubic, not ONNX's default -0.75), exclude_outside 1
(PIL renormalises the taps inside the image), half_pixel coordinates (PIL samples at pixel centres). Downscaling a
1080p frame to 224 needs a wider filter (PIL stretches its kernel by the scale): METHODS are the ways to get there,
each measured against open_clip's transform on the parity images at frame sizes under the bundle's FP32 thresholds
(top-1 agreement 1.0 beyond near ties, max |delta logit| 1e-3), and the first that passes on every backend at hand is
used (`choose`):
- "matrix": PIL's own resampling (Resample.c precompute_coeffs: kernel stretched by max(1, in/out), taps centred at
  (j + 0.5) * in/out, normalised over the taps inside the image) as two MatMuls with weight matrices computed in the
  graph from the frame's size (Range, Abs, Where, ReduceSum), only for the rows and columns the crop keeps: standard
  ops every backend runs, TensorRT included; ~1.6 GFLOP per 1080p frame at 224.
- "antialias": Resize's antialias=1 (opset 18; the filter stretched as PIL does). TensorRT's parser refuses it
  ("Antialiasing is not supported currently", onnx-tensorrt importResize; NVIDIA/TensorRT#3560), so it is not
  offered when a TensorRT plan is built.
- "box-cubic": an integer box average (k = short side // model size, Reshape + ReduceMean, centred) and then the
  cubic resize without antialias for the remaining factor < 2: every backend, TensorRT included.
- "cubic": the cubic resize alone (aliases on large downscales; kept as the measured baseline).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.graph import INPUT_NAME, MIN_OPSET
from promptkd_edge.formats.preprocess import PreprocessSpec

METHODS = ("matrix", "antialias", "box-cubic", "cubic")  # in order of preference
TRT_METHODS = ("matrix", "box-cubic", "cubic")  # no antialias in TensorRT's IResizeLayer (NvInfer.h: IResizeLayer)
DEFAULT_GATE_SIZES = ((720, 1280), (1080, 1920))  # (height, width) of the frames the gate measures
THRESHOLDS = gate.THRESHOLDS["fp32"]  # the frame graph is FP32: gated with the bundle's own FP32 thresholds
MODES = {"bicubic": "cubic", "bilinear": "linear"}
CUBIC_A = -0.5  # PIL's bicubic (Resample.c bicubic_filter); ONNX Resize's default is -0.75
PREFIX = "frame/"
FLOAT, INT64 = 1, 7  # onnx.TensorProto.FLOAT, .INT64 (Cast's `to`)


def check_spec(spec: PreprocessSpec) -> None:
    """A one-line PkdError where the in-graph transform cannot be open_clip's for this preprocess config."""
    if spec.resize_mode != "shortest" or spec.size[0] != spec.size[1]:
        raise PkdError(f"--frame-input does open_clip's shortest-side resize to a square; this model's preprocess is "
                       f"{spec.resize_mode} to {list(spec.size)}: export it without --frame-input")
    if spec.interpolation not in MODES:
        raise PkdError(f"--frame-input resamples bicubic or bilinear; this model's preprocess is "
                       f"{spec.interpolation}: export it without --frame-input")


class _Nodes:
    """Builds the frame transform's nodes and constants (names under PREFIX)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def const(self, values: Sequence[float | int], dtype: Any, shape: Sequence[int] | None = None) -> str:
        from onnx import numpy_helper

        name = f"{PREFIX}c{len(self.inits)}"
        arr = np.asarray(values, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr.reshape(shape) if shape is not None else arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        from onnx import helper

        self.count += 1
        out = f"{PREFIX}{op_type.lower()}{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{PREFIX}{op_type}_{self.count}",
                                           **attrs))
        return out

    def part(self, vector: str, start: int, end: int) -> str:
        return self.op("Slice", [vector, self.const([start], np.int64), self.const([end], np.int64)])

    def resize(self, x: str, sizes: str, mode: str, antialias: int) -> str:
        """One Resize, then rounded and clipped to 0..255 as PIL stores each pass in uint8."""
        extra = {"cubic_coeff_a": CUBIC_A} if mode == "cubic" else {}
        return _rounded(self, self.op("Resize", [x, "", "", sizes], mode=mode, exclude_outside=1, antialias=antialias,
                                      coordinate_transformation_mode="half_pixel", **extra))

    def centre(self, new: str, crop: int) -> tuple[str, str]:
        """(start, end) of torchvision's CenterCrop along an axis of length `new`: round((new - crop) / 2), with
        round half to even like Python's round."""
        diff = self.op("Cast", [self.op("Sub", [new, self.const([crop], np.int64)])], to=FLOAT)
        start = self.op("Cast", [self.op("Round", [self.op("Div", [diff, self.const([2.0], np.float32)])])], to=INT64)
        return start, self.op("Add", [start, self.const([crop], np.int64)])


def frame_transform(spec: PreprocessSpec, method: str, source: str, target: str) -> tuple[list, list]:
    """(nodes, initializers) taking uint8 `source` [B, H, W, 3] to the normalised float `target` [B, 3, S, S]."""
    if method not in METHODS:
        raise PkdError(f"unknown frame resize method '{method}'; choose one of {', '.join(METHODS)}")
    check_spec(spec)
    size, mode = spec.size[0], MODES[spec.interpolation]
    g = _Nodes()
    x = g.op("Transpose", [g.op("Cast", [source], to=FLOAT)], perm=[0, 3, 1, 2])
    shape = g.op("Shape", [x])
    bc, hw = g.part(shape, 0, 2), g.part(shape, 2, 4)
    short = g.op("ReduceMin", [hw], keepdims=1)
    new = g.op("Div", [g.op("Mul", [hw, g.const([size], np.int64)]), short])  # torchvision: int(S * side / short)
    new_h, new_w = g.part(new, 0, 1), g.part(new, 1, 2)
    if method == "box-cubic":  # average k x k blocks (the frame's centred multiple of k), k = short // S >= 1
        k = g.op("Max", [g.op("Div", [short, g.const([size], np.int64)]), g.const([1], np.int64)])
        blocks = g.op("Div", [hw, k])
        kept = g.op("Mul", [blocks, k])
        start = g.op("Div", [g.op("Sub", [hw, kept]), g.const([2], np.int64)])
        x = g.op("Slice", [x, start, g.op("Add", [start, kept]), g.const([2, 3], np.int64)])
        six = g.op("Concat", [bc, g.part(blocks, 0, 1), k, g.part(blocks, 1, 2), k], axis=0)
        x = g.op("ReduceMean", [g.op("Reshape", [x, six]), g.const([3, 5], np.int64)], keepdims=0)
    if method == "matrix":
        return _matrix(g, x, spec, hw, new_h, new_w, target)
    antialias = int(method == "antialias")
    rows = g.part(g.op("Shape", [x]), 2, 3)
    x = g.resize(x, g.op("Concat", [bc, rows, new_w], axis=0), mode, antialias)  # horizontal pass first, as PIL
    left, right = g.centre(new_w, size)
    x = g.op("Slice", [x, left, right, g.const([3], np.int64)])
    x = g.resize(x, g.op("Concat", [bc, new_h, g.const([size], np.int64)], axis=0), mode, antialias)
    top, bottom = g.centre(new_h, size)
    x = g.op("Slice", [x, top, bottom, g.const([2], np.int64)])
    return _normalized(g, x, spec, target)


def _matrix(g: _Nodes, x: str, spec: PreprocessSpec, hw: str, new_h: str, new_w: str, target: str
            ) -> tuple[list, list]:
    """The "matrix" method's nodes: horizontal pass x @ Wh [W, S], rounded like PIL's uint8 store, then the vertical
    pass Wv [S, H] @ x, rounded; then the normalisation into `target`."""
    size = spec.size[0]
    cols = _weights(g, g.part(hw, 1, 2), new_w, size, spec.interpolation)  # [S, W]
    x = _rounded(g, g.op("MatMul", [x, g.op("Transpose", [cols], perm=[1, 0])]))
    x = _rounded(g, g.op("MatMul", [_weights(g, g.part(hw, 0, 1), new_h, size, spec.interpolation), x]))
    return _normalized(g, x, spec, target)


def _rounded(g: _Nodes, x: str) -> str:
    return g.op("Clip", [g.op("Round", [x]), g.const(0.0, np.float32), g.const(255.0, np.float32)])


def _weights(g: _Nodes, length: str, new: str, size: int, interpolation: str) -> str:
    """[S, length] float weights: output j of the centre crop (j = start .. start + S - 1 of `new` outputs) from
    input i, PIL's filter((i + 0.5 - (j + 0.5) * scale) / max(1, scale)), scale = length / new, rows normalised."""
    start, _ = g.centre(new, size)
    scale = g.op("Div", [g.op("Cast", [length], to=FLOAT), g.op("Cast", [new], to=FLOAT)])
    stretch = g.op("Max", [scale, g.const([1.0], np.float32)])
    half = g.const([0.5], np.float32)
    j = g.op("Cast", [g.op("Range", [g.op("Squeeze", [start]), g.op("Squeeze", [g.op("Add", [
        start, g.const([size], np.int64)])]), g.const(1, np.int64)])], to=FLOAT)
    centre = g.op("Mul", [g.op("Add", [j, half]), scale])  # [S]
    i = g.op("Cast", [g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [length]), g.const(1, np.int64)])], to=FLOAT)
    offset = g.op("Sub", [g.op("Unsqueeze", [g.op("Add", [i, half]), g.const([0], np.int64)]),
                          g.op("Unsqueeze", [centre, g.const([1], np.int64)])])  # [S, length]
    t = g.op("Abs", [g.op("Div", [offset, stretch])])
    zero = g.const([0.0], np.float32)
    if interpolation == "bilinear":  # Resample.c bilinear_filter: 1 - |x| inside 1
        w = g.op("Where", [g.op("Less", [t, g.const([1.0], np.float32)]),
                           g.op("Sub", [g.const([1.0], np.float32), t]), zero])
    else:  # bicubic_filter with a = -0.5
        a = CUBIC_A
        t2 = g.op("Mul", [t, t])
        inner = g.op("Add", [g.op("Mul", [g.op("Sub", [g.op("Mul", [t, g.const([a + 2], np.float32)]),
                                                      g.const([a + 3], np.float32)]), t2]), g.const([1.0], np.float32)])
        poly = g.op("Sub", [g.op("Mul", [g.op("Add", [g.op("Mul", [g.op("Sub", [t, g.const([5.0], np.float32)]), t]),
                                                     g.const([8.0], np.float32)]), t]), g.const([4.0], np.float32)])
        outer = g.op("Mul", [poly, g.const([a], np.float32)])
        w = g.op("Where", [g.op("Less", [t, g.const([1.0], np.float32)]), inner,
                           g.op("Where", [g.op("Less", [t, g.const([2.0], np.float32)]), outer, zero])])
    return g.op("Div", [w, g.op("ReduceSum", [w, g.const([1], np.int64)], keepdims=1)])


def _normalized(g: _Nodes, x: str, spec: PreprocessSpec, target: str) -> tuple[list, list]:
    std, mean = np.asarray(spec.std, np.float64), np.asarray(spec.mean, np.float64)
    x = g.op("Mul", [x, g.const(1.0 / (255.0 * std), np.float32, (1, 3, 1, 1))])
    g.nodes.append(_node("Add", [x, g.const(-mean / std, np.float32, (1, 3, 1, 1))], target))
    return g.nodes, g.inits


def _node(op_type: str, inputs: list[str], output: str):
    from onnx import helper

    return helper.make_node(op_type, inputs, [output], name=f"{PREFIX}{op_type}_out")


def wrap_model(src: str | os.PathLike, dst: str | os.PathLike, spec: PreprocessSpec, method: str) -> Path:
    """Write `dst`: the normalised-input graph `src` behind the frame transform; its input is INPUT_NAME, uint8
    [batch, height, width, 3]. Checked with onnx.checker."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise PkdError(f"--frame-input needs opset {MIN_OPSET} or newer (Resize with antialias); this graph has "
                       f"{opset}")
    graph = model.graph
    inner = f"{PREFIX}normalized"
    for node in graph.node:
        node.input[:] = [inner if i == INPUT_NAME else i for i in node.input]
    nodes, inits = frame_transform(spec, method, INPUT_NAME, inner)
    old = [n for n in graph.node]
    del graph.node[:]
    graph.node.extend([*nodes, *old])
    graph.initializer.extend(inits)
    frame = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3])
    others = [i for i in graph.input if i.name != INPUT_NAME]
    del graph.input[:]
    graph.input.extend([frame, *others])
    kept = [v for v in graph.value_info if v.name != INPUT_NAME]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise PkdError(f"the frame graph fails onnx.checker: {str(e).strip().splitlines()[0]}") from e
    onnx.save(model, str(dst))
    return Path(dst)


def unwrap_model(src: str | os.PathLike, dst: str | os.PathLike, spec: PreprocessSpec) -> Path:
    """Write `dst`: the normalised-input graph behind the frame transform of `src` (input INPUT_NAME, float32
    [batch, 3, S, S]), so a precision conversion can leave the transform alone (`convert_behind`)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    inner = f"{PREFIX}normalized"
    kept = [n for n in graph.node if not n.name.startswith(PREFIX)]
    for node in kept:
        node.input[:] = [INPUT_NAME if i == inner else i for i in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, *spec.size])
    others = [i for i in graph.input if i.name != INPUT_NAME]
    del graph.input[:]
    graph.input.extend([image, *others])
    values = [v for v in graph.value_info if not v.name.startswith(PREFIX)]
    del graph.value_info[:]
    graph.value_info.extend(values)
    onnx.save(model, str(dst))
    return Path(dst)


def convert_behind(src: Path, dst: Path, spec: PreprocessSpec, method: str, convert: Callable[[Path, Path], Any]
                   ) -> Any:
    """`convert(inner, out)` (e.g. the FP16 conversion) on the graph behind the frame transform of `src`, written
    behind the same transform to `dst`; returns what `convert` returns. Converting the whole graph with the transform
    kept FP32 would still cast every tensor between its nodes to FP16 and back (ONNX Runtime's converter does), which
    rounds a 1920-pixel coordinate to a step of 1 and a weight to 11 bits."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pkd-frame-") as tmp:
        inner = unwrap_model(src, Path(tmp) / "inner.onnx", spec)
        converted = Path(tmp) / "inner.converted.onnx"
        result = convert(inner, converted)
        wrap_model(converted, dst, spec, method)
    return result


def frame_node_names(model) -> list[str]:
    """Names of the frame transform's nodes in a frame graph (kept FP32 where a precision changes)."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX)]


def frames_at(images: Sequence[Any], size: tuple[int, int]) -> np.ndarray:
    """The parity images as camera frames of `size` (height, width): uint8 [N, H, W, 3], PIL bicubic."""
    from PIL import Image

    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return out


Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def run_frames(run: Runner, images: Sequence[Any], sizes: Sequence[tuple[int, int]], batch: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """`run` on the parity images as frames of every size in `sizes`, `batch` frames a call; outputs in that order
    (frames are made per batch: 200 1080p frames would take 1.2 GB)."""
    parts, done = [], 0
    for size in sizes:
        for i in range(0, len(images), batch):
            frames = frames_at(images[i:i + batch], size)
            parts.append(run(frames))
            done += len(frames)
            if on_batch:
                on_batch(done)
    return _joined(parts)


def figures(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], target: str, source: str,
            sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Parity figures of a frame graph's outputs against open_clip's transform's, under THRESHOLDS."""
    out = gate.compare(reference, got, "fp32", target, source, thresholds=THRESHOLDS)
    out["frame_sizes"] = [list(s) for s in sizes]
    return out


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(p[k], dtype=np.float32) for p in parts]) for k in parts[0]}


def choose(measured: dict[str, dict[str, Any]], methods: Sequence[str]) -> str:
    """The first of `methods` whose every measured backend passed (keyed "METHOD on BACKEND"); else a one-line
    PkdError with the measured numbers."""
    for method in methods:
        mine = [f for name, f in measured.items() if name.split(" on ")[0] == method]
        if mine and all(f["passed"] for f in mine):
            return method
    shown = "; ".join(f"{name}: top-1 {f['top1_agreement']:.2%}, cosine {f['min_cosine']:.5f}, max |delta logit| "
                      f"{f['max_abs_logit_diff']:.3g}" if "error" not in f else f"{name}: {f['error']}"
                      for name, f in measured.items())
    limits = ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items())
    raise PkdError(f"no in-graph frame resize passed the bundle's parity thresholds ({limits}) against open_clip's "
                   f"transform: {shown}; export without --frame-input and resize on the CPU")


def cpu_backends(extra_outputs: dict[str, str] | None) -> dict[str, Callable[[Path], Any]]:
    """The CPU backends a frame graph is measured on: ONNX Runtime, and OpenVINO f32 where it is installed (the
    runtime's CPU options; OpenVINO ignores Resize's antialias, measured: it resamples as plain cubic)."""
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, openvino_version

    out: dict[str, Callable[[Path], Any]] = {
        "onnxruntime-cpu": lambda p: OnnxRuntimeBackend(p, providers="cpu", extra_outputs=extra_outputs)}
    if openvino_version() is not None:
        out["openvino-cpu f32"] = lambda p: OpenVinoBackend(p, precision="fp32", extra_outputs=extra_outputs)
    return out


def build_frame_graph(normalized: Path, dst: Path, spec: PreprocessSpec, images: Sequence[Any], reference: Runner,
                      vectors: np.ndarray | None, logit_scale: float, *, methods: Sequence[str],
                      sizes: Sequence[tuple[int, int]], batch: int, source: str,
                      extra_outputs: dict[str, str] | None, note: Callable[[str], None] = lambda _: None
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write `dst`, the graph `normalized` behind the first of `methods` that passes its parity gate on every CPU
    backend at hand (against `reference` fed open_clip's transform of the same frames); returns (the manifest's
    `model.frame` record, the chosen method's parity figures per backend). A one-line PkdError with the measured
    numbers when none passes."""
    from promptkd_edge.runtime.preprocess import prepare

    check_spec(spec)
    ref = gate.with_logits(run_frames(lambda f: reference(prepare(list(f), spec)), images, sizes, batch), vectors,
                           logit_scale)
    measured: dict[str, dict[str, Any]] = {}
    chosen = None
    for method in methods:
        candidate = dst.with_name(f".frame-{method}.onnx")
        wrap_model(normalized, candidate, spec, method)
        try:
            for name, make in cpu_backends(extra_outputs).items():
                key = f"{method} on {name}"
                try:
                    backend = make(candidate)
                    try:
                        got = run_frames(backend.run, images, sizes, batch)
                    finally:
                        backend.close()
                    measured[key] = figures(ref, gate.with_logits(got, vectors, logit_scale), f"{name} frame "
                                            f"{method}", source, sizes)
                except PkdError as e:
                    measured[key] = {"target": f"{name} frame {method}", "passed": False, "error": str(e)}
                f = measured[key]
                note(f"frame resize {key}: " + (f"top-1 {f['top1_agreement']:.2%}, cosine {f['min_cosine']:.5f}, "
                                                f"max |delta logit| {f['max_abs_logit_diff']:.3g}"
                                                if "error" not in f else f["error"]))
            if all(f["passed"] for k, f in measured.items() if k.startswith(f"{method} on ")):
                os.replace(candidate, dst)
                chosen = method
                break
        finally:
            candidate.unlink(missing_ok=True)
    if chosen is None:
        choose(measured, methods)  # raises with the numbers
    record = {"method": chosen, "description": DESCRIPTIONS[chosen], "interpolation": spec.interpolation,
              "cubic_coeff_a": CUBIC_A if spec.interpolation == "bicubic" else None,
              "gate_sizes": [list(s) for s in sizes],
              "thresholds": THRESHOLDS, "tensorrt": chosen in TRT_METHODS,
              "measured": {k: {n: f.get(n) for n in ("top1_agreement", "min_cosine", "max_abs_logit_diff",
                                                     "mean_abs_logit_diff", "passed", "error") if n in f}
                           for k, f in measured.items()}}
    return record, [f for k, f in measured.items() if k.startswith(f"{chosen} on ")]


DESCRIPTIONS = {
    "matrix": "PIL's resampling filter as two in-graph MatMuls (horizontal, then vertical, each rounded to uint8)",
    "antialias": "ONNX Resize antialias=1, cubic_coeff_a -0.5, exclude_outside, half_pixel (separable, rounded)",
    "box-cubic": "integer box average, then ONNX Resize cubic without antialias (separable, rounded)",
    "cubic": "ONNX Resize cubic without antialias, cubic_coeff_a -0.5, half_pixel (separable, rounded)",
}
