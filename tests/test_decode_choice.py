"""Faster JPEG decodes as precisions: the DCT-domain downscale (Pillow's draft) and torch's decoder (the GPU path, run
here on the CPU) are gated at export on camera-like JPEGs, recorded in the manifest, and used only where the record
passed; exact_preprocess, failed and missing records keep the reference path."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from PIL import Image

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.decode_gate import camera_jpegs
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.run import RunDir, run_data
from promptkd_edge.runtime import Classifier, gpu_decode
from promptkd_edge.runtime import preprocess as pre
from promptkd_edge.runtime.backends import Backend
from promptkd_edge.runtime.preprocess import PreprocessSpec, decode_for, load_crop, prepare
from promptkd_edge.utils import images as image_utils

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = PreprocessSpec(size=224, mean=MEAN, std=STD)
GATES = ("decode-jpeg-draft", "decode-jpeg-torch")
PARITY = 6


@pytest.fixture(scope="module")
def bundle(tiny_run, module_dir) -> Path:
    export_run(tiny_run, module_dir / "bundle", ExportOptions(parity_images=PARITY))
    return module_dir / "bundle"


@pytest.fixture(scope="module")
def camera(bundle, tiny_run, module_dir) -> list[Path]:
    """The gate's camera JPEGs, made again from the same parity images (the export's own were temporary)."""
    spec = PreprocessSpec.load(bundle / "preprocess.json")
    images = parity.collect_images(run_data(RunDir(tiny_run).config), PARITY, 0, spec.size, 0)
    folder = module_dir / "camera"
    folder.mkdir()
    return camera_jpegs(images.parity, folder)


@pytest.fixture(scope="module")
def frames(module_dir) -> list[Path]:
    """Structured frames as cameras write them, one whose sides no DCT scale divides, one too small to scale, and a
    PNG."""
    folder = module_dir / "frames"
    folder.mkdir()
    out = []
    for i, (img, size) in enumerate(zip(parity.generated_images(4, (96, 96), seed=5),
                                        [(1920, 1080), (1280, 720), (1001, 1333), (600, 400)], strict=True)):
        out.append(folder / f"frame{i}.jpg")
        img.resize(size, Image.Resampling.BICUBIC).save(out[-1], quality=90)
    png = folder / "frame.png"
    Image.open(out[0]).save(png)
    return [*out, png]


def _edited(bundle: Path, folder: Path, edit) -> Path:
    """A copy of `bundle` whose manifest's parity list is `edit(list)` (manifest.json is not among its hashes)."""
    copy = folder / "edited"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parity"] = edit(manifest["parity"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _with_draft(passed: bool | None):
    """The parity list with the draft entry passed or failed (None: both decode entries gone, a bundle written before
    them)."""
    def edit(entries: list[dict]) -> list[dict]:
        if passed is None:
            return [e for e in entries if e.get("runtime") not in GATES]
        return [{**e, "passed": passed} if e.get("runtime") == GATES[0] else e for e in entries]
    return edit


def _spy(monkeypatch) -> list:
    """Counts the DCT-domain decodes load_crop makes (and still makes them)."""
    calls = []
    real = pre.decode_resize_crop

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pre, "decode_resize_crop", spy)
    return calls


