"""The distillation loss: forward KL(p_teacher || p_student) at temperature T, scaled by T^2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KD_NORMS = ("paper", "batchmean")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            norm: str = "paper") -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, summed over the batch and classes, then divided by

    - `norm="paper"`: B*C, as PromptKD's code does (`kl_div(..., reduction='sum') * T*T / logits.numel()`),
      used there with a loss weight of 1000 (200 for Aircraft, Flowers, DTD);
    - `norm="batchmean"`: B, the per-sample mean KL. Weight w here equals weight w*C under "paper".
    """
    if norm not in KD_NORMS:
        raise ValueError(f"norm must be one of {KD_NORMS}, not {norm!r}")
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    denom = student_logits.numel() if norm == "paper" else student_logits.shape[0]
    return kl * (t * t) / denom
