"""Class names as users give them: checked (none empty, no duplicates) and read from a list. No torch."""

from __future__ import annotations

import os
from pathlib import Path

from promptkd_edge.errors import PkdError


def validate_class_names(names: list[str], source: str) -> None:
    """One line naming the first problem: no names, an empty name, a duplicate."""
    if not names:
        raise PkdError(f"{source} holds no class names")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise PkdError(f"{source}: class {i + 1} has an empty name")
        if name in seen:
            raise PkdError(f"{source}: duplicate class name '{name}' (classes {seen[name] + 1} and {i + 1})")
        seen[name] = i


def read_class_names(source: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line; trailing blank lines ignored) or an ImageFolder's sub-folders."""
    source = Path(source)
    if source.is_dir():
        names = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        validate_class_names(names, f"image folder {source} (no class sub-folders)" if not names else str(source))
        return names
    if not source.is_file():
        raise PkdError(f"class list not found: {source}")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PkdError(f"cannot read class list {source}: {e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            raise PkdError(f"{source}: line {i + 1} is empty; every line must name one class")
    names = [line.strip() for line in lines]
    validate_class_names(names, str(source))
    return names


def class_names_argument(value: str) -> list[str]:
    """`--classes`: a class-list file or folder when one exists at that path, else comma-separated names."""
    if Path(value).exists():
        return read_class_names(value)
    names = [n.strip() for n in value.split(",")]
    validate_class_names(names, "--classes")
    return names
