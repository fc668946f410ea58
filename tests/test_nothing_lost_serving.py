"""Serving outputs and the backend-choice cache: nothing already written is lost, nothing is silently wrong.

Issue 18, cases 2 (a Triton entry is replaced by a new version, switched atomically), 20 (names in config.pbtxt and
the DeepStream key file are escaped and checked with the real parsers) and 17 (the `--backend auto` cache).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import triton_schema
from conftest import write_images
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime import auto as auto_mod
from promptkd_edge.runtime.bundle import open_bundle

PACKAGE_ROOT = Path(auto_mod.__file__).resolve().parents[2]  # the promptkd_edge under test, for subprocesses
runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def bundle(tiny_run, module_dir) -> Path:
    export_run(tiny_run, module_dir / "pets", ExportOptions(parity_images=4))
    return module_dir / "pets"


@pytest.fixture(scope="module")
def other_bundle(tiny_run, module_dir) -> Path:
    """Another model of the same run: another graph, input dtype and dims (uint8 NHWC)."""
    export_run(tiny_run, module_dir / "pets-uint8", ExportOptions(parity_images=4, input_format="uint8"))
    return module_dir / "pets-uint8"


# ----------------------------------------------------------------------------- 2 and 20: the Triton entry


TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}


def served(folder: Path, bundle: Path):
    """Parse config.pbtxt with Triton's schema and check every field against `bundle`; returns the version folder
    it serves (the model file and labels in it checked byte for byte)."""
    config = triton_schema.parse_config((folder / "config.pbtxt").read_text(encoding="utf-8"))
    b = open_bundle(bundle)
    assert config.name == folder.name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    [version] = config.version_policy.specific.versions
    for got, want in ((config.input, b.model.inputs), (config.output, b.model.outputs)):
        assert [(t.name, list(t.dims), t.data_type) for t in got] == [
            (w.name, w.shape[1:], _data_type(TYPES[w.dtype])) for w in want]
    [logits] = [o for o in config.output if o.name == "logits"]
    labels = folder / logits.label_filename
    assert labels.resolve().parent == (folder / str(version)).resolve()
    assert labels.read_text(encoding="utf-8").splitlines() == b.class_names
    assert (folder / str(version) / "model.onnx").read_bytes() == b.model_path.read_bytes()
    return folder / str(version)


def _data_type(name: str) -> int:
    return triton_schema.model_config_class().DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name[
        "data_type"].enum_type.values_by_name[name].number


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `folder`."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def triton(*args: str):
    return cli("export", *args)


HOSTILE_STRINGS = ['my "quoted" bündle', "back\\slash", 'a\\"b', "new\nline", "tab\there", "cr\rret", "\x01\x7f",
                   "emoji \U0001f408", "it's", "{ name: \"x\" }", "#not a comment", "\u202eright-to-left"]


@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_config_strings_survive_tritons_parser(text):
    """Case 20: every string written into config.pbtxt reads back unchanged through protobuf's text format into
    Triton's ModelConfig."""
    from promptkd_edge.export.triton import pbtxt_string

    config = triton_schema.parse_config(f"name: {pbtxt_string(text)}\nplatform: {pbtxt_string(text)}\n")
    assert config.name == text and config.platform == text


