"""CLIP weights for relevancy: read a local weights file in any of its forms, infer the
architecture from its shapes, build the open_clip model, or find cached pretrained weights; the
counterpart of openai/CLIP's `load` (load_model) and `build_model` (build_model).
What the weights are used for: docs/method.md#weights-preprocessing-and-precision.

A local weights file comes in one of these forms, all read into one state dict with OpenAI's key
names (open_clip's ViTs use the same names):
* an OpenAI TorchScript archive (`~/.cache/clip/ViT-B-32.pt`, what `clip.load` downloads);
* a plain OpenAI state dict, with or without the integer entries input_resolution,
  context_length and vocab_size that CLIP's own loader drops;
* either of these inside a {"state_dict": ...} wrapper (open_clip's training checkpoints), with
  or without DDP's leading "module.";
* an open_clip state dict (.pt, .bin or .safetensors).
As CLIP's `build_model`, the architecture is read from the tensor shapes. OpenAI weights (the
archive, the integer entries, or fp16 tensors as OpenAI stores them) get QuickGELU and their
linear weights rounded through fp16 as the original's loader does; other weights get
the activation their --model name says (plain GELU unless the name ends in -quickgelu).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from checkpoint import state_dict_mismatch
from utils import InputError

OPENAI_INT_KEYS = ("input_resolution", "context_length", "vocab_size")
DEFAULT_MODEL = "ViT-B-32"
CLIP_CACHE = Path("~/.cache/clip").expanduser()  # where the `clip` package keeps OpenAI's files
CLIP_CACHE_FILES = {  # open_clip name -> OpenAI file name in CLIP_CACHE
    "ViT-B-32": "ViT-B-32.pt",
    "ViT-B-16": "ViT-B-16.pt",
    "ViT-L-14": "ViT-L-14.pt",
    "ViT-L-14-336": "ViT-L-14@336px.pt",
}
WEIGHT_SOURCES = (
    "--checkpoint PATH (an OpenAI ViT-B-32.pt, e.g. from ~/.cache/clip, or an open_clip state "
    "dict), put OpenAI's ViT-B-32.pt into ~/.cache/clip, go online once so open_clip caches "
    "--pretrained openai, or --pretrained none (random weights: a smoke test, maps mean nothing)"
)


@dataclass(frozen=True)
class Architecture:
    """What a CLIP ViT state dict fixes about its model (CLIP's build_model reads the same)."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    context_length: int
    vocab_size: int

    def describe(self) -> str:
        return (
            f"a ViT with patch {self.patch_size}, {self.image_size} px input, width "
            f"{self.vision_width}, {self.vision_layers} layers, embed dim {self.embed_dim}, text "
            f"width {self.text_width} x {self.text_layers} layers"
        )


def infer_architecture(state_dict) -> Architecture:
    """Architecture of an OpenAI-layout CLIP ViT state dict, from its shapes (as CLIP's
    build_model reads them)."""
    patch = state_dict["visual.conv1.weight"].shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)

    def layers(prefix):
        return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})

    return Architecture(
        embed_dim=state_dict["text_projection"].shape[1],
        vision_width=state_dict["visual.conv1.weight"].shape[0],
        vision_layers=layers("visual.transformer.resblocks."),
        patch_size=patch,
        image_size=patch * grid,
        text_width=state_dict["ln_final.weight"].shape[0],
        text_layers=layers("transformer.resblocks."),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
    )


def named_architecture(model_name: str) -> Architecture | None:
    """The Architecture an open_clip config name stands for; None for non-ViT configs."""
    config = open_clip.get_model_config(model_name) or {}
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if not isinstance(vision.get("layers"), int) or vision.get("timm_model_name"):
        return None
    if text.get("hf_model_name"):
        return None
    image_size = vision.get("image_size", 224)
    return Architecture(
        embed_dim=config["embed_dim"],
        vision_width=vision.get("width", 768),
        vision_layers=vision["layers"],
        patch_size=vision.get("patch_size", 16),
        image_size=image_size[0] if isinstance(image_size, list | tuple) else image_size,
        text_width=text.get("width", 512),
        text_layers=text.get("layers", 12),
        context_length=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", 49408),
    )


