"""The main job (`make demo`): the whole Semantic Abstraction pipeline on a small bundled default.

    python demo.py                       # everything under outputs/demo/, about 10 minutes on 2 CPU cores
    python demo.py --out outputs/demo2 --train-minutes 1 --device cpu

Stages, each one of the project's own scripts run as a user would run it:
  1. scenes      generate_scenes.py dataset   small procedural rooms in the original HDF5 format
  2. relevancy   generate_relevancy.py dataset  CLIP relevancy when CLIP weights are on this machine,
                                                otherwise ground-truth-mask ("oracle") maps, said loudly
  3. train       train_ovssc.py, train_vool.py  small networks, a few minutes each
  4. evaluate    eval.py                       every novel-room/visual/vocabulary split, 25 cutoffs
  5. summarize   summarize.py                  the paper's tables for these two models
  6. visualize   visualize.py                  one scene to .obj/.ply/.npz, turntable mp4s and a PNG

A stage whose outputs exist is skipped, so an interrupted demo continues where it stopped; every
script writes its files atomically, so nothing is left half-written. `--fresh` starts over.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel

from utils import InputError, run_app

REPO = Path(__file__).resolve().parent
app = typer.Typer(add_completion=False, help=__doc__)
console = Console()

# The small network every demo stage shares: 32^3 grid, 4-level UNet, a few thousand points.
# The same small network as bench/learn.py, which learns within minutes on 2 CPU cores.
SMALL_NETWORK = [
    "--voxel_shape", "32", "32", "32",
    "--unet_num_levels", "4",
    "--unet_f_maps", "16",
    "--num_input_pts", "8000",
    "--num_output_pts", "8000",
    "--num_workers", "1",
]  # fmt: skip
TASKS = ("ovssc", "vool")
ORACLE_NOTICE = (
    "No CLIP weights on this machine: the relevancy maps are built from the ground-truth "
    "segmentation (--source oracle), an upper bound, [bold]not CLIP[/]. The numbers below "
    "show that the pipeline learns, not the paper's zero-shot results. With weights "
    "(see README, 'CLIP weights'), run with --relevancy-source clip --fresh."
)


def clip_weights_available() -> bool:
    """True when open_clip's ViT-B-32 OpenAI weights are already on this machine (no download)."""
    import clip_weights

    return clip_weights.cached_weights("ViT-B-32", "openai") is not None


class Pipeline:
    """The demo's folders under `out`, and the runner of its stages."""

    def __init__(self, out: Path, device: str):
        self.started = time.perf_counter()
        self.data, self.models, self.vis = out / "data", out / "models", out / "visualization"
        self.device = device
        self.checkpoints = {task: self.models / task / "latest.pth" for task in TASKS}
        self.scene = self.data / "procedural_00000.pkl"  # the scene that gets visualised
        self.scene_dir = self.vis / self.scene.stem

    def eval_stats(self, task: str) -> Path:
        return self.checkpoints[task].with_name("latest_eval_stats.pkl")

    def run(self, title: str, done: list[Path], arguments: list[str]) -> None:
        """Run `python <arguments>` unless all of `done` exist; stop the demo with its message if it
        fails."""
        if done and all(path.exists() for path in done):
            console.print(f"[dim]✓ {title}: already done ({done[0]})[/]")
            return
        console.rule(f"[bold]{title}")
        console.print("[dim]$ python " + " ".join(arguments) + "[/]")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, *arguments], cwd=REPO)
        if result.returncode != 0:
            raise InputError(
                f"demo stage '{title}' failed (exit {result.returncode}); rerun demo.py to continue"
            )
        console.print(f"[green]✓ {title}[/] in {time.perf_counter() - start:.0f} s")


def generate_scenes(pipeline: Pipeline, num_scenes: int) -> None:
    data = pipeline.data
    pipeline.run(
        "1/6 scenes",
        [data / "ssc_split.pkl", data / "vool_split.pkl"],
        ["generate_scenes.py", "dataset", str(data), "--num-scenes", str(num_scenes),
         "--preset", "small", "--num-processes", "2", "--vis-seed", "0"],
    )  # fmt: skip


def relevancy_source_for(relevancy_source: str) -> str:
    """clip or oracle: auto picks CLIP when its weights are here; oracle maps are said loudly."""
    source = relevancy_source
    if source == "auto":
        source = "clip" if clip_weights_available() else "oracle"
    if source == "oracle":
        console.print(Panel(ORACLE_NOTICE, title="relevancy: oracle", style="yellow"))
    return source


def generate_relevancy(pipeline: Pipeline, source: str) -> None:
    pipeline.run(
        "2/6 relevancy",
        [],  # resumable by itself: scenes that have their maps are skipped
        ["generate_relevancy.py", "dataset", str(pipeline.data), "--source", source,
         "--saliency-config", "ours"],
    )  # fmt: skip


