"""Two baselines that learn nothing, scored by eval.py like a trained network (`eval.py --baseline`).

Each is a pure function of a collated evaluation batch -> scores [B, R, N] (one per row, i.e. class
or description, and query point), with the cutoffs its scores are thresholded at:
- `all_in_frustum`: every query point inside the camera frustum is positive (+1 inside, -1 outside),
  cutoff 0;
- `lifted_relevancy`: the visible answer with no completion of hidden parts. A query point takes the
  relevancy (x50, mean-subtracted: the last channel of OVSSC's `input_feature_pts`, VOOL's
  description-sentence `input_description_saliency_pts`) of the nearest input point within one voxel
  of a 32^3 grid over scene_bounds (max extent / 32), else -inf. Its cutoffs sweep the x50
  relevancy scale from -1 to 2 in steps of 0.05 (stored relevancy is about +-0.02, so about +-1 at
  x50; oracle masks are 1.0 inside), so that summarize.py's best cutoff gives it its best case.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

import tasks
from utils import InputError

LIFT_GRID = 32  # the lifting radius is one voxel of a 32^3 grid over the scene bounds
RELEVANCY_KEYS = {"ovssc": "input_feature_pts", "vool": "input_description_saliency_pts"}


def all_in_frustum(batch: dict, task: str, scene_bounds) -> torch.Tensor:
    """[B, R, N]: +1 where the query point lies inside the camera frustum, -1 elsewhere."""
    label = batch["output_label_pts"]  # [B, R, N]
    outside = tasks.per_row(batch["out_of_frustum_pts_mask"], label.shape)
    return torch.where(outside, -1.0, 1.0)


def lift_radius(scene_bounds) -> float:
    """One voxel of the LIFT_GRID^3 grid: the scene's largest extent / LIFT_GRID (metres)."""
    bounds = np.asarray(scene_bounds, dtype=float)  # [[x0, y0, z0], [x1, y1, z1]]
    return float(np.max(bounds[1] - bounds[0]) / LIFT_GRID)


def lift(relevancy: np.ndarray, input_xyz: np.ndarray, query: np.ndarray, radius: float):
    """One scene: relevancy [R, n] at input_xyz [n, 3] -> scores [R, N] at query [N, 3] or [R, N, 3]
    (the relevancy of the nearest input point within `radius`, else -inf)."""
    shared = query.ndim == 2 or bool((query == query[:1]).all())
    points = query if query.ndim == 2 else query[0] if shared else query.reshape(-1, 3)
    distance, nearest = cKDTree(input_xyz).query(points, distance_upper_bound=radius)
    found = np.isfinite(distance)  # [N] or [R * N]; a miss has index n (out of range)
    rows = len(relevancy)
    if shared:
        scores = np.full((rows, len(points)), -np.inf, np.float32)
        scores[:, found] = relevancy[:, nearest[found]]
        return scores
    row = np.repeat(np.arange(rows), query.shape[1])  # [R * N]
    scores = np.full(len(points), -np.inf, np.float32)
    scores[found] = relevancy[row[found], nearest[found]]
    return scores.reshape(rows, -1)


def lifted_relevancy(batch: dict, task: str, scene_bounds) -> torch.Tensor:
    """[B, R, N]: each query point's lifted visible relevancy (see `lift`)."""
    relevancy = batch[RELEVANCY_KEYS[task]][..., -1].cpu().numpy()  # [B, R, n]
    input_xyz = batch["input_xyz_pts"].cpu().numpy()  # [B, n, 3]
    query = batch["output_xyz_pts"].cpu().numpy()  # [B, N, 3] or [B, R, N, 3]
    radius = lift_radius(scene_bounds)
    scores = [lift(r, x, q, radius) for r, x, q in zip(relevancy, input_xyz, query)]
    return torch.from_numpy(np.stack(scores)).to(batch["output_xyz_pts"].device)


@dataclass(frozen=True)
class Baseline:
    name: str
    score: Callable[[dict, str, list], torch.Tensor]  # (batch, task, scene_bounds) -> [B, R, N]
    cutoffs: np.ndarray  # the scores' thresholds (a point is positive when score > cutoff)
    reads_relevancy: bool


BASELINES = {
    b.name: b
    for b in (
        Baseline("all_in_frustum", all_in_frustum, np.array([0.0]), reads_relevancy=False),
        # relevancy x 50 minus the mean map: -1 ... 2 in steps of 0.05 (see the module docstring)
        Baseline("lifted_relevancy", lifted_relevancy, np.arange(-1.0, 2.0, 0.05).round(2), True),
    )
}


def check_configuration(name: str, args: argparse.Namespace, args_file) -> None:
    """One InputError line when the run's data configuration gives the baseline nothing to read."""
    if BASELINES[name].reads_relevancy and "saliency" not in args.network_inputs:
        raise InputError(
            f"--baseline {name} reads relevancy, but {args_file} (approach {args.approach}) reads "
            f"{' '.join(args.network_inputs)}; pass the args.pkl of a run with saliency inputs"
        )