def model_for_architecture(arch: Architecture) -> str | None:
    """The open_clip name of a known architecture (for messages and the tokenizer)."""
    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-g-14"):
        if named_architecture(name) == arch:
            return name
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict with OpenAI key names, whether the file is OpenAI's) of a local weights file.

    Every problem is one InputError line naming the file; nothing is ever unpickled unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint file not found: {path}")
    openai = False
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            openai = True
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "GLOBAL" in str(error):
            raise InputError(
                f"checkpoint {path} holds Python objects besides tensors, which are not loaded "
                "for safety; save the model's state_dict() alone and pass that file"
            ) from error
        raise InputError(
            f"checkpoint {path} is not a PyTorch weights file (torch cannot read it)"
        ) from error
    except Exception as error:  # torch / zipfile / safetensors raise many types for foreign files
        raise InputError(
            f"checkpoint {path} is not a PyTorch weights file (torch cannot read it)"
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # open_clip training checkpoints, other wrappers
    if not isinstance(state, Mapping):
        raise InputError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    state = {str(key).removeprefix("module."): value for key, value in state.items()}
    if any(key in state for key in OPENAI_INT_KEYS):
        openai = True
        state = {k: v for k, v in state.items() if k not in OPENAI_INT_KEYS}
    needed = (
        "visual.conv1.weight",
        "visual.proj",
        "visual.positional_embedding",
        "text_projection",
    )
    if not all(isinstance(state.get(key), torch.Tensor) for key in needed):
        found = ", ".join(list(state)[:4]) + (", ..." if len(state) > 4 else "")
        raise InputError(
            f"checkpoint {path} holds no CLIP ViT weights (no {', '.join(needed)}); its keys: "
            f"{found or 'none'}"
        )
    # OpenAI stores its linear and conv weights in fp16; open_clip checkpoints are fp32
    openai = openai or state["visual.conv1.weight"].dtype == torch.float16
    return state, openai


def build_model(arch: Architecture, quick_gelu: bool) -> open_clip.CLIP:
    """A random-weight open_clip CLIP of an architecture read from the shapes (CLIP's
    build_model)."""
    vision = open_clip.model.CLIPVisionCfg(
        layers=arch.vision_layers,
        width=arch.vision_width,
        patch_size=arch.patch_size,
        image_size=arch.image_size,
    )
    text = open_clip.model.CLIPTextCfg(
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_width // 64,  # as CLIP's build_model
        layers=arch.text_layers,
    )
    return open_clip.CLIP(arch.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)


def _named_model(model_name: str, arch: Architecture, openai: bool, path: str | Path):
    """The random-weight open_clip model `model_name`, which must be the weights' architecture."""
    named = named_architecture(model_name)
    if named is None:
        raise InputError(f"--model {model_name} is not a CLIP ViT that relevancy can use")
    if named != arch:
        raise InputError(
            f"--model {model_name} contradicts {path}: the weights are "
            f"{model_for_architecture(arch) or arch.describe()}, {model_name} is "
            f"{named.describe()}; leave --model out to take the architecture from the weights"
        )
    quick_gelu = openai or bool(open_clip.get_model_config(model_name).get("quick_gelu"))
    with _quiet_open_clip_logging():
        return open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)


def model_from_weights(
    path: str | Path, model_name: str | None = None
) -> tuple[torch.nn.Module, str]:
    """(open_clip CLIP model, model name) built from a local weights file (any form above).

    Without `model_name` the architecture comes from the weights, as CLIP's own loader does; a
    name that contradicts the weights is an InputError saying so.
    """
    state, openai = read_weights(path)
    arch = infer_architecture(state)
    if model_name is not None:
        model, name = _named_model(model_name, arch, openai, path), model_name
    else:
        model = build_model(arch, quick_gelu=openai)
        # the tokenizer: every OpenAI-style ViT shares CLIP's BPE
        name = model_for_architecture(arch) or DEFAULT_MODEL
    mismatch = state_dict_mismatch(
        model.state_dict(),
        state,
        words=("missing", "unexpected", "mis-shaped"),
        entry="{count} {what}: {examples}",
        more=" (+{rest} more)",
    )
    if mismatch:
        raise InputError(f"checkpoint {path} does not fit {name}: {mismatch}")
    if openai:
        # the original loader converts to fp16 before loading, then back to fp32 on CPU
        open_clip.model.convert_weights_to_lp(model, dtype=torch.float16)
    model.load_state_dict(state)
    return model.float(), name


