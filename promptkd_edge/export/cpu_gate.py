"""Parity gates for CPU runtime precisions beyond the graph's own: OpenVINO computing the bundle's graph in bf16.

model.onnx stays as exported; bf16 is how OpenVINO computes it on CPUs with AMX or AVX512_BF16: an FP32 graph
entirely (3-4x faster than f32 on a ViT-B/16 here), an INT8 QDQ graph in everything it does not quantize itself
(softmax, LayerNorm, GELU, attention products; 1.2-1.35x faster). The variant gets a gate like every precision
and a manifest entry `{"runtime": "openvino-bf16", ...}`; the runtime runs bf16 only where that entry passed
(runtime/auto.py), or when the caller forces it.

At export the reference is the PyTorch student and the thresholds are the bundle's promise: bf16's (as FP16:
top-1 agreement >= 99.5 %, embedding cosine >= 0.999) for an FP32 graph, INT8's for an INT8 graph, so bf16 never
weakens what the bundle's own gate vouches for. Added later to a bundle (no PyTorch at hand), the reference is
ONNX Runtime on the same graph, itself gated at export, and the thresholds are bf16's: what bf16 adds on top.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.gate_run import embeddings_inside, run_for_gate
from promptkd_edge.formats.bundle import PREPROCESS_FILE
from promptkd_edge.formats.manifest import ParityEntry, write_manifest
from promptkd_edge.runtime.bundle import open_bundle, read_classes
from promptkd_edge.runtime.cpu import cpu_info
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare
from promptkd_edge.utils.progress import NullProgress, Progress

RUNTIME = "openvino-bf16"
BF16_GRAPHS = ("fp32", "int8")  # the model.onnx precisions OpenVINO can compute in bf16


def bf16_unavailable() -> str | None:
    """Why bf16 cannot be gated on this machine (no OpenVINO, no native bf16), or None when it can."""
    from promptkd_edge.runtime.openvino_backend import has_bf16, openvino_version

    if openvino_version() is None:
        return "OpenVINO is not installed (pip install 'promptkd-edge[openvino]')"
    if not has_bf16():
        return (f"this CPU ({cpu_info()['model']}) has no native bf16 for OpenVINO (it needs AMX or "
                "AVX512_BF16); gate bf16 on the machine that will run it")
    return None


def gate_bf16(model_path: Path, head: str, inputs: np.ndarray, reference: dict[str, np.ndarray],
              vectors: np.ndarray | None, scale: float, source: str, reference_name: str, *, batch: int,
              required: bool, progress: Progress, thresholds: str = "bf16") -> ParityEntry:
    """Run `model_path` on OpenVINO bf16 over `inputs` and compare with `reference` under `thresholds` (a
    parity.THRESHOLDS key): the manifest's parity entry."""
    from promptkd_edge.runtime.openvino_backend import OpenVinoBackend

    backend = OpenVinoBackend(model_path, precision="bf16", extra_outputs=embeddings_inside(model_path, head))
    try:
        got = run_for_gate(backend, inputs, batch, progress, "parity: OpenVINO bf16")
    finally:
        backend.close()
    info = cpu_info()
    return gate.judge(reference, got, thresholds, "openvino-cpu", source, class_vectors=vectors, logit_scale=scale,
                      precision="bf16", thresholds_of=thresholds, runtime=RUNTIME, required=required,
                      reference=reference_name, openvino=backend.version,
                      cpu={"model": info["model"], "speed_flags": info["speed_flags"]})


def add_bf16_gate(bundle_dir: str | os.PathLike, *, data: str | None = None, parity_images: int = 200,
                  batch_size: int = 16, seed: int = 0, force: bool = False,
                  progress: Progress | None = None) -> ParityEntry:
    """`pkd export BUNDLE --precision bf16`: gate OpenVINO bf16 on this CPU against ONNX Runtime on the bundle's
    own model.onnx (FP32 or INT8, itself gated against PyTorch at export) and record it. A failing gate records
    nothing (with `force`: recorded as failed, so the runtime still never picks it)."""
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    progress = progress or NullProgress()
    bundle_dir = Path(bundle_dir)
    reason = bf16_unavailable()
    if reason:
        raise PkdError(f"cannot gate bf16 here: {reason}")
    manifest = open_bundle(bundle_dir).manifest
    model = manifest.model
    if model.precision not in BF16_GRAPHS:
        raise PkdError(f"OpenVINO computes an FP32 or INT8 model.onnx in bf16; this bundle's is "
                       f"{model.precision}: export the run again with --precision bf16")
    spec = PreprocessSpec.load(bundle_dir / PREPROCESS_FILE)
    images = gate.collect_images(data, parity_images, 0, spec.size, seed)
    inputs = prepare(images.parity, spec, input_format=model.input_format)
    master = bundle_dir / model.file
    cpu = OnnxRuntimeBackend(master, providers="cpu", precision=model.precision,
                             extra_outputs=embeddings_inside(master, model.head))
    try:
        reference = run_for_gate(cpu, inputs, batch_size, progress,
                                 f"parity: ONNX Runtime {model.precision} (reference)")
    finally:
        cpu.close()
    _, vectors, scale = read_classes(bundle_dir)
    entry = gate_bf16(master, model.head, inputs, reference, vectors, scale, images.source,
                      f"onnxruntime-cpu {model.precision}", batch=batch_size, required=False, progress=progress)
    if not entry.passed and not force:
        raise PkdError(f"OpenVINO bf16 failed the parity gate ({'; '.join(entry.failures)}); not recorded "
                       "(--force records it as failed; the runtime never picks a failed precision)")
    manifest.record_parity(entry)
    write_manifest(bundle_dir, manifest)
    return entry
