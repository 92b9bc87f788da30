"""baselines.py against hand-built batches: the lifting radius, the nearest-neighbour lookup, the
relevancy channel each task reads, the frustum mask, and the configuration check."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import baselines
from utils import InputError

BOUNDS = [[-1.0, -1.0, -0.1], [1.0, 1.0, 1.9]]  # the default: largest extent 2 m -> 1/16 m voxels
INPUT_XYZ = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]])  # [B=1, n=2, 3]
# query 0: 0.03 m from input 0; query 1: 0.2 m from input 0, 0.3 m from input 1 (both beyond one
# voxel); query 2: 0.05 m from input 1
QUERY = torch.tensor([[0.03, 0.0, 0.0], [0.2, 0.0, 0.0], [0.5, 0.05, 0.0]])  # [N=3, 3]
RELEVANCY = torch.tensor([[3.0, 7.0], [-1.0, 5.0]])  # [R=2, n=2]: row r, input point i
EXPECTED = [[3.0, -np.inf, 7.0], [-1.0, -np.inf, 5.0]]  # [R, N]


def test_lift_radius_is_one_voxel_of_32_over_the_largest_extent():
    assert baselines.lift_radius(BOUNDS) == pytest.approx(2.0 / 32)
    assert baselines.lift_radius([[0, 0, 0], [1, 4, 2]]) == pytest.approx(4.0 / 32)


def test_ovssc_reads_the_last_feature_channel_of_the_nearest_point_within_one_voxel():
    other_channel = torch.full_like(RELEVANCY, 100.0)  # a patch-mask channel before it: not read
    features = torch.stack([other_channel, RELEVANCY], -1)[None]  # [1, R, n, F=2]
    batch = {
        "input_feature_pts": features,
        "input_xyz_pts": INPUT_XYZ,
        "output_xyz_pts": QUERY.expand(1, 2, 3, 3),  # [B, R, N, 3], rows share their points
    }
    scores = baselines.lifted_relevancy(batch, "ovssc", BOUNDS)
    assert scores.shape == (1, 2, 3) and scores.dtype == torch.float32
    np.testing.assert_array_equal(scores[0].numpy(), EXPECTED)


def test_vool_reads_the_description_saliency_and_rows_with_their_own_points():
    # row 1's points are row 0's in reverse order: its scores come out reversed
    query = torch.stack([QUERY, QUERY.flip(0)])[None]  # [1, R, N, 3]
    batch = {
        "input_description_saliency_pts": RELEVANCY[None, ..., None],  # [1, D, n, 1]
        "input_target_saliency_pts": torch.zeros(1, 2, 2, 1),  # not read
        "input_xyz_pts": INPUT_XYZ,
        "output_xyz_pts": query,
    }
    scores = baselines.lifted_relevancy(batch, "vool", BOUNDS)[0].numpy()
    np.testing.assert_array_equal(scores[0], EXPECTED[0])
    np.testing.assert_array_equal(scores[1], EXPECTED[1][::-1])


@pytest.mark.parametrize(
    "mask",
    [
        torch.tensor([[False, True, False, True]]),  # VOOL: [B, N]
        torch.tensor([[False, True, False, True]]).expand(2, 4)[
            None, :, None
        ],  # OVSSC [B, R, 1, N]
    ],
)
def test_all_in_frustum_is_plus_one_inside_and_minus_one_outside(mask):
    batch = {"output_label_pts": torch.zeros(1, 2, 4), "out_of_frustum_pts_mask": mask}
    scores = baselines.all_in_frustum(batch, "vool", BOUNDS)
    np.testing.assert_array_equal(scores.numpy(), [[[1, -1, 1, -1]] * 2])
    assert baselines.BASELINES["all_in_frustum"].cutoffs.tolist() == [0.0]


def test_lifted_relevancy_refuses_a_run_without_relevancy_inputs():
    args = argparse.Namespace(approach="semantic_aware", network_inputs=["rgb"])
    with pytest.raises(InputError) as error:
        baselines.check_configuration("lifted_relevancy", args, "run/args.pkl")
    assert str(error.value) == (
        "--baseline lifted_relevancy reads relevancy, but run/args.pkl (approach semantic_aware) "
        "reads rgb; pass the args.pkl of a run with saliency inputs"
    )
    baselines.check_configuration("all_in_frustum", args, "run/args.pkl")  # reads no relevancy
