"""The KD loss against a hand-written reference, and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from promptkd_edge.train.losses import kd_loss
from promptkd_edge.train.schedule import scaled_lr, warmup_cosine


def reference_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """sum_b sum_c p_t * (log p_t - log p_s), softmax at temperature t, written out with math only."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        zs = [v / t for v in s_row]
        zt = [v / t for v in t_row]
        log_norm_s = math.log(sum(math.exp(v) for v in zs))
        log_norm_t = math.log(sum(math.exp(v) for v in zt))
        for a, b in zip(zs, zt, strict=True):
            log_ps, log_pt = a - log_norm_s, b - log_norm_t
            total += math.exp(log_pt) * (log_pt - log_ps)
    return total


@pytest.mark.parametrize("t", [1.0, 2.0, 0.5])
def test_kd_loss_against_reference(t):
    torch.manual_seed(0)
    s, te = torch.randn(4, 6) * 10, torch.randn(4, 6) * 10
    kl = reference_kl(s.tolist(), te.tolist(), t)
    assert kd_loss(s, te, t, "paper").item() == pytest.approx(kl * t * t / (4 * 6), rel=1e-5)
    assert kd_loss(s, te, t, "batchmean").item() == pytest.approx(kl * t * t / 4, rel=1e-5)


def test_paper_normalisation_matches_official_code():
    """PromptKD: F.kl_div(log_softmax(stu/T), softmax(tea/T), reduction='sum') * T*T / stu.numel()."""
    torch.manual_seed(1)
    s, te, t = torch.randn(8, 10) * 20, torch.randn(8, 10) * 20, 1.0
    official = F.kl_div(F.log_softmax(s / t, 1), F.softmax(te / t, 1), reduction="sum") * t * t / s.numel()
    torch.testing.assert_close(kd_loss(s, te, t, "paper"), official)


def test_kd_loss_properties():
    s = torch.randn(3, 5, requires_grad=True)
    assert kd_loss(s.detach(), s.detach()).item() == pytest.approx(0.0, abs=1e-6)
    kd_loss(s, torch.randn(3, 5)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        kd_loss(s, s, norm="mean")


def test_schedule_warmup_then_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.04)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2, base_lr=0.04, warmup_lr=1e-5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([1e-5, 1e-5])
    expected = [0.04 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs[2:] == pytest.approx(expected)


def test_lr_scaling():
    assert scaled_lr("sgd", 8) == pytest.approx(0.005)
    assert scaled_lr("sgd", 256) == pytest.approx(0.16)  # the PromptKD authors' batch-256 setting
    assert scaled_lr("adamw", 32) == pytest.approx(2.5e-4 * 2)
