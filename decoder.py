"""What the networks of net.py read their outputs with (docs/method.md#implicit-decoder,
docs/method.md#pointing): the trilinear lookup of a feature volume at query points
(`sample_trilinear`, with its row-wise backward `WeightedRowSum`), `ImplicitVolumetricDecoder`
(the lookup, then an MLP), the point MLP, and `PointingAttention` between keys and queries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grid import VirtualGrid
from utils import InputError
from vocab import POINTING_METHODS


def sample_trilinear(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """volume [B,C,D,H,W], grid [B,M,3] in [-1,1] -> [B,M,C].

    F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True), including
    its axis order (the last grid component indexes D), computed as a weighted sum of 8 gathered channel
    rows of the channels-last volume. grid_sample's CPU backward scatters one channel at a time, a cache
    miss per channel and corner; here every corner is one row, which makes the backward ~3x faster
    at 400k queries on 128^3 x 16. Results equal grid_sample up to float rounding (tested).
    """
    batch, channels, *sizes = volume.shape
    size = torch.tensor(sizes[::-1], dtype=grid.dtype, device=grid.device)  # (W, H, D): grid order
    index = torch.minimum(((grid + 1) / 2 * (size - 1)).clamp(min=0), size - 1)  # [B,M,3]
    lower = index.floor()
    weight_upper, weight_lower = index - lower, (lower + 1) - index
    lower = lower.long()
    upper = torch.minimum(lower + 1, size.long() - 1)  # its weight is 0 on the last voxel
    depth, height, width = sizes
    axis_strides = (1, width, width * height)  # flat index of (w, h, d) within one volume
    first_row = (torch.arange(batch, device=grid.device) * (depth * height * width))[:, None]
    rows, weights = [], []
    for corner in range(8):  # bit a of corner: the upper neighbour along grid axis a
        row, weight = first_row, 1.0
        for axis in range(3):
            take_upper = (corner >> axis) & 1
            row = row + (upper if take_upper else lower)[..., axis] * axis_strides[axis]
            weight = weight * (weight_upper if take_upper else weight_lower)[..., axis]
        rows.append(row)
        weights.append(weight)
    table = volume.permute(0, 2, 3, 4, 1).reshape(-1, channels)  # a view when channels-last
    if torch.is_autocast_enabled(volume.device.type):
        table = table.float()  # autocast runs grid_sample in float32 too
    sampled = WeightedRowSum.apply(
        torch.stack(rows, -1).view(-1, 8),
        table,
        torch.stack(weights, -1).view(-1, 8).to(table.dtype),
    )  # [B*M, C]
    return sampled.view(batch, -1, channels)


class WeightedRowSum(torch.autograd.Function):
    """rows [M,K], table [R,C], weights [M,K] -> [M,C]: sum over k of weights[m,k] * table[rows[m,k]].

    F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum") with another backward: the
    table's gradient is K index_add_ calls, one per column of rows, where embedding_bag's dense backward
    sorts all M*K indices first; ~3x faster at 400k queries and K = 8 on 2 CPU cores.
    """

    @staticmethod
    def forward(ctx, rows, table, weights):
        ctx.save_for_backward(rows, weights, table if ctx.needs_input_grad[2] else None)
        ctx.num_rows = table.shape[0]
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        rows, weights, table = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_table = grad_out.new_zeros(ctx.num_rows, grad_out.shape[1])
            for column in range(rows.shape[1]):
                grad_table.index_add_(0, rows[:, column], grad_out * weights[:, column, None])
        if ctx.needs_input_grad[2]:
            grad_weights = torch.einsum("mkc,mc->mk", table[rows], grad_out)
        return None, grad_table, grad_weights


def distinct_rows(features: torch.Tensor, rows_per_scene: int) -> tuple[torch.Tensor, torch.Tensor]:
    """features [R,N,F], rows grouped by scene (`rows_per_scene` consecutive rows each) -> (the first
    row of each distinct (scene, features) [R'], and for every row the position of its own among
    them [R]): the rows a network computes once."""
    first, inverse = [], []
    for row in range(len(features)):
        start = row - row % rows_per_scene
        same = (k for k, kept in enumerate(first) if kept >= start)
        match = next((k for k in same if torch.equal(features[first[k]], features[row])), None)
        if match is None:
            match = len(first)
            first.append(row)
        inverse.append(match)
    device = features.device
    return torch.tensor(first, device=device), torch.tensor(inverse, device=device)


def point_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Per-point MLP of the point feature extractor: Linear, LeakyReLU, Linear, LeakyReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden_dim, hidden_dim),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden_dim, out_dim),
    )


class ImplicitVolumetricDecoder(nn.Module):
    """Trilinear feature lookup at query points, then an MLP (docs/method.md#implicit-decoder).

    features [B',C,X,Y,Z], queries [B',M,3] metres -> [B',M,output_dim].
    """

    def __init__(
        self, hidden_size: int, output_dim: int, concat_xyz_pts: bool, fix_sampling: bool = False
    ):
        super().__init__()
        self.concat_xyz_pts = concat_xyz_pts
        self.fix_sampling = fix_sampling
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size + 3 * concat_xyz_pts, hidden_size),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden_size, output_dim),
        )

    def normalized_query(self, grid: VirtualGrid, query_points: torch.Tensor) -> torch.Tensor:
        """[B',M,3] metres -> [B',M,3] grid coordinates in (x,y,z) order.

        The scatter puts a point at continuous index u into voxel trunc(u), whose points lie in
        [i, i+1) and centre on i + 0.5, and stores it at grid position i. The fix samples at u - 0.5,
        so that a query reads the voxel it lies in, fully at its centre. Read at u instead, a query at
        a voxel centre would get half of its own voxel per axis (1/8 in 3D), the rest from the voxels
        above it: every feature shifted half a voxel, a blur the network must learn to undo.
        """
        index = grid.continuous_index(query_points)
        shape = torch.tensor(grid.grid_shape, dtype=index.dtype, device=index.device)
        if self.fix_sampling:
            # align_corners positions: -1 is grid position 0; border padding clamps below it
            return 2 * (index - 0.5) / (shape - 1) - 1
        return 2 * index / shape - 1  # quirk B2: divides by G, so in [-1, 1 - 2/G]

    def forward(
        self, features: torch.Tensor, grid: VirtualGrid, query_points: torch.Tensor
    ) -> torch.Tensor:
        coords = self.normalized_query(grid, query_points)  # [B',M,3]
        return self.head(self.sample(features, coords), coords)

    def sample(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """features [B',C,X,Y,Z] at normalized_query coordinates [B',M,3] -> [B',M,C]."""
        # grid_sample reads the last coordinate as the volume's first spatial axis (X). Quirk B2 hands
        # over (x,y,z) as is, so x and z are swapped; the fix reverses the order to (z,y,x).
        return sample_trilinear(features, coords.flip(-1) if self.fix_sampling else coords)

    def head(self, point_features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Sampled features [B',M,C] (and their coordinates [B',M,3]) -> [B',M,output_dim]."""
        if self.concat_xyz_pts:
            point_features = torch.cat([point_features, coords], dim=-1)
        return self.mlp(point_features)


class PointingAttention(nn.Module):
    """Logits between keys [..., K, D] and queries [..., Q, D] -> [..., K, Q]
    (docs/method.md#pointing)."""

    TEMPERATURE = 0.07  # fixed, not learned

    def __init__(self, pointing_dim: int, method: str = "cosine_sim"):
        super().__init__()
        if method not in POINTING_METHODS:
            raise InputError(
                f"unknown pointing_method {method!r}: use {', '.join(POINTING_METHODS[:-1])} or "
                f"{POINTING_METHODS[-1]}"
            )
        self.method = method
        self.pointing_dim = pointing_dim
        if method == "additive":
            self.pointer_v = nn.Linear(pointing_dim, 1, bias=False)

    def forward(self, key: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        if self.method == "cosine_sim":
            # F.cosine_similarity(key, query, dim=-1) of every pair (each norm clamped to 1e-8), as
            # one matrix product: broadcast, it built and normalised K x Q copies of the query
            # (12x slower at 100k keys); equal up to float rounding
            return (key @ unit(query).transpose(-1, -2)) / (norm(key) * self.TEMPERATURE)
        if self.method == "dot_product":
            return (key @ query.transpose(-1, -2)) / math.sqrt(self.pointing_dim)
        key, query = key.unsqueeze(-2), query.unsqueeze(-3)  # [..., K, 1, D], [..., 1, Q, D]
        return self.pointer_v(torch.tanh(key + query)).squeeze(-1)


def norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[..., D] -> [..., 1]: the vectors' lengths, at least eps (F.cosine_similarity's clamp)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def unit(x: torch.Tensor) -> torch.Tensor:
    """[..., D] vectors scaled to length 1 (x / norm(x))."""
    return x / norm(x)
