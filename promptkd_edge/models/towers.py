"""Which adaptation a student's image tower gets, by tower family (the adapted-tower interface).

A student is a frozen open_clip image tower with a parameter-efficient adaptation that trains, and folds into the
exported graph at no inference cost. Every adapted tower class has: `family`, `supports(visual)`, `adaptation` (one
line for `pkd models`), `output_dim`, `forward`, `trained_state()` / `load_trained_state(state, source)` (what
distillation trains; keys without the "tower." prefix), `for_export()` (a plain frozen module computing the same
function with the adaptation folded) and `train()` that keeps the frozen tower in eval mode.

    openclip-vit  open_clip VisionTransformer (ViT-*)         deep visual prompts (the paper's recipe)
    timm-vit      timm ViT / EVA towers (SigLIP2, PE, EVA02)   deep visual prompts, outside rope and pooling
    hybrid        FastViT / MobileCLIP2-S*                     adaptation folded into the weights at export
    conv          ConvNeXt, CNNs                               adaptation folded into the weights at export
"""

from __future__ import annotations

import importlib

from torch import nn

from promptkd_edge.errors import PkdError

# (family, module, class), in the order they are asked
TOWER_CLASSES = (("openclip-vit", "promptkd_edge.models.prompted_vision", "PromptedVisionTower"),
                 ("timm-vit", "promptkd_edge.models.prompted_timm", "PromptedTimmViT"),
                 ("hybrid", "promptkd_edge.models.adapted_conv", "AdaptedHybridTower"),  # before conv: a subclass
                 ("conv", "promptkd_edge.models.adapted_conv", "AdaptedConvTower"))
PROMPTED_FAMILIES = ("openclip-vit", "timm-vit")
FAMILIES = {  # what `pkd models` says of each family
    "openclip-vit": "deep visual prompts in the first --prompt-depth blocks (PromptKD's recipe)",
    "timm-vit": "deep visual prompts in the first --prompt-depth blocks, outside rotary positions and the pool",
    "hybrid": "SSF per-channel scale and shift (arXiv 2210.08823), merged into the weights and re-parameterised "
              "at export (docs/student-families.md)",
    "conv": "SSF per-channel scale and shift (arXiv 2210.08823), merged into the weights at export "
            "(docs/student-families.md)",
}
TIMM_FAMILIES = {  # the timm module an architecture's trunk comes from -> family
    "vision_transformer": "timm-vit", "vision_transformer_hybrid": "timm-vit", "eva": "timm-vit",
    "fastvit": "hybrid", "convnext": "conv", "resnet": "conv", "efficientnet": "conv", "mobilenetv3": "conv",
    "regnet": "conv", "byobnet": "conv",
}


def tower_classes() -> list[type[nn.Module]]:
    return [getattr(importlib.import_module(module), name) for _, module, name in TOWER_CLASSES]


def tower_class(visual: nn.Module, arch: str = "this") -> type[nn.Module]:
    """The adapted-tower class for `visual`, or a one-line PkdError naming what is supported."""
    for cls in tower_classes():
        if cls.supports(visual):
            return cls
    trunk = getattr(visual, "trunk", None)
    what = f"{type(visual).__name__}" + (f" over timm {type(trunk).__name__}" if trunk is not None else "")
    raise PkdError(f"the {arch} image tower is {what}, which no student adaptation covers; supported: "
                   f"{', '.join(f for f, _, _ in TOWER_CLASSES)} towers (`pkd models` lists them)")


def build_tower(visual: nn.Module, *, prompt_tokens: int, prompt_depth: int, prompt_init_std: float,
                arch: str = "this") -> nn.Module:
    """The adapted tower for a student: prompts for ViT families (a depth beyond the tower's blocks means all of
    them: `tower.depth` says how many), the family's folded adaptation otherwise."""
    cls = tower_class(visual, arch)
    if cls.family == "openclip-vit":  # the stage-I teacher's prompts refuse a depth beyond the blocks instead
        return cls(visual, prompt_tokens, prompt_depth, prompt_init_std, clamp_depth=True)
    if cls.family in PROMPTED_FAMILIES:
        return cls(visual, prompt_tokens, prompt_depth, prompt_init_std)
    return cls(visual)


def family_of(arch: str) -> str | None:
    """The family of open_clip architecture `arch` from its config alone (no weights are built), or None where no
    adaptation covers its image tower."""
    import open_clip

    vision = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {})
    name = vision.get("timm_model_name")
    if name:
        import timm.models

        try:
            module = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
        except (RuntimeError, KeyError):
            return None
        return TIMM_FAMILIES[module] if module in TIMM_FAMILIES else _family_by_building(arch)
    return "openclip-vit" if isinstance(vision.get("layers", 12), int) else _family_by_building(arch)


def _family_by_building(arch: str) -> str | None:
    """The family of `arch`'s image tower built on the meta device (no memory, no weights: ~0.2 s)."""
    import logging

    import open_clip
    import torch

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded
    try:
        with torch.device("meta"):
            visual = open_clip.create_model(arch, device="meta").visual
    except Exception:  # noqa: BLE001 - an architecture that does not build has no family
        return None
    finally:
        logger.setLevel(level)
    return next((cls.family for cls in tower_classes() if cls.supports(visual)), None)


def supported_families() -> dict[str, str]:
    """family -> the adaptation its students get."""
    known = {f for f, _, _ in TOWER_CLASSES}
    return {f: text for f, text in FAMILIES.items() if f in known}

