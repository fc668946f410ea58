"""The `pkd bench` report as typed records, its schema, and the validator of its JSON form (docs/bench-report.md).

`BenchReport`, `Environment` and `ResultRow` are what bench/ code reads and writes by attribute; `to_dict` /
`from_dict` give and take the JSON form, key for key as it was: optional keys that were absent stay absent, keys
this version does not know are kept. Targets, models, settings and the other lists stay plain JSON objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.record import JsonRecord

SCHEMA = "promptkd-edge/bench"
SCHEMA_VERSION = 1
MODES = ("compute", "end_to_end", "end_to_end_frames")
TARGET_KINDS = ("bundle", "run", "architecture")
RESULT_FIELDS = [
    "model", "backend", "device", "precision", "batch", "mode", "iterations",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "images_per_s", "first_call_ms",
    "peak_rss_mib", "peak_gpu_mib", "power_w", "images_per_joule",
]
OPTIONAL_RESULT_FIELDS = ["gpu_process_mib", "compute_ratio"]  # in a row's JSON only when measured

# Field specs: "str" | "int" | "number" | "bool" | "dict" | "list", with a trailing "?" when null is allowed.
_TOP = {"schema": "str", "schema_version": "int", "created": "str", "command": "str", "target": "dict",
        "models": "list", "environment": "dict", "settings": "dict", "results": "list", "unavailable": "list",
        "comparisons": "list"}
_OPTIONAL_TOP = {"limits": "list"}
_TARGET = {"kind": "str", "name": "str", "path": "str?"}
_MODEL = {"role": "str", "description": "str", "arch": "str", "image_size": "list?", "params_m": "number?",
          "gflops_per_image": "number?", "classes": "int?"}
_ENVIRONMENT = {"cpu": "str?", "cores": "int?", "threads": "int?", "gpu": "dict?", "jetson": "dict?",
                "versions": "dict", "python": "str", "platform": "str"}
_SETTINGS = {"batch_sizes": "list", "warmup": "int", "iterations": "int", "min_seconds": "number",
             "end_to_end": "bool", "end_to_end_images": "str?"}
_RESULT = {"model": "str", "backend": "str", "device": "str", "precision": "str", "batch": "int", "mode": "str",
           "iterations": "int?", "p50_ms": "number?", "p90_ms": "number?", "p99_ms": "number?",
           "mean_ms": "number?", "min_ms": "number?", "images_per_s": "number?", "first_call_ms": "number?",
           "peak_rss_mib": "number?", "peak_gpu_mib": "number?", "power_w": "number?",
           "images_per_joule": "number?"}
_OPTIONAL_RESULT = {"gpu_process_mib": "number?", "compute_ratio": "number?"}
_UNAVAILABLE = {"model": "str?", "backend": "str", "reason": "str"}
_COMPARISON = {"backend": "str", "batch": "int", "mode": "str", "teacher_p50_ms": "number?",
               "student_p50_ms": "number?", "speedup": "number?"}
_LIMIT = {"model": "str", "backend": "str", "batch": "int", "limit_images_per_s": "number?", "basis": "str?",
          "fraction": "number?"}
assert list(_RESULT) == RESULT_FIELDS

_TYPE_WORDS = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
               "dict": "an object", "list": "a list"}


# ---------------------------------------------------------------------------------------------------- validation


def _is(value: Any, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _is(value, kind[:-1])
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def _bad(where: str, problem: str) -> PkdError:
    return PkdError(f"invalid bench report: {where} {problem}")


def _check(obj: Mapping[str, Any], spec: Mapping[str, str], where: str, required: bool = True) -> None:
    for key, kind in spec.items():
        path = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                raise _bad(path, "is missing")
            continue
        value = obj[key]
        if not _is(value, kind):
            word = _TYPE_WORDS[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise _bad(path, f"must be {word}, not {type(value).__name__} {shown}")


def _check_list(report: Mapping[str, Any], key: str, spec: Mapping[str, str]) -> None:
    for i, item in enumerate(report.get(key, [])):
        if not isinstance(item, dict):
            raise _bad(f"{key}[{i}]", f"must be an object, not {type(item).__name__}")
        _check(item, spec, f"{key}[{i}]")


def validate_report(report: Any) -> None:
    """Raise PkdError naming the first missing or ill-typed key of a bench report; extra keys are allowed."""
    if not isinstance(report, dict):
        raise PkdError(f"invalid bench report: expected a JSON object, not {type(report).__name__}")
    _check(report, _TOP, "")
    _check(report, _OPTIONAL_TOP, "", required=False)
    if report["schema"] != SCHEMA:
        raise _bad("schema", f"is {report['schema']!r}, expected {SCHEMA!r}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise PkdError(f"bench report has schema_version {report['schema_version']}; "
                       f"this promptkd-edge reads schema_version {SCHEMA_VERSION}")
    _check(report["target"], _TARGET, "target")
    if report["target"]["kind"] not in TARGET_KINDS:
        raise _bad("target.kind", f"is {report['target']['kind']!r}, expected one of {', '.join(TARGET_KINDS)}")
    _check(report["environment"], _ENVIRONMENT, "environment")
    for section in ("gpu", "jetson"):
        if report["environment"][section] is not None:
            _check(report["environment"][section], {"gpu": {"name": "str"}, "jetson": {"model": "str?"}}[section],
                   f"environment.{section}")
    _check(report["settings"], _SETTINGS, "settings")
    for i, b in enumerate(report["settings"]["batch_sizes"]):
        if not _is(b, "int"):
            raise _bad(f"settings.batch_sizes[{i}]", f"must be an integer, not {type(b).__name__} {b!r}")
    _check_list(report, "models", _MODEL)
    _check_list(report, "results", _RESULT)
    for i, row in enumerate(report["results"]):
        _check(row, _OPTIONAL_RESULT, f"results[{i}]", required=False)
    for i, row in enumerate(report["results"]):
        if row["mode"] not in MODES:
            raise _bad(f"results[{i}].mode", f"is {row['mode']!r}, expected one of {', '.join(MODES)}")
    _check_list(report, "unavailable", _UNAVAILABLE)
    _check_list(report, "comparisons", _COMPARISON)
    _check_list(report, "limits", _LIMIT)


# ---------------------------------------------------------------------------------------------------- records


@dataclass
class ResultRow(JsonRecord):
    """One timed (model, backend, batch, mode): latencies in ms, throughput, memory, power."""

    model: str
    backend: str
    device: str
    precision: str
    batch: int
    mode: str
    iterations: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    images_per_s: float | None = None
    first_call_ms: float | None = None
    peak_rss_mib: float | None = None
    peak_gpu_mib: float | None = None
    power_w: float | None = None
    images_per_joule: float | None = None
    gpu_process_mib: float | None = None  # NVML: this process's GPU memory (any library's); absent when unknown
    compute_ratio: float | None = None  # end-to-end rows: images/s over the compute row's (same backend, batch)
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("gpu_process_mib", "compute_ratio")


@dataclass
class Environment(JsonRecord):
    """Where the benchmark ran (bench/environment.py describes it); `gpu` and `jetson` are JSON objects or None."""

    cpu: str | None = None
    cpu_flags: list[str] | None = None
    cores: int | None = None
    threads: int | None = None
    gpu: dict[str, Any] | None = None
    jetson: dict[str, Any] | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    python: str = ""
    platform: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("cpu_flags",)


@dataclass
class BenchReport(JsonRecord):
    """A whole `pkd bench` report. `limits`, `backends` (what really ran, per row label) and `text_encoder` are
    optional: None leaves them out of the JSON."""

    created: str
    command: str
    target: dict[str, Any]
    models: list[dict[str, Any]]
    environment: Environment
    settings: dict[str, Any]
    results: list[ResultRow] = field(default_factory=list)
    unavailable: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] | None = None
    backends: dict[str, str] | None = None
    text_encoder: dict[str, Any] | None = None
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("limits", "backends", "text_encoder")

    @classmethod
    def from_dict(cls, data: Any, what: str = "bench report") -> BenchReport:
        """The record of a report's JSON form; a one-line PkdError (validate_report) when it is not one."""
        validate_report(data)
        report = super().from_dict(data, what)
        report.environment = Environment.from_dict(data["environment"], "bench report environment")
        report.results = [ResultRow.from_dict(r, "bench report result") for r in data["results"]]
        return report

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the order `pkd bench` has always written them."""
        head = {"schema": self.schema, "schema_version": self.schema_version}
        body = super().to_dict()
        body.pop("schema")
        body.pop("schema_version")
        body["environment"] = self.environment.to_dict()
        body["results"] = [r.to_dict() for r in self.results]
        return {**head, **body}


def as_report(report: BenchReport | Mapping[str, Any]) -> BenchReport:
    """A BenchReport as it is, or one read from the JSON form (validated)."""
    return report if isinstance(report, BenchReport) else BenchReport.from_dict(report)
