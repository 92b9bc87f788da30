"""One RGB-D frame as visualize.py reads it: the scene pickle (docs/data.md#the-scene-pickle), its
checks, and building one from your own colour and depth images.

Conventions (those of geometry.py, docs/method.md#camera-conventions):
- camera axes are OpenCV's: x along image columns (right), y along rows (down), z forward;
- depth is metric depth along the optical axis (camera z), in metres; 0 or NaN means "no reading";
- `cam_intr` is 3x3 (fx, fy, cx, cy used), `cam_extr` the 4x4 camera-to-world pose;
- the world is z-up and metric, and the scene should lie inside the network's `scene_bounds`
  (default the 2 m box [-1, 1] x [-1, 1] x [-0.1, 1.9]), as in the ARKit example, whose camera
  sits at (-2.06, -0.2, 1.90) looking along +x, pitched down.

Poses from other conventions convert with `opengl_to_opencv` (camera x right, y up, z backward:
ARKit, OpenGL, Blender, NeRF) and `y_up_to_z_up` (a y-up world frame).

The pickle is a plain dict (protocol 4) with keys rgb (uint8 H x W x 3), depth (float32 H x W,
metres), cam_intr (3x3), cam_extr (4x4), ovssc_obj_classes (list of str), descriptions (list of
[target, relation, reference]) and an optional img_shape (width, height) to resize to.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import geometry
from utils import InputError, atomic_path
from vocab import RELATIONS

REQUIRED_KEYS = ("rgb", "depth", "cam_intr", "cam_extr")
MOSTLY = 0.5  # fraction of pixels (or points) above which a problem is reported


@dataclass
class Frame:
    """One posed RGB-D frame with the words to look for in it."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 where there is no reading
    cam_intr: np.ndarray  # (3, 3) float64, OpenCV pinhole
    cam_extr: np.ndarray  # (4, 4) float64, camera-to-world, z-up world in metres
    classes: list[str] = field(default_factory=list)  # OVSSC classes
    descriptions: list[tuple[str, str, str]] = field(default_factory=list)  # (target, rel, ref)

    @property
    def shape(self) -> tuple[int, int]:
        return self.depth.shape

    def points(self) -> np.ndarray:
        """World xyz of every pixel (H*W, 3), row-major, zero depth included."""
        return geometry.backproject(self.depth, self.cam_intr, self.cam_extr)

    def valid(self) -> np.ndarray:
        """(H*W,) bool: pixels with a depth reading."""
        return self.depth.reshape(-1) > 0

    def to_dict(self) -> dict:
        return dict(
            rgb=self.rgb,
            depth=self.depth,
            cam_intr=self.cam_intr,
            cam_extr=self.cam_extr,
            ovssc_obj_classes=list(self.classes),
            descriptions=[list(d) for d in self.descriptions],
        )


# --------------------------------------------------------------------------------------------------
# checks, each one line


def check_intrinsics(cam_intr: np.ndarray, shape: tuple[int, int], source: str) -> np.ndarray:
    cam_intr = np.asarray(cam_intr, dtype=np.float64)
    if cam_intr.shape == (4, 4):  # the original README calls it 4x4; only the 3x3 block is used
        cam_intr = cam_intr[:3, :3]
    if cam_intr.shape != (3, 3) or not np.all(np.isfinite(cam_intr)):
        raise InputError(f"{source}: intrinsics must be a finite 3x3 matrix, got {cam_intr.shape}")
    height, width = shape
    fx, fy, cx, cy = cam_intr[0, 0], cam_intr[1, 1], cam_intr[0, 2], cam_intr[1, 2]
    if fx <= 0 or fy <= 0:
        raise InputError(f"{source}: focal lengths must be positive, got fx={fx:g} fy={fy:g}")
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise InputError(
            f"{source}: intrinsics do not fit the {width}x{height} image: principal point "
            f"({cx:g}, {cy:g}) lies outside it (intrinsics of another resolution? pass the size "
            "they belong to so they get scaled)"
        )
    return cam_intr


