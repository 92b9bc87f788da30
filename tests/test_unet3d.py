"""The residual UNet's CPU convolution paths: oneDNN called directly where ATen would run its own
loop, the hand-written backward kernels, and which of them runs where (unet3d_backward)."""

import pytest
import torch
import torch.nn.functional as F

import unet3d
import unet3d_backward
from utils import InputError


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counted(monkeypatch, name: str) -> list:
    """Calls of unet3d_backward.<name>, recorded by argument shapes."""
    calls, function = [], getattr(unet3d_backward, name)

    def spy(*args):
        calls.append(tuple(args[0].shape))
        return function(*args)

    monkeypatch.setattr(unet3d_backward, name, spy)
    return calls


# Paths of one fused GroupNorm -> Conv3d, as (SEMABS_CPU_KERNELS, whether ATen would skip oneDNN,
# whether auto's rule picks our weight gradient): plain PyTorch; the convolution and its input
# gradient by oneDNN called directly, with ATen's or our weight gradient; our weight gradient where
# ATen runs oneDNN. With "auto" the GroupNorm backward is ours (here on every volume).
PATHS = {
    "plain PyTorch": ("aten", False, False),
    "oneDNN directly, ATen's weight gradient": ("auto", True, False),
    "oneDNN directly, our weight gradient": ("auto", True, True),
    "our kernels beside oneDNN": ("auto", False, True),
}
SHAPES = {
    "batch 2, cubic-ish": ((2, 8, 5, 6, 7), 6, 4),  # x shape, output channels, groups
    "batch 1, odd channels": ((1, 6, 9, 4, 11), 5, 3),
}


@pytest.mark.parametrize("activation, input_grad", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("path", sorted(PATHS))
def test_fused_single_conv_equals_groupnorm_conv_relu_modules(
    monkeypatch, activation, input_grad, channels_last, shape, path
):
    (x_shape, out_channels, groups), (kernels, direct, own) = SHAPES[shape], PATHS[path]
    monkeypatch.setattr(unet3d_backward, "aten_skips_onednn", lambda *_: direct)
    monkeypatch.setattr(unet3d_backward, "ONEDNN_INPUT_GRAD_MIN_VOXELS", 0)
    monkeypatch.setattr(unet3d_backward, "OWN_BACKWARD_MIN_VOXELS", 0)
    monkeypatch.setattr(unet3d_backward, "OWN_GROUP_NORM_MIN_VOXELS", 0)  # ours with "auto"
    monkeypatch.setattr(unet3d_backward, "OWN_WEIGHT_GRAD_MIN_VOXELS", 0 if own else 10**9)
    capability = "AVX2" if own else "AVX512"  # auto's choice on volumes where ATen runs oneDNN
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv(unet3d_backward.KERNELS_ENV, kernels)
    onednn_calls = counted(monkeypatch, "onednn_conv3d")
    own_calls = counted(monkeypatch, "conv3d_weight_grad")
    group_norm_calls = counted(monkeypatch, "own_group_norm_backward")
    torch.manual_seed(0)
    block = unet3d.SingleConv(x_shape[1], out_channels, num_groups=groups, activation=activation)
    plain = torch.nn.Sequential(*block.children())  # the same modules, run one after the other
    x = torch.randn(x_shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(input_grad)
    weights = torch.randn(x_shape[0], out_channels, *x_shape[2:])
    results = []
    for module in (block, plain):
        out = module(x)
        inputs = [*module.parameters()] + ([x] if input_grad else [])
        results.append((out.detach(), torch.autograd.grad(out, inputs, weights)))
    # the fused block's forward and backward ran the path asked for: each oneDNN call a
    # convolution (forward, input gradient), the weight gradient ours or not
    assert len(onednn_calls) == (2 if direct and kernels != "aten" else 0)
    assert len(own_calls) == (1 if own else 0)
    assert len(group_norm_calls) == (1 if kernels == "auto" else 0)
    (fused, fused_grads), (expected, expected_grads) = results
    assert (fused >= 0).all() or not activation
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_unet_equals_plain_pytorch_on_small_volumes(monkeypatch, batch):
    # A non-cubic 3-level UNet with 6 feature maps: its convolutions are small enough that ATen runs
    # its own loop; by default ours call oneDNN (and a matrix product for the final 1x1x1 conv).
    torch.manual_seed(0)
    network = unet3d.ResidualUNet3D(in_channels=6, out_channels=3, f_maps=6, num_groups=3,
                                    num_levels=3)  # fmt: skip
    x = torch.randn(batch, 6, 16, 8, 12, requires_grad=True)
    weights = torch.randn(batch, 3, 16, 8, 12)
    results = {}
    for kernels in ("auto", "aten"):
        monkeypatch.setenv(unet3d_backward.KERNELS_ENV, kernels)
        onednn_calls = counted(monkeypatch, "onednn_conv3d")
        out = network(x)
        grads = torch.autograd.grad(out, [x, *network.parameters()], weights)
        results[kernels] = out.detach(), grads, len(onednn_calls)
        monkeypatch.undo()
    (out, grads, calls), (plain_out, plain_grads, plain_calls) = results["auto"], results["aten"]
    # 15 convolutions forward, and the input gradients of the 6 at full resolution (from 8^3 voxels);
    # batch 1 only: ATen runs oneDNN itself for several volumes
    assert (calls, plain_calls) == (21 if batch == 1 else 0, 0)
    torch.testing.assert_close(out, plain_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, plain_grads, strict=True):  # float rounding, relative to the scale
        torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)


def test_pointwise_conv_equals_conv3d(one_thread):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 5, 1).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 6, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    assert unet3d_backward.direct_onednn(x, 1)  # one thread, fewer than 16 volumes
    weights = torch.randn(2, 5, 3, 4, 5)
    results = []
    for run in (unet3d_backward.pointwise_conv3d, lambda v, c: c(v)):
        out = run(x, conv)
        results.append((out.detach(), torch.autograd.grad(out, [x, *conv.parameters()], weights)))
    (got, got_grads), (want, want_grads) = results
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


