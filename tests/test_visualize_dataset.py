"""visualize.py's inference on a dataset scene file (stored oracle relevancy, ground truth beside the
prediction) and visualize's one-line errors for bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from test_visualize import REPO, invoke, tiny_checkpoint

import comparisons
import dataset
import generate_relevancy
import generate_scenes
import geometry
import inference
import options
import render
import scenes
import utils
from scene_file import SceneFile
from utils import InputError

GRID = 16
NO_CLIP = ["--model", "no-such-model", "--device", "cpu"]  # proves that CLIP is never loaded


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset_scene")
    generate_scenes.generate_dataset(root, [2], scenes.PRESETS["small"])
    generate_relevancy.dataset(root, source="oracle", configs=["ours"])
    return next(root.glob("*.hdf5"))


# What an earlier run left in the scene's folder: OVSSC outputs (removed by a new OVSSC run), VOOL
# ones and a user's file (kept), and a temporary file of a killed writer (removed)
EARLIER_OVSSC = ("sofa.obj", "completion.mp4", "completion.png", "relevancies.png")
KEPT = ("mug|on|table.ply", "mug|on|table.mp4", "localization.npz", "notes.txt")


def dead_writers_temp(folder, name: str):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = folder / f".{name}.{utils._temp_owner().rsplit('-', 1)[0]}-{dead.pid}.x1.tmp"
    path.write_text("partial")
    return path


@pytest.fixture(scope="module")
def ovssc_out(scene_path, tmp_path_factory):
    """(folder, args, output) of ovssc-inference into a folder an earlier run wrote to."""
    root = tmp_path_factory.mktemp("ovssc_hdf5")
    ckpt = tiny_checkpoint(root / "ovssc", "ovssc")
    out = root / scene_path.stem
    out.mkdir()
    for name in (*EARLIER_OVSSC, *KEPT):
        (out / name).write_text("earlier run")
    stale = dead_writers_temp(out, "box.obj")
    result = invoke(
        "ovssc-inference", scene_path, ckpt, "--dump-path", root, "--grid-size", GRID, *NO_CLIP
    )
    return out, options.load_args(root / "ovssc" / "args.pkl"), (result.output, stale)


def test_a_rerun_leaves_only_its_own_outputs(ovssc_out):
    out, _, (output, stale) = ovssc_out
    lines = output.splitlines()
    assert f"removed {stale.name}, left by an interrupted run" in lines and not stale.exists()
    assert (
        f"removed an earlier ovssc run's 4 files from {out} (completion.mp4, completion.png, "
        "relevancies.png, sofa.obj)"
    ) in lines
    assert all((out / name).read_text() == "earlier run" for name in KEPT)  # VOOL's and the user's
    assert not (out / "sofa.obj").exists() and not (out / "completion.mp4").exists()
    written = {p.name for p in out.iterdir()} - set(KEPT)
    assert "completion.npz" in written and "completion_vs_gt.png" in written
    assert all(p.suffix in (".obj", ".npz", ".png") for p in map(out.joinpath, written))


def test_a_killed_visualize_takes_its_encoder_along_and_the_next_run_cleans_up(tmp_path):
    """kill -9 while the mp4 is being encoded: ffmpeg ends with it (before, it went on and
    finished the temporary file); the next run removes the temporary files, one line each."""
    import trimesh

    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).export(tmp_path / "box.obj")
    command = [sys.executable, "visualize.py", "ovssc-visualize", str(tmp_path)]
    process = subprocess.Popen(
        [*command, "--num-frames", "100000", "--size", "64"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while not [p for p in tmp_path.glob(".completion.mp4.*.tmp") if p.stat().st_size > 0]:
            assert process.poll() is None and time.monotonic() < deadline, "no encoding caught"
            time.sleep(0.005)
        time.sleep(0.3)  # some frames in the encoder
    finally:
        process.kill()
        process.wait()
    temp = next(tmp_path.glob(".completion.mp4.*.tmp"))
    encoders = [p for p in Path("/proc").glob("[0-9]*") if temp.name in read_cmdline(p)]
    deadline = time.monotonic() + 5
    while any(p.exists() for p in encoders) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(p.exists() for p in encoders), "ffmpeg outlived visualize"
    assert b"moov" not in temp.read_bytes()  # the encoder never finished the file
    result = invoke("ovssc-visualize", tmp_path, "--num-frames", 2, "--size", 32)
    assert f"removed {temp.name}, left by an interrupted run" in result.output.splitlines()
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "completion.mp4").is_file()


def read_cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_grid_logits_with_every_input_point():
    """num_input_pts -1 (every point): each chunk sees all input points."""
    seen = []

    def make_batch(index):
        seen.append(index)
        return {}

    logits = inference.grid_logits(
        lambda output_xyz_pts: output_xyz_pts[..., 0], make_batch,
        np.arange(15, dtype=np.float32).reshape(5, 3), 7, -1, np.random.default_rng(0),
        torch.device("cpu"), chunk=2,
    )  # fmt: skip
    assert len(seen) == 3 and all(np.array_equal(i, np.arange(7)) for i in seen)
    np.testing.assert_array_equal(logits, [0, 3, 6, 9, 12])


def truth_points(scene_path, bounds):
    with SceneFile(scene_path) as scene:
        xyz, objid = scene.ground_truth()
        classes = scene.object_classes()
    inside = geometry.in_bounds(xyz, bounds)
    return xyz[inside], objid[inside].astype(int), classes


def nearest(points, queries):
    """Index of each query's nearest point, brute force in numpy."""
    return np.concatenate(
        [
            np.argmin(((chunk[:, None] - points[None]) ** 2).sum(-1), axis=1)
            for chunk in np.array_split(queries, 64)
        ]
    )


