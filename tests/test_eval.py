"""eval.py: stats frame schema, resume / --replace, bad input, torchrun sharding, chunked VOOL."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_pipeline import tiny_text_encoder

import checkpoint
import dataset
import eval as eval_script
import evaluation
import generate_relevancy
import generate_scenes
import metrics
import net
import options
import processes
import scenes
import tasks
import training

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 2, 3]  # seed 2 is a test room
TINY = (
    "--voxel_shape 8 8 8 --unet_num_levels 2 --unet_f_maps 4 --unet_num_groups 2 "
    "--unet_num_channels 4 --pts_feat_extractor_hidden_dim 8 --pointing_dim 8 "
    "--num_input_pts 200 --num_output_pts 200 --num_workers 0 --device cpu --num_patches 2 "
    "--num_descs 2 --epochs 1"
).split()
SPLITS = ("unseen_instances", "unseen_instances_synonyms")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three small generated scenes with oracle relevancy: one train scene, two test splits of two
    scenes and one scene (an odd count: the second process's shard is empty)."""
    root = tmp_path_factory.mktemp("eval_scenes")
    generate_scenes.generate_dataset(root, SEEDS, scenes.PRESETS["small"])
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    for name in ("ssc_split.pkl", "vool_split.pkl"):
        files = sorted(p.name for p in root.glob("*.hdf5"))
        lists = {"train": files[:1], SPLITS[0]: files[1:], SPLITS[1]: files[2:]}
        (root / name).write_bytes(pickle.dumps(lists))
    return root


@pytest.fixture(scope="module")
def ovssc_ckpt(data, tmp_path_factory) -> Path:
    """A one-step OVSSC checkpoint and its args.pkl, from the training module."""
    log = tmp_path_factory.mktemp("ovssc_run")
    args = training.prepare_args("ovssc", ["--file_path", str(data), "--log", str(log), *TINY])
    training.train(tasks.OVSSC, args, stop_after_steps=1)
    return log / "latest.pth"


def run_eval(argv, capsys=None) -> str:
    eval_script.main([str(a) for a in argv])
    return capsys.readouterr().out if capsys else ""


def eval_argv(data, ckpt, task="ovssc", *extra):
    argv = ["--task", task, "--file_path", data, "--load", ckpt, "--device", "cpu"]
    return [*argv, "--num_workers", "0", *extra]


