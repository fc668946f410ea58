"""Learning rate: scaled with the global batch, a constant warm-up, then cosine to zero (per step)."""

from __future__ import annotations

import math

import torch

REFERENCE_BATCH = 8
BASE_LR = {"sgd": 0.005, "adamw": 2.5e-4}


def scaled_lr(optimizer: str, global_batch: int) -> float:
    """The lr at the reference batch 8 (SGD: the paper's 0.005), scaled with the global batch size:
    linearly for SGD (as the PromptKD authors do for batch 128/256), by the square root for AdamW."""
    ratio = global_batch / REFERENCE_BATCH
    return BASE_LR[optimizer] * (ratio if optimizer == "sgd" else math.sqrt(ratio))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, base_lr: float,
                  warmup_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_steps` at the constant `warmup_lr` (PromptKD: 1 epoch at 1e-5), then cosine from `base_lr` to 0."""
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_lr / base_lr
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / decay_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_and_schedule(params: list[torch.nn.Parameter], *, optimizer: str, lr: float, momentum: float,
                           weight_decay: float, total_steps: int, warmup_steps: int, warmup_lr: float
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (momentum, no Nesterov, as Dassl) or AdamW over `params`, with the warm-up + cosine schedule."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, warmup_cosine(opt, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=lr,
                              warmup_lr=warmup_lr)
