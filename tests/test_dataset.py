"""dataset.py: the HDF5 reader against a hand-built file that follows
docs/data.md#the-scene-file-layout, the OVSSC and VOOL samples of generated scenes for every
approach and input, and the bad-input messages."""

import pickle

import h5py
import numpy as np
import pytest
import torch
from relevancy_layout import add_relevancy_layout

import dataset as ds
import generate_scenes
import geometry
import options
import scenes
from scene_file import SceneFile, relevancy_sentence
from utils import InputError
from vocab import SYNONYMS

H = W = 4
K = np.array([[2.0, 0, 2.0], [0, 2.0, 2.0], [0, 0, 1]])
LABELS = ["apple", "apple behind a mug", "mug"]  # sorted: visible classes, names, sentence
GT_XYZ = np.array(
    [[-0.5, 0, 1.5], [-0.4, 0.1, 1.5], [0.3, 0, 1.5], [0.2, -0.1, 1.4], [0, 0, 0.5], [5, 5, 5]]
)
GT_IDS = np.array([0, 0, 1, 1, 2, 2])  # the last point is out of bounds
MEAN_ROW = {0: 5.0, 1: 15.0}  # stored "mean" rows of blocks rgb|ours (0) and rgb|chefer_et_al (1)


def gzip9(group, name, **kwargs):
    return group.create_dataset(name, compression="gzip", compression_opts=9, **kwargs)


def build_minimal_file(path, descriptions=True):
    """A 4x4 view written exactly as docs/data.md#the-scene-file-layout lays it out (maps are
    constants: block*10 + row).
    """
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        seg = np.zeros((H, W), np.int32)
        seg[:, 2:] = 1  # left half apple, right half mug
        items = dict(
            rgb=np.full((H, W, 3), 51, np.uint8),
            depth=np.ones((H, W), np.float32),
            seg=seg,
            tsdf_value_pts=np.zeros(8, np.float32),
            tsdf_xyz_pts=np.zeros((8, 3), np.float32),
            full_xyz_pts=GT_XYZ.astype(np.float32),
            full_objid_pts=GT_IDS.astype(np.int32),
        )
        for key, item in items.items():
            top = f.create_dataset(
                key,
                data=item[None],
                maxshape=(None, *item.shape),
                chunks=(1, *item.shape),
                compression="gzip",
                compression_opts=9,
            )
            refs = gzip9(data, key, shape=(1,), dtype=h5py.regionref_dtype)
            refs[0] = top.regionref[0, ...]
        gzip9(data, "domain_randomized_rgb", data=np.zeros((1, 1)))
        gzip9(data, "cam_intr", data=K)
        gzip9(data, "cam_pose", data=np.eye(4))
        gzip9(data, "scene_bounds", data=geometry.THOR_SCENE_BOUNDS)
        gzip9(data, "objid_to_class", data=np.array([b"apple[0]", b"mug[1]", b"empty[2]"]))
        group = data.create_group("descriptions")
        text = h5py.string_dtype()
        columns = dict(
            target_obj_name=["apple"],
            target_obj_id=np.array([0], np.int64),
            target_obj_material=[""],
            reference_obj_name=["mug"],
            reference_obj_material=[""],
            spatial_relation_name=["behind"],
        )
        for key, value in columns.items():
            if not descriptions:
                gzip9(group, key, data=np.zeros(0))  # how h5py stores an empty Python list
            elif isinstance(value, list):
                gzip9(group, key, data=value, dtype=text)
            else:
                gzip9(group, key, data=value)
        rows = [
            [block * 10 + row for row in range(len(LABELS))] + [MEAN_ROW[block]] for block in (0, 1)
        ]
        top = f.create_dataset(
            "saliencies",
            data=np.concatenate(rows)[:, None, None] * np.ones((1, 2, 2), np.float32),
            maxshape=(None, 2, 2),
            chunks=(1, 2, 2),
            compression="gzip",
            compression_opts=9,
        )
        sal = data.create_group("saliencies")
        for block, config in enumerate(("ours", "chefer_et_al")):
            refs = gzip9(sal, f"rgb|{config}", shape=(len(LABELS) + 1,), dtype=h5py.regionref_dtype)
            for i in range(len(LABELS) + 1):
                refs[i] = top.regionref[block * (len(LABELS) + 1) + i, ...]
            gzip9(
                sal,
                f"rgb|{config}|saliency_text_labels",
                data=np.array([s.encode() for s in LABELS + ["mean"]]),
            )
            gzip9(
                sal,
                f"rgb|{config}|saliency_text_label_features",
                data=np.eye(len(LABELS) + 1, 512, k=block).astype(np.float16),
            )
    return path


