"""PROVISIONAL stand-in for branch `eval`'s metrics.py (same API), so that training runs and is tested
before that branch lands. At the merge, take `eval`'s file (git checkout --theirs metrics.py).

Spec: train-eval.md 2 (binary one-vs-rest metrics per row, point and voxel granularities).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

METRIC_NAMES = ("precision", "recall", "false_negative", "false_positive", "iou")


def binary_metrics(pred: torch.Tensor, label: torch.Tensor, ignore: torch.Tensor) -> dict:
    """pred, label, ignore bool [R, N] -> {name: float64 [R]} over the non-ignored entries."""
    keep = ~ignore
    p, lab = pred & keep, label & keep
    tp = (p & lab).sum(-1).double()
    pp, lp = p.sum(-1).double(), lab.sum(-1).double()
    union = (p | lab).sum(-1).double()
    m = keep.sum(-1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=pred.device)
    div = lambda a, b: torch.where(b > 0, a / b.clamp(min=1), nan)  # noqa: E731
    return {
        "precision": div(tp, pp),
        "recall": div(tp, lp),
        "false_negative": div((lab & ~p).sum(-1).double(), m),
        "false_positive": div((p & ~lab).sum(-1).double(), m),
        "iou": div(tp, union),
    }


def voxelize(xyz, pred, label, ignore, scene_bounds, grid_size):
    """Per row, max-reduce points into grid_size^3 voxels (VirtualGrid indexing, spec 2.4).

    xyz [R, N, 3]; pred, label, ignore bool [R, N] -> voxel pred, label, ignore bool [R, G^3].
    """
    bounds = torch.as_tensor(scene_bounds, dtype=xyz.dtype, device=xyz.device)
    lower, upper = bounds[0], bounds[1]
    idx = ((xyz - lower) * (grid_size - 1) / (upper - lower)).long().clamp(0, grid_size - 1)
    flat = (idx[..., 0] * grid_size + idx[..., 1]) * grid_size + idx[..., 2]  # [R, N]
    rows, cells = xyz.shape[0], grid_size**3
    out = []
    for values in (pred, label.float() * 2 - 1, ignore):
        grid = torch.zeros(rows, cells, device=xyz.device)
        grid.scatter_reduce_(1, flat, values.float(), reduce="amax", include_self=True)
        out.append(grid)
    occupied = torch.zeros(rows, cells, dtype=torch.bool, device=xyz.device)
    occupied.scatter_(1, flat, True)
    return out[0] > 0, out[1] > 0, (out[2] > 0) | ~occupied


def detailed_stats(
    logits,
    label,
    ignore,
    xyz,
    cutoffs,
    scene_bounds,
    row_columns,
    voxel_sizes=(32,),
    padded=None,
):
    """One row per (scene, row) per cutoff with point_* and voxel<G>^3_* columns (spec 2.5)."""
    b, p, n = logits.shape
    if xyz.dim() == 3:
        xyz = xyz[:, None].expand(b, p, n, 3)
    flat = lambda t: t.reshape(b * p, *t.shape[2:])  # noqa: E731
    frames = []
    for cutoff in cutoffs:
        pred = flat(logits > cutoff)
        cols = {k: [v for per_b in vals for v in per_b] for k, vals in row_columns.items()}
        for name, value in binary_metrics(pred, flat(label), flat(ignore)).items():
            cols[f"point_{name}"] = value.cpu().numpy()
        for g in voxel_sizes:
            vox = voxelize(flat(xyz), pred, flat(label), flat(ignore), scene_bounds, g)
            for name, value in binary_metrics(*vox).items():
                cols[f"voxel{g}x{g}x{g}_{name}"] = value.cpu().numpy()
        frame = pd.DataFrame(cols)
        if padded is not None:
            metric_cols = [c for c in frame.columns if c not in row_columns]
            frame.loc[np.asarray(padded).reshape(-1), metric_cols] = np.nan
        frame["cutoff"] = float(cutoff)
        frames.append(frame)
    return pd.concat(frames)


def epoch_summary(frame, fix_rate_argmin=False):
    rows = []
    for split, part in frame.groupby("split", sort=False):
        means = part.groupby("cutoff").mean(numeric_only=True)
        for column in means.columns:
            if not any(k in column for k in METRIC_NAMES):
                continue
            series = means[column]
            if series.isna().all():
                continue
            rate = "false_" in column
            cutoff = series.idxmin() if (rate and fix_rate_argmin) else series.idxmax()
            rows.append((split, column, 100 * float(series[cutoff]), float(cutoff)))
    return rows


def format_epoch_summary(rows):
    lines, last = [], None
    for split, column, score, cutoff in rows:
        if split != last:
            lines.append(f"  {split}")
            last = split
        lines.append(f"    {column.upper():<30}: {score:6.2f}{cutoff:>10.3f}")
    return "\n".join(lines)
