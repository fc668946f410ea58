"""The CLIP teacher: zero-shot (an open_clip spec) or prompt-tuned (a `pkd teacher` run directory).

A prompted teacher is the base open_clip model plus IVLP prompts in both towers, stored as
`teacher.safetensors` (tensors `vision.prompts` [depth, n, W_v] and `text.prompts` [depth, n, W_t], the
TeacherConfig in the metadata). `load_teacher` takes either form, so every `--teacher` option accepts both.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.models.clip_tokenizer import tokenizer_digest
from promptkd_edge.models.openclip import (
    SCHEMAS,
    LoadedCLIP,
    ModelSpec,
    load_clip,
    register_tiny_configs,
    weights_file_for,
)
from promptkd_edge.models.prompted_text import PromptedTextTower
from promptkd_edge.models.templates import DEFAULT_TEMPLATE
from promptkd_edge.models.towers import PROMPTED_FAMILIES, family_of
from promptkd_edge.utils.files import read_tagged_safetensors, sha256_file, write_tagged_safetensors

TEACHER_FILE = "teacher.safetensors"
TEACHER_FORMAT = "promptkd-edge/teacher"


def class_prompt(template: str, name: str) -> str:
    """The text the teacher reads for a class: folder-style names ('golden_retriever') read as words."""
    return template.format(name.replace("_", " "))


@dataclass(frozen=True)
class TeacherConfig:
    """The prompts of a tuned teacher (PromptSRC / IVLP design: 4 + 4 tokens, depth 9 in both towers)."""

    spec: str
    vision_tokens: int = 4
    vision_depth: int = 9
    text_tokens: int = 4
    text_depth: int = 9
    text_prefix: str = "a photo of a"
    init_std: float = 0.02
    init_seed: int = 0
    weights_sha256: str | None = None
    tokenizer_sha256: str | None = None  # `tokenizer_digest` of the tokenizer the text prompts were tuned with


def _prompted_image_tower(visual: nn.Module, config: TeacherConfig) -> nn.Module:
    """IVLP's deep visual prompts in the teacher's image tower: an open_clip ViT (a depth beyond its blocks is
    refused) or a timm ViT/EVA tower (SigLIP, PE-Core, EVA02: a depth beyond its blocks means all of them)."""
    from promptkd_edge.models.towers import tower_class

    cls = tower_class(visual, config.spec)
    if cls.family not in PROMPTED_FAMILIES:
        raise PkdError(f"the image tower of {config.spec} takes no visual prompts ({cls.family}); `pkd teacher` "
                       f"needs a {' or '.join(PROMPTED_FAMILIES)} tower; use it as a zero-shot --teacher instead")
    return cls(visual, config.vision_tokens, config.vision_depth, config.init_std)


class Teacher(nn.Module):
    """A frozen open_clip model, optionally with trainable prompts; features are L2-normalised."""

    def __init__(self, clip: LoadedCLIP, config: TeacherConfig | None = None, source: str | None = None):
        super().__init__()
        self.clip = clip
        self.model = clip.model.eval().requires_grad_(False)
        self.config = config
        self.source = source or str(clip.spec)
        if config is not None:
            self.vision = _prompted_image_tower(self.model.visual, config)
            self.text = PromptedTextTower(self.model, clip.tokenizer(), config.text_tokens, config.text_depth,
                                          config.text_prefix, config.init_std)
            if config.tokenizer_sha256 and tokenizer_digest(clip.tokenizer()) != config.tokenizer_sha256:
                raise PkdError(f"the tokenizer of {config.spec} loaded here differs from the one the teacher "
                               f"{self.source} was tuned with (its text prompts would read other tokens); load the "
                               "tokenizer files it was tuned with")

    @property
    def spec(self) -> str:
        """What `--teacher` must say to load this teacher again (a spec or a teacher run directory)."""
        return self.source

    @property
    def prompted(self) -> bool:
        return self.config is not None

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    @property
    def template(self) -> str:
        """The sentence the class vectors come from ('X' marks learned context in a prompted teacher)."""
        return f"{self.text.prefix} {{}}. (learned context)" if self.prompted else DEFAULT_TEMPLATE

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        self.model.eval()  # frozen towers never switch to training behaviour
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features, with gradients to the prompts (stage I training)."""
        out = self.vision(images) if self.prompted else self.model.encode_image(images)
        return F.normalize(out, dim=-1)

    def text_features(self, names: list[str], template: str = DEFAULT_TEMPLATE, chunk: int = 0,
                      checkpointing: bool = False) -> torch.Tensor:
        """Normalised class text features, with gradients to the prompts (stage I training)."""
        if self.prompted:
            return F.normalize(self.text.encode(names, chunk, checkpointing).float(), dim=-1)
        return self.encode_text([class_prompt(template, n) for n in names])

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_features(images)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised features of plain sentences (no prompts), `batch_size` at a time."""
        tokenizer = self.clip.tokenizer()
        device = next(self.model.parameters()).device
        out = [self.model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float()
               for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def class_text_features(self, names: list[str], template: str = DEFAULT_TEMPLATE, chunk: int = 256
                            ) -> torch.Tensor:
        return self.text_features(names, template, chunk=chunk)

    def prompt_state(self) -> dict[str, torch.Tensor]:
        return {"vision.prompts": self.vision.prompts, "text.prompts": self.text.prompts}

    def load_prompt_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        for key, param in self.prompt_state().items():
            if key not in state:
                raise PkdError(f"{source} has no {key}")
            if state[key].shape != param.shape:
                raise PkdError(f"{source}: {key} is {list(state[key].shape)}, but {self.config.spec} with this "
                               f"prompt design needs {list(param.shape)}")
            with torch.no_grad():
                param.copy_(state[key].to(param.dtype))


def teacher_run_file(source: str | os.PathLike, strict: bool = True) -> Path | None:
    """The teacher.safetensors a `--teacher` value points at (a run directory or the file), else None; with
    `strict`, a folder without one is an error (it cannot be an open_clip spec either)."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / TEACHER_FILE).is_file():
        return path / TEACHER_FILE
    if path.is_file() and path.name.endswith(".safetensors") and _is_teacher_file(path):
        return path
    if path.is_dir() and strict:
        raise PkdError(f"{path} is a folder without {TEACHER_FILE}; pass a `pkd teacher` run or an open_clip "
                       "spec (ARCH, ARCH:TAG, ARCH:/path/to/weights)")
    return None


