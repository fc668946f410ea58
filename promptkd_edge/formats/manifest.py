"""A bundle's manifest.json (export/BUNDLE.md) as typed records, read and written only here.

`Manifest.from_dict` / `to_dict` are the boundary: export/ builds the records and writes them, runtime/ reads them,
and code in between uses attributes, not string keys. A key that a record does not name (a figure of a parity
entry, a field written by a newer promptkd-edge) is kept in the record's `extra` and written back unchanged
(formats/record.py). Torch-free and numpy-free.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.preprocess import input_format_of
from promptkd_edge.formats.record import JsonRecord
from promptkd_edge.utils.files import sha256_file, write_json

BUNDLE_FORMAT = "promptkd-edge/bundle"
MANIFEST_FILE = "manifest.json"
TOKENIZER_KEYS = {"merges": str, "special_tokens": list, "context_length": int, "clean": str}  # runtime/text.py's

R = TypeVar("R", bound="ManifestRecord")


class ManifestRecord(JsonRecord):
    """A JsonRecord whose fields are checked against their types when read: a manifest written by a broken tool
    or edited by hand is one line naming the key, not a KeyError or TypeError where it is used."""

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], what: str = "") -> R:
        record = super().from_dict(data, what)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(record):  # type: ignore[arg-type]
            value = getattr(record, f.name)
            if f.name != "extra" and not _has_type(value, hints[f.name]):
                raise PkdError(f"{what or cls.__name__} has {f.name!r} = {_short(value)}, which is not "
                               f"{_type_name(hints[f.name])}")
        return record


def _has_type(value: Any, hint: Any) -> bool:
    """Whether JSON `value` fits the annotation `hint` (records are still JSON objects here; the elements of a
    list or dict of plain types are checked too)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value if args[0] in (str, int, float))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and (args[1] not in (str, int, float)
                                                                       or _has_type(v, args[1]))
                                               for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return True  # its own from_dict checks it
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "an object", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is dict and typing.get_args(hint)[1] in (str, int, float):
        return f"an object of {_type_name(typing.get_args(hint)[1]).split(' ', 1)[1]}s"
    origin = typing.get_origin(hint) or hint
    return names.get(origin, "an object")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class TensorInfo(ManifestRecord):
    """One graph input or output: name, shape (ints and symbolic names), dtype, and for the input its layout."""

    name: str
    shape: list[Any]
    dtype: str
    layout: str | None = None  # "NCHW" or "NHWC"
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("layout",)


@dataclass
class ModelEntry(ManifestRecord):
    """`model`: the ONNX graph every backend runs (or builds plans from)."""

    file: str
    precision: str
    head: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    num_classes: int
    embedding_dim: int
    logit_scale: float
    input_format: str = "normalized"
    fp32_nodes: list[str] = field(default_factory=list)
    conversion: dict[str, Any] = field(default_factory=dict)
    slim_nodes_removed: int | None = None
    frame: dict[str, Any] | None = None  # input_format "frame": the in-graph resize and its measured parity
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("frame",)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "manifest model") -> ModelEntry:
        if not isinstance(d, dict):
            raise PkdError("the bundle manifest has no model entry")
        d = {**d, "input_format": input_format_of(d)}  # bundles written before input_format have uint8_input
        d.pop("uint8_input", None)
        entry = super().from_dict(d, what)
        entry.inputs = [TensorInfo.from_dict(t, "manifest model input") for t in entry.inputs]  # type: ignore[arg-type]
        entry.outputs = [TensorInfo.from_dict(t, "manifest model output") for t in entry.outputs]  # type: ignore[arg-type]
        return entry

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["inputs"] = [t.to_dict() for t in self.inputs]
        out["outputs"] = [t.to_dict() for t in self.outputs]
        out["uint8_input"] = self.input_format == "uint8"  # kept for readers of older bundles
        return out

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass
class ParityEntry(ManifestRecord):
    """One parity gate (export/parity.py): what ran (`target`, `precision`; a runtime variant or a plan), the
    figures the thresholds apply to, the verdict. Further figures (near-tie flips, mean |delta|, ...) are in
    `extra`; the text encoder's gates have `max_abs_diff` and `names` there instead of images and logits."""

    target: str
    precision: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    images: int | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    min_cosine: float | None = None
    required: bool | None = None  # False: an offer made at export; a failure only means the runtime doesn't use it
    runtime: str | None = None  # a way of computing model.onnx that this entry vouches for, e.g. "openvino-bf16"
    engine: str | None = None  # the plan this entry gates
    reference: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    OMIT_IF_NONE = ("images", "top1_agreement", "max_abs_logit_diff", "min_cosine", "required", "runtime", "engine",
                    "reference")

    @property
    def is_required(self) -> bool:
        return self.required is not False