@pytest.fixture(scope="module")
def evaluated(data, ovssc_ckpt, tmp_path_factory):
    """The checkpoint copied as <dir>/ovssc.pth with its args.pkl, evaluated with --suffix nyu:
    (checkpoint, stats frame, summary line, training log listing before/after)."""
    ckpt = tmp_path_factory.mktemp("evaluated") / "ovssc.pth"
    ckpt.write_bytes(ovssc_ckpt.read_bytes())
    (ckpt.parent / "args.pkl").write_bytes((ovssc_ckpt.parent / "args.pkl").read_bytes())
    log_before = sorted(ovssc_ckpt.parent.rglob("*"))
    argv = [str(a) for a in eval_argv(data, ckpt, "ovssc", "--suffix", "nyu")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        eval_script.main(argv)
    frame = pd.read_pickle(ckpt.parent / "ovssc_eval_stats_nyu.pkl")
    return ckpt, frame, out.getvalue(), (log_before, sorted(ovssc_ckpt.parent.rglob("*")))


def test_stats_frame_columns_rows_and_splits(evaluated, ovssc_ckpt):
    ckpt, frame, line, (log_before, log_after) = evaluated
    grids = ("point", "voxel32x32x32", "voxel64x64x64")
    metric_cols = [f"{g}_{m}" for g in grids for m in metrics.METRIC_NAMES]
    assert list(frame.columns) == ["scene_id", "label", *metric_cols, "cutoff", "epoch", "split"]
    assert list(frame["split"].unique()) == list(SPLITS)  # pickle order, no train
    assert (frame["epoch"] == checkpoint.read_checkpoint(ckpt)["epochs"]).all()
    np.testing.assert_array_equal(np.unique(frame["cutoff"]), np.arange(-2.5, 0.0, 0.1))
    per_row = frame.groupby(["split", "scene_id", "label"]).size()
    assert (per_row == 25).all()
    assert list(frame.groupby("split", sort=False)["scene_id"].nunique()) == [2, 1]
    # split -> scene -> cutoff -> row: within a (split, scene) block the cutoffs rise in runs
    block = frame[(frame["split"] == SPLITS[0]) & (frame["scene_id"] == frame["scene_id"].iloc[0])]
    rows = block["label"].nunique()
    assert list(block["cutoff"].iloc[::rows]) == list(np.arange(-2.5, 0.0, 0.1))
    assert list(block.index[:rows]) == list(range(rows))
    assert frame["voxel64x64x64_iou"].notna().any()
    assert "2 splits" in line and "ovssc_eval_stats_nyu.pkl" in line and line.count("\n") == 1
    assert log_after == log_before  # nothing written into the training log (no TensorBoard dirs)


def test_resume_skips_finished_splits_and_replace_redoes_them(data, evaluated, capsys):
    ckpt, full, _, _ = evaluated
    stats = ckpt.parent / "ovssc_eval_stats.pkl"  # the default name
    full[full["split"] == SPLITS[0]].to_pickle(stats)  # an interrupted run: one split finished
    line = run_eval(eval_argv(data, ckpt), capsys)
    assert f"1 splits ({SPLITS[1]}), 1 already done" in line
    pd.testing.assert_frame_equal(pd.read_pickle(stats), full)
    line = run_eval(eval_argv(data, ckpt), capsys)
    assert "0 splits" in line and "0 rows" in line
    line = run_eval(eval_argv(data, ckpt, "ovssc", "--replace"), capsys)
    assert f"2 splits ({', '.join(SPLITS)})" in line
    pd.testing.assert_frame_equal(pd.read_pickle(stats), full)


def one_error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        eval_script.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_checkpoint_without_args_pkl_names_the_flags(data, ovssc_ckpt, tmp_path, capsys):
    ckpt = tmp_path / "ovssc.pth"
    ckpt.write_bytes(ovssc_ckpt.read_bytes())
    err = one_error_line(eval_argv(data, ckpt), capsys)
    assert "args.pkl" in err and "--args" in err and "--approach" in err
    # --args supplies it: the training run's flags, this command's run flags
    argv = eval_argv(data, ckpt, "ovssc", "--args", ovssc_ckpt.parent / "args.pkl")
    args = evaluation.eval_config(eval_script.parser().parse_args(map(str, argv)))
    assert args.voxel_shape == [8, 8, 8] and args.load == str(ckpt) and args.num_workers == 0
    assert not args.domain_randomization and not args.balance_spatial_sampling
    assert args.batch_size == 1


def test_another_tasks_checkpoint_is_one_line(data, ovssc_ckpt, tmp_path, capsys):
    err = one_error_line(eval_argv(data, ovssc_ckpt, "vool", "--output", tmp_path / "s"), capsys)
    assert "SemAbs3D" in err and "SemAbsVOOL" in err
    assert not (tmp_path / "s").exists()


# -- two processes under torchrun (gloo) write the frame one process writes


def test_two_process_torchrun_equals_one_process(data, ovssc_ckpt, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    frames = []
    for nproc in (1, 2):
        out = tmp_path / f"stats{nproc}.pkl"
        cmd = [sys.executable]
        if nproc > 1:  # --master_port 0 hangs the workers' rendezvous; --standalone picks a port
            cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"]
        cmd += [str(REPO / "eval.py")]
        cmd += map(str, eval_argv(data, ovssc_ckpt, "ovssc", "--output", out))
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("eval ovssc:") == 1  # only rank 0 reports
        frames.append(pd.read_pickle(out))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert len(frames[0].drop_duplicates(["split", "scene_id", "label", "cutoff"])) == len(
        frames[0]
    )


# -- semantic-aware VOOL through the chunked (one description at a time) forward


def test_semantic_aware_vool_evaluates_chunked(data, tmp_path, tiny_models, monkeypatch):
    one = tmp_path / "one_scene"  # a split pickle with one test scene, to keep this fast
    one.mkdir()
    lists = pickle.loads((data / "vool_split.pkl").read_bytes())
    (one / "vool_split.pkl").write_bytes(
        pickle.dumps({SPLITS[1]: [str(data / n) for n in lists[SPLITS[1]]]})
    )
    data = one
    (tmp_path / "vool.pth").touch()  # eval_config checks that --load exists; saved below
    cli = eval_script.parser().parse_args(
        [*map(str, eval_argv(data, tmp_path / "vool.pth", "vool")), "--approach", "semantic_aware"]
        + TINY
        + ["--chunk_points", "100", "--output", str(tmp_path / "stats.pkl")]
    )
    args = evaluation.eval_config(cli)
    encoder = tiny_text_encoder()
    torch.manual_seed(0)
    model = net.build_network(
        "vool", "semantic_aware", args, text_encoder=encoder, clip_hidden_dim=32
    )
    checkpoint.save_checkpoint(tmp_path / "vool.pth", model, None, epochs=3)
    options.save_args(args, tmp_path)

    chunks = []
    real = tasks.chunked_forward
    monkeypatch.setattr(tasks, "chunked_forward", lambda *a: chunks.append(a[3]) or real(*a))
    result = evaluation.evaluate(
        evaluation.eval_config(cli), processes.Processes(), text_encoder=encoder, clip_hidden_dim=32
    )
    frame = pd.read_pickle(result.path)
    assert chunks and all(rows > 1 for rows in chunks)  # the per-description path ran
    assert list(frame.columns[:4]) == [
        "scene_id",
        "target_obj_name",
        "reference_obj_name",
        "spatial_relation_name",
    ]
    assert (frame["epoch"] == 3).all() and frame["voxel32x32x32_iou"].notna().any()
    # chunked logits equal the whole forward's
    batch = next(
        iter(
            torch.utils.data.DataLoader(
                training.dataset.make_datasets(
                    data, "vool", dataset.DatasetConfig.from_args(args), splits=(SPLITS[1],)
                )[SPLITS[1]]
            )
        )
    )
    with torch.no_grad():
        whole = model.eval()(**batch)
        parts = tasks.chunked_forward(model, batch, tasks.VOOL_ROW_KEYS, whole.shape[1])
    torch.testing.assert_close(parts, whole)
