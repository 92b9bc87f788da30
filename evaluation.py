"""Scoring a trained OVSSC or VOOL checkpoint, or a baseline, on every non-train split: what eval.py
runs (docs/evaluation.md; the protocol: docs/method.md#the-one-cutoff-protocol).

The network's configuration (`eval_config`) is the training run's `args.pkl` beside the checkpoint
(or `--args`): every flag except the run's own (device, file_path, load, gpus, task, num_workers)
comes from it, then evaluation's overrides (no domain randomization, batch 1, no balanced
sampling, all GT points, all classes/descriptions, 32^3 and 64^3 voxel columns). Each split of the
split pickle except `train` is scored at the 25 logit cutoffs `np.arange(-2.5, 0.0, 0.1)` (or
`--cutoffs START STOP STEP`); the rows (docs/method.md#rows-and-metrics: `epoch` is the
checkpoint's `epochs`) go to the stats file (`stats_path`), rewritten atomically after every split.

`--baseline NAME` (baselines.py: all_in_frustum, lifted_relevancy) scores a baseline that learns
nothing instead of a checkpoint, with the data configuration of the run whose args.pkl `--args`
names, into the same columns (`epoch` 0) at the baseline's own cutoffs.

Where eval writes: only the stats file, `--output PATH` or by default `<checkpoint stem>_eval_stats
[_<suffix>].pkl` beside the checkpoint (`<NAME>_<task>_eval_stats[_<suffix>].pkl` beside --args for
a baseline); at start eval.py removes the temporary files killed writers left in that folder.

A stats file says what produced it: its frame's `attrs["semabs_eval"]` (`Provenance`: task,
checkpoint or baseline, epoch, a fingerprint of the weights, cutoffs, data folder, data
configuration and the scenes each split held). An interrupted evaluation resumes only into a file
made from the same inputs; any difference is refused with one line naming it.

Changes from the original, each fixing something that only hurt users (docs/differences.md):
- nothing else is written (no TensorBoard dirs, no args.pkl in the training log);
- `--suffix NAME` (-> `<stem>_eval_stats_NAME.pkl`) or `--output PATH`, so NYU stats do not overwrite
  THOR stats;
- an interrupted run continues at the first split missing from the stats file (`--replace` redoes
  all), when the file records the same inputs;
- under torchrun, scenes are sharded without padding (the original's DistributedSampler evaluated a
  few scenes twice); rows are gathered to rank 0 in single-process order (split -> scene -> cutoff
  -> row), so N processes write the frame one process writes. Each scene draws its input subsample
  under a seed of (--seed, scene index), whichever process reads it;
- the per-row chunked forward slices every key with a row axis, so semantic-aware VOOL evaluates
  (tasks.VOOL_ROW_KEYS);
- DataLoader workers ignore Ctrl-C; the main process shuts them down on any exit (`scene_batches`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import baselines
import checkpoint
import dataset
import metrics
import options
import processes
import scene_file
import seeding
import tasks
from network_setup import network_on_device
from utils import InputError, atomic_pickle, available_cores
from vocab import APPROACHES, PROVENANCE_KEY

log = logging.getLogger("semabs.eval")

CUTOFFS = np.arange(-2.5, 0.0, 0.1)  # 25 logit cutoffs -2.5 ... -0.1, arange rounding kept
VOXEL_SIZES = (32, 64)  # detailed analysis: voxel32x32x32_* and voxel64x64x64_* columns
PROGRESS_COLUMN = "voxel32x32x32_iou"
# eval.py's own flags; everything else comes from the training run's args.pkl.
# num_workers is also the run's (the original forced 8, our default).
RUN_FLAGS = ("device", "file_path", "load", "gpus", "num_workers")
EVAL_FLAGS = (
    "task",
    "output",
    "suffix",
    "replace",
    "chunk_points",
    "clip_checkpoint",
    "args_file",
    "baseline",
    "splits",
)


# --------------------------------------------------------------------------------------------------
# configuration


def check_run_inputs(cli: argparse.Namespace) -> None:
    """What this command scores and reads exists: --load (or --baseline with --args), --file_path."""
    if cli.baseline is not None:
        if cli.load is not None:
            raise InputError(
                f"--baseline {cli.baseline} scores no checkpoint; drop --load {cli.load}"
            )
        if cli.args_file is None:
            raise InputError(
                f"--baseline {cli.baseline} needs --args RUN/{options.ARGS_FILE}: the trained run "
                "whose data configuration it shares"
            )
    elif cli.load is None:
        raise InputError("--load CKPT is needed: the checkpoint to evaluate (or --baseline NAME)")
    elif not Path(cli.load).exists():
        raise InputError(f"checkpoint {cli.load} does not exist")
    elif Path(cli.load).is_dir():
        raise InputError(
            f"--load {cli.load} is a folder: give the checkpoint file in it (e.g. "
            f"{Path(cli.load) / 'latest.pth'})"
        )
    folder = Path(cli.file_path)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"--file_path {folder} {problem}")


def training_args(cli: argparse.Namespace) -> tuple[argparse.Namespace, Path]:
    """The training run's Namespace (its args.pkl, or the shared flags with --approach), and the
    args.pkl path it was looked for at."""
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
    return args, args_file


def cutoff_values(spec: list[float] | None, default: np.ndarray) -> np.ndarray:
    """--cutoffs START STOP STEP (checked when parsed: options.CutoffRange) as np.arange(START,
    STOP, STEP); `default` when not given."""
    if spec is None:
        return default
    return np.arange(*spec)


def eval_config(cli: argparse.Namespace) -> argparse.Namespace:
    """The training Namespace with this command's run flags and evaluation's overrides;
    `cutoffs` holds the cutoff values (the network's or the baseline's unless --cutoffs)."""
    check_run_inputs(cli)
    output = stats_path(cli)
    if output.is_dir():
        raise InputError(
            f"--output {output} is a folder: give the stats file, e.g. {output}/eval_stats.pkl"
        )
    args, args_file = training_args(cli)
    for name in RUN_FLAGS + EVAL_FLAGS:
        setattr(args, name, getattr(cli, name))
    args = options.finalize(args)
    if cli.baseline is not None:
        baselines.check_configuration(cli.baseline, args, args_file)
    default = CUTOFFS if cli.baseline is None else baselines.BASELINES[cli.baseline].cutoffs
    args.cutoffs = cutoff_values(cli.cutoffs, default)
    args.domain_randomization = False
    args.batch_size = 1
    args.balance_spatial_sampling = False
    args.use_amp = False  # fp32 scores
    return args


def capped_num_workers(default: int) -> tuple[int, str | None]:
    """The default DataLoader workers capped to the cores this process may use, and a note saying
    so when the cap applies (None otherwise)."""
    cores = available_cores()
    if default <= cores:
        return default, None
    return cores, (
        f"note: {cores} DataLoader workers (the default {default}, capped to the {cores} cores "
        "available; --num_workers N to choose)"
    )


def stats_path(args: argparse.Namespace) -> Path:
    """--output, or `<checkpoint stem>_eval_stats[_<suffix>].pkl` beside the checkpoint; for a
    baseline `<NAME>_eval_stats[_<suffix>].pkl` beside --args."""
    if args.output:
        return Path(args.output)
    suffix = f"_{args.suffix}" if args.suffix else ""
    if args.baseline is not None:  # the task too: one run's args.pkl serves both tasks
        return Path(args.args_file).with_name(f"{args.baseline}_{args.task}_eval_stats{suffix}.pkl")
    load = Path(args.load)
    return load.with_name(f"{load.stem}_eval_stats{suffix}.pkl")


@dataclass(frozen=True)
class Provenance:
    """What produced a stats file, stored in its frame's attrs; a resume must match it."""

    task: str
    scored: str  # "checkpoint <path>" or "baseline <name>"
    weights: str | None  # checkpoint.weights_fingerprint of the network; None for a baseline
    epoch: int
    cutoffs: tuple[float, ...]
    file_path: str  # the data folder, absolute
    data: str  # fingerprint of the data configuration (dataset.DatasetConfig)
    scenes: dict[str, list[str]]  # split -> its scene files, as the split pickle lists them

    # (field, what it is called in the refusal); `scored` is compared through `weights` for a
    # checkpoint, so a copied or renamed file of the same weights resumes
    COMPARED = (
        ("task", "task"),
        ("scored", "baseline"),
        ("weights", "weights (fingerprint)"),
        ("epoch", "epoch"),
        ("cutoffs", "cutoffs"),
        ("file_path", "data folder"),
        ("data", "data configuration (fingerprint)"),
        ("scenes", "scenes"),
    )

    def difference(self, stored: dict) -> str | None:
        """'<what>: <stored> (the file) vs <this run>' for the first field that differs."""
        mine = asdict(self)
        for name, what in self.COMPARED:
            if name == "scored" and self.weights is not None and stored.get("weights") is not None:
                continue
            old, new = stored.get(name), mine[name]
            if name == "scenes":
                changed = scenes_difference(old, new)
                if changed is not None:
                    return changed
                continue
            if name == "cutoffs":
                old = tuple(old) if old is not None else None
                same = old is not None and len(old) == len(new) and np.allclose(old, new)
                old, new = describe_cutoffs(old), describe_cutoffs(new)
            else:
                same = old == new
            if not same:
                if name == "scored":  # "baseline X" / "checkpoint P" name themselves
                    return f"{old} there, {new} here"
                return f"{what} {old} there, {new} here"
        return None


