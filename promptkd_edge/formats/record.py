"""A JSON object as a dataclass: the one way our files (manifest.json, bench.json) become typed records.

Named keys become fields; keys a record does not name (a newer writer's, a figure nobody reads by name) stay in its
`extra` and are written back after the fields, so reading and rewriting a file never loses anything. Fields listed
in OMIT_IF_NONE are left out of the JSON while they are None, as the writers always did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from promptkd_edge.errors import PkdError

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """Base of a @dataclass with an `extra: dict[str, Any]` field (declared last, default_factory=dict)."""

    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], what: str = "") -> R:
        """The record of JSON object `data`; a one-line PkdError naming `what` when it is not an object or lacks
        a key without a default."""
        if not isinstance(data, Mapping):
            raise PkdError(f"{what or cls.__name__} must be a JSON object, got {type(data).__name__}")
        fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]  # type: ignore[arg-type]
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise PkdError(f"{what or cls.__name__} lacks {', '.join(repr(m) for m in missing)}")
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in data.items() if k in names},  # type: ignore[call-arg]
                   extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields in declaration order (OMIT_IF_NONE ones only when set), then `extra`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
               if f.name != "extra" and not (f.name in self.OMIT_IF_NONE and getattr(self, f.name) is None)}
        return {**out, **self.extra}
