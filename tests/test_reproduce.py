"""The paper-reproduction recipe, every piece at tiny size on a synthetic dataset in the CoOp layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import STUDENT, TEACHER, write_images

from promptkd_edge.data.coop import materialize, read_coop
from promptkd_edge.errors import PkdError


def coop_dataset(root: Path) -> Path:
    """oxford_pets layout: ROOT/oxford_pets/images/* + split_zhou_OxfordPets.json (labels in CoOp order)."""
    names = ["Abyssinian", "american_bulldog", "Bengal", "beagle"]  # label order is not alphabetical
    base = root / "oxford_pets"
    images = write_images(base / "flat", 4 * 10, classes=names, seed=2)
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        files = sorted((images / name).iterdir())
        for i, f in enumerate(files):
            target = base / "images" / f"{name}_{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            f.rename(target)
            split["test" if i >= 7 else "train"].append([target.name, label, name])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


def load_recipe():
    path = Path(__file__).parents[1] / "benchmarks" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coop_reader_keeps_label_order(tmp_path):
    split = read_coop(coop_dataset(tmp_path), "oxford_pets")
    assert split.names == ["Abyssinian", "american_bulldog", "Bengal", "beagle"]
    assert len(split.train) == 4 * 7 and len(split.test) == 4 * 3
    data = materialize(split, tmp_path / "data")
    assert data["classes"].read_text().split() == split.names
    assert len(list((data["train"] / "Bengal").iterdir())) == 7
    with pytest.raises(PkdError, match="unknown CoOp dataset"):
        read_coop(tmp_path, "imagenet")
    with pytest.raises(PkdError, match="expected the CoOp layout"):
        read_coop(tmp_path, "dtd")


def test_reproduce_recipe_runs_end_to_end_at_tiny_size(tmp_path):
    recipe = load_recipe()
    root = coop_dataset(tmp_path / "coop")
    result = recipe.reproduce(
        "oxford_pets", str(root), TEACHER, STUDENT, tmp_path / "repro", device="cpu",
        teacher_overrides={"shots": 4, "vision_depth": 3, "text_depth": 2, "epochs": 2, "workers": 0},
        distill_overrides={"epochs": 2, "batch_size": 4, "workers": 0, "prompt_depth": 3})
    assert result["test_images"] == 12 and result["paper"]["student"] == (96.30, 98.01, 97.15)
    for model in ("teacher", "student"):
        base, novel, hm = result["ours"][model]
        assert 0 <= base <= 100 and 0 <= novel <= 100 and 0 <= hm <= 100
    teacher_config = json.loads((tmp_path / "repro/teacher/config.json").read_text())
    assert teacher_config["resolved"]["train_classes"] == ["Abyssinian", "american_bulldog"]  # base = first half
    assert json.loads((tmp_path / "repro/reproduction.json").read_text())["dataset"] == "oxford_pets"
    text = recipe.table(result)
    assert "| student ViT-B/16, PromptKD |" in text and "97.15" in text
