"""Issue 18, images and folders: 16-bit and float images keep their content (7), symlink loops do not multiply the
data (8), the base/novel note names the base classes (14), a 1 x 1,000,000 image costs no more than a crop (16),
one rule for unreadable images in `pkd predict` (23), and a path that is not a file says what it is (24)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from PIL import Image
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.data.decode import read_rgb
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare, to_rgb
from promptkd_edge.utils.image_files import list_images

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PACKAGE_ROOT = Path(__import__("promptkd_edge").__file__).resolve().parents[1]  # the code under test
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # table cells are not folded inside a path


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def bundle(tiny_run, module_dir) -> Path:
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    export_run(tiny_run, module_dir / "bundle", ExportOptions(parity_images=2))
    return module_dir / "bundle"


def _gray_ramp(h: int = 40, w: int = 56) -> np.ndarray:
    """8-bit gray levels 0..255 in a pattern with edges (so a resize mixes them)."""
    x = (np.arange(h)[:, None] * 37 + np.arange(w)[None, :] * 11) % 256
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def deep_images(tmp_path_factory) -> dict[str, Path]:
    """The same picture as an 8-bit PNG, a 16-bit PNG and TIFF (x 257) and a float32 TIFF (/ 255)."""
    tmp = tmp_path_factory.mktemp("deep")
    g = _gray_ramp()
    Image.fromarray(g).save(tmp / "8bit.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp / "16bit.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp / "16bit_tiff.tif")
    Image.fromarray(g.astype(np.float32) / 255).save(tmp / "float.tif")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp / "mid16.png")
    return {p.stem: p for p in tmp.iterdir()}


# ------------------------------------------------------------------------------------------ 7: 16-bit and float


def test_16bit_and_float_images_decode_like_their_8bit_twin(deep_images):
    want = np.asarray(Image.open(deep_images["8bit"]).convert("RGB"))
    for name in ("16bit", "16bit_tiff", "float"):
        path = deep_images[name]
        assert Image.open(path).mode in ("I;16", "F")
        img, why = read_rgb(path)  # the training / eval data path
        assert why is None and np.array_equal(np.asarray(img), want), name
        assert np.array_equal(np.asarray(to_rgb(path)), want), name  # the runtime
        assert np.array_equal(np.asarray(to_rgb(Image.open(path))), want), name  # a PIL image an app hands over
    assert np.asarray(read_rgb(deep_images["mid16"])[0])[0, 0].tolist() == [128, 128, 128]  # not white


def test_16bit_and_float_images_give_the_8bit_model_input(deep_images):
    spec = PreprocessSpec(size=(32, 32), mean=MEAN, std=STD)
    want = prepare(deep_images["8bit"], spec)
    for name in ("16bit", "float"):
        np.testing.assert_array_equal(prepare(deep_images[name], spec), want)
    from promptkd_edge.data.datasets import LabeledViews

    views = LabeledViews([(deep_images[n], 0) for n in ("8bit", "16bit", "float")], [Preprocess((32, 32), MEAN, STD)])
    tensors = [views[i]["views"][0].numpy() for i in range(3)]
    assert np.array_equal(tensors[0], tensors[1]) and np.array_equal(tensors[0], tensors[2])
    assert np.abs(tensors[0] - want[0]).max() <= 1e-6


def test_images_without_a_standard_range_are_refused_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 255.0, np.float32)).save(tmp_path / "f255.tif")
    img, why = read_rgb(tmp_path / "f255.tif")
    assert img is None and "outside the [0, 1] range" in why
    with pytest.raises(PkdError, match="cannot read image .*f255.tif: float image with pixels in \\[255, 255\\]"):
        to_rgb(tmp_path / "f255.tif")
    with pytest.raises(PkdError, match="32-bit integer image"):
        to_rgb(Image.fromarray(np.full((4, 4), 100, np.int32)))
    with pytest.raises(PkdError, match="got uint16; scale it to 0-255 first \\(16-bit data: \\(x / 257\\)"):
        prepare(np.zeros((4, 4), np.uint16), PreprocessSpec(size=(8, 8), mean=MEAN, std=STD))


def test_pkd_predict_gives_16bit_and_float_images_the_8bit_prediction(bundle, deep_images):
    result = cli("predict", bundle, *(deep_images[n] for n in ("8bit", "16bit", "float")), "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == 3
    for row in rows[1:]:
        assert row["labels"] == rows[0]["labels"] and row["probabilities"] == rows[0]["probabilities"]


# ------------------------------------------------------------------------------------------------ 8: symlink loops


def _looped_folder(root: Path) -> Path:
    """4 images, and links to what is already there: a loop back to the top, a sibling folder, one image twice.
    (One loop only: today's walk follows a loop ~40 levels deep, two would branch into billions of paths.)"""
    write_images(root, 4)  # part0/img000.png, part0/img002.png, part1/...
    (root / "part1" / "loop").symlink_to(root, target_is_directory=True)
    (root / "part1" / "sibling").symlink_to(root / "part0", target_is_directory=True)
    (root / "part1" / "again.png").symlink_to(root / "part0" / "img000.png")
    return root


def test_a_symlink_loop_lists_each_real_image_once(tmp_path, caplog):
    root = _looped_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        found = list_images(root)
    assert sorted(p.relative_to(root).as_posix() for p in found) == [
        "part0/img000.png", "part0/img002.png", "part1/img001.png", "part1/img003.png"]
    assert found == sorted(found) and found.skipped_links == 3
    assert "3 link(s) to folders or images already listed skipped" in caplog.text
    write_images(tmp_path / "plain", 2)
    write_images(tmp_path / "elsewhere", 2, seed=1)
    (tmp_path / "plain" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # followed, once
    plain = list_images(tmp_path / "plain")
    assert len(plain) == 4 and plain.skipped_links == 0 and plain.note(tmp_path) is None


def test_a_symlink_loop_in_an_image_folder_does_not_leak_into_other_classes(tmp_path):
    root = write_images(tmp_path / "lab", 6, classes=["cat", "dog"])
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)  # would walk dog's images as cats
    (root / "dog" / "me").symlink_to(root / "dog", target_is_directory=True)
    labeled = LabeledImages.scan(root)
    assert {(p.parent.name, label) for p, label in labeled.samples} == {("cat", 0), ("dog", 1)}
    assert len(labeled.samples) == 6 and labeled.skipped_links == 2


def test_pkd_predict_and_eval_count_each_image_once(tiny_run, bundle, tmp_path):
    root = _looped_folder(tmp_path / "data")
    result = cli("predict", bundle, root, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 4
    from conftest import NAMES

    labeled = write_images(tmp_path / "labeled", 6, classes=NAMES, seed=3)
    (labeled / NAMES[0] / "loop").symlink_to(labeled, target_is_directory=True)
    result = cli("eval", tiny_run, "--data", labeled, "--json", "--workers", "0")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["images"] == 6 and out["skipped_links"] == 1


# -------------------------------------------------------------------------------------------- 14: base/novel note


@pytest.mark.parametrize("count", range(1, 9))
def test_base_novel_note_names_only_base_classes(count):
    from promptkd_edge.eval.accuracy import base_novel_note

    names = [f"class{i}" for i in range(count)]
    base = -(-count // 2)
    shown = re.search(r"classes of the class list \((.*?)\)", base_novel_note(names)).group(1).split(", ")
    assert shown == names[:min(base, 3)] + (["..."] if base > 3 else [])


def test_pkd_eval_note_names_the_base_classes(tiny_run, labeled_dir):
    from conftest import NAMES

    result = cli("eval", tiny_run, "--data", labeled_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
    note = " ".join(result.stderr.split())
    assert f"base = the first 2 classes of the class list ({NAMES[0]}, {NAMES[1]}), novel = the other 1" in note


# ---------------------------------------------------------------------------------- 16: a 1 x 1,000,000 pixel image


def _limited(code: str, limit_gib: float, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose address space is capped, so an unbounded resize fails fast."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(limit_gib * 2**30)}, "
               f"{int(limit_gib * 2**30)}))\n")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def wide_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    row = np.linspace(0, 255, 1_000_000).astype(np.uint8)
    Image.fromarray(np.repeat(row[None, :, None], 3, axis=2)).save(path)
    assert path.stat().st_size < 20_000
    return path


def test_a_one_pixel_high_image_is_preprocessed_within_bounded_memory(wide_png):
    done = _limited(f"""
        from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare
        for mode in ("shortest", "longest", "squash"):
            for size in ((32, 32), (24, 40)):
                spec = PreprocessSpec(size=size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=mode)
                x = prepare({str(wide_png)!r}, spec, input_format="uint8")
                assert x.shape == (1, *size, 3), x.shape
        print("ok", x[0, 12, :, 0].tolist())
    """, limit_gib=1.0)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    # squash keeps the whole ramp: dark on the left, bright on the right
    ramp = json.loads(done.stdout.split(" ", 1)[1])
    assert ramp[0] < 16 and ramp[-1] > 239 and ramp == sorted(ramp)


def test_pkd_predict_and_eval_on_a_one_pixel_high_image(tiny_run, bundle, wide_png, tmp_path):
    labeled = tmp_path / "labeled"
    (labeled / "red_square").mkdir(parents=True)
    (labeled / "red_square" / "wide.png").symlink_to(wide_png)
    done = _limited(f"""
        from typer.testing import CliRunner
        from promptkd_edge.cli import app
        r = CliRunner().invoke(app, ["predict", {str(bundle)!r}, {str(wide_png)!r}, "--json"])
        print(r.exit_code, r.stdout)
        r = CliRunner().invoke(app, ["eval", {str(tiny_run)!r}, "--data", {str(labeled)!r}, "--json",
                                     "--workers", "0"])
        print(r.exit_code, r.stdout)
    """, limit_gib=4.5)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line[:2] in ("0 ", "1 ", "2 ", "3 ")]
    assert lines and all(line.startswith("0 ") for line in lines), done.stdout[-2000:]


@pytest.mark.parametrize(("shape", "resize_mode"), [
    ((1, 700), "shortest"), ((3, 900), "shortest"), ((650, 2), "shortest"), ((5, 333), "shortest"),
    ((30, 700), "longest"), ((650, 30), "longest"),  # thinner ones make open_clip's longest resize fail (0 pixels)
])
def test_the_bounded_resize_stays_close_to_open_clip(shape, resize_mode, monkeypatch):
    """The region-only resize (forced here for images small enough to check) against open_clip's full resize."""
    import promptkd_edge.utils.images as images
    from promptkd_edge.data.views import eval_transform

    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    img = Image.fromarray(smooth)
    pre = Preprocess((32, 32), MEAN, STD, resize_mode=resize_mode)
    want = eval_transform(pre)(img).numpy()
    spec = PreprocessSpec.from_dict(pre.to_dict())
    np.testing.assert_array_equal(prepare(img, spec)[0], want)  # under the budget: bit-exact
    monkeypatch.setattr(images, "RESIZE_BUDGET", 0)
    got = prepare(img, spec)[0]
    assert np.abs(got - want).max() <= 2.5 / 255 / min(STD)  # two levels at most


# ------------------------------------------------------------------------------ 23: one rule for unreadable images


def test_unreadable_images_are_skipped_alike_named_or_in_a_folder(bundle, tmp_path):
    folder = write_images(tmp_path / "imgs", 3)
    (folder / "part0" / "broken.png").write_bytes(b"\x89PNG not really")
    named = tmp_path / "named_broken.png"
    named.write_bytes(b"GIF89a nope")
    good = folder / "part1" / "img001.png"
    result = cli("predict", bundle, good, named, folder, "--json")
    assert result.exit_code == 3, result.output
    out = json.loads(result.stdout)
    assert [Path(r["image"]).name for r in out["predictions"]] == ["img001.png", "img000.png", "img002.png",
                                                                    "img001.png"]
    assert [(Path(s["image"]).name, s["reason"].startswith("cannot read image")) for s in out["skipped"]] == [
        ("named_broken.png", True), ("broken.png", True)]
    assert f"skipped cannot read image {named}" in " ".join(result.stderr.split())
    table = cli("predict", bundle, good, named)
    assert table.exit_code == 3 and "img001.png" in table.stdout and "named_broken.png" in table.stderr
    none = cli("predict", bundle, named, tmp_path / "missing.png")
    assert none.exit_code == 2 and "error: none of the 2 images could be read" in " ".join(none.stderr.split())
    assert "--json" in cli("predict", "--help").stdout and "exit code is then 3" in " ".join(
        cli("predict", "--help").stdout.split())


# ------------------------------------------------------------------------------- 24: say what a path really is


@pytest.fixture()
def odd_paths(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    return {"folder": folder, "fifo": fifo, "loop": loop, "broken": broken}


def test_weights_paths_say_what_they_are(odd_paths, tmp_path):
    from promptkd_edge.models.openclip import read_weights, weights_file_for

    expected = {"folder": "is a folder, not a file", "fifo": r"is a FIFO \(named pipe\), not a file",
                "loop": "is a symlink loop", "broken": "is a broken symlink to '.*gone.png'"}
    for kind, path in odd_paths.items():
        with pytest.raises(PkdError, match=f"^weights file {re.escape(str(path))} {expected[kind]}"):
            weights_file_for(f"pkd-tiny-student:{path}")
        with pytest.raises(PkdError, match=expected[kind]):
            read_weights(path)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    result = cli("distill", "--data", write_images(tmp_path / "d", 2), "--out", tmp_path / "run",
                 "--student", f"pkd-tiny-student:{odd_paths['folder']}", "--teacher", "pkd-tiny-teacher",
                 "--classes", tmp_path / "classes.txt", "--random-init")
    assert result.exit_code == 2 and "is a folder, not a file" in result.stderr, result.output
    assert not (tmp_path / "run").exists()


def test_image_and_data_paths_say_what_they_are_and_a_fifo_is_never_opened(odd_paths, bundle, tmp_path):
    done = _limited(f"""
        from promptkd_edge.data.decode import read_rgb
        print(read_rgb({str(odd_paths["fifo"])!r})[1])
    """, limit_gib=2, timeout=30)  # on a FIFO, opening blocks until a writer comes
    assert done.stdout.strip() == "is a FIFO (named pipe), not a file"
    assert read_rgb(odd_paths["folder"])[1] == "is a folder, not a file"
    assert read_rgb(odd_paths["loop"])[1] == "is a symlink loop"
    assert read_rgb(odd_paths["broken"])[1].startswith("is a broken symlink to ")
    with pytest.raises(PkdError, match="data .*pipe.png is a FIFO \\(named pipe\\); expected a folder of images"):
        list_images(odd_paths["fifo"])
    with pytest.raises(PkdError, match="labeled image folder .*loop.safetensors is a symlink loop"):
        LabeledImages.scan(odd_paths["loop"])
    good = write_images(tmp_path / "imgs", 1) / "part0" / "img000.png"
    result = cli("predict", bundle, good, odd_paths["fifo"], odd_paths["loop"], "--json")
    assert result.exit_code == 3, result.output
    reasons = [s["reason"] for s in json.loads(result.stdout)["skipped"]]
    assert reasons == [f"cannot read image {odd_paths['fifo']}: is a FIFO (named pipe), not a file",
                       f"cannot read image {odd_paths['loop']}: is a symlink loop"]
