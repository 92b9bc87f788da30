"""A training run's folder (--log) through its life: claimed before anything is written, resumed,
overwritten, stopped by SIGTERM; the checkpoints that hold where the run stands and its stats file
(docs/training.md#running-under-a-job-scheduler---resume-sigterm-torchrun---max-restarts).

A run is never lost or mixed up: a --log that holds a run is refused unless the command says what
to do with it (`--resume` goes on from its latest.pth, `--load` starts from a checkpoint of that run,
`--overwrite` deletes it first), so torchrun's restarts and a scheduler's requeue can rerun the same
command with `--resume`. SIGTERM (a scheduler's notice before preemption, or torchrun shutting its
group down) lets the step in flight finish; the ranks agree on it with the step's own all-reduce,
rank 0 saves latest.pth at that position, and every process exits with 143 after one line (rank
0's). When another process of the group ended (killed, lost), rank 0 saves the last step the group
finished the same way. A run whose checkpoint has trained every epoch has nothing left (`Finished`),
and a refused run leaves no folder behind.

Checkpoints hold the released keys (`net`, `optimizer`, `epochs`), which the original can load, plus
`scheduler`, `scaler`, `rng` and `position`: `--load <log>/latest.pth` then resumes exactly (same
learning rate, same next batch). A released checkpoint (three keys) resumes as the original did:
from its `epochs`, with the schedule restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import checkpoint
import options
from seeding import rng_state, set_rng_state
from utils import InputError, atomic_pickle, remove_stale_temp_files

log = logging.getLogger("semabs.train")

LATEST = "latest.pth"
STATS_FILE = "detailed_stats.pkl"
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a scheduler sees from a job its SIGTERM ended


# --------------------------------------------------------------------------------------------------
# where a run stands, in its checkpoints


@dataclass
class Position:
    """Where a run stands: `epoch`, and within it how many train batches are done and whether the
    train split is finished (evaluation follows)."""

    epoch: int = 0
    batches: int = 0
    train_done: bool = False


def save_state(path, model, optimizer, scheduler, scaler, position: Position) -> None:
    epochs = position.epoch + 1 if position.train_done else position.epoch
    extra = {
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(),
        "position": vars(position).copy(),
    }
    checkpoint.save_checkpoint(path, model, optimizer, epochs, extra=extra)


def restore_state(path, model, optimizer, scheduler, scaler, device) -> Position:
    """Load --load; return where to go on. Released checkpoints resume from their `epochs` with a
    fresh schedule (as the original); ours resume exactly."""
    log.info("loading from %s", path)
    ckpt = checkpoint.load_network(model, path, map_location=device)
    if ckpt.get("optimizer"):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as error:
            raise InputError(f"checkpoint {path}: optimizer state does not fit: {error}") from None
    if "position" not in ckpt:
        return Position(epoch=int(ckpt.get("epochs", 0)))
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return Position(**ckpt["position"])


class StatsFile:
    """detailed_stats.pkl: every split's rows of the run, rewritten (atomically, on the main
    process) as each split ends; a resumed run appends to the rows already there."""

    def __init__(self, path: Path, resume: bool, main: bool):
        self.path, self.main = path, main
        self.frames = [pd.read_pickle(path)] if (resume and path.is_file() and main) else []

    def add(self, frame: pd.DataFrame, epoch: int, split: str) -> pd.DataFrame:
        """Tag a split's rows with epoch and split, store them; -> the tagged rows."""
        frame = frame.assign(epoch=epoch, split=split)
        if self.main:
            self.frames.append(frame)
            atomic_pickle(pd.concat(self.frames), self.path)
        return frame


# --------------------------------------------------------------------------------------------------
# one run per --log: refuse to mix runs, --resume, --overwrite


