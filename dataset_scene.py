"""A scene file of a dataset folder (the original HDF5 layout, docs/data.md#the-scene-file-layout)
as visualize's input: the frame, the network inputs read exactly as the datasets read them for a
checkpoint's args.pkl, and the ground truth beside which the prediction is drawn.

The relevancy is the one STORED in the file (CLIP, the oracle or the released maps, whatever made
it), under the block of args.pkl's `saliency_config`, so no CLIP weights are needed. Inputs come
from the dataset's own sample in evaluation mode (dataset.py, `return_vis`: every class the
evaluation scores, every stored description, no padding), with every in-bounds input point kept
(`num_input_pts` = -1); inference.py then draws `num_input_pts` of them per chunk as it does for a
scene pickle. So the mean-row quirk, x50, upsampling, patch masks and vmin are those of training.

Ground truth on the query grid (OVSSC): each grid point takes the label of its nearest in-bounds
ground-truth point (full_xyz_pts / full_objid_pts, through the dataset's per-class labels), -1
where that point belongs to none of the classes; the prediction's mask (camera frustum, not
observed free space) is applied to both. A ground-truth voxel is hidden when the camera cannot see
it: behind the observed depth surface by more than one grid pitch, or at a pixel without depth.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

import dataset
import geometry
import inputs
from frames import Frame
from scene_file import SceneFile, relevancy_rgb_key, relevancy_sentence
from utils import InputError

SUFFIXES = (".hdf5", ".h5")
EVAL_SPLIT = "unseen_instances"  # the per-split settings of a plain test split


def is_scene_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


@dataclass
class DatasetScene:
    """One scene file read for one task: the frame, the dataset's sample and the names it holds."""

    frame: Frame  # classes (OVSSC) or descriptions (VOOL) are the sample's rows
    sample: dict  # the dataset's evaluation sample (numpy arrays and lists)
    text: dict[str, np.ndarray]  # class -> stored CLIP text feature (OVSSC semantic_aware)


def dataset_config(args: argparse.Namespace) -> dataset.DatasetConfig:
    """The checkpoint's dataset settings for a test split, keeping every in-bounds input point."""
    config = dataset.split_config(dataset.DatasetConfig.from_args(args), EVAL_SPLIT)
    return replace(config, num_input_pts=-1)


def check_scene_file(path: Path, task: str, config: dataset.DatasetConfig) -> None:
    """One line naming what the file lacks (and the command that makes it)."""
    with SceneFile(path) as scene:
        block = f"{relevancy_rgb_key(config.domain_randomized_rgb)}|{config.saliency_config}"
        if not scene.has_relevancy(config.saliency_config):
            raise InputError(
                f"{path} has no stored relevancy for {block} (the checkpoint's saliency_config); "
                f"run `python generate_relevancy.py dataset {path.parent}` (--source oracle needs "
                "no CLIP weights)"
            )
        if not scene.has_ground_truth() or not scene.has("full_xyz_pts"):
            raise InputError(
                f"{path} has no ground truth (full_xyz_pts / full_objid_pts); scene files of "
                "`python generate_scenes.py dataset` and the released ones carry it"
            )
        if task == "vool" and not scene.has_descriptions():
            raise InputError(f"{path} has no descriptions (data/descriptions)")


def read_dataset_scene(path: Path, task: str, args: argparse.Namespace) -> DatasetScene:
    """The frame and the evaluation sample of `path` for the checkpoint's args."""
    config = dataset_config(args)
    check_scene_file(path, task, config)
    data = dataset.DATASET_CLASSES[task]([path], config)
    with SceneFile(path) as scene:
        view = data.read_view(scene)
        sample = data.make_sample(scene, view)
    if task == "ovssc":
        classes, descriptions = list(sample["patch_labels"]), []
        text = dict(zip(classes, np.asarray(sample["semantic_class_features"], np.float32)))
    else:
        classes, text = [], {}
        descriptions = list(
            zip(
                sample["target_obj_name"],
                sample["spatial_relation_name"],
                sample["reference_obj_name"],
                strict=True,
            )
        )
        if not descriptions:
            raise InputError(f"{path} has no descriptions (data/descriptions is empty)")
    rgb = np.clip(np.round(view.rgb), 0, 255).astype(np.uint8)
    depth = np.asarray(view.depth, np.float32)
    frame = Frame(rgb, depth, view.cam_intr, view.cam_pose, classes, descriptions)
    return DatasetScene(frame, sample, text)


