"""PromptSRC's self-regularisation for teacher tuning: consistency with the frozen model and Gaussian prompt
aggregation (GPA). Weights and formulas as in PromptSRC's trainer (text 25, image 10, GPA N(15, 1))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def consistency_losses(image: torch.Tensor, zs_image: torch.Tensor, text: torch.Tensor, zs_text: torch.Tensor,
                       logits: torch.Tensor, zs_logits: torch.Tensor, text_weight: float = 25.0,
                       image_weight: float = 10.0) -> dict[str, torch.Tensor]:
    """L1 of prompted vs frozen normalised features (text, image), and KL(frozen || prompted) of the logits,
    summed and divided by the number of logits."""
    kl = F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(zs_logits.float(), dim=1), reduction="sum",
                  log_target=True) / logits.numel()
    return {"scl_text": F.l1_loss(text, zs_text) * text_weight,
            "scl_image": F.l1_loss(image, zs_image) * image_weight,
            "scl_logits": kl}


def gpa_weights(epochs: int, mean: float = 15.0, std: float = 1.0) -> list[float]:
    """Gaussian weights of epochs 1..N (density of N(mean, std) at each epoch), normalised to sum to 1."""
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    if sum(density) == 0.0:  # every epoch far in the tail: use log-densities to find the nearest
        logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)]
        top = max(logs)
        density = [math.exp(v - top) for v in logs]
    total = sum(density)
    return [d / total for d in density]


class PromptAverage:
    """Running sum of w_e * prompts at the end of each epoch e (GPA); `value()` is the aggregate."""

    def __init__(self, weights: list[float]):
        self.weights = weights
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, epoch: int, prompts: dict[str, torch.Tensor]) -> None:
        w = self.weights[epoch]
        for name, value in prompts.items():
            term = value.detach().float() * w
            self.sums[name] = self.sums[name] + term if name in self.sums else term.clone()

    def value(self) -> dict[str, torch.Tensor]:
        return dict(self.sums)
