"""training.py with train_ovssc.py / train_vool.py: schedules, steps, exact resume, DDP, bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_pipeline import tiny_text_encoder

import dataset
import generate_relevancy
import generate_scenes
import net
import network_setup
import optimization
import processes
import run_folder
import scenes
import schedules
import seeding
import tasks
import train_ovssc
import training
from checkpoint import read_checkpoint
from utils import InputError

REPO = Path(__file__).resolve().parents[1]
TASKS = tasks.TASKS
SEEDS = [0, 1, 3, 4, 2]  # seed 2 is a test room (FloorPlan228)
TINY = (
    "--voxel_shape 16 16 16 --unet_num_levels 2 --unet_f_maps 8 --unet_num_groups 4 "
    "--unet_num_channels 8 --pts_feat_extractor_hidden_dim 16 --pointing_dim 16 "
    "--num_input_pts 300 --num_output_pts 300 --num_workers 0 --device cpu --num_patches 2 "
    "--num_descs 2"
).split()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Five small generated scenes with oracle relevancy; split pickles of our own choosing."""
    root = tmp_path_factory.mktemp("training_scenes")
    generate_scenes.generate_dataset(root, SEEDS, scenes.PRESETS["small"])
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    return root


def with_splits(root: Path, train: int, unseen: int) -> Path:
    """A folder whose split pickles list `train` train scenes and `unseen` test scenes of root."""
    split = pickle.loads((root / "ssc_split.pkl").read_bytes())
    folder = root / f"splits_{train}_{unseen}"
    folder.mkdir(exist_ok=True)
    lists = {
        "train": [f"../{n}" for n in split["train"][:train]],
        "unseen_instances": [f"../{n}" for n in split["unseen_instances"][:unseen]],
    }
    for name in ("ssc_split.pkl", "vool_split.pkl"):
        (folder / name).write_bytes(pickle.dumps(lists))
    return folder


def args_for(task: str, file_path: Path, log: Path, *extra: str):
    return training.prepare_args(
        task, ["--file_path", str(file_path), "--log", str(log), *TINY, *extra]
    )


# -- schedules (docs/method.md#lamb-and-the-learning-rate-schedule), checked against the formulas
# written out by hand


@pytest.mark.parametrize(
    "kind, step, expected",
    [
        ("constant", 0, 1.0),
        ("constant", 500, 1.0),
        ("constant_with_warmup", 5, 0.5),
        ("constant_with_warmup", 80, 1.0),
        ("linear", 5, 0.5),
        ("linear", 60, 0.5),  # (110 - 60) / (110 - 10)
        ("linear", 120, 0.0),
        ("cosine", 0, 0.0),
        ("cosine", 10, 1.0),
        ("cosine", 60, 0.5),  # 0.5 (1 + cos(pi / 2))
        ("cosine", 35, 0.5 * (1 + math.cos(math.pi * 0.25))),
        ("cosine_with_restarts", 35, 0.5 * (1 + math.cos(math.pi * 0.25))),
        ("cosine_with_restarts", 109, 0.5 * (1 + math.cos(math.pi * 0.99))),
        ("cosine_with_restarts", 110, 0.0),  # progress >= 1 -> 0
    ],
)
def test_schedule_values_equal_the_formulas(kind, step, expected):
    assert schedules.SCHEDULES[kind](step, 10, 110) == pytest.approx(expected, abs=1e-12)


def test_lambda_lr_follows_the_schedule_per_optimizer_step():
    args = training.prepare_args("ovssc", ["--file_path", "x", "--log", "y", "--lr", "0.5"])
    args.num_warmup_steps = 4
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = optimization.make_optimizer(model, args, total=20)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5 * schedules.cosine_with_restarts(s, 4, 20) for s in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(0.5)


def test_total_steps_ignores_world_size_unless_fixed():
    args = training.prepare_args("ovssc", ["--file_path", "x", "--log", "y", "--epochs", "3"])
    four = processes.Processes(world_size=4)
    assert (
        optimization.total_steps(args, 100, four) == 300
    )  # original: len // batch, not per process
    args.fix_lr_schedule_world_size = True
    assert optimization.total_steps(args, 100, four) == 75


# -- data loading


class Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return np.random.rand()


def test_two_workers_draw_different_samples_every_epoch():
    args = training.prepare_args("ovssc", ["--file_path", "x", "--log", "y", "--num_workers", "2"])
    procs = processes.Processes()
    draws = [
        torch.cat(list(seeding.make_loader(Draws(), True, args, procs, epoch))).tolist()
        for epoch in (0, 1)
    ]
    values = draws[0] + draws[1]
    assert len(set(values)) == len(values)  # no worker or epoch repeats another's draw
    again = torch.cat(list(seeding.make_loader(Draws(), True, args, procs, 0))).tolist()
    assert again == draws[0]  # but the same seed and epoch draw the same


# -- training steps


