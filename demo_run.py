"""The demo's run folder and its stage runner (demo.py's machinery; what it runs is demo.py's).

The run folder: a demo folder is one holding `demo_run.json` (the flags that decide its results).
`claim_folder` writes it into a new or empty folder, goes on in a folder of the same run, and
refuses in one line a folder of another run or a folder the demo did not make. `--fresh` deletes
only what the demo makes in a demo folder (`DEMO_ENTRIES`), never another file, and in no other
folder (`--out .` in the repository is refused like any folder holding files of its own).

The stage runner (`Pipeline.run`) runs one of the project's scripts as a subprocess unless its
outputs exist, in the terminal or into a log file (stages side by side). Signals: within
`Pipeline.stopping_on_sigterm()` a SIGTERM is passed to every running stage (training saves
latest.pth and exits 143; the others stop, their files written atomically), no stage starts after
it, and the demo stops with one line and exit 143 (`Stopped`). A Ctrl-C reaches the terminal's
whole process group, so a stage in the terminal says itself that it was interrupted, and the demo
then exits 130 without saying it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from utils import InputError, atomic_path, remove_stale_temp_files

REPO = Path(__file__).resolve().parent
RUN_FILE = "demo_run.json"  # the flags that decide a demo folder's results
# everything the demo makes in its folder, the only entries --fresh deletes
DEMO_ENTRIES = ("data", "models", "logs", "visualization", "tables.json", "summary.json", RUN_FILE)
EPOCH_LINE = re.compile(r"EPOCH (\d+) ==")  # training.py's line at an epoch's start
BAR = re.compile(r"(\d+)/(\d+) \[")  # tqdm's "12/102 [" in a script's output
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
console = Console()


# --------------------------------------------------------------------------------------------------
# the run folder


def claim_folder(out: Path, run: dict, fresh: bool) -> None:
    """Make `out` this run's demo folder: with `fresh`, first delete what an earlier demo made
    there (`start_over`); then write its demo_run.json, or refuse in one line (`check_run`)."""
    if fresh and start_over(out):
        write_run_file(out, run)  # still a demo folder, whatever else it holds
        return
    check_run(out, run)


def start_over(out: Path) -> bool:
    """--fresh: delete the demo's own entries of a demo folder, saying what was removed and what was
    kept; -> whether it did. A folder that holds files but no demo_run.json is refused and left as
    it is."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False  # nothing to start over from
    if not (out / RUN_FILE).is_file():
        raise InputError(
            f"--fresh deletes only a demo folder (one holding {RUN_FILE}); {out} holds none, so "
            "nothing was deleted: give a new or empty --out"
        )
    removed = []
    for name in DEMO_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    remove_stale_temp_files(out)  # a killed demo's half-written summary, say
    kept = sorted(path.name for path in out.iterdir())
    note = f" (kept what the demo did not make: {', '.join(kept)})" if kept else ""
    console.print(f"--fresh: removed {', '.join(removed)} from {out}{note}", soft_wrap=True)
    return True


def check_run(out: Path, run: dict) -> None:
    """Write OUT/demo_run.json, or refuse in one line when OUT holds a demo made with other flags
    (its stages would be skipped as done, and their results mixed with this run's) or is a folder
    the demo did not make."""
    path = out / RUN_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = [f"{k} {stored.get(k)} -> {v}" for k, v in run.items() if stored.get(k) != v]
        if changed:
            raise InputError(
                f"{out} holds a demo run with other flags ({', '.join(changed)}): use --fresh to "
                "start it over, or another --out"
            )
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder")
    if out.exists() and any(out.iterdir()):
        raise InputError(
            f"{out} holds files and no {RUN_FILE}, so it is not a demo folder: give a new or "
            "empty --out"
        )
    write_run_file(out, run)


