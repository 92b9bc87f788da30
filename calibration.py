"""Per-relation logit offsets of a trained VOOL network from its training scenes (calibrate.py's
work; not in the original).

The evaluation protocol thresholds every description at one cutoff (summarize.py picks one per
approach), so a relation whose logits sit lower than the others' pays for it: trained with a Lovász
margin of 3, "behind" is best cut near 1.2 where the other relations are best near 3
(docs/learning.md). `calibrate` scores training scenes as eval.py scores a split (no domain
randomization, every query point, fp32), finds each relation's best cutoff (the mean voxel 32^3 IoU
over its descriptions) and shifts each relation's logits by the median of those cutoffs minus its
own, so that one cutoff fits them all; a relation no scene describes keeps offset 0, and the
calibration says so. The offsets go into the checkpoint's `relation_offsets` buffer (the
network must be trained with --relation_offsets), which records them (`relation_calibration`): the
file is rewritten atomically. A calibrated checkpoint is left as it is unless `replace`, which
scores the scenes with zero offsets again (as the first calibration did) and sets new ones. Only
training scenes are read; the held-out splits never are.
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
import options
import processes
import scene_file
import tasks
from utils import InputError, atomic_path
from vocab import RELATIONS

CALIBRATION_KEY = "relation_calibration"  # the checkpoint's record of the calibration
IOU = "voxel32x32x32_iou"


def relation_shifts(rows: pd.DataFrame) -> pd.Series:
    """Per relation: the median of the relations' best cutoffs minus its own, from per-description
    rows (spatial_relation_name, cutoff, voxel32x32x32_iou) -> Series indexed by relation. A
    relation without a scored row (no description, or every IoU NaN) has none."""
    if rows.empty:
        return pd.Series(dtype=float)
    mean_iou = rows.groupby(["spatial_relation_name", "cutoff"])[IOU].mean().unstack()
    best = mean_iou.dropna(how="all").idxmax(axis=1)  # relation -> its best cutoff (lowest of ties)
    return best.median() - best


def check_checkpoint(path: str, stored: dict) -> None:
    """The checkpoint holds a VOOL network with relation offsets, or one line says what it holds."""
    state = checkpoint.strip_ddp_prefix(stored["net"])
    kind = checkpoint.describe_state_dict(state)
    if kind in ("SemAbs3D", "SemanticAwareOVSSC"):
        raise InputError(
            f"{path} is an OVSSC checkpoint ({kind}): calibrate.py sets the relation offsets of a "
            "VOOL network (train_vool.py --relation_offsets)"
        )
    if "relation_offsets" not in state:
        raise InputError(
            f"{path} was not trained with --relation_offsets: its {kind} network has no offsets "
            "to set (train_vool.py --relation_offsets)"
        )


def eval_args(cli: argparse.Namespace) -> argparse.Namespace:
    """The training run's Namespace with evaluation's overrides, as eval.py builds it."""
    beside = Path(cli.load).parent / options.ARGS_FILE
    if cli.args_file is None and not beside.is_file():
        raise InputError(
            f"no {options.ARGS_FILE} beside {cli.load}: the network's configuration is its "
            f"training run's {options.ARGS_FILE}; give it with --args PATH"
        )
    eval_cli = argparse.Namespace(
        file_path=cli.file_path,
        load=cli.load,
        args_file=cli.args_file,
        cutoffs=cli.cutoffs,
        device=cli.device,
        num_workers=cli.num_workers,
        gpus=None,
        task="vool",
        output=None,
        suffix="calibration",
        replace=True,
        chunk_points=tasks.CHUNK_POINTS,
        clip_checkpoint=None,
        baseline=None,
        approach=None,
        splits=None,
    )
    return evaluation.eval_config(eval_cli)


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
    check_checkpoint(cli.load, stored)
    if CALIBRATION_KEY in stored and not cli.replace:
        return (
            f"{cli.load} is already calibrated ({describe(stored[CALIBRATION_KEY])}); left as it "
            "is (--replace calibrates it again)"
        )
    args = eval_args(cli)
    procs = processes.setup_processes(args.device)
    if procs.ddp:
        processes.teardown_processes()
        raise InputError("calibrate.py runs in one process: start it with python, not torchrun")
    try:
        model, epoch, weights = evaluation.trained_network(args, procs.device)
        model.relation_offsets.zero_()  # scored as first calibrated (--replace: again from zero)
        scorer = evaluation.network_scorer(model, epoch, weights, args)
        scenes = training_scenes(args, cli.every)
        scored = evaluation.evaluate_split(scorer, scenes, "train", args, procs)
    finally:
        processes.teardown_processes()
    used = len(scenes) - scored.without_rows
    shifts = relation_shifts(scored.rows)
    if shifts.empty:
        raise InputError(
            f"{cli.load} not calibrated: the {len(scenes)} training scenes scored (--every "
            f"{cli.every}) hold no scored description; score more with a smaller --every"
        )
    state = checkpoint.strip_ddp_prefix(stored["net"])
    offsets = torch.zeros_like(state["relation_offsets"])
    for name, shift in shifts.items():
        # logits + offset > median  <=>  logits > median - offset, the relation's best cutoff
        offsets[net.OFFSET_ORDER.index(name)] = float(shift)
    stored["net"] = {**state, "relation_offsets": offsets}
    record = {
        "scenes": used,
        "every": cli.every,
        "offsets": {name: float(offsets[net.OFFSET_ORDER.index(name)]) for name in shifts.index},
        "left": [name for name in sorted(RELATIONS) if name not in shifts.index],
    }
    replaced = ""
    if CALIBRATION_KEY in stored:
        replaced = f"; replaced {describe(stored[CALIBRATION_KEY])}"
    stored[CALIBRATION_KEY] = record
    with atomic_path(cli.load) as tmp:
        torch.save(stored, tmp)
    skipped = (
        f" ({scored.without_rows} without a description skipped)" if scored.without_rows else ""
    )
    scenes_ = f"{used} training scene{'s' * (used != 1)}"
    return f"{cli.load}: calibrated on {scenes_}{skipped}: {describe(record)}{replaced}"


def describe(record: dict) -> str:
    """'behind +1.2, in -0.4, ...', and the relations left at 0 (no scored description)."""
    text = ", ".join(f"{name} {value:+.1f}" for name, value in sorted(record["offsets"].items()))
    if record.get("left"):
        text += (
            f"; {', '.join(record['left'])} left at 0, undescribed in the scenes scored (a "
            "smaller --every scores more)"
        )
    return text
