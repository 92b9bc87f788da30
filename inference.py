"""OVSSC and VOOL inference on one RGB-D frame over a dense query grid, and the files it writes;
`start_run`, `run_ovssc` and `run_vool` are visualize.py's two inference commands end to end.

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

import checkpoint as ckpt_io
import dataset_scene
import figures
import geometry
import inputs
import net
import options
import relevancy
import saliency
import scene_file
from frames import Frame, read_scene_pickle
from processes import resolve_device
from utils import InputError, atomic_path, remove_stale_temp_files

GRID_SIZE = 240  # query points per axis (original)
CHUNK = 2**20  # query points per network call (original)
EMPTY_LOGIT = -3.0  # a voxel is empty where every class logit is below this (sigmoid ~ 0.047)
VOOL_MARGIN = 0.15  # VOOL keeps points with logit > max logit - margin
SCENE_CLOUD_POINTS = 100_000  # points of scene_rgb.ply
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


# --------------------------------------------------------------------------------------------------
# one scene, end to end: visualize.py's ovssc-inference and vool-inference


def load_trained(checkpoint_path: Path, task: str, device: torch.device):
    """(network, args, approach) from a checkpoint and the args.pkl beside it."""
    if Path(checkpoint_path).is_dir():
        raise InputError(
            f"checkpoint {checkpoint_path} is a folder: give the .pth file in it (e.g. "
            f"{Path(checkpoint_path) / 'latest.pth'}), with args.pkl beside it"
        )
    args = options.load_args(Path(checkpoint_path).parent / options.ARGS_FILE)
    stored_task = getattr(args, "task", task)
    if stored_task != task:
        raise InputError(f"{checkpoint_path} is a {stored_task} checkpoint, not {task}")
    approach = getattr(args, "approach", "semantic_abstraction")
    network = net.build_network(task, approach, args)
    ckpt_io.load_network(network, checkpoint_path, map_location="cpu")
    return network.to(device).eval(), args, approach


def clip_text(extractor, labels: list[str]) -> np.ndarray:
    """(L, D) CLIP text features of the labels in the home prompt."""
    return extractor.text_features(labels, [relevancy.HOME_PROMPT]).float().cpu().numpy()


def scene_relevancy(frame, labels, approach, config, clip_options, device, seed, out_dir):
    """(maps (L, H, W) or None, text features (L, D)); writes relevancies.png when there are maps."""
    extractor = relevancy.build_extractor(*clip_options, device, 32)
    text = clip_text(extractor, labels)
    if approach == "semantic_aware":
        if text.shape[1] != inputs.CLIP_TEXT_DIM:
            raise InputError(
                f"the semantic_aware network compares points with {inputs.CLIP_TEXT_DIM}-d CLIP "
                f"text features, and this CLIP model gives {text.shape[1]}-d: use ViT-B/32 weights"
            )
        return None, text
    settings = saliency.saliency_config(config, frame.shape[0])
    maps, _ = extractor(frame.rgb, labels, [relevancy.HOME_PROMPT], settings, seed, progress=True)
    maps = maps.float().numpy()
    figure = (
        figures.relevancy_figure(  # the original's overlay: jet of clip(rel / 0.01), alpha 0.7(1-g)
            frame.rgb, relevancy.mean_over_labels(torch.from_numpy(maps)).numpy(), labels, 0.0, 0.01
        )
    )
    with atomic_path(out_dir / "relevancies.png") as tmp:
        figure.save(tmp, format="PNG")
    return maps, text


@dataclass
class SceneRun:
    """Everything both inference commands prepare before their own loop."""

    frame: Frame
    device: torch.device
    network: torch.nn.Module
    args: argparse.Namespace
    approach: str
    out_dir: Path
    inputs: SceneInputs
    grid: np.ndarray  # (G^3, 3) query points
    grid_size: int  # G
    rng: np.random.Generator
    truth: dict | None = None  # a dataset scene's evaluation sample (ground truth); None: pickle

    def chunk_bar(self, count: int) -> tqdm:
        """One progress bar over the chunks of `count` classes or descriptions."""
        return tqdm(total=count * num_chunks(self.grid_size), desc="inference", unit="chunk")

    def logits(self, make_batch: Callable[[np.ndarray], dict], bar: tqdm) -> np.ndarray:
        """(G^3,) logits of one class or description over the query grid."""
        return grid_logits(
            self.network, make_batch, self.grid, len(self.inputs.xyz), self.args.num_input_pts,
            self.rng, self.device, bar=bar,
        )  # fmt: skip


def start_run(scene_path, checkpoint_path, task, dump_path, device, saliency_config, clip_options,
              seed, grid_size) -> SceneRun:  # fmt: skip
    """Read the scene and the checkpoint, prepare inputs: from a scene pickle with relevancies
    computed by CLIP (relevancies.png), or from a dataset scene file with its stored relevancy and
    ground truth (dataset_scene.py)."""
    from_dataset = dataset_scene.is_scene_file(scene_path)
    frame = None if from_dataset else pickle_frame(scene_path, task)
    device = resolve_device(device)
    network, args, approach = load_trained(checkpoint_path, task, device)
    out_dir = Path(dump_path) / Path(scene_path).stem
    truth = None
    if from_dataset:
        frame, prepared, truth = dataset_inputs(Path(scene_path), task, args, approach,
                                                clip_options, device)  # fmt: skip
        claim_folder(out_dir, task)
    else:
        claim_folder(out_dir, task)
        labels = relevancy_labels(frame, approach)
        maps, text = scene_relevancy(
            frame, labels, approach, saliency_config, clip_options, device, seed, out_dir
        )
        prepared = prepare_inputs(frame, maps, labels, text, args, task)
    grid = query_grid(args.scene_bounds, grid_size)
    rng = np.random.default_rng(seed)
    return SceneRun(
        frame, device, network, args, approach, out_dir, prepared, grid, grid_size, rng, truth
    )


# What an inference command and the visualize command after it write into a scene's folder, which
# OVSSC and VOOL share: OVSSC <class>.obj and these names; VOOL <description>.ply with its .mp4 and
# .png, scene_rgb.ply and these names. A rerun removes the earlier run's, so the folder holds only
# its own outputs (and the other task's).
OVSSC_OUTPUTS = {"completion.npz", "completion.mp4", "completion.png", "completion_vs_gt.png"}
VOOL_OUTPUTS = {"localization.npz", "localization_vs_gt.png"}
SHARED_OUTPUTS = {"relevancies.png"}  # written by both, this run's replaces the earlier


def earlier_outputs(out_dir: Path, task: str) -> list[Path]:
    """The files an earlier run of `task` left in out_dir."""
    files = [path for path in out_dir.iterdir() if path.is_file()]
    if task == "ovssc":
        names, cloud = OVSSC_OUTPUTS | SHARED_OUTPUTS, ".obj"
    else:
        names, cloud = VOOL_OUTPUTS | SHARED_OUTPUTS, ".ply"
    clouds = {path.stem for path in files if path.suffix == cloud}
    return sorted(
        path
        for path in files
        if path.suffix == cloud
        or path.name in names
        or (task == "vool" and path.suffix in (".mp4", ".png") and path.stem in clouds)
    )


def claim_folder(out_dir: Path, task: str) -> None:
    """Make the scene's output folder; remove the temporary files of killed writers and what an
    earlier run of the same command left there, in one line each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temp_files(out_dir):
        print(f"removed {stale.name}, left by an interrupted run", flush=True)
    earlier = earlier_outputs(out_dir, task)
    for path in earlier:
        path.unlink()
    if earlier:
        shown = ", ".join(path.name for path in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        print(f"removed an earlier {task} run's {len(earlier)} files from {out_dir} ({shown})")


def pickle_frame(scene_path, task: str) -> Frame:
    """The frame of a scene pickle, with the rows the task needs."""
    frame = read_scene_pickle(scene_path)
    if task == "ovssc" and not frame.classes:
        raise InputError(f"{scene_path} has no ovssc_obj_classes")
    if task == "vool" and not frame.descriptions:
        raise InputError(f"{scene_path} has no descriptions")
    return frame


def dataset_inputs(scene_path: Path, task, args, approach, clip_options, device):
    """(frame, SceneInputs, the dataset's evaluation sample) of a dataset scene file; CLIP is
    loaded only for the text features of semantic_aware VOOL (the OVSSC ones are stored)."""
    scene = dataset_scene.read_dataset_scene(scene_path, task, args)
    frame, sample = scene.frame, scene.sample
    text = scene.text
    if task == "vool" and approach == "semantic_aware":
        labels = relevancy_labels(frame, approach)
        extractor = relevancy.build_extractor(*clip_options, device, 32)
        text = dict(zip(labels, clip_text(extractor, labels)))
    prepared = SceneInputs(
        np.asarray(sample["input_xyz_pts"], np.float32),
        dataset_scene.input_rgb(sample, frame, task, args.scene_bounds),
        dataset_scene.input_features(sample, task, approach),
        text,
    )
    return frame, prepared, sample


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def run_ovssc(run: SceneRun) -> tuple[list[str], list[str]]:
    """Complete every class: <class>.obj per non-empty class and completion.npz in run.out_dir.
    Returns (stems of the meshes written, classes left empty)."""
    classes, shape = run.frame.classes, (run.grid_size,) * 3
    bar = run.chunk_bar(len(classes))
    logits = np.stack(
        [
            run.logits(lambda index, c=c: ovssc_batch(run.approach, run.inputs, c, index), bar)
            for c in classes
        ]
    ).reshape((len(classes), *shape))
    bar.close()
    keep = observed_mask(run.frame, run.args.scene_bounds, run.grid_size, run.grid)
    labels = ovssc_labels(logits, keep)
    taken: set[str] = set()
    stems = [safe_name(name, taken) for name in classes]
    written, empty = [], []
    for k in tqdm(range(len(classes)), desc="meshes", unit="class"):
        mesh = volume_mesh(labels == k, run.args.scene_bounds)
        if mesh is None:
            empty.append(classes[k])
            continue
        write_obj(run.out_dir / f"{stems[k]}.obj", *mesh)
        written.append(stems[k])
    truth = {} if run.truth is None else ovssc_truth(run, keep)
    write_completion_npz(run, logits, labels, stems, truth)
    return written, empty


def ovssc_truth(run: SceneRun, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The npz keys of a dataset scene's ground truth on the query grid (dataset_scene.py):
    gt_labels (G, G, G) int16 class index or -1, gt_hidden (G, G, G) bool, and the camera pose."""
    gt_labels = clear_border(dataset_scene.grid_truth(run.truth, run.grid, keep))
    pitch = float(grid_pitch(run.args.scene_bounds, run.grid_size).max())
    hidden = dataset_scene.hidden_voxels(gt_labels, run.grid, run.frame, pitch)
    return dict(gt_labels=gt_labels, gt_hidden=hidden, cam_pose=run.frame.cam_extr)


def write_completion_npz(run: SceneRun, logits: np.ndarray, labels: np.ndarray, stems,
                         truth: dict[str, np.ndarray]) -> None:  # fmt: skip
    """completion.npz: every labelled grid point with its class and that class's probability, and
    the `truth` arrays (dataset scenes)."""
    occupied = np.flatnonzero(labels.reshape(-1) >= 0)
    label_of = labels.reshape(-1)[occupied]
    logit_of = logits.reshape(len(stems), -1)[label_of, occupied]
    write_npz(
        run.out_dir / "completion.npz",
        classes=np.array(run.frame.classes),
        file_stems=np.array(stems),
        xyz=run.grid[occupied],
        label=label_of.astype(np.int16),
        probability=sigmoid(logit_of),
        scene_bounds=np.asarray(run.args.scene_bounds),
        grid_size=run.grid_size,
        **truth,
    )


def run_vool(run: SceneRun) -> list[np.ndarray]:
    """Localise every description: <description>.ply, scene_rgb.ply and localization.npz in
    run.out_dir. Returns each description's (G^3,) logits over the query grid."""
    descriptions = run.frame.descriptions
    grid_logits_of = []
    bar = run.chunk_bar(len(descriptions))
    taken: set[str] = {"scene_rgb"}
    npz = {"descriptions": [], "file_stems": [], "index": [], "xyz": [], "logit": []}
    for k, description in enumerate(descriptions):
        logits = run.logits(
            lambda index, d=description: vool_batch(run.approach, run.inputs, d, index), bar
        )
        grid_logits_of.append(logits)
        xyz, kept_logits, colors = vool_points(logits, run.grid)
        name = description_name(*description)
        stem = safe_name(name, taken)
        write_ply(run.out_dir / f"{stem}.ply", xyz, colors)
        npz["descriptions"].append(name)
        npz["file_stems"].append(stem)
        npz["index"].append(np.full(len(xyz), k, np.int16))
        npz["xyz"].append(xyz)
        npz["logit"].append(kept_logits)
    bar.close()
    write_scene_cloud(run)  # draws from run.rng after every description, as before
    write_localization_npz(run, npz)
    return grid_logits_of


def write_scene_cloud(run: SceneRun) -> None:
    """scene_rgb.ply: up to SCENE_CLOUD_POINTS input points (random, without replacement)."""
    scene_xyz, scene_rgb = run.inputs.xyz, (run.inputs.rgb * 255).round().astype(np.uint8)
    if len(scene_xyz) > SCENE_CLOUD_POINTS:
        pick = run.rng.choice(len(scene_xyz), SCENE_CLOUD_POINTS, replace=False)
        scene_xyz, scene_rgb = scene_xyz[pick], scene_rgb[pick]
    write_ply(run.out_dir / "scene_rgb.ply", scene_xyz, scene_rgb)


def vool_truth(run: SceneRun) -> dict[str, np.ndarray]:
    """The npz keys of a dataset scene's ground truth: each description's target-object points
    (gt_xyz, gt_description_index) and the camera pose; none for a pickle."""
    if run.truth is None:
        return {}
    xyz, index = dataset_scene.description_truth(run.truth)
    return dict(gt_xyz=xyz, gt_description_index=index, cam_pose=run.frame.cam_extr)


def write_localization_npz(run: SceneRun, parts: dict[str, list]) -> None:
    """localization.npz from the per-description lists of run_vool, with vool_truth's keys."""
    logit = np.concatenate(parts["logit"])
    write_npz(
        run.out_dir / "localization.npz",
        descriptions=np.array(parts["descriptions"]),
        file_stems=np.array(parts["file_stems"]),
        description_index=np.concatenate(parts["index"]),
        xyz=np.concatenate(parts["xyz"]),
        logit=logit,
        probability=sigmoid(logit),
        scene_bounds=np.asarray(run.args.scene_bounds),
        grid_size=run.grid_size,
        **vool_truth(run),
    )
