"""A DeepStream `nvinfer` configuration for a bundle's TensorRT plan (classifier network type).

nvinfer scales each frame (or detected object) to the network size itself, then computes
`y = net-scale-factor * (x - offsets[c])` per pixel and hands float planar RGB (NCHW) to the engine. One scale for
all channels cannot express CLIP's per-channel std, so the normalisation must be inside the graph: the bundle is
exported with `--pixel-input` (float32 NCHW pixels 0-255, `/255` and mean/std in the graph) and nvinfer's own
normalisation is set to identity (`net-scale-factor=1`, `offsets=0;0;0`).

    DIR/config_infer_<name>.txt   the [property] group for gst-nvinfer (config-file-path=...)
    DIR/labels.txt                the class names, ';'-separated on one line (nvinfer's classifier label format)
    DIR/<plan>                    the bundle's plan for this GPU and TensorRT, which the config names

What nvinfer does with the plan (DeepStream sources, libs/nvdsinfer and gst-plugins/gst-nvinfer):
- every binding that is not an input is an output (nvdsinfer_context_impl.cpp `initInferenceInfo` pushes each
  non-input binding into m_OutputLayerInfo; `output-blob-names` only reaches the Caffe/UFF parsers' markOutput when
  nvinfer builds an engine itself, nvdsinfer_model_builder.cpp), and the classifier parser makes one attribute per
  output layer (nvdsinfer_context_impl_output_parsing.cpp `parseAttributesFromSoftmaxLayers` loops over
  m_OutputLayerInfo). A `--head both` plan's `embeddings` would be a second, unlabelled "classification" (its
  largest embedding component), so only a logits-only graph is taken.
- per output layer the parser keeps the class whose value is above `classifier-threshold` and above the largest
  so far, which starts at 0: a class is labelled only when its value is above the threshold and above 0. Our layer
  is `logits` (logit scale x cosine, 100 x for CLIP), not a probability: threshold 0 does not label every input,
  an object whose best logit is <= 0 (cosine <= 0) gets no label whatever the threshold, and a threshold T > 0
  needs a cosine above T / scale (25: 0.25 at scale 100).
- the element's `gie-unique-id` goes into every classifier meta it attaches (gstnvinfer_meta_utils.cpp
  `classifier_meta->unique_component_id = nvinfer->unique_id`) and must be > 0 (gstnvinfer_property_parser.cpp);
  a secondary element runs on the objects of `operate-on-gie-id`. A classifier with the detector's id would be
  read as the detector; NVIDIA's secondary classifiers use 2 on detector 1 (deepstream_python_apps
  deepstream-test2/dstest2_sgie1_config.txt).
- the resize is NvBufSurfTransform's: `scaling-filter` is NvBufSurfTransform_Inter (nvbufsurftransform.h:
  0 Nearest, 1 Bilinear, 2 Algo1 = "GPU-Cubic, VIC-5 Tap") and `scaling-compute-hw` NvBufSurfTransform_Compute
  (0 Default = VIC on Jetson / GPU on dGPU, 1 GPU, 2 VIC). The config asks for the GPU, where Algo1 is cubic.

The config is a GLib key file (GKeyFile), which gst-nvinfer reads with g_key_file_get_string: a value runs to the
end of its line, leading blanks dropped, backslash escapes (`\\\\`, `\\s`, `\\n`, `\\t`, `\\r`) decoded. File names go
in through `keyfile_value`, which writes those escapes (quotes, spaces, ';' and non-ASCII need none); text from the
manifest in comments is kept on its line with control characters made visible.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import check_labels, labels_text
from promptkd_edge.formats.manifest import EngineEntry, Manifest, ModelEntry
from promptkd_edge.formats.plan_record import plan_record_line
from promptkd_edge.runtime.bundle import Bundle, open_bundle
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare, to_rgb
from promptkd_edge.utils.files import atomic_path, write_text
from promptkd_edge.utils.text import visible

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2, "fp8": 2}  # nvinfer: 0 FP32, 1 INT8, 2 FP16 (no FP8 mode)
PROCESS_MODES = {"primary": 1, "secondary": 2}  # whole frames, or the objects an upstream detector found
ASPECT = {"squash": 0, "longest": 1, "shortest": 0}  # preprocess.json resize_mode -> maintain-aspect-ratio
# preprocess.json interpolation -> scaling-filter (NvBufSurfTransform_Inter): Nearest 0, Bilinear 1, Algo1 2 (the
# GPU's cubic; on the VIC, Jetson's default scaler, Algo1 is a 5-tap filter, hence SCALING_ON_GPU)
SCALING_FILTERS = {"nearest": 0, "bilinear": 1, "bicubic": 2}
SCALING_ON_GPU = 1  # scaling-compute-hw: NvBufSurfTransformCompute_GPU
GIE_ID_MAX = 2**31 - 1  # gst-nvinfer reads both ids with g_key_file_get_integer (a gint) and needs them > 0
DEFAULT_GIE_IDS = {"primary": 1, "secondary": 2}  # NVIDIA's samples: the detector 1, its classifiers 2, 3, ...


@dataclass(frozen=True)
class GieIds:
    """The element's gie-unique-id and, in secondary mode, the detector's id it runs on (None in primary mode)."""

    unique: int
    operate_on: int | None


def gie_ids(mode: str, gie_id: int | None, operate_on_gie_id: int | None) -> GieIds:
    """The ids for `mode` (defaults: 1 for a primary classifier, 2 on detector 1 for a secondary one), checked."""
    if mode == "primary" and operate_on_gie_id is not None:
        raise PkdError("--operate-on-gie-id names the detector a secondary classifier runs on: pass it with "
                       "--deepstream-mode secondary")
    unique = DEFAULT_GIE_IDS[mode] if gie_id is None else gie_id
    operate_on = (1 if operate_on_gie_id is None else operate_on_gie_id) if mode == "secondary" else None
    for flag, value in (("--gie-id", unique), ("--operate-on-gie-id", operate_on)):
        if value is not None and not 1 <= value <= GIE_ID_MAX:
            raise PkdError(f"{flag} {value} is outside 1..{GIE_ID_MAX}, the ids gst-nvinfer takes: choose another")
    if unique == operate_on:
        raise PkdError(f"--gie-id {unique} is the id of the detector it operates on: the classifier's labels would "
                       "carry the detector's id; give the classifier its own (e.g. --gie-id "
                       f"{operate_on + 1 if operate_on < GIE_ID_MAX else operate_on - 1})")
    return GieIds(unique, operate_on)


def batch_size_for(profiles: list[list[int]], requested: int | None) -> int:
    """nvinfer runs the plan's first optimization profile: its batches 1..max must be covered by it."""
    lo, _opt, hi = profiles[0]
    if lo != 1:
        raise PkdError(f"the plan's first optimization profile starts at batch {lo}; nvinfer runs that profile and "
                       "needs batch 1 in it: rebuild with a first --trt-profile that starts at 1 (e.g. 1,8,32)")
    if requested is not None and requested < 1:
        raise PkdError("--deepstream-batch-size must be >= 1")
    return min(requested or hi, hi)


