"""demo_run.py: the demo's run folder (--fresh deletes only what the demo made, in a demo folder) and
its stage runner's signals (SIGTERM passed to the running stages, one line, exit 143; a Ctrl-C said
once), each against a real subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, default_sigint
from typer.testing import CliRunner

import demo
import demo_run
import options
import training
from utils import InputError

RUN = {"seed": 0, "scene_seed": 0, "precision": "auto", "num_scenes": 120, "extra_train_seeds": 0}


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


def test_fresh_refuses_a_folder_the_demo_did_not_make_and_deletes_nothing(tmp_path):
    out = user_folder(tmp_path / "mine")
    with pytest.raises(InputError) as refused:
        demo_run.claim_folder(out, RUN, fresh=True)
    assert str(refused.value) == (
        f"--fresh deletes only a demo folder (one holding demo_run.json); {out} holds none, so "
        "nothing was deleted: give a new or empty --out"
    )
    assert (out / "thesis.txt").read_text() == "years of work"
    with pytest.raises(InputError) as refused:  # without --fresh: no advice to use it
        demo_run.claim_folder(out, RUN, fresh=False)
    assert str(refused.value) == (
        f"{out} holds files and no demo_run.json, so it is not a demo folder: give a new or "
        "empty --out"
    )
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


@pytest.mark.parametrize("fresh", [False, True])
def test_out_dot_in_a_folder_of_files_is_refused(tmp_path, monkeypatch, fresh):
    """`--out .` in the repository (or any folder of one's own files) deletes and writes nothing."""
    monkeypatch.chdir(user_folder(tmp_path / "repo"))
    result = CliRunner().invoke(demo.app, ["--out", ".", *(["--fresh"] if fresh else [])])
    assert isinstance(result.exception, InputError), result.output
    assert "--fresh to" not in str(result.exception)
    assert sorted(os.listdir(".")) == ["thesis.txt"]


def test_fresh_deletes_only_what_the_demo_made_in_its_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    demo_run.claim_folder(out, RUN, fresh=False)
    for folder in ("data", "models/vool", "logs", "visualization"):
        (out / folder).mkdir(parents=True)
        (out / folder / "made.txt").write_text("demo")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # written there by the user afterwards
    demo_run.claim_folder(out, {**RUN, "seed": 1}, fresh=True)
    line = capsys.readouterr().out.strip()
    assert line == (
        f"--fresh: removed data, models, logs, visualization, summary.json, demo_run.json from "
        f"{out} (kept what the demo did not make: notes.txt)"
    )
    assert sorted(p.name for p in out.iterdir()) == ["demo_run.json", "notes.txt"]
    assert json.loads((out / "demo_run.json").read_text())["seed"] == 1


# a stage that says when it runs, and on SIGTERM saves (a file) and exits 143, as training does
STAGE = """
import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def save(signum, frame):
    (folder / "saved").write_text("latest")
    sys.exit(143)
signal.signal(signal.SIGTERM, save)
(folder / "pid").write_text(str(__import__("os").getpid()))
time.sleep(120)
"""
# two stages side by side (the demo's lanes), then a third that must never start
LANES = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import demo_run
from utils import run_app
out, stage = Path(sys.argv[1]), sys.argv[2]
pipeline = demo_run.Pipeline(out, "cpu")
def lane(name):
    (out / name).mkdir()
    pipeline.run(f"train {name}", [], ["-c", stage, str(out / name)], out / f"{name}.log")
def main():
    with pipeline.stopping_on_sigterm():
        with ThreadPoolExecutor(2) as pool:
            lanes = [pool.submit(lane, name) for name in ("ovssc", "vool")]
        for done in lanes:
            done.result()
        pipeline.run("after", [], ["-c", f"open({str(out / 'never')!r}, 'w')"])
run_app(main)
"""


def pid_files(*folders: Path, timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    while not all((folder / "pid").is_file() for folder in folders):
        assert time.monotonic() < deadline, "the stages did not start"
        time.sleep(0.05)
    time.sleep(0.2)  # the pid is written after the handler is set
    return [int((folder / "pid").read_text()) for folder in folders]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def signal_the_lanes(tmp_path: Path, signum: int) -> tuple[int, str, str]:
    """Run LANES (two stages side by side, then one that must never start), send the demo process
    alone `signum` once both stages run, and wait: -> (exit code, stdout, stderr). Asserts that no
    stage is left running and that each saved on the SIGTERM it was passed, and that nothing
    started after them."""
    script = tmp_path / "lanes.py"
    script.write_text(LANES)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    demo_process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), STAGE],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    stages = pid_files(tmp_path / "ovssc", tmp_path / "vool")
    demo_process.send_signal(signum)
    try:
        out, err = demo_process.communicate(timeout=300)
        left = [pid for pid in stages if alive(pid)]  # the demo waited for them
    finally:  # nothing left behind should the test fail
        for pid in filter(alive, stages):
            os.kill(pid, signal.SIGKILL)
    assert not left
    for lane in ("ovssc", "vool"):  # each stage saved, and none is left running
        assert (tmp_path / lane / "saved").read_text() == "latest"
    assert not (tmp_path / "never").exists() and "after" not in out  # nothing started after it
    return demo_process.returncode, out, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sigterm_reaches_the_running_stages_which_save_and_the_demo_says_one_line(tmp_path):
    code, _, err = signal_the_lanes(tmp_path, signal.SIGTERM)
    assert code == demo_run.EXIT_TERMINATED
    assert err.splitlines() == [
        "stopped by SIGTERM (running: train ovssc, train vool); the stages were passed it and "
        "saved what they had (training: its latest.pth); rerun demo.py to continue"
    ] or err.splitlines() == [
        "stopped by SIGTERM (running: train vool, train ovssc); the stages were passed it and "
        "saved what they had (training: its latest.pth); rerun demo.py to continue"
    ], err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_ctrl_c_of_the_demo_alone_stops_its_lanes_which_save(tmp_path):
    """`kill -INT` of the demo process alone (its stages, in lanes, do not get it): the stages get
    SIGTERM and save, none runs on without the demo, nothing starts after; one line, exit 130."""
    code, _, err = signal_the_lanes(tmp_path, signal.SIGINT)
    assert code == demo_run.EXIT_INTERRUPTED
    assert err.splitlines() == [
        "interrupted: stopped before the end (finished files are complete)"
    ], err


# a stage in the terminal that a Ctrl-C interrupts: it says so itself, as every script does
INTERRUPTED = """
import pathlib, sys, time
from utils import run_app
def main():
    pathlib.Path(sys.argv[1], "pid").write_text("0")
    time.sleep(120)
run_app(main)
"""
FOREGROUND = """
import sys
from pathlib import Path
import demo_run
from utils import run_app
out, stage = Path(sys.argv[1]), sys.argv[2]
pipeline = demo_run.Pipeline(out, "cpu")
def main():
    with pipeline.stopping_on_sigterm():
        pipeline.run("1/6 scenes", [], ["-c", stage, str(out)])
run_app(main)
"""


def test_ctrl_c_during_a_stage_in_the_terminal_is_said_once(tmp_path):
    """A terminal's Ctrl-C reaches the demo and its stage (one process group): one line, exit 130."""
    script = tmp_path / "foreground.py"
    script.write_text(FOREGROUND)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), INTERRUPTED], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    pid_files(tmp_path)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = process.communicate(timeout=300)
    assert process.returncode == demo_run.EXIT_INTERRUPTED
    assert err.splitlines() == [
        "interrupted: stopped before the end (finished files are complete)"
    ], err
    assert "Traceback" not in out + err


