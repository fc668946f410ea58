"""Stage I: prompted text tower, PromptSRC losses and GPA, `pkd teacher`, `pkd classes`, official import."""

from __future__ import annotations

import datetime
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import STUDENT, TEACHER, tiny_config, write_images
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.errors import PkdError
from promptkd_edge.eval.accuracy import accuracy_report, harmonic_mean
from promptkd_edge.models import ClassVectors, Teacher, TeacherConfig, compute_class_vectors, load_clip, load_teacher
from promptkd_edge.models.prompted_text import PromptedTextTower
from promptkd_edge.train.config import TeacherTuneConfig
from promptkd_edge.train.distill import distill
from promptkd_edge.train.promptsrc import PromptAverage, consistency_losses, gpa_weights
from promptkd_edge.train.teacher import import_official_teacher, tune_teacher

NAMES5 = ["alpha", "beta", "delta", "epsilon", "gamma_ray"]  # sorted, as the folders are read


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(TEACHER)


def test_text_tower_without_deep_prompts_equals_encode_text(clip):
    names = ["golden_retriever", "cat", "a very long class name with many many words in it"]
    tokens = open_clip.get_tokenizer(TEACHER)([f"a photo of a {n.replace('_', ' ')}." for n in names])
    with torch.no_grad():
        expected = clip.model.encode_text(tokens)
        for depth in (0, 1):  # no prompts; context initialised from "a photo of a" at layer 0 only
            tower = PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=depth, prefix="a photo of a")
            assert torch.equal(tower.encode(names), expected)


def official_text_encoder(model, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """PromptSRC's VLPromptLearner + TextEncoder + ResidualAttentionBlock_IVLP(text_layer=True), LND, all 77
    positions: [SOS] ctx suffix, then at layers 1..depth-1 x = cat(x[:1], VPT_shallow, x[1+n:])."""
    depth, n, _ = prompts.shape
    emb = model.token_embedding(tokens)
    x = torch.cat([emb[:, :1], prompts[0].expand(len(tokens), -1, -1), emb[:, 1 + n:]], dim=1)
    x = (x + model.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(model.transformer.resblocks):
        if 0 < i < depth:
            x = torch.cat([x[:1], prompts[i].expand(x.shape[1], -1, -1).permute(1, 0, 2), x[1 + n:]], dim=0)
        x = block(x.permute(1, 0, 2), attn_mask=model.attn_mask).permute(1, 0, 2)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def test_deep_text_prompts_match_the_official_encoder(clip):
    torch.manual_seed(3)
    tower = PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=2, prefix="a photo of a", init_std=0.5)
    names = ["cat", "sea_lion", "x"]
    with torch.no_grad():
        ours = tower.encode(names)  # cut after the longest [EOS]
        ref = official_text_encoder(clip.model, tower.prompts, clip.tokenizer()(tower.sentences(names)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_chunked_checkpointed_text_equals_one_pass(clip):
    torch.manual_seed(4)
    tower = PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=2, prefix="a photo of a")
    names = [f"class {i}" for i in range(7)]
    weights = torch.randn(7, 128)

    def run(**kw):
        tower.prompts.grad = None
        out = tower.encode(names, **kw)
        (out * weights).sum().backward()
        return out.detach(), tower.prompts.grad.clone()

    full, grad = run()
    chunked, chunk_grad = run(chunk=3, checkpointing=True)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk_grad, grad, rtol=1e-3, atol=1e-5 * float(grad.abs().max()))  # sum order


def test_initial_prompt_must_fit_the_token_count(clip):
    with pytest.raises(PkdError, match="is 3 tokens, not --text-tokens 4"):
        PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=2, prefix="a photo of")


def test_consistency_losses_against_hand_written_reference():
    torch.manual_seed(0)
    img, zs_img = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    txt, zs_txt = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    logits, zs_logits = torch.randn(3, 5) * 5, torch.randn(3, 5) * 5
    out = consistency_losses(img, zs_img, txt, zs_txt, logits, zs_logits, text_weight=25, image_weight=10)
    l1_text = sum(abs(a - b) for ra, rb in zip(txt.tolist(), zs_txt.tolist(), strict=True)
                  for a, b in zip(ra, rb, strict=True)) / 20
    l1_image = sum(abs(a - b) for ra, rb in zip(img.tolist(), zs_img.tolist(), strict=True)
                   for a, b in zip(ra, rb, strict=True)) / 12
    kl = 0.0
    for p_row, q_row in zip(logits.tolist(), zs_logits.tolist(), strict=True):
        lp = [v - math.log(sum(math.exp(u) for u in p_row)) for v in p_row]
        lq = [v - math.log(sum(math.exp(u) for u in q_row)) for v in q_row]
        kl += sum(math.exp(b) * (b - a) for a, b in zip(lp, lq, strict=True))  # KL(frozen || prompted)
    assert out["scl_text"].item() == pytest.approx(25 * l1_text, rel=1e-5)
    assert out["scl_image"].item() == pytest.approx(10 * l1_image, rel=1e-5)
    assert out["scl_logits"].item() == pytest.approx(kl / 15, rel=1e-5)