def check_log_dir(log_dir: Path) -> None:
    """Create --log (rank 0 only: no other rank writes anything) and check it can be written."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as error:
        raise InputError(f"--log {log_dir} cannot be written: {error.strerror or error}") from None


def run_files(log_dir: Path) -> list[Path]:
    """The files a run leaves in --log: latest.pth, args.pkl, detailed_stats.pkl, ckpt_<epoch>.pth
    and the TensorBoard event files of its split folders."""
    if not log_dir.is_dir():
        return []
    named = [log_dir / name for name in (LATEST, options.ARGS_FILE, STATS_FILE)]
    return [
        *(path for path in named if path.is_file()),
        *sorted(log_dir.glob("ckpt_*.pth")),
        *sorted(log_dir.glob("*/events.out.tfevents.*")),
    ]


def describe_latest(latest: Path) -> str:
    """'<log>/latest.pth: epoch E, step S': the epoch a resume goes on in (the checkpoint's
    `epochs`) and the optimizer steps taken; read through a memory map, not loaded."""
    try:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True, mmap=True)
        epoch, steps = int(ckpt["epochs"]), ckpt["net"].get("steps")
    except Exception as error:  # torch raises many types for truncated or foreign files
        return f"{latest}, not readable: {checkpoint.load_failure(error)}"
    return f"{latest}: epoch {epoch}" + (f", step {int(steps.item())}" if steps is not None else "")


def describe_run(log_dir: Path, files: list[Path]) -> str:
    if log_dir / LATEST in files:
        return describe_latest(log_dir / LATEST)
    names = [path.relative_to(log_dir).as_posix() for path in files]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"no {LATEST}, but {shown}"


class Finished(Exception):
    """The checkpoint a run would start from has trained every epoch of --epochs; the message is
    the line printed. Nothing is written."""


def claim_log_dir(args: argparse.Namespace, log_dir: Path) -> str | None:
    """Rank 0, before anything is written: create --log, remove the temporary files of killed
    writers, and settle what happens to a run already there. -> the checkpoint to start from.

    Without --load, --resume or --overwrite a run in --log is refused, as is --load of a checkpoint
    from elsewhere (its latest.pth would be overwritten by another run). --resume goes on from
    latest.pth when there is one (else the run starts: a restart before the first save);
    --overwrite, and --resume without latest.pth, first delete the earlier run's files. A
    checkpoint that has trained every epoch already is `Finished`, before anything is deleted.
    """
    check_log_dir(log_dir)
    for stale in remove_stale_temp_files(log_dir):
        print(f"removed {stale}, left by an interrupted run", flush=True)
    files = run_files(log_dir)
    latest = log_dir / LATEST
    if args.resume and latest in files:
        refuse_if_finished(latest, args, f"--resume: {describe_latest(latest)}")
        print(f"--resume: continuing {describe_latest(latest)}", flush=True)
        return str(latest)
    load_here = args.load is not None and Path(args.load).resolve().parent == log_dir.resolve()
    if files and not (args.overwrite or args.resume or load_here):
        ways = "continue it with --resume, train into another --log, or start over with --overwrite"
        if args.load is not None:
            ways = f"--load {args.load} is not from this run: {ways}"
        raise InputError(f"--log {log_dir} holds a run ({describe_run(log_dir, files)}); {ways}")
    if files and load_here and (args.overwrite or args.resume):
        flag = "--overwrite" if args.overwrite else f"--resume (without {LATEST})"
        raise InputError(
            f"--load {args.load} lies in --log {log_dir}, whose run {flag} deletes: copy it "
            "elsewhere first"
        )
    if args.load is not None:
        refuse_if_finished(Path(args.load), args, f"--load {args.load}")
    if files and not load_here:  # --overwrite, or --resume without latest.pth
        described = describe_run(log_dir, files)
        for path in files:
            path.unlink()
        why = "--overwrite" if args.overwrite else f"--resume found no {LATEST}"
        print(f"{why}: removed the earlier run's {len(files)} files from {log_dir} ({described})")
    elif not files and args.resume:
        print(f"--resume: no {latest} yet, starting the run", flush=True)
    return args.load


def refuse_if_finished(path: Path, args: argparse.Namespace, what: str) -> None:
    """`Finished` when the checkpoint at `path` stands at or past the end of --epochs (its
    position; a released checkpoint's `epochs`). A checkpoint that cannot be read is left to
    the loading, which says why."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch = int(ckpt["position"]["epoch"] if "position" in ckpt else ckpt["epochs"])
    except Exception:  # torch raises many types for truncated or foreign files
        return
    if epoch >= args.epochs:
        raise Finished(
            f"{what}: nothing left to train (--epochs {args.epochs}); nothing written (a larger "
            "--epochs trains on)"
        )


@contextlib.contextmanager
def refusal_leaves_no_folder(log_dir: Path, main: bool):
    """Rank 0: the folders that claiming --log creates are removed again when the block raises (a
    refused run: a checkpoint that does not fit, data without relevancy, nothing left to train)
    while they are still empty."""
    created = [folder for folder in (log_dir, *log_dir.parents) if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in created if main else []:  # the deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there), or gone
                break
        raise


def check_load_args(args: argparse.Namespace, log_dir: Path) -> str | None:
    """--load against the flags of the run it comes from. The run in --log (a resume) must go on
    with its stored flags: any that differ are refused, listed. A checkpoint of another run goes
    on with this command's flags (optimization.use_flags): -> the line naming those that differ from
    that run's args.pkl (None when they are the same, or it has none)."""
    if args.load is None:
        return None
    stored_path = log_dir / options.ARGS_FILE
    if stored_path.is_file():
        changed = options.differences(options.load_args(stored_path), args)
        if changed:
            raise InputError(
                f"flags differ from {stored_path}: {'; '.join(changed)} "
                "(resume with the stored flags, or train into a new --log)"
            )
        return None
    beside = Path(args.load).parent / options.ARGS_FILE
    if not beside.is_file():
        return None
    changed = options.differences(options.load_args(beside), args)
    if not changed:
        return None
    return (
        f"--load {args.load}: going on from its weights, optimizer state and position with this "
        f"command's flags, which differ from {beside}: {'; '.join(changed)}"
    )


# --------------------------------------------------------------------------------------------------
# SIGTERM and --max_minutes: save where the run stands and stop


class Preempted(Exception):
    """Training stopped on SIGTERM after saving latest.pth; the message is the line printed."""


@contextlib.contextmanager
def sigterm_flag():
    """Within the block SIGTERM only appends to the yielded list, which the training loop reads
    after each step; the previous handler comes back after it. Main thread only (signal.signal)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_line(
    args: argparse.Namespace, position: Position, model: nn.Module, lost: str | None = None
) -> str:
    """The closing line of a run stopped by SIGTERM, or by another process of its group that
    ended (`lost`: why the group broke)."""
    latest = Path(args.log) / LATEST
    why = "by SIGTERM" if lost is None else f"when another process of the group ended ({lost})"
    return (
        f"stopped {why} at epoch {position.epoch}, step {int(model.steps.item())}; saved "
        f"{latest} (continue with the same command and --resume)"
    )


def out_of_time_line(
    args: argparse.Namespace, max_seconds: float, position: Position, model: nn.Module
) -> str:
    """The closing line of a run stopped by --max_minutes: where it stopped and how to go on."""
    latest = Path(args.log) / "latest.pth"
    return (
        f"stopped after --max_minutes {max_seconds / 60:g} at epoch {position.epoch}, step "
        f"{int(model.steps.item())}; saved {latest} (resume with the same command and --load {latest})"
    )
