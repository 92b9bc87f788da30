"""OVSSC and VOOL on one RGB-D frame: inference to OBJ / PLY / NPZ, and headless turntable videos.

The commands and their outputs: docs/visualization.md; the original's inference:
docs/method.md#visualization; the scene pickle: docs/data.md#the-scene-pickle.

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

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import comparisons
import frames
import geometry
import inference
import inference_run
import render
from cli_options import CheckpointOpt, DeviceOpt, ModelOpt, PretrainedOpt
from utils import InputError, remove_stale_temp_files, run_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__.split("\n")[0])

DumpOpt = Annotated[Path, typer.Option(help="outputs go to DUMP_PATH/<scene name>/")]
GridOpt = Annotated[int, typer.Option(help="query points per axis (original: 240)")]
SaliencyOpt = Annotated[
    str, typer.Option(help="relevancy config: ours (original), chefer_et_al or fast")
]
SeedOpt = Annotated[int, typer.Option(help="seed of the input-point draws and colour jitter")]
FramesOpt = Annotated[int, typer.Option(help="turntable frames (original: 220, 24 fps)")]
SizeOpt = Annotated[int, typer.Option(help="video width and height in pixels")]


def at_least_one(**values: int) -> None:
    """One line for the first numeric option below 1 (0 frames would write an invalid mp4)."""
    for name, value in values.items():
        if value < 1:
            option = "--" + name.replace("_", "-") if " " not in name else "--" + name
            raise InputError(f"{option} must be at least 1, got {value}")


def remove_stale(folder: Path) -> None:
    """The temporary files a killed run left in folder, one line each (as training and eval)."""
    for stale in remove_stale_temp_files(folder):
        print(f"removed {stale.name}, left by an interrupted run")


def inference_command(task: str, finish: Callable[[inference_run.SceneRun], None]):
    """The command of one task's inference: both take the same flags, prepare the scene with
    inference_run.start_run, then `finish` runs the task's loop and prints what it wrote."""

    def command(
        data_pickle_path: Annotated[
            Path,
            typer.Argument(
                help="scene pickle (docs/data.md#the-scene-pickle), or a dataset scene file (.hdf5: "
                "its stored relevancy, ground truth drawn beside the prediction)"
            ),
        ],
        model_ckpt_path: Path,  # annotated below: its help names the task
        dump_path: DumpOpt = Path("visualization"),
        grid_size: GridOpt = inference.GRID_SIZE,
        saliency_config: SaliencyOpt = "ours",
        model: ModelOpt = "ViT-B-32",
        pretrained: PretrainedOpt = "openai",
        checkpoint: CheckpointOpt = None,
        device: DeviceOpt = "auto",
        seed: SeedOpt = 0,
    ) -> None:
        at_least_one(grid_size=grid_size)
        run = inference_run.start_run(
            data_pickle_path, model_ckpt_path, task, dump_path, device, saliency_config,
            (model, pretrained, checkpoint), seed, grid_size,
        )  # fmt: skip
        finish(run)

    command.__annotations__["model_ckpt_path"] = Annotated[
        Path, typer.Argument(help=f"{task.upper()} checkpoint; args.pkl beside it")
    ]
    command.__doc__ = finish.__doc__
    return command


def ovssc_inference(run: inference_run.SceneRun) -> None:
    """Complete every class of the scene: relevancies.png, <class>.obj, completion.npz."""
    written, empty = inference_run.run_ovssc(run)
    for name in empty:
        print(f"{name}: empty, no mesh")
    if run.truth is None:
        print(f"wrote {len(written)} meshes, relevancies.png and completion.npz to {run.out_dir}")
        return
    picture = comparisons.completion_comparison(run.out_dir)
    print(f"wrote {len(written)} meshes, completion.npz and {picture.name} to {run.out_dir}")


def vool_inference(run: inference_run.SceneRun) -> None:
    """Localise every description: relevancies.png, <description>.ply, scene_rgb.ply,
    localization.npz."""
    inference_run.run_vool(run)
    count = len(run.frame.descriptions)
    print(f"wrote {count} description clouds and scene_rgb.ply to {run.out_dir}")
    if run.truth is not None:
        print(f"wrote {comparisons.localization_comparison(run.out_dir)}")


app.command("ovssc-inference")(inference_command("ovssc", ovssc_inference))
app.command("vool-inference")(inference_command("vool", vool_inference))


@app.command("ovssc-visualize")
def ovssc_visualize(
    output_path: Annotated[Path, typer.Argument(help="scene folder of ovssc-inference")],
    num_frames: FramesOpt = 220,
    size: SizeOpt = 1024,
) -> None:
    """completion.mp4 (and completion.png) of every .obj under OUTPUT_PATH, one colour a class."""
    at_least_one(num_frames=num_frames, size=size)
    remove_stale(output_path)
    video = render.completion_turntable(output_path, num_frames, size)
    print(f"wrote {video} and completion.png")


@app.command("vool-visualize")
def vool_visualize(
    output_path: Annotated[Path, typer.Argument(help="scene folder of vool-inference")],
    num_frames: FramesOpt = 220,
    size: SizeOpt = 1024,
) -> None:
    """<description>.mp4 (and .png) per description cloud, shown in the scene_rgb cloud."""
    at_least_one(num_frames=num_frames, size=size)
    remove_stale(output_path)
    for video in render.localization_turntables(output_path, num_frames, size):
        print(f"wrote {video}")


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
    ] = (*geometry.DEFAULT_SCENE_BOUNDS[0], *geometry.DEFAULT_SCENE_BOUNDS[1]),
) -> None:
    """Build a scene pickle from your own colour + depth image, intrinsics and pose."""
    at_least_one(**dict(zip(("resize width", "resize height"), resize or ())))
    if depth_scale is not None and not depth_scale > 0:
        raise InputError(f"--depth-scale must be positive metres per unit, got {depth_scale:g}")
    if (intrinsics is None) == (intrinsics_file is None):
        raise InputError("give the intrinsics once: --intrinsics FX FY CX CY or --intrinsics-file")
    matrix = (
        intrinsics if intrinsics is not None else frames.read_matrix(intrinsics_file, "intrinsics")
    )
    camera_pose = None if pose is None else frames.read_pose(pose, opengl_camera, y_up)
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
    frames.write_scene_pickle(frame, output)
    print(f"wrote {output}: {frame.shape[1]}x{frame.shape[0]}, {len(frame.classes)} classes, "
          f"{len(frame.descriptions)} descriptions")  # fmt: skip


if __name__ == "__main__":
    run_app(app)
