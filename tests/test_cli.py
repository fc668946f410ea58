"""The `pkd` CLI: help with examples, JSON output, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
from conftest import NAMES, STUDENT, TEACHER, pkd_process, write_images
from typer.testing import CliRunner

from promptkd_edge.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


COMMANDS = ["teacher", "distill", "eval", "classes", "demo", "export", "predict", "doctor", "bench", "models"]


def test_every_command_is_covered_by_the_help_test():
    from promptkd_edge.cli import app

    assert {c.name or c.callback.__name__.rstrip("_") for c in app.registered_commands} == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.output and f"pkd {command}" in result.output


# Options whose command-line spelling differs from the config value: (command, option) -> (CLI, config) defaults.
SPELLED = {("bench", "backends"): ("all", None), ("bench", "batch_sizes"): ("1,8,32", [1, 8, 32])}


def test_option_defaults_are_the_config_defaults():
    """Every option named like a field of the config its command builds has that field's default (they cannot
    drift apart), and each command has most of its config's fields as options."""
    import dataclasses

    import typer

    from promptkd_edge.bench.harness import BenchConfig
    from promptkd_edge.export.options import ExportOptions
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions
    from promptkd_edge.train.config import DistillConfig, TeacherTuneConfig

    commands = typer.main.get_command(app).commands
    trt_only = ("workspace_gib", "opt_level", "timing_cache")  # --precision is ExportOptions'
    for command, config, at_least in (("distill", DistillConfig, 33), ("teacher", TeacherTuneConfig, 30),
                                      ("export", ExportOptions, 12), ("export", TrtBuildOptions, 3),
                                      ("bench", BenchConfig, 16)):
        fields = {f.name: f for f in dataclasses.fields(config) if config is not TrtBuildOptions or f.name in trt_only}
        params = [p for p in commands[command].params if p.name in fields]
        assert len(params) >= at_least, (command, [p.name for p in params])
        for p in params:
            f = fields[p.name]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                assert p.required, (command, p.name)  # bench's TARGET
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            expected = SPELLED.get((command, p.name), (default, default))
            assert (p.default, default) == expected, (command, p.name, p.default, default)


def test_version_and_models():
    assert invoke("--version").output.strip().startswith("promptkd-edge ")
    result = invoke("models", "--filter", "pkd-tiny", "--json")
    tiny = {"tags": [], "family": "openclip-vit"}
    timm_vit = {"tags": [], "family": "timm-vit"}
    assert json.loads(result.output) == {TEACHER: tiny, STUDENT: tiny, f"{TEACHER}-quickgelu": tiny,
                                         f"{STUDENT}-quickgelu": tiny, "pkd-tiny-map-vit": timm_vit,
                                         "pkd-tiny-reg-vit": timm_vit, "pkd-tiny-mci": timm_vit,
                                         "pkd-tiny-eva": timm_vit, "pkd-tiny-pe": timm_vit,
                                         "pkd-tiny-hybrid": {"tags": [], "family": "hybrid"},
                                         "pkd-tiny-convnext": {"tags": [], "family": "conv"}}
    listing = invoke("models", "--filter", "RN50").output
    assert "openclip-vit: deep visual prompts" in listing  # what each family's students get
    assert "RN50 [conv]: openai, yfcc15m, cc12m" in listing
    assert "hybrid: SSF per-channel scale and shift" in listing


def _distill_args(tmp_path, **overrides):
    args = {"--teacher": TEACHER, "--student": STUDENT, "--classes": str(tmp_path / "classes.txt"),
            "--data": str(tmp_path / "data"), "--out": str(tmp_path / "run"), "--epochs": "2",
            "--batch-size": "4", "--workers": "0", "--prompt-depth": "2", "--cache-dir": str(tmp_path / "cache")}
    args.update(overrides)
    return ["distill", "--random-init", *[x for k, v in args.items() if v is not None for x in (k, v)]]


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    write_images(tmp_path / "data", 8)
    return tmp_path


