"""Scoring a trained OVSSC or VOOL checkpoint on every non-train split: what eval.py runs (spec:
train-eval.md 1.3, 1.4, 1.8, 2.5 and 6 item 11).

The network's configuration (`eval_config`) is the training run's `args.pkl` beside the checkpoint
(or `--args`): every flag except the run's own (device, file_path, load, gpus, task, num_workers)
comes from it, then evaluation's overrides (no domain randomization, batch 1, no balanced
sampling, all GT points, all classes/descriptions, 32^3 and 64^3 voxel columns). Each split of the
split pickle except `train` is scored at the 25 logit cutoffs `np.arange(-2.5, 0.0, 0.1)`; the rows (section 2.5 columns, plus
`epoch` = the checkpoint's `epochs` and `split`) go to `<checkpoint stem>_eval_stats.pkl`, rewritten
atomically after every split.

Changes from the original, each fixing something that only hurt users (section 6 item 11):
- nothing is written into the training log (no TensorBoard dirs, no args.pkl);
- `--suffix NAME` (-> `<stem>_eval_stats_NAME.pkl`) or `--output PATH`, so NYU stats do not overwrite
  THOR stats;
- an interrupted run continues at the first split missing from the stats file (`--replace` redoes
  all);
- under torchrun, scenes are sharded without padding (the original's DistributedSampler evaluated a
  few scenes twice); rows are gathered to rank 0 in single-process order (split -> scene -> cutoff
  -> row), so N processes write the frame one process writes. Each scene draws its input subsample
  under a seed of (--seed, scene index), whichever process reads it;
- the per-row chunked forward slices every key with a row axis, so semantic-aware VOOL evaluates
  (section 1.8; tasks.VOOL_ROW_KEYS).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import dataset
import metrics
import options
import processes
import scene_file
import tasks
import training
from utils import InputError
from vocab import APPROACHES

log = logging.getLogger("semabs.eval")

CUTOFFS = np.arange(-2.5, 0.0, 0.1)  # 25 logit cutoffs -2.5 ... -0.1, arange rounding kept
VOXEL_SIZES = (32, 64)  # detailed analysis: voxel32x32x32_* and voxel64x64x64_* columns
PROGRESS_COLUMN = "voxel32x32x32_iou"
# eval.py's own flags; everything else comes from the training run's args.pkl (section 1.3).
# num_workers is also the run's (the original forced 8, our default).
RUN_FLAGS = ("device", "file_path", "load", "gpus", "num_workers")
EVAL_FLAGS = ("task", "output", "suffix", "replace", "chunk_points", "clip_checkpoint")


# --------------------------------------------------------------------------------------------------
# configuration


def eval_config(cli: argparse.Namespace) -> argparse.Namespace:
    """The training Namespace with this command's run flags and evaluation's overrides (1.3)."""
    if cli.load is None:
        raise InputError("--load CKPT is needed: the checkpoint to evaluate")
    args_file = Path(cli.args_file or Path(cli.load).parent / options.ARGS_FILE)
    if args_file.is_file():
        args = options.load_args(args_file)
        if getattr(args, "approach", None) is None:
            args.approach = "semantic_abstraction"
        if cli.approach is not None and cli.approach != args.approach:
            raise InputError(
                f"--approach {cli.approach} contradicts {args_file} (approach {args.approach})"
            )
    elif cli.args_file is not None:
        raise InputError(f"--args {args_file} does not exist")
    elif cli.approach is not None:
        args = argparse.Namespace(**vars(cli))
    else:
        raise InputError(
            f"no {options.ARGS_FILE} beside {cli.load}: the network's configuration is needed; "
            f"pass --args PATH to the training run's {options.ARGS_FILE}, or --approach "
            f"({'|'.join(APPROACHES[cli.task])}) with the shared flags it was trained "
            "with (--voxel_shape, --unet_*, --network_inputs, ...)"
        )
    if args.approach not in APPROACHES[cli.task]:
        raise InputError(
            f"approach {args.approach!r} is not a {cli.task} approach "
            f"({', '.join(APPROACHES[cli.task])})"
        )
    for name in RUN_FLAGS + EVAL_FLAGS:
        setattr(args, name, getattr(cli, name))
    args = options.finalize(args)
    args.domain_randomization = False
    args.batch_size = 1
    args.balance_spatial_sampling = False
    args.use_amp = False  # fp32 scores
    return args


def stats_path(args: argparse.Namespace) -> Path:
    """--output, or `<checkpoint stem>_eval_stats[_<suffix>].pkl` beside the checkpoint."""
    if args.output:
        return Path(args.output)
    load = Path(args.load)
    suffix = f"_{args.suffix}" if args.suffix else ""
    return load.with_name(f"{load.stem}_eval_stats{suffix}.pkl")


def read_finished(path: Path, epoch: int) -> pd.DataFrame | None:
    """The stats file's frame (splits it holds are finished), or None when there is none."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_pickle(path)
    except Exception as error:  # pickle raises many types on a bad file
        raise InputError(
            f"{path} cannot be read ({type(error).__name__}); --replace to start over"
        ) from None
    if not isinstance(frame, pd.DataFrame) or not {"split", "epoch"} <= set(frame.columns):
        raise InputError(f"{path} is not an eval stats frame; --replace to overwrite it")
    epochs = sorted(set(frame["epoch"].tolist()))
    if epochs != [epoch]:
        raise InputError(
            f"{path} holds stats of epoch {epochs}, this checkpoint is epoch {epoch}; "
            "--replace to start over, or --output / --suffix for another file"
        )
    return frame


