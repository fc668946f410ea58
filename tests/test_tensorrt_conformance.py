"""The REAL TensorRT 10.3 and 11.4 bindings judge the fakes and the package (tests/real_tensorrt.py).

- The fakes: every enum, class, member and method parameter they define exists in the real module of the same
  generation, with the same values, kinds and names (they are generated from the real surface; this holds them to
  it). The fake cuda-python runtime against the real `cuda.bindings.runtime`.
- The package: every `trt.*` name it uses exists in the generation whose code path uses it.
- The package on the real bindings without TensorRT's libraries or a GPU: `pkd doctor`, `pkd export --trt`, the
  self test and the runtime each say so in one line (no segfault, no NoneType error), and nothing is written.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import real_tensorrt
from fake_tensorrt import (
    FAKE_CLASSES,
    FAKE_CUDART_FUNCTIONS,
    Checked,
    FakeEnum,
    make_fake_cudart,
    make_fake_trt,
    real_member,
    real_surface,
)

from promptkd_edge.export.tensorrt_build import FP32_LAYER_TYPES
from promptkd_edge.runtime.tensorrt_backend import NUMPY_DTYPES

PACKAGE = Path(__file__).resolve().parent.parent / "promptkd_edge"
GENERATIONS = [10, 11]


@pytest.fixture(scope="module", params=GENERATIONS, ids=["trt10.3", "trt11.4"])
def generation(request) -> int:
    return request.param


# ------------------------------------------------------------------------------------------------ the fakes
def test_fake_enums_are_the_real_ones(generation):
    api, fake = real_surface(generation), make_fake_trt(generation)
    assert fake.__version__ == real_tensorrt.WHEELS[generation][1] == api["version"]
    fake_enums = {n: v for n, v in vars(fake).items() if isinstance(v, type) and issubclass(v, FakeEnum)}
    assert set(fake_enums) == set(api["enums"])
    for name, enum in fake_enums.items():
        assert {k: int(m) for k, m in enum.__members__.items()} == api["enums"][name], name
    for name, value in api["values"].items():  # trt.float32, trt.int8, ...
        if value["enum"] in api["enums"]:
            assert getattr(fake, name) is getattr(fake, value["enum"])[value["member"]]


def test_facts_the_hand_written_fakes_had_wrong():
    t10, t11 = real_surface(10), real_surface(11)
    assert {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}.items() <= t10["enums"]["NetworkDefinitionCreationFlag"].items()
    assert t11["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 0
    assert t11["enums"]["MemoryPoolType"]["WORKSPACE"] == 0
    assert (t11["enums"]["TensorIOMode"]["INPUT"], t11["enums"]["TensorIOMode"]["OUTPUT"]) == (1, 2)
    assert {k: t11["enums"]["LayerType"][k] for k in ("CONVOLUTION", "CAST", "SOFTMAX", "MATRIX_MULTIPLY",
                                                     "NORMALIZATION")} == {
        "CONVOLUTION": 0, "CAST": 1, "SOFTMAX": 6, "MATRIX_MULTIPLY": 17, "NORMALIZATION": 45}
    assert not {"FP16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS"} & set(t11["enums"]["BuilderFlag"])
    assert {"FP16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS"} <= set(t10["enums"]["BuilderFlag"])
    assert real_member(t10, "ILayer", "precision") and real_member(t11, "ILayer", "precision") is None


def _own_members(cls: type) -> dict[str, object]:
    """Public names a fake class defines itself (not inherited from the checking base)."""
    out = {}
    for klass in cls.__mro__:
        if klass in (Checked, object, bytes):
            break
        for name, value in vars(klass).items():
            if not name.startswith("_") and name not in out:
                out[name] = value
    return out


def test_fake_classes_have_only_real_members_with_real_signatures(generation):
    api, fake = real_surface(generation), make_fake_trt(generation)
    for cls_name in FAKE_CLASSES:
        cls = getattr(fake, cls_name)
        assert cls_name in api["classes"], cls_name
        for name, value in _own_members(cls).items():
            member = real_member(api, cls_name, name)
            assert member is not None, f"{cls_name}.{name} is not in TensorRT {api['version']}"
            if isinstance(value, property):
                assert member["kind"] == "property", f"{cls_name}.{name}"
                if value.fset is not None:
                    assert member["set"], f"{cls_name}.{name} is read-only in TensorRT {api['version']}"
            elif isinstance(value, type) and issubclass(value, FakeEnum):
                assert member["kind"] == "enum"
                assert {k: int(m) for k, m in value.__members__.items()} == member["members"]
            elif isinstance(value, FakeEnum):
                assert member["kind"] == "value" and member["member"] == value.name
            elif callable(value):
                assert member["kind"] == "method", f"{cls_name}.{name}"
                params = [p for p in inspect.signature(value).parameters.values() if p.name != "self"]
                names = [p.name for p in params]
                assert any([p["name"] for p in sig["params"]] == names for sig in member["signatures"]), \
                    f"{cls_name}.{name}{tuple(names)} matches no real signature {member['signatures']}"
        init = real_member(api, cls_name, "__init__")
        own_init = cls.__dict__.get("__init__") if cls_name in ("Logger", "Builder", "OnnxParser", "Runtime") else None
        if own_init is not None:  # the constructors code under test calls
            names = [p for p in inspect.signature(own_init).parameters if p != "self"]
            assert any([p["name"] for p in s["params"]] == names for s in init["signatures"]), cls_name


def test_fake_module_has_only_real_names(generation):
    api, fake = real_surface(generation), make_fake_trt(generation)
    real = {*api["enums"], *api["classes"], *api["values"], *api["functions"]}
    extra = {n for n in vars(fake) if not n.startswith("_")} - real - {"fake"}
    assert not extra, f"the fake defines names TensorRT {api['version']} does not have: {sorted(extra)}"


def test_checked_fakes_refuse_what_the_real_api_refuses():
    t11, t10 = make_fake_trt(11), make_fake_trt(10)
    builder = t11.Builder(t11.Logger(t11.Logger.WARNING))
    network = builder.create_network(1)
    parser = t11.OnnxParser(network, t11.Logger())
    config = builder.create_builder_config()
    with pytest.raises(AttributeError, match="no attribute 'platform_has_fast_fp16'"):
        builder.platform_has_fast_fp16  # noqa: B018 - removed in TensorRT 11
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(t11.MemoryPoolType.WORKSPACE, 1.5)  # a float size
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(pool=t11.MemoryPoolType.WORKSPACE, size=1)  # the real keyword is pool_size
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(t11.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # an enum where int flags go
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_flag(t10.BuilderFlag.FP16)  # another generation's enum
    with pytest.raises(AttributeError, match="cannot be set"):
        config.max_workspace_size = 1 << 30  # gone since TensorRT 10
    with pytest.raises(TypeError, match="No constructor defined"):
        t11.IBuilderConfig()
    with pytest.raises(TypeError, match="missing"):
        t11.Runtime()
    assert parser.num_errors == 0


def test_fake_cudart_matches_real_cuda_python():
    from cuda.bindings import runtime as real

    fake = make_fake_cudart()
    for name in FAKE_CUDART_FUNCTIONS:
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        assert list(inspect.signature(getattr(fake, name)).parameters) == real_params, name
    assert fake.cudaError_t is real.cudaError_t and fake.cudaMemcpyKind is real.cudaMemcpyKind
    enums = {"cudaError_t", "cudaMemcpyKind"}
    unchecked = {n for n in vars(fake) if n.startswith("cuda")} - {*FAKE_CUDART_FUNCTIONS, *enums}
    assert not unchecked, f"fake cudart functions not held against the real signatures: {sorted(unchecked)}"
    err, count = real.cudaGetDeviceCount()  # no driver here: an error code and None, never an exception
    assert err != real.cudaError_t.cudaSuccess and fake.cudaGetDeviceCount.__name__ == "cudaGetDeviceCount"


# ------------------------------------------------------------------------------------------------ the package
def _trt_names(tree: ast.AST, api: int) -> set[str]:
    """`trt.X` and `trt.X.Y` the code reaches on TensorRT `api`: branches on `api` are followed for that value."""
    found: set[str] = set()

    def taken(test: ast.expr) -> bool | None:
        """Whether a branch on `api` is taken: None when the test does not decide on `api` alone."""
        if isinstance(test, ast.BoolOp):  # `api == 10 and x`: decided when an `api` operand decides it
            known = [taken(v) for v in test.values]
            decisive = isinstance(test.op, ast.And) and False in known or isinstance(test.op, ast.Or) and True in known
            return (not isinstance(test.op, ast.And)) if decisive else None
        names = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
        if names != {"api"}:
            return None
        return bool(eval(compile(ast.Expression(test), "<api>", "eval"), {"api": api}))  # noqa: S307

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If | ast.IfExp):
            branch = taken(node.test)
            if branch is not None:
                body = node.body if branch else node.orelse
                for child in body if isinstance(body, list) else [body]:
                    visit(child)
                return
        if isinstance(node, ast.Attribute):
            chain = []
            current: ast.AST = node
            while isinstance(current, ast.Attribute):
                chain.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name) and current.id == "trt":
                found.add(".".join(reversed(chain[-2:])))
                return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _exists(api: dict, dotted: str) -> bool:
    head, _, tail = dotted.partition(".")
    if head.startswith("__"):
        return head == "__version__"
    if head in api["enums"]:
        return not tail or tail in api["enums"][head]
    if head in api["classes"]:
        return not tail or real_member(api, head, tail) is not None
    return not tail and (head in api["values"] or head in api["functions"])


def test_package_uses_only_real_tensorrt_names(generation):
    api = real_surface(generation)
    used: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _trt_names(ast.parse(path.read_text()), generation):
            used.setdefault(name, []).append(path.relative_to(PACKAGE.parent).as_posix())
    assert {"Builder", "OnnxParser", "Runtime", "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT"} <= set(used)
    if generation == 10:
        assert "BuilderFlag.FP16" in used
    else:
        # TensorRT 11 code paths set no precision flags: only TF32, which both generations enable by default
        assert {n for n in used if n.startswith("BuilderFlag")} == {"BuilderFlag.TF32"}
    missing = {n: files for n, files in used.items() if not _exists(api, n)}
    assert not missing, f"not in TensorRT {api['version']}: {missing}"
    # names looked up by string
    assert all(k in api["enums"]["LayerType"] for k in FP32_LAYER_TYPES) or generation == 11
    assert all(name in api["values"] for name, _ in NUMPY_DTYPES)


# ------------------------------------------------------------------------------------------------ on the real bindings
PROBE = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from promptkd_edge.errors import PkdError
from promptkd_edge.export import tensorrt_build as tb
from promptkd_edge.runtime import tensorrt_backend as rb

def one(fn):
    try:
        fn()
    except PkdError as e:
        return str(e)
    return None

out = {}
trt = tb.import_tensorrt()
out["version"], out["api"], out["module"] = tb.tensorrt_version(trt), tb.api_generation(trt), trt.__file__
out["gpu"] = one(tb.gpu_info)
out["self_test"] = tb.tensorrt_self_test()
# a GPU that cuda-python sees: now TensorRT's own library is what cannot start (the stubs return NULL)
from fake_tensorrt import make_fake_cudart
rt = make_fake_cudart()
rb.load_cudart = lambda: rt
onnx_path, bundle = Path(sys.argv[1]), Path(sys.argv[2])
out["can_build"] = one(tb.check_can_build)
out["build"] = one(lambda: tb.build_engine(onnx_path, bundle / "engines", input_name="image",
                                           input_dims=(3, 4, 4), options=tb.TrtBuildOptions(precision="fp32",
                                           engine_cache_dir=None)))
plan = bundle / "plan.plan"
plan.write_bytes(b"x")
record = {"file": "plan.plan", "tensorrt": out["version"], "compute_capability": "8.7", "gpu": "Orin"}
out["runtime"] = one(lambda: rb.TensorRTBackend(plan, record))
print(json.dumps(out))
"""