def test_a_quoted_bundle_name_gives_a_config_triton_reads(bundle, tmp_path):
    """Case 20: a bundle folder named `my "quoted" bündle` gives a config.pbtxt Triton parses, named as its folder."""
    quoted = tmp_path / 'my "quoted" bündle'
    shutil.copytree(bundle, quoted)
    result = triton(str(quoted), "--triton", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "repo" / 'my "quoted" bündle'
    served(folder, quoted)


@pytest.mark.parametrize("name", ["", "   ", "a/b", "x..y", "..", "two\nlines", "nul\x00"])
def test_names_triton_cannot_serve_are_refused(bundle, tmp_path, name):
    result = triton(str(bundle), "--triton", str(tmp_path / "repo"), "--triton-name", name)
    assert result.exit_code == 2 and "Triton cannot serve a model named" in result.output, result.output
    assert not (tmp_path / "repo").exists() or not any(p.is_dir() for p in (tmp_path / "repo").iterdir())


def test_a_failed_replacement_leaves_the_entry_as_it_was(bundle, other_bundle, tmp_path, monkeypatch):
    """Case 2: replacing an entry with a full disk (ENOSPC while the new model is copied, or while the new config is
    written) leaves every file of the old entry as it was; then a replacement that succeeds serves the new model,
    labels and dims together, and nothing of the old version is left."""
    import promptkd_edge.export.triton as triton_mod

    repo, new = tmp_path / "repo", tmp_path / "new" / "pets"  # the same entry name from the bundles' folder names
    shutil.copytree(other_bundle, new)
    assert triton(str(bundle), "--triton", str(repo)).exit_code == 0
    folder = repo / "pets"
    before = snapshot(folder)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write_text = triton_mod.write_text

    def config_fails(path, text):
        if Path(path).name == "config.pbtxt":
            full_disk()
        real_write_text(path, text)

    for target, fake in ((shutil, "copyfile"), (triton_mod, "write_text")):
        with monkeypatch.context() as m:
            m.setattr(target, fake, full_disk if fake == "copyfile" else config_fails)
            result = runner.invoke(app, ["export", str(new), "--triton", str(repo)])
        assert snapshot(folder) == before, fake
        assert result.exit_code == 2, result.output
        assert "No space left on device" in result.output and "left as it was" in result.output
    old_version = served(folder, bundle)

    result = triton(str(new), "--triton", str(repo))
    assert result.exit_code == 0, result.output
    new_version = served(folder, new)
    assert new_version != old_version and not old_version.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.pbtxt", new_version.name])


def test_an_entry_of_an_older_promptkd_edge_is_pinned_then_replaced(bundle, other_bundle, tmp_path, monkeypatch):
    """Case 2: the layout ef20ace wrote (labels.txt beside config.pbtxt, no version policy: Triton serves the highest
    version) is replaced the same way, and a failure leaves it byte for byte as it was."""
    from promptkd_edge.export.triton import config_pbtxt

    folder = tmp_path / "repo" / "pets"
    (folder / "1").mkdir(parents=True)
    b = open_bundle(bundle)
    legacy = config_pbtxt(b.model, "pets", "onnxruntime_onnx", 32, True).replace(
        "version_policy { specific { versions: [ 1 ] } }\n", "").replace('"1/labels.txt"', '"labels.txt"')
    assert "version_policy" not in legacy
    (folder / "config.pbtxt").write_text(legacy)
    (folder / "labels.txt").write_text("\n".join(b.class_names) + "\n")
    shutil.copyfile(b.model_path, folder / "1" / "model.onnx")
    before = snapshot(folder)
    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        assert triton(str(other_bundle), "--triton", str(tmp_path / "repo"), "--triton-name", "pets").exit_code == 2
    assert snapshot(folder) == before
    result = triton(str(other_bundle), "--triton", str(tmp_path / "repo"), "--triton-name", "pets")
    assert result.exit_code == 0, result.output
    assert served(folder, other_bundle).name == "2" and sorted(p.name for p in folder.iterdir()) == [
        "2", "config.pbtxt"]


KILLER = """
import os, sys
from pathlib import Path
import promptkd_edge.export.triton as t
from promptkd_edge.export.add_to_bundle import TritonEntry, extend_bundle
from promptkd_edge.export.options import ExportOptions

where = sys.argv[3]
real_write_text, real_copyfile = t.write_text, t.shutil.copyfile

def write_text(path, text):
    if where == "config" and Path(path).name == "config.pbtxt":
        os._exit(9)  # killed: no cleanup runs
    real_write_text(path, text)

def copyfile(src, dst):
    real_copyfile(src, dst)
    if where == "copy":
        os._exit(9)

t.write_text = write_text
t.shutil.copyfile = copyfile
extend_bundle(Path(sys.argv[1]), ExportOptions(), triton=TritonEntry(Path(sys.argv[2]), name="pets"))
"""


def test_an_export_killed_mid_way_leaves_the_old_entry_serving_and_is_cleaned_up(bundle, other_bundle, tmp_path):
    """Case 2: kill -9 while the new version is copied, or between its rename and the config's: the old entry still
    serves, byte for byte; the next export removes what the killed one left, says so, and switches."""
    repo = tmp_path / "repo"
    assert triton(str(bundle), "--triton", str(repo), "--triton-name", "pets").exit_code == 0
    folder, current, new = repo / "pets", bundle, other_bundle
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "HF_HUB_OFFLINE": "1"}
    said = {"copy": "left by an interrupted `pkd export --triton`",  # the hidden version being copied
            "config": "never served, left by an interrupted export"}  # renamed in, never switched to
    for where, note in said.items():
        before = snapshot(folder)
        done = subprocess.run([sys.executable, "-c", KILLER, str(new), str(repo), where], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 9, done.stderr
        left = set(snapshot(folder)) - set(before)
        assert left and all(k.split("/")[0].startswith(".") or k.split("/")[0].isdigit() for k in left), left
        assert {k: v for k, v in snapshot(folder).items() if k in before} == before  # nothing old touched
        served(folder, current)  # the config still serves the old version, complete
        result = triton(str(new), "--triton", str(repo), "--triton-name", "pets")
        assert result.exit_code == 0, result.output
        assert note in " ".join(result.output.split()), where  # the progress lines may wrap
        version = served(folder, new)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["config.pbtxt", version.name])
        current, new = new, current


