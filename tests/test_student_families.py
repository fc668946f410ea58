"""Students of every tower family through the CLI, as a user runs them: a weights file for the student, distill
with the defaults (`--prompt-depth 9` on a tower with fewer blocks), export with its parity gates, predict."""

from __future__ import annotations

import json

import open_clip
import pytest
from conftest import NAMES, TEACHER, write_images
from safetensors.torch import save_file
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.models.towers import family_of

FAMILIES = {"pkd-tiny-map-vit": "timm-vit", "pkd-tiny-eva": "timm-vit"}


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_distill_export_predict_with_a_weights_file(arch, tmp_path):
    assert family_of(arch) == FAMILIES[arch]
    torch_model = open_clip.create_model(arch)
    weights = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, str(weights))
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    write_images(tmp_path / "data", 12)
    blocks = len(torch_model.visual.trunk.blocks)

    out = run("distill", "--random-init", "--teacher", TEACHER, "--student", f"{arch}:{weights}", "--classes",
              tmp_path / "classes.txt", "--data", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "2",
              "--batch-size", "4", "--workers", "0", "--cache-dir", tmp_path / "cache").output
    flat = " ".join(out.split())
    assert flat.count(f"--prompt-depth 9: {arch}:{weights}'s image tower has {blocks} blocks, so all {blocks} get "
                      "prompts") == 1, out
    assert f"student adaptation: deep visual prompts, 4 tokens x {blocks}" in flat

    run("export", tmp_path / "run", "--out", tmp_path / "bundle", "--parity-images", "4")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["valid"] and all(p["passed"] for p in manifest["parity"] if p.get("required", True))
    image = next((tmp_path / "data").rglob("*.png"))
    result = json.loads(run("predict", tmp_path / "bundle", image, "--json").stdout)
    [prediction] = result["predictions"]
    assert prediction["labels"][0] in NAMES