def check_outputs(model: ModelEntry) -> None:
    """nvinfer's classifier reads every output of the plan as one classification: the graph must output logits
    only (see the module docstring)."""
    names = model.output_names
    if "logits" not in names:
        raise PkdError("nvinfer's classifier reads a logits output; this bundle outputs embeddings only: export the "
                       "run again with --head logits --pixel-input, then build its plan with --trt")
    others = [n for n in names if n != "logits"]
    if others:
        raise PkdError(f"nvinfer's classifier takes every output of a plan as a classification, so this bundle's "
                       f"{', '.join(others)} would be a second, unlabelled one (output-blob-names does not select "
                       "among an engine's outputs): export the run again with --head logits --pixel-input, then "
                       "build its plan with --trt")


def check_threshold(threshold: float, logit_scale: float) -> None:
    """A classifier-threshold the logits can exceed: they are logit scale x cosine, so at most the logit scale."""
    if threshold >= logit_scale:
        raise PkdError(f"--threshold {threshold:g} can never be met: nvinfer compares it with the logits, which are "
                       f"at most the bundle's logit scale {logit_scale:g} (x cosine <= 1), so no object would be "
                       f"labelled; choose one below {logit_scale:g} (e.g. {0.25 * logit_scale:.3g} for a cosine of "
                       "0.25)")


