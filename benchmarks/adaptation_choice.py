"""SSF against BitFit (and a linear head alone) on tiny hybrid and ConvNeXt towers: a distillation-like regression.

A frozen tower + adaptation + linear head is fitted to a teacher's target: a fixed random projection of the
standardised features of a teacher tower, the student's tower with every weight perturbed element-wise by 50 %, on
smooth random images. The figure is the mean
squared error of the L2-normalised outputs on held-out images (lower is better), as in docs/student-families.md.

    python benchmarks/adaptation_choice.py                 # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_report  # noqa: E402

VARIANTS = ("head only", "bitfit", "ssf")


def images(n: int, seed: int, size: int = 64):
    """Smooth random images: 8x8 noise upsampled, plus a little pixel noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 8, 8, generator=g)
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False) + 0.1 * torch.randn(
        n, 3, size, size, generator=g)


def tower(arch: str, perturb: float = 0.0):
    """Random weights (seed 0) with trained-looking layer scales (0.3, not timm's 1e-5 init, which leaves every block
    almost unused) and BatchNorm statistics calibrated on the images (random ones let the features collapse with
    depth). With `perturb`, every weight matrix / kernel is multiplied element-wise by 1 + perturb * N(0, 1): the
    teacher, related to the student but not reachable by any per-channel adaptation."""
    import open_clip
    import torch

    torch.manual_seed(0)
    visual = open_clip.create_model(arch).visual
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in visual.named_parameters():
            if name.endswith("gamma"):
                t.fill_(0.3)
            elif perturb and t.ndim >= 2:
                t.mul_(1 + perturb * torch.randn(t.shape, generator=g))
        for m in visual.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batches
        visual.train()
        for i in range(4):
            visual(images(64, 100 + i))
    return visual.eval()


def fit(arch: str, variant: str, steps: int, lr: float, train: int, dim: int = 32) -> dict:
    import torch
    import torch.nn.functional as F

    from promptkd_edge.models.adapted_conv import adapted_tower_class

    train_x, test_x = images(train, 0), images(256, 1)
    teacher = tower(arch, perturb=0.5).requires_grad_(False)
    with torch.no_grad():
        feats = teacher(torch.cat([train_x, test_x]))
        proj = torch.randn(feats.shape[-1], dim, generator=torch.Generator().manual_seed(2))
        target = F.normalize((feats - feats.mean(0)) / (feats.std(0) + 1e-6) @ proj, dim=-1)
    train_t, test_t = target[:train], target[train:]
    visual = tower(arch)
    if variant == "head only":
        student, base = visual.requires_grad_(False), []
        out_dim = int(visual(train_x[:1]).shape[-1])
    else:
        student = adapted_tower_class(visual)(visual, mode=variant)
        base, out_dim = [p for p in student.parameters() if p.requires_grad], student.output_dim
    head = torch.nn.Linear(out_dim, dim)
    opt = torch.optim.Adam([*base, *head.parameters()], lr=lr)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        idx = torch.randint(0, train, (32,), generator=g)
        loss = (F.normalize(head(student(train_x[idx])), dim=-1) - train_t[idx]).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        def mse(x, t):
            return float((F.normalize(head(student(x)), dim=-1) - t).square().sum(-1).mean())

        return {"arch": arch, "variant": variant, "trained_parameters": sum(p.numel() for p in base),
                "train_mse": round(mse(train_x, train_t), 4), "heldout_mse": round(mse(test_x, test_t), 4)}


def markdown(report: dict) -> str:
    lines = ["| tower | adaptation | trained parameters (+ head) | train MSE | held-out MSE |", "|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['variant']} | {r['trained_parameters']} | {r['train_mse']} | {r['heldout_mse']} |"
              for r in report["rows"]]
    return "\n".join(lines) + f"\n\n`{report['command']}` ({report['machine']['cpu']}, {report['date']})\n"


def main() -> None:
    import torch

    from promptkd_edge.models.tiny_towers import register_tiny_conv_configs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="pkd-tiny-hybrid,pkd-tiny-convnext")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    register_tiny_conv_configs()
    rows = [fit(arch, v, args.steps, args.lr, args.train_images) for arch in args.archs.split(",") for v in VARIANTS]
    report = {"rows": rows, "steps": args.steps, "lr": args.lr, "train_images": args.train_images}
    write_report(report, args.out, "adaptation_choice", markdown)


if __name__ == "__main__":
    main()
