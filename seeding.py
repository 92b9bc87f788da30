"""Data order and seeding: which samples each process reads in an epoch, the seed every sample is
drawn under, and the random state a checkpoint keeps (docs/training.md).

The datasets draw from numpy's and torch's global generators. Every sample is drawn under a seed
made of (--seed, rank, epoch, position in the epoch), so two workers never repeat each other's
draws, every epoch differs, and a resumed run draws exactly what the uninterrupted run drew.
Workers are also seeded per worker and per epoch (worker_init_fn and the loader's generator).
evaluation.py reads its scenes through the same `SeededSamples` (seed (--seed, 0, 0, scene index)).
"""

from __future__ import annotations

import argparse
import atexit
import math
import multiprocessing
import random
import signal

import numpy as np
import torch

from processes import Processes


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a dataset; item (position, index) is drawn under a seed of (seed, rank, epoch, position).

    In a worker the global generators are simply reseeded; in the main process (num_workers=0) they
    are saved and restored around the draw, so training's own randomness is untouched.
    """

    def __init__(self, base: torch.utils.data.Dataset, seed: int, rank: int):
        self.base, self.seed, self.rank, self.epoch = base, seed, rank, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        position, index = key
        state = np.random.SeedSequence([self.seed, self.rank, self.epoch, position]).generate_state(
            2
        )
        if torch.utils.data.get_worker_info() is not None:
            _seed_globals(int(state[0]), int(state[1]))
            return self.base[index]
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            _seed_globals(int(state[0]), int(state[1]))
            return self.base[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _seed_globals(numpy_seed: int, torch_seed: int) -> None:
    random.seed(numpy_seed)
    np.random.seed(numpy_seed)
    torch.manual_seed(torch_seed)


class PositionSampler(torch.utils.data.Sampler):
    """Yields (position, index) of one epoch's order, from `start` on (to resume mid-epoch)."""

    def __init__(self, order: list[int], start: int = 0):
        self.order, self.start = order, start

    def __iter__(self):
        return iter((p, self.order[p]) for p in range(self.start, len(self.order)))

    def __len__(self) -> int:
        return len(self.order) - self.start


def epoch_order(size: int, train: bool, procs: Processes, seed: int, epoch: int) -> list[int]:
    """This process's sample order, the original's: under DDP DistributedSampler(shuffle=True,
    drop_last=True) for train and (shuffle=False, drop_last=False) otherwise; without, a shuffle /
    the plain order."""
    if procs.ddp:
        sampler = torch.utils.data.DistributedSampler(
            range(size),
            num_replicas=procs.world_size,
            rank=procs.rank,
            shuffle=train,
            drop_last=train,
            seed=seed,
        )
        sampler.set_epoch(epoch)
        return list(sampler)
    if not train:
        return list(range(size))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=g).tolist()


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: torch seeds each worker with base_seed + id, the base drawn per epoch from the
    loader's generator; numpy and python follow it, so no two workers share a stream.

    A worker ignores SIGTERM: torchrun and schedulers send it to the whole process group, and a
    worker that died of it would end its main process with a traceback before that process saved
    (torch's "DataLoader worker is killed by signal"). The main process stops its workers when it
    leaves (kill_workers_at_exit); a worker whose main process is gone ends by itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@atexit.register  # after multiprocessing's exit handler is registered, so it runs before it
def kill_workers_at_exit() -> None:
    """SIGKILL the DataLoader workers still alive when the main process exits (a loader that an
    error's traceback still held): multiprocessing's exit handler would send them SIGTERM, which
    they ignore (seed_worker), and then wait for them for ever."""
    for child in multiprocessing.active_children():
        if child.daemon:  # DataLoader workers; nothing else of ours is a daemonic Process
            child.kill()


def make_loader(
    data: torch.utils.data.Dataset,
    train: bool,
    args: argparse.Namespace,
    procs: Processes,
    epoch: int,
    start: int = 0,
) -> torch.utils.data.DataLoader:
    """One epoch's loader of a split, from position `start` on (--batch_size for train, else 1)."""
    wrapped = SeededSamples(data, args.seed, procs.rank)
    wrapped.epoch = epoch
    order = epoch_order(len(data), train, procs, args.seed, epoch)
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([args.seed, procs.rank, epoch]).generate_state(1)[0])
    )
    return torch.utils.data.DataLoader(
        wrapped,
        batch_size=args.batch_size if train else 1,
        sampler=PositionSampler(order, start),
        num_workers=args.num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=procs.device.type == "cuda",
        persistent_workers=False,
    )


def batches_per_epoch(size: int, batch_size: int, procs: Processes) -> int:
    per_process = size // procs.world_size if procs.ddp else size
    return math.ceil(per_process / batch_size)


# --------------------------------------------------------------------------------------------------
# the random state a checkpoint keeps


def rng_state() -> dict:
    """python's, numpy's, torch's and CUDA's global generator states, as a weights-only checkpoint
    can hold them (tensors, numbers, tuples)."""
    state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": state[0],
            "keys": torch.from_numpy(state[1].astype(np.int64)),
            "pos": int(state[2]),
            "has_gauss": int(state[3]),
            "gauss": float(state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