def scenes_difference(stored: dict | None, current: dict) -> str | None:
    """'scenes of <split>: <stored> there, <current> here' for the first split whose scene list
    differs (the data folder gained or lost scenes, its split pickle was rewritten); None when
    every split lists the same scenes."""
    if stored is None:
        return "scenes of each split: not recorded there"
    for split in [*current, *(s for s in stored if s not in current)]:
        old, new = list(stored.get(split, [])), list(current.get(split, []))
        if old != new:
            counts = f"{len(old)} there, {len(new)} here"
            return f"scenes of {split}: {counts if len(old) != len(new) else f'other {counts}'}"
    return None


def describe_cutoffs(values) -> str:
    if not values:
        return "none"
    return f"{len(values)} from {values[0]:g} to {values[-1]:g}"


def data_fingerprint(args: argparse.Namespace) -> str:
    config = dataset.DatasetConfig.from_args(args)
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


def provenance(args: argparse.Namespace, scorer: Scorer, lists: dict[str, list]) -> Provenance:
    """What this run scores, and how: `lists` is {split: scene files} of the splits it scores."""
    scored = (
        f"baseline {args.baseline}" if args.baseline else f"checkpoint {Path(args.load).resolve()}"
    )
    return Provenance(
        task=args.task,
        scored=scored,
        weights=scorer.weights,
        epoch=scorer.epoch,
        cutoffs=tuple(float(c) for c in args.cutoffs),
        file_path=str(Path(args.file_path).resolve()),
        data=data_fingerprint(args),
        scenes={split: list(names) for split, names in lists.items() if split != "train"},
    )


