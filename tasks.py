"""The two tasks, OVSSC and VOOL: what training and evaluation do differently for each
(docs/method.md#losses-and-masks).

A task (`Task`) is its loss, its per-row columns and the batch keys that carry a row axis; a row is
one class (OVSSC) or one description (VOOL). Both run the network through the one `forward`, which
above CHUNK_POINTS query points runs it one row at a time (as the original). The registries of
approaches are vocab.APPROACHES and net.NETWORKS; training.py and eval.py take a task from `TASKS`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scene_file import SENTENCE_KEYS
from vocab import PAD

CHUNK_POINTS = 500_000  # above this many query points the net runs one row at a time


# --------------------------------------------------------------------------------------------------
# what both tasks share


def bce_weight(
    label: torch.Tensor, balance: bool, positive_weight: float | None = None
) -> torch.Tensor | None:
    """get_bce_weight (docs/method.md#balancing): None (all ones), or per-row positive/negative
    balancing rescaled to keep the total weight; or (--bce_positive_weight, not in the original)
    every positive weighted `positive_weight` against 1 for a negative, the same in every row,
    rescaled alike."""
    label = label.float()
    if positive_weight is not None:
        weight = 1 + (positive_weight - 1) * label
    elif balance:
        frac_pos = label.mean(-1, keepdim=True)
        weight = label / (frac_pos + 1e-10) + (1 - label) / (1 - frac_pos + 1e-10)
    else:
        return None
    return weight * weight.numel() / weight.sum()


def lovasz_hinge(
    logits: torch.Tensor,
    label: torch.Tensor,
    keep: torch.Tensor,
    weight: torch.Tensor | None = None,
    margin: float = 1.0,
) -> torch.Tensor:
    """Lovász hinge per row (Berman et al., CVPR 2018): a convex surrogate of 1 - IoU of the row's
    prediction `logits > 0`, over the points `keep` holds; logits, label, keep [R, N] -> [R].

    Hinge errors margin - logit * (2 label - 1) (the paper's margin is 1), sorted in decreasing
    order, dotted with the increments of the Jaccard loss along that order. Points left out sort last with an error of -inf: they add
    nothing, and the Jaccard increments before them count only kept points. `weight` [R, N]: each
    point counts as that many points in the IoU (all 1 by default).
    """
    label, keep = label.float(), keep.bool()
    weight = keep.float() if weight is None else weight.float() * keep
    errors = margin - logits.float() * (2 * label - 1)
    errors = errors.masked_fill(~keep, float("-inf"))
    errors, order = errors.sort(dim=-1, descending=True)
    sorted_weight = weight.gather(-1, order)  # a left-out point: 0
    sorted_positive = label.gather(-1, order) * sorted_weight
    positives = sorted_positive.sum(-1, keepdim=True)
    intersection = positives - sorted_positive.cumsum(-1)
    union = positives + (sorted_weight - sorted_positive).cumsum(-1)
    jaccard = 1 - intersection / union.clamp_min(1e-12)
    increments = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=-1)
    return (F.relu(errors) * increments).sum(-1)


def soft_jaccard(
    logits: torch.Tensor,
    label: torch.Tensor,
    keep: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - soft IoU per row: sum(w p y) / sum(w (p + y - p y)) with p = sigmoid(logits), over the
    points `keep` holds; logits, label, keep, optional weight [R, N] -> [R] (a row with no positive
    scores 1, with no gradient)."""
    p, label = torch.sigmoid(logits.float()), label.float()
    weight = keep.float() if weight is None else weight.float() * keep
    intersection = (weight * p * label).sum(-1)
    union = (weight * (p + label - p * label)).sum(-1)
    return 1 - intersection / union.clamp_min(1e-6)


IOU_LOSSES = {"lovasz": lovasz_hinge, "soft_jaccard": soft_jaccard}


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """[B, R, N] -> [B*R, N]."""
    return x.reshape(-1, x.shape[-1])


def with_iou_term(
    bce: torch.Tensor,
    logits: torch.Tensor,
    label: torch.Tensor,
    ignore: torch.Tensor,
    args,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """bce + iou_loss_weight x the mean over rows of --iou_loss (not in the original; "none", the
    default, returns bce as it is). Rows with no kept point (padding) are left out of the mean.
    weight [B, R, N]: the points' counts in the IoU (the batch's output_weight_pts, given with
    --iou_loss_sampling_weights)."""
    if args.iou_loss == "none":
        return bce
    keep = ~flat_rows(ignore)
    rows = keep.any(-1)
    if not rows.any():  # only padding (a scene with no description): no IoU to learn
        return bce
    iou_loss = IOU_LOSSES[args.iou_loss]
    if args.iou_loss == "lovasz":
        iou_loss = functools.partial(iou_loss, margin=args.lovasz_margin)
    per_row_loss = iou_loss(
        flat_rows(logits)[rows], flat_rows(label)[rows], keep[rows],
        None if weight is None else flat_rows(weight)[rows],
    )  # fmt: skip
    return bce + args.iou_loss_weight * per_row_loss.mean()


def per_row(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A per-point mask as bool [B, R, N]: the datasets give out_of_bounds_pts as [B, R, N]
    (balanced sampling), [B, R, 1, N] (OVSSC, uniform) or [B, N] (VOOL, uniform)."""
    mask = mask.bool()
    if mask.dim() == 2:
        mask = mask[:, None]
    elif mask.dim() == 4:
        mask = mask.squeeze(2)
    return mask.expand(shape)


def chunked_forward(model: nn.Module, batch: dict, row_keys: tuple[str, ...], rows: int):
    """Run the net one row (class/description) at a time, slicing the keys that carry a row axis."""
    outputs = []
    for r in range(rows):
        part = dict(batch)
        for key in row_keys:
            value = batch.get(key)
            if isinstance(value, torch.Tensor) and value.dim() > 1 and value.shape[1] == rows:
                part[key] = value[:, r : r + 1]
            elif isinstance(value, list) and len(value) == rows:  # collated [R][B] strings
                part[key] = value[r : r + 1]
        outputs.append(model(**part))
    return torch.cat(outputs, dim=1)


def forward(
    model: nn.Module, batch: dict, row_keys: tuple[str, ...], chunk_points: int = CHUNK_POINTS
) -> torch.Tensor:
    """Logits [B, R, N]; one row at a time above chunk_points query points."""
    rows, points = batch["output_xyz_pts"].shape[1:3]
    if points > chunk_points:
        return chunked_forward(model, batch, row_keys, rows)
    return model(**batch)


@dataclass(frozen=True)
class Task:
    """What differs between OVSSC and VOOL.

    loss_fn(logits, batch, args) -> (loss, label, ignore, padded): label and ignore bool [B, R, N],
        padded bool [B, R]; args is the training Namespace (it reads balance_positive_negative).
    targets(batch) -> (label, ignore, padded): loss_fn's, without the loss (evaluation).
    row_columns(batch) -> {column: [B][R] strings}, the stats frame's leading columns.
    row_keys: the batch keys with a row axis, sliced by the per-row forward.
    """

    name: str  # "ovssc" or "vool"
    loss_fn: Callable[[torch.Tensor, dict, argparse.Namespace], tuple]
    targets: Callable[[dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    row_columns: Callable[[dict], dict]
    row_keys: tuple[str, ...]

    def forward(self, model: nn.Module, batch: dict, chunk_points: int = CHUNK_POINTS):
        """Logits [B, R, N] (see `forward`)."""
        return forward(model, batch, self.row_keys, chunk_points)


# --------------------------------------------------------------------------------------------------
# OVSSC: one row per class

OVSSC_ROW_KEYS = ("input_feature_pts", "semantic_class_features", "output_xyz_pts")


def ovssc_padded_rows(batch: dict) -> torch.Tensor:
    """bool [B, P]: classes added as padding (label "")."""
    labels = batch["patch_labels"]  # collated [P][B]
    return torch.tensor([[label == "" for label in row] for row in zip(*labels)])


def ovssc_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """label, ignore [B, P, N] and padded [B, P]: padding, out-of-bounds and out-of-frustum points
    are ignored."""
    label = batch["output_label_pts"] > 0.5  # [B, P, N]
    padded = ovssc_padded_rows(batch).to(label.device)  # [B, P]
    ignore = (
        padded[..., None]
        | per_row(batch["out_of_bounds_pts"], label.shape)
        | per_row(batch["out_of_frustum_pts_mask"], label.shape)
    )
    return label, ignore, padded


def ovssc_loss(logits: torch.Tensor, batch: dict, args: argparse.Namespace):
    """BCE over the non-ignored entries (padding, out-of-bounds and out-of-frustum are ignored)."""
    label, ignore, padded = ovssc_targets(batch)
    keep = ~ignore
    weight = bce_weight(label, args.balance_positive_negative, args.bce_positive_weight)
    value = F.binary_cross_entropy_with_logits(
        logits[keep].float(),
        label[keep].float(),
        weight=None if weight is None else weight[keep],
    )
    iou_weight = batch.get("output_weight_pts")
    return with_iou_term(value, logits, label, ignore, args, iou_weight), label, ignore, padded


def ovssc_row_columns(batch: dict) -> dict:
    """scene_id and label, [B][P]."""
    labels = [list(row) for row in zip(*batch["patch_labels"])]  # [B][P]
    scene_ids = [[scene] * len(row) for scene, row in zip(batch["scene_id"], labels)]
    return {"scene_id": scene_ids, "label": labels}


# --------------------------------------------------------------------------------------------------
# VOOL: one row per description

# Keys with a description axis, all sliced when running one description at a time. The original
# left input_rgb_pts and the object names whole, so semantic_aware failed there.
VOOL_ROW_KEYS = (
    "input_target_saliency_pts",
    "input_reference_saliency_pts",
    "input_description_saliency_pts",
    "input_rgb_pts",
    "output_xyz_pts",
    "target_obj_text_features",
    "reference_obj_text_features",
    *SENTENCE_KEYS,
)


def vool_padded_rows(batch: dict) -> torch.Tensor:
    """bool [B, D]: descriptions added as padding ("[pad]")."""
    relations = batch["spatial_relation_name"]  # collated [D][B]
    return torch.tensor([[name == PAD for name in row] for row in zip(*relations)])


def vool_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """label, ignore [B, D, N] and padded [B, D]: padding and out-of-bounds points are ignored."""
    label = batch["output_label_pts"] > 0.5  # [B, D, N]
    padded = vool_padded_rows(batch).to(label.device)  # [B, D]
    ignore = padded[..., None] | per_row(batch["out_of_bounds_pts"], label.shape)
    return label, ignore, padded


def vool_loss(logits: torch.Tensor, batch: dict, args: argparse.Namespace):
    """BCE over every entry, padding included (its labels are all zero), as the original; only
    accuracy, the metrics and the optional IoU term (--iou_loss) ignore padding and out-of-bounds
    points."""
    label, ignore, padded = vool_targets(batch)
    weight = bce_weight(label, args.balance_positive_negative, args.bce_positive_weight)
    value = F.binary_cross_entropy_with_logits(logits.float(), label.float(), weight=weight)
    iou_weight = batch.get("output_weight_pts")
    return with_iou_term(value, logits, label, ignore, args, iou_weight), label, ignore, padded


def vool_row_columns(batch: dict) -> dict:
    """scene_id, target_obj_name, reference_obj_name and spatial_relation_name, [B][D]."""
    columns = {
        key: [list(row) for row in zip(*batch[key])]
        for key in ("target_obj_name", "reference_obj_name", "spatial_relation_name")
    }
    rows = columns["target_obj_name"]
    columns = {"scene_id": [[s] * len(r) for s, r in zip(batch["scene_id"], rows)], **columns}
    return columns


OVSSC = Task("ovssc", ovssc_loss, ovssc_targets, ovssc_row_columns, OVSSC_ROW_KEYS)
VOOL = Task("vool", vool_loss, vool_targets, vool_row_columns, VOOL_ROW_KEYS)
TASKS = {task.name: task for task in (OVSSC, VOOL)}
