"""runtime/files.py (what `pkd predict` calls): image files from paths and folders, predicted in batches, unreadable
files (named or in a folder) skipped with the reason, in order; torch-free. runtime/pipeline.py under it and under
Classifier.logits/embed/predict: the next batch decoded on worker threads while the backend runs, order kept, errors
named, no thread left behind, the same numbers as the sequential loop, one Classifier shared by several threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import Classifier, pipeline, preprocess
from promptkd_edge.runtime.backends import Backend
from promptkd_edge.runtime.files import FileResult, ImageFile, image_files, predict_files


@pytest.fixture(scope="module")
def clf(tiny_run, module_dir):
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

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


# ---------------------------------------------------------------------------------------------------- the pipeline


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Small uint8 RGB frames of a few sizes, each different."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + i % 4, 40 + i % 3, 3), dtype=np.uint8) for i in range(count)]


def live_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(pipeline.THREAD_PREFIX)]


def loop_logits(clf: Classifier, images: list, batch_size: int) -> np.ndarray:
    """The reference: the loop Classifier.logits was before the pipeline (prepare a chunk, run it, next chunk)."""
    return np.concatenate([clf.run(clf.inputs(images[i:i + batch_size]))["logits"]
                           for i in range(0, len(images), batch_size)])


def spy_load_crop(monkeypatch, before=None) -> list[int]:
    """Record the id of every item `load_crop` starts on (calling `before(item)` first); returns the record."""
    real, started = preprocess.load_crop, []

    def spy(item, spec):
        started.append(id(item))
        if before is not None:
            before(item)
        return real(item, spec)

    monkeypatch.setattr(preprocess, "load_crop", spy)
    return started


def test_pipelined_batches_keep_the_input_order_over_many_chunks(clf, monkeypatch):
    images = frames(23)
    rng = np.random.default_rng(1)
    delays = {id(x): float(d) for x, d in zip(images, rng.uniform(0, 0.01, len(images)), strict=True)}
    spy_load_crop(monkeypatch, lambda item: time.sleep(delays[id(item)]))  # finishing out of order
    got = list(pipeline.chunks(images, clf.preprocess, input_format="uint8", batch_size=4, workers=3))
    assert [(c.start, c.size, c.errors) for c in got] == [(i, min(4, 23 - i), {}) for i in range(0, 23, 4)]
    expected = [preprocess.prepare(images[i:i + 4], clf.preprocess, input_format="uint8") for i in range(0, 23, 4)]
    for chunk, want in zip(got, expected, strict=True):
        assert np.array_equal(chunk.batch, want)
    assert np.array_equal(clf.logits(images, batch_size=4, workers=3), loop_logits(clf, images, 4))
    assert live_workers() == []


def test_pipelined_results_are_the_sequential_ones(clf, tmp_path):
    folder = write_images(tmp_path / "imgs", 9)
    paths = [f.path for f in image_files([folder])]
    mixed = [*paths[:4], *frames(3), *paths[4:]]
    piped = clf.logits(mixed, batch_size=4, workers=3)
    assert np.array_equal(piped, clf.logits(mixed, batch_size=4, workers=0))
    assert np.array_equal(piped, loop_logits(clf, mixed, 4))
    assert clf.predict(mixed, top_k=2, batch_size=4) == clf.predict(mixed, top_k=2, batch_size=4, workers=0)
    clf.workers = 0  # the Classifier's default, settable
    try:
        assert np.array_equal(clf.logits(mixed, batch_size=4), piped)
    finally:
        clf.workers = None


def test_the_next_batch_is_decoded_while_the_backend_runs(clf, monkeypatch):
    """No timing: each run of batch k waits (up to 2 s) for load_crop to start on the first item of batch k+1 and
    records whether it did before the run returned. The sequential loop never does (it decodes after)."""
    images, batch = frames(12), 4
    started = spy_load_crop(monkeypatch)
    position = {id(x): i for i, x in enumerate(images)}

    class Watching(Backend):
        """The backend, recording per run whether the next batch's decoding had begun before it returned."""

        def __init__(self, inner):
            self.inner, self.overlapped = inner, []
            self.name, self.device, self.description = inner.name, inner.device, inner.description

        def run(self, x):
            nxt = (len(self.overlapped) + 1) * batch
            if nxt < len(images):
                deadline = time.monotonic() + 2.0
                while nxt not in {position.get(i) for i in list(started)} and time.monotonic() < deadline:
                    time.sleep(0.005)
                self.overlapped.append(nxt in {position.get(i) for i in list(started)})
            return self.inner.run(x)

    watching = Watching(clf.backend)
    logits = Classifier(clf.bundle, watching).logits(images, batch_size=batch, workers=2)
    assert watching.overlapped == [True, True]
    assert np.array_equal(logits, loop_logits(clf, images, batch))


