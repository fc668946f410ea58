"""The TensorRT plan's parity gate runs in batches its profiles take and runs every profile (defect 2 of issue 19),
against the fake TensorRT whose `set_input_shape` refuses shapes outside the active profile."""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import _fake_tensorrt  # noqa: F401 - the fake TensorRT install, also used by other tests

from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.gate_batches import plan_batches
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.export.plan import add_engine
from promptkd_edge.export.tensorrt_build import TrtBuildOptions


@pytest.fixture(scope="module")
def fp32_bundle(tiny_run, module_dir) -> Path:
    out = module_dir / "fp32"
    export_run(tiny_run, out, ExportOptions(parity_images=4))
    return out


def _shapes_by_profile(calls: list[tuple]) -> list[tuple[int, int]]:
    """(active profile, batch) of every set_input_shape the fake saw, replaying the profile switches."""
    active, seen = 0, []
    for call in calls:
        if call[0] == "create_execution_context":
            active = 0  # a new context starts on profile 0
        elif call[0] == "set_optimization_profile_async":
            active = call[1]
        elif call[0] == "set_input_shape":
            seen.append((active, call[2][0]))
    return seen


def _gate(bundle: Path, profiles, images: int, tmp_path, monkeypatch, version: str = "10.3.0"):
    target = tmp_path / "b"
    shutil.copytree(bundle, target)
    fake = _fake_tensorrt(monkeypatch, tmp_path, version)
    record = add_engine(target, ExportOptions(precision="fp32", trt=TrtBuildOptions(precision="fp32",
                                                                                    profiles=profiles),
                                              parity_images=images))
    manifest = json.loads((target / "manifest.json").read_text())
    [gate] = [p for p in manifest["parity"] if p.get("engine") == record["file"]]
    return fake, record, gate


@pytest.mark.parametrize(("profiles", "images"), [
    ([(1, 1, 1)], 5),  # the defect: batches of 16 into a 1..1 plan
    ([(1, 2, 2), (8, 8, 8)], 12),  # a gap (3..7) between profiles, and no profile holds the preferred 16
    ([(16, 16, 32)], 5),  # fewer images than the smallest batch: padded by repeating images
    ([(1, 4, 8), (1, 16, 32)], 6),  # six images fit profile 0: profile 1 must still run
    ([(1, 8, 32), (1, 1, 1)], 6),  # profile 1 lies inside profile 0: the runtime never picks it, Triton may
    ([(1, 1, 1), (2, 2, 2), (4, 4, 4)], 2),  # fewer images than profiles: the last one runs images again
], ids=["1-1-1", "gap", "padded", "second-profile", "shadowed", "few-images"])
def test_gate_runs_every_profile_in_batches_it_takes(fp32_bundle, tmp_path, monkeypatch, profiles, images):
    fake, record, gate = _gate(fp32_bundle, profiles, images, tmp_path, monkeypatch)
    assert gate["passed"] and gate["max_abs_logit_diff"] <= 1e-3 and record["parity_passed"]
    runs = _shapes_by_profile(fake.fake.calls)
    assert {p for p, _ in runs} == set(range(len(profiles)))  # every profile ran
    assert all(profiles[p][0] <= b <= profiles[p][2] for p, b in runs)  # each batch inside its profile
    assert [d["profile"] for d in gate["profiles_run"]] == list(range(len(profiles)))
    counted = sum(d["images"] for d in gate["profiles_run"])
    assert gate["images"] == counted  # padded rows dropped
    assert counted == images if images >= len(profiles) else counted > images  # re-run rows are gated too


def test_a_broken_second_profile_fails_the_gate(fp32_bundle, tmp_path, monkeypatch):
    """A plan that computes wrong logits in profile 1 only: the old gate ran its six images as one batch in
    profile 0 and passed it."""
    target = tmp_path / "b"
    shutil.copytree(fp32_bundle, target)
    fake = _fake_tensorrt(monkeypatch, tmp_path)
    context = fake.IExecutionContext
    honest = context._run  # the queued kernels (run at the stream's synchronization; each gate batch waits for it)

    def broken(self, shapes, addresses, *args):
        error = honest(self, shapes, addresses, *args)
        if self._profile == 1:
            out = (ctypes.c_float * int(np.prod(shapes[next(iter(shapes))][:1]))).from_address(addresses["logits"])
            out[0] += 1.0  # one logit off by 1: far beyond the FP32 gate's 1e-3
        return error

    monkeypatch.setattr(context, "_run", broken)
    options = ExportOptions(precision="fp32", trt=TrtBuildOptions(precision="fp32", profiles=[(1, 4, 8),
                                                                                              (1, 16, 32)]),
                            parity_images=6)
    with pytest.raises(PkdError, match=r"^the TensorRT engine failed the parity gate \(max \|delta logit\|"):
        add_engine(target, options)


