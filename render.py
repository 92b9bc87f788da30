"""Headless turntable rendering of meshes and point clouds: ray-cast, Lambert-shaded, to mp4 / PNG.

Replaces the original's on-screen Open3D window (docs/visualization.md), which needs a display and a
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

import functools
import os
import subprocess
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import open3d as o3d
from PIL import Image, ImageDraw
from tqdm import tqdm

import figures
import geometry
import inference
from utils import InputError, atomic_path, die_with_parent

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
STRIPE_WIDTH = 0.012  # striped shapes: band width as a fraction of the frame
STRIPE_WHITE = 0.8  # how far the light bands are mixed towards white


@dataclass
class Shape:
    """Triangles with one colour per triangle (uint8 RGB)."""

    vertices: np.ndarray  # (V, 3) float
    triangles: np.ndarray  # (T, 3) int
    colors: np.ndarray  # (T, 3) uint8
    striped: bool = False  # drawn with diagonal white stripes (hidden ground truth)


def mesh_shape(vertices: np.ndarray, triangles: np.ndarray, color, striped: bool = False) -> Shape:
    color = np.broadcast_to(np.asarray(color, np.uint8), (len(triangles), 3))
    return Shape(np.asarray(vertices, np.float32), np.asarray(triangles, np.int32), color, striped)


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


def orbit_camera(center: np.ndarray, distance: float, elevation: float,
                 azimuth: float) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Eye and the unit forward, right and up vectors of a camera `distance` from `center`,
    raised by `elevation` and turned by `azimuth` (radians) about the z axis, looking at it."""
    direction = np.array(
        [
            -np.cos(elevation) * np.cos(azimuth),
            -np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ]
    )
    eye = center + distance * direction
    forward = (center - eye) / np.linalg.norm(center - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return eye, forward, right, np.cross(right, forward)


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
        self.striped = np.array([shape.striped for shape in shapes])
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

    def camera(self, azimuth: float) -> tuple[np.ndarray, ...]:
        """Eye and the unit forward, right and up vectors of the view from azimuth."""
        return orbit_camera(self.center, self.distance, self.elevation, azimuth)

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
        if self.striped.any():
            color = self._stripe(color, found, self.striped[geometry_ids], size)
        image[r0:r1, c0:c1][found] = np.clip(color, 0, 255).astype(np.uint8)
        return image

    @staticmethod
    def _stripe(color: np.ndarray, found: np.ndarray, striped: np.ndarray, size: int) -> np.ndarray:
        """Every other diagonal band (STRIPE_WIDTH of the frame) of the striped pixels turned
        almost white; `found` is the (rows, cols) hit mask the (N, 3) colours belong to."""
        rows, cols = np.nonzero(found)
        width = max(2, int(size * STRIPE_WIDTH))
        band = striped & (((rows + cols) // width) % 2 == 0)
        color[band] = color[band] * (1 - STRIPE_WHITE) + 255 * STRIPE_WHITE
        return color

    def _key_light(self, eye: np.ndarray) -> np.ndarray:
        light = (eye - self.center) / np.linalg.norm(eye - self.center) + np.array([0, 0, 1.5])
        return (light / np.linalg.norm(light)).astype(np.float32)

    def azimuths(self, num_frames: int, start: float = 0.0) -> np.ndarray:
        return start + np.arange(num_frames) * (FULL_SWEEP / max(num_frames, 1))


# --------------------------------------------------------------------------------------------------
# legend and files


def legend(names: list[str], colors: np.ndarray, frame_size: int) -> Image.Image:
    """Square markers and names (wrapped at 30 characters) on white, sized to the frame."""
    font_size = max(10, frame_size // 48)
    font = figures.text_font(font_size)
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


def _encoder_start(parent_pid: int) -> None:
    """ffmpeg's preexec: its own process group (Ctrl-C is the parent's to handle), and ended by
    the kernel when the parent dies, even by kill -9."""
    os.setpgrp()
    die_with_parent(parent_pid)


class Mp4Encoder:
    """ffmpeg turning raw RGB frames on its stdin into an H.264 (yuv420p, crf 25) mp4: the command of
    imageio-ffmpeg's write_frames, started so that it ends with this process (write_frames's
    ffmpeg went on writing its temporary file after its parent was killed)."""

    def __init__(self, path: Path, size: int, fps: int):
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
            "-s", f"{size}x{size}", "-pix_fmt", "rgb24", "-r", str(fps), "-i", "-", "-an",
            "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "25", "-v", "error",
        ]  # fmt: skip
        if size % 2:  # yuv420p needs even sides: scaled up by one pixel, as write_frames did
            command += ["-vf", f"scale={size + 1}:{size + 1}"]
        command += ["-f", "mp4", str(path)]  # the temporary name has no .mp4 to guess from
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            preexec_fn=functools.partial(_encoder_start, os.getpid()),
        )

    def send(self, frame: np.ndarray) -> None:
        try:
            self.process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg stopped (exit {self.process.wait()})") from None

    def close(self) -> None:
        """Finish the file; an ffmpeg failure is an error."""
        self.process.stdin.close()
        code = self.process.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed (exit {code})")

    def abort(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()


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
        writer = Mp4Encoder(tmp, size, fps)
        try:
            # two frames in flight: one is ray-cast (open3d releases the GIL) while the other
            # is shaded in numpy
            with ThreadPoolExecutor(max_workers=2) as pool:
                views = pool.map(lambda a: turntable.frame(a, size), turntable.azimuths(num_frames))
                for k, view in enumerate(
                    tqdm(views, total=num_frames, desc=desc, unit="frame", disable=not progress)
                ):
                    frame = paste_legend(view, legend_image)
                    writer.send(frame)
                    if k == 0 and still_path is not None:
                        write_png(frame, still_path)
        except BaseException:
            writer.abort()
            raise
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