@contextlib.contextmanager
def _quiet_open_clip_logging():
    """open_clip logs download failures and 'no pretrained weights' on the root logger."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def cached_weights(model_name: str, pretrained: str) -> Path | None:
    """A local file for (model, tag) without touching the network: CLIP's own cache for OpenAI's
    weights, else open_clip's / Hugging Face's cache. None when nothing is cached."""
    if pretrained == "openai" and model_name.removesuffix("-quickgelu") in CLIP_CACHE_FILES:
        candidate = CLIP_CACHE / CLIP_CACHE_FILES[model_name.removesuffix("-quickgelu")]
        if candidate.is_file():
            return candidate
    config = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if config.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id = config["hf_hub"].rstrip("/")
        for filename in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            found = try_to_load_from_cache(repo_id, filename)
            if isinstance(found, str):
                return Path(found)
    if config.get("url"):
        candidate = CLIP_CACHE / Path(config["url"]).name
        if candidate.is_file():
            return candidate
    return None


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the weights host opens within `timeout`, name lookup included
    (no data is sent)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    result = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a hung DNS lookup is left behind
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _pretrained_model(model_name: str, pretrained: str) -> torch.nn.Module:
    """open_clip's `model_name` with the weights of tag `pretrained`: from CLIP's cache, open_clip's
    / HF's cache, or downloaded; an InputError naming every way to supply them when none works."""
    if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise InputError(f"unknown pretrained tag {pretrained!r} for {model_name}; known: {tags}")
    local = cached_weights(model_name, pretrained)
    if local is not None and local.parent == CLIP_CACHE and pretrained == "openai":
        return model_from_weights(local, model_name)[0]
    if local is None and not hub_reachable():
        raise InputError(
            f"no {model_name} weights for --pretrained {pretrained}: they are not cached "
            f"and the hub cannot be reached; supply them by {WEIGHT_SOURCES}"
        )
    try:
        with _quiet_open_clip_logging():  # our one-line error replaces open_clip's logs
            return open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as error:  # download or cache failures come in many types
        raise InputError(
            f"no {model_name} weights for --pretrained {pretrained}: the download "
            f"failed ({type(error).__name__}); supply them by {WEIGHT_SOURCES}"
        ) from error


def load_model(
    model_name: str | None = DEFAULT_MODEL,
    pretrained: str | None = "openai",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
):
    """Build an open_clip model and its tokenizer, in eval mode with frozen parameters (CLIP's
    `load`).

    * `checkpoint`: a local weights file in any form `read_weights` takes; `model_name=None` takes
      the architecture from the file, a name that contradicts it is an InputError.
    * `pretrained`: an open_clip tag (e.g. "openai", "laion2b_s34b_b79k"), read from CLIP's
      ~/.cache/clip or the HF / open_clip cache, downloaded when online; with nothing cached and
      the hub unreachable it fails at once naming every way to supply weights.
    * `pretrained="none"`: random weights for tests and smoke runs; the maps mean nothing.
    """
    if model_name is not None and model_name not in open_clip.list_models():
        raise InputError(
            f"unknown open_clip model {model_name!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14"
        )
    if checkpoint is not None:
        model, model_name = model_from_weights(checkpoint, model_name)
    elif pretrained is None or pretrained.lower() == "none":
        model_name = model_name or DEFAULT_MODEL
        warnings.warn(
            "--pretrained none: random CLIP weights, the relevancy maps mean nothing", stacklevel=2
        )
        with _quiet_open_clip_logging():
            model = open_clip.create_model(model_name, pretrained=None)
    else:
        model_name = model_name or DEFAULT_MODEL
        model = _pretrained_model(model_name, pretrained)
    model = model.to(device).eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)
