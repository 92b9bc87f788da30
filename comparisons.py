"""Predictions beside the ground truth of a dataset scene, as pictures: completion_vs_gt.png
(OVSSC: the completion and the ground truth from one camera, then the hidden objects zoomed) and
localization_vs_gt.png (VOOL: each description's predicted points beside its ground-truth points in
the faded scene). visualize.py's dataset command writes them (docs/visualization.md); the shapes
are ray-cast by render.py.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

import figures
import inference
import vocab
from render import BACKGROUND, PALETTE, Shape, Turntable, legend, mesh_shape, orbit_camera
from utils import atomic_path

COMPARISON_SIZE = 480  # pixels per panel
ROOM_CLASSES = ("wall", "floor", "ceiling")  # left out of the hidden-objects panels
SIDE_VIEW = np.deg2rad(35.0)  # OVSSC: turned from the scene camera so that hidden parts show


def camera_azimuth(cam_pose: np.ndarray, turn: float = 0.0) -> float:
    """The turntable azimuth looking the way the scene camera looks, turned by `turn` radians."""
    forward = np.asarray(cam_pose)[:3, 2]
    return float(np.arctan2(forward[1], forward[0])) + turn


def titled(image: np.ndarray, title: str) -> Image.Image:
    """The panel with its title in black over its top edge, centred."""
    panel = Image.fromarray(image)
    font = figures.text_font(max(12, image.shape[0] // 28))
    draw = ImageDraw.Draw(panel)
    width = font.getlength(title)
    draw.text(((image.shape[1] - width) / 2, 4), title, fill="black", font=font)
    return panel


def side_by_side(rows: list[list[Image.Image]], legend_image: Image.Image | None) -> Image.Image:
    """Panels in a grid (rows of equal-size panels), thin grey gutters, the legend at the right."""
    gutter = 4
    panel_w, panel_h = rows[0][0].size
    columns = max(len(row) for row in rows)
    legend_w = 0 if legend_image is None else legend_image.width + gutter
    width = columns * panel_w + (columns - 1) * gutter + legend_w
    height = max(len(rows) * panel_h + (len(rows) - 1) * gutter,
                 0 if legend_image is None else legend_image.height)  # fmt: skip
    sheet = Image.new("RGB", (width, height), (200, 200, 200))
    if legend_image is not None:  # white under the legend, grey gutters between panels
        sheet.paste((255, 255, 255), (width - legend_w + gutter, 0, width, height))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet.paste(panel, (c * (panel_w + gutter), r * (panel_h + gutter)))
    if legend_image is not None:
        sheet.paste(legend_image, (width - legend_image.width, 0))
    return sheet


def render_panels(panels: list[list[Shape]], titles: list[str], azimuth: float,
                  size: int) -> list[Image.Image]:  # fmt: skip
    """One titled image per list of shapes, all from one camera framing every shape."""
    framed = [shape for shapes in panels for shape in shapes]
    images = []
    for shapes, title in zip(panels, titles, strict=True):
        shapes = [s for s in shapes if len(s.triangles)]
        view = Turntable(shapes, framed=framed).frame(azimuth, size) if shapes else None
        if view is None:
            view = np.full((size, size, 3), BACKGROUND, np.uint8)
            title = f"{title}: nothing"
        images.append(titled(view, title))
    return images


def volume_shapes(labels: np.ndarray, colors: np.ndarray, scene_bounds,
                  striped: bool = False) -> list[Shape]:  # fmt: skip
    """One marching-cubes mesh per class index k of the (G, G, G) volume, in colors[k]."""
    shapes = []
    for k, color in enumerate(colors):
        mesh = inference.volume_mesh(labels == k, scene_bounds)
        if mesh is not None:
            shapes.append(mesh_shape(*mesh, color, striped))
    return shapes


def grid_volume(xyz: np.ndarray, values: np.ndarray, scene_bounds, size: int) -> np.ndarray:
    """(size,)*3 int16 volume, -1 except at the grid points `xyz` (exact query points)."""
    bounds = np.asarray(scene_bounds, np.float64)
    index = np.round((xyz - bounds[0]) / inference.grid_pitch(bounds, size)).astype(np.int64)
    volume = np.full((size,) * 3, -1, np.int16)
    volume[tuple(index.T)] = values
    return volume


def completion_comparison(folder: Path, size: int = COMPARISON_SIZE) -> Path:
    """completion_vs_gt.png from completion.npz with ground truth, one camera, a legend:
    top, the completion | the ground truth of the same classes (striped where the camera cannot
    see it); below, zoomed, the hidden ground truth of the objects (not ROOM_CLASSES) | the
    completion on those voxels only."""
    with np.load(folder / "completion.npz") as data:
        arrays = {key: data[key] for key in data}
    bounds, grid_size = arrays["scene_bounds"], int(arrays["grid_size"])
    classes = [str(c) for c in arrays["classes"]]
    colors = PALETTE[np.arange(len(classes)) % len(PALETTE)]
    predicted = grid_volume(arrays["xyz"], arrays["label"], bounds, grid_size)
    truth, hidden = arrays["gt_labels"], arrays["gt_hidden"]
    visible_truth = np.where(hidden, -1, truth)
    hidden_truth = np.where(hidden, truth, -1)
    objects = ~np.isin(np.array(classes + [""])[truth], ROOM_CLASSES) & hidden  # "" for -1
    panels = {
        "prediction": volume_shapes(predicted, colors, bounds),
        "ground truth (striped: hidden from the camera)": volume_shapes(
            visible_truth, colors, bounds
        )
        + volume_shapes(hidden_truth, colors, bounds, striped=True),
        "hidden ground truth, objects only": volume_shapes(
            np.where(objects, truth, -1), colors, bounds, striped=True
        ),
        "prediction on those hidden object voxels": volume_shapes(
            np.where(objects, predicted, -1), colors, bounds
        ),
    }
    azimuth = camera_azimuth(arrays["cam_pose"], SIDE_VIEW)
    titles, shapes = list(panels), list(panels.values())
    rows = [  # each row framed on its own shapes: the hidden objects zoomed in
        render_panels(shapes[:2], titles[:2], azimuth, size),
        render_panels(shapes[2:], titles[2:], azimuth, size),
    ]
    path = folder / "completion_vs_gt.png"
    with atomic_path(path) as tmp:
        side_by_side(rows, legend(classes, colors, size)).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------
# localization_vs_gt.png: zoomed point views, prediction | ground truth per description

SHOWN_DESCRIPTIONS = 6  # at most this many descriptions in localization_vs_gt.png
HIDDEN_FIRST = ("in", "behind")  # relations whose target is mostly hidden: shown first
ZOOM_MARGIN = 0.15  # metres around the region of interest
PAIRS_PER_ROW = 2
PREDICTION_COLOR = (20, 90, 255)  # saturated markers over the faded scene
TRUTH_COLOR = (235, 20, 60)
OUTLINE_COLOR = (20, 20, 20)
SCENE_FADE = 0.45  # scene points: their RGB mixed this much with white
_DESCRIPTION = re.compile(
    "^the (.+?) (" + "|".join(sorted(vocab.RELATIONS, key=len, reverse=True)) + ") the (.+)$"
)


def description_relation(name: str) -> str | None:
    """The relation of a description name "the {T} {R} the {Ref}" (inference.description_name),
    None when it names none of vocab.RELATIONS."""
    match = _DESCRIPTION.match(name)
    return None if match is None else match.group(2)


def shown_descriptions(names: list[str], limit: int = SHOWN_DESCRIPTIONS) -> list[int]:
    """Indices of at most `limit` descriptions: relations "in" and "behind" first (their target is
    mostly hidden), then the others, each group in file order."""
    hidden_first = sorted(
        range(len(names)), key=lambda k: description_relation(names[k]) not in HIDDEN_FIRST
    )
    return hidden_first[:limit]


def zoom_box(*clouds: np.ndarray, margin: float = ZOOM_MARGIN) -> np.ndarray:
    """(2, 3) low and high corners: the bounding box of every point of `clouds`, grown by
    `margin` metres on each side."""
    points = np.concatenate([np.asarray(c, np.float64).reshape(-1, 3) for c in clouds])
    return np.stack([points.min(0) - margin, points.max(0) + margin])


@dataclass
class PointView:
    """A pinhole view from a turntable direction, zoomed to fill the picture with a box."""

    eye: np.ndarray
    axes: np.ndarray  # (3, 3) rows: forward, right, up
    pixels_per_unit: float  # pixels per unit of (lateral offset / depth)
    center: np.ndarray  # (2,) (x / depth, y / depth) at the picture's centre
    size: int

    @classmethod
    def framing(cls, box: np.ndarray, azimuth: float, size: int, elevation_deg: float = 30.0,
                fill: float = 0.94) -> PointView:  # fmt: skip
        """The turntable camera's direction on `box`, from outside its bounding sphere, zoomed
        so that the box's corners span `fill` of the picture."""
        middle = box.mean(0)
        radius = max(float(np.linalg.norm(box[1] - box[0])) / 2, 1e-3)
        eye, forward, right, up = orbit_camera(
            middle, 2 * radius, np.deg2rad(elevation_deg), azimuth
        )
        axes = np.stack([forward, right, up])
        corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1)
                            for k in (0, 1)])  # fmt: skip
        depth, x, y = axes @ (corners - eye).T  # (8,) each
        screen = np.stack([x / depth, y / depth], 1)  # (8, 2)
        low, high = screen.min(0), screen.max(0)
        return cls(eye, axes, fill * size / float((high - low).max()), (low + high) / 2, size)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cols, rows, depth) of (N, 3) points, pixel coordinates from the top-left corner."""
        depth, x, y = self.axes @ (np.asarray(points, np.float64).reshape(-1, 3) - self.eye).T
        depth = np.maximum(depth, 1e-6)  # (N,)
        cols = self.size / 2 + (x / depth - self.center[0]) * self.pixels_per_unit
        rows = self.size / 2 - (y / depth - self.center[1]) * self.pixels_per_unit
        return cols, rows, depth

    def splat_pixels(self, points: np.ndarray, metres: float, least: int) -> int:
        """Edge in pixels of a splat `metres` wide at the points' median depth, at least `least`."""
        depth = np.median(self.project(points)[2]) if len(points) else 1.0
        return max(least, int(round(metres / depth * self.pixels_per_unit)))