def read_finished(path: Path, made_by: Provenance) -> pd.DataFrame | None:
    """The stats file's frame (splits it holds are finished), or None when there is none; it must
    have been made from the same inputs (files without a record: this epoch's rows at these
    cutoffs)."""
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
    stored = frame.attrs.get(PROVENANCE_KEY)
    if isinstance(stored, dict):
        difference = made_by.difference(stored)
        if difference is not None:
            raise InputError(
                f"{path} was made from other inputs ({difference}); --replace to start over, or "
                "--output / --suffix for another file"
            )
        return frame
    epoch, cutoffs = made_by.epoch, np.asarray(made_by.cutoffs)
    epochs = sorted(set(frame["epoch"].tolist()))
    if epochs != [epoch]:
        raise InputError(
            f"{path} holds stats of epoch {epochs}, this checkpoint is epoch {epoch}; "
            "--replace to start over, or --output / --suffix for another file"
        )
    if not np.array_equal(np.unique(frame["cutoff"]), np.unique(cutoffs)):
        raise InputError(
            f"{path} holds stats at other cutoffs than this run's {len(cutoffs)}; --replace to "
            "start over, or --output / --suffix for another file"
        )
    return frame


def trained_network(args: argparse.Namespace, device: torch.device, **overrides) -> tuple:
    """(network in eval mode with the checkpoint's weights, checkpoint's `epochs`, the weights'
    fingerprint)."""
    model = network_on_device(args.task, args, device, **overrides)
    ckpt = checkpoint.load_network(model, args.load, map_location="cpu")
    weights = checkpoint.weights_fingerprint(checkpoint.strip_ddp_prefix(ckpt["net"]))
    return model.eval(), int(ckpt.get("epochs", 0)), weights


