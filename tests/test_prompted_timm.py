"""Deep visual prompts around open_clip TimmModel towers with timm ViT / Eva trunks (tiny configs, random weights)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptkd_edge.errors import PkdError
from promptkd_edge.models.prompted_timm import PromptedTimmViT
from promptkd_edge.models.tiny_towers import TINY_TIMM_CONFIGS, register_tiny_timm_configs

# map-vit (SigLIP-like), reg-vit (registers, avg pool), mci (MobileCLIP2-B conv stem), eva (rope, cls), pe (rope, MAP)
NAMES = list(TINY_TIMM_CONFIGS)
MIXED = "rope-mixed"  # timm's RoPE-Mixed ViT (per-block rotary embeddings), swapped into the Eva tower
EVA_NAMES = ["pkd-tiny-eva", "pkd-tiny-pe", MIXED]


@pytest.fixture(scope="module")
def clips() -> dict[str, nn.Module]:
    import open_clip

    register_tiny_timm_configs()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that random weights were used
    torch.manual_seed(0)
    return {name: open_clip.create_model(name).eval() for name in NAMES}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _sharpen(trunk: nn.Module, gain: float = 8.0) -> None:
    """Random-init attention is nearly uniform (q.k ~ 0), which hides where tokens are and how they are rotated:
    scale the query and key projections up."""
    with torch.no_grad():
        for block in trunk.blocks:
            attn = block.attn
            if getattr(attn, "qkv", None) is not None:
                attn.qkv.weight[: 2 * attn.qkv.out_features // 3].mul_(gain)
            else:
                attn.q_proj.weight.mul_(gain)
                attn.k_proj.weight.mul_(gain)


def _visual(clips: dict[str, nn.Module], name: str) -> nn.Module:
    import timm

    if name != MIXED:
        return copy.deepcopy(clips[name].visual)
    visual = copy.deepcopy(clips["pkd-tiny-eva"].visual)
    visual.trunk = timm.create_model("vit_small_patch16_rope_mixed_224", img_size=32, patch_size=8, embed_dim=32,
                                     depth=2, num_heads=2, init_values=0.5, num_classes=48).eval()
    return visual


def _tower(clips: dict[str, nn.Module], name: str, tokens: int = 3, depth: int = 2, std: float = 1.0
           ) -> PromptedTimmViT:
    visual = _visual(clips, name)
    _sharpen(visual.trunk)
    torch.manual_seed(2)
    return PromptedTimmViT(visual, tokens, depth, init_std=std)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_tiny_configs_build_with_clip_text(clips, name):
    import open_clip

    model = clips[name]
    assert PromptedTimmViT.supports(model.visual)
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat"])
    dim = TINY_TIMM_CONFIGS[name]["embed_dim"]
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, dim)
        assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, dim)
    assert PromptedTimmViT(model.visual, 0, 0).output_dim == dim


@pytest.mark.parametrize("name", [*NAMES, MIXED])
@pytest.mark.parametrize("tokens,depth", [(0, 3), (4, 0)])
def test_zero_prompts_are_the_plain_tower(clips, images, name, tokens, depth):
    tower = _tower(clips, name, tokens, depth)
    with torch.no_grad():
        assert torch.equal(tower(images), tower.visual(images))


@pytest.mark.parametrize("name", NAMES)
def test_only_prompts_train_and_the_trunk_stays_in_eval(clips, images, name):
    tower = _tower(clips, name).train()
    assert not any(m.training for m in tower.visual.modules())
    assert [n for n, p in tower.named_parameters() if p.requires_grad] == ["prompts"]
    out = tower(images)
    with torch.no_grad():
        assert not torch.allclose(out, tower.visual(images), rtol=1e-4, atol=0)
    out.square().sum().backward()
    assert all(p.grad is None for p in tower.visual.parameters())
    assert all(row.abs().sum() > 0 for row in tower.prompts.grad)  # every prompted block reaches the output


@pytest.mark.parametrize("name", NAMES)
def test_norm_and_pool_never_see_the_prompts(clips, images, name):
    """The last block's prompt outputs are dropped (changing them changes nothing) and the final norm, hence the
    pool, gets exactly the trunk's prefix + patch tokens."""
    tower = _tower(clips, name, tokens=3, depth=9)
    trunk, seen = tower.trunk, []
    with torch.no_grad():
        ref = tower(images)
        hooks = [trunk.blocks[-1].register_forward_hook(lambda m, i, out: out + torch.cat(
                     [torch.zeros_like(out[:, :-3]), torch.randn_like(out[:, -3:]) * 100], dim=1)),
                 trunk.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))]
        try:
            assert torch.equal(tower(images), ref)
        finally:
            for h in hooks:
                h.remove()
    assert seen == [trunk.num_prefix_tokens + trunk.patch_embed.num_patches]


