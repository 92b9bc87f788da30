"""Scene pickles from your own RGB-D frame: round trip to the millimetre, and one line per bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import frames
import geometry
import visualize
from utils import InputError

H, W = 48, 64
K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])
# a level camera 1.2 m up at x = -1.5, looking along +x (z-up world): OpenCV axes in world columns
POSE = np.array([[0.0, 0, 1, -1.5], [-1, 0, 0, 0], [0, -1, 0, 1.2], [0, 0, 0, 1]])


def slanted_depth() -> np.ndarray:
    """Metric depth of a slanted wall, exactly representable in millimetres."""
    v, u = np.mgrid[:H, :W]
    return (1500 + 5 * u + 3 * v).astype(np.float32) / 1000


def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_inputs(folder, depth_m=None):
    Image.fromarray(rgb()).save(folder / "color.png")
    depth_mm = np.round((slanted_depth() if depth_m is None else depth_m) * 1000).astype(np.uint16)
    Image.fromarray(depth_mm).save(folder / "depth.png")  # 16-bit PNG in millimetres
    np.savetxt(folder / "pose.txt", POSE)
    return folder / "color.png", folder / "depth.png", folder / "pose.txt"


def test_round_trip_through_the_command(tmp_path):
    color, depth, pose = write_inputs(tmp_path)
    out = tmp_path / "mine.pkl"
    result = CliRunner().invoke(
        visualize.app,
        ["rgbd-scene", str(color), str(depth), str(out), "--intrinsics", "60", "60", "31.5",
         "23.5", "--pose", str(pose), "--classes", "wall", "--descriptions", "mug|on|table"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = frames.read_scene_pickle(out)
    assert frame.rgb.dtype == np.uint8 and np.array_equal(frame.rgb, rgb())
    assert frame.classes == ["wall"] and frame.descriptions == [("mug", "on", "table")]
    # independent back-projection: pixel (v, u) at depth d -> camera ((u-cx)d/f, (v-cy)d/f, d)
    v, u = np.mgrid[:H, :W]
    d = slanted_depth()
    cam = np.stack([(u - 31.5) * d / 60, (v - 23.5) * d / 60, d], -1).reshape(-1, 3)
    world = cam @ POSE[:3, :3].T + POSE[:3, 3]
    assert np.abs(frame.points() - world).max() < 1e-3  # within a millimetre
    # z-up: rows further down the image are lower in the world
    assert frame.points()[-1, 2] < frame.points()[0, 2]


def test_resize_scales_intrinsics():
    frame, _ = frames.build_frame(rgb(), slanted_depth(), K, POSE, ["wall"], size=(32, 24))
    assert frame.shape == (24, 32)
    np.testing.assert_allclose(frame.cam_intr[[0, 1, 0, 1], [0, 1, 2, 2]], [30, 30, 15.5, 11.5])
    # the same wall seen at half resolution: centre pixel back-projects to the same point
    full = geometry.backproject(slanted_depth(), K, POSE).reshape(H, W, 3)
    half = frame.points().reshape(24, 32, 3)
    assert np.abs(half[12, 16] - full[24:26, 32:34].mean((0, 1))).max() < 0.01


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(depth=np.ones((H, W + 1), np.float32)), "colour is 64x48 but depth is 65x48"),
        (dict(pose=np.diag([1.0, 1, 2, 1])), "the pose is not rigid"),
        (dict(pose=np.diag([1.0, 1, -1, 1])), "the pose is not rigid"),
        (dict(intrinsics=[60, 60, 200, 23.5]), "do not fit the 64x48 image"),
        (dict(intrinsics=[-60, 60, 31.5, 23.5]), "focal lengths must be positive"),
        (dict(depth=np.full((H, W), np.nan, np.float32)), "no pixel has a depth reading"),
        (dict(classes=[], descriptions=[]), "at least one class or description"),
        (dict(descriptions=["mug|under|table"]), "unknown relation 'under'"),
    ],
)
def test_bad_inputs_one_line(change, message):
    kwargs = dict(rgb=rgb(), depth=slanted_depth(), intrinsics=K, pose=POSE, classes=["wall"])
    kwargs.update(change)
    with pytest.raises(InputError, match=message) as error:
        frames.build_frame(**kwargs)
    assert "\n" not in str(error.value)


def test_missing_depth_is_ignored_and_said():
    depth = slanted_depth()
    depth[:, : W * 3 // 4] = np.nan
    frame, notes = frames.build_frame(rgb(), depth, K, POSE, ["wall"])
    assert frame.depth[0, 0] == 0 and frame.valid().sum() == H * (W - W * 3 // 4)
    assert any("75% of the pixels have no depth" in n for n in notes)


def test_scene_outside_bounds_is_said_and_centred():
    far = POSE.copy()
    far[:3, 3] = [5.0, 5.0, 1.2]
    _, notes = frames.build_frame(rgb(), slanted_depth(), K, far, ["wall"])
    assert any(
        "only 0% of the points lie inside scene_bounds" in n and "--center" in n for n in notes
    )
    frame, notes = frames.build_frame(rgb(), slanted_depth(), K, far, ["wall"], center=True)
    inside = geometry.in_bounds(frame.points(), geometry.THOR_SCENE_BOUNDS).mean()
    assert inside > 0.9 and any("centred" in n for n in notes)
    frames.check_pose(frame.cam_extr, "centred pose")  # still rigid


# An ARKit / OpenGL camera (x right, y up, z backward) in a y-up world, at height 0.8 above
# (x, z) = (-1.5, 0), looking level along world +x: its columns are right = +z, up = +y, back = -x.
ARKIT_POSE = np.array([[0.0, 0, -1, -1.5], [0, 1, 0, 0.8], [1, 0, 0, 0], [0, 0, 0, 1]])
# The same camera in OpenCV axes (x right, y down, z forward) in the z-up world of the scene files
# (y-up -> z-up is +90 degrees about x: (x, y, z) -> (x, -z, y)): at (-1.5, 0, 0.8), forward +x,
# right -y, down -z. It is the generator's camera without its 0.6 scale.
OPENCV_Z_UP = np.array([[0.0, 0, 1, -1.5], [-1, 0, 0, 0], [0, -1, 0, 0.8], [0, 0, 0, 1]])


def test_pose_conventions_on_a_literal_arkit_pose():
    converted = frames.y_up_to_z_up(frames.opengl_to_opencv(ARKIT_POSE))
    np.testing.assert_allclose(converted, OPENCV_Z_UP, atol=1e-12)
    position, right, down, forward = converted[:3, 3], *converted[:3, :3].T
    np.testing.assert_allclose(position, [-1.5, 0, 0.8])  # the height stays the height
    np.testing.assert_allclose(forward, [1, 0, 0])  # still looking level along +x
    np.testing.assert_allclose(down, [0, 0, -1])  # image rows go down the world
    np.testing.assert_allclose(right, [0, -1, 0])
    # a y-up camera 1.6 up looking down the y-up world's -z (ARKit's start): forward becomes +y
    start = np.eye(4)
    start[:3, 3] = (0.5, 1.6, 2.0)
    converted = frames.y_up_to_z_up(frames.opengl_to_opencv(start))
    np.testing.assert_allclose(converted[:3, 3], [0.5, -2.0, 1.6])
    np.testing.assert_allclose(converted[:3, 2], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(converted[:3, 1], [0, 0, -1], atol=1e-12)


def test_rgbd_scene_with_opengl_camera_y_up_and_depth_scale(tmp_path):
    """The three flags on a literal ARKit pose and depth in tenths of a millimetre: the stored pose
    is OPENCV_Z_UP and the points are the independent back-projection through it."""
    color, _, _ = write_inputs(tmp_path)
    Image.fromarray(np.round(slanted_depth() * 10000).astype(np.uint16)).save(tmp_path / "d.png")
    np.savetxt(tmp_path / "arkit.txt", ARKIT_POSE)
    out = tmp_path / "mine.pkl"
    result = CliRunner().invoke(
        visualize.app,
        ["rgbd-scene", str(color), str(tmp_path / "d.png"), str(out), "--intrinsics", "60", "60",
         "31.5", "23.5", "--pose", str(tmp_path / "arkit.txt"), "--opengl-camera", "--y-up",
         "--depth-scale", "0.0001", "--classes", "wall"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = frames.read_scene_pickle(out)
    np.testing.assert_allclose(frame.cam_extr, OPENCV_Z_UP, atol=1e-9)
    np.testing.assert_allclose(frame.depth, slanted_depth(), atol=1e-6)
    v, u = np.mgrid[:H, :W]
    d = slanted_depth()
    cam = np.stack([(u - 31.5) * d / 60, (v - 23.5) * d / 60, d], -1).reshape(-1, 3)
    world = cam @ OPENCV_Z_UP[:3, :3].T + OPENCV_Z_UP[:3, 3]
    assert np.abs(frame.points() - world).max() < 1e-5
    centre = frame.points()[(H // 2) * W + W // 2]
    assert centre[0] > -1.5 and abs(centre[2] - 0.8) < 0.02  # in front of the camera, at its height


def test_scene_pickle_errors(tmp_path):
    path = tmp_path / "bad.pkl"
    frames.write_scene_pickle(frames.Frame(rgb(), slanted_depth(), K, POSE, ["wall"]), path)
    assert frames.read_scene_pickle(path).classes == ["wall"]
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"rgb": rgb(), "depth": slanted_depth()}, f)
    with pytest.raises(InputError, match="lacks cam_intr, cam_extr"):
        frames.read_scene_pickle(path)
    with pytest.raises(InputError, match="not found"):
        frames.read_scene_pickle(tmp_path / "missing.pkl")