EVAL = dict(num_input_pts=-1, return_vis=True, balance_spatial_sampling=False)


@pytest.fixture
def minimal(tmp_path):
    return build_minimal_file(tmp_path / "00001|FloorPlan1_physics.hdf5")


def test_reader_on_the_hand_built_file(minimal):
    with SceneFile(minimal) as scene:
        assert scene.scene_id == "00001|FloorPlan1_physics"
        rgb = scene.rgb()
        assert rgb.dtype == np.float32 and rgb.shape == (H, W, 3) and rgb.max() == 51
        assert scene.deref("seg").shape == (1, H, W) and scene.deref("seg").dtype == np.float32
        assert scene.object_classes() == ["apple", "mug", "empty"]
        assert scene.descriptions() == dict(
            target_obj_name=["apple"],
            target_obj_id=[0],
            reference_obj_name=["mug"],
            spatial_relation_name=["behind"],
        )
        labels, block = scene.relevancy_block("rgb", "chefer_et_al")
        assert labels == LABELS + ["mean"]
        assert scene.relevancy_maps(block, [2])[0, 0, 0] == 12
        assert scene.label_features(block, [0]).dtype == np.float32


def test_vool_values_by_hand_and_the_mean_row_trap(minimal):
    sample = ds.ObjectLocalizationDataset([minimal], ds.DatasetConfig(**EVAL))[0]
    # 16 pixels at depth 1, all in bounds; target apple (row 0), reference mug (row 2), sentence
    # (row 1)
    assert sample["input_xyz_pts"].shape == (H * W, 3)
    np.testing.assert_allclose(sample["input_target_saliency_pts"], (0 - 5) * 50)
    np.testing.assert_allclose(sample["input_reference_saliency_pts"], (2 - 5) * 50)
    np.testing.assert_allclose(sample["input_description_saliency_pts"], (1 - 5) * 50)
    np.testing.assert_allclose(sample["input_rgb_pts"], 0.2)
    assert sample["output_label_pts"].tolist() == [[1, 1, 0, 0, 0]]  # out-of-bounds point dropped
    assert sample["out_of_bounds_pts"].shape == (5,)  # the uniform branch (eval.py) gives (n,)
    assert sample["spatial_relation_name"] == ["behind"] and sample["target_obj_name"] == ["apple"]
    # chefer block: the default subtracts the rgb|ours mean (row L of `saliencies`), the flag its
    # own
    chefer = dict(EVAL, saliency_config="chefer_et_al")
    trap = ds.ObjectLocalizationDataset([minimal], ds.DatasetConfig(**chefer))[0]
    np.testing.assert_allclose(trap["input_target_saliency_pts"], (10 - 5) * 50)
    fixed = ds.ObjectLocalizationDataset(
        [minimal], ds.DatasetConfig(**chefer, fix_mean_relevancy=True)
    )[0]
    np.testing.assert_allclose(fixed["input_target_saliency_pts"], (10 - 15) * 50)


def test_vool_patch_mask_bug_b5_and_its_fix(minimal):
    # vmin moves the target map to max(0 - 5 + 5.001, 0) = 0.001: below the 0.004 cutoff, but 0.05
    # after x50
    cfg = dict(EVAL, network_inputs=("patch_masks",), saliency_vmin=-5.001)
    scaled = ds.ObjectLocalizationDataset([minimal], ds.DatasetConfig(**cfg))[0]
    assert scaled["input_target_saliency_pts"].min() == 1  # bug B5 kept: compared after x50
    unscaled = ds.ObjectLocalizationDataset(
        [minimal], ds.DatasetConfig(**cfg, fix_vool_patch_mask_scale=True)
    )[0]
    assert unscaled["input_target_saliency_pts"].max() == 0
    assert unscaled["input_reference_saliency_pts"].min() == 1  # 2.001 passes either way


