"""Saliency configs and the crop tiling of multi-scale relevancy: which square crops of which sizes
an image is cut into, and what a run costs in crop forwards.

Defines SaliencyConfig, the configs `ours`, `chefer_et_al` (the original's) and `fast` (ours, a
CPU preset), the tiling modes (`parity` keeps the original's quirks, `full` covers every pixel at
every scale), the crop resizes (`pil`, the default; `torch`), and the crop-forward count. What they
mean: docs/method.md#crops-scales-copies-and-flips and docs/method.md#what-one-image-costs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from utils import InputError

TILINGS = ("parity", "full")
RESIZES = ("pil", "torch")
MAX_CROP_FORWARDS = 20_000  # above this, `image` and the web page stop unless told to go on


@dataclass(frozen=True)
class SaliencyConfig:
    scales: tuple[tuple[int, int], ...]  # (tile size, stride) per scale, in the original's order
    horizontal_flipping: bool
    augmentations: int  # colour-jittered copies besides the original
    imagenet_prompt_ensemble: bool = False
    positive_attn_only: bool = True
    tiling: str = "parity"
    resize: str = "pil"  # "pil": PIL's bicubic per crop (parity); "torch": batched


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

    parity: the original loop (docs/method.md#crops-scales-copies-and-flips), including the skip
    of column offsets >= height and of row offsets >= width, no edge crop, no crop when the tile
    exceeds the image.
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


def num_crop_forwards(height: int, width: int, config: SaliencyConfig) -> int:
    """Crop forwards one image costs, without the original's re-run per 32 labels
    (docs/method.md#what-one-image-costs)."""
    crops = sum(len(regions) for _, regions in scale_tiles(height, width, config))
    return crops * (1 + config.augmentations) * (2 if config.horizontal_flipping else 1)


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
            "larger --img-dim or --saliency-config fast"
        )
        raise InputError(
            f"a {width}x{height} image with {config_name} needs {forwards:,} crop forwards, more "
            f"than the limit of {limit:,}; {advice}"
        )
    return forwards


def crop_tiling(tiling: str | None, fix_crop_tiling: bool) -> str | None:
    """The tiling of `--tiling` and `--fix-crop-tiling` (the same as `--tiling full`) together."""
    if not fix_crop_tiling:
        return tiling
    if tiling not in (None, "full"):
        raise InputError("--fix-crop-tiling contradicts --tiling parity")
    return "full"