def test_plan_batches_cover_each_image_once_inside_the_profiles():
    """The plan itself, over many profile sets: each image counted once (when there are enough), every profile
    run, every batch inside its profile, padding only up to a profile's min."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        profiles = []
        for _ in range(rng.integers(1, 4)):
            lo = int(rng.integers(1, 20))
            hi = lo + int(rng.integers(0, 20))
            profiles.append((lo, lo, hi))
        count, preferred = int(rng.integers(1, 60)), int(rng.integers(1, 40))
        chunks = plan_batches(count, profiles, preferred)
        assert [c.profile for c in chunks[:len(profiles)]] == list(range(len(profiles)))
        for c in chunks:
            lo, _, hi = profiles[c.profile]
            assert lo <= c.batch <= hi and 1 <= len(c.rows) <= c.batch
            assert c.batch == len(c.rows) or c.batch == lo  # padded only up to the profile's min
        rows = [r for c in chunks for r in c.rows]
        if count >= len(profiles):
            assert sorted(rows) == list(range(count))
        else:
            assert set(rows) == set(range(count))


def test_plan_batches_refuses_no_images_and_bad_profiles():
    with pytest.raises(PkdError, match="at least one image"):
        plan_batches(0, [(1, 1, 1)], 16)
    with pytest.raises(PkdError, match="1 <= min <= max"):
        plan_batches(3, [(4, 4, 2)], 16)


# ------------------------------------------------------------------ where plans are served: Triton, pkd doctor
def _plan_bundle(fp32_bundle: Path, tmp_path: Path, monkeypatch) -> tuple[Path, dict]:
    """The fp32 bundle with a plan the fake TensorRT 10.3.0 built on the fake Orin (sm_87)."""
    target = tmp_path / "b"
    shutil.copytree(fp32_bundle, target)
    _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    record = add_engine(target, ExportOptions(precision="fp32", trt=TrtBuildOptions(precision="fp32",
                                                                                    profiles=[(1, 4, 8)]),
                                              parity_images=3))
    return target, record


def test_triton_plan_entry_says_which_tensorrt_and_gpu_built_the_plan(fp32_bundle, tmp_path, monkeypatch):
    """Triton deserializes the plan with its own TensorRT: the entry names the TensorRT release, GPU and sm the plan
    needs, in `#` comments Triton's parser (its ModelConfig schema) skips, and keeps the plan's record there."""
    import triton_schema

    from promptkd_edge.export.triton import write_repository
    from promptkd_edge.formats.plan_record import read_plan_record

    bundle, record = _plan_bundle(fp32_bundle, tmp_path, monkeypatch)
    folder = write_repository(bundle, tmp_path / "repo", backend="tensorrt")
    text = (folder / "config.pbtxt").read_text()
    assert "a TensorRT 10.3.0 fp32 plan built on Orin (sm_87)" in text
    assert "Triton\nrelease that ships TensorRT 10.3.0" in text.replace("# ", "")
    config = triton_schema.parse_config(text)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 8)
    assert read_plan_record(text) == {k: record[k] for k in ("tensorrt", "compute_capability", "gpu", "precision",
                                                             "profiles")}


def test_a_gpu_name_cannot_break_out_of_the_comment(fp32_bundle, tmp_path):
    import triton_schema

    from promptkd_edge.export.triton import write_repository
    from promptkd_edge.formats.manifest import EngineEntry, write_manifest
    from promptkd_edge.formats.plan_record import read_plan_record
    from promptkd_edge.runtime.bundle import open_bundle

    bundle = tmp_path / "b"
    shutil.copytree(fp32_bundle, bundle)
    (bundle / "engines").mkdir()
    (bundle / "engines" / "a.plan").write_bytes(b"plan")
    manifest = open_bundle(bundle).manifest
    gpu = 'Orin\nplatform: "onnxruntime_onnx"\r\x85'
    manifest.engines = [EngineEntry(file="engines/a.plan", profiles=[[1, 4, 8]], tensorrt="10.3.0",
                                    compute_capability="8.7", gpu=gpu, precision="fp16")]
    write_manifest(bundle, manifest)
    text = (write_repository(bundle, tmp_path / "repo", backend="tensorrt") / "config.pbtxt").read_text()
    assert triton_schema.parse_config(text).platform == "tensorrt_plan"
    assert read_plan_record(text)["gpu"] == gpu


def _doctor(*args: str) -> dict:
    from typer.testing import CliRunner

    from promptkd_edge.cli import app

    result = CliRunner().invoke(app, ["doctor", "--no-trt-check", *args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_doctor_checks_each_plan_against_this_tensorrt_and_gpu(fp32_bundle, tmp_path, monkeypatch):
    from fake_tensorrt import make_fake_cudart, make_fake_trt

    from promptkd_edge.export.triton import write_repository
    from promptkd_edge.runtime import tensorrt_backend

    bundle, record = _plan_bundle(fp32_bundle, tmp_path, monkeypatch)
    entry = write_repository(bundle, tmp_path / "repo", backend="tensorrt")
    report = _doctor("--bundle", str(bundle), "--json")["bundle"]
    assert report["backend"].startswith("TensorRT 10.3.0")
    [plan] = report["tensorrt_plans"]["plans"]
    assert plan["file"] == record["file"] and plan["runs_here"] is True and plan["detail"].startswith("runs here")

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.4.0"))  # another TensorRT release
    [plan] = _doctor("--bundle", str(bundle), "--json")["bundle"]["tensorrt_plans"]["plans"]
    assert plan["runs_here"] is False
    assert plan["detail"] == (f"{record['file']} was built for TensorRT 10.3.0 on sm_87 (Orin); this machine has "
                              "TensorRT 10.4.0 on sm_87 (Orin): rebuild it here with `pkd export BUNDLE --trt`")

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.3.0"))
    h200 = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))  # the same TensorRT, another GPU architecture
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: h200)
    text = _doctor("--bundle", str(entry))  # a Triton entry: its plan, from the record in config.pbtxt
    assert ("1/model.plan was built for TensorRT 10.3.0 on sm_87 (Orin); this machine has TensorRT 10.3.0 on sm_90 "
            "(NVIDIA H200): rebuild it here with `pkd export BUNDLE --trt`; then write the entry again"
            ) in " ".join(text.split())  # rich wraps lines at the terminal's width


def test_doctor_says_plans_cannot_be_checked_without_tensorrt(fp32_bundle, tmp_path, monkeypatch):
    bundle, record = _plan_bundle(fp32_bundle, tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    check = _doctor("--bundle", str(bundle), "--json")["bundle"]["tensorrt_plans"]
    assert check["reason"].startswith("plans cannot be checked here: TensorRT is not installed")
    assert [(p["file"], p["runs_here"]) for p in check["plans"]] == [(record["file"], None)]
    assert "plans cannot be checked here: TensorRT is not installed" in " ".join(_doctor("--bundle",
                                                                                          str(bundle)).split())
    plain = tmp_path / "plain"
    shutil.copytree(fp32_bundle, plain)
    check = _doctor("--bundle", str(plain), "--json")["bundle"]["tensorrt_plans"]
    assert check["plans"] == [] and check["reason"].startswith("the bundle has no TensorRT plan")


def test_doctor_on_the_real_tensorrt_bindings_without_a_gpu(fp32_bundle, tmp_path):
    """The real TensorRT 10.3 module imports here but no GPU is visible: each plan is listed as not checked, in
    one line, and the bundle still runs on the CPU."""
    import subprocess

    import real_tensorrt

    from promptkd_edge.formats.manifest import EngineEntry, write_manifest
    from promptkd_edge.runtime.bundle import open_bundle

    gen = real_tensorrt.ensure(10)
    bundle = tmp_path / "b"
    shutil.copytree(fp32_bundle, bundle)
    (bundle / "engines").mkdir()
    (bundle / "engines" / "model.plan").write_bytes(b"plan")
    manifest = open_bundle(bundle).manifest
    manifest.engines = [EngineEntry(file="engines/model.plan", tensorrt=gen.version, compute_capability="8.7",
                                    gpu="Orin", precision="fp16", profiles=[[1, 4, 8]])]
    write_manifest(bundle, manifest)
    r = subprocess.run([sys.executable, "-m", "promptkd_edge", "doctor", "--no-trt-check", "--json", "--bundle",
                        str(bundle)], capture_output=True, text=True, env=gen.env(), timeout=600)
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)["bundle"]["tensorrt_plans"]
    assert check["tensorrt"] == gen.version and check["gpu"] is None
    assert check["reason"].startswith("plans cannot be checked here: no CUDA GPU is visible")
    assert [(p["file"], p["runs_here"]) for p in check["plans"]] == [("engines/model.plan", None)]


@pytest.mark.parametrize(("where", "profiles", "message"), [
    ("triton", [(1, 1, 1), (4, 8, 16)], r"^batch 2, 3 lies in none of the plan's profiles"),
    ("deepstream", [(2, 4, 8)], r"^the plan's first optimization profile starts at batch 2"),
], ids=["triton", "deepstream"])
def test_profiles_the_serving_entry_refuses_are_refused_before_the_build(fp32_bundle, tmp_path, monkeypatch, where,
                                                                          profiles, message):
    """`pkd export BUNDLE --trt --triton REPO --triton-backend tensorrt` (or --deepstream) with profiles the entry
    cannot serve: refused before the minutes-long build, not after it."""
    from promptkd_edge.export.add_to_bundle import DeepStreamConfig, TritonEntry, extend_bundle

    bundle = tmp_path / "b"
    shutil.copytree(fp32_bundle, bundle)
    fake = _fake_tensorrt(monkeypatch, tmp_path)
    options = ExportOptions(precision="fp16", trt=TrtBuildOptions(precision="fp16", profiles=profiles),
                            parity_images=3)
    serving = {"triton": TritonEntry(tmp_path / "repo", "tensorrt")} if where == "triton" else \
        {"deepstream": DeepStreamConfig(tmp_path / "ds")}
    with pytest.raises(PkdError, match=message):
        extend_bundle(bundle, options, **serving)
    assert not fake.fake.called("build_serialized_network") and not (tmp_path / "repo").exists()
