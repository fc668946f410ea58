"""Atomic file writes, JSON with a schema version, sha256: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from promptkd_edge.errors import PkdError, first_line

SCHEMA_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write `obj` (plus `schema_version` when missing) as indented JSON, atomically."""
    obj = {"schema_version": SCHEMA_VERSION, **obj}
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """Read a JSON object; a missing or broken file is a PkdError naming `what`."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PkdError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PkdError(f"{what} {path} is unreadable: {e}") from None
    if not isinstance(obj, dict):
        raise PkdError(f"{what} {path} does not hold a JSON object")
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise PkdError(f"{what} {path} has schema_version {version}; this promptkd-edge reads <= {SCHEMA_VERSION}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The file's sha256; remembered per (path, size, mtime) so a 1.7 GB weights file is read once a process."""
    path = Path(path).resolve()
    st = path.stat()
    return _sha256_of(str(path), st.st_size, st.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()  # file names need not be UTF-8


def write_tagged_safetensors(path: str | os.PathLike, tensors: dict[str, Any], file_format: str,
                             config: dict[str, Any]) -> None:
    """Tensors as safetensors with `format` and a JSON `config` in the metadata, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": file_format, "config": json.dumps(config)})


def read_tagged_safetensors(path: str | os.PathLike, file_format: str, what: str) -> tuple[dict[str, Any], dict]:
    """(config, tensors) of a file written by `write_tagged_safetensors` in `file_format`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PkdError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as e:
        raise PkdError(f"cannot read {what} {path}: {first_line(e, with_type=False)}") from None
    if meta.get("format") != file_format:
        raise PkdError(f"{path} is not a promptkd-edge {what} file (format {meta.get('format')!r})")
    return json.loads(meta["config"]), tensors


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_work(folder: Path, pattern: str, markers: tuple[str, ...] = (),
                      keep: Callable[[re.Match[str]], bool] | None = None) -> list[tuple[Path, int]]:
    """Remove the work folders in `folder` whose name matches `pattern` (a regex whose last group is the pid of the
    process that made it) when that process is gone (killed mid-way: power loss, kill -9), the folder is empty or
    holds one of the `markers` files, and `keep(match)` is not true; returns (path, bytes) of each one removed."""
    import shutil

    removed: list[tuple[Path, int]] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = re.fullmatch(pattern, path.name)
        if not match or not path.is_dir() or process_alive(int(match.groups()[-1])) or (keep and keep(match)):
            continue
        if markers and any(path.iterdir()) and not any((path / m).exists() for m in markers):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        removed.append((path, size))
    return removed


def user_cache_dir() -> Path:
    """promptkd-edge's cache folder: $PKD_CACHE_DIR, else $XDG_CACHE_HOME/promptkd-edge (~/.cache/promptkd-edge)."""
    base = os.environ.get("PKD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                           "promptkd-edge")
    return Path(base).expanduser()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, timeout: float) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block: yields True once it is held,
    False when another process held it for `timeout` seconds or the file cannot be made (read-only folder). The
    lock is flock(2): released by the kernel when the holder exits, even on kill -9, and honoured across hosts on
    NFSv4 and local filesystems. Where there is no flock (Windows) nothing is locked and True is yielded."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    held = False
                    break
                time.sleep(0.05)
        yield held
    finally:
        os.close(fd)  # releases the lock
