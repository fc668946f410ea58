"""Where `pkd export RUN --out` writes: the folder checked first (new, empty, or with --overwrite a bundle holding
nothing else), the work folders of killed exports cleaned up, the finished bundle moved into place atomically."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.bundle import (
    ENGINES_DIR,
    FP32_MASTER_FILE,
    MODEL_FILE,
    PREPROCESS_FILE,
    is_bundle,
    read_manifest,
)
from promptkd_edge.formats.classes import CLASSES_FILE
from promptkd_edge.formats.manifest import MANIFEST_FILE
from promptkd_edge.utils.files import claim, exchange, process_alive, release, remove_stale_work
from promptkd_edge.utils.progress import Progress

BUNDLE_WORK_FILES = (MODEL_FILE, FP32_MASTER_FILE, MANIFEST_FILE, PREPROCESS_FILE, CLASSES_FILE, ENGINES_DIR)


def clean_leftovers(folder: Path, pattern: str, progress: Progress) -> None:
    """An export killed mid-way leaves its hidden work folder (up to the model's size: 350 MB for ViT-B-16); remove
    those whose process is provably gone (utils/files.py `why_in_use`: on shared storage another host's may be
    running), say so, and name those left alone. A bundle moved aside by --overwrite (`.NAME.old-PID`) stays while
    NAME is missing: the kill came between the two renames and it may be the only copy."""
    def keep(match: re.Match[str]) -> bool:
        return match.groups()[-2:-1] == ("old",) and not (folder / match.group(1)).exists()

    removed, left = remove_stale_work(folder, pattern, BUNDLE_WORK_FILES, keep)
    for path, size in removed:
        progress.note(f"removed {path} ({size / 2**20:.1f} MB), left by an interrupted export")
    for path, why in left:
        progress.note(f"left {path} alone: {why}; remove it yourself once no export uses it")
    for path in folder.iterdir() if folder.is_dir() else ():
        match = re.fullmatch(pattern, path.name)
        if match and keep(match) and not process_alive(int(match.group(3))):
            progress.note(f"{path} holds a bundle that an interrupted --overwrite moved aside; rename it to "
                          f"{folder / match.group(1)} to restore it")


def check_out(out: Path, overwrite: bool, run: Path) -> None:
    """`out` (resolved) may be new, an empty folder or, with `overwrite`, a bundle holding nothing else; never the
    run exported, a folder inside it or one holding it."""
    src = run.resolve()
    if out == src or src in out.parents or out in src.parents:
        where = "is" if out == src else "is inside" if src in out.parents else "holds"
        raise PkdError(f"--out {out} {where} the run being exported ({src}); choose a folder outside it")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise PkdError(f"--out {out} exists and is not a folder; choose another --out (--overwrite replaces only "
                       "a bundle)")
    if not any(out.iterdir()):
        return
    if not overwrite:
        what = "a bundle" if is_bundle(out) else "not empty"
        raise PkdError(f"{out} already exists and is {what}; choose another --out or pass --overwrite")
    try:
        manifest = read_manifest(out)
    except PkdError as e:
        why = "it has no manifest.json" if not (out / MANIFEST_FILE).is_file() else str(e)
        raise PkdError(f"--overwrite replaces only a bundle, and {out} is not one ({why}); choose another "
                       "--out") from None
    known = {MANIFEST_FILE, *manifest.files}
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and p.relative_to(out).as_posix() not in known
                     and not any(part.startswith(".") or part == "ort-trt-cache" for part in p.relative_to(out).parts))
    if foreign:
        shown_names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PkdError(f"{out} is a bundle but also holds files that are not part of it ({shown_names}), which "
                       "--overwrite would delete; move them out or choose another --out")


def move_into_place(tmp: Path, out: Path) -> None:
    """Put the finished bundle `tmp` at `out`: a bundle there is swapped with it in one atomic step where the file
    system can (else moved aside first, so a kill between the renames leaves it as `.NAME.old-PID`), then removed."""
    release(tmp)
    if not (os.path.lexists(out) and any(out.iterdir())):
        os.replace(tmp, out)  # new, or an empty folder
        return
    if exchange(tmp, out):
        old = tmp
        with contextlib.suppress(OSError):  # a full disk: without its record the old one is named, not removed
            claim(old)
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        with contextlib.suppress(OSError):
            claim(old)
        os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