def scaling_filter(interpolation: str) -> int:
    """preprocess.json's interpolation as nvinfer's scaling-filter (run on the GPU: scaling-compute-hw=1)."""
    if interpolation not in SCALING_FILTERS:
        raise PkdError(f"preprocess.json's interpolation '{interpolation}' has no nvinfer scaling-filter "
                       f"(it has {', '.join(SCALING_FILTERS)}): export the run again with one of those")
    return SCALING_FILTERS[interpolation]


def keyfile_value(text: str, what: str) -> str:
    """`text` as a GKeyFile string value (g_key_file_get_string reads it back unchanged); a PkdError for what a key
    file cannot hold (control characters other than newline, tab and carriage return; text that is not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PkdError(f"{what} '{visible(text)}' is not UTF-8, as nvinfer's config file must be: rename it") from None
    if any((ord(c) < 0x20 and c not in "\n\t\r") or 0x7F <= ord(c) < 0xA0 for c in text):
        raise PkdError(f"{what} '{visible(text)}' holds a control character nvinfer's config cannot hold: rename it")
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped


# ------------------------------------------------------------------ nvinfer's resize, measured against the bundle's


def _taps(n_in: int, n_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights [n_out, taps] of a resize from n_in to n_out samples without antialiasing (the
    kernel keeps its width when downscaling, as a GPU texture filter does): pixel centres at +0.5, edges clamped,
    cubic = Keys a=-0.5 (Catmull-Rom)."""
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if interpolation == "nearest":
        return np.clip(np.floor(centre + 0.5), 0, n_in - 1).astype(np.int64)[:, None], np.ones((n_out, 1))
    base = np.floor(centre)
    offsets = np.arange(0, 2) if interpolation == "bilinear" else np.arange(-1, 3)
    d = np.abs(centre[:, None] - (base[:, None] + offsets))
    if interpolation == "bilinear":
        w = 1.0 - d
    else:
        w = np.where(d <= 1, (1.5 * d - 2.5) * d * d + 1, ((-0.5 * d + 2.5) * d - 4) * d + 2)
    return np.clip(base[:, None] + offsets, 0, n_in - 1).astype(np.int64), w


