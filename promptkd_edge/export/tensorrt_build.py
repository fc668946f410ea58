"""Build TensorRT plans from the bundle's ONNX on TensorRT 10 (weakly typed) and 11 (strongly typed only).

TensorRT is imported lazily: this module imports (and its tests run) without it. On TensorRT 10 precision comes from
builder flags, with LayerNorm/Softmax/Reduce (CLIP's FP16 overflow spots) and chosen nodes pinned to FP32. On
TensorRT 11 precision must already be in the graph (Casts for FP16, Q/DQ for INT8/FP8); a plain FP32 graph would
silently give an FP32 engine, so that is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.export.trt_graph import check_graph_precision, check_tensorrt_qdq, graph_precision
from promptkd_edge.runtime.tensorrt_backend import (
    TensorRTBackend,
    check_plan_compatible,
    gpu_info,
    import_tensorrt,
    tensorrt_version,
)
from promptkd_edge.utils.files import atomic_path, sha256_file, write_bytes, write_text

__all__ = ["PRECISIONS", "TrtBuildOptions", "api_generation", "build_engine", "check_can_build",
           "check_plan_compatible", "check_tensorrt_qdq", "default_engine_cache_dir", "engine_cache_key", "gpu_info",
           "graph_precision", "import_tensorrt", "require_builder", "tensorrt_self_test", "tensorrt_version"]

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
ProgressLog = Callable[[str], None]


def api_generation(trt) -> int:
    """10 (weakly typed builder flags) or 11 (strongly typed only; also any later major)."""
    version = tensorrt_version(trt)
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise PkdError(f"cannot read the TensorRT version {version!r}") from None
    if major < 10:
        raise PkdError(f"TensorRT {version} is too old; promptkd-edge needs 10.x or 11.x")
    return 10 if major == 10 else 11


def default_engine_cache_dir() -> Path:
    """$PKD_CACHE_DIR/engines, else ~/.cache/promptkd-edge/engines."""
    root = os.environ.get("PKD_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "promptkd-edge") / "engines"


FRAME_SIZES = ((32, 32), (1080, 1920), (2160, 3840))  # (height, width) min, opt, max: up to 4K UHD frames


def _frame_sizes(sizes: Any) -> list[tuple[int, int]]:
    try:
        parsed = [(int(h), int(w)) for h, w in sizes]
    except (TypeError, ValueError):
        raise PkdError(f"TensorRT frame sizes are three HEIGHTxWIDTH (min, opt, max), not {sizes!r}") from None
    if len(parsed) != 3 or any(h < 1 or w < 1 for h, w in parsed) or any(
            not parsed[0][k] <= parsed[1][k] <= parsed[2][k] for k in (0, 1)):
        shown = ", ".join(f"{h}x{w}" for h, w in parsed)
        raise PkdError(f"TensorRT frame sizes {shown} need min <= opt <= max in height and width, each >= 1")
    return parsed


def profile_shapes(input_dims: tuple[int, ...], options: TrtBuildOptions
                   ) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) input shape of each optimization profile: the batch from `options.profiles`; the two dynamic
    (-1) dimensions of a frame graph's input [B, H, W, 3] from `options.frame_sizes`."""
    dynamic = [i for i, d in enumerate(input_dims) if d < 0]
    if dynamic and len(dynamic) != 2:
        raise PkdError(f"input dimensions {list(input_dims)}: only a frame graph's height and width may be dynamic")

    def shape(batch: int, k: int) -> tuple[int, ...]:
        dims = list(input_dims)
        for axis, size in zip(dynamic, options.frame_sizes[k], strict=False):
            dims[axis] = size
        return (batch, *dims)

    return [(shape(lo, 0), shape(opt, 1), shape(hi, 2)) for lo, opt, hi in options.profiles]


