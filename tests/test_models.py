"""Student model: prompted tower against open_clip and an official-style reference, projector, weights I/O."""

from __future__ import annotations

import open_clip
import pytest
import torch
from conftest import STUDENT, TEACHER
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.models import (
    ModelSpec,
    Projector,
    PromptedVisionTower,
    StudentConfig,
    build_student,
    load_clip,
    load_student,
    save_student,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip(STUDENT)


def reference_forward(visual, prompts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PromptKD's clip/model.py VisionTransformer + ResidualAttentionBlock_IVLP, in its LND layout.

    prompts: [depth, n, width]. Layer 0: appended after pos-emb, before ln_pre; layer i < depth: the last n
    tokens replaced; output: ln_post(CLS) @ proj.
    """
    depth, n, _ = prompts.shape
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND, as the official code runs its blocks
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < depth:
            prefix = x[0:x.shape[0] - n]
            x = torch.cat([prefix, prompts[i].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
        x = block(x.permute(1, 0, 2)).permute(1, 0, 2)  # open_clip blocks are batch-first
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def test_zero_prompts_equal_open_clip_exactly(tiny):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = tiny.model.visual(x)
        for tokens, depth in [(0, 0), (0, 4), (4, 0)]:
            tower = PromptedVisionTower(tiny.model.visual, tokens, depth)
            assert torch.equal(tower(x), expected)


@pytest.mark.slow
def test_zero_prompts_equal_open_clip_vit_b16():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(PromptedVisionTower(model.visual, 0, 9)(x), model.visual(x))
        prompted = PromptedVisionTower(model.visual, 4, 9)
        assert prompted.prompts.shape == (9, 4, 768)
        assert not torch.allclose(prompted(x), model.visual(x))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_prompts_match_official_layout(tiny, depth):
    torch.manual_seed(depth)
    tower = PromptedVisionTower(tiny.model.visual, num_tokens=3, depth=depth, init_std=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = tower(x)
        ref = reference_forward(tiny.model.visual, tower.prompts, x)
        plain = tiny.model.visual(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3


def test_prompt_init_and_limits(tiny):
    torch.manual_seed(0)
    tower = PromptedVisionTower(tiny.model.visual, num_tokens=4, depth=4)
    assert tower.prompts.shape == (4, 4, 96)
    assert abs(tower.prompts.std().item() - 0.02) < 0.005
    with pytest.raises(PkdError, match="exceeds the 4 transformer layers"):
        PromptedVisionTower(tiny.model.visual, num_tokens=4, depth=9)


def test_non_vit_tower_is_refused():
    model = open_clip.create_model("RN50")
    with pytest.raises(PkdError, match="VisionTransformer"):
        PromptedVisionTower(model.visual)


def test_projector_equals_official_conv_module():
    """PromptKD's Feature_Trans_Module_two_layer: Conv2d 1x1 -> BN2d -> ReLU -> Conv2d 1x1 on [B, C, 1, 1]."""
    torch.manual_seed(0)
    ours = Projector(96, 128).train()
    official = nn.Sequential(nn.Conv2d(96, 128, 1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
                             nn.Conv2d(128, 128, 1)).train()
    with torch.no_grad():
        official[0].weight.copy_(ours[0].weight[:, :, None, None])
        official[0].bias.copy_(ours[0].bias)
        official[3].weight.copy_(ours[3].weight[:, :, None, None])
        official[3].bias.copy_(ours[3].bias)
    x = torch.randn(8, 96)
    torch.testing.assert_close(ours(x), official(x[:, :, None, None]).flatten(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1].running_mean, official[1].running_mean)


def test_student_trains_only_prompts_and_projector(tiny):
    torch.manual_seed(0)
    student = build_student(tiny, StudentConfig(spec=STUDENT, teacher_dim=128, prompt_tokens=4, prompt_depth=4))
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"tower.prompts", "projector.0.weight", "projector.0.bias", "projector.1.weight",
                         "projector.1.bias", "projector.3.weight", "projector.3.bias"}
    assert sum(p.numel() for p in student.trainable_parameters()) == 4 * 4 * 96 + (96 * 128 + 128) + 2 * 128 + (
        128 * 128 + 128)
    student.train()
    assert not student.tower.visual.training and student.projector.training
    out = student(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    out.sum().backward()
    assert all(p.grad is None for p in student.tower.visual.parameters())
    assert student.tower.prompts.grad is not None and student.tower.prompts.grad.abs().sum() > 0


def test_student_save_load_round_trip(tmp_path, tiny):
    from safetensors.torch import save_file

    weights = tmp_path / "student_base.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    spec = f"{STUDENT}:{weights}"
    clip = load_clip(spec)
    from promptkd_edge.utils.files import sha256_file

    student = build_student(clip, StudentConfig(spec=spec, teacher_dim=64, prompt_depth=2,
                                                weights_sha256=sha256_file(weights)))
    with torch.no_grad():
        student.tower.prompts.normal_()
        student.projector[1].running_mean.uniform_()
    save_student(student, tmp_path / "student.safetensors")
    loaded = load_student(tmp_path / "student.safetensors")
    x = torch.randn(2, 3, 32, 32)
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x), rtol=0, atol=0)
    # the base weights changed after training: refused
    sd = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    sd["visual.proj"] = sd["visual.proj"] + 1
    save_file(sd, str(weights))
    with pytest.raises(PkdError, match="differ from those the student was trained on"):
        load_student(tmp_path / "student.safetensors")


@pytest.mark.parametrize("text,arch,pretrained", [
    ("ViT-B-16", "ViT-B-16", None),
    ("ViT-L-14-quickgelu:openai", "ViT-L-14-quickgelu", "openai"),
    ("ViT-B-16:/w/b16.safetensors", "ViT-B-16", "/w/b16.safetensors"),
    ("hf-hub:timm/vit_base_patch16_clip_224.openai", "hf-hub:timm/vit_base_patch16_clip_224.openai", None),
])
def test_model_spec_parse(text, arch, pretrained):
    spec = ModelSpec.parse(text)
    assert (spec.arch, spec.pretrained) == (arch, pretrained)
    assert str(spec) == text


def _save_variants(tmp_path, model):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    torch.save(sd, tmp_path / "w.bin")
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               tmp_path / "epoch_3.pt")
    return ["w.safetensors", "w.pt", "w.bin", "epoch_3.pt"]


