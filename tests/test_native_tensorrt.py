"""The native TensorRT backend (export/cpp/src/tensorrt_backend.cpp) held to the Python runtime.

Built through export/cpp/cmake/TensorRTBackend.cmake against the real TensorRT 10.3 (JetPack 6.1/6.2) and 11.1
headers, a stub libnvinfer and the real CUDA 12.6 runtime (tests/native_tensorrt.py). Every expected line is what the
Python runtime (runtime/classifier.py `_tensorrt`, runtime/tensorrt_backend.py) prints for the same bundle, run on the
REAL TensorRT bindings of the same generation (tests/real_tensorrt.py): with the real CUDA runtime (no driver here), or
with a fake cuda-python runtime showing the same fake GPU the native side gets from its fake libcudart. No engine runs:
the stub libnvinfer's createInferRuntime returns NULL, as TensorRT does where no GPU can start.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import native_tensorrt
import pytest
import real_tensorrt

GENERATIONS = (10, 11)
NATIVE_NULL = "createInferRuntime returned nullptr"  # the native reason where Python prints pybind11's
PYBIND_NULL = "pybind11::init(): factory function returned nullptr"

# The Python runtime's line for each case: `_tensorrt` on the case's manifest engines, with the real cuda-python
# (fake_gpu None) or a fake one that shows one GPU ("8.7:Orin"). Prints a JSON list of lines ("OK" if none).
PYTHON_REFERENCE = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import promptkd_edge.runtime.tensorrt_backend as tb
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.runtime.classifier import _tensorrt

def fake_cudart(spec):
    cc, name = spec.split(":", 1)
    major, minor = (int(x) for x in cc.split("."))
    props = SimpleNamespace(name=name.encode(), major=major, minor=minor)
    count = lambda: (0, 1)
    return SimpleNamespace(cudaError_t=SimpleNamespace(cudaSuccess=0), cudaGetDeviceCount=count,
                           cudaDriverGetVersion=lambda: (0, 12060), cudaRuntimeGetVersion=lambda: (0, 12060),
                           cudaGetDeviceProperties=lambda d: (0, props) if d == 0 else (101, None),
                           cudaSetDevice=lambda d: (0,), cudaGetErrorName=lambda e: (0, b"cudaErrorInvalidDevice"))

real = tb.load_cudart
out = []
for case in json.loads(sys.argv[1]):
    tb.load_cudart = (lambda c=case: fake_cudart(c["fake_gpu"])) if case["fake_gpu"] else real
    manifest = json.loads((Path(case["bundle"]) / "manifest.json").read_text())
    bundle = SimpleNamespace(path=Path(case["bundle"]), engines=[EngineEntry.from_dict(e) for e in manifest["engines"]])
    try:
        _tensorrt(bundle, case["device"])
        out.append("OK")
    except PkdError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def _engine(bundle: Path, name: str, tensorrt: str, cc: str = "8.7", gpu: str = "Orin", parity: bool = True,
            tamper: bool = False) -> dict:
    """A plan file and its manifest record (what export/tensorrt_build.py records)."""
    plan = bundle / "engines" / name
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"plan " + name.encode())
    digest = hashlib.sha256(plan.read_bytes()).hexdigest()
    if tamper:
        plan.write_bytes(b"plan, modified")
    return {"file": f"engines/{name}", "sha256": digest, "tensorrt": tensorrt, "gpu": gpu, "compute_capability": cc,
            "precision": "fp16", "profiles": [[1, 4, 8]], "onnx": "model.onnx", "parity_passed": parity}


def _bundle(root: Path, name: str, engines) -> Path:
    """A bundle folder with what opening its plan reads: manifest (model input, engines) and the plans."""
    bundle = root / name
    bundle.mkdir(parents=True)
    records = [_engine(bundle, *e[:2], **e[2]) if len(e) > 2 else _engine(bundle, *e) for e in engines]
    model = {"file": "model.onnx", "precision": "fp32", "head": "logits", "input_format": "uint8",
             "inputs": [{"name": "image", "shape": ["batch", 32, 32, 3], "dtype": "uint8", "layout": "NHWC"}],
             "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]}
    (bundle / "manifest.json").write_text(json.dumps({"schema_version": 1, "format": "promptkd-edge/bundle",
                                                      "model": model, "engines": records}))
    return bundle


def _cases(root: Path, python_version: str) -> list[dict]:
    """(bundle, fake GPU, device) cases, each with what it proves. `python_version` is the real bindings'
    `trt.__version__`, which the stub libnvinfer also reports."""
    older = "10.2.0" if python_version.startswith("10.") else "11.3.0.1"
    this = {"fake_gpu": "8.7:Orin", "device": 0}
    return [
        {"id": "no-gpu", "bundle": _bundle(root, "plain", [("m.plan", python_version)]),
         "fake_gpu": None, "device": 0},
        {"id": "other-tensorrt", "bundle": _bundle(root, "old-trt", [("m.plan", older)]), **this},
        {"id": "other-cc-first-named",
         "bundle": _bundle(root, "other-cc", [("thor.plan", python_version, {"cc": "11.0", "gpu": "Thor"}),
                                              ("old.plan", older)]), **this},
        {"id": "tampered-plan", "bundle": _bundle(root, "tampered", [("m.plan", python_version, {"tamper": True})]),
         **this},
        {"id": "second-record-used", "bundle": _bundle(root, "second", [
            ("sm90.plan", python_version, {"cc": "9.0", "gpu": "NVIDIA H200"}),
            ("orin.plan", python_version, {"tamper": True})]), **this},
        {"id": "no-passed-plan",
         "bundle": _bundle(root, "unpassed", [("m.plan", python_version, {"parity": False})]), **this},
        {"id": "runtime-null", "bundle": _bundle(root, "plain-fake", [("m.plan", python_version)]), **this},
        {"id": "gpu-1-of-1", "bundle": _bundle(root, "device1", [("m.plan", python_version)]), "fake_gpu": "8.7:Orin",
         "device": 1},
    ]


def _stub_version(python_version: str) -> str:
    """What the stub libnvinfer reports for a Python `trt.__version__` ("10.3.0" -> "10.3.0.26")."""
    return python_version if python_version.count(".") == 3 else python_version + ".26"


@pytest.fixture(scope="module", params=GENERATIONS, ids=[f"trt{g}" for g in GENERATIONS])
def generation(request, tmp_path_factory):
    """The native build and the Python runtime's lines for every case, for one TensorRT generation."""
    major = request.param
    built = native_tensorrt.build(major)
    gen = real_tensorrt.ensure(major)
    cases = _cases(tmp_path_factory.mktemp(f"native-trt{major}"), gen.version)
    spec = json.dumps([{"bundle": str(c["bundle"]), "fake_gpu": c["fake_gpu"], "device": c["device"]} for c in cases])
    done = real_tensorrt.run_python(gen, PYTHON_REFERENCE, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    by_id = {c["id"]: (c, line) for c, line in zip(cases, expected, strict=True)}
    return {"built": built, "version": gen.version, "cases": by_id}


def _native(generation, case: dict) -> subprocess.CompletedProcess:
    built = generation["built"]
    env = native_tensorrt.env(fake_gpu=case["fake_gpu"], tensorrt=_stub_version(generation["version"]))
    return subprocess.run(native_tensorrt.driver_command(built, case["bundle"], case["device"]), capture_output=True,
                          text=True, env=env, timeout=60)


def _refusal(generation, case_id: str) -> tuple[str, str]:
    """(native line, Python line) of a case the native side must refuse in one line with exit 2."""
    case, python_line = generation["cases"][case_id]
    run = _native(generation, case)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0][len("error: "):], python_line


