"""Camera and grid geometry shared by the dataset, the scene generator, relevancy and visualisation.

Conventions (docs/method.md#camera-conventions), stated once here and used everywhere through these
functions:

- Pinhole camera in the **OpenCV** convention: camera x runs along image columns (u, right), y along
  image rows (v, down), z forward along the optical axis. `cam_intr` is 3x3 with K[0,2] paired with
  columns and K[1,2] with rows, exactly as the original `get_pointcloud` uses them.
- `cam_pose` is the 4x4 camera-to-world transform. It may be a similarity (the THOR files store a
  pose with scale 0.6 and a reflection); it is used as stored, with no axis fix-ups.
- Depth is metric depth along the optical axis (camera z), not the distance along the ray.
- Scene bounds are a (2, 3) array [lower, upper]; in-bounds tests are inclusive on both ends.
- Grid index of a grid of G points over the bounds: (p - lower) * (G - 1) / (upper - lower), clamped
  and truncated (`continuous_grid_index`; grid.VirtualGrid is its torch form), x slowest when flat.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SCENE_BOUNDS = ((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))  # metres, (lower corner, upper corner)
DEFAULT_VOXEL_SHAPE = (128, 128, 128)  # network feature volume and TSDF grid
THOR_SCENE_BOUNDS = np.array(DEFAULT_SCENE_BOUNDS)
THOR_FOV_DEG = 80.0


def pinhole_intrinsics(height: int, width: int, fov_deg: float = THOR_FOV_DEG) -> np.ndarray:
    """(3, 3) intrinsics as the THOR generator writes them: f = (H/2)/tan(fov/2), c = (H/2, W/2).

    Quirk kept for fidelity: element [0,2] is height/2 and [1,2] width/2 (equal for square images).
    """
    focal = (height / 2) / np.tan(np.deg2rad(fov_deg / 2))
    return np.array([[focal, 0.0, height / 2], [0.0, focal, width / 2], [0.0, 0.0, 1.0]])


def transform_points(xyz: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to (N, 3) points (float64).

    einsum, not `@`: for an (N, 3) x (3, 3) product it is about 15x faster than BLAS matmul here.
    """
    return np.einsum("nj,ij->ni", np.asarray(xyz, np.float64), transform[:3, :3]) + transform[:3, 3]


def camera_points(depth: np.ndarray, cam_intr: np.ndarray) -> np.ndarray:
    """Back-project every pixel (row-major, zero depth included) to camera coordinates: (H*W, 3)."""
    height, width = depth.shape
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    z = depth.reshape(-1).astype(np.float64)
    x = (u.reshape(-1) - cam_intr[0, 2]) * z / cam_intr[0, 0]
    y = (v.reshape(-1) - cam_intr[1, 2]) * z / cam_intr[1, 1]
    return np.stack([x, y, z], axis=1)


def backproject(depth: np.ndarray, cam_intr: np.ndarray, cam_pose: np.ndarray) -> np.ndarray:
    """World xyz of every pixel, row-major, (H*W, 3) float64 (the original `get_pointcloud`)."""
    return transform_points(camera_points(depth, cam_intr), cam_pose)


def project(xyz: np.ndarray, cam_intr: np.ndarray, cam_pose: np.ndarray) -> tuple[np.ndarray, ...]:
    """World points (N, 3) to continuous pixel coordinates: returns (u, v, z), z = camera depth."""
    cam = transform_points(xyz, np.linalg.inv(cam_pose))
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cam[:, 0] * cam_intr[0, 0] / z + cam_intr[0, 2]
        v = cam[:, 1] * cam_intr[1, 1] / z + cam_intr[1, 2]
    return u, v, z


