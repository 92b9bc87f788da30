"""Multi-scale CLIP relevancy maps on open_clip vision transformers.

Defines the saliency configs (`ours`, `chefer_et_al`, `fast`), the crop tiling, the per-crop
Chefer-style relevancy of the last visual block, flip averaging, paste-back and the text features
used as targets. Spec: ../shared/spec/relevancy.md (sections 1-4 and 6; "spec N" below).

Per crop c and label p the map is (spec 2):

    rel[p, c] = mean_heads( max(0, dS_p/dA * A) )[CLS row, patch columns] -> (grid, grid)

with A the post-softmax attention of the LAST visual block and S_p = 100 * cos(f_c, t_p). Only the
CLS output of the last block reaches the image feature (token pooling), so only A's CLS row has a
gradient and only that row is built with autograd; the blocks before it run without autograd, and
all labels' gradients come from one batched vector-Jacobian product
(`torch.autograd.grad(..., is_grads_batched=True)`).

Quirks kept for parity (default `tiling="parity"`), fixed by `tiling="full"` (`--tiling full`):
* a column offset is skipped when it is >= the image height (spec 3.3): landscape images lose
  columns;
* no edge crop: pixels beyond the last full stride are not covered at that scale;
* a tile larger than the image gives no crop (portrait images with img_dim = height);
* every pixel is divided by the number of scales, covered or not (spec 3.5);
* per-scale accumulators are rounded to fp16 (spec 1.3).
Known differences from the original that are not flags: crops are resized with torch's
antialiased uint8 bicubic instead of PIL's (same filter family, small rounding differences); the
fp16 rounding happens once per scale at the end instead of at every addition; the colour jitter is
torchvision's on tensors, seeded (the original never seeded it); labels are not re-run in chunks
of 32 (all labels share one image forward).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import ColorJitter
from tqdm import tqdm

from utils import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 100.0  # fixed factor of the original, not logit_scale.exp() (spec 2)
HOME_PROMPT = "a photograph of a {} in a home."
THOR_PROMPT = "a render of a {} in a game engine."
TILINGS = ("parity", "full")
RESIZES = ("pil", "torch")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "room.png"  # the bundled example
MAX_CROP_FORWARDS = 20_000  # above this, `image` and the web page stop unless told to go on

# The 80 ImageNet prompt templates of CLIP (spec 4), used when a config sets
# imagenet_prompt_ensemble.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


# --------------------------------------------------------------------------------------------------
# Configs and tiling (spec 3.1, 3.3)


@dataclass(frozen=True)
class SaliencyConfig:
    scales: tuple[tuple[int, int], ...]  # (tile size, stride) per scale, in the original's order
    horizontal_flipping: bool
    augmentations: int  # colour-jittered copies besides the original
    imagenet_prompt_ensemble: bool = False
    positive_attn_only: bool = True
    tiling: str = "parity"
    resize: str = "pil"  # "pil": PIL's bicubic per crop (parity, spec 1.4); "torch": batched


def _ours(img_dim: int) -> SaliencyConfig:
    sizes = (img_dim, int(img_dim * 2 / 3), img_dim // 2, img_dim // 4)
    return SaliencyConfig(
        tuple((s, s // 4) for s in sizes), horizontal_flipping=True, augmentations=5
    )


def _chefer_et_al(img_dim: int) -> SaliencyConfig:
    return SaliencyConfig(((img_dim, img_dim // 4),), horizontal_flipping=False, augmentations=0)


def _fast(img_dim: int) -> SaliencyConfig:
    """CPU preset (ours): 3 scales (1, 1/2, 1/3 of img_dim), stride half a tile, flips, no jitter,
    `full` tiling so that every pixel is covered at every scale, crops resized by torch in batches."""
    sizes = (img_dim, img_dim // 2, img_dim // 3)
    return SaliencyConfig(
        tuple((s, s // 2) for s in sizes),
        horizontal_flipping=True,
        augmentations=0,
        tiling="full",
        resize="torch",
    )


CONFIGS = {"ours": _ours, "chefer_et_al": _chefer_et_al, "fast": _fast}


def saliency_config(
    name: str, img_dim: int, tiling: str | None = None, resize: str | None = None
) -> SaliencyConfig:
    """The named config as a function of img_dim; `tiling` and `resize` override its own."""
    if name not in CONFIGS:
        raise InputError(f"unknown saliency config {name!r}; choose from {', '.join(CONFIGS)}")
    if img_dim < 4:
        raise InputError(f"img_dim {img_dim} is too small: the smallest crop would be empty")
    config = CONFIGS[name](img_dim)
    if tiling is not None:
        if tiling not in TILINGS:
            raise InputError(f"unknown tiling {tiling!r}; choose from {', '.join(TILINGS)}")
        config = replace(config, tiling=tiling)
    if resize is not None:
        if resize not in RESIZES:
            raise InputError(f"unknown crop resize {resize!r}; choose from {', '.join(RESIZES)}")
        config = replace(config, resize=resize)
    return config


def _offsets(length: int, tile: int, stride: int, edge: bool) -> list[int]:
    offsets = list(range(0, length - tile + 1, max(stride, 1)))
    if edge and offsets and offsets[-1] != length - tile:
        offsets.append(length - tile)
    return offsets


def crop_regions(
    height: int, width: int, tile: int, stride: int, tiling: str
) -> list[tuple[int, int]]:
    """(row, col) offsets of the square crops of one scale, in the original's order (column-major).

    parity: the original loop (spec 3.3), including the skip of column offsets >= height and of row
    offsets >= width, no edge crop, no crop when the tile exceeds the image.
    full: the tile is capped at min(height, width) and a last crop flush with each edge is added.
    """
    if tiling == "full":
        tile = min(tile, height, width)
        return [
            (row, col)
            for col in _offsets(width, tile, stride, edge=True)
            for row in _offsets(height, tile, stride, edge=True)
        ]
    return [
        (row, col)
        for col in _offsets(width, tile, stride, edge=False)
        if col < height  # QUIRK (parity): compares the column offset with the height; --tiling full
        for row in _offsets(height, tile, stride, edge=False)
        if row < width
    ]


def scale_tiles(height: int, width: int, config: SaliencyConfig) -> list[tuple[int, list]]:
    """[(effective tile size, crop offsets)] per scale of the config."""
    tiles = []
    for tile, stride in config.scales:
        regions = crop_regions(height, width, tile, stride, config.tiling)
        tiles.append((min(tile, height, width) if config.tiling == "full" else tile, regions))
    return tiles


# --------------------------------------------------------------------------------------------------
# Weights (spec 1.1, 1.2)
#
# A local weights file comes in one of these forms, all read into one state dict with OpenAI's key
# names (open_clip's ViTs use the same names):
# * an OpenAI TorchScript archive (`~/.cache/clip/ViT-B-32.pt`, what `clip.load` downloads);
# * a plain OpenAI state dict, with or without the integer entries input_resolution,
#   context_length and vocab_size that CLIP's own loader drops;
# * either of these inside a {"state_dict": ...} wrapper (open_clip's training checkpoints), with
#   or without DDP's leading "module.";
# * an open_clip state dict (.pt, .bin or .safetensors).
# As CLIP's `build_model`, the architecture is read from the tensor shapes. OpenAI weights (the
# archive, the integer entries, or fp16 tensors as OpenAI stores them) get QuickGELU and their
# linear weights rounded through fp16 as the original's loader does (spec 1.3); other weights get
# the activation their --model name says (plain GELU unless the name ends in -quickgelu).

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
    """Architecture of an OpenAI-layout CLIP ViT state dict, from its shapes (spec 1.2)."""
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


def state_dict_mismatch(expected: Mapping, state: Mapping) -> str:
    """'' when `state` fits `expected` key by key and shape by shape, else what does not fit."""

    def some(items):
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {list(state[key].shape)} vs {list(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    parts = [
        f"{len(items)} {what}: {some(items)}"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", shapes),
        )
        if items
    ]
    return "; ".join(parts)


def model_from_weights(
    path: str | Path, model_name: str | None = None
) -> tuple[torch.nn.Module, str]:
    """(open_clip CLIP model, model name) built from a local weights file (any form above).

    Without `model_name` the architecture comes from the weights, as CLIP's own loader does; a
    name that contradicts the weights is an InputError saying so.
    """
    state, openai = read_weights(path)
    arch = infer_architecture(state)
    known = model_for_architecture(arch)
    if model_name is not None:
        named = named_architecture(model_name)
        if named is None:
            raise InputError(f"--model {model_name} is not a CLIP ViT that relevancy can use")
        if named != arch:
            raise InputError(
                f"--model {model_name} contradicts {path}: the weights are "
                f"{known or arch.describe()}, {model_name} is {named.describe()}; leave --model "
                "out to take the architecture from the weights"
            )
        quick_gelu = openai or bool(open_clip.get_model_config(model_name).get("quick_gelu"))
        with _quiet_open_clip_logging():
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        name = model_name
    else:
        quick_gelu = openai
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
        model = open_clip.CLIP(
            arch.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu
        )
        name = known or DEFAULT_MODEL  # the tokenizer: every OpenAI-style ViT shares CLIP's BPE
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(f"checkpoint {path} does not fit {name}: {mismatch}")
    if openai:
        # the original loader converts to fp16 before loading, then back to fp32 on CPU (spec 1.3)
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


def load_model(
    model_name: str | None = DEFAULT_MODEL,
    pretrained: str | None = "openai",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
):
    """Build an open_clip model and its tokenizer, in eval mode with frozen parameters.

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
        if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise InputError(
                f"unknown pretrained tag {pretrained!r} for {model_name}; known: {tags}"
            )
        local = cached_weights(model_name, pretrained)
        if local is not None and local.parent == CLIP_CACHE and pretrained == "openai":
            model, _ = model_from_weights(local, model_name)
        else:
            if local is None and not hub_reachable():
                raise InputError(
                    f"no {model_name} weights for --pretrained {pretrained}: they are not cached "
                    f"and the hub cannot be reached; supply them by {WEIGHT_SOURCES}"
                )
            try:
                with _quiet_open_clip_logging():  # our one-line error replaces open_clip's logs
                    model = open_clip.create_model(model_name, pretrained=pretrained)
            except Exception as error:  # download or cache failures come in many types
                raise InputError(
                    f"no {model_name} weights for --pretrained {pretrained}: the download "
                    f"failed ({type(error).__name__}); supply them by {WEIGHT_SOURCES}"
                ) from error
    model = model.to(device).eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)


