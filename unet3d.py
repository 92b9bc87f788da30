"""Residual 3D UNet (spec: models.md section 1.3).

The architecture of wolny/pytorch-3dunet's ResidualUNet3D as Semantic Abstraction uses it: layer order
"gcr" (GroupNorm, Conv3d without bias, ReLU), residual blocks of three convolutions, max-pool
downsampling, transposed-convolution upsampling joined to the skip connection by summation, and a
final 1x1x1 convolution without activation. Module names match the released checkpoints
(`encoders.{i}.basic_module.conv{1,2,3}.{groupnorm,conv}`, `decoders.{i}.upsampling.upsample`, ...).

With the defaults (16 channels in and out, f_maps 16, 6 levels) the UNet has 35,384,416 parameters.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(enabled: bool, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """module(*inputs), recomputed in the backward pass instead of stored when enabled."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)


# conv3d_weight_grad: grad_out bytes per chunk of rows, and matrix products per chunk and kernel tap.
WEIGHT_GRAD_CHUNK_BYTES, WEIGHT_GRAD_SPLIT = 2 << 20, 2
# CPU volumes from which the backward pass computes the weight gradient and GroupNorm's backward
# itself instead of with ATen's kernels: on smaller ones those were as fast or faster (2 AVX2 cores).
OWN_BACKWARD_MIN_VOXELS = 128**3


def own_backward(x: torch.Tensor) -> bool:
    """Whether GroupNormConv3d's backward pass on volumes x [B, C, D, H, W] uses our kernels."""
    return x.device.type == "cpu" and x[0, 0].numel() >= OWN_BACKWARD_MIN_VOXELS