def check_pose(pose: np.ndarray, source: str, tolerance: float = 1e-3) -> np.ndarray:
    """A rigid 4x4 camera-to-world transform (rotation with det +1, bottom row 0 0 0 1)."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise InputError(f"{source}: the pose must be a finite 4x4 matrix, got shape {pose.shape}")
    rotation = pose[:3, :3]
    error = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if (
        error > tolerance
        or abs(np.linalg.det(rotation) - 1) > tolerance
        or not np.allclose(pose[3], [0, 0, 0, 1], atol=tolerance)
    ):
        raise InputError(
            f"{source}: the pose is not rigid (R^T R deviates from I by {error:.3g}, det R = "
            f"{np.linalg.det(rotation):.3g}, bottom row {pose[3].round(3).tolist()}); expected a "
            "4x4 camera-to-world rotation + translation in metres"
        )
    return pose


def check_rgbd(rgb: np.ndarray, depth: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) and float32 (H, W) of the same size; NaN/inf/negative depth become 0."""
    rgb = np.asarray(rgb)
    depth = np.asarray(depth)
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{source}: rgb must be uint8 H x W x 3, got {rgb.dtype} {rgb.shape}")
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise InputError(f"{source}: depth must be a numeric H x W array, got {depth.shape}")
    if depth.shape != rgb.shape[:2]:
        raise InputError(
            f"{source}: colour is {rgb.shape[1]}x{rgb.shape[0]} but depth is "
            f"{depth.shape[1]}x{depth.shape[0]} (width x height); they must be registered "
            "pixel to pixel"
        )
    depth = depth.astype(np.float32)
    finite = np.isfinite(depth)
    if not np.any(finite & (depth > 0)) and np.any(finite & (depth < 0)):
        raise InputError(
            f"{source}: every depth reading is negative or missing (min {np.min(depth[finite]):g}); "
            "depth is the distance in front of the camera (check the sign or --depth-scale)"
        )
    depth[~finite | (depth < 0)] = 0
    return np.ascontiguousarray(rgb), depth


def depth_report(depth: np.ndarray, source: str) -> list[str]:
    """Notes on missing depth; an InputError when no pixel has one."""
    missing = float(np.mean(depth <= 0))
    if missing == 1:
        raise InputError(f"{source}: no pixel has a depth reading (all zero or NaN)")
    if missing > MOSTLY:
        return [f"{source}: {missing:.0%} of the pixels have no depth (0 or NaN); they are ignored"]
    return []


def bounds_report(frame: Frame, scene_bounds, source: str) -> tuple[float, list[str]]:
    """(fraction of valid points inside scene_bounds, notes)."""
    points = frame.points()[frame.valid()]
    inside = float(np.mean(geometry.in_bounds(points, scene_bounds)))
    if inside >= MOSTLY:
        return inside, []
    low, high = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
    return inside, [
        f"{source}: only {inside:.0%} of the points lie inside scene_bounds "
        f"{np.asarray(scene_bounds).tolist()} (the points span {low.round(2).tolist()} to "
        f"{high.round(2).tolist()} m); pass --center to move the scene into the box, or fix the "
        "pose (z-up world, metres)"
    ]


def centering_transform(frame: Frame, scene_bounds) -> np.ndarray:
    """4x4 translation moving the middle of the points (2nd-98th percentile box) to the middle of
    scene_bounds, with the lowest points just above the floor of the box."""
    points = frame.points()[frame.valid()]
    low, high = np.percentile(points, 2, axis=0), np.percentile(points, 98, axis=0)
    bounds = np.asarray(scene_bounds, dtype=np.float64)
    shift = (bounds[0] + bounds[1]) / 2 - (low + high) / 2
    shift[2] = bounds[0][2] + 0.1 - low[2]  # z-up: rest the scene near the floor of the box
    transform = np.eye(4)
    transform[:3, 3] = shift
    return transform


# --------------------------------------------------------------------------------------------------
# scene pickles