def test_no_gpu_line_from_the_real_cuda_runtime(generation):
    """Compiled and linked against the real headers, the stub libnvinfer and the wheel's real libcudart.so.12: the
    real CUDA runtime finds no driver and the native side ends in the Python runtime's line, exit 2."""
    native, python = _refusal(generation, "no-gpu")
    assert python.startswith("no CUDA GPU is visible (cudaErrorInsufficientDriver)")
    assert native == python


@pytest.mark.parametrize("case_id", ["other-tensorrt", "other-cc-first-named",
                                     "tampered-plan", "second-record-used", "no-passed-plan", "gpu-1-of-1"])
def test_plan_refusals_match_the_python_runtime(generation, case_id):
    """With one fake GPU: each refusal is the Python runtime's line, word for word."""
    native, python = _refusal(generation, case_id)
    assert native == python


def test_runtime_null_line(generation):
    """A plan that matches this TensorRT and GPU reaches createInferRuntime; NULL (no usable GPU) is the Python
    runtime's line, with the C++ call named where Python names pybind11's factory."""
    native, python = _refusal(generation, "runtime-null")
    assert PYBIND_NULL in python
    assert native == python.replace(PYBIND_NULL, NATIVE_NULL)


def test_cmake_finds_both_layouts_and_reads_both_version_headers(generation):
    """FindTensorRT through TensorRT_ROOT: a tarball layout (10.3) and JetPack's multiarch one (11.1, include/<arch>),
    the version read from NvInferVersion.h (11.1 defines NV_TENSORRT_MAJOR as TRT_MAJOR_ENTERPRISE), the CUDA runtime
    from the 12.6 wheels only."""
    major = generation["built"].major
    log = generation["built"].configure_log
    assert f"TensorRT {native_tensorrt.DEFAULT_VERSION[major].rsplit('.', 1)[0]} (" in log, log
    arch = f"/include/{os.uname().machine}-linux-gnu," if major == 11 else "/include,"
    assert arch in log, log
    assert "CUDA runtime 12.6 (" in log and "native-trt-cuda12.6/cuda_runtime/lib/libcudart.so.12)" in log, log


def test_cmake_refuses_tensorrt_8(tmp_path):
    """A TensorRT older than 10 (JetPack 5's 8.x: no Dims64) fails at configure time, naming the version found."""
    root = tmp_path / "trt8"
    (root / "include").mkdir(parents=True)
    (root / "include" / "NvInfer.h").write_text("")
    (root / "include" / "NvInferVersion.h").write_text(
        "#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n#define NV_TENSORRT_PATCH 2\n")
    (root / "lib").mkdir()
    (root / "lib" / "libnvinfer.so").symlink_to(native_tensorrt.tensorrt_root(10) / "lib" / "libnvinfer.so.10")
    done = native_tensorrt.configure(root, tmp_path / "build")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert 'Found unsuitable version "8.6.2", but required is at least "10"' in message, done.stderr
