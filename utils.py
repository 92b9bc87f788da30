"""Torch-free helpers shared by every script: the one top-level error handler (`run_app`) and its
InputError, atomic file writes (`atomic_path`, `atomic_pickle`) and their stale temporaries, worker
processes that end with their parent. Devices, seeding and the process group are processes.py's.

Importing it asks PyTorch to back large CPU tensors with transparent huge pages
(THP_MEM_ALLOC_ENABLE, read at the first allocation). A 128^3 x 16 volume is 128 MB, and on Linux each
fresh one otherwise costs 32k page faults: ReLU on it takes ~60 ms instead of ~15 ms, and a default
OVSSC training step ~25% longer. Set THP_MEM_ALLOC_ENABLE=0 to opt out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before any tensor exists: see the docstring


class InputError(ValueError):
    """Bad input from the user (missing file, wrong key or shape, unknown label, ...).

    Scripts run through `run_app`, which prints the message as one line instead of a traceback.
    """


ORDINARY_ERRNOS = {
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
}


def available_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def os_error_line(error: OSError) -> str | None:
    """`<path>: <problem>` for the OSErrors a user causes (existing file, permissions, missing
    parent, disk full); None for anything else, which stays a traceback."""
    if error.errno not in ORDINARY_ERRNOS:
        return None
    problem = error.strerror or os.strerror(error.errno)
    if error.errno == errno.EEXIST:
        problem = "already exists and is not a folder"
    elif error.errno == errno.ENOENT and error.filename is not None:
        problem = "no such file or folder (is its parent missing?)"
    return problem if error.filename is None else f"{error.filename}: {problem}"


# torch's message for an error raised in a DataLoader worker, re-raised in the main process as the
# same type: "Caught <Type> in DataLoader worker process <N>.\nOriginal Traceback ...\n<Type>: <text>"
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_ERRNO_TEXT = re.compile(r"^\[Errno (?P<errno>\d+)\] (?P<strerror>.+?)(?:: '(?P<filename>.+)')?$")


def original_error(error: Exception) -> Exception:
    """The error a DataLoader worker raised, rebuilt from the last line of the traceback torch wraps
    it in (an OSError with its errno and file name again); any other error as it is."""
    message = str(error)
    if not _WORKER_WRAPPER.match(message):
        return error
    text = message.rstrip().splitlines()[-1].partition(": ")[2]
    if isinstance(error, InputError):
        return InputError(text)
    numbered = _ERRNO_TEXT.match(text)
    if numbered is None:
        return type(error)(text)
    return OSError(int(numbered["errno"]), numbered["strerror"], numbered["filename"])


def run_app(app) -> None:
    """The one top-level handler of every script: run a typer app or a plain `main()` callable.

    An InputError, or an OSError a user causes (`os_error_line`), prints `error: <message>` on
    stderr as one line and exits 1, also when a DataLoader worker raised it (`original_error`);
    Ctrl-C prints one line and exits 130. Anything else is a bug and keeps its traceback.
    """
    import typer  # here, so that importing utils costs nothing for scripts without typer

    try:
        code = app(standalone_mode=False) if isinstance(app, typer.Typer) else app()
        if code == 130:  # typer's own answer to Ctrl-C outside standalone mode
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: stopped before the end (finished files are complete)", file=sys.stderr)
        sys.exit(130)
    except (InputError, OSError) as caught:
        error = original_error(caught)
        line = str(error) if isinstance(error, InputError) else os_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:
        if hasattr(error, "show") and hasattr(error, "exit_code"):  # typer's usage errors
            error.show()
            sys.exit(error.exit_code)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_owner() -> str:
    """`<host>-<pid>` of this process, as it goes into a temporary file's name."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}"


# `.<name>.<host>-<pid>.<random>.tmp`: the temporary files of atomic_path
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or Ctrl-C inside the block leaves any existing file at `path` untouched. The temporary
    file is `.<name>.<host>-<pid>.<random>.tmp`; after a kill -9, `remove_stale_temp_files`
    removes it once its writer is gone.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_temp_owner()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file open() permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_pickle(obj, path: str | os.PathLike) -> None:
    """Pickle `obj` to `path` atomically (`atomic_path`), as pandas' DataFrame.to_pickle writes a
    frame (the highest protocol), without importing pandas."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files `atomic_path` left in `folder` when its writer was killed.

    Only files of atomic_path's naming whose writer ran on this host and is no longer alive are
    removed, so a file another live run is writing (here or on another machine sharing the folder)
    is never touched. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _temp_owner().rsplit("-", 1)[0]
    removed = []
    for candidate in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _TEMP_NAME.match(candidate.name)
        if match is None or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def sigint_left_to_parent() -> Iterator[None]:
    """Start worker processes within the block: Ctrl-C is blocked in this thread meanwhile, and the
    processes started inherit the block across exec, so they never see it and leave it to their
    parent, which stops them, instead of each printing a traceback (a terminal's Ctrl-C reaches
    every process of the group, workers still importing included). The parent's own Ctrl-C is
    held back and raised when the block ends. Main thread only; on Windows it does nothing."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    caught = []  # a Ctrl-C that another thread received while this one blocks it
    handler = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C is caught here
        signal.signal(signal.SIGINT, handler)
    if caught:
        raise KeyboardInterrupt


def die_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: end this process when its parent ends, even by SIGKILL.

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL); elsewhere nothing (the pool's own shutdown applies).
    If the parent is already gone when this runs, exit at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
