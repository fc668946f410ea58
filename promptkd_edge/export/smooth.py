"""INT8 that survives CLIP's activation outliers: SmoothQuant's scale migration (Xiao et al., ICML 2023).

Real CLIP ViTs carry a few residual-stream channels with activations tens of times larger than the rest ("massive
activations", Sun et al. 2024). After a LayerNorm they stay large, so one per-tensor INT8 scale for the LayerNorm's
output spends its range on three channels and rounds the other 765 to a few levels. SmoothQuant divides each input
channel j of such a matrix product by s_j and multiplies the weight's row j by s_j, which leaves the function
unchanged: x W = (x / s)(s W). The division folds into the LayerNorm's affine weight and bias, so the graph keeps
the same operators and INT8 stays as fast. s_j = max|x_j|^a / max|W_j|^(1 - a) (a = 0.5) moves part of the
outlier into the per-channel-quantized weights, which take it well.

Smoothed here: each block's ln_1 -> attention's in-projection (q, k, v), ln_2 -> the MLP's first Linear, and
ln_post -> the tower's output projection (timm ViT / EVA blocks: norm1 and norm2 alike). Everything is done on
the folded PyTorch student before the ONNX export, with activation maxima from the calibration images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

ALPHA = 0.5


Pairs = list[tuple[str, nn.Module, list[tuple[torch.Tensor, int]]]]


def smoothing_pairs(tower: nn.Module) -> Pairs:
    """(name, LayerNorm, [(weight, axis of its input channels)]) for every LayerNorm whose output feeds only
    matrix products of the adapted tower: open_clip's ViT blocks and output projection, timm ViT / EVA blocks
    (norm1 -> q, k, v; norm2 -> the MLP's first Linear(s)); none for other families (convolutional towers have no
    such LayerNorm -> Linear pairs: their INT8 is plain)."""
    visual = getattr(tower, "visual", tower)  # a folded SSF tower is the plain open_clip tower itself
    if hasattr(visual, "transformer"):
        pairs = _openclip_pairs(visual)
    elif hasattr(getattr(visual, "trunk", None), "blocks"):
        pairs = _timm_pairs(visual.trunk)
    else:
        pairs = []
    return [p for p in pairs if getattr(p[1], "weight", None) is not None and getattr(p[1], "bias", None) is not None]


def _openclip_pairs(visual: nn.Module) -> Pairs:
    pairs: Pairs = []
    for i, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        if getattr(attn, "in_proj_weight", None) is not None:
            pairs.append((f"resblocks.{i}.ln_1", block.ln_1, [(attn.in_proj_weight, 1)]))
        else:  # separate q, k, v projections
            pairs.append((f"resblocks.{i}.ln_1", block.ln_1,
                          [(attn.q_proj_weight, 1), (attn.k_proj_weight, 1), (attn.v_proj_weight, 1)]))
        fc = block.mlp.c_fc if hasattr(block.mlp, "c_fc") else block.mlp[0]
        pairs.append((f"resblocks.{i}.ln_2", block.ln_2, [(fc.weight, 1)]))
    if getattr(visual, "proj", None) is not None and isinstance(visual.proj, torch.Tensor):
        pairs.append(("ln_post", visual.ln_post, [(visual.proj, 0)]))  # x @ proj: rows are input channels
    return pairs


def _linears(module: nn.Module, names: tuple[str, ...]) -> list[tuple[torch.Tensor, int]]:
    """The weights ([out, in]: input channels on axis 1) of the Linear children `names` that `module` has."""
    found = [getattr(module, n, None) for n in names]
    return [(m.weight, 1) for m in found if isinstance(m, nn.Linear)]


def _timm_pairs(trunk: nn.Module) -> Pairs:
    pairs: Pairs = []
    for i, block in enumerate(trunk.blocks):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        qkv = _linears(attn, ("qkv",)) or _linears(attn, ("q_proj", "k_proj", "v_proj")) if attn is not None else []
        fc = _linears(mlp, ("fc1",)) or _linears(mlp, ("fc1_g", "fc1_x")) if mlp is not None else []
        if qkv and hasattr(block, "norm1"):
            pairs.append((f"blocks.{i}.norm1", block.norm1, qkv))
        if fc and hasattr(block, "norm2"):
            pairs.append((f"blocks.{i}.norm2", block.norm2, fc))
    return pairs


@torch.no_grad()
def activation_maxima(model: nn.Module, layernorms: Iterable[tuple[str, nn.Module]], batches: Iterable[Any]
                      ) -> dict[str, torch.Tensor]:
    """max |output| per channel of each LayerNorm over every token of every calibration batch."""
    maxima: dict[str, torch.Tensor] = {}
    handles = []
    for name, ln in layernorms:
        def hook(_module, _inputs, output, name=name):
            m = output.detach().abs().float().reshape(-1, output.shape[-1]).amax(0)
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m
        handles.append(ln.register_forward_hook(hook))
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return maxima


@torch.no_grad()
def smooth(folded: nn.Module, calibration: np.ndarray, alpha: float = ALPHA, batch: int = 8) -> dict[str, Any]:
    """Migrate activation outliers of `folded.tower` into the following weights, in place; returns what was done
    (`outlier_ratio` = the largest channel maximum over the median channel maximum, before and after)."""
    pairs = smoothing_pairs(folded.tower)
    batches = (torch.from_numpy(calibration[i:i + batch]) for i in range(0, len(calibration), batch))
    maxima = activation_maxima(folded, [(n, ln) for n, ln, _ in pairs], batches)
    before, after = [], []
    for name, ln, weights in pairs:
        act = maxima[name].clamp(min=1e-5)
        w = torch.stack([weight.detach().abs().amax(dim=1 - axis) for weight, axis in weights]).amax(0).clamp(min=1e-5)
        s = (act.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)
        s = s / s.median()  # keep the LayerNorm's overall scale where it was; only the ratios matter
        ln.weight.div_(s.to(ln.weight.dtype))
        ln.bias.div_(s.to(ln.bias.dtype))
        for weight, axis in weights:
            weight.mul_(s.to(weight.dtype).view(-1, 1) if axis == 0 else s.to(weight.dtype).view(1, -1))
        before.append(float(act.max() / act.median()))
        after.append(float((act / s).max() / (act / s).median()))
    return {"method": "smoothquant", "alpha": alpha, "layernorms": len(pairs),
            "outlier_ratio_before": round(max(before), 2) if before else None,
            "outlier_ratio_after": round(max(after), 2) if after else None}
