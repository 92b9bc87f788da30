"""visualize.py's ovssc-inference and vool-inference, one scene end to end: `start_run` reads the
scene (a scene pickle, with relevancies computed by CLIP, or a dataset scene file with its stored
relevancy and ground truth) and the checkpoint; `run_ovssc` and `run_vool` run the network over the
query grid (inference.py) and write the scene's folder (docs/visualization.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import checkpoint as ckpt_io
import dataset_scene
import figures
import inputs
import net
import options
import relevancy
import saliency
from frames import Frame, read_scene_pickle
from inference import (
    SceneInputs,
    clear_border,
    description_name,
    grid_logits,
    grid_pitch,
    num_chunks,
    observed_mask,
    ovssc_batch,
    ovssc_labels,
    prepare_inputs,
    query_grid,
    relevancy_labels,
    safe_name,
    volume_mesh,
    vool_batch,
    vool_points,
    write_npz,
    write_obj,
    write_ply,
)
from processes import resolve_device
from utils import InputError, atomic_path, remove_stale_temp_files

SCENE_CLOUD_POINTS = 100_000  # points of scene_rgb.ply


def load_trained(checkpoint_path: Path, task: str, device: torch.device):
    """(network, args, approach) from a checkpoint and the args.pkl beside it."""
    if Path(checkpoint_path).is_dir():
        raise InputError(
            f"checkpoint {checkpoint_path} is a folder: give the .pth file in it (e.g. "
            f"{Path(checkpoint_path) / 'latest.pth'}), with args.pkl beside it"
        )
    args = options.load_args(Path(checkpoint_path).parent / options.ARGS_FILE)
    stored_task = getattr(args, "task", task)
    if stored_task != task:
        raise InputError(f"{checkpoint_path} is a {stored_task} checkpoint, not {task}")
    approach = getattr(args, "approach", "semantic_abstraction")
    network = net.build_network(task, approach, args)
    ckpt_io.load_network(network, checkpoint_path, map_location="cpu")
    return network.to(device).eval(), args, approach


def clip_text(extractor, labels: list[str]) -> np.ndarray:
    """(L, D) CLIP text features of the labels in the home prompt."""
    return extractor.text_features(labels, [relevancy.HOME_PROMPT]).float().cpu().numpy()


def scene_relevancy(frame, labels, approach, config, clip_options, device, seed, out_dir):
    """(maps (L, H, W) or None, text features (L, D)); writes relevancies.png when there are maps."""
    extractor = relevancy.build_extractor(*clip_options, device, 32)
    text = clip_text(extractor, labels)
    if approach == "semantic_aware":
        if text.shape[1] != inputs.CLIP_TEXT_DIM:
            raise InputError(
                f"the semantic_aware network compares points with {inputs.CLIP_TEXT_DIM}-d CLIP "
                f"text features, and this CLIP model gives {text.shape[1]}-d: use ViT-B/32 weights"
            )
        return None, text
    settings = saliency.saliency_config(config, frame.shape[0])
    maps, _ = extractor(frame.rgb, labels, [relevancy.HOME_PROMPT], settings, seed, progress=True)
    maps = maps.float().numpy()
    figure = (
        figures.relevancy_figure(  # the original's overlay: jet of clip(rel / 0.01), alpha 0.7(1-g)
            frame.rgb, relevancy.mean_over_labels(torch.from_numpy(maps)).numpy(), labels, 0.0, 0.01
        )
    )
    with atomic_path(out_dir / "relevancies.png") as tmp:
        figure.save(tmp, format="PNG")
    return maps, text


@dataclass
class SceneRun:
    """Everything both inference commands prepare before their own loop."""

    frame: Frame
    device: torch.device
    network: torch.nn.Module
    args: argparse.Namespace
    approach: str
    out_dir: Path
    inputs: SceneInputs
    grid: np.ndarray  # (G^3, 3) query points
    grid_size: int  # G
    rng: np.random.Generator
    truth: dict | None = None  # a dataset scene's evaluation sample (ground truth); None: pickle

    def chunk_bar(self, count: int) -> tqdm:
        """One progress bar over the chunks of `count` classes or descriptions."""
        return tqdm(total=count * num_chunks(self.grid_size), desc="inference", unit="chunk")

    def logits(self, make_batch: Callable[[np.ndarray], dict], bar: tqdm) -> np.ndarray:
        """(G^3,) logits of one class or description over the query grid."""
        return grid_logits(
            self.network, make_batch, self.grid, len(self.inputs.xyz), self.args.num_input_pts,
            self.rng, self.device, bar=bar,
        )  # fmt: skip


def start_run(scene_path, checkpoint_path, task, dump_path, device, saliency_config, clip_options,
              seed, grid_size) -> SceneRun:  # fmt: skip
    """Read the scene and the checkpoint, prepare inputs: from a scene pickle with relevancies
    computed by CLIP (relevancies.png), or from a dataset scene file with its stored relevancy and
    ground truth (dataset_scene.py)."""
    from_dataset = dataset_scene.is_scene_file(scene_path)
    frame = None if from_dataset else pickle_frame(scene_path, task)
    device = resolve_device(device)
    network, args, approach = load_trained(checkpoint_path, task, device)
    out_dir = Path(dump_path) / Path(scene_path).stem
    truth = None
    if from_dataset:
        frame, prepared, truth = dataset_inputs(Path(scene_path), task, args, approach,
                                                clip_options, device)  # fmt: skip
        claim_folder(out_dir, task)
    else:
        claim_folder(out_dir, task)
        labels = relevancy_labels(frame, approach)
        maps, text = scene_relevancy(
            frame, labels, approach, saliency_config, clip_options, device, seed, out_dir
        )
        prepared = prepare_inputs(frame, maps, labels, text, args, task)
    grid = query_grid(args.scene_bounds, grid_size)
    rng = np.random.default_rng(seed)
    return SceneRun(
        frame, device, network, args, approach, out_dir, prepared, grid, grid_size, rng, truth
    )


# What an inference command and the visualize command after it write into a scene's folder, which
# OVSSC and VOOL share: OVSSC <class>.obj and these names; VOOL <description>.ply with its .mp4 and
# .png, scene_rgb.ply and these names. A rerun removes the earlier run's, so the folder holds only
# its own outputs (and the other task's).
OVSSC_OUTPUTS = {"completion.npz", "completion.mp4", "completion.png", "completion_vs_gt.png"}
VOOL_OUTPUTS = {"localization.npz", "localization_vs_gt.png"}
SHARED_OUTPUTS = {"relevancies.png"}  # written by both, this run's replaces the earlier


def earlier_outputs(out_dir: Path, task: str) -> list[Path]:
    """The files an earlier run of `task` left in out_dir."""
    files = [path for path in out_dir.iterdir() if path.is_file()]
    if task == "ovssc":
        names, cloud = OVSSC_OUTPUTS | SHARED_OUTPUTS, ".obj"
    else:
        names, cloud = VOOL_OUTPUTS | SHARED_OUTPUTS, ".ply"
    clouds = {path.stem for path in files if path.suffix == cloud}
    return sorted(
        path
        for path in files
        if path.suffix == cloud
        or path.name in names
        or (task == "vool" and path.suffix in (".mp4", ".png") and path.stem in clouds)
    )


def claim_folder(out_dir: Path, task: str) -> None:
    """Make the scene's output folder; remove the temporary files of killed writers and what an
    earlier run of the same command left there, in one line each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temp_files(out_dir):
        print(f"removed {stale.name}, left by an interrupted run", flush=True)
    earlier = earlier_outputs(out_dir, task)
    for path in earlier:
        path.unlink()
    if earlier:
        shown = ", ".join(path.name for path in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        print(f"removed an earlier {task} run's {len(earlier)} files from {out_dir} ({shown})")


def pickle_frame(scene_path, task: str) -> Frame:
    """The frame of a scene pickle, with the rows the task needs."""
    frame = read_scene_pickle(scene_path)
    if task == "ovssc" and not frame.classes:
        raise InputError(f"{scene_path} has no ovssc_obj_classes")
    if task == "vool" and not frame.descriptions:
        raise InputError(f"{scene_path} has no descriptions")
    return frame


def dataset_inputs(scene_path: Path, task, args, approach, clip_options, device):
    """(frame, SceneInputs, the dataset's evaluation sample) of a dataset scene file; CLIP is
    loaded only for the text features of semantic_aware VOOL (the OVSSC ones are stored)."""
    scene = dataset_scene.read_dataset_scene(scene_path, task, args)
    frame, sample = scene.frame, scene.sample
    text = scene.text
    if task == "vool" and approach == "semantic_aware":
        labels = relevancy_labels(frame, approach)
        extractor = relevancy.build_extractor(*clip_options, device, 32)
        text = dict(zip(labels, clip_text(extractor, labels)))
    prepared = SceneInputs(
        np.asarray(sample["input_xyz_pts"], np.float32),
        dataset_scene.input_rgb(sample, frame, task, args.scene_bounds),
        dataset_scene.input_features(sample, task, approach),
        text,
    )
    return frame, prepared, sample


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def run_ovssc(run: SceneRun) -> tuple[list[str], list[str]]:
    """Complete every class: <class>.obj per non-empty class and completion.npz in run.out_dir.
    Returns (stems of the meshes written, classes left empty)."""
    classes, shape = run.frame.classes, (run.grid_size,) * 3
    bar = run.chunk_bar(len(classes))
    logits = np.stack(
        [
            run.logits(lambda index, c=c: ovssc_batch(run.approach, run.inputs, c, index), bar)
            for c in classes
        ]
    ).reshape((len(classes), *shape))
    bar.close()
    keep = observed_mask(run.frame, run.args.scene_bounds, run.grid_size, run.grid)
    labels = ovssc_labels(logits, keep)
    taken: set[str] = set()
    stems = [safe_name(name, taken) for name in classes]
    written, empty = [], []
    for k in tqdm(range(len(classes)), desc="meshes", unit="class"):
        mesh = volume_mesh(labels == k, run.args.scene_bounds)
        if mesh is None:
            empty.append(classes[k])
            continue
        write_obj(run.out_dir / f"{stems[k]}.obj", *mesh)
        written.append(stems[k])
    truth = {} if run.truth is None else ovssc_truth(run, keep)
    write_completion_npz(run, logits, labels, stems, truth)
    return written, empty


def ovssc_truth(run: SceneRun, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The npz keys of a dataset scene's ground truth on the query grid (dataset_scene.py):
    gt_labels (G, G, G) int16 class index or -1, gt_hidden (G, G, G) bool, and the camera pose."""
    gt_labels = clear_border(dataset_scene.grid_truth(run.truth, run.grid, keep))
    pitch = float(grid_pitch(run.args.scene_bounds, run.grid_size).max())
    hidden = dataset_scene.hidden_voxels(gt_labels, run.grid, run.frame, pitch)
    return dict(gt_labels=gt_labels, gt_hidden=hidden, cam_pose=run.frame.cam_extr)


def write_completion_npz(run: SceneRun, logits: np.ndarray, labels: np.ndarray, stems,
                         truth: dict[str, np.ndarray]) -> None:  # fmt: skip
    """completion.npz: every labelled grid point with its class and that class's probability, and
    the `truth` arrays (dataset scenes)."""
    occupied = np.flatnonzero(labels.reshape(-1) >= 0)
    label_of = labels.reshape(-1)[occupied]
    logit_of = logits.reshape(len(stems), -1)[label_of, occupied]
    write_npz(
        run.out_dir / "completion.npz",
        classes=np.array(run.frame.classes),
        file_stems=np.array(stems),
        xyz=run.grid[occupied],
        label=label_of.astype(np.int16),
        probability=sigmoid(logit_of),
        scene_bounds=np.asarray(run.args.scene_bounds),
        grid_size=run.grid_size,
        **truth,
    )


def run_vool(run: SceneRun) -> list[np.ndarray]:
    """Localise every description: <description>.ply, scene_rgb.ply and localization.npz in
    run.out_dir. Returns each description's (G^3,) logits over the query grid."""
    descriptions = run.frame.descriptions
    grid_logits_of = []
    bar = run.chunk_bar(len(descriptions))
    taken: set[str] = {"scene_rgb"}
    npz = {"descriptions": [], "file_stems": [], "index": [], "xyz": [], "logit": []}
    for k, description in enumerate(descriptions):
        logits = run.logits(
            lambda index, d=description: vool_batch(run.approach, run.inputs, d, index), bar
        )
        grid_logits_of.append(logits)
        xyz, kept_logits, colors = vool_points(logits, run.grid)
        name = description_name(*description)
        stem = safe_name(name, taken)
        write_ply(run.out_dir / f"{stem}.ply", xyz, colors)
        npz["descriptions"].append(name)
        npz["file_stems"].append(stem)
        npz["index"].append(np.full(len(xyz), k, np.int16))
        npz["xyz"].append(xyz)
        npz["logit"].append(kept_logits)
    bar.close()
    write_scene_cloud(run)  # draws from run.rng after every description, as before
    write_localization_npz(run, npz)
    return grid_logits_of


def write_scene_cloud(run: SceneRun) -> None:
    """scene_rgb.ply: up to SCENE_CLOUD_POINTS input points (random, without replacement)."""
    scene_xyz, scene_rgb = run.inputs.xyz, (run.inputs.rgb * 255).round().astype(np.uint8)
    if len(scene_xyz) > SCENE_CLOUD_POINTS:
        pick = run.rng.choice(len(scene_xyz), SCENE_CLOUD_POINTS, replace=False)
        scene_xyz, scene_rgb = scene_xyz[pick], scene_rgb[pick]
    write_ply(run.out_dir / "scene_rgb.ply", scene_xyz, scene_rgb)


def vool_truth(run: SceneRun) -> dict[str, np.ndarray]:
    """The npz keys of a dataset scene's ground truth: each description's target-object points
    (gt_xyz, gt_description_index) and the camera pose; none for a pickle."""
    if run.truth is None:
        return {}
    xyz, index = dataset_scene.description_truth(run.truth)
    return dict(gt_xyz=xyz, gt_description_index=index, cam_pose=run.frame.cam_extr)


def write_localization_npz(run: SceneRun, parts: dict[str, list]) -> None:
    """localization.npz from the per-description lists of run_vool, with vool_truth's keys."""
    logit = np.concatenate(parts["logit"])
    write_npz(
        run.out_dir / "localization.npz",
        descriptions=np.array(parts["descriptions"]),
        file_stems=np.array(parts["file_stems"]),
        description_index=np.concatenate(parts["index"]),
        xyz=np.concatenate(parts["xyz"]),
        logit=logit,
        probability=sigmoid(logit),
        scene_bounds=np.asarray(run.args.scene_bounds),
        grid_size=run.grid_size,
        **vool_truth(run),
    )
