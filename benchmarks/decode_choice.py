"""Which JPEG decode + resize the runtime offers: camera-like JPEGs to the bundle's 224 crop, per candidate, ms/image
(one thread) and the difference from the reference in pixels and in the ViT-B-16 student's logits.

    python benchmarks/decode_choice.py                 # 16 frames each at 1920x1080 and 1280x720, about 3 minutes
    python benchmarks/decode_choice.py --size tiny     # seconds; checks the script (tiny student, 4 frames)
    PYTHONPATH=/path/to/simplejpeg python benchmarks/decode_choice.py   # adds simplejpeg's rows

Frames: the package's generated images (export/parity.py `generated_images`, smooth colour fields with edges and
per-pixel noise) made at 224 and upscaled (bicubic) to the frame size, as the export gate does, and made at the frame
size itself (per-pixel noise at full resolution: the hardest case for a DCT-domain downscale); JPEG quality 90.
Candidates: the reference (full decode + open_clip's bicubic, the runtime's exact path), Pillow's DCT-domain
downscale (`Image.draft`) kept >= k x the resize size for k = 2, 1.5 and 1, `reducing_gap` (2 and 3) on the full
decode, torch's decoder on the CPU (the GPU path's code), and simplejpeg (libjpeg-turbo's M/8 scaling) where it
imports. The student has random weights (the logit figures say how far the pixels move its outputs, not accuracy).
Results: benchmarks/results/decode_choice-<cpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, write_report  # noqa: E402
from export_cpu import SIZES, make_run  # noqa: E402
from PIL import Image  # noqa: E402

from promptkd_edge.export.parity import generated_images  # noqa: E402
from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402
from promptkd_edge.runtime.cpu import cpu_info  # noqa: E402
from promptkd_edge.runtime.preprocess import PreprocessSpec, load_crop, prepare  # noqa: E402
from promptkd_edge.utils.images import FILTERS, crop_axis, decode_resize_crop, decode_rgb, resize_plan  # noqa: E402

FRAMES = ((1920, 1080), (1280, 720))
QUALITY = 90


def frames(folder: Path, count: int, crop: int) -> dict[str, list[Path]]:
    """{"WxH upscaled" | "WxH native": JPEG paths}."""
    out = {}
    small = generated_images(count, (crop, crop), seed=1)
    for w, h in FRAMES:
        native = generated_images(count, (round(h / 1.5), round(w / 1.5)), seed=2)  # 1.5x: exactly h x w
        for kind, images in (("upscaled", [i.resize((w, h), Image.Resampling.BICUBIC) for i in small]),
                             ("native", native)):
            paths = []
            for i, img in enumerate(images):
                paths.append(folder / f"{w}x{h}-{kind}-{i}.jpg")
                img.save(paths[-1], quality=QUALITY)
            out[f"{w}x{h} {kind}"] = paths
    return out


def reducing_gap(gap: float) -> Callable[[Path, PreprocessSpec], np.ndarray]:
    def run(path: Path, spec: PreprocessSpec) -> np.ndarray:
        img = decode_rgb(path)
        (new_h, new_w), filt = resize_plan(img.height, img.width, spec.size, spec.resize_mode, spec.interpolation)
        (y0, lh, _, _), (x0, lw, _, _) = crop_axis(new_h, spec.size[0]), crop_axis(new_w, spec.size[1])
        return np.asarray(img.resize((new_w, new_h), FILTERS[filt], reducing_gap=gap))[y0:y0 + lh, x0:x0 + lw]
    return run


def draft(k: float) -> Callable[[Path, PreprocessSpec], np.ndarray]:
    return lambda path, spec: decode_resize_crop(path, spec.size, spec.resize_mode, spec.interpolation, k)


def simplejpeg_scaled(k: float) -> Callable[[Path, PreprocessSpec], np.ndarray] | None:
    """simplejpeg's decode at libjpeg-turbo's smallest M/8 scale keeping >= k x the resize size, then PIL's
    bicubic from the decoded extent (the full image's geometry, as the runtime's draft path)."""
    try:
        import simplejpeg
    except ImportError:
        return None

    def run(path: Path, spec: PreprocessSpec) -> np.ndarray:
        data = path.read_bytes()
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        (new_h, new_w), filt = resize_plan(h, w, spec.size, spec.resize_mode, spec.interpolation)
        a = simplejpeg.decode_jpeg(data, min_height=math.ceil(new_h * k), min_width=math.ceil(new_w * k))
        m = round(8 * a.shape[1] / w)  # the M of libjpeg-turbo's M/8 scale
        box = (0.0, 0.0, w * m / 8, h * m / 8)
        (y0, lh, _, _), (x0, lw, _, _) = crop_axis(new_h, spec.size[0]), crop_axis(new_w, spec.size[1])
        return np.asarray(Image.fromarray(a).resize((new_w, new_h), FILTERS[filt], box=box))[y0:y0 + lh, x0:x0 + lw]
    return run


def candidates() -> dict[str, tuple[str, Callable[[Path, PreprocessSpec], np.ndarray]]]:
    """name -> (what it is, path -> crop)."""
    out = {
        "reference": ("full PIL decode + open_clip's bicubic (the exact path)", lambda p, s: load_crop(p, s)),
        "draft k=2": ("Pillow draft to >= 2x the resize size (DCT 1/2-1/8) + bicubic", draft(2.0)),
        "draft k=1.5": ("Pillow draft to >= 1.5x the resize size + bicubic (the runtime's)", draft(1.5)),
        "draft k=1": ("Pillow draft to >= 1x the resize size + bicubic", draft(1.0)),
        "reducing_gap 2": ("full decode + resize(reducing_gap=2.0)", reducing_gap(2.0)),
        "reducing_gap 3": ("full decode + resize(reducing_gap=3.0)", reducing_gap(3.0)),
        "torch cpu": ("torchvision.io.decode_jpeg (CPU) + torch antialiased bicubic (the GPU path's code)",
                      lambda p, s: load_crop(p, replace(s, decode="torch-cpu"))),
    }
    for k in (2.0, 1.0):
        fn = simplejpeg_scaled(k)
        if fn is not None:
            out[f"simplejpeg k={k:g}"] = (f"simplejpeg (libjpeg-turbo M/8 scaling) to >= {k:g}x + PIL bicubic", fn)
    return out


def ms_per_image(fn: Callable, paths: list[Path], spec: PreprocessSpec, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            fn(p, spec)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(paths)


def logits(student, vectors, crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    x = torch.from_numpy(prepare(list(crops), spec))
    with torch.no_grad():
        return vectors.logits(student(x)).double().numpy()


def difference(ref_crops, crops, ref_logits, got_logits) -> dict:
    pixels = np.abs(crops.astype(np.int16) - ref_crops)
    a, b = ref_logits - ref_logits.mean(1, keepdims=True), got_logits - got_logits.mean(1, keepdims=True)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"max_abs_pixel_diff": int(pixels.max()), "mean_abs_pixel_diff": round(float(pixels.mean()), 4),
            "max_abs_logit_diff": round(float(np.abs(ref_logits - got_logits).max()), 5),
            "min_centered_logit_cosine": round(float(cosine.min()), 7),
            "top1_agreement": float((ref_logits.argmax(1) == got_logits.argmax(1)).mean())}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# JPEG decode + resize to the {r['crop']} crop, {r['date']}", "",
             f"CPU: {m['cpu']}, {m['cpu_cores']} cores ({r['cores_note']}); flags: {' '.join(m['cpu_speed_flags'])}; "
             f"Pillow {r['pillow']}, torch {m['torch']}, torchvision {r['torchvision']}"
             + (f", simplejpeg {r['simplejpeg']}" if r.get("simplejpeg") else "") + ".",
             f"One thread, best of {r['repeats']} passes over {r['count']} JPEGs (quality {QUALITY}) per set; "
             f"logits: {r['student']} (random weights) at logit scale 100.", "",
             "| frames | candidate | ms/image | x reference | max / mean abs pixel diff | max abs logit diff | "
             "min cosine (centered logits) | top-1 agreement |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['frames']} | {row['candidate']} | {row['ms_per_image']:.2f} | "
                     f"{row['speedup']:.2f} | {row['max_abs_pixel_diff']} / {row['mean_abs_pixel_diff']:.3f} | "
                     f"{row['max_abs_logit_diff']:.4f} | {row['min_centered_logit_cosine']:.6f} | "
                     f"{row['top1_agreement']:.2%} |")
    lines += ["", "Candidates:"] + [f"- {k}: {v}" for k, v in r["candidates"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores-note", default="2 cores shared with other engineers' work while this ran")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    torch.set_num_threads(2)
    count = 4 if args.size == "tiny" else args.count
    arch, dim, depth = SIZES[args.size]
    cands = candidates()
    with tempfile.TemporaryDirectory() as tmp:
        student, vectors = make_run(Path(tmp) / "run", arch, dim, depth)
        spec = PreprocessSpec.from_dict(student.preprocess.to_dict())
        sets = frames(Path(tmp), count, spec.size[0])
        rows = []
        for name, paths in sets.items():
            ref_crops = np.stack([load_crop(p, spec) for p in paths])
            ref_logits = logits(student, vectors, ref_crops, spec)
            ref_ms = ms_per_image(cands["reference"][1], paths, spec, args.repeats)
            for cand, (_, fn) in cands.items():
                crops = np.stack([fn(p, spec) for p in paths])
                ms = ref_ms if cand == "reference" else ms_per_image(fn, paths, spec, args.repeats)
                rows.append({"frames": name, "candidate": cand, "ms_per_image": round(ms, 3),
                             "speedup": round(ref_ms / ms, 3),
                             **difference(ref_crops, crops, ref_logits, logits(student, vectors, crops, spec))})
                print(rows[-1], flush=True)
    try:
        import simplejpeg
        sj = simplejpeg.__version__
    except ImportError:
        sj = None
    import PIL
    import torchvision

    report = {"crop": spec.size[0], "student": arch, "count": count, "repeats": args.repeats,
              "cores_note": args.cores_note, "pillow": PIL.__version__, "torchvision": torchvision.__version__,
              "simplejpeg": sj, "candidates": {k: v[0] for k, v in cands.items()}, "rows": rows}
    cpu = "".join(c if c.isalnum() else "-" for c in cpu_info()["model"].lower()).strip("-")
    cpu = "-".join(filter(None, cpu.split("-")))
    name = f"decode_choice-{cpu}" + ("-tiny" if args.size == "tiny" else "")
    write_report(report, args.out or RESULTS / f"{name}.json", name, markdown)


if __name__ == "__main__":
    main()
