"""Per-row binary metrics of Semantic Abstraction (docs/method.md#rows-and-metrics).

A row is one (scene, class) for OVSSC or one (scene, description) for VOOL, at one logit cutoff.
Every metric is binary and computed over the row's non-ignored entries:

    iou = TP / |pred or label|      precision = TP / |pred|      recall = TP / |label|
    false_negative = |label and not pred| / M      false_positive = |pred and not label| / M

with M the number of non-ignored entries; 0/0 gives NaN. The same metrics are taken on raw points
(`point_`) and on voxel grids over `scene_bounds` (`voxel{g}x{g}x{g}_`), where a voxel is
predicted / labelled when any of its points is, and ignored when any of its points is ignored or it
holds no point at all. Voxels are indexed exactly as `grid.VirtualGrid` (truncation of
(p - lower) * (g - 1) / (upper - lower), clamped to [0, g-1]).

`detailed_stats` evaluates all cutoffs at once without materialising one mask per cutoff:
`logit > c` for every cutoff c is decided by the number of cutoffs below the logit (one searchsorted),
so per-row counts at every cutoff are cumulative sums of one histogram. For voxels, "any point above c"
is "the voxel's max logit above c", so the voxel grid is built once from max logits.

Everything follows the inputs' device; nothing here names one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from grid import VirtualGrid

# column order of the stats frames (docs/method.md#rows-and-metrics)
METRIC_NAMES = ("precision", "recall", "false_negative", "false_positive", "iou")
# substrings that pick the epoch-summary columns (docs/method.md#the-epoch-loop)
SUMMARY_KEYS = ("iou", "precision", "recall", "false_negative", "false_positive")
RATE_METRICS = ("false_negative", "false_positive")
# bool entries handled per chunk of rows in detailed_stats (bounds the int64 histogram index memory)
_CHUNK_ENTRIES = 1 << 25


def _ratios(tp, pp, lp, m, dtype) -> dict[str, torch.Tensor]:
    """Section 2.3 from counts (any shape): true positives, predicted, labelled, non-ignored."""
    tp, pp, lp, m = (x.to(dtype) for x in (tp, pp, lp, m))
    return {
        "precision": tp / pp,  # 0/0 -> NaN
        "recall": tp / lp,
        "false_negative": (lp - tp) / m,
        "false_positive": (pp - tp) / m,
        "iou": tp / (pp + lp - tp),  # |pred or label| = pp + lp - tp
    }


def binary_metrics(
    pred: torch.Tensor, label: torch.Tensor, ignore: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Section 2.3: pred, label, ignore bool [R, N] -> {metric: float [R]} over non-ignored entries."""
    if not (pred.shape == label.shape == ignore.shape):
        raise ValueError(
            f"pred, label and ignore must share a shape, got {tuple(pred.shape)}, "
            f"{tuple(label.shape)}, {tuple(ignore.shape)}"
        )
    valid = ~ignore.bool()
    pred, label = pred.bool() & valid, label.bool() & valid
    tp = (pred & label).sum(-1)  # [R]
    return _ratios(tp, pred.sum(-1), label.sum(-1), valid.sum(-1), torch.float32)


def _voxel_index(xyz: torch.Tensor, scene_bounds, grid_size: int) -> torch.Tensor:
    """xyz [B, N, 3] -> int64 [B, N] flat voxel index, grid.VirtualGrid's indexing."""
    bounds = torch.as_tensor(scene_bounds, dtype=torch.float32).cpu()
    return VirtualGrid(bounds, (grid_size,) * 3).flat_index(xyz)