def weight_grad_layout(shape: torch.Size, out_channels: int) -> tuple[int, int, int]:
    """For volumes [B, *, D, H, W]: conv3d_weight_grad's rows per chunk, and how many rows of grad_out
    and of the input it reads (whole chunks of grad rows; for the input, the largest tap offset more)."""
    batch, _, depth, height, width = shape
    grad_rows = batch * (depth + 2) * (height + 2) * (width + 2)
    rows_per_product = WEIGHT_GRAD_CHUNK_BYTES // (4 * out_channels * WEIGHT_GRAD_SPLIT)
    chunk = WEIGHT_GRAD_SPLIT * min(rows_per_product, -(-grad_rows // WEIGHT_GRAD_SPLIT))
    grad_rows += -grad_rows % chunk
    largest_tap = (2 * (height + 2) + 2) * (width + 2) + 2
    return chunk, grad_rows, grad_rows + largest_tap


def padded_rows(shape: torch.Size, channels: int, num_rows: int, like: torch.Tensor):
    """Zeroed rows [num_rows, channels] for volumes of shape [B, *, D, H, W] with a one-voxel border,
    and the view [B, channels, D+2, H+2, W+2] of those volumes.

    Voxel (b, x, y, z) of the padded volumes is row ((b*(D+2) + x)*(H+2) + y)*(W+2) + z; the rows
    after the last volume stay zero.
    """
    batch, _, *sizes = shape
    padded = [size + 2 for size in sizes]
    volumes = batch * padded[0] * padded[1] * padded[2]
    rows = like.new_zeros(max(num_rows, volumes), channels)
    return rows, rows[:volumes].view(batch, *padded, channels).permute(0, 4, 1, 2, 3)


def conv3d_weight_grad(grad_out: torch.Tensor, input_rows: torch.Tensor) -> torch.Tensor:
    """Gradient of conv3d(x, weight [O, I, 3, 3, 3], padding=1) with respect to weight.

    grad_out [B, O, D, H, W]; input_rows from padded_rows(x.shape, I, weight_grad_layout(...)[2]), with
    x at [1:-1] of each padded axis. Put grad_out in such rows too, at [:-2]: then kernel tap (a, b, c)
    pairs grad row q with input row q + (a*(H+2) + b)*(W+2) + c, and the tap's gradient is a matrix
    product [O, rows] @ [rows, I] of plain row ranges. The rows go in chunks that stay in cache across
    the 27 taps; each chunk is split into WEIGHT_GRAD_SPLIT products of one batched call (one thread
    each). oneDNN instead copies the input 27 times (im2col) on AVX2 CPUs.
    """
    out_channels, in_channels = grad_out.shape[1], input_rows.shape[1]
    height, width = grad_out.shape[3:]
    chunk, num_grad_rows, _ = weight_grad_layout(grad_out.shape, out_channels)
    grad_rows, grad_volumes = padded_rows(grad_out.shape, out_channels, num_grad_rows, grad_out)
    grad_volumes[:, :, :-2, :-2, :-2] = grad_out
    grad_chunks = grad_rows.view(-1, WEIGHT_GRAD_SPLIT, chunk // WEIGHT_GRAD_SPLIT, out_channels)
    taps = [
        (a * (height + 2) + b) * (width + 2) + c
        for a, b, c in itertools.product(range(3), repeat=3)
    ]
    grad_weight = grad_out.new_zeros(27, WEIGHT_GRAD_SPLIT, out_channels, in_channels)
    tap_sums = grad_weight.unbind(0)  # [split, O, I] each, summed into in place
    for start, grad_chunk in zip(range(0, num_grad_rows, chunk), grad_chunks.transpose(2, 3)):
        for tap_sum, offset in zip(tap_sums, taps):
            input_chunk = input_rows[start + offset : start + offset + chunk]
            tap_sum.baddbmm_(grad_chunk, input_chunk.view(WEIGHT_GRAD_SPLIT, -1, in_channels))
    grad_weight = grad_weight.sum(1).view(3, 3, 3, out_channels, in_channels)
    return grad_weight.permute(3, 4, 0, 1, 2)


def normalised_conv_weight_grad(grad_out, x, scale, shift, weight) -> torch.Tensor:
    """Gradient of conv3d(x * scale + shift, weight, padding=1) with respect to weight, the normalised
    input recomputed: if own_backward(x) straight into conv3d_weight_grad's padded rows (~0.4 s less
    per default OVSSC training step on 2 cores, 3%), else for convolution_backward.
    """
    if not own_backward(x):
        normalised = torch.addcmul(shift, x, scale)
        return torch.ops.aten.convolution_backward(
            grad_out, normalised, weight, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1,
            [False, True, False],
        )[1]  # fmt: skip
    *_, num_input_rows = weight_grad_layout(x.shape, weight.shape[0])
    input_rows, input_volumes = padded_rows(x.shape, x.shape[1], num_input_rows, x)
    torch.addcmul(shift, x, scale, out=input_volumes[:, :, 1:-1, 1:-1, 1:-1])
    return conv3d_weight_grad(grad_out, input_rows)


def group_norm_backward(grad_out, x, mean, rstd, gamma, groups: int, input_grad: bool):
    """Gradients of group_norm(x, groups, gamma, beta) for x (None unless input_grad), gamma and beta.

    x, grad_out [B, C, D, H, W]; mean, rstd [B, groups] from native_group_norm. If own_backward(x),
    from two per-channel sums, of grad_out and of grad_out * x (the diagonal of one [C, S] @ [S, C]
    product per sample), and two multiply-add passes: ATen's channels-last kernel took twice as long
    at 128^3 x 16 on 2 CPU cores (~0.1 s more per volume, ~0.5 s per default OVSSC training step).
    """
    batch, channels = x.shape[:2]
    if not own_backward(x):
        return torch.ops.aten.native_group_norm_backward(
            grad_out, x, mean, rstd, gamma, batch, channels, x[0, 0].numel(), groups,
            [input_grad, True, True],
        )  # fmt: skip
    grad_flat, x_flat = grad_out.flatten(2), x.flatten(2)  # [B, C, S] views
    per_group = (batch, groups, channels // groups)
    grad_sum = grad_flat.sum(2).view(per_group)
    grad_x_sum = torch.bmm(grad_flat, x_flat.transpose(1, 2)).diagonal(dim1=1, dim2=2)  # [B, C]
    mean, rstd = mean[..., None], rstd[..., None]  # [B, groups, 1]
    grad_xhat_sum = rstd * (grad_x_sum.view(per_group) - mean * grad_sum)  # of grad_out * x-hat
    grad_gamma, grad_beta = grad_xhat_sum.sum(0).view(channels), grad_sum.sum(0).view(channels)
    if not input_grad:
        return None, grad_gamma, grad_beta
    # d x = rstd * (gamma * grad_out - mean(gamma * grad_out) - x-hat * mean(gamma * grad_out * x-hat)),
    # means over each group's elements; written as a * grad_out + b * x + c per channel.
    gamma = gamma.view(per_group[1:])
    group_size = channels // groups * x[0, 0].numel()
    mean_grad = (gamma * grad_sum).sum(-1, keepdim=True) / group_size  # [B, groups, 1]
    mean_grad_xhat = (gamma * grad_xhat_sum).sum(-1, keepdim=True) / group_size
    per_channel = (batch, channels, 1, 1, 1)
    a = (rstd * gamma).view(per_channel)
    b = (-rstd * rstd * mean_grad_xhat).expand(per_group).reshape(per_channel)
    c = (rstd * (rstd * mean * mean_grad_xhat - mean_grad)).expand(per_group).reshape(per_channel)
    return torch.addcmul(c, x, b).addcmul_(grad_out, a), grad_gamma, grad_beta


class GroupNormConv3d(torch.autograd.Function):
    """conv3d(group_norm(x)) that keeps x, not the normalised tensor, for the backward pass.

    The normalised tensor is as large as x (128 MB per full-resolution volume) and x is kept anyway
    (it is the previous ReLU's output), so recomputing the normalisation in the backward pass (one
    memory-bound pass, x * scale + shift with the saved statistics) saves ~1 GB at the default config.
    The weight's gradient comes from normalised_conv_weight_grad, the normalised tensor's from
    conv_transpose3d (oneDNN's backward-data kernel), and from it group_norm_backward gives the rest.
    Same values and gradients as the two modules: the recomputed tensor equals the forward's bit for bit.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, groups: int, eps: float):
        batch, channels = x.shape[:2]
        normalised, mean, rstd = torch.native_group_norm(
            x, gamma, beta, batch, channels, x[0, 0].numel(), groups, eps
        )  # mean, rstd: [B, groups]
        ctx.save_for_backward(x, gamma, beta, weight, mean, rstd)
        ctx.groups = groups
        return F.conv3d(normalised, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_out):
        x, gamma, beta, weight, mean, rstd = ctx.saved_tensors
        batch, channels = x.shape[:2]
        grad_weight = None
        if ctx.needs_input_grad[3]:
            per_channel = (batch, ctx.groups, channels // ctx.groups)
            scale = rstd[..., None] * gamma.view(per_channel[1:])  # [B, groups, C/groups]
            shift = beta.view(per_channel[1:]) - mean[..., None] * scale
            view = (batch, channels, 1, 1, 1)
            grad_weight = normalised_conv_weight_grad(
                grad_out, x, scale.view(view), shift.view(view), weight
            )
        grad_normalised = F.conv_transpose3d(grad_out, weight, padding=1)
        grad_x, grad_gamma, grad_beta = group_norm_backward(
            grad_normalised, x, mean, rstd, gamma, ctx.groups, ctx.needs_input_grad[0]
        )
        return grad_x, grad_gamma, grad_beta, grad_weight, None, None


class SingleConv(nn.Sequential):
    """GroupNorm -> Conv3d (k3, no bias) [-> ReLU]: order "gcr", or "gc" with activation=False.

    Runs through GroupNormConv3d, except under autocast, where the two modules run as they are.
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
        if torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        norm = self.groupnorm
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
        head = lambda skip, h: self.final_conv(last_decoder(skip, h))  # noqa: E731
        return maybe_checkpoint(self.activation_checkpointing, head, skips[0], x)
