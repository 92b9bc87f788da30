"""Speed and memory of SemAbs3D and SemAbsVOOL: forward, training step (forward, loss, backward, grad
clip, LAMB step) and peak memory, at the default config and at a small one, beside the original's way
of computing the default OVSSC network (bench/original_style.py) measured in the same run.

    python bench/networks.py                      # all cases, CPU, 2 threads (ovssc-demo too)
    python bench/networks.py --case ovssc-default --case ovssc-original-style --repeats 2
    python bench/networks.py --case ovssc-default --activation-checkpointing
    python bench/networks.py --case ovssc-default --profile 25   # where a step's time goes
    python bench/networks.py --device cuda
    python bench/networks.py --compare-precision ovssc-default --repeats 2   # fp32, bf16, original
    python bench/networks.py --compare-kernels ovssc-demo --threads 1 --repeats 5  # ours, plain

--compare-precision CASE (an OVSSC case) runs three training steps side by side in one process, on
the same weights and inputs, alternating: ours in fp32, ours under bf16 autocast (as `--use_amp
--amp_dtype bf16` trains), and the original-style stand-in in fp32. It prints each one's step time
and how far its loss and gradients (those of the first step, from the same weights) are from ours
in fp32: |loss - loss_fp32| / |loss_fp32|, and ||g - g_fp32|| / ||g_fp32|| over all parameters and
for the worst parameter tensor (named). On a CPU without AMX or AVX512-BF16 bf16 is emulated
(~200x slower convolutions), so there only the demo's size (`ovssc-demo`) finishes in minutes.

--compare-kernels CASE runs the same way, alternating in one process, ours in fp32 with the default
CPU kernels (SEMABS_CPU_KERNELS=auto: oneDNN called directly where ATen would run its own loop, the
hand-written backward kernels where the rule picks them) against plain PyTorch's
(SEMABS_CPU_KERNELS=aten); each also times a forward pass without gradients (as evaluation runs it).

Each case runs in a fresh process so that its peak memory (max RSS on CPU, max allocated on CUDA) is
its own. The original itself, run side by side with ours on this machine type, took 19.1-22.3 s per
default OVSSC training step with a 4.8-5.0 GB peak
(docs/performance.md#against-the-original-code-itself). Machines differ by 2x: compare figures of
one run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL = dict(voxel_shape=(64, 64, 64), unet_num_levels=5)
DEMO = dict(voxel_shape=(32, 32, 32), unet_num_levels=4)  # demo.py's network
CASES = {
    # name: (network, config overrides, N input points, M query points, classes or descriptions)
    "ovssc-default": ("SemAbs3D", {}, 80_000, 400_000, 1),
    "ovssc-original-style": ("SemAbs3D", {}, 80_000, 400_000, 1),  # bench/original_style.py
    "vool-default": ("SemAbsVOOL", {}, 80_000, 400_000, 1),
    "ovssc-small": ("SemAbs3D", SMALL, 20_000, 50_000, 1),
    "ovssc-demo": ("SemAbs3D", DEMO, 8_000, 8_000, 1),
    "vool-small": ("SemAbsVOOL", SMALL, 20_000, 50_000, 1),
    "vool-demo": ("SemAbsVOOL", DEMO, 8_000, 8_000, 2),  # the demo's 2 descriptions a scene
    "vool-demo-f8": ("SemAbsVOOL", dict(DEMO, unet_f_maps=8), 8_000, 8_000, 2),
    "ovssc-demo-f8": ("SemAbs3D", dict(DEMO, unet_f_maps=8), 8_000, 8_000, 1),
    "vool-demo-l3": ("SemAbsVOOL", dict(voxel_shape=(32,32,32), unet_num_levels=3), 8_000, 8_000, 2),
}
RELATIONS = ["behind", "on the left of"]
REFERENCE_CASE = "ovssc-original-style"


def make_batch(name: str, num_input: int, num_output: int, rows: int, device):
    import torch

    import net

    g = torch.Generator().manual_seed(0)
    lower, upper = torch.tensor(net.DEFAULT_SCENE_BOUNDS)

    def xyz(*shape):
        return lower + torch.rand(*shape, 3, generator=g) * (upper - lower)

    batch = {"input_xyz_pts": xyz(1, num_input), "output_xyz_pts": xyz(1, rows, num_output)}
    saliency = lambda: torch.randn(1, rows, num_input, 1, generator=g) * 50  # noqa: E731
    if name == "SemAbs3D":
        batch["input_feature_pts"] = saliency()
    else:
        batch.update(input_target_saliency_pts=saliency(), input_reference_saliency_pts=saliency())
        batch["spatial_relation_name"] = [[RELATIONS[row % len(RELATIONS)]] for row in range(rows)]
    labels = (torch.rand(1, rows, num_output, generator=g) < 0.1).float()
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, labels.to(
        device
    )


def original_style_twin(network, batch):
    """bench/original_style.py's network with `network`'s weights, checked to give its logits."""
    import torch
    from original_style import OriginalStyleSemAbs3D

    grid = network.virtual_grid
    levels = len(network.vol_feature_extractor.encoders)
    bounds = [grid.lower.tolist(), grid.upper.tolist()]
    twin = OriginalStyleSemAbs3D(bounds, grid=grid.grid_shape[0], levels=levels)
    twin = twin.to(batch["input_xyz_pts"].device)
    twin.load_state_dict(network.state_dict())
    check = dict(batch, output_xyz_pts=batch["output_xyz_pts"][:, :, :20_000])
    with torch.no_grad():
        difference = (twin.eval()(**check) - network.eval()(**check)).abs().max().item()
    if difference > 1e-3:
        raise SystemExit(f"original-style network differs from ours by {difference:.2e}")
    return twin


def run_case(
    case: str,
    device: str,
    threads: int,
    checkpointing: bool,
    repeats: int,
    queue,
    profile_rows: int = 0,
) -> None:
    import os

    if case == REFERENCE_CASE:  # plain pages as the original (set before net imports utils)
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "0")
    import torch

    import net
    from lamb import Lamb

    torch.set_num_threads(threads)
    name, overrides, num_input, num_output, rows = CASES[case]
    network = getattr(net, name)(**overrides, activation_checkpointing=checkpointing).to(device)
    batch, labels = make_batch(name, num_input, num_output, rows, device)
    if case == REFERENCE_CASE:
        network = original_style_twin(network, batch)
    optimizer = Lamb(network.parameters(), lr=1e-3, weight_decay=1e-5)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward_only():
        with torch.no_grad():
            network.eval()(**batch)

    def train_step():
        network.train()
        optimizer.zero_grad(
            set_to_none=True
        )  # before the forward: last step's grads are freed early
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(**batch), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 2.0)
        optimizer.step()
        network.steps += 1

    def timed(fn):
        fn()  # warm-up (allocator, oneDNN primitive cache)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return min(times)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    forward_s = timed(forward_only)
    step_s = timed(train_step)
    if device.startswith("cuda"):
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB
    if profile_rows:
        print_profile(case, train_step, profile_rows)
    queue.put(dict(case=case, forward_s=forward_s, step_s=step_s, peak_gb=peak_gb))


def print_profile(case: str, train_step, rows: int) -> None:
    """One more training step under PyTorch's profiler: its costliest operators by self CPU time."""
    import torch

    with torch.profiler.profile() as profile:
        start = time.perf_counter()
        train_step()
        seconds = time.perf_counter() - start
    events = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    print(f"{case}: one profiled training step, {seconds:.2f} s; by operator (self CPU time):")
    for event in events[:rows]:
        share = event.self_cpu_time_total / total
        print(
            f"    {event.key:45s} {event.self_cpu_time_total / 1e6:7.2f} s  {share:6.1%}  "
            f"{event.count} calls",
            flush=True,
        )


