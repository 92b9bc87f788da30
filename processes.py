"""Devices, seeds and the torch.distributed process group: what each process runs on, which share
of the work it takes, and what the processes tell each other (broadcast, rank means, gathered rows).

Under torchrun (WORLD_SIZE > 1) every process reads RANK, LOCAL_RANK and WORLD_SIZE; on CUDA it uses
LOCAL_RANK's GPU and the nccl backend, on the CPU gloo. Work is shared by `shard`: every
world_size-th item from the process's rank, no padding, no item twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from utils import InputError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when available; asking for CUDA without it is an InputError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device} was asked for but CUDA is not available; use --device cpu"
        )
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs in hardware on `device`: a CUDA GPU with native bf16, or a CPU
    with AMX or AVX512-BF16 (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, since torch 2.1
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def bf16_emulated_on(device: torch.device) -> str | None:
    """Where bf16 is emulated, the words for it ("this CPU (AVX2: no AMX or AVX512-BF16)"), for the
    one-line refusals of the options that ask for bf16; None where the hardware runs it."""
    if bf16_is_fast(device):
        return None
    if device.type == "cuda":
        return f"this GPU ({torch.cuda.get_device_name(device)}: no native bf16)"
    return f"this CPU ({torch.backends.cpu.get_cpu_capability()}: no AMX or AVX512-BF16)"


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch with every tensor on `device` (other values as they are)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def cpu_description() -> str:
    """The CPU's model name, the instruction set PyTorch's CPU kernels use, and whether bf16 runs in
    hardware: the machine line of the benchmarks (docs/performance.md dates each figure with it)."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        names = [line for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    bf16 = "bf16 in hardware" if bf16_is_fast(torch.device("cpu")) else "bf16 emulated"
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}, {bf16}"


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def local_device(device_flag: str) -> torch.device:
    """The device of this process: `resolve_device`, except that CUDA without an index, or any
    CUDA device under torchrun, becomes LOCAL_RANK's GPU."""
    device = resolve_device(device_flag)
    if device.type == "cuda" and (device.index is None or int(os.environ.get("WORLD_SIZE", 1)) > 1):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


@dataclass
class Processes:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def setup_processes(device_flag: str) -> Processes:
    """Read torchrun's environment; init the process group when WORLD_SIZE > 1 (gloo on CPU, nccl on
    CUDA); the device is LOCAL_RANK's GPU under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = local_device(device_flag)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, store=attempt_store(world_size), rank=rank, world_size=world_size
        )
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.ERROR,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    return Processes(rank, local_rank, world_size, device)


def attempt_store(world_size: int) -> dist.Store | None:
    """The store the process group meets in: under torchrun, a namespace of the agent's store for
    this attempt of the group (None elsewhere: init_process_group's env:// as usual).

    torchrun (torch 2.14) serves the same store to every attempt of a restarted group
    (--max-restarts): without a namespace per attempt the restarted processes read the dead ones'
    addresses from it, and gloo fails to connect ("Connection refused") or waits for them.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False
    )
    return dist.PrefixStore(f"semabs/attempt_{attempt}", store)


def teardown_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: list, rank: int, world_size: int) -> list:
    """This process's share: every world_size-th item from rank (torchrun's RANK, WORLD_SIZE)."""
    if not 0 <= rank < world_size:
        raise InputError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return items[rank::world_size]


def broadcast(value, procs: Processes):
    """Rank 0's value on every process."""
    if not procs.ddp:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_stats(
    stats: dict[str, float], procs: Processes, stop: bool = False
) -> tuple[dict[str, float], bool]:
    """Rank mean of each scalar, all-reduced on the process group's device; and whether any rank
    asked to stop (SIGTERM), carried by the same all-reduce: every rank stops at the same step."""
    if not procs.ddp:
        return stats, stop
    keys = sorted(stats)
    values = [stats[k] for k in keys] + [float(stop)]
    values = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(values)
    *means, stops = (values / procs.world_size).tolist()
    return dict(zip(keys, means)), stops > 0


def gather_frames(frame: pd.DataFrame, procs: Processes) -> pd.DataFrame:
    """Every process's rows, concatenated in rank order (the frame itself in one process)."""
    if not procs.ddp:
        return frame
    frames = [None] * procs.world_size
    dist.all_gather_object(frames, frame)
    return pd.concat(frames)


# what gloo says when the other end of a collective is gone
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def broken_connection(error: BaseException) -> str | None:
    """Why a collective failed, when the cause is a process of the group that is gone: gloo's broken
    connection, or one of torch's distributed errors (DistError: nccl's, the store's); None for
    any other error."""
    text = str(error)
    gone = next((marker for marker in PEER_GONE if marker in text), None)
    if gone is not None:
        return gone[0].lower() + gone[1:]
    if isinstance(error, dist.DistError):
        return text.splitlines()[0][:120] if text else type(error).__name__
    return None
