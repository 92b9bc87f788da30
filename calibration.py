"""Per-relation logit offsets of a trained VOOL network from its training scenes (calibrate.py's
work; not in the original).

The evaluation protocol thresholds every description at one cutoff (summarize.py picks one per
approach), so a relation whose logits sit lower than the others' pays for it: trained with a Lovász
margin of 3, "behind" is best cut near 1.2 where the other relations are best near 3
(docs/learning.md). `calibrate` scores training scenes as eval.py scores a split (no domain
randomization, every query point, fp32), finds each relation's best cutoff (the mean voxel 32^3 IoU
over its descriptions) and shifts each relation's logits by the median of those cutoffs minus its
own, so that one cutoff fits them all. The offsets go into the checkpoint's `relation_offsets` buffer
(the network must be trained with --relation_offsets), which records them (`relation_calibration`):
the file is rewritten atomically, and a calibrated checkpoint is left as it is. Only training scenes
are read; the held-out splits never are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import checkpoint
import dataset
import evaluation
import net
import processes
import scene_file
import tasks
from utils import InputError, atomic_path

CALIBRATION_KEY = "relation_calibration"  # the checkpoint's record of the calibration
IOU = "voxel32x32x32_iou"


def relation_shifts(rows: pd.DataFrame) -> pd.Series:
    """Per relation: the median of the relations' best cutoffs minus its own, from per-description
    rows (spatial_relation_name, cutoff, voxel32x32x32_iou) -> Series indexed by relation."""
    mean_iou = rows.groupby(["spatial_relation_name", "cutoff"])[IOU].mean().unstack()
    best = mean_iou.idxmax(axis=1)  # relation -> its best cutoff (the lowest of ties)
    return best.median() - best


def eval_args(cli: argparse.Namespace) -> argparse.Namespace:
    """The training run's Namespace with evaluation's overrides, as eval.py builds it."""
    eval_cli = argparse.Namespace(
        **vars(cli),
        task="vool",
        output=None,
        suffix="calibration",
        replace=True,
        chunk_points=tasks.CHUNK_POINTS,
        args_file=None,
        baseline=None,
        approach=None,
    )
    args = evaluation.eval_config(eval_cli)
    if not getattr(args, "relation_offsets", False):
        raise InputError(
            f"{cli.load} was not trained with --relation_offsets: its network has no offsets to set"
        )
    return args


def training_scenes(args: argparse.Namespace, every: int) -> dataset.SceneDataset:
    """Every `every`th scene of the train split, read as the held-out splits are read."""
    names = scene_file.load_split_lists(args.file_path, "vool").get("train", [])[::every]
    if not names:
        raise InputError(f"{args.file_path} lists no VOOL training scene to calibrate on")
    config = dataset.split_config(dataset.DatasetConfig.from_args(args), "unseen_instances")
    return dataset.DATASET_CLASSES["vool"]([Path(args.file_path) / n for n in names], config)


def calibrate(cli: argparse.Namespace) -> str:
    """Score the scenes, set the offsets, rewrite the checkpoint; -> the line to print."""
    stored = checkpoint.read_checkpoint(cli.load, "cpu")
    if CALIBRATION_KEY in stored:
        return f"{cli.load} is already calibrated: {describe(stored[CALIBRATION_KEY])}"
    args = eval_args(cli)
    procs = processes.setup_processes(args.device)
    if procs.ddp:
        processes.teardown_processes()
        raise InputError("calibrate.py runs in one process: start it with python, not torchrun")
    try:
        scorer = evaluation.make_scorer(args, procs.device)
        scenes = training_scenes(args, cli.every)
        scored = evaluation.evaluate_split(scorer, scenes, "train", args, procs)
    finally:
        processes.teardown_processes()
    used = len(scenes) - scored.without_rows
    if used == 0:
        raise InputError(f"none of the {len(scenes)} training scenes read has a description")
    shifts = relation_shifts(scored.rows)
    offsets = stored["net"]["relation_offsets"].clone()
    for name, shift in shifts.items():
        # logits + offset > median  <=>  logits > median - offset, the relation's best cutoff
        offsets[net.OFFSET_ORDER.index(name)] += float(shift)
    stored["net"]["relation_offsets"] = offsets
    record = {
        "scenes": used,
        "every": cli.every,
        "offsets": {name: float(offsets[net.OFFSET_ORDER.index(name)]) for name in shifts.index},
    }
    stored[CALIBRATION_KEY] = record
    with atomic_path(cli.load) as tmp:
        torch.save(stored, tmp)
    skipped = (
        f" ({scored.without_rows} without a description skipped)" if scored.without_rows else ""
    )
    scenes_ = f"{used} training scene{'s' * (used != 1)}"
    return f"{cli.load}: calibrated on {scenes_}{skipped}: {describe(record)}"


def describe(record: dict) -> str:
    return ", ".join(f"{name} {value:+.1f}" for name, value in sorted(record["offsets"].items()))