def test_folders_we_did_not_write_are_refused_unless_overwrite(bundle, tmp_path):
    """Case 2: a model folder another tool wrote (another platform, no config.pbtxt, files we do not write) is not
    replaced without --overwrite; a file in the way is refused."""
    cases = {"python": {"config.pbtxt": 'name: "pets"\nbackend: "python"\n', "1/model.py": "print(1)\n"},
             "noconfig": {"1/model.onnx": "onnx"},
             "extra": {"README.md": "mine\n"}}
    for case, files in cases.items():
        repo = tmp_path / case
        folder = repo / bundle.name  # the default entry name
        if case == "extra":  # an entry we wrote, and a file someone added to it
            assert triton(str(bundle), "--triton", str(repo)).exit_code == 0
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
        before = snapshot(folder)
        result = triton(str(bundle), "--triton", str(repo))
        assert snapshot(folder) == before, case
        assert result.exit_code == 2 and "is not a Triton entry written by pkd export" in result.output, case
        assert "--overwrite" in result.output
        result = triton(str(bundle), "--triton", str(repo), "--overwrite")
        assert result.exit_code == 0, result.output
        version = served(folder, bundle)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["config.pbtxt", version.name])
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / bundle.name).write_text("x")
    result = triton(str(bundle), "--triton", str(tmp_path / "file"), "--overwrite")
    assert result.exit_code == 2 and "is a file" in result.output
    assert (tmp_path / "file" / bundle.name).read_text() == "x"


def test_a_second_writer_of_the_same_entry_is_refused_while_the_first_holds_it(bundle, tmp_path, monkeypatch):
    import promptkd_edge.export.triton as triton_mod
    from promptkd_edge.utils.files import exclusive_lock

    monkeypatch.setattr(triton_mod, "LOCK_TIMEOUT_S", 0.2)
    (tmp_path / "repo").mkdir()
    with exclusive_lock(tmp_path / "repo" / ".pets.lock", 1) as held:
        assert held
        result = triton(str(bundle), "--triton", str(tmp_path / "repo"), "--triton-name", "pets")
    assert result.exit_code == 2 and "another `pkd export --triton` is writing" in result.output
    assert not (tmp_path / "repo" / "pets").exists()


# ------------------------------------------------------------------------------------------ 17: the choice cache


def _usable(entry) -> bool:
    """What a remembered choice must look like to be used (written independently of runtime/auto.py)."""
    return (isinstance(entry, dict) and entry.get("picked") in ("onnxruntime", "openvino-fp32", "openvino-bf16")
            and isinstance(entry.get("reason"), str) and isinstance(entry.get("timings"), dict)
            and all(isinstance(v, (int, float)) for t in entry["timings"].values() for v in t.values()))


BAD_ENTRIES = [["onnxruntime"], "onnxruntime", 7, None, {"picked": "onnxruntime"},  # no reason: KeyError
               {"picked": ["onnxruntime"], "reason": "r"},  # unhashable: TypeError
               {"picked": "onnxruntime", "reason": "r", "timings": [1, 2]},
               {"picked": "onnxruntime", "reason": "r", "timings": {"onnxruntime": {"1": "fast"}}},
               {"picked": "onnxruntime", "reason": ["r"], "timings": {}}]


