"""The optional IoU term of the training loss (--iou_loss, --iou_loss_weight, --lovasz_margin,
--iou_loss_sampling_weights): each value worked out by hand on a tiny batch."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

import dataset
import options
import tasks
from vocab import PAD


def row(values, dtype=torch.float32):
    return torch.tensor([values], dtype=dtype)


def test_lovasz_hinge_by_hand():
    # hinge errors 1 - x (2y - 1): -1 (positive), 0, 1.5; sorted 1.5 (neg), 0 (neg), -1 (pos).
    # Jaccard loss along that order: 1 - 1/2, 1 - 1/3, 1 - 0/3 -> increments 1/2, 1/6, 1/3.
    # loss = 1.5 * 1/2 + 0 * 1/6 + 0 * 1/3 = 0.75
    logits, label = row([2.0, -1.0, 0.5]), row([1, 0, 0], torch.bool)
    keep = torch.ones_like(label)
    assert tasks.lovasz_hinge(logits, label, keep).item() == pytest.approx(0.75)
    # a row predicted right with a margin of 1 or more costs nothing
    right = tasks.lovasz_hinge(row([3.0, -3.0]), row([1, 0], torch.bool), row([1, 1], torch.bool))
    assert right.item() == 0
    # the point left out (the false positive) adds nothing: the two kept points are right
    keep = row([1, 1, 0], torch.bool)
    assert tasks.lovasz_hinge(logits, label, keep).item() == 0


def test_lovasz_hinge_margin_by_hand():
    # margin 3: errors 3 - x (2y - 1) = 1 (positive), 2, 3.5; sorted 3.5 (neg), 2 (neg), 1 (pos),
    # the same order and increments 1/2, 1/6, 1/3 as above: 3.5/2 + 2/6 + 1/3 = 29/12
    logits, label = row([2.0, -1.0, 0.5]), row([1, 0, 0], torch.bool)
    keep = torch.ones_like(label)
    assert tasks.lovasz_hinge(logits, label, keep, margin=3.0).item() == pytest.approx(29 / 12)
    # the row predicted right with margin 1 is inside a margin of 4
    right = tasks.lovasz_hinge(
        row([3.0, -3.0]), row([1, 0], torch.bool), row([1, 1], torch.bool), margin=4.0
    )
    assert right.item() == pytest.approx(1.0)  # errors 1, 1: increments 1/2, 1/2


def test_lovasz_hinge_grows_with_a_missed_positive():
    # errors: 2 (pos at -1), 0.5 (pos at 0.5), 0 (neg at -1): Jaccard 1 - 1/2, 1 - 0/2, 1 - 0/3:
    # increments 1/2, 1/2, 0 -> 2 * 1/2 + 0.5 * 1/2 = 1.25
    logits, label = row([-1.0, 0.5, -1.0]), row([1, 1, 0], torch.bool)
    keep = torch.ones_like(label)
    assert tasks.lovasz_hinge(logits, label, keep).item() == pytest.approx(1.25)


def test_soft_jaccard_by_hand():
    # p = 0.5 (positive), 0.75 (negative): intersection 0.5 * 1; union (0.5 + 1 - 0.5) + 0.75
    # -> 1 - 0.5 / 1.75
    logits, label = row([0.0, math.log(3.0)]), row([1, 0], torch.bool)
    keep = torch.ones_like(label)
    assert tasks.soft_jaccard(logits, label, keep).item() == pytest.approx(1 - 0.5 / 1.75)
    # the negative left out: 1 - 0.5 / 1 = 0.5
    assert tasks.soft_jaccard(logits, label, row([1, 0], torch.bool)).item() == pytest.approx(0.5)


def test_weighted_lovasz_hinge_by_hand():
    # as in test_lovasz_hinge_by_hand, but the false positive (logit 0.5) counts as 4 points: after
    # it, intersection 1 and union 1 + 4, Jaccard loss 1 - 1/5 -> loss = 1.5 * 4/5 = 1.2
    logits, label = row([2.0, -1.0, 0.5]), row([1, 0, 0], torch.bool)
    keep = torch.ones_like(label)
    weighted = tasks.lovasz_hinge(logits, label, keep, row([1.0, 1.0, 4.0]))
    assert weighted.item() == pytest.approx(1.2)
    # the same weight everywhere is the same IoU
    assert tasks.lovasz_hinge(logits, label, keep, row([3.0, 3.0, 3.0])).item() == pytest.approx(
        0.75
    )


def test_weighted_soft_jaccard_by_hand():
    # the negative (p = 0.75) counts twice: union 1 + 2 * 0.75 -> 1 - 0.5 / 2.5
    logits, label = row([0.0, math.log(3.0)]), row([1, 0], torch.bool)
    keep = torch.ones_like(label)
    loss = tasks.soft_jaccard(logits, label, keep, row([1.0, 2.0]))
    assert loss.item() == pytest.approx(1 - 0.5 / 2.5)


def test_inverse_sampling_rates_by_hand():
    full = np.array([[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], np.float32)
    sampled = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    # row 0: both positives drawn (2/2 = 1), 2 of 6 negatives (3 each); row 1: 2 of 4 and 2 of 4
    expected = [[1, 1, 3, 3], [2, 2, 2, 2]]
    assert dataset.inverse_sampling_rates(full, sampled).tolist() == expected


def test_loss_reads_the_sampling_weights_of_the_batch():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [1.0, -2.0, 0.0]]])
    batch = vool_batch()
    batch["out_of_bounds_pts"] = torch.zeros(1, 3, dtype=torch.bool)
    args = loss_args(iou_loss="lovasz", iou_loss_weight=1.0)
    plain = tasks.vool_loss(logits, batch, args)[0].item()  # BCE + 0.75
    batch["output_weight_pts"] = torch.tensor([[[1.0, 1.0, 4.0], [5.0, 5.0, 5.0]]])
    assert tasks.vool_loss(logits, batch, args)[0].item() == pytest.approx(plain - 0.75 + 1.2)


def bce(x: float, y: int) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def vool_batch():
    """One scene, a description and a padding row, three query points; the third is out of bounds."""
    return {
        "output_label_pts": torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]),  # [B, D, N]
        "out_of_bounds_pts": torch.tensor([[False, False, True]]),  # [B, N]
        "spatial_relation_name": [["on"], [PAD]],  # collated [D][B]
    }


def loss_args(**changes) -> argparse.Namespace:
    args = options.defaults()
    vars(args).update(changes)
    return args


def test_vool_loss_adds_the_weighted_lovasz_term_of_its_real_rows():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [1.0, -2.0, 0.0]]])
    x, y = logits[0].flatten().tolist(), [1, 0, 0, 0, 0, 0]
    plain = sum(bce(a, b) for a, b in zip(x, y)) / 6  # BCE over every entry, padding included
    args = loss_args(iou_loss="none")
    assert tasks.vool_loss(logits, vool_batch(), args)[0].item() == pytest.approx(plain, rel=1e-6)
    # the description row over its two in-bounds points (2 -> pos, -1 -> neg): errors -1, 0: zero;
    # the padding row is left out of the mean, so the term is 0 ...
    args = loss_args(iou_loss="lovasz", iou_loss_weight=0.5)
    assert tasks.vool_loss(logits, vool_batch(), args)[0].item() == pytest.approx(plain, rel=1e-6)
    # ... and with the out-of-bounds false positive kept in, the by-hand 0.75 of the test above
    batch = vool_batch()
    batch["out_of_bounds_pts"] = torch.zeros(1, 3, dtype=torch.bool)
    expected = plain + 0.5 * 0.75
    assert tasks.vool_loss(logits, batch, args)[0].item() == pytest.approx(expected, rel=1e-6)
    # --lovasz_margin 3 reaches the term: 29/12, as in test_lovasz_hinge_margin_by_hand
    args = loss_args(iou_loss="lovasz", iou_loss_weight=0.5, lovasz_margin=3.0)
    expected = plain + 0.5 * 29 / 12
    assert tasks.vool_loss(logits, batch, args)[0].item() == pytest.approx(expected, rel=1e-6)


def test_ovssc_loss_adds_the_soft_jaccard_term_over_kept_points():
    # one class row, points: positive at 0, negative at ln 3, and one out of frustum (ignored)
    logits = torch.tensor([[[0.0, math.log(3.0), 5.0]]])
    batch = {
        "output_label_pts": torch.tensor([[[1.0, 0.0, 1.0]]]),
        "out_of_bounds_pts": torch.zeros(1, 1, 1, 3, dtype=torch.bool),
        "out_of_frustum_pts_mask": torch.tensor([[[[False, False, True]]]]),
        "patch_labels": [["mug"]],
    }
    plain = (bce(0.0, 1) + bce(math.log(3.0), 0)) / 2
    args = loss_args(iou_loss="soft_jaccard", iou_loss_weight=2.0)
    expected = plain + 2.0 * (1 - 0.5 / 1.75)
    assert tasks.ovssc_loss(logits, batch, args)[0].item() == pytest.approx(expected, rel=1e-6)


def test_iou_loss_flags_parse_and_default_to_the_original():
    args = options.defaults()
    assert (args.iou_loss, args.iou_loss_weight) == ("none", 1.0)
    parser = argparse.ArgumentParser()
    options.add_shared_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--file_path", "x", "--iou_loss", "dice"])
