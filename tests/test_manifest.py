"""manifest.json as typed records (formats/manifest.py): lossless round trips, old bundles, one-line errors."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.manifest import EngineEntry, Manifest, ParityEntry, write_manifest
from promptkd_edge.runtime.bundle import open_bundle


@pytest.fixture(scope="module")
def bundle(tiny_run, module_dir):
    export_run(tiny_run, module_dir / "b", ExportOptions(head="both", parity_images=4))
    return module_dir / "b"


def _raw(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_a_written_manifest_reads_back_unchanged(bundle):
    raw = _raw(bundle)
    m = Manifest.from_dict(copy.deepcopy(raw))
    assert m.to_dict() == raw  # every key, the figures of every gate included
    assert m.model.head == "both" and m.model.output_names == ["logits", "embeddings"]
    assert m.model.inputs[0].layout == "NCHW" and m.model.inputs[0].shape == ["batch", 3, 32, 32]
    assert m.parity[0].passed and m.parity[0].images == 4 and m.parity[0].top1_agreement == 1.0
    assert m.parity[0].extra["image_source"].startswith("run data")  # a figure the record does not name
    assert m.valid and set(m.files) >= {"model.onnx", "classes.json"}


def test_keys_of_a_newer_writer_survive_a_rewrite(bundle, tmp_path):
    """An older promptkd-edge adding a plan to a newer bundle must not drop what it does not know."""
    copy_dir = tmp_path / "b"
    shutil.copytree(bundle, copy_dir)
    raw = _raw(copy_dir)
    raw["future"] = {"x": 1}
    raw["model"]["future_model_field"] = [1, 2]
    raw["parity"][0]["future_figure"] = 0.5
    (copy_dir / "manifest.json").write_text(json.dumps(raw))
    m = open_bundle(copy_dir).manifest
    m.record_engine(EngineEntry(file="engines/a.plan", precision="fp16", tensorrt="10.3.0",
                                compute_capability="8.7", gpu="Orin", profiles=[[1, 1, 1]]))
    write_manifest(copy_dir, m)
    again = _raw(copy_dir)
    assert again["future"] == {"x": 1} and again["model"]["future_model_field"] == [1, 2]
    assert again["parity"][0]["future_figure"] == 0.5
    assert again["engines"] == [{"file": "engines/a.plan", "precision": "fp16", "tensorrt": "10.3.0",
                                 "compute_capability": "8.7", "gpu": "Orin", "profiles": [[1, 1, 1]], "onnx": None,
                                 "parity_passed": True}]


def test_bundles_written_before_input_format_still_read(bundle):
    raw = _raw(bundle)
    del raw["model"]["input_format"]
    raw["model"]["uint8_input"] = True
    assert Manifest.from_dict(raw).model.input_format == "uint8"
    del raw["model"]["uint8_input"]
    assert Manifest.from_dict(raw).model.input_format == "normalized"


def test_a_broken_manifest_is_one_line_naming_the_file(bundle, tmp_path):
    copy_dir = tmp_path / "b"
    shutil.copytree(bundle, copy_dir)
    raw = _raw(copy_dir)
    del raw["model"]["head"]
    (copy_dir / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PkdError, match=r"^\S+manifest\.json: manifest model lacks 'head'$"):
        open_bundle(copy_dir)
    raw["model"] = "model.onnx"
    (copy_dir / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PkdError, match="manifest.json: the bundle manifest has no model entry$"):
        open_bundle(copy_dir)
    (copy_dir / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PkdError, match="manifest.json: not a promptkd-edge bundle manifest$"):
        open_bundle(copy_dir)


def test_gates_decide_validity_and_what_the_runtime_may_use(bundle):
    m = Manifest.from_dict(_raw(bundle))
    offer = ParityEntry(target="openvino-cpu", precision="bf16", passed=False, failures=["min cosine 0.9"],
                        required=False, runtime="openvino-bf16")
    m.record_parity(offer)
    assert m.failures() == [] and "openvino-bf16" not in m.passed_gates()  # a failed offer: valid, unused
    assert m.parity[-1].to_dict()["required"] is False and "engine" not in m.parity[-1].to_dict()
    m.record_parity(ParityEntry(target="openvino-cpu", precision="bf16", passed=True, required=True,
                                runtime="openvino-bf16"))
    assert [p.runtime for p in m.parity].count("openvino-bf16") == 1 and "openvino-bf16" in m.passed_gates()
    assert m.passed_gates() == {p.runtime for p in m.parity if p.runtime and p.passed}  # the decode offers too
    m.record_parity(ParityEntry(target="tensorrt 10.3.0 Orin", precision="fp16", passed=False,
                                failures=["agreement 0.9"], engine="engines/a.plan"))
    assert m.failures() == ["tensorrt 10.3.0 Orin fp16: agreement 0.9"]