def test_gpa_weights():
    w = gpa_weights(20, mean=15, std=1)
    assert sum(w) == pytest.approx(1.0) and max(range(20), key=w.__getitem__) == 14  # epoch 15
    assert w[13] == pytest.approx(w[15]) and w[14] / w[13] == pytest.approx(math.exp(0.5))
    tail = gpa_weights(5, mean=1000, std=1)  # every density underflows: the nearest epoch takes it all
    assert sum(tail) == pytest.approx(1.0) and tail[-1] == pytest.approx(1.0)
    avg = PromptAverage([0.25, 0.75])
    avg.add(0, {"p": torch.ones(2)})
    avg.add(1, {"p": torch.full((2,), 3.0)})
    assert torch.equal(avg.value()["p"], torch.full((2,), 2.5))


def test_base_novel_harmonic_mean_on_a_known_confusion():
    # 4 classes: base = {0, 1}, novel = {2, 3}; logits chosen so the restricted argmaxes are known
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = torch.tensor([
        [5, 1, 9, 0], [1, 5, 0, 0],  # class 0: right within base (wrong overall for the first), wrong
        [0, 5, 0, 0], [0, 5, 0, 0],  # class 1: right, right
        [9, 0, 5, 1], [0, 0, 1, 5],  # class 2: right within novel (wrong overall), wrong
        [0, 0, 1, 5], [0, 0, 5, 1]], dtype=torch.float)  # class 3: right, wrong
    report = accuracy_report(labels, {"m": logits}, 4, [])
    assert report.base["m"] == pytest.approx(3 / 4) and report.novel["m"] == pytest.approx(2 / 4)
    assert report.hm["m"] == pytest.approx(harmonic_mean(0.75, 0.5)) == pytest.approx(0.6)
    assert report.top1["m"] == pytest.approx(3 / 8)  # over all 4 classes: rows 3, 4 and 7
    only_base = accuracy_report(labels[:4], {"m": logits[:4]}, 4, [])
    assert only_base.novel == {} and only_base.hm == {}


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    return write_images(root / "shots", 5 * 4, classes=NAMES5, seed=1)


def tune(fewshot, out, **kw):
    base = dict(teacher=TEACHER, data=str(fewshot), shots=4, classes="base", vision_depth=3, text_depth=2,
                epochs=3, batch_size=4, workers=0, device="cpu", text_chunk=2, random_init=True)
    base.update(kw)
    return tune_teacher(TeacherTuneConfig(**base), out)


def test_teacher_run_trains_prompts_only_and_feeds_distill(fewshot, tmp_path):
    result = tune(fewshot, tmp_path / "teacher")
    assert result.train_classes == 3 and result.all_classes == 5 and result.steps == 3 * 3
    run = tmp_path / "teacher"
    assert {"teacher.safetensors", "classes.json", "class_vectors.safetensors", "config.json", "metrics.jsonl",
            "loss.png", "summary.json"} <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10)) and [r["epoch"] for r in rows] == [0] * 3 + [1] * 3 + [2] * 3
    assert all(list(r) == ["step", "epoch", "lr", "loss", "ce", "scl_text", "scl_image", "scl_logits", "seconds"]
               for r in rows)
    for r in rows:  # the total is the sum of its parts, each step its own
        assert r["loss"] == pytest.approx(r["ce"] + r["scl_text"] + r["scl_image"] + r["scl_logits"], rel=1e-5)
    assert len({r["loss"] for r in rows}) == 9 and rows[-1]["loss"] == result.final_loss
    assert 0 <= result.train_top1 <= 1
    teacher = load_teacher(str(run))
    assert teacher.prompted and teacher.spec == str(run.resolve())
    torch.manual_seed(1)  # tune_teacher seeds before creating the (random-weight) base model
    base = load_clip(TEACHER)
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, teacher.model.state_dict()[key]), key  # the CLIP weights never move
    vectors = ClassVectors.load(run)
    assert vectors.names == NAMES5 and vectors.teacher == str(run.resolve()) and "learned" in vectors.template
    torch.testing.assert_close(vectors.vectors, compute_class_vectors(teacher, NAMES5).vectors)

    cfg = tiny_config(tmp_path, teacher=str(run), classes=None, epochs=1, warmup_epochs=0)
    distill(cfg, tmp_path / "student")
    student_vectors = ClassVectors.load(tmp_path / "student")
    assert torch.equal(student_vectors.vectors, vectors.vectors) and student_vectors.teacher == str(run.resolve())


