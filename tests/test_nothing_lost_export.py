"""Issue 18, bundles and destinations: `--overwrite` replaces only a bundle, work folders are removed only when
provably dead here, an unfinished run is exported only when asked (and says which state), every file a reader opens
is covered by manifest.json, a broken manifest and an unwritable destination are one line (exit 2)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.errors import PkdError
from promptkd_edge.export import bundle as bundle_mod
from promptkd_edge.export import out_folder
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.runtime import Classifier
from promptkd_edge.utils import files as files_mod
from promptkd_edge.utils.progress import LineProgress

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def one_line_error(result, *fragments: str) -> None:
    """Exit 2, one `error:` line holding every fragment, no traceback."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and out.count("error:") == 1, out
    line = out.strip().replace("\n", " ")
    for fragment in fragments:
        assert fragment in line, (fragment, out)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its sha256: what must survive a refused command unchanged."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the shared tiny run (a test that fails on old code may delete it)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def bundle(tiny_run, module_dir) -> Path:
    out = module_dir / "bundle"
    export_run(tiny_run, out, ExportOptions(parity_images=2))
    return out


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------------------- case 1


def test_overwrite_refuses_the_run_a_folder_around_it_a_file_and_a_parent_of_other_files(run_copy, tmp_path):
    before = snapshot(run_copy)
    one_line_error(cli("export", run_copy, "--out", run_copy, "--overwrite", "--parity-images", "2"),
                   "is the run being exported")
    one_line_error(cli("export", run_copy, "--out", run_copy / "bundle", "--parity-images", "2"),
                   "is inside the run being exported")
    one_line_error(cli("export", run_copy, "--out", tmp_path, "--overwrite", "--parity-images", "2"),
                   "holds the run being exported")
    assert snapshot(run_copy) == before and not (run_copy / "bundle").exists()

    parent = tmp_path / "projects"
    (parent / "photos").mkdir(parents=True)
    (parent / "photos" / "cat.jpg").write_bytes(b"my only copy")
    (parent / "notes.txt").write_text("keep")
    kept = snapshot(parent)
    one_line_error(cli("export", run_copy, "--out", parent, "--overwrite", "--parity-images", "2"),
                   "--overwrite replaces only a bundle", "has no manifest.json")
    assert snapshot(parent) == kept

    (parent / "manifest.json").write_text('{"format": "something-else"}')  # a manifest, but not a bundle's
    one_line_error(cli("export", run_copy, "--out", parent, "--overwrite", "--parity-images", "2"),
                   "--overwrite replaces only a bundle", "not a promptkd-edge bundle manifest")
    assert (parent / "photos" / "cat.jpg").read_bytes() == b"my only copy"

    a_file = tmp_path / "report.pdf"
    a_file.write_bytes(b"%PDF")
    one_line_error(cli("export", run_copy, "--out", a_file, "--overwrite", "--parity-images", "2"),
                   "exists and is not a folder")
    assert a_file.read_bytes() == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects", "report.pdf", "run"]  # no work folder left


