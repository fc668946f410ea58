"""Import the official PromptKD / PromptSRC teacher checkpoints (Dassl `VLPromptLearner/model-best.pth.tar`,
from github.com/zhengli97/PromptKD) into this project's teacher format.

The key mapping, in one place (official `CustomCLIP` state dict -> `teacher.safetensors`):

| official key                                                      | here                       |
|-------------------------------------------------------------------|----------------------------|
| `prompt_learner.ctx` [n_t, W_t]                                   | `text.prompts[0]`          |
| `text_encoder.transformer.resblocks.{i}.VPT_shallow` [n_t, W_t]   | `text.prompts[i]`, i >= 1  |
| `image_encoder.VPT` [n_v, W_v]                                    | `vision.prompts[0]`        |
| `image_encoder.transformer.resblocks.{i}.VPT_shallow` [n_v, W_v]  | `vision.prompts[i]`, i >= 1|
| `prompt_learner.token_prefix`, `token_suffix` (and `2`)           | dropped: rebuilt from names|
| `prompt_learner.ZS_image_encoder.*`                               | dropped: zero-shot copy    |
| other `image_encoder.*`, `text_encoder.*`, `logit_scale`          | frozen CLIP: checked       |

The official layout appends visual prompts after the patch tokens before `ln_pre` and replaces text positions
1..n_ctx, exactly as `PromptedVisionTower` and `PromptedTextTower` do, so the prompts carry over unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import read_state_dict
from promptkd_edge.models.teacher import TeacherConfig

FROZEN_CHECKS = {  # official key -> open_clip key: spot checks that the base weights are the same
    "image_encoder.conv1.weight": "visual.conv1.weight",
    "image_encoder.proj": "visual.proj",
    "text_encoder.text_projection": "text_projection",
    "text_encoder.ln_final.weight": "ln_final.weight",
}
_SHALLOW = re.compile(r"^(image|text)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


def _stack(first: torch.Tensor | None, deeper: dict[int, torch.Tensor], what: str) -> torch.Tensor:
    if first is None:
        raise PkdError(f"the checkpoint has no {what} prompts of layer 0")
    layers = sorted(deeper)
    if layers != list(range(1, len(layers) + 1)):
        raise PkdError(f"the checkpoint's {what} prompts skip layers ({layers}); expected 1..{len(layers)}")
    tensors = [first, *(deeper[i] for i in layers)]
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise PkdError(f"the checkpoint's {what} prompts differ in shape between layers")
    return torch.stack([t.float() for t in tensors])


def official_prompts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`vision.prompts` and `text.prompts` [depth, n, width] out of an official CustomCLIP state dict."""
    deep: dict[str, dict[int, torch.Tensor]] = {"image": {}, "text": {}}
    for key, value in state.items():
        if match := _SHALLOW.match(key):
            deep[match.group(1)][int(match.group(2))] = value
    return {"vision.prompts": _stack(state.get("image_encoder.VPT"), deep["image"], "vision"),
            "text.prompts": _stack(state.get("prompt_learner.ctx"), deep["text"], "text")}


def read_official_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    state = read_state_dict(Path(path), allow_pickle=allow_pickle)
    if "prompt_learner.ctx" not in state:
        raise PkdError(f"{path} is not a PromptKD/PromptSRC teacher checkpoint (no prompt_learner.ctx)")
    return state


def check_base_weights(state: dict[str, torch.Tensor], base: torch.nn.Module, base_spec: str, source: str) -> None:
    """The checkpoint's frozen CLIP weights must be the base model's (fp16 checkpoints compared loosely)."""
    own = base.state_dict()
    for official_key, key in FROZEN_CHECKS.items():
        if official_key not in state or key not in own:
            continue
        theirs, ours = state[official_key].float(), own[key].float().cpu()
        if theirs.shape != ours.shape:
            raise PkdError(f"{source} does not fit {base_spec}: {official_key} is {list(theirs.shape)}, the "
                           f"base model's {key} is {list(ours.shape)}")
        if not torch.allclose(theirs, ours, rtol=1e-2, atol=1e-3):
            raise PkdError(f"{source} was tuned on other CLIP weights than {base_spec} ({official_key} differs)")


def convert_official(path: str | os.PathLike, base_spec: str, base: torch.nn.Module, *, text_prefix: str,
                     allow_pickle: bool = False) -> tuple[TeacherConfig, dict[str, torch.Tensor]]:
    """The TeacherConfig and prompt tensors of an official checkpoint, for the open_clip model `base`."""
    state = read_official_checkpoint(path, allow_pickle)
    check_base_weights(state, base, base_spec, str(path))
    prompts = official_prompts(state)
    vision, text = prompts["vision.prompts"], prompts["text.prompts"]
    v_layers, t_layers = len(base.visual.transformer.resblocks), len(base.transformer.resblocks)
    v_width, t_width = base.visual.transformer.width, base.transformer.width
    if vision.shape[0] > v_layers or vision.shape[2] != v_width or text.shape[0] > t_layers or text.shape[2] != t_width:
        raise PkdError(f"the prompt shapes of {path} (vision {list(vision.shape)}, text {list(text.shape)}) do not "
                       f"fit {base_spec} (vision: {v_layers} layers of width {v_width}; text: {t_layers} layers of "
                       f"width {t_width})")
    config = TeacherConfig(spec=base_spec, vision_tokens=vision.shape[1], vision_depth=vision.shape[0],
                           text_tokens=text.shape[1], text_depth=text.shape[0], text_prefix=text_prefix)
    return config, prompts