def point_spacing(points: np.ndarray) -> float:
    """Median distance (metres) from a point to its nearest neighbour; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    distances, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


def splat(image: np.ndarray, view: PointView, points: np.ndarray, colors, edge: int) -> None:
    """Draw each point as an edge x edge square in place, far points first (painter's order)."""
    cols, rows, depth = view.project(points)
    order = np.argsort(-depth, kind="stable")
    cols, rows = np.round(cols[order]).astype(int), np.round(rows[order]).astype(int)
    colors = np.broadcast_to(np.asarray(colors, np.uint8), (len(points), 3))[order]
    size = image.shape[0]
    for dr in range(-(edge // 2), edge - edge // 2):
        for dc in range(-(edge // 2), edge - edge // 2):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            image[r[inside], c[inside]] = colors[inside]


def marker_view(view: PointView, scene: tuple[np.ndarray, np.ndarray], markers: np.ndarray,
                color, pitch: float) -> np.ndarray:  # fmt: skip
    """(size, size, 3) uint8: the faded scene points, then `markers` as outlined squares of one
    saturated colour drawn over everything (seen through the scene, hidden targets included)."""
    image = np.full((view.size, view.size, 3), BACKGROUND, np.uint8)
    scene_xyz, scene_rgb = scene
    faded = (scene_rgb * (1 - SCENE_FADE) + 255 * SCENE_FADE).astype(np.uint8)
    spacing = point_spacing(scene_xyz)
    splat(image, view, scene_xyz, faded, view.splat_pixels(scene_xyz, spacing, 1))
    edge = view.splat_pixels(markers, pitch, 5)
    splat(image, view, markers, OUTLINE_COLOR, edge + 2)
    splat(image, view, markers, color, edge)
    return image


def labelled(image: np.ndarray, label: str) -> Image.Image:
    """The panel with `label` in its top-left corner on a white box."""
    panel = Image.fromarray(image)
    font = figures.text_font(max(12, image.shape[0] // 30))
    draw = ImageDraw.Draw(panel)
    draw.rectangle(draw.textbbox((6, 4), label, font=font), fill="white")
    draw.text((6, 4), label, fill="black", font=font)
    return panel


def description_pair(name: str, predicted: np.ndarray, truth: np.ndarray, scene, azimuth: float,
                     pitch: float, size: int) -> Image.Image:  # fmt: skip
    """The description as a header over (prediction | ground truth), both zoomed on one box."""
    box = zoom_box(predicted, truth)
    view = PointView.framing(box, azimuth, size)
    inside = np.all((scene[0] >= box[0]) & (scene[0] <= box[1]), axis=1)
    cropped = (scene[0][inside], scene[1][inside])
    panels = [
        labelled(marker_view(view, cropped, predicted, PREDICTION_COLOR, pitch), "prediction"),
        labelled(marker_view(view, cropped, truth, TRUTH_COLOR, pitch), "ground truth"),
    ]
    header = text_strip([name], 2 * size + 4, size // 22)
    pair = Image.new("RGB", (2 * size + 4, header.height + size), (200, 200, 200))
    pair.paste(header, (0, 0))
    for k, panel in enumerate(panels):
        pair.paste(panel, (k * (size + 4), header.height))
    return pair


def text_strip(lines: list[str], width: int, font_size: int) -> Image.Image:
    """Centred lines of black text on white, `width` pixels wide."""
    font = figures.text_font(font_size)
    line_h = int(font_size * 1.4)
    strip = Image.new("RGB", (width, line_h * len(lines) + font_size // 2), "white")
    draw = ImageDraw.Draw(strip)
    for k, line in enumerate(lines):
        draw.text(((width - font.getlength(line)) / 2, font_size // 4 + k * line_h), line,
                  fill="black", font=font)  # fmt: skip
    return strip


def localization_comparison(folder: Path, size: int = COMPARISON_SIZE) -> Path:
    """localization_vs_gt.png from localization.npz with ground truth: for at most
    SHOWN_DESCRIPTIONS descriptions (hidden targets first), the predicted points | the target's
    ground-truth points, zoomed on both from the scene camera's direction, over the faded
    scene_rgb cloud; a title saying how many are shown, a legend."""
    with np.load(folder / "localization.npz") as data:
        arrays = {key: data[key] for key in data}
    scene = inference.read_ply(folder / "scene_rgb.ply")
    pitch = float(inference.grid_pitch(arrays["scene_bounds"], int(arrays["grid_size"])).min())
    azimuth = camera_azimuth(arrays["cam_pose"])
    names = [str(n) for n in arrays["descriptions"]]
    shown = shown_descriptions(names)
    pairs = []
    for k in shown:
        predicted = arrays["xyz"][arrays["description_index"] == k]
        truth = arrays["gt_xyz"][arrays["gt_description_index"] == k]
        pairs.append(description_pair(names[k], predicted, truth, scene, azimuth, pitch, size))
    title = (
        f"{len(shown)} of {len(names)} descriptions shown (relations "
        f"{' and '.join(HIDDEN_FIRST)} first: their targets are mostly hidden); each pair "
        "zoomed on its prediction and ground truth"
    )
    key = legend(
        ["prediction (kept query points)", "ground truth (target object)",
         "scene (input points, faded); markers are drawn over it, hidden ones too"],
        np.array([PREDICTION_COLOR, TRUTH_COLOR, [190, 190, 190]]), 2 * size,
    )  # fmt: skip
    path = folder / "localization_vs_gt.png"
    with atomic_path(path) as tmp:
        pair_grid(pairs, title, key).save(tmp, format="PNG")
    return path


def pair_grid(pairs: list[Image.Image], title: str, key: Image.Image) -> Image.Image:
    """The pairs PAIRS_PER_ROW to a row under a title strip and the legend, grey gutters."""
    gutter = 12
    pair_w, pair_h = pairs[0].size
    rows = -(-len(pairs) // PAIRS_PER_ROW)
    width = min(len(pairs), PAIRS_PER_ROW) * (pair_w + gutter) - gutter
    head = text_strip(textwrap.wrap(title, 110), width, max(14, pair_h // 28))
    top = head.height + key.height
    sheet = Image.new("RGB", (width, top + rows * (pair_h + gutter) - gutter), (200, 200, 200))
    sheet.paste(head, (0, 0))
    sheet.paste((255, 255, 255), (0, head.height, width, top))
    sheet.paste(key, ((width - key.width) // 2, head.height))
    for k, pair in enumerate(pairs):
        row, column = divmod(k, PAIRS_PER_ROW)
        sheet.paste(pair, (column * (pair_w + gutter), top + row * (pair_h + gutter)))
    return sheet
