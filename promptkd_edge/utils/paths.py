"""What a path is, in words, before anything opens it: a folder, a FIFO, a socket, a device, a broken symlink, a
symlink loop, a permission problem. Never opens the path (opening a FIFO for reading blocks until a writer comes)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from promptkd_edge.errors import PkdError

FILE = "a file"
FOLDER = "a folder"
MISSING = "missing"

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def describe(path: str | os.PathLike) -> str:
    """What `path` is: FILE, FOLDER, MISSING, or a phrase ("a FIFO (named pipe)", "a broken symlink to 'x'",
    "a symlink loop", "not reachable: permission denied on a folder above it", ...)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        try:
            return f"a broken symlink to {os.readlink(path)!r}" if os.path.islink(path) else MISSING
        except OSError:
            return MISSING
    except PermissionError:
        return "not reachable: permission denied on a folder above it"
    except NotADirectoryError:
        return "not reachable: a part of the path above it is a file, not a folder"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if e.errno == errno.ENAMETOOLONG:
            return "not a usable path: a name in it is too long for the file system"
        return f"not reachable: {os.strerror(e.errno) if e.errno else e}"
    except ValueError:  # an embedded NUL byte
        return "not a usable path (it holds a NUL character)"
    if stat.S_ISREG(st.st_mode):
        return FILE
    if stat.S_ISDIR(st.st_mode):
        return FOLDER
    return next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file (one phrase: "file not found", "is a folder, not a file", "is a FIFO
    (named pipe), not a file", "is not readable (permission denied)", ...), or None when it is a readable file."""
    kind = describe(path)
    if kind == FILE:
        return None if os.access(path, os.R_OK) else "is not readable (permission denied)"
    if kind == MISSING:
        return "file not found"
    if kind.startswith(("not ", "a symlink loop", "a broken symlink")):
        return f"is {kind}"
    return f"is {kind}, not a file"


def check_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path when it is a readable file, else PkdError: '{what} not found: PATH' or
    '{what} PATH is a folder, not a file' (a FIFO, a symlink loop, ...)."""
    path = Path(path)
    problem = file_problem(path)
    if problem == "file not found":
        raise PkdError(f"{what} not found: {path}")
    if problem:
        raise PkdError(f"{what} {path} {problem}")
    return path


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path when it is a readable folder, else PkdError naming what it is instead."""
    path = Path(path)
    kind = describe(path)
    if kind == MISSING:
        raise PkdError(f"{what} not found: {path}")
    if kind != FOLDER:
        plain = kind.startswith(("not ", "a symlink loop", "a broken symlink"))
        raise PkdError(f"{what} {path} is {kind}" + ("" if plain else ", not a folder"))
    if not os.access(path, os.R_OK | os.X_OK):
        raise PkdError(f"{what} {path} is not readable (permission denied)")
    return path
