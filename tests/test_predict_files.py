"""runtime/files.py (what `pkd predict` calls): image files from paths and folders, predicted in batches, unreadable
files (named or in a folder) skipped with the reason, in order; torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.files import FileResult, ImageFile, image_files, predict_files


@pytest.fixture(scope="module")
def clf(tiny_run, module_dir):
    from promptkd_edge.export.bundle import ExportOptions, export_run

    export_run(tiny_run, module_dir / "bundle", ExportOptions(parity_images=2))
    c = Classifier.from_bundle(module_dir / "bundle", "onnxruntime")
    yield c
    c.close()


def test_image_files_walks_folders_and_marks_named_files(tmp_path):
    folder = write_images(tmp_path / "imgs", 4)  # part0/img000.png, part1/img001.png, ...
    (folder / "notes.txt").write_text("not an image")
    named = folder / "part1" / "img001.png"
    files = image_files([named, folder])
    assert files[0] == ImageFile(named, named=True)
    assert [f.path.relative_to(folder).as_posix() for f in files[1:]] == [
        "part0/img000.png", "part0/img002.png", "part1/img001.png", "part1/img003.png"]
    assert not any(f.named for f in files[1:])
    assert image_files([folder, tmp_path / "nope.png"])[-1] == ImageFile(tmp_path / "nope.png", named=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match="no images under .*empty"):
        image_files([tmp_path / "empty"])
    with pytest.raises(PkdError, match="no images found \\(looked for .jpg"):
        image_files([])


def test_predict_files_in_order_with_unreadable_files_skipped(clf, tmp_path):
    folder = write_images(tmp_path / "imgs", 5)
    (folder / "part0" / "broken.png").write_bytes(b"\x89PNG not really")
    files = image_files([folder])
    results = list(predict_files(clf, files, top_k=2, batch_size=2))  # chunks of 2: the broken file in the first
    assert [r.path for r in results] == [f.path for f in files]
    broken = [r for r in results if r.prediction is None]
    assert [r.path.name for r in broken] == ["broken.png"]
    assert broken[0].skipped.startswith(f"cannot read image {folder / 'part0' / 'broken.png'}: ")
    with pytest.raises(ValueError, match="was skipped"):
        broken[0].to_dict()
    readable = [f.path for f in files if f.path.name != "broken.png"]
    expected = clf.predict(readable, top_k=2)
    got = [r for r in results if r.prediction is not None]
    assert [r.prediction for r in got] == expected
    assert got[0].to_dict() == {"image": str(readable[0]), **expected[0].to_dict()}
    assert isinstance(got[0], FileResult) and len(got[0].prediction.labels) == 2


def test_an_unreadable_file_named_explicitly_is_skipped_as_in_a_folder(clf, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"GIF89a nope")
    results = list(predict_files(clf, image_files([broken, tmp_path / "nope.png"])))
    assert [r.prediction for r in results] == [None, None]
    assert results[0].skipped.startswith(f"cannot read image {broken}: ")
    assert results[1].skipped == f"image not found: {tmp_path / 'nope.png'}"


def test_runtime_files_imports_no_torch():
    code = "import sys, promptkd_edge.runtime.files; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
