"""visualize.py end to end on small random networks and random-weight CLIP, and checks of the files.

The real captured scene is the bundled scene_files/arkit_vn_poster.pkl, the original project's
sample frame (scene_files/README.md). Sizes are small (24^3 query grid, 8 frames of 96 px) so that
the module runs in about a minute on two cores; the same code runs the original's 240^3 / 220
frames / 1024 px defaults.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh
from relevancy_models import TINY_224, TINY_512
from typer.testing import CliRunner

import checkpoint
import frames
import geometry
import inference
import inference_run
import net
import options
import visualize

REPO = Path(__file__).resolve().parents[1]
ARKIT = REPO / "scene_files" / "arkit_vn_poster.pkl"
GRID = 24
FRAMES, SIZE = 8, 96
CLIP = ["--model", TINY_224, "--pretrained", "none", "--device", "cpu"]


def tiny_checkpoint(folder: Path, task: str, approach: str = "semantic_abstraction") -> Path:
    """A randomly initialised small network saved like a training run (ckpt + args.pkl)."""
    args = options.defaults()
    args.voxel_shape = [16, 16, 16]
    args.unet_num_levels, args.unet_f_maps = 3, 8
    args.unet_num_groups, args.unet_num_channels = 4, 8
    args.num_input_pts = 2000
    args.approach, args.task = approach, task
    args = options.finalize(args)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(
        folder / "ckpt.pth", net.build_network(task, approach, args), None, 1
    )
    options.save_args(args, folder)
    return folder / "ckpt.pth"


def invoke(*argv: str):
    result = CliRunner().invoke(visualize.app, [str(a) for a in argv])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def check_video(path: Path, frames_expected: int, size: int) -> None:
    reader = imageio.get_reader(path, format="FFMPEG")
    count = sum(1 for _ in reader)
    assert count == frames_expected
    assert tuple(reader.get_meta_data()["size"]) == (size, size)
    reader.close()


@pytest.fixture(scope="module")
def arkit_outputs(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("vis")
    ovssc = tiny_checkpoint(root / "ovssc", "ovssc")
    vool = tiny_checkpoint(root / "vool", "vool")
    dump = root / "visualization"
    common = ["--dump-path", dump, "--grid-size", GRID, "--saliency-config", "fast", *CLIP]
    with pytest.MonkeyPatch.context() as patch:  # keep the raw logits the npz files come from
        for name in ("ovssc_labels", "vool_points"):
            patch.setattr(inference_run, name, recorder(getattr(inference_run, name), RAW[name]))
        invoke("ovssc-inference", ARKIT, ovssc, *common)
        invoke("vool-inference", ARKIT, vool, *common)
    out = dump / ARKIT.stem
    invoke("ovssc-visualize", out, "--num-frames", FRAMES, "--size", SIZE)
    invoke("vool-visualize", out, "--num-frames", FRAMES, "--size", SIZE)
    return out


RAW: dict[str, list] = {"ovssc_labels": [], "vool_points": []}


def recorder(function, calls: list):
    def record(*args):
        calls.append(args)
        return function(*args)

    return record


def test_ovssc_files(arkit_outputs):
    out = arkit_outputs
    assert (out / "relevancies.png").stat().st_size > 0
    check_video(out / "completion.mp4", FRAMES, SIZE)
    assert imageio.imread(out / "completion.png").shape == (SIZE, SIZE, 3)
    data = np.load(out / "completion.npz")
    classes = list(data["classes"])
    with open(ARKIT, "rb") as f:
        assert classes == pickle.load(f)["ovssc_obj_classes"]
    bounds = np.asarray(data["scene_bounds"])
    pitch = inference.grid_pitch(bounds, int(data["grid_size"]))
    assert np.all((data["probability"] > 0) & (data["probability"] < 1))
    meshes = sorted(out.glob("*.obj"))
    assert meshes, "random networks still fill part of the scene"
    for path in meshes:
        k = list(data["file_stems"]).index(path.stem)
        mesh = trimesh.load(path, force="mesh")
        assert mesh.is_watertight and mesh.volume > 0
        xyz = data["xyz"][data["label"] == k]
        # metres, in the scene frame: the mesh wraps the class's voxels (half a pitch of slack)
        assert np.all(mesh.bounds[0] <= xyz.min(0) + 1e-4)
        assert np.all(mesh.bounds[1] >= xyz.max(0) - 1e-4)
        assert np.all(mesh.bounds[0] >= bounds[0] - 1e-6) and np.all(mesh.bounds[1] <= bounds[1])
        # marching cubes at 0.5 on a 0/1 volume: the volume of the voxels, less the cut corners
        voxels = len(xyz) * np.prod(pitch)
        assert 0.2 * voxels < mesh.volume <= voxels * 1.01


def test_vool_files(arkit_outputs):
    out = arkit_outputs
    data = np.load(out / "localization.npz")
    assert len(data["descriptions"]) == 3
    for k, stem in enumerate(data["file_stems"]):
        cloud = trimesh.load(out / f"{stem}.ply")
        xyz = data["xyz"][data["description_index"] == k]
        assert len(cloud.vertices) == len(xyz) > 0
        np.testing.assert_allclose(cloud.vertices, xyz, atol=1e-4)
        logits = data["logit"][data["description_index"] == k]
        assert logits.max() - logits.min() <= inference.VOOL_MARGIN
        check_video(out / f"{stem}.mp4", FRAMES, SIZE)
    frame = frames.read_scene_pickle(ARKIT)
    inside = geometry.in_bounds(frame.points(), geometry.THOR_SCENE_BOUNDS).sum()
    scene = trimesh.load(out / "scene_rgb.ply")
    assert len(scene.vertices) == min(
        inside, inference_run.SCENE_CLOUD_POINTS
    )  # 42,225 (scene_files/README.md: 86%)


def test_generated_pickle_and_wrong_task(tmp_path, tiny_models):
    """Our generator's pickles run too; a VOOL checkpoint given to ovssc-inference is one line."""
    scene = REPO / "scene_files" / "procedural_00002.pkl"
    ovssc = tiny_checkpoint(tmp_path / "ovssc", "ovssc")
    dump = tmp_path / "vis"
    invoke(
        "ovssc-inference", scene, ovssc, "--dump-path", dump, "--grid-size", 16,
        "--saliency-config", "chefer_et_al", *CLIP,
    )  # fmt: skip
    assert (dump / scene.stem / "completion.npz").is_file()
    vool = tiny_checkpoint(tmp_path / "vool", "vool")
    with pytest.raises(visualize.InputError, match="vool checkpoint, not ovssc"):
        invoke("ovssc-inference", scene, vool, "--dump-path", dump, *CLIP)


