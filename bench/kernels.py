"""Each hand-written CPU path of the UNet's training step against its ATen / oneDNN counterpart, on
one volume, alternating in one process: the weight gradient (unet3d_backward.conv3d_weight_grad
against convolution_backward), GroupNorm's backward (own_group_norm_backward against
native_group_norm_backward), and the channels-last layout against channels-first for oneDNN's
convolution forward, input gradient and weight gradient.

    python bench/kernels.py                       # 128^3 x 16 channels, 2 threads, 4 rounds
    python bench/kernels.py --threads 1 --size 64 --rounds 3
    python bench/kernels.py --threads 1 --size 32 --batch 4 --rounds 15   # the demo's volumes
    ONEDNN_VERBOSE=1 python bench/kernels.py | grep exec    # which oneDNN kernels ran
    python bench/kernels.py --size 64 --rounds 2 --bf16       # and fp32 against bf16
    python bench/kernels.py --unet-convolutions               # each convolution of the default UNet

Prints the medians of each pair (first / second, and their ratio), and the largest relative
difference between the two results of each backward pair (float rounding). What the training step
then runs is chosen per CPU at run time (unet3d_backward.faster_kernel, docs/performance.md).

--unet-convolutions instead times every convolution of the default UNet (unet3d.ResidualUNet3D, a
--size^3 grid) at its own shape, by the kernels the training step runs (fp32, channels-last): the
forward pass, the input gradient and the weight gradient, in seconds and GFLOP/s (27 multiply-adds
per input and output channel and voxel), then their sum over one training step's convolutions.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import processes  # noqa: E402
import unet3d  # noqa: E402
import unet3d_backward  # noqa: E402
import utils  # noqa: E402, F401  (transparent huge pages, as in training)

CHANNELS_LAST = torch.channels_last_3d


def weight_grad(grad_out, x, weight):
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1,
        [False, True, False],
    )[1]  # fmt: skip


def unet_convolution_shapes(size: int) -> list[tuple[str, tuple, tuple, bool]]:
    """(module name, input shape, weight shape, transposed) of every convolution in one forward pass
    of the default UNet on a [1, 16, size, size, size] volume, in the order they run."""
    network = unet3d.ResidualUNet3D().eval()
    names = {module: name for name, module in network.named_modules()}
    found = []

    def record(module, inputs):
        conv = module.conv if isinstance(module, unet3d.SingleConv) else module
        transposed = isinstance(module, torch.nn.ConvTranspose3d)
        found.append((names[module], tuple(inputs[0].shape), tuple(conv.weight.shape), transposed))

    for module in network.modules():
        if isinstance(module, (unet3d.SingleConv, torch.nn.ConvTranspose3d)):
            module.register_forward_pre_hook(record)
    with torch.no_grad():
        network(torch.zeros(1, 16, size, size, size).contiguous(memory_format=CHANNELS_LAST))
    return found


def convolution_seconds(shape, weight_shape, transposed: bool, rounds: int) -> list[float]:
    """The best of `rounds` of one convolution's forward, input gradient and weight gradient, by the
    kernels the training step runs, channels-last: unet3d_backward's for the 3x3x3 convolutions (the
    weight gradient with the input's normalisation recomputed, as GroupNormConv3d does), ATen's for
    the upsampling (transposed, stride 2)."""
    x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST)
    weight = torch.randn(weight_shape).contiguous(memory_format=CHANNELS_LAST)
    if transposed:
        conv = ([2] * 3, [1] * 3, [1] * 3, True, [1] * 3, 1)
        grad_out = torch.randn_like(torch.ops.aten.convolution(x, weight, None, *conv))
        runs = [
            lambda: torch.ops.aten.convolution(x, weight, None, *conv),
            lambda: torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, *conv, [True, False, False]
            ),
            lambda: torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, *conv, [False, True, False]
            ),
        ]
    else:
        grad_out = torch.randn_like(unet3d_backward.conv3d(x, weight))
        scale, shift = torch.ones(1, shape[1], 1, 1, 1), torch.zeros(1, shape[1], 1, 1, 1)
        runs = [
            lambda: unet3d_backward.conv3d(x, weight),
            lambda: unet3d_backward.conv3d_input_grad(grad_out, weight),
            lambda: unet3d_backward.normalised_conv_weight_grad(grad_out, x, scale, shift, weight),
        ]
    best = []
    for run in runs:
        run()  # warm-up (oneDNN primitive, allocator, the kernel choice)
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        best.append(min(seconds))
    return best


def unet_convolutions(size: int, rounds: int) -> None:
    """Seconds and GFLOP/s of each convolution of the default UNet, forward and both gradients."""
    rows = {}  # (input shape, weight shape, transposed) -> [first module name, count]
    for name, *key in unet_convolution_shapes(size):
        rows.setdefault(tuple(key), [name, 0])[1] += 1
    print(f"{'convolution':36s} {'input':>14s} {'weight':>9s}  n  "
          "forward     input grad. weight grad. (ms, GFLOP/s)")  # fmt: skip
    total_flop, total_seconds, best_rate = 0.0, 0.0, 0.0
    for (shape, weight_shape, transposed), (name, count) in rows.items():
        channels = weight_shape[0] * weight_shape[1]  # input x output channels
        flop = 2 * 27 * channels * math.prod(shape[2:])  # a multiply-add per tap and voxel
        cells = []
        for seconds in convolution_seconds(shape, weight_shape, transposed, rounds):
            total_flop, total_seconds = total_flop + flop * count, total_seconds + seconds * count
            best_rate = max(best_rate, flop / seconds)
            cells.append(f"{seconds * 1e3:6.1f} {flop / seconds / 1e9:4.0f}")
        shown, weights = "x".join(map(str, shape[1:])), "x".join(map(str, weight_shape[:2]))
        print(f"{name:36s} {shown:>14s} {weights:>9s} {count:2d}  " + "  ".join(cells), flush=True)
    print(
        f"one training step's UNet convolutions: {total_flop / 1e12:.3f} TFLOP in "
        f"{total_seconds:.2f} s ({total_flop / total_seconds / 1e9:.0f} GFLOP/s); "
        f"all at the best row's rate ({best_rate / 1e9:.0f} GFLOP/s): {total_flop / best_rate:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="volume side")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="volumes at once (the demo: 2-4)")
    parser.add_argument("--rounds", type=int, default=4, help="timed runs of each, alternating")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also fp32 against bf16: the convolution forward, and a ViT-B-32 linear layer",
    )
    parser.add_argument(
        "--unet-convolutions",
        action="store_true",
        help="instead: each convolution of the default UNet on a --size^3 grid, timed alone",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = f"{time.strftime('%Y-%m-%d')}, {processes.cpu_description()}, {args.threads} threads"
    if args.unet_convolutions:
        if args.size % 32:
            parser.error("--unet-convolutions needs a --size divisible by 32 (the UNet's 6 levels)")
        print(f"{machine}, {args.size}^3 grid, the best of {args.rounds}")
        unet_convolutions(args.size, args.rounds)
        return
    size, channels, groups, batch = args.size, args.channels, 8, args.batch
    last = CHANNELS_LAST
    x = torch.randn(batch, channels, size, size, size).contiguous(memory_format=last).relu_()
    grad_out = torch.randn(batch, channels, size, size, size).contiguous(memory_format=last)
    weight = (torch.randn(channels, channels, 3, 3, 3) * 0.1).contiguous(memory_format=last)
    gamma, beta = torch.rand(channels) + 0.5, torch.randn(channels)
    _, mean, rstd = unet3d_backward.native_group_norm(x, gamma, beta, groups, 1e-5)
    x_first, grad_first, weight_first = x.contiguous(), grad_out.contiguous(), weight.contiguous()

    def own_weight_grad():
        *_, num_rows = unet3d_backward.weight_grad_layout(x.shape, channels)
        rows, volumes = unet3d_backward.padded_volume_rows(x.shape, channels, num_rows, x)
        volumes[:, :, 1:-1, 1:-1, 1:-1] = x
        return unet3d_backward.conv3d_weight_grad(grad_out, rows)

    def group_norm(own: bool):
        if own:
            return unet3d_backward.own_group_norm_backward(
                grad_out, x, mean, rstd, gamma, groups, True
            )
        return torch.ops.aten.native_group_norm_backward(
            grad_out, x, mean, rstd, gamma, batch, channels, size**3, groups, [True, True, True]
        )

    pairs = {
        "weight gradient: ours (27 products) / ATen's": (
            own_weight_grad,
            lambda: weight_grad(grad_out, x, weight),
        ),
        "GroupNorm backward: ours / ATen's": (lambda: group_norm(True), lambda: group_norm(False)),
        "convolution forward: channels-last / channels-first": (
            lambda: F.conv3d(x, weight, padding=1),
            lambda: F.conv3d(x_first, weight_first, padding=1),
        ),
        # ATen sends a batch-1 volume with C*D*H <= 20480 (the demo's 32^3 x 16) to its own
        # im2col loop (slow_conv3d) instead of oneDNN; mkldnn_convolution calls oneDNN directly
        "convolution forward: oneDNN (mkldnn_convolution) / F.conv3d": (
            lambda: torch.ops.aten.mkldnn_convolution(
                x, weight, None, [1] * 3, [1] * 3, [1] * 3, 1
            ),
            lambda: F.conv3d(x, weight, padding=1),
        ),
        "input gradient (conv_transpose3d): channels-last / channels-first": (
            lambda: F.conv_transpose3d(grad_out, weight, padding=1),
            lambda: F.conv_transpose3d(grad_first, weight_first, padding=1),
        ),
        "ATen's weight gradient: channels-last / channels-first": (
            lambda: weight_grad(grad_out, x, weight),
            lambda: weight_grad(grad_first, x_first, weight_first),
        ),
    }
    if args.bf16:
        low = [t.to(torch.bfloat16) for t in (x, weight)]
        tokens, linear = torch.randn(1600, 768), torch.randn(2304, 768)  # 32 crops x 50 tokens
        tokens_low, linear_low = tokens.to(torch.bfloat16), linear.to(torch.bfloat16)
        pairs["convolution forward: fp32 / bf16"] = (
            lambda: F.conv3d(x, weight, padding=1),
            lambda: F.conv3d(*low, padding=1),
        )
        pairs["linear [1600, 768] x [768, 2304]: fp32 / bf16"] = (
            lambda: F.linear(tokens, linear),
            lambda: F.linear(tokens_low, linear_low),
        )
    print(f"{machine}, {batch} x {size}^3 x {channels} channels, medians of {args.rounds}")
    for name, (first, second) in pairs.items():
        results = first(), second()  # warm-up (oneDNN primitives, allocator)
        if "ours" in name:
            differences = [
                float((a - b).abs().max() / b.abs().max())
                for a, b in zip(*[r if isinstance(r, tuple) else (r,) for r in results])
            ]
            name += f" (max relative difference {max(differences):.1e})"
        seconds = [], []
        for _ in range(args.rounds):
            for run, times in zip((first, second), seconds, strict=True):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
        medians = [statistics.median(times) for times in seconds]
        print(
            f"{name}: {medians[0]:.3f} / {medians[1]:.3f} s ({medians[0] / medians[1]:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
