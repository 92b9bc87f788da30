"""The residual UNet's CPU convolution paths and its own backward pass
(docs/method.md#point-encoder-and-residual-unet; docs/performance.md#networks-on-the-cpu).

GroupNormConv3d, the fused conv3d(group_norm(x)) autograd function that unet3d.SingleConv runs, keeps
x instead of the normalised tensor. Its convolutions go to oneDNN directly where ATen would run its
own slow im2col loop instead (direct_onednn: one small volume, e.g. every convolution at the demo's
32^3): the forward (conv3d), and the input gradient as a forward convolution with the flipped weight
(conv3d_input_grad). Its backward pass uses ATen's kernels, or the hand-written ones here where the
rule of kernel_choice says (faster_kernel): conv3d_weight_grad (the conv3d weight gradient from plain
row ranges of zero-padded channels-last tables) and group_norm_backward. Same values as ATen's up to
float rounding.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from utils import InputError

# conv3d_weight_grad: grad_out bytes per chunk of rows, and matrix products per chunk and kernel tap.
WEIGHT_GRAD_CHUNK_BYTES, WEIGHT_GRAD_SPLIT = 2 << 20, 2
# ATen convolves one volume [1, C, D, H, W] with C*D*H at most this in its own im2col loop
# (slow_conv3d, slow_conv_transpose3d), not in oneDNN (ConvParams::use_mkldnn in PyTorch's
# Convolution.cpp); so it does a 1x1x1 convolution of fewer than 16 volumes on one thread.
ATEN_ONEDNN_MIN_ELEMENTS, ATEN_ONEDNN_POINTWISE_MIN_BATCH = 20480, 16
# Volumes from which the input gradient on those volumes is oneDNN's forward convolution with the
# flipped weight: on smaller ones copying the flipped weight costs more than the loop it replaces
# (1 AVX2 thread: 4^3 x 128 channels 2.9 against 1.6 ms, 8^3 x 256 47 against 55 ms).
ONEDNN_INPUT_GRAD_MIN_VOXELS = 8**3
# Our weight gradient competes with ATen's on volumes where ATen skips oneDNN from this size (1 AVX2
# thread: 16^3 x 32 channels 14 against 27 ms, 32^3 x 16 48 against 78 ms; 8^3 x 64 equal, 4^3 x 128
# ATen's 5x faster), and with oneDNN's on volumes of OWN_BACKWARD_MIN_VOXELS and more (on smaller
# ones ATen's were as fast or faster on 2 AVX2 cores).
OWN_WEIGHT_GRAD_MIN_VOXELS, OWN_BACKWARD_MIN_VOXELS = 16**3, 128**3
# Our GroupNorm backward runs on every CPU from this size (one / two AVX-512 threads, against ATen's
# channels-last kernel: 16^3 x 32 channels 0.66x / 0.72x its time, 32^3 x 16 0.29-0.45x, 128^3 x 16
# 0.38-0.58x; 8^3 x 64 and smaller ATen's 4-9x faster, in well under a millisecond).
OWN_GROUP_NORM_MIN_VOXELS = 16**3
# Which kernels run where ours compete: "auto" is a fixed rule by CPU and volume (auto_kernel), so that
# two processes on one machine compute alike; "benchmark" times ours against ATen's once per shape and
# thread count, on first use, and keeps the faster (as cudnn.benchmark does); "own" fixes ours, and
# "aten" runs everything as plain PyTorch does (no direct oneDNN calls either).
KERNELS_ENV, KERNEL_CHOICES = "SEMABS_CPU_KERNELS", ("auto", "own", "aten", "benchmark")
GROUP_NORM_BACKWARD = "GroupNorm backward"  # faster_kernel's name for it
_faster: dict[tuple, str] = {}  # (kernel, shape, dtype, threads) -> "own" or "aten"


def kernel_choice() -> str:
    """SEMABS_CPU_KERNELS: auto (default), own, aten or benchmark."""
    choice = os.environ.get(KERNELS_ENV, "auto") or "auto"
    if choice not in KERNEL_CHOICES:
        raise InputError(
            f"{KERNELS_ENV} must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}"
        )
    return choice


def aten_skips_onednn(volume: torch.Tensor, kernel_size: int) -> bool:
    """Whether ATen convolves this CPU volume [B, C, D, H, W] (kernel_size^3, stride 1, one group)
    in its own im2col loop rather than in oneDNN: one volume with C*D*H <= 20480 (every volume of the
    demo's 32^3 UNet, the two deepest levels of the default one), or a 1x1x1 kernel on one thread and
    fewer than 16 volumes. There oneDNN was 2-9x faster (docs/performance.md)."""
    batch, channels, depth, height = volume.shape[:4]
    pointwise = kernel_size == 1 and batch < ATEN_ONEDNN_POINTWISE_MIN_BATCH
    if pointwise and torch.get_num_threads() == 1:
        return True
    return batch == 1 and channels * depth * height <= ATEN_ONEDNN_MIN_ELEMENTS


def direct_onednn(volume: torch.Tensor, kernel_size: int) -> bool:
    """Whether we call oneDNN ourselves to convolve volume: where ATen would not (aten_skips_onednn)
    and oneDNN can (fp32 on the CPU, oneDNN built and enabled, no CPU autocast: autocast casts the
    convolution itself), unless SEMABS_CPU_KERNELS=aten."""
    return (
        volume.device.type == "cpu"
        and volume.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and aten_skips_onednn(volume, kernel_size)
        and kernel_choice() != "aten"
    )


def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv3d(x, weight [O, I, 3, 3, 3], padding=1) by oneDNN, called directly."""
    return torch.ops.aten.mkldnn_convolution(x, weight, None, [1] * 3, [1] * 3, [1] * 3, 1)


def conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv3d(x, weight [O, I, 3, 3, 3], padding=1): oneDNN's, called directly where direct_onednn,
    else F.conv3d's (which calls the same oneDNN function on larger volumes)."""
    if direct_onednn(x, 3):
        return onednn_conv3d(x, weight)
    return F.conv3d(x, weight, padding=1)


def conv3d_input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient of conv3d(x, weight [O, I, 3, 3, 3], padding=1) with respect to x, from grad_out
    [B, O, D, H, W]: the transposed convolution, which is the forward convolution of grad_out with
    the weight flipped on its three spatial axes and its in and out channels swapped. That forward
    runs in oneDNN where direct_onednn (from ONEDNN_INPUT_GRAD_MIN_VOXELS), else F.conv_transpose3d.
    """
    if grad_out[0, 0].numel() >= ONEDNN_INPUT_GRAD_MIN_VOXELS and direct_onednn(grad_out, 3):
        flipped = weight.flip(2, 3, 4).transpose(0, 1)
        return onednn_conv3d(grad_out, flipped.contiguous(memory_format=torch.channels_last_3d))
    return F.conv_transpose3d(grad_out, weight, padding=1)


def pointwise_conv3d(x: torch.Tensor, conv: torch.nn.Conv3d) -> torch.Tensor:
    """conv(x) for a 1x1x1 Conv3d: where direct_onednn (ATen would run its own loop), as one linear
    layer over x's channels, a matrix product on channels-last volumes (4-5x faster than ATen's loop,
    forward and backward, on one thread); else conv(x)."""
    if not direct_onednn(x, 1):
        return conv(x)
    out = F.linear(x.permute(0, 2, 3, 4, 1), conv.weight.flatten(1), conv.bias)
    return out.permute(0, 4, 1, 2, 3)


def auto_kernel(name: str, x: torch.Tensor, below_onednn: bool) -> str:
    """SEMABS_CPU_KERNELS=auto's choice of kernel `name` for volume x, "own" or "aten": fixed, so that
    a run and its resumed continuation compute bit for bit alike. Where ATen skips oneDNN
    (below_onednn), ours from OWN_WEIGHT_GRAD_MIN_VOXELS (ATen's own loop is what it replaces).
    GroupNorm's backward: ours on every CPU (ATen's channels-last kernel is not oneDNN's; at 128^3 x
    16, quiet, ours took 0.43x its time on one AVX2 thread and 0.41x / 0.62x on one / two AVX-512
    threads). The weight gradient: ours on CPUs whose kernels are AVX2 (there oneDNN's is im2col; at
    128^3, quiet: 0.75 -> 0.49 s), ATen's where oneDNN has wider kernels (AVX-512: ours 2.0-2.65x
    slower; AMX) or where ours were never measured."""
    if below_onednn:
        return "own" if x[0, 0].numel() >= OWN_WEIGHT_GRAD_MIN_VOXELS else "aten"
    if name == GROUP_NORM_BACKWARD:
        return "own"
    return "own" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "aten"


def faster_kernel(name: str, x: torch.Tensor, own: Callable, aten: Callable, below_onednn=False):
    """own() or aten(), the same values up to float rounding, for a kernel on volume x [B, C, D, H, W].

    Ours competes on CPU volumes of OWN_BACKWARD_MIN_VOXELS and more (GroupNorm's backward: of
    OWN_GROUP_NORM_MIN_VOXELS) and, with below_onednn, on those where direct_onednn(x, 3) (then ATen's
    kernel is its own loop); elsewhere, and on a GPU, ATen's runs. Where they compete,
    kernel_choice() says which: "auto" auto_kernel's rule, "own" or "aten" that one, "benchmark"
    both twice, alternating, on the first call for x's shape and the thread count, then the faster
    for the rest of the process (logged). Which wins depends on the CPU and
    on its load (ours make many small parallel calls, which lose on a busy CPU), so two processes
    may keep different ones, and differ in the last bits.
    """
    below_onednn = below_onednn and direct_onednn(x, 3)
    smallest = OWN_GROUP_NORM_MIN_VOXELS if name == GROUP_NORM_BACKWARD else OWN_BACKWARD_MIN_VOXELS
    if x.device.type != "cpu" or not (below_onednn or x[0, 0].numel() >= smallest):
        return aten()
    choice = kernel_choice()
    if choice == "auto":
        choice = auto_kernel(name, x, below_onednn)
    if choice != "benchmark":
        return own() if choice == "own" else aten()
    key = (name, tuple(x.shape), x.dtype, torch.get_num_threads())
    if key in _faster:
        return own() if _faster[key] == "own" else aten()
    seconds: dict[str, float] = {}
    results = {}
    for _ in range(2):
        for kernel, run in (("own", own), ("aten", aten)):
            results.pop(kernel, None)  # at most one result of each kept while timing
            start = time.perf_counter()
            results[kernel] = run()
            elapsed = time.perf_counter() - start
            seconds[kernel] = min(seconds.get(kernel, elapsed), elapsed)
    _faster[key] = min(seconds, key=seconds.get)
    logging.getLogger(__name__).info(
        "%s on %s, %d threads: ours %.3f s, ATen's %.3f s; %s kept",
        name, list(x.shape), key[3], seconds["own"], seconds["aten"], _faster[key],
    )  # fmt: skip
    return results[_faster[key]]


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


def padded_volume_rows(shape: torch.Size, channels: int, num_rows: int, like: torch.Tensor):
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

    grad_out [B, O, D, H, W]; input_rows from padded_volume_rows(x.shape, I,
    weight_grad_layout(...)[2]), with x at [1:-1] of each padded axis. Put grad_out in such rows too, at
    [:-2]: then kernel tap (a, b, c) pairs grad row q with input row q + (a*(H+2) + b)*(W+2) + c, and
    the tap's gradient is a matrix product [O, rows] @ [rows, I] of plain row ranges. The rows go in
    chunks that stay in cache across the 27 taps; each chunk is split into WEIGHT_GRAD_SPLIT products
    of one batched call (one thread each). oneDNN instead copies the input 27 times (im2col) on AVX2 CPUs.
    """
    out_channels, in_channels = grad_out.shape[1], input_rows.shape[1]
    height, width = grad_out.shape[3:]
    chunk, num_grad_rows, _ = weight_grad_layout(grad_out.shape, out_channels)
    grad_rows, grad_volumes = padded_volume_rows(
        grad_out.shape, out_channels, num_grad_rows, grad_out
    )
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
    input recomputed: by ATen's convolution_backward, or by conv3d_weight_grad where faster_kernel
    picks it, the input normalised straight into its padded rows (~0.4 s less per default OVSSC
    training step on 2 AVX2 cores, 3%).
    """

    def aten():
        normalised = torch.addcmul(shift, x, scale)
        return torch.ops.aten.convolution_backward(
            grad_out, normalised, weight, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1,
            [False, True, False],
        )[1]  # fmt: skip

    def own():
        *_, num_input_rows = weight_grad_layout(x.shape, weight.shape[0])
        input_rows, input_volumes = padded_volume_rows(x.shape, x.shape[1], num_input_rows, x)
        torch.addcmul(shift, x, scale, out=input_volumes[:, :, 1:-1, 1:-1, 1:-1])
        return conv3d_weight_grad(grad_out, input_rows)

    return faster_kernel("conv3d weight gradient", x, own, aten, below_onednn=True)


def group_norm_backward(grad_out, x, mean, rstd, gamma, groups: int, input_grad: bool):
    """Gradients of group_norm(x, groups, gamma, beta) for x (None unless input_grad), gamma and beta:
    ATen's native_group_norm_backward, or where faster_kernel picks it own_group_norm_backward."""
    batch, channels = x.shape[:2]

    def aten():
        return torch.ops.aten.native_group_norm_backward(
            grad_out, x, mean, rstd, gamma, batch, channels, x[0, 0].numel(), groups,
            [input_grad, True, True],
        )  # fmt: skip

    def own():
        return own_group_norm_backward(grad_out, x, mean, rstd, gamma, groups, input_grad)

    return faster_kernel(GROUP_NORM_BACKWARD, x, own, aten)