@dataclass
class TrtBuildOptions:
    """How to build: precision, batch profiles (min, opt, max), workspace, optimization level, caches, and TF32
    (off unless asked for: TensorRT would otherwise run FP32 inner products on 10-bit mantissas)."""

    precision: str = "fp16"
    profiles: list[tuple[int, int, int]] = field(default_factory=lambda: [(1, 8, 32)])
    workspace_gib: float = 4.0
    opt_level: int = 3
    timing_cache: Path | None = None
    engine_cache_dir: Path | None = field(default_factory=default_engine_cache_dir)  # None: no engine cache
    keep_fp32_nodes: list[str] = field(default_factory=list)
    tf32: bool = False
    # a frame graph's (input_format "frame") height x width: min, opt, max of every profile
    frame_sizes: list[tuple[int, int]] = field(default_factory=lambda: list(FRAME_SIZES))

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PkdError(f"unknown TensorRT precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not self.profiles:
            raise PkdError("give at least one TensorRT batch profile (min,opt,max)")
        profiles = []
        for p in self.profiles:
            try:
                lo, opt, hi = (int(b) for b in p)
            except (TypeError, ValueError):
                raise PkdError(f"a TensorRT profile is three batch sizes min,opt,max, not {p!r}") from None
            if not 1 <= lo <= opt <= hi:
                raise PkdError(f"TensorRT profile {lo},{opt},{hi} needs 1 <= min <= opt <= max")
            profiles.append((lo, opt, hi))
        self.profiles = profiles
        if not self.workspace_gib > 0:
            raise PkdError(f"TensorRT workspace must be > 0 GiB, not {self.workspace_gib}")
        if not 0 <= int(self.opt_level) <= 5:
            raise PkdError(f"TensorRT builder optimization level must be 0..5, not {self.opt_level}")
        self.opt_level = int(self.opt_level)
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else None
        self.engine_cache_dir = Path(self.engine_cache_dir) if self.engine_cache_dir else None
        self.keep_fp32_nodes = [str(n) for n in self.keep_fp32_nodes]
        self.frame_sizes = _frame_sizes(self.frame_sizes)
        if not isinstance(self.tf32, bool):
            raise PkdError(f"TensorRT tf32 is true or false, not {self.tf32!r}")


def engine_cache_key(onnx_sha256: str, version: str, gpu: dict[str, str], input_name: str,
                     input_dims: tuple[int, ...], options: TrtBuildOptions) -> str:
    """sha256 over everything that makes a plan differ: the graph, the TensorRT release, the GPU (its model, not only
    its SM: TensorRT times tactics on the device and warns when a plan runs on another model), the options, TF32 and
    the layer types this module pins to FP32."""
    key = {"onnx": onnx_sha256, "tensorrt": version, "gpu": gpu["name"], "sm": gpu["sm"],
           "precision": options.precision, "profiles": [list(p) for p in options.profiles],
           "workspace_gib": float(options.workspace_gib), "opt_level": options.opt_level,
           "input": [input_name, list(input_dims)], "keep_fp32_nodes": sorted(options.keep_fp32_nodes),
           "tf32": options.tf32, "fp32_layer_types": list(FP32_LAYER_TYPES)}
    if any(d < 0 for d in input_dims):
        key["frame_sizes"] = [list(s) for s in options.frame_sizes]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def layers_of_node(node: str) -> re.Pattern:
    """The TensorRT layers the ONNX parser makes of node `node`: the node's name, then `<name>_<n>` for the extra
    layers (onnx-tensorrt's generateUniqueName). `node_matmul_1` does not match `node_matmul_10`."""
    return re.compile(re.escape(node) + r"(?:_\d+)?")


FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # CLIP's FP16 overflow spots, pinned on TensorRT 10


def _pin_fp32_layers(trt, network, keep: list[str]) -> tuple[list[str], list[str]]:
    """TRT 10: pin LayerNorm/Softmax/Reduce layers and the layers of the ONNX nodes named in `keep` to FP32.
    Returns (pinned layer names, keep names that matched no layer)."""
    kinds = {getattr(trt.LayerType, k) for k in FP32_LAYER_TYPES}
    floats = (trt.float32, trt.float16)
    patterns = {k: layers_of_node(k) for k in keep}
    pinned: list[str] = []
    used: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        hits = [k for k, pattern in patterns.items() if pattern.fullmatch(layer.name)]
        used.update(hits)
        if layer.type not in kinds and not hits:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in floats for t in outputs):
            continue  # shape/index outputs have no precision to pin
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned, [k for k in keep if k not in used]


def _check_input(network, onnx_name: str, input_name: str, input_dims: tuple[int, ...]) -> None:
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise PkdError(f"{onnx_name} has no input named {input_name!r} (it has {', '.join(inputs)})")
    shape = inputs[input_name]
    if len(shape) != len(input_dims) + 1 or any(s >= 0 and s != d for s, d in zip(shape[1:], input_dims, strict=True)):
        raise PkdError(f"input {input_name} of {onnx_name} has shape {shape}; the profiles asked for "
                       f"(batch, {', '.join(map(str, input_dims))})")


