"""The PromptKD student: frozen open_clip image tower + deep visual prompts + projector, L2-normalised output."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import LoadedCLIP, ModelSpec, Preprocess, load_clip
from promptkd_edge.models.projector import Projector
from promptkd_edge.models.prompted_vision import check_state
from promptkd_edge.models.towers import build_tower
from promptkd_edge.utils.files import read_tagged_safetensors, write_tagged_safetensors

STUDENT_FORMAT = "promptkd-edge/student"


@dataclass(frozen=True)
class StudentConfig:
    """Everything needed to rebuild a student around its trained weights."""

    spec: str
    teacher_dim: int
    prompt_tokens: int = 4
    prompt_depth: int = 9
    prompt_init_std: float = 0.02
    init_seed: int = 0  # recreates base weights that come from no file (random-init test models)
    weights_sha256: str | None = None


class Student(nn.Module):
    """image -> adapted frozen image tower (models/towers.py: prompts for ViTs) -> projector -> L2-normalised
    feature in the teacher's space [B, D_t]."""

    def __init__(self, tower: nn.Module, projector: Projector, config: StudentConfig,
                 preprocess: Preprocess):
        super().__init__()
        self.tower, self.projector, self.config, self.preprocess = tower, projector, config, preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.tower(images)), dim=-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tower's adaptation (prompts for ViTs) and the projector (parameters and BatchNorm statistics): what
        distillation changes."""
        state = {f"tower.{k}": v for k, v in self.tower.trained_state().items()}
        state.update({f"projector.{k}": v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()})
        return state

    def load_trained_state(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        check_state(self.trained_state(), state, source)
        self.tower.load_trained_state({k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")},
                                      source)
        self.projector.load_state_dict({k[len("projector."):]: v for k, v in state.items()
                                        if k.startswith("projector.")})


def build_student(clip: LoadedCLIP, config: StudentConfig) -> Student:
    """Wrap `clip.model.visual` with its family's adaptation (models/towers.py) and a fresh projector; only those
    train. A prompt depth beyond the tower's blocks means all of them: the student's config records the depth used."""
    tower = build_tower(clip.model.visual, prompt_tokens=config.prompt_tokens, prompt_depth=config.prompt_depth,
                        prompt_init_std=config.prompt_init_std, arch=config.spec)
    if getattr(tower, "depth", config.prompt_depth) != config.prompt_depth:
        config = replace(config, prompt_depth=tower.depth)
    projector = Projector(tower.output_dim, config.teacher_dim)
    return Student(tower, projector, config, clip.preprocess).to(next(clip.model.parameters()).device)


def save_student(student: Student, path: str | os.PathLike) -> None:
    """Write prompts + projector as safetensors, with the StudentConfig in the file's metadata."""
    write_tagged_safetensors(path, student.trained_state(), STUDENT_FORMAT, asdict(student.config))


def read_student_file(path: str | os.PathLike) -> tuple[StudentConfig, dict[str, torch.Tensor]]:
    config, state = read_tagged_safetensors(path, STUDENT_FORMAT, "student weights")
    return StudentConfig(**config), state


def load_student(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                 allow_pickle: bool = False, verify_weights: bool = True) -> Student:
    """Rebuild a trained student from its safetensors file (base weights come from its recorded spec)."""
    config, state = read_student_file(path)
    torch.manual_seed(config.init_seed)
    clip = load_clip(ModelSpec.parse(config.spec), device=device, allow_pickle=allow_pickle)
    if verify_weights and config.weights_sha256 and clip.weights_file:
        from promptkd_edge.utils.files import sha256_file

        if sha256_file(clip.weights_file) != config.weights_sha256:
            raise PkdError(f"the base weights {clip.weights_file} differ from those the student was trained on "
                           f"(sha256 {config.weights_sha256[:12]}...)")
    student = build_student(clip, config)
    student.load_trained_state({k: v.to(device) for k, v in state.items()}, source=str(path))
    return student.eval()
