"""`pkd distill` end to end at tiny size: run directory, resume, teacher cache, bad data, learning, DDP."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STUDENT, TEACHER, tiny_config, write_images
from safetensors.torch import load_file

from promptkd_edge.data.datasets import PairedViews, collate_skipping_bad
from promptkd_edge.data.decode import read_rgb
from promptkd_edge.data.sampling import EpochSampler
from promptkd_edge.errors import PkdError
from promptkd_edge.models import ClassVectors, StudentConfig, Teacher, build_student, load_clip, load_student
from promptkd_edge.train.distill import distill
from promptkd_edge.train.losses import kd_loss
from promptkd_edge.utils.image_files import list_images


def test_run_directory_holds_everything(tiny_run: Path):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "classes.json", "class_vectors.safetensors", "student.safetensors", "metrics.jsonl",
            "loss.png", "summary.json", "checkpoints"} <= names
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["config"]["teacher"] == TEACHER and config["config"]["epochs"] == 2
    resolved = config["resolved"]
    assert resolved["steps_per_epoch"] == 4 and resolved["total_steps"] == 8
    assert resolved["lr"] == pytest.approx(0.005 * 4 / 8)  # linear scaling from the reference batch 8
    assert resolved["trainable_parameters"] == 3 * 4 * 96 + (96 * 128 + 128) + 2 * 128 + (128 * 128 + 128)
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert rows[0]["lr"] == pytest.approx(1e-5)  # warm-up epoch
    assert rows[4]["lr"] == pytest.approx(resolved["lr"])  # cosine starts at the base lr
    assert (tiny_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["images_seen"] == 32 and summary["bad_images"] == 0
    latest = json.loads((tiny_run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    assert latest == "step-00000008" and len(list((tiny_run / "checkpoints").glob("step-*"))) == 2
    vectors = ClassVectors.load(tiny_run)
    assert vectors.names == ["red_square", "green_circle", "blue_stripes"] and vectors.teacher == TEACHER
    student = load_student(tiny_run / "student.safetensors")
    assert student.config.prompt_depth == 3 and student.config.teacher_dim == vectors.dim


class Crash(Exception):
    pass


def test_resume_ends_with_the_same_weights(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, checkpoint_every=3, log_every=5)
    distill(cfg, tmp_path / "whole")

    def crash_at(step):
        def hook(state):
            if state.step == step:
                raise Crash(step)
        return hook

    with pytest.raises(Crash):  # mid-epoch (epoch 0 has 4 steps)
        distill(cfg, tmp_path / "parts", on_checkpoint=crash_at(3))
    with pytest.raises(Crash):  # at an epoch boundary
        distill(cfg, tmp_path / "parts", resume=True, on_checkpoint=crash_at(8))
    distill(cfg, tmp_path / "parts", resume=True)

    whole, parts = load_file(tmp_path / "whole/student.safetensors"), load_file(tmp_path / "parts/student.safetensors")
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("whole", "parts")]
    assert losses[0] == losses[1] and len(losses[0]) == 12


def test_resume_refuses_another_config(tiny_run, tmp_path):
    cfg = tiny_config(tiny_run.parent, lr=0.5)
    with pytest.raises(PkdError, match="cannot resume .* with a different config: lr=0.5"):
        distill(cfg, tiny_run, resume=True)
    with pytest.raises(PkdError, match="not a distillation run"):
        distill(cfg, tmp_path, resume=True)


def test_new_run_refuses_a_used_directory(tiny_run):
    with pytest.raises(PkdError, match="already exists and is not empty.*--resume"):
        distill(tiny_config(tiny_run.parent), tiny_run)
    assert (tiny_run / "student.safetensors").is_file()


def test_failed_setup_leaves_nothing_behind(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    wrong = tmp_path / "teacher-weights.safetensors"  # the teacher's weights named as the student's: set-up fails
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TEACHER).state_dict().items()}, str(wrong))
    with pytest.raises(PkdError, match="do not fit architecture"):
        distill(tiny_config(tmp_path, student=f"{STUDENT}:{wrong}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(PkdError, match="no images under"):
        (tmp_path / "nothing").mkdir()
        distill(tiny_config(tmp_path, data=str(tmp_path / "nothing")), tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_teacher_cache_holds_the_teachers_features_and_is_reused(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, teacher_cache=2, epochs=2)
    result = distill(cfg, tmp_path / "a")
    cache_dir = Path(result.teacher_cache)
    features = np.load(cache_dir / "features.npy", mmap_mode="r")
    assert features.shape == (16, 2, 128) and features.dtype == np.float16

    torch.manual_seed(0)  # distill seeds before creating a model without weight file
    teacher = Teacher(load_clip(TEACHER))
    paths = list_images(cfg.data)
    views = PairedViews(paths, {"teacher": teacher.clip.preprocess}, seed=0)
    for index, view in [(0, 0), (5, 1), (15, 0)]:
        expected = teacher.encode_image(views[(index, view)]["teacher"][None])[0]
        torch.testing.assert_close(torch.from_numpy(features[index, view].astype(np.float32)), expected,
                                   atol=2e-3, rtol=0)

    import promptkd_edge.train.distill_setup as setup

    loads = []
    real_clip, real_teacher = setup.load_clip, setup.load_teacher
    monkeypatch.setattr(setup, "load_clip", lambda spec, **kw: loads.append(spec) or real_clip(spec, **kw))
    monkeypatch.setattr(setup, "load_teacher", lambda spec, **kw: loads.append(f"teacher {spec}")
                        or real_teacher(spec, **kw))
    again = distill(tiny_config(tmp_path, teacher_cache=2, class_vectors=str(tmp_path / "a")), tmp_path / "b")
    assert again.teacher_cache == result.teacher_cache
    assert loads == [STUDENT]  # cache and class vectors reused: the teacher is never loaded
    loads.clear()
    distill(tiny_config(tmp_path, class_vectors=str(tmp_path / "a"), epochs=1, warmup_epochs=0), tmp_path / "d")
    assert loads == [STUDENT, f"teacher {TEACHER}"]  # without the cache the teacher runs every step
    write_images(Path(cfg.data) / "more", 1, seed=9)  # the listing changed: a new cache
    third = distill(tiny_config(tmp_path, teacher_cache=2), tmp_path / "c")
    assert third.teacher_cache != result.teacher_cache


def test_bad_images_are_skipped_then_abort(tmp_path):
    data = write_images(tmp_path / "data", 20)
    images = list_images(data)
    images[3].write_bytes(images[3].read_bytes()[:40])
    odd = data / "part0" / "odd\tname\n[bold].png"  # a name that would break a line-based list
    odd.write_bytes(b"not a png")
    result = distill(tiny_config(tmp_path, data=str(data), max_bad_fraction=0.1), tmp_path / "ok")
    assert result.bad_images == 2 and result.steps == 10
    # each skipped file is named with its reason in the run directory, one per line
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["bad_images"] == 2 and summary["bad_images_file"] == "bad_images.txt"
    lines = (tmp_path / "ok" / "bad_images.txt").read_text().splitlines()
    assert sorted(lines) == sorted([f"{images[3]}\t{read_rgb(images[3])[1]}",
                                    f"{data / 'part0'}/odd\\tname\\n[bold].png\tnot an image file PIL can read"])
    odd.unlink()
    clean = distill(tiny_config(tmp_path, data=str(write_images(tmp_path / "clean", 8))), tmp_path / "clean-run")
    assert clean.bad_images_file is None and not (tmp_path / "clean-run" / "bad_images.txt").exists()
    for p in images[4:7]:
        p.write_bytes(b"not a png")
    with pytest.raises(PkdError, match=r"[34] of 20 images are unreadable \(more than 10.0%"):
        distill(tiny_config(tmp_path, data=str(data), max_bad_fraction=0.1), tmp_path / "fail")


def test_distillation_lowers_the_loss(tmp_path):
    cfg = tiny_config(tmp_path, epochs=8, optimizer="adamw", lr=1e-2, warmup_epochs=0, crop_scale_min=1.0,
                      kd_norm="batchmean", kd_weight=1.0, teacher_cache=1)
    distill(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    first = np.mean([r["loss"] for r in rows if r["epoch"] == 0])
    last = np.mean([r["loss"] for r in rows if r["epoch"] == 7])
    assert last < 0.5 * first, (first, last)


def test_webdataset_shards(tmp_path):
    webdataset = pytest.importorskip("webdataset")  # the [wds] extra; installed by `make test`
    source = list_images(write_images(tmp_path / "imgs", 12))
    (tmp_path / "shards").mkdir()
    for shard in range(2):
        with webdataset.TarWriter(str(tmp_path / f"shards/train-{shard}.tar")) as sink:
            for i, path in enumerate(source[shard::2]):
                sink.write({"__key__": f"s{shard}_{i:03d}", "png": path.read_bytes()})
    spec = str(tmp_path / "shards/train-{0..1}.tar")
    result = distill(tiny_config(tmp_path, data=spec, shard_epoch_size=12, workers=2), tmp_path / "run")
    assert result.steps == 2 * 3 and result.images_seen == 24
    with pytest.raises(PkdError, match="--shard-epoch-size"):
        distill(tiny_config(tmp_path, data=spec), tmp_path / "r2")
    with pytest.raises(PkdError, match="--teacher-cache needs a folder"):
        distill(tiny_config(tmp_path, data=spec, shard_epoch_size=12, teacher_cache=2), tmp_path / "r3")


@pytest.mark.slow
def test_ddp_two_processes_average_gradients(tmp_path):
    """torchrun, gloo, 2 CPU processes, one step; checked against per-rank gradients averaged by hand."""
    data = write_images(tmp_path / "data", 8)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "promptkd_edge", "distill", "--random-init", "--teacher", TEACHER, "--student", STUDENT,
           "--classes", str(tmp_path / "classes.txt"), "--data", str(data), "--out", str(tmp_path / "run"),
           "--epochs", "1", "--batch-size", "4", "--workers", "0", "--prompt-depth", "3", "--lr", "0.05",
           "--warmup-epochs", "0", "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 1 and summary["images_seen"] == 8
    config = json.loads((tmp_path / "run/config.json").read_text())["resolved"]
    assert config["world_size"] == 2 and config["global_batch"] == 8

    # The reference: same initialisation, each rank's batch separately, gradients averaged, one SGD step.
    vectors = ClassVectors.load(tmp_path / "run")
    torch.manual_seed(0)
    teacher = Teacher(load_clip(TEACHER))
    torch.manual_seed(0)
    clip = load_clip(STUDENT)
    student = build_student(clip, StudentConfig(spec=STUDENT, teacher_dim=vectors.dim, prompt_depth=3))
    paths = list_images(data)
    views = PairedViews(paths, {"student": clip.preprocess, "teacher": teacher.clip.preprocess}, seed=0)
    grads, replicas = [], []
    for rank in range(2):
        replica = copy.deepcopy(student).train()
        keys = list(EpochSampler(len(paths), seed=0, epoch=0, rank=rank, world_size=2))
        batch = collate_skipping_bad([views[k] for k in keys])
        t_logits = vectors.logits(teacher.encode_image(batch["teacher"]))
        s_logits = vectors.logits(replica(batch["student"]))
        loss = 1000.0 * kd_loss(s_logits, t_logits, 1.0, "paper")
        loss.backward()
        grads.append([p.grad.clone() for p in replica.trainable_parameters()])
        replicas.append(replica)
    expected = replicas[0]  # rank 0 saves; its BatchNorm statistics saw rank 0's batch
    with torch.no_grad():
        for p, g0, g1 in zip(expected.trainable_parameters(), *grads, strict=True):
            p -= 0.05 * ((g0 + g1) / 2 + 5e-4 * p)
    saved = load_file(tmp_path / "run/student.safetensors")
    for key, value in expected.trained_state().items():
        # float32 reduction order differs between DDP and this loop (~1e-5); the step itself is ~0.1-1
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=5e-5, msg=key)
        moved = (value - student.trained_state()[key]).abs().max()
        assert key.endswith(("num_batches_tracked", "0.bias")) or moved > 1e-2, (key, moved)


def test_config_paths_are_stored_absolute(tmp_path, monkeypatch):
    from promptkd_edge.train.config import DistillConfig

    monkeypatch.chdir(tmp_path)
    cfg = DistillConfig(teacher="ViT-B-16:openai", student="pkd-tiny-student:w/s.safetensors", data="imgs",
                        classes="names.txt", cache_dir="~/c").with_absolute_paths()
    assert cfg.teacher == "ViT-B-16:openai"  # a tag stays a tag
    assert cfg.student == f"pkd-tiny-student:{tmp_path / 'w/s.safetensors'}"
    assert (cfg.data, cfg.classes) == (str(tmp_path / "imgs"), str(tmp_path / "names.txt"))
    assert cfg.cache_dir == str(Path("~/c").expanduser())
    shards = DistillConfig(data="pipe:curl -s http://x/{0..9}.tar").with_absolute_paths()
    assert shards.data == "pipe:curl -s http://x/{0..9}.tar"
