"""The parity gate: the exported model against the PyTorch student on the same images.

Figures: max |delta logit| (logits at the run's logit scale, 100 for CLIP), the smallest cosine between
embeddings (read inside logits-only ONNX graphs; between centered logit vectors for TensorRT plans that output
logits only), and top-1 agreement. Thresholds per
precision; a failing gate fails the export.

A top-1 flip between two classes to which the reference itself gives probabilities (softmax of its logits) less
than one percentage point apart is a near tie: it is reported (`near_tie_flips`) but the agreement threshold
applies to the other images (`top1_agreement_beyond_ties`). Such ties say nothing about the export, yet on a
small parity set one of them fails a 99 % threshold (an INT8 graph with embedding cosine 0.9994 flipped 2 of 80
demo images on which the reference's two classes were 6e-4 and 9e-5 apart in probability, both near 0.117).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import ParityEntry
from promptkd_edge.utils.image_files import list_images

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"top1_agreement": 1.0, "max_abs_logit_diff": 1e-3},
    "fp16": {"top1_agreement": 0.995, "min_cosine": 0.999},
    "bf16": {"top1_agreement": 0.995, "min_cosine": 0.999},  # as FP16 (OpenVINO computing an FP32 graph in bf16)
    "int8": {"top1_agreement": 0.99, "min_cosine": 0.99},
    "fp8": {"top1_agreement": 0.99, "min_cosine": 0.99},
}


TIE_PROBABILITY = 0.01  # two classes whose reference probabilities differ by less are a near tie


@dataclass
class ImageSet:
    """Images for calibration and parity, and where they came from."""

    calibration: list  # PIL images
    parity: list
    source: str  # "run data: PATH" or "generated"
    overlap: bool  # calibration and parity share images (too few to keep them apart)


def generated_images(count: int, size: tuple[int, int], seed: int = 0) -> list:
    """Smooth random colour fields with edges (not white noise, which no CLIP has seen), at 1.5x the model size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = int(size[0] * 1.5), int(size[1] * 1.5)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (rng.integers(2, 9), rng.integers(2, 9), 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def collect_images(data: str | os.PathLike | None, parity: int, calibration: int, size: tuple[int, int],
                   seed: int = 0) -> ImageSet:
    """Calibration images first, parity images from the rest (evenly spread over the listing), read with the
    same decoder as training; without readable data, generated images."""
    from promptkd_edge.data.decode import open_rgb

    if data and Path(data).exists():
        paths = list_images(data)
        order = np.random.default_rng(seed).permutation(len(paths))
        images = []
        for i in order:
            img = open_rgb(paths[i])
            if img is not None:
                images.append(img)
            if len(images) >= parity + calibration:
                break
        if images:
            overlap = len(images) < parity + calibration
            cal = images[:calibration] if not overlap else images[:max(1, min(calibration, len(images)))]
            par = images[calibration:calibration + parity] if not overlap else images[-min(parity, len(images)):]
            return ImageSet(cal, par, f"run data: {data}", overlap and calibration > 0)
    images = generated_images(parity + calibration, size, seed)
    return ImageSet(images[:calibration], images[calibration:], "generated", False)


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str,
            target: str, source: str, *, thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Parity figures of `candidate` against `reference` (both with 'logits', and 'embeddings' when known), passed
    or failed under `thresholds` (default: THRESHOLDS[precision])."""
    if precision not in THRESHOLDS:
        raise PkdError(f"no parity thresholds for precision '{precision}'")
    ref, got = reference["logits"].astype(np.float64), candidate["logits"].astype(np.float64)
    if ref.shape != got.shape:
        raise PkdError(f"parity: logits of shape {got.shape} against a reference of {ref.shape}")
    kind = "embeddings" if "embeddings" in candidate and "embeddings" in reference else "centered logits"
    if kind == "embeddings":
        a, b = reference[kind].astype(np.float64), candidate[kind].astype(np.float64)
    else:  # without embeddings (a TensorRT logits plan): logits minus their mean, i.e. W f projected
        a, b = ref - ref.mean(1, keepdims=True), got - got.mean(1, keepdims=True)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    rows, top_ref, top_got = np.arange(len(ref)), ref.argmax(1), got.argmax(1)
    flips = top_ref != top_got
    prob = np.exp(ref - ref.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    near_tie = flips & (prob[rows, top_ref] - prob[rows, top_got] < TIE_PROBABILITY)
    figures = {
        "target": target, "precision": precision, "images": int(len(ref)), "image_source": source,
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "mean_abs_logit_diff": float(np.abs(ref - got).mean()),
        "min_cosine": float(cosine.min()), "cosine_of": kind,
        "top1_agreement": float(1.0 - flips.mean()),
        "near_tie_flips": int(near_tie.sum()),
        "top1_agreement_beyond_ties": float(1.0 - (flips & ~near_tie).mean()),
        "thresholds": THRESHOLDS[precision] if thresholds is None else thresholds,
    }
    figures["failures"] = failures(figures)
    figures["passed"] = not figures["failures"]
    return figures


def judge(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], rule: str, target: str, source: str,
          /, *, class_vectors: np.ndarray | None = None, logit_scale: float = 100.0, **recorded: Any) -> ParityEntry:
    """The parity gate, as every export step runs it: logits completed from embeddings on either side that has none
    (scale * E @ W^T), `compare`d under THRESHOLDS[`rule`], with the `recorded` fields (runtime, required,
    reference, a `precision` other than the rule's, ...) added: the manifest's entry. The five figures' arguments
    are positional, so that `reference=` names what the entry was compared against."""
    figures = compare(with_logits(reference, class_vectors, logit_scale),
                      with_logits(candidate, class_vectors, logit_scale), rule, target, source)
    figures.update(recorded)
    return ParityEntry.from_dict(figures)


def failures(figures: dict[str, Any]) -> list[str]:
    t = figures["thresholds"]
    out = []
    agreement = figures.get("top1_agreement_beyond_ties", figures["top1_agreement"])
    if agreement < t["top1_agreement"]:
        ties = figures.get("near_tie_flips", 0)
        out.append(f"top-1 agreement {agreement:.2%} < {t['top1_agreement']:.1%}"
                   + (f" (not counting {ties} near-tie flips)" if ties else ""))
    if "max_abs_logit_diff" in t and figures["max_abs_logit_diff"] > t["max_abs_logit_diff"]:
        out.append(f"max |delta logit| {figures['max_abs_logit_diff']:.2e} > {t['max_abs_logit_diff']:.0e}")
    if "min_cosine" in t and figures["min_cosine"] < t["min_cosine"]:
        out.append(f"{figures['cosine_of']} cosine {figures['min_cosine']:.5f} < {t['min_cosine']}")
    return out


def with_logits(outputs: dict[str, np.ndarray], class_vectors: np.ndarray | None,
                logit_scale: float) -> dict[str, np.ndarray]:
    """Add logits computed from embeddings (scale * e @ W^T) when the graph outputs embeddings only."""
    if "logits" in outputs:
        return outputs
    if class_vectors is None:
        raise PkdError("an embeddings-only model needs the class vectors to be compared")
    return {**outputs, "logits": logit_scale * outputs["embeddings"] @ class_vectors.T}
