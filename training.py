"""The training loop of train_ovssc.py and train_vool.py: data checks, one pass over a split, the
epoch loop (docs/method.md#training).

A task (tasks.Task: OVSSC or VOOL) brings its loss, its row columns and its forward; the process
group and its collectives are processes.py's, the data order and seeding seeding.py's, the network
(on its device, in DDP) network_setup.py's, the optimizer and its schedule optimization.py's, and the run folder's life
(claim, --resume, --overwrite, the checkpoints of where the run stands, the stats file, SIGTERM)
run_folder.py's.

Launch: one process (`python train_ovssc.py ...`), or `torchrun --nproc_per_node N [--nnodes M]`. DDP
runs whenever torchrun's WORLD_SIZE is above 1 (the original looked at `--gpus`), with gloo on CPU and
nccl on CUDA; each process takes the GPU of its LOCAL_RANK (the original used the global rank, so it
only ran on one machine).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
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
import optimization
import options
import run_folder
import scene_file
from network_setup import distribute, network_on_device
from processes import (
    Processes,
    bf16_emulated_on,
    broadcast,
    broken_connection,
    gather_frames,
    reduce_stats,
    seed_all,
    setup_processes,
    teardown_processes,
    to_device,
)
from run_folder import Position
from seeding import make_loader
from tasks import Task
from utils import InputError, run_app

log = logging.getLogger("semabs.train")

TRAIN_CUTOFFS = [-1.0]  # the train split is scored at logit -1 (docs/method.md#the-epoch-loop)
EVAL_CUTOFFS = np.arange(-2.7, 0, 0.3).tolist()  # 10 values, the last ~-1.8e-15 (kept as is)
EVAL_SPLITS = ("unseen_instances",)  # the only non-train split visited during training
TQDM_RATES = ("iou", "precision", "recall")


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


# --------------------------------------------------------------------------------------------------
# optimizer and learning-rate schedule (docs/method.md#lamb-and-the-learning-rate-schedule)


def every(epoch: int, freq: int) -> bool:
    """--eval_freq / --save_freq: epochs 0, freq, 2 freq, ...; never when freq is 0."""
    return freq > 0 and epoch % freq == 0


# --------------------------------------------------------------------------------------------------
# one pass over a split


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
    terminated: bool = False  # the ranks agreed to stop on a SIGTERM, or the group broke
    lost: str | None = None  # why the group broke: another of its processes ended

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
                if train:
                    position.batches = index + 1  # the weights hold this batch's step
                # every rank sees a nan loss and a SIGTERM of any rank
                stats, terminated = reduce_stats(stats, self.procs, stop=bool(self.signals))
                frame = gather_frames(frame, self.procs)
            except InputError:
                raise
            except Exception as error:
                self.lost = self.group_lost(error)
                if self.lost is None:
                    raise RuntimeError(
                        f"training stopped in epoch {position.epoch}, split {split}, batch "
                        f"{index}: {type(error).__name__}: {error}"
                    ) from error
                self.terminated, complete = True, False
                break
            self.terminated = self.terminated or terminated
            if train:
                self.check_finite(stats["loss"], position.epoch)
            frames.append(frame)
            history.append(stats)
            bar.set_description(describe(stats))
            if train:
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

    def group_lost(self, error: Exception) -> str | None:
        """Under DDP, why a step or its collectives failed when the cause is another process of
        the group that ended (killed, out of memory, a lost machine): a collective's broken
        connection, or the SIGTERM with which torchrun stops the rest of the group. None for any
        other error. The weights and the position then agree on the last step the whole group
        took (a step's gradient all-reduce comes before its optimizer step, and the position counts
        the step once that is taken), which rank 0 saves."""
        if not self.procs.ddp:
            return None
        reason = broken_connection(error)
        if reason is None and self.signals:
            reason = f"SIGTERM, then {type(error).__name__}"
        return reason

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
        run_folder.save_state(
            path, self.model, self.optimizer, self.scheduler, self.scaler, position
        )

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


def train(
    task: Task,
    args: argparse.Namespace,
    stop_after_steps: int | None = None,
    max_seconds: float | None = None,
    **network_overrides,
) -> nn.Module | None:
    """Train as docs/method.md#the-epoch-loop says; returns this process's (bare) network (None when --load's
    checkpoint has trained every epoch already: nothing left to train, nothing written).

    stop_after_steps / max_seconds (tests, benchmarks): save latest.pth and return after that many
    optimizer steps / once that much time has passed (checked after each training step).
    network_overrides: constructor arguments beyond args (tests: a small text encoder).
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    procs = setup_processes(args.device)
    try:
        try:
            with run_folder.refusal_leaves_no_folder(Path(args.log), procs.main):
                trainer, datasets, position = setup(task, args, procs, network_overrides)
        except run_folder.Finished as finished:
            if procs.main:
                print(finished, flush=True)
            return None
        trainer.stop_after_steps, trainer.deadline = stop_after_steps, deadline
        try:
            with run_folder.sigterm_flag() as trainer.signals:
                position = run_epochs(trainer, datasets, position)
        finally:
            for writer in trainer.writers.values():
                writer.close()
        if trainer.terminated:
            if procs.ddp and trainer.lost is None:  # no rank leaves before rank 0 saved
                dist.barrier()  # (torchrun would stop the rest)
            line = run_folder.preempted_line(args, position, trainer.bare, trainer.lost)
            if procs.main:
                print(line, file=sys.stderr, flush=True)
            raise run_folder.Preempted(line)
        if procs.main and deadline is not None and time.monotonic() > deadline:
            print(
                run_folder.out_of_time_line(args, max_seconds, position, trainer.bare), flush=True
            )
        return trainer.bare
    finally:
        teardown_processes()


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
    emulated = bf16_emulated_on(procs.device) if args.use_amp and args.amp_dtype == "bf16" else None
    if emulated:
        instead = (
            "its convolutions run hundreds of times slower than fp32 "
            "(docs/performance.md#bf16-training-on-the-cpu); drop --use_amp"
            if procs.device.type == "cpu"
            else "use --amp_dtype fp16"
        )
        raise InputError(f"--use_amp --amp_dtype bf16 is emulated on {emulated}: {instead}")
    problem = finished = None
    if procs.main:
        try:
            args.load = run_folder.claim_log_dir(args, log_dir)
        except InputError as error:
            problem = str(error)
        except run_folder.Finished as done:
            finished = str(done)
    problem, finished, args.load = broadcast((problem, finished, args.load), procs)
    if problem:
        raise InputError(problem)
    if finished:
        raise run_folder.Finished(finished)
    flags_note = run_folder.check_load_args(args, log_dir)
    if flags_note and procs.main:
        print(flags_note, flush=True)
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
    total = optimization.total_steps(args, len(datasets["train"]), procs)
    optimizer, scheduler = optimization.make_optimizer(model, args, total)
    fp16 = args.use_amp and args.amp_dtype == "fp16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    position = Position()
    if args.load:
        position = run_folder.restore_state(
            args.load, model, optimizer, scheduler, scaler, procs.device
        )
        optimization.use_flags(optimizer, scheduler, args)
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


