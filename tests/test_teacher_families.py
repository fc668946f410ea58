"""Teachers of other open_clip families: a SigLIP-like tiny teacher (timm MAP-pool ViT, open_clip TextTransformer
without causal mask, last-token pooling, a Hugging Face tokenizer read from the weights' folder offline)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import NAMES, STUDENT, tiny_config, write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import CLASSES_FILE
from promptkd_edge.models.class_vectors import ClassVectors, compute_class_vectors
from promptkd_edge.models.openclip import load_clip
from promptkd_edge.models.prompted_text import PromptedTextTower
from promptkd_edge.models.teacher import class_prompt, load_teacher

pytest.importorskip("transformers")

ARCH = "pkd-test-siglip-like"
CORPUS = ["a photo of a red square.", "a photo of a green circle.", "blue stripes", "X X X X"]


def _tiny_tokenizer(folder) -> int:
    """A SentencePiece-style (Metaspace) BPE tokenizer with an end token and no start token, as SigLIP's; saved
    as transformers saves a hub repo's tokenizer. Returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tok.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(vocab_size=120, initial_alphabet=alphabet,
                                                              special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def siglip_like(module_dir):
    """(spec ARCH:/folder/open_clip_model.safetensors, the folder): random weights, tokenizer files beside them."""
    from safetensors.torch import save_file

    folder = module_dir / "siglip-like"
    folder.mkdir()
    vocab = _tiny_tokenizer(folder)
    cfg = copy.deepcopy(open_clip.get_model_config("pkd-tiny-map-vit"))
    cfg["text_cfg"] = {"context_length": 16, "vocab_size": vocab, "width": 64, "heads": 2, "layers": 2,
                       "hf_tokenizer_name": "pkd-test/not-on-any-hub", "tokenizer_kwargs": {"clean": "canonicalize"},
                       "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
    open_clip.factory._MODEL_CONFIGS[ARCH] = cfg
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"{ARCH}:{folder / 'open_clip_model.safetensors'}", folder


def _reference(folder, sentences: list[str]):
    """open_clip's own model, weights and HFTokenizer (from the folder), independent of our loading code."""
    from open_clip.tokenizer import HFTokenizer
    from safetensors.torch import load_file

    model = open_clip.create_model(ARCH)
    model.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    tokens = HFTokenizer(str(folder), context_length=16, clean="canonicalize")(sentences)
    return model.eval(), tokens


def test_siglip_like_class_vectors_equal_open_clip_encode_text(siglip_like):
    spec, folder = siglip_like
    teacher = load_teacher(spec)
    cv = compute_class_vectors(teacher, NAMES)
    model, tokens = _reference(folder, [class_prompt(cv.template, n) for n in NAMES])
    assert (tokens[:, 0] != 1).all()  # no start token: the end token (1) closes each sentence
    with torch.no_grad():
        expected = model.encode_text(tokens, normalize=True)
        assert torch.allclose(cv.vectors, expected, atol=1e-6)
        # sigmoid logits scale*cos + bias: the bias is the same for every class, so softmax (what the KD and the
        # bundle use) is that of scale*cos, the class vectors' logits
        images = torch.rand(2, 3, 32, 32)
        own, _ = model.get_logits(images, tokens)
        ours = cv.logits(teacher.encode_image(images))
    assert model.logit_bias is not None and float(model.logit_bias.detach()) == -3.0
    assert cv.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert torch.allclose(ours.softmax(-1), own.softmax(-1), atol=1e-6)
    assert not torch.allclose(ours, own)


def test_missing_tokenizer_offline_says_what_to_pass(siglip_like, tmp_path):
    spec, folder = siglip_like
    (tmp_path / "open_clip_model.safetensors").symlink_to(folder / "open_clip_model.safetensors")
    teacher = load_teacher(f"{ARCH}:{tmp_path / 'open_clip_model.safetensors'}")
    with pytest.raises(PkdError) as e:
        teacher.clip.tokenizer()
    message = str(e.value)
    assert "\n" not in message and "pkd-test/not-on-any-hub" in message and "offline" in message
    assert f"pass {ARCH}:/that/folder/open_clip_model.safetensors" in message and "tokenizer.json" in message


def test_distill_with_siglip_like_teacher(siglip_like, tmp_path):
    from promptkd_edge.train.distill import distill

    spec, folder = siglip_like
    distill(tiny_config(tmp_path, teacher=spec), tmp_path / "run")
    stored = ClassVectors.load(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / CLASSES_FILE).read_text())
    model, tokens = _reference(folder, [class_prompt(stored.template, n) for n in NAMES])
    with torch.no_grad():
        assert torch.allclose(stored.vectors, model.encode_text(tokens, normalize=True), atol=1e-6)
    assert meta["teacher"] == spec and meta["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))


def test_siglip_like_text_prompts_start_at_the_first_token(siglip_like):
    """No start token: the context is positions 0..3; initialised from the prefix at depth 1 it is exactly
    open_clip's encode_text of the sentence (no causal mask, last-token pooling), and deeper prompts change it."""
    spec, folder = siglip_like
    clip = load_teacher(spec).clip
    model, tokens = _reference(folder, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    tower = PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=1, prefix="a photo of a")
    assert tower.offset == 0
    with torch.no_grad():
        assert torch.allclose(tower.encode(NAMES), model.encode_text(tokens), atol=1e-5)
        deep = PromptedTextTower(clip.model, clip.tokenizer(), n_ctx=4, depth=2, prefix="a photo of a",
                                 init_std=0.5)
        assert not torch.allclose(deep.encode(NAMES), model.encode_text(tokens), atol=1e-3)


def test_pkd_teacher_on_siglip_like_trains(siglip_like, tmp_path):
    """Stage I on a SigLIP-like teacher; the run records its tokenizer, and the teacher refuses to load with
    another one in the weights' folder (its text prompts were tuned on the first one's tokens)."""
    import shutil

    from open_clip.tokenizer import HFTokenizer

    from promptkd_edge.models.clip_tokenizer import tokenizer_digest
    from promptkd_edge.models.teacher import read_teacher_file
    from promptkd_edge.train.config import TeacherTuneConfig
    from promptkd_edge.train.teacher import tune_teacher

    folder = tmp_path / "weights"
    shutil.copytree(siglip_like[1], folder)
    spec = f"{ARCH}:{folder / 'open_clip_model.safetensors'}"
    shots = write_images(tmp_path / "shots", 3 * 2, classes=NAMES, seed=1, size=32)
    result = tune_teacher(TeacherTuneConfig(teacher=spec, data=str(shots), shots=2, classes="all", vision_depth=2,
                                            text_depth=2, epochs=1, warmup_epochs=0, batch_size=3, workers=0,
                                            device="cpu", text_chunk=2), tmp_path / "teacher")
    assert result.all_classes == 3 and (tmp_path / "teacher" / "teacher.safetensors").is_file()
    assert load_teacher(str(tmp_path / "teacher")).text.offset == 0
    recorded = read_teacher_file(tmp_path / "teacher" / "teacher.safetensors")[0].tokenizer_sha256
    assert recorded == tokenizer_digest(HFTokenizer(str(folder), context_length=16, clean="canonicalize"))

    for name in os.listdir(folder):  # the same model with another tokenizer (other merges) beside its weights
        if name.startswith(("tokenizer", "special_tokens")):
            (folder / name).unlink()
    CORPUS[:] = [*CORPUS, "yellow triangles", "a photo of a dog"]
    try:
        _tiny_tokenizer(folder)
    finally:
        del CORPUS[-2:]
    assert tokenizer_digest(HFTokenizer(str(folder), context_length=16, clean="canonicalize")) != recorded
    with pytest.raises(PkdError, match=r"tokenizer of .* differs from the one the teacher .* was tuned with"):
        load_teacher(str(tmp_path / "teacher"))


def test_tokenizer_digest_follows_what_the_tokens_are():
    """CLIP's byte-pair tokenizer: one digest per (tables, context length); a copy of it gives the same one."""
    from promptkd_edge.models.clip_tokenizer import tokenizer_digest

    clip = open_clip.get_tokenizer("ViT-B-16")
    assert tokenizer_digest(clip) == tokenizer_digest(open_clip.get_tokenizer("ViT-B-32"))
    assert tokenizer_digest(open_clip.get_tokenizer("pkd-tiny-teacher")) != tokenizer_digest(clip)  # 16 tokens
    other = copy.copy(clip)
    other.bpe_ranks = dict(list(clip.bpe_ranks.items())[:-1])  # one merge fewer: other tokens for some words
    assert tokenizer_digest(other) != tokenizer_digest(clip)


def test_pkd_teacher_refuses_hf_text_towers_before_loading(tmp_path):
    from promptkd_edge.train.config import TeacherTuneConfig
    from promptkd_edge.train.teacher import tune_teacher

    arch = "xlm-roberta-base-ViT-B-32"
    assert open_clip.get_model_config(arch)["text_cfg"]["hf_model_name"]
    shots = write_images(tmp_path / "shots", 4, classes=NAMES[:2], seed=1)
    with pytest.raises(PkdError) as e:
        tune_teacher(TeacherTuneConfig(teacher=f"{arch}:/nonexistent/weights.safetensors", data=str(shots),
                                       shots=1, workers=0, device="cpu"), tmp_path / "teacher")
    assert "\n" not in str(e.value) and arch in str(e.value) and "Hugging Face" in str(e.value)
    assert "zero-shot --teacher" in str(e.value) and not (tmp_path / "teacher").exists()


# ------------------------------------------------------------------------------------ open vocabulary (item 4)


@pytest.mark.parametrize("clean", ["canonicalize", "whitespace", "lower"])
def test_bundle_hf_tokenizer_matches_open_clip_token_for_token(siglip_like, tmp_path, clean):
    """The tokenizer.json the export writes, read by `tokenizers` alone, against open_clip's HFTokenizer on the
    CLIP tokenizer test's generated strings (cuts included)."""
    from open_clip.tokenizer import HFTokenizer
    from test_text_encoder import fuzz_strings

    from promptkd_edge.export.text_encoder import _write_tokenizer, tokenizer_spec
    from promptkd_edge.runtime.tokenizer import load_bundle_tokenizer

    spec, folder = siglip_like
    teacher = load_teacher(spec)
    teacher.clip.extra["tokenizer"] = reference = HFTokenizer(str(folder), context_length=16, clean=clean)
    data, entry = tokenizer_spec(teacher)
    (tmp_path / "text").mkdir()
    _write_tokenizer(data, entry, tmp_path)
    ours = load_bundle_tokenizer(tmp_path, entry)
    texts = fuzz_strings(3000)
    (got, cut), want = ours.tokenize(texts), reference(texts).numpy()
    mismatched = [texts[i] for i in range(len(texts)) if not np.array_equal(got[i], want[i])]
    assert not mismatched, mismatched[:5]
    longer = reference(texts, context_length=64).numpy()
    assert cut == [i for i in range(len(texts)) if longer[i, 16] != 0] and len(cut) > 10
    assert got.dtype == np.int64 and entry["type"] == "hf-tokenizers" and entry["clean"] == clean
    if clean == "canonicalize":  # on the device: the tokenizers library, neither torch nor transformers
        code = ("import json, sys\nfrom promptkd_edge.runtime.tokenizer import load_bundle_tokenizer\n"
                f"ids = load_bundle_tokenizer({str(tmp_path)!r}, json.loads(sys.argv[1]))(sys.argv[2:]).tolist()\n"
                "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)\nprint(ids)")
        done = subprocess.run([sys.executable, "-c", code, json.dumps(entry), *texts[:20]], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == want[:20].tolist()


def _siglip_run(root, spec):
    from promptkd_edge.models.student import StudentConfig, build_student, save_student

    vectors = compute_class_vectors(load_teacher(spec), NAMES, "itap of a {}.")
    run = root / "run"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    student = build_student(load_clip(STUDENT), StudentConfig(spec=STUDENT, teacher_dim=vectors.dim, prompt_depth=2))
    save_student(student.eval(), run / "student.safetensors")
    vectors.save(run)
    write_images(root / "unlabeled", 8)
    return run


def test_text_encoder_bundle_for_siglip_like_teacher(siglip_like, tmp_path):
    """`--text-encoder` with an HF tokenizer: the bundle's encoder, fed by the torch-free tokenizer, gives the
    teacher's class vectors for names the run never saw; the whole context is fed (no causal mask)."""
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions
    from promptkd_edge.runtime.bundle import open_bundle
    from promptkd_edge.runtime.text import TextEncoder

    spec, _ = siglip_like
    run = _siglip_run(tmp_path, spec)
    bundle = tmp_path / "bundle"
    export_run(run, bundle, ExportOptions(head="both", text_encoder=True, data=str(tmp_path / "unlabeled"),
                                          parity_images=4))
    entry = open_bundle(bundle).manifest.text_encoder
    assert entry.passed() >= {"fp32"} and entry.tokenizer["cut_after_longest_end"] is False
    assert "text/tokenizer.json" in open_bundle(bundle).manifest.files
    new = ["red fox", "polar bear", "Crème brûlée", "a_b_c"]
    want = compute_class_vectors(load_teacher(spec), new, "itap of a {}.").vectors.numpy()
    encoder = TextEncoder(open_bundle(bundle))
    got, _ = encoder.encode(new)
    assert np.abs(got - want).max() <= 1e-4


def test_uncached_hub_tokenizer_offline_is_one_line():
    from promptkd_edge.models.clip_tokenizer import load_tokenizer

    with pytest.raises(PkdError) as e:
        load_tokenizer("hf-hub:pkd-test/not-on-any-hub")
    assert "\n" not in str(e.value) and "local-dir:" in str(e.value) and "pkd-test/not-on-any-hub" in str(e.value)
