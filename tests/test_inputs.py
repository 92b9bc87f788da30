"""inputs.py: each input-preparation function against a case computed by hand from
docs/method.md#from-stored-maps-to-point-features; DatasetConfig.from_args against options.py's
flags."""

import argparse

import numpy as np

import dataset as ds
import inputs
import options


def test_upsample_is_bilinear_without_corner_alignment():
    # a 1x2 map [0, 1] to width 4: pixel centres at x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75,
    # 1.25 in source coordinates, clamped at the edges -> 0, 0.25, 0.75, 1
    out = inputs.upsample(np.array([[[0.0, 1.0]]]), (1, 4))
    np.testing.assert_allclose(out, [[[0, 0.25, 0.75, 1]]])
    assert inputs.upsample(np.zeros((0, 2, 2)), (3, 5)).shape == (0, 3, 5)


def test_mean_vmin_scale_and_masks_by_hand():
    maps = np.array([[[0.01, 0.03]]])
    centred = inputs.subtract_mean(maps, np.array([[0.02, 0.02]]))
    np.testing.assert_allclose(centred, [[[-0.01, 0.01]]])
    assert inputs.subtract_mean(maps, None) is maps
    np.testing.assert_allclose(inputs.apply_vmin(centred, 0.005), [[[0, 0.005]]])
    assert inputs.apply_vmin(centred, None) is centred
    np.testing.assert_allclose(inputs.scale(centred), [[[-0.5, 0.5]]])
    np.testing.assert_array_equal(inputs.patch_mask(maps, 0.02), [[[0, 1]]])
    np.testing.assert_array_equal(inputs.patch_mask(maps, 0.02, offset=True), [[[-1, 1]]])
    assert inputs.patch_mask(maps, 0.02).dtype == np.float32


def test_vool_relevancy_order_and_bug_b5():
    # constant 2x2 map 0.003, mean 0.001, vmin 0.0005: (0.003 - 0.001 - 0.0005) x 50 = 0.075
    maps = np.full((1, 2, 2), 0.003, np.float32)
    mean = np.full((2, 2), 0.001, np.float32)
    out = inputs.vool_relevancy(maps, mean, (3, 3), vmin=0.0005)
    assert out.shape == (1, 9, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.075, rtol=1e-5)
    # patch masks: 0.0015 unscaled is under the 0.004 cutoff, 0.075 scaled is over it (B5)
    kept = inputs.vool_relevancy(maps, mean, (3, 3), vmin=0.0005, patch_masks=True)
    fixed = inputs.vool_relevancy(maps, mean, (3, 3), 0.0005, True, 0.004, fix_scale=True)
    assert kept.min() == 1 and fixed.max() == 0


def test_ovssc_features_mask_first_then_saliency():
    maps = np.array([[[0.001, 0.01]]], np.float32)  # already mean-subtracted and upsampled
    out = inputs.ovssc_relevancy_features(
        maps, ("patch_masks", "saliency"), vmin=0.002, cutoff=0.004, offset=True
    )
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out[0, :, 0], [-1, 1])  # mask of the unscaled map, in {-1, 1}
    np.testing.assert_allclose(out[0, :, 1], [0, 0.4], atol=1e-7)  # max(m - 0.002, 0) x 50
    only = inputs.ovssc_relevancy_features(maps, ("saliency",))
    np.testing.assert_allclose(only[0, :, 0], [0.05, 0.5], rtol=1e-6)


def test_rgb_points_and_padding():
    rgb = np.array([[[0, 51, 255], [255, 0, 102]]], np.float32)
    np.testing.assert_allclose(inputs.rgb_points(rgb), [[0, 0.2, 1], [1, 0, 0.4]], rtol=1e-6)
    padded = inputs.pad_rows(np.ones((1, 2, 1), np.float32), 2)
    assert padded.shape == (3, 2, 1) and padded[1:].sum() == 0 and padded.dtype == np.float32
    assert inputs.pad_descriptions(["in"], 2) == ["in", "[pad]", "[pad]"]


def test_vool_pairs_and_target_labels():
    pairs = inputs.vool_relevancy_labels(["tv"], ["sofa"], ["television on a sofa"])
    assert pairs == dict(target=["tv"], reference=["sofa"], description=["television on a sofa"])
    labels = inputs.target_labels(np.array([0, 1, 1, 2]), [1], count=1)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 0], [0, 0, 0, 0]])