def test_a_choice_cache_of_any_shape_is_measured_again_and_rewritten(bundle, tmp_path, monkeypatch):
    """Case 17: `pkd predict` (backend auto) over a cache whose entries have the wrong shape, or a cache that is no
    JSON object at all, measures again (exit 0) and leaves a usable entry, which the next run uses."""
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache"))
    images = write_images(tmp_path / "images", 2)
    cache = tmp_path / "cache" / auto_mod.CACHE_FILE

    def predict() -> dict:
        result = cli("predict", str(bundle), str(images), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["backend_choice"]

    first = predict()
    assert not first["cached"] and predict()["cached"]
    [key] = [k for k in json.loads(cache.read_text()) if k != "schema_version"]
    for bad in BAD_ENTRIES:
        cache.write_text(json.dumps({"schema_version": 1, key: bad}))
        choice = predict()
        assert not choice["cached"], bad
        assert _usable(json.loads(cache.read_text())[key]), bad  # rewritten, so the next run is a cache hit
        assert predict()["cached"], bad
    for broken in ("[1, 2]", "{not json", "", '{"schema_version": 99}'):
        cache.write_text(broken)
        assert not predict()["cached"] and _usable(json.loads(cache.read_text())[key]), broken
    assert not list(cache.parent.glob(".*.tmp"))  # written atomically: no temp file left


MEASURER = """
import json, os, sys, time
from pathlib import Path
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime import auto

log, go = Path(sys.argv[1]), Path(sys.argv[2])

class Fake:
    def __init__(self, name):
        self.name = name
    def run(self, x):
        return {}
    def close(self):
        pass

def measure(backend, spec):
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(0.4)
    with open(log, "a") as f:
        f.write(f"end {os.getpid()} {time.time()}\\n")
    return {"1": 1.0 if backend.name == "a" else 2.0, "8": 1.0}

options = [auto.Option(n, (lambda n=n: Fake(n)), "test") for n in ("a", "b")]
while not go.exists():
    time.sleep(0.005)
_, choice = auto.choose(options, TensorInfo(name="image", shape=["batch", 3, 8, 8], dtype="float32"),
                        model_sha256="m", threads=1, versions={}, measure_fn=measure)
print(json.dumps(choice.to_dict()))
"""


def test_concurrent_first_runs_measure_one_at_a_time(tmp_path):
    """Case 17: two processes choosing for the same graph at once: one measures (alone), the other waits and uses its
    entry; no timing is taken while the other process measures."""
    log, go = tmp_path / "log", tmp_path / "go"
    env = {**os.environ, "PKD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(PACKAGE_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", MEASURER, str(log), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.5)  # both imported and waiting
    go.write_text("go")
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    spans: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        _, pid, t = line.split()
        spans.setdefault(pid, []).append(float(t))
    assert len(spans) == 1, spans  # one process measured; the other found its entry
    assert sorted(o["cached"] for o in outs) == [False, True] and {o["picked"] for o in outs} == {"a"}


def test_a_choice_whose_lock_stays_held_is_measured_and_not_remembered(tmp_path, monkeypatch):
    from promptkd_edge.utils.files import exclusive_lock

    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(auto_mod, "LOCK_TIMEOUT_S", 0.2)

    class Fake:
        def __init__(self, name):
            self.name = name

        def close(self):
            pass

    options = [auto_mod.Option(n, (lambda n=n: Fake(n)), "test") for n in ("a", "b")]
    kw = dict(model_sha256="m", threads=1, versions={}, measure_fn=lambda b, s: {"1": float(b.name == "b")})
    spec = TensorInfo(name="image", shape=["batch", 3, 8, 8], dtype="float32")
    lock = tmp_path / "cache" / (auto_mod.CACHE_FILE + ".lock")
    with exclusive_lock(lock, 1) as held:  # another process measuring (flock: per open file, so this holds it)
        assert held
        _, choice = auto_mod.choose(options, spec, **kw)
    assert choice.picked == "a" and not choice.cached and "not remembered" in choice.reason
    assert not (tmp_path / "cache" / auto_mod.CACHE_FILE).exists()
    _, choice = auto_mod.choose(options, spec, **kw)  # the lock is free: measured and remembered
    assert not choice.cached and "not remembered" not in choice.reason
    assert auto_mod.choose(options, spec, **kw)[1].cached


# ------------------------------------------------------------------------------ 20: the DeepStream key file


def keyfile_group(path: Path, group: str = "property") -> dict[str, str]:
    """Every key of `group` as GLib's own GKeyFile reads it (g_key_file_get_string: what gst-nvinfer calls)."""
    import ctypes
    import ctypes.util

    glib = ctypes.CDLL(ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0")
    glib.g_key_file_new.restype = ctypes.c_void_p
    glib.g_key_file_load_from_data.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                               ctypes.POINTER(ctypes.c_void_p)]
    glib.g_key_file_get_keys.restype = ctypes.POINTER(ctypes.c_char_p)
    glib.g_key_file_get_keys.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                         ctypes.POINTER(ctypes.c_void_p)]
    glib.g_key_file_get_string.restype = ctypes.c_void_p
    glib.g_key_file_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                           ctypes.POINTER(ctypes.c_void_p)]
    glib.g_key_file_free.argtypes = [ctypes.c_void_p]
    glib.g_free.argtypes = [ctypes.c_void_p]
    keyfile, error, count = glib.g_key_file_new(), ctypes.c_void_p(), ctypes.c_size_t()
    data = path.read_bytes()
    try:
        assert glib.g_key_file_load_from_data(keyfile, data, len(data), 0, ctypes.byref(error)), "not a key file"
        keys = glib.g_key_file_get_keys(keyfile, group.encode(), ctypes.byref(count), ctypes.byref(error))
        out = {}
        for i in range(count.value):
            value = glib.g_key_file_get_string(keyfile, group.encode(), keys[i], ctypes.byref(error))
            assert value and not error, keys[i]
            out[keys[i].decode()] = ctypes.string_at(value).decode("utf-8")
            glib.g_free(value)
        return out
    finally:
        glib.g_key_file_free(keyfile)