def test_ovssc_hdf5_ground_truth(scene_path, ovssc_out):
    out, args, _ = ovssc_out
    data = np.load(out / "completion.npz")
    classes = list(data["classes"])
    xyz, objid, names = truth_points(scene_path, args.scene_bounds)
    with SceneFile(scene_path) as scene:  # the dataset's evaluation classes, recomputed
        seg_ids = set(np.unique(scene.segmentation()).astype(int)) - {-1}
        intr, pose = scene.camera()
        depth = scene.depth()
        all_xyz, all_ids = scene.ground_truth()
    frustum = geometry.in_frustum(all_xyz, intr, pose, depth.shape)
    visible = seg_ids & set(np.unique(all_ids[frustum]).astype(int))
    assert classes == sorted({names[i] for i in visible} - dataset.NOT_CLASSES)
    grid = inference.query_grid(args.scene_bounds, GRID)
    class_of_point = np.array([classes.index(n) if n in classes else -1 for n in names])[objid]
    expected = class_of_point[nearest(xyz, grid)].reshape((GRID,) * 3)
    frame = inference.Frame(depth.astype(np.uint8)[..., None].repeat(3, 2), depth, intr, pose)
    keep = inference.observed_mask(frame, args.scene_bounds, GRID, grid)
    keep[[0, -1]] = keep[:, [0, -1]] = keep[:, :, [0, -1]] = False
    expected[~keep] = -1
    np.testing.assert_array_equal(data["gt_labels"], expected)
    assert (expected >= 0).sum() > 20
    # hidden: more than one pitch behind the observed depth at the voxel's pixel
    labelled = expected.reshape(-1) >= 0
    camera = (np.linalg.inv(pose) @ np.c_[grid, np.ones(len(grid))].T).T[labelled]
    cols = np.clip((camera[:, 0] / camera[:, 2] * intr[0, 0] + intr[0, 2]).astype(int), 0, 127)
    rows = np.clip((camera[:, 1] / camera[:, 2] * intr[1, 1] + intr[1, 2]).astype(int), 0, 127)
    pitch = inference.grid_pitch(args.scene_bounds, GRID).max()
    surface = depth[rows, cols]
    hidden = (surface <= 0) | (camera[:, 2] > surface + pitch)
    np.testing.assert_array_equal(data["gt_hidden"].reshape(-1)[labelled], hidden)
    assert not data["gt_hidden"].reshape(-1)[~labelled].any()
    assert 0 < hidden.sum() < len(hidden)
    picture = imageio.imread(out / "completion_vs_gt.png")
    size = comparisons.COMPARISON_SIZE  # two rows of two panels, the legend at the right
    assert picture.shape[0] == 2 * size + 4 and picture.shape[1] > 2 * size + 4
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20


