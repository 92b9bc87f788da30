"""eval.py: stats frame schema, resume / --replace, bad input, torchrun sharding, chunked VOOL,
baselines, cutoffs, workers (cap, errors, Ctrl-C) and stale temporary files."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from test_pipeline import tiny_text_encoder

import baselines
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
import scene_file
import scenes
import summarize
import tasks
import training
import utils

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


# -- baselines scored by eval's own metrics (baselines.py)


def run_args(ovssc_ckpt, folder: Path, **changes) -> Path:
    """The training run's args.pkl copied into `folder` (with `changes`)."""
    args = options.load_args(ovssc_ckpt.parent / "args.pkl")
    vars(args).update(changes)
    return options.save_args(args, folder)


def test_baselines_write_a_network_frames_rows_beside_args(data, evaluated, ovssc_ckpt, tmp_path):
    _, network, _, _ = evaluated
    args_file = run_args(ovssc_ckpt, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{utils._temp_owner().rsplit('-', 1)[0]}"
    stale = tmp_path / f".lifted_relevancy_eval_stats.pkl.{owner}-{dead.pid}.x1.tmp"
    live = tmp_path / f".lifted_relevancy_eval_stats.pkl.{owner}-{os.getpid()}.x2.tmp"
    for path in (stale, live):
        path.write_text("partial")
    best = {}
    for name in baselines.BASELINES:
        out = io.StringIO()
        argv = ["--task", "ovssc", "--file_path", data, "--baseline", name, "--args", args_file]
        with contextlib.redirect_stdout(out):
            eval_script.main([*map(str, argv), "--device", "cpu", "--num_workers", "0"])
        frame = pd.read_pickle(tmp_path / f"{name}_ovssc_eval_stats.pkl")
        assert list(frame.columns) == list(network.columns)
        assert (frame["epoch"] == 0).all()
        cutoffs = baselines.BASELINES[name].cutoffs
        np.testing.assert_array_equal(frame["cutoff"].unique(), cutoffs)
        keys = ["split", "scene_id", "label"]
        per_cutoff = frame[frame["cutoff"] == cutoffs[0]][keys].reset_index(drop=True)
        net_rows = network[network["cutoff"] == network["cutoff"].iloc[0]][keys]
        pd.testing.assert_frame_equal(per_cutoff, net_rows.reset_index(drop=True))
        best[name] = frame.groupby("cutoff")["voxel32x32x32_iou"].mean().max()
    assert not stale.exists() and live.exists()  # the live writer's file stays
    # with oracle relevancy the lifted visible answer is far better than "everything visible"
    assert best["lifted_relevancy"] > 2 * best["all_in_frustum"] > 0


def test_a_stale_temp_file_is_reported_once(data, ovssc_ckpt, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{utils._temp_owner().rsplit('-', 1)[0]}"
    stale = tmp_path / f".s.pkl.{owner}-{dead.pid}.ab.tmp"
    stale.write_text("partial")
    argv = ["--task", "ovssc", "--file_path", data, "--baseline", "all_in_frustum"]
    argv += ["--args", run_args(ovssc_ckpt, tmp_path / "run"), "--output", tmp_path / "s.pkl"]
    out = run_eval([*argv, "--device", "cpu", "--num_workers", "0"], capsys)
    assert out.splitlines()[0] == f"removed {stale.name}, left by an interrupted run"
    assert not stale.exists() and (tmp_path / "s.pkl").is_file()


def test_baseline_inputs_are_one_line(data, ovssc_ckpt, tmp_path, capsys):
    base = ["--task", "ovssc", "--file_path", data, "--device", "cpu"]
    err = one_error_line([*base, "--baseline", "all_in_frustum"], capsys)
    assert err == (
        "error: --baseline all_in_frustum needs --args RUN/args.pkl: the trained run whose data "
        "configuration it shares"
    )
    argv = [*base, "--baseline", "all_in_frustum", "--args", ovssc_ckpt.parent / "args.pkl"]
    err = one_error_line([*argv, "--load", ovssc_ckpt], capsys)
    assert err == f"error: --baseline all_in_frustum scores no checkpoint; drop --load {ovssc_ckpt}"
    aware = run_args(ovssc_ckpt, tmp_path, approach="semantic_aware", network_inputs=["rgb"])
    err = one_error_line([*base, "--baseline", "lifted_relevancy", "--args", aware], capsys)
    assert err == (
        f"error: --baseline lifted_relevancy reads relevancy, but {aware} (approach "
        "semantic_aware) reads rgb; pass the args.pkl of a run with saliency inputs"
    )
    assert not list(tmp_path.glob("*_eval_stats*"))


# -- cutoffs


def test_default_cutoffs_are_the_originals_and_a_wider_range_extends_the_frame(
    data, evaluated, tmp_path, capsys
):
    ckpt, default, _, _ = evaluated
    args = evaluation.eval_config(eval_script.parser().parse_args(map(str, eval_argv(data, ckpt))))
    np.testing.assert_array_equal(args.cutoffs, np.arange(-2.5, 0.0, 0.1))
    assert len(args.cutoffs) == 25
    wide_file = tmp_path / "wide.pkl"
    run_eval(
        eval_argv(data, ckpt, "ovssc", "--cutoffs", "-2.5", "8", "0.1", "--output", wide_file),
        capsys,
    )
    wide = pd.read_pickle(wide_file)
    np.testing.assert_array_equal(wide["cutoff"].unique(), np.arange(-2.5, 8, 0.1))
    # the original's 25 cutoffs are the first 25 of the wider range: the same rows, bit for bit
    pd.testing.assert_frame_equal(wide[wide["cutoff"].isin(default["cutoff"])], default)
    # resuming into a file of other cutoffs would mix them
    err = one_error_line(eval_argv(data, ckpt, "ovssc", "--output", wide_file), capsys)
    assert err == (
        f"error: {wide_file} was made from other inputs (cutoffs 105 from -2.5 to 7.9 there, 25 "
        "from -2.5 to -0.1 here); --replace to start over, or --output / --suffix for another file"
    )


@pytest.mark.parametrize(
    "values, problem",
    [
        (["nan", "1", "0.1"], "START STOP STEP must be finite numbers, got nan 1 0.1"),
        (["-1", "inf", "0.1"], "START STOP STEP must be finite numbers, got -1 inf 0.1"),
        (
            ["-1", "2", "1e-9"],
            "that is 3,000,000,000 cutoffs, at most 1000 make sense, got -1 2 1e-09",
        ),
        (["0", "-1", "0.1"], "START must be below STOP, got 0 -1 0.1"),
        (["0", "1", "-0.1"], "STEP must be > 0, got 0 1 -0.1"),
        (  # negative numbers in scientific notation are values, not options
            ["-1e9", "1e9", "1e-9"],
            "that is 2,000,000,000,000,000,000 cutoffs, at most 1000 make sense, got -1e+09 1e+09 "
            "1e-09",
        ),
        (["1"], "expected 3 arguments"),
    ],
)
def test_cutoffs_are_checked_when_parsed_in_one_line(values, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_script.parser().parse_args(
            ["--task", "ovssc", "--file_path", "x", "--cutoffs", *values]
        )
    assert exit_.value.code == 2
    # the line and where the flags are, without argparse's usage block
    assert capsys.readouterr().err == (
        f"error: argument --cutoffs: {problem} (python eval.py --help lists the flags)\n"
    )


def test_negative_cutoffs_in_scientific_notation_parse():
    argv = ["--task", "ovssc", "--file_path", "x", "--cutoffs", "-2.5e0", "-1E-1", "1e-1"]
    assert eval_script.parser().parse_args(argv).cutoffs == [-2.5, -0.1, 0.1]


# -- a stats file says what made it; a resume from other inputs is refused


def test_stats_file_records_its_inputs_and_refuses_a_resume_from_others(
    data, evaluated, ovssc_ckpt, tmp_path, capsys
):
    ckpt, frame, _, _ = evaluated
    made_by = frame.attrs[evaluation.PROVENANCE_KEY]
    weights = checkpoint.weights_fingerprint(checkpoint.read_checkpoint(ckpt)["net"])
    assert made_by["task"] == "ovssc" and made_by["scored"] == f"checkpoint {ckpt.resolve()}"
    assert made_by["weights"] == weights and made_by["epoch"] == frame["epoch"].iloc[0]
    assert made_by["file_path"] == str(data.resolve()) and len(made_by["cutoffs"]) == 25
    # another checkpoint of the same epoch into the same --output: refused, naming the weights
    other = tmp_path / "other.pth"
    state = checkpoint.read_checkpoint(ckpt)
    state["net"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["net"].items()}
    torch.save(state, other)
    (tmp_path / "args.pkl").write_bytes((ckpt.parent / "args.pkl").read_bytes())
    stats = ckpt.parent / "ovssc_eval_stats_nyu.pkl"
    err = one_error_line(eval_argv(data, other, "ovssc", "--output", stats), capsys)
    assert err.startswith(
        f"error: {stats} was made from other inputs (weights (fingerprint) {weights} there, "
    )
    # the same weights under another name resume (nothing left to do)
    same = tmp_path / "copy.pth"
    same.write_bytes(ckpt.read_bytes())
    assert "2 already done" in run_eval(eval_argv(data, same, "ovssc", "--output", stats), capsys)


def test_a_resume_after_the_split_lists_changed_is_refused(data, ovssc_ckpt, tmp_path, capsys):
    """The data folder gained a scene (its split pickle rewritten) after an eval: the stats file
    records the scenes each split held, so the next eval refuses to call it done."""
    folder = tmp_path / "data"
    folder.mkdir()
    files = sorted(p.name for p in data.glob("*.hdf5"))
    for name in files:
        shutil.copy(data / name, folder / name)

    def write_splits(unseen: list[str]) -> None:
        lists = {"train": files[:1], SPLITS[0]: unseen, SPLITS[1]: files[2:]}
        (folder / "ssc_split.pkl").write_bytes(pickle.dumps(lists))

    write_splits(files[1:2])
    stats = tmp_path / "stats.pkl"
    argv = eval_argv(folder, ovssc_ckpt, "ovssc", "--output", stats)
    assert "2 splits" in run_eval(argv, capsys)
    assert pd.read_pickle(stats).attrs[evaluation.PROVENANCE_KEY]["scenes"] == {
        SPLITS[0]: files[1:2],
        SPLITS[1]: files[2:],
    }
    write_splits(files[1:])  # a scene more
    assert one_error_line(argv, capsys) == (
        f"error: {stats} was made from other inputs (scenes of {SPLITS[0]}: 1 there, 2 here); "
        "--replace to start over, or --output / --suffix for another file"
    )


def test_baselines_of_both_tasks_do_not_share_a_default_file(data, ovssc_ckpt, tmp_path, capsys):
    args_file = run_args(ovssc_ckpt, tmp_path)
    base = ["--file_path", data, "--baseline", "all_in_frustum", "--args", args_file]
    base += ["--device", "cpu", "--num_workers", "0"]
    for task in ("ovssc", "vool"):
        line = run_eval(["--task", task, *base], capsys)
        assert "already done" not in line
        frame = pd.read_pickle(tmp_path / f"all_in_frustum_{task}_eval_stats.pkl")
        assert frame.attrs[evaluation.PROVENANCE_KEY]["task"] == task
        assert frame.attrs[evaluation.PROVENANCE_KEY]["scored"] == "baseline all_in_frustum"
    stats = tmp_path / "all_in_frustum_ovssc_eval_stats.pkl"
    err = one_error_line(["--task", "vool", *base, "--output", stats], capsys)
    assert err == (
        f"error: {stats} was made from other inputs (task ovssc there, vool here); --replace to "
        "start over, or --output / --suffix for another file"
    )
    other = ["--task", "ovssc", *base, "--output", stats]
    err = one_error_line([*other[:5], "lifted_relevancy", *other[6:]], capsys)
    assert err.startswith(
        f"error: {stats} was made from other inputs (baseline all_in_frustum there, baseline "
        "lifted_relevancy here)"
    )


# -- -1: every point


def test_a_checkpoint_whose_args_pkl_holds_minus_one_evaluates(data, ovssc_ckpt, tmp_path, capsys):
    run_args(ovssc_ckpt, tmp_path, num_input_pts=-1, num_output_pts=-1)
    ckpt = tmp_path / "ovssc.pth"
    ckpt.write_bytes(ovssc_ckpt.read_bytes())
    line = run_eval(eval_argv(data, ckpt, "ovssc", "--output", tmp_path / "s.pkl"), capsys)
    assert "2 splits" in line
    assert len(pd.read_pickle(tmp_path / "s.pkl"))
    with pytest.raises(SystemExit):
        eval_script.parser().parse_args(
            ["--task", "ovssc", "--file_path", "x", "--num_input_pts", "-2"]
        )
    assert "--num_input_pts: must be an integer >= 1, or -1 (every point), got -2" in (
        capsys.readouterr().err
    )


# -- bad inputs


def test_missing_checkpoint_and_folder_are_named(data, ovssc_ckpt, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    err = one_error_line(eval_argv(data, missing), capsys)
    assert err == f"error: checkpoint {missing} does not exist"
    err = one_error_line(eval_argv(data, ovssc_ckpt.parent), capsys)
    assert err == (
        f"error: --load {ovssc_ckpt.parent} is a folder: give the checkpoint file in it (e.g. "
        f"{ovssc_ckpt.parent / 'latest.pth'})"
    )
    err = one_error_line(eval_argv(data, ovssc_ckpt, "ovssc", "--output", tmp_path), capsys)
    assert err == (
        f"error: --output {tmp_path} is a folder: give the stats file, e.g. "
        f"{tmp_path}/eval_stats.pkl"
    )
    err = one_error_line(eval_argv(tmp_path / "nowhere", ovssc_ckpt), capsys)
    assert err == f"error: --file_path {tmp_path / 'nowhere'} does not exist"
    err = one_error_line(eval_argv(ovssc_ckpt, ovssc_ckpt), capsys)
    assert err == f"error: --file_path {ovssc_ckpt} is not a folder"


def test_default_workers_are_capped_to_the_cores_and_said_once(
    data, ovssc_ckpt, monkeypatch, capsys
):
    seen = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(
        evaluation,
        "evaluate",
        lambda args, procs: (
            seen.append(args.num_workers) or evaluation.Result(Path("s"), [], [], 0, 0)
        ),
    )
    argv = ["--task", "ovssc", "--file_path", data, "--load", ovssc_ckpt, "--device", "cpu"]
    out = run_eval(argv, capsys)
    note = (
        "note: 2 DataLoader workers (the default 8, capped to the 2 cores available; "
        "--num_workers N to choose)"
    )
    assert out.splitlines()[0] == note and out.count("DataLoader workers") == 1
    out = run_eval([*argv, "--num_workers", "5"], capsys)
    assert "DataLoader workers" not in out
    assert seen == [2, 5]  # an explicit --num_workers is kept as given
    assert evaluation.capped_num_workers(2) == (2, None)


def visible_lines(text: str) -> list[str]:
    """What a terminal shows: per line the text after the last carriage return, blank ones dropped."""
    return [shown for line in text.split("\n") if (shown := line.split("\r")[-1].strip())]


def test_a_data_error_in_a_worker_is_one_line(data, tmp_path, ovssc_ckpt, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    name = pickle.loads((data / "ssc_split.pkl").read_bytes())[SPLITS[1]][0]
    (broken / name).write_bytes((data / name).read_bytes())
    with h5py.File(broken / name, "r+") as scene:  # its relevancy block deleted
        for key in list(scene[scene_file.SALIENCY_INDEX]):
            del scene[f"{scene_file.SALIENCY_INDEX}/{key}"]
    (broken / "ssc_split.pkl").write_bytes(pickle.dumps({SPLITS[1]: [name]}))
    argv = [*eval_argv(broken, ovssc_ckpt), "--output", tmp_path / "s.pkl"]
    argv[argv.index("--num_workers") + 1] = "1"
    with pytest.raises(SystemExit):
        eval_script.main([str(a) for a in argv])
    lines = visible_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "no relevancy maps" in lines[0], lines
    assert not (tmp_path / "s.pkl").exists()


INTERRUPTIBLE = """
import signal, sys, time
import evaluation, eval as eval_script
# Ctrl-C as in a terminal: a test run started as a shell's background job (`cmd &` without job
# control) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
def slow(*args):
    print("scoring", file=sys.stderr, flush=True)
    time.sleep(60)
evaluation.score_scene = slow
eval_script.main(sys.argv[1:])
"""


def test_ctrl_c_with_workers_ends_with_the_interrupted_line(data, ovssc_ckpt, tmp_path):
    argv = [*map(str, eval_argv(data, ovssc_ckpt)), "--output", str(tmp_path / "s.pkl")]
    argv[argv.index("--num_workers") + 1] = "2"
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, *argv],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,  # bytes: text mode would turn the bar's carriage returns into lines
        start_new_session=True,  # its own process group: SIGINT reaches the workers too, as Ctrl-C
    )
    err = b""
    while b"scoring" not in err:  # the main process is busy with a scene, the workers are running
        line = proc.stderr.readline()
        assert line, err
        err += line
    os.killpg(proc.pid, signal.SIGINT)
    err = (err + proc.stderr.read()).decode()
    assert proc.wait(timeout=60) == 130, err
    # the progress bar is cleared: after "scoring" (printed behind the bar) only "interrupted"
    lines = visible_lines(err)
    assert lines[-2].endswith("scoring"), err
    assert lines[-1] == "interrupted: stopped before the end (finished files are complete)", err
    assert "Traceback" not in err and not (tmp_path / "s.pkl").exists()


def test_ctrl_c_while_the_workers_start_waits_for_them_and_stops_them(
    data, ovssc_ckpt, monkeypatch
):
    started = []
    real_start = multiprocessing.process.BaseProcess.start

    def start_then_interrupt(process):  # Ctrl-C just after the first worker started
        real_start(process)
        started.append(process)
        if len(started) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_then_interrupt)
    argv = [*map(str, eval_argv(data, ovssc_ckpt))]
    argv[argv.index("--num_workers") + 1] = "2"
    args = evaluation.eval_config(eval_script.parser().parse_args(argv))
    config = dataset.DatasetConfig.from_args(args)
    split = dataset.make_datasets(data, "ovssc", config, splits=(SPLITS[0],))[SPLITS[0]]
    procs = processes.Processes()
    scorer = evaluation.make_scorer(args, procs.device)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_split(scorer, split, SPLITS[0], args, procs)
    # the interrupt waited for the loader to start both workers, then both were shut down
    assert len(started) == 2 and not any(process.is_alive() for process in started)


def test_splits_scores_only_those_with_a_full_runs_rows(data, evaluated, tmp_path, capsys):
    """--splits: only the named splits are scored, each with the rows a run of every split gives
    it, and the file is not taken for an unfinished eval; an unknown split is one line."""
    ckpt, full, _, _ = evaluated
    out = tmp_path / "stats.pkl"
    line = run_eval(eval_argv(data, ckpt, "ovssc", "--splits", SPLITS[1], "--output", out), capsys)
    assert f"1 splits ({SPLITS[1]})" in line
    frame = pd.read_pickle(out)
    pd.testing.assert_frame_equal(
        frame.reset_index(drop=True), full[full["split"] == SPLITS[1]].reset_index(drop=True)
    )
    planned = frame.attrs[evaluation.PROVENANCE_KEY]["scenes"]
    assert list(planned) == [SPLITS[1]]
    assert summarize.unfinished_note(frame, planned, {}) is None
    err = one_error_line(eval_argv(data, ckpt, "ovssc", "--splits", "unseen_instances_dr"), capsys)
    assert err == (
        f"error: --splits unseen_instances_dr: not a split with scenes in {data / 'ssc_split.pkl'} "
        f"(it has {', '.join(SPLITS)})"
    )


@pytest.mark.parametrize("task", ["ovssc", "vool"])
def test_with_oracle_maps_novel_visual_scores_as_novel_room(data, ovssc_ckpt, task, tmp_path):
    """Why the demo does not score unseen_instances_dr with oracle maps: the recoloured views
    change no input, so a network and lifted relevancy give it Novel Room's rows exactly."""
    views = tmp_path / "data"
    views.mkdir()
    files = sorted(p.name for p in data.glob("*.hdf5"))
    for name in files:
        (views / name).symlink_to(data / name)
    held_out = [name for name in files if name.startswith("00002")]  # a test room: recoloured views
    lists = {"train": files[:1], "unseen_instances": held_out, "unseen_instances_dr": held_out}
    (views / scene_file.SPLIT_FILES[task]).write_bytes(pickle.dumps(lists))
    if task == "ovssc":
        ckpt = ovssc_ckpt
    else:
        log = tmp_path / "vool_run"
        args = training.prepare_args("vool", ["--file_path", str(views), "--log", str(log), *TINY])
        training.train(tasks.VOOL, args, stop_after_steps=1)
        ckpt = log / "latest.pth"
    runs = {
        "network": ["--load", ckpt],
        "lifted relevancy": ["--baseline", "lifted_relevancy", "--args", ckpt.parent / "args.pkl"],
    }
    for name, scored in runs.items():
        out = tmp_path / f"{name}.pkl"
        run_eval(["--task", task, "--file_path", views, *scored, "--output", out, "--device", "cpu",
                  "--num_workers", "0"])  # fmt: skip
        frame = pd.read_pickle(out)
        room, visual = (
            frame[frame["split"] == split].drop(columns="split").reset_index(drop=True)
            for split in ("unseen_instances", "unseen_instances_dr")
        )
        assert len(room) > 0, name
        pd.testing.assert_frame_equal(room, visual, obj=name)