def compare_steps(comparison: str, case: str, device: str, threads: int, repeats: int, queue):
    """Training steps and forward passes alternating, from the same weights and batch: "precision"
    ours in fp32, ours under bf16 autocast and the original-style network in fp32; "kernels" ours
    with the default CPU kernels and with plain PyTorch's. See the module docstring."""
    import copy
    import os

    import torch

    import net
    import unet3d_backward
    from lamb import Lamb

    torch.set_num_threads(threads)
    name, overrides, num_input, num_output, rows = CASES[case]
    if comparison == "precision" and name != "SemAbs3D":
        raise SystemExit(f"--compare-precision takes an OVSSC case, not {case}")
    ours = getattr(net, name)(**overrides).to(device)
    batch, labels = make_batch(name, num_input, num_output, rows, device)
    # kind: (network, under bf16 autocast, SEMABS_CPU_KERNELS or None for as set)
    if comparison == "precision":
        networks = {
            "ours fp32": (ours, False, None),
            "ours bf16 autocast": (copy.deepcopy(ours), True, None),
            "original-style fp32": (original_style_twin(ours, batch), False, None),
        }
    else:
        networks = {
            "ours, default kernels": (ours, False, "auto"),
            "ours, plain PyTorch": (copy.deepcopy(ours), False, "aten"),
        }
    optimizers = {
        kind: Lamb(network.parameters(), lr=1e-3, weight_decay=1e-5)
        for kind, (network, *_) in networks.items()
    }

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    first, seconds = {}, {kind: ([], []) for kind in networks}  # forward, step
    for round_ in range(repeats + 1):  # the first round is the warm-up, and the one compared
        for kind, (network, bf16, kernels) in networks.items():
            if kernels is not None:
                os.environ[unet3d_backward.KERNELS_ENV] = kernels
            autocast = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16)
            start = time.perf_counter()
            with torch.no_grad(), autocast:
                network.eval()(**batch)
            sync()
            forward_s = time.perf_counter() - start
            network.train()
            optimizers[kind].zero_grad(set_to_none=True)
            start = time.perf_counter()
            with autocast:
                logits = network(**batch)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            loss.backward()
            if round_ == 0:
                grads = {  # parameters the case's inputs reach (VOOL: its batch's relations)
                    n: p.grad.detach().double().flatten()
                    for n, p in network.named_parameters()
                    if p.grad is not None
                }
                first[kind] = (loss.item(), {n: g.clone() for n, g in grads.items()})
            torch.nn.utils.clip_grad_norm_(network.parameters(), 2.0)
            optimizers[kind].step()
            sync()
            if round_ > 0:
                seconds[kind][0].append(forward_s)
                seconds[kind][1].append(time.perf_counter() - start)
    reference_loss, reference_grads = first[next(iter(networks))]
    results = []
    for kind, (loss, grads) in first.items():
        per_tensor = {
            name: float((grads[name] - r).norm() / r.norm().clamp_min(1e-30))
            for name, r in reference_grads.items()
        }
        worst = max(per_tensor, key=per_tensor.get)
        difference = torch.cat([grads[name] - r for name, r in reference_grads.items()])
        results.append(
            dict(
                kind=kind,
                forward_s=min(seconds[kind][0], default=float("nan")),
                step_s=min(seconds[kind][1], default=float("nan")),
                loss=loss,
                loss_relative=abs(loss - reference_loss) / abs(reference_loss),
                grad_relative=float(
                    difference.norm() / torch.cat([*reference_grads.values()]).norm()
                ),
                worst_tensor=worst,
                worst_tensor_relative=per_tensor[worst],
            )
        )
    queue.put(results)