def _occupied(index: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """index [B, N] -> bool [B, G^3]: voxels holding at least one point."""
    occupied = torch.zeros(index.shape[0], num_voxels, dtype=torch.bool, device=index.device)
    return occupied.scatter_(1, index, True)


def _voxel_any(index: torch.Tensor, mask: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """index [B, N], mask bool [B, R, N] -> bool [B, R, G^3]: voxels with any True point."""
    batch, rows, _ = mask.shape
    out = torch.zeros(batch, rows, num_voxels, dtype=torch.bool, device=mask.device)
    b, r, n = mask.nonzero(as_tuple=True)  # only the True entries are touched
    return out.index_put_((b, r, index[b, n]), torch.ones_like(b, dtype=torch.bool))


def _check_points(xyz: torch.Tensor, *masks: torch.Tensor) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be [B, N, 3], got {tuple(xyz.shape)}")
    for mask in masks:
        if mask.dim() != 3 or mask.shape[0] != xyz.shape[0] or mask.shape[2] != xyz.shape[1]:
            raise ValueError(
                f"per-row tensors must be [B, R, N] = [{xyz.shape[0]}, R, {xyz.shape[1]}] "
                f"to match xyz {tuple(xyz.shape)}, got {tuple(mask.shape)}"
            )


def voxelize(
    xyz: torch.Tensor,
    pred: torch.Tensor,
    label: torch.Tensor,
    ignore: torch.Tensor,
    scene_bounds,
    grid_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Section 2.4: point masks -> voxel masks on a grid_size^3 grid over scene_bounds.

    xyz [B, N, 3]; pred, label, ignore bool [B, R, N] (R rows share their scene's points; rows with
    points of their own go in as B = R with R' = 1) -> pred_v, label_v, ignore_v bool [B, R, G^3],
    flat index x slowest as grid.VirtualGrid. A voxel is predicted / labelled if any of its points is,
    and ignored if any of its points is ignored or it holds no point.
    """
    _check_points(xyz, pred, label, ignore)
    num_voxels = grid_size**3
    index = _voxel_index(xyz, scene_bounds, grid_size)  # [B, N]
    empty = ~_occupied(index, num_voxels)  # [B, G^3]
    pred_v = _voxel_any(index, pred.bool(), num_voxels)
    label_v = _voxel_any(index, label.bool(), num_voxels)
    ignore_v = _voxel_any(index, ignore.bool(), num_voxels) | empty[:, None]
    return pred_v, label_v, ignore_v


def _voxel_max_logits(index: torch.Tensor, logits: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """index [B, N], logits [B, R, N] -> [B, R, G^3] max logit per voxel (-inf where empty)."""
    batch, rows, _ = logits.shape
    out = logits.new_full((batch, rows, num_voxels), float("-inf"))
    return out.scatter_reduce_(2, index[:, None].expand_as(logits), logits, reduce="amax")


def _counts_at_cutoffs(logits, label, ignore, sorted_cutoffs):
    """logits float [R, N], label/ignore bool [R, N], sorted_cutoffs [C] ascending (logits' dtype)
    -> tp, pp [R, C] and lp, m [R] (int64): counts of `logit > cutoff` for every cutoff at once."""
    rows, _ = logits.shape
    bins = sorted_cutoffs.numel() + 1
    # above[r, n] = number of cutoffs strictly below the logit, so logit > cutoffs[j] <=> j < above
    above = torch.searchsorted(sorted_cutoffs, logits.contiguous(), right=False)
    row_offset = torch.arange(rows, device=logits.device)[:, None] * (2 * bins)
    flat = row_offset + label.long() * bins + above  # [R, N] bin of (row, label, above)
    flat = torch.where(ignore, rows * 2 * bins, flat)  # ignored entries go to one spare bin
    hist = torch.bincount(flat.reshape(-1), minlength=rows * 2 * bins + 1)[:-1]
    hist = hist.view(rows, 2, bins)  # [R, label?, above]
    tail = hist.flip(-1).cumsum(-1).flip(-1)  # tail[..., k] = entries with above >= k
    tp = tail[:, 1, 1:]  # [R, C]: labelled entries with above > j
    pp = tail[:, 0, 1:] + tp
    lp = tail[:, 1, 0]
    m = tail[:, 0, 0] + lp
    return tp, pp, lp, m


def _metrics_at_cutoffs(logits, label, ignore, cutoffs: Sequence[float]) -> dict[str, np.ndarray]:
    """logits [R, N] etc. -> {metric: float64 [R, C]} in the given cutoff order (rows chunked)."""
    rows, entries = logits.shape
    # compared in the logits' dtype, as torch compares `logits > float`
    cut = torch.as_tensor(np.asarray(cutoffs, dtype=np.float64)).to(logits)
    sorted_cut, order = torch.sort(cut)
    unsort = torch.argsort(order)
    chunk = max(1, _CHUNK_ENTRIES // max(entries, 1))
    parts = [
        _counts_at_cutoffs(
            logits[s : s + chunk], label[s : s + chunk], ignore[s : s + chunk], sorted_cut
        )
        for s in range(0, rows, chunk)
    ]
    tp, pp, lp, m = (torch.cat(p).cpu() for p in zip(*parts))
    tp, pp = tp[:, unsort.cpu()], pp[:, unsort.cpu()]
    metrics = _ratios(tp, pp, lp[:, None], m[:, None], torch.float64)
    return {name: value.numpy() for name, value in metrics.items()}


def detailed_stats(
    logits: torch.Tensor,
    label: torch.Tensor,
    ignore: torch.Tensor,
    xyz: torch.Tensor,
    cutoffs: Sequence[float],
    scene_bounds,
    row_columns: Mapping[str, Sequence[Sequence[str]]],
    voxel_sizes: Sequence[int] = (32,),
    padded: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Per-row stats of a batch at every cutoff, as the original's frame.

    logits float [B, P, N]; label, ignore bool [B, P, N]; xyz [B, N, 3]; cutoffs: floats, prediction
    is `logit > cutoff` (compared in the logits' dtype, as torch does); row_columns: column name ->
    nested [B][P] strings (scene_id, label for OVSSC; scene_id, target_obj_name, reference_obj_name,
    spatial_relation_name for VOOL); voxel_sizes: 32 in training, (32, 64) in eval.py; padded bool
    [B, P]: rows whose metric columns are NaN (padding).

    Columns: row_columns in order, point_<METRIC_NAMES>, voxel{g}x{g}x{g}_<METRIC_NAMES> per size,
    cutoff. Rows: scene -> cutoff (given order) -> row; the index restarts at 0 per (scene, cutoff).
    """
    _check_points(xyz, logits, label, ignore)
    batch, rows, _ = logits.shape
    cutoffs = [float(c) for c in cutoffs]
    label, ignore = label.bool(), ignore.bool()

    per_prefix: dict[str, dict[str, np.ndarray]] = {}  # prefix -> metric -> [B*P, C]
    flat = (logits.reshape(batch * rows, -1), label.reshape(batch * rows, -1))
    per_prefix["point"] = _metrics_at_cutoffs(*flat, ignore.reshape(batch * rows, -1), cutoffs)
    for g in voxel_sizes:
        num_voxels = g**3
        index = _voxel_index(xyz, scene_bounds, g)  # [B, N]
        logits_v = _voxel_max_logits(index, logits, num_voxels)  # [B, P, G^3]
        label_v = _voxel_any(index, label, num_voxels)
        ignore_v = _voxel_any(index, ignore, num_voxels) | ~_occupied(index, num_voxels)[:, None]
        per_prefix[f"voxel{g}x{g}x{g}"] = _metrics_at_cutoffs(
            logits_v.reshape(batch * rows, -1),
            label_v.reshape(batch * rows, -1),
            ignore_v.reshape(batch * rows, -1),
            cutoffs,
        )

    num_cut = len(cutoffs)
    # output row (b, c, p) reads metric row b*P + p at cutoff c
    b_idx, c_idx, p_idx = np.meshgrid(
        np.arange(batch), np.arange(num_cut), np.arange(rows), indexing="ij"
    )
    b_idx, c_idx, p_idx = b_idx.ravel(), c_idx.ravel(), p_idx.ravel()
    metric_row = b_idx * rows + p_idx
    pad = (
        np.zeros(len(metric_row), dtype=bool)
        if padded is None
        else padded.bool().cpu().numpy().reshape(-1)[metric_row]
    )

    data: dict[str, object] = {}
    for name, nested in row_columns.items():
        values = np.asarray(nested, dtype=object)
        if values.shape != (batch, rows):
            raise ValueError(
                f"row column {name!r} must be [B][P] = [{batch}][{rows}], got {values.shape}"
            )
        data[name] = values.reshape(-1)[metric_row]
    for prefix, metrics in per_prefix.items():
        for name in METRIC_NAMES:
            column = metrics[name][metric_row, c_idx]
            data[f"{prefix}_{name}"] = np.where(pad, np.nan, column)
    data["cutoff"] = np.asarray(cutoffs, dtype=np.float64)[c_idx]
    return pd.DataFrame(data, index=pd.Index(p_idx))


def row_stats(
    logits, label, ignore, xyz, cutoffs, scene_bounds, columns, padded, voxel_sizes=(32,)
):
    """detailed_stats, also for query points per row: training's balanced sampling draws each row's
    points on its own (xyz [B, R, N, 3]), so every row is scored as a scene of one row. Same rows, same
    order (scene, then row) as with shared points (xyz [B, N, 3])."""
    if xyz.dim() == 3:
        return detailed_stats(
            logits, label, ignore, xyz, cutoffs, scene_bounds, columns, voxel_sizes, padded
        )
    b, r, n = logits.shape
    flat = {k: [[v] for row in nested for v in row] for k, nested in columns.items()}
    frame = detailed_stats(
        logits.reshape(b * r, 1, n),
        label.reshape(b * r, 1, n),
        ignore.reshape(b * r, 1, n),
        xyz.reshape(b * r, n, 3),
        cutoffs,
        scene_bounds,
        flat,
        voxel_sizes,
        padded.reshape(b * r, 1),
    )
    k = np.arange(len(frame))  # row (i, c) at k = i * C + c, i = b * R + p
    i, c = k // len(cutoffs), k % len(cutoffs)
    order = np.lexsort((i % r, c, i // r))  # back to scene -> cutoff -> row
    frame = frame.iloc[order]
    frame.index = pd.Index((i % r)[order])
    return frame


def summary_columns(columns) -> list[str]:
    """Columns the epoch summary reports, in frame order."""
    return [c for c in columns if any(key in c for key in SUMMARY_KEYS)]


def epoch_summary(
    frame: pd.DataFrame, fix_rate_argmin: bool = False
) -> list[tuple[str, str, float, float]]:
    """The epoch summary (docs/method.md#the-epoch-loop): (split, column, 100 * mean at the best
    cutoff, best cutoff) rows.

    The best cutoff is the argmax over cutoffs of the column's mean (NaN skipped), even for the
    false_negative / false_positive rates (a quirk kept; fix_rate_argmin=True takes their argmin).
    Splits in order of appearance; an all-NaN column gives (nan, nan).
    """
    for needed in ("split", "cutoff"):
        if needed not in frame.columns:
            raise ValueError(f"stats frame has no {needed!r} column")
    out = []
    for split in frame["split"].unique():
        rows = frame[frame["split"] == split]
        for column in summary_columns(frame.columns):
            means = pd.to_numeric(rows[column], errors="coerce").groupby(rows["cutoff"]).mean()
            means = means.dropna()
            if means.empty:
                out.append((split, column, float("nan"), float("nan")))
                continue
            use_min = fix_rate_argmin and any(rate in column for rate in RATE_METRICS)
            best = means.idxmin() if use_min else means.idxmax()
            out.append((split, column, 100.0 * float(means[best]), float(best)))
    return out


def format_epoch_summary(rows: Sequence[tuple[str, str, float, float]]) -> str:
    """Console lines of the epoch summary: `    COLUMN_UPPER<30>:` + score (6.2f) + cutoff (>10,
    2 dp).

    Each split's lines follow a `split` header line.
    """
    lines, current = [], None
    for split, column, score, cutoff in rows:
        if split != current:
            lines.append(f"{split}")
            current = split
        lines.append(f"    {column.upper():<30}:{score:6.2f}{cutoff:>10.2f}")
    return "\n".join(lines)