def read_scene_pickle(path: str | Path) -> Frame:
    """Read and check a scene pickle (original or ours); one InputError line for each problem."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a folder: give a scene pickle (.pkl) or a dataset scene (.hdf5)"
        )
    if not path.is_file():
        raise InputError(f"scene pickle not found: {path}")
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
    except Exception as error:  # pickle raises many types on a foreign file
        raise InputError(f"{path} is not a readable pickle ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a {type(data).__name__}, not a scene dict")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; a scene pickle has {REQUIRED_KEYS}")
    rgb, depth = check_rgbd(data["rgb"], data["depth"], str(path))
    cam_intr = np.asarray(data["cam_intr"], dtype=np.float64)
    if "img_shape" in data:  # cv2 dsize (width, height), as the original resized
        width, height = (int(v) for v in data["img_shape"])
        rgb, depth, cam_intr = resize(rgb, depth, cam_intr[:3, :3], (width, height))
    cam_intr = check_intrinsics(cam_intr, depth.shape, str(path))
    cam_extr = np.asarray(data["cam_extr"], dtype=np.float64)
    if cam_extr.shape != (4, 4) or not np.all(np.isfinite(cam_extr)):
        raise InputError(f"{path}: cam_extr must be a finite 4x4 matrix, got {cam_extr.shape}")
    classes = [str(c) for c in data.get("ovssc_obj_classes", [])]
    descriptions = [check_description(d, str(path)) for d in data.get("descriptions", [])]
    if not classes and not descriptions:
        raise InputError(f"{path}: neither ovssc_obj_classes nor descriptions")
    return Frame(rgb, depth, cam_intr, cam_extr, classes, descriptions)


def check_description(entry, source: str) -> tuple[str, str, str]:
    if isinstance(entry, str):
        entry = entry.split("|")
    if len(entry) != 3 or not all(isinstance(e, str) and e.strip() for e in entry):
        raise InputError(f"{source}: a description is [target, relation, reference], got {entry!r}")
    target, relation, reference = (e.strip() for e in entry)
    if relation not in RELATIONS:
        raise InputError(
            f"{source}: unknown relation {relation!r} in {entry!r}; use one of {', '.join(RELATIONS)}"
        )
    return target, relation, reference


def write_scene_pickle(frame: Frame, path: str | Path) -> None:
    """The scene pickle of docs/data.md#the-scene-pickle (not scene_file.write_scene, which writes a
    dataset HDF5)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(frame.to_dict(), handle, protocol=4)


# --------------------------------------------------------------------------------------------------
# your own RGB-D frame


def resize(rgb, depth, cam_intr, size: tuple[int, int]):
    """Resize to size = (width, height): colour bilinear, depth nearest (no mixed edges), and the
    intrinsics scaled about pixel centres (cx' = (cx + 0.5) * sx - 0.5)."""
    width, height = size
    sx, sy = width / rgb.shape[1], height / rgb.shape[0]
    rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
    depth = np.asarray(Image.fromarray(depth, mode="F").resize((width, height), Image.NEAREST))
    cam_intr = np.array(cam_intr, dtype=np.float64)
    cam_intr[0, 0] *= sx
    cam_intr[1, 1] *= sy
    cam_intr[0, 2] = (cam_intr[0, 2] + 0.5) * sx - 0.5
    cam_intr[1, 2] = (cam_intr[1, 2] + 0.5) * sy - 0.5
    return rgb, depth.astype(np.float32), cam_intr


def intrinsics_matrix(values) -> np.ndarray:
    """fx fy cx cy (4 numbers) or a 3x3 (9 numbers, row-major) -> 3x3."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 4:
        fx, fy, cx, cy = values
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    if values.size == 9:
        return values.reshape(3, 3)
    raise InputError(f"intrinsics are fx fy cx cy or a 3x3 matrix, got {values.size} numbers")


def read_matrix(path: str | Path, what: str) -> np.ndarray:
    """A matrix from .npy or a whitespace/comma separated text file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path)
        return np.loadtxt(path, delimiter="," if "," in path.read_text() else None)
    except ValueError as error:
        raise InputError(f"{what} file {path} is not a numeric matrix: {error}") from None