def _resample(pixels: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """HxWx3 uint8 -> size (h, w) uint8, separable, without antialiasing."""
    rows, wr = _taps(pixels.shape[0], size[0], interpolation)
    cols, wc = _taps(pixels.shape[1], size[1], interpolation)
    x = (pixels.astype(np.float64)[rows] * wr[:, :, None, None]).sum(1)
    x = (x[:, cols] * wc[None, :, :, None]).sum(2)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def nvinfer_scale(pixels: np.ndarray, size: tuple[int, int], resize_mode: str, interpolation: str) -> np.ndarray:
    """What nvinfer makes of a whole frame (or object crop) for a `size` (h, w) network: the whole image scaled, no
    crop; with maintain-aspect-ratio (resize_mode longest) scaled to fit and zero-padded symmetrically, the sizes
    truncated as gst-nvinfer's guint arithmetic does."""
    h, w = pixels.shape[:2]
    if not ASPECT[resize_mode]:
        return _resample(pixels, size, interpolation)
    fit_h = size[1] * h / w
    dh, dw = (int(fit_h), size[1]) if fit_h <= size[0] else (size[0], int(size[0] * w / h))
    dh, dw = max(dh, 1), max(dw, 1)
    out = np.zeros((*size, 3), np.uint8)
    top, left = (size[0] - dh) // 2, (size[1] - dw) // 2
    out[top:top + dh, left:left + dw] = _resample(pixels, (dh, dw), interpolation)
    return out


@dataclass(frozen=True)
class ResizeCheck:
    """The bundle's model on nvinfer-like input against the bundle's own preprocessing: equal top-1 classes and the
    largest logit difference."""

    agree: int
    images: int
    max_abs_logit_diff: float
    source: str

    def line(self) -> str:
        caveat = ("; generated square images show the filter, not the crop: --data with the camera's images shows "
                  "both") if self.source == "generated" else ""
        return (f"top-1 agreement {100 * self.agree / self.images:.1f} % ({self.agree}/{self.images} images, "
                f"{self.source}), max |d logit| {self.max_abs_logit_diff:.3g} (model.onnx on ONNX Runtime CPU"
                f"{caveat})")


def measure_resize(bundle: Bundle, spec: PreprocessSpec, images: list, source: str, batch: int = 16) -> ResizeCheck:
    """Run `images` through the bundle's preprocessing and through nvinfer's (`nvinfer_scale`), both into the
    bundle's model.onnx, and compare the logits."""
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    own = prepare(images, spec, input_format="pixels")
    theirs = np.stack([nvinfer_scale(np.asarray(to_rgb(img)), spec.size, spec.resize_mode, spec.interpolation)
                       for img in images]).transpose(0, 3, 1, 2).astype(np.float32)
    backend = OnnxRuntimeBackend(bundle.model_path, providers="cpu")
    try:
        a, b = (np.concatenate([backend.run(np.ascontiguousarray(x[i:i + batch]))["logits"]
                                for i in range(0, len(x), batch)]) for x in (own, theirs))
    finally:
        backend.close()
    return ResizeCheck(int((a.argmax(1) == b.argmax(1)).sum()), len(images), float(np.abs(a - b).max()), source)


# ------------------------------------------------------------------ the config


def _plan_lines(record: EngineEntry) -> list[str]:
    sm = f"sm_{record.compute_capability.replace('.', '')}" if record.compute_capability else "sm ?"
    return [visible(f"# plan {record.file}: {record.precision}, built with TensorRT {record.tensorrt} for "
                    f"{record.gpu} ({sm})."),
            visible(f"# A plan deserializes only with the TensorRT that built it: DeepStream's TensorRT must be "
                    f"{record.tensorrt} and its GPU {record.gpu} ({sm}); else build the plan again there (pkd export "
                    "BUNDLE --trt). `pkd doctor --bundle THIS_FOLDER` checks it on the DeepStream machine."),
            plan_record_line(record).rstrip("\n")]


def _resize_lines(spec: PreprocessSpec, check: ResizeCheck | None) -> list[str]:
    """What the config says of nvinfer's resize against the bundle's, and (when measured) what it costs."""
    crop = {"shortest": "the whole frame or object is squashed to the network size where the bundle resizes the "
                        "short side and centre-crops",
            "longest": "the whole frame or object is fitted and zero-padded (maintain-aspect-ratio, "
                       "symmetric-padding) as the bundle's resize_mode longest, up to rounding",
            "squash": "the whole frame or object is squashed to the network size, as the bundle's resize_mode "
                      "squash"}[spec.resize_mode]
    lines = [f"# Resize: {spec.interpolation} as in preprocess.json (scaling-filter "
             f"{scaling_filter(spec.interpolation)}) on the GPU (scaling-compute-hw={SCALING_ON_GPU}): Jetson's "
             "default scaler is the VIC, whose filter 2 is a 5-tap one, not cubic.",
             f"# Still different: nvinfer has no centre crop ({crop}); the GPU filter does not antialias when "
             "downscaling, PIL's (the bundle's gate) does."]
    if check is not None:
        lines.append("# Measured: that nvinfer-like resize (no crop, no antialias) vs the bundle's own: "
                     + visible(check.line()))
    return lines


def config_text(manifest: Manifest, record: EngineEntry, plan_name: str, batch_size: int, *,
                spec: PreprocessSpec, mode: str, threshold: float, logit_scale: float, ids: GieIds,
                gpu_id: int = 0, check: ResizeCheck | None = None) -> str:
    """The nvinfer [property] group for a bundle's plan. nvinfer scales the whole frame or object to the network
    size (keeping the aspect ratio with symmetric padding for `longest`); it has no centre crop."""
    model = manifest.model
    channels, height, width = model.inputs[0].shape[1:]
    aspect = ASPECT[spec.resize_mode]
    floor = max(threshold, 0.0)
    lines = [
        "# gst-nvinfer configuration written by `pkd export BUNDLE --deepstream` (promptkd-edge)",
        visible(f"# bundle: {manifest.source.get('student_spec', '?')} student, {model.num_classes} classes"),
        *_plan_lines(record),
        "# The graph does /255 and CLIP's per-channel mean/std itself: nvinfer's normalisation is identity.",
        f"# classifier-threshold is on the logits (logit scale {logit_scale:g} x cosine), not on a probability: an "
        f"object is labelled only when its best logit is > {floor:g} (cosine > {floor / logit_scale:.4g});",
        "# nvinfer's parser also needs a value > 0, so with threshold 0 or below an object whose best logit is <= 0 "
        "gets no label.",
        *_resize_lines(spec, check),
        "[property]",
        f"gpu-id={gpu_id}",
        f"gie-unique-id={ids.unique}",
        f"model-engine-file={keyfile_value(plan_name, 'the plan file name')}",
        "labelfile-path=labels.txt",
        f"batch-size={batch_size}",
        "network-type=1",
        f"process-mode={PROCESS_MODES[mode]}",
        f"network-mode={NETWORK_MODES[record.precision]}",
        "model-color-format=0",
        "net-scale-factor=1.0",
        "offsets=0.0;0.0;0.0",
        f"infer-dims={channels};{height};{width}",
        f"maintain-aspect-ratio={aspect}",
        *(["symmetric-padding=1"] if aspect else []),
        f"scaling-filter={scaling_filter(spec.interpolation)}",
        f"scaling-compute-hw={SCALING_ON_GPU}",
        "output-blob-names=logits",
        f"classifier-threshold={threshold:g}",
    ]
    if ids.operate_on is not None:
        lines += ["# classify the objects of this detector (its gie-unique-id; set its class ids):",
                  f"operate-on-gie-id={ids.operate_on}", "#operate-on-class-ids=0", "classifier-async-mode=0"]
    return "\n".join(lines) + "\n"


def write_config(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, *, engine: str | None = None,
                 max_batch: int | None = None, mode: str = "primary", threshold: float = 0.0,
                 gpu_id: int = 0, gie_id: int | None = None, operate_on_gie_id: int | None = None,
                 data: str | None = None, check_images: int = 0, seed: int = 0) -> Path:
    """Write the nvinfer config, labels and the plan for a bundle into `out_dir`; returns the config file.
    With `check_images` > 0, that many images (`data`, else generated ones) measure nvinfer's resize against the
    bundle's (`measure_resize`), written into the config."""
    if mode not in PROCESS_MODES:
        raise PkdError(f"unknown DeepStream mode '{mode}'; choose primary or secondary")
    ids = gie_ids(mode, gie_id, operate_on_gie_id)
    bundle = open_bundle(bundle_dir)
    model = bundle.model
    fmt = model.input_format
    if fmt == "frame":
        raise PkdError("nvinfer scales every frame (or object) to the network's input size itself, so a --frame-input "
                       "graph, which resizes whole frames, has no place in DeepStream: export the run again with "
                       "--pixel-input, then build its plan with --trt")
    if fmt != "pixels":
        raise PkdError(f"nvinfer hands the engine float NCHW pixels scaled by one factor for all channels, so CLIP's "
                       f"per-channel normalisation must be in the graph; this bundle's input is {fmt}: export the "
                       "run again with --pixel-input, then build its plan with --trt")
    names = bundle.class_names
    check_labels(names, f"bundle {bundle.path}")
    bad = [n for n in names if ";" in n]
    if bad:
        raise PkdError(f"nvinfer's classifier labels are ';'-separated on one line; rename the class {bad[0]!r}")
    check_outputs(model)
    check_threshold(threshold, bundle.logit_scale)
    engines = [e for e in bundle.engines if engine in (None, e.file) and e.parity_passed]
    if len(engines) != 1:
        have = ", ".join(e.file for e in bundle.engines) or "none"
        raise PkdError(f"choose one TensorRT plan of {bundle.path} (it has: {have}); plans are built with "
                       "`pkd export BUNDLE --trt` on the DeepStream machine")
    record = engines[0]
    batch = batch_size_for(record.profiles, max_batch)
    spec = bundle.preprocess
    scaling_filter(spec.interpolation)  # refuse what nvinfer cannot scale with before measuring or writing
    check = None
    if check_images > 0:
        from promptkd_edge.export.parity import collect_images

        found = collect_images(data, check_images, 0, spec.size, seed)
        check = measure_resize(bundle, spec, found.parity, found.source)
    out = Path(out_dir)
    plan_name = Path(record.file).name
    text = config_text(bundle.manifest, record, plan_name, batch, spec=spec, mode=mode, threshold=threshold,
                       logit_scale=bundle.logit_scale, ids=ids, gpu_id=gpu_id,
                       check=check)  # refuse what the key file cannot say before anything is written
    with atomic_path(out / plan_name) as tmp:
        shutil.copyfile(bundle.path / record.file, tmp)
    write_text(out / "labels.txt", labels_text(names, f"bundle {bundle.path}", ";"))
    config = out / f"config_infer_{bundle.path.name.replace('-', '_')}.txt"
    write_text(config, text)
    return config
