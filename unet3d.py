"""Residual 3D UNet (docs/method.md#point-encoder-and-residual-unet).

The architecture of wolny/pytorch-3dunet's ResidualUNet3D as Semantic Abstraction uses it: layer order
"gcr" (GroupNorm, Conv3d without bias, ReLU), residual blocks of three convolutions, max-pool
downsampling, transposed-convolution upsampling joined to the skip connection by summation, and a
final 1x1x1 convolution without activation. Module names match the released checkpoints
(`encoders.{i}.basic_module.conv{1,2,3}.{groupnorm,conv}`, `decoders.{i}.upsampling.upsample`, ...).

With the defaults (16 channels in and out, f_maps 16, 6 levels) the UNet has 35,384,416 parameters.
SingleConv runs its GroupNorm -> Conv3d pair through unet3d_backward.GroupNormConv3d, the fused
function whose backward pass (and its CPU kernels) live there; on small CPU volumes its convolutions
and the final 1x1x1 one go to oneDNN, or a matrix product, where ATen would run its own slow loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unet3d_backward import GroupNorm, GroupNormConv3d, pointwise_conv3d


def maybe_checkpoint(enabled: bool, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """module(*inputs), recomputed in the backward pass instead of stored when enabled."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)


class SingleConv(nn.Sequential):
    """GroupNorm -> Conv3d (k3, no bias) [-> ReLU]: order "gcr", or "gc" with activation=False.

    Runs through unet3d_backward.GroupNormConv3d, except under autocast, where the convolution runs
    as its module does (in bf16) and the normalisation in fp32 (as autocast keeps GroupNorm) through
    unet3d_backward.GroupNorm, for its faster backward pass.
    """

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.groupnorm
        if torch.is_autocast_enabled(x.device.type):
            normalised = GroupNorm.apply(
                x.float(), norm.weight, norm.bias, norm.num_groups, norm.eps
            )
            out = self.conv(normalised)
        else:
            out = GroupNormConv3d.apply(
                x, norm.weight, norm.bias, self.conv.weight, norm.num_groups, norm.eps
            )
        return F.relu(out, inplace=True) if len(self) == 3 else out


class ExtResNetBlock(nn.Module):
    """Three SingleConvs; the output of the first one is the residual: relu(conv3(conv2(h)) + h).

    checkpoint_convs: recompute each SingleConv in the backward pass (set by the UNet).
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.conv1 = SingleConv(in_channels, out_channels, num_groups)
        self.conv2 = SingleConv(out_channels, out_channels, num_groups)
        self.conv3 = SingleConv(out_channels, out_channels, num_groups, activation=False)
        self.checkpoint_convs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = maybe_checkpoint(self.checkpoint_convs, self.conv1, x)
        out = maybe_checkpoint(self.checkpoint_convs, self.conv2, residual)
        out = maybe_checkpoint(self.checkpoint_convs, self.conv3, out)
        return F.relu(out.add_(residual), inplace=True)  # in place: conv3's output is not saved


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
        x = self.upsampling(x, output_size=skip.shape[2:]).add_(skip)  # in place: not saved
        return self.basic_module(x)


class ResidualUNet3D(nn.Module):
    """[B, in_channels, X, Y, Z] -> [B, out_channels, X, Y, Z]; X, Y, Z divisible by 2^(levels-1).

    Weights and activations use the channels-last (NDHWC) layout, which oneDNN and cuDNN convolve
    faster; results equal the channels-first computation up to float rounding. State-dict shapes and
    names do not change.

    activation_checkpointing: recompute every encoder and decoder block in the backward pass instead of
    storing its activations; in the full-resolution blocks each convolution is also recomputed on its
    own. Same outputs and gradients, a fraction of the memory, about one more forward pass of compute.
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
        for full_resolution_block in (self.encoders[0], self.decoders[-1]):
            full_resolution_block.basic_module.checkpoint_convs = activation_checkpointing
        self.to(memory_format=torch.channels_last_3d)  # conv weights too, else some convs fall back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for encoder in self.encoders:
            x = maybe_checkpoint(self.activation_checkpointing, encoder, x)
            skips.append(x)
        # The deepest encoder output is the decoders' input, not a skip connection. The last decoder
        # and the final conv are recomputed together, so no full-resolution tensor between them is kept.
        *inner_decoders, last_decoder = self.decoders
        for decoder, skip in zip(inner_decoders, reversed(skips[1:-1])):
            x = maybe_checkpoint(self.activation_checkpointing, decoder, skip, x)
        head = lambda skip, h: pointwise_conv3d(last_decoder(skip, h), self.final_conv)  # noqa: E731
        return maybe_checkpoint(self.activation_checkpointing, head, skips[0], x)