@pytest.mark.parametrize(
    "task, approach",
    [("ovssc", "semantic_aware"), ("vool", "semantic_aware"), ("vool", "clip_spatial")],
)
def test_baseline_checkpoints_run_inference(tmp_path, tiny_models, task, approach):
    """Every approach's checkpoint runs, as args.pkl says (the original always built ours)."""
    scene = REPO / "scene_files" / "procedural_00002.pkl"
    ckpt = tiny_checkpoint(tmp_path / approach, task, approach)
    dump = tmp_path / "vis"
    clip = ["--model", TINY_512 if approach == "semantic_aware" else TINY_224, *CLIP[2:]]
    invoke(
        f"{task}-inference", scene, ckpt, "--dump-path", dump, "--grid-size", 12,
        "--saliency-config", "fast", *clip,
    )  # fmt: skip
    name = "completion" if task == "ovssc" else "localization"
    data = np.load(dump / scene.stem / f"{name}.npz")
    with open(scene, "rb") as f:
        rows = pickle.load(f)[f"{task}_obj_classes" if task == "ovssc" else "descriptions"]
    assert len(data["classes" if task == "ovssc" else "descriptions"]) == len(rows) > 0
    assert len(data["xyz"]) > 0


def test_semantic_aware_needs_512_d_text_features(tmp_path, tiny_models):
    scene = REPO / "scene_files" / "procedural_00002.pkl"
    ckpt = tiny_checkpoint(tmp_path / "aware", "ovssc", "semantic_aware")
    with pytest.raises(
        visualize.InputError, match="512-d CLIP text features, and this CLIP model gives 32-d"
    ):
        invoke("ovssc-inference", scene, ckpt, "--dump-path", tmp_path / "vis", *CLIP)


def test_safe_names():
    taken: set[str] = set()
    assert inference.safe_name("a/b: c?", taken) == "a_b_ c_"
    assert inference.safe_name("a/b: c?", taken) == "a_b_ c_ (2)"
    assert inference.safe_name("../x", None) == "_x"


