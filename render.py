"""Headless turntable rendering of meshes and point clouds: ray-cast, Lambert-shaded, to mp4 / PNG.

Replaces the original's on-screen Open3D window (train-eval.md 4.6), which needs a display and a
GPU (open3d's OffscreenRenderer fails without one: "Failed to load vulkan library"). Here every
frame is ray-cast on the CPU with open3d's `RaycastingScene` (Embree): triangles are shaded with
Lambert's law under a head light plus ambient light; point clouds are drawn as small cubes so they
get shaded surfaces too. The camera orbits the z axis of the (z-up) scene; the default sweep
matches the original's 220 frames of 0.03 rad (about 1.05 turns), spread over `num_frames`.
Class colours come from the original's 20-colour palette; a legend is drawn in the top-left corner.
`completion_turntable` and `localization_turntables` render the folders the inference commands
write (ovssc-visualize, vool-visualize).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import open3d as o3d
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import geometry
import inference
from utils import InputError, atomic_path

# The original's palette (sashamaps, 20 colours; white and black unused), index = file order % 20.
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.uint8,
)  # fmt: skip
FULL_SWEEP = 220 * 0.03  # radians: the original rotated 10 px (0.03 rad) per frame for 220 frames
BACKGROUND = 255
AMBIENT = 0.35


@dataclass
class Shape:
    """Triangles with one colour per triangle (uint8 RGB)."""

    vertices: np.ndarray  # (V, 3) float
    triangles: np.ndarray  # (T, 3) int
    colors: np.ndarray  # (T, 3) uint8


def mesh_shape(vertices: np.ndarray, triangles: np.ndarray, color) -> Shape:
    color = np.broadcast_to(np.asarray(color, np.uint8), (len(triangles), 3))
    return Shape(np.asarray(vertices, np.float32), np.asarray(triangles, np.int32), color)


_CUBE_CORNERS = np.array(
    [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], np.float32
)
_CUBE_FACES = np.array(  # 12 triangles over the corner order above
    [
        [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
        [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
    ],
    np.int32,
)  # fmt: skip


def cubes_shape(points: np.ndarray, colors: np.ndarray, size: float) -> Shape:
    """Each point as an axis-aligned cube of edge `size` (metres) in its colour."""
    points = np.asarray(points, np.float32)
    vertices = (points[:, None, :] + _CUBE_CORNERS[None] * size).reshape(-1, 3)
    triangles = _CUBE_FACES[None] + 8 * np.arange(len(points), dtype=np.int32)[:, None, None]
    colors = np.repeat(np.asarray(colors, np.uint8), len(_CUBE_FACES), axis=0)
    return Shape(vertices, triangles.reshape(-1, 3), colors)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float):
    """One point (the first) per voxel of edge `voxel`, as open3d's voxel_down_sample keeps one."""
    keys = np.floor(np.asarray(points) / voxel).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return points[first], colors[first]