def _is_teacher_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == TEACHER_FORMAT
    except Exception:
        return False


def save_teacher(teacher: Teacher, path: str | os.PathLike) -> None:
    state = {k: v.detach().float().cpu().contiguous() for k, v in teacher.prompt_state().items()}
    write_tagged_safetensors(path, state, TEACHER_FORMAT, asdict(teacher.config))


def read_teacher_file(path: str | os.PathLike) -> tuple[TeacherConfig, dict[str, torch.Tensor]]:
    config, state = read_tagged_safetensors(path, TEACHER_FORMAT, "teacher prompts")
    return TeacherConfig(**config), state


def base_spec(source: str) -> str:
    """The open_clip spec under a teacher (itself, for a zero-shot teacher)."""
    file = teacher_run_file(source)
    return read_teacher_file(file)[0].spec if file else source


def teacher_fingerprint(source: str) -> dict[str, str | None]:
    """What identifies the teacher's image features: base weights and, when tuned, its prompts."""
    file = teacher_run_file(source)
    spec = read_teacher_file(file)[0].spec if file else source
    weights = weights_file_for(spec)
    return {"spec": spec, "weights_sha256": sha256_file(weights) if weights else None,
            "prompts_sha256": sha256_file(file) if file else None}


def require_weights(teacher: Teacher, source: str, what: str) -> None:
    """A zero-shot teacher without a weights file has random weights: `what` (class vectors, a text encoder) made
    from it could not match the run's."""
    if not teacher.prompted and teacher.clip.weights_file is None and ":" not in source:
        raise PkdError(f"the teacher {source} has no weights file (random weights): {what} cannot match the run's")


def check_prompt_tunable(spec: str) -> None:
    """Refuse, from open_clip's config alone (before any weights load), a teacher whose text tower text prompts
    cannot enter: a Hugging Face text model (`text_cfg.hf_model_name`) or CoCa's (a class token in the text).
    Schemas (hf-hub:, local-dir:) are checked when the model is built (`prompted_text.text_tower`)."""
    import open_clip

    arch = ModelSpec.parse(spec).arch
    if arch.startswith(SCHEMAS):
        return
    register_tiny_configs()
    cfg = open_clip.get_model_config(arch) or {}
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        why = f"text tower is a Hugging Face model ({text_cfg['hf_model_name']})"
    elif "multimodal_cfg" in cfg or text_cfg.get("embed_cls"):
        why = "text tower is CoCa's, with a class token"
    elif family_of(arch) not in PROMPTED_FAMILIES:
        why = f"image tower takes no visual prompts (supported: {', '.join(PROMPTED_FAMILIES)} towers)"
    else:
        return
    raise PkdError(f"{arch}'s {why}: `pkd teacher` prompts open_clip's own text transformer (CLIP, SigLIP, "
                   "SigLIP2, ...) and ViT image towers only; use it as a zero-shot --teacher of `pkd distill` instead")


def load_teacher(source: str, *, device: str | torch.device = "cpu", allow_pickle: bool = False) -> Teacher:
    """A zero-shot teacher from an open_clip spec, or a prompted one from a `pkd teacher` run / file."""
    file = teacher_run_file(source)
    if file is None:
        return Teacher(load_clip(ModelSpec.parse(source), device=device, allow_pickle=allow_pickle))
    config, state = read_teacher_file(file)
    torch.manual_seed(config.init_seed)
    clip = load_clip(ModelSpec.parse(config.spec), device=device, allow_pickle=allow_pickle)
    if config.weights_sha256 and clip.weights_file and sha256_file(clip.weights_file) != config.weights_sha256:
        raise PkdError(f"the base weights {clip.weights_file} differ from those the teacher in {file} was tuned on")
    teacher = Teacher(clip, config, source=str(file.parent if file.name == TEACHER_FILE else file)).to(device)
    teacher.load_prompt_state(state, str(file))
    return teacher.eval()
