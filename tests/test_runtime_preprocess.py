"""The torch-free preprocess matches open_clip's eval transform; bad inputs are one-line PkdErrors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptkd_edge.data.views import eval_transform
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare, to_rgb

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TOL = 1e-6


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Blocky noise plus a gradient: exercises both sharp edges and smooth areas of the resampling filters."""
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    grad = np.linspace(0, 120, w, dtype=np.float32)[None, :] + np.linspace(0, 100, h, dtype=np.float32)[:, None]
    if channels > 1:
        grad = grad[..., None]
    return np.clip(rng.integers(0, 136, shape) + grad, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, object]:
    """name -> image as a caller would pass it (PIL image, array, or path)."""
    tmp = tmp_path_factory.mktemp("imgs")
    palette = Image.fromarray(_noise(66, 55, seed=7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.save(tmp / "palette.png")
    Image.fromarray(_noise(45, 61, seed=8)).save(tmp / "photo.jpg", quality=90)
    return {
        "landscape": Image.fromarray(_noise(61, 97, seed=1)),
        "portrait": Image.fromarray(_noise(83, 50, seed=2)),
        "square": Image.fromarray(_noise(64, 64, seed=3)),
        "small": Image.fromarray(_noise(9, 13, seed=4)),
        "odd_crop_tall": Image.fromarray(_noise(35, 32, seed=12)),  # crop offsets round(1.5) / round(3.5):
        "odd_crop_wide": Image.fromarray(_noise(24, 47, seed=13)),  # int(round()) differs from //
        "one_pixel": Image.fromarray(_noise(1, 1, seed=5)),
        "gray": Image.fromarray(_noise(45, 70, channels=1, seed=6)),
        "rgba": Image.fromarray(_noise(40, 77, channels=4, seed=9), "RGBA"),
        "palette_png": tmp / "palette.png",
        "jpeg_path": str(tmp / "photo.jpg"),
        "array_rgb": _noise(37, 52, seed=10),
        "array_gray": _noise(52, 37, channels=1, seed=11),
    }


def _reference_rgb(item: object) -> Image.Image:
    """What the training/eval data path feeds eval_transform: the image decoded and converted to RGB."""
    if isinstance(item, str | Path):
        with Image.open(item) as img:
            return img.convert("RGB")
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    return item.convert("RGB")


def _reference(items: list[object], pre: Preprocess, transform=None) -> np.ndarray:
    transform = transform or eval_transform(pre)
    return np.stack([transform(_reference_rgb(x)).numpy() for x in items])


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_matches_open_clip_eval_transform(images, resize_mode, interpolation, size):
    pre = Preprocess(size=size, mean=MEAN, std=STD, interpolation=interpolation, resize_mode=resize_mode)
    spec = PreprocessSpec.from_dict(pre.to_dict())
    items = list(images.values())
    got = prepare(items, spec)
    want = _reference(items, pre)
    assert got.dtype == np.float32 and got.shape == (len(items), 3, *size)
    assert got.flags.c_contiguous
    diffs = np.abs(got - want).reshape(len(items), -1).max(axis=1)
    assert diffs.max() <= TOL, dict(zip(images, diffs.tolist(), strict=True))


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_full_size_clip_default(resize_mode):
    pre = Preprocess(size=(224, 224), mean=MEAN, std=STD, resize_mode=resize_mode)
    items = [Image.fromarray(_noise(480, 640, seed=20)), Image.fromarray(_noise(500, 301, seed=21)),
             Image.fromarray(_noise(150, 100, seed=22))]
    got = prepare(items, PreprocessSpec.from_dict(pre.to_dict()))
    assert np.abs(got - _reference(items, pre)).max() <= TOL


def test_nearest_matches_torchvision(images):
    """open_clip has no 'nearest'; the reference is torchvision's Resize(NEAREST), CenterCrop, ToTensor, Normalize."""
    from torchvision import transforms as T

    ref = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize(MEAN, STD)])
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD, interpolation="nearest")
    items = list(images.values())
    assert np.abs(prepare(items, spec) - _reference(items, None, ref)).max() <= TOL


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_uint8_and_pixel_paths_equal_the_float_path(images, resize_mode):
    spec = PreprocessSpec(size=(24, 40), mean=MEAN, std=STD, resize_mode=resize_mode)
    items = list(images.values())
    u8 = prepare(items, spec, input_format="uint8")
    assert u8.dtype == np.uint8 and u8.shape == (len(items), 24, 40, 3)
    rebuilt = (u8.transpose(0, 3, 1, 2).astype(np.float32) / 255 - np.float32(MEAN).reshape(1, 3, 1, 1)) \
        / np.float32(STD).reshape(1, 3, 1, 1)
    assert np.abs(rebuilt - prepare(items, spec)).max() <= TOL
    pixels = prepare(items, spec, input_format="pixels")  # what DeepStream's nvinfer hands the engine
    assert pixels.dtype == np.float32 and pixels.shape == (len(items), 3, 24, 40)
    np.testing.assert_array_equal(pixels, u8.transpose(0, 3, 1, 2).astype(np.float32))
    with pytest.raises(PkdError, match="unknown input format 'rgb'"):
        prepare(items, spec, input_format="rgb")


