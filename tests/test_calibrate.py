"""calibrate.py and calibration.py: per-relation logit offsets from training scenes, by hand and end
to end."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_eval import TINY

import calibrate
import calibration
import checkpoint
import evaluation
import generate_relevancy
import generate_scenes
import net
import processes
import scenes
import tasks
import training
import utils
import vocab
from utils import InputError


def test_relation_shifts_by_hand():
    # mean IoU over each relation's rows at cutoffs 0, 1, 2: best cutoffs 1 (on), 0 (in), 2
    # (behind; the two "behind" rows average 0.1, 0.15, 0.5); median 1 -> shifts 0, +1, -1
    iou = {
        "on": [[0.1, 0.5, 0.2]],
        "in": [[0.3, 0.2, 0.1]],
        "behind": [[0, 0.1, 0.6], [0.2, 0.2, 0.4]],
    }
    rows = pd.DataFrame(
        [
            {"spatial_relation_name": name, "cutoff": float(c), "voxel32x32x32_iou": value}
            for name, curves in iou.items()
            for curve in curves
            for c, value in enumerate(curve)
        ]
    )
    shifts = calibration.relation_shifts(rows)
    assert shifts.to_dict() == {"behind": -1.0, "in": 1.0, "on": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three small generated scenes with oracle relevancy, two of them training scenes: the first
    describes four of the six relations, the second all six."""
    root = tmp_path_factory.mktemp("calibration_scenes")
    generate_scenes.generate_dataset(root, [0, 2, 4], scenes.PRESETS["small"])
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    files = sorted(p.name for p in root.glob("*.hdf5"))  # seeds 0, 2 (a test room), 4
    lists = {"train": [files[0], files[2]], "unseen_instances": [files[1]]}
    (root / "vool_split.pkl").write_bytes(pickle.dumps(lists))
    return root


def train_tiny(data, log, *flags):
    args = training.prepare_args(
        "vool", ["--file_path", str(data), "--log", str(log), *TINY, *flags]
    )
    training.train(tasks.VOOL, args, stop_after_steps=1)
    return log / "latest.pth"


def training_rows(ckpt, data, *flags) -> pd.DataFrame:
    """The training scenes' rows as calibrate.py scores them, with the checkpoint as it is now."""
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu", "--every", "1"]
    argv += flags
    cli = calibrate.parser().parse_args(argv)
    args = calibration.eval_args(cli)
    procs = processes.setup_processes("cpu")
    scorer = evaluation.make_scorer(args, procs.device)
    return evaluation.evaluate_split(
        scorer, calibration.training_scenes(args, 1), "train", args, procs
    ).rows


def printed(capsys) -> list[str]:
    """calibrate.py's lines, without the seconds it took."""
    return [re.sub(r" \(\d+ s\)$", "", line) for line in capsys.readouterr().out.splitlines()]


