"""OVSSC and VOOL on one RGB-D frame: inference to OBJ / PLY / NPZ, and headless turntable videos.

Spec: ../shared/spec/train-eval.md section 4 (commands, inference, outputs, rendering) and data.md
section 5 (the scene pickle).

    python visualize.py ovssc-inference scene.pkl models/ours/ovssc/ovssc.pth   # -> visualization/scene/
    python visualize.py ovssc-visualize visualization/scene                      # -> completion.mp4
    python visualize.py vool-inference scene.pkl models/ours/vool/vool.pth
    python visualize.py vool-visualize visualization/scene                       # -> <description>.mp4
    python visualize.py rgbd-scene color.png depth.png my_scene.pkl --intrinsics 600 600 320 240 \
        --classes chair --classes table --descriptions "mug|on|table"

Beyond the original: the network is the one args.pkl names (every approach), CPU or GPU, no
display; OBJ meshes in metres; `completion.npz` / `localization.npz` hold the per-point
probabilities and labels; a still PNG beside each video; nothing is written to the working
directory (the original wrote ./new-input.pkl); every file is written atomically.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from tqdm import tqdm

import checkpoint as ckpt_io
import figures
import frames
import inference
import net as networks
import options
import relevancy
import render
from cli_options import CheckpointOpt, DeviceOpt, ModelOpt, PretrainedOpt
from inputs import CLIP_TEXT_DIM
from processes import resolve_device
from utils import InputError, atomic_path, run_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__.split("\n")[0])

DumpOpt = Annotated[Path, typer.Option(help="outputs go to DUMP_PATH/<scene name>/")]
GridOpt = Annotated[int, typer.Option(help="query points per axis (original: 240)")]
SaliencyOpt = Annotated[
    str, typer.Option(help="relevancy config: ours (original), chefer_et_al or fast")
]
SeedOpt = Annotated[int, typer.Option(help="seed of the input-point draws and colour jitter")]
FramesOpt = Annotated[int, typer.Option(help="turntable frames (original: 220, 24 fps)")]
SizeOpt = Annotated[int, typer.Option(help="video width and height in pixels")]


# --------------------------------------------------------------------------------------------------
# shared steps


def load_trained(checkpoint_path: Path, task: str, device: torch.device):
    """(network, args, approach) from a checkpoint and the args.pkl beside it."""
    args = options.load_args(Path(checkpoint_path).parent / options.ARGS_FILE)
    stored_task = getattr(args, "task", task)
    if stored_task != task:
        raise InputError(f"{checkpoint_path} is a {stored_task} checkpoint, not {task}")
    approach = getattr(args, "approach", "semantic_abstraction")
    network = networks.build_network(task, approach, args)
    ckpt_io.load_network(network, checkpoint_path, map_location="cpu")
    return network.to(device).eval(), args, approach


def scene_relevancy(frame, labels, approach, config, clip_options, device, seed, out_dir):
    """(maps (L, H, W) or None, text features (L, D)); writes relevancies.png when there are maps."""
    extractor = relevancy.build_extractor(*clip_options, device, 32)
    text = extractor.text_features(labels, [relevancy.HOME_PROMPT]).float().cpu().numpy()
    if approach == "semantic_aware":
        if text.shape[1] != CLIP_TEXT_DIM:
            raise InputError(
                f"the semantic_aware network compares points with {CLIP_TEXT_DIM}-d CLIP text "
                f"features, and this CLIP model gives {text.shape[1]}-d: use ViT-B/32 weights"
            )
        return None, text
    settings = relevancy.saliency_config(config, frame.shape[0])
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

    frame: frames.Frame
    device: torch.device
    network: torch.nn.Module
    args: argparse.Namespace
    approach: str
    out_dir: Path
    inputs: inference.SceneInputs
    grid: np.ndarray  # (G^3, 3) query points
    rng: np.random.Generator


def start(scene_path, checkpoint_path, task, dump_path, device, saliency_config, clip_options, seed,
          grid_size) -> SceneRun:  # fmt: skip
    """Read the scene and the checkpoint, compute relevancies (relevancies.png), prepare inputs."""
    frame = frames.read_scene(scene_path)
    if task == "ovssc" and not frame.classes:
        raise InputError(f"{scene_path} has no ovssc_obj_classes")
    if task == "vool" and not frame.descriptions:
        raise InputError(f"{scene_path} has no descriptions")
    device = resolve_device(device)
    network, args, approach = load_trained(checkpoint_path, task, device)
    out_dir = Path(dump_path) / Path(scene_path).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = inference.relevancy_labels(frame, approach)
    maps, text = scene_relevancy(
        frame, labels, approach, saliency_config, clip_options, device, seed, out_dir
    )
    inputs = inference.prepare_inputs(frame, maps, labels, text, args, task)
    grid = inference.query_grid(args.scene_bounds, grid_size)
    return SceneRun(
        frame, device, network, args, approach, out_dir, inputs, grid, np.random.default_rng(seed)
    )


# --------------------------------------------------------------------------------------------------
# commands


@app.command("ovssc-inference")
def ovssc_inference(
    data_pickle_path: Annotated[Path, typer.Argument(help="scene pickle (data.md 5)")],
    model_ckpt_path: Annotated[Path, typer.Argument(help="OVSSC checkpoint; args.pkl beside it")],
    dump_path: DumpOpt = Path("visualization"),
    grid_size: GridOpt = inference.GRID_SIZE,
    saliency_config: SaliencyOpt = "ours",
    model: ModelOpt = "ViT-B-32",
    pretrained: PretrainedOpt = "openai",
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Complete every class of the scene: relevancies.png, <class>.obj, completion.npz."""
    run = start(
        data_pickle_path, model_ckpt_path, "ovssc", dump_path, device, saliency_config,
        (model, pretrained, checkpoint), seed, grid_size,
    )  # fmt: skip
    frame, device, network, args, approach, out_dir = (
        run.frame,
        run.device,
        run.network,
        run.args,
        run.approach,
        run.out_dir,
    )
    inputs, grid, rng = run.inputs, run.grid, run.rng
    bar = tqdm(
        total=len(frame.classes) * inference.num_chunks(grid_size), desc="inference", unit="chunk"
    )
    logits = np.stack(
        [
            inference.grid_logits(
                network,
                lambda index, c=c: inference.ovssc_batch(approach, inputs, c, index),
                grid,
                len(inputs.xyz),
                args.num_input_pts,
                rng,
                device,
                bar=bar,
            ).reshape((grid_size,) * 3)
            for c in frame.classes
        ]
    )
    bar.close()
    keep = inference.observed_mask(frame, args.scene_bounds, grid_size, grid)
    labels_volume = inference.ovssc_labels(logits, keep)
    taken: set[str] = set()
    written = []
    for k, name in enumerate(tqdm(frame.classes, desc="meshes", unit="class")):
        mesh = inference.volume_mesh(labels_volume == k, args.scene_bounds)
        stem = inference.safe_name(name, taken)
        if mesh is None:
            print(f"{name}: empty, no mesh")
            continue
        inference.write_obj(out_dir / f"{stem}.obj", *mesh)
        written.append(stem)
    occupied = np.flatnonzero(labels_volume.reshape(-1) >= 0)
    label_of = labels_volume.reshape(-1)[occupied]
    logit_of = logits.reshape(len(frame.classes), -1)[label_of, occupied]
    inference.write_npz(
        out_dir / "completion.npz",
        classes=np.array(frame.classes),
        file_stems=np.array([inference.safe_name(c, s) for s in [set()] for c in frame.classes]),
        xyz=grid[occupied],
        label=label_of.astype(np.int16),
        probability=(1 / (1 + np.exp(-logit_of))).astype(np.float32),
        scene_bounds=np.asarray(args.scene_bounds),
        grid_size=grid_size,
    )
    print(f"wrote {len(written)} meshes, relevancies.png and completion.npz to {out_dir}")