def own_group_norm_backward(grad_out, x, mean, rstd, gamma, groups: int, input_grad: bool):
    """group_norm_backward from two per-channel sums, of grad_out and of grad_out * x (the diagonal
    of one [C, S] @ [S, C] product per sample), and two multiply-add passes: ATen's channels-last
    kernel took twice as long at 128^3 x 16 on 2 AVX2 cores (~0.1 s more per volume, ~0.5 s per
    default OVSSC training step). x, grad_out [B, C, D, H, W]; mean, rstd [B, groups] from
    native_group_norm.
    """
    batch, channels = x.shape[:2]
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


def native_group_norm(x, gamma, beta, groups: int, eps: float):
    """F.group_norm's computation on x [B, C, D, H, W] -> (output, mean, rstd), mean and rstd
    [B, groups]: what our backward kernels take."""
    batch, channels = x.shape[:2]
    return torch.native_group_norm(x, gamma, beta, batch, channels, x[0, 0].numel(), groups, eps)


class GroupNorm(torch.autograd.Function):
    """group_norm(x, groups, gamma, beta) whose backward pass is group_norm_backward (ours on CPU
    volumes from OWN_GROUP_NORM_MIN_VOXELS): SingleConv's normalisation under autocast, where it
    runs apart from the convolution (in fp32, as autocast keeps GroupNorm; the convolution in bf16).
    There ATen's channels-last backward took a third of a demo-size bf16 VOOL step.
    The forward is native_group_norm, as F.group_norm's."""

    @staticmethod
    def forward(ctx, x, gamma, beta, groups: int, eps: float):
        out, mean, rstd = native_group_norm(x, gamma, beta, groups, eps)
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, gamma, mean, rstd = ctx.saved_tensors
        grad_x, grad_gamma, grad_beta = group_norm_backward(
            grad_out, x, mean, rstd, gamma, ctx.groups, ctx.needs_input_grad[0]
        )
        return grad_x, grad_gamma, grad_beta, None, None