def test_ovssc_values_by_hand(minimal):
    sample = ds.SceneCompletionDataset([minimal], ds.DatasetConfig(**EVAL))[0]
    assert sample["patch_labels"] == ["apple", "mug"]
    np.testing.assert_allclose(sample["input_feature_pts"][0], (0 - 5) * 50)
    np.testing.assert_allclose(sample["input_feature_pts"][1], (2 - 5) * 50)
    assert sample["rgb"].max() == 51  # OVSSC rgb stays 0..255
    assert sample["output_label_pts"].tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]]
    assert sample["out_of_bounds_pts"].shape == (2, 1, 5)  # uniform branch
    np.testing.assert_allclose(sample["semantic_class_features"][1], np.eye(4, 512)[2])
    assert sample["patch_objmatches"] == ["0", "1"]
    masks = dict(EVAL, network_inputs=("patch_masks", "saliency"), offset_patch_mask=True)
    both = ds.SceneCompletionDataset([minimal], ds.DatasetConfig(**masks))[0]
    assert both["input_feature_pts"].shape == (2, H * W, 2)
    assert set(both["input_feature_pts"][:, :, 0].unique().tolist()) == {-1.0}


def test_empty_descriptions(minimal, tmp_path):
    path = build_minimal_file(tmp_path / "00002|FloorPlan1_physics.hdf5", descriptions=False)
    with SceneFile(path) as scene:
        assert scene.descriptions()["target_obj_name"] == []
    train = ds.ObjectLocalizationDataset(
        [path], ds.DatasetConfig(num_input_pts=8, num_output_pts=4)
    )[0]
    assert train["spatial_relation_name"] == ["[pad]"] * 4 and train["output_label_pts"].sum() == 0
    assert (
        ds.ObjectLocalizationDataset([path], ds.DatasetConfig(**EVAL))[0]["output_label_pts"].shape[
            0
        ]
        == 0
    )


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