def test_package_on_the_real_bindings_without_a_gpu(generation, tmp_path):
    """No GPU, no TensorRT library: every entry point says so in one line."""
    from test_tensorrt import clip_like

    gen = real_tensorrt.ensure(generation)
    model = clip_like(tmp_path / "model.onnx")
    done = real_tensorrt.run_python(gen, PROBE, str(model), str(tmp_path), str(Path(__file__).parent))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"] == gen.version and out["api"] == generation
    assert str(gen.site) in out["module"]  # the real bindings, not a fake
    assert out["gpu"].startswith("no CUDA GPU is visible (cudaErrorInsufficientDriver)")
    assert not out["self_test"]["ok"] and out["self_test"]["error"] == out["gpu"]
    nullptr = f"TensorRT {gen.version} found no usable GPU (pybind11::init(): factory function returned nullptr)"
    assert out["can_build"] == out["build"] == out["runtime"] == nullptr
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())
    for line in (out["gpu"], out["build"], out["runtime"]):
        assert "\n" not in line


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    out = tmp_path_factory.mktemp("real-trt") / "bundle"
    export_run(tiny_run, out, ExportOptions(parity_images=4))
    return out


def _pkd(gen, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptkd_edge", *args], capture_output=True, text=True,
                          env=gen.env(), timeout=600)