@app.command("vool-inference")
def vool_inference(
    data_pickle_path: Annotated[Path, typer.Argument(help="scene pickle (data.md 5)")],
    model_ckpt_path: Annotated[Path, typer.Argument(help="VOOL checkpoint; args.pkl beside it")],
    dump_path: DumpOpt = Path("visualization"),
    grid_size: GridOpt = inference.GRID_SIZE,
    saliency_config: SaliencyOpt = "ours",
    model: ModelOpt = "ViT-B-32",
    pretrained: PretrainedOpt = "openai",
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Localise every description: relevancies.png, <description>.ply, scene_rgb.ply,
    localization.npz."""
    run = start(
        data_pickle_path, model_ckpt_path, "vool", dump_path, device, saliency_config,
        (model, pretrained, checkpoint), seed, grid_size,
    )  # fmt: skip
    frame, device, network, args, approach, out_dir = (
        run.frame,
        run.device,
        run.network,
        run.args,
        run.approach,
        run.out_dir,
    )
    inputs, grid, rng = run.inputs, run.grid, run.rng
    bar = tqdm(
        total=len(frame.descriptions) * inference.num_chunks(grid_size),
        desc="inference",
        unit="chunk",
    )
    taken: set[str] = {"scene_rgb"}
    npz = {"descriptions": [], "file_stems": [], "index": [], "xyz": [], "logit": []}
    for k, description in enumerate(frame.descriptions):
        logits = inference.grid_logits(
            network,
            lambda index, d=description: inference.vool_batch(approach, inputs, d, index),
            grid,
            len(inputs.xyz),
            args.num_input_pts,
            rng,
            device,
            bar=bar,
        )
        xyz, kept_logits, colors = inference.vool_points(logits, grid)
        text_k = inference.sentence(*description)
        stem = inference.safe_name(text_k, taken)
        inference.write_ply(out_dir / f"{stem}.ply", xyz, colors)
        npz["descriptions"].append(text_k)
        npz["file_stems"].append(stem)
        npz["index"].append(np.full(len(xyz), k, np.int16))
        npz["xyz"].append(xyz)
        npz["logit"].append(kept_logits)
    bar.close()
    scene_xyz, scene_rgb = inputs.xyz, (inputs.rgb * 255).round().astype(np.uint8)
    if len(scene_xyz) > inference.SCENE_CLOUD_POINTS:
        pick = rng.choice(len(scene_xyz), inference.SCENE_CLOUD_POINTS, replace=False)
        scene_xyz, scene_rgb = scene_xyz[pick], scene_rgb[pick]
    inference.write_ply(out_dir / "scene_rgb.ply", scene_xyz, scene_rgb)
    logit = np.concatenate(npz["logit"])
    inference.write_npz(
        out_dir / "localization.npz",
        descriptions=np.array(npz["descriptions"]),
        file_stems=np.array(npz["file_stems"]),
        description_index=np.concatenate(npz["index"]),
        xyz=np.concatenate(npz["xyz"]),
        logit=logit,
        probability=(1 / (1 + np.exp(-logit))).astype(np.float32),
        scene_bounds=np.asarray(args.scene_bounds),
        grid_size=grid_size,
    )
    print(f"wrote {len(frame.descriptions)} description clouds and scene_rgb.ply to {out_dir}")


def scene_dir(output_path: Path) -> Path:
    if not output_path.is_dir():
        raise InputError(f"{output_path} is not a folder written by the inference commands")
    return output_path


@app.command("ovssc-visualize")
def ovssc_visualize(
    output_path: Annotated[Path, typer.Argument(help="scene folder of ovssc-inference")],
    num_frames: FramesOpt = 220,
    size: SizeOpt = 1024,
) -> None:
    """completion.mp4 (and completion.png) of every .obj under OUTPUT_PATH, one colour a class."""
    import trimesh

    paths = sorted(scene_dir(output_path).rglob("*.obj"))
    if not paths:
        raise InputError(f"no .obj meshes under {output_path}; run ovssc-inference first")
    shapes, names = [], []
    for k, path in enumerate(paths):
        mesh = trimesh.load(path, force="mesh", process=False)
        shapes.append(
            render.mesh_shape(mesh.vertices, mesh.faces, render.PALETTE[k % len(render.PALETTE)])
        )
        names.append(path.stem)
    colors = render.PALETTE[np.arange(len(paths)) % len(render.PALETTE)]
    render.render_turntable(
        shapes,
        output_path / "completion.mp4",
        num_frames,
        size,
        legend_image=render.legend(names, colors, size),
        still_path=output_path / "completion.png",
    )
    print(f"wrote {output_path / 'completion.mp4'} and completion.png")


@app.command("vool-visualize")
def vool_visualize(
    output_path: Annotated[Path, typer.Argument(help="scene folder of vool-inference")],
    num_frames: FramesOpt = 220,
    size: SizeOpt = 1024,
) -> None:
    """<description>.mp4 (and .png) per description cloud, shown in the scene_rgb cloud."""
    paths = sorted(scene_dir(output_path).rglob("*.ply"))
    scene_paths = [p for p in paths if p.stem == "scene_rgb"]
    if not scene_paths:
        raise InputError(f"no scene_rgb.ply under {output_path}; run vool-inference first")
    scene_xyz, scene_rgb = inference.read_ply(scene_paths[0])
    scene_xyz, scene_rgb = render.voxel_downsample(scene_xyz, scene_rgb, 0.03)
    scene_shape = render.cubes_shape(scene_xyz, scene_rgb, 0.03)
    pitch = _pitch(output_path)
    for path in [p for p in paths if p.stem != "scene_rgb"]:
        xyz, colors = inference.read_ply(path)
        render.render_turntable(
            [scene_shape, render.cubes_shape(xyz, colors, pitch)],
            path.with_suffix(".mp4"),
            num_frames,
            size,
            legend_image=render.legend([path.stem], np.array([[255, 0, 0]]), size),
            still_path=path.with_suffix(".png"),
            desc=f"render {path.stem[:30]}",
        )
        print(f"wrote {path.with_suffix('.mp4')}")


def _pitch(output_path: Path) -> float:
    """Query-grid pitch from localization.npz (cube size of the description points)."""
    path = output_path / "localization.npz"
    if path.is_file():
        with np.load(path) as data:
            return float(inference.grid_pitch(data["scene_bounds"], int(data["grid_size"])).min())
    return float(inference.grid_pitch(np.array(options.defaults().scene_bounds), 240).min())


@app.command("rgbd-scene")
def rgbd_scene(
    rgb_path: Annotated[Path, typer.Argument(help="colour image (8-bit)")],
    depth_path: Annotated[
        Path, typer.Argument(help="depth: 16-bit PNG in mm, float TIFF/EXR/.npy in metres")
    ],
    output: Annotated[Path, typer.Argument(help="scene pickle to write")],
    intrinsics: Annotated[
        tuple[float, float, float, float] | None,
        typer.Option(help="fx fy cx cy in pixels of the given images"),
    ] = None,
    intrinsics_file: Annotated[
        Path | None, typer.Option(help="3x3 intrinsics (text or .npy) instead of --intrinsics")
    ] = None,
    pose: Annotated[
        Path | None, typer.Option(help="4x4 camera-to-world (text or .npy); default: level camera")
    ] = None,
    opengl_camera: Annotated[
        bool, typer.Option(help="the pose uses OpenGL camera axes (x right, y up, z back; ARKit)")
    ] = False,
    y_up: Annotated[bool, typer.Option(help="the pose's world is y-up (turned to z-up)")] = False,
    depth_scale: Annotated[
        float | None, typer.Option(help="metres per stored depth unit (default: 0.001 for ints)")
    ] = None,
    resize: Annotated[
        tuple[int, int] | None, typer.Option(help="W H to resize to; intrinsics are scaled")
    ] = None,
    classes: Annotated[list[str] | None, typer.Option("--classes", help="repeatable")] = None,
    descriptions: Annotated[
        list[str] | None, typer.Option("--descriptions", help='repeatable "target|relation|ref"')
    ] = None,
    center: Annotated[
        bool, typer.Option(help="translate the scene into --scene-bounds if it lies outside")
    ] = False,
    scene_bounds: Annotated[
        tuple[float, float, float, float, float, float],
        typer.Option(help="x0 y0 z0 x1 y1 z1 of the network (args.pkl's scene_bounds)"),
    ] = (-1.0, -1.0, -0.1, 1.0, 1.0, 1.9),
) -> None:
    """Build a scene pickle from your own colour + depth image, intrinsics and pose."""
    if (intrinsics is None) == (intrinsics_file is None):
        raise InputError("give the intrinsics once: --intrinsics FX FY CX CY or --intrinsics-file")
    matrix = (
        intrinsics if intrinsics is not None else frames.read_matrix(intrinsics_file, "intrinsics")
    )
    camera_pose = None
    if pose is not None:
        camera_pose = frames.check_pose(frames.read_matrix(pose, "pose"), str(pose))
        if opengl_camera:
            camera_pose = frames.opengl_to_opencv(camera_pose)
        if y_up:
            camera_pose = frames.y_up_to_z_up(camera_pose)
    bounds = np.array(scene_bounds, dtype=np.float64).reshape(2, 3)
    frame, notes = frames.build_frame(
        frames.read_rgb(rgb_path),
        frames.read_depth(depth_path, depth_scale),
        matrix,
        camera_pose,
        classes,
        descriptions,
        size=resize,
        scene_bounds=bounds,
        center=center,
        source=str(rgb_path.name),
    )
    for note in notes:
        print(f"note: {note}")
    frames.write_scene(frame, output)
    print(f"wrote {output}: {frame.shape[1]}x{frame.shape[0]}, {len(frame.classes)} classes, "
          f"{len(frame.descriptions)} descriptions")  # fmt: skip


if __name__ == "__main__":
    run_app(app)