def trained_network(args: argparse.Namespace, device: torch.device, **overrides) -> tuple:
    """(network in eval mode with the checkpoint's weights, checkpoint's `epochs`)."""
    model = training.network_on_device(args.task, args, device, **overrides)
    ckpt = checkpoint.load_network(model, args.load, map_location="cpu")
    return model.eval(), int(ckpt.get("epochs", 0))


# --------------------------------------------------------------------------------------------------
# one split


def shared_points(xyz: torch.Tensor) -> torch.Tensor:
    """[B, R, N, 3] whose rows repeat one point set (evaluation: all GT points) -> [B, N, 3], so
    each grid is built once per scene; otherwise unchanged."""
    if xyz.dim() == 4 and bool((xyz == xyz[:, :1]).all()):
        return xyz[:, 0]
    return xyz


def score_scene(model, batch: dict, args: argparse.Namespace) -> pd.DataFrame:
    """One scene's rows: scene -> cutoff -> row, 25 cutoffs, point/32^3/64^3 columns."""
    task = tasks.TASKS[args.task]
    with torch.no_grad():
        logits = task.forward(model, batch, args.chunk_points).float()
        _, label, ignore, padded = task.loss_fn(logits, batch, args)
    return metrics.row_stats(
        logits,
        label,
        ignore,
        shared_points(batch["output_xyz_pts"]),
        CUTOFFS,
        args.scene_bounds,
        task.row_columns(batch),
        padded,
        voxel_sizes=VOXEL_SIZES,
    )


class RunningIoU:
    """Mean of a column per cutoff over the rows seen so far; `best` is the max over cutoffs."""

    def __init__(self, column: str):
        self.column, self.sums, self.counts = column, None, None

    def add(self, frame: pd.DataFrame) -> None:
        # one scene's rows: cutoff -> row
        values = frame[self.column].to_numpy(dtype=float).reshape(len(CUTOFFS), -1).T  # [R, C]
        sums, counts = np.nansum(values, 0), (~np.isnan(values)).sum(0)
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts

    def best(self) -> str:
        if self.counts is None or not self.counts.any():
            return "-"
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)
        c = int(np.argmax(means))
        return f"{100 * means[c]:.1f} @ {CUTOFFS[c]:.1f}"


def evaluate_split(model, data, split: str, args, procs) -> pd.DataFrame | None:
    """Score this process's scenes; -> all processes' rows in scene order on rank 0, else None."""
    indices = processes.shard(list(range(len(data))), procs.rank, procs.world_size)
    loader = torch.utils.data.DataLoader(
        training.SeededSamples(data, args.seed, rank=0),  # seed (seed, 0, 0, scene index)
        batch_size=1,
        sampler=[(i, i) for i in indices],
        num_workers=args.num_workers,
        worker_init_fn=training.seed_worker,
        pin_memory=procs.device.type == "cuda",
    )
    running = RunningIoU(PROGRESS_COLUMN)
    bar = tqdm(
        loader,
        total=len(indices),
        unit="scene",
        desc=f"{split} (rank 0 of {procs.world_size})" if procs.ddp else split,
        disable=not procs.main,
        dynamic_ncols=True,
    )
    parts = []
    for k, batch in enumerate(bar):
        index = indices[k]
        frame = score_scene(model, training.to_device(batch, procs.device), args)
        parts.append((index, frame))
        running.add(frame)
        bar.set_postfix_str(f"voxel32 IoU {running.best()}")
    bar.close()
    if procs.ddp:
        gathered = [None] * procs.world_size
        dist.all_gather_object(gathered, parts)
        parts = [part for rank_parts in gathered for part in rank_parts]
    if not procs.main:
        return None
    parts.sort(key=lambda part: part[0])
    return pd.concat([frame for _, frame in parts]) if parts else pd.DataFrame()


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class Result:
    path: Path
    splits: list[str]  # evaluated by this run
    skipped: list[str]  # already in the stats file
    scenes: int
    rows: int


def evaluate(args: argparse.Namespace, procs: processes.Processes, **network_overrides) -> Result:
    """Every non-train split not yet in the stats file; rank 0 rewrites the file after each."""
    lists = scene_file.load_split_lists(args.file_path, args.task)
    splits = [split for split, names in lists.items() if split != "train" and names]
    if not splits:
        raise InputError(
            f"{Path(args.file_path) / scene_file.SPLIT_FILES[args.task]} lists no split but train"
        )
    model, epoch = trained_network(args, procs.device, **network_overrides)
    path = stats_path(args)

    finished, problem = None, None  # rank 0 reads the file; every rank learns the outcome
    if procs.main and not args.replace:
        try:
            finished = read_finished(path, epoch)
        except InputError as error:
            problem = str(error)
    done, problem = processes.broadcast(
        (sorted(set(finished["split"])) if finished is not None else [], problem), procs
    )
    if problem:
        raise InputError(problem)
    todo = [split for split in splits if split not in done]
    config = dataset.DatasetConfig.from_args(args)
    datasets = dataset.make_datasets(args.file_path, args.task, config, splits=tuple(todo))

    frames = [finished] if finished is not None else []
    scenes = rows = 0
    for split in todo:
        frame = evaluate_split(model, datasets[split], split, args, procs)
        scenes += len(datasets[split])
        if procs.main:
            frame = frame.assign(epoch=epoch, split=split)
            rows += len(frame)
            frames.append(frame)
            training.atomic_pickle(pd.concat(frames), path)
            log.info("dumped %s stats to %s", split, path)
    return Result(path, todo, [s for s in splits if s in done], scenes, rows)