def test_overwrite_replaces_a_bundle_in_one_step_and_only_a_bundle_holding_nothing_else(run_copy, tmp_path,
                                                                                       monkeypatch):
    out = tmp_path / "bundles" / "pets"
    assert cli("export", run_copy, "--out", out, "--parity-images", "2").exit_code == 0
    (out / "README.txt").write_text("how we deploy this")
    one_line_error(cli("export", run_copy, "--out", out, "--overwrite", "--head", "both", "--parity-images", "2"),
                   "holds files that are not part of it (README.txt)")
    assert (out / "README.txt").read_text() == "how we deploy this"
    (out / "README.txt").unlink()

    probe_a, probe_b = tmp_path / "probe-a", tmp_path / "probe-b"
    probe_a.mkdir()
    probe_b.mkdir()
    (probe_a / "a").write_text("a")
    if not files_mod.exchange(probe_a, probe_b):
        pytest.skip("this file system cannot swap two folders in one step (renameat2 RENAME_EXCHANGE)")
    assert (probe_b / "a").read_text() == "a" and not list(probe_a.iterdir())
    real_replace = os.replace

    def no_moving_aside(src, dst):  # the two-step fallback would first move the bundle away from `out`
        assert Path(src) != out, "the bundle left its place before the new one was there"
        return real_replace(src, dst)

    monkeypatch.setattr(out_folder.os, "replace", no_moving_aside)
    result = cli("export", run_copy, "--out", out, "--overwrite", "--head", "both", "--parity-images", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["model"]["head"] == "both"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pets"] and not (out / files_mod.OWNER_FILE).exists()
    Classifier.from_bundle(out, backend="onnxruntime")  # a complete, verified bundle


def test_two_step_replacement_where_the_file_system_cannot_swap(run_copy, tmp_path, monkeypatch):
    out = tmp_path / "b"
    export_run(run_copy, out, ExportOptions(parity_images=2))
    monkeypatch.setattr(out_folder, "exchange", lambda a, b: False)
    m = export_run(run_copy, out, ExportOptions(parity_images=2, head="embeddings", overwrite=True))
    assert m.model.head == "embeddings" and [p.name for p in tmp_path.iterdir() if p.name != "run"] == ["b"]


def test_out_dot_dotdot_and_root_are_refused(run_copy, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "here").mkdir(parents=True)
    (work / "here" / "data.txt").write_text("x")
    monkeypatch.chdir(work / "here")
    for out, what in ((".", "the current folder"), ("..", "a folder holding the current folder"),
                      ("/", "the root folder")):
        one_line_error(cli("export", run_copy, "--out", out, "--overwrite", "--parity-images", "2"),
                       f"--out {out} is {what} (")
    assert (work / "here" / "data.txt").read_text() == "x" and sorted(os.listdir(work)) == ["here"]


# ---------------------------------------------------------------------------------------------------- case 3


def owned(folder: Path, **record) -> Path:
    """A work folder as an export leaves it when killed, with the owner record it wrote first."""
    (folder / "engines").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 2**20)
    (folder / files_mod.OWNER_FILE).write_text(json.dumps({**files_mod.this_machine(), **record}))
    return folder


def test_stale_work_folders_are_removed_only_when_provably_dead_here(tiny_run, tmp_path):
    me = files_mod.this_machine()
    pid = dead_pid()
    dead_here = owned(tmp_path / f".a.tmp-{pid}", pid=pid)
    rebooted = owned(tmp_path / f".b.tmp-{os.getpid()}", boot_id="another-boot")  # this pid is alive, but
    other_host = owned(tmp_path / f".c.tmp-{pid}", pid=pid, host=me["host"] + "-nfs-peer")  # another host's
    live_here = owned(tmp_path / f".d.tmp-{os.getpid()}")
    old_version = tmp_path / f".e.tmp-{pid}"  # no owner record: made by an older promptkd-edge
    (old_version / "engines").mkdir(parents=True)
    log = io.StringIO()
    export_run(tiny_run, tmp_path / "new", ExportOptions(parity_images=2), LineProgress(stream=log))
    text = log.getvalue()
    assert not dead_here.exists() and not rebooted.exists()
    assert f"removed {dead_here} (1.0 MB), left by an interrupted export" in text
    assert other_host.exists() and live_here.exists() and old_version.exists()
    assert f"left {other_host} alone: process {pid} on host {me['host']}-nfs-peer made it" in text
    assert f"left {old_version} alone: it has no owner record" in text
    assert f"left {live_here} alone: process {os.getpid()} is still running" in text
    assert not (tmp_path / "new" / files_mod.OWNER_FILE).exists()


