"""A small generated dataset with oracle relevancy and two tiny networks trained on it for one step
each (OVSSC and VOOL), shared by the 3D tab's tests (test_scene_query.py, test_app.py)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest

import generate_relevancy
import generate_scenes
import scenes
import tasks
import training

SEEDS = [0, 2]  # seed 0 is a training room, seed 2 a held-out one (FloorPlan228)
TINY_NETWORK = (
    "--voxel_shape 16 16 16 --unet_num_levels 2 --unet_f_maps 8 --unet_num_groups 4 "
    "--unet_num_channels 8 --pts_feat_extractor_hidden_dim 16 --pointing_dim 16 "
    "--num_input_pts 300 --num_output_pts 300 --num_workers 0 --device cpu --num_patches 2 "
    "--num_descs 2 --epochs 1 --eval_freq 0 --save_freq 0"
).split()


@dataclass
class TrainedScene:
    data: Path  # scene files and split pickles
    held_out: Path  # the held-out scene file
    checkpoints: dict[str, Path]  # task -> latest.pth (args.pkl beside it)


@pytest.fixture(scope="session")
def trained_scene(tmp_path_factory) -> TrainedScene:
    root = tmp_path_factory.mktemp("scene_networks")
    data = root / "data"
    generate_scenes.generate_dataset(data, SEEDS, scenes.PRESETS["small"])
    generate_relevancy.dataset(data, source="oracle", configs=["ours"])
    split = pickle.loads((data / "ssc_split.pkl").read_bytes())
    checkpoints = {}
    for task in (tasks.OVSSC, tasks.VOOL):
        log = root / task.name
        argv = ["--file_path", str(data), "--log", str(log), *TINY_NETWORK]
        training.train(task, training.prepare_args(task.name, argv))
        checkpoints[task.name] = log / "latest.pth"
    return TrainedScene(data, data / split["unseen_instances"][0], checkpoints)