BAD_INPUTS = {
    "missing key": (lambda f: f["data"].__delitem__("cam_pose"), "missing key 'data/cam_pose'"),
    "wrong shape": (
        lambda f: (
            f["data"].__delitem__("cam_intr"),
            f["data"].create_dataset("cam_intr", data=np.eye(4)),
        ),
        "'data/cam_intr' has shape (4, 4), expected (3, 3)",
    ),
    "wrong dtype": (
        lambda f: (f["data"].__delitem__("rgb"), f["data"].create_dataset("rgb", data=np.zeros(1))),
        "'data/rgb' is float64, expected region references",
    ),
    "no relevancy": (
        lambda f: f["data"].__delitem__("saliencies"),
        "run `python generate_relevancy.py dataset",
    ),
    "nan depth": (
        lambda f: f["depth"].__setitem__((0, 0, 0), np.nan),
        "depth has 1 NaN or infinite pixels",
    ),
    "no labels": (lambda f: f["seg"].__setitem__(0, -np.ones((H, W))), "no visible class is left"),
    "unknown label": (
        lambda f: f["data/descriptions/target_obj_name"].__setitem__(0, "pear"),
        "label 'pear' has no relevancy map",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_line(minimal, case):
    edit, message = BAD_INPUTS[case]
    _edit(minimal, edit)
    dataset_class = (
        ds.SceneCompletionDataset if case == "no labels" else ds.ObjectLocalizationDataset
    )
    with pytest.raises(InputError) as error:
        dataset_class([minimal], ds.DatasetConfig(**EVAL))[0]
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match="scene file not found"):
        SceneFile(tmp_path / "nope.hdf5")
    with pytest.raises(InputError, match="split file not found: .*ssc_split.pkl"):
        ds.make_datasets(tmp_path, "ovssc")
    (tmp_path / "bad.hdf5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        SceneFile(tmp_path / "bad.hdf5")
    with pytest.raises(InputError, match="unknown network inputs"):
        ds.DatasetConfig(network_inputs=("depth",))


# --------------------------------------------------------------------------------------------------
# generated scenes through both datasets


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    options = scenes.SceneOptions(image_size=64, num_output_pts=20_000, tsdf_size=16)
    generate_scenes.generate_dataset(
        root, [0, 2, 7], options
    )  # seed 0: train room; 2 and 7: test rooms
    for path in root.glob("*.hdf5"):
        add_relevancy_layout(path)
    return root


APPROACHES = {
    "ovssc": [
        ("saliency",),
        ("rgb",),
        ("patch_masks",),
        ("patch_masks", "saliency"),
        ("saliency", "tsdf"),
    ],
    "vool": [("saliency",), ("rgb",), ("patch_masks",), ("saliency", "tsdf")],
}
CASES = [
    (task, inputs, config)
    for task, inputs_list in APPROACHES.items()
    for inputs in inputs_list
    for config in ("ours", "chefer_et_al")
]


def _check_common(sample, n_in, bounds):
    assert sample["input_xyz_pts"].shape == (n_in, 3)
    assert geometry.in_bounds(sample["input_xyz_pts"].numpy(), bounds).all()
    labels = sample["output_label_pts"]
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert sample["out_of_frustum_pts_mask"].shape == labels.shape


@pytest.mark.parametrize("task,inputs,config", CASES)
def test_training_samples_of_generated_scenes(generated_root, task, inputs, config):
    np.random.seed(0)
    torch.manual_seed(0)
    cfg = ds.DatasetConfig(
        num_input_pts=500,
        num_output_pts=300,
        network_inputs=inputs,
        saliency_config=config,
        domain_randomization=True,
        tsdf_shape=(16, 16, 16),
    )
    train = ds.make_datasets(generated_root, task, cfg)["train"]
    sample = train[0]
    _check_common(sample, 500, train.bounds)
    p = 4
    assert sample["output_xyz_pts"].shape == (p, 300, 3)
    assert sample["output_label_pts"].shape == (p, 300)
    assert sample["out_of_bounds_pts"].shape == (p, 300)
    assert sample["tsdf_vol"].shape == ((16, 16, 16) if "tsdf" in inputs else (1,))
    if "tsdf" in inputs:
        assert (
            sample["tsdf_vol"].min() >= -1
            and sample["tsdf_vol"].max() <= 1
            and sample["tsdf_vol"].max() > 0
        )
    if task == "ovssc":
        f = {"rgb": 3}.get(inputs[0], len([i for i in inputs if i in ("patch_masks", "saliency")]))
        assert sample["input_feature_pts"].shape == ((1 if "rgb" in inputs else p), 500, f)
        assert sample["semantic_class_features"].shape == (p, 512)
        assert len(sample["patch_labels"]) == p and sample["seg"].shape == (64, 64)
        assert 0 <= sample["rgb"].min() and sample["rgb"].max() <= 255 and sample["rgb"].max() > 1
        if inputs == ("rgb",):
            assert 0 <= sample["input_feature_pts"].min() and sample["input_feature_pts"].max() <= 1
    else:
        for key in (
            "input_target_saliency_pts",
            "input_reference_saliency_pts",
            "input_description_saliency_pts",
        ):
            assert sample[key].shape == (p, 500, 1)
            if "patch_masks" in inputs:
                assert set(sample[key].unique().tolist()) <= {0.0, 1.0}
        assert sample["input_rgb_pts"].shape == (p, 500, 3)
        assert 0 <= sample["input_rgb_pts"].min() and sample["input_rgb_pts"].max() <= 1
        assert len(sample["spatial_relation_name"]) == p
    # balanced sampling: rows with both classes come out about half positive
    for row in sample["output_label_pts"]:
        if 0 < row.sum() < len(row):
            assert 0.3 < row.mean() < 0.7


@pytest.mark.parametrize("task", ["ovssc", "vool"])
def test_evaluation_splits_use_every_point_and_label(generated_root, task):
    splits = ds.make_datasets(
        generated_root, task, ds.DatasetConfig(num_input_pts=200, balance_spatial_sampling=False)
    )
    assert set(splits) == set(ds.SPLITS)
    for split in ("unseen_instances", "unseen_instances_dr", "unseen_instances_synonyms"):
        data = splits[split]
        assert data.config.return_vis and not data.config.domain_randomization
        for i in range(len(data)):
            sample = data[i]
            n_in_bounds = geometry.in_bounds(
                sample["vis_gt_xyz_pts"].numpy()
                if task == "vool"
                else sample["output_xyz_pts"][0].numpy(),
                data.bounds,
            ).sum()
            assert sample["output_xyz_pts"].shape[1] == n_in_bounds
            names = sample["patch_labels"] if task == "ovssc" else sample["target_obj_name"]
            assert "" not in names and "[pad]" not in names
            if split == "unseen_instances_synonyms" and task == "vool":
                with SceneFile(data.scene_paths[i]) as scene:
                    descs = scene.descriptions()
                    keys = ("target_obj_name", "spatial_relation_name", "reference_obj_name")
                    sentences = [
                        relevancy_sentence(*t) for t in zip(*[descs[k] for k in keys], strict=True)
                    ]
                kept = [s for s in sentences if any(key in s for key in SYNONYMS)]
                assert len(names) == len(kept)
                assert not set(names) & set(SYNONYMS)  # renamed
    with SceneFile(splits["unseen_instances"].scene_paths[0]) as scene:
        assert scene.rgb(domain_randomized=True).shape == (64, 64, 3)
    sample = splits["unseen_instances"][0]
    dr_sample = splits["unseen_instances_dr"][0]
    assert not torch.equal(sample["rgb"], dr_sample["rgb"])


def test_ovssc_synonyms_map_back_to_classes(generated_root):
    data = ds.make_datasets(generated_root, "ovssc", ds.DatasetConfig(num_input_pts=100))[
        "unseen_instances_synonyms"
    ]
    inverse = {v: k for k, v in SYNONYMS.items()}
    inverse["computer"] = "laptop"
    seen = False
    for i in range(len(data)):
        sample = data[i]
        classes = sample["vis_gt_object_labels"]
        for label, matches in zip(sample["patch_labels"], sample["patch_objmatches"], strict=True):
            assert label not in SYNONYMS
            ids = [int(m) for m in matches.split("|")]
            assert {classes[j] for j in ids} == {inverse.get(label, label)}
            seen |= label in inverse
    assert seen, "no synonym class in the generated test scenes"


def test_approaches_choose_their_inputs():
    cfg = ds.DatasetConfig(network_inputs=("patch_masks", "saliency"))
    assert ds.approach_config(cfg, "semantic_aware").network_inputs == ("rgb",)
    assert ds.approach_config(cfg, "clip_spatial").network_inputs == ("patch_masks", "saliency")
    with pytest.raises(InputError, match="unknown approach 'ours'"):
        ds.approach_config(cfg, "ours")


def test_split_pickle_paths_are_relative(generated_root):
    with open(generated_root / "ssc_split.pkl", "rb") as f:
        splits = pickle.load(f)
    assert all("/" not in p for paths in splits.values() for p in paths)


def decompose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(translation, rotation, per-axis scales) of M = T R S: M[:3, :3] = R diag(s), so column j
    is s_j times a unit column of R. Any other order (S R, R S T ...) breaks this decomposition."""
    linear = m[:3, :3]
    scales = np.linalg.norm(linear, axis=0)
    return m[:3, 3], linear / scales, scales


def test_random_transform_is_translate_rotate_scale():
    """M = T R S (docs/method.md#sampling-domain-randomisation-and-the-frustum-mask):
    T = randn(3) * scene_dims * dr_pos; R = Rz(c) Ry(b) Rx(a), each angle uniform in
    [-dr_orn/2, dr_orn/2]; S = diag(1 + dr_scale * U[0, 1)^3), per axis."""
    from scipy.spatial.transform import Rotation

    torch.manual_seed(0)
    dims = np.array([2.0, 2.0, 2.0])
    draws = [ds.random_transform(0.1, 0.3, 0.1, dims) for _ in range(2000)]
    translations, angles, scales = [], [], []
    for m in draws:
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
        t, rotation, s = decompose(m)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) > 0
        # a point p goes to R (s * p) + t: scaled first, then rotated, then translated
        p = np.array([0.3, -0.2, 0.5])
        np.testing.assert_allclose((m @ np.append(p, 1))[:3], rotation @ (s * p) + t, atol=1e-12)
        translations.append(t)
        angles.append(Rotation.from_matrix(rotation).as_euler("xyz"))  # static xyz: Rz Ry Rx
        scales.append(s)
    translations, angles, scales = map(np.array, (translations, angles, scales))
    # the translation is randn * 2 * 0.1: zero mean, 0.2 per axis, independent of R and S
    np.testing.assert_allclose(translations.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(translations.std(0), 0.2, rtol=0.08)
    assert np.all(np.abs(angles) <= 0.15 + 1e-9) and np.all(np.abs(angles).max(0) > 0.14)
    assert np.all((scales >= 1) & (scales < 1.1)) and np.all(scales.max(0) > 1.09)
    assert np.ptp(scales, axis=1).mean() > 0.02  # anisotropic: the three axes differ
    # each factor alone
    only_scale = ds.random_transform(0.0, 0.0, 0.1, dims)
    assert np.allclose(only_scale[:3, :3], np.diag(np.diag(only_scale[:3, :3])))
    assert np.allclose(only_scale[:3, 3], 0)
    only_translation = ds.random_transform(0.1, 0.0, 0.0, dims)
    np.testing.assert_allclose(only_translation[:3, :3], np.eye(3), atol=1e-12)
    assert np.linalg.norm(only_translation[:3, 3]) > 0


def dr_statistics(dataset, n=300) -> tuple[float, float, float]:
    """(translation std, largest angle, largest scale) over n transforms the dataset draws."""
    torch.manual_seed(0)
    parts = [decompose(dataset.dr_transform()) for _ in range(n)]
    from scipy.spatial.transform import Rotation

    translation = np.std([t for t, _, _ in parts])
    angle = max(np.abs(Rotation.from_matrix(r).as_euler("xyz")).max() for _, r, _ in parts)
    return translation, angle, max(s.max() for _, _, s in parts)


def test_fix_ovssc_dr_args_makes_ovssc_use_the_dr_flags(generated_root):
    """OVSSC ignores --dr_pos / --dr_orn / --dr_scale (0.05, 0.3, 0.1: translation std 0.1, angles up
    to 0.15, scales up to 1.1) unless --fix_ovssc_dr_args; VOOL always uses them."""
    flags = [
        "--domain_randomization", "--dr_pos", "0.5", "--dr_orn", "0.02", "--dr_scale", "0.5",
    ]  # fmt: skip

    def train_split(task, *extra):
        args = options.training_parser(task).parse_args(
            ["--file_path", "x", "--log", "y", *flags, *extra]
        )
        config = ds.DatasetConfig.from_args(args)
        return ds.make_datasets(generated_root, task, config)["train"]

    translation, angle, scale = dr_statistics(train_split("ovssc"))  # the constants
    assert 0.08 < translation < 0.12 and 0.13 < angle <= 0.15 and 1.08 < scale < 1.1
    fixed = train_split("ovssc", "--fix_ovssc_dr_args")
    assert fixed.config.fix_ovssc_dr_args
    for statistics in (dr_statistics(fixed), dr_statistics(train_split("vool"))):
        translation, angle, scale = statistics  # the flags: std 1.0, angles <= 0.01, scales < 1.5
        assert 0.85 < translation < 1.15 and angle <= 0.01 + 1e-9 and 1.4 < scale < 1.5


def test_domain_randomisation_moves_training_points(generated_root):
    np.random.seed(1)
    torch.manual_seed(1)
    base = dict(num_input_pts=-1, num_output_pts=50, balance_spatial_sampling=False)
    plain = ds.make_datasets(generated_root, "vool", ds.DatasetConfig(**base))["train"][0]
    moved = ds.make_datasets(
        generated_root, "vool", ds.DatasetConfig(**base, domain_randomization=True)
    )["train"][0]
    # all in-bounds pixels are kept in both, so only the transform can change the point set
    assert not np.allclose(
        np.sort(plain["input_xyz_pts"].numpy(), 0)[:100],
        np.sort(moved["input_xyz_pts"].numpy(), 0)[:100],
    )


@pytest.mark.parametrize("flag", [False, True])
def test_sampling_weights_count_every_in_bounds_point(generated_root, flag):
    """--iou_loss_sampling_weights: each row's weights add up to the in-bounds ground-truth points,
    its positives' to the target's in-bounds points; without the flag there are none."""
    np.random.seed(0)
    low, high = np.asarray(ds.DatasetConfig().scene_bounds)
    bounds = (tuple(low), tuple(high - 0.3 * (high - low)))  # leaves some points outside
    cfg = ds.DatasetConfig(
        num_input_pts=500, num_output_pts=300, iou_loss_sampling_weights=flag, scene_bounds=bounds
    )
    train = ds.make_datasets(generated_root, "vool", cfg)["train"]
    sample = train[0]
    if not flag:
        assert "output_weight_pts" not in sample
        return
    with SceneFile(train.scene_paths[0]) as scene:
        xyz, objid = scene.ground_truth()
    inside = geometry.in_bounds(xyz, train.bounds)
    assert 0 < inside.sum() < len(inside)
    object_sizes = {int((inside & (objid == i)).sum()) for i in np.unique(objid)}
    weights, labels = sample["output_weight_pts"], sample["output_label_pts"] > 0.5
    assert weights.shape == labels.shape == (4, 300)
    rows = [(w, y) for w, y in zip(weights, labels) if 0 < y.sum() < 300]
    assert rows
    for row_weights, row_labels in rows:
        assert row_weights.sum().item() == pytest.approx(inside.sum(), rel=1e-5)
        target_inside = round(row_weights[row_labels].sum().item())
        assert target_inside in object_sizes  # the target's in-bounds points
        assert row_weights[~row_labels].min() > 1  # negatives are drawn sparsely
