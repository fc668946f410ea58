"""Issue 18, training state: checkpoints verified on resume (10), `pkd teacher`'s unreadable shots (13), and the
bad-image abort advice that a resumed run can follow (21). Through the CLI where a user meets it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TEACHER, tiny_config, write_images
from safetensors.torch import load_file
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.data.decode import read_rgb
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.errors import PkdError
from promptkd_edge.train.distill import distill
from promptkd_edge.utils.image_files import list_images

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line(result) -> str:
    """The error line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


# ---------------------------------------------------------------------------------------------- 10: checkpoints

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run (checkpoints step-00000004 and step-00000008) and its final student, kept aside."""
    root = tmp_path_factory.mktemp("finished")
    distill(tiny_config(root), root / "run")
    shutil.copy(root / "run" / "student.safetensors", root / "reference.safetensors")
    return root / "run"


@pytest.fixture()
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def flip_tensor_byte(path: Path) -> None:
    """Change one byte of a safetensors file's tensor data (the header stays valid: it still loads)."""
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 5] ^= 0x01
    path.write_bytes(bytes(data))
    load_file(path)  # still a loadable file: only its numbers changed


def test_a_flipped_byte_is_refused_and_the_advised_earlier_checkpoint_resumes(run_copy, finished):
    checkpoints = run_copy / "checkpoints"
    flip_tensor_byte(checkpoints / "step-00000008" / "state.safetensors")
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert f"{checkpoints / 'step-00000008' / 'state.safetensors'} does not match its recorded sha256" in message
    advice = re.search(r"--from-checkpoint (step-\d{8})", message)
    assert advice and advice.group(1) == "step-00000004"
    # the advice followed as printed: epoch 2 again from step 4 ends with the same weights as the undamaged run
    result = invoke("distill", "--resume", str(run_copy), "--from-checkpoint", advice.group(1))
    assert result.exit_code == 0, result.output
    assert "step-00000004" in result.output
    assert same_weights(run_copy / "student.safetensors", finished.parent / "reference.safetensors")
    assert json.loads((checkpoints / "latest.json").read_text())["checkpoint"] == "step-00000008"
    assert invoke("distill", "--resume", str(run_copy)).exit_code == 0  # the rewritten step 8 verifies


def test_an_edited_state_json_is_refused(run_copy):
    state = run_copy / "checkpoints" / "step-00000008" / "state.json"
    meta = json.loads(state.read_text())
    meta["optimizer"]["param_groups"][0]["lr"] *= 10  # still valid JSON, other numbers
    state.write_text(json.dumps(meta))
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert f"{state} does not match its recorded sha256" in message and "--from-checkpoint step-00000004" in message


def test_a_damaged_only_checkpoint_says_to_start_again(run_copy):
    """A run stopped after its first epoch whose one checkpoint is damaged: never trained on, whatever it holds."""
    checkpoints = run_copy / "checkpoints"
    shutil.rmtree(checkpoints / "step-00000008")
    (checkpoints / "latest.json").write_text(json.dumps({"checkpoint": "step-00000004"}))
    (run_copy / "summary.json").unlink()
    flip_tensor_byte(checkpoints / "step-00000004" / "state.safetensors")
    before = (run_copy / "student.safetensors").read_bytes()
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert "step-00000004/state.safetensors does not match its recorded sha256" in message
    assert "no earlier checkpoint is kept: start the run again with --out" in message
    assert (run_copy / "student.safetensors").read_bytes() == before and not (run_copy / "summary.json").exists()


def test_a_checkpoint_from_before_checksums_resumes_with_a_note(run_copy):
    """Runs on disk today have no sha256.json: they resume, and the user is told they were not verified."""
    for folder in (run_copy / "checkpoints").glob("step-*"):
        (folder / "sha256.json").unlink()
        meta = json.loads((folder / "state.json").read_text())
        del meta["checksums"]
        (folder / "state.json").write_text(json.dumps(meta))
    result = invoke("distill", "--resume", str(run_copy))
    assert result.exit_code == 0, result.output
    assert "no checksums" in " ".join(result.output.split())