def train(pipeline: Pipeline, train_minutes: float) -> None:
    for task in TASKS:
        log = pipeline.checkpoints[task].parent
        pipeline.run(
            f"3/6 train {task.upper()}",
            [log / "latest.pth", log / "args.pkl"],
            [f"train_{task}.py", "--file_path", str(pipeline.data), "--log", str(log),
             *SMALL_NETWORK, "--max_minutes", str(train_minutes), "--epochs", "1000",
             "--eval_freq", "0", "--save_freq", "0", "--lr", "3e-3", "--num_warmup_steps", "50",
             "--lr_scheduler_type", "constant_with_warmup", "--device", pipeline.device],
        )  # fmt: skip


def evaluate(pipeline: Pipeline) -> None:
    for task in TASKS:
        pipeline.run(
            f"4/6 evaluate {task.upper()}",
            [pipeline.eval_stats(task)],
            ["eval.py", "--task", task, "--file_path", str(pipeline.data),
             "--load", str(pipeline.checkpoints[task]), "--device", pipeline.device,
             "--num_workers", "2"],
        )  # fmt: skip


def summarize(pipeline: Pipeline) -> None:
    pipeline.run(
        "5/6 summarize",
        [],
        ["summarize.py", "--ovssc", f"ours={pipeline.eval_stats('ovssc')}",
         "--vool", f"ours={pipeline.eval_stats('vool')}", "--tables", "ovssc,vool"],
    )  # fmt: skip


def visualize(
    pipeline: Pipeline, source: str, grid_size: int, num_frames: int, frame_size: int
) -> None:
    """Per task: the inference dump of one scene, then its turntable videos."""
    clip = ["--saliency-config", "fast"] + ([] if source == "clip" else ["--pretrained", "none"])
    scene_dir = pipeline.scene_dir
    npz = {"ovssc": "completion.npz", "vool": "localization.npz"}
    for task in TASKS:
        pipeline.run(
            f"6/6 visualize {task.upper()}",
            [scene_dir / npz[task]],
            ["visualize.py", f"{task}-inference", str(pipeline.scene),
             str(pipeline.checkpoints[task]), "--dump-path", str(pipeline.vis),
             "--grid-size", str(grid_size), "--device", pipeline.device, *clip],
        )  # fmt: skip
        videos = (
            [scene_dir / "completion.mp4"]
            if task == "ovssc"
            else [p.with_suffix(".mp4") for p in scene_dir.glob("*.ply") if p.stem != "scene_rgb"]
        )
        pipeline.run(
            f"6/6 render {task.upper()}",
            videos,
            ["visualize.py", f"{task}-visualize", str(scene_dir),
             "--num-frames", str(num_frames), "--size", str(frame_size)],
        )  # fmt: skip


def print_done(pipeline: Pipeline) -> None:
    minutes = (time.perf_counter() - pipeline.started) / 60
    console.print(
        Panel(
            f"scenes and relevancy   {pipeline.data}\n"
            f"models and eval stats  {pipeline.models}/{{ovssc,vool}}/\n"
            f"visualization          {pipeline.scene_dir}/ (mp4, png, obj, ply, npz)\n"
            f"total                  {minutes:.1f} min",
            title="demo done: the tables above are voxel 32^3 IoU x 100 on the held-out rooms",
            style="green",
        )
    )


@app.command()
def main(
    out: Path = typer.Option(Path("outputs/demo"), help="where every output of the demo goes"),
    num_scenes: int = typer.Option(48, help="procedural scenes to generate (small preset)"),
    train_minutes: float = typer.Option(3.0, help="training budget per task, in minutes"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
    relevancy_source: str = typer.Option(
        "auto", help="auto (CLIP if its weights are on this machine, else oracle), clip or oracle"
    ),
    grid_size: int = typer.Option(96, help="visualize: query grid per axis (the original: 240)"),
    num_frames: int = typer.Option(72, help="visualize: turntable frames (the original: 220)"),
    frame_size: int = typer.Option(
        512, help="visualize: frame width and height (the original: 1024)"
    ),
    fresh: bool = typer.Option(False, help="delete OUT first and start over"),
) -> None:
    if fresh and out.exists():
        shutil.rmtree(out)
    pipeline = Pipeline(out, device)
    generate_scenes(pipeline, num_scenes)
    source = relevancy_source_for(relevancy_source)
    generate_relevancy(pipeline, source)
    train(pipeline, train_minutes)
    evaluate(pipeline)
    summarize(pipeline)
    visualize(pipeline, source, grid_size, num_frames, frame_size)
    print_done(pipeline)


if __name__ == "__main__":
    run_app(app)
