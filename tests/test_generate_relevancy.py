"""generate_relevancy.py: the dataset command writes the original layout
(docs/data.md#the-scene-file-layout), resumes after an interruption, replaces, shards by rank and
computes oracle maps; the image command writes its figure."""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from relevancy_models import TINY
from typer.testing import CliRunner

import clip_weights
import figures
import generate_relevancy as gr
import processes
import relevancy
import relevancy_dataset
import saliency
import scene_file
from scene_file import SceneFile
from utils import InputError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:--pretrained none")
CLASSES = ["wall[0]", "television[1]", "mug[2]", "empty[3]", "apple[4]"]
TINY_ARGS = ["--model", TINY, "--pretrained", "none", "--device", "cpu"]


def regionref_dataset(scene, key, array):
    """Top-level resizable dataset with one row, and data/key holding a region reference to it."""
    top = scene.create_dataset(
        key, data=array[None], maxshape=(None, *array.shape), chunks=(1, *array.shape)
    )
    scene["data"].create_dataset(key, data=np.array([top.regionref[0]], dtype=h5py.regionref_dtype))


def make_scene(path, seed=0, size=(24, 32), randomized=False, descriptions=True, ground_truth=True):
    """A minimal THOR-layout scene: rgb, seg, full_objid_pts, objid_to_class, ..."""
    rng = np.random.default_rng(seed)
    height, width = size
    seg = np.zeros(size, np.int32)
    seg[4:12, 6:14] = 1  # television
    seg[14:20, 20:28] = 4  # apple
    with h5py.File(path, "w") as scene:
        scene.create_group("data")
        regionref_dataset(scene, "rgb", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        if ground_truth:
            regionref_dataset(scene, "seg", seg)
            regionref_dataset(scene, "full_objid_pts", np.array([0, 1, 2, 3, 4, -1], np.int32))
        scene["data"].create_dataset("objid_to_class", data=np.array(CLASSES, dtype="S"))
        if randomized:
            dr = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        else:
            dr = np.zeros((1, 1))
        scene["data"].create_dataset("domain_randomized_rgb", data=dr)
        group = scene["data"].create_group("descriptions")
        strings = h5py.string_dtype()
        if descriptions:
            for key, value in [
                ("target_obj_name", "mug"),
                ("spatial_relation_name", "on"),
                ("reference_obj_name", "television"),
            ]:
                group.create_dataset(key, data=np.array([value], dtype=object), dtype=strings)
            group.create_dataset("target_obj_id", data=np.array([2], np.int64))
        else:  # zero descriptions: every key is an empty float64 array
            for key in (
                "target_obj_name",
                "target_obj_id",
                "reference_obj_name",
                "spatial_relation_name",
            ):
                group.create_dataset(key, data=np.zeros(0))
        scene.create_dataset(
            "saliencies", shape=(0, 16, 16), maxshape=(None, 16, 16), dtype="f", chunks=(1, 16, 16)
        )
    return path


def run(*args):
    result = CliRunner().invoke(gr.app, [str(a) for a in args], catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def read_block(scene, key):
    group = scene["data/saliencies"]
    labels = [s.decode() for s in group[f"{key}|saliency_text_labels"]]
    features = group[f"{key}|saliency_text_label_features"][()]
    rows = np.stack([scene["saliencies"][ref][0] for ref in group[key]])
    return labels, features, rows


EXPECTED_LABELS = sorted(
    {"wall", "television", "tv", "apple", "mug", "mug on a television", "mug on a tv"}
)


def test_label_set_follows_data_spec_2_8(tmp_path):
    with SceneFile(make_scene(tmp_path / "s.hdf5")) as scene:
        labels, visible = relevancy_dataset.scene_labels(scene)
    # visible = ids in seg and in the points (0, 1, 4); mug only via the description; empty dropped
    assert visible == ["apple", "television", "wall"]
    assert labels == EXPECTED_LABELS


def test_dataset_writes_original_layout_readable_through_region_refs(tiny_models, tmp_path):
    (tmp_path / "matterport").mkdir()
    path = make_scene(tmp_path / "matterport" / "00001|FloorPlan1_physics.hdf5", randomized=True)
    run("dataset", tmp_path, *TINY_ARGS, "--seed", "7")
    n = len(EXPECTED_LABELS) + 1
    with h5py.File(path, "r") as scene:
        assert scene["saliencies"].shape == (4 * n, 16, 16)
        assert [s.decode() for s in scene["data/visible_scene_obj_labels"]] == [
            "apple",
            "television",
            "wall",
        ]
        assert "oracle" not in scene["data/saliencies"].attrs["source"]
        keys = [
            "rgb|ours",
            "rgb|chefer_et_al",
            "domain_randomized_rgb|ours",
            "domain_randomized_rgb|chefer_et_al",
        ]
        assert set(scene["data/saliencies"]) == {
            f"{k}{suffix}"
            for k in keys
            for suffix in ("", "|saliency_text_labels", "|saliency_text_label_features")
        }
        for block, key in enumerate(keys):  # write order
            labels, features, rows = read_block(scene, key)
            assert labels == [*EXPECTED_LABELS, "mean"]
            refs = scene["data/saliencies"][key]
            assert refs.dtype == h5py.regionref_dtype and refs.shape == (n,)
            assert np.array_equal(rows, scene["saliencies"][block * n : (block + 1) * n])
            assert np.isfinite(rows).all() and rows[:-1].max() > 0
            np.testing.assert_allclose(rows[-1], rows[:-1].mean(0), rtol=1e-5, atol=1e-9)
            assert features.shape == (n, 32)
            np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-5)
        # the randomised frame is a different picture, so its maps differ
        assert not np.array_equal(read_block(scene, keys[0])[2], read_block(scene, keys[2])[2])


def test_stored_maps_equal_computed_maps(tiny_models, tmp_path, monkeypatch):
    """Same extractor for the command and the check: the stored rows are the computed maps resized
    with nearest-exact, plus their mean."""
    torch.manual_seed(0)
    model, tokenizer = clip_weights.load_model(TINY, pretrained="none")
    extractor = relevancy.RelevancyExtractor(model, tokenizer)
    monkeypatch.setattr(relevancy, "build_extractor", lambda *args: extractor)
    path = make_scene(tmp_path / "00002|FloorPlan2_physics.hdf5", descriptions=False)
    run(
        "dataset",
        tmp_path,
        *TINY_ARGS,
        "--saliency-config",
        "chefer_et_al",
        "--saliency-config",
        "fast",
    )
    with h5py.File(path, "r") as scene:
        rgb = scene["rgb"][0]
        assert scene["saliencies"].shape[0] == 2 * 5
        for key in ("rgb|chefer_et_al", "rgb|fast"):
            labels, features, rows = read_block(scene, key)
            assert labels == ["apple", "television", "tv", "wall", "mean"]
            config = saliency.saliency_config(key.split("|")[1], 24)
            maps, text = extractor(rgb, labels[:-1], [relevancy.THOR_PROMPT], config, seed=0)
            expected = torch.nn.functional.interpolate(
                maps[None], size=(16, 16), mode="nearest-exact"
            )[0]
            np.testing.assert_allclose(rows[:-1], expected.numpy(), rtol=1e-6)
            np.testing.assert_allclose(rows[-1], expected.mean(0).numpy(), rtol=1e-5, atol=1e-10)
            mean_text = text.mean(0)
            np.testing.assert_allclose(features[:-1], text.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                features[-1], (mean_text / mean_text.norm()).numpy(), rtol=1e-5, atol=1e-6
            )


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_interrupted_run_leaves_readable_files_and_resumes(tiny_models, tmp_path, monkeypatch):
    first = make_scene(tmp_path / "00001|a.hdf5", seed=1)
    second = make_scene(tmp_path / "00002|b.hdf5", seed=2)  # processed first (reverse order)
    before = file_digest(first)
    writes = {"count": 0}
    real_write = scene_file._write

    def crash_in_second_scene(group, key, array, gzip):
        writes["count"] += 1
        if writes["count"] == 3 + 1:  # first scene: 3 writes per block (oracle: 1 config)
            raise KeyboardInterrupt
        real_write(group, key, array, gzip)

    monkeypatch.setattr(scene_file, "_write", crash_in_second_scene)
    with pytest.raises(
        KeyboardInterrupt
    ):  # called directly: click would turn Ctrl-C into an exit code
        gr.dataset(tmp_path, source="oracle", configs=["ours"])
    assert writes["count"] == 4
    assert file_digest(first) == before  # untouched, still readable
    with h5py.File(first, "r") as scene:
        assert "data/saliencies" not in scene and scene["saliencies"].shape[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00001|a.hdf5",
        "00002|b.hdf5",
    ]  # no temp left
    done = file_digest(second)
    monkeypatch.setattr(scene_file, "_write", real_write)
    run("dataset", tmp_path, "--source", "oracle", "--saliency-config", "ours")
    assert file_digest(second) == done  # skipped: already done
    with h5py.File(first, "r") as scene:
        assert read_block(scene, "rgb|ours")[0] == [*EXPECTED_LABELS, "mean"]

    run(
        "dataset",
        tmp_path,
        "--source",
        "oracle",
        "--saliency-config",
        "ours",
        "--replace",
        "--oracle-scale",
        "1",
    )
    with h5py.File(first, "r") as scene:
        labels, _, rows = read_block(scene, "rgb|ours")
        assert scene["saliencies"].shape[0] == len(labels)  # recreated, not appended
        assert rows.max() == pytest.approx(1.0)


def test_oracle_maps_peak_on_the_labelled_object(tmp_path):
    path = make_scene(tmp_path / "s.hdf5")
    run(
        "dataset", tmp_path, "--source", "oracle", "--oracle-blur", "1.5", "--oracle-noise", "0.001"
    )
    with h5py.File(path, "r") as scene:
        assert "oracle" in scene["data/saliencies"].attrs["source"]
        labels, features, rows = read_block(scene, "rgb|ours")
        assert scene["saliencies"].shape == (2 * len(labels), 16, 16)  # ours + chefer slots
        seg = scene["seg"][0]
    small_seg = torch.nn.functional.interpolate(
        torch.tensor(seg, dtype=torch.float32)[None, None], size=(16, 16), mode="nearest-exact"
    )[0, 0].numpy()
    for label, object_id in [
        ("television", 1),
        ("tv", 1),
        ("apple", 4),
        ("mug on a television", 2),
    ]:
        row = rows[labels.index(label)]
        if (small_seg == object_id).any():
            peak = np.unravel_index(row.argmax(), row.shape)
            assert small_seg[peak] == object_id, label
            assert row[small_seg == object_id].mean() > 5 * abs(row[small_seg != object_id].mean())
        else:  # mug is not in view: nothing stands out
            assert row.max() < 0.01
    assert np.all(features == 0)


def test_shards_split_scenes_by_rank(tmp_path, monkeypatch):
    items = list(range(7))
    parts = [processes.shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == items and all(len(p) >= 2 for p in parts)
    scenes = [make_scene(tmp_path / f"{i:05d}|r.hdf5", seed=i) for i in range(3)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = []
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        run("dataset", tmp_path, "--source", "oracle")
        done.append({p.name for p in scenes if relevancy_dataset.scene_done(p)})
    assert done[0] == {"00001|r.hdf5"}  # reverse order 2, 1, 0: rank 1 gets the middle one
    assert done[1] == {p.name for p in scenes}
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(gr.InputError, match="outside WORLD_SIZE"):
        run("dataset", tmp_path, "--source", "oracle")


def test_two_rank_processes_share_the_scenes(tmp_path):
    """Two processes as torchrun would start them (RANK / WORLD_SIZE), running at the same time."""
    scenes = [make_scene(tmp_path / f"{i:05d}|r.hdf5", seed=i) for i in range(4)]
    command = [
        sys.executable,
        "generate_relevancy.py",
        "dataset",
        str(tmp_path),
        "--source",
        "oracle",
    ]
    env = {**os.environ, "WORLD_SIZE": "2"}
    ranks = [
        subprocess.Popen(command, cwd=REPO, env={**env, "RANK": str(rank)}, stderr=subprocess.PIPE)
        for rank in range(2)
    ]
    for process in ranks:
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()
    for path in scenes:
        with h5py.File(path, "r") as scene:
            assert read_block(scene, "rgb|chefer_et_al")[0] == [*EXPECTED_LABELS, "mean"]
            assert scene["saliencies"].shape[0] == 2 * (len(EXPECTED_LABELS) + 1)  # written once


def test_bad_scenes_and_paths_give_clear_errors(tmp_path):
    make_scene(tmp_path / "s.hdf5", ground_truth=False)
    with pytest.raises(gr.InputError, match="needs ground-truth segmentation"):
        run("dataset", tmp_path, "--source", "oracle")
    broken = tmp_path / "other" / "broken.hdf5"
    broken.parent.mkdir()
    broken.write_bytes(b"not hdf5")
    with pytest.raises(gr.InputError, match="not a readable HDF5 file"):
        run("dataset", broken.parent, "--source", "oracle")
    broken.unlink()
    with h5py.File(broken, "w") as scene:
        scene.create_group("data").create_dataset("objid_to_class", data=np.array([b"empty[0]"]))
    with pytest.raises(gr.InputError, match="empty scene"):
        run("dataset", broken.parent, "--source", "oracle")
    with pytest.raises(gr.InputError, match="unknown --source"):
        run("dataset", tmp_path, "--source", "lidar")
    with pytest.raises(gr.InputError, match="unknown saliency config"):
        run("dataset", tmp_path, "--saliency-config", "best")
    result = subprocess.run(
        [sys.executable, "generate_relevancy.py", "dataset", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.strip().endswith(
        f"scene folder not found: {tmp_path / 'missing'}"
    )
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder made read-only for this process: chmod for a user, the immutable attribute for
    root (whom permissions do not stop); skipped where neither holds."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and not subprocess.run(["chattr", "+i", str(folder)]).returncode:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("no way to make a folder read-only for root here")
    try:
        yield folder
    finally:
        subprocess.run(undo, check=True)


def test_a_read_only_folder_is_one_line_before_any_work(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a.hdf5", "b.hdf5", "c.hdf5"):
        make_scene(folder / name)
    with read_only(folder):
        result = subprocess.run(
            [sys.executable, "generate_relevancy.py", "dataset", str(folder), "--source", "oracle"],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    problem = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
    assert result.stderr == (
        f"error: {folder} cannot be written ({problem}): relevancy is stored in place, in each "
        "scene file; copy the scenes to a folder you can write\n"
    )


def test_the_summary_counts_each_scene_once(tmp_path):
    """One scene done before (skipped), one new, one that fails: a failure is no skip."""
    make_scene(tmp_path / "a.hdf5")
    run("dataset", tmp_path, "--source", "oracle")
    make_scene(tmp_path / "b.hdf5")
    make_scene(tmp_path / "c.hdf5", ground_truth=False)  # the oracle needs its segmentation
    result = CliRunner().invoke(gr.app, ["dataset", str(tmp_path), "--source", "oracle"])
    assert isinstance(result.exception, gr.InputError)  # 1 of 3 scenes failed
    assert "1 scenes processed, 1 skipped (already done), 1 failed, of 3 under" in result.output


def test_image_command_writes_figure_and_maps(tiny_models, tmp_path):
    out, maps_path = tmp_path / "grads.png", tmp_path / "maps.npy"
    labels = ["vase", "red ball", "lamp", "table"]
    result = run(
        "image",
        *[arg for label in labels for arg in ("--labels", label)],
        "--saliency-config",
        "chefer_et_al",
        *TINY_ARGS,
        "--output",
        out,
        "--save-maps",
        maps_path,
        "--panel-width",
        320,
    )
    assert "2 crop forwards, about" in result.output
    maps = np.load(maps_path)
    assert maps.shape == (4, 480, 640) and np.isfinite(maps).all()
    figure = np.asarray(Image.open(out))
    # 4 labels: a 2 x 2 grid of 320 x 240 panels, titles and a colour bar
    assert 2 * 320 < figure.shape[1] < 2 * 320 + 60 and figure.shape[0] > 2 * 240 + 40
    run(
        "image",
        "--labels",
        "a",
        "--labels",
        "b",
        "--columns",
        2,
        *TINY_ARGS,
        "--output",
        out,
        "--saliency-config",
        "chefer_et_al",
        "--fix-crop-tiling",
        "--panel-width",
        100,
    )
    assert np.asarray(Image.open(out)).shape[1] < 2 * 100 + 60


def test_figure_panels_use_the_original_colour_scheme():
    image = np.full((20, 30, 3), 200, np.uint8)
    maps = np.stack([np.full((20, 30), 0.008), np.full((20, 30), 0.002)])
    figure = np.asarray(
        figures.relevancy_figure(image, maps, ["hot", "cold"], 0.002, 0.008, panel_width=30)
    )
    assert (figure == figures.overlay(image, maps[0], 0.002, 0.008)[0, 0]).all(-1).sum() >= 20 * 30
    hot, cold = (
        figures.overlay(image, maps[0], 0.002, 0.008),
        figures.overlay(image, maps[1], 0.002, 0.008),
    )
    assert (hot == 200).all()  # relevant: the photo shows through
    np.testing.assert_array_equal(
        cold[0, 0], np.round((0.3 * 200 / 255 + 0.7 * np.array([0, 0, 0.5])) * 255)
    )


def image_error(*args):
    result = CliRunner().invoke(gr.app, [str(a) for a in args])
    assert isinstance(result.exception, gr.InputError), result.output
    return str(result.exception)


def test_image_command_bad_inputs_are_one_line(tiny_models, tmp_path):
    assert "image not found" in image_error("image", tmp_path / "nope.png", *TINY_ARGS)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    message = image_error("image", text, *TINY_ARGS)
    assert message == f"{text} is not an image (no image format recognised)"
    assert "empty label" in image_error("image", "--labels", " ", *TINY_ARGS)
    assert "has no {}" in image_error("image", "--labels", "a", "--prompts", "a photo", *TINY_ARGS)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 10000, 3), np.uint8)).save(wide)
    message = image_error("image", wide, "--saliency-config", "fast", *TINY_ARGS)
    assert "203,958 crop forwards" in message and "--max-crop-forwards 203958" in message
    garbage = tmp_path / "w.pt"
    garbage.write_bytes(b"junk")
    message = image_error("image", "--checkpoint", garbage, "--device", "cpu")
    assert message == f"checkpoint {garbage} is not a PyTorch weights file (torch cannot read it)"


def test_single_label_figure_shows_the_raw_map_and_says_so(tiny_models, tmp_path):
    out = tmp_path / "one.png"
    result = run(
        "image",
        "--labels",
        "vase",
        "--saliency-config",
        "chefer_et_al",
        *TINY_ARGS,
        "--output",
        out,
        "--panel-width",
        64,
    )
    assert "note: one label: its raw relevancy" in result.output
    figure = np.asarray(Image.open(out)).astype(int)
    assert figure.std() > 5  # not a blank figure


def test_jet_is_matplotlibs_jet():
    """Values printed by matplotlib's own `plt.cm.jet(x)[:3]` (the original's colormap)."""
    matplotlib_jet = {
        0.0: (0.0, 0.0, 0.5),
        0.375: (0.08538899430740036, 1.0, 0.8823529411764706),
        0.5: (0.4901960784313725, 1.0, 0.4775458570524984),
        0.625: (0.8950031625553446, 1.0, 0.07273877292852626),
        0.75: (1.0, 0.5816993464052289, 0.0),
        1.0: (0.5, 0.0, 0.0),
    }
    values = np.array(list(matplotlib_jet))
    np.testing.assert_allclose(figures.jet(values), list(matplotlib_jet.values()), atol=1e-12)
    assert figures.jet(np.zeros((2, 3))).shape == (2, 3, 3)


def test_no_weights_offline_is_one_line_naming_both_options(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "generate_relevancy.py", "image", "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no ViT-B-32 weights")
    assert "--pretrained openai" in lines[0] and "--checkpoint PATH" in lines[0]


@pytest.mark.parametrize("flags, tiling", [([], "parity"), (["--fix-crop-tiling"], "full")])
def test_dataset_takes_fix_crop_tiling_as_image_does(tmp_path, monkeypatch, flags, tiling):
    used = []

    def extractor(rgb, labels, prompts, settings, seed):
        used.append(settings.tiling)
        return torch.zeros(len(labels), *rgb.shape[:2]), torch.zeros(len(labels), 32)

    monkeypatch.setattr(relevancy, "build_extractor", lambda *args, **kwargs: extractor)
    make_scene(tmp_path / "00003|FloorPlan3_physics.hdf5", descriptions=False)
    run("dataset", tmp_path, *TINY_ARGS, "--saliency-config", "ours", *flags)
    assert used == [tiling]


def test_dataset_refuses_fix_crop_tiling_with_parity_tiling(tmp_path):
    make_scene(tmp_path / "00003|FloorPlan3_physics.hdf5", descriptions=False)
    result = CliRunner().invoke(
        gr.app, ["dataset", str(tmp_path), "--fix-crop-tiling", "--tiling", "parity"]
    )
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == "--fix-crop-tiling contradicts --tiling parity"


def test_reduced_precision_on_a_cpu_only_where_the_hardware_runs_it(
    tiny_models, tmp_path, monkeypatch
):
    """bf16 on a CPU without AMX or AVX512-BF16 is emulated (~5x slower): one line naming fp32;
    where the CPU has them it runs, and the command says the maps are not parity."""
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: False)
    message = image_error("image", "--precision", "bf16", *TINY_ARGS)
    capability = torch.backends.cpu.get_cpu_capability()
    assert message == (
        f"--precision bf16 is emulated on this CPU ({capability}: no AMX or AVX512-BF16) and 4-8x "
        "slower than fp32; use --precision fp32"
    )
    assert "for GPUs" in image_error("image", "--precision", "fp16", *TINY_ARGS)
    assert "unknown precision" in image_error("image", "--precision", "fp8", *TINY_ARGS)
    monkeypatch.setattr(processes, "bf16_is_fast", lambda device: True)
    out = tmp_path / "grads.png"
    result = run(
        "image", "--precision", "bf16", "--saliency-config", "chefer_et_al", *TINY_ARGS,
        "--output", out,
    )  # fmt: skip
    assert "(bf16 autocast, not parity)" in result.output and out.exists()
