"""`pkd export`'s options: each means one thing, sits in the help panel of the operation it applies to, and reaches
that operation's record (in-process: the command line parsed by typer, the export itself replaced)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.cli.export import ONLY_WITH
from promptkd_edge.errors import PkdError
from promptkd_edge.export import add_to_bundle
from promptkd_edge.export.add_to_bundle import DeepStreamConfig, TritonEntry
from promptkd_edge.formats import bundle as bundle_format

runner = CliRunner()


def _panels() -> dict[str, list[str]]:
    """{panel title: the long flags listed in it} of `pkd export --help`."""
    text = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    panels, title = {}, None
    for line in text.splitlines():
        start = re.match(r"╭─ (.+?) ─", line)
        if start:
            title = start.group(1)
            panels[title] = []
        elif line.startswith("│") and title:
            panels[title] += re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", line.split("  ")[0] + " " +
                                        " ".join(line.split()[1:3]))
        elif line.startswith("╰"):
            title = None
    return {k: list(dict.fromkeys(v)) for k, v in panels.items()}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_each_operations_options_are_in_its_own_panel():
    panels = _panels()
    assert panels["TensorRT plan (--trt)"] == ["--trt", *map(_flag, ONLY_WITH["--trt"])]
    assert panels["Triton entry (SOURCE: a bundle)"] == ["--triton", *map(_flag, ONLY_WITH["--triton"])]
    assert panels["DeepStream config (SOURCE: a bundle)"] == ["--deepstream", *map(_flag, ONLY_WITH["--deepstream"])]
    shown = [f for flags in panels.values() for f in flags]
    assert "--max-batch" not in shown and len(shown) == len(set(shown))  # the old two-meaning flag is not offered


@pytest.mark.parametrize(("args", "says"), [
    (["--triton-name", "pets"], "--triton-name applies to --triton, which was not given"),
    (["--trt-profile", "1,8,32"], "--trt-profile applies to --trt, which was not given"),
    (["--deepstream-batch-size", "4"], "--deepstream-batch-size applies to --deepstream, which was not given"),
    (["--threshold", "25"], "--threshold applies to --deepstream, which was not given"),
])
def test_an_option_without_its_operation_is_one_line(tmp_path, args, says):
    """Before: silently ignored (a plan's profile given without --trt built no plan and said nothing)."""
    result = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2 and result.output.strip().replace("\n", " ").startswith(f"error: {says}")


@pytest.fixture()
def seen(monkeypatch):
    """The records `pkd export BUNDLE ...` hands to extend_bundle, which is replaced."""
    calls = []

    def extend_bundle(source, options, *, out=None, triton=None, deepstream=None, progress=None):
        calls.append({"options": options, "triton": triton, "deepstream": deepstream})
        raise PkdError("stop here")

    monkeypatch.setattr(add_to_bundle, "extend_bundle", extend_bundle)
    monkeypatch.setattr(bundle_format, "is_bundle", lambda path: True)
    return calls


def test_the_triton_and_deepstream_batch_sizes_go_each_to_its_own_record(seen, tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--triton", "repo", "--triton-backend", "tensorrt",
                                 "--triton-name", "pets", "--triton-max-batch", "16", "--deepstream", "ds",
                                 "--deepstream-mode", "secondary", "--threshold", "25", "--gie-id", "3",
                                 "--operate-on-gie-id", "1", "--deepstream-batch-size", "4"])
    assert "stop here" in result.output
    (call,) = seen
    assert call["triton"] == TritonEntry(Path("repo"), "tensorrt", "pets", 16)
    assert call["deepstream"] == DeepStreamConfig(Path("ds"), "secondary", 25.0, 4, 3, 1)


def test_the_old_max_batch_still_means_both_and_is_refused_beside_the_new_ones(seen, tmp_path):
    """`--max-batch N` as scripts type it today: Triton's max_batch_size and nvinfer's batch-size at once."""
    runner.invoke(app, ["export", str(tmp_path), "--triton", "repo", "--deepstream", "ds", "--max-batch", "8"])
    (call,) = seen
    assert call["triton"].max_batch == 8 and call["deepstream"].batch_size == 8
    result = runner.invoke(app, ["export", str(tmp_path), "--triton", "repo", "--max-batch", "8",
                                 "--triton-max-batch", "16"])
    assert result.exit_code == 2 and "--max-batch is --triton-max-batch and --deepstream-batch-size" in result.output
    assert len(seen) == 1


def test_a_bundle_without_an_operation_gets_no_records(seen, tmp_path):
    runner.invoke(app, ["export", str(tmp_path), "--trt", "--trt-profile", "1,4,8"])
    (call,) = seen
    assert call["triton"] is None and call["deepstream"] is None
    assert call["options"].trt.profiles == [(1, 4, 8)]
