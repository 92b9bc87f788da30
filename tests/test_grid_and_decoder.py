"""VirtualGrid indexing, point scattering and the decoder's trilinear sampling (quirks B1, B2)."""

import itertools

import numpy as np
import pytest
import torch

import decoder
import net
from grid import VirtualGrid

BOUNDS = net.DEFAULT_SCENE_BOUNDS


def test_grid_index_hand_computed_cases():
    grid = VirtualGrid(BOUNDS, (128, 128, 128))
    pitch = 2.0 / 127
    points = torch.tensor(
        [
            [-1.0, -1.0, -0.1],  # lower corner -> 0
            [1.0, 1.0, 1.9],  # upper corner -> 127 (the last index holds only the boundary)
            [0.0, 0.0, 0.9],  # centre: u = 63.5 -> 63
            [-1 + 5.5 * pitch, -1 + 0.99 * pitch, -0.1 + 126.2 * pitch],  # -> (5, 0, 126)
            [-3.0, 2.0, 0.0],  # outside: clamped -> (0, 127, 6)
        ]
    )
    expected = [(0, 0, 0), (127, 127, 127), (63, 63, 63), (5, 0, 126), (0, 127, int(0.1 / pitch))]
    voxel = grid.continuous_index(points).long()
    assert voxel.tolist() == [list(e) for e in expected]
    flat = grid.flat_index(points)
    assert flat.tolist() == [x * 128 * 128 + y * 128 + z for x, y, z in expected]


def test_grid_follows_input_dtype():
    grid = VirtualGrid(BOUNDS, (8, 8, 8))
    index = grid.continuous_index(torch.zeros(2, 3, dtype=torch.float64))
    assert index.dtype == torch.float64


def test_grid_rejects_bad_bounds():
    with pytest.raises(net.InputError, match="scene_bounds"):
        VirtualGrid([[0, 0, 0], [1, -1, 1]], (8, 8, 8))


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_scatter_matches_brute_force_loop(reduce):
    grid_shape = (6, 5, 4)
    grid = VirtualGrid(BOUNDS, grid_shape)
    g = torch.Generator().manual_seed(0)
    lower, upper = torch.tensor(BOUNDS)
    xyz = lower + torch.rand(2, 300, 3, generator=g) * (upper - lower)
    features = torch.randn(2, 300, 3, generator=g)
    volume = grid.scatter_points(xyz, features, reduce)
    assert volume.shape == (2, 3, *grid_shape)

    pitch = (upper - lower) / (torch.tensor(grid_shape) - 1)
    expected = np.zeros((2, 3, *grid_shape))
    for b in range(2):
        cells = {}
        for p, f in zip(xyz[b].tolist(), features[b].tolist(), strict=True):
            index = tuple(
                min(max(int((p[a] - lower[a].item()) / pitch[a].item()), 0), grid_shape[a] - 1)
                for a in range(3)
            )
            cells.setdefault(index, []).append(f)
        for (x, y, z), feats in cells.items():
            feats = np.array(feats)
            expected[b, :, x, y, z] = feats.mean(0) if reduce == "mean" else feats.max(0)
    np.testing.assert_allclose(volume.numpy(), expected, rtol=1e-5, atol=1e-6)


def _scattered_volume(network, xyz, values):
    seen = []
    network.vol_feature_extractor.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    output_xyz = torch.zeros(1, 1, 1, 3)
    network(input_xyz_pts=xyz, input_feature_pts=values, output_xyz_pts=output_xyz)
    return seen[0]


@pytest.mark.parametrize("fix, expected", [(False, 2.0), (True, 3.0)])
def test_semabs3d_scatter_is_mean_unless_fixed(fix, expected):
    """Quirk B1: two points with features 1 and 3 in one voxel give 2.0 although reduce_method is max."""
    network = net.SemAbs3D(
        voxel_shape=(8, 8, 8),
        unet_num_levels=2,
        unet_num_channels=1,
        unet_num_groups=1,
        use_pts_feat_extractor=False,
        reduce_method="max",
        fix_scatter_reduce=fix,
    )
    xyz = torch.tensor([[[0.01, 0.02, 0.93], [0.02, 0.01, 0.94]]])
    values = torch.tensor([[[[1.0], [3.0]]]])  # [B=1, P=1, N=2, F=1]
    volume = _scattered_volume(network, xyz, values)
    index = tuple(network.virtual_grid.continuous_index(xyz[0, 0]).long().tolist())
    assert volume[0, 0][index].item() == expected
    assert volume.sum().item() == expected  # every other voxel is empty (0)


