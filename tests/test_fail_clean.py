"""Issue 13: every command fails clean. One line and a non-zero exit for ordinary mistakes, no
existing file changed, stale temporary files removed by the next run, workers that end with their
parent, and runs killed with SIGKILL mid-write that leave every file readable and resume."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import typer
from conftest import default_sigint
from test_generate_relevancy import make_scene

import generate_scenes
import utils
from utils import InputError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_script(*args, timeout=120):
    return subprocess.run(
        [PY, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------------------------------
# run_app


@pytest.mark.parametrize(
    "error, line",
    [
        (FileExistsError(errno.EEXIST, "File exists", "out"), "error: out: already exists"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/x"), "error: /ro/x: Permission"),
        (FileNotFoundError(errno.ENOENT, "No such file", "/a/b"), "error: /a/b: no such file"),
        (OSError(errno.ENOSPC, "No space left on device", "f"), "error: f: No space left"),
        (InputError("bad label"), "error: bad label"),
    ],
)
def test_run_app_prints_one_line_and_exits_1(capsys, error, line):
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_:
        utils.run_app(main)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


def test_run_app_ctrl_c_is_one_line_and_130(capsys, monkeypatch):
    app = typer.Typer()

    @app.command()
    def go():
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["go"])
    for target in (app, lambda: (_ for _ in ()).throw(KeyboardInterrupt)):
        with pytest.raises(SystemExit) as exit_:
            utils.run_app(target)
        assert exit_.value.code == 130
        assert capsys.readouterr().err.count("\n") == 1


def test_run_app_keeps_bugs_as_tracebacks():
    def main():
        raise OSError("an HDF5 library message")  # no errno: not a user's mistake

    with pytest.raises(OSError):
        utils.run_app(main)


# --------------------------------------------------------------------------------------------------
# stale temporary files


def test_only_stale_temp_files_of_this_naming_are_removed(tmp_path):
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    owner = utils._temp_owner().rsplit("-", 1)[0]
    stale = tmp_path / f".a|b.hdf5.{owner}-{dead.pid}.k2_x9.tmp"
    live = tmp_path / f".a|b.hdf5.{owner}-{os.getpid()}.abc.tmp"
    other_host = tmp_path / f".c.hdf5.elsewhere-{dead.pid}.abc.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for path in (stale, live, other_host, unrelated):
        path.write_text("x")
    assert utils.remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, other_host, unrelated)
    )
    with utils.atomic_path(tmp_path / "x.bin") as tmp:
        assert utils.remove_stale_temp_files(tmp_path) == [] and tmp.exists()  # its writer lives


# --------------------------------------------------------------------------------------------------
# the two writers


def test_generate_scenes_into_an_existing_file_is_one_line(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep me")
    result = run_script("generate_scenes.py", "dataset", target, "--num-scenes", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {target}: already exists and is not a folder"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_generate_relevancy_on_nothing_says_so(tmp_path, content):
    if content:
        (tmp_path / content).write_text("x")
    result = run_script("generate_relevancy.py", "dataset", tmp_path, "--source", "oracle")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no scene .hdf5 files found under {tmp_path}"


def test_one_bad_scene_does_not_stop_the_others(tmp_path):
    good = [make_scene(tmp_path / f"0000{i}|r.hdf5", seed=i) for i in range(2)]
    bad = tmp_path / "00009|r.hdf5"
    bad.write_bytes(make_scene(tmp_path / "x.hdf5").read_bytes()[:300])  # truncated
    (tmp_path / "x.hdf5").unlink()
    before = digest(bad)
    result = run_script("generate_relevancy.py", "dataset", tmp_path, "--source", "oracle")
    assert result.returncode == 1
    assert "2 scenes processed, 0 skipped (already done), 1 failed" in result.stdout
    assert f"failed: {bad} is not a readable HDF5 file" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 scenes failed")
    assert digest(bad) == before
    for path in good:
        with h5py.File(path, "r") as scene:
            assert "data/saliencies" in scene
    stop = run_script(
        "generate_relevancy.py", "dataset", tmp_path, "--source", "oracle", "--stop-on-error"
    )
    assert stop.returncode == 1 and stop.stderr.strip().count("\n") == 0


# --------------------------------------------------------------------------------------------------
# SIGKILL mid-write


def _temp_files(folder):
    return [e.name for e in os.scandir(folder) if e.name.endswith(".tmp")]


def _kill_when_writing(command, folder, timeout=90):
    """Start `command`, SIGKILL it while a temporary file exists; returns the process, or None if
    it finished first."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _temp_files(folder):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return process
        time.sleep(0.0005)
    process.kill()
    process.wait()
    return None


