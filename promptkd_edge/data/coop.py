"""Datasets in the CoOp layout (used by CoOp, PromptSRC and PromptKD): `ROOT/<folder>/<images>` plus
`split_zhou_<Name>.json` = {"train" | "val" | "test": [[relative image path, label, class name], ...]}.

`materialize` turns a split into what the `pkd` commands take: ImageFolders of symbolic links (class folders
named after the classes) and a class-names file in label order, which fixes the class ids (base = first half).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from promptkd_edge.errors import PkdError

# name -> (dataset folder, image folder inside it, split file), as in CoOp's DATASETS.md
COOP_DATASETS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}


@dataclass
class CoopSplit:
    names: list[str]  # index = label id
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    test: list[tuple[Path, int]]


def read_coop(root: str | os.PathLike, dataset: str) -> CoopSplit:
    if dataset not in COOP_DATASETS:
        raise PkdError(f"unknown CoOp dataset '{dataset}'; known: {', '.join(COOP_DATASETS)} (ImageNet and "
                       "FGVCAircraft use other layouts: build their ImageFolders and class list yourself)")
    folder, images, split_file = COOP_DATASETS[dataset]
    base = Path(root).expanduser() / folder
    split_path = base / split_file
    try:
        split = json.loads(split_path.read_text())
    except FileNotFoundError:
        raise PkdError(f"{split_path} not found: expected the CoOp layout ROOT/{folder}/{split_file}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PkdError(f"cannot read {split_path}: {e}") from None
    names: dict[int, str] = {}
    parts: dict[str, list[tuple[Path, int]]] = {}
    for part in ("train", "val", "test"):
        rows = split.get(part, [])
        parts[part] = [(base / images / path, int(label)) for path, label, _ in rows]
        for _, label, name in rows:
            if names.setdefault(int(label), name) != name:
                raise PkdError(f"{split_path}: label {label} is both '{names[int(label)]}' and '{name}'")
    if sorted(names) != list(range(len(names))):
        raise PkdError(f"{split_path}: labels are not 0..N-1")
    return CoopSplit([names[i] for i in range(len(names))], parts["train"], parts["val"], parts["test"])


def _folder_name(name: str) -> str:
    return name.replace(os.sep, "_").strip() or "_"


def materialize(split: CoopSplit, out: str | os.PathLike) -> dict[str, Path]:
    """out/classes.txt (label order) and out/{train,test}/<class>/<n><ext> links to the images."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = [_folder_name(n) for n in split.names]
    if len(set(folders)) != len(folders):
        raise PkdError("two classes map to the same folder name")
    (out / "classes.txt").write_text("\n".join(folders) + "\n")
    for part, samples in (("train", split.train), ("test", split.test)):
        for i, (path, label) in enumerate(samples):
            link = out / part / folders[label] / f"{i:07d}{path.suffix.lower()}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(path.resolve(), link)
    return {"classes": out / "classes.txt", "train": out / "train", "test": out / "test"}