@pytest.mark.parametrize("overrides,message", [
    ({"--data": "missing"}, "data not found"),
    ({"--teacher": "ViT-Q-99"}, "unknown open_clip architecture 'ViT-Q-99'"),
    ({"--student": f"{STUDENT}:nowhere/weights.safetensors"}, "weights file not found"),
    ({"--teacher": f"{TEACHER}:STUDENT_WEIGHTS"}, "do not fit architecture pkd-tiny-teacher"),
    ({"--classes": "EMPTY"}, "holds no class names"),
    ({"--classes": "DUPLICATES"}, "duplicate class name 'cat'"),
    ({"--batch-size": "1"}, "--batch-size must be >= 2"),
])
def test_bad_input_is_one_line_and_exit_2(inputs, overrides, message):
    import open_clip
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in open_clip.create_model(STUDENT).state_dict().items()},
              str(inputs / "student.safetensors"))
    (inputs / "empty.txt").write_text("\n")
    (inputs / "dups.txt").write_text("cat\ndog\ncat\n")
    fixups = {"missing": str(inputs / "missing"), "STUDENT_WEIGHTS": str(inputs / "student.safetensors"),
              "EMPTY": str(inputs / "empty.txt"), "DUPLICATES": str(inputs / "dups.txt")}
    overrides = {k: next((v.replace(a, b) for a, b in fixups.items() if a in v), v) for k, v in overrides.items()}
    result = runner.invoke(app, _distill_args(inputs, **overrides))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output  # progress notes may come before it
    assert "Traceback" not in result.output
    assert not (inputs / "run").exists()  # nothing half-written


def test_resume_with_another_config_exits_2_and_keeps_the_run(inputs):
    assert invoke(*_distill_args(inputs)).exit_code == 0
    before = (inputs / "run/student.safetensors").read_bytes()
    result = runner.invoke(app, ["distill", "--resume", str(inputs / "run"), "--lr", "0.3"])
    assert result.exit_code == 2 and "different config: lr=0.3" in " ".join(result.output.split())
    assert (inputs / "run/student.safetensors").read_bytes() == before
    result = runner.invoke(app, _distill_args(inputs))
    assert result.exit_code == 2 and "already exists" in result.output
    assert invoke("distill", "--resume", str(inputs / "run"), "--workers", "1").exit_code == 0  # allowed change