class Turntable:
    """Ray-cast views of shapes from a camera orbiting the scene's vertical (z) axis."""

    def __init__(self, shapes: list[Shape], elevation_deg: float = 30.0, fov_deg: float = 45.0,
                 framed: list[Shape] | None = None):  # fmt: skip
        """`framed` (default: `shapes`) are the shapes the camera frames, so that several
        turntables of different shapes can share one camera."""
        shapes = [s for s in shapes if len(s.triangles)]
        if not shapes:
            raise ValueError("nothing to render: every shape is empty")
        self.scene = o3d.t.geometry.RaycastingScene()
        self.colors = []
        for shape in shapes:
            mesh = o3d.t.geometry.TriangleMesh()
            mesh.vertex.positions = o3d.core.Tensor(shape.vertices.astype(np.float32))
            mesh.triangle.indices = o3d.core.Tensor(shape.triangles.astype(np.int32))
            self.scene.add_triangles(mesh)
            self.colors.append(shape.colors)
        self.offsets = np.cumsum([0] + [len(c) for c in self.colors])
        self.color_table = np.concatenate(self.colors).astype(np.float32)
        all_vertices = np.concatenate([s.vertices for s in framed or shapes])
        low, high = all_vertices.min(0), all_vertices.max(0)
        self.center = (low + high) / 2
        self.corners = np.array(
            [
                [x, y, z]
                for x in (low[0], high[0])
                for y in (low[1], high[1])
                for z in (low[2], high[2])
            ]
        )
        radius = float(np.linalg.norm(high - low)) / 2
        self.distance = max(radius, 1e-3) / np.tan(np.deg2rad(fov_deg) / 2) * 1.1
        self.elevation = np.deg2rad(elevation_deg)
        self.fov_deg = fov_deg

    def eye(self, azimuth: float) -> np.ndarray:
        direction = np.array(
            [
                -np.cos(self.elevation) * np.cos(azimuth),
                -np.cos(self.elevation) * np.sin(azimuth),
                np.sin(self.elevation),
            ]
        )
        return self.center + self.distance * direction

    def camera(self, azimuth: float) -> tuple[np.ndarray, ...]:
        """Eye and the unit forward, right and up vectors of the view from azimuth."""
        eye = self.eye(azimuth)
        forward = (self.center - eye) / np.linalg.norm(self.center - eye)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        return eye, forward, right, np.cross(right, forward)

    def frame(self, azimuth: float, size: int) -> np.ndarray:
        """(size, size, 3) uint8 view from azimuth (radians; 0 looks along +x, like the camera of
        the ARKit example), z up, rows from the top."""
        eye, forward, right, up = self.camera(azimuth)
        # pinhole rays through pixel centres, only inside the screen box of the scene's corners
        half = np.tan(np.deg2rad(self.fov_deg) / 2)
        rel = self.corners - eye
        depth = rel @ forward
        r0, r1, c0, c1 = 0, size, 0, size
        if np.all(depth > 1e-6):
            cols = ((rel @ right) / depth / half + 1) * size / 2
            rows = (1 - (rel @ up) / depth / half) * size / 2
            r0, r1 = max(int(rows.min()) - 1, 0), min(int(np.ceil(rows.max())) + 1, size)
            c0, c1 = max(int(cols.min()) - 1, 0), min(int(np.ceil(cols.max())) + 1, size)
        image = np.full((size, size, 3), BACKGROUND, np.uint8)
        if r1 <= r0 or c1 <= c0:
            return image
        x = (((np.arange(c0, c1) + 0.5) * 2 / size - 1) * half).astype(np.float32)
        y = ((1 - (np.arange(r0, r1) + 0.5) * 2 / size) * half).astype(np.float32)
        rays = np.empty((r1 - r0, c1 - c0, 6), np.float32)
        rays[..., :3] = eye
        directions = rays[..., 3:]  # not normalised: the hit normals are compared up to sign
        directions[:] = forward.astype(np.float32)
        directions += x[None, :, None] * right.astype(np.float32)
        directions += y[:, None, None] * up.astype(np.float32)
        hit = self.scene.cast_rays(o3d.core.Tensor(rays))
        primitive_ids = hit["primitive_ids"].numpy()
        found = primitive_ids != o3d.t.geometry.RaycastingScene.INVALID_ID
        geometry_ids = hit["geometry_ids"].numpy()[found].astype(np.int64)
        normals = hit["primitive_normals"].numpy()[found]
        # two-sided Lambert: a head light, and a key light from above the camera
        seen = directions[found]
        head = np.abs(np.einsum("nk,nk->n", normals, seen)) / np.sqrt(
            np.einsum("nk,nk->n", seen, seen)
        )
        key = np.abs(normals @ self._key_light(eye))
        shade = AMBIENT + (1 - AMBIENT) * (0.6 * head + 0.4 * key)
        rows_of = self.offsets[geometry_ids] + primitive_ids[found]
        color = self.color_table[rows_of] * shade[:, None]
        image[r0:r1, c0:c1][found] = np.clip(color, 0, 255).astype(np.uint8)
        return image

    def _key_light(self, eye: np.ndarray) -> np.ndarray:
        light = (eye - self.center) / np.linalg.norm(eye - self.center) + np.array([0, 0, 1.5])
        return (light / np.linalg.norm(light)).astype(np.float32)

    def azimuths(self, num_frames: int, start: float = 0.0) -> np.ndarray:
        return start + np.arange(num_frames) * (FULL_SWEEP / max(num_frames, 1))