def test_gpa_in_the_far_tail_equals_no_gpa(fewshot, tmp_path):
    from safetensors.torch import load_file

    tune(fewshot, tmp_path / "a", gpa=False)
    tune(fewshot, tmp_path / "b", gpa=True, gpa_mean=1000.0)  # all weight on the last epoch
    tune(fewshot, tmp_path / "c", gpa=True, gpa_mean=2.0, gpa_std=1.0)  # spread over epochs
    a, b, c = (load_file(tmp_path / x / "teacher.safetensors") for x in "abc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert not torch.allclose(a["text.prompts"], c["text.prompts"])


def test_teacher_bad_input(fewshot, tmp_path):
    with pytest.raises(PkdError, match="class 'alpha' has 4 images .*fewer than --shots 5"):
        tune(fewshot, tmp_path / "t1", shots=5)
    assert not (tmp_path / "t1").exists()
    (tmp_path / "names.txt").write_text("alpha\nbeta\n")
    with pytest.raises(PkdError, match="not in the class list"):
        tune(fewshot, tmp_path / "t2", class_names=str(tmp_path / "names.txt"))
    with pytest.raises(PkdError, match="--classes must be base or all"):
        tune(fewshot, tmp_path / "t3", classes="novel")


def test_pkd_classes_reproduces_and_extends(fewshot, tmp_path):
    tune(fewshot, tmp_path / "teacher", epochs=1, warmup_epochs=0)
    (tmp_path / "same.txt").write_text("\n".join(NAMES5) + "\n")
    (tmp_path / "more.txt").write_text("\n".join([*NAMES5, "zeta"]) + "\n")
    runner = CliRunner()
    for names, out in (("same.txt", "v1"), ("more.txt", "v2")):
        result = runner.invoke(app, ["classes", str(tmp_path / "teacher"), "--names", str(tmp_path / names),
                                     "--out", str(tmp_path / out), "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
    original = ClassVectors.load(tmp_path / "teacher")
    assert torch.equal(ClassVectors.load(tmp_path / "v1").vectors, original.vectors)
    extended = ClassVectors.load(tmp_path / "v2")
    assert extended.names[-1] == "zeta"
    # the same vectors for the classes already there; not bit-equal: a batch of 6 names takes other BLAS kernels
    # than a batch of 5 on some CPUs (seen on an AMX Xeon: 1e-7 differences)
    torch.testing.assert_close(extended.vectors[:5], original.vectors, atol=1e-6, rtol=0)
    again = runner.invoke(app, ["classes", str(tmp_path / "teacher"), "--names", str(tmp_path / "same.txt"),
                                "--out", str(tmp_path / "v1")])
    assert again.exit_code == 2 and "already holds" in again.output


def test_pkd_classes_reproduces_a_zero_shot_run(tmp_path, clip):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(tmp_path / "t.safetensors"))
    cfg = tiny_config(tmp_path, teacher=f"{TEACHER}:{tmp_path / 't.safetensors'}", template="itap of a {}.",
                      epochs=1, warmup_epochs=0)
    distill(cfg, tmp_path / "run")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(ClassVectors.load(tmp_path / "run").names) + "\n")
    result = CliRunner().invoke(app, ["classes", str(tmp_path / "run"), "--names", str(names),
                                      "--out", str(tmp_path / "v"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    again = ClassVectors.load(tmp_path / "v")
    assert torch.equal(again.vectors, ClassVectors.load(tmp_path / "run").vectors)
    assert again.template == "itap of a {}."


def test_pkd_classes_refuses_a_random_weight_teacher(tiny_run, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\n")
    result = CliRunner().invoke(app, ["classes", str(tiny_run), "--names", str(names), "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "random weights" in result.output


def official_checkpoint(teacher: Teacher, n_classes: int = 3) -> dict:
    """A checkpoint with the official Dassl / PromptSRC CustomCLIP key layout (clip/model.py, promptsrc.py)."""
    model = teacher.model
    sd = {}
    for key, value in model.visual.state_dict().items():
        sd[f"image_encoder.{key}"] = value.half()
        sd[f"prompt_learner.ZS_image_encoder.{key}"] = value.half()
    for key, value in model.transformer.state_dict().items():
        sd[f"text_encoder.transformer.{key}"] = value.half()
    for key in ("positional_embedding", "text_projection"):
        sd[f"text_encoder.{key}"] = getattr(model, key).detach().half()
    for key, value in model.ln_final.state_dict().items():
        sd[f"text_encoder.ln_final.{key}"] = value.half()
    sd["logit_scale"] = model.logit_scale.detach()
    vision, text = teacher.vision.prompts.detach(), teacher.text.prompts.detach()
    sd["image_encoder.VPT"] = vision[0].clone()
    for i in range(1, len(vision)):
        sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = vision[i].clone()
    sd["prompt_learner.ctx"] = text[0].half()
    for i in range(1, len(text)):
        sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = text[i].clone()
    width = model.transformer.width
    sd["prompt_learner.token_prefix"] = torch.zeros(n_classes, 1, width).half()
    sd["prompt_learner.token_suffix"] = torch.zeros(n_classes, 11, width).half()
    return {"state_dict": sd, "epoch": 20, "optimizer": {"state": {}, "param_groups": [{"lr": 0.0}]},
            "scheduler": {"last_epoch": 20}, "val_result": 0.91}


def test_official_checkpoint_round_trip(tmp_path, clip):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(tmp_path / "base.safetensors"))
    base = f"{TEACHER}:{tmp_path / 'base.safetensors'}"
    torch.manual_seed(7)
    original = Teacher(load_clip(base), TeacherConfig(spec=base, vision_depth=3, text_depth=2, init_std=0.3))
    torch.save(official_checkpoint(original), tmp_path / "model-best.pth.tar")
    run = import_official_teacher(tmp_path / "model-best.pth.tar", base, NAMES5, tmp_path / "imported")
    imported = load_teacher(str(run))
    assert torch.equal(imported.vision.prompts, original.vision.prompts)
    torch.testing.assert_close(imported.text.prompts, original.text.prompts, rtol=1e-3, atol=1e-3)  # ctx was fp16
    x = torch.randn(2, 3, 40, 40)
    torch.testing.assert_close(imported.encode_image(x), original.encode_image(x))
    torch.testing.assert_close(imported.class_text_features(NAMES5), original.class_text_features(NAMES5),
                               rtol=1e-3, atol=1e-3)
    assert imported.config.vision_depth == 3 and imported.config.text_depth == 2

    # prompt shapes for another architecture, other base weights, unpickling without opt-in
    bad = official_checkpoint(original)
    bad["state_dict"]["image_encoder.VPT"] = torch.zeros(4, 64)
    torch.save(bad, tmp_path / "bad.pth.tar")
    with pytest.raises(PkdError, match="differ in shape|do not fit"):
        import_official_teacher(tmp_path / "bad.pth.tar", base, NAMES5, tmp_path / "x1")
    torch.manual_seed(99)
    other = open_clip.create_model(TEACHER)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PkdError, match="tuned on other CLIP weights"):
        import_official_teacher(tmp_path / "model-best.pth.tar", f"{TEACHER}:{tmp_path / 'other.safetensors'}",
                                NAMES5, tmp_path / "x2")
    with pytest.raises(PkdError, match="does not fit pkd-tiny-student"):
        import_official_teacher(tmp_path / "model-best.pth.tar", STUDENT, NAMES5, tmp_path / "x3")
    pickled = official_checkpoint(original)
    pickled["created"] = datetime.date(2024, 3, 1)  # not a plain tensor container: needs real unpickling
    torch.save(pickled, tmp_path / "pickled.pth.tar")
    with pytest.raises(PkdError, match="--allow-pickle"):
        import_official_teacher(tmp_path / "pickled.pth.tar", base, NAMES5, tmp_path / "x4")
    assert not any((tmp_path / f"x{i}").exists() for i in range(1, 5))
    import_official_teacher(tmp_path / "pickled.pth.tar", base, NAMES5, tmp_path / "x5", allow_pickle=True)


def test_pkd_eval_on_a_teacher_run_reports_base_novel_hm(fewshot, tmp_path):
    tune(fewshot, tmp_path / "teacher", epochs=1, warmup_epochs=0)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "teacher"), "--data", str(fewshot), "--json",
                                      "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["base_classes"] == 3 and set(report["hm"]) == {"teacher"}
    assert report["hm"]["teacher"] == pytest.approx(harmonic_mean(report["base"]["teacher"],
                                                                  report["novel"]["teacher"]))


def test_promptsrc_templates_are_the_official_60():
    """Stage I's text targets: PromptSRC's IMAGENET_TEMPLATES, 60 of open_clip's 80, distinct, by default."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from promptkd_edge.train.promptsrc import PROMPTSRC_TEMPLATES, text_target_templates

    openai80 = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(PROMPTSRC_TEMPLATES) == len(set(PROMPTSRC_TEMPLATES)) == 60 and len(openai80) == 80
    assert set(PROMPTSRC_TEMPLATES) <= set(openai80)
    # the 20 PromptSRC left out, as in its trainers/imagenet_templates.py
    assert "a photo of a small {}." in set(openai80) - set(PROMPTSRC_TEMPLATES)
    assert text_target_templates() == PROMPTSRC_TEMPLATES and text_target_templates("openclip") == openai80
    assert TeacherTuneConfig.__dataclass_fields__["text_targets"].default == "promptsrc"


def test_text_targets_follow_the_chosen_templates(fewshot, tmp_path, monkeypatch):
    import promptkd_edge.train.teacher as stage1

    seen = []
    real = stage1.frozen_text_targets
    monkeypatch.setattr(stage1, "frozen_text_targets",
                        lambda t, n, templates: seen.append(templates) or real(t, n, templates))
    tune(fewshot, tmp_path / "a", epochs=1, warmup_epochs=0)
    tune(fewshot, tmp_path / "b", epochs=1, warmup_epochs=0, text_targets="openclip")
    assert [len(s) for s in seen] == [60, 80]


def test_fp16_teacher_scales_the_loss(fewshot, tmp_path, monkeypatch):
    """`--precision fp16` runs the loss through a GradScaler (CUDA-only in the CLI; forced onto CPU here)."""
    from safetensors.torch import load_file

    import promptkd_edge.train.teacher as stage1

    scalers = []

    class Recording(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled = 0
            scalers.append(self)

        def scale(self, outputs):
            self.scaled += 1
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    monkeypatch.setattr(stage1, "resolve_precision", lambda name, device: name)
    result = tune(fewshot, tmp_path / "fp16", precision="fp16")
    (scaler,) = scalers
    assert scaler.is_enabled() and scaler.scaled == result.steps
    assert 0 < scaler.get_scale() <= 2.0 ** 16  # it saw real (unscaled) gradients, maybe skipping overflows
    prompts = load_file(tmp_path / "fp16" / "teacher.safetensors")["text.prompts"]
    assert torch.isfinite(prompts).all()
    scalers.clear()
    tune(fewshot, tmp_path / "fp32", precision="fp32")
    assert not scalers[0].is_enabled()  # fp32 (and bf16) train unscaled


def test_teacher_metrics_are_read_once_per_log_interval(fewshot, tmp_path, monkeypatch):
    """Losses stay on the device between log intervals; every step still gets its metrics line."""
    import promptkd_edge.train.teacher as stage1

    class Recording:
        def __init__(self):
            self.updates = []

        def note(self, message):
            pass

        def task(self, description, total):
            return lambda completed=None, **info: self.updates.append((description, completed, info))

        def done(self):
            pass

    monkeypatch.setattr(stage1, "LOG_EVERY", 2)
    progress = Recording()
    cfg = TeacherTuneConfig(teacher=TEACHER, data=str(fewshot), shots=4, classes="base", vision_depth=3, text_depth=2,
                            epochs=2, batch_size=4, workers=0, device="cpu", text_chunk=2, random_init=True)
    result = tune_teacher(cfg, tmp_path / "t", progress=progress)
    assert [(d, n) for d, n, _ in progress.updates] == [("teacher epoch 1/2", 2), ("teacher epoch 1/2", 3),
                                                        ("teacher epoch 2/2", 2), ("teacher epoch 2/2", 3)]
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    shown = [info["loss"] for _, _, info in progress.updates]
    assert shown == [rows[i]["loss"] for i in (1, 2, 4, 5)] and shown[-1] == result.final_loss
    assert progress.updates[-1][2]["acc"] == result.train_top1