def test_loss_falls_over_a_few_steps(data):
    folder = with_splits(data, 1, 0)
    args = args_for("ovssc", folder, data / "unused", "--lr", "0.01", "--num_warmup_steps", "0")
    datasets = training.dataset.make_datasets(
        folder, "ovssc", dataset.DatasetConfig.from_args(args)
    )
    batch = next(iter(torch.utils.data.DataLoader(datasets["train"], batch_size=1)))
    torch.manual_seed(0)
    model = net.build_network("ovssc", args.approach, args)
    network_setup.match_gradient_layout(model)  # what DDP gets
    optimizer, scheduler = optimization.make_optimizer(model, args, total=100)
    trainer = training.Trainer(
        tasks.OVSSC, args, processes.Processes(), model, optimizer, scheduler, None, {}
    )
    losses = [trainer.step(batch, [-1.0], train=True)[0]["loss"] for _ in range(6)]
    assert losses[-1] < losses[0] - 0.01, losses
    assert model.steps.item() == 6  # the steps buffer counts optimizer steps
    # every parameter has a gradient (DDP: no unused-parameter search), laid out as the parameter
    # (DDP's buckets copy, and warn about, a gradient whose strides differ from its parameter's)
    assert not net.leaves_parameters_unused(model)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.stride() == p.stride(), name


def weights(path: Path) -> dict:
    return read_checkpoint(path)["net"]


def test_four_steps_equal_two_steps_resume_two_steps(data, tmp_path):
    folder = with_splits(data, 4, 0)
    common = ("--epochs", "1", "--num_warmup_steps", "2", "--lr", "0.01")
    straight = tmp_path / "straight"
    training.train(tasks.OVSSC, args_for("ovssc", folder, straight, *common))
    split = tmp_path / "split"
    training.train(tasks.OVSSC, args_for("ovssc", folder, split, *common), stop_after_steps=2)
    stopped = read_checkpoint(split / "latest.pth")
    assert stopped["position"] == {"epoch": 0, "batches": 2, "train_done": False}
    assert stopped["net"]["steps"].item() == 2
    resumed = args_for("ovssc", folder, split, *common, "--load", str(split / "latest.pth"))
    training.train(tasks.OVSSC, resumed)

    a, b = read_checkpoint(straight / "ckpt_0.pth"), read_checkpoint(split / "ckpt_0.pth")
    assert a["net"]["steps"].item() == b["net"]["steps"].item() == 4
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["epochs"] == b["epochs"] == 1
    assert {"net", "optimizer", "epochs"} <= set(a)  # the released format's keys
    for name in ("args.pkl", "latest.pth", "detailed_stats.pkl", "train"):
        assert (split / name).exists(), name


def test_vool_trains_and_evaluates(data, tmp_path):
    folder = with_splits(data, 1, 1)
    model = training.train(tasks.VOOL, args_for("vool", folder, tmp_path / "vool", "--epochs", "1"))
    assert model.steps.item() == 1
    # DDP's unused-parameter search is on for VOOL: a step leaves some parameters without a grad
    assert any(p.grad is None for p in model.parameters())
    assert net.leaves_parameters_unused(model)
    frame = training.pd.read_pickle(tmp_path / "vool" / "detailed_stats.pkl")
    assert set(frame["split"]) == {"train", "unseen_instances"}
    assert len(frame[frame["split"] == "unseen_instances"]["cutoff"].unique()) == 10


def test_zero_frequencies_skip_evaluation_and_every_periodic_checkpoint(data, tmp_path):
    folder = with_splits(data, 1, 1)
    log = tmp_path / "log"
    extra = ("--epochs", "2", "--eval_freq", "0", "--save_freq", "0")
    training.train(tasks.OVSSC, args_for("ovssc", folder, log, *extra))
    frame = training.pd.read_pickle(log / "detailed_stats.pkl")
    assert set(frame["split"]) == {"train"} and set(frame["epoch"]) == {0, 1}
    assert not list(log.glob("ckpt_*.pth"))  # 0: never, not even the last epoch's
    assert read_checkpoint(log / "latest.pth")["epochs"] == 2  # the end of the run is latest.pth
    # one rule in the help, the training docs and the code
    help_text = " ".join(training.options.training_parser("ovssc").format_help().split())
    assert "(0: never, latest.pth only)" in help_text
    docs = " ".join((REPO / "docs" / "training.md").read_text().split())
    assert "`--save_freq 0` writes none (only `latest.pth`)" in docs


def test_save_freq_keeps_every_nth_epoch_and_the_last(data, tmp_path):
    log = tmp_path / "log"
    extra = ("--epochs", "4", "--eval_freq", "0", "--save_freq", "2")
    training.train(tasks.OVSSC, args_for("ovssc", with_splits(data, 1, 0), log, *extra))
    assert sorted(p.name for p in log.glob("ckpt_*.pth")) == [
        "ckpt_0.pth", "ckpt_2.pth", "ckpt_3.pth"
    ]  # fmt: skip