@dataclass(frozen=True)
class Scorer:
    """What a split is scored with: a trained network or a baseline."""

    score: Callable[[dict], torch.Tensor]  # collated batch on the device -> float scores [B, R, N]
    epoch: int  # the stats frame's `epoch` column: the checkpoint's epochs, 0 for a baseline
    weights: str | None = None  # the checkpoint's weights_fingerprint; None for a baseline


def make_scorer(args: argparse.Namespace, device: torch.device, **network_overrides) -> Scorer:
    """--baseline NAME's scores, or the checkpoint's logits (one row at a time above
    --chunk_points query points)."""
    if args.baseline is not None:
        baseline = baselines.BASELINES[args.baseline]
        return Scorer(lambda batch: baseline.score(batch, args.task, args.scene_bounds), 0)
    return network_scorer(*trained_network(args, device, **network_overrides), args)


def network_scorer(model, epoch: int, weights: str, args: argparse.Namespace) -> Scorer:
    """A trained network's logits (one row at a time above --chunk_points query points)."""
    task = tasks.TASKS[args.task]
    return Scorer(
        lambda batch: task.forward(model, batch, args.chunk_points).float(), epoch, weights
    )


# --------------------------------------------------------------------------------------------------
# one split


def shared_points(xyz: torch.Tensor) -> torch.Tensor:
    """[B, R, N, 3] whose rows repeat one point set (evaluation: all GT points) -> [B, N, 3], so
    each grid is built once per scene; otherwise unchanged."""
    if xyz.dim() == 4 and bool((xyz == xyz[:, :1]).all()):
        return xyz[:, 0]
    return xyz


def score_scene(scorer: Scorer, batch: dict, args: argparse.Namespace) -> pd.DataFrame:
    """One scene's rows: scene -> cutoff -> row, args.cutoffs, point/32^3/64^3 columns."""
    task = tasks.TASKS[args.task]
    with torch.no_grad():
        scores = scorer.score(batch)  # [B, R, N]
    label, ignore, padded = task.targets(batch)
    return metrics.row_stats(
        scores,
        label,
        ignore,
        shared_points(batch["output_xyz_pts"]),
        args.cutoffs,
        args.scene_bounds,
        task.row_columns(batch),
        padded,
        voxel_sizes=VOXEL_SIZES,
    )


class RunningIoU:
    """Mean of a column per cutoff over the rows seen so far; `best` is the max over cutoffs."""

    def __init__(self, column: str, cutoffs: np.ndarray):
        self.column, self.cutoffs, self.sums, self.counts = column, cutoffs, None, None

    def add(self, frame: pd.DataFrame) -> None:
        # one scene's rows: cutoff -> row
        values = frame[self.column].to_numpy(dtype=float).reshape(len(self.cutoffs), -1).T  # [R, C]
        sums, counts = np.nansum(values, 0), (~np.isnan(values)).sum(0)
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts

    def best(self) -> str:
        if self.counts is None or not self.counts.any():
            return "-"
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)
        c = int(np.argmax(means))
        return f"{100 * means[c]:.1f} @ {self.cutoffs[c]:.1f}"