def test_a_checkpoint_that_lost_its_checksums_is_refused(run_copy):
    (run_copy / "checkpoints" / "step-00000008" / "sha256.json").unlink()
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert "has no sha256.json" in message and "--from-checkpoint step-00000004" in message


def test_resume_without_a_checkpoint_is_refused_and_nothing_is_removed(run_copy):
    """A run stopped before its first checkpoint: --resume would silently start from step 0."""
    shutil.rmtree(run_copy / "checkpoints")
    before = sorted(p.name for p in run_copy.iterdir())
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert f"{run_copy} has no checkpoint to resume from" in message and "--out" in message
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_a_lost_pointer_or_a_wrong_name_says_which_checkpoints_there_are(run_copy):
    (run_copy / "checkpoints" / "latest.json").unlink()
    message = one_line(invoke("distill", "--resume", str(run_copy)))
    assert "no latest.json" in message and "--from-checkpoint step-00000008" in message
    message = one_line(invoke("distill", "--resume", str(run_copy), "--from-checkpoint", "step-00000005"))
    assert "no checkpoint step-00000005" in message and "step-00000004, step-00000008" in message
    message = one_line(invoke("distill", "--data", "x", "--out", str(run_copy.parent / "new"),
                              "--from-checkpoint", "step-00000004", "--teacher", TEACHER, "--classes", "x",
                              "--random-init"))
    assert "--from-checkpoint" in message and "--resume" in message


def test_a_damaged_student_file_is_rewritten_from_the_checkpoint_on_resume(run_copy, finished):
    """student.safetensors (what export and eval read) is recorded by the checkpoint written with it."""
    from promptkd_edge.formats.run import matches_checkpoint

    student = run_copy / "student.safetensors"
    assert matches_checkpoint(run_copy / "checkpoints", "step-00000008", student) is True
    flip_tensor_byte(student)
    assert matches_checkpoint(run_copy / "checkpoints", "step-00000008", student) is False
    result = invoke("distill", "--resume", str(run_copy))
    assert result.exit_code == 0, result.output
    assert "rewritten from the checkpoint" in " ".join(result.output.split())
    assert same_weights(student, finished.parent / "reference.safetensors")
    assert matches_checkpoint(run_copy / "checkpoints", "step-00000008", student) is True