def test_negative_frequency_is_refused(capsys):
    with pytest.raises(SystemExit):
        training.prepare_args("ovssc", ["--file_path", "x", "--log", "y", "--eval_freq", "-1"])
    assert (
        "--eval_freq: must be 0 (never) or a positive epoch count, got -1"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "task, approach",
    [("ovssc", "semantic_aware"), ("vool", "semantic_aware"), ("vool", "clip_spatial")],
)
def test_baseline_approaches_train(data, tmp_path, monkeypatch, tiny_models, task, approach):
    """Every approach trains a step; semantic-aware VOOL encodes its object names with CLIP, which
    training builds from --clip_checkpoint (here a random 32-d text tower in its place)."""
    names = []
    encoder = tiny_text_encoder()
    monkeypatch.setattr(
        network_setup, "text_encoder", lambda args, device: lambda n: names.extend(n) or encoder(n)
    )
    folder = with_splits(data, 1, 1)
    args = args_for(task, folder, tmp_path / approach, "--epochs", "1", "--approach", approach)
    extra = {"clip_hidden_dim": 32} if (task, approach) == ("vool", "semantic_aware") else {}
    model = training.train(TASKS[task], args, stop_after_steps=1, **extra)
    assert model.steps.item() == 1
    assert (tmp_path / approach / "latest.pth").is_file()
    assert bool(names) == ((task, approach) == ("vool", "semantic_aware"))


# -- two processes under torchrun (gloo)

DDP_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {repo!r})
import run_folder, tasks, training
rank = os.environ["RANK"]
open(os.path.join(os.environ["OUT"], f"rank{{rank}}.pid"), "w").write(str(os.getpid()))
kill_at = int(os.environ.get("KILL_RANK1_AT_STEP", 0))
if kill_at and rank == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    step = training.Trainer.step

    def dying_step(self, *args):  # a worker lost in the middle of an epoch
        result = step(self, *args)
        if self.bare.steps.item() >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    training.Trainer.step = dying_step
args = training.prepare_args("ovssc", sys.argv[1:])
try:
    model = training.train(tasks.OVSSC, args)
except run_folder.Preempted:
    sys.exit(run_folder.EXIT_PREEMPTED)