def convolution_ops(run) -> set[str]:
    with torch.profiler.profile() as profile:
        run()
    return {e.key for e in profile.key_averages() if "slow_conv" in e.key or "mkldnn" in e.key}


@pytest.mark.parametrize(
    "shape, kernel_size, threads",
    [
        ((1, 16, 32, 40, 3), 3, 2),  # C*D*H = 20480: ATen's own loop
        ((1, 16, 32, 41, 3), 3, 2),  # 20992: oneDNN
        ((2, 2, 3, 3, 3), 3, 1),  # several volumes: oneDNN
        ((15, 4, 3, 3, 3), 1, 1),  # 1x1x1 on one thread: its loop below 16 volumes
        ((16, 4, 3, 3, 3), 1, 1),
        ((15, 4, 3, 3, 3), 1, 2),
    ],
)
def test_aten_skips_onednn_mirrors_atens_choice(shape, kernel_size, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(shape)
        weight = torch.randn(shape[1], shape[1], *[kernel_size] * 3)
        ops = convolution_ops(lambda: F.conv3d(x, weight, padding=kernel_size // 2))
        skipped = unet3d_backward.aten_skips_onednn(x, kernel_size)
    finally:
        torch.set_num_threads(saved)
    assert ops == ({"aten::slow_conv3d", "aten::slow_conv3d_forward"} if skipped else
                   {"aten::mkldnn_convolution"})  # fmt: skip


def test_direct_onednn_only_for_fp32_cpu_outside_autocast(monkeypatch):
    x = torch.randn(1, 4, 5, 5, 5)
    assert unet3d_backward.direct_onednn(x, 3)
    assert not unet3d_backward.direct_onednn(x.to(torch.bfloat16), 3)
    assert not unet3d_backward.direct_onednn(torch.randn(2, 4, 5, 5, 5), 3)  # ATen calls oneDNN
    with torch.autocast("cpu", torch.bfloat16):
        assert not unet3d_backward.direct_onednn(x, 3)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not unet3d_backward.direct_onednn(x, 3)
    monkeypatch.undo()
    monkeypatch.setenv(unet3d_backward.KERNELS_ENV, "aten")
    assert not unet3d_backward.direct_onednn(x, 3)


def test_unet_under_cpu_autocast_runs_as_plain_pytorch(monkeypatch):
    torch.manual_seed(0)
    network = unet3d.ResidualUNet3D(in_channels=4, out_channels=3, f_maps=4, num_groups=2,
                                    num_levels=2)  # fmt: skip
    x = torch.randn(1, 4, 4, 4, 6)
    outputs = []
    for kernels in ("auto", "aten"):
        monkeypatch.setenv(unet3d_backward.KERNELS_ENV, kernels)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            outputs.append(network(x))
    assert outputs[0].dtype == torch.bfloat16
    assert torch.equal(*outputs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_single_conv_under_cpu_autocast_equals_its_modules_with_our_group_norm_backward(
    monkeypatch, channels_last
):
    """Under autocast the normalisation runs in fp32 through unet3d_backward.GroupNorm, the
    convolution in bf16: the forward is the two modules' bit for bit, the gradients theirs up to
    float rounding, and the backward pass is ours."""
    monkeypatch.setattr(unet3d_backward, "OWN_GROUP_NORM_MIN_VOXELS", 0)
    monkeypatch.delenv(unet3d_backward.KERNELS_ENV, raising=False)
    own_calls = counted(monkeypatch, "own_group_norm_backward")
    torch.manual_seed(0)
    block = unet3d.SingleConv(8, 6, num_groups=4)
    plain = torch.nn.Sequential(*block.children())  # the same modules, run one after the other
    x = (torch.randn(2, 8, 5, 6, 7) * 3 + 1).bfloat16()  # as the previous bf16 convolution hands on
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    weights = torch.randn(2, 6, 5, 6, 7)
    results = []
    for module in (block, plain):
        with torch.autocast("cpu", torch.bfloat16):
            out = module(x)
        inputs = [*module.parameters(), x]
        results.append((out.detach(), torch.autograd.grad(out.float(), inputs, weights)))
    assert own_calls == [(2, 8, 5, 6, 7)]  # one backward pass, ours
    (ours, our_grads), (expected, expected_grads) = results
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, expected)
    for got, want in zip(our_grads, expected_grads, strict=True):  # gamma, beta, conv weight, x
        assert got.dtype == want.dtype
        # fp32 sums in another order; x's gradient is rounded to bf16 after them (one bf16 step)
        low = got.dtype == torch.bfloat16
        scale = float(want.abs().max())
        torch.testing.assert_close(
            got, want, atol=(1e-3 if low else 1e-5) * scale, rtol=1e-2 if low else 1e-4
        )


@pytest.mark.parametrize("capability, large", [("AVX2", "own"), ("AVX512", "aten"),
                                               ("DEFAULT", "aten")])  # fmt: skip
def test_auto_kernels_follow_a_fixed_rule_by_cpu_and_volume(monkeypatch, capability, large):
    calls = []

    def kernel(name):
        return lambda: calls.append(name) or name

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(unet3d_backward, "OWN_BACKWARD_MIN_VOXELS", 64)
    monkeypatch.setattr(unet3d_backward, "OWN_GROUP_NORM_MIN_VOXELS", 64)
    monkeypatch.delenv(unet3d_backward.KERNELS_ENV, raising=False)
    own, aten = kernel("own"), kernel("aten")

    def choose(shape, below_onednn=True):
        return unet3d_backward.faster_kernel("k", torch.zeros(shape), own, aten, below_onednn)

    # volumes where ATen runs oneDNN: ours only from OWN_BACKWARD_MIN_VOXELS, on AVX2 CPUs
    assert choose((2, 2, 4, 4, 4)) == large and choose((2, 2, 4, 4, 3)) == "aten"
    # where ATen runs its own loop: our weight gradient from 16^3, on every CPU
    assert choose((1, 2, 16, 16, 16)) == "own" and choose((1, 2, 16, 16, 15)) == "aten"
    assert choose((1, 2, 16, 16, 16), below_onednn=False) == large
    # GroupNorm's backward: ours on every CPU, from OWN_GROUP_NORM_MIN_VOXELS
    group_norm = unet3d_backward.GROUP_NORM_BACKWARD
    assert unet3d_backward.faster_kernel(group_norm, torch.zeros(2, 2, 4, 4, 4), own, aten) == "own"
    assert (
        unet3d_backward.faster_kernel(group_norm, torch.zeros(2, 2, 4, 4, 3), own, aten) == "aten"
    )
    assert len(calls) == 7  # one run each: nothing timed


def test_benchmark_kernels_times_both_once_per_shape_and_keeps_the_faster(monkeypatch, caplog):
    clock, calls = [0.0], []

    def kernel(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds
            return name

        return run

    monkeypatch.setattr(unet3d_backward.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(unet3d_backward, "_faster", {})
    monkeypatch.setattr(unet3d_backward, "OWN_BACKWARD_MIN_VOXELS", 8)
    monkeypatch.setenv(unet3d_backward.KERNELS_ENV, "benchmark")
    own, aten = kernel("own", 2.0), kernel("aten", 1.0)
    large, small = torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 1, 2, 2)
    with caplog.at_level("INFO", logger="unet3d_backward"):
        assert unet3d_backward.faster_kernel("k", large, own, aten) == "aten"
    assert calls == ["own", "aten", "own", "aten"] and "ours 2.000 s, ATen's 1.000 s" in caplog.text
    calls.clear()
    assert unet3d_backward.faster_kernel("k", large, own, aten) == "aten" and calls == ["aten"]
    # another shape is timed anew, and there ours is faster; small volumes always run ATen's
    slow_aten = kernel("aten", 3.0)
    assert (
        unet3d_backward.faster_kernel("k", large.expand(3, -1, -1, -1, -1), own, slow_aten) == "own"
    )
    calls.clear()
    assert unet3d_backward.faster_kernel("k", small, own, aten) == "aten" and calls == ["aten"]
    for choice in ("own", "aten"):  # the environment fixes the choice
        monkeypatch.setenv(unet3d_backward.KERNELS_ENV, choice)
        assert unet3d_backward.faster_kernel("k", large, own, aten) == choice
    monkeypatch.setenv(unet3d_backward.KERNELS_ENV, "fastest")
    with pytest.raises(
        InputError, match="must be one of auto, own, aten, benchmark, got 'fastest'"
    ):
        unet3d_backward.faster_kernel("k", large, own, aten)


@pytest.mark.parametrize("chunk_bytes", [unet3d_backward.WEIGHT_GRAD_CHUNK_BYTES, 4 * 6 * 2 * 20])
def test_conv3d_weight_grad_equals_convolution_backward(monkeypatch, chunk_bytes):
    # The second size makes chunks of 40 rows: the 2 x 7 x 8 x 9 padded rows span 26 of them.
    monkeypatch.setattr(unet3d_backward, "WEIGHT_GRAD_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 5, 6, 7, dtype=torch.float64, generator=g)
    weight = torch.randn(6, 5, 3, 3, 3, dtype=torch.float64, generator=g)
    grad_out = torch.randn(2, 6, 5, 6, 7, dtype=torch.float64, generator=g)
    chunk, num_grad_rows, num_input_rows = unet3d_backward.weight_grad_layout(
        x.shape, out_channels=6
    )
    assert num_grad_rows % chunk == 0 and num_grad_rows >= 2 * 7 * 8 * 9
    input_rows, input_volumes = unet3d_backward.padded_volume_rows(x.shape, 5, num_input_rows, x)
    input_volumes[:, :, 1:-1, 1:-1, 1:-1] = x
    assert input_rows[0].abs().sum() == 0 and input_rows[-1].abs().sum() == 0  # border, spare rows
    got = unet3d_backward.conv3d_weight_grad(grad_out, input_rows)
    expected = torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1,
        [False, True, False],
    )[1]  # fmt: skip
    torch.testing.assert_close(got, expected)
    # One entry by hand: tap (0, 2, 1) pairs output voxel (i, j, k) with input voxel (i-1, j+1, k).
    by_hand = (grad_out[:, 3, 1:, :-1, :] * x[:, 2, :-1, 1:, :]).sum()
    torch.testing.assert_close(got[3, 2, 0, 2, 1], by_hand)
