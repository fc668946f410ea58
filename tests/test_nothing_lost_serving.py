"""Serving outputs and the backend-choice cache: nothing already written is lost, nothing is silently wrong.

Issue 18, cases 2 (a Triton entry is replaced by a new version, switched atomically), 20 (names in config.pbtxt and
the DeepStream key file are escaped and checked with the real parsers) and 17 (the `--backend auto` cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_images
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.export.bundle import ExportOptions, export_run
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime import auto as auto_mod

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
