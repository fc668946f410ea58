"""Deep text prompts (IVLP, as in PromptSRC / PromptKD's teacher) around a frozen open_clip text tower.

Class c reads "<prefix> <name c>." where the `n_ctx` prefix tokens (e.g. "a photo of a") are replaced by
learned vectors: at layer 0 after the token embedding, at layers 1..depth-1 by that layer's own vectors (the
positions of the prefix: 1..n_ctx right after CLIP's [SOS], 0..n_ctx-1 for a tokenizer without a start token, as
SigLIP's). Deeper layers carry them along. Prompts initialised from the prefix's
word embeddings at depth 1 give exactly open_clip's `encode_text` of the plain sentence, and so does depth 0
(no prompts at all).

Text towers: CLIP's own (in the CLIP model) and open_clip's `TextTransformer` (CustomTextCLIP's `model.text`: SigLIP,
SigLIP2, with no causal mask and last-token pooling, or CLIP-style); Hugging Face text towers and CoCa's are refused.

Memory: with a causal mask and [EOS] pooling, sequences are cut after the longest [EOS] (exact), and `encode` can
run the classes in chunks with activation checkpointing, so a ViT-L/14 teacher trains with 1000 classes on 24 GB.
"""

from __future__ import annotations

import torch
from open_clip.transformer import text_global_pool
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptkd_edge.errors import PkdError


def text_tower(model: nn.Module) -> nn.Module:
    """The module holding the text transformer: the CLIP model itself, or CustomTextCLIP's `text` (an open_clip
    TextTransformer); anything else (a Hugging Face text tower, CoCa's) raises a PkdError."""
    from open_clip.transformer import TextTransformer

    tower = model.text if hasattr(model, "text") else model
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if isinstance(tower, TextTransformer) and tower.cls_emb is None and not tower.use_pad_mask:
        return tower
    if tower is model and all(hasattr(model, a) for a in parts):
        return model
    raise PkdError(f"{type(model).__name__}'s text tower ({type(tower).__name__}) cannot take text prompts; they "
                   "need open_clip's own text transformer (CLIP, SigLIP/SigLIP2 style), not a Hugging Face or "
                   "CoCa text tower")


def check_text_tower(model: nn.Module) -> None:
    text_tower(model)


def text_pooling(tower: nn.Module) -> tuple[str, int | None]:
    """(pool type, eos id) of a CLIP model (`text_pool_type`) or a TextTransformer (`pool_type`)."""
    if hasattr(tower, "text_pool_type"):
        return tower.text_pool_type, getattr(tower, "text_eos_id", None)
    return tower.pool_type, getattr(tower, "eos_id", None)


def content_ids(tokenizer, text: str) -> list[int]:
    """The token ids of `text` without start/end tokens, cleaned as the tokenizer cleans whole sentences."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, HFTokenizer):
        return list(tokenizer.tokenizer(tokenizer.clean_fn(text), add_special_tokens=False)["input_ids"])
    if isinstance(tokenizer, SimpleTokenizer):
        return list(tokenizer.encode(tokenizer.clean_fn(text)))
    raise PkdError(f"text prompts cannot locate the context tokens with a {type(tokenizer).__name__}; they support "
                   "CLIP's tokenizer and Hugging Face tokenizers")


class PromptedTextTower(nn.Module):
    """`prompts` [depth, n_ctx, width]: layer 0 is the context ("ctx"), deeper layers IVLP's VPT_shallow."""

    def __init__(self, model: nn.Module, tokenizer, n_ctx: int = 4, depth: int = 9, prefix: str | None = None,
                 init_std: float = 0.02):
        super().__init__()
        tower = text_tower(model)
        layers = len(tower.transformer.resblocks)
        if not 0 <= depth <= layers or n_ctx < 1:
            raise PkdError(f"text prompt depth must be 0..{layers} and tokens >= 1 (got depth {depth}, {n_ctx} tokens)")
        self.model, self.tokenizer, self.n_ctx, self.depth = tower, tokenizer, n_ctx, depth
        width = tower.transformer.width
        self.prefix = prefix if prefix else " ".join(["X"] * n_ctx)
        prompts = torch.empty(depth, n_ctx, width)
        nn.init.normal_(prompts, std=init_std)
        self.offset = self._context_offset() if depth else 1
        if prefix and depth:
            tokens = self._tokens([""])[0]
            with torch.no_grad():
                prompts[0] = tower.token_embedding.weight[tokens[self.offset:self.offset + n_ctx]].float()
        self.prompts = nn.Parameter(prompts)

    def _context_offset(self) -> int:
        """Where the prefix's `n_ctx` tokens start in a tokenized sentence (after the start token, if any)."""
        ids = content_ids(self.tokenizer, self.prefix)
        if len(ids) != self.n_ctx:
            raise PkdError(f"the initial prompt {self.prefix!r} is {len(ids)} tokens, not --text-tokens {self.n_ctx}")
        row = self._tokens([""])[0].tolist()
        for offset in range(3):
            if row[offset:offset + self.n_ctx] == ids:
                return offset
        raise PkdError(f"the tokenizer splits {self.prefix!r} differently inside a sentence; pass another "
                       "--text-init")

    def sentences(self, names: list[str]) -> list[str]:
        return [f"{self.prefix} {name.replace('_', ' ')}." for name in names]

    def _tokens(self, names: list[str]) -> torch.Tensor:
        return self.tokenizer(self.sentences(names)).to(self.model.token_embedding.weight.device)

    def forward_tokens(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Text features [B, D] (not normalised) of tokenized "<prefix> <name>." sentences. `trim=False` keeps the
        whole context (same result under the causal mask; what a graph with a fixed context length needs)."""
        m, n, k = self.model, self.n_ctx, self.offset
        length = tokens.shape[1]
        pool, eos_id = text_pooling(m)
        causal = m.attn_mask is not None and pool in ("argmax", "eos")
        if causal and trim:  # positions after the last [EOS] cannot influence it under the causal mask
            length = int(tokens.argmax(dim=-1).max()) + 1 if pool == "argmax" else length
            tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast)
        if self.depth:
            x = torch.cat([x[:, :k], self._prompt(0, x), x[:, k + n:]], dim=1)
        x = x + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        for i, block in enumerate(m.transformer.resblocks):
            if 0 < i < self.depth:
                x = torch.cat([x[:, :k], self._prompt(i, x), x[:, k + n:]], dim=1)
            x = block(x, attn_mask=mask)
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, pool, eos_token_id=eos_id)
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