def test_cli_on_the_real_bindings_without_a_gpu(generation, bundle, tmp_path):
    gen = real_tensorrt.ensure(generation)
    doctor = _pkd(gen, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["tensorrt"]["available"] and report["tensorrt"]["version"] == gen.version
    assert report["tensorrt"]["self_test"]["error"].startswith("no CUDA GPU is visible")

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = _tree_digest(copy)
    for precision in ("fp16", "int8"):
        r = _pkd(gen, "export", str(copy), "--trt", "--precision", precision, "--data", str(tmp_path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().startswith("error: no CUDA GPU is visible") and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr and _tree_digest(copy) == before  # defect 12: nothing written

    # a bundle that records a plan: the runtime reaches the real module, then finds no GPU
    from PIL import Image

    from promptkd_edge.formats.manifest import EngineEntry, write_manifest
    from promptkd_edge.runtime.bundle import open_bundle

    manifest = open_bundle(copy).manifest
    (copy / "engines").mkdir()
    (copy / "engines" / "model.plan").write_bytes(b"plan")
    manifest.engines = [EngineEntry(file="engines/model.plan", tensorrt=gen.version, compute_capability="8.7",
                                    gpu="Orin", precision="fp16", profiles=[[1, 4, 8]], parity_passed=True)]
    write_manifest(copy, manifest)
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    r = _pkd(gen, "predict", str(copy), str(image), "--backend", "tensorrt")
    assert r.returncode == 2 and r.stderr.strip() == "error: no CUDA GPU is visible (cudaErrorInsufficientDriver); " \
        "TensorRT needs an NVIDIA GPU and driver", r.stderr
    r = _pkd(gen, "predict", str(copy), str(image), "--json")  # auto: falls back to the CPU and says why
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"].startswith(("onnxruntime", "openvino"))  # the CPU option measured fastest