def read_depth(path: str | Path, depth_scale: float | None) -> np.ndarray:
    """Depth in metres: 16-bit PNG in millimetres (scale 0.001), float images/.npy in metres
    (scale 1); `depth_scale` (metres per stored unit) overrides for other sensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"depth image not found: {path}")
    raw = np.load(path) if path.suffix == ".npy" else read_image(path)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise InputError(f"{path}: depth must be a single-channel image, got shape {raw.shape}")
    if depth_scale is None:
        if np.issubdtype(raw.dtype, np.integer):
            if raw.dtype == np.uint8:
                raise InputError(
                    f"{path}: 8-bit depth cannot hold metric depth; use a 16-bit PNG in "
                    "millimetres or a float image in metres (or pass --depth-scale)"
                )
            depth_scale = 0.001
        else:
            depth_scale = 1.0
    return raw.astype(np.float32) * np.float32(depth_scale)


def read_image(path: Path) -> np.ndarray:
    """The pixels of an image file; one line when it is not one (imageio's own message suggests
    installing backends)."""
    import imageio.v3 as iio

    try:
        return iio.imread(path)
    except Exception as error:  # imageio raises many types on a file that is not an image
        kind = "empty file" if path.stat().st_size == 0 else type(error).__name__
        raise InputError(
            f"{path} is not an image ({kind}: no image plugin could read it)"
        ) from None


def read_rgb(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"colour image not found: {path}")
    rgb = read_image(path)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.dtype != np.uint8:
        raise InputError(f"{path}: colour must be an 8-bit image, got {rgb.dtype}")
    return rgb[..., :3]


OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flip camera y and z
Y_UP_TO_Z_UP = np.array(  # rotate the world +90 degrees about x: y (up) -> z, z -> -y
    [[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
)
# No pose given: a level camera at the THOR generator's camera centre, looking along +x (z up).
DEFAULT_POSE = np.array([[0.0, 0, 1, -1.5], [-1, 0, 0, 0], [0, -1, 0, 0.8], [0, 0, 0, 1]])


def opengl_to_opencv(pose: np.ndarray) -> np.ndarray:
    """A camera-to-world pose with OpenGL camera axes (x right, y up, z back) -> OpenCV axes."""
    return np.asarray(pose, dtype=np.float64) @ OPENGL_TO_OPENCV


def y_up_to_z_up(pose: np.ndarray) -> np.ndarray:
    """A camera-to-world pose in a y-up world -> the same camera in a z-up world."""
    return Y_UP_TO_Z_UP @ np.asarray(pose, dtype=np.float64)


def read_pose(path: str | Path, opengl_camera: bool = False, y_up: bool = False) -> np.ndarray:
    """A checked 4x4 camera-to-world pose from a file, turned to OpenCV camera axes and a z-up
    world when it uses OpenGL camera axes or a y-up world."""
    pose = check_pose(read_matrix(path, "pose"), str(path))
    if opengl_camera:
        pose = opengl_to_opencv(pose)
    if y_up:
        pose = y_up_to_z_up(pose)
    return pose


def build_frame(
    rgb: np.ndarray,
    depth: np.ndarray,
    intrinsics,
    pose: np.ndarray | None = None,
    classes: list[str] | None = None,
    descriptions: list | None = None,
    size: tuple[int, int] | None = None,
    scene_bounds=geometry.THOR_SCENE_BOUNDS,
    center: bool = False,
    source: str = "frame",
) -> tuple[Frame, list[str]]:
    """A checked Frame from registered colour and metric depth, and notes to show the user.

    `intrinsics` belong to the images as given; `size` = (width, height) resizes both and scales
    the intrinsics. Raises InputError (one line) for a size mismatch, intrinsics that do not fit,
    a non-rigid pose, no depth at all, a bad description, or no classes/descriptions.
    """
    rgb, depth = check_rgbd(rgb, depth, source)
    cam_intr = check_intrinsics(intrinsics_matrix(intrinsics), depth.shape, source)
    if size is not None:
        rgb, depth, cam_intr = resize(rgb, depth, cam_intr, size)
    notes = depth_report(depth, source)
    pose = DEFAULT_POSE if pose is None else check_pose(pose, source)
    classes = [c.strip() for c in (classes or []) if c.strip()]
    descriptions = [check_description(d, source) for d in (descriptions or [])]
    if not classes and not descriptions:
        raise InputError(f"{source}: give at least one class or description to look for")
    frame = Frame(rgb, depth, cam_intr, pose, classes, descriptions)
    inside, bounds_notes = bounds_report(frame, scene_bounds, source)
    if center and inside < 1:
        frame.cam_extr = centering_transform(frame, scene_bounds) @ frame.cam_extr
        inside, bounds_notes = bounds_report(frame, scene_bounds, source)
        notes.append(f"{source}: centred; {inside:.0%} of the points now lie inside scene_bounds")
    return frame, notes + bounds_notes
