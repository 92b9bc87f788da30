"""`make demo`'s script: the whole pipeline end to end on a tiny setting, and a rerun reuses it."""

import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch
import trimesh
from conftest import REPO
from typer.testing import CliRunner

import calibration
import checkpoint
import demo
import processes
import training
import vocab
from utils import InputError

APPROACHES = {"ours", "baseline: lifted relevancy", "baseline: all in frustum"}
VERDICT = re.compile(
    r"^(OVSSC|VOOL): ours \d+\.\d (beats|does not beat) every baseline on Novel Room "
    r"\(best baseline: (lifted relevancy|all in frustum) \d+\.\d, [+-]\d+\.\d\); "
    r"(partly trained: )?(\d+) of (\d+) epochs"
)


def run_demo(out, *args):
    command = [
        sys.executable, str(REPO / "demo.py"), "--out", str(out), "--num-scenes", "12",
        "--extra-train-seeds", "6", "--train-minutes", "0.05", "--grid-size", "32",
        "--num-frames", "4", "--frame-size", "64", "--device", "cpu", *args,
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)


def commands(stdout: str, script: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"$ python {script}")]


def test_demo_runs_every_stage_and_a_rerun_reuses_them(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "not CLIP" in result.stdout  # no weights here: the oracle notice is shown
    cutoffs = len(np.arange(*map(float, demo.NETWORK_CUTOFFS)))
    pipeline = demo.Pipeline(out, "cpu")
    with open(out / "data" / "ssc_split.pkl", "rb") as f:
        splits = pickle.load(f)
    seeds = {split: {int(name[:5]) for name in names} for split, names in splits.items()}
    assert seeds["unseen_instances"] and max(seeds["unseen_instances"]) < 12  # held out: 0 .. 11
    assert max(seeds["train"]) >= 12  # the extra seeds train
    for task in ("ovssc", "vool"):
        with open(pipeline.log(task) / "args.pkl", "rb") as f:
            args = pickle.load(f)
        assert args.voxel_shape == [32, 32, 32]
        assert args.use_amp == processes.bf16_is_fast(torch.device("cpu"))
        for approach in ("ours", *demo.BASELINES):  # the same splits for every approach
            stats = pd.read_pickle(pipeline.eval_stats(task, approach))
            # with oracle maps Novel Visual would repeat Novel Room (tests/test_eval.py): not scored
            assert set(stats["split"]) == {"unseen_instances", "unseen_instances_synonyms"}, (
                approach
            )
        assert pd.read_pickle(pipeline.eval_stats(task))["cutoff"].nunique() == cutoffs
    # stages 3 and 4 run as two lanes side by side, each stage's output in its own log
    for name in ("train_ovssc", "train_vool", "calibrate_vool", "eval_vool"):
        assert f"(output: {out / 'logs' / name}.log)" in result.stdout, name
    assert f"(output: {out / 'logs' / 'eval_ovssc_lifted_relevancy'}.log)" in result.stdout
    # VOOL's network is evaluated with calibrated relation offsets
    calibrated = checkpoint.read_checkpoint(pipeline.checkpoints["vool"])
    assert set(calibrated[calibration.CALIBRATION_KEY]["offsets"]) <= set(vocab.RELATIONS)
    assert "EPOCH 0" in (out / "logs" / "train_vool.log").read_text()
    assert "OVSSC THOR" in result.stdout and "FULL VOOL THOR" in result.stdout
    assert "Baseline: lifted relevancy" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["relevancy_source"] == "oracle"
    for task in ("ovssc", "vool"):
        assert set(summary[task]) == APPROACHES
        # oracle maps ignore the recoloured views: Novel Visual is not scored, and the demo says why
        for row in summary[task].values():
            assert row["novel_visual"] is None and row["novel_room"] is not None
    assert summary["notes"]["novel_visual"] == demo.NOVEL_VISUAL_NOTE
    assert f"note: {demo.NOVEL_VISUAL_NOTE}" in result.stdout
    assert summary["vool"]["ours"]["relations"]  # the per-relation rows come along
    last = result.stdout.splitlines()[-2:]
    assert [line.split(":")[0] for line in last] == ["OVSSC", "VOOL"]
    for line, task in zip(last, ("ovssc", "vool")):  # each verdict is summary.json's Novel Room
        match = VERDICT.match(line)
        assert match, line
        # --train-minutes 0.05 stopped the training: the epochs it ran, of those planned
        trained, planned = summary["training"][task].values()
        assert (int(match[5]), int(match[6])) == (trained, planned)
        assert trained < planned == demo.EPOCHS[task]
        assert match[4] and line.endswith("rerun demo.py without --train-minutes to finish its "
                                          "training (it goes on from its latest.pth)")  # fmt: skip
        room = {k: v["novel_room"] for k, v in summary[task].items()}
        baselines = {k.removeprefix("baseline: "): v for k, v in room.items() if k != "ours"}
        best = max(baselines, key=baselines.get)
        margin = room["ours"] - baselines[best]
        assert line.split()[2] == f"{room['ours']:.1f}", line
        assert match[2] == ("beats" if margin > 0 else "does not beat"), (line, room)
        assert match[3] == best and f"{baselines[best]:.1f}, {margin:+.1f}); " in line, line

    # the oracle-trained networks are shown a novel-room scene's stored relevancy, not random CLIP
    scene = demo.novel_room_scene(out / "data")
    with open(out / "data" / "ssc_split.pkl", "rb") as f:
        assert scene.name in pickle.load(f)["unseen_instances"]
    for task in ("ovssc", "vool"):
        (line,) = commands(result.stdout, f"visualize.py {task}-inference")
        assert f" {scene} " in line and "--pretrained" not in line
    folder = out / "visualization" / scene.stem
    for npz in ("completion.npz", "localization.npz"):
        assert any(key.startswith("gt_") for key in np.load(folder / npz).files), npz
    assert (folder / "completion_vs_gt.png").is_file()
    assert (folder / "localization_vs_gt.png").is_file()
    frames = iio.imread(folder / "completion.mp4")
    assert frames.shape[0] == 4 and frames.shape[1:3] == (64, 64)
    completion = np.load(folder / "completion.npz")
    expected = {completion["file_stems"][k] for k in np.unique(completion["label"])}
    assert {mesh.stem for mesh in folder.glob("*.obj")} == expected  # one per completed class
    for mesh in folder.glob("*.obj"):
        assert len(trimesh.load(mesh, force="mesh").vertices) > 0
    localization = np.load(folder / "localization.npz")
    assert {ply.stem for ply in folder.glob("*.ply")} == {"scene_rgb", *localization["file_stems"]}
    assert (folder / "scene_rgb.ply").is_file()

    weights = {task: pipeline.checkpoints[task].read_bytes() for task in ("ovssc", "vool")}
    again = run_demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    for task in ("ovssc", "vool"):
        # --train-minutes 0.05 stopped the training early: the rerun goes on where it stopped ...
        assert "--resume: continuing" in (out / "logs" / f"train_{task}.log").read_text()
        assert pipeline.checkpoints[task].read_bytes() != weights[task], task
        # ... and what was made from the earlier weights is made again
        (line,) = [
            c
            for c in commands(again.stdout, "eval.py")
            if f"--load {out}" in c and f"--task {task} " in c
        ]
        assert line.endswith(" --replace"), line
        assert not demo.older_than(pipeline.eval_stats(task), pipeline.checkpoints[task])
    # the training that went on wrote new weights, which were calibrated again
    assert calibration.CALIBRATION_KEY in checkpoint.read_checkpoint(pipeline.checkpoints["vool"])
    for stage in ("1/6 scenes", "4/6 evaluate OVSSC baseline lifted_relevancy",
                  "4/6 evaluate VOOL baseline all_in_frustum"):  # fmt: skip
        assert f"✓ {stage}: already done" in again.stdout, stage
    for stage in ("6/6 visualize OVSSC", "6/6 render OVSSC", "6/6 visualize VOOL"):
        assert f"✓ {stage}: already done" not in again.stdout, stage
    assert all(VERDICT.match(line) for line in again.stdout.splitlines()[-2:]), again.stdout[-500:]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_demos_own_flags_are_checked_before_any_stage(tmp_path, value):
    result = CliRunner().invoke(demo.app, ["--out", str(tmp_path / "o"), "--train-minutes", value])
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == (
        f"--train-minutes must be a finite number of minutes > 0, got {value}"
    )
    assert not (tmp_path / "o").exists()  # no stage ran


def test_bf16_is_refused_before_any_stage_where_the_cpu_emulates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: False)
    result = CliRunner().invoke(demo.app, ["--out", str(tmp_path / "o"), "--precision", "bf16"])
    assert isinstance(result.exception, InputError)
    assert str(result.exception).startswith("--precision bf16 is emulated on this CPU (")
    assert str(result.exception).endswith("use --precision auto or fp32")
    assert not (tmp_path / "o").exists()  # no stage ran


