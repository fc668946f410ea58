"""Process set-up: device, precision and (under torchrun) the DistributedDataParallel process group."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from promptkd_edge.errors import PkdError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torch_device(name: str) -> torch.device:
    """The torch.device for `--device NAME`, resolved and checked by `promptkd_edge.utils.devices.resolve_device`."""
    from promptkd_edge.utils.devices import resolve_device

    return torch.device(resolve_device(name))


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA (fp16 where the GPU has no bf16) and fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in ("bf16", "fp16", "fp32"):
        raise PkdError(f"--precision must be auto, bf16, fp16 or fp32, not {name}")
    if name == "fp16" and device.type != "cuda":
        raise PkdError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def init_runtime(device_name: str = "auto") -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def broadcast_object(rt: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(rt: Runtime, obj: Any) -> list[Any]:
    if not rt.distributed:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
