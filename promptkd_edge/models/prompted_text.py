"""Deep text prompts (IVLP, as in PromptSRC / PromptKD's teacher) around a frozen open_clip text tower.

Class c reads "<prefix> <name c>." where the `n_ctx` prefix tokens (e.g. "a photo of a") are replaced by
learned vectors: at layer 0 after the token embedding, at layers 1..depth-1 by that layer's own vectors (the
positions 1..n_ctx, right after [SOS]). Deeper layers carry them along. Prompts initialised from the prefix's
word embeddings at depth 1 give exactly open_clip's `encode_text` of the plain sentence, and so does depth 0
(no prompts at all).

Memory: sequences are cut after the longest [EOS] (the causal mask makes this exact), and `encode` can run the
classes in chunks with activation checkpointing, so a ViT-L/14 teacher trains with 1000 classes on 24 GB.
"""

from __future__ import annotations

import torch
from open_clip.transformer import text_global_pool
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptkd_edge.errors import PkdError


def check_text_tower(model: nn.Module) -> None:
    if not all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
        raise PkdError(f"{type(model).__name__} has no built-in open_clip text transformer; text prompts need a "
                       "CLIP-style architecture (not a Hugging Face or timm text tower)")


class PromptedTextTower(nn.Module):
    """`prompts` [depth, n_ctx, width]: layer 0 is the context ("ctx"), deeper layers IVLP's VPT_shallow."""

    def __init__(self, model: nn.Module, tokenizer, n_ctx: int = 4, depth: int = 9, prefix: str | None = None,
                 init_std: float = 0.02):
        super().__init__()
        check_text_tower(model)
        layers = len(model.transformer.resblocks)
        if not 0 <= depth <= layers or n_ctx < 1:
            raise PkdError(f"text prompt depth must be 0..{layers} and tokens >= 1 (got depth {depth}, {n_ctx} tokens)")
        self.model, self.tokenizer, self.n_ctx, self.depth = model, tokenizer, n_ctx, depth
        width = model.transformer.width
        self.prefix = prefix if prefix else " ".join(["X"] * n_ctx)
        prompts = torch.empty(depth, n_ctx, width)
        nn.init.normal_(prompts, std=init_std)
        if prefix and depth:
            tokens = self._tokens([""])[0]
            n_prefix = int(tokens.argmax()) - 2  # [SOS] prefix tokens "" "." [EOS]: "." is one token
            if n_prefix != n_ctx:
                raise PkdError(f"the initial prompt {prefix!r} is {n_prefix} tokens, not --text-tokens {n_ctx}")
            with torch.no_grad():
                prompts[0] = model.token_embedding.weight[tokens[1:1 + n_ctx]].float()
        self.prompts = nn.Parameter(prompts)

    def sentences(self, names: list[str]) -> list[str]:
        return [f"{self.prefix} {name.replace('_', ' ')}." for name in names]

    def _tokens(self, names: list[str]) -> torch.Tensor:
        return self.tokenizer(self.sentences(names)).to(self.model.token_embedding.weight.device)

    def forward_tokens(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Text features [B, D] (not normalised) of tokenized "<prefix> <name>." sentences. `trim=False` keeps the
        whole context (same result under the causal mask; what a graph with a fixed context length needs)."""
        m, n = self.model, self.n_ctx
        length = tokens.shape[1]
        causal = m.attn_mask is not None and m.text_pool_type in ("argmax", "eos")
        if causal and trim:  # positions after the last [EOS] cannot influence it under the causal mask
            length = int(tokens.argmax(dim=-1).max()) + 1 if m.text_pool_type == "argmax" else length
            tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast)
        if self.depth:
            x = torch.cat([x[:, :1], self._prompt(0, x), x[:, 1 + n:]], dim=1)
        x = x + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        for i, block in enumerate(m.transformer.resblocks):
            if 0 < i < self.depth:
                x = torch.cat([x[:, :1], self._prompt(i, x), x[:, 1 + n:]], dim=1)
            x = block(x, attn_mask=mask)
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is None:
            return x
        return m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection

    def _prompt(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.prompts[layer].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def encode(self, names: list[str], chunk: int = 0, checkpointing: bool = False) -> torch.Tensor:
        """Features [len(names), D] (not normalised); `chunk` classes at a time, recomputed in backward when
        `checkpointing` (only one chunk's activations are alive)."""
        tokens = self._tokens(names)
        step = chunk if chunk > 0 else len(names)
        parts = []
        for i in range(0, len(names), step):
            part = tokens[i:i + step]
            if checkpointing and torch.is_grad_enabled():
                parts.append(checkpoint(self.forward_tokens, part, use_reentrant=False))
            else:
                parts.append(self.forward_tokens(part))
        return torch.cat(parts)
