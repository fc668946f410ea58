"""The native TensorRT backend (export/cpp/src/tensorrt_backend.cpp) held to the Python runtime.

Built through export/cpp/cmake/TensorRTBackend.cmake against the real TensorRT 10.3 (JetPack 6.1/6.2) and 11.1
headers, a stand-in libnvinfer and the real CUDA 12.6 runtime (tests/native_tensorrt.py). Every expected line is what
the Python runtime (the tensorrt kind of runtime/backends.py, runtime/tensorrt_backend.py) prints for the same bundle,
run on the REAL TensorRT bindings of the same generation (tests/real_tensorrt.py): with the real CUDA runtime (no driver
here), or with the tests' fake cuda-python showing the same fake GPU the native side gets from its fake libcudart, and
past TensorRT's runtime with the same text "plans" on both sides. No real engine runs here.

The driver (tests/native/trt_driver.cpp) opens and runs a plan through the backend alone (`_native` runs
`native_tensorrt.driver_command`), on manifests holding only what that reads; the last test builds the whole library
as a Jetson does (TensorRT on, OpenVINO off) and runs `pkd-classify --backend tensorrt` on a real exported bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import native_tensorrt
import numpy as np
import pytest
import real_tensorrt

GENERATIONS = (10, 11)
NATIVE_NULL = "createInferRuntime returned nullptr"  # the native reason where Python prints pybind11's
PYBIND_NULL = "pybind11::init(): factory function returned nullptr"

# The Python runtime's line for each case: the tensorrt kind's `load` on the case's manifest engines (then `run` on
# its batches), with the real cuda-python (fake_gpu None) or the tests' fake one (tests/fake_tensorrt.py) showing the
# same GPU as the native fake libcudart. For "engine" cases `trt.Runtime` of the real module is replaced by a runtime
# whose plans are the same text as tests/native/fake_nvinfer.cpp reads, and which behaves as that fake does. Prints
# a JSON list.
PYTHON_REFERENCE = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import tensorrt as trt
import promptkd_edge.runtime.tensorrt_backend as tb
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.runtime.backends import KINDS, LoadOptions
sys.path.insert(0, sys.argv[2])
from fake_tensorrt import make_fake_cudart

class Plan:
    def __init__(self, text):
        words = dict(w.split("=", 1) for w in text.split()[1:])
        self.inputs, self.out, self.fail = int(words["inputs"]), int(words["out"]), words["fail"]
        self.dtype, self.outdtype = trt.DataType(int(words["dtype"])), trt.DataType(int(words["outdtype"]))
        self.shape = tuple(int(d) for d in words["shape"].split(","))
        self.profiles = [tuple(int(b) for b in p.split(":")) for p in words["profiles"].split(",")]
        self.names = ["image" + (str(i) if i else "") for i in range(self.inputs)] + ["logits"]

class Context:
    def __init__(self, plan):
        self.plan, self.profile, self.batch = plan, 0, -1
    def set_optimization_profile_async(self, index, stream):
        if self.plan.fail == "profile":
            raise RuntimeError("Error in set optimization profile async.")
        self.profile = index
    def set_input_shape(self, name, shape):
        lo, hi = self.plan.profiles[self.profile]
        ok = self.plan.fail != "shape" and lo <= shape[0] <= hi
        self.batch = shape[0] if ok else self.batch
        return ok
    def set_tensor_address(self, name, ptr):
        return True
    def get_tensor_shape(self, name):
        return (self.batch, self.plan.out) if name == "logits" else (self.batch, *self.plan.shape)
    def execute_async_v3(self, stream):
        return self.plan.fail != "enqueue"

class Engine:
    def __init__(self, plan):
        self.plan = plan
        self.num_io_tensors, self.num_optimization_profiles = len(plan.names), len(plan.profiles)
    def create_execution_context(self):
        return None if self.plan.fail == "context" else Context(self.plan)
    def get_tensor_name(self, i):
        return self.plan.names[i]
    def get_tensor_mode(self, name):
        return trt.TensorIOMode.OUTPUT if name == "logits" else trt.TensorIOMode.INPUT
    def get_tensor_dtype(self, name):
        return self.plan.outdtype if name == "logits" else self.plan.dtype
    def get_tensor_shape(self, name):
        return (-1, self.plan.out) if name == "logits" else (-1, *self.plan.shape)
    def get_tensor_profile_shape(self, name, p):
        lo, hi = self.plan.profiles[p]
        return (lo, *self.plan.shape), (hi, *self.plan.shape), (hi, *self.plan.shape)

class Runtime:
    def __init__(self, logger):
        pass
    def deserialize_cuda_engine(self, blob):
        plan = Plan(blob.decode())
        return None if plan.fail == "deserialize" else Engine(plan)

real_cudart, real_runtime = tb.load_cudart, trt.Runtime
out = []
for case in json.loads(sys.argv[1]):
    if case["fake_gpu"]:
        cc, name = case["fake_gpu"].split(":", 1)
        rt = make_fake_cudart(name=name, capability=tuple(int(x) for x in cc.split(".")))
        tb.load_cudart = lambda rt=rt: rt
    else:
        tb.load_cudart = real_cudart
    trt.Runtime = Runtime if case["engine"] else real_runtime
    manifest = json.loads((Path(case["bundle"]) / "manifest.json").read_text())
    bundle = SimpleNamespace(path=Path(case["bundle"]), engines=[EngineEntry.from_dict(e) for e in manifest["engines"]])
    try:
        backend = KINDS["tensorrt"].load(bundle, LoadOptions(device_id=case["device"]))
        shape = manifest["model"]["inputs"][0]["shape"][1:]
        for batch in case["batches"]:
            backend.run(np.zeros((batch, *shape), dtype=manifest["model"]["inputs"][0]["dtype"]))
        out.append(f"OK: {backend.description}; max_batch {backend.max_batch}")
    except PkdError as e:
        out.append(str(e))
print(json.dumps(out))
"""

# Text plans for the fake libnvinfer (tests/native/fake_nvinfer.cpp): uint8 NHWC input, float32 output, two profiles.
SHAPE = (5, 4, 3)  # rows of 60 made-up pixels: each row of a batch sums differently


def fake_plan(inputs: int = 1, dtype: int = 5, shape=SHAPE, out: int = 6, outdtype: int = 0,
              profiles: str = "1:4,5:8", fail: str = "none") -> str:
    """A plan the fake runtime "deserializes": DataType values as in NvInferRuntimeBase.h (kFLOAT 0, kHALF 1,
    kUINT8 5, kBF16 7)."""
    return (f"PKDFAKEPLAN inputs={inputs} dtype={dtype} shape={','.join(map(str, shape))} out={out} "
            f"outdtype={outdtype} profiles={profiles} fail={fail}")


def _engine(bundle: Path, name: str, tensorrt: str, cc: str = "8.7", gpu: str = "Orin", parity: bool = True,
            tamper: bool = False, plan_text: str | None = None) -> dict:
    """A plan file and its manifest record (what export/tensorrt_build.py records)."""
    plan = bundle / "engines" / name
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes((plan_text or fake_plan()).encode())
    digest = hashlib.sha256(plan.read_bytes()).hexdigest()
    if tamper:
        plan.write_bytes(b"plan, modified")
    return {"file": f"engines/{name}", "sha256": digest, "tensorrt": tensorrt, "gpu": gpu, "compute_capability": cc,
            "precision": "fp16", "profiles": [[1, 4, 8]], "onnx": "model.onnx", "parity_passed": parity}


def _bundle(root: Path, name: str, engines, input_format: str = "uint8") -> Path:
    """A bundle folder with what opening its plan reads: manifest (model input, engines) and the plans."""
    bundle = root / name
    bundle.mkdir(parents=True)
    records = [_engine(bundle, *e[:2], **e[2]) if len(e) > 2 else _engine(bundle, *e) for e in engines]
    spec = ({"shape": ["batch", *SHAPE], "dtype": "uint8", "layout": "NHWC"} if input_format == "uint8" else
            {"shape": ["batch", SHAPE[2], SHAPE[0], SHAPE[1]], "dtype": "float32", "layout": "NCHW"})
    model = {"file": "model.onnx", "precision": "fp32", "head": "logits", "input_format": input_format,
             "inputs": [{"name": "image", **spec}],
             "outputs": [{"name": "logits", "shape": ["batch", 6], "dtype": "float32"}]}
    (bundle / "manifest.json").write_text(json.dumps({"schema_version": 1, "format": "promptkd-edge/bundle",
                                                      "model": model, "engines": records}))
    return bundle