def test_local_weight_files_load_bit_equal(tmp_path):
    torch.manual_seed(1)
    reference = open_clip.create_model(TEACHER).eval()
    x, text = torch.randn(2, 3, 40, 40), open_clip.get_tokenizer(TEACHER)(["a photo of a cat."])
    with torch.no_grad():
        want_img, want_txt = reference.encode_image(x), reference.encode_text(text)
    for name in _save_variants(tmp_path, reference):
        torch.manual_seed(99)  # the loaded weights, not the seed, must decide
        clip = load_clip(f"{TEACHER}:{tmp_path / name}")
        assert clip.weights_file == str(tmp_path / name)
        assert not any(p.requires_grad for p in clip.model.parameters()) and not clip.model.training
        with torch.no_grad():
            assert torch.equal(clip.model.encode_image(x), want_img), name
            assert torch.equal(clip.model.encode_text(text), want_txt), name


def test_torchscript_archive_needs_opt_in(tmp_path):
    torch.manual_seed(2)
    model = open_clip.create_model(STUDENT).eval()
    holder = torch.jit.script(_StateHolder(model))
    torch.jit.save(holder, str(tmp_path / "clip.pt"))
    with pytest.raises(PkdError, match="TorchScript archive.*--allow-pickle"):
        load_clip(f"{STUDENT}:{tmp_path / 'clip.pt'}")
    # OpenAI's release format: its weights need QuickGELU, so a GELU architecture is refused with the fix
    with pytest.raises(PkdError, match=f"TorchScript archive, OpenAI's release format.*QuickGELU.*pass "
                                       f"{STUDENT}-quickgelu:"):
        load_clip(f"{STUDENT}:{tmp_path / 'clip.pt'}", allow_pickle=True)
    clip = load_clip(f"{STUDENT}-quickgelu:{tmp_path / 'clip.pt'}", allow_pickle=True)
    model = open_clip.create_model(f"{STUDENT}-quickgelu").eval()
    model.load_state_dict(clip.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # same weights (scripting flips MHA kernels, so not bit-exact)
        torch.testing.assert_close(clip.model.visual(x), model.visual(x), rtol=1e-5, atol=1e-5)


class _StateHolder(nn.Module):
    """A scriptable module whose state_dict has exactly the CLIP model's keys (like OpenAI's archives)."""

    def __init__(self, model):
        super().__init__()
        for name, module in model.named_children():
            self.add_module(name, module)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        persistent = set(model.state_dict())
        for name, buf in model.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name in persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_bad_weights_and_specs_fail_with_one_line(tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model(STUDENT)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "student.safetensors"))
    with pytest.raises(PkdError, match="do not fit architecture pkd-tiny-teacher: .*of another shape"):
        load_clip(f"{TEACHER}:{tmp_path / 'student.safetensors'}")
    with pytest.raises(PkdError, match="weights file not found"):
        load_clip(f"{TEACHER}:{tmp_path / 'missing.safetensors'}")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PkdError, match="junk.pt is not a PyTorch weights file"):
        load_clip(f"{TEACHER}:{tmp_path / 'junk.pt'}")
    with pytest.raises(PkdError, match="unknown open_clip architecture 'ViT-B-61'.*did you mean"):
        load_clip("ViT-B-61")
    with pytest.raises(PkdError, match="neither a pretrained tag.*known tags for ViT-B-16: openai"):
        load_clip("ViT-B-16:no_such_tag")


