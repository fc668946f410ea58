"""The native C++ library (export/cpp) held to the Python runtime: bundle refusals string for string, decoding and
resizing bit for bit, logits of the OpenVINO backend bit for bit at each gated precision, `pkd-classify --json` as
`pkd predict --json`, threads, bad buffers, and an install consumed by find_package. The library is built once per
source hash (tests/native_build.py, under .cache/test); a missing dependency fails the tests with the apt packages
to install."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from native_build import NativeBuildError, build, openvino_cmake_dir
from PIL import Image

from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.openvino_backend import has_bf16
from promptkd_edge.utils.images import decode_rgb, resize_crop

REPO = Path(__file__).resolve().parent.parent
needs_bf16 = pytest.mark.skipif(not has_bf16(), reason="this CPU has no native bf16 (AMX / AVX512_BF16)")


@pytest.fixture(scope="module")
def native() -> Path:
    try:
        return build()
    except NativeBuildError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def bundles(tiny_run, module_dir) -> dict[str, Path]:
    """Tiny bundles: FP32 and INT8 (normalized input, logits head), uint8 input with the embeddings head (logits are
    computed from the class vectors), pixels input with both heads."""
    out = {}
    for name, kw in (("fp32", {}), ("int8", {"precision": "int8"}),
                     ("u8", {"input_format": "uint8", "head": "embeddings"}),
                     ("px", {"input_format": "pixels", "head": "both"})):
        export_run(tiny_run, module_dir / name, ExportOptions(parity_images=16, calibration_images=16,
                                                              fast_decode=False, **kw))
        out[name] = module_dir / name
    return out


@pytest.fixture(scope="module")
def images(module_dir) -> dict[str, Path]:
    """Files of odd sizes: JPEG 4:2:0 and 4:2:2, PNG RGB/RGBA/palette/16-bit gray, BMP, GIF, a tall image whose
    resize Pillow 13 starts with the vertical pass, and a WebP (refused)."""
    rng = np.random.default_rng(5)
    root = module_dir / "images"
    root.mkdir()

    def smooth(h: int, w: int) -> np.ndarray:
        base = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))

    files = {"420.jpg": (61, 45), "422.jpg": (37, 50), "rgb.png": (29, 51), "tall.png": (300, 40),
             "rgba.png": (33, 34), "pal.png": (40, 27), "gray16.png": (23, 31), "rgb.bmp": (19, 21),
             "rgb.gif": (25, 26), "x.webp": (20, 20)}
    for name, (h, w) in files.items():
        a, path = smooth(h, w), root / name
        if name == "420.jpg":
            Image.fromarray(a).save(path, quality=87, subsampling=2)
        elif name == "422.jpg":
            Image.fromarray(a).save(path, quality=90, subsampling=1)
        elif name == "rgba.png":
            Image.fromarray(np.dstack([a, rng.integers(0, 256, (h, w, 1), dtype=np.uint8)])).save(path)
        elif name == "pal.png":
            Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        elif name == "gray16.png":
            Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
        else:
            Image.fromarray(a).save(path)
    return {name: root / name for name in files}


def run(native: Path, tool: str, *args, **kw) -> subprocess.CompletedProcess:
    exe = native / tool
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


def check(native: Path, *args) -> subprocess.CompletedProcess:
    r = run(native, "pkd-native-check", *args)
    assert r.returncode == 0, r.stderr
    return r


MODEL_IMAGES = ("420.jpg", "422.jpg", "rgb.png", "tall.png", "rgba.png")


def test_decoding_equals_the_python_runtimes(native, images, tmp_path):
    for name, path in images.items():
        if name == "x.webp":
            r = run(native, "pkd-native-check", "decode", path, tmp_path / "o.rgb")
            assert r.returncode == 2 and r.stderr.count("\n") == 1
            assert r.stderr.startswith(f"error: cannot read image {path}: WebP is not read by the native reader")
            continue
        w, h = map(int, check(native, "decode", path, tmp_path / "o.rgb").stdout.split())
        got = np.fromfile(tmp_path / "o.rgb", np.uint8).reshape(h, w, 3)
        assert np.array_equal(got, np.asarray(decode_rgb(path))), name


# (height, width) of random images x (size, resize_mode, interpolation): upscale, downscale, an odd crop offset
# that rounds half to even (33 -> 32), tall (vertical pass first), wide, padding ("longest"), non-square sizes, and a
# 1 x 600000 line whose full resize exceeds the 2^24-pixel budget (only the crop box is resampled)
RESIZE_SHAPES = [(33, 32), (61, 45), (300, 40), (37, 211), (20, 13), (32, 32), (480, 640), (1, 600000)]
RESIZE_SPECS = [((32, 32), "shortest", "bicubic"), ((32, 32), "shortest", "bilinear"),
                ((32, 32), "shortest", "nearest"), ((24, 24), "squash", "bicubic"), ((32, 32), "longest", "bicubic"),
                ((24, 40), "shortest", "bilinear"), ((40, 24), "longest", "nearest")]


def test_resize_crop_of_strided_buffers_equals_pillow(native, tmp_path):
    rng = np.random.default_rng(0)
    for shape in RESIZE_SHAPES:
        a = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        pad = 7  # bytes after each row, filled with noise: a camera frame's row stride
        padded = np.concatenate([a.reshape(shape[0], -1), rng.integers(0, 256, (shape[0], pad), dtype=np.uint8)], 1)
        padded.tofile(tmp_path / "in.rgb")
        for size, mode, interp in RESIZE_SPECS:
            if shape == (1, 600000) and mode != "shortest":
                continue
            check(native, "resize", tmp_path / "in.rgb", shape[1], shape[0], shape[1] * 3 + pad, *size, interp, mode,
                  tmp_path / "out.rgb")
            got = np.fromfile(tmp_path / "out.rgb", np.uint8).reshape(*size, 3)
            want = resize_crop(Image.fromarray(a), size, mode, interp)
            assert np.array_equal(got, want), (shape, size, mode, interp)


def _python_logits(bundle: Path, files: list[Path], precision: str | None, backend: str = "openvino") -> np.ndarray:
    clf = Classifier.from_bundle(bundle, backend, precision=precision, exact_preprocess=True)
    try:
        return clf.logits([str(f) for f in files])
    finally:
        clf.close()


def _native_logits(native: Path, bundle: Path, files: list[Path], precision: str, tmp_path: Path) -> tuple:
    r = check(native, "logits", bundle, precision, 5, tmp_path / "l.f32", *files)
    return np.fromfile(tmp_path / "l.f32", np.float32).reshape(len(files), -1), r.stdout.strip()


@pytest.mark.parametrize("bundle, native_precision, python_precision", [
    ("fp32", "fp32", "fp32"), pytest.param("fp32", "bf16", "bf16", marks=needs_bf16),
    ("int8", "int8", "fp32"), pytest.param("int8", "auto", None, marks=needs_bf16)])
def test_openvino_logits_equal_the_python_runtimes(native, bundles, images, tmp_path, bundle, native_precision,
                                                   python_precision):
    files = [images[n] for n in MODEL_IMAGES]
    got, description = _native_logits(native, bundles[bundle], files, native_precision, tmp_path)
    want = _python_logits(bundles[bundle], files, python_precision)
    assert np.array_equal(got, want), np.abs(got - want).max()
    clf = Classifier.from_bundle(bundles[bundle], "openvino", precision=python_precision)
    assert description == clf.description  # e.g. "openvino 2026.4.1 CPU bf16": the same precision ran


def test_fp32_logits_are_onnxruntimes_within_the_fp32_gate(native, bundles, images, tmp_path):
    files = [images[n] for n in MODEL_IMAGES]
    got, _ = _native_logits(native, bundles["fp32"], files, "fp32", tmp_path)
    want = _python_logits(bundles["fp32"], files, None, backend="onnxruntime")
    assert np.abs(got - want).max() <= 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("bundle", ["u8", "px"])
def test_other_input_formats_and_heads_equal_the_python_runtimes(native, bundles, images, tmp_path, bundle):
    files = [images[n] for n in MODEL_IMAGES]
    got, _ = _native_logits(native, bundles[bundle], files, "fp32", tmp_path)
    want = _python_logits(bundles[bundle], files, "fp32")
    if bundle == "px":  # the graph's own logits
        assert np.array_equal(got, want)
    else:  # logit_scale * E @ W^T: float64 sums here, numpy's float32 matmul there
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    check(native, "embed", bundles[bundle], "fp32", tmp_path / "e.f32", *files)  # the graph's first or second output
    clf = Classifier.from_bundle(bundles[bundle], "openvino", precision="fp32", exact_preprocess=True)
    want = clf.embed([str(f) for f in files])
    assert np.array_equal(np.fromfile(tmp_path / "e.f32", np.float32).reshape(want.shape), want)


def test_embed_of_a_logits_only_bundle_is_the_python_runtimes_refusal(native, bundles, images, tmp_path):
    r = run(native, "pkd-native-check", "embed", bundles["fp32"], "fp32", tmp_path / "e.f32", images["rgb.png"])
    with pytest.raises(PkdError) as e:
        Classifier.from_bundle(bundles["fp32"], "openvino").embed([str(images["rgb.png"])])
    assert (r.returncode, r.stderr) == (2, f"error: {e.value}\n")


def _pkd_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptkd_edge", "predict", *args, "--backend", "openvino",
                           "--exact-preprocess"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"})


def test_pkd_classify_json_is_pkd_predicts(native, bundles, images, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    files = [str(images["420.jpg"]), str(tmp_path / "missing.png"), str(images["tall.png"]),
             str(tmp_path / "notes.jpg"), str(images["gray16.png"])]
    bundle = str(bundles["fp32"]) + "/"  # printed as Python's Path prints it
    r = run(native, "pkd-classify", bundle, *files, "--json", "--top-k", "2")
    py = _pkd_predict(bundle, *files, "--json", "--top-k", "2")
    assert (r.returncode, py.returncode) == (3, 3), r.stderr + py.stderr
    got, want = json.loads(r.stdout), json.loads(py.stdout)
    probabilities = [p.pop("probabilities") for d in (got, want) for p in d["predictions"]]
    half = len(probabilities) // 2
    assert np.allclose(probabilities[:half], probabilities[half:], rtol=1e-12, atol=0)
    assert got == want
    assert r.stderr.splitlines() == [line for line in py.stderr.splitlines() if line.startswith("skipped")]
    # none readable: one line and exit 2, as pkd predict
    r = run(native, "pkd-classify", bundle, files[1], files[3])
    py = _pkd_predict(bundle, files[1], files[3])
    assert (r.returncode, py.returncode) == (2, 2)
    assert r.stderr == " ".join(py.stderr.split()) + "\n"


def _manifest(d: Path, change) -> None:
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _edit_json(d: Path, name: str, change) -> None:
    """Change a listed JSON file and record its new sha256 (only the content check is left to refuse it)."""
    import hashlib

    data = json.loads((d / name).read_text())
    change(data)
    (d / name).write_text(json.dumps(data))
    _manifest(d, lambda m: m["files"].update({name: hashlib.sha256((d / name).read_bytes()).hexdigest()}))


TAMPERS = {
    "missing model": lambda d: (d / "model.onnx").unlink(),
    "modified model": lambda d: (d / "model.onnx").open("ab").write(b"x"),
    "modified classes": lambda d: (d / "classes.json").write_text((d / "classes.json").read_text() + " "),
    "no manifest": lambda d: (d / "manifest.json").unlink(),
    "foreign manifest": lambda d: _manifest(d, lambda m: m.update(format="x")),
    "no files": lambda d: _manifest(d, lambda m: m.pop("files")),
    "unlisted preprocess": lambda d: _manifest(d, lambda m: m["files"].pop("preprocess.json")),
    "outside": lambda d: _manifest(d, lambda m: m["model"].update(file="../x.onnx")),
    "windows drive": lambda d: _manifest(d, lambda m: m["model"].update(file="C:model.onnx")),
    "invalid": lambda d: _manifest(d, lambda m: m.update(valid=False)),
    "mistyped": lambda d: _manifest(d, lambda m: m["model"].update(num_classes="10")),
    "mistyped float": lambda d: _manifest(d, lambda m: m["model"].update(logit_scale=[1e-05, 1e16, 0.5, "it's"])),
    "model lacks": lambda d: _manifest(d, lambda m: [m["model"].pop(k) for k in ("head", "inputs")]),
    "bad parity entry": lambda d: _manifest(d, lambda m: m["parity"][0].update(thresholds={"a": "b"})),
    "bad input": lambda d: _manifest(d, lambda m: m["model"].update(inputs=[7])),
    "schema 2": lambda d: _manifest(d, lambda m: m.update(schema_version=2)),
    "unlisted engine": lambda d: _manifest(d, lambda m: m.update(engines=[{"file": "e.plan", "precision": "fp16"}])),
    "vectors not a name": lambda d: _edit_json(d, "classes.json", lambda c: c.update(vectors_file=3)),
    "no names": lambda d: _edit_json(d, "classes.json", lambda c: c.pop("names")),
    "classes schema": lambda d: _edit_json(d, "classes.json", lambda c: c.update(schema_version="2")),
    "bad size": lambda d: _edit_json(d, "preprocess.json", lambda p: p.update(size=[32, 0])),
    "std 0": lambda d: _edit_json(d, "preprocess.json", lambda p: p.update(std=[1, 0, 1])),
    "mean string": lambda d: _edit_json(d, "preprocess.json", lambda p: p.update(mean="abc")),
    "no mean": lambda d: _edit_json(d, "preprocess.json", lambda p: p.pop("mean")),
    "interpolation": lambda d: _edit_json(d, "preprocess.json", lambda p: p.update(interpolation="lanczos")),
}


def test_tampered_bundles_are_refused_with_the_python_runtimes_lines(native, bundles, images, tmp_path):
    for name, tamper in TAMPERS.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(bundles["fp32"], d)
        tamper(d)
        with pytest.raises(PkdError) as e:
            Classifier.from_bundle(str(d) + "/", "openvino", precision="fp32")
        r = run(native, "pkd-classify", str(d) + "/", images["rgb.png"], "--precision", "fp32")
        assert (r.returncode, r.stderr) == (2, f"error: {e.value}\n"), name
    # a broken manifest: the reason after "is unreadable:" is the JSON parser's own
    (d / "manifest.json").write_text("{")
    r = run(native, "pkd-classify", d, images["rgb.png"])
    assert r.returncode == 2 and r.stderr.startswith(f"error: {d}/manifest.json: bundle manifest {d}/manifest.json is "
                                                     "unreadable: ") and r.stderr.count("\n") == 1
    # allow_invalid loads a bundle kept after a failed gate, as Python's allow_invalid does
    d = tmp_path / "invalid"
    assert run(native, "pkd-classify", d, images["rgb.png"], "--allow-invalid").returncode == 0
    Classifier.from_bundle(d, "openvino", allow_invalid=True).close()


def test_one_classifier_from_several_threads_gives_one_threads_results(native, bundles, images):
    r = check(native, "threads", bundles["fp32"], 4, 6, *(images[n] for n in MODEL_IMAGES))
    assert r.stdout.strip() == "calls 48 differ 0"


@pytest.mark.parametrize("width, height, stride, size, says", [
    (10, 10, 29, 0, "row stride of 29 bytes is less than the 30 bytes of a 10-pixel RGB row (3 bytes a pixel)"),
    (10, 10, 40, 389, "image buffer of 389 bytes is too small for 10x10 RGB with rows 40 bytes apart (390 bytes)"),
    (0, 10, 0, 0, "image of 0x10 pixels; width and height must be positive")])
def test_a_buffer_of_the_wrong_size_or_stride_is_one_line(native, bundles, width, height, stride, size, says):
    r = run(native, "pkd-native-check", "view", bundles["fp32"], width, height, stride, size)
    assert (r.returncode, r.stderr) == (2, f"error: {says}\n")
    ok = run(native, "pkd-native-check", "view", bundles["fp32"], 10, 10, 30 if stride < 30 else stride, 390)
    assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr  # the same buffer, described right, is classified


def test_unreadable_files_and_bad_arguments_are_one_line_exit_2(native, bundles, images, tmp_path):
    truncated = tmp_path / "cut.jpg"  # its entropy-coded data ends early: Pillow refuses it, libjpeg would pad it
    truncated.write_bytes(images["420.jpg"].read_bytes()[:-300])
    empty = tmp_path / "empty"
    empty.mkdir()
    py = _pkd_predict(str(bundles["fp32"]), str(truncated))
    assert py.returncode == 2 and "image file is truncated (" in py.stderr
    for args, says in [((truncated,), re.sub(r" \(\d+ bytes not processed\)", "", " ".join(py.stderr.split()))[7:]),
                       ((empty,), None),  # a folder without images
                       ((images["rgb.png"], "--top-k", "0"), "--top-k must be >= 1"),
                       ((images["rgb.png"], "--backend", "torch"), "unknown backend 'torch'; choose one of openvino, "
                                                                  "tensorrt"),
                       ((images["rgb.png"], "--backend", "tensorrt"), None)]:
        r = run(native, "pkd-classify", bundles["fp32"], *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
        if says:
            assert r.stderr == f"error: {says}\n"
    assert "-DPKD_WITH_TENSORRT=ON" in r.stderr  # this build has no TensorRT: it says how to get one


def _doc_block(lang: str, needle: str) -> str:
    text = (REPO / "docs" / "native.md").read_text()
    return next(b for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S) if needle in b)


def test_install_and_the_documented_find_package_consumer(native, bundles, images, tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(native), "--prefix", str(prefix)], check=True, capture_output=True)
    assert (prefix / "include" / "promptkd_edge" / "classifier.hpp").is_file()
    assert not list(prefix.rglob("backend.hpp"))  # the backend interface stays internal
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(_doc_block("cmake", "find_package(promptkd_edge"))
    (app / "main.cpp").write_text(_doc_block("cpp", "int main"))
    for cmd in (["cmake", "-S", str(app), "-B", str(app / "b"), "-G", "Ninja", f"-DCMAKE_PREFIX_PATH={prefix}",
                 f"-DOpenVINO_DIR={openvino_cmake_dir()}"], ["cmake", "--build", str(app / "b")]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([str(app / "b" / "my_app"), str(bundles["fp32"]), str(images["rgb.png"])],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    clf = Classifier.from_bundle(bundles["fp32"], "openvino", exact_preprocess=True)
    top = clf.predict([str(images["rgb.png"])], top_k=3)[0]
    assert [line.split()[0] for line in out.stdout.splitlines()] == top.labels
    assert np.allclose([float(line.split()[1]) for line in out.stdout.splitlines()], top.probabilities, rtol=1e-5)
    # the installed pkd-classify finds its library and the openvino wheel's without LD_LIBRARY_PATH
    r = subprocess.run([str(prefix / "bin" / "pkd-classify"), str(bundles["fp32"]), str(images["rgb.png"]), "--json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["labels"][0] == top.label
