"""Procedural scene generator (scenes.py, generate_scenes.py) and the camera geometry it uses
(geometry.py).
"""

import pickle

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import generate_scenes
import geometry
import scene_file
import scene_layout
import scenes
import vocab

SMALL = scenes.PRESETS["small"]
SEEDS = range(6)
RELATIONS = {"in", "on", "behind", "in front of", "on the left of", "on the right of"}


def pick_room(seed: int) -> str:
    """Seed s -> RandomState(s) -> room, uniform over the sorted room list
    (docs/data.md#how-a-view-is-made)."""
    return scene_layout.ROOMS[np.random.RandomState(seed).randint(len(scene_layout.ROOMS))]


@pytest.fixture(scope="module")
def generated():
    return {seed: scenes.generate_scene(seed, SMALL) for seed in SEEDS}


def test_thor_intrinsics_match_the_released_files():
    k = geometry.pinhole_intrinsics(896, 896)
    assert k[0, 0] == pytest.approx(533.9056094822062)
    assert (k[0, 2], k[1, 2]) == (448, 448)


def test_backproject_then_project_returns_pixels():
    rng = np.random.RandomState(0)
    depth = rng.uniform(0.5, 4.0, (6, 8))
    k = np.array([[7.0, 0, 3.0], [0, 9.0, 4.0], [0, 0, 1]])
    pose = scenes.CAMERA_POSE
    xyz = geometry.backproject(depth, k, pose)
    # hand check of pixel (row 2, column 5): camera ((5-3)d/7, (2-4)d/9, d), then the pose
    d = depth[2, 5]
    cam = np.array([(5 - 3) * d / 7, (2 - 4) * d / 9, d])
    np.testing.assert_allclose(xyz[2 * 8 + 5], pose[:3, :3] @ cam + pose[:3, 3])
    u, v, z = geometry.project(xyz, k, pose)
    rows, cols = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    np.testing.assert_allclose(u, cols.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(v, rows.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(z, depth.reshape(-1))


def test_frustum_is_continuous_and_half_open():
    k = np.array([[10.0, 0, 5.0], [0, 10.0, 5.0], [0, 0, 1]])
    eye = np.eye(4)
    # u = 10 x / z + 5: x = -0.5 -> u = 0 (in), x = 0.4999 -> u = 9.999 (in), x = 0.5 -> u = 10
    # (out)
    pts = np.array([[-0.5, 0, 1], [0.4999, 0, 1], [0.5, 0, 1], [0, 0, -1]])
    assert geometry.in_frustum(pts, k, eye, (10, 10)).tolist() == [True, True, False, False]


def test_grid_index_uses_n_minus_one():
    bounds = np.array([[0.0, 0, 0], [1.0, 1, 1]])
    pts = np.array([[0.0, 0.5, 1.0], [0.999, 0.2, 0.26]])
    # 4 cells: index = trunc(p * 3)
    assert geometry.grid_index(pts, bounds, (4, 4, 4)).tolist() == [[0, 1, 3], [2, 0, 0]]


def test_tsdf_of_a_flat_wall_by_hand():
    # camera at the origin looking along +z at a wall 1.0 away; voxels 0.1, trunc 0.5
    k = np.array([[2.0, 0, 2.0], [0, 2.0, 2.0], [0, 0, 1]])
    depth = np.full((4, 4), 1.0)
    bounds = np.array([[-0.05, -0.05, 0.0], [0.05, 0.05, 2.0]])
    values, corners = geometry.integrate_tsdf(depth, k, np.eye(4), bounds, (1, 1, 20))
    z = corners[:, 2]
    expected = np.where(
        z == 0, -1.0, np.where(1.0 - z >= -0.5, np.clip((1.0 - z) / 0.5, -1, 1), -1.0)
    )
    np.testing.assert_allclose(values.reshape(-1), expected, atol=1e-6)
    assert values.reshape(-1)[0] == -1  # z = 0 is not in front of the camera: stays "occupied"
    assert values.reshape(-1)[19] == -1  # beyond the truncation band


def test_generation_is_deterministic_and_sized(generated):
    again = scenes.generate_scene(3, SMALL)
    for key in ("rgb", "depth", "seg", "full_xyz_pts", "full_objid_pts"):
        np.testing.assert_array_equal(again[key], generated[3][key])
    s = generated[3]
    assert s["rgb"].shape == (128, 128, 3) and s["rgb"].dtype == np.uint8
    assert s["full_xyz_pts"].shape == (SMALL.num_output_pts, 3)
    assert geometry.in_bounds(s["full_xyz_pts"], geometry.THOR_SCENE_BOUNDS).all()
    assert s["tsdf_value_pts"].shape == (32**3,)
    assert np.all(s["depth"] > 0)  # the room is closed: every ray hits something


def test_depth_pixel_lies_on_the_surface_its_segment_names(generated):
    for s in generated.values():
        objects = s["objects"]
        xyz = geometry.backproject(s["depth"], s["cam_intr"], s["cam_pose"])
        seg = s["seg"].reshape(-1)
        cam_centre = s["cam_pose"][:3, 3]
        rays = (xyz - cam_centre) / np.linalg.norm(xyz - cam_centre, axis=1, keepdims=True)
        for pixel in np.random.RandomState(0).choice(len(seg), 300, replace=False):
            obj = objects[seg[pixel]]
            just_inside = obj.contains(xyz[pixel : pixel + 1] + 1e-4 * rays[pixel])
            just_outside = obj.contains(xyz[pixel : pixel + 1] - 1e-3 * rays[pixel])
            assert just_inside[0] and not just_outside[0], (obj.name, pixel)


def test_hidden_objects_have_points_but_no_pixels(generated):
    hidden = []
    for s in generated.values():
        for index, obj in enumerate(s["objects"]):
            if not np.any(s["seg"] == index):
                assert obj.contains(s["full_xyz_pts"]).any(), (
                    obj.name
                )  # its volume is still sampled
                hidden.append(obj.name)
    assert hidden, "no scene hides an object"


AXES = {
    "behind": (-1, 0, 0),
    "in front of": (1, 0, 0),
    "on the right of": (0, 1, 0),
    "on the left of": (0, -1, 0),
}


def test_geometric_descriptions_have_a_reference_in_their_direction(generated):
    """Every behind / in front of / left / right description of a visible target has a visible
    instance of its reference class within the distance gate whose direction (reference centroid
    minus target centroid) passes the relation's 0.6 test (rule C of
    docs/method.md#vool-ground-truth). Hidden behind targets lie farther from the camera than that
    reference class."""
    counts = dict.fromkeys(AXES, 0)
    for s in generated.values():
        xyz, objid, seg = s["full_xyz_pts"], s["full_objid_pts"], s["seg"]
        classes = [c.split("[")[0] for c in s["objid_to_class"]]
        for d in s["descriptions"]:
            relation, target_id = d["spatial_relation_name"], d["target_obj_id"]
            if relation not in AXES:
                continue
            target = xyz[objid == target_id]
            refs = [
                xyz[objid == i]
                for i, c in enumerate(classes)
                if c == d["reference_obj_name"] and np.any(seg == i)
            ]
            assert refs, d
            if not np.any(seg == target_id):  # a hidden behind target: the rewritten region
                assert relation == "behind", d
                z_target = geometry.project(target, s["cam_intr"], s["cam_pose"])[2]
                z_refs = [geometry.project(r, s["cam_intr"], s["cam_pose"])[2] for r in refs]
                assert np.median(z_target) > min(np.median(z) for z in z_refs), d
                counts[relation] += 1
                continue
            dots = []
            for ref in refs:
                delta = ref.mean(0) - target.mean(0)
                extent = (ref[:, :2].max(0) - ref[:, :2].min(0)).max()
                if np.linalg.norm(delta) <= min(max(2 * extent, 0.1), 1.0) + 1e-9:
                    dots.append(delta / np.linalg.norm(delta))
            assert any(dot @ np.array(AXES[relation]) > 0.6 for dot in dots), d
            counts[relation] += 1
    assert all(counts.values()), counts


def test_in_targets_lie_inside_their_container(generated):
    count = 0
    for s in generated.values():
        # a hidden target of "behind" also gets the behind region (rule C shares its id), so skip
        # those
        behind = {
            d["target_obj_id"] for d in s["descriptions"] if d["spatial_relation_name"] == "behind"
        }
        for d in s["descriptions"]:
            if d["spatial_relation_name"] != "in" or d["target_obj_id"] in behind:
                continue
            containers = [o for o in s["objects"] if o.name == d["reference_obj_name"]]
            target = s["full_xyz_pts"][s["full_objid_pts"] == d["target_obj_id"]]
            assert len(target) > 0
            inside = np.any(
                [
                    (target >= o.lower - 1e-6).all(1) & (target <= o.upper + 1e-6).all(1)
                    for o in containers
                ],
                axis=0,
            )
            assert inside.all(), d
            count += 1
    assert count > 0


def test_descriptions_follow_the_sentence_rules(generated):
    for s in generated.values():
        sentences = [
            f"{d['target_obj_name']} {d['spatial_relation_name']} a {d['reference_obj_name']}"
            for d in s["descriptions"]
        ]
        assert len(sentences) == len(set(sentences))
        for d in s["descriptions"]:
            assert d["target_obj_name"] != d["reference_obj_name"]
            assert d["spatial_relation_name"] in RELATIONS
            if d["spatial_relation_name"] == "in":
                assert d["reference_obj_name"] in scenes.CONTAINER_CLASSES
            if d["spatial_relation_name"] not in ("in", "on"):
                assert d["target_obj_name"] not in scenes.NO_LOCALIZATION_CLASSES
            assert not {d["target_obj_name"], d["reference_obj_name"]} & scenes.NEVER_DESCRIBED
            assert (s["full_objid_pts"] == d["target_obj_id"]).any()


def test_cli_writes_files_splits_and_pickles(tmp_path):
    runner = CliRunner()
    args = [
        "dataset",
        str(tmp_path),
        "--num-scenes",
        "8",
        "--preset",
        "small",
        "--num-output-pts",
        "3000",
        "--vis-seed",
        "7",
    ]
    result = runner.invoke(generate_scenes.app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.glob("*.hdf5"))
    assert names == [scene_file.scene_file_name(s, pick_room(s)) for s in range(8)]
    with open(tmp_path / "vool_split.pkl", "rb") as f:
        splits = pickle.load(f)
    with open(tmp_path / "ssc_split.pkl", "rb") as f:
        assert pickle.load(f) == splits
    assert sorted(splits["train"] + splits["unseen_instances"]) == names
    assert (
        splits["unseen_instances"]
        == splits["unseen_instances_dr"]
        == splits["unseen_instances_synonyms"]
    )
    for name in names:
        with h5py.File(tmp_path / name) as f:
            classes = {c.split("[")[0] for c in f["data/objid_to_class"][()].astype(str)}
            test_room = name in splits["unseen_instances"]
            assert test_room or not classes & set(vocab.TEST_CLASSES), name
            assert f["data/domain_randomized_rgb"].shape == (
                (1, 128, 128, 3) if test_room else (1, 1)
            )
            assert f["full_xyz_pts"].shape == (1, 3000, 3) and f["saliencies"].shape == (
                0,
                128,
                128,
            )
    with open(tmp_path / "procedural_00007.pkl", "rb") as f:
        vis = pickle.load(f)
    assert set(vis) == {"rgb", "depth", "cam_intr", "cam_extr", "ovssc_obj_classes", "descriptions"}
    assert vis["rgb"].shape == (128, 128, 3) and all(len(d) == 3 for d in vis["descriptions"])
    # a second run skips the existing files
    mtime = (tmp_path / names[0]).stat().st_mtime_ns
    result = runner.invoke(generate_scenes.app, args[:4] + ["--preset", "small"])
    assert "0 scene files" in result.output or "wrote 0" in result.output
    assert (tmp_path / names[0]).stat().st_mtime_ns == mtime


def test_scene_room_is_the_room_generate_scene_builds(generated):
    for seed, scene in generated.items():
        assert scene_layout.scene_room(seed) == pick_room(seed) == scene["room"]


def test_train_rooms_only_skips_held_out_room_seeds(tmp_path):
    seeds = range(10, 40)
    kept = [s for s in seeds if not scene_layout.is_test_room(pick_room(s))]
    assert 0 < len(kept) < len(seeds)  # both kinds among these seeds
    args = ["dataset", str(tmp_path), "--start-seed", "10", "--num-scenes", "30", "--preset",
            "small", "--image-size", "16", "--num-output-pts", "300", "--tsdf-size", "4",
            "--train-rooms-only"]  # fmt: skip
    result = CliRunner().invoke(generate_scenes.app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.glob("*.hdf5"))
    assert names == [scene_file.scene_file_name(s, pick_room(s)) for s in kept]
    assert f"{len(seeds) - len(kept)} held-out-room seeds skipped" in result.output
    with open(tmp_path / "vool_split.pkl", "rb") as f:
        splits = pickle.load(f)
    assert sorted(splits["train"]) == names and splits["unseen_instances"] == []


def test_cli_rejects_bad_options(tmp_path):
    result = CliRunner().invoke(generate_scenes.app, ["dataset", str(tmp_path), "--preset", "huge"])
    assert result.exit_code != 0 and "unknown preset 'huge'" in str(result.exception)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--start-seed", "-5"], "--start-seed must be in 0..4294967292 (numpy seeds are "
         "0 <= seed < 2**32, and 4 scenes start at it), got -5"),
        (["--start-seed", str(2**32 - 3)], "--start-seed must be in 0..4294967292 (numpy seeds "
         "are 0 <= seed < 2**32, and 4 scenes start at it), got 4294967293"),
        (["--num-scenes", "0"], "--num-scenes must be >= 1, got 0"),
        (["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
        (["--gzip-level", "10"], "--gzip-level must be in 0..9, got 10"),
        (["--vis-seed", "-1"], "--vis-seed must be in 0..4294967295 (numpy seeds are "
         "0 <= seed < 2**32), got -1"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_numbers_with_one_line(tmp_path, options, message):
    args = ["dataset", str(tmp_path / "out"), "--num-scenes", "4", "--preset", "small", *options]
    result = CliRunner().invoke(generate_scenes.app, args)
    assert isinstance(result.exception, generate_scenes.InputError)
    assert str(result.exception) == message
    assert not (tmp_path / "out").exists()


def test_script_start_seed_error_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run(
        [sys.executable, "generate_scenes.py", "pickle", str(tmp_path / "x.pkl"), "--seed", "-5"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --seed must be in 0..4294967295 (numpy seeds are 0 <= seed < 2**32), got -5"
    )


def test_truncated_scene_files_are_regenerated(tmp_path, capsys):
    tiny = scenes.SceneOptions(
        **{**vars(SMALL), "image_size": 16, "num_output_pts": 300, "tsdf_size": 4}
    )
    generate_scenes.generate_dataset(tmp_path, [0, 1], tiny)
    first, second = sorted(tmp_path.glob("*.hdf5"))
    good = first.read_bytes()
    first.write_bytes(good[: len(good) // 2])  # an interrupted copy
    outside = tmp_path / "00009|FloorPlan1.hdf5"  # broken and not among the seeds asked for
    outside.write_bytes(b"not hdf5")
    second_good = second.read_bytes()
    with h5py.File(second, "a") as f:
        del f["data/cam_pose"]
    capsys.readouterr()
    written = generate_scenes.generate_dataset(tmp_path, [0, 1], tiny)
    lines = capsys.readouterr().out.splitlines()
    assert sorted(written) == [first.name, second.name]
    assert lines[0].startswith(f"{first} is not a readable HDF5 file (")
    assert lines[0].endswith("; regenerating it")
    assert lines[1] == f"{second}: missing key 'data/cam_pose'; regenerating it"
    assert lines[2].startswith(f"{outside} is not a readable HDF5 file (")
    assert lines[2].endswith("; left out of the splits")
    # rewritten as generated the first time (deterministic in the seed)
    assert first.read_bytes() == good and second.read_bytes() == second_good
    with scene_file.SceneFile(first) as scene:
        assert scene.depth().shape == (16, 16)
    with open(tmp_path / "ssc_split.pkl", "rb") as f:
        listed = sum(pickle.load(f).values(), [])
    assert sorted(set(listed)) == [first.name, second.name]


# --- rule C and rule A on hand-made scenes (docs/method.md#vool-ground-truth) ---------------------
# World frame of the files: the camera at (-1.5, 0, 0.8) looks along +x, image right is -y. Rule C:
# direction = (centroid of the reference - centroid of the target) / its length; "on the right of"
# if direction . (0, 1, 0) > 0.6 (the target has smaller y: toward image right), else "on the left
# of" if direction . (0, -1, 0) > 0.6, else "in front of" if direction . (1, 0, 0) > 0.6 (the target
# nearer the camera); "behind" if direction . (-1, 0, 0) > 0.6. Left, right and front only for
# visible targets. Distance gate: |delta| <= min(max(2 * max xy extent of the reference, 0.1), 1).


def _cluster(centre, half=0.05, n=5):
    """A small cube of n^3 points around `centre` (its xy extent is 2 * half)."""
    axis = np.linspace(-half, half, n)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return grid + np.asarray(centre, float)


def _two_object_truth(target_centre, target_visible=True):
    """Class 0 a table (reference, xy extent 0.4, so the gate is 0.8) at (0, 0, 0.4), class 1 an
    apple (target), class 2 empty."""
    table = _cluster((0.0, 0.0, 0.4), half=0.2)
    apple = _cluster(target_centre)
    xyz = np.concatenate([table, apple])
    objid = np.concatenate([np.zeros(len(table)), np.ones(len(apple))]).astype(np.int32)
    return scenes.GroundTruth(
        xyz=xyz,
        objid=objid,
        classes=["table", "apple", "empty"],
        visible_pts=np.ones(len(xyz), bool),
        seg_ids={0, 1} if target_visible else {0},
    )


def _relations(gt):
    return sorted(d["spatial_relation_name"] for d in gt.descriptions)


@pytest.mark.parametrize(
    "target_centre, expected",
    [
        ((0.0, -0.4, 0.4), ["on the right of"]),  # smaller y: image right
        ((0.0, 0.4, 0.4), ["on the left of"]),  # larger y: image left
        ((-0.4, 0.0, 0.4), ["in front of"]),  # smaller x: nearer the camera
        ((0.4, 0.0, 0.4), ["behind"]),  # larger x: farther
        ((-0.3, -0.3, 0.4), ["on the right of"]),  # passes right and front: right is tried first
        ((-0.3, 0.3, 0.4), ["on the left of"]),  # passes left and front: left before front
        ((0.3, -0.3, 0.4), ["behind", "on the right of"]),  # behind and right both added
        ((0.0, 0.0, 0.9), []),  # straight above: no direction passes 0.6
        ((0.0, -0.9, 0.4), []),  # beyond the distance gate (0.8)
    ],
)
def test_geometric_relations_follow_the_spec_on_literal_positions(target_centre, expected):
    gt = _two_object_truth(target_centre)
    scenes._add_geometric_relations(gt, geometry.pinhole_intrinsics(128, 128), scenes.CAMERA_POSE)
    assert _relations(gt) == expected
    for d in gt.descriptions:
        assert (d["target_obj_name"], d["target_obj_id"], d["reference_obj_name"]) == (
            "apple",
            1,
            "table",
        )


def test_right_of_is_image_right_of_the_generator_camera():
    """The convention the relations rely on: with the generator's camera, a point of smaller y lies
    to the right in the image (larger column u), and one of smaller x is nearer (smaller depth)."""
    cam_intr = geometry.pinhole_intrinsics(128, 128)
    u, _, z = geometry.project(
        np.array([[0.0, 0.0, 0.4], [0.0, -0.4, 0.4], [-0.4, 0.0, 0.4]]),
        cam_intr,
        scenes.CAMERA_POSE,
    )
    assert u[1] > u[0] and z[2] < z[0]


def test_left_right_and_front_need_a_visible_target():
    gt = _two_object_truth((0.0, -0.4, 0.4), target_visible=False)
    scenes._add_geometric_relations(gt, geometry.pinhole_intrinsics(128, 128), scenes.CAMERA_POSE)
    assert _relations(gt) == []


def _on_table_scene(apple_visible):
    """The floor (index 0), a table whose top offers a receptacle, an apple placed on it, empty; the
    GT points: table top, apple, and free space above a second table's top."""
    top = scene_layout.box((-0.2, -0.2, 0.38), (0.2, 0.2, 0.42))
    objects = [
        scene_layout.SceneObject("floor", [scene_layout.box((-1, -1, -0.05), (1, 1, 0))]),
        scene_layout.SceneObject(
            "table", [top], receptacles=[scene_layout.box((-0.2, -0.2, 0.42), (0.2, 0.2, 0.6))]
        ),
        scene_layout.SceneObject(
            "apple", [scene_layout.box((-0.05, -0.05, 0.42), (0.05, 0.05, 0.52))], parent=1
        ),
        scene_layout.SceneObject(
            "table",
            [scene_layout.box((0.3, 0.5, 0.38), (0.6, 0.8, 0.42))],
            receptacles=[scene_layout.box((0.3, 0.5, 0.42), (0.6, 0.8, 0.6))],
        ),
    ]
    xyz = np.concatenate(
        [
            _cluster((0.0, 0.0, 0.4), half=0.02, n=3),  # table 1
            _cluster((0.0, 0.0, 0.47), half=0.04, n=3),  # apple
            _cluster((0.45, 0.65, 0.5), half=0.04, n=3),  # empty, above table 2 (hidden)
            _cluster((0.0, 0.0, 0.9), half=0.04, n=3),  # empty, far above everything
        ]
    )
    objid = np.repeat([1, 2, 4, 4], 27).astype(np.int32)
    visible = np.ones(len(xyz), bool)
    visible[27:54] = apple_visible
    visible[54:81] = False
    gt = scenes.GroundTruth(
        xyz=xyz,
        objid=objid,
        classes=["floor", "table", "apple", "table", "empty"],
        visible_pts=visible,
        seg_ids={1, 2} if apple_visible else {1},
    )
    return gt, objects


def test_on_comes_from_the_placement_parent_and_keeps_a_visible_target():
    gt, objects = _on_table_scene(apple_visible=True)
    before = gt.objid.copy()
    scenes.add_descriptions(gt, objects, geometry.pinhole_intrinsics(128, 128), scenes.CAMERA_POSE)
    on = [d for d in gt.descriptions if d["spatial_relation_name"] == "on"]
    assert [(d["target_obj_id"], d["reference_obj_name"]) for d in on] == [(2, "table")]
    assert np.array_equal(gt.objid, before)  # a visible target's ground truth is its own points


def test_on_a_hidden_target_takes_every_hidden_point_on_any_instance_of_the_reference_class():
    gt, objects = _on_table_scene(apple_visible=False)
    scenes.add_descriptions(gt, objects, geometry.pinhole_intrinsics(128, 128), scenes.CAMERA_POSE)
    on = [d for d in gt.descriptions if d["spatial_relation_name"] == "on"]
    assert [(d["target_obj_id"], d["reference_obj_name"]) for d in on] == [(2, "table")]
    # the apple's own (hidden) points and the hidden free space above the *other* table
    assert np.array_equal(np.flatnonzero(gt.objid == 2), np.arange(27, 81))
    assert (gt.objid[81:] == 4).all() and (gt.objid[:27] == 1).all()
