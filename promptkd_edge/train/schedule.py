"""The optimizer and its learning rate: scaled with the global batch, a constant warm-up, then a cosine.

`epoch` (the default) is the official code's schedule (Dassl's ConstantWarmupScheduler around CosineAnnealingLR,
stepped once per epoch): epochs 0..W-1 at the warm-up lr, then epoch e >= W at lr * 0.5 * (1 + cos(pi * (e - W) /
epochs)), so the last epoch still runs at about 2.5 % of lr (20 epochs, W = 1). `step` is a per-step cosine that
reaches 0 at the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from promptkd_edge.train.config import DistillConfig, TeacherTuneConfig

REFERENCE_BATCH = 8
BASE_LR = {"sgd": 0.005, "adamw": 2.5e-4}


def scaled_lr(optimizer: str, global_batch: int) -> float:
    """The lr at the reference batch 8 (SGD: the paper's 0.005), scaled with the global batch size:
    linearly for SGD (as the PromptKD authors do for batch 128/256), by the square root for AdamW."""
    ratio = global_batch / REFERENCE_BATCH
    return BASE_LR[optimizer] * (ratio if optimizer == "sgd" else math.sqrt(ratio))


SCHEDULES = ("epoch", "step")


def epoch_cosine_factor(epoch: int, *, epochs: int, warmup_epochs: int, base_lr: float, warmup_lr: float) -> float:
    """The lr of `epoch` (0-based) as a fraction of `base_lr` under Dassl's warm-up + per-epoch cosine."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, base_lr: float,
                  warmup_lr: float, steps_per_epoch: int = 0, schedule: str = "epoch"
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_steps` at the constant `warmup_lr` (PromptKD: 1 epoch at 1e-5), then cosine: per epoch as the
    official code (`schedule="epoch"`, needs `steps_per_epoch`), or per step down to 0 (`"step"`). The scheduler is
    stepped after every optimizer step either way."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    decay_steps = max(1, total_steps - warmup_steps)
    if schedule == "epoch":
        per_epoch = max(1, steps_per_epoch)
        epochs, warmup_epochs = max(1, total_steps // per_epoch), warmup_steps // per_epoch

        def factor(step: int) -> float:
            return epoch_cosine_factor(step // per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
                                       base_lr=base_lr, warmup_lr=warmup_lr)
    else:
        def factor(step: int) -> float:
            if step < warmup_steps:
                return warmup_lr / base_lr
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / decay_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_and_schedule(params: list[torch.nn.Parameter], *, optimizer: str, lr: float, momentum: float,
                           weight_decay: float, total_steps: int, warmup_steps: int, warmup_lr: float,
                           steps_per_epoch: int, schedule: str = "epoch"
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (momentum, no Nesterov, as Dassl) or AdamW over `params`, with the warm-up + cosine schedule."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, warmup_cosine(opt, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=lr,
                              warmup_lr=warmup_lr, steps_per_epoch=steps_per_epoch, schedule=schedule)


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Step the schedule after an optimizer step. Under fp16 the GradScaler skips a step whose gradients overflowed;
    the schedule still advances (it counts steps taken, as the data does), so torch's warning about a scheduler
    stepped before its optimizer is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before",
                                category=UserWarning)
        scheduler.step()


@dataclass
class Optimization:
    """What steps the trained parameters: the optimizer, its lr schedule and the GradScaler (a no-op unless fp16)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    lr: float  # the base lr

    @classmethod
    def create(cls, params: list[torch.nn.Parameter], cfg: DistillConfig | TeacherTuneConfig, *,
               steps_per_epoch: int, global_batch: int,
               scaler: torch.amp.GradScaler) -> Optimization:
        """The optimizer and warm-up + cosine schedule a training config (DistillConfig, TeacherTuneConfig) asks
        for over `params`; its lr, else the optimizer's default scaled with the global batch."""
        lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.optimizer, global_batch)
        optimizer, scheduler = optimizer_and_schedule(
            params, optimizer=cfg.optimizer, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            total_steps=cfg.epochs * steps_per_epoch, warmup_steps=cfg.warmup_epochs * steps_per_epoch,
            warmup_lr=cfg.warmup_lr, steps_per_epoch=steps_per_epoch, schedule=cfg.schedule)
        return cls(optimizer, scheduler, scaler, lr)

    def step(self, loss: torch.Tensor) -> float:
        """Backward through `loss`, one optimizer step, then the schedule's; returns the lr the step used."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        advance(self.scheduler)
        return lr