def _cases(root: Path, python_version: str) -> list[dict]:
    """The cases, each a bundle opened on a fake GPU (or none) and the batches then run. `python_version` is the real
    bindings' `trt.__version__`, which the fake libnvinfer also reports."""
    older = "10.2.0" if python_version.startswith("10.") else "11.3.0.1"

    def case(id_: str, engines, fake_gpu: str | None = "8.7:Orin", device: int = 0, engine: bool = False,
             batches: tuple[int, ...] = (), input_format: str = "uint8") -> dict:
        return {"id": id_, "bundle": _bundle(root, id_, engines, input_format), "fake_gpu": fake_gpu,
                "device": device, "engine": engine, "batches": list(batches)}

    def plan(**kw) -> list[tuple]:
        return [("m.plan", python_version, {"plan_text": fake_plan(**kw)})]

    return [
        case("no-gpu", [("m.plan", python_version)], fake_gpu=None),
        case("other-tensorrt", [("m.plan", older)]),
        case("other-cc-first-named", [("thor.plan", python_version, {"cc": "11.0", "gpu": "Thor"}),
                                      ("old.plan", older)]),
        case("tampered-plan", [("m.plan", python_version, {"tamper": True})]),
        case("second-record-used", [("sm90.plan", python_version, {"cc": "9.0", "gpu": "NVIDIA H200"}),
                                    ("orin.plan", python_version, {"tamper": True})]),
        case("no-passed-plan", [("m.plan", python_version, {"parity": False})]),
        case("runtime-null", [("m.plan", python_version)]),
        case("gpu-1-of-1", [("m.plan", python_version)], device=1),
        # a runtime that starts (the fake libnvinfer's text plans), failing at each later step
        case("engine-null", plan(fail="deserialize"), engine=True),
        case("context-null", plan(fail="context"), engine=True),
        case("two-inputs", plan(inputs=2), engine=True),
        case("bf16-tensor", plan(outdtype=7), engine=True),
        case("batch-outside-profiles", plan(), engine=True, batches=(2, 9)),
        case("shape-rejected", plan(fail="shape"), engine=True, batches=(2,)),
        case("profile-switch-fails", plan(fail="profile"), engine=True, batches=(2, 6)),
        case("enqueue-fails", plan(fail="enqueue"), engine=True, batches=(3,)),
        # runs: uint8 NHWC in, float32 out; float32 NCHW in, float16 out; profile 0, 1, then 0 again
        case("runs-uint8", plan(), engine=True, batches=(2, 6, 3)),
        case("runs-float-fp16", plan(dtype=0, shape=(SHAPE[2], SHAPE[0], SHAPE[1]), outdtype=1), engine=True,
             batches=(1, 8, 4), input_format="normalized"),
        # what only the native side checks: the plan's input against the bundle's (Python converts silently)
        case("float-plan-uint8-bundle", plan(dtype=0), engine=True),
        case("other-image-size", plan(shape=(6, 4, 3)), engine=True),
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
    spec = json.dumps([{**c, "bundle": str(c["bundle"])} for c in cases])
    done = real_tensorrt.run_python(gen, PYTHON_REFERENCE, spec, str(Path(__file__).parent))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    by_id = {c["id"]: (c, line) for c, line in zip(cases, expected, strict=True)}
    return {"built": built, "version": gen.version, "cases": by_id}


def _native(generation, case: dict, threads: int = 0) -> subprocess.CompletedProcess:
    built = generation["built"]
    env = native_tensorrt.env(fake_gpu=case["fake_gpu"], tensorrt=_stub_version(generation["version"]),
                              engine=case["engine"])
    command = native_tensorrt.driver_command(built, case["bundle"], case["device"], tuple(case["batches"]), threads)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


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


@pytest.mark.parametrize("case_id", ["other-tensorrt", "other-cc-first-named", "tampered-plan", "second-record-used",
                                     "no-passed-plan", "gpu-1-of-1"])
def test_plan_refusals_match_the_python_runtime(generation, case_id):
    """With one fake GPU: each refusal is the Python runtime's line, word for word."""
    native, python = _refusal(generation, case_id)
    assert native == python


@pytest.mark.parametrize("case_id", ["engine-null", "context-null", "two-inputs", "bf16-tensor",
                                     "batch-outside-profiles", "shape-rejected", "enqueue-fails"])
def test_engine_refusals_match_the_python_runtime(generation, case_id):
    """Past createInferRuntime (the fake libnvinfer's text plans): each later refusal, at open or in run(), is the
    Python runtime's line."""
    native, python = _refusal(generation, case_id)
    assert native == python


def test_profile_switch_failure_line(generation):
    """Python names the binding's exception; the native line names the C++ call that returned false."""
    native, python = _refusal(generation, "profile-switch-fails")
    assert python == "TensorRT could not switch to optimization profile 1 (Error in set optimization profile async.)"
    assert native == python.replace("Error in set optimization profile async.",
                                    "setOptimizationProfileAsync returned false")


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


def _made_up_rows(batch: int, row: int, uint8: bool) -> np.ndarray:
    """Each image's sum, of the input tests/native/trt_driver.cpp makes: element i = (i * 7 + 3) % 256 (/ 255)."""
    x = ((np.arange(batch * row) * 7 + 3) % 256).astype(np.uint8)
    values = x.astype(np.float64) if uint8 else (x.astype(np.float32) / np.float32(255)).astype(np.float64)
    return values.reshape(batch, row).sum(axis=1)


def _outputs(stdout: str) -> list[np.ndarray]:
    blocks, lines = [], stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("output "):
            batch, width = (int(v) for v in line.split()[1:])
            blocks.append(np.array([[float(v) for v in row.split()] for row in lines[i + 1:i + 1 + batch]]))
            assert blocks[-1].shape == (batch, width)
    return blocks


@pytest.mark.parametrize(("case_id", "uint8", "rtol"), [("runs-uint8", True, 1e-7), ("runs-float-fp16", False, 1e-3)],
                         ids=["uint8-in", "float-in-fp16-out"])
def test_runs_copy_each_batch_through_the_profile_that_holds_it(generation, case_id, uint8, rtol):
    """The fake engine writes 0.001 * sum(image) + j + 100 * active profile: every row of every batch comes back from
    the right input, through the first profile that holds its batch (a switch back to profile 0 included), float16
    output widened. The description and max_batch are the Python backend's."""
    case, python_line = generation["cases"][case_id]
    run = _native(generation, case)
    assert run.returncode == 0, run.stderr
    description, max_batch = run.stdout.splitlines()[:2]
    assert python_line == f"OK: {description}; {max_batch}"
    blocks = _outputs(run.stdout)
    assert [len(b) for b in blocks] == case["batches"]
    for batch, got in zip(case["batches"], blocks, strict=True):
        profile = 0 if batch <= 4 else 1
        sums = _made_up_rows(batch, int(np.prod(SHAPE)), uint8)
        expected = 0.001 * sums[:, None] + np.arange(got.shape[1])[None, :] + 100 * profile
        np.testing.assert_allclose(got, expected, rtol=rtol)
        assert len(set(sums)) == batch  # the rows differ: a row copied from the wrong image shows


@pytest.mark.parametrize("case_id", ["float-plan-uint8-bundle", "other-image-size"])
def test_a_plan_that_does_not_take_the_bundles_input_is_refused(generation, case_id):
    """A float32 plan in a uint8 bundle, or one for another image size: one line naming both sides, exit 2 (the
    Python runtime converts the dtype silently and fails later on the shape)."""
    case, _python = generation["cases"][case_id]
    run = _native(generation, case)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    line = run.stderr.strip()
    want = "DataType.FLOAT input" if case_id == "float-plan-uint8-bundle" else "batchx6x4x3 DataType.UINT8 input"
    assert line.startswith("error: the bundle's model input image (-1, 5, 4, 3) (uint8) does not fit the engine's ")
    assert want in line and line.endswith("rebuild it here with `pkd export BUNDLE --trt`"), line


def test_one_backend_from_several_threads(generation):
    """One backend, four threads running batches of different sizes at once (shared context, profile and buffers):
    every output equals its single-threaded one."""
    case, _python = generation["cases"]["runs-uint8"]
    run = _native(generation, case, threads=4)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "threads: 0 outputs differ"


# ------------------------------------------------------------------ the whole library, as a Jetson builds it
PYTHON_OPENS = """
import sys
from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.runtime.classifier import Classifier
try:
    Classifier.from_bundle(sys.argv[1], backend="tensorrt").close()
    print("opened")
except PkdError as e:
    print(first_line(e, with_type=False))
"""


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """A real (tiny) FP32 bundle of the session's run."""
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    out = tmp_path_factory.mktemp("native-trt-bundle") / "bundle"
    export_run(tiny_run, out, ExportOptions(parity_images=4))
    return out


def _with_plan(bundle: Path, dest: Path, tensorrt: str, *, parity: bool = True, tamper: bool = False) -> Path:
    """A copy of `bundle` with a plan recorded in its manifest, as `pkd export BUNDLE --trt` records one."""
    import shutil

    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    record = _engine(dest, "model.fp16.plan", tensorrt, parity=parity)
    manifest["engines"] = [record]
    manifest["files"][record["file"]] = record["sha256"]
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if tamper:
        (dest / record["file"]).write_bytes(b"plan, modified")
    return dest


EXPECTED_START = {"no-gpu": "no CUDA GPU is visible (cudaErrorInsufficientDriver)",
                  "no-passed-plan": "bundle ", "tampered-plan": "bundle "}
EXPECTED_IN = {"no-gpu": "TensorRT needs an NVIDIA GPU", "no-passed-plan": "holds no TensorRT plan",
               "tampered-plan": "was modified: engines/model.fp16.plan does not match its sha256"}


@pytest.mark.parametrize("major", GENERATIONS)
def test_pkd_classify_built_for_tensorrt_ends_in_the_python_runtimes_lines(major, exported, tmp_path):
    """export/cpp configured as on a Jetson (TensorRT on, OpenVINO off) against the real headers, the stub libnvinfer
    and the real CUDA runtime: `pkd-classify BUNDLE IMAGE --backend tensorrt` reads the bundle through the core and
    ends, in one line with exit 2, exactly where `Classifier.from_bundle(..., backend="tensorrt")` ends on the real
    bindings: no GPU (the plan passed its gate), no usable plan (it did not), a plan modified after export."""
    from native_build import build

    built = build([f"-DTensorRT_ROOT={native_tensorrt.tensorrt_root(major)}",
                   f"-DPKD_CUDA_ROOTS={';'.join(str(r) for r in native_tensorrt.cuda().roots)}",
                   "-DPKD_WITH_TENSORRT=ON"], with_openvino=False)
    gen = real_tensorrt.ensure(major)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    cases = {"no-gpu": {}, "no-passed-plan": {"parity": False}, "tampered-plan": {"tamper": True}}
    for name, kw in cases.items():
        bundle = _with_plan(exported, tmp_path / name, gen.version, **kw)
        python = real_tensorrt.run_python(gen, PYTHON_OPENS, str(bundle))
        assert python.returncode == 0, python.stderr[-2000:]
        native = subprocess.run([str(built / "pkd-classify"), str(bundle), str(image), "--backend", "tensorrt"],
                                capture_output=True, text=True, env=native_tensorrt.env(tensorrt=_stub_version(
                                    gen.version)), timeout=60)
        assert native.returncode == 2 and native.stdout == "", (name, native.returncode, native.stdout)
        assert native.stderr.strip().splitlines() == [f"error: {python.stdout.strip()}"], name
        assert python.stdout.startswith(EXPECTED_START[name]) and EXPECTED_IN[name] in python.stdout, python.stdout