class GroupNormConv3d(torch.autograd.Function):
    """conv3d(group_norm(x)) that keeps x, not the normalised tensor, for the backward pass.

    The normalised tensor is as large as x (128 MB per full-resolution volume) and x is kept anyway
    (it is the previous ReLU's output), so recomputing the normalisation in the backward pass (one
    memory-bound pass, x * scale + shift with the saved statistics) saves ~1 GB at the default config.
    The convolution runs in conv3d, the weight's gradient comes from normalised_conv_weight_grad, the
    normalised tensor's from conv3d_input_grad, and from it group_norm_backward gives the rest.
    Same values and gradients as the two modules: the recomputed tensor equals the forward's bit for bit.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, groups: int, eps: float):
        normalised, mean, rstd = native_group_norm(x, gamma, beta, groups, eps)
        ctx.save_for_backward(x, gamma, beta, weight, mean, rstd)
        ctx.groups = groups
        return conv3d(normalised, weight)

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
        grad_normalised = conv3d_input_grad(grad_out, weight)
        grad_x, grad_gamma, grad_beta = group_norm_backward(
            grad_normalised, x, mean, rstd, gamma, ctx.groups, ctx.needs_input_grad[0]
        )
        return grad_x, grad_gamma, grad_beta, grad_weight, None, None
