"""The class list: `classes.json` (names, logit scale, the vectors file; a run's and a bundle's, one reader), and
class names as users give them, checked by one function wherever they enter (class-list files, ImageFolder
sub-folders, `--classes`, `Classifier.with_class_names`/`with_classes`, `ClassVectors`) and once more by the label
writers (Triton's labels.txt, DeepStream's labels). No torch, no numpy."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.clip_text import text_key
from promptkd_edge.utils.files import read_json

CLASSES_FILE = "classes.json"
VECTORS_FILE = "class_vectors.safetensors"  # the tensor `class_vectors` [C, D] fp32; classes.json's default
LINE_SEPARATORS = ("\u2028", "\u2029")  # str.splitlines() breaks on these too (and on \x85, \x1c-\x1e: all Cc)


def _line_breaker(name: str) -> str | None:
    """The first character of `name` that is a control character (Unicode Cc: \\n, \\r, \\t, ESC, ...) or a line
    or paragraph separator, else None."""
    return next((ch for ch in name if ch in LINE_SEPARATORS or unicodedata.category(ch) == "Cc"), None)


def name_list(names: Iterable[str], source: str) -> list[str]:
    """`names` as a list; one string is refused (it would be a class a character), with the list it may mean."""
    if isinstance(names, str | bytes):
        text = names.decode(errors="replace") if isinstance(names, bytes) else names
        example = [n.strip() for n in text.split(",")]
        raise PkdError(f"{source}: class names must be a list of names, not one string {names!r} (each character "
                       f"would be a class); pass a list such as {example!r}")
    return list(names)


def check_labels(names: Sequence[str], source: str) -> None:
    """Every name a non-empty string on one line of plain text: names are written one per line (Triton's
    labels.txt) and on one line (DeepStream's label file), so a line break or control character would shift
    every label after it. One line naming the first problem (class index, the name escaped)."""
    names = name_list(names, source)
    if not names:
        raise PkdError(f"{source} holds no class names")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise PkdError(f"{source}: class {i + 1} is not a string: {name!r}")
        if not name.strip():
            raise PkdError(f"{source}: class {i + 1} has an empty name")
        ch = _line_breaker(name)
        if ch is not None:
            raise PkdError(f"{source}: class {i + 1} {name!r} holds {ch!r}, a line break or control character; "
                           "class names must be one line of plain text (Triton's labels.txt is one name per line, "
                           "DeepStream's label file one line): rename it")


def labels_text(names: Sequence[str], source: str, separator: str = "\n") -> str:
    """A labels file's text: the names, checked by check_labels (an old bundle's names too), joined, newline."""
    check_labels(names, source)
    return separator.join(names) + "\n"


def name_key(name: str) -> Hashable:
    """What the teacher's tokenizer reads of a class name (underscores read as spaces, as in the sentence):
    utils.clip_text.text_key, exact with ftfy and regex, a stand-in for case, Unicode form and spacing without."""
    return text_key(name.replace("_", " "))


def validate_class_names(names: Sequence[str], source: str, keys: Sequence[Hashable] | None = None,
                         cut: Collection[int] = ()) -> None:
    """One line naming the first problem: not a list, no names, an empty name, a control character or line break
    (check_labels), a duplicate, or two names CLIP's tokenizer cannot tell apart (they would get the same class
    vector). `keys`: what the text encoder reads for each name where the caller has it (the token ids of its
    sentence, cut to the context; `cut`: the indices of the names that were cut); by default name_key."""
    names = name_list(names, source)
    check_labels(names, source)
    keys = [name_key(n) for n in names] if keys is None else list(keys)
    seen: dict[Hashable, int] = {}
    for i, (name, key) in enumerate(zip(names, keys, strict=True)):
        j = seen.setdefault(key, i)
        if j == i:
            continue
        if names[j] == name:
            raise PkdError(f"{source}: duplicate class name {name!r} (classes {j + 1} and {i + 1})")
        why = ("it cuts both to the same tokens at its context length" if i in cut or j in cut else
               "it ignores case, Unicode form, spacing and HTML entities, and reads '_' as a space")
        show = repr if repr(names[j]) != repr(name) else ascii  # NFC and NFD look alike: show their code points
        raise PkdError(f"{source}: classes {j + 1} {show(names[j])} and {i + 1} {show(name)} are the same text to "
                       f"CLIP's tokenizer ({why}), so they would get the same class vector: rename or drop one")


def cut_note(name: str, context: int) -> str:
    """The note for a class name longer than the text context (its sentence was cut to fit)."""
    return f"class name {name!r} is longer than the text encoder's {context}-token context: cut"


def read_class_names(source: str | os.PathLike) -> list[str]:
    """Class names from a text file (UTF-8, a BOM ignored; one per line, '\\n' or '\\r\\n'; trailing blank lines
    ignored) or an ImageFolder's sub-folders."""
    source = Path(source)
    try:
        is_dir, is_file = source.is_dir(), source.is_file()
        if is_dir:
            names = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        else:
            data = source.read_bytes() if is_file else None
    except OSError as e:
        raise PkdError(f"cannot read class list {source}: {e.strerror or e}") from None
    if is_dir:
        validate_class_names(names, f"image folder {source} (no class sub-folders)" if not names else str(source))
        return names
    if data is None:
        raise PkdError(f"class list not found: {source}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PkdError(f"cannot read class list {source}: not UTF-8 text ({e})") from None
    # split on \n only: splitlines() would also break a line at \r, \x0c, \x85, U+2028..., making two classes of
    # one line without a word; those are refused below with the line they are in
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            raise PkdError(f"{source}: line {i + 1} is empty; every line must name one class")
    names = [line.strip() for line in lines]
    validate_class_names(names, str(source))
    return names


def class_names_argument(value: str, option: str = "--classes") -> tuple[list[str], list[str]]:
    """(names, notes) of a names-or-file option: `@PATH` reads a class-list file (one name per line) or an
    ImageFolder's sub-folders; anything else is comma-separated names, never looked up as a file (a note says how
    to read a file of that name where one exists)."""
    if value.startswith("@"):
        if not value[1:].strip():
            raise PkdError(f"{option} @: name the file after '@' ({option} @classes.txt or @IMAGEFOLDER)")
        return read_class_names(Path(value[1:]).expanduser()), []
    names = [n.strip() for n in value.split(",")]
    validate_class_names(names, option)
    notes = []
    if os.path.exists(value):  # False, not an error, for a name too long for a path
        notes.append(f"{option} {value!r} is read as class names (comma-separated); to read the file {value}, "
                     f"write {option} @{value}")
    return names, notes


@dataclass(frozen=True)
class ClassList:
    """classes.json: the class names in logit order, the teacher's logit scale, the file of the class vectors
    (`class_vectors`, [C, D] fp32) and its sha256; `teacher` and `template` say where W came from (a bundle may ship
    the names alone: `vectors_file` then names no file there). Other keys are kept (`extra`)."""

    names: list[str]
    logit_scale: float
    teacher: str | None = None
    template: str | None = None
    vectors_file: str = VECTORS_FILE
    vectors_sha256: str | None = None
    dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> ClassList:
        """The record of classes.json's content; one line naming what is missing or of the wrong type."""
        names, scale = data.get("names"), data.get("logit_scale")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PkdError(f"{source} has no list of class names ('names')")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise PkdError(f"{source} has no number 'logit_scale'")
        vectors = data.get("vectors_file", VECTORS_FILE)
        if not isinstance(vectors, str):
            raise PkdError(f"{source} has vectors_file {vectors!r}, not a file name")
        known = {"names", "logit_scale", "teacher", "template", "vectors_file", "vectors_sha256", "dim"}
        return cls(list(names), float(scale), data.get("teacher"), data.get("template"), vectors,
                   data.get("vectors_sha256"), data.get("dim"), {k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ClassList:
        """FOLDER/classes.json (a teacher run, a distillation run or a bundle)."""
        path = Path(folder) / CLASSES_FILE
        return cls.from_dict(read_json(path, "class list"), str(path))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"names": self.names, "teacher": self.teacher, "template": self.template,
                                "logit_scale": self.logit_scale, "dim": self.dim, "vectors_file": self.vectors_file,
                                "vectors_sha256": self.vectors_sha256}
        return {**data, **self.extra}