# --------------------------------------------------------------------------------------------------
# Extractor


class RelevancyExtractor:
    """Relevancy maps of an open_clip ViT (token pooling, nn.MultiheadAttention blocks).

    `precision` "fp16" / "bf16" runs the image side under torch.autocast (the original ran the
    whole model in fp16 on CUDA, spec 1.3); "fp32" is exact. `batch_size` counts crop forwards
    (flipped copies included); None picks one from free GPU memory on CUDA (32 on CPU), and a CUDA
    out-of-memory error halves it and retries.
    """

    def __init__(
        self,
        model,
        tokenizer,
        device: str | torch.device = "cpu",
        batch_size: int | None = 32,
        precision: str = "fp32",
    ):
        visual = model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if (
            blocks is None
            or not isinstance(blocks[-1].attn, torch.nn.MultiheadAttention)
            or getattr(visual, "pool_type", None) != "tok"
            or getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "final_ln_after_pool", False)
        ):
            raise InputError(
                "relevancy needs an open_clip ViT with CLS-token pooling (e.g. ViT-B-32)"
            )
        if precision not in PRECISIONS:
            raise InputError(
                f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision]
        self.batch_size = batch_size if batch_size is not None else self._auto_batch_size()
        self.input_size = (
            visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        )
        self.grid = visual.grid_size[0]
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or CLIP_STD).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._crop_seconds: float | None = None

    def _auto_batch_size(self) -> int:
        """Crops per batch that fit half the free GPU memory (32 on CPU)."""
        if self.device.type != "cuda":
            return 32
        free, _ = torch.cuda.mem_get_info(self.device)
        visual = self.model.visual
        tokens = visual.grid_size[0] * visual.grid_size[1] + 1
        element = 4 if self.autocast_dtype is None else 2
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        # one block's live activations (qkv, 4x MLP, residuals ~ 16 widths) + the input crop
        per_crop = tokens * visual.transformer.width * element * 16 + 3 * size * size * 4 * 2
        return int(max(32, min(1024, free // 2 // per_crop)))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ---- text side (spec 4)

    @torch.no_grad()
    def text_features(self, labels: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """(N, D): per label, the mean over prompts of the L2-normalised prompt embeddings.

        QUIRK (parity): the mean is not re-normalised, so a multi-prompt feature has norm < 1.
        Always fp32, whatever the precision.
        """
        missing = [
            (lab, p)
            for lab in dict.fromkeys(labels)
            for p in prompts
            if (lab, p) not in self._text_cache
        ]
        if missing:
            texts = [p.format(lab) for lab, p in missing]
            tokens = self.tokenizer(texts).to(self.device)
            features = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
            self._text_cache.update(zip(missing, features, strict=True))
        return torch.stack(
            [torch.stack([self._text_cache[(lab, p)] for p in prompts]).mean(0) for lab in labels]
        )

    # ---- per crop (spec 2)

    def _last_block_inputs(self, crops: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        with torch.no_grad():
            tokens = visual._embeds(crops)  # (B, T, width)
            for block in visual.transformer.resblocks[:-1]:
                tokens = block(tokens)
        return tokens

    def crop_logits(self, tokens: torch.Tensor, text: torch.Tensor):
        """Last block for the CLS query only.

        Returns the CLS-row attention (B, heads, T), requiring grad, and the logits (B, N).
        """
        visual = self.model.visual
        block = visual.transformer.resblocks[-1]
        attn_module = block.attn
        heads = attn_module.num_heads
        batch, num_tokens, width = tokens.shape
        head_dim = width // heads
        with torch.no_grad():
            q, k, v = F.linear(
                block.ln_1(tokens), attn_module.in_proj_weight, attn_module.in_proj_bias
            ).chunk(3, -1)
            q = q[:, 0].view(batch, heads, 1, head_dim) * head_dim**-0.5  # (B, h, 1, hd)
            k = k.view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # (B, h, T, hd)
            v = v.view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # (B, h, T, hd)
            attention = (q @ k.transpose(-1, -2)).softmax(-1).squeeze(2)  # (B, h, T)
        attention.requires_grad_(True)
        heads_out = (attention.unsqueeze(2) @ v).reshape(batch, 1, width)  # (B, 1, width)
        cls = tokens[:, :1] + block.ls_1(attn_module.out_proj(heads_out))
        cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
        pooled, _ = visual._pool(cls)
        features = F.normalize(pooled @ visual.proj, dim=-1)  # (B, D)
        return attention, LOGIT_SCALE * features @ text.to(features).T  # (B, N)

    def crop_relevancy(self, crops: torch.Tensor, text: torch.Tensor, positive_only: bool = True):
        """(N, B, grid, grid) fp32 relevancy of preprocessed crops (B, 3, S, S) for text (N, D)."""
        with self._autocast():
            attention, logits = self.crop_logits(self._last_block_inputs(crops), text)
        num_labels = text.shape[0]
        # one batched VJP: row p of `selector` picks label p's logit in every crop
        selector = torch.eye(num_labels, dtype=logits.dtype, device=logits.device)
        selector = selector[:, None, :].expand(num_labels, *logits.shape)  # (N, B, N)
        (grads,) = torch.autograd.grad(
            logits, attention, selector, is_grads_batched=True
        )  # (N, B, h, T)
        maps = relevancy_from_attention(attention.detach(), grads, self.grid, positive_only)
        return maps.float()

    # ---- crops (spec 1.4, 3.2, 3.3)

    def preprocess(self, crops: torch.Tensor, resize: str = "pil") -> torch.Tensor:
        """uint8 crops (B, 3, s, s) -> normalised float (B, 3, S, S) (spec 1.4).

        resize "pil" (parity): each crop through PIL's bicubic `Image.resize`, antialiased when
        shrinking, exactly as the original's torchvision Resize on a PIL image; CPU, in threads.
        resize "torch": antialiased bicubic on the uint8 batch, on the crops' device; close to
        PIL but not equal (rounding and kernel support differ at the 1/255 level).
        """
        size = self.input_size
        if crops.shape[-1] != size:
            if resize == "pil":
                arrays = crops.permute(0, 2, 3, 1).cpu().numpy()  # (B, s, s, 3) uint8

                def pil_resize(array):
                    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))

                if len(arrays) >= 4:
                    resized = list(_resize_pool().map(pil_resize, arrays))
                else:
                    resized = [pil_resize(a) for a in arrays]
                crops = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
            else:
                crops = F.interpolate(
                    crops.contiguous(memory_format=torch.channels_last),
                    size=(size, size),
                    mode="bicubic",
                    antialias=True,
                    align_corners=False,
                )
        crops = crops.float() / 255.0
        mean, std = self.mean.to(crops.device), self.std.to(crops.device)
        return ((crops - mean) / std).contiguous()

    @staticmethod
    def image_copies(image: np.ndarray, augmentations: int, seed: int | None) -> list[torch.Tensor]:
        """[original, jittered copies] as (3, H, W) uint8 tensors (spec 3.2)."""
        base = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)  # (3, H, W)
        copies = [base]
        if augmentations:
            jitter = ColorJitter(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.1)
            rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
            with rng:
                if seed is not None:
                    torch.manual_seed(seed)
                copies += [jitter(base) for _ in range(augmentations)]
        return copies

    def crop_seconds(self) -> float:
        """Measured seconds per crop forward (with its share of the backward), for estimates."""
        if self._crop_seconds is None:
            count = min(4, self.batch_size)
            crops = torch.zeros(count, 3, self.input_size, self.input_size, device=self.device)
            text = torch.zeros(1, self.model.visual.output_dim, device=self.device)
            self.crop_relevancy(crops, text)  # warm-up
            start = time.perf_counter()
            self.crop_relevancy(crops, text)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._crop_seconds = (time.perf_counter() - start) / count
        return self._crop_seconds

    # ---- whole image (spec 3.4, 3.5)

    def __call__(
        self,
        image: np.ndarray,
        labels: Sequence[str],
        prompts: Sequence[str] = (HOME_PROMPT,),
        config: SaliencyConfig | None = None,
        seed: int | None = 0,
        progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (N, H, W) float32 and text features (N, D) of an RGB uint8 image (H, W, 3).

        `on_progress(done, total)` is called after every batch with crop-forward counts.
        """
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise InputError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        check_labels(labels, prompts)
        height, width = image.shape[:2]
        config = config or saliency_config("ours", height)
        if config.imagenet_prompt_ensemble:
            prompts = IMAGENET_TEMPLATES
        text = self.text_features(labels, prompts).to(self.device)
        tiles = scale_tiles(height, width, config)
        copies = self.image_copies(image, config.augmentations, seed)
        if config.resize == "torch":
            copies = [copy.to(self.device) for copy in copies]

        # per scale and copy: each crop's (N, grid, grid) map, flips averaged
        sums = [
            torch.zeros(len(copies), len(labels), len(regions), self.grid, self.grid)
            for _, regions in tiles
        ]
        jobs = [
            (c, s, i)
            for c in range(len(copies))
            for s, (_, regions) in enumerate(tiles)
            for i in range(len(regions))
        ]
        flips = 2 if config.horizontal_flipping else 1
        per_batch = max(1, self.batch_size // flips)
        total = len(jobs) * flips
        bar = tqdm(total=total, desc="crop forwards", unit="crop", disable=not progress)
        start = 0
        while start < len(jobs):
            chunk = jobs[start : start + per_batch]
            try:
                maps = self._chunk_maps(copies, tiles, chunk, text, config)
            except torch.cuda.OutOfMemoryError:
                if per_batch == 1:
                    raise
                torch.cuda.empty_cache()
                per_batch //= 2  # retry the same crops in smaller batches
                continue
            for j, (c, s, i) in enumerate(chunk):
                sums[s][c, :, i] = maps[:, j]
            start += len(chunk)
            bar.update(len(chunk) * flips)
            if on_progress is not None:
                on_progress(start * flips, total)
        bar.close()
        maps = paste_back(sums, tiles, (height, width), len(copies), config.tiling, self.device)
        return maps, text.cpu()

    def _chunk_maps(self, copies, tiles, chunk, text, config) -> torch.Tensor:
        """(N, b, grid, grid) fp32 CPU maps of (copy, scale, region) jobs, flips averaged."""
        crops = self._cut(copies, tiles, chunk, config.resize).to(self.device)  # (b, 3, S, S)
        if config.horizontal_flipping:
            crops = torch.cat([crops, crops.flip(-1)])
        maps = self.crop_relevancy(crops, text, config.positive_attn_only).cpu()
        if config.horizontal_flipping:
            # flip the maps of the flipped crops back and average (spec 3.4)
            maps = (maps[:, : len(chunk)] + maps[:, len(chunk) :].flip(-1)) / 2
        return maps

    def _cut(self, copies, tiles, chunk, resize: str = "pil") -> torch.Tensor:
        """Preprocessed crops for (copy, scale, region) jobs, resized in batches per tile size."""
        out = [None] * len(chunk)
        by_tile: dict[int, list[int]] = {}
        for j, (_, s, _) in enumerate(chunk):
            by_tile.setdefault(tiles[s][0], []).append(j)
        for tile, members in by_tile.items():
            pieces = []
            for j in members:
                copy, scale, index = chunk[j]
                row, col = tiles[scale][1][index]
                pieces.append(copies[copy][:, row : row + tile, col : col + tile])
            for j, crop in zip(members, self.preprocess(torch.stack(pieces), resize), strict=True):
                out[j] = crop
        return torch.stack(out)


_POOL: ThreadPoolExecutor | None = None


def _resize_pool() -> ThreadPoolExecutor:
    """Threads for PIL's crop resizes (PIL releases the GIL while resizing)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2))))
    return _POOL


def check_labels(labels: Sequence[str], prompts: Sequence[str]) -> None:
    """Labels and prompt templates a user typed: each an InputError line when unusable."""
    if len(labels) == 0:
        raise InputError("no labels given")
    if any(not str(label).strip() for label in labels):
        raise InputError("an empty label was given; every label needs some text")
    if len(prompts) == 0:
        raise InputError("no prompt template given")
    for prompt in prompts:
        if "{}" not in prompt:
            raise InputError(f"prompt template {prompt!r} has no {{}} where the label goes")


def relevancy_from_attention(
    attention: torch.Tensor, grads: torch.Tensor, grid: int, positive_only: bool = True
) -> torch.Tensor:
    """CLS-row attention (B, h, T) and its gradients (N, B, h, T) -> maps (N, B, g, g) (spec 2)."""
    cam = grads * attention
    if positive_only:
        cam = cam.clamp(min=0)
    cls_row = cam.mean(2)[..., 1:]  # (N, B, T - 1): patch columns, row-major over the grid
    return cls_row.reshape(*cls_row.shape[:2], grid, grid)


def paste_back(
    sums: list[torch.Tensor],
    tiles: list[tuple[int, list]],
    shape: tuple[int, int],
    copies: int,
    tiling: str,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per-scale mean over covering crops, then mean over scales (spec 3.5) -> (N, H, W) float32
    on the CPU, computed on `device` (thousands of small additions: fast on a GPU).

    `sums[s]` is (C, N, R_s, g, g), each copy's map of each region, or (N, R_s, g, g), the maps
    already summed over the `copies` copies.

    parity: as the original, the tile sizes in ascending order, each crop's upsampled map added
    into an fp16 accumulator one crop at a time, copy by copy (QUIRK, spec 1.3: every addition
    rounds to fp16). full: the copies are summed first and the accumulators are fp32 (bilinear
    upsampling is linear, so upsampling the sum equals summing the upsampled maps).
    """
    height, width = shape
    device = torch.device(device)
    sums = [(s if s.dim() == 5 else s[None]).to(device) for s in sums]  # (C or 1, N, R, g, g)
    num_labels = sums[0].shape[1]
    parity = tiling == "parity"
    if not parity:
        sums = [s.sum(0, keepdim=True) for s in sums]
    per_copy = 1 if parity else copies
    dtype = torch.float16 if parity else torch.float32
    # scales with equal tile size share one accumulator, as the original's dict keyed by size
    scale_maps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    order = sorted(range(len(tiles)), key=lambda s: tiles[s][0]) if parity else range(len(tiles))
    for s in order:
        tile, regions = tiles[s]
        acc, counts = scale_maps.setdefault(
            tile,
            (
                torch.zeros(num_labels, height, width, dtype=dtype, device=device),
                torch.full((height, width), 1e-5, device=device),
            ),
        )
        for copy_maps in sums[s]:  # (N, R, g, g)
            for start in range(0, len(regions), 32):
                block = copy_maps[:, start : start + 32]
                up = F.interpolate(block, size=(tile, tile), mode="bilinear", align_corners=False)
                for (row, col), region_map in zip(
                    regions[start : start + 32], up.unbind(1), strict=True
                ):
                    acc[:, row : row + tile, col : col + tile] += region_map
                    counts[row : row + tile, col : col + tile] += per_copy
    total = torch.zeros(num_labels, height, width, device=device)
    for tile in sorted(scale_maps) if parity else scale_maps:
        acc, counts = scale_maps[tile]
        total += acc.float() / counts
    # QUIRK (parity): divide by the number of scales even where a scale covers nothing;
    # --tiling full covers every pixel at every scale
    return (total / len(scale_maps)).cpu()


def num_crop_forwards(height: int, width: int, config: SaliencyConfig) -> int:
    """Crop forwards one image costs (spec 6, without the original's re-run per 32 labels)."""
    crops = sum(len(regions) for _, regions in scale_tiles(height, width, config))
    return crops * (1 + config.augmentations) * (2 if config.horizontal_flipping else 1)


def mean_over_labels(maps: torch.Tensor) -> torch.Tensor:
    """Contrastive maps: map_l - mean_k map_k per pixel (spec 3.6)."""
    return maps - maps.mean(0, keepdim=True)


def resize_maps(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) -> (N, *shape) with nearest-exact, as the dataset command stores them (5.2)."""
    if tuple(maps.shape[-2:]) == tuple(shape):
        return maps
    return F.interpolate(maps[None], size=shape, mode="nearest-exact")[0]


def default_prompt(path: str | Path) -> str:
    """THOR render prompt, or the home photo prompt when the path names matterport or nyu (4)."""
    text = str(path).lower()
    return HOME_PROMPT if ("matterport" in text or "nyu" in text) else THOR_PROMPT


# --------------------------------------------------------------------------------------------------
# Input images and the cost of a run (shared by generate_relevancy.py and app.py)


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; anything unusable is one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as picture:
            if picture.mode.startswith(("I", "F")):
                raise InputError(
                    f"{path} has {picture.mode} pixels (more than 8 bits per channel); "
                    "convert it to 8-bit RGB"
                )
            rgb = np.array(picture.convert("RGB"))
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"{path} is too large to open safely ({error.args[0][:60]}...)") from error
    except UnidentifiedImageError as error:
        raise InputError(f"{path} is not an image (no image format recognised)") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{path} is not a readable image: truncated or corrupt") from error
    if min(rgb.shape[:2]) < 4:
        raise InputError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} pixels: too small for crops")
    return rgb


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_crop_budget(
    height: int,
    width: int,
    config: SaliencyConfig,
    config_name: str,
    limit: int = MAX_CROP_FORWARDS,
    advice: str | None = None,
) -> int:
    """Crop forwards of a run; above `limit` an InputError naming the flag that goes on anyway
    (or giving `advice` instead)."""
    forwards = num_crop_forwards(height, width, config)
    if forwards > limit:
        advice = advice or (
            f"pass --max-crop-forwards {forwards} to go on anyway, or use a smaller image, a "
            "larger --img-dim or --config fast"
        )
        raise InputError(
            f"a {width}x{height} image with {config_name} needs {forwards:,} crop forwards, more "
            f"than the limit of {limit:,}; {advice}"
        )
    return forwards


def build_extractor(
    model: str | None,
    pretrained: str,
    checkpoint: Path | None,
    device: torch.device,
    batch_size: int | None,
    precision: str = "fp32",
):
    clip_model, tokenizer = load_model(model, pretrained, checkpoint, device)
    return RelevancyExtractor(clip_model, tokenizer, device, batch_size, precision)