def _descendants(pid):
    """PIDs whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _all_readable(folder):
    for path in Path(folder).glob("*.hdf5"):
        with h5py.File(path, "r") as scene:
            for key in scene:
                if isinstance(scene[key], h5py.Dataset):
                    scene[key][()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_killed_multi_process_generate_scenes_leaves_no_workers_and_resumes(tmp_path):
    command = [PY, "generate_scenes.py", "dataset", str(tmp_path), "--preset", "small"]
    command += ["--num-scenes", "30", "--num-processes", "2", "--tsdf-size", "8"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    while process.poll() is None and not _temp_files(tmp_path):
        workers = _descendants(process.pid) or workers
        time.sleep(0.0005)
    assert process.poll() is None, "finished before a write was caught"
    workers = _descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert workers and not alive
    _all_readable(tmp_path)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not _temp_files(tmp_path)
    assert len(list(tmp_path.glob("*.hdf5"))) == 30
    assert (tmp_path / "ssc_split.pkl").exists() and (tmp_path / "vool_split.pkl").exists()
    _all_readable(tmp_path)


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_killed_generate_relevancy_leaves_readable_files_and_resumes(tmp_path):
    for i in range(6):
        make_scene(tmp_path / f"{i:05d}|r.hdf5", seed=i, size=(96, 128))
    command = [PY, "generate_relevancy.py", "dataset", str(tmp_path), "--source", "oracle"]
    killed = None
    for _ in range(5):  # the writes are short: try until one is caught mid-write
        killed = _kill_when_writing([*command, "--replace"], tmp_path)
        if killed is not None and _temp_files(tmp_path):
            break
    assert killed is not None and _temp_files(tmp_path), "no run was caught mid-write"
    _all_readable(tmp_path)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "removed" in result.stdout and not _temp_files(tmp_path)
    for path in tmp_path.glob("*.hdf5"):
        with h5py.File(path, "r") as scene:
            assert "data/saliencies" in scene


# --------------------------------------------------------------------------------------------------
# errors raised in a DataLoader worker


def _raised_in_a_worker(error: Exception) -> Exception:
    """The exception torch re-raises in the main process for `error` raised in worker 0."""
    from torch._utils import ExceptionWrapper

    try:
        try:
            raise error
        except Exception:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    except Exception as rewrapped:
        return rewrapped


@pytest.mark.parametrize(
    "error, line",
    [
        (
            InputError("/d/s.hdf5: missing key 'data/tsdf'"),
            "error: /d/s.hdf5: missing key 'data/tsdf'",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/s.hdf5"),
            "error: /d/s.hdf5: no such file or folder (is its parent missing?)",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/d"), "error: /d: Permission denied"),
    ],
)
def test_run_app_prints_a_workers_error_as_its_own_line(capsys, error, line):
    rewrapped = _raised_in_a_worker(error)
    assert str(rewrapped).startswith("Caught ") and "Traceback" in str(rewrapped)

    def main():
        raise rewrapped

    with pytest.raises(SystemExit) as exit_:
        utils.run_app(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == line + "\n"


def test_a_workers_bug_keeps_its_traceback():
    rewrapped = _raised_in_a_worker(OSError("an HDF5 library message"))
    with pytest.raises(OSError, match="Caught OSError in DataLoader worker process 0"):
        utils.run_app(lambda: (_ for _ in ()).throw(rewrapped))


def test_generate_scenes_workers_leave_ctrl_c_to_their_parent():
    with generate_scenes.worker_pool(2) as pool:
        masks = pool.starmap(signal.pthread_sigmask, [(signal.SIG_BLOCK, [])] * 4)
    assert all(signal.SIGINT in mask for mask in masks)  # blocked from their start
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # not the parent's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_ctrl_c_while_generate_scenes_workers_import_is_one_line(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group, workers still importing included:
    one line from the parent, no worker's traceback."""
    command = [PY, "generate_scenes.py", "dataset", str(tmp_path), "--preset", "small"]
    command += ["--num-scenes", "30", "--num-processes", "2"]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_descendants(process.pid)) < 3 and process.poll() is None:  # 2 and the tracker
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.01)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # the workers are importing (seconds)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip() and "scenes:" not in line]
    assert process.returncode == 130
    assert lines == ["interrupted: stopped before the end (finished files are complete)"], err