def dead_writers_temp_file(folder, name: str):
    """A temporary file of atomic_path's naming whose writer is gone (a kill -9 mid-write)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".{name}.{utils._temp_owner().rsplit('-', 1)[0]}-{dead.pid}.ab12.tmp"
    stale.write_bytes(b"")
    return stale


def test_calibration_shifts_each_relations_curve_by_its_offset_once(data, tmp_path, capsys):
    ckpt = train_tiny(data, tmp_path / "run", "--relation_offsets")
    before = training_rows(ckpt, data)
    # the offsets move by half of calibrate.py's cutoff step (the median of six best cutoffs):
    # the curves are compared at half its step
    fine = ("--cutoffs", "-1", "6", "0.1")
    before_fine = training_rows(ckpt, data, *fine)
    stale = dead_writers_temp_file(ckpt.parent, ckpt.name)
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu", "--every", "1"]
    calibrate.run(argv)
    out = printed(capsys)
    assert out[0] == f"removed {stale.name}, left by an interrupted run" and not stale.exists()
    assert out[1].startswith(f"{ckpt}: calibrated on 2 training scenes: behind ")
    assert "left at 0" not in out[1]  # the second scene describes every relation
    stored = checkpoint.read_checkpoint(ckpt)
    offsets = stored["net"]["relation_offsets"]
    record = stored[calibration.CALIBRATION_KEY]["offsets"]
    expected = calibration.relation_shifts(before)
    assert record == pytest.approx(expected.to_dict())
    for name, value in record.items():
        assert offsets[net.OFFSET_ORDER.index(name)].item() == pytest.approx(value)
    # each relation's IoU curve moves by its offset: IoU after at c == IoU before at c - offset
    after = training_rows(ckpt, data, *fine)
    curve = lambda rows: rows.groupby(["spatial_relation_name", "cutoff"])[  # noqa: E731
        "voxel32x32x32_iou"
    ].mean()
    old, new = curve(before_fine), curve(after)
    cutoffs = sorted(before_fine["cutoff"].unique())
    compared = 0
    for name, offset in record.items():
        for c in cutoffs:
            source = round(c - offset, 6)
            match = [k for k in cutoffs if abs(k - source) < 1e-6]
            if match:
                assert new[(name, c)] == pytest.approx(old[(name, match[0])], abs=1e-6)
                compared += 1
    assert compared > 0
    assert set(record) == set(vocab.RELATIONS)
    # a calibrated checkpoint is left as it is; --replace calibrates it again, from zero offsets
    before_bytes = ckpt.read_bytes()
    calibrate.run(argv)
    described = calibration.describe(stored[calibration.CALIBRATION_KEY])
    assert printed(capsys)[0] == (
        f"{ckpt} is already calibrated ({described}); left as it is (--replace calibrates it again)"
    )
    assert ckpt.read_bytes() == before_bytes
    calibrate.run([*argv, "--replace"])
    assert f"; replaced {described}" in capsys.readouterr().out
    again = checkpoint.read_checkpoint(ckpt)
    assert again[calibration.CALIBRATION_KEY]["offsets"] == record  # the same, not added on top
    assert torch.equal(again["net"]["relation_offsets"], offsets)


def test_relations_no_scene_describes_are_named_and_a_replace_calibrates_them(
    data, tmp_path, capsys
):
    """--every 1000 scores the first training scene alone, which describes four relations: the
    other two keep offset 0 and the line says so; --replace --every 1 calibrates them all."""
    ckpt = train_tiny(data, tmp_path / "run", "--relation_offsets")
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu"]
    calibrate.run([*argv, "--every", "1000"])
    line = printed(capsys)[0]
    assert line.startswith(f"{ckpt}: calibrated on 1 training scene: behind ")
    assert line.endswith(
        "; in front of, on the left of left at 0, undescribed in the scenes scored (a smaller "
        "--every scores more)"
    ), line
    stored = checkpoint.read_checkpoint(ckpt)
    assert stored[calibration.CALIBRATION_KEY]["left"] == ["in front of", "on the left of"]
    for name in ("in front of", "on the left of"):
        assert stored["net"]["relation_offsets"][net.OFFSET_ORDER.index(name)] == 0
    calibrate.run([*argv, "--every", "1", "--replace"])
    again = checkpoint.read_checkpoint(ckpt)[calibration.CALIBRATION_KEY]
    assert set(again["offsets"]) == set(vocab.RELATIONS) and again["left"] == []


def test_a_network_without_offsets_is_one_line(data, tmp_path):
    ckpt = train_tiny(data, tmp_path / "plain")
    before = ckpt.read_bytes()
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu"]
    with pytest.raises(InputError) as error:
        calibrate.run(argv)
    assert str(error.value) == (
        f"{ckpt} was not trained with --relation_offsets: its SemAbsVOOL network has no offsets "
        "to set (train_vool.py --relation_offsets)"
    )
    assert ckpt.read_bytes() == before


def test_an_ovssc_checkpoint_is_named_as_one(tmp_path):
    args = training.prepare_args("ovssc", ["--file_path", "x", "--log", "y", *TINY])
    ckpt = tmp_path / "ovssc.pth"
    checkpoint.save_checkpoint(ckpt, net.build_network("ovssc", args.approach, args), None, 1)
    with pytest.raises(InputError) as error:
        calibrate.run(["--file_path", str(tmp_path), "--load", str(ckpt)])
    assert str(error.value) == (
        f"{ckpt} is an OVSSC checkpoint (SemAbs3D): calibrate.py sets the relation offsets of a "
        "VOOL network (train_vool.py --relation_offsets)"
    )


def test_without_args_pkl_it_asks_for_args_which_it_takes(data, tmp_path, capsys):
    ckpt = train_tiny(data, tmp_path / "run", "--relation_offsets")
    moved = tmp_path / "elsewhere" / "vool.pth"
    moved.parent.mkdir()
    moved.write_bytes(ckpt.read_bytes())
    argv = ["--file_path", str(data), "--load", str(moved), "--device", "cpu", "--every", "1"]
    with pytest.raises(InputError) as error:
        calibrate.run(argv)
    assert str(error.value) == (
        f"no args.pkl beside {moved}: the network's configuration is its training run's args.pkl; "
        "give it with --args PATH"
    )
    calibrate.run([*argv, "--args", str(ckpt.parent / "args.pkl")])
    assert "calibrated on 2 training scenes" in capsys.readouterr().out


def refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        calibrate.run(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_its_flags_are_only_those_it_uses_and_refusals_are_one_line(capsys):
    assert refusal(["--file_path", "d"], capsys) == (  # no --load: one line, no traceback
        "error: the following arguments are required: --load (python calibrate.py --help lists "
        "the flags)\n"
    )
    argv = ["--file_path", "d", "--load", "c.pth", "--voxel_shape", "64", "64", "64", "--lr", "5"]
    assert refusal(argv, capsys) == (  # training's flags are not calibrate.py's
        "error: unrecognized arguments: --voxel_shape 64 64 64 --lr 5 (python calibrate.py "
        "--help lists the flags)\n"
    )
    parser = calibrate.parser()
    assert parser.description.endswith("the offsets written into the checkpoint.")
    assert parser.description.startswith("Calibrate a trained VOOL network's")
    flags = {option for action in parser._actions for option in action.option_strings}
    assert flags == {
        "-h", "--help", "--file_path", "--load", "--args", "--every", "--cutoffs", "--replace",
        "--device", "--num_workers",
    }  # fmt: skip
    assert all(action.help for action in parser._actions)
