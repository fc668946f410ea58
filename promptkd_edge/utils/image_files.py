"""Find images: folder trees (each real folder and file once, symlinks followed) or file lists. Paths only;
decoding is elsewhere. No torch: the runtime's `pkd predict` and the training data read folders through this.
(Labeled ImageFolders: data/listing.py.)"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.paths import FILE, FOLDER, MISSING, check_file, check_folder, describe

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


class ImageList(list):
    """Image paths (a list) and how many links to folders or files already listed the walk skipped
    (`skipped_links`: symlink loops, second links to one folder, several links to one file)."""

    def __init__(self, paths=(), skipped_links: int = 0):
        super().__init__(paths)
        self.skipped_links = skipped_links

    def note(self, source: str | os.PathLike) -> str | None:
        """One line about the skipped links, or None when there were none."""
        if not self.skipped_links:
            return None
        return (f"{source}: {self.skipped_links} link(s) to folders or images already listed skipped (symlink "
                "loops or duplicate links); each real image is listed once")


class Seen:
    """Real folders and files (st_dev, st_ino) a walk has visited, and how many links led back to them."""

    def __init__(self, keys: Iterable[tuple[int, int]] = ()):
        self.keys = set(keys)
        self.skipped = 0

    def first(self, key: tuple[int, int]) -> bool:
        if key in self.keys:
            self.skipped += 1
            return False
        self.keys.add(key)
        return True


def file_key(st: os.stat_result) -> tuple[int, int]:
    """What tells real files apart (device, inode), whatever links lead to them."""
    return st.st_dev, st.st_ino


def walk_images(root: Path, seen: Seen, root_seen: bool = False) -> list[Path]:
    """Images under `root` in os.walk's order (a folder's files sorted, then its sub-folders sorted, recursively;
    hidden names skipped), following symlinks, but each real folder and each real file once (symlink loops and
    second links are counted in `seen` and skipped). A sub-folder that cannot be read is an error."""
    found: list[Path] = []
    stack = [(root, True)] if root_seen else [(root, seen.first(file_key(os.stat(root))))]
    while stack:
        folder, first = stack.pop()
        if not first:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise PkdError(f"cannot list image folder {folder}: {e.strerror or e}") from None
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                st = entry.stat() if is_dir or _is_image(entry.name) else None
            except OSError:  # a broken link or a link loop: listed, and named as such when it is read
                is_dir, st = False, None
            if is_dir:
                subfolders.append((Path(entry.path), seen.first(file_key(st))))
            elif _is_image(entry.name) and (st is None or not stat.S_ISREG(st.st_mode) or seen.first(file_key(st))):
                found.append(Path(entry.path))
        stack.extend(reversed(subfolders))
    return found


def list_images(source: str | os.PathLike) -> ImageList:
    """All images under a folder (recursive, sub-folder names ignored) or listed in a text file.

    A file list holds one path per line, relative to the list's own folder unless absolute; blank lines and
    lines starting with '#' are skipped. Paths are returned sorted for folders and in list order for lists.
    Symlinks are followed, each real folder and file once: links that lead back (loops) or to what is already
    listed are skipped, counted in the result's `skipped_links` and said in one warning line.
    """
    source = Path(source).expanduser()
    kind = describe(source)
    if kind == FOLDER:
        check_folder(source, "image folder")
        images = ImageList(walk_images(source, seen := Seen()), seen.skipped)
        if not images:
            raise PkdError(f"no images under {source} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        warn_note(images.note(source))
        return images
    if kind == FILE:
        check_file(source, "file list")
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PkdError(f"cannot read file list {source}: {e}") from None
        images = ImageList(source.parent / line.strip() for line in lines if line.strip() and not line.startswith("#"))
        if not images:
            raise PkdError(f"file list {source} names no images")
        return images
    if kind == MISSING:
        raise PkdError(f"data not found: {source} (expected a folder of images or a text file listing them)")
    raise PkdError(f"data {source} is {kind}; expected a folder of images or a text file listing them")


def warn_note(note: str | None) -> None:
    """Log `note` as one warning line, when there is one."""
    if note:
        log.warning("%s", note)