def test_comparison_names_the_best_baseline_and_the_margin():
    figures = {
        "baseline: lifted relevancy": {"novel_room": 48.1},
        "baseline: all in frustum": {"novel_room": 12.0},
        "ours": {"novel_room": 54.34},
    }
    assert demo.comparison("ovssc", figures) == (
        "OVSSC: ours 54.3 beats every baseline on Novel Room (best baseline: lifted relevancy "
        "48.1, +6.2)"
    )
    figures["ours"]["novel_room"] = 40.0
    assert demo.comparison("vool", figures) == (
        "VOOL: ours 40.0 does not beat every baseline on Novel Room (best baseline: lifted "
        "relevancy 48.1, -8.1)"
    )
    figures["baseline: lifted relevancy"]["novel_room"] = None  # a baseline without a figure
    assert demo.comparison("vool", figures).startswith(
        "VOOL: ours 40.0 does not beat every baseline on Novel Room (best baseline: all in frustum"
    )
    figures["ours"]["novel_room"] = None
    assert demo.comparison("vool", figures) == (
        "VOOL: no Novel Room figure for ours or the baselines, nothing to compare"
    )
    # VOOL's mean over relations: none when a relation has no Novel Room row (few held-out scenes)
    figures["ours"]["relations"] = {"on": {"novel_room": 50.0}, "behind": {"novel_room": None}}
    assert demo.comparison("vool", figures) == (
        "VOOL: no Novel Room figure for ours or the baselines (no Novel Room row of behind, so no "
        "mean over the relations: too few held-out scenes, raise --num-scenes), nothing to compare"
    )


