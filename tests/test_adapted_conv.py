"""SSF adaptation of hybrid (FastViT / MobileCLIP2-S-like) and convolutional towers: identity at init, only the
adaptation trains, the tower stays in eval, trained-state round trip, and the fold into the exported graph."""

from __future__ import annotations

import collections
import copy
import re

import numpy as np
import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from timm.models.fastvit import AttentionBlock
from timm.utils.model import reparameterize_model
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.export.onnx_export import export_module
from promptkd_edge.models.adapted_conv import AdaptedConvTower, AdaptedHybridTower, adapted_tower_class
from promptkd_edge.models.tiny_towers import TINY_CONV_CONFIGS, register_tiny_conv_configs

register_tiny_conv_configs()
SIZE = 64


def _perturb(module: nn.Module, seed: int = 1) -> None:
    """Non-trivial frozen statistics, layer scales and biases, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith("gamma"):
                t.fill_(0.5)
            elif name.endswith("bias"):  # timm initialises biases to 0, where a scale on them would go unseen
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _tower(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind in TINY_CONV_CONFIGS:
        visual = open_clip.create_model(kind).visual
    elif kind == "resnet":  # a plain timm CNN as open_clip wraps it (linear projection)
        visual = TimmModel("resnet10t", embed_dim=24, image_size=SIZE, pool="avg", proj="linear")
    else:  # open_clip's own ModifiedResNet (RN50's structure), tiny
        visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=24, heads=2, image_size=SIZE, width=8)
    _perturb(visual)
    return visual.eval()


def _adapted(kind: str, seed: int = 2) -> tuple[AdaptedConvTower, nn.Module]:
    """(adapted tower with random non-identity scale/shift, a hook-free copy of the plain tower)."""
    visual = _tower(kind)
    plain = copy.deepcopy(visual)
    tower = adapted_tower_class(visual)(visual)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tower.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return tower, plain


def _images(batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


KINDS = ["pkd-tiny-hybrid", "pkd-tiny-convnext", "resnet", "modified-resnet"]


def test_tiny_configs_build_through_open_clip():
    for name, family in [("pkd-tiny-hybrid", "hybrid"), ("pkd-tiny-convnext", "conv")]:
        assert name in open_clip.list_models()
        model = open_clip.create_model(name).eval()
        text = model.encode_text(open_clip.tokenize(["a photo"], context_length=16))
        image = model.encode_image(_images())
        assert text.shape == (1, 48) and image.shape == (2, 48)
        assert adapted_tower_class(model.visual).family == family


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_init_and_only_the_adaptation_trains(kind):
    visual = _tower(kind)
    x = _images()
    with torch.no_grad():
        expected = visual(x)
    tower = adapted_tower_class(visual)(visual)
    assert tower.output_dim == expected.shape[-1]
    assert torch.equal(tower(x), expected)  # scale 1, shift 0: exactly open_clip's tower
    tower.train()
    assert not any(m.training for m in tower.visual.modules())  # BatchNorm statistics stay frozen
    stats = {k: v.clone() for k, v in tower.visual.state_dict().items()}
    tower(x).square().mean().backward()
    trained = [p for p in tower.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    assert all(not p.requires_grad and p.grad is None for p in tower.visual.parameters())
    assert all(torch.equal(v, stats[k]) for k, v in tower.visual.state_dict().items())
    assert {id(p) for p in trained} == {id(p) for p in [*tower.ssf_scale.values(), *tower.ssf_shift.values()]}


@pytest.mark.parametrize("kind", KINDS)
def test_fold_equals_the_adapted_tower_after_training(kind):
    tower, plain = _adapted(kind)
    opt = torch.optim.SGD([p for p in tower.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        opt.zero_grad()
        tower(_images(4, seed=10 + step)).square().mean().backward()
        opt.step()
    x = _images()
    with torch.no_grad():
        adapted, before = tower(x), plain(x)
        exported = tower.for_export()
        folded = exported(x)
        assert (adapted - before).abs().max() > 1e-3  # the adaptation changes the output ...
        torch.testing.assert_close(folded, adapted, rtol=1e-5, atol=1e-5)  # ... and the fold keeps it
        assert torch.equal(tower(x), adapted)  # for_export left the adapted tower as it was
    assert not any(p.requires_grad for p in exported.parameters()) and not exported.training


def test_hybrid_fold_is_reparameterised():
    tower, _ = _adapted("pkd-tiny-hybrid")
    exported = tower.for_export()
    branches = [m for m in exported.modules() if hasattr(m, "reparameterize")]
    assert branches and all(m.reparam_conv is not None for m in branches)
    assert not any(name.endswith(("conv_kxk", "conv_scale", "identity", "large_conv", "small_conv"))
                   for name, _ in exported.named_modules())


def _ops(module: nn.Module, path) -> collections.Counter:
    import onnx

    export_module(module, path, _images(), "image", ["features"])
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("kind", ["pkd-tiny-hybrid", "pkd-tiny-convnext"])
def test_onnx_graph_has_the_plain_towers_operators(kind, tmp_path):
    import onnxruntime as ort

    tower, plain = _adapted(kind)
    folded = _ops(tower.for_export(), tmp_path / "folded.onnx")
    assert folded == _ops(reparameterize_model(copy.deepcopy(plain)), tmp_path / "plain.onnx")
    if kind == "pkd-tiny-hybrid":  # no training branch is left: one BatchNorm per attention block's own pre-norm
        assert folded["BatchNormalization"] == sum(isinstance(m, AttentionBlock) for m in plain.modules())
    x = _images(3, seed=7)
    session = ort.InferenceSession(str(tmp_path / "folded.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, tower(x).numpy(), rtol=1e-4, atol=1e-4)


def test_trained_state_round_trip_and_refusals():
    tower, _ = _adapted("pkd-tiny-convnext")
    state = tower.trained_state()
    assert all(not v.requires_grad and v.device.type == "cpu" and v.is_contiguous() for v in state.values())
    fresh = AdaptedConvTower(_tower("pkd-tiny-convnext"))
    x = _images()
    with torch.no_grad():  # a deep copy (as a student's copy makes) keeps its own hooks and folds alike
        twin = copy.deepcopy(tower)
        torch.testing.assert_close(twin.for_export()(x), tower(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(twin(x), tower(x))
    with torch.no_grad():
        assert not torch.equal(fresh(x), tower(x))
        fresh.load_trained_state(state, "run/student.safetensors")
        assert torch.equal(fresh(x), tower(x))
    key = next(iter(state))
    with pytest.raises(PkdError, match=rf"missing \['{key}'\]") as e:
        fresh.load_trained_state({k: v for k, v in state.items() if k != key}, "w.safetensors")
    assert "\n" not in str(e.value) and str(e.value).startswith("w.safetensors")
    with pytest.raises(PkdError, match=r"unexpected \['prompts'\]"):
        fresh.load_trained_state({**state, "prompts": torch.zeros(1)}, "w.safetensors")
    shape = list(state[key].shape)
    with pytest.raises(PkdError, match=re.escape(f"{key} is [3], the tower has {shape}")):
        fresh.load_trained_state({**state, key: torch.zeros(3)}, "w.safetensors")


def test_bitfit_mode_trains_shifts_only():
    tower = AdaptedHybridTower(_tower("pkd-tiny-hybrid"), mode="bitfit")
    assert not tower.ssf_scale and tower.ssf_shift and "BitFit" in tower.adaptation


def test_unsupported_towers_are_refused_in_one_line():
    vit = open_clip.create_model("pkd-tiny-student").visual
    with pytest.raises(PkdError, match="no adaptation covers a VisionTransformer image tower; supported: .*FastViT"):
        adapted_tower_class(vit)
    with pytest.raises(PkdError, match="AdaptedHybridTower cannot adapt a ConvNeXt image tower"):
        AdaptedHybridTower(_tower("pkd-tiny-convnext"))
    with pytest.raises(PkdError, match="adaptation mode 'lora' is unknown"):
        AdaptedConvTower(_tower("pkd-tiny-convnext"), mode="lora")
