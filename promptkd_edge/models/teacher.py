"""The CLIP teacher: normalised image features for distillation and text features for the class vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptkd_edge.models.openclip import LoadedCLIP

DEFAULT_TEMPLATE = "a photo of a {}."


def class_prompt(template: str, name: str) -> str:
    """The text the teacher reads for a class: folder-style names ('golden_retriever') read as words."""
    return template.format(name.replace("_", " "))


class Teacher(nn.Module):
    """A frozen open_clip model used zero-shot: `encode_image` and `encode_text` return unit vectors."""

    def __init__(self, clip: LoadedCLIP):
        super().__init__()
        self.clip = clip
        self.model = clip.model.eval().requires_grad_(False)

    @property
    def spec(self) -> str:
        return str(self.clip.spec)

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        tokenizer = self.clip.tokenizer()
        device = next(self.model.parameters()).device
        out = [self.model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float()
               for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1)
