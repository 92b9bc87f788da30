"""Scenes with no row to score in a split: a VOOL scene with no description at all, and one whose
descriptions name no synonym (so none is left in unseen_instances_synonyms). Evaluation, the
baselines, calibration, training and its evaluation skip them and say so in one line; the demo
shows a novel-room scene that has descriptions."""

from __future__ import annotations

import contextlib
import io
import pickle

import pandas as pd
import pytest
from test_eval import TINY

import calibrate
import dataset
import dataset_scene
import demo
import eval as eval_script
import generate_relevancy
import generate_scenes
import options
import scene_file
import scenes
import tasks
import training
from utils import InputError

SYNONYM_FREE_SEED = 100_002  # its 8 descriptions name no synonym
EXPECTED_NOTE = (
    "note: skipped 3 scenes with no description to score (unseen_instances: 1, "
    "unseen_instances_synonyms: 2)"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Seed 0 (descriptions in every split), seed 1 written with no description, and the
    synonym-free seed; oracle relevancy. Every split lists the scene without descriptions."""
    root = tmp_path_factory.mktemp("zero_rows")
    options_ = scenes.PRESETS["small"]
    generate_scenes.generate_dataset(root, [0, SYNONYM_FREE_SEED], options_)
    scene = scenes.generate_scene(1, options_)
    scene["descriptions"] = []
    empty = scene_file.scene_file_name(1, scene["room"])
    scene_file.write_scene(root / empty, scene, options_.relevancy_size)
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    first, free = (scene_file.scene_file_name(s, scenes.generate_scene(s, options_)["room"])
                   for s in (0, SYNONYM_FREE_SEED))  # fmt: skip
    lists = {
        "train": [first, empty],
        "unseen_instances": [first, empty],
        "unseen_instances_synonyms": [first, free, empty],
    }
    for name in scene_file.SPLIT_FILES.values():
        (root / name).write_bytes(pickle.dumps(lists))
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A tiny VOOL network trained one epoch with the IoU term, evaluated during training; -> its
    log folder."""
    log = tmp_path_factory.mktemp("vool_run")
    flags = ["--iou_loss", "lovasz", "--relation_offsets", "--eval_freq", "1"]
    args = training.prepare_args(
        "vool", ["--file_path", str(data), "--log", str(log), *TINY, *flags]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        training.train(tasks.VOOL, args)
    (log / "printed.txt").write_text(printed.getvalue())
    return log


def test_the_splits_hold_scenes_without_rows(data):
    splits = dataset.make_datasets(data, "vool")
    rows = {split: [d.has_rows(p) for p in d.scene_paths] for split, d in splits.items()}
    # sorted paths: seed 0, seed 1 (no description), the synonym-free seed
    assert rows == {
        "train": [True, False],
        "unseen_instances": [True, False],
        "unseen_instances_synonyms": [True, False, False],
    }


def test_training_trains_on_them_and_its_evaluation_leaves_them_out(run):
    """The scene without descriptions trains on padding (no NaN from the IoU term) and is left out
    of training's evaluation, said in one line."""
    stats = pd.read_pickle(run / "detailed_stats.pkl")
    assert set(stats["split"]) == {"train", "unseen_instances"}
    evaluated = stats[stats["split"] == "unseen_instances"]
    assert evaluated["scene_id"].nunique() == 1
    out = (run / "printed.txt").read_text()
    assert out.count("note: skipped") == 1
    assert "note: skipped 1 scene with no description to score (unseen_instances: 1)" in out


@pytest.mark.parametrize("baseline", [None, "lifted_relevancy", "all_in_frustum"])
def test_eval_skips_them_and_says_so_once(data, run, tmp_path, capsys, baseline):
    scored = ["--load", run / "latest.pth"] if baseline is None else [
        "--baseline", baseline, "--args", run / options.ARGS_FILE]  # fmt: skip
    argv = ["--task", "vool", "--file_path", data, *scored, "--device", "cpu",
            "--num_workers", "0", "--output", tmp_path / "stats.pkl"]  # fmt: skip
    eval_script.main([str(a) for a in argv])
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("note:")] == [EXPECTED_NOTE]
    stats = pd.read_pickle(tmp_path / "stats.pkl")
    assert stats.groupby("split")["scene_id"].nunique().to_dict() == {
        "unseen_instances": 1,
        "unseen_instances_synonyms": 1,
    }
    assert out[-1].startswith("eval vool: 2 splits") and ", 5 scenes, " in out[-1]


def test_calibration_skips_them_and_says_so(data, run, tmp_path, capsys):
    ckpt = tmp_path / "latest.pth"
    ckpt.write_bytes((run / "latest.pth").read_bytes())
    (tmp_path / options.ARGS_FILE).write_bytes((run / options.ARGS_FILE).read_bytes())
    calibrate.run(
        ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu", "--every", "1"]
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert "calibrated on 1 training scene (1 without a description skipped):" in line


def test_visualize_refuses_a_scene_without_descriptions_in_one_line(data, run):
    args = options.load_args(run / options.ARGS_FILE)
    empty = next(path for path in sorted(data.glob("00001|*.hdf5")))
    with pytest.raises(InputError, match=r"has no descriptions \(data/descriptions is empty\)$"):
        dataset_scene.read_dataset_scene(empty, "vool", args)


def test_the_demo_shows_a_novel_room_scene_with_descriptions(data, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    names = sorted(p.name for p in data.glob("*.hdf5"))
    for name in names:
        (folder / name).symlink_to(data / name)
    empty, free = names[1], names[2]  # seed 1 sorts before the synonym-free seed
    lists = {"train": [], "unseen_instances": [empty, free]}
    (folder / scene_file.SPLIT_FILES["ovssc"]).write_bytes(pickle.dumps(lists))
    assert demo.novel_room_scene(folder) == folder / free
    lists["unseen_instances"] = [empty]
    (folder / scene_file.SPLIT_FILES["ovssc"]).write_bytes(pickle.dumps(lists))
    with pytest.raises(InputError, match="no novel-room scene with a description"):
        demo.novel_room_scene(folder)