def recorded_lanes(monkeypatch, tmp_path, cores, fail=None, vool_training=None):
    """train_and_evaluate with every stage recorded instead of run: -> ({title: (log, threads)},
    the error it raised). The two training stages wait for each other, as long ones overlap; the
    stage titled `fail` fails; `vool_training(more_threads, ran)` runs as VOOL's training stage."""
    ran, lock, trainings = {}, threading.Lock(), threading.Barrier(2, timeout=10)

    def record(self, title, done, argv, log=None, threads=None, more_threads=None):
        with lock:
            ran[title] = (log, threads)
        if title.startswith("3/6 train"):
            trainings.wait()
        if title == "3/6 train VOOL" and vool_training is not None:
            vool_training(more_threads, ran)
        if title == fail:
            raise InputError(f"demo stage '{title}' failed")

    monkeypatch.setattr(demo.Pipeline, "run", record)
    monkeypatch.setattr(demo, "available_cores", lambda: cores)
    try:
        demo.train_and_evaluate(demo.Pipeline(tmp_path, "cpu"), 1.0)
    except InputError as error:
        return ran, error
    return ran, None


def test_the_two_lanes_share_the_cores_and_write_their_own_logs(monkeypatch, tmp_path):
    ran, error = recorded_lanes(monkeypatch, tmp_path, cores=4)
    assert error is None
    assert ran["3/6 train OVSSC"] == (tmp_path / "logs" / "train_ovssc.log", 2)
    assert ran["3/6 train VOOL"] == (tmp_path / "logs" / "train_vool.log", 2)
    assert len(ran) == 9 and len({log for log, _ in ran.values()}) == 9  # a log per stage
    # VOOL's lane calibrates its network between training and evaluation; OVSSC's does not
    vool = [title for title in ran if title.endswith("VOOL")]
    assert vool == ["3/6 train VOOL", "3/6 calibrate VOOL", "4/6 evaluate VOOL"]
    assert ran["3/6 calibrate VOOL"][0] == tmp_path / "logs" / "calibrate_vool.log"
    assert not any("calibrate OVSSC" in title for title in ran)
    # an evaluation gets 2 cores, or 4 once the other lane has finished
    assert {threads for _, threads in ran.values()} <= {2, 4}


