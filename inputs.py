"""Stored arrays to network inputs: plain functions, arrays in and arrays out.

What the networks receive: docs/method.md#from-stored-maps-to-point-features; the two datasets'
samples: docs/data.md#what-a-sample-holds. The datasets call these functions, and so do the scripts
that prepare a single scene pickle or an RGB-D frame without a Dataset (visualize.py, the web page),
so every input is made one way. Nothing here reads a file: scene_file.py does that.

Quirk kept for fidelity, with the flag that fixes it: VOOL patch masks compare the x50-scaled
relevancy with the cutoff (bug B5); `fix_scale=True` in `vool_relevancy` (the dataset's
`fix_vool_patch_mask_scale`) compares the unscaled map, as OVSSC does. The mean-row trap (which mean
map is subtracted) is a matter of reading and lives in scene_file.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import geometry
from utils import InputError
from vocab import PAD

RELEVANCY_SCALE = 50.0  # stored relevancy is about +-0.02; the networks see it x50
PADDED_TARGET_ID = -2  # object id of a padded description: no point matches, the label is all 0
CLIP_TEXT_DIM = 512  # width of a CLIP ViT-B/32 text feature


# --------------------------------------------------------------------------------------------------
# relevancy maps


def upsample(maps: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """(P, h, w) stored maps -> (P, H, W), bilinear, align_corners False."""
    if len(maps) == 0:
        return np.zeros((0, *image_shape), np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None]
    return F.interpolate(tensor, size=tuple(image_shape), mode="bilinear", align_corners=False)[
        0
    ].numpy()


def subtract_mean(maps: np.ndarray, mean_map: np.ndarray | None) -> np.ndarray:
    """(P, h, w) - (h, w): the scene's "mean" map over its labels (subtract_mean_relevancy); None
    leaves the maps as they are. Which row is the mean is scene_file's business
    (docs/data.md#the-mean-row-trap).
    """
    return maps if mean_map is None else maps - mean_map


def apply_vmin(maps: np.ndarray, vmin: float | None) -> np.ndarray:
    """`saliency_vmin`: max(maps - vmin, 0), or the maps unchanged when None."""
    return maps if vmin is None else np.maximum(maps - vmin, 0)


def scale(maps: np.ndarray) -> np.ndarray:
    """x50, the scale of every relevancy feature the networks read."""
    return maps * RELEVANCY_SCALE


def patch_mask(maps: np.ndarray, cutoff: float, offset: bool = False) -> np.ndarray:
    """(maps > cutoff) as float32 {0, 1}, or {-1, 1} with `offset` (offset_patch_mask)."""
    mask = (maps > cutoff).astype(np.float32)
    return mask * 2 - 1 if offset else mask


def per_point(maps: np.ndarray) -> np.ndarray:
    """(P, H, W) -> (P, H*W, 1): one feature per pixel, row-major like `geometry.backproject`."""
    return maps.reshape(len(maps), maps.shape[1] * maps.shape[2], 1)


def vool_relevancy(
    maps: np.ndarray,
    mean_map: np.ndarray | None,
    image_shape: tuple[int, int],
    vmin: float | None = None,
    patch_masks: bool = False,
    cutoff: float = 0.004,
    fix_scale: bool = False,
) -> np.ndarray:
    """VOOL relevancy per pixel, (D, H*W, 1) float32.

    Exact order: subtract the mean map, optional vmin, bilinear upsample, flatten, x50. With
    `patch_masks` the result is instead the mask (map > cutoff) in {0, 1}; bug B5 kept: the x50 map
    is compared unless `fix_scale`.
    """
    unscaled = per_point(upsample(apply_vmin(subtract_mean(maps, mean_map), vmin), image_shape))
    scaled = scale(unscaled)
    if patch_masks:
        return patch_mask(unscaled if fix_scale else scaled, cutoff)
    return scaled.astype(np.float32)


def ovssc_relevancy_features(
    maps: np.ndarray,
    network_inputs: tuple[str, ...],
    vmin: float | None = None,
    cutoff: float = 0.004,
    offset: bool = False,
) -> np.ndarray:
    """OVSSC relevancy features per pixel, (P, H*W, F) float32.

    `maps` are already mean-subtracted and upsampled to the image, (P, H, W). F holds, in this
    order, the patch mask of the unscaled map (with "patch_masks") and (map - vmin)+ x 50 (with
    "saliency").
    """
    flat = per_point(maps)
    features = []
    if "patch_masks" in network_inputs:  # on the unscaled map, unlike VOOL
        features.append(patch_mask(flat, cutoff, offset))
    if "saliency" in network_inputs:
        features.append(scale(apply_vmin(flat, vmin)))
    if not features:
        raise InputError(f"no relevancy input among {network_inputs}; use saliency or patch_masks")
    return np.concatenate(features, axis=2).astype(np.float32)


def rgb_points(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours in 0..255 -> (H*W, 3) float32 in [0, 1] ("rgb")."""
    return (np.asarray(rgb).reshape(-1, 3) / 255.0).astype(np.float32)


def pad_rows(array: np.ndarray, count: int) -> np.ndarray:
    """Append `count` all-zero rows along axis 0 (padded classes and descriptions get zero maps)."""
    return np.concatenate([array, np.zeros((count, *array.shape[1:]), array.dtype)])


# --------------------------------------------------------------------------------------------------
# VOOL descriptions


def vool_relevancy_labels(
    target_names: list[str], reference_names: list[str], sentences: list[str]
) -> dict[str, list[str]]:
    """The relevancy maps each VOOL description reads (docs/data.md#what-a-sample-holds):
    its target's, its reference's and its whole sentence's, keyed as the sample's
    `input_<key>_saliency_pts`. In the synonyms split the names are already renamed while the
    sentence stays the original one (as in the released loader).
    """
    return dict(target=list(target_names), reference=list(reference_names), description=sentences)


def pad_descriptions(names: list[str], count: int) -> list[str]:
    """Names or relations of padded descriptions: "[pad]"."""
    return list(names) + [PAD] * count


def target_labels(objid: np.ndarray, target_ids: list[int], count: int = 0) -> np.ndarray:
    """(D + count, N) float32: 1 where a ground-truth point has the description's target id; `count`
    padded rows match nothing.
    """
    ids = np.array(list(target_ids) + [PADDED_TARGET_ID] * count)
    return (np.asarray(objid)[None] == ids[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# points


def input_points(
    depth: np.ndarray, cam_intr: np.ndarray, cam_pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World xyz of every pixel (H*W, 3), row-major, and (H*W,) bool: depth > 0.

    VOOL keeps zero-depth pixels, OVSSC drops them.
    """
    return geometry.backproject(depth, cam_intr, cam_pose), np.asarray(depth).reshape(-1) > 0


def filter_subsample(
    xyz: np.ndarray,
    sample_size: int,
    scene_bounds: np.ndarray,
    arrays: dict[str, np.ndarray],
    transform: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    always_replace: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The original's `transform_filter_subsample`: transform, keep in-bounds points, draw
    `sample_size` (`in_bounds_points`, then `subsample`)."""
    moved, keep = in_bounds_points(xyz, scene_bounds, transform)
    return subsample(moved, keep, sample_size, arrays, probabilities, always_replace)


def in_bounds_points(
    xyz: np.ndarray, scene_bounds: np.ndarray, transform: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The points after the optional transform (N, 3), and the indices of those inside the bounds;
    an InputError when none is."""
    if transform is not None:
        xyz = geometry.transform_points(xyz, transform)
    keep = np.flatnonzero(geometry.in_bounds(xyz, scene_bounds))
    if len(keep) == 0:
        raise InputError("no point lies inside the scene bounds")
    return xyz, keep


def subsample(
    xyz: np.ndarray,
    keep: np.ndarray,
    sample_size: int,
    arrays: dict[str, np.ndarray],
    probabilities: np.ndarray | None = None,
    always_replace: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw `sample_size` of the points `keep` indexes (xyz (N, 3), `in_bounds_points`' output;
    -1 keeps them all) -> (their xyz as float32, each array at them).

    Each array is indexed along its first axis whose length is the point count (axis 0, then axis
    1). Draws use numpy's global RNG, with the points' `probabilities` when given, without
    replacement unless asked, falling back to replacement when that fails.
    """
    if sample_size != -1:
        p = None
        if probabilities is not None:
            p = probabilities[keep] / probabilities[keep].sum()
        try:
            keep = keep[np.random.choice(len(keep), sample_size, p=p, replace=always_replace)]
        except ValueError:
            keep = keep[np.random.choice(len(keep), sample_size, p=p, replace=True)]
    out = {}
    for key, value in arrays.items():
        axis = 0 if value.shape[0] == len(xyz) else 1
        out[key] = np.take(value, keep, axis=axis)
    return xyz[keep].astype(np.float32), out


def balanced_probabilities(labels: np.ndarray) -> np.ndarray | None:
    """Per point: n/n_pos for positives, n/n_neg for negatives; None if one class is absent
    (docs/method.md#sampling-domain-randomisation-and-the-frustum-mask)."""
    n_pos = labels.sum()
    if n_pos == 0 or n_pos == len(labels):
        return None
    return np.where(labels > 0, len(labels) / n_pos, len(labels) / (len(labels) - n_pos))
