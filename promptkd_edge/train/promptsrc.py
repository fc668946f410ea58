"""PromptSRC's self-regularisation for teacher tuning: consistency with the frozen model and Gaussian prompt
aggregation (GPA). Weights and formulas as in PromptSRC's trainer (text 25, image 10, GPA N(15, 1))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The text targets of PromptSRC's self-consistency: the 60 ImageNet templates of its trainers/imagenet_templates.py
# (IMAGENET_TEMPLATES, a subset of OpenAI's 80 that open_clip ships as OPENAI_IMAGENET_TEMPLATES).
PROMPTSRC_TEMPLATES = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
]
TEXT_TARGETS = ("promptsrc", "openclip")  # the 60 above, or open_clip's 80


def text_target_templates(kind: str = "promptsrc") -> list[str]:
    """The template ensemble of the frozen model's text targets: PromptSRC's 60 or open_clip's 80."""
    if kind == "promptsrc":
        return list(PROMPTSRC_TEMPLATES)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


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