def ignore_interrupt_worker(worker_id: int) -> None:
    """DataLoader worker start: training's seeding, and Ctrl-C left to the main process, which shuts
    the workers down (`scene_batches`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seeding.seed_worker(worker_id)


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back until the block ends, then raise its KeyboardInterrupt: a DataLoader
    iterator interrupted while it starts its workers leaves them running (and a traceback from its
    cleanup), and an interrupt inside fork's handlers is dropped. Main thread only (signal.signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def progress_bar(**tqdm_args):
    """A tqdm bar, cleared when an error or Ctrl-C leaves the block (so its line stands alone)."""
    bar = tqdm(**tqdm_args)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


@contextlib.contextmanager
def scene_batches(loader: torch.utils.data.DataLoader):
    """Iterate the loader; on any exit stop its workers before the caller goes on, so nothing they
    print follows an error or "interrupted" line."""
    batches = None
    try:
        with sigint_deferred():
            batches = iter(loader)
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # only with workers
        if shutdown is not None:
            shutdown()


def has_rows(batch: dict) -> bool:
    """Whether a collated scene holds a row (class or description) to score: a scene can hold none
    for a split (VOOL's synonyms split keeps only the descriptions that name a synonym; a generated
    scene may have no description at all)."""
    return batch["output_label_pts"].shape[1] > 0


@dataclass
class SplitRows:
    """One split's rows: all processes' in scene order on rank 0 (None on the other ranks), and how
    many of its scenes had no row to score (skipped: they add nothing)."""

    rows: pd.DataFrame | None
    without_rows: int


def evaluate_split(scorer: Scorer, data, split: str, args, procs) -> SplitRows:
    """Score this process's scenes, skipping those with no row (`has_rows`)."""
    indices = processes.shard(list(range(len(data))), procs.rank, procs.world_size)
    loader = torch.utils.data.DataLoader(
        seeding.SeededSamples(data, args.seed, rank=0),  # seed (seed, 0, 0, scene index)
        batch_size=1,
        sampler=[(i, i) for i in indices],
        num_workers=args.num_workers,
        worker_init_fn=ignore_interrupt_worker,
        pin_memory=procs.device.type == "cuda",
    )
    running = RunningIoU(PROGRESS_COLUMN, args.cutoffs)
    progress = progress_bar(
        total=len(indices),
        unit="scene",
        desc=f"{split} (rank 0 of {procs.world_size})" if procs.ddp else split,
        disable=not procs.main,
        dynamic_ncols=True,
    )
    parts = []
    with progress as bar, scene_batches(loader) as batches:
        for index, batch in zip(indices, batches):
            frame = None
            if has_rows(batch):
                frame = score_scene(scorer, processes.to_device(batch, procs.device), args)
                running.add(frame)
            parts.append((index, frame))
            bar.update()
            bar.set_postfix_str(f"voxel32 IoU {running.best()}")
    if procs.ddp:
        gathered = [None] * procs.world_size
        dist.all_gather_object(gathered, parts)
        parts = [part for rank_parts in gathered for part in rank_parts]
    if not procs.main:
        return SplitRows(None, 0)
    parts.sort(key=lambda part: part[0])
    frames = [frame for _, frame in parts if frame is not None]
    return SplitRows(pd.concat(frames) if frames else pd.DataFrame(), len(parts) - len(frames))


# --------------------------------------------------------------------------------------------------
# the run


def chosen_splits(lists: dict[str, list], args: argparse.Namespace) -> list[str]:
    """The non-train splits with scenes, in the split file's order; only those named by --splits
    when it is given (each must be one of them)."""
    split_file = Path(args.file_path) / scene_file.SPLIT_FILES[args.task]
    splits = [split for split, names in lists.items() if split != "train" and names]
    if not splits:
        raise InputError(f"{split_file} lists no split but train")
    if args.splits is None:
        return splits
    unknown = [split for split in args.splits if split not in splits]
    if unknown:
        raise InputError(
            f"--splits {' '.join(unknown)}: not a split with scenes in {split_file} "
            f"(it has {', '.join(splits)})"
        )
    return [split for split in splits if split in args.splits]


@dataclass
class Result:
    path: Path
    splits: list[str]  # evaluated by this run
    skipped: list[str]  # already in the stats file
    scenes: int
    rows: int
    without_rows: dict[str, int] = field(default_factory=dict)  # split -> scenes skipped (no row)


def evaluate(args: argparse.Namespace, procs: processes.Processes, **network_overrides) -> Result:
    """Every non-train split (or those of --splits) not yet in the stats file; rank 0 rewrites
    the file after each."""
    lists = scene_file.load_split_lists(args.file_path, args.task)
    splits = chosen_splits(lists, args)
    scorer = make_scorer(args, procs.device, **network_overrides)
    path = stats_path(args)
    made_by = provenance(args, scorer, {split: lists[split] for split in splits})

    finished, problem = None, None  # rank 0 reads the file; every rank learns the outcome
    if procs.main and not args.replace:
        try:
            finished = read_finished(path, made_by)
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
    without_rows = {}
    for split in todo:
        scored = evaluate_split(scorer, datasets[split], split, args, procs)
        scenes += len(datasets[split])
        if procs.main:
            if scored.without_rows:
                without_rows[split] = scored.without_rows
            frame = scored.rows.assign(epoch=scorer.epoch, split=split)
            rows += len(frame)
            frames.append(frame)
            stats = pd.concat(frames)
            stats.attrs = {PROVENANCE_KEY: asdict(made_by)}
            atomic_pickle(stats, path)
            log.info("dumped %s stats to %s", split, path)
    return Result(path, todo, [s for s in splits if s in done], scenes, rows, without_rows)