def _trilinear_border(volume: np.ndarray, position) -> np.ndarray:
    """volume [C,X,Y,Z] at a continuous (a, b, c) voxel position, clamping to the border."""
    sizes = volume.shape[1:]
    position = [min(max(p, 0.0), s - 1) for p, s in zip(position, sizes, strict=True)]
    base = [min(int(np.floor(p)), s - 2) for p, s in zip(position, sizes, strict=True)]
    frac = [p - b for p, b in zip(position, base, strict=True)]
    value = np.zeros(volume.shape[0])
    for corner in itertools.product((0, 1), repeat=3):
        weight = np.prod([f if c else 1 - f for f, c in zip(frac, corner, strict=True)])
        value += weight * volume[:, base[0] + corner[0], base[1] + corner[1], base[2] + corner[2]]
    return value


@pytest.mark.parametrize("fix", [False, True])
def test_decoder_sampling_against_independent_trilinear(fix):
    G = 8
    grid = VirtualGrid(BOUNDS, (G, G, G))
    lookup = decoder.ImplicitVolumetricDecoder(
        hidden_size=4, output_dim=1, concat_xyz_pts=True, fix_sampling=fix
    )
    lookup.mlp = torch.nn.Identity()  # look at what the MLP would receive
    g = torch.Generator().manual_seed(1)
    volume = torch.randn(1, 4, G, G, G, generator=g)
    lower, upper = torch.tensor(BOUNDS)
    queries = lower + torch.rand(1, 50, 3, generator=g) * (upper - lower)
    out = lookup(volume, grid, queries)[0]  # [M, 4 + 3]

    for query, row in zip(queries[0], out, strict=True):
        u = ((query - lower) * (G - 1) / (upper - lower)).tolist()  # continuous (ux, uy, uz)
        if fix:
            # read in (x,y,z) order, half a voxel down: grid position i holds the voxel [i, i+1)
            position = [c - 0.5 for c in u]
            coords = [2 * p / (G - 1) - 1 for p in position]
        else:
            # Quirk B2: normalised by G, and read with x and z swapped: (uz, uy, ux) * (G-1)/G.
            position = [u[2] * (G - 1) / G, u[1] * (G - 1) / G, u[0] * (G - 1) / G]
            coords = [2 * c / G - 1 for c in u]
        np.testing.assert_allclose(
            row[:4].numpy(), _trilinear_border(volume[0].numpy(), position), atol=1e-5
        )
        np.testing.assert_allclose(row[4:].numpy(), coords, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_sample_trilinear_equals_grid_sample_values_and_gradients(channels_last):
    g = torch.Generator().manual_seed(2)
    volume = torch.randn(2, 3, 5, 6, 7, generator=g)  # D, H, W all different
    if channels_last:
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    volume.requires_grad_()
    grid = torch.rand(2, 200, 3, generator=g) * 2.4 - 1.2  # some outside [-1, 1]: border padding
    grid[0, :3] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])  # corners
    expected = (
        torch.nn.functional.grid_sample(
            volume, grid.view(2, -1, 1, 1, 3), "bilinear", "border", align_corners=True
        )
        .view(2, 3, -1)
        .transpose(1, 2)
    )
    got = decoder.sample_trilinear(volume, grid)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    weights = torch.randn(expected.shape, generator=g)
    (expected_grad,) = torch.autograd.grad(expected, volume, weights)
    (got_grad,) = torch.autograd.grad(got, volume, weights)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_weighted_row_sum_equals_embedding_bag_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 30, (50, 8), generator=g)
    rows[:5] = 7  # repeated rows within one query and across queries
    table = torch.randn(30, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.rand(50, 8, dtype=torch.float64, generator=g, requires_grad=True)
    expected = torch.nn.functional.embedding_bag(
        rows, table, per_sample_weights=weights, mode="sum"
    )
    got = decoder.WeightedRowSum.apply(rows, table, weights)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn(50, 4, dtype=torch.float64, generator=g)
    for grad, want in zip(
        torch.autograd.grad(got, (table, weights), upstream),
        torch.autograd.grad(expected, (table, weights), upstream),
        strict=True,
    ):
        torch.testing.assert_close(grad, want)
    # A hand-computed entry: table row 7 collects every weight of the first five queries.
    (table_grad,) = torch.autograd.grad(
        decoder.WeightedRowSum.apply(rows, table, weights), table, upstream
    )
    by_hand = sum(
        weights[m, k] * upstream[m] for m in range(50) for k in range(8) if rows[m, k] == 7
    )
    torch.testing.assert_close(table_grad[7], by_hand)


def test_fixed_decoder_reads_back_the_voxel_a_point_was_scattered_into():
    G = 6
    grid = VirtualGrid(BOUNDS, (G, G, G))
    lookup = decoder.ImplicitVolumetricDecoder(
        hidden_size=2, output_dim=1, concat_xyz_pts=False, fix_sampling=True
    )
    lookup.mlp = torch.nn.Identity()
    lower, upper = torch.tensor(BOUNDS)
    step = (upper - lower) / (G - 1)  # voxel i spans [i, i+1) in grid index
    voxels = torch.tensor([[1, 4, 2], [4, 0, 3], [0, 0, 0], [2, 2, 2]])
    g = torch.Generator().manual_seed(4)
    points = lower + (voxels + torch.rand(4, 3, generator=g)) * step  # anywhere inside each voxel
    features = torch.randn(1, 4, 2, generator=g)
    volume = grid.scatter_points(points[None], features)  # [1, 2, G, G, G]
    centres = lower + (voxels + 0.5) * step
    out = lookup(volume, grid, centres[None])[0]
    torch.testing.assert_close(out, features[0], atol=1e-5, rtol=1e-5)
    # the centre of an empty neighbour, one voxel above along x, reads nothing
    empty = lookup(volume, grid, (centres[3] + step * torch.tensor([1.0, 0, 0]))[None, None])
    torch.testing.assert_close(empty, torch.zeros(1, 1, 2))


@pytest.mark.parametrize(
    "method, reference",
    [
        ("cosine_sim", lambda k, q: torch.nn.functional.cosine_similarity(k, q, dim=-1) / 0.07),
        ("dot_product", lambda k, q: (k * q).sum(-1) / 4.0),
    ],
)
def test_pointing_attention_formulas(method, reference):
    pointer = decoder.PointingAttention(16, method)
    key, query = torch.randn(3, 5, 16), torch.randn(3, 2, 16)
    logits = pointer(key, query)
    assert logits.shape == (3, 5, 2)
    for k, q in itertools.product(range(5), range(2)):
        torch.testing.assert_close(logits[:, k, q], reference(key[:, k], query[:, q]))


def test_cosine_pointing_of_a_zero_vector_is_zero():
    """Each length is clamped to 1e-8 as F.cosine_similarity clamps it: a zero key or query gives 0."""
    pointer = decoder.PointingAttention(4, "cosine_sim")
    key, query = torch.randn(1, 3, 4), torch.randn(1, 2, 4)
    key[0, 1], query[0, 0] = 0, 0
    logits = pointer(key, query)
    expected = torch.nn.functional.cosine_similarity(key[:, :, None], query[:, None], dim=-1) / 0.07
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected)
    assert (logits[0, 1] == 0).all() and (logits[0, :, 0] == 0).all()


def test_additive_pointing_has_its_vector():
    pointer = decoder.PointingAttention(8, "additive")
    assert pointer.pointer_v.weight.shape == (1, 8)
    key, query = torch.randn(2, 4, 8), torch.randn(2, 1, 8)
    expected = torch.tanh(key + query) @ pointer.pointer_v.weight[0]
    torch.testing.assert_close(pointer(key, query)[..., 0], expected)


def test_numpy_grid_index_of_geometry_agrees_with_virtual_grid():
    import geometry

    rng = np.random.default_rng(0)
    lower, upper = np.array(BOUNDS)
    xyz = rng.uniform(lower - 0.2, upper + 0.2, size=(5000, 3)).astype(np.float32)  # some outside
    for shape in [(128, 128, 128), (64, 32, 16)]:
        ours = VirtualGrid(BOUNDS, shape).continuous_index(torch.from_numpy(xyz)).long().numpy()
        np.testing.assert_array_equal(geometry.grid_index(xyz, np.array(BOUNDS), shape), ours)