def test_a_held_lock_keeps_a_folder_whose_record_looks_dead(tmp_path):
    pid = dead_pid()
    log = io.StringIO()
    with files_mod.work_folder(tmp_path / f".x.tmp-{pid}") as folder:
        record = {**files_mod.this_machine(), "pid": pid}
        (folder / files_mod.OWNER_FILE).write_text(json.dumps(record))  # the same inode: its lock is kept
        out_folder.clean_leftovers(tmp_path, r"\.(.+)\.(tmp|old)-(\d+)", LineProgress(stream=log))
        assert folder.exists() and "holds its lock" in log.getvalue()
    assert not folder.exists()


def test_engine_staging_of_another_host_is_left_alone(bundle, tmp_path):
    b = Path(shutil.copytree(bundle, tmp_path / "b"))
    pid = dead_pid()
    theirs = owned(b / f".engine-{pid}", pid=pid, host="jetson-7")
    mine = owned(b / f".engine-{pid + 1}", pid=pid)
    log = io.StringIO()
    out_folder.clean_leftovers(b, r"\.engine-(\d+)", LineProgress(stream=log))
    assert theirs.exists() and not mine.exists() and "on host jetson-7" in log.getvalue()


def test_the_owner_record_is_written_first_in_the_work_folder(run_copy, tmp_path, monkeypatch):
    seen = {}
    real = bundle_mod._export_into

    def spy(tmp, *args, **kwargs):
        seen["files"] = sorted(p.name for p in tmp.iterdir())
        seen["owner"] = json.loads((tmp / files_mod.OWNER_FILE).read_text())
        return real(tmp, *args, **kwargs)

    monkeypatch.setattr(bundle_mod, "_export_into", spy)
    export_run(run_copy, tmp_path / "b", ExportOptions(parity_images=2))
    assert seen["files"] == [files_mod.OWNER_FILE]
    assert {k: seen["owner"][k] for k in ("pid", "host", "boot_id")} == files_mod.this_machine()


# ---------------------------------------------------------------------------------------------------- case 9


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def killed_run(module_dir) -> Path:
    """A run killed mid-epoch: checkpoints every step, the process dies after step 3 (of 2 epochs x 4 steps)."""
    from promptkd_edge.train.distill import distill

    def die(state):
        if state.step == 3:
            raise Killed

    root = module_dir / "killed"
    root.mkdir()
    with pytest.raises(Killed):
        distill(tiny_config(root, checkpoint_every=1), root / "run", on_checkpoint=die)
    assert not (root / "run" / "summary.json").exists()
    return root / "run"


