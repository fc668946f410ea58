"""SSF adaptation (Lian et al., NeurIPS 2022, arXiv 2210.08823) for hybrid and convolutional open_clip towers.

A learnable per-channel scale `s` and shift `t` follow every linear operation of the frozen tower whose output is
an affine function of its weights: Conv2d / Linear (y -> s*y, + t where the layer has a bias) and affine norms
(BatchNorm2d, LayerNorm, LayerNorm2d, GroupNorm: y -> s*y + t). At export each pair is merged into the layer it
follows (W' = s*W, b' = s*b + t; for a norm gamma' = s*gamma, beta' = s*beta + t), so the graph is the plain tower's.
MobileOne / FastViT multi-branch blocks (RepVGG arXiv 2101.03697, MobileOne arXiv 2206.04040, FastViT arXiv
2303.14189) are then re-parameterised with timm's `reparameterize_model`, which reads the merged branch weights.
Why SSF and not BitFit, LoRA or prompts: docs/student-families.md.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn

from promptkd_edge.errors import PkdError

MODES = ("ssf", "bitfit")  # bitfit: shifts only (= tuning the biases), the measured alternative


def _trunk(visual: nn.Module) -> nn.Module:
    """The timm model inside an open_clip TimmModel, else the tower itself."""
    return getattr(visual, "trunk", visual)


def _is_fastvit(visual: nn.Module) -> bool:
    from open_clip.timm_model import TimmModel
    from timm.models.fastvit import FastVit

    return isinstance(visual, TimmModel) and isinstance(visual.trunk, FastVit)


def _is_cnn(visual: nn.Module) -> bool:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from timm.models import byobnet, convnext, efficientnet, mobilenetv3, regnet, resnet

    cnns = (convnext.ConvNeXt, resnet.ResNet, efficientnet.EfficientNet, mobilenetv3.MobileNetV3, regnet.RegNet,
            byobnet.ByobNet)
    return isinstance(visual, ModifiedResNet) or (isinstance(visual, TimmModel) and isinstance(visual.trunk, cnns))


def _channel_dim(module: nn.Module) -> int | None:
    """Where a per-channel affine map after `module` folds into its own parameters: the channel axis of its
    output (1 for NCHW, -1 for channels-last), or None when it does not fold."""
    from timm.layers import BatchNormAct2d, LayerNorm2d

    if isinstance(module, nn.Conv2d):
        return 1
    if isinstance(module, nn.Linear):
        return -1
    if type(module) in (nn.BatchNorm2d, LayerNorm2d, nn.GroupNorm) or (
            isinstance(module, BatchNormAct2d) and isinstance(module.act, nn.Identity)
            and isinstance(module.drop, nn.Identity)):
        return 1 if getattr(module, "weight", None) is not None else None
    if isinstance(module, nn.LayerNorm) and not isinstance(module, LayerNorm2d):  # nn / timm / open_clip LayerNorm
        return -1 if module.weight is not None else None
    return None


def _out_channels(module: nn.Module) -> int:
    return int(module.weight.shape[0])


def _key(path: str) -> str:
    return path.replace(".", "/")


def _image_size(visual: nn.Module) -> tuple[int, int]:
    size = getattr(visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class AdaptedConvTower(nn.Module):
    """A frozen open_clip CNN tower (timm ConvNeXt / ResNet / EfficientNet / MobileNetV3 / RegNet / ByobNet, or
    open_clip's ModifiedResNet) with SSF scale-and-shift on its layers, merged into the weights by `for_export`."""

    family = "conv"
    method = "SSF per-channel scale and shift (arXiv 2210.08823), merged into the weights at export"  # pkd models

    @classmethod
    def supports(cls, visual: nn.Module) -> bool:
        return _is_cnn(visual)

    def __init__(self, visual: nn.Module, mode: str = "ssf"):
        super().__init__()
        if not self.supports(visual):
            raise PkdError(f"{type(self).__name__} cannot adapt a {type(_trunk(visual)).__name__} image tower; "
                           f"it supports {self.supported()}")
        if mode not in MODES:
            raise PkdError(f"adaptation mode '{mode}' is unknown; use one of {', '.join(MODES)}")
        self.visual = visual.requires_grad_(False).eval()
        self.mode = mode
        self.ssf_scale, self.ssf_shift = nn.ParameterDict(), nn.ParameterDict()
        self._paths: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._output_dim = self._place()

    @staticmethod
    def supported() -> str:
        return ("open_clip timm towers with a FastViT/MobileCLIP2-S trunk (hybrid) or a ConvNeXt, ResNet, "
                "EfficientNet, MobileNetV3, RegNet or ByobNet trunk, and open_clip's ModifiedResNet (conv)")

    def _place(self) -> int:
        """Hook every foldable layer, keep those one probe forward actually calls (a layer whose weights the tower
        reads without calling it, like AttentionPool2d's q/k/v, would not fold), create their parameters and return
        the output width."""
        candidates = {name: m for name, m in self.visual.named_modules() if _channel_dim(m) is not None}
        called: set[str] = set()
        handles = [m.register_forward_hook(lambda *_, n=name: called.add(n)) for name, m in candidates.items()]
        try:
            p = next(self.visual.parameters())
            with torch.no_grad():
                out = self.visual(torch.zeros(1, 3, *_image_size(self.visual), device=p.device, dtype=p.dtype))
        finally:
            for h in handles:
                h.remove()
        for name, m in candidates.items():
            if name not in called:
                continue
            ones = torch.ones(_out_channels(m), device=m.weight.device, dtype=m.weight.dtype)
            if self.mode == "ssf":
                self.ssf_scale[_key(name)] = nn.Parameter(ones.clone())
            if getattr(m, "bias", None) is not None:
                self.ssf_shift[_key(name)] = nn.Parameter(torch.zeros_like(ones))
            if _key(name) in self.ssf_scale or _key(name) in self.ssf_shift:
                self._paths.append(name)
        self._hook()
        return int(out.shape[-1])

    def _hook(self) -> None:
        self._handles = [self.visual.get_submodule(p).register_forward_hook(partial(self._scale_and_shift, p))
                         for p in self._paths]

    def _scale_and_shift(self, path: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """y -> scale * y + shift along the layer's channel axis (exactly y while scale is 1 and shift 0)."""
        dim, key = _channel_dim(module), _key(path)
        shape = [1] * output.ndim
        shape[dim] = -1
        if key in self.ssf_scale:
            output = output * self.ssf_scale[key].to(output.dtype).view(shape)
        if key in self.ssf_shift:
            output = output + self.ssf_shift[key].to(output.dtype).view(shape)
        return output

    @contextlib.contextmanager
    def _unhooked(self) -> Iterator[None]:
        for h in self._handles:
            h.remove()
        try:
            yield
        finally:
            self._hook()

    @property
    def adaptation(self) -> str:
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        what = "SSF scale and shift" if self.mode == "ssf" else "BitFit shift"
        return f"{what} on {len(self._paths)} layers ({n} parameters), merged into the weights at export"

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def train(self, mode: bool = True) -> AdaptedConvTower:
        """The frozen tower stays in eval mode (BatchNorm statistics frozen, no drop path) whatever `mode` is."""
        super().train(mode)
        self.visual.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def load_trained_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = dict(self.named_parameters())
        own = {k: v for k, v in own.items() if v.requires_grad}
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise PkdError(f"{source} do not fit this {self.family} tower's adaptation: missing {missing[:3]}, "
                           f"unexpected {extra[:3]}")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise PkdError(f"{source} do not fit this {self.family} tower's adaptation: {k} is "
                               f"{list(v.shape)}, the tower has {list(own[k].shape)}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    def for_export(self) -> nn.Module:
        """A float32 cpu eval copy of the tower with scale and shift merged into its weights, then re-parameterised
        (multi-branch blocks folded into single convolutions). `self` is left as it was."""
        from timm.utils.model import reparameterize_model

        with self._unhooked():
            tower = copy.deepcopy(self.visual).float().cpu()
        with torch.no_grad():
            for path in self._paths:
                key = _key(path)
                scale, shift = self.ssf_scale.get(key), self.ssf_shift.get(key)
                merge_affine(tower.get_submodule(path),
                             None if scale is None else scale.detach().float().cpu(),
                             None if shift is None else shift.detach().float().cpu())
        return reparameterize_model(tower, inplace=True).requires_grad_(False).eval()


class AdaptedHybridTower(AdaptedConvTower):
    """A frozen open_clip TimmModel with a FastViT / MobileCLIP2-S (MCi) trunk: RepMixer stages and attention
    stages, SSF on every convolution, linear layer and norm, re-parameterised at export."""

    family = "hybrid"

    @classmethod
    def supports(cls, visual: nn.Module) -> bool:
        return _is_fastvit(visual)


def merge_affine(module: nn.Module, scale: torch.Tensor | None, shift: torch.Tensor | None) -> None:
    """Fold `y -> scale * y + shift` (per output channel) into `module`'s weight and bias, in place."""
    if scale is not None:
        module.weight.mul_(scale.view(-1, *[1] * (module.weight.ndim - 1)))
        if module.bias is not None:
            module.bias.mul_(scale)
    if shift is not None:
        module.bias.add_(shift)


def adapted_tower_class(visual: nn.Module) -> type[AdaptedConvTower]:
    """The class that adapts `visual` (hybrid or conv), or a one-line PkdError naming the tower."""
    for cls in (AdaptedHybridTower, AdaptedConvTower):
        if cls.supports(visual):
            return cls
    raise PkdError(f"no adaptation covers a {type(_trunk(visual)).__name__} image tower; supported: "
                   f"{AdaptedConvTower.supported()}")
