"""Residual 3D UNet (spec: models.md section 1.3).

The architecture of wolny/pytorch-3dunet's ResidualUNet3D as Semantic Abstraction uses it: layer order
"gcr" (GroupNorm, Conv3d without bias, ReLU), residual blocks of three convolutions, max-pool
downsampling, transposed-convolution upsampling joined to the skip connection by summation, and a
final 1x1x1 convolution without activation. Module names match the released checkpoints
(`encoders.{i}.basic_module.conv{1,2,3}.{groupnorm,conv}`, `decoders.{i}.upsampling.upsample`, ...).

With the defaults (16 channels in and out, f_maps 16, 6 levels) the UNet has 35,384,416 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class SingleConv(nn.Sequential):
    """GroupNorm -> Conv3d (k3, no bias) [-> ReLU]: order "gcr", or "gc" with activation=False."""

    def __init__(
        self, in_channels: int, out_channels: int, num_groups: int, activation: bool = True
    ):
        super().__init__()
        # Too few channels for the asked number of groups falls back to one group.
        groups = num_groups if in_channels >= num_groups else 1
        self.add_module("groupnorm", nn.GroupNorm(groups, in_channels))
        self.add_module("conv", nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False))
        if activation:
            self.add_module("ReLU", nn.ReLU(inplace=True))


class ExtResNetBlock(nn.Module):
    """Three SingleConvs; the output of the first one is the residual: relu(conv3(conv2(h)) + h)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.conv1 = SingleConv(in_channels, out_channels, num_groups)
        self.conv2 = SingleConv(out_channels, out_channels, num_groups)
        self.conv3 = SingleConv(out_channels, out_channels, num_groups, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        return F.relu(self.conv3(self.conv2(residual)) + residual, inplace=True)


class Encoder(nn.Module):
    """Optional 2x max-pooling, then a residual block."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, pool: bool):
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=2) if pool else nn.Identity()
        self.basic_module = ExtResNetBlock(in_channels, out_channels, num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(self.pooling(x))


class TransposeConvUpsampling(nn.Module):
    """ConvTranspose3d(k3, stride 2, pad 1) whose output size is that of the skip tensor."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, output_size: torch.Size) -> torch.Tensor:
        return self.upsample(x, output_size=output_size)


class Decoder(nn.Module):
    """Upsample to the skip tensor's size, add the skip tensor, then a residual block."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.upsampling = TransposeConvUpsampling(in_channels, out_channels)
        self.basic_module = ExtResNetBlock(out_channels, out_channels, num_groups)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.upsampling(x, output_size=skip.shape[2:]) + skip
        return self.basic_module(x)


class ResidualUNet3D(nn.Module):
    """[B, in_channels, X, Y, Z] -> [B, out_channels, X, Y, Z]; X, Y, Z divisible by 2^(levels-1).

    activation_checkpointing: recompute each encoder and decoder block in the backward pass instead of
    storing its activations. Same outputs and gradients, much less memory, some extra compute.
    """

    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        f_maps: int = 16,
        num_groups: int = 8,
        num_levels: int = 6,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        feature_maps = [f_maps * 2**level for level in range(num_levels)]  # [16, 32, ..., 512]
        self.encoders = nn.ModuleList(
            Encoder(c_in, c_out, num_groups, pool=level > 0)
            for level, (c_in, c_out) in enumerate(zip([in_channels] + feature_maps, feature_maps))
        )
        reversed_maps = feature_maps[::-1]
        self.decoders = nn.ModuleList(
            Decoder(c_in, c_out, num_groups)
            for c_in, c_out in zip(reversed_maps, reversed_maps[1:])
        )
        self.final_conv = nn.Conv3d(f_maps, out_channels, 1)
        self.activation_checkpointing = activation_checkpointing

    def _run(self, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = self._run(encoder, x)
            skips.append(x)
        # The deepest encoder output is the decoders' input, not a skip connection.
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = self._run(decoder, skip, x)
        return self.final_conv(x)
