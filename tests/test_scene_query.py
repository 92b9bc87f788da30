"""The 3D tab's work (scene_query.py, scene_glb.py) on a held-out scene with tiny trained networks:
the views hold the expected meshes, the IoU is the one of the written files, the downloads are
visualize.py's files, and every bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scene_networks import trained_scene  # noqa: F401 (a fixture)

import generate_scenes
import inference
import scene_query
import scenes
from utils import InputError

GRID = 24


@pytest.fixture(scope="module")
def queries():
    return scene_query.SceneQueries("cpu")


def held_out(trained) -> scene_query.SceneChoice:
    choices = scene_query.scene_choices(trained.data)
    assert choices[0].path == trained.held_out and "held-out: unseen_instances" in choices[0].label
    assert choices[-1].path is None  # the upload comes last, the bundled pickles before it
    assert any(c.path is not None and c.path.suffix == ".pkl" for c in choices)
    return choices[0]


def node_names(path) -> set[str]:
    return set(trimesh.load(path).geometry)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the banana in the safe", ("banana", "in", "safe")),
        ("The cutting board in front of a lamp.", ("cutting board", "in front of", "lamp")),
        ("mug on the left of the plate", ("mug", "on the left of", "plate")),
        ("pillow|on|sofa", ("pillow", "on", "sofa")),
        ("the book on the shelf", ("book", "on", "shelf")),
    ],
)
def test_descriptions_are_read_as_target_relation_reference(text, expected):
    assert scene_query.parse_description(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no description: a description is 'the TARGET RELATION the REFERENCE'"),
        ("the banana under the safe", "no known relation in 'the banana under the safe'"),
        ("banana|under|safe", "unknown relation 'under'"),
        ("in the safe", "names no target"),
        ("the banana in the", "names no reference"),
    ],
)
def test_a_bad_description_is_one_line_naming_the_relations(text, message):
    with pytest.raises(InputError, match=message) as error:
        scene_query.parse_description(text)
    assert "\n" not in str(error.value) and "in front of, on the left of" in str(error.value)


def test_ovssc_answer_views_iou_and_visualize_files(trained_scene, queries):  # noqa: F811
    choice = held_out(trained_scene)
    answer = queries.ovssc(choice, None, trained_scene.checkpoints["ovssc"], "", "fast", GRID)
    out = answer.view.parent
    npz = np.load(out / "completion.npz")
    classes = list(npz["classes"])
    assert [name for name, _ in answer.iou] == classes and len(classes) > 2
    names = node_names(answer.view)
    assert names and all(n.rsplit(" (", 1)[0] in classes for n in names)
    assert names <= {f"{c} ({part})" for c in classes for part in ("visible", "hidden")}
    assert {n.rsplit(" (", 1)[0] for n in names} == {p.stem for p in out.glob("*.obj")}
    truth_names = node_names(answer.truth_view)
    assert any(n.endswith("(hidden)") for n in truth_names)  # the camera does not see it all
    # the IoU is the one of the completion and the ground truth that completion.npz holds
    size = int(npz["grid_size"])
    predicted = np.full(size**3, -1)
    predicted[scene_query.grid_index(npz["xyz"], npz["scene_bounds"], size)] = npz["label"]
    truth = npz["gt_labels"].reshape(-1)
    for k, (name, value) in enumerate(answer.iou):
        union = np.count_nonzero((predicted == k) | (truth == k))
        expected = np.count_nonzero((predicted == k) & (truth == k)) / union if union else None
        assert value == pytest.approx(expected), name
    assert {p.name for p in answer.files} >= {
        "completion.glb",
        "ground_truth.glb",
        "completion.npz",
    }
    assert "ground truth beside it" in answer.status and f"{GRID}³ grid" in answer.status
    # a subset of the classes: its rows only, and its ground truth only
    two = ", ".join(classes[:2])
    subset = queries.ovssc(choice, None, trained_scene.checkpoints["ovssc"], two, "fast", GRID)
    assert [name for name, _ in subset.iou] == classes[:2]
    gt = np.load(subset.view.parent / "completion.npz")["gt_labels"]
    assert set(np.unique(gt)) <= {-1, 0, 1}


def test_vool_answer_of_a_stored_description_with_ground_truth(trained_scene, queries):  # noqa: F811
    choice = held_out(trained_scene)
    described = scene_query.scene_descriptions(choice)
    answer = queries.vool(
        choice, None, trained_scene.checkpoints["vool"], described[0], "fast", GRID, cutoff=-50.0
    )
    out = answer.view.parent
    assert node_names(answer.view) == {"scene points", "prediction", "ground truth"}
    npz = np.load(out / "localization.npz")
    assert list(npz["descriptions"]) == [described[0]]
    truth = np.zeros(GRID**3, bool)
    truth[scene_query.grid_index(npz["gt_xyz"], npz["scene_bounds"], GRID)] = True
    # cutoff -50: every grid point is predicted, so the IoU is the truth's share of the grid
    assert answer.iou == [(described[0], pytest.approx(truth.mean()))]
    assert {p.name for p in answer.files} == {
        "localization.glb", f"{inference.safe_name(described[0])}.ply", "scene_rgb.ply",
        "localization.npz",
    }  # fmt: skip
    # a description the scene does not store, on names it does: a prediction without truth
    target, relation, reference = scene_query.parse_description(described[0])
    other = next(r for r in ("in", "behind", "on") if r != relation)
    answer = queries.vool(
        choice, None, trained_scene.checkpoints["vool"], f"the {target} {other} the {reference}",
        "fast", GRID, cutoff=1e9,
    )  # fmt: skip
    assert answer.iou == [(f"the {target} {other} the {reference}", None)]
    assert node_names(answer.view) == {"scene points"}  # nothing above the cutoff, no truth
    assert "no ground truth" in answer.status


def test_bad_requests_are_one_line_and_the_next_one_works(
    trained_scene,  # noqa: F811
    queries,
    tmp_path,
    monkeypatch,
):
    choice = held_out(trained_scene)
    ckpt = trained_scene.checkpoints
    no_relevancy = tmp_path / "bare"
    generate_scenes.generate_dataset(no_relevancy, [2], scenes.PRESETS["small"])
    bare = scene_query.scene_choices(no_relevancy)[0]
    bundled = next(c for c in scene_query.scene_choices(None) if c.path is not None)
    text = tmp_path / "colour.png"
    text.write_text("not an image")
    corrupt = scene_query.Upload(str(text), str(text), "100 100 32 32")
    monkeypatch.setattr(scene_query.clip_weights, "cached_weights", lambda *a: None)
    cases = [
        (queries.vool, choice, None, ckpt["vool"], "the banana under the safe", "no known relation"),
        (queries.vool, choice, None, ckpt["vool"], " ", "no description"),
        (queries.vool, choice, None, ckpt["ovssc"], "the cup in the box", "holds the OVSSC network, not the VOOL one: give a checkpoint of train_vool.py"),
        (queries.ovssc, choice, None, ckpt["vool"], "", "holds the VOOL network, not the OVSSC one"),
        (queries.ovssc, choice, None, "", "", "no OVSSC checkpoint: run `make demo`"),
        (queries.ovssc, choice, None, ckpt["ovssc"], "unicorn", "no stored relevancy for 'unicorn'"),
        (queries.vool, choice, None, ckpt["vool"], "the unicorn in the box", "the target 'unicorn' has no stored relevancy"),
        (queries.ovssc, bare, None, ckpt["ovssc"], "", "has no stored relevancy for rgb|ours"),
        (queries.ovssc, bundled, None, ckpt["ovssc"], "", "needs CLIP weights, and none were found"),
        (queries.ovssc, scene_query.SceneChoice("upload", None), corrupt, ckpt["ovssc"], "chair", "is not an image"),
    ]  # fmt: skip
    for method, scene, upload, checkpoint, words, message in cases:
        with pytest.raises(InputError, match=message) as error:
            method(scene, upload, checkpoint, words, "fast", GRID)
        assert "\n" not in str(error.value)
    answer = queries.vool(choice, None, ckpt["vool"], scene_query.scene_descriptions(choice)[0],
                          "fast", GRID)  # fmt: skip
    assert answer.iou[0][1] is not None
