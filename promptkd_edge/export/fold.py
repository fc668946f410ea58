"""Fold a trained student into one plain inference graph: image -> prompted ViT -> projector (BatchNorm folded
into its Linear) -> L2 norm -> scale * W^T, with /255 and mean/std optionally inside (uint8 NHWC input, or float
NCHW pixels 0-255 for DeepStream)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.models.class_vectors import ClassVectors
from promptkd_edge.models.projector import Projector
from promptkd_edge.models.student import Student
from promptkd_edge.runtime.preprocess import INPUT_FORMATS

HEADS = ("logits", "embeddings", "both")


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One Linear equal to `bn(linear(x))` with the BatchNorm's running statistics (eval mode)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
    return folded


def fold_projector(projector: Projector) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear becomes Linear -> ReLU -> Linear (identical in eval mode)."""
    first, bn, _, last = projector
    return nn.Sequential(fold_batchnorm(first, bn), nn.ReLU(), copy.deepcopy(last))


class InputNormalize(nn.Module):
    """Pixels 0-255 -> the normalised float [B, 3, H, W] the tower takes, /255 and mean/std folded into one
    multiply-add: uint8 [B, H, W, 3] (`nhwc`) or float [B, 3, H, W] (`nchw`)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], layout: str = "nhwc"):
        super().__init__()
        std_t, mean_t = torch.tensor(std), torch.tensor(mean)
        self.layout = layout
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            images = images.permute(0, 3, 1, 2)
        return images.to(torch.float32) * self.scale + self.shift


class FoldedStudent(nn.Module):
    """The deployable student: everything frozen, no BatchNorm, class vectors as a constant [D, C] matrix.

    Outputs `logits` [B, C] (= logit_scale * unit feature @ W^T), `embeddings` [B, D] (unit features) or both,
    as a tuple in that order.
    """

    def __init__(self, student: Student, vectors: ClassVectors | None, head: str = "logits",
                 input_format: str = "normalized"):
        super().__init__()
        if head not in HEADS:
            raise PkdError(f"unknown head '{head}'; choose one of {', '.join(HEADS)}")
        if head != "embeddings" and vectors is None:
            raise PkdError(f"head '{head}' needs class vectors")
        if vectors is not None and vectors.dim != student.config.teacher_dim:
            raise PkdError(f"class vectors have dimension {vectors.dim}, the student projects to "
                           f"{student.config.teacher_dim}")
        student = copy.deepcopy(student).float().cpu().eval()
        if input_format not in INPUT_FORMATS:
            raise PkdError(f"unknown input format '{input_format}'; choose one of {', '.join(INPUT_FORMATS)}")
        self.head, self.input_format = head, input_format
        pre = student.preprocess
        layouts = {"uint8": "nhwc", "pixels": "nchw"}
        self.input = InputNormalize(pre.mean, pre.std, layouts[input_format]) if input_format in layouts \
            else nn.Identity()
        self.tower = student.tower.for_export()  # the adaptation folded where the family needs it
        self.projector = fold_projector(student.projector).requires_grad_(False)
        if vectors is not None:
            weight = vectors.logit_scale * vectors.vectors.float().t().contiguous()
            self.register_buffer("class_matrix", weight)  # [D, C], logit scale folded in
        else:
            self.class_matrix = None

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = F.normalize(self.projector(self.tower(self.input(image))), dim=-1)
        if self.head == "embeddings":
            return features
        logits = features @ self.class_matrix
        return logits if self.head == "logits" else (logits, features)

    @property
    def output_names(self) -> list[str]:
        return {"logits": ["logits"], "embeddings": ["embeddings"], "both": ["logits", "embeddings"]}[self.head]