def test_training_progress_reads_the_runs_own_files(tmp_path):
    """Epochs trained from latest.pth (`epochs`), planned from args.pkl: a run stopped early."""
    assert demo_run.training_progress(tmp_path) is None  # nothing saved yet
    args = training.prepare_args(
        "vool", ["--file_path", "d", "--log", str(tmp_path), "--epochs", "10"]
    )
    options.save_args(args, tmp_path)
    import torch

    torch.save({"net": {}, "optimizer": {}, "epochs": 6}, tmp_path / "latest.pth")
    assert demo_run.training_progress(tmp_path) == (6, 10)


def test_a_partly_trained_network_is_said_to_be_one_with_how_to_finish_it():
    figures = {
        "ours": {"novel_room": 41.8},
        "baseline: lifted relevancy": {"novel_room": 41.1},
        "baseline: all in frustum": {"novel_room": 12.0},
    }
    assert demo.verdict("vool", figures, {"epochs_trained": 6, "epochs_planned": 10}) == (
        "VOOL: ours 41.8 beats every baseline on Novel Room (best baseline: lifted relevancy "
        "41.1, +0.7); partly trained: 6 of 10 epochs; rerun demo.py without --train-minutes to "
        "finish its training (it goes on from its latest.pth)"
    )
    assert demo.verdict("vool", figures, {"epochs_trained": 10, "epochs_planned": 10}).endswith(
        "(best baseline: lifted relevancy 41.1, +0.7); 10 of 10 epochs"
    )


