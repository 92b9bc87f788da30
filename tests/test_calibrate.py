"""calibrate.py and calibration.py: per-relation logit offsets from training scenes, by hand and end
to end."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
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
    """Three small generated scenes with oracle relevancy, two of them training scenes."""
    root = tmp_path_factory.mktemp("calibration_scenes")
    generate_scenes.generate_dataset(root, [0, 2, 3], scenes.PRESETS["small"])
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    files = sorted(p.name for p in root.glob("*.hdf5"))
    lists = {"train": files[:2], "unseen_instances": files[2:]}
    (root / "vool_split.pkl").write_bytes(pickle.dumps(lists))
    return root


def train_tiny(data, log, *flags):
    args = training.prepare_args(
        "vool", ["--file_path", str(data), "--log", str(log), *TINY, *flags]
    )
    training.train(tasks.VOOL, args, stop_after_steps=1)
    return log / "latest.pth"


def training_rows(ckpt, data) -> pd.DataFrame:
    """The training scenes' rows as calibrate.py scores them, with the checkpoint as it is now."""
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu", "--every", "1"]
    cli = calibrate.parser().parse_args(argv)
    args = calibration.eval_args(cli)
    procs = processes.setup_processes("cpu")
    scorer = evaluation.make_scorer(args, procs.device)
    return evaluation.evaluate_split(
        scorer, calibration.training_scenes(args, 1), "train", args, procs
    ).rows


def test_calibration_shifts_each_relations_curve_by_its_offset_once(data, tmp_path, capsys):
    ckpt = train_tiny(data, tmp_path / "run", "--relation_offsets")
    before = training_rows(ckpt, data)
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu", "--every", "1"]
    calibrate.run(argv)
    assert "calibrated on 2 training scenes" in capsys.readouterr().out
    stored = checkpoint.read_checkpoint(ckpt)
    offsets = stored["net"]["relation_offsets"]
    record = stored[calibration.CALIBRATION_KEY]["offsets"]
    expected = calibration.relation_shifts(before)
    assert record == pytest.approx(expected.to_dict())
    for name, value in record.items():
        assert offsets[net.OFFSET_ORDER.index(name)].item() == pytest.approx(value)
    # each relation's IoU curve moves by its offset: IoU after at c == IoU before at c - offset
    after = training_rows(ckpt, data)
    curve = lambda rows: rows.groupby(["spatial_relation_name", "cutoff"])[  # noqa: E731
        "voxel32x32x32_iou"
    ].mean()
    old, new = curve(before), curve(after)
    cutoffs = sorted(before["cutoff"].unique())
    compared = 0
    for name, offset in record.items():
        for c in cutoffs:
            source = round(c - offset, 6)
            match = [k for k in cutoffs if abs(k - source) < 1e-6]
            if match:
                assert new[(name, c)] == pytest.approx(old[(name, match[0])], abs=1e-6)
                compared += 1
    assert compared > 0
    # a calibrated checkpoint is left as it is
    before_bytes = ckpt.read_bytes()
    calibrate.run(argv)
    assert "already calibrated" in capsys.readouterr().out
    assert ckpt.read_bytes() == before_bytes


def test_a_network_without_offsets_is_one_line(data, tmp_path):
    ckpt = train_tiny(data, tmp_path / "plain")
    before = ckpt.read_bytes()
    argv = ["--file_path", str(data), "--load", str(ckpt), "--device", "cpu"]
    with pytest.raises(InputError, match="was not trained with --relation_offsets"):
        calibrate.run(argv)
    assert ckpt.read_bytes() == before
