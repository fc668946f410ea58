"""Data: listing, robust decoding, the shared augmented view, the epoch sampler, the demo domain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_images
from PIL import Image

from promptkd_edge.data.datasets import BadImages, PairedViews, collate_skipping_bad
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.data.sampling import EpochSampler, cached_view
from promptkd_edge.data.views import CROP_RATIO, render_view, sample_crop, view_rng
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.utils.image_files import list_images

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_list_images_recursive_and_file_lists(tmp_path):
    write_images(tmp_path / "data", 6)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / ".hidden").mkdir()
    write_images(tmp_path / "data" / ".hidden", 2)
    found = list_images(tmp_path / "data")
    assert len(found) == 6 and found == sorted(found)
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\ndata/part0/img000.png\n\n" + str(found[1]) + "\n")
    assert list_images(listing) == [tmp_path / "data/part0/img000.png", found[1]]


def test_list_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match="no images under"):
        list_images(tmp_path / "empty")
    with pytest.raises(PkdError, match="data not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PkdError, match="names no images"):
        list_images(tmp_path / "empty.txt")


def test_labeled_folder_relabel(tmp_path):
    root = write_images(tmp_path / "lab", 6, classes=["dog", "cat"])
    labeled = LabeledImages.scan(root)
    assert labeled.classes == ["cat", "dog"]
    relabeled = labeled.relabel(["dog", "bird", "cat"])
    assert {p.parent.name: label for p, label in relabeled.samples} == {"dog": 0, "cat": 2}
    with pytest.raises(PkdError, match="not in the class list .*'cat'"):
        labeled.relabel(["dog"])


def test_crop_sampling_is_seeded_and_within_bounds():
    assert sample_crop(64, 48, view_rng(1, 2, 3)) == sample_crop(64, 48, view_rng(1, 2, 3))
    crops = [sample_crop(64, 48, view_rng(0, v, 5)) for v in range(200)]
    assert len(set(crops)) > 150
    for c in crops:
        assert c.top >= 0 and c.top + c.height <= 48 and c.left >= 0 and c.left + c.width <= 64
        area = c.height * c.width / (64 * 48)
        ratio = c.width / c.height
        assert 0.07 <= area <= 1.0 and CROP_RATIO[0] * 0.9 <= ratio <= CROP_RATIO[1] * 1.1
    assert 0.3 < np.mean([c.flip for c in crops]) < 0.7


def test_teacher_and_student_see_the_same_view(tmp_path):
    """A horizontal gradient image: both renderings of one view must show the same region and flip."""
    x = np.tile(np.linspace(0, 255, 96, dtype=np.float32), (96, 1))
    img = Image.fromarray(np.stack([x, x.T, 255 - x], -1).astype(np.uint8))
    img.save(tmp_path / "g.png")
    big, small = Preprocess((48, 48), MEAN, STD), Preprocess((24, 24), MEAN, STD)
    views = PairedViews([tmp_path / "g.png"], {"teacher": big, "student": small}, seed=0)
    for view in range(5):
        item = views[(0, view)]
        shrunk = F.interpolate(item["teacher"][None], size=(24, 24), mode="area")[0]
        assert (shrunk - item["student"]).abs().mean() < 0.05
        crop = sample_crop(96, 96, view_rng(0, view, 0))
        torch.testing.assert_close(item["student"], render_view(img, crop, small))


def test_bad_images_are_replaced_and_counted(tmp_path):
    write_images(tmp_path / "d", 4)
    paths = list_images(tmp_path / "d")
    good = paths[0].read_bytes()
    paths[1].write_bytes(good[: len(good) // 2])  # truncated PNG
    paths[2].write_bytes(b"garbage")
    pre = Preprocess((16, 16), MEAN, STD)
    views = PairedViews(paths, {"student": pre}, seed=0)
    items = [views[(i, 0)] for i in range(4)]
    batch = collate_skipping_bad(items)
    assert batch["size"] == 4 and batch["student"].shape == (4, 3, 16, 16)
    reasons = dict(batch["bad"])  # each unreadable image with why
    assert set(reasons) == {str(paths[1]), str(paths[2])}
    assert reasons[str(paths[2])] == "not an image file PIL can read" and "truncated" in reasons[str(paths[1])]
    assert set(batch["index"].tolist()) <= {0, 3}
    counter = BadImages(total=100, max_fraction=0.05)
    counter.add(batch["bad"])
    counter.add(batch["bad"])  # the same files again do not count twice
    assert len(counter.paths) == 2 and counter.records() == sorted(reasons.items())
    with pytest.raises(PkdError, match="6 of 100 images are unreadable"):
        counter.add([(f"x{i}", "gone") for i in range(4)])
    strict = PairedViews(paths, {"student": pre}, seed=0, fallback=False)
    assert strict[(1, 0)] == {"bad": [(str(paths[1]), reasons[str(paths[1])])]}
    assert PairedViews([tmp_path / "gone.png"], {"student": pre}, seed=0, fallback=False)[(0, 0)] == {
        "bad": [(str(tmp_path / "gone.png"), "file not found")]}


def test_epoch_sampler_shards_and_resumes():
    full = list(EpochSampler(10, seed=3, epoch=1))
    assert sorted(i for i, _ in full) == list(range(10)) and all(v == 1 for _, v in full)
    assert full != list(EpochSampler(10, seed=3, epoch=2))
    ranks = [list(EpochSampler(10, seed=3, epoch=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # padded to 12
    assert sorted({i for r in ranks for i, _ in r}) == list(range(10))
    assert list(EpochSampler(10, seed=3, epoch=1, skip=4)) == full[4:]
    assert len(EpochSampler(10, seed=3, epoch=1, skip=4)) == 6


def test_cached_views_cycle_through_all_k():
    for index in range(20):
        assert sorted(cached_view(0, e, index, 4) for e in range(4)) == [0, 1, 2, 3]
    assert len({cached_view(0, 0, i, 4) for i in range(50)}) == 4  # images start at different views


def test_demo_domain_is_deterministic_and_balanced(tmp_path):
    from promptkd_edge.data import demo_domain

    assert len(demo_domain.CLASSES) >= 10
    a = demo_domain.write_target_splits(tmp_path / "a", seed=0, shots=1, unlabeled_per_class=1, test_per_class=1)
    b = demo_domain.write_target_splits(tmp_path / "b", seed=0, shots=1, unlabeled_per_class=1, test_per_class=1)
    for split in ("fewshot", "unlabeled", "test"):
        assert sorted(p.name for p in a[split].iterdir()) == sorted(demo_domain.CLASSES)
        for cls in demo_domain.CLASSES:
            assert (a[split] / cls / "0000.png").read_bytes() == (b[split] / cls / "0000.png").read_bytes()
    web = demo_domain.web_samples(20, seed=0)
    assert [s.label for s in web[:10]] == list(range(10))
    assert web[0].caption.startswith("a photo of a ") and "_" not in web[0].caption
