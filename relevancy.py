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
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter
from tqdm import tqdm

from utils import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 100.0  # fixed factor of the original, not logit_scale.exp() (spec 2)
HOME_PROMPT = "a photograph of a {} in a home."
THOR_PROMPT = "a render of a {} in a game engine."
TILINGS = ("parity", "full")

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


def _ours(img_dim: int) -> SaliencyConfig:
    sizes = (img_dim, int(img_dim * 2 / 3), img_dim // 2, img_dim // 4)
    return SaliencyConfig(
        tuple((s, s // 4) for s in sizes), horizontal_flipping=True, augmentations=5
    )


def _chefer_et_al(img_dim: int) -> SaliencyConfig:
    return SaliencyConfig(((img_dim, img_dim // 4),), horizontal_flipping=False, augmentations=0)


def _fast(img_dim: int) -> SaliencyConfig:
    """CPU preset (ours): 3 scales (1, 1/2, 1/3 of img_dim), stride half a tile, flips, no jitter,
    `full` tiling so that every pixel is covered at every scale."""
    sizes = (img_dim, img_dim // 2, img_dim // 3)
    return SaliencyConfig(
        tuple((s, s // 2) for s in sizes), horizontal_flipping=True, augmentations=0, tiling="full"
    )


CONFIGS = {"ours": _ours, "chefer_et_al": _chefer_et_al, "fast": _fast}
ORIGINAL_CONFIGS = ("ours", "chefer_et_al")  # the two the original's dataset command computes


def saliency_config(name: str, img_dim: int, tiling: str | None = None) -> SaliencyConfig:
    """The named config as a function of img_dim; `tiling` overrides the config's own tiling."""
    if name not in CONFIGS:
        raise InputError(f"unknown saliency config {name!r}; choose from {', '.join(CONFIGS)}")
    config = CONFIGS[name](img_dim)
    if tiling is not None:
        if tiling not in TILINGS:
            raise InputError(f"unknown tiling {tiling!r}; choose from {', '.join(TILINGS)}")
        config = replace(config, tiling=tiling)
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
# Weights (spec 1.1)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


@contextlib.contextmanager
def _quiet_open_clip_logging():
    """open_clip logs download failures and 'no pretrained weights' on the root logger."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load_model(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
):
    """Build an open_clip model and its tokenizer, in eval mode with frozen parameters.

    * `checkpoint`: a local file, either an OpenAI-format TorchScript archive (`ViT-B-32.pt` as the
      `clip` package caches it in ~/.cache/clip) or an open_clip state dict (.pt/.bin/.safetensors).
    * `pretrained`: an open_clip tag (e.g. "openai", "laion2b_s34b_b79k"); downloaded when online,
      read from the HF / open_clip cache offline (HF_HUB_OFFLINE=1 skips the network).
    * `pretrained="none"`: random weights for tests and smoke runs; the maps mean nothing.
    """
    if model_name not in open_clip.list_models():
        raise InputError(
            f"unknown open_clip model {model_name!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14"
        )
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"checkpoint file not found: {path}")
        try:
            if _is_torchscript(path):
                model = open_clip.load_openai_model(str(path), device="cpu")
            else:
                model = open_clip.create_model(model_name, pretrained=str(path))
        except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise InputError(f"cannot load checkpoint {path} as {model_name}: {first}") from error
    elif pretrained is None or pretrained.lower() == "none":
        warnings.warn(
            "--pretrained none: random CLIP weights, the relevancy maps mean nothing", stacklevel=2
        )
        with _quiet_open_clip_logging():
            model = open_clip.create_model(model_name, pretrained=None)
    else:
        if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise InputError(
                f"unknown pretrained tag {pretrained!r} for {model_name}; known: {tags}"
            )
        try:
            with _quiet_open_clip_logging():  # our one-line error replaces open_clip's log lines
                model = open_clip.create_model(model_name, pretrained=pretrained)
        except Exception as error:  # download or cache failures come in many types
            raise InputError(
                f"no {model_name} weights for --pretrained {pretrained}: they are neither in the "
                "HF/open_clip cache nor downloadable; go online once (or copy the cache), or pass "
                "--checkpoint PATH to a local open_clip or OpenAI-format file"
            ) from error
    model = model.to(device).eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)


# --------------------------------------------------------------------------------------------------
# Extractor


class RelevancyExtractor:
    """Relevancy maps of an open_clip ViT (token pooling, nn.MultiheadAttention blocks)."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", batch_size: int = 32):
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
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.input_size = (
            visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        )
        self.grid = visual.grid_size[0]
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or CLIP_STD).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}

    # ---- text side (spec 4)

    @torch.no_grad()
    def text_features(self, labels: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """(N, D): per label, the mean over prompts of the L2-normalised prompt embeddings.

        QUIRK (parity): the mean is not re-normalised, so a multi-prompt feature has norm < 1.
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
        """(N, B, grid, grid) relevancy of preprocessed crops (B, 3, S, S) for text (N, D)."""
        attention, logits = self.crop_logits(self._last_block_inputs(crops), text)
        num_labels = text.shape[0]
        # one batched VJP: row p of `selector` picks label p's logit in every crop
        selector = torch.eye(num_labels, dtype=logits.dtype, device=logits.device)
        selector = selector[:, None, :].expand(num_labels, *logits.shape)  # (N, B, N)
        (grads,) = torch.autograd.grad(
            logits, attention, selector, is_grads_batched=True
        )  # (N, B, h, T)
        return relevancy_from_attention(attention.detach(), grads, self.grid, positive_only)

    # ---- crops (spec 1.4, 3.2, 3.3)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (B, 3, s, s) -> normalised float (B, 3, S, S) (spec 1.4).

        Antialiased bicubic on uint8, rounded like PIL's resize of the original.
        """
        size = self.input_size
        if crops.shape[-1] != size:
            crops = F.interpolate(
                crops.contiguous(memory_format=torch.channels_last),
                size=(size, size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
        crops = crops.float() / 255.0
        return ((crops - self.mean) / self.std).contiguous()

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

    # ---- whole image (spec 3.4, 3.5)

    def __call__(
        self,
        image: np.ndarray,
        labels: Sequence[str],
        prompts: Sequence[str] = (HOME_PROMPT,),
        config: SaliencyConfig | None = None,
        seed: int | None = 0,
        progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (N, H, W) float32 and text features (N, D) of an RGB uint8 image (H, W, 3)."""
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise InputError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if len(labels) == 0:
            raise InputError("no labels given")
        height, width = image.shape[:2]
        config = config or saliency_config("ours", height)
        if config.imagenet_prompt_ensemble:
            prompts = IMAGENET_TEMPLATES
        text = self.text_features(labels, prompts).to(self.device)
        tiles = scale_tiles(height, width, config)
        copies = self.image_copies(image, config.augmentations, seed)

        # per scale: sum over copies and flips of each crop's (N, grid, grid) map
        sums = [
            torch.zeros(len(labels), len(regions), self.grid, self.grid) for _, regions in tiles
        ]
        jobs = [
            (c, s, i)
            for c in range(len(copies))
            for s, (_, regions) in enumerate(tiles)
            for i in range(len(regions))
        ]
        flips = 2 if config.horizontal_flipping else 1
        per_batch = max(1, self.batch_size // flips)
        bar = tqdm(total=len(jobs) * flips, desc="crop forwards", unit="crop", disable=not progress)
        for start in range(0, len(jobs), per_batch):
            chunk = jobs[start : start + per_batch]
            crops = self._cut(copies, tiles, chunk)  # (b, 3, S, S)
            if config.horizontal_flipping:
                crops = torch.cat([crops, crops.flip(-1)])
            maps = (
                self.crop_relevancy(crops.to(self.device), text, config.positive_attn_only)
                .float()
                .cpu()
            )
            if config.horizontal_flipping:
                # flip the maps of the flipped crops back and average (spec 3.4)
                maps = (maps[:, : len(chunk)] + maps[:, len(chunk) :].flip(-1)) / 2
            for j, (_, s, i) in enumerate(chunk):
                sums[s][:, i] += maps[:, j]
            bar.update(len(chunk) * flips)
        bar.close()
        return paste_back(sums, tiles, (height, width), len(copies), config.tiling), text.cpu()

    def _cut(self, copies, tiles, chunk) -> torch.Tensor:
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
            for j, crop in zip(members, self.preprocess(torch.stack(pieces)), strict=True):
                out[j] = crop
        return torch.stack(out)


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
) -> torch.Tensor:
    """Per-scale mean over covering crops, then mean over scales (spec 3.5) -> (N, H, W) float32.

    `sums[s]` (N, R_s, g, g) holds each region's map summed over copies; bilinear upsampling is
    linear, so upsampling the sum equals summing the upsampled maps of the original.
    """
    height, width = shape
    num_labels = sums[0].shape[0]
    total = torch.zeros(num_labels, height, width)
    scale_maps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for (tile, regions), region_sums in zip(tiles, sums, strict=True):
        # scales with equal tile size share one accumulator, as the original's dict keyed by size
        acc, counts = scale_maps.setdefault(
            tile, (torch.zeros(num_labels, height, width), torch.full((height, width), 1e-5))
        )
        for start in range(0, len(regions), 32):
            block = region_sums[:, start : start + 32]
            up = F.interpolate(block, size=(tile, tile), mode="bilinear", align_corners=False)
            for (row, col), region_map in zip(
                regions[start : start + 32], up.unbind(1), strict=True
            ):
                acc[:, row : row + tile, col : col + tile] += region_map
                counts[row : row + tile, col : col + tile] += copies
    for acc, counts in scale_maps.values():
        if tiling == "parity":
            acc = (
                acc.half().float()
            )  # QUIRK (parity): fp16 accumulators (spec 1.3); --tiling full keeps fp32
        total += acc / counts
    # QUIRK (parity): divide by the number of scales even where a scale covers nothing;
    # --tiling full covers every pixel at every scale
    return total / len(scale_maps)


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