def test_export_records_each_decode_gate(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    entries = {e.get("runtime"): e for e in manifest["parity"]}
    for gate in GATES:
        e = entries[gate]
        assert e["required"] is False and e["images"] == PARITY and e["jpeg"] == {"size": [1920, 1080], "quality": 90}
        assert e["thresholds"] == parity.THRESHOLDS["fp16"] and e["thresholds_of"] == "fp16"
        assert e["passed"] == (not e["failures"]) and e["max_abs_pixel_diff"] >= 0
    assert entries[GATES[0]]["decode"] == "draft" and entries[GATES[1]]["decode"] == "torch-cpu"
    assert manifest["valid"] is True


@pytest.mark.parametrize("variant", ["draft", "torch-cpu"])
def test_the_shortcut_gives_the_recorded_agreement(bundle, camera, variant):
    """The runtime's own path on the gate's files reproduces the figures the manifest records."""
    recorded = next(e for e in json.loads((bundle / "manifest.json").read_text())["parity"]
                    if e.get("decode") == variant)
    clf = Classifier.from_bundle(bundle, "onnxruntime", exact_preprocess=True)
    reference = {"logits": clf.logits(camera)}
    fast = replace(clf.preprocess, decode=variant)
    got = {"logits": clf.run(prepare(camera, fast, input_format=clf.input_format))["logits"]}
    figures = parity.compare(reference, got, "fp16", "runtime", "camera JPEGs")
    assert figures["top1_agreement"] == recorded["top1_agreement"]
    assert figures["max_abs_logit_diff"] == pytest.approx(recorded["max_abs_logit_diff"], rel=1e-4, abs=1e-6)
    crops, exact = prepare(camera, fast, input_format="uint8"), prepare(camera, clf.preprocess, input_format="uint8")
    assert int(np.abs(crops.astype(int) - exact).max()) == recorded["max_abs_pixel_diff"]


def test_a_passing_record_decodes_jpegs_in_the_dct_domain(bundle, camera, tmp_path, monkeypatch):
    clf = Classifier.from_bundle(_edited(bundle, tmp_path, _with_draft(True)), "onnxruntime")
    assert clf.preprocess.decode == "draft"
    calls = _spy(monkeypatch)
    clf.logits(camera)
    assert calls == camera


@pytest.mark.parametrize("record", ["failed", "missing"])
def test_a_failed_or_missing_record_keeps_the_exact_path(bundle, camera, tmp_path, monkeypatch, record):
    """A failed draft gate, or a bundle written before the gates existed (which must still load): pixel-equal with
    the reference, and the DCT-domain decode never runs."""
    edited = _edited(bundle, tmp_path, _with_draft(False if record == "failed" else None))
    clf = Classifier.from_bundle(edited, "onnxruntime")
    assert clf.preprocess.decode == "exact"
    calls = _spy(monkeypatch)
    got = prepare(camera, clf.preprocess, input_format="uint8")
    want = np.stack([image_utils.resize_crop(image_utils.decode_rgb(p), clf.preprocess.size, "shortest", "bicubic")
                     for p in camera])
    np.testing.assert_array_equal(got, want)
    clf.logits(camera)
    assert calls == []


def test_exact_preprocess_opts_out(bundle, camera, tmp_path, monkeypatch):
    edited = _edited(bundle, tmp_path, _with_draft(True))
    clf = Classifier.from_bundle(edited, "onnxruntime", exact_preprocess=True)
    assert clf.preprocess.decode == "exact"
    calls = _spy(monkeypatch)
    exact = Classifier.from_bundle(edited, "onnxruntime", exact_preprocess=True)
    np.testing.assert_array_equal(clf.logits(camera), exact.logits(camera))
    assert calls == []


class _GpuBackend(Backend):
    """A backend that says it computes on CUDA (what ONNX Runtime's CUDA provider reports)."""

    name, device, description = "onnxruntime", "cuda", "fake cuda"


@pytest.mark.parametrize(("reason", "expected"), [(None, "torch-cuda"), ("torch sees no CUDA device", "draft")])
def test_gpu_backends_decode_on_the_gpu_where_gated_and_possible(bundle, monkeypatch, reason, expected):
    from promptkd_edge.runtime.bundle import open_bundle

    monkeypatch.setattr(gpu_decode, "unavailable", lambda device: reason)
    clf = Classifier(open_bundle(bundle), _GpuBackend())
    assert clf.preprocess.decode == expected
    assert [n for n in clf.notes if "decoded on the CPU" in n] == ([] if reason is None else [
        f"JPEG files are decoded on the CPU, not the GPU: {reason}"])
    assert Classifier(open_bundle(bundle), _GpuBackend(), exact_preprocess=True).preprocess.decode == "exact"


def test_decode_for_uses_only_passing_gates():
    assert decode_for(set()) == ("exact", [])
    assert decode_for({"openvino-bf16"}, gpu=True) == ("exact", [])
    assert decode_for({GATES[0]}) == ("draft", [])
    assert decode_for({GATES[0]}, exact=True) == ("exact", [])
    assert decode_for({GATES[1]}) == ("exact", [])  # torch's decoder is for GPU backends only


def test_draft_decodes_at_a_dct_scale_and_stays_close(frames):
    """1920x1080 and 1280x720 for a 224 crop decode at 1/2 (>= 1.5 x 398x224); 600x400 at full size and a PNG never
    (both bit-equal with the reference); the geometry is the full image's."""
    for frame, at_least, scaled in ((frames[0], (597, 336), (960, 540)), (frames[1], (597, 336), (640, 360))):
        img, full, scale = image_utils._decode(frame, lambda h, w, at_least=at_least: at_least)
        assert (img.size, full, scale) == (scaled, (scaled[1] * 2, scaled[0] * 2), 2)
    fast = replace(SPEC, decode="draft")
    got, want = prepare(frames, fast, input_format="uint8"), prepare(frames, SPEC, input_format="uint8")
    diff = np.abs(got.astype(int) - want)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_array_equal(got[4], want[4])
    assert 0 < diff.max() <= 8 and all(0 < diff[i].mean() < 1.0 for i in range(3)), (diff.max(), diff.mean())


def test_torch_decode_matches_the_reference_within_rounding(frames):
    """The GPU path's code on the CPU: JPEGs off by rounding only, a PNG in the same batch takes the exact path."""
    fast = replace(SPEC, decode="torch-cpu")
    got, want = prepare(frames, fast, input_format="uint8"), prepare(frames, SPEC, input_format="uint8")
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 2 and diff.mean() < 0.3, (diff.max(), diff.mean())
    np.testing.assert_array_equal(got[-1], want[-1])
    np.testing.assert_array_equal(np.stack([load_crop(f, fast) for f in frames]), got)


@pytest.mark.parametrize("decode", ["exact", "draft", "torch-cpu"])
def test_a_corrupt_jpeg_is_one_line_naming_it(frames, tmp_path, decode):
    data = frames[0].read_bytes()
    truncated, garbage = tmp_path / "truncated.jpg", tmp_path / "garbage.jpg"
    truncated.write_bytes(data[:len(data) // 3])
    garbage.write_bytes(data[:3] + b"\x00not a jpeg\nsecond line" * 10)
    spec = replace(SPEC, decode=decode)
    for bad in (truncated, garbage):
        with pytest.raises(PkdError) as info:
            load_crop(bad, spec)
        assert str(info.value).startswith(f"cannot read image {bad}: ") and "\n" not in str(info.value)
        with pytest.raises(PkdError, match=rf"^image 1: cannot read image {bad}"):
            prepare([frames[0], bad], spec)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # never opened (it would block): named as what it is
    with pytest.raises(PkdError, match=rf"^image 1: cannot read image {fifo}: is a FIFO"):
        prepare([frames[0], fifo], spec)


@pytest.mark.parametrize("decode", ["exact", "draft", "torch-cpu"])
def test_load_crop_from_several_threads_gives_the_sequential_results(frames, decode):
    spec = replace(SPEC, decode=decode)
    items = frames * 3
    expected = [load_crop(f, spec) for f in items]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: load_crop(f, spec), items))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)