def main(
    case: list[str] = typer.Option(list(CASES), help="cases to run"),
    device: str = "cpu",
    threads: int = 2,
    activation_checkpointing: bool = typer.Option(False, help="recompute UNet blocks in backward"),
    repeats: int = typer.Option(1, help="timed repeats after one warm-up; the minimum is reported"),
    profile: int = typer.Option(
        0, metavar="ROWS", help="then profile one more step: its ROWS costliest operators"
    ),
    compare_precision: str = typer.Option(
        None, help="an OVSSC case: fp32, bf16 autocast and original-style steps side by side"
    ),
    compare_kernels: str = typer.Option(
        None, help="a case: steps with the default CPU kernels and plain PyTorch's side by side"
    ),
) -> None:
    import processes

    print(f"{time.strftime('%Y-%m-%d')}, {processes.cpu_description()}, {threads} threads")
    context = mp.get_context("spawn")
    for comparison, compared in (("precision", compare_precision), ("kernels", compare_kernels)):
        if compared is None:
            continue
        queue = context.Queue()
        args = (comparison, compared, device, threads, repeats, queue)
        process = context.Process(target=compare_steps, args=args)
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"{compared}: failed (exit code {process.exitcode})")
        for row in queue.get():
            print(
                f"{compared} {row['kind']:22s} forward {row['forward_s']:6.2f} s   train step "
                f"{row['step_s']:6.2f} s   loss {row['loss']:.6f} (relative difference "
                f"{row['loss_relative']:.1e})   gradients: relative difference "
                f"{row['grad_relative']:.1e}, worst tensor {row['worst_tensor_relative']:.1e} "
                f"({row['worst_tensor']})",
                flush=True,
            )
    if compare_precision is not None or compare_kernels is not None:
        return
    results = []
    for name in case:
        queue = context.Queue()
        process = context.Process(
            target=run_case,
            args=(name, device, threads, activation_checkpointing, repeats, queue, profile),
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            print(f"{name}: failed (exit code {process.exitcode})")
            continue
        result = queue.get()
        results.append(result)
        print(
            f"{name:14s} forward {result['forward_s']:7.2f} s   train step {result['step_s']:7.2f} s   "
            f"peak {'GPU' if device != 'cpu' else 'RSS'} {result['peak_gb']:5.2f} GB",
            flush=True,
        )
    measured = {result["case"]: result for result in results}
    if "ovssc-default" in measured and REFERENCE_CASE in measured:
        ours, original = measured["ovssc-default"], measured[REFERENCE_CASE]
        print(
            f"ovssc-default vs {REFERENCE_CASE} (same run): "
            f"step {ours['step_s'] / original['step_s']:.2f}x the time, "
            f"peak {ours['peak_gb'] / original['peak_gb']:.2f}x the memory"
        )
    print(
        json.dumps(
            dict(
                device=device,
                threads=threads,
                activation_checkpointing=activation_checkpointing,
                results=results,
            )
        )
    )


if __name__ == "__main__":
    typer.run(main)