def test_volume_mesh_is_metric():
    """A 6x6x6-voxel block on a 24^3 grid over [0, 2.3]^3 (pitch 0.1 m) meshes in metres."""
    occupied = np.zeros((24,) * 3, bool)
    occupied[5:11, 8:14, 2:8] = True
    bounds = np.array([[0.0, 0.0, 0.0], [2.3, 2.3, 2.3]])
    vertices, faces = inference.volume_mesh(occupied, bounds)
    mesh = trimesh.Trimesh(vertices, faces)
    assert mesh.is_watertight
    # the 0.5 level lies half a pitch outside the outer voxel centres
    np.testing.assert_allclose(mesh.bounds, [[0.45, 0.75, 0.15], [1.05, 1.35, 0.75]], atol=1e-6)
    assert 0.6**3 * 0.9 < mesh.volume <= 0.6**3


def test_relevancy_features_as_the_original():
    """x50 and the per-pixel mean over labels subtracted, at in-bounds pixels with depth
    (docs/method.md#visualization)."""
    frame = frames.read_scene_pickle(REPO / "scene_files" / "procedural_00002.pkl")
    labels = ["a", "b", "c"]
    maps = np.random.default_rng(0).random((3, *frame.shape)).astype(np.float32) * 0.02
    args = options.defaults()
    prepared = inference.prepare_inputs(frame, maps, labels, None, args, "ovssc")
    keep = frame.valid() & geometry.in_bounds(frame.points(), args.scene_bounds)
    expected = (maps - maps.mean(0)).reshape(3, -1)[:, keep] * 50
    for k, label in enumerate(labels):
        np.testing.assert_allclose(
            prepared.features[label][:, 0], expected[k], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(prepared.xyz, frame.points()[keep], atol=1e-5)


def test_ovssc_labels_are_the_argmax_where_a_logit_reaches_the_empty_cutoff(arkit_outputs):
    """completion.npz from the raw logits, recomputed (docs/method.md#visualization): each
    kept, non-border grid point whose best class logit is >= -3.0 has the argmax class; no other
    point is listed."""
    ((logits, keep),) = RAW["ovssc_labels"]
    grid = RAW["vool_points"][0][1]
    best, top = logits.max(0), logits.argmax(0)
    inner = np.zeros(keep.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    occupied = (best >= -3.0) & keep & inner
    assert 0 < occupied.sum() < occupied.size
    data = np.load(arkit_outputs / "completion.npz")
    np.testing.assert_array_equal(data["xyz"], grid[np.flatnonzero(occupied)])
    np.testing.assert_array_equal(data["label"], top[occupied])
    np.testing.assert_allclose(data["probability"], 1 / (1 + np.exp(-best[occupied])), rtol=1e-6)


def test_vool_keeps_every_point_within_the_margin_of_the_best(arkit_outputs):
    """localization.npz lists exactly the grid points whose logit > max - 0.15, per description."""
    data = np.load(arkit_outputs / "localization.npz")
    assert len(RAW["vool_points"]) == len(data["descriptions"])
    for k, (logits, grid) in enumerate(RAW["vool_points"]):
        kept = logits > logits.max() - 0.15
        mine = data["description_index"] == k
        np.testing.assert_array_equal(data["xyz"][mine], grid[kept])
        np.testing.assert_array_equal(data["logit"][mine], logits[kept])


def test_ovssc_labels_by_hand():
    """Two classes on a 3x3x3 grid whose centre is the only non-border voxel."""
    logits = np.full((2, 3, 3, 3), -5.0)
    logits[:, 1, 1, 1] = (-2.9, -3.5)  # one class at -2.9 >= -3.0: class 0
    keep = np.ones((3, 3, 3), bool)
    assert inference.ovssc_labels(logits.copy(), keep)[1, 1, 1] == 0
    logits[:, 1, 1, 1] = (-3.2, -3.1)  # every logit below -3.0: empty
    assert inference.ovssc_labels(logits.copy(), keep)[1, 1, 1] == -1
    logits[:, 1, 1, 1] = (1.0, 2.0)
    assert inference.ovssc_labels(logits.copy(), keep)[1, 1, 1] == 1
    assert inference.ovssc_labels(logits.copy(), ~keep)[1, 1, 1] == -1  # masked out
    labels = inference.ovssc_labels(np.full((2, 3, 3, 3), 4.0), keep)
    assert (labels == -1).sum() == 26  # the border is cleared


def test_vool_points_by_hand():
    logits = np.array([1.0, 0.9, 0.86, 0.85, 0.84, -3.0], np.float32)
    grid = np.arange(18, dtype=np.float32).reshape(6, 3)
    xyz, kept, colors = inference.vool_points(logits, grid)
    assert kept.tolist() == pytest.approx([1.0, 0.9, 0.86])  # > 1.0 - 0.15
    np.testing.assert_array_equal(xyz, grid[:3])
    assert colors.dtype == np.uint8 and colors.shape == (3, 3)
