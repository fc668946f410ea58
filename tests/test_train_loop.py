"""The training loops' shared pieces: buffered step metrics, the optimizer step, and clean-up when a step fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import preprocess_for
from promptkd_edge.train import teacher_cache
from promptkd_edge.train.distributed import Runtime
from promptkd_edge.train.metrics_log import MetricsLog, plot_loss, read_metrics
from promptkd_edge.train.schedule import Optimization, optimizer_and_schedule
from promptkd_edge.train.step_log import StepLog
from promptkd_edge.utils.image_files import list_images


def test_step_log_writes_each_buffered_step_once_with_its_own_values(tmp_path, monkeypatch):
    reads = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(self.shape) or real_cpu(self, *a, **k))
    losses = [torch.tensor(0.1 * (i + 1)) for i in range(3)]
    with MetricsLog(tmp_path / "m.jsonl") as metrics:
        log = StepLog(metrics)
        assert log.flush(1.0) == {} and len(log) == 0  # nothing buffered: nothing written, no device read
        for i, loss in enumerate(losses):
            log.add({"step": i + 1, "lr": 0.5}, {"loss": loss * 2, "ce": loss.to(torch.bfloat16)})
        assert len(log) == 3 and not reads
        last = log.flush(1.23456)
        assert len(reads) == 1  # one transfer for all the steps' values
        assert len(log) == 0 and log.flush(2.0) == {}
    assert last == {"loss": (losses[2] * 2).item(), "ce": losses[2].to(torch.bfloat16).item()}
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [list(r) for r in rows] == [["step", "lr", "loss", "ce", "seconds"]] * 3  # the record's order, then values
    assert [r["loss"] for r in rows] == [(v * 2).item() for v in losses]  # exactly what .item() gives per step
    assert [r["ce"] for r in rows] == [v.to(torch.bfloat16).item() for v in losses]
    assert {r["seconds"] for r in rows} == {1.235}
    assert StepLog(None).flush(0.0) == {}  # ranks other than 0 read the values and write nothing


def test_metrics_log_closes_its_file_on_an_error(tmp_path):
    with pytest.raises(RuntimeError), MetricsLog(tmp_path / "m.jsonl") as metrics:
        metrics.write({"step": 1})
        raise RuntimeError("a step failed")
    assert metrics._file.closed
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1}


def test_optimization_step_matches_the_steps_written_out():
    def setup():
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(3))
        optimizer, scheduler = optimizer_and_schedule(
            [weight], optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, total_steps=4, warmup_steps=2,
            warmup_lr=0.01, steps_per_epoch=1)
        return weight, Optimization(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False), 0.1)

    weight, optim = setup()
    used = [optim.step((weight ** 2).sum()) for _ in range(4)]
    assert used == pytest.approx([0.01, 0.01, 0.1, 0.1 * 0.5 * (1 + np.cos(np.pi / 4))])  # the lr of each step
    expected, ref = setup()
    for _ in range(4):
        ref.optimizer.zero_grad()
        (expected ** 2).sum().backward()
        ref.optimizer.step()
        ref.scheduler.step()
    assert torch.equal(weight, expected)


def test_loss_plot_closes_its_figure_when_saving_fails(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    metrics = tmp_path / "m.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "epoch": 0, "lr": 0.1, "loss": 1.0 / s}) + "\n"
                               for s in range(1, 5)))
    plt.close("all")
    plot_loss(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG" and not plt.get_fignums()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_loss(metrics, tmp_path / "again.png")
    assert not plt.get_fignums() and not (tmp_path / "again.png").exists()


def test_a_failed_teacher_cache_build_leaves_nothing_behind(tmp_path):
    paths = list_images(write_images(tmp_path / "imgs", 6))
    rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    preprocess = preprocess_for("pkd-tiny-teacher")
    common = dict(paths=paths, key="k" * 64, cache_dir=tmp_path / "cache", views=2, dim=4, preprocess=preprocess,
                  seed=0, crop_scale=(0.5, 1.0), batch_size=4, workers=0, max_bad_fraction=0.0, autocast=None)

    def broken_encoder():
        def encode(images):
            raise PkdError("out of memory")
        return encode

    with pytest.raises(PkdError, match="out of memory"):
        teacher_cache.build_or_open(rt, encode=broken_encoder, **common)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written .building folder

    def mean_encoder():
        return lambda images: images.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    cache, built = teacher_cache.build_or_open(rt, encode=mean_encoder, **common)
    assert built and cache.features.shape == (6, 2, 4) and [p.name for p in (tmp_path / "cache").iterdir()] == \
        [cache.path.name]
    again, built = teacher_cache.build_or_open(rt, encode=broken_encoder, **common)  # reused: never encodes
    assert not built and again.path == cache.path
    paths[0].write_bytes(b"not a png")  # more unreadable images than allowed: the build aborts, cleanly
    with pytest.raises(PkdError, match="unreadable"):
        teacher_cache.build_or_open(rt, encode=mean_encoder, **{**common, "key": "j" * 64})
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(cache.path).name]