def require_builder(trt):
    """(logger, builder), or a one-line PkdError when TensorRT's library cannot start a builder here (no GPU, no
    driver, a CUDA driver too old for this TensorRT: the factory returns NULL and pybind11 raises TypeError)."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # pybind11 "factory function returned nullptr": CUDA could not start
        raise PkdError(f"TensorRT {tensorrt_version(trt)} found no usable GPU "
                       f"({first_line(e, with_type=False)})") from None
    return logger, builder


def check_can_build() -> tuple[Any, int, dict[str, str]]:
    """(trt, API generation, GPU) once TensorRT can build on this machine: it imports, is 10.x or 11.x, a CUDA GPU is
    visible and its builder starts. Each failure is one line, before anything is computed or written."""
    trt = import_tensorrt()
    api = api_generation(trt)
    gpu = gpu_info()
    require_builder(trt)
    return trt, api, gpu


def _build_plan(trt, api: int, onnx_path: Path, *, input_name: str, input_dims: tuple[int, ...],
                options: TrtBuildOptions, log: ProgressLog) -> tuple[bytes, list[str]]:
    """Run the TensorRT builder; returns (serialized plan, layers pinned to FP32)."""
    logger, builder = require_builder(trt)
    if api >= 11:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(1 << int(flag) if flag is not None else 0)
    else:
        network = builder.create_network(0)  # explicit batch is implied on TRT 10; weakly typed for builder flags
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = str(parser.get_error(0)) if parser.num_errors else "unknown error"
        raise PkdError(f"TensorRT cannot parse {onnx_path.name}: {first.strip().splitlines()[0]}")
    _check_input(network, onnx_path.name, input_name, input_dims)

    config = builder.create_builder_config()
    _set_tf32(trt, config, options.tf32)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.opt_level
    pinned: list[str] = []
    if api == 10 and options.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        elif options.precision == "fp8":
            config.set_flag(trt.BuilderFlag.FP8)
        pinned, unused = _pin_fp32_layers(trt, network, options.keep_fp32_nodes)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"pinned {len(pinned)} TensorRT layers to FP32 (LayerNorm, Softmax, Reduce, kept nodes)")
        if unused:
            log(f"warning: keep-fp32 nodes matched no TensorRT layer: {', '.join(unused)}")
    for lo, opt, hi in profile_shapes(input_dims, options):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)

    _use_timing_cache(config, options.timing_cache, log)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PkdError("TensorRT could not build the engine; see the log above")
    if options.timing_cache:
        write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan), pinned


def _set_tf32(trt, config, tf32: bool) -> None:
    """TensorRT enables TF32 by default (NvInfer.h 10.3 and 11.1, BuilderFlag::kTF32: "Enabled by default"): FP32
    inner products on Ampere+/Orin then round their inputs to 10-bit mantissas, beyond the FP32 gate's 1e-3 at logit
    scale 100. Cleared unless asked for, in every build: FP16/INT8 builds keep FP32 layers (pinned on TensorRT 10,
    the graph's FP32 islands on 11) for exactly that accuracy. trtexec's --noTF32 does the same (sampleEngines.cpp)."""
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)


def _use_timing_cache(config, cache_file: Path | None, log: ProgressLog) -> None:
    """Attach the persistent timing cache, or an empty one when there is none or it cannot be used: a file that
    does not deserialize (corrupt, another TensorRT: `create_timing_cache` gives None, as Polygraphy handles it) or
    one from another device (`set_timing_cache` gives False). The build never fails for its cache."""
    cache = None
    if cache_file and cache_file.is_file():
        try:
            cache = config.create_timing_cache(cache_file.read_bytes())
        except (OSError, RuntimeError, TypeError, ValueError) as e:
            log(f"warning: timing cache {cache_file}: {first_line(e, with_type=False)}")
        if cache is None:
            log(f"warning: timing cache {cache_file} cannot be read (corrupt or from another TensorRT); "
                "starting an empty one, written back after the build")
        elif not config.set_timing_cache(cache, ignore_mismatch=False):
            log(f"warning: timing cache {cache_file} is for another device; starting an empty one")
        else:
            return
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)


def trtexec_plan_name(plan_name: str) -> str:
    """Where a plan's trtexec script writes its engine: beside the recorded plan, never over it (the manifest's
    sha256 covers the recorded one)."""
    return plan_name[:-len(".plan")] + ".trtexec.plan" if plan_name.endswith(".plan") else plan_name + ".trtexec"


def _trtexec_script(*, onnx_arg: str, plan_arg: str, input_name: str, input_dims: tuple[int, ...],
                    options: TrtBuildOptions, api: int, version: str, pinned: list[str]) -> str:
    args = [f"--onnx={onnx_arg}", f"--saveEngine={plan_arg}", "--skipInference"]
    for i, (lo, opt, hi) in enumerate(profile_shapes(input_dims, options)):  # --profile=i before each triple
        args += [f"--profile={i}", f"--minShapes={input_name}:{_shape(lo)}",
                 f"--optShapes={input_name}:{_shape(opt)}", f"--maxShapes={input_name}:{_shape(hi)}"]
    args += [f"--memPoolSize=workspace:{round(options.workspace_gib * 1024)}M",
             f"--builderOptimizationLevel={options.opt_level}"]
    if not options.tf32:
        args.append("--noTF32")  # trtexec enables TF32 otherwise (sampleOptions.cpp, 10.x and 11.x)
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache.resolve()}")
    unnamed = [n for n in pinned if "," in n]  # trtexec splits its layer lists on commas
    named = [n for n in pinned if "," not in n]
    if api == 10 and options.precision != "fp32":
        args.append("--fp16")
        if options.precision in ("int8", "fp8"):
            args.append(f"--{options.precision}")
        if named:
            args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in named),
                     "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in named)]
    if api >= 11:
        note = ("# TensorRT 11 is strongly typed: the precision is in the ONNX graph, so there are no --fp16/--int8\n"
                "# flags (and --stronglyTyped is not needed).\n")
    else:
        note = "# TensorRT 10 (weakly typed): precision from builder flags"
        note += f"; {len(named)} layers (LayerNorm/Softmax/Reduce/kept nodes) pinned to FP32.\n" if named else ".\n"
        if unnamed:
            note += f"# Not pinned here (a comma in the name): {'; '.join(unnamed)}\n"
    lines = " \\\n  ".join(shlex.quote(a) for a in args)
    return (f"#!/bin/sh\n# The trtexec equivalent of this plan's build ({options.precision}, TensorRT {version}).\n"
            f"{note}# It writes {plan_arg}, beside the plan the manifest records (and checks by sha256);\n"
            f"# `pkd export BUNDLE --trt` is what records a plan. Paths are relative to the bundle folder.\nset -e\n"
            f'cd "$(dirname "$0")/.."\nexec trtexec \\\n  {lines}\n')


def build_engine(onnx_path: Path, plan_dir: Path, *, input_name: str, input_dims: tuple[int, ...],
                 options: TrtBuildOptions, progress_log: ProgressLog | None = None,
                 onnx_ref: str | None = None) -> dict[str, Any]:
    """Build (or take from the engine cache) a plan for `onnx_path` in `plan_dir` (a bundle's engines/ folder)
    and write its trtexec script there; return the manifest engine record (export/BUNDLE.md).

    `onnx_ref` is how the bundle names the graph (default: its file name), relative to the bundle folder.
    """
    log = progress_log or (lambda message: None)
    onnx_path, plan_dir = Path(onnx_path), Path(plan_dir)
    onnx_ref = onnx_ref or onnx_path.name
    input_dims = tuple(int(d) for d in input_dims)
    if not onnx_path.is_file():
        raise PkdError(f"ONNX model not found: {onnx_path}")
    trt = import_tensorrt()
    version, api = tensorrt_version(trt), api_generation(trt)
    gpu = gpu_info()
    precision = options.precision
    if precision == "fp8" and tuple(map(int, gpu["compute_capability"].split("."))) < (8, 9):
        raise PkdError(f"fp8 needs an Ada or Hopper GPU (sm_89+); {gpu['name']} is sm_{gpu['sm']}: use int8 or fp16")
    check_graph_precision(onnx_path, precision, api)
    check_tensorrt_qdq(onnx_path, api)

    onnx_sha = sha256_file(onnx_path)
    stem = f"model-{precision}-sm{gpu['sm']}-trt{version}"
    plan_path = plan_dir / f"{stem}.plan"
    script_path = plan_dir / f"{stem}.trtexec.sh"
    key = engine_cache_key(onnx_sha, version, gpu, input_name, input_dims, options)
    cache_dir = options.engine_cache_dir
    cached_plan = cache_dir / f"{key}.plan" if cache_dir else None
    cached_meta = cache_dir / f"{key}.json" if cache_dir else None

    start = time.perf_counter()
    cache_hit = bool(cached_plan and cached_plan.is_file() and cached_meta.is_file())
    if cache_hit:
        meta = json.loads(cached_meta.read_text(encoding="utf-8"))
        pinned = list(meta.get("fp32_layers", []))
        with atomic_path(plan_path) as tmp:
            shutil.copyfile(cached_plan, tmp)
        log(f"TensorRT engine cache hit: {cached_plan}")
    else:
        log(f"building a TensorRT {version} {precision} engine for {gpu['name']} (sm_{gpu['sm']}); "
            "this can take minutes")
        plan, pinned = _build_plan(trt, api, onnx_path, input_name=input_name, input_dims=input_dims,
                                   options=options, log=log)
        write_bytes(plan_path, plan)
        if cache_dir:
            try:
                write_text(cached_meta, json.dumps({"fp32_layers": pinned, "tensorrt": version, "gpu": gpu["name"],
                                                    "tf32": options.tf32, "onnx_sha256": onnx_sha}) + "\n")
                write_bytes(cached_plan, plan)
            except OSError as e:
                log(f"warning: cannot store the engine in the cache {cache_dir}: {first_line(e, with_type=False)}")
    seconds = time.perf_counter() - start

    script = _trtexec_script(
        onnx_arg=onnx_ref, plan_arg=f"{plan_dir.name}/{trtexec_plan_name(plan_path.name)}", input_name=input_name,
        input_dims=input_dims, options=options, api=api, version=version, pinned=pinned)
    write_text(script_path, script)
    script_path.chmod(script_path.stat().st_mode | 0o111)
    frame = {"frame_sizes": [list(s) for s in options.frame_sizes]} if any(d < 0 for d in input_dims) else {}
    return {"file": f"{plan_dir.name}/{plan_path.name}", "sha256": sha256_file(plan_path), "onnx": onnx_ref,
            "onnx_sha256": onnx_sha, "tensorrt": version, "api": api, "gpu": gpu["name"],
            "compute_capability": gpu["compute_capability"], "precision": precision,
            "profiles": [list(p) for p in options.profiles], "workspace_gib": float(options.workspace_gib),
            "builder_optimization_level": options.opt_level, "tf32": options.tf32, "build_seconds": round(seconds, 3),
            "cache_hit": cache_hit, "fp32_layers": len(pinned), "trtexec": f"{plan_dir.name}/{script_path.name}",
            **frame}


def _self_test_model():
    """x [N, 4] -> MatMul W [4, 3] -> Softmax -> y [N, 3], and W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
         helper.make_node("Softmax", ["h"], ["y"], name="softmax", axis=-1)],
        "pkd_selftest",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, w