def run_epochs(trainer: Trainer, datasets: dict, position: Position) -> Position:
    """The epoch loop (docs/method.md#the-epoch-loop) from `position`; -> where the run stopped.

    Each epoch: train (latest.pth after it), ckpt_<epoch>.pth every --save_freq epochs and after
    the last (none with --save_freq 0), the evaluation splits every --eval_freq epochs, and
    latest.pth past the epoch once it was evaluated (without evaluation, training's latest.pth
    already holds this state) and after the last epoch (a finished run's latest.pth says so:
    nothing is left to train). A SIGTERM returns after the step in flight. The rows of
    every split go to detailed_stats.pkl. The periodic checkpoint is written before evaluation
    (which leaves the weights as they are) and before latest.pth moves past the epoch: a run killed
    while writing it resumes inside the epoch and writes it again, where the original, writing it
    last, lost it."""
    args, procs = trainer.args, trainer.procs
    log_dir = Path(args.log)
    stats = run_folder.StatsFile(
        log_dir / run_folder.STATS_FILE, resume=bool(args.load), main=procs.main
    )
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
        if procs.main and (evaluated or last):
            trainer.save(log_dir / "latest.pth", after)
        position = after
        if trainer.stopped():
            return position
    return position


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
        except run_folder.Preempted:
            sys.exit(run_folder.EXIT_PREEMPTED)  # its line is printed (rank 0)

    run_app(run)