def test_input_points_back_project_and_mark_zero_depth():
    depth = np.array([[1.0, 0.0]])
    intr = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    xyz, valid = inputs.input_points(depth, intr, np.eye(4))
    np.testing.assert_allclose(xyz, [[0, 0, 1], [0, 0, 0]])  # u=0 -> x=0; u=1 at depth 0 -> 0
    assert valid.tolist() == [True, False]


def test_filter_subsample_keeps_in_bounds_points_and_their_rows():
    xyz = np.array([[0, 0, 0], [5, 5, 5], [0.5, 0.5, 0.5]])
    arrays = {"a": np.array([10, 11, 12]), "b": np.array([[1, 2, 3]])}
    out_xyz, out = inputs.filter_subsample(xyz, -1, [[-1, -1, -1], [1, 1, 1]], arrays)
    np.testing.assert_allclose(out_xyz, [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert out["a"].tolist() == [10, 12] and out["b"].tolist() == [[1, 3]]
    np.random.seed(0)
    drawn, _ = inputs.filter_subsample(xyz, 5, [[-1, -1, -1], [1, 1, 1]], arrays)
    assert len(drawn) == 5  # more than there are: falls back to drawing with replacement
    np.testing.assert_allclose(
        inputs.balanced_probabilities(np.array([1, 0, 0, 0])), [4, 4 / 3] + [4 / 3] * 2
    )
    assert inputs.balanced_probabilities(np.zeros(3)) is None


def test_rows_drawn_from_one_in_bounds_pass_equal_filter_subsample_per_row():
    """Balanced sampling transforms and bounds-checks the ground truth once, then draws each row:
    the same points, in the same RNG order, as one filter_subsample per row."""
    rng = np.random.default_rng(0)
    xyz, labels = rng.uniform(-2, 2, (200, 3)), (rng.random((3, 200)) < 0.2).astype(np.float32)
    bounds, transform = [[-1, -1, -1], [1, 1, 1]], np.eye(4)
    transform[:3, 3] = 0.25
    np.random.seed(0)
    expected = [
        inputs.filter_subsample(
            xyz, 20, bounds, {"label": row}, transform, inputs.balanced_probabilities(row)
        )
        for row in labels
    ]
    np.random.seed(0)
    moved, keep = inputs.in_bounds_points(xyz, bounds, transform)
    got = [
        inputs.subsample(moved, keep, 20, {"label": row}, inputs.balanced_probabilities(row))
        for row in labels
    ]
    for (xyz_got, out_got), (xyz_expected, out_expected) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(xyz_got, xyz_expected)
        np.testing.assert_array_equal(out_got["label"], out_expected["label"])


def test_dataset_config_from_training_args():
    args = options.training_parser("ovssc").parse_args(
        "--file_path d --log l --voxel_shape 64 64 32 --scene_bounds 0 0 0 1 2 3 --saliency_vmin 0.1"
        " --network_inputs patch_masks saliency --fix_mean_relevancy --no_domain_randomization"
        " --num_patches 7".split()
    )
    config = ds.DatasetConfig.from_args(args)
    assert config.tsdf_shape == (64, 64, 32)
    assert config.scene_bounds == ((0, 0, 0), (1, 2, 3))
    assert config.saliency_vmin == 0.1 and config.num_patches == 7
    assert config.network_inputs == ("patch_masks", "saliency")
    assert config.fix_mean_relevancy and not config.domain_randomization
    assert not config.return_vis and not config.use_synonyms
    default = ds.DatasetConfig.from_args(options.defaults())
    assert default.saliency_vmin is None and default.tsdf_shape == (128, 128, 128)
    assert default.domain_randomization  # the training flag's default (per split: train only)
    aware = options.finalize(
        options.training_parser("vool").parse_args(
            "--file_path d --log l --approach semantic_aware".split()
        )
    )
    assert ds.DatasetConfig.from_args(aware).network_inputs == ("rgb",)


def test_from_args_keeps_defaults_for_missing_flags():
    assert ds.DatasetConfig.from_args(argparse.Namespace()) == ds.DatasetConfig()
