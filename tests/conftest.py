import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Untracked outputs and environments, skipped by `repository_files` when git is unavailable.
IGNORED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "outputs"}
IGNORED_DIRS |= {"visualization", "models", "dataset", "logs"}


def default_sigint() -> None:
    """preexec_fn of a subprocess that a test interrupts with SIGINT: the signal's default action,
    as a terminal's shell leaves it. A shell without job control (`make test &`, nohup, some CI
    runners) starts its background jobs with SIGINT ignored, children inherit that, and Python then
    installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def repository_files() -> list[str]:
    """The repository's files, relative to it: tracked ones and the untracked ones git would add
    (git ls-files), or, without git, every file minus environments, caches and ignored outputs."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        names = [name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in IGNORED_DIRS and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(root, f), REPO) for f in files]
    return sorted(name for name in names if (REPO / name).is_file())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Register the small random-weight open_clip ViTs of tests/relevancy_models.py."""
    from relevancy_models import register_tiny

    register_tiny(tmp_path_factory.mktemp("open_clip_configs"))
