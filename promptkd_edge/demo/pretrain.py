"""Brief contrastive pre-training of a tiny open_clip model on captioned 'web' images (the demo's stand-in
for CLIP's pre-training, since no pretrained tiny CLIP exists). Stage II never uses this: it is stage 0."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from promptkd_edge.data.demo_domain import Sample
from promptkd_edge.models.openclip import LoadedCLIP


def _captions(samples: list[Sample], rng: np.random.Generator) -> tuple[list[str], list[str | None]]:
    """Half the captions name the colour too, so the text tower learns 'a photo of a {shape}.' and more."""
    colored = rng.random(len(samples)) < 0.5
    texts = [s.caption if c else f"a photo of a {s.name}." for s, c in zip(samples, colored, strict=True)]
    return texts, [s.color if c else None for s, c in zip(samples, colored, strict=True)]


def _matches(labels: torch.Tensor, colors: list[str], caption_colors: list[str | None]) -> torch.Tensor:
    """[i, j] = 1 where caption j truly describes image i (same shape, and same colour if it names one)."""
    same_shape = labels[:, None] == labels[None, :]
    color_ok = torch.tensor([[cc is None or cc == c for cc in caption_colors] for c in colors])
    return (same_shape & color_ok).float()


def _image_batch(images: torch.Tensor, size: tuple[int, int], mean, std, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float, a light random crop (scale 0.5-1), resized to the model's size, normalised."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    b, _, h, w = x.shape
    scale = torch.empty(b).uniform_(0.5, 1.0, generator=gen).sqrt()
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (1 - scale[:, None])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    flip = torch.rand(b, generator=gen) < 0.5
    theta[flip, 0, 0] *= -1
    grid = F.affine_grid(theta, [b, 3, *size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def pretrain_clip(clip: LoadedCLIP, samples: list[Sample], *, epochs: int, batch_size: int = 128,
                  lr: float = 2e-3, seed: int = 0, on_step: Callable[[int, int, float], None] | None = None
                  ) -> list[float]:
    """Train all of `clip.model` with a CLIP loss whose targets treat identical captions as positives."""
    model = clip.model.train().requires_grad_(True)
    tokenizer = clip.tokenizer()
    images = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples]))
    labels = torch.tensor([s.label for s in samples])
    rng = np.random.default_rng([seed, 7])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = len(samples) // batch_size
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    losses, step = [], 0
    for _ in range(epochs):
        order = torch.randperm(len(samples), generator=gen)
        captions, caption_colors = _captions(samples, rng)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size].tolist()
            tokens = tokenizer([captions[i] for i in idx])
            x = _image_batch(images[idx], clip.preprocess.size, clip.preprocess.mean, clip.preprocess.std, gen)
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
            match = _matches(labels[idx], [samples[i].color for i in idx], [caption_colors[i] for i in idx])
            loss = 0.5 * (-(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                          - (match.t() / match.t().sum(1, keepdim=True) * logits.t().log_softmax(1)).sum(1).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if on_step:
                on_step(step, total, losses[-1])
    model.eval().requires_grad_(False)
    return losses