def test_an_unfinished_run_is_refused_unless_asked_and_says_what_was_exported(killed_run, tmp_path):
    latest = json.loads((killed_run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    state = json.loads((killed_run / "checkpoints" / latest / "state.json").read_text())
    one_line_error(cli("export", killed_run, "--out", tmp_path / "b", "--parity-images", "2"),
                   "did not finish (no summary.json)", f"checkpoint {latest}", "--allow-incomplete")
    assert not (tmp_path / "b").exists()
    result = cli("export", killed_run, "--out", tmp_path / "b", "--parity-images", "2", "--allow-incomplete")
    assert result.exit_code == 0, result.output
    assert f"exported from checkpoint {latest} of an unfinished run" in result.output.replace("\n", " ")
    source = json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]
    assert source["complete"] is False and source["checkpoint"] == latest
    assert (source["epoch"], source["step"], source["step_in_epoch"]) == (state["epoch"], state["step"],
                                                                         state["step_in_epoch"])
    assert source["step"] == 3 and source["epochs"] == 2 and source["student_matches_checkpoint"] is True


def test_a_student_written_after_the_last_checkpoint_is_not_recorded_as_it(killed_run, tmp_path):
    """distill writes student.safetensors, then its checkpoint: a kill between leaves a newer student, which must
    not be recorded as the checkpoint's step."""
    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(killed_run, tmp_path / "run"))
    tensors = load_file(str(run / "student.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01  # one more optimizer step's worth of change
    save_file(tensors, str(run / "student.safetensors"), metadata=_metadata(killed_run / "student.safetensors"))
    result = cli("export", run, "--out", tmp_path / "b", "--parity-images", "2", "--allow-incomplete")
    assert result.exit_code == 0, result.output
    assert "is not its latest checkpoint" in result.output.replace("\n", " ")
    source = json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]
    assert source["complete"] is False and source["student_matches_checkpoint"] is False


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_a_finished_run_records_its_last_step(bundle, tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    source = json.loads((bundle / "manifest.json").read_text())["source"]
    assert source["complete"] is True and (source["epoch"], source["step"]) == (summary["epochs"], summary["steps"])


# ---------------------------------------------------------------------------------------------------- case 11/18


def altered(bundle: Path, tmp_path: Path, change) -> Path:
    b = Path(shutil.copytree(bundle, tmp_path / "altered"))
    manifest = json.loads((b / "manifest.json").read_text())
    change(b, manifest)
    (b / "manifest.json").write_text(json.dumps(manifest))
    return b


def rename_first_class(b: Path, manifest: dict) -> None:
    del manifest["files"]["classes.json"]
    classes = json.loads((b / "classes.json").read_text())
    classes["names"][0] = "renamed"
    (b / "classes.json").write_text(json.dumps(classes))


@pytest.mark.parametrize(("change", "message"), [
    (rename_first_class, "manifest.json does not list classes.json; the bundle was altered"),
    (lambda b, m: m["files"].pop("preprocess.json"), "manifest.json does not list preprocess.json"),
    (lambda b, m: m["files"].pop("class_vectors.safetensors"), "does not list class_vectors.safetensors"),
    (lambda b, m: m["files"].pop("student.safetensors"), "does not list student.safetensors"),
    (lambda b, m: m["files"].pop("model.onnx"), "manifest.json does not list model.onnx"),
    (lambda b, m: m["model"].update(file="other.onnx"), "manifest.json does not list other.onnx"),
    (lambda b, m: m["model"].update(file="../bundle/model.onnx"), "names '../bundle/model.onnx', a path outside"),
    (lambda b, m: m["files"].update({"/etc/hostname": "0" * 64}), "names '/etc/hostname', a path outside"),
    (lambda b, m: m["files"].update({"engines\\..\\..\\x": "0" * 64}), "a path outside"),
    (lambda b, m: m["files"].update({"C:/x": "0" * 64}), "names 'C:/x', a path outside"),
    (lambda b, m: m.pop("files"), "manifest.json: manifest lacks 'files'"),
    (lambda b, m: m["model"].pop("file"), "manifest.json: manifest model lacks 'file'"),
    (lambda b, m: m["model"].update(num_classes="3"), "manifest model has 'num_classes' = '3', which is not an"),
    (lambda b, m: m.update(files=["model.onnx"]), "manifest has 'files' = ['model.onnx'], which is not an object"),
])
def test_a_manifest_that_does_not_cover_what_is_read_is_one_line(bundle, tmp_path, change, message):
    b = altered(bundle, tmp_path, change)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with pytest.raises(PkdError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Classifier.from_bundle(b)
    one_line_error(cli("predict", b, image), message)
    one_line_error(cli("doctor", "--bundle", b), message)


def test_bench_of_a_broken_bundle_is_one_line(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    b = altered(bundle, tmp_path, lambda b, m: m["files"].pop("model.onnx"))
    one_line_error(cli("bench", b), "manifest.json does not list model.onnx")
    b2 = altered(bundle, tmp_path / "2", lambda b, m: m.pop("files"))
    one_line_error(cli("bench", b2), "manifest lacks 'files'")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench")]


# ---------------------------------------------------------------------------------------------------- case 19


def test_a_full_disk_is_one_line_naming_the_path_and_the_bundle_is_kept(run_copy, tmp_path, monkeypatch):
    out = tmp_path / "b"
    export_run(run_copy, out, ExportOptions(parity_images=2))
    kept = snapshot(out)

    def full(bundle, manifest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(bundle / "manifest.json"))

    monkeypatch.setattr(bundle_mod, "write_manifest", full)
    result = cli("export", run_copy, "--out", out, "--overwrite", "--parity-images", "2")
    one_line_error(result, "cannot write ", "manifest.json: No space left on device (ENOSPC)")
    assert snapshot(out) == kept and [p.name for p in tmp_path.iterdir() if p.name != "run"] == ["b"]
    with pytest.raises(OSError, match="No space left"):  # --debug keeps the traceback
        runner.invoke(app, ["--debug", "export", str(run_copy), "--out", str(out), "--overwrite",
                            "--parity-images", "2"], catch_exceptions=False)


def test_a_native_writer_reporting_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as caught:
        files_mod.write_tagged_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)}, "f", {})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_that_looks_like_a_bug_keeps_its_traceback(monkeypatch, run_copy, tmp_path):
    def bug(*args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")  # no file named, not a user's doing

    monkeypatch.setattr(bundle_mod, "write_manifest", bug)
    result = cli("export", run_copy, "--out", tmp_path / "b", "--parity-images", "2")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


def test_destinations_that_cannot_be_written_are_one_line_for_every_command(run_copy, bundle, tmp_path,
                                                                          monkeypatch):
    """A path through a regular file (ENOTDIR) fails the same for root as for anyone: every command that writes."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = tiny_config(tmp_path)
    distill = ["distill", "--teacher", cfg.teacher, "--student", cfg.student, "--classes", cfg.classes, "--data",
               cfg.data, "--epochs", "2", "--batch-size", "4", "--workers", "0", "--prompt-depth", "3",
               "--device", "cpu", "--random-init", "--cache-dir", cfg.cache_dir]
    for args, fragments in (
            ([*distill, "--out", blocker / "run"], (f"cannot use {blocker}", "run", "Not a directory (ENOTDIR)")),
            (["export", run_copy, "--out", blocker / "b", "--parity-images", "2"],
             (f"cannot use {blocker}", "b", "Not a directory (ENOTDIR)")),
            (["export", bundle, "--triton", blocker / "repo"],
             (f"cannot write the Triton entry {blocker / 'repo'}", "Not a directory (ENOTDIR on")),
    ):
        one_line_error(cli(*args), *fragments)
    assert blocker.read_text() == "x"


def _can_mount() -> bool:
    """Whether this process may mount a tmpfs in a private mount namespace (root in CI and on these machines)."""
    import shutil as sh

    if os.geteuid() != 0 or sh.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


def _pkd_on_tmpfs(folder: Path, options: str, *args) -> subprocess.CompletedProcess:
    """`pkd ARGS` in a private mount namespace where `folder` is a fresh tmpfs mounted with `options` (nothing leaks
    out of the namespace, the mount goes with the process)."""
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", options, str(folder), sys.executable, "-m",
                           "promptkd_edge", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("options", "message"), [("ro", "Read-only file system (EROFS)"),
                                                  ("size=96k", "No space left on device (ENOSPC)")])
def test_a_read_only_or_full_file_system_is_one_line(run_copy, tmp_path, options, message):
    """A real read-only mount and a real full disk (a 96 kB tmpfs: the bundle's model does not fit) as root; the
    permission bits of a chmod 0o500 folder otherwise."""
    out = tmp_path / "mnt"
    out.mkdir()
    if _can_mount():
        done = _pkd_on_tmpfs(out, options, "export", run_copy, "--out", out / "b", "--parity-images", "2")
        text = done.stdout + done.stderr
        assert done.returncode == 2 and "Traceback" not in text, text
        line = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and message in line[0] and str(out) in line[0], text
        assert not any(out.iterdir())  # the namespace's tmpfs is gone with it: nothing was written here
    elif os.geteuid() != 0 and options == "ro":
        out.chmod(0o500)
        try:
            one_line_error(cli("export", run_copy, "--out", out / "b", "--parity-images", "2"),
                           f"cannot use {out}", "Permission denied (EACCES)")
        finally:
            out.chmod(0o700)
    else:
        pytest.skip("needs root's tmpfs mounts (ro, full) or, for ro, a user whom permission bits stop")
