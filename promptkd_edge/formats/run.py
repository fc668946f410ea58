"""The run folder of `pkd distill` and its checkpoints folder: what each file is called and what a reader may check
without loading anything. No torch, no numpy: export and eval read runs through this, train/ writes them.

RUN/config.json, classes.json + class_vectors.safetensors (formats/classes.py), student.safetensors, metrics.jsonl,
loss.png, summary.json and checkpoints/. `checkpoints/step-NNNNNNNN/{state.safetensors,state.json,sha256.json}`,
with `checkpoints/latest.json` pointing at the newest (train/checkpoint.py writes and loads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.files import read_json

CONFIG_FILE = "config.json"
STUDENT_FILE = "student.safetensors"  # the prompts + projector (models/student.py); a bundle ships it as is
LATEST = "latest.json"  # in checkpoints/: {"checkpoint": "step-NNNNNNNN"}
SUMS = "sha256.json"  # in each checkpoint folder: {file name: sha256} of STATE_FILES, content digests of run files
STATE_FILES = ("state.safetensors", "state.json")

# safetensors' dtype codes as torch names them: the content digest spells dtypes as torch does (it was first
# computed through torch, and the digests recorded in earlier checkpoints must still match)
_TORCH_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                 "F8_E4M3": "torch.float8_e4m3fn", "F8_E5M2": "torch.float8_e5m2", "I64": "torch.int64",
                 "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8", "U8": "torch.uint8",
                 "U16": "torch.uint16", "U32": "torch.uint32", "U64": "torch.uint64", "BOOL": "torch.bool"}


class RunDir:
    """The paths of a run folder; `check_new` / `check_existing` refuse the wrong folder in one line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.student = self.path / STUDENT_FILE
        self.metrics = self.path / "metrics.jsonl"
        self.plot = self.path / "loss.png"
        self.summary = self.path / "summary.json"
        self.checkpoints = self.path / "checkpoints"

    def check_new(self, resumable: bool = True) -> None:
        """Refuse a folder that holds anything: a new run starts in a new or empty folder."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            hint = f"pass --resume {self.path} to continue it, or choose" if resumable else "choose"
            raise PkdError(f"{self.path} already exists and is not empty; {hint} another --out")

    def check_existing(self) -> None:
        """Refuse to resume a folder that holds no run."""
        if not self.config.is_file():
            raise PkdError(f"{self.path} is not a distillation run (no {CONFIG_FILE})")


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` holds a trained student (a distillation run, finished or not)."""
    return (Path(path) / STUDENT_FILE).is_file()


def checkpoint_names(root: str | os.PathLike) -> list[str]:
    """The checkpoint folders under `root` (a run's checkpoints/), oldest first (their names sort by step)."""
    root = Path(root)
    return sorted(p.name for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def has_checkpoint(root: str | os.PathLike) -> bool:
    """Whether a run's checkpoints folder holds a checkpoint to resume from (or a sign of one)."""
    return (Path(root) / LATEST).is_file() or bool(checkpoint_names(root))


def content_sha256(path: Path) -> str:
    """The sha256 of a safetensors file's metadata and tensors (names, dtypes, shapes, bytes), in a fixed order:
    the same content gives the same digest whichever order a writer put the header in. Read from the file's own
    layout (an 8-byte little-endian header size, the JSON header, the tensors' little-endian bytes)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    h = hashlib.sha256()
    h.update(repr(sorted((header.pop("__metadata__", None) or {}).items())).encode())
    for key in sorted(header):
        entry = header[key]
        start, end = entry["data_offsets"]
        if end > len(data):
            raise ValueError(f"tensor {key} ends past the end of the file")
        h.update(f"\n{key}:{_TORCH_DTYPES[entry['dtype']]}:{tuple(entry['shape'])}\n".encode())
        h.update(data[start:end])
    return h.hexdigest()


def matches_checkpoint(root: str | os.PathLike, name: str, path: str | os.PathLike) -> bool | None:
    """Whether the run file `path` holds what checkpoint `name` recorded under its file name (student.safetensors
    of that step); None when the checkpoint recorded none (an earlier version's)."""
    sums = Path(root) / name / SUMS
    recorded = read_json(sums, "checkpoint checksums").get("content_sha256", {}).get(Path(path).name) \
        if sums.is_file() else None
    if recorded is None:
        return None
    try:
        return content_sha256(Path(path)) == recorded
    except Exception:  # noqa: BLE001 - missing, truncated, not safetensors: not the checkpoint's file
        return False


def run_data(config_path: Path) -> str | None:
    """The data folder a run was distilled on (its config.json), or None: where the gates' images come from."""
    try:
        return read_json(config_path, "run config").get("config", {}).get("data") or None
    except PkdError:
        return None


def run_state(run: RunDir) -> dict[str, Any]:
    """Which training state a run's student.safetensors is (train/distill.py writes it right after each checkpoint
    and summary.json when the last epoch is done): `complete`, and `epoch` (epochs done), `step`, `step_in_epoch`,
    `epochs` (planned) and `checkpoint` where known. Recorded in the manifest's `source`. A folder without
    config.json (which `pkd distill` writes before its first step) was not trained by it: `complete` is None."""
    if not run.config.is_file() and not run.summary.is_file():
        return {"complete": None}
    config = _read_or_empty(run.config, "run config").get("config", {})
    epochs = config.get("epochs") if isinstance(config, dict) else None
    if run.summary.is_file():
        summary = read_json(run.summary, "run summary")
        return {"complete": True, "epoch": summary.get("epochs"), "step": summary.get("steps"), "epochs": epochs}
    state: dict[str, Any] = {"complete": False, "epochs": epochs, "checkpoint": None}
    latest = _read_or_empty(run.checkpoints / LATEST, "checkpoint pointer").get("checkpoint")
    if isinstance(latest, str) and latest and "/" not in latest and latest not in (".", ".."):
        meta = _read_or_empty(run.checkpoints / latest / "state.json", "checkpoint")
        state.update(checkpoint=latest, **{k: meta.get(k) for k in ("epoch", "step", "step_in_epoch")})
        # distill writes student.safetensors, then its checkpoint: a kill between leaves a newer student
        state["student_matches_checkpoint"] = matches_checkpoint(run.checkpoints, latest, run.student)
    return state


def _read_or_empty(path: Path, what: str) -> dict[str, Any]:
    return read_json(path, what) if path.is_file() else {}


def describe_state(state: dict[str, Any]) -> str:
    """One phrase for `run_state`'s record, e.g. "checkpoint step-00000012 (epoch 1 of 2 done + 3 steps, step 12)"."""
    of = f" of {state['epochs']}" if state.get("epochs") is not None else ""
    if state["complete"] is None:
        return "a student not trained by `pkd distill` (no config.json: its training state is not recorded)"
    if state["complete"]:
        return f"the finished run ({state.get('epoch')}{of} epochs, step {state.get('step')})"
    if state.get("checkpoint") is None:
        return "an unfinished run with no readable checkpoint (which training step it is cannot be told)"
    if state.get("student_matches_checkpoint") is False:
        return (f"an unfinished run whose student.safetensors is not its latest checkpoint {state['checkpoint']} "
                "(the run was stopped between writing the two: which training step it holds is not recorded)")
    more = f" + {state['step_in_epoch']} steps" if state.get("step_in_epoch") else ""
    return (f"checkpoint {state['checkpoint']} of an unfinished run (epoch {state.get('epoch')}{of} done{more}, "
            f"step {state.get('step')})")