def write_run_file(out: Path, run: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(run, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# the stages


class Stopped(Exception):
    """The demo stopped on SIGTERM after passing it to its running stages; the message is its
    line."""


class Pipeline:
    """The demo's folders under `out` (the scenes in `data`, by default OUT/data), its training seed
    and precision, and the runner of its stages."""

    def __init__(
        self,
        out: Path,
        device: str,
        seed: int = 0,
        precision: str = "auto",
        data: Path | None = None,
    ):
        self.started = time.perf_counter()
        self.out = out
        self.data = out / "data" if data is None else data
        self.models, self.vis = out / "models", out / "visualization"
        self.device = device
        self.seed = seed
        self.precision = precision
        self.checkpoints = {task: self.models / task / "latest.pth" for task in ("ovssc", "vool")}
        # the splits eval.py scores (None: all but train)
        self.splits: tuple[str, ...] | None = None
        self.progress: Progress | None = None  # the running stages' lines, while lanes run
        self.running: dict[subprocess.Popen, str] = {}  # stage processes -> their titles
        self.terminated: list[str] = []  # the stages running when a SIGTERM came
        self.interrupted = False  # a Ctrl-C reached the demo: no stage starts any more

    def log(self, task: str) -> Path:
        return self.checkpoints[task].parent

    def eval_stats(self, task: str, approach: str = "ours") -> Path:
        """The stats frame of the network ("ours") or of a baseline of one task."""
        name = "latest" if approach == "ours" else approach
        return self.log(task) / f"{name}_eval_stats.pkl"

    @contextlib.contextmanager
    def stopping_on_sigterm(self):
        """Within the block a SIGTERM is passed to the running stages and no stage starts after
        it; the block then stops with one line on stderr and exit 143. Main thread only."""

        def terminate(signum, frame):
            self.terminated.append(", ".join(list(self.running.values())) or "no stage")
            for process in list(self.running):
                process.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            yield
            self.check_terminated()
        except Stopped as stopped:
            print(stopped, file=sys.stderr, flush=True)
            raise SystemExit(EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            self.stop_running()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop_running(self, grace: float = 10.0) -> None:
        """After a Ctrl-C of the demo: no stage starts any more, and a stage still running `grace`
        seconds later (the demo alone was interrupted, e.g. `kill -INT`, not its process group)
        gets SIGTERM, saves, and is waited for: no stage runs on without the demo."""
        self.interrupted = True
        deadline = time.monotonic() + grace
        while self.running:
            process = next(iter(self.running))
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)
                process.wait()
            self.running.pop(process, None)

    def check_terminated(self) -> None:
        if self.interrupted:  # a lane's thread after the demo's Ctrl-C: stop there, quietly
            raise Stopped("interrupted")
        if self.terminated:
            stages = self.terminated[0]
            raise Stopped(
                f"stopped by SIGTERM (running: {stages}); the stages were passed it and saved "
                "what they had (training: its latest.pth); rerun demo.py to continue"
            )

    def run(
        self,
        title: str,
        done: list[Path],
        arguments: list[str],
        log: Path | None = None,
        threads: int | None = None,
        more_threads: Callable[[], int] | None = None,
    ) -> None:
        """Run `python <arguments>` unless all of `done` exist; stop the demo with its message if it
        fails. `log`: write the script's output there instead of to the terminal (stages that run
        side by side); `threads`: the CPU threads it may use (OMP_NUM_THREADS). `more_threads`,
        for a stage that saves where it is on SIGTERM and goes on from there when run again
        (training with --resume): once it returns more than `threads` (a lane beside it ended),
        the stage is stopped and run again with that many."""
        self.check_terminated()
        if done and all(path.exists() for path in done):
            console.print(f"[dim]✓ {title}: already done ({done[0]})[/]")
            return
        # one line whatever its length, so that it can be copied and run
        command_line = "[dim]$ python " + " ".join(arguments) + "[/]"
        if log is None:
            console.rule(f"[bold]{title}")
            console.print(command_line, soft_wrap=True)
        else:  # one print, so that a lane's two lines stay together
            console.print(
                f"[bold]▶ {title}[/] [dim](output: {log})[/]\n{command_line}", soft_wrap=True
            )
        start = time.perf_counter()
        mode = "w"
        while True:
            env = dict(os.environ)
            if threads is not None:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            grown = threading.Event()
            returncode = self.start_and_wait(
                title, arguments, env, log, mode, (threads, more_threads, grown)
            )
            self.check_terminated()
            if not (grown.is_set() and returncode in (EXIT_TERMINATED, -signal.SIGTERM)):
                break
            threads, mode = more_threads(), "a"
            console.print(f"[bold]▶ {title}[/] goes on with {threads} threads", soft_wrap=True)
        if returncode != 0:
            where = "" if log is None else f"; its output is in {log}"
            raise InputError(
                f"demo stage '{title}' failed (exit {returncode}){where}; rerun demo.py to continue"
            )
        console.print(f"[green]✓ {title}[/] in {time.perf_counter() - start:.0f} s")

    def start_and_wait(
        self,
        title: str,
        arguments: list[str],
        env: dict,
        log: Path | None,
        mode: str,
        growing: tuple[int | None, Callable[[], int] | None, threading.Event],
    ) -> int:
        """Start `python <arguments>` (its output into `log`, opened with `mode`, or the terminal),
        known to the SIGTERM handler while it runs, stopped when it may grow (`growing`: threads,
        more_threads, the event: stop_when_more_threads's arguments); -> its exit code."""
        with contextlib.ExitStack() as stack:
            output = None
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                output = stack.enter_context(open(log, mode))
            process = subprocess.Popen(
                [sys.executable, *arguments], cwd=REPO, env=env, stdout=output, stderr=output
            )
            self.running[process] = title
            try:
                if self.terminated or self.interrupted:  # a SIGTERM or Ctrl-C while it started
                    process.send_signal(signal.SIGTERM)
                stop_when_more_threads(process, *growing)
                return self.watch(title, process, log) if log else wait_in_terminal(process)
            finally:
                self.running.pop(process, None)

    def watch(self, title: str, process: subprocess.Popen, log: Path) -> int:
        """Wait for a stage whose output goes to `log`, showing its epoch and progress bar as a line
        of `self.progress` (when set); -> its exit code."""
        if self.progress is None:
            return process.wait()
        line = self.progress.add_task(title, status="")
        epoch, read = "", 0
        while process.poll() is None:
            time.sleep(1)
            with open(log, "rb") as f:
                f.seek(read)
                text = f.read().decode(errors="replace")
            read += len(text.encode())
            epochs, bars = EPOCH_LINE.findall(text), BAR.findall(text)
            epoch = f"epoch {epochs[-1]}  " if epochs else epoch
            if bars:
                self.progress.update(line, status=f"{epoch}{bars[-1][0]}/{bars[-1][1]}")
        self.progress.remove_task(line)
        return process.returncode


def stop_when_more_threads(
    process: subprocess.Popen,
    threads: int | None,
    more_threads: Callable[[], int] | None,
    grown: threading.Event,
) -> None:
    """Send `process` SIGTERM and set `grown` once more_threads() exceeds `threads` (checked every
    second while it runs, in a thread of its own)."""
    if threads is None or more_threads is None:
        return

    def check() -> None:
        while process.poll() is None:
            if more_threads() > threads:
                grown.set()
                process.send_signal(signal.SIGTERM)
                return
            time.sleep(1)

    threading.Thread(target=check, daemon=True).start()


def wait_in_terminal(process: subprocess.Popen, grace: float = 10.0) -> int:
    """Wait for a stage that writes to the terminal. A Ctrl-C there reaches the stage too (one
    process group), which stops and says so itself: the demo then exits 130 without another line.
    A stage still running `grace` seconds after the demo's Ctrl-C (the demo alone was interrupted)
    gets SIGTERM, and the demo says it stopped."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            code = process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
            raise KeyboardInterrupt from None
        if code == EXIT_INTERRUPTED:  # the stage's own "interrupted" line is the one line
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise


def training_progress(log_dir: Path) -> tuple[int, int] | None:
    """(epochs trained, epochs planned) of the training run in `log_dir`, from its latest.pth
    (`epochs`: the epochs whose training finished) and its args.pkl; None before it saved one."""
    import torch

    import options

    latest, args_file = log_dir / "latest.pth", log_dir / options.ARGS_FILE
    if not (latest.is_file() and args_file.is_file()):
        return None
    trained = torch.load(latest, map_location="cpu", weights_only=True, mmap=True)["epochs"]
    return int(trained), int(options.load_args(args_file).epochs)
