"""The optimizer of training and its learning-rate schedule (docs/method.md#lamb-and-the-learning-rate-schedule):
LAMB with the original's settings, the schedule's length in steps, and this command's --lr and
--weight_decay in an optimizer restored from --load. The schedules' formulas are schedules.py's.
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch import nn

from lamb import Lamb
from processes import Processes
from schedules import SCHEDULES
from seeding import batches_per_epoch


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


def use_flags(optimizer: torch.optim.Optimizer, scheduler, args: argparse.Namespace) -> None:
    """This command's --lr and --weight_decay in an optimizer and schedule restored from --load
    (whose state holds its own run's values), from the next step on; the schedule's kind, warmup
    and total steps are its factor's, from this command already. With the same flags the state
    stays as restored, bit for bit (an exact resume)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = args.lr
        group["weight_decay"] = args.weight_decay
    scheduler.base_lrs = [args.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = args.lr * factor(scheduler.last_epoch)
