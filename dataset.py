"""The OVSSC and VOOL datasets (SceneCompletionDataset, ObjectLocalizationDataset), their settings
(DatasetConfig, per approach and per split) and `make_datasets`.

What a sample holds: docs/data.md#what-a-sample-holds; its inputs:
docs/method.md#from-stored-maps-to-point-features; sampling and domain randomisation:
docs/method.md#sampling-domain-randomisation-and-the-frustum-mask; synonyms:
docs/data.md#synonyms-and-novel-classes. Scene files (docs/data.md#the-scene-file-layout, released
or from `generate_scenes.py`) are read through scene_file.SceneFile, the only module that names HDF5
keys; the inputs are prepared by inputs.py; geometry goes through geometry.py (OpenCV camera, stored
pose).

Quirks kept for fidelity, each with the flag that fixes it (DatasetConfig):
- the mean-row trap (docs/data.md#the-mean-row-trap): the "mean" map subtracted is row L of the
  global `saliencies` dataset, i.e. the rgb|ours mean, for every block; `fix_mean_relevancy=True`
  uses the block's own mean;
- VOOL patch masks compare the x50-scaled relevancy with the cutoff (bug B5);
  `fix_vool_patch_mask_scale=True` compares the unscaled map, as OVSSC does;
- OVSSC domain randomisation ignores dr_pos / dr_orn / dr_scale and uses 0.05 / 0.3 / 0.1;
  `fix_ovssc_dr_args=True` uses the configured values;
- `out_of_frustum_pts_mask` uses the untransformed camera pose on domain-randomised points (kept, no
  flag: it only affects training-time masks and is what trained models saw).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

import geometry
import inputs
from scene_file import (
    SENTENCE_KEYS,
    SceneFile,
    load_split_lists,
    relevancy_rgb_key,
    relevancy_sentence,
)
from utils import InputError
from vocab import APPROACHES, NETWORK_INPUTS, SYNONYMS

# OVSSC maps synonyms back to class names; "computer" keeps the later key, "laptop"
INVERSE_SYNONYMS = {synonym: name for name, synonym in SYNONYMS.items()}
NOT_CLASSES = {"empty", "out of bounds", "unlabelled"}
SPLITS = ("train", "unseen_instances", "unseen_instances_dr", "unseen_instances_synonyms")


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DatasetConfig:
    """Dataset settings, defaults as in the original; per-split: `split_config`."""

    scene_bounds: tuple = tuple(map(tuple, geometry.THOR_SCENE_BOUNDS))
    num_input_pts: int = 80_000
    num_output_pts: int = 400_000
    num_descs: int = 4  # VOOL descriptions per sample
    num_patches: int = 4  # OVSSC classes per sample
    network_inputs: tuple[str, ...] = ("saliency",)  # semantic_aware uses ("rgb",)
    saliency_config: str = "ours"  # or "chefer_et_al"
    subtract_mean_relevancy: bool = True  # fixed True in the original
    saliency_vmin: float | None = None
    patch_mask_cutoff: float = 0.004
    offset_patch_mask: bool = False  # OVSSC masks in {-1, 1} instead of {0, 1}
    balance_spatial_relations: bool = True
    balance_spatial_sampling: bool = True
    always_replace_subsample_pts: bool = False
    iou_loss_sampling_weights: bool = False  # balanced rows also give output_weight_pts (new)
    domain_randomization: bool = False
    dr_pos: float = 0.1
    dr_orn: float = 0.3
    dr_scale: float = 0.1
    xyz_pts_noise: float = 0.0
    tsdf_shape: tuple[int, int, int] = geometry.DEFAULT_VOXEL_SHAPE  # = voxel_shape
    domain_randomized_rgb: bool = False
    use_synonyms: bool = False
    return_vis: bool = False  # evaluation mode: all points, all labels, no padding
    fix_mean_relevancy: bool = False  # fix for the mean-row trap
    fix_vool_patch_mask_scale: bool = False  # fix for bug B5
    fix_ovssc_dr_args: bool = False  # fix: OVSSC uses dr_pos / dr_orn / dr_scale

    def __post_init__(self):
        unknown = set(self.network_inputs) - set(NETWORK_INPUTS)
        if unknown or not self.network_inputs:
            raise InputError(
                f"unknown network inputs {sorted(unknown)}; choose from {NETWORK_INPUTS}"
            )
        if self.saliency_config not in ("ours", "chefer_et_al"):
            raise InputError(
                f"unknown saliency_config '{self.saliency_config}'; use ours or chefer_et_al"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DatasetConfig:
        """The configuration of a training Namespace (options.py's flags, or a read-back args.pkl).

        Flags are matched by name; `voxel_shape` becomes `tsdf_shape`. The per-split fields
        (domain_randomized_rgb, use_synonyms, return_vis) are left to `split_config`.
        """
        per_split = {"domain_randomized_rgb", "use_synonyms", "return_vis"}
        values = {
            f.name: getattr(args, f.name)
            for f in fields(cls)
            if f.name not in per_split and getattr(args, f.name, None) is not None
        }
        if getattr(args, "voxel_shape", None) is not None:
            values["tsdf_shape"] = tuple(int(v) for v in args.voxel_shape)
        if "scene_bounds" in values:
            values["scene_bounds"] = tuple(tuple(float(v) for v in c) for c in args.scene_bounds)
        if "network_inputs" in values:
            values["network_inputs"] = tuple(values["network_inputs"])
        if getattr(args, "saliency_vmin", None) is None:
            values["saliency_vmin"] = None
        config = cls(**values)
        approach = getattr(args, "approach", None)
        return approach_config(config, approach) if approach else config


def approach_config(config: DatasetConfig, approach: str) -> DatasetConfig:
    """The inputs an approach reads: semantic_aware forces network_inputs = ("rgb",).

    semantic_abstraction and clip_spatial keep the configured inputs; which relevancy they read
    (target and reference, or the sentence) is chosen by the network from the same VOOL sample.
    """
    known = sorted({name for names in APPROACHES.values() for name in names})
    if approach not in known:
        raise InputError(f"unknown approach '{approach}'; choose from {known}")
    return replace(config, network_inputs=("rgb",)) if approach == "semantic_aware" else config


def split_config(config: DatasetConfig, split: str) -> DatasetConfig:
    """Per-split settings of the original's `utils.setup_experiment`
    (docs/data.md#what-a-sample-holds)."""
    return replace(
        config,
        domain_randomized_rgb=split == "unseen_instances_dr",
        use_synonyms=split == "unseen_instances_synonyms",
        domain_randomization=config.domain_randomization and split == "train",
        return_vis=config.return_vis or split != "train",
    )


def random_transform(pos: float, orn: float, scale: float, scene_dims: np.ndarray) -> np.ndarray:
    """4x4 M = T R S, drawn with the torch RNG: per-axis scale, static-xyz Euler, translation
    (docs/method.md#sampling-domain-randomisation-and-the-frustum-mask).
    """
    translation = torch.randn(3).numpy() * scene_dims * pos
    a, b, c = ((torch.rand(3) - 0.5) * orn).numpy().astype(np.float64)
    scales = 1 + scale * torch.rand(3).numpy()
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    transform = np.eye(4)
    transform[:3, :3] = rz @ ry @ rx @ np.diag(scales)
    transform[:3, 3] = translation
    return transform


# --------------------------------------------------------------------------------------------------
# datasets


@dataclass
class View:
    """What both tasks read from one scene file."""

    scene_id: str
    depth: np.ndarray  # (H, W) metres
    cam_intr: np.ndarray  # (3, 3)
    cam_pose: np.ndarray  # (4, 4) camera to world, as stored
    rgb: np.ndarray  # (H, W, 3) float32 0..255; the domain-randomised copy in that split
    classes: list[str]  # class name per object id
    full_xyz: np.ndarray  # (N, 3) ground-truth points
    full_objid: np.ndarray  # (N,) float32 object ids
    labels: list[str]  # the relevancy block's labels, "mean" last
    block: str  # the relevancy block's key
    mean_map: np.ndarray | None  # (h, w) map to subtract, None without subtract_mean_relevancy


class SceneDataset(torch.utils.data.Dataset):
    """The skeleton both task datasets share: read a view, choose rows (descriptions or classes),
    prepare inputs with inputs.py, then transform, subsample, TSDF, output sampling and masks.
    """

    float32 = False  # OVSSC returns every tensor as float32
    dr_constants: tuple[float, float, float] | None = None  # OVSSC's hard-coded dr_*

    def __init__(self, scene_paths: list[str | Path], config: DatasetConfig | None = None):
        self.scene_paths = sorted(Path(p) for p in scene_paths)
        self.config = config or DatasetConfig()
        self.bounds = np.asarray(self.config.scene_bounds, np.float64)
        self.rgb_key = relevancy_rgb_key(self.config.domain_randomized_rgb)

    def __len__(self) -> int:
        return len(self.scene_paths)

    def __getitem__(self, index: int) -> dict:
        with SceneFile(self.scene_paths[index]) as scene:
            view = self.read_view(scene)
            sample = self.make_sample(scene, view)
        return as_tensors(sample, float32=self.float32)

    def make_sample(self, scene: SceneFile, view: View) -> dict:
        raise NotImplementedError

    def has_rows(self, path: Path) -> bool:
        """Whether the scene holds a row (class or description) to score in this split, read
        cheaply; True where that needs the whole sample (OVSSC: a scene with no visible class is
        refused in one line when its sample is drawn)."""
        return True

    def read_view(self, scene: SceneFile) -> View:
        cfg = self.config
        depth = scene.depth()
        cam_intr, cam_pose = scene.camera()
        rgb = scene.rgb(cfg.domain_randomized_rgb)
        full_xyz, full_objid = scene.ground_truth()
        labels, block = scene.relevancy_block(self.rgb_key, cfg.saliency_config)
        mean_map = None
        if cfg.subtract_mean_relevancy:
            mean_map = scene.mean_relevancy(labels, block, cfg.fix_mean_relevancy)
        return View(
            scene.scene_id,
            depth,
            cam_intr,
            cam_pose,
            rgb,
            scene.object_classes(),
            full_xyz,
            full_objid,
            labels,
            block,
            mean_map,
        )

    def dr_transform(self) -> np.ndarray | None:
        """The domain-randomisation transform, drawn in training only.

        Quirk kept: OVSSC uses its hard-coded constants unless fix_ovssc_dr_args.
        """
        cfg = self.config
        if not cfg.domain_randomization:
            return None
        args = (cfg.dr_pos, cfg.dr_orn, cfg.dr_scale)
        if self.dr_constants is not None and not cfg.fix_ovssc_dr_args:
            args = self.dr_constants
        return random_transform(*args, self.bounds[1] - self.bounds[0])

    def sample_points(
        self,
        view: View,
        input_xyz: np.ndarray,
        input_arrays: dict[str, np.ndarray],
        output_labels: np.ndarray,
        carried: np.ndarray,
    ) -> tuple[dict, dict[str, np.ndarray], bool]:
        """Transform, input subsample, TSDF, output sampling, noise and frustum mask, in the
        original's order (docs/method.md#sampling-domain-randomisation-and-the-frustum-mask).

        Returns the sample's point keys, the subsampled input arrays, and whether the output rows
        were drawn one by one (balanced) or together (uniform).
        """
        transform = self.dr_transform()
        input_xyz, inputs_out = self.subsample_inputs(input_xyz, input_arrays, transform)
        tsdf = self.tsdf(view.depth, view.cam_intr, view.cam_pose, transform)
        full_labels = output_labels
        output_xyz, output_labels, out_of_bounds, per_row = self.sample_outputs(
            view.full_xyz, output_labels, carried, transform
        )
        input_xyz, output_xyz = self.add_noise(input_xyz, output_xyz)
        points = dict(
            input_xyz_pts=input_xyz,
            output_xyz_pts=output_xyz.astype(np.float32),
            output_label_pts=output_labels.astype(np.float32),
            out_of_bounds_pts=out_of_bounds,
            out_of_frustum_pts_mask=self.frustum_mask(
                output_xyz, view.cam_intr, view.cam_pose, view.depth.shape
            ),
            full_objid_pts=view.full_objid,
            tsdf_vol=tsdf,
        )
        if per_row and self.config.iou_loss_sampling_weights:
            inside = self.in_bounds(view.full_xyz, transform)
            points["output_weight_pts"] = inverse_sampling_rates(
                full_labels[:, inside], output_labels
            )
        return points, inputs_out, per_row

    def in_bounds(self, xyz: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
        """bool (N,): the points inside the scene bounds after the transform, as the output sampling
        keeps them (without the transform where it leaves none inside, as that sampling retries)."""
        moved = xyz if transform is None else geometry.transform_points(xyz, transform)
        inside = geometry.in_bounds(moved, self.bounds)
        return inside if inside.any() or transform is None else self.in_bounds(xyz, None)

    def vis_keys(self, view: View, keep: np.ndarray | None = None) -> dict:
        """The evaluation-only keys (return_vis), ground-truth points optionally filtered."""
        keep = slice(None) if keep is None else keep
        return dict(
            depth=view.depth,
            cam_intr=view.cam_intr,
            cam_pose=view.cam_pose,
            vis_gt_object_labels=view.classes,
            vis_gt_objid_pts=view.full_objid[keep],
            vis_gt_xyz_pts=view.full_xyz[keep],
        )

    def subsample_inputs(self, xyz, arrays, transform):
        """Uniform input subsample of num_input_pts; retried without the transform if that fails."""
        kwargs = dict(always_replace=self.config.always_replace_subsample_pts)
        try:
            return inputs.filter_subsample(
                xyz, self.config.num_input_pts, self.bounds, arrays, transform, **kwargs
            )
        except InputError:
            if transform is None:
                raise InputError("no input point lies inside the scene bounds") from None
            return inputs.filter_subsample(
                xyz, self.config.num_input_pts, self.bounds, arrays, None, **kwargs
            )

    def tsdf(self, depth, cam_intr, cam_pose, transform) -> torch.Tensor:
        """A fresh TSDF of tsdf_shape when "tsdf" is a network input, else ones(1)."""
        if "tsdf" not in self.config.network_inputs:
            return torch.ones(1)
        pose = cam_pose if transform is None else transform @ cam_pose
        values, _ = geometry.integrate_tsdf(
            depth, cam_intr, pose, self.bounds, self.config.tsdf_shape
        )
        return torch.from_numpy(values)

    def sample_outputs(self, xyz, labels, carried, transform):
        """Output points per row (R, n, 3), labels (R, n), a carried per-point array, and the branch.

        Balanced: each row is drawn on its own with positives and negatives given equal mass, and
        `carried` comes out (R, n). Uniform: one draw shared by all rows, `carried` (n,). In
        evaluation mode n is every in-bounds point.
        """
        size = -1 if self.config.return_vis else self.config.num_output_pts
        replace_ = self.config.always_replace_subsample_pts
        moved, keep = self.ground_truth_in_bounds(xyz, transform)  # once for every row
        if self.config.balance_spatial_sampling and len(labels) > 0:
            rows = [
                inputs.subsample(
                    moved,
                    keep,
                    size,
                    {"label": row, "carried": carried},
                    inputs.balanced_probabilities(row),
                    replace_,
                )
                for row in labels
            ]
            stacked = {k: np.stack([out[k] for _, out in rows]) for k in ("label", "carried")}
            return np.stack([x for x, _ in rows]), stacked["label"], stacked["carried"], True
        out_xyz, out = inputs.subsample(
            moved, keep, size, {"labels": labels, "carried": carried}, None, replace_
        )
        return np.repeat(out_xyz[None], len(labels), 0), out["labels"], out["carried"], False

    def ground_truth_in_bounds(self, xyz, transform) -> tuple[np.ndarray, np.ndarray]:
        """inputs.in_bounds_points of the ground-truth points, without the transform when it leaves
        none inside."""
        try:
            return inputs.in_bounds_points(xyz, self.bounds, transform)
        except InputError:
            if transform is None:
                raise InputError("no ground-truth point lies inside the scene bounds") from None
            return inputs.in_bounds_points(xyz, self.bounds, None)

    def add_noise(self, *arrays: np.ndarray) -> list[np.ndarray]:
        std = self.config.xyz_pts_noise
        if std == 0:
            return list(arrays)
        return [a + np.random.normal(0, std, a.shape).astype(np.float32) for a in arrays]

    def frustum_mask(self, output_xyz, cam_intr, cam_pose, image_shape) -> np.ndarray:
        """Out-of-frustum mask per output point (any leading shape), with the file's pose.

        Quirk kept: on domain-randomised points the untransformed pose is used.
        """
        flat = output_xyz.reshape(-1, 3)
        return ~geometry.in_frustum(flat, cam_intr, cam_pose, image_shape).reshape(
            output_xyz.shape[:-1]
        )


def inverse_sampling_rates(full_labels: np.ndarray, sampled_labels: np.ndarray) -> np.ndarray:
    """Per sampled point (R, n): how many of the row's points of its class it stands for, the
    class's count among the row's points (full_labels (R, N), the in-bounds points the sample was
    drawn from) over its count in the sample (--iou_loss_sampling_weights).

    Balanced sampling draws about every positive and a few of the negatives, so a false positive in
    the sample stands for several of the scene's.
    """
    full_positives = (full_labels > 0.5).sum(-1, keepdims=True)
    sampled = sampled_labels > 0.5
    positives = sampled.sum(-1, keepdims=True)
    negatives = sampled.shape[-1] - positives
    rate_positive = full_positives / np.maximum(positives, 1)
    rate_negative = (full_labels.shape[-1] - full_positives) / np.maximum(negatives, 1)
    return np.where(sampled, rate_positive, rate_negative).astype(np.float32)


NUMPY_KEYS = {
    "seg",
    "depth",
    "cam_intr",
    "cam_pose",
}  # returned as numpy arrays, as the original does


def as_tensors(sample: dict, float32: bool = False) -> dict:
    """numpy arrays -> torch tensors (optionally float32), except NUMPY_KEYS; other values
    unchanged.
    """
    out = {}
    for key, value in sample.items():
        if isinstance(value, np.ndarray) and key not in NUMPY_KEYS:
            value = torch.from_numpy(np.ascontiguousarray(value, np.float32 if float32 else None))
        out[key] = value
    return out


class ObjectLocalizationDataset(SceneDataset):
    """VOOL samples (docs/data.md#what-a-sample-holds): per description, target / reference /
    sentence relevancy and labels.
    """

    def split_rows(self, descs: dict[str, list]) -> tuple[list[int], list[str]]:
        """The descriptions this split keeps (the synonyms split: those whose sentence names a
        synonym, a substring match), and every description's sentence."""
        sentences = [
            relevancy_sentence(*triple)
            for triple in zip(*(descs[k] for k in SENTENCE_KEYS), strict=True)
        ]
        rows = list(range(len(sentences)))
        if self.config.use_synonyms:
            rows = [i for i in rows if any(key in sentences[i] for key in SYNONYMS)]
        return rows, sentences

    def has_rows(self, path: Path) -> bool:
        with SceneFile(path) as scene:
            return bool(self.split_rows(scene.descriptions())[0])

    def descriptions(self, scene: SceneFile) -> dict[str, list]:
        """Chosen (in the synonyms split: renamed) descriptions, with the sentence to look up."""
        descs = scene.descriptions()
        rows, sentences = self.split_rows(descs)
        if len(rows) > self.config.num_descs and not self.config.return_vis:
            weights = np.ones(len(rows))
            if self.config.balance_spatial_relations:  # each relation gets the same total weight
                relations = [descs["spatial_relation_name"][i] for i in rows]
                counts = Counter(relations)
                weights = np.array([1 / counts[relation] for relation in relations])
            chosen = np.random.choice(
                len(rows), self.config.num_descs, replace=False, p=weights / weights.sum()
            )
            rows = [rows[i] for i in sorted(chosen)]
        rename = SYNONYMS if self.config.use_synonyms else {}
        return dict(
            target_obj_name=[
                rename.get(descs["target_obj_name"][i], descs["target_obj_name"][i]) for i in rows
            ],
            reference_obj_name=[
                rename.get(descs["reference_obj_name"][i], descs["reference_obj_name"][i])
                for i in rows
            ],
            spatial_relation_name=[descs["spatial_relation_name"][i] for i in rows],
            target_obj_id=[descs["target_obj_id"][i] for i in rows],
            # the sentence lookup uses the original, non-synonym sentence (as the released loader)
            sentence=[sentences[i] for i in rows],
        )

    def relevancy(self, scene: SceneFile, view: View, names: list[str]) -> np.ndarray:
        """(D, H*W, 1) relevancy (or patch masks) of the named labels."""
        cfg = self.config
        indices = [scene.label_index(view.labels, name, view.block) for name in names]
        return inputs.vool_relevancy(
            scene.relevancy_maps(view.block, indices),
            view.mean_map,
            view.depth.shape,
            vmin=cfg.saliency_vmin,
            patch_masks="patch_masks" in cfg.network_inputs,
            cutoff=cfg.patch_mask_cutoff,
            fix_scale=cfg.fix_vool_patch_mask_scale,
        )

    def make_sample(self, scene: SceneFile, view: View) -> dict:
        cfg = self.config
        descs = self.descriptions(scene)
        lookups = inputs.vool_relevancy_labels(
            descs["target_obj_name"], descs["reference_obj_name"], descs["sentence"]
        )
        saliency = {key: self.relevancy(scene, view, names) for key, names in lookups.items()}
        num_real = len(descs["sentence"])
        num_descs = num_real if cfg.return_vis else cfg.num_descs
        pad = num_descs - num_real
        saliency = {key: inputs.pad_rows(value, pad) for key, value in saliency.items()}
        rgb = inputs.rgb_points(view.rgb)  # (H*W, 3) in [0, 1]
        input_rgb = np.repeat(rgb[None], num_descs, 0)  # (D, H*W, 3)
        output_labels = inputs.target_labels(view.full_objid, descs["target_obj_id"], pad)  # (D, N)
        input_xyz, _ = inputs.input_points(view.depth, view.cam_intr, view.cam_pose)  # zero kept
        no_oob = np.zeros(len(view.full_xyz), np.float32)  # VOOL never marks out-of-bounds points
        points, sampled, _ = self.sample_points(
            view, input_xyz, {"rgb": input_rgb, **saliency}, output_labels, no_oob
        )
        sample = dict(
            rgb=rgb.reshape(view.rgb.shape),
            input_target_saliency_pts=sampled["target"],
            input_reference_saliency_pts=sampled["reference"],
            input_description_saliency_pts=sampled["description"],
            input_rgb_pts=sampled["rgb"],
            **points,
            spatial_relation_name=inputs.pad_descriptions(descs["spatial_relation_name"], pad),
            target_obj_name=inputs.pad_descriptions(descs["target_obj_name"], pad),
            reference_obj_name=inputs.pad_descriptions(descs["reference_obj_name"], pad),
            scene_id=view.scene_id,
        )
        if cfg.return_vis:
            sample.update(self.vis_keys(view))
        return sample


class SceneCompletionDataset(SceneDataset):
    """OVSSC samples (docs/data.md#what-a-sample-holds): per class ("patch"), its relevancy (or
    rgb) and occupancy labels.
    """

    float32 = True
    dr_constants = (0.05, 0.3, 0.1)

    def patches(self, scene: SceneFile, view: View, seg: np.ndarray) -> list[int]:
        """Saliency indices of the classes to complete, in sorted label order."""
        seg_ids = set(np.unique(seg).astype(int).tolist()) - {-1}
        in_frustum = geometry.in_frustum(
            view.full_xyz, view.cam_intr, view.cam_pose, view.depth.shape
        )
        frustum_ids = set(np.unique(view.full_objid[in_frustum]).astype(int).tolist())
        classes = view.classes
        candidates = {
            classes[i] for i in frustum_ids & seg_ids if 0 <= i < len(classes)
        } - NOT_CLASSES
        if self.config.use_synonyms:
            candidates = {SYNONYMS.get(c, c) for c in candidates}
        indices = [i for i, label in enumerate(view.labels[:-1]) if label in candidates]
        missing = candidates - {view.labels[i] for i in indices}
        if missing:
            raise InputError(
                f"{scene.path}: classes {sorted(missing)} have no relevancy map in {view.block}"
            )
        if not indices:
            raise InputError(f"{scene.path}: no visible class is left to complete after filtering")
        if len(indices) > self.config.num_patches and not self.config.return_vis:
            indices = sorted(
                np.random.choice(indices, self.config.num_patches, replace=False).tolist()
            )
        return indices

    def make_sample(self, scene: SceneFile, view: View) -> dict:
        cfg = self.config
        seg = scene.segmentation()
        indices = self.patches(scene, view, seg)
        patch_labels = [view.labels[i] for i in indices]
        maps = inputs.upsample(
            inputs.subtract_mean(scene.relevancy_maps(view.block, indices), view.mean_map),
            scene.image_shape(),
        )  # (P, H, W)
        text_features = scene.label_features(view.block, indices)
        num_patches = len(indices) if cfg.return_vis else cfg.num_patches
        pad = num_patches - len(indices)
        names = [INVERSE_SYNONYMS.get(p, p) if cfg.use_synonyms else p for p in patch_labels]
        objmatches = [[i for i, c in enumerate(view.classes) if c == name] for name in names]
        if "rgb" in cfg.network_inputs:  # one patch of colours
            features = inputs.rgb_points(view.rgb)[None]
        else:
            features = inputs.pad_rows(
                inputs.ovssc_relevancy_features(
                    maps,
                    cfg.network_inputs,
                    cfg.saliency_vmin,
                    cfg.patch_mask_cutoff,
                    cfg.offset_patch_mask,
                ),
                pad,
            )
        text_features = np.concatenate(
            [text_features, np.random.randn(pad, text_features.shape[1])]
        ).astype(np.float32)
        full_objid = view.full_objid
        output_labels = np.stack(
            [np.isin(full_objid, ids) for ids in objmatches]
            + [np.zeros(len(full_objid), bool)] * pad
        )
        oob_id = view.classes.index("out of bounds") if "out of bounds" in view.classes else None
        out_of_bounds = (
            (full_objid == oob_id) if oob_id is not None else np.zeros(len(full_objid), bool)
        )
        input_xyz, valid = inputs.input_points(view.depth, view.cam_intr, view.cam_pose)
        # zero-depth pixels are dropped from the inputs (OVSSC only)
        points, sampled, per_row = self.sample_points(
            view,
            input_xyz[valid],
            {"features": features[:, valid]},
            output_labels.astype(np.float32),
            out_of_bounds.astype(np.float32),
        )
        if not per_row:  # uniform branch: out_of_bounds comes out (P, 1, n)
            points["out_of_bounds_pts"] = np.repeat(
                points["out_of_bounds_pts"][None, None], num_patches, 0
            )
        sample = dict(
            rgb=view.rgb,
            input_feature_pts=sampled["features"],
            semantic_class_features=text_features,
            **points,
            seg=seg,
            patch_labels=patch_labels + [""] * pad,
            scene_id=view.scene_id,
        )
        if cfg.return_vis:
            keep = full_objid != full_objid.max()  # drops the maximum id, assumed to be "empty"
            sample.update(
                self.vis_keys(view, keep),
                patch_objmatches=["|".join(map(str, ids)) for ids in objmatches],
                patch_saliencies=maps,
            )
        return sample


DATASET_CLASSES = {"ovssc": SceneCompletionDataset, "vool": ObjectLocalizationDataset}


def make_datasets(
    file_path: str | Path,
    task: str,
    config: DatasetConfig | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, SceneDataset]:
    """One dataset per requested split with a non-empty list, with the per-split settings
    (docs/data.md#what-a-sample-holds).
    """
    config = config or DatasetConfig()
    lists = load_split_lists(file_path, task)
    return {
        split: DATASET_CLASSES[task](
            [Path(file_path) / p for p in lists[split]], split_config(config, split)
        )
        for split in splits
        if lists.get(split)
    }


def drop_scenes_without_rows(
    datasets: dict[str, SceneDataset], splits: tuple[str, ...]
) -> dict[str, int]:
    """Leave out of these evaluation splits the scenes with no row to score there (`has_rows`: a
    VOOL scene with no description, or none naming a synonym in the synonyms split), and a split
    left with none; -> {split: scenes left out}. For training's evaluation, whose processes step in
    lockstep and must know their scenes before sharding them; eval.py skips such scenes as it meets
    them (evaluation.has_rows), with no pass over the files first. A training scene with no row
    trains on padding, as in the original."""
    left_out = {}
    for split in splits:
        data = datasets.get(split)
        if data is None:
            continue
        kept = [path for path in data.scene_paths if data.has_rows(path)]
        if len(kept) < len(data):
            left_out[split] = len(data) - len(kept)
            data.scene_paths = kept
        if not kept:
            del datasets[split]
    return left_out


def without_rows_note(task: str, without_rows: dict[str, int]) -> str | None:
    """The one line that says how many scenes were skipped for having no row to score ({split:
    count}); None when none was."""
    if not without_rows:
        return None
    count = sum(without_rows.values())
    noun = {"ovssc": "class", "vool": "description"}[task]
    splits = ", ".join(f"{split}: {n}" for split, n in without_rows.items())
    return f"note: skipped {count} scene{'s' * (count != 1)} with no {noun} to score ({splits})"
