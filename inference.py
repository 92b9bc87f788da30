"""OVSSC and VOOL inference on one RGB-D frame over a dense query grid, and the files it writes
(meshes, point clouds); inference_run.py runs visualize.py's two inference commands with it.

The original's inference (docs/method.md#visualization); its numbers are kept: a 240^3 query grid
spanning the scene bounds inclusively, chunks of 2^20 query points with a fresh draw of
`num_input_pts` input points (with replacement) for every chunk, "empty" where every class logit is
below -3.0, OVSSC volumes masked to the camera frustum and to TSDF <= 0 (observed free space
removed), VOOL points within 0.15 of the best logit coloured by jet of exp(logit).

Differences from the original, each a bug that only hurt users:
- the network is the one `args.pkl` names (the original always built SemAbs3D / SemAbsVOOL);
  clip_spatial reads the relevancy of the sentence it was trained on ("{T} {R} a {Ref}");
- OBJ vertices are in metres, in the scene frame (the original wrote normalised voxel units,
  [-0.5, 0.5], so meshes did not line up with the PLY clouds or the scene);
- `saliency_vmin` and `patch_masks` inputs are prepared as in training when args.pkl sets them;
- file names of descriptions are made safe for every file system.
Marching cubes: skimage is not a dependency, so the meshes come from open3d's marching cubes
(`UniformTSDFVolume`), at the same 0.5 level on the 0/1 volume.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
from tqdm import tqdm

import figures
import geometry
import inputs
import scene_file
from frames import Frame
from utils import InputError, atomic_path

GRID_SIZE = 240  # query points per axis (original)
CHUNK = 2**20  # query points per network call (original)
EMPTY_LOGIT = -3.0  # a voxel is empty where every class logit is below this (sigmoid ~ 0.047)
VOOL_MARGIN = 0.15  # VOOL keeps points with logit > max logit - margin
TSDF_TRUNC_VOXELS = 5.0


def description_name(target: str, relation: str, reference: str) -> str:
    """The display text and file stem of a description in visualize's outputs: "the {T} {R} the
    {Ref}".

    The original uses two formats: its visualize.py names the outputs this way, while its data
    generator stores the relevancy of the sentence "{T} {R} a {Ref}"
    (docs/data.md#the-scene-file-layout), which is `scene_file.relevancy_sentence`. The name here
    is only for people and file names; anything a network reads (clip_spatial's sentence
    relevancy) uses `scene_file.relevancy_sentence`.
    """
    return f"the {target} {relation} the {reference}"


def safe_name(text: str, taken: set[str] | None = None) -> str:
    """A file stem for any text: characters outside [A-Za-z0-9 _.,'-] become '_', at most 120
    characters, no leading dot, made unique against `taken` (which it updates)."""
    stem = re.sub(r"[^A-Za-z0-9 _.,'-]", "_", text).strip().lstrip(".")[:120] or "unnamed"
    if taken is not None:
        base, k = stem, 2
        while stem.lower() in taken:
            stem, k = f"{base} ({k})", k + 1
        taken.add(stem.lower())
    return stem


def query_grid(scene_bounds, size: int) -> np.ndarray:
    """(size^3, 3) float32 points spanning the bounds inclusively (pitch extent / (size - 1)),
    C order over (x, y, z)."""
    bounds = np.asarray(scene_bounds, dtype=np.float64)
    axes = [np.linspace(bounds[0, k], bounds[1, k], size, dtype=np.float32) for k in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def grid_pitch(scene_bounds, size: int) -> np.ndarray:
    bounds = np.asarray(scene_bounds, dtype=np.float64)
    return (bounds[1] - bounds[0]) / (size - 1)


# --------------------------------------------------------------------------------------------------
# inputs


@dataclass
class SceneInputs:
    """What the networks read about one frame: in-bounds points and per-point features."""

    xyz: np.ndarray  # (N, 3) float32 in-bounds input points
    rgb: np.ndarray  # (N, 3) float32 in [0, 1]
    features: dict[str, np.ndarray]  # label -> (N, F) float32 relevancy features
    text: dict[str, np.ndarray]  # label -> (D,) CLIP text feature (semantic-aware baselines)


def relevancy_labels(frame: Frame, approach: str) -> list[str]:
    """Labels whose relevancy the networks read: classes, targets and references (the original's
    set-union, sorted here for repeatability), plus whole sentences for clip_spatial.

    clip_spatial networks were trained on the relevancy of the stored sentence "{T} {R} a {Ref}"
    (`scene_file.relevancy_sentence`), so that is the label here, not `description_name` (the
    original's visualize.py never ran clip_spatial)."""
    labels = set(frame.classes)
    for target, relation, reference in frame.descriptions:
        labels |= {target, reference}
        if approach == "clip_spatial":
            labels.add(scene_file.relevancy_sentence(target, relation, reference))
    return sorted(labels)


def prepare_inputs(
    frame: Frame,
    maps: np.ndarray | None,
    labels: list[str],
    text: np.ndarray | None,
    args: argparse.Namespace,
    task: str,
) -> SceneInputs:
    """Back-project, keep in-bounds pixels with depth, attach features
    (docs/method.md#visualization).

    `maps` are the raw relevancy maps (L, H, W) of `labels` on this image (or None when the
    approach reads RGB only). As the original's visualize.py: x50 and, with
    `subtract_mean_relevancy`, the mean over labels subtracted; `saliency_vmin` and patch masks as
    in training when args.pkl sets them, through the datasets' own functions (inputs.py).
    """
    xyz, has_depth = inputs.input_points(frame.depth, frame.cam_intr, frame.cam_extr)
    keep = has_depth & geometry.in_bounds(xyz, args.scene_bounds)
    if not keep.any():
        raise InputError(
            f"no point of the frame lies inside scene_bounds {args.scene_bounds}: check the pose "
            "(z-up world, metres) or rebuild the scene with --center"
        )
    rgb = inputs.rgb_points(frame.rgb)[keep]
    features = {}
    if maps is not None:
        maps = np.asarray(maps, np.float32)
        mean_map = maps.mean(0) if args.subtract_mean_relevancy else None
        network_inputs = tuple(args.network_inputs)
        if task == "ovssc":
            per_label = inputs.ovssc_relevancy_features(
                inputs.subtract_mean(maps, mean_map),
                network_inputs,
                args.saliency_vmin,
                args.patch_mask_cutoff,
                args.offset_patch_mask,
            )  # (L, H*W, F)
        else:
            per_label = inputs.vool_relevancy(
                maps,
                mean_map,
                frame.shape,
                args.saliency_vmin,
                "patch_masks" in network_inputs,
                args.patch_mask_cutoff,
                getattr(args, "fix_vool_patch_mask_scale", False),
            )  # (L, H*W, 1)
        features = {label: f[keep] for label, f in zip(labels, per_label)}
    text_features = {} if text is None else dict(zip(labels, np.asarray(text, np.float32)))
    return SceneInputs(xyz[keep].astype(np.float32), rgb, features, text_features)


# --------------------------------------------------------------------------------------------------
# batches per (task, approach)


def ovssc_batch(approach: str, inputs: SceneInputs, label: str, index: np.ndarray) -> dict:
    """The network's batch keys for one class, B = P = 1, without the query points."""
    batch = {"input_xyz_pts": torch.from_numpy(inputs.xyz[index])[None]}
    if approach == "semantic_aware":
        batch["input_feature_pts"] = torch.from_numpy(inputs.rgb[index])[None, None]
        batch["semantic_class_features"] = torch.from_numpy(inputs.text[label])[None, None]
    else:
        batch["input_feature_pts"] = torch.from_numpy(inputs.features[label][index])[None, None]
    return batch


def vool_batch(
    approach: str, inputs: SceneInputs, description: tuple[str, str, str], index: np.ndarray
) -> dict:
    target, relation, reference = description
    batch = {
        "input_xyz_pts": torch.from_numpy(inputs.xyz[index])[None],
        "spatial_relation_name": [[relation]],
        "target_obj_name": [[target]],
        "reference_obj_name": [[reference]],
    }
    if approach == "semantic_aware":
        batch["input_rgb_pts"] = torch.from_numpy(inputs.rgb[index])[None, None]
        batch["target_obj_text_features"] = torch.from_numpy(inputs.text[target])[None, None]
        batch["reference_obj_text_features"] = torch.from_numpy(inputs.text[reference])[None, None]
    elif approach == "clip_spatial":
        feats = inputs.features[scene_file.relevancy_sentence(*description)][index]
        batch["input_description_saliency_pts"] = torch.from_numpy(feats)[None, None]
    else:
        batch["input_target_saliency_pts"] = torch.from_numpy(inputs.features[target][index])[
            None, None
        ]
        batch["input_reference_saliency_pts"] = torch.from_numpy(inputs.features[reference][index])[
            None, None
        ]
    return batch


@torch.inference_mode()
def grid_logits(
    net: torch.nn.Module,
    make_batch: Callable[[np.ndarray], dict],
    grid: np.ndarray,
    num_points: int,
    num_input_pts: int,
    rng: np.random.Generator,
    device: torch.device,
    chunk: int = CHUNK,
    bar: tqdm | None = None,
) -> np.ndarray:
    """Logits (M,) float32 of every grid point, in chunks, with fresh input points per chunk."""
    out = np.empty(len(grid), np.float32)
    for start in range(0, len(grid), chunk):
        if num_input_pts == -1:  # every point
            index = np.arange(num_points)
        else:
            index = rng.integers(0, num_points, num_input_pts)  # with replacement, as the original
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in make_batch(index).items()}
        queries = torch.from_numpy(grid[start : start + chunk]).to(device)[None, None]
        logits = net(**batch, output_xyz_pts=queries)  # [1, 1, m]
        out[start : start + chunk] = logits.reshape(-1).float().cpu().numpy()
        if bar is not None:
            bar.update(1)
    return out


def num_chunks(grid_size: int, chunk: int = CHUNK) -> int:
    return math.ceil(grid_size**3 / chunk)


# --------------------------------------------------------------------------------------------------
# OVSSC: labels, masks, meshes


def observed_mask(frame: Frame, scene_bounds, size: int, grid: np.ndarray) -> np.ndarray:
    """(size,)*3 bool: inside the camera frustum and TSDF <= 0 (not observed free space)."""
    frustum = geometry.in_frustum(grid, frame.cam_intr, frame.cam_extr, frame.shape)
    tsdf, _ = geometry.integrate_tsdf(
        frame.depth, frame.cam_intr, frame.cam_extr, scene_bounds, (size,) * 3, TSDF_TRUNC_VOXELS
    )
    return frustum.reshape((size,) * 3) & (tsdf <= 0)


def ovssc_labels(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) logits -> (X, Y, Z) int16 class index, -1 where empty or masked out."""
    labels = np.argmax(logits, axis=0).astype(np.int16)
    empty = np.all(logits < EMPTY_LOGIT, axis=0)
    labels[empty | ~keep] = -1
    return clear_border(labels)


def clear_border(labels: np.ndarray) -> np.ndarray:
    """-1 on the six faces of the (X, Y, Z) volume: the original's -inf slabs (closed meshes)."""
    labels[[0, -1]] = labels[:, [0, -1]] = labels[:, :, [0, -1]] = -1
    return labels


def volume_mesh(occupied: np.ndarray, scene_bounds) -> tuple[np.ndarray, np.ndarray] | None:
    """Marching cubes (level 0.5) of a 0/1 volume on the query grid -> (vertices in metres, faces),
    or None when nothing is occupied. The volume's border must be empty (closed surfaces)."""
    if not occupied.any():
        return None
    size = np.array(occupied.shape)
    nonzero = np.argwhere(occupied)
    low = np.maximum(nonzero.min(0) - 1, 0)
    high = np.minimum(nonzero.max(0) + 2, size)
    crop = occupied[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    res = int(max(crop.shape)) + 2
    padded = np.zeros((res,) * 3, np.float64)
    padded[1 : crop.shape[0] + 1, 1 : crop.shape[1] + 1, 1 : crop.shape[2] + 1] = crop
    volume = o3d.pipelines.integration.UniformTSDFVolume(
        length=float(res),
        resolution=res,
        sdf_trunc=1.0,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.NoColor,
    )
    # open3d reads voxel (i, j, k) at flat index i*res^2 + j*res + k with its centre at i + 0.5
    tsdf = (0.5 - padded).reshape(-1)
    volume.inject_volume_tsdf(o3d.utility.Vector2dVector(np.stack([tsdf, np.ones_like(tsdf)], 1)))
    mesh = volume.extract_triangle_mesh()
    vertices = np.asarray(mesh.vertices) - 0.5 - 1 + low  # grid index space
    faces = np.asarray(mesh.triangles)
    if len(faces) == 0:
        return None
    bounds = np.asarray(scene_bounds, dtype=np.float64)
    return bounds[0] + vertices * grid_pitch(bounds, size[0]), faces


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """ASCII OBJ in metres: v, vn (area-weighted vertex normals) and 1-based f v//vn lines."""
    normals = np.zeros_like(vertices)
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices))
        f.write("".join(f"vn {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in normals))
        f.write("".join(f"f {a}//{a} {b}//{b} {c}//{c}\n" for a, b, c in faces + 1))


# --------------------------------------------------------------------------------------------------
# VOOL: best points and clouds


def vool_points(logits: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """(xyz, logits, uint8 colours) of the grid points within VOOL_MARGIN of the best logit."""
    kept = np.flatnonzero(logits > logits.max() - VOOL_MARGIN)
    values = np.exp(logits[kept].astype(np.float64))
    span = values.max() - values.min()
    normalised = (values - values.min()) / span if span > 0 else np.ones_like(values)
    colors = (figures.jet(normalised) * 255).astype(np.uint8)
    return grid[kept], logits[kept], colors


def write_ply(path: Path, xyz: np.ndarray, colors: np.ndarray) -> None:
    """ASCII PLY of coloured points (x y z float, red green blue uchar), metres."""
    header = (
        "ply\nformat ascii 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(header)
        f.write(
            "".join(
                f"{x:.5f} {y:.5f} {z:.5f} {r} {g} {b}\n"
                for (x, y, z), (r, g, b) in zip(xyz.tolist(), colors.tolist())
            )
        )


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points and uint8 colours of a PLY (any format open3d reads)."""
    cloud = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points)
    colors = (np.asarray(cloud.colors) * 255).round().astype(np.uint8)
    if len(colors) != len(xyz):
        colors = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, colors


def write_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
