"""Deep visual prompts (VPT-deep / IVLP, as in PromptKD) around a frozen open_clip VisionTransformer.

Token layout, as in the official PromptKD code: at layer 0 the prompts are appended after [CLS] + patch tokens,
after the positional embedding (prompts get none) and before `ln_pre`; at layers 1..depth-1 the previous
layer's prompt outputs are replaced by that layer's prompts; deeper layers carry them along. They are stripped
before pooling, so 'tok' and 'avg' pooling see exactly the tokens open_clip's tower would.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptkd_edge.errors import PkdError


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """A PkdError (one line) unless `state` has exactly the keys and shapes of `own`."""
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise PkdError(f"{source} do not fit this student: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise PkdError(f"{source} do not fit this student: {k} is {list(v.shape)}, the student has "
                           f"{list(own[k].shape)}")


def check_vit(visual: nn.Module, what: str = "model") -> None:
    """Raise a PkdError unless `visual` is an open_clip VisionTransformer we can prompt."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise PkdError(f"the {what} image tower is {type(visual).__name__}; visual prompts need an open_clip "
                       "VisionTransformer (a ViT-* architecture)")


class PromptedVisionTower(nn.Module):
    """open_clip `VisionTransformer` with `num_tokens` learnable prompts in each of its first `depth` layers.

    With `num_tokens == 0` or `depth == 0` the forward pass is exactly open_clip's `visual(x)`. A depth beyond the
    tower's layers is refused, or with `clamp_depth` means all of them (`self.depth` is the depth used). The adapted
    tower interface of models/towers.py: `trained_state` is {"prompts"}, `for_export` is the module itself (prompts
    become constants of the graph).
    """

    family = "openclip-vit"

    def __init__(self, visual: nn.Module, num_tokens: int = 4, depth: int = 9, init_std: float = 0.02,
                 clamp_depth: bool = False):
        super().__init__()
        check_vit(visual)
        layers = len(visual.transformer.resblocks)
        if num_tokens < 0 or depth < 0:
            raise PkdError(f"prompt tokens ({num_tokens}) and depth ({depth}) must be >= 0")
        if depth > layers and not clamp_depth:
            raise PkdError(f"prompt depth {depth} exceeds the {layers} transformer layers of this image tower; "
                           f"use a depth <= {layers}")
        depth = min(depth, layers)
        self.visual = visual.requires_grad_(False)
        self.num_tokens, self.depth = num_tokens, depth
        width = visual.transformer.width
        self.prompts = nn.Parameter(torch.empty(depth, num_tokens, width))
        nn.init.normal_(self.prompts, std=init_std)

    @classmethod
    def supports(cls, visual: nn.Module) -> bool:
        from open_clip.transformer import VisionTransformer

        return isinstance(visual, VisionTransformer)

    @property
    def adaptation(self) -> str:
        return f"deep visual prompts, {self.num_tokens} tokens x {self.depth} of {self.blocks} blocks"

    @property
    def blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {"prompts": self.prompts.detach().cpu().contiguous()}

    def load_trained_state(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        check_state(self.trained_state(), state, source)
        with torch.no_grad():
            self.prompts.copy_(state["prompts"])

    def for_export(self) -> nn.Module:
        return copy.deepcopy(self).float().cpu().eval().requires_grad_(False)

    @property
    def enabled(self) -> bool:
        return self.num_tokens > 0 and self.depth > 0

    @property
    def output_dim(self) -> int:
        return int(self.visual.output_dim)

    def train(self, mode: bool = True) -> PromptedVisionTower:
        """The frozen tower stays in eval mode (no dropout, no patch dropout) whatever `mode` is."""
        super().train(mode)
        self.visual.eval()
        return self

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if self.enabled:
            x = torch.cat([x, self._prompt(0, x)], dim=1)
        return v.ln_pre(x)

    def _prompt(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.prompts[layer].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        tr = v.transformer
        x = self._embed(x)
        if not tr.batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(tr.resblocks):
            if self.enabled and 0 < i < self.depth:
                prompt = self._prompt(i, x.transpose(0, 1) if not tr.batch_first else x)
                if tr.batch_first:
                    x = torch.cat([x[:, : -self.num_tokens], prompt], dim=1)
                else:
                    x = torch.cat([x[: -self.num_tokens], prompt.transpose(0, 1)], dim=0)
            if tr.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, None, None, None, use_reentrant=False)
            else:
                x = block(x, attn_mask=None)
        if not tr.batch_first:
            x = x.transpose(0, 1)
        if self.enabled:
            x = x[:, : -self.num_tokens]
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled
