"""Load any open_clip model from a spec: `ARCH`, `ARCH:TAG`, `ARCH:/path/to/weights`, `hf-hub:...`, `local-dir:...`.

Offline, a pretrained tag whose weights are not in the local cache fails at once with one line that says how to
pass a local file, instead of open_clip's ~46 s of download retries.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.formats.preprocess import PreprocessSpec as Preprocess  # one description, torch-free
from promptkd_edge.models.spec import SCHEMAS, WEIGHT_SUFFIXES, ModelSpec  # noqa: F401 - part of this module's API
from promptkd_edge.utils.paths import check_file

CONFIG_DIR = Path(__file__).parent / "configs"
log = logging.getLogger(__name__)


@dataclass
class LoadedCLIP:
    """An open_clip model, frozen and in eval mode, with what it needs around it."""

    model: torch.nn.Module
    spec: ModelSpec
    preprocess: Preprocess
    weights_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def tokenizer(self):
        """open_clip's tokenizer of this model (loaded once): CLIP's BPE, or an HFTokenizer read offline from a
        local folder or the hub cache (see `load_tokenizer`)."""
        if "tokenizer" not in self.extra:
            from promptkd_edge.models.clip_tokenizer import load_tokenizer

            self.extra["tokenizer"] = load_tokenizer(self.spec)
        return self.extra["tokenizer"]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())


_registered = False


def register_tiny_configs() -> None:
    """Make the package's tiny architectures (`pkd-tiny-teacher`, `pkd-tiny-student`, and one tiny tower per
    student family: `pkd-tiny-map-vit`, `pkd-tiny-eva`, ...) known to open_clip (and their timm trunks to timm)."""
    global _registered
    if not _registered:
        import open_clip

        from promptkd_edge.models.tiny_towers import register_tiny_conv_configs, register_tiny_timm_configs

        open_clip.add_model_config(CONFIG_DIR)
        register_tiny_timm_configs()
        register_tiny_conv_configs()
        _registered = True


def list_architectures() -> list[str]:
    import open_clip

    register_tiny_configs()
    return open_clip.list_models()


def _check_arch(arch: str) -> None:
    known = list_architectures()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `pkd models` lists them"
        raise PkdError(f"unknown open_clip architecture '{arch}'{hint}")


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick probe of the Hugging Face Hub (skipped behind a proxy, which the hub client handles itself)."""
    if _hf_offline():
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_tag_file(cfg: dict[str, Any]) -> str | None:
    """The local file of a pretrained tag when it is already downloaded, else None."""
    if "file" in cfg:
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin"
                              else filename[:-4] + ".safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _resolve_tag(arch: str, tag: str) -> tuple[str, dict[str, Any]]:
    """Return (local weights file, tag config), downloading only when the hub is reachable."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"known tags for {arch}: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
        raise PkdError(f"'{tag}' is neither a pretrained tag nor an existing weights file ({known})")
    cached = _cached_tag_file(cfg)
    if cached:
        return cached, cfg
    if not hub_reachable():
        where = cfg.get("hf_hub") or cfg.get("url") or "the model hub"
        raise PkdError(
            f"weights for {arch}:{tag} are not cached and the model hub is unreachable (offline); download "
            f"{where} on a connected machine and pass {arch}:/path/to/open_clip_model.safetensors instead")
    try:
        return open_clip.download_pretrained(cfg), cfg
    except Exception as e:  # network errors of every kind end here
        raise PkdError(f"could not download weights for {arch}:{tag}: {first_line(e, with_type=False)}") from None


def weights_file_for(spec: ModelSpec | str) -> str | None:
    """The local weights file `spec` loads (tags resolved through the cache, downloading when online)."""
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.arch.startswith(SCHEMAS) or not spec.pretrained:
        return None
    if spec.is_file:
        return str(check_file(Path(spec.pretrained).expanduser(), "weights file"))
    register_tiny_configs()
    _check_arch(spec.arch)
    return _resolve_tag(spec.arch, spec.pretrained)[0]


OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")  # entries of OpenAI's own state dicts


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file (.safetensors, a .pt/.bin state dict, or an open_clip training checkpoint)."""
    return read_weights(path, allow_pickle)[0]


def read_weights(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, why the file looks like OpenAI's own CLIP release, or None).

    Pickle-based files are read with `weights_only=True` (no code runs). OpenAI's TorchScript archives need
    real unpickling and are only opened with `allow_pickle=True`. OpenAI's extra entries (input_resolution,
    context_length, vocab_size) are dropped, as open_clip does.
    """
    path = check_file(Path(path), "weights file")
    if path.stat().st_size == 0:
        raise PkdError(f"weights file {path} is empty (0 bytes): an interrupted download or copy?")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = _torch_load(path, allow_pickle)
    except PkdError:
        raise
    except Exception as e:
        raise PkdError(f"cannot read weights file {path} ({_kind(path)}): {first_line(e)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise PkdError(f"weights file {path} holds no state dict (it holds {_describe_object(obj)})")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        other = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise PkdError(f"weights file {path} is not a state dict of tensors (entry {other!r} is a "
                       f"{type(obj[other]).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    evidence = None
    if _is_torchscript(path):
        evidence = "a TorchScript archive, OpenAI's release format"
    elif any(k in obj for k in OPENAI_ONLY_KEYS):
        evidence = "the input_resolution / context_length / vocab_size entries of OpenAI's state dicts"
    else:
        evidence = _quick_gelu_config(path)
    return {k: v for k, v in obj.items() if k not in OPENAI_ONLY_KEYS}, evidence


def _kind(path: Path) -> str:
    """What a weights file claims to be, for error messages."""
    import zipfile

    if path.suffix == ".safetensors":
        return "safetensors"
    return "a torch zip archive" if zipfile.is_zipfile(path) else "a legacy torch pickle"


def _describe_object(obj: Any) -> str:
    if isinstance(obj, dict):
        return "an empty dict" if not obj else f"a dict of {len(obj)} entries"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items" if obj else f"an empty {type(obj).__name__}"
    return f"a {type(obj).__name__}"


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _quick_gelu_config(path: Path) -> str | None:
    """open_clip's own config beside a weights file (hub downloads, local-dir) says whether it uses QuickGELU."""
    import json

    config = path.parent / "open_clip_config.json"
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return "open_clip_config.json beside it sets quick_gelu" if cfg.get("model_cfg", {}).get("quick_gelu") else None


def quick_gelu_variant(arch: str) -> str | None:
    """open_clip's QuickGELU twin of `arch` (`ViT-B-16` -> `ViT-B-16-quickgelu`), if it has one."""
    name = f"{arch}-quickgelu"
    return name if name in list_architectures() else None


def check_activation(model: torch.nn.Module, arch: str, weights: str, evidence: str | None) -> None:
    """OpenAI's CLIP weights were trained with QuickGELU: loading them into a GELU architecture gives wrong
    features without any error. Refuse that, with the fix; a path that merely mentions "openai" gets a warning."""
    from open_clip.transformer import QuickGELU

    if any(isinstance(m, QuickGELU) for m in model.modules()):
        return
    fix = quick_gelu_variant(arch) or "an architecture with QuickGELU"
    if evidence:
        raise PkdError(f"{weights} looks like OpenAI's CLIP weights ({evidence}), which use QuickGELU, but {arch} "
                       f"builds GELU and would give wrong features: pass {fix}:{weights}")
    if "openai" in str(weights).lower():
        log.warning("%s is named like OpenAI's CLIP weights, which use QuickGELU; %s builds GELU. If they are "
                    "OpenAI's, pass %s:%s", weights, arch, fix, weights)


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    import zipfile

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if not head.startswith(b"\x80"):  # neither torch.save's zip nor a pickle
            raise PkdError(f"{path} is not a PyTorch weights file (neither a torch.save zip archive nor a pickle; "
                           f"it starts with {head!r}); open_clip weights are .safetensors, .pt or .bin")
    if _is_torchscript(path):
        if not allow_pickle:
            raise PkdError(f"{path} is a TorchScript archive (OpenAI's original CLIP format); reading it runs "
                           "pickled code: pass --allow-pickle if you trust the file")
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if not allow_pickle:
            raise PkdError(f"{path} needs full unpickling to be read ({first_line(e)[:120]}); "
                           "pass --allow-pickle if you trust the file") from None
        return torch.load(str(path), map_location="cpu", weights_only=False)


def _describe_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} file {list(sd[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    return "; ".join(parts) or "keys do not match"


def load_weights_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load an open_clip state dict (converting third-party layouts as open_clip does) or fail with one line."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(model, dict(sd))
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    own = model.state_dict()
    transient = {name for name, _ in model.named_buffers()} - set(own)  # e.g. attn_mask, rebuilt by the model
    sd = {k: v for k, v in sd.items() if k not in transient}
    if set(sd) != set(own):
        raise PkdError(f"weights {source} do not fit architecture {arch}: {_describe_mismatch(model, sd)}")
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError:
        raise PkdError(f"weights {source} do not fit architecture {arch}: {_describe_mismatch(model, sd)}") from None


def load_clip(spec: ModelSpec | str, *, device: str | torch.device = "cpu", allow_pickle: bool = False) -> LoadedCLIP:
    """Create an open_clip model from `spec`, load its weights, freeze it and put it in eval mode."""
    import open_clip

    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    register_tiny_configs()
    weights_file: str | None = None
    tag_cfg: dict[str, Any] = {}
    state_dict = None
    if spec.arch.startswith(SCHEMAS):
        model = _create_from_schema(spec.arch)
    else:
        _check_arch(spec.arch)
        evidence = None
        if spec.pretrained and spec.is_file:
            weights_file = str(Path(spec.pretrained).expanduser())
            state_dict, evidence = read_weights(weights_file, allow_pickle=allow_pickle)
        elif spec.pretrained:
            weights_file, tag_cfg = _resolve_tag(spec.arch, spec.pretrained)
            state_dict = read_state_dict(weights_file, allow_pickle=allow_pickle)
        preprocess_keys = ("mean", "std", "interpolation", "resize_mode")
        with warnings.catch_warnings(), _quiet_open_clip():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(
                spec.arch, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                force_preprocess_cfg={k: tag_cfg[k] for k in preprocess_keys if k in tag_cfg})
        if state_dict is not None:
            if spec.is_file:
                check_activation(model, spec.arch, weights_file, evidence)
            load_weights_into(model, state_dict, weights_file or str(spec), spec.arch)
    model.eval().requires_grad_(False)
    model.to(device)
    return LoadedCLIP(model=model, spec=spec, preprocess=preprocess_of(model), weights_file=weights_file)


def _create_from_schema(name: str) -> torch.nn.Module:
    import open_clip

    if name.startswith("hf-hub:") and not hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        repo = name[len("hf-hub:"):]
        if not isinstance(try_to_load_from_cache(repo_id=repo, filename="open_clip_config.json"), str):
            raise PkdError(f"{name} is not cached and the model hub is unreachable (offline); download the repo "
                           f"on a connected machine and pass local-dir:/path/to/it instead")
    try:
        with warnings.catch_warnings(), _quiet_open_clip():
            warnings.simplefilter("ignore")
            return open_clip.create_model(name)
    except FileNotFoundError as e:
        raise PkdError(str(e)) from None
    except RuntimeError as e:
        raise PkdError(f"cannot load {name}: {first_line(e, with_type=False)}") from None


class _quiet_open_clip:
    """Silence open_clip's INFO/WARNING chatter ('No pretrained weights loaded') for the duration."""

    def __enter__(self):
        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def preprocess_for(spec: ModelSpec | str) -> Preprocess:
    """The preprocessing `spec` implies, read from open_clip's configs without building the model."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.arch.startswith(SCHEMAS):
        return load_clip(spec).preprocess
    register_tiny_configs()
    _check_arch(spec.arch)
    cfg = open_clip.get_model_config(spec.arch)
    merged = {**PreprocessCfg().__dict__, **cfg.get("preprocess_cfg", {})}
    if spec.pretrained and not spec.is_file:
        merged.update({k: v for k, v in open_clip.get_pretrained_cfg(spec.arch, spec.pretrained).items()
                       if k in ("mean", "std", "interpolation", "resize_mode")})
    size = cfg["vision_cfg"].get("image_size", merged["size"])
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Preprocess(size=(int(size[0]), int(size[1])), mean=tuple(merged["mean"]), std=tuple(merged["std"]),
                      interpolation=merged["interpolation"], resize_mode=merged["resize_mode"])


def preprocess_of(model: torch.nn.Module) -> Preprocess:
    from open_clip import get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Preprocess(size=(int(size[0]), int(size[1])), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg.get("interpolation", "bicubic"),
                      resize_mode=cfg.get("resize_mode", "shortest"))