def test_map_vit_matches_a_hand_written_prompted_forward(clips, images):
    """SigLIP-like tower (no class token, MAP head, no projection), computed by hand from timm's blocks."""
    tower = _tower(clips, "pkd-tiny-map-vit", tokens=2, depth=2)
    trunk, p = tower.trunk, tower.prompts
    pooled = []
    with torch.no_grad():
        pe = trunk.patch_embed.proj
        x = nn.functional.conv2d(images, pe.weight, pe.bias, stride=pe.stride).flatten(2).transpose(1, 2)
        x = torch.cat([x + trunk.pos_embed, p[0].expand(2, -1, -1)], dim=1)
        for i, block in enumerate(trunk.blocks):
            if i == 1:
                x = torch.cat([x[:, :-2], p[1].expand(2, -1, -1)], dim=1)
            x = block(x)
        expected = trunk.attn_pool(trunk.norm(x[:, :-2]))
        hook = trunk.attn_pool.register_forward_pre_hook(lambda m, args: pooled.append(args[0].shape[1]))
        try:
            got = tower(images)
        finally:
            hook.remove()
    assert trunk.cls_token is None and len(tower.visual.head) == 0
    assert pooled == [trunk.patch_embed.num_patches]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", EVA_NAMES)
def test_eva_prompts_are_not_rotated(clips, images, name):
    """Reference: timm's own way of leaving tokens unrotated, prompts placed among the prefix tokens with each
    attention's num_prefix_tokens raised by the prompt count (attention is order-free apart from rope)."""
    tower = _tower(clips, name, tokens=2, depth=2)
    trunk, p, npt = tower.trunk, tower.prompts, tower.trunk.num_prefix_tokens
    assert trunk.rope is not None and npt == 1
    with torch.no_grad():
        x, rope = trunk._pos_embed(trunk.patch_embed(images))
        x = trunk.norm_pre(torch.cat([x[:, :npt], p[0].expand(2, -1, -1), x[:, npt:]], dim=1))
        for block in trunk.blocks:
            block.attn.num_prefix_tokens += 2
        try:
            for i, block in enumerate(trunk.blocks):
                if i == 1:
                    x = torch.cat([x[:, :npt], p[1].expand(2, -1, -1), x[:, npt + 2:]], dim=1)
                x = block(x, rope=rope[i] if trunk.rope_mixed else rope)
        finally:
            for block in trunk.blocks:
                block.attn.num_prefix_tokens -= 2
        x = torch.cat([x[:, :npt], x[:, npt + 2:]], dim=1)
        expected = tower.visual.head(trunk.forward_head(trunk.norm(x)))
        got = tower(images)
        plain = tower.visual(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, plain, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", ["pkd-tiny-map-vit", "pkd-tiny-eva"])
def test_depth_above_the_blocks_means_all_of_them(clips, images, name):
    blocks = len(clips[name].visual.trunk.blocks)
    deep, exact = _tower(clips, name, depth=99), _tower(clips, name, depth=blocks)
    assert deep.depth == blocks and deep.prompts.shape == (blocks, 3, 32)
    assert deep.adaptation == f"deep visual prompts, 3 tokens x {blocks} of {blocks} blocks"
    exact.load_trained_state(deep.trained_state(), "deep.pt")
    with torch.no_grad():
        assert torch.equal(deep(images), exact(images))


@pytest.mark.parametrize("name", ["pkd-tiny-reg-vit", "pkd-tiny-pe"])
def test_gradient_checkpointing_gives_the_same_values_and_grads(clips, images, name, monkeypatch):
    from promptkd_edge.models import prompted_timm

    plain, ckpt = _tower(clips, name), _tower(clips, name)
    ckpt.visual.set_grad_checkpointing(True)
    calls = []
    monkeypatch.setattr(prompted_timm, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    grads = []
    for tower in (plain, ckpt):
        out = tower.train()(images)
        out.square().sum().backward()
        grads.append((out.detach(), tower.prompts.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert len(calls) == len(ckpt.trunk.blocks)  # only the checkpointed tower, once per block


def test_trained_state_round_trip_and_refusals(clips, images):
    a, b = _tower(clips, "pkd-tiny-pe"), _tower(clips, "pkd-tiny-pe", std=0.5)
    state = a.trained_state()
    assert list(state) == ["prompts"]
    assert not state["prompts"].requires_grad and state["prompts"].is_contiguous()
    b.load_trained_state(state, "run/student.pt")
    with torch.no_grad():
        assert torch.equal(a(images), b(images))
    with pytest.raises(PkdError) as e:
        b.load_trained_state({}, "run/student.pt")
    assert "missing prompts" in _one_line_error(e) and "run/student.pt" in str(e.value)
    with pytest.raises(PkdError) as e:
        b.load_trained_state({**state, "scale": torch.ones(1)}, "run/student.pt")
    assert "unexpected scale" in _one_line_error(e)
    with pytest.raises(PkdError) as e:
        b.load_trained_state({"prompts": torch.zeros(2, 5, 32)}, "run/student.pt")
    assert "(2, 5, 32)" in _one_line_error(e) and "(2, 3, 32)" in str(e.value) and "'prompts'" in str(e.value)


def test_unsupported_towers_are_refused_in_one_line(clips):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    assert not PromptedTimmViT.supports(nn.Linear(3, 3))
    with pytest.raises(PkdError) as e:
        PromptedTimmViT(nn.Linear(3, 3))
    assert "image tower is Linear;" in _one_line_error(e) and "TimmModel" in str(e.value)

    visual = copy.deepcopy(clips["pkd-tiny-map-vit"].visual)
    visual.trunk = timm.create_model("pkd_tiny_siglip_vit", depth=0, num_classes=0)
    assert PromptedTimmViT.supports(visual)
    with pytest.raises(PkdError) as e:
        PromptedTimmViT(visual)
    assert "'pkd_tiny_siglip_vit' has no transformer blocks" in _one_line_error(e)

    class Distilled(VisionTransformer):
        def forward_features(self, x, attn_mask=None, is_causal=False):
            return super().forward_features(x)

    visual.trunk = Distilled(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(PkdError) as e:
        PromptedTimmViT(visual)
    assert "overrides VisionTransformer.forward_features" in _one_line_error(e)

    with pytest.raises(PkdError) as e:
        PromptedTimmViT(clips["pkd-tiny-eva"].visual, num_tokens=-1)
    assert ">= 0" in _one_line_error(e)


@pytest.mark.parametrize("name", ["pkd-tiny-map-vit", "pkd-tiny-pe"])
def test_for_export_runs_in_onnxruntime(clips, images, name, tmp_path):
    import onnxruntime as ort

    from promptkd_edge.export.onnx_export import export_module

    tower = _tower(clips, name).train()
    before = tower.trained_state()
    exported = tower.for_export()
    assert exported is not tower and not exported.training
    assert not any(p.requires_grad for p in exported.parameters())
    assert tower.prompts.requires_grad and tower.training
    with torch.no_grad():
        expected = tower(images)
        assert torch.equal(exported(images), expected)
    assert torch.equal(tower.trained_state()["prompts"], before["prompts"])
    path = export_module(exported, tmp_path / "tower.onnx", images, "image", ["features"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.cat([images, images[:1]])  # a batch size other than the traced one
    (got,) = session.run(None, {"image": batch.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, tower(batch).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,timm_name", [("pkd-tiny-map-vit", "pkd_tiny_siglip_vit"),
                                            ("pkd-tiny-pe", "pkd_tiny_pe_vit")])
def test_dynamic_image_size_trunks_follow_the_input_size(clips, name, timm_name):
    """timm's dynamic_img_size resamples the position (and rotary) embeddings in _pos_embed, which the tower reuses:
    a 48 px input gives 36 patches, the plain output at zero prompts, and 36 + prefix tokens into the norm."""
    import timm

    visual = copy.deepcopy(clips[name].visual)
    visual.trunk = timm.create_model(timm_name, dynamic_img_size=True, num_classes=visual.trunk.num_classes).eval()
    images, seen = torch.randn(2, 3, 48, 48), []
    with torch.no_grad():
        assert torch.equal(PromptedTimmViT(visual, 0, 2)(images), visual(images))
        tower = PromptedTimmViT(visual, 2, 2, init_std=1.0)
        hook = visual.trunk.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
        try:
            assert tower(images).shape == visual(images).shape
        finally:
            hook.remove()
    assert seen[0] == 36 + visual.trunk.num_prefix_tokens