def test_longest_pads_with_black():
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD, resize_mode="longest")
    out = prepare([np.full((16, 32, 3), 200, np.uint8)], spec, input_format="uint8")[0]
    assert (out[:8] == 0).all() and (out[24:] == 0).all() and (out[8:24] == 200).all()


def test_single_image_is_a_batch_of_one(images):
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD)
    assert prepare(images["square"], spec).shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(prepare(images["square"], spec), prepare([images["square"]], spec))


def test_to_rgb_modes(images):
    for name, item in images.items():
        img = to_rgb(item)
        assert isinstance(img, Image.Image) and img.mode == "RGB", name
    gray = to_rgb(images["array_gray"])
    rgb = np.asarray(gray)
    assert (rgb[..., 0] == images["array_gray"]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.array_equal(np.asarray(to_rgb(images["array_gray"][..., None])), rgb)


def test_spec_roundtrip_and_load(tmp_path):
    spec = PreprocessSpec(size=(224, 224), mean=MEAN, std=STD, interpolation="bicubic", resize_mode="shortest")
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps({"schema_version": 1, **spec.to_dict()}))
    loaded = PreprocessSpec.load(path)
    assert loaded == spec and loaded.to_dict() == spec.to_dict()
    assert PreprocessSpec.from_dict({"size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}).size == (32, 32)
    assert hash(PreprocessSpec.from_dict(spec.to_dict())) == hash(spec)


@pytest.mark.parametrize(("cfg", "match"), [
    ({"size": [224], "mean": MEAN, "std": STD}, "size must be two positive integers"),
    ({"size": [224, 224], "mean": MEAN[:2], "std": STD}, "mean must be three numbers"),
    ({"size": [224, 224], "mean": MEAN, "std": [1, 0, 1]}, "std must not contain 0"),
    ({"size": [224, 224], "mean": MEAN, "std": STD, "resize_mode": "crop"}, "resize_mode 'crop'"),
    ({"size": [224, 224], "mean": MEAN, "std": STD, "interpolation": "lanczos"}, "interpolation 'lanczos'"),
    ({"mean": MEAN, "std": STD}, "lacks 'size'"),
])
def test_spec_errors(cfg, match):
    with pytest.raises(PkdError, match=match):
        PreprocessSpec.from_dict(cfg)


def test_load_errors(tmp_path):
    with pytest.raises(PkdError, match="preprocess.json not found"):
        PreprocessSpec.load(tmp_path / "preprocess.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PkdError, match="unreadable"):
        PreprocessSpec.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"size": [224, 224], "mean": MEAN, "std": STD, "resize_mode": "x"}))
    with pytest.raises(PkdError, match=r"odd\.json: preprocess resize_mode 'x'"):
        PreprocessSpec.load(tmp_path / "odd.json")
    assert PreprocessSpec(size=32, mean=MEAN, std=STD).size == (32, 32)


def _one_line_error(item: object, spec: PreprocessSpec) -> str:
    with pytest.raises(PkdError) as info:
        prepare([item], spec)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs(tmp_path):
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD)
    msg = _one_line_error(np.zeros((8, 8, 4), np.uint8), spec)
    assert "has 4 channels; pass RGB (drop alpha" in msg
    assert "expects uint8" in _one_line_error(np.zeros((8, 8, 3), np.float32), spec)
    assert "got float32" in _one_line_error(np.zeros((8, 8, 3), np.float32), spec)
    assert "got shape [8]" in _one_line_error(np.zeros(8, np.uint8), spec)
    assert "got shape [1, 8, 8, 3]" in _one_line_error(np.zeros((1, 8, 8, 3), np.uint8), spec)
    assert "2 channels" in _one_line_error(np.zeros((8, 8, 2), np.uint8), spec)
    assert "empty" in _one_line_error(np.zeros((0, 8, 3), np.uint8), spec)
    missing = tmp_path / "nope.png"
    assert f"image not found: {missing}" in _one_line_error(missing, spec)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image\nsecond line")
    assert f"cannot read image {broken}" in _one_line_error(str(broken), spec)
    assert "cannot use a bytes" in _one_line_error(b"\x89PNG", spec)
    with pytest.raises(PkdError, match="^no images given$"):
        prepare([], spec)


def test_batch_error_names_the_image():
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD)
    with pytest.raises(PkdError, match=r"^image 1: .*4 channels"):
        prepare([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)], spec)


def test_imports_without_torch():
    code = ("import sys, promptkd_edge.runtime.preprocess; "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