def input_rgb(sample: dict, frame: Frame, task: str, scene_bounds) -> np.ndarray:
    """(N, 3) colours in [0, 1] of the sample's input points: the sample's own rgb rows where it
    has them, else the frame's pixels the OVSSC dataset keeps (depth > 0, in bounds, in order)."""
    if task == "vool":
        return np.asarray(sample["input_rgb_pts"][0], np.float32)
    points, has_depth = inputs.input_points(frame.depth, frame.cam_intr, frame.cam_extr)
    keep = has_depth & geometry.in_bounds(points, scene_bounds)
    return inputs.rgb_points(frame.rgb)[keep]


def input_features(sample: dict, task: str, approach: str) -> dict[str, np.ndarray]:
    """label -> (N, F) relevancy features of the sample's input points, keyed as inference.py
    looks them up: classes (OVSSC); target and reference names and the stored sentence (VOOL)."""
    if approach == "semantic_aware":
        return {}
    if task == "ovssc":
        rows = zip(sample["patch_labels"], sample["input_feature_pts"])
    else:
        names = zip(
            sample["target_obj_name"], sample["spatial_relation_name"], sample["reference_obj_name"]
        )
        rows = []
        for k, (target, relation, reference) in enumerate(names):
            rows += [
                (target, sample["input_target_saliency_pts"][k]),
                (reference, sample["input_reference_saliency_pts"][k]),
                (
                    relevancy_sentence(target, relation, reference),
                    sample["input_description_saliency_pts"][k],
                ),
            ]
    return {label: np.asarray(value, np.float32) for label, value in rows}


# --------------------------------------------------------------------------------------------------
# ground truth beside the prediction


def grid_truth(sample: dict, grid: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(G, G, G) int16 class index (the sample's class order) of each query point's nearest
    in-bounds ground-truth point, -1 where that point is none of the classes or outside `keep`.

    grid (G^3, 3) query points; keep (G, G, G) bool, the prediction's mask."""
    xyz = np.asarray(sample["output_xyz_pts"][0])  # (N, 3): every row holds the same points
    occupied = np.asarray(sample["output_label_pts"]) > 0  # (P, N)
    label_of_point = np.where(occupied.any(0), occupied.argmax(0), -1).astype(np.int16)
    inside = keep.reshape(-1)
    labels = np.full(len(grid), -1, np.int16)
    _, nearest = cKDTree(xyz).query(grid[inside], workers=-1)
    labels[inside] = label_of_point[nearest]
    return labels.reshape(keep.shape)


def hidden_voxels(labels: np.ndarray, grid: np.ndarray, frame: Frame, pitch: float) -> np.ndarray:
    """(G, G, G) bool: labelled voxels the camera does not see, i.e. more than `pitch` behind the
    observed depth at their pixel, or at a pixel without depth (labels must lie in the frustum)."""
    occupied = np.flatnonzero(labels.reshape(-1) >= 0)
    u, v, z = geometry.project(grid[occupied], frame.cam_intr, frame.cam_extr)
    height, width = frame.shape
    cols = np.clip(np.floor(np.nan_to_num(u)).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(np.nan_to_num(v)).astype(np.int64), 0, height - 1)
    surface = frame.depth[rows, cols]
    seen = (surface > 0) & (z <= surface + pitch)
    hidden = np.zeros(labels.size, bool)
    hidden[occupied[~seen]] = True
    return hidden.reshape(labels.shape)


def description_truth(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (K, 3) float32, description index (K,) int16): each description's target-object
    ground-truth points inside the bounds."""
    labels = np.asarray(sample["output_label_pts"]) > 0  # (D, N)
    xyz = np.asarray(sample["output_xyz_pts"])  # (D, N, 3)
    rows = [np.flatnonzero(row) for row in labels]
    points = np.concatenate([xyz[d][index] for d, index in enumerate(rows)]).astype(np.float32)
    index = np.concatenate([np.full(len(r), d, np.int16) for d, r in enumerate(rows)])
    return points.reshape(-1, 3), index