def test_the_summary_records_epochs_and_says_why_novel_visual_is_not_scored_with_oracle_maps(
    tmp_path, monkeypatch, capsys
):
    pipeline = demo.Pipeline(tmp_path, "cpu")
    table = {"ours": {"novel_room": 40.0, "novel_visual": None}}
    monkeypatch.setattr(
        demo.Pipeline,
        "run",
        lambda self, title, done, argv, *log: (tmp_path / "tables.json").write_text(
            json.dumps({"ovssc": table, "vool": table})
        ),
    )
    monkeypatch.setattr(
        demo, "training_progress", lambda log: (3, 5) if "ovssc" in str(log) else None
    )
    summary = demo.summarize(pipeline, "oracle")
    assert summary["training"] == {
        "ovssc": {"epochs_trained": 3, "epochs_planned": 5},
        "vool": {"epochs_trained": 0, "epochs_planned": demo.EPOCHS["vool"]},  # nothing logged yet
    }
    assert summary["notes"]["novel_visual"] == demo.NOVEL_VISUAL_NOTE
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert f"note: {demo.NOVEL_VISUAL_NOTE}" in capsys.readouterr().out
    assert "notes" not in demo.summarize(pipeline, "clip")  # CLIP sees the recoloured views


def test_the_demo_trains_its_epochs_unless_given_a_cap(monkeypatch, tmp_path):
    ran = {}
    monkeypatch.setattr(
        demo.Pipeline, "run", lambda self, title, done, argv, *log: ran.update({title: argv})
    )
    demo.train(demo.Pipeline(tmp_path, "cpu"), "vool", None)
    assert "--max_minutes" not in ran["3/6 train VOOL"]
    demo.train(demo.Pipeline(tmp_path, "cpu"), "vool", 2.5)
    argv = ran["3/6 train VOOL"]
    assert argv[argv.index("--max_minutes") + 1] == "2.5"


def test_learn_runs_of_two_scene_seeds_share_an_out(tmp_path):
    """bench/learn.py --scene-seed 1, then --scene-seed 2 with the same --out: each run has its own
    folder, so the second is not refused as "a demo run with other flags"."""
    spec = importlib.util.spec_from_file_location("bench_learn", REPO / "bench" / "learn.py")
    learn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learn)
    for scene_seed in (1, 2):
        folder = tmp_path / learn.run_folder_name(scene_seed, 0, "fp32")
        demo_run.check_run(folder, {"seed": 0, "scene_seed": scene_seed, "precision": "fp32"})
    assert len(list(tmp_path.iterdir())) == 2
