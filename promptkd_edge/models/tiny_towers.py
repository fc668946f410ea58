"""Tiny image towers of every student family for tests and the demo, registered on demand (never at import):
timm trunks under their own names (`pkd_tiny_*`) and open_clip architectures around them (`pkd-tiny-*`), each with
a small CLIP text tower and CLIP's tokenizer (no "siglip" in a name: open_clip would pick the SigLIP tokenizer)."""

from __future__ import annotations

import copy
import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from promptkd_edge.errors import PkdError

_TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2)
_TINY_EVA = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                 head_init_scale=1.0)  # timm's default 0.001 shrinks the random head's outputs to ~1e-5


def _tiny(create: Any, variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    if pretrained:
        raise PkdError(f"timm model '{variant}' is a random-weight test tower; it has no pretrained weights")
    cfg = {"architecture": variant, "input_size": (3, 32, 32), "num_classes": 0}
    kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or cfg
    return create(variant, pretrained=False, **{**defaults, **kwargs})


def pkd_tiny_siglip_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """SigLIP-like: no class token, MAP attention-pool head, tanh GELU."""
    from timm.models.vision_transformer import _create_vision_transformer

    return _tiny(_create_vision_transformer, "pkd_tiny_siglip_vit", pretrained,
                 dict(_TINY_VIT, depth=3, class_token=False, global_pool="map", act_layer="gelu_tanh"), kwargs)


def pkd_tiny_reg_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Class token + 2 register tokens outside the position embedding, average pooling (fc_norm)."""
    from timm.models.vision_transformer import _create_vision_transformer

    return _tiny(_create_vision_transformer, "pkd_tiny_reg_vit", pretrained,
                 dict(_TINY_VIT, depth=2, reg_tokens=2, no_embed_class=True, global_pool="avg"), kwargs)


def pkd_tiny_mci_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MobileCLIP2-B-like (timm's vit_base_mci_224): conv stem instead of a patch projection, class token,
    position embedding on the patches only, token pooling."""
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid

    stem = ConvStem(channels=(8, 8, 32), stride=(4, 2, 1), kernel_size=(4, 2, 1), padding=0, act_layer=nn.GELU)
    return _tiny(partial(_create_vision_transformer_hybrid, backbone=stem, embed_args=dict(proj=False)),
                 "pkd_tiny_mci_vit", pretrained,
                 dict(img_size=32, embed_dim=32, num_heads=2, depth=2, no_embed_class=True), kwargs)


def pkd_tiny_eva_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """EVA02-CLIP-like: rotary embeddings, class token, SwiGLU with scale norms, token pooling."""
    from timm.models.eva import _create_eva

    return _tiny(_create_eva, "pkd_tiny_eva_vit", pretrained,
                 dict(_TINY_EVA, depth=3, qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True,
                      scale_attn_inner=True, global_pool="token"), kwargs)


def pkd_tiny_pe_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """PE-Core-like: rotary embeddings ('rope' attention, xy grid), class token, pre-norm, MAP pool."""
    from timm.models.eva import _create_eva

    return _tiny(_create_eva, "pkd_tiny_pe_vit", pretrained,
                 dict(_TINY_EVA, depth=2, global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                      rope_grid_offset=1.0, rope_grid_indexing="xy", attn_pool_num_heads=2), kwargs)


def pkd_demo_siglip_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The demo's timm-vit student: SigLIP-like (MAP pool, no class token) at the demo student's size (32 px,
    patch 8, width 96, 4 blocks, as pkd-tiny-student)."""
    from timm.models.vision_transformer import _create_vision_transformer

    return _tiny(_create_vision_transformer, "pkd_demo_siglip_vit", pretrained,
                 dict(_TINY_VIT, embed_dim=96, num_heads=3, depth=4, class_token=False, global_pool="map",
                      act_layer="gelu_tanh"), kwargs)


TINY_TIMM_MODELS = (pkd_tiny_siglip_vit, pkd_tiny_reg_vit, pkd_tiny_mci_vit, pkd_tiny_eva_vit, pkd_tiny_pe_vit,
                    pkd_demo_siglip_vit)

_TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

TINY_TIMM_CONFIGS: dict[str, dict[str, Any]] = {
    "pkd-tiny-map-vit": {  # SigLIP2-like (ViT-B-16-SigLIP2); CLIP's text tower and tokenizer: no "siglip" in the name
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_tiny_siglip_vit", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": dict(_TINY_TEXT),
    },
    "pkd-tiny-reg-vit": {
        "embed_dim": 48, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_tiny_reg_vit", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear"},
        "text_cfg": dict(_TINY_TEXT),
    },
    "pkd-tiny-mci": {  # like MobileCLIP2-B
        "embed_dim": 48, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_tiny_mci_vit", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": dict(_TINY_TEXT),
    },
    "pkd-tiny-eva": {  # like EVA02-B-16
        "embed_dim": 48, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_tiny_eva_vit", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": dict(_TINY_TEXT),
    },
    "pkd-demo-map-vit": {  # the demo's timm-vit student (pkd demo --student-family timm-vit)
        "embed_dim": 96, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_demo_siglip_vit", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "linear"},
        "text_cfg": dict(_TINY_TEXT),
    },
    "pkd-tiny-pe": {  # like PE-Core-S-16-384
        "embed_dim": 48, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "pkd_tiny_pe_vit", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": None},
        "text_cfg": dict(_TINY_TEXT),
    },
}


def register_tiny_timm_configs() -> None:
    """Make the tiny timm towers known to timm and their architectures (TINY_TIMM_CONFIGS) to open_clip."""
    import open_clip.factory
    from timm.models import is_model, register_model

    for fn in TINY_TIMM_MODELS:
        if not is_model(fn.__name__):
            register_model(fn)
    for name, cfg in TINY_TIMM_CONFIGS.items():
        open_clip.factory._MODEL_CONFIGS.setdefault(name, copy.deepcopy(cfg))


# Tiny test architectures shaped like MobileCLIP2-S0 (open_clip model_configs/MobileCLIP2-S0.json: fastvit_mci*
# trunk, avg pool, the trunk's classifier as projection) and convnext_base.json (linear projection), built on timm
# entrypoints registered below. The text tower is the tiny one of configs/pkd-tiny-student.json.
_TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY_CONV_CONFIGS: dict[str, dict] = {
    "pkd-tiny-hybrid": {
        "embed_dim": 48,
        "vision_cfg": {"timm_model_name": "pkd_tiny_fastvit_mci", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": None, "timm_drop": 0.0, "timm_drop_path": 0.0,
                       "image_size": 64},
        "text_cfg": {**_TINY_TEXT, "no_causal_mask": True},
        "custom_text": True,
    },
    "pkd-tiny-convnext": {
        "embed_dim": 48,
        "vision_cfg": {"timm_model_name": "pkd_tiny_convnext", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": 64},
        "text_cfg": dict(_TINY_TEXT),
    },
}


def _tiny_kwargs(args: dict, kwargs: dict) -> dict:
    """The architecture's arguments, the caller's, and a pretrained cfg (timm.create_model passes None)."""
    cfg = kwargs.pop("pretrained_cfg", None) or {"num_classes": 1000, "input_size": (3, 64, 64), "pool_size": (2, 2)}
    return {**args, **kwargs, "pretrained_cfg": cfg, "feature_cfg": dict(flatten_sequential=True)}


def pkd_tiny_fastvit_mci(pretrained: bool = False, **kwargs) -> nn.Module:
    """fastvit_mci0's structure (RepMixer stages, an SE downsample, conditional positional encoding and an
    attention stage) at widths 8..32, one block a stage."""
    from timm.models._builder import build_model_with_cfg
    from timm.models.fastvit import FastVit, RepConditionalPosEnc

    args = dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 32), mlp_ratios=(2, 2, 2, 2),
                se_downsamples=(False, False, True, True),
                pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
                token_mixers=("repmixer", "repmixer", "repmixer", "attention"), lkc_use_act=True)
    return build_model_with_cfg(FastVit, "pkd_tiny_fastvit_mci", pretrained, **_tiny_kwargs(args, kwargs))


def pkd_tiny_convnext(pretrained: bool = False, **kwargs) -> nn.Module:
    """convnext_base's structure at widths 8..32, one block a stage."""
    from timm.models._builder import build_model_with_cfg
    from timm.models.convnext import ConvNeXt

    args = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 32))
    return build_model_with_cfg(ConvNeXt, "pkd_tiny_convnext", pretrained, **_tiny_kwargs(args, kwargs))


_config_dir: Path | None = None


def register_tiny_conv_configs() -> None:
    """Make `pkd-tiny-hybrid` and `pkd-tiny-convnext` buildable with open_clip.create_model (their timm trunks and
    their open_clip configs, written once a process to a temporary folder: add_model_config reads files)."""
    global _config_dir
    if _config_dir is not None:
        return
    import open_clip
    import timm
    from timm.models import register_model

    for fn in (pkd_tiny_fastvit_mci, pkd_tiny_convnext):
        if not timm.is_model(fn.__name__):
            register_model(fn)
    folder = Path(tempfile.mkdtemp(prefix="pkd-tiny-conv-configs-"))
    for name, cfg in TINY_CONV_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg, indent=2))
    open_clip.add_model_config(folder)
    _config_dir = folder