def tensorrt_self_test() -> dict[str, Any]:
    """For `pkd doctor`: build a tiny MatMul+Softmax engine (profile 1,2,4), run it, compare with numpy."""
    import onnx

    start = time.perf_counter()
    result: dict[str, Any] = {"ok": False, "tensorrt": None, "max_abs_diff": None, "seconds": None}
    try:
        result["tensorrt"] = tensorrt_version(import_tensorrt())
        model, w = _self_test_model()
        with tempfile.TemporaryDirectory(prefix="pkd-trt-selftest-") as tmp:
            onnx_path = Path(tmp) / "selftest.onnx"
            onnx.save(model, str(onnx_path))
            options = TrtBuildOptions(precision="fp32", profiles=[(1, 2, 4)], workspace_gib=0.25, opt_level=0,
                                      timing_cache=None, engine_cache_dir=None)
            record = build_engine(onnx_path, Path(tmp) / "engines", input_name="x", input_dims=(4,), options=options)
            backend = TensorRTBackend(Path(tmp) / record["file"], record)
            try:
                x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
                y = backend.run(x)["y"]
            finally:
                backend.close()
        logits = x @ w
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        diff = float(np.abs(y - expected).max())
        result.update(ok=diff < 1e-3, max_abs_diff=diff)
    except PkdError as e:
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - a diagnostic reports what TensorRT raised instead of crashing
        result["error"] = first_line(e)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result