def test_the_student_record_is_of_its_content_not_its_header_order(finished, tmp_path):
    """safetensors writers may order the header differently each time: the record must not depend on it."""
    from promptkd_edge.formats.run import content_sha256

    data = (finished / "student.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    reordered = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    assert len(reordered) <= n
    reordered += b" " * (n - len(reordered))  # the same length: the offsets stay valid
    (tmp_path / "same.safetensors").write_bytes(data[:8] + reordered + data[8 + n:])
    assert (tmp_path / "same.safetensors").read_bytes() != data
    assert content_sha256(tmp_path / "same.safetensors") == content_sha256(finished / "student.safetensors")
    changed = bytearray(data)
    changed[-1] ^= 0x01
    (tmp_path / "changed.safetensors").write_bytes(bytes(changed))
    assert content_sha256(tmp_path / "changed.safetensors") != content_sha256(finished / "student.safetensors")


def _torch_content_sha256(path):
    """The content digest as earlier versions computed it, through torch (the digests their checkpoints hold)."""
    import hashlib

    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        h.update(repr(sorted((f.metadata() or {}).items())).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key).contiguous()
            h.update(f"\n{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_the_content_digest_read_without_torch_is_the_one_torch_gave(tmp_path):
    """formats/run.py reads the digest from the file's bytes (export needs no torch for it): every dtype, a scalar,
    an empty tensor and metadata give what the torch reading gave, so earlier checkpoints' records still match."""
    from safetensors.torch import save_file

    from promptkd_edge.formats.run import content_sha256

    g = torch.Generator().manual_seed(0)
    tensors = {f"t_{dt}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 50).to(dt)
               for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                          torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)}
    tensors |= {"flag": torch.randn(4, generator=g) > 0, "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
                "prompts.0": torch.randn(2, 4, 8, generator=g)}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt", "b": "2"})
    assert content_sha256(tmp_path / "a.safetensors") == _torch_content_sha256(tmp_path / "a.safetensors")
    save_file({"x": torch.ones(2)}, str(tmp_path / "b.safetensors"))  # no metadata
    assert content_sha256(tmp_path / "b.safetensors") == _torch_content_sha256(tmp_path / "b.safetensors")


def test_each_checkpoint_records_the_sha256_of_its_files(finished):
    import hashlib

    for folder in (finished / "checkpoints").glob("step-*"):
        sums = json.loads((folder / "sha256.json").read_text())["sha256"]
        assert sums == {f: hashlib.sha256((folder / f).read_bytes()).hexdigest()
                        for f in ("state.safetensors", "state.json")}
        meta = json.loads((folder / "state.json").read_text())
        assert {"epoch", "step", "step_in_epoch"} <= set(meta)  # what `pkd export` reads stays
    last = json.loads((finished / "checkpoints" / "step-00000008" / "sha256.json").read_text())["content_sha256"]
    assert set(last) == {"student.safetensors"}


# ---------------------------------------------------------------------------------------------- 13: teacher shots

CLASSES = ["ant", "bee", "cat"]


def teacher_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["teacher", "--random-init", "--teacher", TEACHER, "--data", str(data), "--shots", "4", "--classes",
            "all", "--vision-depth", "2", "--text-depth", "2", "--epochs", "1", "--warmup-epochs", "0",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--text-chunk", "2", "--out", str(out),
            *extra]


def drawn(data: Path, seed: int = 1, max_bad: float = 0.9):
    from promptkd_edge.train.teacher import few_shot

    labeled = LabeledImages.scan(data)
    return few_shot(labeled, list(range(len(labeled.classes))), 4, seed, max_bad)


def test_an_unreadable_shot_is_replaced_by_its_own_class_and_named(tmp_path):
    data = write_images(tmp_path / "shots", 15, classes=CLASSES, seed=2)  # 5 images per class
    clean = drawn(data)
    victim = next(p for p, label in clean.samples if label == 0)  # a shot of 'ant' that the draw picks
    victim.write_bytes(b"not an image")
    shots = drawn(data)
    assert shots.per_class == [4, 4, 4]
    for path, label in shots.samples:  # each shot is a readable image of its own class
        assert path.parent.name == CLASSES[label] and read_rgb(path)[0] is not None
    assert [s for s in shots.samples if s[1] > 0] == [s for s in clean.samples if s[1] > 0]  # others: same draw
    assert set(shots.bad.found) == {str(victim)}

    out = tmp_path / "teacher"
    result = invoke(*teacher_args(data, out, "--max-bad-fraction", "0.5", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shots"] == 4 and summary["shots_min"] == summary["shots_max"] == 4
    assert summary["short_classes"] == {} and summary["bad_images"] == 1
    assert (out / "bad_images.txt").read_text().split("\t")[0] == str(victim)
    assert json.loads((out / "config.json").read_text())["resolved"]["shots_per_class"] == [4, 4, 4]


def test_a_class_short_of_readable_shots_trains_on_fewer_and_says_so(tmp_path):
    data = write_images(tmp_path / "shots", 15, classes=CLASSES, seed=2)
    for p in sorted((data / "bee").iterdir())[:2]:
        p.write_bytes(b"broken")
    out = tmp_path / "teacher"
    result = invoke(*teacher_args(data, out, "--max-bad-fraction", "0.5"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "shots per class: 3 to 4 of the 4 asked" in text and "bee 3" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["short_classes"] == {"bee": 3} and summary["shots_min"] == 3 and summary["bad_images"] == 2
    assert json.loads((out / "config.json").read_text())["resolved"]["shots_per_class"] == [4, 3, 4]


def test_teacher_applies_the_bad_fraction_limit_and_leaves_nothing(tmp_path):
    data = write_images(tmp_path / "shots", 15, classes=CLASSES, seed=2)
    next(p for p, label in drawn(data).samples if label == 2).write_bytes(b"broken")
    out = tmp_path / "teacher"
    message = one_line(invoke(*teacher_args(data, out)))  # default limit 1%: 1 of 13 read is over it
    assert "1 of 13 images are unreadable (more than 1.0%" in message and "raise --max-bad-fraction" in message
    assert not out.exists() and "loading teacher" not in message  # found by the draw, before any model loads
    for p in (data / "ant").iterdir():
        p.write_bytes(b"broken")
    message = one_line(invoke(*teacher_args(data, out, "--max-bad-fraction", "0.9")))
    assert "class 'ant' has no readable image" in message and not out.exists()


# ---------------------------------------------------------------------------------------------- 21: abort advice

def break_images(paths: list[Path]) -> dict[Path, bytes]:
    kept = {p: p.read_bytes() for p in paths}
    for p in paths:
        p.write_bytes(b"broken now")
    return kept


def test_the_bad_image_abort_advice_can_be_followed_on_resume(tmp_path):
    """Images that break after the first epoch's checkpoint: the printed advice resumes the run, both ways."""
    data = write_images(tmp_path / "data", 20)
    cfg = tiny_config(tmp_path, data=str(data), max_bad_fraction=0.1)  # 5 steps an epoch, 2 epochs
    distill(cfg, tmp_path / "whole")
    victims = list_images(data)[:4]
    kept: dict[Path, bytes] = {}

    def break_after_epoch_one(state):
        if state.step == 5:
            kept.update(break_images(victims))

    with pytest.raises(PkdError) as aborted:
        distill(cfg, tmp_path / "run", on_checkpoint=break_after_epoch_one)
    message = str(aborted.value)
    assert re.search(r"[34] of 20 images are unreadable \(more than 10.0%", message)
    listed = (tmp_path / "run" / "bad_images.txt").read_text()
    assert f"listed in {tmp_path / 'run' / 'bad_images.txt'}" in message and str(victims[0]) in listed
    commands = re.findall(r"`(pkd distill --resume [^`]*)`", message)
    assert len(commands) == 2 and "--max-bad-fraction" in commands[1]
    shutil.copytree(tmp_path / "run", tmp_path / "run2")

    # a higher limit, as printed: the run ends, the four broken images skipped and named
    result = invoke(*shlex.split(commands[1])[1:])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["bad_images"] == 4
    assert sorted(line.split("\t")[0] for line in (tmp_path / "run" / "bad_images.txt").read_text().splitlines()) \
        == sorted(map(str, victims))

    # the images fixed in place, then the plain resume as printed: the same weights as a run that never broke
    for p, content in kept.items():
        p.write_bytes(content)
    result = invoke(*shlex.split(commands[0].replace(str(tmp_path / "run"), str(tmp_path / "run2")))[1:])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["bad_images"] == 0
    assert not (tmp_path / "run2" / "bad_images.txt").exists()
    assert same_weights(tmp_path / "run2" / "student.safetensors", tmp_path / "whole" / "student.safetensors")


def test_removing_images_is_refused_on_resume_with_advice_that_works(tmp_path):
    data = write_images(tmp_path / "data", 20)
    distill(tiny_config(tmp_path, data=str(data), epochs=1, warmup_epochs=0), tmp_path / "run")
    first = list_images(data)[0]
    first.rename(first.with_name("renamed.png"))  # the same count, another list: other views for every index
    message = one_line(invoke("distill", "--resume", str(tmp_path / "run")))
    assert "renamed, moved or replaced" in message and "start a new run with --out" in message
    (first.with_name("renamed.png")).unlink()
    message = one_line(invoke("distill", "--resume", str(tmp_path / "run")))
    assert "images was 20, now 19" in message and "start a new run with --out" in message


def test_a_fresh_run_that_aborts_before_a_checkpoint_can_rerun_as_advised(tmp_path):
    """No checkpoint yet: the run's folder is left as it was (even one that existed empty), so the same command
    with a higher limit works."""
    data = write_images(tmp_path / "data", 20)
    break_images(list_images(data)[:4])
    (tmp_path / "run").mkdir()
    with pytest.raises(PkdError, match="fix or remove them, or raise --max-bad-fraction"):
        distill(tiny_config(tmp_path, data=str(data), max_bad_fraction=0.1), tmp_path / "run")
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())
    result = distill(tiny_config(tmp_path, data=str(data), max_bad_fraction=0.3, epochs=1, warmup_epochs=0),
                     tmp_path / "run")
    assert result.bad_images == 4


def test_a_shot_unreadable_after_the_draw_is_skipped_never_replaced(tmp_path, monkeypatch):
    """Training never swaps in another class's image: a shot that breaks after the draw is left out of its batch."""
    import promptkd_edge.train.teacher as stage1

    data = write_images(tmp_path / "shots", 12, classes=CLASSES, seed=2)  # 4 per class: every image is a shot
    broken = sorted((data / "bee").iterdir())[0]
    broken.write_bytes(b"broken after the draw")
    monkeypatch.setattr(stage1, "read_rgb", lambda path: (None, None))  # the draw sees it readable
    labels: list[int] = []
    real = stage1.teacher_losses
    monkeypatch.setattr(stage1, "teacher_losses", lambda *a, **kw: labels.extend(a[2].tolist()) or real(*a, **kw))
    result = invoke(*teacher_args(data, tmp_path / "teacher", "--max-bad-fraction", "0.5"))
    assert result.exit_code == 0, result.output
    assert sorted(labels) == [0] * 4 + [1] * 3 + [2] * 4  # bee's broken shot left out, no other image in its place
    summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert summary["bad_images"] == 1
    assert (tmp_path / "teacher" / "bad_images.txt").read_text().startswith(str(broken))


def test_saving_after_a_resume_from_an_earlier_checkpoint_keeps_the_good_ones(tmp_path):
    """Resumed from step 4 past a damaged step 8: the saves that follow prune among steps up to theirs, so the
    good checkpoints are kept and step 8 is replaced when the run gets there."""
    import torch

    from promptkd_edge.formats.run import checkpoint_names
    from promptkd_edge.train.checkpoint import TrainingState, load_latest, save_checkpoint

    def state(step: int) -> TrainingState:
        return TrainingState(epoch=0, step=step, step_in_epoch=step, student={"w": torch.full((2,), float(step))},
                             optimizer={"state": {}, "param_groups": []}, scheduler={}, scaler=None, extra={})

    for step in (4, 8):
        save_checkpoint(tmp_path, state(step))
    flip_tensor_byte(tmp_path / "step-00000008" / "state.safetensors")
    assert load_latest(tmp_path, "step-00000004").step == 4
    for step in (5, 6):
        save_checkpoint(tmp_path, state(step))
    assert checkpoint_names(tmp_path) == ["step-00000005", "step-00000006", "step-00000008"]
    assert load_latest(tmp_path).step == 6
    save_checkpoint(tmp_path, state(8))
    assert checkpoint_names(tmp_path) == ["step-00000006", "step-00000008"]
    assert load_latest(tmp_path).student["w"].tolist() == [8.0, 8.0]  # the damaged one replaced, and verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_unreadable_image_whose_name_is_not_utf8_is_listed_not_a_traceback(tmp_path):
    """A file name that is not UTF-8 (old archives, other locales): with the teacher cache (its key hashes the
    listing) and in bad_images.txt, one line per image."""
    import os

    data = write_images(tmp_path / "data", 15)
    odd = Path(os.fsdecode(os.fsencode(str(data / "part0")) + b"/caf\xe9.png"))
    odd.write_bytes(b"not an image")
    result = invoke("distill", "--random-init", "--teacher", TEACHER, "--student", "pkd-tiny-student",
                    "--classes", str(tiny_config(tmp_path).classes), "--data", str(data), "--epochs", "1",
                    "--warmup-epochs", "0", "--batch-size", "4", "--workers", "0", "--prompt-depth", "3",
                    "--device", "cpu", "--teacher-cache", "1", "--cache-dir", str(tmp_path / "cache"),
                    "--max-bad-fraction", "0.1", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / "bad_images.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{data / 'part0'}/caf\\xe9.png\tnot an image file PIL can read"]
