"""Pictures of relevancy maps: the original's colour scheme
(docs/relevancy.md#the-image-command-and-its-figure) and the per-label figure of
`generate_relevancy.py image`, visualize and the web page."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import relevancy

# matplotlib's 'jet' (the original draws with plt.cm.jet): its segment data, (position, value) per
# channel, sampled into a 256-entry table, as matplotlib's LinearSegmentedColormap does
_JET_SEGMENTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),  # red
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),  # green
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),  # blue
)
_JET_TABLE = np.stack(
    [np.interp(np.linspace(0, 1, 256), *zip(*segments)) for segments in _JET_SEGMENTS], -1
)  # (256, 3)


def jet(values: np.ndarray) -> np.ndarray:
    """matplotlib's 'jet' colormap: values in [0, 1] -> RGB in [0, 1], (..., 3). As matplotlib, a
    value x reads table entry floor(256 x), 1.0 the last one."""
    index = np.clip((np.asarray(values, np.float64) * 256).astype(np.int64), 0, 255)
    return _JET_TABLE[index]


def overlay(image: np.ndarray, relevance: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The original's colour scheme (docs/relevancy.md#the-image-command-and-its-figure):
    g = clip((rel - vmin) / (vmax - vmin), 0, 1) drawn as jet(g) with alpha 0.7 (1 - g) over the
    photo, so relevant pixels stay clear and the rest is tinted blue. (H, W, 3) uint8."""
    g = np.clip((relevance - vmin) / max(vmax - vmin, 1e-12), 0, 1)[..., None]
    alpha = 0.7 * (1 - g)
    photo = image[..., :3].astype(np.float32) / 255
    return np.round((alpha * jet(g[..., 0]) + (1 - alpha) * photo) * 255).astype(np.uint8)


def text_font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at `size` pixels (its fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def relevancy_figure(
    image: np.ndarray,
    maps: np.ndarray,
    labels: list[str],
    vmin: float,
    vmax: float,
    columns: int | None = None,
    panel_width: int | None = None,
    caption: str = "relevancy minus the mean over labels",
) -> Image.Image:
    """One titled panel per label (its map over the photo, `overlay`), `columns` a row (default:
    all in one row up to 3, else a near-square grid), and a colour bar from vmin to vmax.

    Panels are `panel_width` pixels wide (default: the image width, between 320 and 640).
    """
    count = len(labels)
    columns = max(1, min(columns or (count if count <= 3 else math.ceil(math.sqrt(count))), count))
    rows = math.ceil(count / columns)
    height, width = image.shape[:2]
    panel_w = panel_width or min(max(width, 320), 640)
    panel_h = max(1, round(height * panel_w / width))
    size = max(14, panel_w // 24)
    font, small = text_font(size), text_font(max(12, size * 4 // 5))
    pad, title_h, bar_h = max(8, size // 2), round(size * 1.6), size
    canvas_w = columns * panel_w + (columns + 1) * pad
    panels_h = rows * (title_h + panel_h + pad)
    canvas = Image.new("RGB", (canvas_w, pad + panels_h + bar_h + 3 * size), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (relevance, label) in enumerate(zip(maps, labels, strict=True)):
        panel = Image.fromarray(overlay(image, relevance, vmin, vmax))
        panel = panel.resize((panel_w, panel_h), Image.LANCZOS)
        x = pad + (k % columns) * (panel_w + pad)
        y = pad + (k // columns) * (title_h + panel_h + pad)
        title = label if draw.textlength(label, font=font) <= panel_w else label[:40] + "..."
        draw.text((x + panel_w // 2, y + title_h // 2), title, fill="black", font=font, anchor="mm")
        canvas.paste(panel, (x, y + title_h))
    # colour bar: the overlay's colours over mid grey, vmin to vmax
    bar_w = min(canvas_w - 2 * pad, 480)
    ramp = np.linspace(vmin, vmax, bar_w)[None].repeat(bar_h, 0)
    grey = np.full((bar_h, bar_w, 3), 128, np.uint8)
    x0, y0 = (canvas_w - bar_w) // 2, pad + panels_h
    canvas.paste(Image.fromarray(overlay(grey, ramp, vmin, vmax)), (x0, y0))
    draw.rectangle((x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h), outline="black")
    below = y0 + bar_h + size // 3
    draw.text((x0, below), f"{vmin:.3g}", fill="black", font=small, anchor="lt")
    draw.text((x0 + bar_w, below), f"{vmax:.3g}", fill="black", font=small, anchor="rt")
    draw.text((x0 + bar_w // 2, below), caption, fill="black", font=small, anchor="mt")
    return canvas


def shown_maps(
    maps: torch.Tensor, vmin: float, vmax: float
) -> tuple[np.ndarray, float, float, str | None]:
    """(maps to draw, vmin, vmax, note): the mean over labels subtracted
    (docs/method.md#subtracting-the-mean-over-labels), as the original's figure. With a single
    label that would leave zeros, so its raw map is drawn from its own minimum to maximum instead,
    and the note says so."""
    if len(maps) == 1:
        raw = maps.numpy()
        note = (
            "one label: its raw relevancy is drawn from its minimum to its maximum (subtracting "
            "the mean over labels would leave zeros; add labels to compare them)"
        )
        return raw, float(raw.min()), float(raw.max()), note
    return relevancy.mean_over_labels(maps).numpy(), vmin, vmax, None


def figure_of_maps(
    image: np.ndarray,
    maps: torch.Tensor,
    labels: list[str],
    vmin: float,
    vmax: float,
    columns: int | None = None,
    panel_width: int | None = None,
) -> tuple[Image.Image, str | None]:
    """(figure, note) of raw maps (N, H, W), drawn as `shown_maps` says."""
    shown, low, high, note = shown_maps(maps, vmin, vmax)
    caption = "raw relevancy (one label)" if note else "relevancy minus the mean over labels"
    return relevancy_figure(image, shown, labels, low, high, columns, panel_width, caption), note
