"""Classify image files with a `Classifier`: folders walked, files decoded and predicted in batches. One rule for
every image, named or found in a folder: one that cannot be read (missing, a FIFO, a folder, not an image,
truncated) is skipped with the reason, never opened when it is not a regular file. The next batch is decoded on
worker threads while the backend runs the current one (runtime/pipeline.py). Torch-free, as the rest of the
runtime.

    files = image_files(["photos/", "cat.jpg"])
    for r in predict_files(Classifier.from_bundle("bundle/"), files, top_k=3):
        print(r.path, r.prediction.label if r.prediction else f"skipped: {r.skipped}")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.image_files import IMAGE_EXTENSIONS, list_images
from promptkd_edge.utils.paths import FOLDER, describe

if TYPE_CHECKING:
    from promptkd_edge.runtime.classifier import Classifier, Prediction


@dataclass(frozen=True)
class ImageFile:
    """An image path; `named`: given by name rather than found in a folder (both are skipped alike if unreadable)."""

    path: Path
    named: bool


@dataclass(frozen=True)
class FileResult:
    """The prediction for one file, or None with the reason it was skipped."""

    path: Path
    prediction: Prediction | None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file's prediction as `pkd predict --json` writes it (a predicted file only)."""
        if self.prediction is None:
            raise ValueError(f"{self.path} was skipped: {self.skipped}")
        return {"image": str(self.path), **self.prediction.to_dict()}


def image_files(items: Iterable[str | os.PathLike]) -> list[ImageFile]:
    """Paths as given and the images under folders (recursive; symlink loops skipped, see `list_images`), in order.
    A path that is not a folder is taken as an image whatever it is: `predict_files` skips it with the reason when it
    cannot be read. No path at all, or a folder without images, is an error."""
    files: list[ImageFile] = []
    for item in map(Path, items):
        if describe(item) == FOLDER:
            files += [ImageFile(p, named=False) for p in list_images(item)]
        else:
            files.append(ImageFile(item, named=True))
    if not files:
        raise PkdError(f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def predict_files(clf: Classifier, files: Sequence[ImageFile], *, top_k: int = 5, batch_size: int = 16,
                  workers: int | None = None) -> Iterator[FileResult]:
    """One result per file, in order, `batch_size` files predicted at a time while the next ones are decoded on
    `workers` threads (see `Classifier.prepared`). A file that cannot be read, named or found in a folder, is
    skipped: its result says why. Closing the generator early stops the workers."""
    from promptkd_edge.runtime.classifier import best_k

    with closing(clf.prepared([f.path for f in files], batch_size, workers=workers)) as batches:
        for chunk in batches:
            predictions = iter(best_k(clf.logits_of(chunk.batch), clf.class_names, top_k)
                               if chunk.batch is not None else [])
            for i, file in enumerate(files[chunk.start:chunk.start + chunk.size]):
                yield (FileResult(file.path, None, chunk.errors[i]) if i in chunk.errors
                       else FileResult(file.path, next(predictions)))
