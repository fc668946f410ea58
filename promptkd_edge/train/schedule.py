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