@dataclass
class EngineEntry(ManifestRecord):
    """One TensorRT plan: the GPU and TensorRT it was built for and how (export/tensorrt_build.py writes it)."""

    file: str
    precision: str
    tensorrt: str | None = None
    compute_capability: str | None = None
    gpu: str | None = None
    profiles: list[list[int]] = field(default_factory=list)
    onnx: str | None = None
    parity_passed: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderEntry(ManifestRecord):
    """`text_encoder`: the teacher's text tower and CLIP's tokenizer, for class names given on the device."""

    files: dict[str, str]
    output: str
    sentence: str
    tokenizer: dict[str, Any]
    parity: list[ParityEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "manifest text_encoder") -> TextEncoderEntry:
        entry = super().from_dict(d, what)
        for key, kind in TOKENIZER_KEYS.items():
            if not isinstance(entry.tokenizer.get(key), kind):
                raise PkdError(f"{what} tokenizer lacks {key!r} or it is not {_type_name(kind)}")
        if "fp32" not in entry.files:
            raise PkdError(f"{what} files lack 'fp32'")
        entry.parity = [ParityEntry.from_dict(p, "manifest text_encoder parity entry")  # type: ignore[arg-type]
                        for p in entry.parity]
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "parity": [p.to_dict() for p in self.parity]}

    def passed(self) -> set[str]:
        """The precisions ("fp32", "fp16") whose gate passed."""
        return {p.precision for p in self.parity if p.passed}


@dataclass
class Manifest(ManifestRecord):
    """manifest.json: what the bundle is, where it came from, and every parity gate it passed or failed."""

    model: ModelEntry
    format: str = BUNDLE_FORMAT
    valid: bool = False
    created: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    preprocess: str = "preprocess.json"
    parity: list[ParityEntry] = field(default_factory=list)
    engines: list[EngineEntry] = field(default_factory=list)
    text_encoder: TextEncoderEntry | None = None
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "manifest") -> Manifest:
        if not isinstance(d, dict) or d.get("format") != BUNDLE_FORMAT:
            raise PkdError("not a promptkd-edge bundle manifest")
        if "files" not in d:  # the sha256 of every file: without it nothing could be verified
            raise PkdError(f"{what} lacks 'files'")
        m = super().from_dict(d, what)
        m.model = ModelEntry.from_dict(d["model"])
        m.parity = [ParityEntry.from_dict(p, "manifest parity entry") for p in d.get("parity") or []]
        m.engines = [EngineEntry.from_dict(e, "manifest engine entry") for e in d.get("engines") or []]
        m.text_encoder = TextEncoderEntry.from_dict(d["text_encoder"]) if d.get("text_encoder") else None
        return m

    def to_dict(self) -> dict[str, Any]:
        out = {"format": self.format, "valid": self.valid, "created": self.created, "source": self.source,
               "versions": self.versions, "model": self.model.to_dict(), "preprocess": self.preprocess,
               "parity": [p.to_dict() for p in self.parity], "engines": [e.to_dict() for e in self.engines]}
        if self.text_encoder is not None:
            out["text_encoder"] = self.text_encoder.to_dict()
        return {**out, "files": self.files, **self.extra}

    def passed_gates(self) -> set[str]:
        """The runtime variants (e.g. "openvino-bf16") that a passing parity entry vouches for."""
        return {p.runtime for p in self.parity if p.runtime and p.passed}

    def failures(self) -> list[str]:
        """The failures of required gates: the model's (not an optional offer), the text encoder's FP32 one."""
        text = [g for g in self.text_encoder.parity if g.precision == "fp32"] if self.text_encoder else []
        return ([f"{p.target} {p.precision}: {f}" for p in self.parity if p.is_required for f in p.failures]
                + [f"text encoder {g.precision}: {f}" for g in text for f in g.failures])

    def record_parity(self, entry: ParityEntry) -> None:
        """Add a gate, replacing an earlier one for the same runtime variant or plan."""
        self.parity = [p for p in self.parity
                       if not ((entry.runtime and p.runtime == entry.runtime)
                               or (entry.engine and p.engine == entry.engine))]
        self.parity.append(entry)

    def record_engine(self, engine: EngineEntry) -> None:
        """Add a plan, replacing an earlier one with the same file."""
        self.engines = [e for e in self.engines if e.file != engine.file] + [engine]


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> None:
    """Record the sha256 of every file in the bundle and whether its required gates passed (an optional entry, a
    faster precision offered at export, that failed only means the runtime does not use it), then write
    manifest.json last (atomically)."""
    bundle = Path(bundle)
    manifest.files = {path.relative_to(bundle).as_posix(): sha256_file(path) for path in sorted(bundle.rglob("*"))
                      if path.is_file() and path.relative_to(bundle).as_posix() != MANIFEST_FILE
                      and not path.name.startswith(".")}
    manifest.valid = not manifest.failures()
    write_json(bundle / MANIFEST_FILE, manifest.to_dict())
