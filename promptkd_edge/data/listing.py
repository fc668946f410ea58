"""Labeled ImageFolders (`root/<class name>/**/<image>`); unlabeled folders and file lists: utils/image_files.py.
Paths only; decoding is elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import validate_class_names
from promptkd_edge.utils.image_files import ImageList, Seen, file_key, walk_images, warn_note
from promptkd_edge.utils.paths import check_folder


@dataclass
class LabeledImages:
    """An ImageFolder: `root/<class name>/**/<image>`; labels index `classes` (sorted folder names)."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped_links: int = field(default=0, compare=False)  # symlink loops and duplicate links skipped by the scan

    @classmethod
    def scan(cls, root: str | os.PathLike) -> LabeledImages:
        """Walk `root/<class>/**` (symlinks followed, each real folder once and each real file once per class: a
        link from one class folder into the root or another class folder is skipped, counted, and warned about)."""
        root = check_folder(Path(root).expanduser(), "labeled image folder")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise PkdError(f"{root} has no class sub-folders (expected ROOT/<class name>/<images>)")
        validate_class_names(classes, str(root))  # folder names are class names: one line each, told apart
        samples, skipped = [], 0
        folders = {file_key(os.stat(f)) for f in [root, *(root / c for c in classes)]}  # no class walks into another
        for i, c in enumerate(classes):
            seen = Seen(folders)
            samples += [(p, i) for p in walk_images(root / c, seen, root_seen=True)]
            skipped += seen.skipped
        if not samples:
            raise PkdError(f"no images in the class folders of {root}")
        warn_note(ImageList(skipped_links=skipped).note(root))
        return cls(root, classes, samples, skipped)

    def relabel(self, names: list[str]) -> LabeledImages:
        """Map folder labels onto the order of `names` (a run's class list); unknown folders are an error."""
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in self.classes if c not in index]
        if unknown:
            raise PkdError(f"{len(unknown)} class folder(s) of {self.root} are not in the class list "
                           f"(e.g. '{unknown[0]}')")
        return LabeledImages(self.root, list(names),
                             [(p, index[self.classes[label]]) for p, label in self.samples], self.skipped_links)
