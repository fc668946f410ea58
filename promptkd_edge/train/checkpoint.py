"""Training checkpoints: safetensors for tensors, JSON for the rest, each written whole or not at all.

`checkpoints/step-NNNNNNNN/{state.safetensors,state.json,sha256.json}` is written in a temporary folder and renamed
into place; `checkpoints/latest.json` then points at it (`{"checkpoint": "step-NNNNNNNN"}`). sha256.json holds the
sha256 of the two state files, checked on every load, so a damaged checkpoint is refused, never resumed; and the
content digest of the run's safetensors files written with it (student.safetensors), so a reader can tell that they
are the checkpoint's.
Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.formats.run import LATEST, STATE_FILES, SUMS, checkpoint_names, content_sha256
from promptkd_edge.utils.files import read_json, write_json

TENSOR = "__tensor__"


@dataclass
class TrainingState:
    epoch: int  # the epoch in progress (or the next one, when step_in_epoch == 0)
    step: int  # optimizer steps done in total
    step_in_epoch: int  # batches of `epoch` already consumed
    student: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    extra: dict[str, Any]
    name: str = ""  # the checkpoint folder it was read from (set by load_latest)
    verified: bool = True  # False: an earlier version's checkpoint, without sha256.json, read unverified


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        state[str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
                state[str(pid)][key] = TENSOR
            else:
                state[str(pid)][key] = value
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state = {int(pid): {k: tensors[f"optimizer.{pid}.{k}"] if v == TENSOR else v for k, v in entries.items()}
             for pid, entries in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _sha256(path: Path) -> str:
    """The file's sha256, read now (never a cached value: the point is to see a change)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(root: str | os.PathLike, state: TrainingState, keep: int = 2,
                    files: dict[str, Path] | None = None) -> Path:
    """Write `state` as a new checkpoint folder with the sha256 of its files (and the content digest of `files`,
    the run's safetensors files written with it, by name), point latest.json at it, keep the newest `keep` of
    those up to this step (a later one, left from before a resume from an earlier checkpoint, is replaced when the
    run gets there)."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    old = root / f".{name}.replaced"
    try:
        opt_tensors, opt_meta = _split_optimizer(state.optimizer)
        tensors = {f"student.{k}": v for k, v in state.student.items()} | opt_tensors
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {
            "epoch": state.epoch, "step": state.step, "step_in_epoch": state.step_in_epoch,
            "optimizer": opt_meta, "scheduler": state.scheduler, "scaler": state.scaler, "extra": state.extra,
            "checksums": SUMS})
        write_json(tmp / SUMS, {"sha256": {f: _sha256(tmp / f) for f in STATE_FILES},
                                "content_sha256": {n: content_sha256(p) for n, p in (files or {}).items()}})
        final = root / name
        if final.exists():  # set aside, not deleted, until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    write_json(root / LATEST, {"checkpoint": name})
    for stale in [n for n in checkpoint_names(root) if n <= name][:-keep]:
        shutil.rmtree(root / stale, ignore_errors=True)
    return final


def load_latest(root: str | os.PathLike, name: str | None = None) -> TrainingState | None:
    """The checkpoint latest.json points at (or the one named `name`), its files checked against their sha256;
    None when the run has no checkpoint yet. A damaged checkpoint is a PkdError that says how to resume from an
    earlier one."""
    from safetensors.torch import load_file

    root = Path(root)
    if name is None:
        if not (root / LATEST).is_file():
            if checkpoint_names(root):
                raise PkdError(f"{root} has no {LATEST} (the run stopped while writing a checkpoint); "
                               f"{_earlier_advice(root, None)}")
            return None
        try:
            name = str(read_json(root / LATEST, "checkpoint pointer")["checkpoint"])
        except (PkdError, KeyError) as e:
            raise PkdError(f"checkpoint pointer {root / LATEST} is damaged ({first_line(e, with_type=False)}); "
                           f"{_earlier_advice(root, None)}") from None
        if name not in checkpoint_names(root):
            raise PkdError(f"{root / LATEST} points at {name}, which is not there; {_earlier_advice(root, None)}")
    elif name not in checkpoint_names(root):
        known = ", ".join(checkpoint_names(root)) or "none"
        raise PkdError(f"no checkpoint {name} in {root} (it holds: {known})")
    folder = root / name
    verified = _verify(folder)
    try:
        meta = read_json(folder / "state.json", "checkpoint")
        tensors = load_file(str(folder / "state.safetensors"))
        student = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
        return TrainingState(epoch=meta["epoch"], step=meta["step"], step_in_epoch=meta["step_in_epoch"],
                             student=student, optimizer=_join_optimizer(tensors, meta["optimizer"]),
                             scheduler=meta["scheduler"], scaler=meta["scaler"], extra=meta.get("extra", {}),
                             name=name, verified=verified)
    except Exception as e:  # noqa: BLE001 - whatever is wrong inside, the checkpoint cannot be used
        raise PkdError(f"checkpoint {folder} is unreadable ({first_line(e, with_type=False)}); "
                       f"{_earlier_advice(root, name)}") from None


def _verify(folder: Path) -> bool:
    """Check the state files against sha256.json: True when they match, False for a checkpoint written before
    checksums (no sha256.json and a state.json that does not ask for one); a PkdError otherwise."""
    root, name = folder.parent, folder.name
    if not (folder / SUMS).is_file():
        try:
            asks = "checksums" in read_json(folder / "state.json", "checkpoint")
        except PkdError:
            asks = True
        if asks:
            raise PkdError(f"checkpoint {folder} has no {SUMS} to check its files against; "
                           f"{_earlier_advice(root, name)}")
        return False
    try:
        sums = read_json(folder / SUMS, "checkpoint checksums")["sha256"]
        recorded = {f: str(sums[f]) for f in STATE_FILES}
    except (PkdError, KeyError, TypeError) as e:
        raise PkdError(f"checkpoint checksums {folder / SUMS} are damaged ({first_line(e, with_type=False)}); "
                       f"{_earlier_advice(root, name)}") from None
    for file, digest in recorded.items():
        try:
            actual = _sha256(folder / file)
        except OSError as e:
            raise PkdError(f"checkpoint file {folder / file} is unreadable ({first_line(e, with_type=False)}); "
                           f"{_earlier_advice(root, name)}") from None
        if actual != digest:
            raise PkdError(f"checkpoint file {folder / file} does not match its recorded sha256 (changed or "
                           f"damaged since it was written); {_earlier_advice(root, name)}")
    return True


def _earlier_advice(root: Path, name: str | None) -> str:
    """What to do when checkpoint `name` (None: the latest) cannot be used: resume from the newest one before it,
    or start again when none is kept."""
    earlier = [n for n in checkpoint_names(root) if name is None or n < name]
    if not earlier:
        return "no earlier checkpoint is kept: start the run again with --out (another folder)"
    return f"resume from {'an earlier' if name else 'the last whole'} one with --from-checkpoint {earlier[-1]}"