torch.save(model.state_dict(), os.path.join(os.environ["OUT"], f"rank{{rank}}.pt"))
"""
DDP_EPOCHS = ("--epochs", "2")  # 4 train scenes: 2 steps per process per epoch; epoch 0 evaluated
DDP_WARNINGS = ("find_unused_parameters=True was specified", "Grad strides do not match")


def torchrun(tmp_path: Path, folder: Path, log: Path | str, *options: str, extra=(), **env):
    """Popen of `torchrun OPTIONS -- DDP_SCRIPT` (train_ovssc flags, the tiny network); the script
    writes rank<R>.pid and, at the end, rank<R>.pt (its weights) into env OUT."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    cmd = [sys.executable, "-m", "torch.distributed.run", *options]
    # "--" keeps torchrun's own parser off our flags (its --log-dir makes "--log" ambiguous)
    cmd += ["--", str(script), "--file_path", str(folder), "--log", str(log), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), **env}
    return subprocess.Popen(
        cmd, cwd=env.get("CWD", REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def finished(process, timeout=240) -> tuple[str, str]:
    """(stdout, stderr) of a process started in its own session; on timeout the whole session
    (torchrun and its workers) is killed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"timed out: {err[-3000:]}")
    return out, err


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory):
    """An uninterrupted two-process run: (log, stderr, folder of rank<R>.pt)."""
    folder, out = with_splits(data, 4, 1), tmp_path_factory.mktemp("ddp")
    log = out / "log"
    process = torchrun(out, folder, log, "--standalone", "--nproc_per_node", "2", extra=DDP_EPOCHS)
    _, err = finished(process)
    assert process.returncode == 0, err[-3000:]
    return log, err, out


def test_two_process_torchrun_gloo(ddp_run):
    log, err, out = ddp_run
    for name in ("args.pkl", "latest.pth", "ckpt_0.pth", "ckpt_1.pth", "detailed_stats.pkl"):
        assert (log / name).exists(), name
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["steps"].item() == 4  # 4 scenes over 2 processes, batch 1, 2 epochs
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    saved = weights(log / "ckpt_1.pth")
    assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    # find_unused_parameters only where needed, gradients laid out as DDP's buckets
    assert not [w for w in DDP_WARNINGS if w in err], err[-3000:]


def test_torchrun_restart_after_a_killed_worker_resumes_to_the_uninterrupted_weights(
    data, tmp_path, ddp_run
):
    """Rank 1 is SIGKILLed after step 3 (epoch 1, its first batch); rank 0 (its DataLoader worker
    too, which torchrun's SIGTERM to the group reaches) stops with one line, saving latest.pth at
    step 3; torchrun --max-restarts 1 restarts the group with the same command, which --resume
    continues from there to the weights of the uninterrupted run."""
    straight, _, _ = ddp_run
    log = tmp_path / "log"
    options = ("--standalone", "--nproc_per_node", "2", "--max-restarts", "1")
    extra = (*DDP_EPOCHS, "--resume", "--num_workers", "1")
    process = torchrun(tmp_path, with_splits(data, 4, 1), log, *options, extra=extra,
                       KILL_RANK1_AT_STEP="3")  # fmt: skip
    out, err = finished(process)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1, err[-3000:]  # rank 0's (rank 1 was killed)
    assert re.fullmatch(
        r"stopped when another process of the group ended \(connection (reset|closed) by peer\) at "
        rf"epoch 1, step 3; saved {re.escape(str(log / 'latest.pth'))} \(continue with the same "
        r"command and --resume\)",
        lines[0],
    ), lines[0]
    assert f"--resume: no {log / 'latest.pth'} yet, starting the run" in out
    assert f"--resume: continuing {log / 'latest.pth'}: epoch 1, step 3" in out  # the restart
    a, b = read_checkpoint(straight / "ckpt_1.pth"), read_checkpoint(log / "ckpt_1.pth")
    assert b["net"]["steps"].item() == 4
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_only_rank_0_writes_and_sigterm_stops_both(data, tmp_path):
    """Two torchrun commands (one process each) meeting at a c10d rendezvous, each in its own
    folder with --log relative to it (two machines without a shared disk). SIGTERM to rank 1 alone:
    both ranks stop at the same step, rank 0 saves it and says so in one line; rank 1 never
    writes."""
    folder, port = with_splits(data, 4, 0), free_port()
    options = ("--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d")
    options += ("--rdzv-endpoint", f"127.0.0.1:{port}")
    extra = ("--epochs", "500", "--eval_freq", "0", "--save_freq", "0")
    nodes = {}
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        nodes[cwd] = torchrun(cwd, folder, "run", *options, extra=extra, CWD=str(cwd))
    deadline = time.monotonic() + 120
    while not any((cwd / "run" / "latest.pth").exists() for cwd in nodes):
        if time.monotonic() > deadline or any(p.poll() is not None for p in nodes.values()):
            for process in nodes.values():
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("no latest.pth: " + "".join(finished(p)[1][-2000:] for p in nodes.values()))
        time.sleep(0.01)
    first, second = sorted(nodes, key=lambda cwd: not (cwd / "rank0.pid").exists())
    os.kill(int((second / "rank1.pid").read_text()), signal.SIGTERM)
    errors = {cwd: finished(process, timeout=120)[1] for cwd, process in nodes.items()}
    assert all(process.returncode != 0 for process in nodes.values())
    lines = [line for err in errors.values() for line in err.splitlines() if "by SIGTERM" in line]
    assert len(lines) == 1 and lines[0] in errors[first], errors[first][-3000:]  # rank 0's
    stopped = STOPPED.search(lines[0])
    latest = read_checkpoint(first / "run" / "latest.pth")
    assert latest["net"]["steps"].item() == int(stopped[2])
    assert not (second / "run").exists()  # rank 1 wrote nothing (not even the folder)
    for err in errors.values():  # each rank ended on the SIGTERM, with 143
        assert re.search(r"exitcode\s*:\s*143", err), err[-3000:]


# -- SIGTERM: the step in flight finishes, latest.pth holds it, one line, exit 143

STOPPED = re.compile(
    r"stopped by SIGTERM at epoch (\d+), step (\d+); saved (\S+) "
    r"\(continue with the same command and --resume\)"
)


def test_sigterm_saves_the_step_in_flight_and_exits_143_with_one_line(
    data, tmp_path, capsys, monkeypatch
):
    """A real SIGTERM to this process while step 3 (epoch 1, its first batch) is in flight: the
    step finishes, latest.pth holds it, one line, exit 143. (Under torchrun, against real
    processes: test_two_nodes_on_localhost_...)"""
    original = training.Trainer.step

    def step_with_sigterm(self, batch, cutoffs, train):
        if train and self.bare.steps.item() == 2:
            # the handler must be there: the default action would end pytest itself
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, cutoffs, train)

    monkeypatch.setattr(training.Trainer, "step", step_with_sigterm)
    log = tmp_path / "term"
    argv = ["--file_path", str(with_splits(data, 2, 0)), "--log", str(log), *TINY]
    with pytest.raises(SystemExit) as stopped:
        train_ovssc.main([*argv, "--eval_freq", "0", "--save_freq", "0", "--epochs", "500"])
    assert stopped.value.code == run_folder.EXIT_PREEMPTED == 143
    latest = log / "latest.pth"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at epoch 1, step 3; saved {latest} (continue with the same command "
        "and --resume)"
    )
    saved = read_checkpoint(latest)
    assert saved["net"]["steps"].item() == 3  # the step in flight, finished and saved
    assert saved["position"] == {"epoch": 1, "batches": 1, "train_done": False}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again


# -- bad input: one line naming the problem


def run_main(main, argv, capsys) -> str:
    capsys.readouterr()  # drop the output of earlier runs
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # tqdm bars and logs come before
    assert err.startswith("error: "), err
    return err


def test_missing_split_pickles(tmp_path, capsys):
    argv = ["--file_path", str(tmp_path), "--log", str(tmp_path / "log"), *TINY]
    assert "ssc_split.pkl" in run_main(train_ovssc.main, argv, capsys)


def test_scenes_without_relevancy_name_the_command(tmp_path, capsys):
    generate_scenes.generate_dataset(tmp_path, [0], scenes.PRESETS["small"])
    argv = ["--file_path", str(tmp_path), "--log", str(tmp_path / "log"), *TINY]
    err = run_main(train_ovssc.main, argv, capsys)
    assert "generate_relevancy.py dataset" in err and "ours" in err
    assert not (tmp_path / "log").exists()  # the refused run left no folder


def test_load_of_another_tasks_checkpoint(data, tmp_path, capsys):
    folder = with_splits(data, 1, 0)
    vool = tmp_path / "vool"
    training.train(tasks.VOOL, args_for("vool", folder, vool, "--epochs", "1"), stop_after_steps=1)
    argv = ["--file_path", str(folder), "--log", str(tmp_path / "o"), *TINY]
    err = run_main(train_ovssc.main, [*argv, "--load", str(vool / "latest.pth")], capsys)
    assert "SemAbsVOOL" in err and "SemAbs3D" in err


def test_resume_with_different_flags_lists_them(data, tmp_path, capsys):
    folder = with_splits(data, 1, 0)
    log = tmp_path / "run"
    training.train(tasks.OVSSC, args_for("ovssc", folder, log, "--epochs", "1"), stop_after_steps=1)
    argv = ["--file_path", str(folder), "--log", str(log), *TINY, "--load", str(log / "latest.pth")]
    err = run_main(train_ovssc.main, [*argv, "--lr", "0.5", "--seed", "3"], capsys)
    assert "lr: 0.001 -> 0.5" in err and "seed: 0 -> 3" in err


def test_load_of_another_runs_checkpoint_goes_on_with_this_commands_flags(data, tmp_path, capsys):
    """--load of a checkpoint from another run (the original's --load: go on from it) with another
    --lr: one line names the flags that differ from that run's args.pkl, and the new learning
    rate and weight decay drive the optimizer from the next step on (the restored schedule
    state held the other run's)."""
    folder = with_splits(data, 2, 0)
    first = tmp_path / "first"
    common = (
        "--epochs",
        "2",
        "--lr_scheduler_type",
        "constant",
        "--save_freq",
        "0",
        "--eval_freq",
        "0",
    )
    training.train(tasks.OVSSC, args_for("ovssc", folder, first, *common), stop_after_steps=1)
    second = tmp_path / "second"
    argv = ["--file_path", str(folder), "--log", str(second), *TINY, *common]
    capsys.readouterr()
    train_ovssc.main([*argv, "--load", str(first / "latest.pth"), "--lr", "0.01"])
    assert (
        f"--load {first / 'latest.pth'}: going on from its weights, optimizer state and position "
        f"with this command's flags, which differ from {first / 'args.pkl'}: lr: 0.001 -> 0.01"
    ) in capsys.readouterr().out.splitlines()
    saved = read_checkpoint(second / "latest.pth")
    assert saved["scheduler"]["base_lrs"] == [0.01]
    assert saved["optimizer"]["param_groups"][0]["initial_lr"] == 0.01
    assert saved["scheduler"]["_last_lr"] == [0.01]  # the rate of the steps it took


def test_resume_of_a_finished_run_has_nothing_left_and_touches_nothing(data, tmp_path, capsys):
    """A finished run (its last epoch not evaluated) resumed: one line, no epoch started, every
    file as it was (args.pkl and TensorBoard included); a larger --epochs trains on."""
    log = tmp_path / "done"
    argv = ["--file_path", str(with_splits(data, 1, 0)), "--log", str(log), *TINY]
    argv += ["--epochs", "1", "--eval_freq", "0"]
    train_ovssc.main(argv)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in log.rglob("*") if p.is_file()}
    capsys.readouterr()
    train_ovssc.main([*argv, "--resume"])
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [
        f"--resume: {log / 'latest.pth'}: epoch 1, step 1: nothing left to train (--epochs 1); "
        "nothing written (a larger --epochs trains on)"
    ]
    assert "EPOCH" not in err
    assert {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in log.rglob("*") if p.is_file()
    } == before
    train_ovssc.main([*argv[:-4], "--epochs", "2", "--eval_freq", "0", "--resume"])
    assert read_checkpoint(log / "latest.pth")["net"]["steps"].item() == 2


def test_refused_runs_leave_no_folder(data, tmp_path, capsys):
    """A run refused after --log was claimed (a checkpoint that does not fit; data without
    relevancy) removes the folders it created."""
    folder = with_splits(data, 1, 0)
    vool = tmp_path / "vool"
    training.train(tasks.VOOL, args_for("vool", folder, vool, "--epochs", "1"), stop_after_steps=1)
    log = tmp_path / "new" / "ovssc"
    argv = ["--file_path", str(folder), "--log", str(log), *TINY]
    err = run_main(train_ovssc.main, [*argv, "--load", str(vool / "latest.pth")], capsys)
    assert "does not fit SemAbs3D" in err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder that was there before stays
    kept.mkdir()
    argv[argv.index(str(log))] = str(kept)
    run_main(train_ovssc.main, [*argv, "--load", str(vool / "latest.pth")], capsys)
    assert kept.is_dir()


def test_a_second_run_into_a_log_that_holds_one_is_refused(data, tmp_path, capsys):
    """The same command again (or with another --lr) must not train over a run: one line naming
    it and the ways on, nothing touched; --overwrite starts over (one TensorBoard file); --load of
    the run's own checkpoint goes on from it."""
    log = tmp_path / "run"
    argv = ["--file_path", str(with_splits(data, 1, 0)), "--log", str(log), *TINY, "--epochs", "1"]
    train_ovssc.main([*argv, "--resume"])  # nothing to resume yet: the run starts
    assert f"--resume: no {log / 'latest.pth'} yet, starting the run" in capsys.readouterr().out
    before = {p: p.read_bytes() for p in log.rglob("*") if p.is_file()}
    expected = (
        f"error: --log {log} holds a run ({log / 'latest.pth'}: epoch 1, step 1); continue it with "
        "--resume, train into another --log, or start over with --overwrite"
    )
    assert run_main(train_ovssc.main, argv, capsys) == expected
    assert run_main(train_ovssc.main, [*argv, "--lr", "0.5"], capsys) == expected
    other = tmp_path / "other.pth"
    other.write_bytes((log / "latest.pth").read_bytes())
    err = run_main(train_ovssc.main, [*argv, "--load", str(other)], capsys)
    assert err.startswith(f"error: --log {log} holds a run") and f"--load {other} is not" in err
    assert {p: p.read_bytes() for p in log.rglob("*") if p.is_file()} == before
    train_ovssc.main([*argv, "--overwrite", "--lr", "0.5"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("--overwrite"))
    assert line.startswith(f"--overwrite: removed the earlier run's {len(before)} files from {log}")
    assert len(list((log / "train").glob("events.out.tfevents.*"))) == 1
    assert training.options.load_args(log / "args.pkl").lr == 0.5
    with pytest.raises(SystemExit):  # a contradiction argparse refuses
        training.prepare_args("ovssc", [*argv, "--resume", "--overwrite"])
    # --load of this run's own checkpoint (back to the end of epoch 0) goes on in it
    train_ovssc.main([*argv, "--lr", "0.5", "--epochs", "2", "--load", str(log / "ckpt_0.pth")])
    assert read_checkpoint(log / "latest.pth")["net"]["steps"].item() == 2


def test_every_point_minus_one_trains_and_is_kept_in_args_pkl(data, tmp_path):
    log = tmp_path / "all"
    args = args_for("ovssc", with_splits(data, 1, 0), log, "--num_input_pts", "-1")
    args.num_output_pts = training.options.POINT_COUNT("-1")
    training.train(tasks.OVSSC, args, stop_after_steps=1)
    stored = training.options.load_args(log / "args.pkl")
    assert (stored.num_input_pts, stored.num_output_pts) == (-1, -1)
    with pytest.raises(SystemExit):
        args_for("ovssc", with_splits(data, 1, 0), log, "--num_output_pts", "0")


def test_unwritable_log_directory(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["--file_path", str(with_splits(data, 1, 0)), "--log", str(blocker / "log"), *TINY]
    assert "cannot be written" in run_main(train_ovssc.main, argv, capsys)


def test_fp16_amp_on_cpu_is_refused(data, tmp_path, capsys):
    argv = ["--file_path", str(data), "--log", str(tmp_path), *TINY, "--use_amp"]
    assert "--amp_dtype fp16 needs CUDA" in run_main(train_ovssc.main, argv, capsys)


def test_bf16_amp_is_refused_where_the_cpu_emulates_it(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: False)
    log = tmp_path / "log"
    argv = ["--file_path", str(data), "--log", str(log), *TINY, "--use_amp", "--amp_dtype", "bf16"]
    capability = torch.backends.cpu.get_cpu_capability()
    assert run_main(train_ovssc.main, argv, capsys) == (
        f"error: --use_amp --amp_dtype bf16 is emulated on this CPU ({capability}: no AMX or "
        "AVX512-BF16): its convolutions run hundreds of times slower than fp32 "
        "(docs/performance.md#bf16-training-on-the-cpu); drop --use_amp"
    )
    assert not (log / "args.pkl").exists()  # refused before the run's folder was written


def test_bf16_emulated_on_names_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert processes.bf16_emulated_on(torch.device("cuda")) == "this GPU (Tesla T4: no native bf16)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert processes.bf16_emulated_on(torch.device("cuda")) is None
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: True)
    assert processes.bf16_emulated_on(torch.device("cpu")) is None


def test_bf16_amp_on_cpu_trains_in_bf16_and_keeps_fp32_weights(data, tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: True)  # emulated bf16 is refused
    seen = []
    forward = tasks.Task.forward

    def recording_forward(self, model, batch, *args):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, model, batch, *args)

    monkeypatch.setattr(tasks.Task, "forward", recording_forward)
    folder = with_splits(data, 1, 0)
    args = args_for("vool", folder, tmp_path / "v", "--use_amp", "--amp_dtype", "bf16")
    model = training.train(tasks.VOOL, args, stop_after_steps=2)
    assert seen[:2] == [(True, torch.bfloat16)] * 2
    assert model.steps.item() == 2
    weights = read_checkpoint(tmp_path / "v" / "latest.pth")["net"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_step_errors_stop_training_with_the_place(data, tmp_path):
    folder = with_splits(data, 1, 0)

    def broken(logits, batch, args):
        raise ValueError("boom")

    task = dataclasses.replace(tasks.OVSSC, loss_fn=broken)
    with pytest.raises(RuntimeError, match="epoch 0, split train, batch 0: ValueError: boom"):
        training.train(task, args_for("ovssc", folder, tmp_path / "b", "--epochs", "1"))


def test_file_path_that_does_not_exist(tmp_path, capsys):
    argv = ["--file_path", str(tmp_path / "nowhere"), "--log", str(tmp_path / "log"), *TINY]
    err = run_main(train_ovssc.main, argv, capsys)
    assert err == f"error: --file_path {tmp_path / 'nowhere'} does not exist"


# -- non-finite runs stop before anything non-finite is saved


def nan_loss(logits, batch, args):
    loss, *rest = tasks.OVSSC.loss_fn(logits, batch, args)
    return (loss * float("nan"), *rest)


def test_a_nan_loss_stops_training_naming_epoch_and_step(data, tmp_path):
    task = dataclasses.replace(tasks.OVSSC, loss_fn=nan_loss)
    log = tmp_path / "nan"
    with pytest.raises(InputError) as error:
        training.train(task, args_for("ovssc", with_splits(data, 1, 0), log, "--epochs", "1"))
    assert str(error.value) == (
        "training stopped: loss is nan at epoch 0, step 1; no checkpoint written for this state "
        "(nothing was saved; try a lower --lr)"
    )
    assert not list(log.glob("*.pth"))


def test_a_learning_rate_that_blows_up_stops_with_one_line(data, tmp_path, capsys):
    log = tmp_path / "blow"
    argv = ["--file_path", str(with_splits(data, 2, 0)), "--log", str(log), *TINY]
    argv += ["--lr", "1e30", "--num_warmup_steps", "0", "--epochs", "3"]
    assert run_main(train_ovssc.main, argv, capsys) == (
        "error: training stopped: loss is nan at epoch 0, step 2; no checkpoint written for this "
        "state (nothing was saved; try a lower --lr)"
    )
    assert not list(log.glob("*.pth"))


def test_non_finite_weights_stop_training_and_the_last_checkpoint_stays_finite(
    data, tmp_path, monkeypatch
):
    """Two epochs of one scene; the second epoch's step leaves a nan weight (with a finite loss):
    the run stops there and latest.pth keeps epoch 0's weights."""
    original_step = training.Trainer.step

    def poisoned_step(self, batch, cutoffs, train):
        result = original_step(self, batch, cutoffs, train)
        if train and self.bare.steps.item() == 2:
            with torch.no_grad():
                next(self.bare.parameters()).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(training.Trainer, "step", poisoned_step)
    log = tmp_path / "w"
    with pytest.raises(InputError) as error:
        training.train(
            tasks.OVSSC, args_for("ovssc", with_splits(data, 1, 0), log, "--epochs", "2")
        )
    assert str(error.value) == (
        "training stopped: the weights are not finite at epoch 1, step 2; no checkpoint written "
        f"for this state ({log / 'latest.pth'} holds the last saved state; try a lower --lr)"
    )
    latest = read_checkpoint(log / "latest.pth")
    assert latest["net"]["steps"].item() == 1
    assert all(torch.isfinite(v).all() for v in latest["net"].values() if v.is_floating_point())
    assert sorted(p.name for p in log.glob("*.pth")) == ["ckpt_0.pth", "latest.pth"]


# -- a worker's data error is the same one line as in the main process


def with_broken_scene(root: Path, folder: Path) -> Path:
    """Two train scenes of root copied into folder, the second without its relevancy block."""
    folder.mkdir()
    names = pickle.loads((root / "ssc_split.pkl").read_bytes())["train"][:2]
    for name in names:
        shutil.copy(root / name, folder / name)
    with h5py.File(folder / names[1], "a") as scene:
        del scene["data/saliencies/rgb|ours"]
    for split_file in ("ssc_split.pkl", "vool_split.pkl"):
        (folder / split_file).write_bytes(pickle.dumps({"train": names}))
    return folder


def test_a_data_error_in_a_worker_is_the_workers_one_line(data, tmp_path, capsys):
    folder = with_broken_scene(data, tmp_path / "broken")
    lines = []
    for workers in ("0", "1"):
        argv = ["--file_path", str(folder), "--log", str(tmp_path / f"log{workers}"), *TINY]
        lines.append(run_main(train_ovssc.main, [*argv, "--num_workers", workers], capsys))
    assert lines[0] == lines[1] and "Caught" not in lines[1]
    assert lines[1].startswith(f"error: {folder}") and ": no relevancy" in lines[1]


# -- write order and closing lines


class Killed(BaseException):
    """Stands for a SIGKILL in the middle of a write."""


def test_a_run_killed_writing_a_periodic_checkpoint_writes_it_on_resume(
    data, tmp_path, monkeypatch
):
    """Killed while writing ckpt_0.pth (epoch 0 is evaluated: --eval_freq 5), the resumed run must
    still write ckpt_0.pth: latest.pth may not have moved past epoch 0 before it."""
    folder, log = with_splits(data, 1, 1), tmp_path / "run"
    real_save, kills = training.checkpoint.save_checkpoint, []

    def save_killed_once(path, *args, **kwargs):
        if Path(path).name == "ckpt_0.pth" and not kills:
            kills.append(path)
            raise Killed
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(training.checkpoint, "save_checkpoint", save_killed_once)
    with pytest.raises(Killed):
        training.train(tasks.OVSSC, args_for("ovssc", folder, log, "--epochs", "2"))
    assert read_checkpoint(log / "latest.pth")["position"]["epoch"] == 0
    resumed = args_for("ovssc", folder, log, "--epochs", "2", "--load", str(log / "latest.pth"))
    training.train(tasks.OVSSC, resumed)
    first, last = read_checkpoint(log / "ckpt_0.pth"), read_checkpoint(log / "ckpt_1.pth")
    assert (first["epochs"], first["net"]["steps"].item()) == (1, 1)
    assert (last["epochs"], last["net"]["steps"].item()) == (2, 2)
    frame = training.pd.read_pickle(log / "detailed_stats.pkl")
    evaluated = frame[(frame["split"] == "unseen_instances") & (frame["epoch"] == 0)]
    assert len(evaluated) and not evaluated[["scene_id", "label", "cutoff"]].duplicated().any()


def test_max_minutes_ends_with_a_line_saying_where_and_how_to_resume(data, tmp_path, capsys):
    log = tmp_path / "timed"
    argv = ["--file_path", str(with_splits(data, 2, 0)), "--log", str(log), *TINY]
    train_ovssc.main([*argv, "--max_minutes", "0.001"])
    latest = log / "latest.pth"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # how many steps fit in 0.06 s depends on the machine; the line must name the saved position
    stopped = re.fullmatch(
        rf"stopped after --max_minutes 0\.001 at epoch (\d+), step (\d+); saved {re.escape(str(latest))} "
        rf"\(resume with the same command and --load {re.escape(str(latest))}\)",
        last,
    )
    assert stopped, last
    epoch, step = int(stopped[1]), int(stopped[2])
    position = read_checkpoint(latest)["position"]
    assert (position["epoch"], position["batches"]) == (epoch, step) and step >= 1


def start_and_kill_while_writing_a_checkpoint(argv: list[str], log: Path, timeout=120) -> Path:
    """Run train_ovssc.py, SIGKILL it while a ckpt_<epoch>.pth temporary file exists (latest.pth
    exists by then); -> that file."""
    command = [sys.executable, "train_ovssc.py", *argv]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            written = [e.name for e in os.scandir(log)] if log.is_dir() else []
            temps = [n for n in written if n.startswith(".ckpt_") and n.endswith(".tmp")]
            if temps:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return log / temps[0]
            time.sleep(0.0005)
    finally:
        process.kill()
        process.wait()
    pytest.fail(f"no checkpoint write was caught: {process.stderr.read().decode()[-2000:]}")


def test_a_run_killed_mid_checkpoint_leaves_litter_that_the_resume_removes(data, tmp_path):
    log = tmp_path / "killed"
    argv = ["--file_path", str(with_splits(data, 1, 0)), "--log", str(log), *TINY]
    argv += ["--eval_freq", "0", "--epochs", "500"]
    stale = start_and_kill_while_writing_a_checkpoint(argv, log)
    assert stale.exists()
    epoch = read_checkpoint(log / "latest.pth")["position"]["epoch"]
    argv[argv.index("500")] = str(epoch + 2)
    resumed = subprocess.run(
        [sys.executable, "train_ovssc.py", *argv, "--load", str(log / "latest.pth")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {stale}, left by an interrupted run" in resumed.stdout.splitlines()
    assert not stale.exists() and not list(log.glob(".*.tmp"))
    assert read_checkpoint(log / f"ckpt_{epoch + 1}.pth")["epochs"] == epoch + 2


WORKER_LEFT_AT_EXIT = """
import torch
import seeding
loader = torch.utils.data.DataLoader(
    list(range(8)), num_workers=1, worker_init_fn=seeding.seed_worker
)
batches = iter(loader)
next(batches)  # the worker runs; `batches` stays referenced until the interpreter exits
"""


def test_a_process_exits_with_its_loader_workers_still_alive():
    """Workers ignore SIGTERM (seed_worker); one still alive at exit must not keep the process
    waiting for it (multiprocessing's exit handler terminates daemonic children, then joins)."""
    result = subprocess.run(
        [sys.executable, "-c", WORKER_LEFT_AT_EXIT], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
