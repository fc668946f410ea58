"""What `pkd export` is asked for (ExportOptions: a new bundle's graph, its gates, a TensorRT plan), checked before
any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.export.frame import DEFAULT_GATE_SIZES, METHODS, TRT_METHODS
from promptkd_edge.export.graph import DEFAULT_OPSET
from promptkd_edge.runtime.preprocess import INPUT_FORMATS

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
