"""PromptKD's 2-layer projector from the student's embedding space to the teacher's."""

from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """Linear(D_s, D_t) -> BatchNorm1d(D_t) -> ReLU -> Linear(D_t, D_t).

    The official code uses 1x1 convolutions on [B, D, 1, 1] tensors, which is the same function.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
                         nn.Linear(out_dim, out_dim))
        self.in_dim, self.out_dim = in_dim, out_dim
