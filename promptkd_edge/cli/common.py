"""What every `pkd` command shares: the typer app and its global options, errors as one line with exit code 2,
the one-line hint for a missing extra, consoles, progress, JSON output, and defaults read from config dataclasses."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from promptkd_edge import __version__
from promptkd_edge.errors import PkdError
from promptkd_edge.utils.text import shown

app = typer.Typer(name="pkd", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  add_completion=False,
                  help="promptkd-edge: distill a CLIP teacher into a prompted CLIP student (PromptKD) and ship it.")
_state = {"debug": False}

# What a missing module means: the extra that brings it (pyproject.toml).
MODULE_EXTRAS = {"torch": "train", "torchvision": "train", "open_clip": "train", "matplotlib": "plot",
                 "timm": "train", "onnx": "export", "onnxscript": "export", "onnxslim": "slim",
                 "webdataset": "wds", "openvino": "openvino"}
EXTRA_MODULES = {"train": ("torch", "torchvision", "open_clip"), "export": ("onnx", "onnxscript")}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"promptkd-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for every error.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    _state["debug"] = debug


def errors_to_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known problems become one red line on stderr and exit code 2; --debug keeps the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PkdError as e:
            if _state["debug"]:
                raise
            err().print(f"[bold red]error:[/] {shown(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as e:
            line = missing_module(e)
            if line is None or _state["debug"]:
                raise
            err().print(f"[bold red]error:[/] {shown(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err().print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - a file system's error becomes one line, anything else is re-raised
            line = os_error_line(e)
            if line is None or _state["debug"]:
                raise
            err().print(f"[bold red]error:[/] {shown(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# What a user's file system or path causes (not a bug): a read-only mount, a full disk or quota, no permission, a
# name too long, a file where a folder is expected (or the reverse), a link loop, a missing folder on the way.
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
USER_ERRNOS = WRITE_ERRNOS | {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR,
                              errno.EEXIST, errno.ELOOP, errno.ENOENT, errno.ENOTEMPTY, errno.EXDEV, errno.ETXTBSY}


def os_error_line(e: BaseException) -> str | None:
    """One line for an OSError a user's path or file system causes and that names its file, e.g. `cannot write
    out/model.onnx: No space left on device (ENOSPC)`, or for a native writer's error that reports a full disk or a
    read-only file system only in its message (safetensors); None for anything else (a bug: keep the traceback)."""
    from promptkd_edge.errors import first_line
    from promptkd_edge.utils.files import native_errno

    code = native_errno(e)
    if code in WRITE_ERRNOS:
        return f"cannot write a file: {os.strerror(code)} ({errno.errorcode[code]}): {first_line(e, with_type=False)}"
    if not isinstance(e, OSError) or e.errno not in USER_ERRNOS or e.filename is None:
        return None
    if e.errno in WRITE_ERRNOS:  # a copy names its source first: the destination is what could not be written
        verb, where = "write", os.fsdecode(e.filename2 if e.filename2 is not None else e.filename)
    else:
        verb = "use"
        where = os.fsdecode(e.filename) + (f" -> {os.fsdecode(e.filename2)}" if e.filename2 is not None else "")
    return f"cannot {verb} {where}: {e.strerror or os.strerror(e.errno)} ({errno.errorcode[e.errno]})"


def require(command: str, *extras: str) -> None:
    """One line naming the extras a command needs when their modules are missing, before any work."""
    import importlib.util

    missing = [m for e in extras for m in EXTRA_MODULES[e] if importlib.util.find_spec(m) is None]
    if missing:
        raise PkdError(f"`pkd {command}` needs {', '.join(missing)}: pip install "
                       f"'promptkd-edge[{','.join(extras)}]'")


def missing_module(e: ModuleNotFoundError) -> str | None:
    """One line for a missing module that an extra brings, else None (a bug: keep the traceback)."""
    root = (e.name or "").split(".")[0]
    extra = MODULE_EXTRAS.get(root)
    return f"this needs {root}, which the [{extra}] extra installs: pip install 'promptkd-edge[{extra}]'" \
        if extra else None


def defaults(cls: type) -> SimpleNamespace:
    """The defaults of a config dataclass's fields (factories called), read by the options that set them, so each
    default lives in the dataclass only. Fields without a default are left out."""
    values = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
              for f in dataclasses.fields(cls)}
    return SimpleNamespace(**{k: v for k, v in values.items() if v is not dataclasses.MISSING})


def config_values(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed command parameters that are fields of config dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if k in names}


def err():
    """A console on stderr; ":name:" in users' text stays as written."""
    from rich.console import Console

    return Console(stderr=True, emoji=False)


def console():
    """A console on stdout; ":name:" in users' text stays as written."""
    from rich.console import Console

    return Console(emoji=False)


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def make_progress(enabled: bool = True):
    """Bars on a terminal; plain periodic lines in a log file or CI; nothing when off or on other DDP ranks."""
    from promptkd_edge.utils.progress import LineProgress, NullProgress, RichProgress

    if not enabled or not is_main_rank():
        return NullProgress()
    return RichProgress() if sys.stderr.isatty() else LineProgress()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def accuracy_table(title: str, top1: dict, base: dict, novel: dict, hm: dict, agreement: dict):
    """All-class top-1 and the base-to-novel protocol (base = first ceil(N/2) classes), one row per model."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("model", "top-1 (all classes)", "base", "novel", "HM"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(d: dict, name: str) -> str:
        return f"{100 * d[name]:.2f} %" if name in d else "-"

    for name in top1:
        table.add_row(shown(name), pct(top1, name), pct(base, name), pct(novel, name), pct(hm, name))
    for name, value in agreement.items():
        table.add_row(f"top-1 agreement {shown(name)}", f"{100 * value:.2f} %", "", "", "")
    return table
