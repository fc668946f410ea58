"""Whether the TensorRT plans a bundle, a Triton entry or a DeepStream config names load on this machine: a plan
loads only on the TensorRT release that built it and on GPUs of its compute capability (`pkd doctor --bundle`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from promptkd_edge.utils import system
from promptkd_edge.utils.system import one_line


def _deepstream_configs(path: Path) -> list[Path]:
    """The nvinfer config `path` is, or those `pkd export --deepstream` wrote in the folder `path`."""
    return [path] if path.is_file() else sorted(path.glob("config_infer_*.txt")) if path.is_dir() else []


def is_serving_entry(path: Path) -> bool:
    """Whether `path` looks like a Triton entry folder or a DeepStream config (file or folder), not a bundle."""
    return (path / "config.pbtxt").is_file() or bool(_deepstream_configs(path))


def _plan_records(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """("bundle" | "triton entry" | "deepstream config", plan records) of a bundle, of a Triton plan entry folder
    `pkd export --triton` wrote, or of a DeepStream config (its file, or the folder holding one) `pkd export
    --deepstream` wrote: the configs' plan record line (formats/plan_record.py); a PkdError for anything else."""
    from promptkd_edge.errors import PkdError
    from promptkd_edge.export.triton import CONFIG
    from promptkd_edge.formats.bundle import is_bundle, read_manifest
    from promptkd_edge.formats.plan_record import read_plan_record

    if is_bundle(path):
        return "bundle", [e.to_dict() for e in read_manifest(path).engines]
    triton = path / CONFIG
    if triton.is_file():
        text = system.read_text(triton) or ""
        record = read_plan_record(text)
        if record is not None:
            served = re.search(r"versions:\s*\[\s*(\d+)", text)
            return "triton entry", [{**record, "file": f"{served.group(1) if served else '?'}/model.plan"}]
    records = []
    for config in _deepstream_configs(path):
        text = system.read_text(config) or ""
        record = read_plan_record(text)
        engine = re.search(r"^model-engine-file=(.*)$", text, re.MULTILINE)
        if record is not None:
            records.append({**record, "file": f"{config.name}: {engine.group(1) if engine else '?'}"})
    if records:
        return "deepstream config", records
    raise PkdError(f"{path} is neither a bundle nor a Triton plan entry or DeepStream config written by "
                   "`pkd export --triton/--deepstream`")


def check_plans(path: str | os.PathLike) -> dict[str, Any]:
    """Each TensorRT plan of a bundle (or Triton entry) against the TensorRT that imports here and this GPU: a plan
    loads only on the TensorRT release that built it and that GPU architecture (runtime/tensorrt_backend.py).
    {"kind", "tensorrt", "gpu", "reason" (why plans cannot be checked here, or None), "plans": [{"file",
    "tensorrt", "compute_capability", "gpu", "runs_here" (None: not checked), "detail"}]}."""
    from promptkd_edge.errors import PkdError
    from promptkd_edge.runtime.tensorrt_backend import check_plan_compatible, gpu_info, import_tensorrt

    kind, records = _plan_records(Path(path))
    out: dict[str, Any] = {"kind": kind, "tensorrt": None, "gpu": None, "reason": None, "plans": []}
    try:
        trt = import_tensorrt()
        out["tensorrt"] = str(trt.__version__)
        out["gpu"] = gpu_info()
    except Exception as e:  # noqa: BLE001 - a PkdError saying what is missing, or a TensorRT that cannot load
        out["reason"] = f"plans cannot be checked here: {e if isinstance(e, PkdError) else one_line(e)}"
    for r in records:
        plan = {k: r.get(k) for k in ("file", "tensorrt", "compute_capability", "gpu", "precision")}
        plan["runs_here"], plan["detail"] = None, out["reason"]
        if out["reason"] is None:
            try:
                check_plan_compatible(r, trt, out["gpu"])
                plan["runs_here"] = True
                plan["detail"] = (f"runs here (TensorRT {out['tensorrt']}, sm_{out['gpu']['sm']} "
                                  f"{out['gpu']['name']})")
            except PkdError as e:
                again = {"triton entry": "; then write the entry again (`pkd export BUNDLE --triton REPO "
                                         "--triton-backend tensorrt`)",
                         "deepstream config": "; then write the config again (`pkd export BUNDLE --deepstream DIR`)"
                         }.get(kind, "")
                plan["runs_here"], plan["detail"] = False, f"{e}{again}"
        out["plans"].append(plan)
    if not records:
        out["reason"] = "the bundle has no TensorRT plan (`pkd export BUNDLE --trt` builds one where it runs)"
    return out


def plan_lines(check: dict[str, Any]) -> list[str]:
    """One line per plan (or why none was checked) for the doctor's text output."""
    if not check["plans"]:
        return [check["reason"]]
    # a mismatch's detail (check_plan_compatible's line) starts with the plan's file already
    return [p["detail"] if p["runs_here"] is False else f"{p['file']}: {p['detail']}" for p in check["plans"]]