def test_vool_hdf5_ground_truth(scene_path, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "vool", "vool")
    invoke(
        "vool-inference", scene_path, ckpt, "--dump-path", tmp_path, "--grid-size", GRID, *NO_CLIP
    )
    data = np.load(tmp_path / scene_path.stem / "localization.npz")
    args = options.load_args(tmp_path / "vool" / "args.pkl")
    with SceneFile(scene_path) as scene:
        stored = scene.descriptions()
    triples = zip(
        stored["target_obj_name"], stored["spatial_relation_name"], stored["reference_obj_name"]
    )
    assert list(data["descriptions"]) == [inference.description_name(*t) for t in triples]
    xyz, objid, _ = truth_points(scene_path, args.scene_bounds)
    for k, target in enumerate(stored["target_obj_id"]):
        got = data["gt_xyz"][data["gt_description_index"] == k]
        want = xyz[objid == target]
        assert len(got) == len(want) > 0
        np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    picture = imageio.imread(tmp_path / scene_path.stem / "localization_vs_gt.png")
    shown = min(len(data["descriptions"]), comparisons.SHOWN_DESCRIPTIONS)
    pair_width = 2 * comparisons.COMPARISON_SIZE + 4  # prediction | ground truth, 12-pixel gutters
    assert picture.shape[1] == min(shown, comparisons.PAIRS_PER_ROW) * (pair_width + 12) - 12


def test_shown_descriptions_put_hidden_targets_first():
    names = [
        "the mug on the table",
        "the pen in front of the box",  # "in front of" is not "in"
        "the apple in the fridge",
        "the cup on the left of the sink",
        "the safe behind the cabinet",
        "the book on the shelf",
        "the egg in the bowl",
        "the vase on the right of the lamp",
    ]
    assert comparisons.description_relation(names[1]) == "in front of"
    assert comparisons.description_relation("a sentence with no relation") is None
    assert comparisons.shown_descriptions(names) == [2, 4, 6, 0, 1, 3]
    assert comparisons.shown_descriptions(names[:2], limit=6) == [0, 1]