def test_a_failed_lane_stops_the_demo_after_the_other_lane(monkeypatch, tmp_path):
    ran, error = recorded_lanes(monkeypatch, tmp_path, cores=2, fail="3/6 train OVSSC")
    assert "demo stage '3/6 train OVSSC' failed" in str(error)
    assert "4/6 evaluate OVSSC" not in ran  # its lane stopped there ...
    assert "4/6 evaluate VOOL baseline all_in_frustum" in ran  # ... the other went to its end


def test_a_lane_done_scores_the_baselines_of_a_task_still_training(monkeypatch, tmp_path):
    """OVSSC's lane ends first: it scores VOOL's baselines (they need only VOOL's args.pkl) while
    VOOL trains, and VOOL's training is then told to go on with the cores OVSSC's lane freed."""
    (tmp_path / "models" / "vool").mkdir(parents=True)
    (tmp_path / "models" / "vool" / "args.pkl").write_bytes(b"")
    seen = {}

    def vool_training(more_threads, ran):
        seen["threads while OVSSC's lane runs"] = more_threads()
        deadline = time.monotonic() + 10
        while more_threads() < 2 and time.monotonic() < deadline:  # until OVSSC's lane ended
            time.sleep(0.01)
        seen["threads after"] = more_threads()
        seen["VOOL baselines already scored"] = "4/6 evaluate VOOL baseline all_in_frustum" in ran

    ran, error = recorded_lanes(monkeypatch, tmp_path, cores=2, vool_training=vool_training)
    assert error is None and len(ran) == 9
    assert seen == {
        "threads while OVSSC's lane runs": 1,
        "threads after": 2,
        "VOOL baselines already scored": True,
    }
    assert ran["4/6 evaluate VOOL baseline lifted_relevancy"][1] == 1  # beside VOOL's training


def test_each_lane_ends_with_its_visualization(monkeypatch, tmp_path):
    """The demo's visualization of a task runs in its lane once its network is evaluated, so
    OVSSC's turntable is made while VOOL still trains."""
    events = []

    def then(task, logs, threads):
        events.append(("then", task, logs, "4/6 evaluate " + task.upper() in ran_titles))

    ran_titles = {}
    monkeypatch.setattr(
        demo.Pipeline, "run", lambda self, title, *args: ran_titles.update({title: 1})
    )
    monkeypatch.setattr(demo, "available_cores", lambda: 2)
    demo.train_and_evaluate(demo.Pipeline(tmp_path, "cpu"), 1.0, then=then)
    assert sorted(events) == [
        ("then", "ovssc", tmp_path / "logs", True),  # after the task's evaluation
        ("then", "vool", tmp_path / "logs", True),
    ]


STAGE_THAT_GOES_ON = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("saved, stopping"), sys.exit(143)))
print("threads", os.environ["OMP_NUM_THREADS"], flush=True)
if os.environ["OMP_NUM_THREADS"] == "1":
    time.sleep(60)
"""


def test_a_stage_that_goes_on_is_run_again_with_more_threads(tmp_path):
    """A training stage started with one thread is stopped once more threads are free (it saves
    where it is on SIGTERM) and run again with them; its log holds both runs."""
    script, log = tmp_path / "stage.py", tmp_path / "stage.log"
    script.write_text(STAGE_THAT_GOES_ON)
    free = []  # no core is free until the test says so
    timer = threading.Timer(1.0, free.append, args=[2])
    timer.start()
    start = time.monotonic()
    demo.Pipeline(tmp_path, "cpu").run(
        "stage", [], [str(script)], log, threads=1, more_threads=lambda: max([1, *free])
    )
    assert time.monotonic() - start < 30  # stopped, not slept out
    lines = log.read_text().splitlines()
    assert lines[0] == "threads 1" and lines[-1] == "threads 2"
    assert "saved, stopping" in lines or len(lines) == 2  # a SIGTERM during its start: killed


def recorded_runs(monkeypatch) -> dict:
    """Pipeline.run records each stage instead of running it: -> {title: (done, argv)}, filled as
    stages would run."""
    ran = {}
    monkeypatch.setattr(
        demo.Pipeline,
        "run",
        lambda self, title, done, argv, *log: ran.update({title: (done, argv)}),
    )
    return ran


def recorded_commands(monkeypatch, tmp_path, *flags):
    """demo.py's command with every stage recorded instead of run: -> ({title: argv}, out)."""
    ran = recorded_runs(monkeypatch)
    monkeypatch.setattr(demo, "summarize", lambda pipeline, source: {})
    monkeypatch.setattr(demo, "visualize", lambda *args: None)
    monkeypatch.setattr(demo, "print_done", lambda *args: None)
    monkeypatch.chdir(tmp_path)
    argv = ["--relevancy-source", "oracle", "--device", "cpu", "--extra-train-seeds", "12", *flags]
    result = CliRunner().invoke(demo.app, argv)
    return {title: argv for title, (_, argv) in ran.items()}, result


