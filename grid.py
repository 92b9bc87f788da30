"""The network's voxel grid: `VirtualGrid` maps metric points to voxels and scatters point features
into a feature volume (docs/method.md#the-voxel-grid). Its index convention is
geometry.continuous_grid_index, which the numpy side (geometry.grid_index) shares; net.py and
metrics.py both index through it.
"""

from __future__ import annotations

import math

import torch

from geometry import (
    DEFAULT_SCENE_BOUNDS,
    DEFAULT_VOXEL_SHAPE,
    continuous_grid_index,
    flat_grid_index,
)
from utils import InputError


class VirtualGrid:
    """A regular grid of G = grid_shape points spanning scene_bounds
    (docs/method.md#the-voxel-grid), indexed by geometry's convention: continuous index
    u = (p - lower) * (G - 1) / (upper - lower), clamped to [0, G-1], voxel index trunc(u), flat
    index x slowest. Holds no device: it follows its inputs (fix B9: the original's grid kept the
    device it was built on).
    """

    def __init__(self, scene_bounds=DEFAULT_SCENE_BOUNDS, grid_shape=DEFAULT_VOXEL_SHAPE):
        bounds = torch.as_tensor(scene_bounds, dtype=torch.float32)
        if bounds.shape != (2, 3) or not bool((bounds[1] > bounds[0]).all()):
            raise InputError(
                f"scene_bounds must be [[x0,y0,z0],[x1,y1,z1]] with x1>x0 etc, got {bounds.tolist()}"
            )
        self.lower, self.upper = bounds[0], bounds[1]
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.num_voxels = math.prod(self.grid_shape)

    def continuous_index(self, xyz: torch.Tensor) -> torch.Tensor:
        """[..., 3] metres -> [..., 3] float index in [0, G-1], in xyz's dtype."""
        lower, upper = self.lower.to(xyz), self.upper.to(xyz)
        max_index = torch.tensor(self.grid_shape, dtype=xyz.dtype, device=xyz.device) - 1
        return continuous_grid_index(xyz, lower, upper, max_index)

    def flat_index(self, xyz: torch.Tensor) -> torch.Tensor:
        """[..., 3] metres -> [...] int64 flat voxel index (truncation, x slowest)."""
        return flat_grid_index(self.continuous_index(xyz).long(), self.grid_shape)

    def scatter_points(
        self, xyz: torch.Tensor, features: torch.Tensor, reduce: str = "mean"
    ) -> torch.Tensor:
        """xyz [B,N,3], features [B,N,C] -> volume [B,C,X,Y,Z]; voxels without points are 0.

        reduce: "mean" or "max" over the points that fall in a voxel.
        """
        batch, num_points, channels = features.shape
        batch_offset = torch.arange(batch, device=xyz.device)[:, None] * self.num_voxels
        index = (self.flat_index(xyz) + batch_offset).reshape(-1)  # [B*N]
        flat_features = features.reshape(-1, channels)  # [B*N, C]
        if reduce == "mean":
            sums = features.new_zeros(batch * self.num_voxels, channels).index_add_(
                0, index, flat_features
            )
            counts = torch.bincount(index, minlength=batch * self.num_voxels).clamp_(min=1)
            volume = sums.div_(counts[:, None].to(sums.dtype))  # in place: index_add_ keeps nothing
        elif reduce == "max":
            volume = features.new_zeros(batch * self.num_voxels, channels).scatter_reduce(
                0,
                index[:, None].expand(-1, channels),
                flat_features,
                reduce="amax",
                include_self=False,
            )
        else:
            raise ValueError(f"unknown scatter reduce {reduce!r}: use 'mean' or 'max'")
        return volume.view(batch, *self.grid_shape, channels).permute(0, 4, 1, 2, 3)
