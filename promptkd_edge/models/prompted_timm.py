"""Deep visual prompts (VPT-deep / IVLP, as in PromptKD) around open_clip `TimmModel` towers whose trunk is a timm ViT.

Covers timm's `VisionTransformer` (SigLIP/SigLIP2 with the MAP attention-pool head, MobileCLIP2-B's conv-stem ViT,
register tokens) and `Eva` (EVA02 and PE-Core: rotary position embeddings, class token, MAP pool).

Token layout, as in PromptedVisionTower: the prompts are appended after the prefix (class/register) and patch
tokens, after the absolute position embedding (they get none) and before `norm_pre`; at blocks 1..depth-1 the
previous block's prompt outputs are replaced by that block's prompts; deeper blocks carry them along. They are
stripped before the final norm and the pool, so 'token', 'avg' and MAP pooling see exactly the tokens the plain
trunk would. Rotary embeddings (Eva) are extended by identity rotations (sin 0, cos 1) for the prompt rows, so
prompts are not rotated, exactly as the trunk treats its prefix tokens.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptkd_edge.errors import PkdError

__all__ = ["PromptedTimmViT"]

SUPPORTED = ("open_clip TimmModel towers with a timm VisionTransformer (SigLIP/SigLIP2, MobileCLIP2-B) or Eva "
             "(EVA02, PE-Core) trunk")


def _trunk_classes() -> tuple[type, type]:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer, Eva


def _trunk(visual: nn.Module) -> nn.Module | None:
    """The timm ViT trunk of an open_clip TimmModel, else None."""
    from open_clip.timm_model import TimmModel

    trunk = getattr(visual, "trunk", None) if isinstance(visual, TimmModel) else None
    return trunk if isinstance(trunk, _trunk_classes()) else None


def _timm_name(trunk: nn.Module) -> str:
    cfg = getattr(trunk, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(trunk).__name__)


def _check_followable(trunk: nn.Module) -> None:
    """Raise a PkdError when the trunk's forward is not the one this class re-runs block by block."""
    name = _timm_name(trunk)
    base = next(c for c in _trunk_classes() if isinstance(trunk, c))
    for method in ("forward", "forward_features"):
        if getattr(type(trunk), method) is not getattr(base, method):
            raise PkdError(f"timm model '{name}' ({type(trunk).__name__}) overrides {base.__name__}.{method}, "
                           f"which visual prompts cannot follow; they support timm's own {base.__name__} forward")
    blocks = getattr(trunk, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise PkdError(f"timm model '{name}' has no transformer blocks to prompt; visual prompts need a "
                       f"{type(trunk).__name__} with at least one block")


def _identity_rope(rope: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """`rope` ([..., N, 2*D], sin then cos, as timm's apply_rot_embed_cat splits it) with `num_tokens` more rows
    of identity rotation (sin 0, cos 1): x*1 + rot(x)*0 == x, so those tokens are left unrotated."""
    shape = (*rope.shape[:-2], num_tokens, rope.shape[-1] // 2)
    ident = torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1)
    return torch.cat([rope, ident], dim=-2)


class PromptedTimmViT(nn.Module):
    """open_clip `TimmModel` (timm ViT/Eva trunk) with `num_tokens` learnable prompts in each of its first `depth`
    blocks. A `depth` above the number of blocks means all of them (`self.depth` is the depth used).

    With `num_tokens == 0` or `depth == 0` the forward pass is exactly open_clip's `visual(x)`.
    """

    family = "timm-vit"

    def __init__(self, visual: nn.Module, num_tokens: int = 4, depth: int = 9, init_std: float = 0.02):
        super().__init__()
        trunk = _trunk(visual)
        if trunk is None:
            inner = type(getattr(visual, "trunk", None)).__name__ if hasattr(visual, "trunk") else None
            what = f"{type(visual).__name__} with a {inner} trunk" if inner else type(visual).__name__
            raise PkdError(f"the image tower is {what}; timm-ViT visual prompts support {SUPPORTED}")
        _check_followable(trunk)
        if num_tokens < 0 or depth < 0:
            raise PkdError(f"prompt tokens ({num_tokens}) and depth ({depth}) must be >= 0")
        self.visual = visual.requires_grad_(False)
        self.num_tokens, self.depth = num_tokens, min(depth, len(trunk.blocks))
        self.is_eva = isinstance(trunk, _trunk_classes()[1])
        self.prompts = nn.Parameter(torch.empty(self.depth, num_tokens, trunk.embed_dim))
        nn.init.normal_(self.prompts, std=init_std)
        self.train(self.training)

    @classmethod
    def supports(cls, visual: nn.Module) -> bool:
        return _trunk(visual) is not None

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    @property
    def enabled(self) -> bool:
        return self.num_tokens > 0 and self.depth > 0

    @property
    def adaptation(self) -> str:
        return f"deep visual prompts, {self.num_tokens} tokens x {self.depth} of {len(self.trunk.blocks)} blocks"

    @property
    def output_dim(self) -> int:
        """Width of forward(): open_clip's projection, else the trunk's classifier, else its features."""
        for module in reversed(list(self.visual.head.modules())):
            if isinstance(module, nn.Linear):
                return int(module.out_features)
        head = self.trunk.get_classifier()
        return int(head.out_features) if isinstance(head, nn.Linear) else int(self.trunk.num_features)

    def train(self, mode: bool = True) -> PromptedTimmViT:
        """The frozen tower stays in eval mode (no dropout, drop path or patch dropout) whatever `mode` is."""
        super().train(mode)
        self.visual.eval()
        return self

    def _prompt(self, block: int, x: torch.Tensor) -> torch.Tensor:
        return self.prompts[block].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch + position embedding as the trunk does it, prompts appended before `norm_pre`; the rope (Eva)."""
        t = self.trunk
        x = t.patch_embed(x)
        if self.is_eva:
            x, rope = t._pos_embed(x)  # Eva applies its patch dropout inside _pos_embed
        else:
            x, rope = t.patch_drop(t._pos_embed(x)), None
        if self.enabled:
            x = torch.cat([x, self._prompt(0, x)], dim=1)
            if rope is not None:
                rope = _identity_rope(rope, self.num_tokens)
        return t.norm_pre(x), rope

    def _block(self, i: int, block: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.is_eva:
            kwargs["rope"] = rope[i] if rope is not None and getattr(self.trunk, "rope_mixed", False) else rope
        if self.trunk.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x, rope = self._embed(x)
        for i, block in enumerate(t.blocks):
            if self.enabled and 0 < i < self.depth:
                x = torch.cat([x[:, : -self.num_tokens], self._prompt(i, x)], dim=1)
            x = self._block(i, block, x, rope)
        if self.enabled:
            x = x[:, : -self.num_tokens]
        return self.visual.head(t.forward_head(t.norm(x)))

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {"prompts": self.prompts.detach().cpu().contiguous()}

    def load_trained_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        expected = self.trained_state()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            what = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
            raise PkdError(f"{source}: {what} in the timm ViT prompts (expected keys: {', '.join(expected)})")
        for key, value in expected.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise PkdError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, this student needs "
                               f"{tuple(value.shape)} (prompt depth x tokens x width)")
        with torch.no_grad():
            self.prompts.copy_(state["prompts"].to(self.prompts))

    def for_export(self) -> nn.Module:
        """A frozen float32 cpu eval-mode copy: prompts are extra tokens, nothing to fold."""
        return copy.deepcopy(self).float().cpu().requires_grad_(False).eval()