# --------------------------------------------------------------------------------------------------
# legend and files


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def legend(names: list[str], colors: np.ndarray, frame_size: int) -> Image.Image:
    """Square markers and names (wrapped at 30 characters) on white, sized to the frame."""
    font_size = max(10, frame_size // 48)
    font = _font(font_size)
    lines = [textwrap.wrap(name, 30) or [""] for name in names]
    line_h = int(font_size * 1.3)
    pad = font_size // 2
    marker = font_size
    width = pad * 3 + marker + max(int(font.getlength(line)) for entry in lines for line in entry)
    height = pad * 2 + sum(len(entry) for entry in lines) * line_h + pad * (len(lines) - 1)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = pad
    for entry, color in zip(lines, colors):
        draw.rectangle(
            [pad, y + (line_h - marker) // 2, pad + marker, y + (line_h + marker) // 2],
            fill=tuple(int(c) for c in color),
        )
        for k, line in enumerate(entry):
            draw.text((pad * 2 + marker, y + k * line_h), line, fill="black", font=font)
        y += len(entry) * line_h + pad
    return image


def paste_legend(frame: np.ndarray, legend_image: Image.Image | None) -> np.ndarray:
    """Paste the legend's non-white pixels over the frame's top-left corner (as the original)."""
    if legend_image is None:
        return frame
    patch = np.asarray(legend_image)[: frame.shape[0], : frame.shape[1]]
    region = frame[: patch.shape[0], : patch.shape[1]]
    ink = np.any(patch < 250, axis=2)
    region[ink] = patch[ink]
    return frame


def render_turntable(
    shapes: list[Shape],
    path: str | Path,
    num_frames: int = 220,
    size: int = 1024,
    fps: int = 24,
    legend_image: Image.Image | None = None,
    still_path: str | Path | None = None,
    progress: bool = True,
    desc: str = "render",
) -> None:
    """Write an mp4 turntable (H.264, yuv420p) atomically; optionally the first frame as a PNG."""
    turntable = Turntable(shapes)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (size, size),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            output_params=["-f", "mp4"],  # the temporary name has no .mp4 to guess from
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        try:
            # two frames in flight: one is ray-cast (open3d releases the GIL) while the other
            # is shaded in numpy
            with ThreadPoolExecutor(max_workers=2) as pool:
                views = pool.map(lambda a: turntable.frame(a, size), turntable.azimuths(num_frames))
                for k, view in enumerate(
                    tqdm(views, total=num_frames, desc=desc, unit="frame", disable=not progress)
                ):
                    frame = paste_legend(view, legend_image)
                    writer.send(np.ascontiguousarray(frame))
                    if k == 0 and still_path is not None:
                        write_png(frame, still_path)
        finally:
            writer.close()


def write_png(image: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------------
# the folders of visualize's inference commands


def inference_folder(path: Path) -> Path:
    if not path.is_dir():
        raise InputError(f"{path} is not a folder written by the inference commands")
    return path


def read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(vertices, faces) of an OBJ, or None when it holds no triangle (empty or not a mesh)."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception:  # trimesh raises many types on a file that is not a mesh
        return None
    faces = getattr(mesh, "faces", None)
    if faces is None or len(faces) == 0:
        return None
    return np.asarray(mesh.vertices), np.asarray(faces)


def completion_turntable(folder: Path, num_frames: int, size: int) -> Path:
    """completion.mp4 (and completion.png) of every .obj under `folder`, one palette colour a
    class in file order (index % 20, as the original); files without triangles are skipped."""
    paths = sorted(inference_folder(folder).rglob("*.obj"))
    if not paths:
        raise InputError(f"no .obj meshes under {folder}; run ovssc-inference first")
    colors = PALETTE[np.arange(len(paths)) % len(PALETTE)]  # by file order, empty files included
    meshes = [(p, read_mesh(p), c) for p, c in zip(paths, colors)]
    meshes = [entry for entry in meshes if entry[1] is not None]
    if not meshes:
        raise InputError(
            f"nothing to render in {folder}: its {len(paths)} .obj files hold no triangles "
            "(empty, or not OBJ meshes); run ovssc-inference again"
        )
    shapes = [mesh_shape(*mesh, color) for _, mesh, color in meshes]
    names = [path.stem for path, _, _ in meshes]
    colors = np.array([color for _, _, color in meshes])
    render_turntable(
        shapes, folder / "completion.mp4", num_frames, size,
        legend_image=legend(names, colors, size), still_path=folder / "completion.png",
    )  # fmt: skip
    return folder / "completion.mp4"


def localization_turntables(folder: Path, num_frames: int, size: int) -> Iterator[Path]:
    """<description>.mp4 (and .png) per description cloud under `folder`, shown in the scene_rgb
    cloud voxel-downsampled at 0.03 m; yields each video's path once it is written."""
    paths = sorted(inference_folder(folder).rglob("*.ply"))
    scene_paths = [p for p in paths if p.stem == "scene_rgb"]
    if not scene_paths:
        raise InputError(f"no scene_rgb.ply under {folder}; run vool-inference first")
    scene_xyz, scene_rgb = inference.read_ply(scene_paths[0])
    scene_xyz, scene_rgb = voxel_downsample(scene_xyz, scene_rgb, 0.03)
    scene_shape = cubes_shape(scene_xyz, scene_rgb, 0.03)
    pitch = description_cube_size(folder)
    for path in [p for p in paths if p.stem != "scene_rgb"]:
        xyz, colors = inference.read_ply(path)
        render_turntable(
            [scene_shape, cubes_shape(xyz, colors, pitch)], path.with_suffix(".mp4"), num_frames,
            size, legend_image=legend([path.stem], np.array([[255, 0, 0]]), size),
            still_path=path.with_suffix(".png"), desc=f"render {path.stem[:30]}",
        )  # fmt: skip
        yield path.with_suffix(".mp4")


def description_cube_size(folder: Path) -> float:
    """Query-grid pitch from localization.npz (cube size of the description points); the default
    bounds and grid when there is none."""
    path = folder / "localization.npz"
    if path.is_file():
        with np.load(path) as data:
            return float(inference.grid_pitch(data["scene_bounds"], int(data["grid_size"])).min())
    return float(
        inference.grid_pitch(np.array(geometry.DEFAULT_SCENE_BOUNDS), inference.GRID_SIZE).min()
    )


# --------------------------------------------------------------------------------------------------
# prediction beside ground truth (dataset scene files)

HIDDEN_TINT = 0.6  # hidden ground truth: the class colour mixed this much with white
COMPARISON_SIZE = 480  # pixels per panel
SIDE_VIEW = np.deg2rad(35.0)  # OVSSC: turned from the scene camera so that hidden parts show


def camera_azimuth(cam_pose: np.ndarray, turn: float = 0.0) -> float:
    """The turntable azimuth looking the way the scene camera looks, turned by `turn` radians."""
    forward = np.asarray(cam_pose)[:3, 2]
    return float(np.arctan2(forward[1], forward[0])) + turn


def tint(color) -> np.ndarray:
    return (np.asarray(color, np.float64) * (1 - HIDDEN_TINT) + 255 * HIDDEN_TINT).astype(np.uint8)


def titled(image: np.ndarray, title: str) -> Image.Image:
    """The panel with its title in black over its top edge, centred."""
    panel = Image.fromarray(image)
    font = _font(max(12, image.shape[0] // 28))
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


def volume_shapes(labels: np.ndarray, colors: np.ndarray, scene_bounds) -> list[Shape]:
    """One marching-cubes mesh per class index k of the (G, G, G) volume, in colors[k]."""
    shapes = []
    for k, color in enumerate(colors):
        mesh = inference.volume_mesh(labels == k, scene_bounds)
        if mesh is not None:
            shapes.append(mesh_shape(*mesh, color))
    return shapes


def grid_volume(xyz: np.ndarray, values: np.ndarray, scene_bounds, size: int) -> np.ndarray:
    """(size,)*3 int16 volume, -1 except at the grid points `xyz` (exact query points)."""
    bounds = np.asarray(scene_bounds, np.float64)
    index = np.round((xyz - bounds[0]) / inference.grid_pitch(bounds, size)).astype(np.int64)
    volume = np.full((size,) * 3, -1, np.int16)
    volume[tuple(index.T)] = values
    return volume


def completion_comparison(folder: Path, size: int = COMPARISON_SIZE) -> Path:
    """completion_vs_gt.png from completion.npz with ground truth: the completion | the ground
    truth of the same classes (hidden parts in a lighter shade), one camera, a legend."""
    with np.load(folder / "completion.npz") as data:
        arrays = {key: data[key] for key in data}
    bounds, grid_size = arrays["scene_bounds"], int(arrays["grid_size"])
    classes = [str(c) for c in arrays["classes"]]
    colors = PALETTE[np.arange(len(classes)) % len(PALETTE)]
    predicted = grid_volume(arrays["xyz"], arrays["label"], bounds, grid_size)
    truth, hidden = arrays["gt_labels"], arrays["gt_hidden"]
    visible_truth = np.where(hidden, -1, truth)
    hidden_truth = np.where(hidden, truth, -1)
    panels = [
        volume_shapes(predicted, colors, bounds),
        volume_shapes(visible_truth, colors, bounds)
        + volume_shapes(hidden_truth, [tint(c) for c in colors], bounds),
    ]
    images = render_panels(
        panels, ["prediction", "ground truth"], camera_azimuth(arrays["cam_pose"], SIDE_VIEW), size
    )
    names = classes + ["lighter shade: hidden from the camera"]
    key = legend(names, np.concatenate([colors, [tint((90, 90, 90))]]), size)
    path = folder / "completion_vs_gt.png"
    with atomic_path(path) as tmp:
        side_by_side([images], key).save(tmp, format="PNG")
    return path


def localization_comparison(folder: Path, size: int = COMPARISON_SIZE) -> Path:
    """localization_vs_gt.png from localization.npz with ground truth: one row per description,
    its predicted points (jet of the probability) | its target's ground-truth points (red), both
    in the grey scene cloud, one camera."""
    with np.load(folder / "localization.npz") as data:
        arrays = {key: data[key] for key in data}
    scene_xyz, _ = inference.read_ply(folder / "scene_rgb.ply")
    scene_xyz, _ = voxel_downsample(scene_xyz, scene_xyz, 0.03)
    scene = cubes_shape(scene_xyz, np.full((len(scene_xyz), 3), 205, np.uint8), 0.03)
    pitch = float(inference.grid_pitch(arrays["scene_bounds"], int(arrays["grid_size"])).min())
    azimuth = camera_azimuth(arrays["cam_pose"])
    rows = []
    for k, (name, stem) in enumerate(zip(arrays["descriptions"], arrays["file_stems"])):
        xyz, colors = inference.read_ply(folder / f"{stem}.ply")
        truth = arrays["gt_xyz"][arrays["gt_description_index"] == k]
        truth, _ = voxel_downsample(truth, truth, 0.02)
        panels = [
            [scene, cubes_shape(xyz, colors, pitch)],
            [scene, cubes_shape(truth, np.tile([[220, 20, 20]], (len(truth), 1)), 0.02)],
        ]
        rows.append(render_panels(panels, [f"{name}: prediction", "ground truth"], azimuth, size))
    path = folder / "localization_vs_gt.png"
    with atomic_path(path) as tmp:
        side_by_side(rows, None).save(tmp, format="PNG")
    return path
