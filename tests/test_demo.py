"""`make demo`'s script: runs end to end, and stops with one line on a checkpoint of the wrong network."""

import os
import subprocess
import sys

from conftest import REPO

import net
from checkpoint import save_checkpoint


def run_demo(*args):
    command = [
        sys.executable,
        str(REPO / "demo.py"),
        "--num-input-pts",
        "2000",
        "--num-output-pts",
        "3000",
        *args,
    ]
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps table cells to the terminal width
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_demo_loads_checkpoints_and_prints_both_networks(tmp_path):
    save_checkpoint(tmp_path / "ovssc.pth", net.SemAbs3D(), None, epochs=7)
    result = run_demo("--ovssc-checkpoint", str(tmp_path / "ovssc.pth"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "ovssc.pth (epoch 7)" in result.stdout
    assert "35,403,969" in result.stdout and "35,407,633" in result.stdout
    assert result.stdout.count("[1, 1, 3000]") == 2


def test_demo_refuses_a_vool_checkpoint_for_ovssc(tmp_path):
    save_checkpoint(tmp_path / "vool.pth", net.SemAbsVOOL(), None, epochs=1)
    result = run_demo("--ovssc-checkpoint", str(tmp_path / "vool.pth"), "--device", "cpu")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert (
        lines[0].startswith("error: checkpoint")
        and "SemAbsVOOL state dict that does not fit SemAbs3D" in lines[0]
    )