def test_zoom_box_frames_every_point():
    rng = np.random.default_rng(0)
    truth = rng.uniform([0.2, -0.4, 0.1], [0.5, -0.1, 0.3], (50, 3))
    predicted = rng.uniform([-0.6, 0.3, 0.8], [-0.5, 0.4, 0.9], (7, 3))
    box = comparisons.zoom_box(predicted, truth, margin=0.1)
    np.testing.assert_allclose(box, [[-0.7, -0.5, 0.1 - 0.1], [0.6, 0.5, 1.0]], atol=0.03)
    both = np.concatenate([truth, predicted])
    assert np.all((both > box[0]) & (both < box[1]))
    view = comparisons.PointView.framing(box, azimuth=0.7, size=100)
    cols, rows, depth = view.project(both)
    assert np.all((cols >= 3) & (cols < 97) & (rows >= 3) & (rows < 97) & (depth > 0))
    corners = np.array([[x, y, z] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
    cols, rows, _ = view.project(corners)  # the box fills 94% of the picture's larger side
    assert max(np.ptp(cols), np.ptp(rows)) == pytest.approx(94)


def test_striped_shape_has_light_bands():
    cube = render.cubes_shape(np.zeros((1, 3)), np.array([[200, 0, 0]]), 1.0)
    plain = render.Turntable([cube]).frame(0.3, 120)
    cube.striped = True
    striped = render.Turntable([cube]).frame(0.3, 120)
    red = plain[..., 0].astype(int) > plain[..., 1].astype(int) + 50  # the cube, in both views
    assert red.sum() > 1000
    light = striped[red].min(1) > 150  # banded pixels: near white
    assert 0.3 < light.mean() < 0.7
    np.testing.assert_array_equal(striped[~red], plain[~red])


def broken_copy(scene_path, tmp_path, *keys):
    copy = tmp_path / scene_path.name
    shutil.copyfile(scene_path, copy)
    with h5py.File(copy, "a") as f:
        for key in keys:
            del f[key]
    return copy


def test_hdf5_without_relevancy_or_ground_truth(scene_path, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ovssc", "ovssc")
    common = ["--dump-path", tmp_path / "vis", *NO_CLIP]
    no_maps = broken_copy(scene_path, tmp_path, "data/saliencies")
    message = (
        f"{no_maps} has no stored relevancy for rgb|ours (the checkpoint's saliency_config); run "
        f"`python generate_relevancy.py dataset {tmp_path}` (--source oracle needs no CLIP weights)"
    )
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        invoke("ovssc-inference", no_maps, ckpt, *common)
    no_truth = broken_copy(scene_path, tmp_path, "data/full_objid_pts")
    with pytest.raises(InputError, match=r"has no ground truth \(full_xyz_pts / full_objid_pts\)"):
        invoke("ovssc-inference", no_truth, ckpt, *common)
    assert not (tmp_path / "vis").exists()  # nothing written


# --------------------------------------------------------------------------------------------------
# visualize's bad inputs


def test_visualize_folder_without_triangles(tmp_path):
    (tmp_path / "empty.obj").write_text("")
    (tmp_path / "notes.obj").write_text("this is not a mesh\n")
    with pytest.raises(
        InputError, match=f"^nothing to render in {re.escape(str(tmp_path))}: its 2 .obj"
    ):
        invoke("ovssc-visualize", tmp_path)


def test_a_folder_as_the_scene_or_the_checkpoint_is_named(scene_path, tmp_path):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    with pytest.raises(InputError) as error:
        invoke("ovssc-inference", tmp_path, ckpt / "x.pth", *NO_CLIP)
    assert str(error.value) == (
        f"{tmp_path} is a folder: give a scene pickle (.pkl) or a dataset scene (.hdf5)"
    )
    with pytest.raises(InputError) as error:
        invoke("ovssc-inference", scene_path, ckpt, *NO_CLIP)
    assert str(error.value) == (
        f"checkpoint {ckpt} is a folder: give the .pth file in it (e.g. {ckpt / 'latest.pth'}), "
        "with args.pkl beside it"
    )


def test_text_file_named_png(tmp_path):
    fake = tmp_path / "color.png"
    fake.write_text("not pixels")
    with pytest.raises(InputError, match=f"^{re.escape(str(fake))} is not an image \\("):
        invoke(
            "rgbd-scene",
            fake,
            fake,
            tmp_path / "s.pkl",
            "--intrinsics",
            1,
            1,
            1,
            1,
            "--classes",
            "a",
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ovssc-visualize", ".", "--num-frames", "0"], "--num-frames must be at least 1, got 0"),
        (["vool-visualize", ".", "--size", "-3"], "--size must be at least 1, got -3"),
        (
            ["ovssc-inference", "x.pkl", "c.pth", "--grid-size", "0"],
            "--grid-size must be at least 1, got 0",
        ),
    ],
)
def test_numeric_options_below_one(argv, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        invoke(*argv)


def test_all_negative_depth_is_named(tmp_path):
    rgb = tmp_path / "c.png"
    imageio.imwrite(rgb, np.zeros((8, 8, 3), np.uint8))
    depth = tmp_path / "d.npy"
    np.save(depth, np.full((8, 8), -1.5, np.float32))
    with pytest.raises(
        InputError, match="every depth reading is negative or missing \\(min -1.5\\)"
    ):
        invoke(
            "rgbd-scene",
            rgb,
            depth,
            tmp_path / "s.pkl",
            "--intrinsics",
            4,
            4,
            4,
            4,
            "--classes",
            "a",
        )
