"""The faster JPEG decodes as precisions: gated at `pkd export` like every variant that changes numbers.

A runtime sees camera frames, so the gate re-encodes each parity image as one: upscaled to 1920x1080 and saved as a
JPEG of quality 90, where the DCT-domain downscale really happens (1/2 for a 224 crop). Both paths decode THOSE
files: the reference (full decode + open_clip's resize) and the shortcut (formats/preprocess.py DECODES). The
bundle's own graph on ONNX Runtime's CPU computes both batches, and the logits are compared under the thresholds a
variant of this bundle must meet, as the bf16 offer is (export/cpu_gate.py): FP16's (top-1 agreement >= 99.5 %,
embedding cosine >= 0.999) for an FP32 or FP16 graph, INT8's for an INT8 graph. (FP32's max |delta logit| <= 1e-3 is
a test of arithmetic, which any pixel change fails.) The entry is an offer (`required: false`, `runtime:
decode-jpeg-...`): a failure only means the runtime decodes exactly (runtime/preprocess.py `decode_for`).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from promptkd_edge.export import parity as gate
from promptkd_edge.export.gate_run import embeddings_inside, run_for_gate
from promptkd_edge.formats.manifest import Manifest, ParityEntry
from promptkd_edge.formats.preprocess import DECODE_GATES, DECODES, DRAFT_OVERSAMPLE, PreprocessSpec
from promptkd_edge.runtime.preprocess import prepare
from promptkd_edge.utils.progress import Progress

CAMERA_SIZE = (1920, 1080)  # (width, height) of the re-encoded parity images
JPEG_QUALITY = 90
REFERENCE = "exact preprocess (full decode + open_clip's resize)"


def camera_jpegs(images: list, folder: Path, size: tuple[int, int] = CAMERA_SIZE,
                 quality: int = JPEG_QUALITY) -> list[Path]:
    """Each (PIL) image resized to `size` (width, height) with bicubic and saved as a JPEG (4:2:0, as cameras
    write) in `folder`."""
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        path = folder / f"parity-{i:04d}.jpg"
        img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=quality)
        paths.append(path)
    return paths


def torch_device() -> str | None:
    """Where the export can run torch's decoder ("cuda" with a GPU, else "cpu"), None without torchvision."""
    from promptkd_edge.runtime.gpu_decode import unavailable

    if unavailable("cpu") is not None:
        return None
    return "cuda" if unavailable("cuda") is None else "cpu"


def gate_decodes(bundle: Path, manifest: Manifest, images: list, spec: PreprocessSpec, source: str, *,
                 vectors: np.ndarray | None, scale: float, batch: int, progress: Progress) -> list[ParityEntry]:
    """Gate each JPEG decode shortcut on `images` (the parity images) re-encoded as camera JPEGs; record the
    entries in `manifest` (the caller writes it). Returns the entries."""
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    model = manifest.model
    thresholds = "int8" if model.precision == "int8" else "fp16"
    device = torch_device()
    variants = ["draft"] + ([f"torch-{device}"] if device else [])
    if device is None:
        progress.note("JPEG decode on the GPU not gated: torchvision is not installed")
    backend = OnnxRuntimeBackend(bundle / model.file, providers="cpu", precision=model.precision,
                                 extra_outputs=embeddings_inside(bundle / model.file, model.head))
    out = []
    try:
        with tempfile.TemporaryDirectory(prefix="pkd-decode-gate-") as tmp:
            paths = camera_jpegs(images, Path(tmp))
            exact = prepare(paths, spec, input_format="uint8")
            reference = run_for_gate(backend, _model_input(exact, spec, model.input_format), batch, progress,
                                     "decode gate: exact preprocess")
            for variant in variants:
                crops = prepare(paths, replace(spec, decode=variant), input_format="uint8")
                got = run_for_gate(backend, _model_input(crops, spec, model.input_format), batch, progress,
                                   f"decode gate: {variant}")
                pixels = np.abs(crops.astype(np.int16) - exact)
                entry = gate.judge(reference, got, thresholds, f"preprocess ({variant})", source,
                                   class_vectors=vectors, logit_scale=scale,
                                   precision=f"jpeg-{variant.split('-')[0]}", thresholds_of=thresholds,
                                   runtime=DECODE_GATES[variant], required=False, reference=REFERENCE,
                                   method=DECODES[variant], decode=variant,
                                   oversample=DRAFT_OVERSAMPLE if variant == "draft" else None,
                                   jpeg={"size": list(CAMERA_SIZE), "quality": JPEG_QUALITY},
                                   max_abs_pixel_diff=int(pixels.max()), mean_abs_pixel_diff=float(pixels.mean()),
                                   computed_by=f"onnxruntime-cpu {model.precision}")
                verdict = "passed" if entry.passed else f"failed ({'; '.join(entry.failures)})"
                progress.note(f"JPEG decode '{variant}' {verdict}: top-1 agreement {entry.top1_agreement:.2%}, "
                              f"max |delta logit| {entry.max_abs_logit_diff:.3g}")
                manifest.record_parity(entry)
                out.append(entry)
    finally:
        backend.close()
    return out


def _model_input(crops: np.ndarray, spec: PreprocessSpec, input_format: str) -> np.ndarray:
    """uint8 crops [N, H, W, 3] as the graph's input format (what `prepare` would make of the same crops)."""
    return prepare(list(crops), spec, input_format=input_format)
