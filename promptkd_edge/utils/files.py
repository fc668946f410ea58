"""Atomic file writes, JSON with a schema version, sha256: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import errno
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
        try:
            yield tmp_path
        except Exception as e:
            code = native_errno(e)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(path)) from e
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def native_errno(e: BaseException) -> int | None:
    """The errno a writer in native code (safetensors' Rust) reports only in its message, as `(os error 28)`."""
    if isinstance(e, OSError):
        return None
    match = re.search(r"\(os error (\d+)\)", str(e))
    return int(match.group(1)) if match else None


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG)  # the destination cannot take the file


def disk_error(e: BaseException) -> int | None:
    """The errno of a full or read-only destination anywhere in `e`'s chain (a library that wraps the OSError it
    got, as torch.onnx does, or native code that reports it only in its message), else None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else native_errno(e)
        if code in DISK_ERRNOS:
            return code
        e = e.__cause__ or e.__context__
    return None


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


def fields_as_json(record: Any) -> dict[str, Any]:
    """A result record's fields as JSON values: what a run's summary.json and `--json` print (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(record).items()}


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


OWNER_FILE = ".pkd-owner.json"  # in a work folder: which process on which machine (and boot) is using it


def this_machine() -> dict[str, Any]:
    """This process as an owner record names it: pid, host name and boot id (None where the OS has none)."""
    import socket

    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        boot_id = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id}


def claim(folder: Path) -> None:
    """Write the owner record of this process into `folder`, so a cleanup elsewhere knows it is in use."""
    write_json(folder / OWNER_FILE, this_machine())


@contextlib.contextmanager
def work_folder(path: Path) -> Iterator[Path]:
    """A new hidden work folder `path` (any leftover of it removed first) whose first file is this process's owner
    record, held under an advisory lock while in use (a belt: flock is not reliable on NFS, the record is the rule);
    removed on exit unless it was renamed away. Call `release(path)` before renaming it into place."""
    import fcntl
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    claim(path)
    lock = os.open(path / OWNER_FILE, os.O_RDONLY)
    with contextlib.suppress(OSError):  # no locks on this file system: the owner record alone says who uses it
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        yield path
    finally:
        os.close(lock)
        shutil.rmtree(path, ignore_errors=True)


def release(folder: Path) -> None:
    """Remove `folder`'s owner record (before it is renamed into place as a finished product)."""
    (folder / OWNER_FILE).unlink(missing_ok=True)


def why_in_use(folder: Path) -> str | None:
    """None when the process that made work folder `folder` is provably gone: its owner record names this host and
    either another boot (the machine restarted since) or this boot and a pid that is not running. Otherwise why it
    must be left alone (another host's, or no record: made by an older promptkd-edge or still being set up)."""
    import fcntl

    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host, boot = int(owner["pid"]), str(owner["host"]), owner.get("boot_id")
    except (OSError, ValueError, TypeError, KeyError):
        return "it has no owner record (an older promptkd-edge made it, or its process is starting)"
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY)
    except OSError:
        return "its owner record cannot be opened"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"process {pid} on {host} holds its lock"
    except OSError:
        pass  # no locks here: the record decides
    finally:
        os.close(fd)
    here = this_machine()
    if host != here["host"]:
        return f"process {pid} on host {host} made it and may still be using it"
    if boot and here["boot_id"] and boot != here["boot_id"]:
        return None  # this machine restarted since: that process is gone
    if bool(boot) != bool(here["boot_id"]):
        return f"process {pid} made it on {host}, and whether in this boot cannot be told"
    return f"process {pid} is still running" if process_alive(pid) else None


def remove_stale_work(folder: Path, pattern: str, markers: tuple[str, ...] = (),
                      keep: Callable[[re.Match[str]], bool] | None = None
                      ) -> tuple[list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Remove the work folders in `folder` whose name matches `pattern` when the process that made them is provably
    gone (killed mid-way: power loss, kill -9; see `why_in_use`), the folder holds only its owner record or one of
    the `markers` files, and `keep(match)` is not true. Returns ((path, bytes) of each one removed, (path, why) of
    each matching one left alone because it may be in use)."""
    import shutil

    removed: list[tuple[Path, int]] = []
    left: list[tuple[Path, str]] = []
    if not folder.is_dir():
        return removed, left
    for path in sorted(folder.iterdir()):
        match = re.fullmatch(pattern, path.name)
        if not match or not path.is_dir() or path.is_symlink() or (keep and keep(match)):
            continue
        try:
            content = [p.name for p in path.iterdir() if p.name != OWNER_FILE]
        except OSError as e:  # another user's, say
            left.append((path, f"it cannot be read ({e.strerror})"))
            continue
        if markers and content and not any(m in content for m in markers):
            continue  # not one of ours
        why = why_in_use(path)
        if why is not None:
            left.append((path, why))
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        removed.append((path, size))
    return removed, left


def exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths `a` and `b` in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system or file system cannot (the caller then renames in two steps)."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def destination(path: str | os.PathLike, option: str) -> Path:
    """The resolved path of an output folder that is written beside itself and renamed into place: refused when it
    is the current folder, a folder holding it, or the root (`--out .`, `..`, `/`), which cannot be replaced."""
    resolved = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved.name == "":
        what = "the root folder" if resolved.name == "" else "the current folder" if resolved == cwd \
            else "a folder holding the current folder"
        raise PkdError(f"{option} {path} is {what} ({resolved}); give the output a folder of its own, e.g. "
                       f"{option} {Path(path) / 'bundle'}")
    return resolved


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
