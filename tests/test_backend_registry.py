"""One backend registry (runtime/backends.py KINDS) read by every consumer: `Classifier.from_bundle` and its error,
`backend="auto"`, `pkd bench`'s rows and runners, `pkd doctor`, the CLI help. Enumerates the registry and checks
each consumer lists the same backends; registers a new kind to show that one entry is all a backend needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from promptkd_edge.bench import backends as bench_backends
from promptkd_edge.bench.doctor import probe_backends, summary_rows
from promptkd_edge.cli import app
from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import Classifier, backends
from promptkd_edge.runtime.backends import DEVICES, KINDS, NAMES, Backend, Kind, LoadOptions, load_backend


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_the_names_from_bundle_takes_are_auto_and_the_registry():
    assert ("auto", *sorted(KINDS)) == NAMES and len(KINDS) >= 4
    with pytest.raises(PkdError, match=re.escape(f"choose one of {', '.join(NAMES)}")):
        Classifier.from_bundle("nowhere", "nosuch")


def test_pkd_predict_help_lists_every_backend():
    listed = re.search(r"--backend <str> (.*?)\[default: auto\]", _help("predict")).group(1)
    assert re.findall(r"\b(auto|[a-z]+)\b(?= \(|,| or |\.)", listed) == list(NAMES)


def test_every_kind_has_bench_rows_and_a_runner_and_every_row_a_kind():
    kinds = {spec.kind for spec in bench_backends.BACKENDS.values()}
    assert kinds == {*KINDS, "auto"}
    assert set(bench_backends.RUNNERS) == {*KINDS, "auto"}


def test_pkd_bench_help_lists_every_bench_row():
    text = re.search(r"Backends: (.*?) \(or: all\)\.", _help("bench")).group(1)
    text = text.replace(" (a bundle: what the runtime picks)", "")
    names = []
    for word in text.split(", "):  # "openvino-cpu-fp32|bf16" is openvino-cpu-fp32 and openvino-cpu-bf16
        first, *alternatives = word.split("|")
        stem = "-".join(first.split("-")[:2])
        names += [first, *(f"{stem}-{alt}" for alt in alternatives)]
    assert names == list(bench_backends.rows())


def test_pkd_doctor_lists_every_kind_in_registry_order():
    report = probe_backends()
    assert [k["backend"] for k in report["kinds"]] == list(KINDS)
    for row, kind in zip(report["kinds"], KINDS.values(), strict=True):
        assert row["auto"] == kind.auto and row["devices"] == list(kind.devices) and set(kind.devices) <= set(DEVICES)
        assert row["available"] == (kind.missing() is None)
    (row,) = [r for r in summary_rows({"backends": report}) if r[0] == "backends"]
    assert all(name in row[2] for name in KINDS)
    result = CliRunner().invoke(app, ["doctor", "--no-trt-check", "--json"])
    assert [k["backend"] for k in json.loads(result.stdout)["backends"]["kinds"]] == list(KINDS)


def test_a_missing_module_is_named_with_what_installs_it():
    fake = Kind("fake", "Fake", "a test kind", ("cpu",), "none", ("json", "no_such_module_here"), "pip install fake",
                KINDS["openvino"].load)
    assert fake.missing() == "needs no_such_module_here: pip install fake"
    assert KINDS["onnxruntime"].missing() is None  # installed here


class _Scaled(Backend):
    """A backend of our own: logits = the mean of the input times a constant, on the CPU."""

    name, device, description = "scaled", "cpu", "scaled numpy"

    def __init__(self, classes: int, factor: float):
        self.classes, self.factor = classes, factor

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": np.full((len(batch), self.classes), self.factor, np.float32)}

    def close(self) -> None:
        pass


def _bundle():
    model = SimpleNamespace(precision="fp32", input_format="crop", file="model.onnx",
                            inputs=[SimpleNamespace(shape=[1, 3, 8, 8])])
    return SimpleNamespace(engines=[], model=model, manifest=SimpleNamespace(files={"model.onnx": "0" * 64}),
                           path="b", model_path="b/m")


def test_auto_tries_the_gpu_kinds_in_order_then_measures_every_cpu_option(monkeypatch):
    """Registry order for the GPU; a GPU kind that fails is a note; the CPU options of every auto kind measured."""
    from promptkd_edge.runtime.auto import Option

    calls = []

    def gpu(name, result):
        def try_it(bundle, opts):
            calls.append(name)
            if isinstance(result, Exception):
                raise result
            return result
        return try_it

    def cpu(name):
        return lambda bundle, opts: [Option(name, lambda: _Scaled(2, 1.0), "test gate")]

    kinds = {"a": Kind("a", "A", "a", ("cuda",), "g", (), "", gpu("a", None), auto_gpu=gpu("a", PkdError("no GPU"))),
             "b": Kind("b", "B", "b", ("cuda",), "g", (), "", gpu("b", None), auto_gpu=gpu("b", None)),
             "c": Kind("c", "C", "c", ("cpu",), "g", (), "", gpu("c", None), auto_cpu=cpu("c")),
             "d": Kind("d", "D", "d", ("cpu",), "g", (), "", gpu("d", None)),  # not for auto
             "e": Kind("e", "E", "e", ("cpu",), "g", (), "", gpu("e", None), auto_cpu=cpu("e"))}
    monkeypatch.setattr(backends, "KINDS", kinds)
    measured = {}

    def choose(options, spec, **kw):
        measured["names"] = [o.name for o in options]
        return options[-1].load(), "choice"

    monkeypatch.setattr("promptkd_edge.runtime.auto.choose", choose)
    opts = LoadOptions()
    loaded, choice = load_backend("auto", _bundle(), opts)
    assert calls == ["a", "b"] and measured["names"] == ["c", "e"] and choice == "choice"
    assert opts.notes == ["A not used: no GPU"] and isinstance(loaded, _Scaled)
    kinds["b"] = Kind("b", "B", "b", ("cuda",), "g", (), "", gpu("b", None), auto_gpu=gpu("b", _Scaled(3, 2.0)))
    loaded, choice = load_backend("auto", _bundle(), LoadOptions())
    assert loaded.classes == 3 and choice is None  # a GPU kind that loads is taken, nothing measured


def test_a_new_kind_is_one_registration(monkeypatch, tiny_bundle):
    """A backend that is one class plus one Kind: Classifier.from_bundle loads it by name, and its device is what
    the classifier reads."""
    kind = Kind("scaled", "Scaled", "numpy test backend", ("cpu",), "none", ("numpy",), "pip install numpy",
                lambda bundle, opts: _Scaled(len(bundle.class_names), 3.0))
    monkeypatch.setattr(backends, "KINDS", {**KINDS, "scaled": kind})
    monkeypatch.setattr(backends, "NAMES", (*NAMES, "scaled"))
    clf = Classifier.from_bundle(tiny_bundle, "scaled")
    image = np.zeros((40, 40, 3), np.uint8)
    assert clf.description == "scaled numpy" and clf.logits([image]).tolist() == [[3.0] * len(clf.class_names)]


@pytest.mark.parametrize("name", ["onnxruntime", "openvino", "torch"])
def test_every_backend_that_runs_here_says_its_device_as_a_string(tiny_bundle, name):
    """`device` is "cpu" or "cuda" on every backend (torch's was a torch.device, TensorRT had none)."""
    if KINDS[name].missing():
        pytest.skip(KINDS[name].missing())
    clf = Classifier.from_bundle(tiny_bundle, name)
    try:
        assert isinstance(clf.backend, Backend) and clf.backend.name == name
        assert type(clf.backend.device) is str and clf.backend.device in KINDS[name].devices
    finally:
        clf.close()
    from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend

    assert TensorRTBackend.device == "cuda" and Backend in TensorRTBackend.__mro__


@pytest.fixture(scope="module")
def tiny_bundle(tiny_run, module_dir):
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    out = module_dir / "bundle"
    export_run(tiny_run, out, ExportOptions(parity_images=8, calibration_images=8))
    return out


def test_the_tensorrt_kind_hands_the_manifests_entries_to_the_backend(monkeypatch):
    """The typed EngineEntry reaches check_plan_compatible and TensorRTBackend (before: turned back into a dict);
    the first compatible plan that passed its gate is loaded, the others' reasons kept for the error."""
    from promptkd_edge.formats.manifest import EngineEntry
    from promptkd_edge.runtime import tensorrt_backend as tb

    entries = [EngineEntry("engines/a.plan", "fp16", "10.3.0", "8.7", "Orin", parity_passed=False),
               EngineEntry("engines/b.plan", "fp16", "10.3.0", "9.0", "H200", extra={"sha256": "x"}),
               EngineEntry("engines/c.plan", "int8", "10.3.0", "8.7", "Orin", extra={"frame_sizes": [[1, 1]] * 3})]
    seen = {}
    monkeypatch.setattr(tb, "import_tensorrt", lambda: type("trt", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(tb, "gpu_info", lambda device_id=0: {"name": "Orin", "compute_capability": "8.7"})
    monkeypatch.setattr(tb, "TensorRTBackend", lambda path, record, device_id=0: seen.update(path=path, record=record))
    bundle = SimpleNamespace(engines=entries, path=Path("b"))
    KINDS["tensorrt"].load(bundle, LoadOptions())
    assert seen["record"] is entries[2] and seen["path"] == Path("b/engines/c.plan")
    assert tb.plan_field(entries[2], "frame_sizes") == [[1, 1]] * 3 and tb.plan_field(entries[1], "sha256") == "x"
    assert tb.plan_field(entries[0], "precision") == "fp16" == tb.plan_field({"precision": "fp16"}, "precision")
    with pytest.raises(PkdError, match=r"^engines/b\.plan was built for TensorRT 10\.3\.0 on sm_90 \(H200\)"):
        KINDS["tensorrt"].load(SimpleNamespace(engines=entries[1:2], path=Path("b")), LoadOptions())


def test_a_new_kind_is_benched_without_a_runner_of_its_own(monkeypatch, tiny_bundle):
    """`pkd bench BUNDLE`: a kind registered in the runtime gets a row (its name) and runs through its loader."""
    from promptkd_edge.bench.harness import BenchConfig, run_bench

    kind = Kind("scaled", "Scaled", "numpy test backend", ("cpu",), "none", ("numpy",), "pip install numpy",
                lambda bundle, opts: _Scaled(len(bundle.class_names), 3.0))
    monkeypatch.setattr(backends, "KINDS", {**KINDS, "scaled": kind})
    assert "scaled" in [s.name for s in bench_backends.parse_backends("all")]
    assert "scaled" in bench_backends.rows_help()  # what the help is built from when the module loads
    cfg = BenchConfig(target=str(tiny_bundle), backends=bench_backends.parse_backends("scaled,onnxruntime-cpu-fp32"),
                      batch_sizes=[1], warmup=1, iterations=2, min_seconds=0.0, max_seconds=2.0, device="cpu",
                      threads=1, end_to_end=False, command="test")
    rows = {r["backend"]: r for r in run_bench(cfg)["results"]}
    assert rows["scaled"]["device"] == "cpu" and rows["scaled"]["precision"] == "fp32"  # the bundle's graph
    assert "onnxruntime-cpu-fp32" in rows
