"""`make demo`'s script: the whole pipeline end to end on a tiny setting, and a rerun reuses it."""

import os
import pickle
import subprocess
import sys

import imageio.v3 as iio
import pandas as pd
import trimesh
from conftest import REPO


def run_demo(out, *args):
    command = [
        sys.executable, str(REPO / "demo.py"), "--out", str(out), "--num-scenes", "12",
        "--train-minutes", "0.05", "--grid-size", "32", "--num-frames", "4", "--frame-size", "64",
        "--device", "cpu", *args,
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)


def test_demo_runs_every_stage_and_a_rerun_reuses_them(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "not CLIP" in result.stdout  # no weights here: the oracle notice is shown
    for task in ("ovssc", "vool"):
        with open(out / "models" / task / "args.pkl", "rb") as f:
            assert pickle.load(f).voxel_shape == [32, 32, 32]
        stats = pd.read_pickle(out / "models" / task / "latest_eval_stats.pkl")
        assert set(stats["split"]) == {
            "unseen_instances",
            "unseen_instances_dr",
            "unseen_instances_synonyms",
        }
        assert stats["cutoff"].nunique() == 25
    assert "OVSSC THOR" in result.stdout and "FULL VOOL THOR" in result.stdout
    scene = out / "visualization" / "procedural_00000"
    frames = iio.imread(scene / "completion.mp4")
    assert frames.shape[0] == 4 and frames.shape[1:3] == (64, 64)
    for mesh in scene.glob("*.obj"):
        assert len(trimesh.load(mesh, force="mesh").vertices) > 0
    assert (scene / "scene_rgb.ply").is_file() and (scene / "localization.npz").is_file()

    again = run_demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("1/6 scenes", "3/6 train OVSSC", "3/6 train VOOL", "4/6 evaluate OVSSC",
                  "6/6 visualize OVSSC", "6/6 render OVSSC", "6/6 visualize VOOL"):  # fmt: skip
        assert f"✓ {stage}: already done" in again.stdout, stage