def test_seed_scene_seed_and_precision_reach_the_scripts_the_demo_runs(monkeypatch, tmp_path):
    ran, result = recorded_commands(
        monkeypatch, tmp_path, "--seed", "3", "--scene-seed", "2", "--precision", "fp32"
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "outputs" / "demo_seed3_scenes2_fp32"  # its own folder, never outputs/demo
    assert json.loads((out / demo.RUN_FILE).read_text())["seed"] == 3
    first = 2 * demo.SCENE_SEED_STRIDE
    scenes_argv = ran["1/6 scenes"]
    assert scenes_argv[scenes_argv.index("--start-seed") + 1] == str(first)
    extra = ran["1/6 more training scenes"]  # after the 120 seeds of that set
    assert extra[extra.index("--start-seed") + 1] == str(first + 120)
    for task in ("ovssc", "vool"):
        argv = ran[f"3/6 train {task.upper()}"]
        args = training.prepare_args(task, argv[1:])
        assert args.seed == 3 and not args.use_amp
        assert Path(args.file_path) == Path("outputs/demo_seed3_scenes2_fp32/data")
    # the default run: seed 0, the first set of scenes, bf16 where this CPU runs it fast
    (tmp_path / "default").mkdir()
    ran, result = recorded_commands(monkeypatch, tmp_path / "default")
    assert result.exit_code == 0, result.output
    assert ran["1/6 scenes"][ran["1/6 scenes"].index("--start-seed") + 1] == "0"
    args = training.prepare_args("vool", ran["3/6 train VOOL"][1:])
    assert args.seed == 0 and args.resume  # an interrupted training stage goes on
    assert args.use_amp == processes.bf16_is_fast(torch.device("cpu"))
    # the rest of what VOOL trains with is the demo's recipe, its own flags included
    recipe = [*demo.SMALL_NETWORK, *demo.TRAINING, *demo.TASK_TRAINING["vool"]]
    argv = ["--file_path", args.file_path, "--log", args.log, *recipe]
    expected = vars(training.prepare_args("vool", argv))
    run_flags = {"log", "seed", "use_amp", "amp_dtype", "epochs", "max_minutes", "device", "resume"}
    assert {k: v for k, v in vars(args).items() if k not in run_flags} == {
        k: v for k, v in expected.items() if k not in run_flags
    }


def test_a_folder_of_another_demo_run_is_refused_in_one_line(monkeypatch, tmp_path):
    out = tmp_path / "d"
    ran, result = recorded_commands(monkeypatch, tmp_path, "--out", str(out), "--seed", "1")
    assert result.exit_code == 0, result.output
    ran, result = recorded_commands(monkeypatch, tmp_path, "--out", str(out), "--seed", "2")
    assert isinstance(result.exception, InputError) and not ran  # refused before any stage
    line = str(result.exception)  # run_app prints it as one line
    assert "\n" not in line and "seed 1 -> 2" in line and "--fresh" in line
    # --fresh starts that folder over with the new flags
    ran, result = recorded_commands(
        monkeypatch, tmp_path, "--out", str(out), "--seed", "2", "--fresh"
    )
    assert result.exit_code == 0 and json.loads((out / demo.RUN_FILE).read_text())["seed"] == 2


def test_eval_stats_older_than_the_weights_are_made_again(monkeypatch, tmp_path):
    """Training goes on with --resume, so stats of earlier weights are stale: eval.py --replace."""
    ran = recorded_runs(monkeypatch)
    pipeline = demo.Pipeline(tmp_path, "cpu")
    stats, weights = pipeline.eval_stats("vool"), pipeline.checkpoints["vool"]
    weights.parent.mkdir(parents=True)
    splits = ("unseen_instances", "unseen_instances_synonyms")
    write_split_lists(pipeline.data, splits)
    pd.DataFrame({"split": list(splits)}).to_pickle(stats)
    weights.write_bytes(b"weights")
    os.utime(stats, (1_000_000, 1_000_000))  # written long before the weights
    demo.evaluate(pipeline, "vool")
    done, argv = ran["4/6 evaluate VOOL"]
    assert done == [] and argv[-1] == "--replace"
    os.utime(stats)  # now newer than the weights: done
    demo.evaluate(pipeline, "vool")
    done, argv = ran["4/6 evaluate VOOL"]
    assert done == [stats] and "--replace" not in argv


def write_split_lists(data: Path, splits) -> None:
    data.mkdir(parents=True, exist_ok=True)
    lists = {"train": ["a.hdf5"], **{split: ["b.hdf5"] for split in splits}}
    for name in ("ssc_split.pkl", "vool_split.pkl"):
        (data / name).write_bytes(pickle.dumps(lists))


def test_an_evaluation_stopped_between_splits_is_not_done(monkeypatch, tmp_path):
    """A SIGTERM (or a kill) between two splits leaves a stats file of the first: a rerun runs
    eval.py again, which goes on from there, instead of taking the file as done."""
    ran = recorded_runs(monkeypatch)
    pipeline = demo.Pipeline(tmp_path, "cpu")
    write_split_lists(pipeline.data, ("unseen_instances", "unseen_instances_synonyms"))
    for approach in ("ours", *demo.BASELINES):
        stats = pipeline.eval_stats("vool", approach)
        stats.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"split": ["unseen_instances"]}).to_pickle(stats)
    pipeline.checkpoints["vool"].write_bytes(b"weights")
    os.utime(pipeline.checkpoints["vool"], (1_000_000, 1_000_000))
    demo.evaluate(pipeline, "vool")
    demo.evaluate_baselines(pipeline, "vool")
    assert all(done == [] for done, _ in ran.values()) and len(ran) == 3