def test_no_fast_decode_records_no_decode_gate(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from promptkd_edge.cli import app

    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "b"), "--parity-images", "2",
                                      "--no-fast-decode", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runtimes = {e.get("runtime") for e in json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"]}
    assert not runtimes & set(GATES)
    assert Classifier.from_bundle(tmp_path / "b", "onnxruntime").preprocess.decode == "exact"


def test_camera_jpegs_are_1080p_quality_90(tmp_path):
    paths = camera_jpegs([Image.open(write_images(tmp_path / "src", 1, size=40) / "part0" / "img000.png")], tmp_path)
    with Image.open(paths[0]) as img:
        assert (img.format, img.size) == ("JPEG", (1920, 1080))


@pytest.mark.parametrize("flag", [[], ["--exact-preprocess"]])
def test_pkd_predict_exact_preprocess_reaches_the_classifier(bundle, camera, monkeypatch, flag):
    from typer.testing import CliRunner

    from promptkd_edge.cli import app
    from promptkd_edge.runtime import classifier

    asked = []
    real = classifier.decode_for
    monkeypatch.setattr(classifier, "decode_for", lambda passed, **kw: asked.append(kw["exact"]) or real(passed, **kw))
    result = CliRunner().invoke(app, ["predict", str(bundle), str(camera[0]), "--backend", "onnxruntime", "--json",
                                      *flag], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert asked == [bool(flag)]


def test_a_torchvision_that_cannot_decode_there_is_named(monkeypatch):
    """The decoder is probed on the device before it is chosen (a torchvision without nvJPEG fails on CUDA)."""
    import torchvision.io

    gpu_decode.unavailable.cache_clear()
    assert gpu_decode.unavailable("cpu") is None
    gpu_decode.unavailable.cache_clear()

    def broken(*args, **kwargs):
        raise RuntimeError("decode_jpeg: torchvision not compiled with GPU support\nmore")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    try:
        assert gpu_decode.unavailable("cpu") == ("torchvision cannot decode JPEGs on cpu (decode_jpeg: torchvision not "
                                                 "compiled with GPU support)")
    finally:
        gpu_decode.unavailable.cache_clear()