def test_openai_weights_under_a_gelu_architecture_are_refused(tmp_path, caplog):
    """OpenAI's CLIP weights (their state dict layout) in a GELU architecture would silently give wrong features."""
    from open_clip.transformer import QuickGELU

    torch.manual_seed(3)
    model = open_clip.create_model(f"{STUDENT}-quickgelu").eval()
    openai = {**model.state_dict(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(16),
              "vocab_size": torch.tensor(49408)}  # the extra entries of OpenAI's own state dicts
    torch.save(openai, tmp_path / "ViT-tiny.pt")
    with pytest.raises(PkdError) as err:
        load_clip(f"{STUDENT}:{tmp_path / 'ViT-tiny.pt'}")
    message = str(err.value)
    assert "looks like OpenAI's CLIP weights (the input_resolution / context_length / vocab_size entries" in message
    assert "QuickGELU" in message and f"pass {STUDENT}-quickgelu:{tmp_path / 'ViT-tiny.pt'}" in message
    clip = load_clip(f"{STUDENT}-quickgelu:{tmp_path / 'ViT-tiny.pt'}")  # the fix works, features equal
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # (frozen vs trainable parameters take different attention kernels: not bit-exact)
        torch.testing.assert_close(clip.model.encode_image(x), model.encode_image(x), rtol=1e-5, atol=1e-5)
    # the same tensors in open_clip's layout carry no evidence: loaded as asked
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    load_clip(f"{STUDENT}:{tmp_path / 'plain.pt'}")
    # a file named like OpenAI's without its layout: a warning with the fix, not a refusal
    torch.save(model.state_dict(), tmp_path / "openai-tiny.pt")
    with caplog.at_level("WARNING"):
        load_clip(f"{STUDENT}:{tmp_path / 'openai-tiny.pt'}")
    assert "named like OpenAI's CLIP weights" in caplog.text and f"{STUDENT}-quickgelu" in caplog.text
    # open_clip's config beside a hub download says quick_gelu
    (tmp_path / "hub").mkdir()
    torch.save(model.state_dict(), tmp_path / "hub" / "open_clip_pytorch_model.bin")
    (tmp_path / "hub" / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": true}}')
    with pytest.raises(PkdError, match="open_clip_config.json beside it sets quick_gelu"):
        load_clip(f"{STUDENT}:{tmp_path / 'hub' / 'open_clip_pytorch_model.bin'}")
    from promptkd_edge.models.openclip import quick_gelu_variant

    assert quick_gelu_variant("ViT-B-16") == "ViT-B-16-quickgelu" and quick_gelu_variant("ViT-B-16-quickgelu") is None


def test_unreadable_weight_files_say_what_is_wrong(tmp_path):
    """Every unreadable weights file gets a message about that file, never "list index out of range"."""
    import zipfile

    from safetensors.torch import save_file

    cases = {}
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty.pt"] = r"empty.pt is empty \(0 bytes\)"
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases["empty.safetensors"] = r"empty.safetensors is empty \(0 bytes\)"
    (tmp_path / "page.bin").write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    cases["page.bin"] = "is not a PyTorch weights file .*starts with b'<!'"
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    cases["cut.safetensors"] = r"cannot read weights file .*cut.safetensors \(safetensors\)"
    torch.save([1, 2], tmp_path / "list.pt")
    cases["list.pt"] = "holds no state dict \\(it holds a list of 2 items\\)"
    torch.save({}, tmp_path / "nothing.pt")
    cases["nothing.pt"] = "holds no state dict \\(it holds an empty dict\\)"
    torch.save({"w": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pt")
    cases["mixed.pt"] = "is not a state dict of tensors \\(entry 'epoch' is a int\\)"
    with zipfile.ZipFile(tmp_path / "broken.pt", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    cases["broken.pt"] = r"cannot read weights file .*broken.pt \(a torch zip archive\)|needs full unpickling"
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    cases["other.safetensors"] = "do not fit architecture"
    for name, message in cases.items():
        with pytest.raises(PkdError, match=message) as err:
            load_clip(f"{STUDENT}:{tmp_path / name}")
        assert "\n" not in str(err.value) and "index out of range" not in str(err.value), name


def test_missing_tag_offline_fails_at_once_with_local_file_hint(monkeypatch):
    import promptkd_edge.models.openclip as oc

    def no_download(*a, **k):
        raise AssertionError("must not try to download offline")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip, "create_model", no_download)
    with pytest.raises(PkdError, match=r"not cached and the model hub is unreachable.*pass ViT-L-14:/path/to/"):
        oc.load_clip("ViT-L-14:openai")


def test_pretrained_tag_applies_quick_gelu_and_preprocess(tmp_path, monkeypatch):
    """A tag's config (here one pointing at a local file, an open_clip feature) sets QuickGELU and mean/std."""
    from open_clip import pretrained as registry
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(STUDENT, force_quick_gelu=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "t.safetensors"))
    cfg = {"file": str(tmp_path / "t.safetensors"), "quick_gelu": True, "mean": (0.5, 0.5, 0.5),
           "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(registry._PRETRAINED, STUDENT, {"localtag": cfg})
    clip = load_clip(f"{STUDENT}:localtag")
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert clip.preprocess.mean == (0.5, 0.5, 0.5) and clip.preprocess.std == (0.25, 0.25, 0.25)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clip.model.visual(x), model.eval().visual(x), rtol=1e-6, atol=1e-6)


def test_a_student_prompt_depth_beyond_the_blocks_means_all_of_them(tiny):
    """`--prompt-depth 9` on a 4-block tower prompts all 4; the student's config records 4, so it reloads alike."""
    from promptkd_edge.models.student import StudentConfig, build_student

    student = build_student(tiny, StudentConfig(spec="pkd-tiny-student", teacher_dim=32, prompt_depth=9))
    assert student.tower.depth == 4 and student.config.prompt_depth == 4
    assert student.tower.adaptation == "deep visual prompts, 4 tokens x 4 of 4 blocks"
    assert set(student.trained_state()) == {"tower.prompts", *(f"projector.{k}" for k in
                                                                  student.projector.state_dict())}


def test_a_tower_no_adaptation_covers_is_one_line():
    from torch import nn

    from promptkd_edge.models.towers import build_tower

    with pytest.raises(PkdError, match=r"^the odd image tower is Sequential, which no student adaptation covers; "
                                       r"supported: openclip-vit"):
        build_tower(nn.Sequential(nn.Conv2d(3, 4, 3)), prompt_tokens=4, prompt_depth=9, prompt_init_std=0.02,
                    arch="odd")