def in_frustum(
    xyz: np.ndarray, cam_intr: np.ndarray, cam_pose: np.ndarray, image_shape: tuple[int, int]
) -> np.ndarray:
    """(N,) bool: 0 <= u < W, 0 <= v < H and z > 0, continuous u, v (`check_pts_in_frustum`)."""
    height, width = image_shape
    u, v, z = project(xyz, cam_intr, cam_pose)
    with np.errstate(invalid="ignore"):
        return (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def in_bounds(xyz: np.ndarray, scene_bounds: np.ndarray) -> np.ndarray:
    """(N,) bool, inclusive on both ends."""
    scene_bounds = np.asarray(scene_bounds)
    return np.all((xyz >= scene_bounds[0]) & (xyz <= scene_bounds[1]), axis=1)


def continuous_grid_index(xyz, lower, upper, max_index):
    """The grid index convention (docs/method.md#the-voxel-grid), stated once for every grid of G
    points spanning [lower, upper]: u = (p - lower) * (G - 1) / (upper - lower), clamped to
    [0, G - 1].

    The voxel index is trunc(u): voxel i covers [i, i+1) in index space, so the pitch is
    extent / (G - 1) (a 64-cell grid has pitch 2/63, not the TSDF's 2/64). xyz [..., 3]; lower,
    upper and max_index = G - 1 [3]: all numpy arrays (grid_index) or all torch tensors
    (grid.VirtualGrid), computed in their dtype; this module never imports torch.
    """
    u = (xyz - lower) * max_index / (upper - lower)
    if isinstance(u, np.ndarray):
        return np.clip(u, 0, max_index)
    return u.clamp(min=0).minimum(max_index)  # a torch tensor


def flat_grid_index(index, grid_shape):
    """[..., 3] integer voxel index -> [...] flat index ix * Gy * Gz + iy * Gz + iz (x slowest);
    numpy or torch."""
    _, gy, gz = grid_shape
    return (index[..., 0] * gy + index[..., 1]) * gz + index[..., 2]


def grid_index(xyz: np.ndarray, scene_bounds: np.ndarray, grid_shape) -> np.ndarray:
    """Voxel index (N, 3) int64 of `continuous_grid_index` in numpy, float64: trunc(u), clamped."""
    scene_bounds = np.asarray(scene_bounds, dtype=np.float64)
    n = np.asarray(grid_shape)
    cont = continuous_grid_index(xyz, scene_bounds[0], scene_bounds[1], n - 1)
    return np.clip(cont.astype(np.int64), 0, n - 1)


def tsdf_voxel_corners(scene_bounds: np.ndarray, tsdf_shape) -> tuple[np.ndarray, float]:
    """World xyz of every TSDF voxel's lower corner, C order over (x, y, z): (X*Y*Z, 3), and voxel
    size.

    The voxel size is min((ub - lb) / shape), as in the original's TSDF.
    """
    scene_bounds = np.asarray(scene_bounds, dtype=np.float64)
    shape = np.asarray(tsdf_shape)
    voxel_size = float(np.min((scene_bounds[1] - scene_bounds[0]) / shape))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return scene_bounds[0] + index * voxel_size, voxel_size


def integrate_tsdf(
    depth: np.ndarray,
    cam_intr: np.ndarray,
    cam_pose: np.ndarray,
    scene_bounds: np.ndarray,
    tsdf_shape=(64, 64, 64),
    trunc_voxels: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One-frame TSDF of the original (docs/method.md#the-tsdf): returns (values (X,Y,Z) float32,
    corners (X*Y*Z,3)).

    Unobserved voxels start at -1 ("assume occupied", unlike Zeng's +1). A voxel is updated where
    its corner projects (rounded to the nearest pixel) inside the image, in front of the camera,
    onto a pixel with depth > 0, and depth - z >= -trunc; the value is clip((depth - z) / trunc, -1,
    1). As in the original, z is the camera-frame depth and trunc is in world units (5 voxels).
    """
    corners, voxel_size = tsdf_voxel_corners(scene_bounds, tsdf_shape)
    trunc = trunc_voxels * voxel_size
    height, width = depth.shape
    u, v, z = project(corners, cam_intr, cam_pose)
    with np.errstate(invalid="ignore"):
        u_pix = np.round(u)
        v_pix = np.round(v)
        valid = (z > 0) & (u_pix >= 0) & (u_pix < width) & (v_pix >= 0) & (v_pix < height)
    depth_at = np.zeros(len(corners))
    depth_at[valid] = depth[v_pix[valid].astype(np.int64), u_pix[valid].astype(np.int64)]
    diff = depth_at - z
    update = valid & (depth_at > 0) & (diff >= -trunc)
    values = np.full(len(corners), -1.0, dtype=np.float32)
    values[update] = np.clip(diff[update] / trunc, -1.0, 1.0)
    return values.reshape(tuple(tsdf_shape)), corners.astype(np.float32)