def test_resume_a_run_written_before_the_schedule_field(inputs):
    """Runs written before `schedule` existed stepped their cosine per step and have no such key in config.json: the
    resume check once read the raw file, took today's default ('epoch') and refused them."""
    from promptkd_edge.train.config import DistillConfig
    from promptkd_edge.train.distill_setup import resumed_config

    assert invoke(*_distill_args(inputs, **{"--schedule": "step"})).exit_code == 0
    config = inputs / "run" / "config.json"
    stored = json.loads(config.read_text())
    del stored["config"]["schedule"]
    config.write_text(json.dumps(stored))
    assert DistillConfig.from_dict(stored["config"]).schedule == "epoch"  # today's default: not what the run did
    assert resumed_config(inputs / "run").schedule == "step"
    assert resumed_config(inputs / "run", {"workers": 1}).workers == 1
    result = runner.invoke(app, ["distill", "--resume", str(inputs / "run"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["distill", "--resume", str(inputs / "run"), "--schedule", "epoch"])
    assert result.exit_code == 2 and "schedule='epoch' (run has 'step')" in " ".join(result.output.split())


def test_distill_then_eval_json(inputs):
    result = invoke(*_distill_args(inputs), "--json")
    summary = json.loads(result.stdout)
    assert summary["steps"] == 4 and summary["run_dir"] == str(inputs / "run")
    labeled = write_images(inputs / "test", 6, classes=NAMES, seed=5)
    result = invoke("eval", str(inputs / "run"), "--data", str(labeled), "--teacher", "--json", "--workers", "0")
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["classes"] == 3
    assert set(report["top1"]) == {"student", "teacher"} and 0 <= report["top1"]["student"] <= 1
    assert set(report["agreement"]) == {"student vs teacher"}
    table = invoke("eval", str(inputs / "run"), "--data", str(labeled), "--workers", "0")
    assert "student" in table.output and "%" in table.output
    bad = runner.invoke(app, ["eval", str(inputs / "run"), "--data", str(inputs / "data")])
    assert bad.exit_code == 2 and "not in the class list" in " ".join(bad.output.split())


def test_real_process_bad_input_no_traceback(tmp_path):
    """The installed entry point itself (not the test runner): exit code 2, one line on stderr."""
    proc = pkd_process("distill", "--data", str(tmp_path / "nope"), "--classes", "x.txt", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    debug = pkd_process("--debug", "distill", "--data", str(tmp_path / "nope"), "--classes", "x.txt",
                "--out", str(tmp_path / "r"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_teacher_command_json_and_bad_input(tmp_path):
    shots = write_images(tmp_path / "shots", 12, classes=NAMES, seed=4)
    args = ["teacher", "--random-init", "--teacher", TEACHER, "--data", str(shots), "--shots", "2",
            "--vision-depth", "2", "--text-depth", "1", "--epochs", "2", "--batch-size", "2", "--workers", "0",
            "--device", "cpu"]
    result = invoke(*args, "--out", str(tmp_path / "t"), "--json")
    summary = json.loads(result.stdout)
    assert summary["train_classes"] == 2 and summary["all_classes"] == 3 and summary["shots"] == 2
    for extra, message in ((["--shots", "9"], "fewer than --shots 9"), (["--classes", "half"], "base or all"),
                           (["--text-init", "a photo"], "is 2 tokens, not --text-tokens 4")):
        bad = runner.invoke(app, [*args, *extra, "--out", str(tmp_path / "bad")])
        errors = [line for line in bad.output.splitlines() if line.startswith("error:")]
        assert bad.exit_code == 2 and len(errors) == 1 and message in " ".join(bad.output.split()), bad.output
        assert not (tmp_path / "bad").exists()
    used = runner.invoke(app, [*args, "--out", str(tmp_path / "t")])
    assert used.exit_code == 2 and "choose another --out" in " ".join(used.output.split())


def test_architectures_without_weights_are_refused_unless_random_init(inputs):
    """A forgotten `:openai` must not distill from a random teacher for hours: one line, exit 2, nothing left."""
    import open_clip
    from safetensors.torch import save_file

    def without_flag(**overrides):
        return [a for a in _distill_args(inputs, **overrides) if a != "--random-init"]

    def refused(args, what, out):
        result = runner.invoke(app, args)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, result.output
        assert f"{what} is an architecture without weights" in " ".join(result.output.split())
        assert "--random-init" in errors[0] and not out.exists()
        return errors[0]

    shots = write_images(inputs / "shots", 12, classes=NAMES, seed=4)
    teacher = ["teacher", "--teacher", TEACHER, "--data", str(shots), "--shots", "2", "--vision-depth", "2",
               "--text-depth", "1", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2", "--workers", "0",
               "--device", "cpu", "--out", str(inputs / "t")]
    line = refused(teacher, f"--teacher {TEACHER}", inputs / "t")
    assert f"{TEACHER}:openai" in line  # the fix is in the message
    refused(without_flag(), f"--teacher {TEACHER}", inputs / "run")
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TEACHER).state_dict().items()},
              str(inputs / "teacher.safetensors"))
    refused(without_flag(**{"--teacher": f"{TEACHER}:{inputs / 'teacher.safetensors'}"}), f"--student {STUDENT}",
            inputs / "run")
    assert not (inputs / "cache").exists()
    # asked for explicitly, both train; a teacher run tuned on random weights needs the flag again to distill
    assert invoke(*teacher, "--random-init").exit_code == 0
    from_run = {"--teacher": str(inputs / "t"), "--classes": None}
    refused(without_flag(**from_run), f"--teacher {inputs / 't'} (a teacher run on {TEACHER})", inputs / "run")
    assert invoke(*_distill_args(inputs, **from_run)).exit_code == 0
