"""What train_ovssc.py and train_vool.py share: data checks and loaders, optimizer and schedule, the
epoch loop, checkpoints and logging (spec: train-eval.md 1.4-1.8).

A task (tasks.Task: OVSSC or VOOL) brings its loss, its row columns and its forward; the process
group is processes.py's, the schedules schedules.py's; everything else is here.

Launch: one process (`python train_ovssc.py ...`), or `torchrun --nproc_per_node N [--nnodes M]`. DDP
runs whenever torchrun's WORLD_SIZE is above 1 (the original looked at `--gpus`), with gloo on CPU and
nccl on CUDA; each process takes the GPU of its LOCAL_RANK (the original used the global rank, so it
only ran on one machine).

Data randomness: the datasets draw from numpy's and torch's global generators. Every sample is drawn
under a seed made of (--seed, rank, epoch, position in the epoch), so two workers never repeat each
other's draws, every epoch differs, and a resumed run draws exactly what the uninterrupted run drew.
Workers are also seeded per worker and per epoch (worker_init_fn and the loader's generator).

Checkpoints hold the released keys (`net`, `optimizer`, `epochs`), which the original can load, plus
`scheduler`, `scaler`, `rng` and `position`: `--load <log>/latest.pth` then resumes exactly (same
learning rate, same next batch). A released checkpoint (three keys) resumes as the original did:
from its `epochs`, with the schedule restarted.

A run is never lost or mixed up: a --log that holds a run is refused unless the command says what
to do with it (`--resume` goes on from its latest.pth, `--load` starts from a checkpoint of that run,
`--overwrite` deletes it first), so torchrun's restarts and a scheduler's requeue can rerun the same
command with `--resume`. SIGTERM (a scheduler's notice before preemption, or torchrun shutting its
group down) lets the step in flight finish; the ranks agree on it with the step's own all-reduce,
rank 0 saves latest.pth at that position, and every process exits with 143 after one line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import checkpoint
import dataset
import metrics
import net
import options
import scene_file
from lamb import Lamb
from processes import Processes, broadcast, seed_all, setup_processes, teardown_processes
from schedules import SCHEDULES
from tasks import Task
from utils import InputError, atomic_path, remove_stale_temp_files, run_app

log = logging.getLogger("semabs.train")

TRAIN_CUTOFFS = [-1.0]  # spec 1.6: the train split is scored at logit -1
EVAL_CUTOFFS = np.arange(-2.7, 0, 0.3).tolist()  # 10 values, the last ~-1.8e-15 (kept as is)
EVAL_SPLITS = ("unseen_instances",)  # the only non-train split visited during training
TQDM_RATES = ("iou", "precision", "recall")
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a scheduler sees from a job its SIGTERM ended


# --------------------------------------------------------------------------------------------------
# data


def check_data(file_path: str, task: str, saliency_config: str) -> dict[str, list[str]]:
    """Split lists of --file_path, refusing with one line what training cannot read."""
    if not Path(file_path).is_dir():
        problem = "is not a folder" if Path(file_path).exists() else "does not exist"
        raise InputError(f"--file_path {file_path} {problem}")
    split_file = Path(file_path) / scene_file.SPLIT_FILES[task]
    if not split_file.is_file():
        raise InputError(
            f"--file_path {file_path} has no {split_file.name}; make a dataset with "
            f"`python generate_scenes.py dataset {file_path}` (which writes the split pickles)"
        )
    lists = scene_file.load_split_lists(file_path, task)
    if not lists.get("train"):
        raise InputError(f"{split_file} lists no train scenes")
    for split in ("train", *EVAL_SPLITS):
        for name in lists.get(split, [])[:1]:
            path = Path(file_path) / name
            if not path.is_file():
                raise InputError(f"{split_file} lists {name}, which is not in {file_path}")
            with scene_file.SceneFile(path) as scene:
                if not scene.has_relevancy(saliency_config):
                    raise InputError(
                        f"{path} has no relevancy maps for --saliency_config {saliency_config}; "
                        f"add them with `python generate_relevancy.py dataset {file_path} "
                        f"--configs {saliency_config}` (or --source oracle for ground-truth maps)"
                    )
    return lists


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
    """This process's sample order (spec 1.4): DistributedSampler(shuffle=True, drop_last=True) for
    train and (shuffle=False, drop_last=False) otherwise under DDP; a shuffle / the plain order
    without."""
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
    loader's generator; numpy and python follow it, so no two workers share a stream. SIGTERM ends a
    worker as usual (the main process's handler, which only raises a flag, is not inherited).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    data: torch.utils.data.Dataset,
    train: bool,
    args: argparse.Namespace,
    procs: Processes,
    epoch: int,
    start: int = 0,
) -> torch.utils.data.DataLoader:
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


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


# --------------------------------------------------------------------------------------------------
# optimizer and learning-rate schedule (spec 1.5; the schedules are schedules.py's)


def every(epoch: int, freq: int) -> bool:
    """--eval_freq / --save_freq: epochs 0, freq, 2 freq, ...; never when freq is 0."""
    return freq > 0 and epoch % freq == 0


def total_steps(args: argparse.Namespace, train_size: int, procs: Processes) -> int:
    """The original's T = epochs x (len(train) // batch_size), which ignores the world size (so N
    processes use 1/N of the cosine); --fix_lr_schedule_world_size counts this process's batches."""
    if args.fix_lr_schedule_world_size:
        return args.epochs * batches_per_epoch(train_size, args.batch_size, procs)
    return args.epochs * (train_size // args.batch_size)


def make_optimizer(model: nn.Module, args: argparse.Namespace, total: int):
    optimizer = Lamb(
        model.parameters(),
        lr=args.lr,
        betas=(0.9, 0.999),
        weight_decay=args.weight_decay,
        adam=False,
    )
    factor = functools.partial(
        _schedule_factor, kind=args.lr_scheduler_type, warmup=args.num_warmup_steps, total=total
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def _schedule_factor(step: int, kind: str, warmup: int, total: int) -> float:
    return SCHEDULES[kind](step, warmup, total)


# --------------------------------------------------------------------------------------------------
# checkpoints


def rng_state() -> dict:
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


@dataclass
class Position:
    """Where a run stands: `epoch`, and within it how many train batches are done and whether the
    train split is finished (evaluation follows)."""

    epoch: int = 0
    batches: int = 0
    train_done: bool = False


def save_state(path, model, optimizer, scheduler, scaler, position: Position) -> None:
    epochs = position.epoch + 1 if position.train_done else position.epoch
    extra = {
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(),
        "position": vars(position).copy(),
    }
    checkpoint.save_checkpoint(path, model, optimizer, epochs, extra=extra)


def restore_state(path, model, optimizer, scheduler, scaler, device) -> Position:
    """Load --load; return where to go on. Released checkpoints resume from their `epochs` with a
    fresh schedule (as the original); ours resume exactly."""
    log.info("loading from %s", path)
    ckpt = checkpoint.load_network(model, path, map_location=device)
    if ckpt.get("optimizer"):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as error:
            raise InputError(f"checkpoint {path}: optimizer state does not fit: {error}") from None
    if "position" not in ckpt:
        return Position(epoch=int(ckpt.get("epochs", 0)))
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return Position(**ckpt["position"])


def atomic_pickle(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        if isinstance(obj, pd.DataFrame):
            obj.to_pickle(tmp)
        else:
            with open(tmp, "wb") as f:
                pickle.dump(obj, f)


def check_log_dir(log_dir: Path) -> None:
    """Create --log (rank 0 only: no other rank writes anything) and check it can be written."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as error:
        raise InputError(f"--log {log_dir} cannot be written: {error.strerror or error}") from None


# --------------------------------------------------------------------------------------------------
# one pass over a split


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
    if not procs.ddp:
        return frame
    frames = [None] * procs.world_size
    dist.all_gather_object(frames, frame)
    return pd.concat(frames)


def match_gradient_layout(model: nn.Module) -> None:
    """Give every gradient its parameter's strides, as DDP's buckets expect (DDP compares strides
    exactly, then copies the gradient into its bucket each step and warns "Grad strides do not
    match bucket view strides"). Only size-1 axes can differ: a 1x1x1 conv weight is stored
    channels-last (unet3d) and its gradient comes plain or channels-last depending on the conv
    algorithm. Their strides address no memory, so the fix is a view of the same memory (free)."""
    for parameter in model.parameters():
        if parameter.requires_grad and 1 in parameter.shape:
            parameter.register_hook(functools.partial(_restride, stride=parameter.stride()))


def _restride(grad: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    if grad.stride() == stride:
        return grad
    same = all(n == 1 or a == b for n, a, b in zip(grad.shape, grad.stride(), stride, strict=True))
    return grad.as_strided(grad.shape, stride, grad.storage_offset()) if same else grad


def accuracy(logits: torch.Tensor, label: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    keep = ~ignore
    return ((logits > 0) == label)[keep].float().mean()


def grad_norm(model: nn.Module) -> float:
    norms = [p.grad.detach().norm(2) for p in model.parameters() if p.grad is not None]
    return torch.norm(torch.stack(norms), 2).item() if norms else 0.0


def weights_finite(model: nn.Module) -> bool:
    """No parameter holds nan or inf (one device sync)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def describe(stats: dict[str, float]) -> str:
    return " ".join(
        f"{k}: {v * 100:.2f}" if any(r in k for r in TQDM_RATES) else f"{k}: {v:.4e}"
        for k, v in stats.items()
    )


@dataclass
class Trainer:
    """One run's network, optimizer, schedule and writers: `step` (one batch), `run_split` (one pass
    over a split), `save` (a checkpoint of where the run stands)."""

    task: Task
    args: argparse.Namespace
    procs: Processes
    model: nn.Module  # DDP-wrapped under DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    writers: dict
    stop_after_steps: int | None = None  # tests: save latest.pth and stop after this many steps
    deadline: float | None = None  # benchmarks: the same once time.monotonic() passes this
    # DDP: gradients stay views of DDP's buckets (zeroed in place, not dropped) unless some
    # parameters go without a gradient, whose LAMB step must stay skipped as in one process
    zero_grads_in_place: bool = False
    signals: list = field(default_factory=list)  # SIGTERMs received (sigterm_flag)
    terminated: bool = False  # the ranks agreed to stop on a SIGTERM

    @property
    def bare(self) -> nn.Module:
        return checkpoint.unwrap(self.model)

    def autocast(self):
        args = self.args
        dtype = torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16
        return torch.autocast(self.procs.device.type, dtype=dtype, enabled=bool(args.use_amp))

    def step(self, batch: dict, cutoffs: list[float], train: bool):
        """One batch: forward, loss and (train) the optimizer step; -> (stats, per-row frame)."""
        with self.autocast():
            logits = self.task.forward(self.model, batch)
            loss, label, ignore, padded = self.task.loss_fn(logits, batch, self.args)
        stats = {"loss": loss.item(), "accuracy": accuracy(logits.detach(), label, ignore).item()}
        if train:
            self.optimizer.zero_grad(set_to_none=not self.zero_grads_in_place)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_max_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.bare.steps += 1
            stats["gradnorm"] = grad_norm(self.model)
        frame = metrics.row_stats(
            logits.detach().float(),
            label,
            ignore,
            batch["output_xyz_pts"],
            cutoffs,
            self.args.scene_bounds,
            self.task.row_columns(batch),
            padded,
        )
        for column in frame.columns:
            if "iou" in column:
                stats[column] = float(frame[column].astype(float).mean())  # NaN: all padding
        return stats, frame

    def run_split(self, split: str, data, position: Position) -> tuple[pd.DataFrame, bool]:
        """One pass; -> (per-row frame, whether the split was run to its end)."""
        train = split == "train"
        start = position.batches if train else 0
        loader = make_loader(data, train, self.args, self.procs, position.epoch, start)
        self.model.train(train)
        cutoffs = TRAIN_CUTOFFS if train else EVAL_CUTOFFS
        writer = self.writers.get(split)
        frames, history, complete = [], [], True
        bar = tqdm(
            loader,
            unit="batch",
            smoothing=0.01,
            postfix=f"| {split.upper()} ",
            disable=not self.procs.main,
            dynamic_ncols=True,
        )
        for index, batch in enumerate(bar, start=start):
            try:
                batch = to_device(batch, self.procs.device)
                with torch.set_grad_enabled(train):
                    stats, frame = self.step(batch, cutoffs, train)
            except InputError:
                raise
            except Exception as error:
                raise RuntimeError(
                    f"training stopped in epoch {position.epoch}, split {split}, batch {index}: "
                    f"{type(error).__name__}: {error}"
                ) from error
            # every rank sees a nan loss and a SIGTERM of any rank
            stats, terminated = reduce_stats(stats, self.procs, stop=bool(self.signals))
            self.terminated = self.terminated or terminated
            if train:
                self.check_finite(stats["loss"], position.epoch)
            frames.append(gather_frames(frame, self.procs))
            history.append(stats)
            bar.set_description(describe(stats))
            if train:
                position.batches = index + 1
                steps = int(self.bare.steps.item())
                if writer is not None:
                    for key, value in stats.items():
                        writer.add_scalar(key, value, steps)
                    writer.add_scalar("lr", self.scheduler.get_last_lr()[0], steps)
                if self.stopped():
                    complete = index + 1 >= start + len(loader)
                    break
            elif self.terminated:
                complete = False
                break
        if writer is not None and history:
            steps = int(self.bare.steps.item())
            for key in history[0]:
                writer.add_scalar(f"{key}_mean", np.nanmean([h[key] for h in history]), steps)
            writer.flush()
        return (pd.concat(frames) if frames else pd.DataFrame()), complete

    def check_finite(self, loss: float, epoch: int) -> None:
        """Stop the run when a training step left a non-finite loss (fp32/bf16: under fp16 the
        gradient scaler skips such steps itself) or non-finite weights, before anything is saved.
        Under DDP the loss is the ranks' mean and the weights are alike, so every rank stops."""
        if self.scaler is None and not math.isfinite(loss):
            problem = f"loss is {loss}"
        elif not weights_finite(self.bare):
            problem = "the weights are not finite"
        else:
            return
        latest = Path(self.args.log) / "latest.pth"
        saved = f"{latest} holds the last saved state" if latest.is_file() else "nothing was saved"
        raise InputError(
            f"training stopped: {problem} at epoch {epoch}, step {int(self.bare.steps.item())}; "
            f"no checkpoint written for this state ({saved}; try a lower --lr)"
        )

    def save(self, path: Path, position: Position) -> None:
        save_state(path, self.model, self.optimizer, self.scheduler, self.scaler, position)

    def stopped(self) -> bool:
        if self.terminated:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            return True
        return (
            self.stop_after_steps is not None
            and int(self.bare.steps.item()) >= self.stop_after_steps
        )


# --------------------------------------------------------------------------------------------------
# the run


def prepare_args(task: str, argv: list[str] | None) -> argparse.Namespace:
    args = options.finalize(options.training_parser(task).parse_args(argv))
    if args.bce_positive_weight is not None and args.balance_positive_negative:
        raise InputError(
            "--bce_positive_weight and --balance_positive_negative both weigh the BCE's "
            "positives: give one"
        )
    if args.relation_offsets and (task, args.approach) != ("vool", "semantic_abstraction"):
        raise InputError(
            f"--relation_offsets is an option of VOOL's semantic_abstraction network, not of "
            f"{task}'s {args.approach}"
        )
    return args


def check_resume_args(args: argparse.Namespace, log_dir: Path) -> None:
    """A resumed run (--load with args.pkl in --log) must use the stored flags; list any that differ."""
    stored_path = log_dir / options.ARGS_FILE
    if args.load is None or not stored_path.is_file():
        return
    changed = options.differences(options.load_args(stored_path), args)
    if changed:
        raise InputError(
            f"flags differ from {stored_path}: {'; '.join(changed)} "
            "(resume with the stored flags, or train into a new --log)"
        )


# --------------------------------------------------------------------------------------------------
# one run per --log: refuse to mix runs, --resume, --overwrite

LATEST = "latest.pth"
STATS_FILE = "detailed_stats.pkl"


def run_files(log_dir: Path) -> list[Path]:
    """The files a run leaves in --log: latest.pth, args.pkl, detailed_stats.pkl, ckpt_<epoch>.pth
    and the TensorBoard event files of its split folders."""
    if not log_dir.is_dir():
        return []
    named = [log_dir / name for name in (LATEST, options.ARGS_FILE, STATS_FILE)]
    return [
        *(path for path in named if path.is_file()),
        *sorted(log_dir.glob("ckpt_*.pth")),
        *sorted(log_dir.glob("*/events.out.tfevents.*")),
    ]


def describe_latest(latest: Path) -> str:
    """'<log>/latest.pth: epoch E, step S': the epoch a resume goes on in (the checkpoint's
    `epochs`) and the optimizer steps taken; read through a memory map, not loaded."""
    try:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True, mmap=True)
        epoch, steps = int(ckpt["epochs"]), ckpt["net"].get("steps")
    except Exception as error:  # torch raises many types for truncated or foreign files
        return f"{latest}, not readable: {checkpoint.load_failure(error)}"
    return f"{latest}: epoch {epoch}" + (f", step {int(steps.item())}" if steps is not None else "")


def describe_run(log_dir: Path, files: list[Path]) -> str:
    if log_dir / LATEST in files:
        return describe_latest(log_dir / LATEST)
    names = [path.relative_to(log_dir).as_posix() for path in files]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"no {LATEST}, but {shown}"


def claim_log_dir(args: argparse.Namespace, log_dir: Path) -> str | None:
    """Rank 0, before anything is written: create --log, remove the temporary files of killed
    writers, and settle what happens to a run already there. -> the checkpoint to start from.

    Without --load, --resume or --overwrite a run in --log is refused, as is --load of a checkpoint
    from elsewhere (its latest.pth would be overwritten by another run). --resume goes on from
    latest.pth when there is one (else the run starts: a restart before the first save);
    --overwrite, and --resume without latest.pth, first delete the earlier run's files.
    """
    check_log_dir(log_dir)
    for stale in remove_stale_temp_files(log_dir):
        print(f"removed {stale}, left by an interrupted run", flush=True)
    files = run_files(log_dir)
    latest = log_dir / LATEST
    if args.resume and latest in files:
        print(f"--resume: continuing {describe_latest(latest)}", flush=True)
        return str(latest)
    load_here = args.load is not None and Path(args.load).resolve().parent == log_dir.resolve()
    if not files:
        if args.resume:
            print(f"--resume: no {latest} yet, starting the run", flush=True)
        return args.load
    if args.overwrite or args.resume:
        if load_here:
            flag = "--overwrite" if args.overwrite else f"--resume (without {LATEST})"
            raise InputError(
                f"--load {args.load} lies in --log {log_dir}, whose run {flag} deletes: copy it "
                "elsewhere first"
            )
        described = describe_run(log_dir, files)
        for path in files:
            path.unlink()
        why = "--overwrite" if args.overwrite else f"--resume found no {LATEST}"
        print(f"{why}: removed the earlier run's {len(files)} files from {log_dir} ({described})")
        return args.load
    if load_here:
        return args.load
    ways = "continue it with --resume, train into another --log, or start over with --overwrite"
    if args.load is not None:
        ways = f"--load {args.load} is not from this run: {ways}"
    raise InputError(f"--log {log_dir} holds a run ({describe_run(log_dir, files)}); {ways}")


# --------------------------------------------------------------------------------------------------
# SIGTERM: save where the run stands and stop


class Preempted(Exception):
    """Training stopped on SIGTERM after saving latest.pth; the message is the line printed."""


@contextlib.contextmanager
def sigterm_flag():
    """Within the block SIGTERM only appends to the yielded list, which the training loop reads
    after each step; the previous handler comes back after it. Main thread only (signal.signal)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_line(args: argparse.Namespace, position: Position, model: nn.Module) -> str:
    latest = Path(args.log) / LATEST
    return (
        f"stopped by SIGTERM at epoch {position.epoch}, step {int(model.steps.item())}; saved "
        f"{latest} (continue with the same command and --resume)"
    )


def text_encoder(args: argparse.Namespace, device: torch.device):
    """Semantic-aware VOOL: CLIP ViT-B-32 text features of the bare object names (models.md 2.4)."""
    import relevancy

    model, tokenizer = relevancy.load_model(checkpoint=args.clip_checkpoint, device=device)

    def encode(names: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_text(tokenizer(names).to(device)).float()

    return encode


def network_on_device(task: str, args: argparse.Namespace, device: torch.device, **overrides):
    """net.build_network's network for args, moved to `device`; semantic-aware VOOL also gets the
    CLIP text encoder its names need (the original ran CLIP inside the network)."""
    if (task, args.approach) == ("vool", "semantic_aware") and "text_encoder" not in overrides:
        overrides["text_encoder"] = text_encoder(args, device)
    return net.build_network(task, args.approach, args, **overrides).to(device)


def train(
    task: Task,
    args: argparse.Namespace,
    stop_after_steps: int | None = None,
    max_seconds: float | None = None,
    **network_overrides,
) -> nn.Module:
    """Train as train-eval.md 1.6; returns this process's (bare) network.

    stop_after_steps / max_seconds (tests, benchmarks): save latest.pth and return after that many
    optimizer steps / once that much time has passed (checked after each training step).
    network_overrides: constructor arguments beyond args (tests: a small text encoder).
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    procs = setup_processes(args.device)
    try:
        trainer, datasets, position = setup(task, args, procs, network_overrides)
        trainer.stop_after_steps, trainer.deadline = stop_after_steps, deadline
        try:
            with sigterm_flag() as trainer.signals:
                position = run_epochs(trainer, datasets, position)
        finally:
            for writer in trainer.writers.values():
                writer.close()
        if trainer.terminated:
            if procs.ddp:  # no rank leaves (torchrun would stop the rest) before rank 0 saved
                dist.barrier()
            line = preempted_line(args, position, trainer.bare)
            if procs.main:
                print(line, file=sys.stderr, flush=True)
            raise Preempted(line)
        if procs.main and deadline is not None and time.monotonic() > deadline:
            print(out_of_time_line(args, max_seconds, position, trainer.bare), flush=True)
        return trainer.bare
    finally:
        teardown_processes()


def out_of_time_line(
    args: argparse.Namespace, max_seconds: float, position: Position, model: nn.Module
) -> str:
    """The closing line of a run stopped by --max_minutes: where it stopped and how to go on."""
    latest = Path(args.log) / "latest.pth"
    return (
        f"stopped after --max_minutes {max_seconds / 60:g} at epoch {position.epoch}, step "
        f"{int(model.steps.item())}; saved {latest} (resume with the same command and --load {latest})"
    )


def setup(
    task: Task, args: argparse.Namespace, procs: Processes, network_overrides: dict
) -> tuple[Trainer, dict, Position]:
    """Everything before the first epoch: checks, seeds, datasets, the network, optimizer and
    schedule, the state of --load, DDP and (rank 0) args.pkl and the TensorBoard writers.
    -> (trainer, {split: dataset}, where to start)."""
    log_dir = Path(args.log)
    if args.use_amp and args.amp_dtype == "fp16" and procs.device.type != "cuda":
        raise InputError(
            "--use_amp with --amp_dtype fp16 needs CUDA (its gradient scaler); on CPU use "
            "--amp_dtype bf16, or drop --use_amp"
        )
    problem = None
    if procs.main:
        try:
            args.load = claim_log_dir(args, log_dir)
        except InputError as error:
            problem = str(error)
    problem, args.load = broadcast((problem, args.load), procs)
    if problem:
        raise InputError(problem)
    check_resume_args(args, log_dir)
    lists = check_data(args.file_path, task.name, args.saliency_config)
    seed_all(args.seed + procs.rank)
    if procs.device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    datasets = dataset.make_datasets(
        args.file_path, task.name, dataset.DatasetConfig.from_args(args), splits=tuple(lists)
    )
    left_out = dataset.drop_scenes_without_rows(datasets, EVAL_SPLITS)  # no row to score
    if left_out and procs.main:
        print(dataset.without_rows_note(task.name, left_out), flush=True)
    log.info("DATASET AT %s", args.file_path)
    log.info(" | ".join(f"{split}: {len(d)}" for split, d in datasets.items()))

    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = network_on_device(task.name, args, procs.device, **network_overrides)
    log.info("NUM PARAMS: %d", sum(p.numel() for p in model.parameters()))
    total = total_steps(args, len(datasets["train"]), procs)
    optimizer, scheduler = make_optimizer(model, args, total)
    fp16 = args.use_amp and args.amp_dtype == "fp16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    position = Position()
    if args.load:
        position = restore_state(args.load, model, optimizer, scheduler, scaler, procs.device)
    model, zero_grads_in_place = distribute(model, procs)

    writers = {}
    if procs.main:
        options.save_args(args, log_dir)
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run's TensorBoard drops the steps an earlier attempt logged past its save
        purge = int(checkpoint.unwrap(model).steps.item()) if args.load else None
        writers = {split: SummaryWriter(str(log_dir / split), purge_step=purge) for split in lists}
    trainer = Trainer(task, args, procs, model, optimizer, scheduler, scaler, writers)
    trainer.zero_grads_in_place = zero_grads_in_place
    return trainer, datasets, position


def distribute(model: nn.Module, procs: Processes) -> tuple[nn.Module, bool]:
    """The network wrapped in DDP under torchrun (else as it is), and whether the trainer should
    zero gradients in place (Trainer.zero_grads_in_place).

    The unused-parameter search only for networks that leave some parameters without a gradient
    (it costs a traversal of the graph each step, and warns when it finds none); gradients laid
    out as DDP's buckets (match_gradient_layout) and kept as views of them, zeroed in place, so no
    gradient is copied into its bucket each step.
    """
    if not procs.ddp:
        return model, False
    unused = net.leaves_parameters_unused(model)
    match_gradient_layout(model)
    wrapped = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
        find_unused_parameters=unused,
        gradient_as_bucket_view=True,
    )
    return wrapped, not unused


def run_epochs(trainer: Trainer, datasets: dict, position: Position) -> Position:
    """The epoch loop of train-eval.md 1.6 from `position`; -> where the run stopped.

    Each epoch: train (latest.pth after it), ckpt_<epoch>.pth every --save_freq epochs and after
    the last (none with --save_freq 0), the evaluation splits every --eval_freq epochs, and
    latest.pth past the epoch once it was evaluated (without evaluation, training's latest.pth
    already holds this state). A SIGTERM returns after the step in flight. The rows of
    every split go to detailed_stats.pkl. The periodic checkpoint is written before evaluation
    (which leaves the weights as they are) and before latest.pth moves past the epoch: a run killed
    while writing it resumes inside the epoch and writes it again, where the original, writing it
    last, lost it."""
    args, procs = trainer.args, trainer.procs
    log_dir = Path(args.log)
    stats = StatsFile(log_dir / STATS_FILE, resume=bool(args.load), main=procs.main)
    for epoch in range(position.epoch, args.epochs):
        if position.epoch != epoch:
            position = Position(epoch=epoch)
        log.info("========== EPOCH %d ==========", epoch)
        epoch_frames = []
        if not position.train_done:
            frame, position.train_done = trainer.run_split("train", datasets["train"], position)
            if procs.main:
                trainer.save(log_dir / "latest.pth", position)
            if trainer.stopped():
                return position
            epoch_frames.append(stats.add(frame, epoch, "train"))
        after = Position(epoch=epoch + 1)
        last = epoch == args.epochs - 1
        if procs.main and args.save_freq > 0 and (every(epoch, args.save_freq) or last):
            trainer.save(log_dir / f"ckpt_{epoch}.pth", after)
            log.info("Saved checkpoint to %s", log_dir / f"ckpt_{epoch}.pth")
        evaluated = [s for s in EVAL_SPLITS if s in datasets and every(epoch, args.eval_freq)]
        for split in evaluated:
            frame, _ = trainer.run_split(split, datasets[split], position)
            if trainer.terminated:  # latest.pth (after training) holds this state: redo the split
                return position
            epoch_frames.append(stats.add(frame, epoch, split))
        if procs.main and epoch_frames:
            rows = metrics.epoch_summary(
                pd.concat(epoch_frames), fix_rate_argmin=args.fix_rate_argmin
            )
            print(metrics.format_epoch_summary(rows), flush=True)
        if procs.main and evaluated:
            trainer.save(log_dir / "latest.pth", after)
        position = after
        if trainer.stopped():
            return position
    return position


class StatsFile:
    """detailed_stats.pkl: every split's rows of the run, rewritten (atomically, on the main
    process) as each split ends; a resumed run appends to the rows already there."""

    def __init__(self, path: Path, resume: bool, main: bool):
        self.path, self.main = path, main
        self.frames = [pd.read_pickle(path)] if (resume and path.is_file() and main) else []

    def add(self, frame: pd.DataFrame, epoch: int, split: str) -> pd.DataFrame:
        """Tag a split's rows with epoch and split, store them; -> the tagged rows."""
        frame = frame.assign(epoch=epoch, split=split)
        if self.main:
            self.frames.append(frame)
            atomic_pickle(pd.concat(self.frames), self.path)
        return frame


def main(task: Task, argv: list[str] | None = None) -> None:
    """Entry point of the two scripts, through the one top-level error handler (utils.run_app)."""

    def run() -> None:
        args = prepare_args(task.name, argv)
        if args.max_minutes is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise InputError("--max_minutes works in one process only (each rank would stop alone)")
        try:
            train(
                task, args, max_seconds=None if args.max_minutes is None else args.max_minutes * 60
            )
        except Preempted:
            sys.exit(EXIT_PREEMPTED)  # its line is printed (rank 0)

    run_app(run)
