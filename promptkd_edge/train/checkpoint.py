"""Training checkpoints: safetensors for tensors, JSON for the rest, each written whole or not at all.

`checkpoints/step-NNNNNNNN/{state.safetensors,state.json}` is written in a temporary folder and renamed into
place; `checkpoints/latest.json` then points at it. Nothing here unpickles anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.utils.files import read_json, write_json

LATEST = "latest.json"
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


def save_checkpoint(root: str | os.PathLike, state: TrainingState, keep: int = 2) -> Path:
    """Write `state` as a new checkpoint folder, point latest.json at it, keep the newest `keep`."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        opt_tensors, opt_meta = _split_optimizer(state.optimizer)
        tensors = {f"student.{k}": v for k, v in state.student.items()} | opt_tensors
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {
            "epoch": state.epoch, "step": state.step, "step_in_epoch": state.step_in_epoch,
            "optimizer": opt_meta, "scheduler": state.scheduler, "scaler": state.scaler, "extra": state.extra})
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / LATEST, {"checkpoint": name})
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(root: str | os.PathLike) -> TrainingState | None:
    """The checkpoint latest.json points at, or None when there is none yet."""
    from safetensors.torch import load_file

    root = Path(root)
    if not (root / LATEST).is_file():
        return None
    folder = root / read_json(root / LATEST, "checkpoint pointer")["checkpoint"]
    meta = read_json(folder / "state.json", "checkpoint")
    try:
        tensors = load_file(str(folder / "state.safetensors"))
    except Exception as e:
        raise PkdError(f"checkpoint {folder} is unreadable: {first_line(e, with_type=False)}") from None
    student = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
    return TrainingState(epoch=meta["epoch"], step=meta["step"], step_in_epoch=meta["step_in_epoch"],
                         student=student, optimizer=_join_optimizer(tensors, meta["optimizer"]),
                         scheduler=meta["scheduler"], scaler=meta["scaler"], extra=meta.get("extra", {}))