@pytest.fixture(scope="module")
def pixel_bundle(tiny_run, module_dir) -> Path:
    export_run(tiny_run, module_dir / "pets-pixels", ExportOptions(parity_images=4, input_format="pixels"))
    return module_dir / "pets-pixels"


def _with_plan(pixel_bundle: Path, where: Path, plan: str, gpu: str = "Orin") -> Path:
    """A copy of the pixel bundle with a (fake) gated plan named `plan`, from a GPU named `gpu`."""
    from promptkd_edge.formats.manifest import EngineEntry, write_manifest

    shutil.copytree(pixel_bundle, where)
    (where / "engines").mkdir()
    (where / "engines" / plan).write_bytes(b"a plan " + plan.encode())
    manifest = open_bundle(where).manifest
    manifest.engines = [EngineEntry(file=f"engines/{plan}", profiles=[[1, 4, 8]], tensorrt="10.3.0",
                                    compute_capability="8.7", gpu=gpu, precision="fp16")]
    write_manifest(where, manifest)
    return where


@pytest.mark.parametrize("plan", [" leading space.plan", "trailing space.plan ", "back\\slash\\n.plan",
                                  'my "quoted" bündle.plan', "semi;colon #hash=eq.plan", "tab\there.plan"])
def test_deepstream_config_names_the_plan_gst_nvinfer_reads(pixel_bundle, tmp_path, plan):
    """Case 20: plan and bundle names with quotes, spaces, backslashes, ';', '#' and non-ASCII reach gst-nvinfer
    unchanged through GLib's key-file parser; text from the manifest cannot add or change a key."""
    bundle = _with_plan(pixel_bundle, tmp_path / 'my "quoted" bündle', plan,
                        gpu="Orin\n[property]\ncustom-lib-path=/tmp/evil.so\n#")  # nvinfer would load that library
    result = cli("export", str(bundle), "--deepstream", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    keys = keyfile_group(config)
    assert keys["model-engine-file"] == plan
    assert (config.parent / keys["model-engine-file"]).read_bytes() == (bundle / "engines" / plan).read_bytes()
    assert (config.parent / keys["labelfile-path"]).read_text().strip().split(";") == open_bundle(bundle).class_names
    assert keys["output-blob-names"] == "logits" and keys["network-mode"] == "2" and "custom-lib-path" not in keys


def test_deepstream_refuses_a_plan_name_no_key_file_can_hold(pixel_bundle, tmp_path):
    bundle = _with_plan(pixel_bundle, tmp_path / "b", "bell\x07.plan")
    result = cli("export", str(bundle), "--deepstream", str(tmp_path / "ds"))
    assert result.exit_code == 2 and "holds a control character" in result.output and "bell\\x07.plan" in result.output
    assert not (tmp_path / "ds").exists()  # refused before anything is written


def test_a_plan_entry_parses_with_every_profile_listed(bundle, tmp_path):
    """Case 20: the TensorRT entry (platform, profiles as strings, dynamic batching) is a ModelConfig Triton reads."""
    from promptkd_edge.export.triton import write_repository
    from promptkd_edge.formats.manifest import EngineEntry, write_manifest

    b = tmp_path / 'plan "b"'
    shutil.copytree(bundle, b)
    (b / "engines").mkdir()
    (b / "engines" / "a.plan").write_bytes(b"plan")
    manifest = open_bundle(b).manifest
    manifest.engines = [EngineEntry(file="engines/a.plan", profiles=[[1, 1, 1], [1, 8, 32]], tensorrt="10.3.0",
                                    compute_capability="8.7", gpu="Orin", precision="fp16")]
    write_manifest(b, manifest)
    folder = write_repository(b, tmp_path / "repo", backend="tensorrt")
    config = triton_schema.parse_config((folder / "config.pbtxt").read_text(encoding="utf-8"))
    assert (config.name, config.platform, config.max_batch_size) == ('plan "b"', "tensorrt_plan", 32)
    assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    [version] = config.version_policy.specific.versions
    assert (folder / str(version) / "model.plan").read_bytes() == b"plan"