def test_with_oracle_maps_every_evaluation_scores_the_oracle_splits(monkeypatch, tmp_path):
    """Novel Visual is left out with oracle maps (demo.ORACLE_SPLITS), for the networks and the
    baselines alike, and a stats file holding those splits is done; with CLIP maps every split."""
    ran = recorded_runs(monkeypatch)
    pipeline = demo.Pipeline(tmp_path, "cpu")
    write_split_lists(
        pipeline.data, ("unseen_instances", "unseen_instances_dr", "unseen_instances_synonyms")
    )
    for approach in ("ours", *demo.BASELINES):
        stats = pipeline.eval_stats("vool", approach)
        stats.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"split": list(demo.ORACLE_SPLITS)}).to_pickle(stats)
    pipeline.checkpoints["vool"].write_bytes(b"weights")
    os.utime(pipeline.checkpoints["vool"], (1_000_000, 1_000_000))
    for source, splits, done in (("oracle", list(demo.ORACLE_SPLITS), True), ("clip", None, False)):
        ran.clear()
        pipeline.splits = demo.splits_scored(source)
        demo.evaluate(pipeline, "vool")
        demo.evaluate_baselines(pipeline, "vool")
        assert len(ran) == 3
        for finished, argv in ran.values():
            assert bool(finished) == done, source
            if splits is None:
                assert "--splits" not in argv
            else:
                assert argv[argv.index("--splits") + 1 :][: len(splits)] == splits


def test_scenes_are_done_when_every_scene_file_is_there(monkeypatch, tmp_path):
    """An interrupted generation writes the split pickles as it goes: they do not make it done."""
    ran = recorded_runs(monkeypatch)
    pipeline = demo.Pipeline(tmp_path, "cpu")
    demo.generate_scenes(pipeline, 3, 0, scene_seed=1)
    done, _ = ran["1/6 scenes"]
    first = demo.first_scene_seed(1)
    assert [path.name[:6] for path in done[:3]] == [str(first + i) for i in range(3)]
    assert [path.name for path in done[3:]] == ["ssc_split.pkl", "vool_split.pkl"]
