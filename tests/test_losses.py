"""The OVSSC and VOOL losses (docs/method.md#losses-and-masks) against figures computed by hand on a
tiny batch: one scene, two rows (the second padding), four query points, one out of bounds and one
out of the frustum.

Per entry, BCE with logits is softplus(x) - x*y = log(1 + exp(x)) - x*y. With
--balance_positive_negative a row's positives weigh 1/frac_pos and its negatives 1/frac_neg (frac over
the row's N points), then every weight is rescaled by numel / sum so the total is unchanged; the
loss is the mean of weight * bce over the entries it covers.
"""

import math

import pytest
import torch

import options
import tasks
import training
from utils import InputError
from vocab import PAD

LOGITS = [[2.0, -1.0, 0.5, 3.0], [0.25, -0.5, 1.0, -2.0]]
LABELS = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]  # row 1 is padding: all zero
OUT_OF_BOUNDS = [False, False, False, True]  # point 3
OUT_OF_FRUSTUM = [False, False, True, False]  # point 2


def training_args(balance: bool):
    """The training defaults (every other loss option off), with --balance_positive_negative or not."""
    args = options.defaults()
    args.balance_positive_negative = balance
    return args


def bce(x: float, y: float) -> float:
    return math.log(1 + math.exp(x)) - x * y


def batch(padding_row: str) -> dict:
    return dict(
        output_label_pts=torch.tensor([LABELS]),  # [B=1, R=2, N=4]
        out_of_bounds_pts=torch.tensor([[OUT_OF_BOUNDS] * 2]),  # [B, R, N] (balanced sampling)
        out_of_frustum_pts_mask=torch.tensor([[OUT_OF_FRUSTUM] * 2]),
        patch_labels=[["chair"], [padding_row]],  # collated [R][B]
        spatial_relation_name=[["on"], [padding_row]],
    )


# Balanced weights by hand. Row 0: frac_pos 1/4, so the positive weighs 4 and each negative 4/3
# (row sum 8); row 1: no positive, each negative weighs 1 (row sum 4). Total 12 over 8 entries:
# everything times 8/12.
W_POS, W_NEG, W_PAD = 4 * 8 / 12, 4 / 3 * 8 / 12, 1 * 8 / 12


def test_ovssc_loss_ignores_padding_out_of_bounds_and_out_of_frustum():
    loss, label, ignore, padded = tasks.ovssc_loss(
        torch.tensor([LOGITS]), batch(""), training_args(balance=False)
    )
    # only row 0, points 0 and 1 count
    assert math.isclose(loss.item(), (bce(2.0, 1) + bce(-1.0, 0)) / 2, rel_tol=1e-6)
    assert padded.tolist() == [[False, True]]
    assert ignore.tolist() == [[[False, False, True, True], [True] * 4]]
    assert label.tolist() == [[[True, False, False, False], [False] * 4]]


def test_ovssc_loss_balanced_by_hand():
    loss, *_ = tasks.ovssc_loss(torch.tensor([LOGITS]), batch(""), training_args(balance=True))
    expected = (W_POS * bce(2.0, 1) + W_NEG * bce(-1.0, 0)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def vool_all_entries(w_pos=1.0, w_neg=1.0, w_pad=1.0) -> float:
    row0 = w_pos * bce(2.0, 1) + w_neg * (bce(-1.0, 0) + bce(0.5, 0) + bce(3.0, 0))
    row1 = w_pad * sum(bce(x, 0) for x in LOGITS[1])
    return (row0 + row1) / 8


def test_vool_loss_covers_every_entry_padding_included_and_ignores_only_for_the_metrics():
    loss, label, ignore, padded = tasks.vool_loss(
        torch.tensor([LOGITS]), batch(PAD), training_args(balance=False)
    )
    assert math.isclose(loss.item(), vool_all_entries(), rel_tol=1e-6)
    assert padded.tolist() == [[False, True]]
    # padding and out of bounds, not out of frustum
    assert ignore.tolist() == [[[False, False, False, True], [True] * 4]]


def test_vool_loss_balanced_by_hand():
    loss, *_ = tasks.vool_loss(torch.tensor([LOGITS]), batch(PAD), training_args(balance=True))
    assert math.isclose(loss.item(), vool_all_entries(W_POS, W_NEG, W_PAD), rel_tol=1e-5)


def test_uniform_sampling_masks_of_other_shapes_mean_the_same():
    """OVSSC's uniform sampling gives [B, R, 1, N] masks, VOOL's [B, N]: the same loss."""
    args = training_args(balance=False)
    b = batch("")
    b["out_of_bounds_pts"] = torch.tensor([[[OUT_OF_BOUNDS]] * 2])
    b["out_of_frustum_pts_mask"] = torch.tensor([[[OUT_OF_FRUSTUM]] * 2])
    loss, *_ = tasks.ovssc_loss(torch.tensor([LOGITS]), b, args)
    assert math.isclose(loss.item(), (bce(2.0, 1) + bce(-1.0, 0)) / 2, rel_tol=1e-6)
    b = batch(PAD)
    b["out_of_bounds_pts"] = torch.tensor([OUT_OF_BOUNDS])
    _, _, ignore, _ = tasks.vool_loss(torch.tensor([LOGITS]), b, args)
    assert ignore.tolist() == [[[False, False, False, True], [True] * 4]]


def test_bce_positive_weight_is_the_same_in_every_row():
    # rows with 1 and 3 positives of 4: a positive weighs 3 against 1 in both, then the whole
    # batch is rescaled to keep its total weight (8 entries, raw total 3+3+3+1 + 3+1+1+1 = 16)
    label = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    weight = tasks.bce_weight(label, balance=False, positive_weight=3.0)
    expected = torch.tensor([[3.0, 3, 3, 1], [3, 1, 1, 1]]) * 8 / 16
    assert torch.allclose(weight, expected)


def test_bce_positive_weight_and_balancing_are_refused_together():
    argv = ["--file_path", "x", "--log", "y", "--balance_positive_negative"]
    argv += ["--bce_positive_weight", "5"]
    with pytest.raises(InputError, match="give one"):
        training.prepare_args("vool", argv)