def test_an_unreadable_file_mid_batch_is_skipped_and_named_the_others_right(clf, tmp_path):
    folder = write_images(tmp_path / "imgs", 11)
    broken = folder / "part0" / "img008b.png"  # sorts between img008 and img010: the middle of the second chunk
    broken.write_bytes(b"\x89PNG truncated")
    files = image_files([folder])
    where = [f.path for f in files].index(broken)
    assert 4 < where < 8
    results = list(predict_files(clf, files, top_k=3, batch_size=4, workers=3))
    assert [r.path for r in results] == [f.path for f in files]
    assert [i for i, r in enumerate(results) if r.prediction is None] == [where]
    assert results[where].skipped.startswith(f"cannot read image {broken}: ")
    readable = [f.path for f in files if f.path != broken]
    assert [r.prediction for r in results if r.prediction is not None] == clf.predict(readable, top_k=3, workers=0)
    assert live_workers() == []


def test_a_bad_image_in_a_later_batch_raises_its_line_and_stops_every_worker(clf, monkeypatch):
    images = frames(20)
    images[9] = np.zeros((8, 8, 4), np.uint8)
    late = {id(x) for x in images[12:]}  # the batches decoded ahead are still being decoded when the error comes
    spy_load_crop(monkeypatch, lambda item: time.sleep(0.3 if id(item) in late else 0))
    with pytest.raises(PkdError, match=r"^image 9: image array \[8, 8, 4\] has 4 channels"):
        clf.logits(images, batch_size=4, workers=2)
    assert live_workers() == []
    with pytest.raises(PkdError, match=r"^image array \[8, 8, 4\] has 4 channels"):  # one image: its error alone
        clf.predict(images[9])
    stream = clf.prepared(images, batch_size=4, workers=2)  # an early stop: close the generator
    assert next(stream).start == 0 and live_workers()
    stream.close()
    assert live_workers() == []
    with pytest.raises(PkdError, match="workers must be an integer >= 0"):
        clf.logits(images[:2], workers=-1)


def test_one_classifier_shared_by_several_threads(clf):
    inputs = [frames(9, seed=s) for s in range(4)]
    expected = [loop_logits(clf, x, 4) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: clf.logits(x, batch_size=4, workers=2), inputs * 2))
    for g, e in zip(got, expected * 2, strict=True):
        assert np.array_equal(g, e)
    assert live_workers() == []


def test_default_workers_follow_the_usable_cores(monkeypatch):
    for cores, workers in ((1, 1), (2, 2), (64, 4)):
        monkeypatch.setattr(pipeline, "cpu_info", lambda cores=cores: {"cores": cores})
        assert pipeline.default_workers() == workers


def test_pkd_predict_workers_option(clf, tmp_path, monkeypatch):
    """`pkd predict --workers N` reaches the pipeline (0: the sequential loop, same answers); a negative count is
    refused in one line before any image is read."""
    import json

    from typer.testing import CliRunner

    from promptkd_edge.cli import app

    folder = write_images(tmp_path / "imgs", 5)
    seen = []
    real = pipeline.chunks
    monkeypatch.setattr(pipeline, "chunks", lambda *a, **k: seen.append(k["workers"]) or real(*a, **k))
    monkeypatch.setattr("promptkd_edge.runtime.classifier.chunks", pipeline.chunks)
    runner = CliRunner()
    outs = []
    for workers in ("0", "3"):
        r = runner.invoke(app, ["predict", str(clf.bundle.path), str(folder), "--backend", "onnxruntime",
                                "--batch-size", "2", "--workers", workers, "--json"], env={"COLUMNS": "1000"})
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.output))
    assert seen == [0, 3] and outs[0] == outs[1]
    bad = runner.invoke(app, ["predict", str(clf.bundle.path), str(folder), "--workers", "-1"],
                        env={"COLUMNS": "1000"})
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--workers" in bad.output and "greater than or equal to 0" in bad.output
