"""One picture's relevancy run, as `generate_relevancy.py image` and the web page (webpage.py)
do it: the bundled example image and default labels, reading an image file, the flags of the
figure and the tiling, and writing the outputs (the raw maps, the figure).
The command and its figure: docs/relevancy.md#the-image-command-and-its-figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils import InputError, atomic_path

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "room.png"  # the bundled example
DEFAULT_LABELS = ["vase", "red ball", "lamp", "window", "table", "wooden floor", "wall"]


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


def check_layout(columns: int | None, panel_width: int | None) -> None:
    """The figure's `--columns` and `--panel-width`, each an InputError line when unusable."""
    if columns is not None and columns < 1:
        raise InputError(f"--columns must be at least 1, got {columns}")
    if panel_width is not None and panel_width < 16:
        raise InputError(f"--panel-width must be at least 16 pixels, got {panel_width}")


def save_maps(path: Path, maps: torch.Tensor) -> None:
    """The raw (N, H, W) maps as .npy, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, maps.numpy())


def save_png(path: Path, figure: Image.Image) -> None:
    """A figure as PNG, written atomically."""
    with atomic_path(path) as tmp:
        figure.save(tmp, format="PNG")
