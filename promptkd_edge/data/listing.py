"""Find images: unlabeled folder trees or file lists, labeled ImageFolders. Paths only; decoding is elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime.names import validate_class_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def list_images(source: str | os.PathLike) -> list[Path]:
    """All images under a folder (recursive, sub-folder names ignored) or listed in a text file.

    A file list holds one path per line, relative to the list's own folder unless absolute; blank lines and
    lines starting with '#' are skipped. Paths are returned sorted for folders and in list order for lists.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        images = _walk_images(source)
        if not images:
            raise PkdError(f"no images under {source} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return images
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PkdError(f"cannot read file list {source}: {e}") from None
        images = [(source.parent / line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        if not images:
            raise PkdError(f"file list {source} names no images")
        return images
    raise PkdError(f"data not found: {source} (expected a folder of images or a text file listing them)")


@dataclass
class LabeledImages:
    """An ImageFolder: `root/<class name>/**/<image>`; labels index `classes` (sorted folder names)."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]

    @classmethod
    def scan(cls, root: str | os.PathLike) -> LabeledImages:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise PkdError(f"labeled image folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise PkdError(f"{root} has no class sub-folders (expected ROOT/<class name>/<images>)")
        validate_class_names(classes, str(root))  # folder names are class names: one line each, told apart
        samples = [(p, i) for i, c in enumerate(classes) for p in _walk_images(root / c)]
        if not samples:
            raise PkdError(f"no images in the class folders of {root}")
        return cls(root, classes, samples)

    def relabel(self, names: list[str]) -> LabeledImages:
        """Map folder labels onto the order of `names` (a run's class list); unknown folders are an error."""
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in self.classes if c not in index]
        if unknown:
            raise PkdError(f"{len(unknown)} class folder(s) of {self.root} are not in the class list "
                           f"(e.g. '{unknown[0]}')")
        return LabeledImages(self.root, list(names),
                             [(p, index[self.classes[label]]) for p, label in self.samples])
