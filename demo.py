"""The main job (`make demo`): the whole Semantic Abstraction pipeline on a small bundled default,
and the proof that it works: the trained networks against two baselines that learn nothing.

    python demo.py                       # everything under outputs/demo/
    python demo.py --out outputs/demo2 --train-minutes 1 --device cpu

Stages, each one of the project's own scripts run as a user would run it:
  1. scenes      generate_scenes.py dataset   small procedural rooms in the original HDF5 format:
                                               120 seeds (train and held-out rooms); optionally
                                               more seeds in training rooms only
                                               (--extra-train-seeds, --train-rooms-only)
  2. relevancy   generate_relevancy.py dataset  CLIP relevancy when CLIP weights are on this machine,
                                                otherwise ground-truth-mask ("oracle") maps, said loudly
  3. train       train_ovssc.py, train_vool.py  small networks, the recipe below (6 / 8 epochs,
                                               balanced BCE, decoder-sampling fix, VOOL's Lovász
                                               term; bf16 autocast where the hardware runs it)
  4. evaluate    eval.py                       the networks and, on the same splits, the baselines
                                               `lifted relevancy` (the visible relevancy, lifted to
                                               3D: no completion) and `all in frustum`
  6. visualize   visualize.py                  a novel-room scene from its HDF5 file with the
                                               relevancy the networks were trained on: .obj/.ply/.npz,
                                               prediction-vs-ground-truth PNGs, turntable mp4s
                 (stages 3, 4 and 6 run as two lanes side by side, OVSSC's and VOOL's, sharing the
                 cores; their output goes to OUT/logs/)
  5. summarize   summarize.py                  the paper's tables with the baselines as rows, and
                                               OUT/summary.json (the tables' figures)
The last lines say, per task, whether the network beats every baseline on Novel Room.

A stage whose outputs exist is skipped (summarize, which is cheap, always runs; training always runs
with --resume, which goes on where it stopped or returns at once), so an interrupted demo continues
where it stopped; every script writes its files atomically, so nothing is left half-written.
Training runs its planned epochs; `--train-minutes` stops it sooner, and then the verdict and
summary.json say the network is partly trained (a rerun goes on). `--fresh` starts over, deleting
only what the demo made in a demo folder. A SIGTERM is passed to the running stages, which save
what they have (demo_run.py: the run folder, the stage runner and its signals).
"""

from __future__ import annotations

import json
import math
import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import scene_file
from demo_run import (
    RUN_FILE,
    Pipeline,
    claim_folder,
    console,
    training_progress,
)
from utils import InputError, atomic_path, available_cores, run_app

app = typer.Typer(add_completion=False, help=__doc__)

# The training recipe, measured to learn within minutes on 2 CPU cores (docs/learning.md says why;
# bench/learn.py runs it per seed): the small network, 2 descriptions a VOOL
# scene (its step costs about OVSSC's), BCE balanced between positives and negatives (an object
# holds only 5-15% of the query points) and the decoder-sampling fix (with the original's x<->z
# swap a small model trained for minutes does not learn); VOOL adds the Lovász IoU term, chosen on
# validation scenes (docs/learning.md). Every flag is recorded in args.pkl.
SMALL_NETWORK = [
    "--voxel_shape", "32", "32", "32",
    "--unet_num_levels", "4",
    "--unet_f_maps", "16",
    "--num_input_pts", "8000",
    "--num_output_pts", "8000",
    "--num_descs", "2",
    "--num_workers", "1",
]  # fmt: skip
TRAINING = [
    "--batch_size", "1", "--lr", "5e-3", "--num_warmup_steps", "50",
    "--lr_scheduler_type", "cosine", "--eval_freq", "0", "--save_freq", "0",
    "--balance_positive_negative", "--fix_decoder_sampling",
]  # fmt: skip
TASKS = ("ovssc", "vool")
# 612 and 816 steps on the 102 training scenes of 120: about 5.3 and 6.3 minutes on one core each
# (AVX-512, bf16), side by side. The epochs were chosen on validation scenes of four sets of scenes;
# they and the alternatives measured (other epochs, learning rates, grids, more training scenes via
# --extra-train-seeds): docs/learning.md and the README's main-job section.
EPOCHS = {"ovssc": 6, "vool": 8}
# flags of one task's recipe; VOOL's network gets per-relation offsets that calibrate.py sets
TASK_TRAINING = {
    "ovssc": [],
    "vool": ["--iou_loss", "lovasz", "--lovasz_margin", "3", "--relation_offsets"],
}
CALIBRATED = ("vool",)  # the tasks whose trained network calibrate.py calibrates
SCENE_SEED_STRIDE = 100_000  # --scene-seed N: scenes from seed N x this on
EXTRA_TRAIN_SEEDS = 0
# eval.py --cutoffs START STOP STEP for the networks: trained on balanced samples, their best
# cutoffs lie between 2.5 and 4, above the original's -2.5 ... -0.1 (summarize picks the best).
NETWORK_CUTOFFS = ["-1", "6", "0.2"]
BASELINES = ("lifted_relevancy", "all_in_frustum")  # eval.py --baseline NAME, summarize row keys
SALIENCY_CONFIG = "ours"  # the relevancy maps generated (trained on and visualized by default)
# with oracle maps eval.py scores these splits only: the recoloured views of unseen_instances_dr
# change no input there, so its figures would repeat Novel Room's (a test checks they do)
ORACLE_SPLITS = ("unseen_instances", "unseen_instances_synonyms")
NOVEL_VISUAL_NOTE = (
    "Novel Visual is not scored here: the oracle maps come from the ground-truth masks, so the "
    "recoloured views of unseen_instances_dr change no input of the networks or the baselines, "
    "and its figures would repeat Novel Room's"
)
ORACLE_NOTICE = (
    "No CLIP weights on this machine: the relevancy maps are built from the ground-truth "
    "segmentation (--source oracle), an upper bound, [bold]not CLIP[/]. The numbers below "
    "show that the pipeline learns, not the paper's zero-shot results. With weights "
    "(see docs/relevancy.md, 'Weights'), run with --relevancy-source clip --fresh."
)


def clip_weights_available() -> bool:
    """True when open_clip's ViT-B-32 OpenAI weights are already on this machine (no download)."""
    import clip_weights

    return clip_weights.cached_weights("ViT-B-32", "openai") is not None


def first_scene_seed(scene_seed: int) -> int:
    """--scene-seed N draws its scenes from seeds N x SCENE_SEED_STRIDE on: other scenes, training and
    held-out alike, in the same rooms."""
    return scene_seed * SCENE_SEED_STRIDE


def generate_scenes(
    pipeline: Pipeline, num_scenes: int, extra_train_seeds: int, scene_seed: int = 0
) -> None:
    """num_scenes seeds from first_scene_seed(scene_seed) in every room (training and held-out
    scenes), then the next extra_train_seeds seeds in training rooms only: more training scenes, the
    same held-out ones."""
    import scene_layout  # open3d: the rooms of the seeds

    data = pipeline.data
    first = first_scene_seed(scene_seed)
    small = ["--preset", "small", "--num-processes", "2"]

    def files(seeds) -> list[Path]:  # an interrupted run leaves split pickles: done is every file
        return [
            data / scene_file.scene_file_name(seed, scene_layout.scene_room(seed)) for seed in seeds
        ]

    pipeline.run(
        "1/6 scenes",
        [*files(range(first, first + num_scenes)), data / "ssc_split.pkl", data / "vool_split.pkl"],
        ["generate_scenes.py", "dataset", str(data), "--start-seed", str(first),
         "--num-scenes", str(num_scenes), *small],
    )  # fmt: skip
    if extra_train_seeds:
        start = first + num_scenes
        seeds = scene_layout.train_room_seeds(range(start, start + extra_train_seeds))
        pipeline.run(
            "1/6 more training scenes",
            files(seeds),
            ["generate_scenes.py", "dataset", str(data), "--start-seed", str(start),
             "--num-scenes", str(extra_train_seeds), "--train-rooms-only", *small],
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
         "--saliency-config", SALIENCY_CONFIG],
    )  # fmt: skip


def precision_flags(device: str, precision: str = "auto") -> list[str]:
    """The training flags of --precision: bf16 autocast (auto: where the hardware runs it fast), or
    none (fp32)."""
    import processes

    if precision == "auto":
        fast = processes.bf16_is_fast(processes.resolve_device(device))
        precision = "bf16" if fast else "fp32"
    return ["--use_amp", "--amp_dtype", "bf16"] if precision == "bf16" else []


def check_precision(precision: str, device: str) -> None:
    """--precision bf16 only where the hardware runs it (elsewhere training would crawl)."""
    if precision != "bf16":
        return
    import processes

    emulated = processes.bf16_emulated_on(processes.resolve_device(device))
    if emulated:
        raise InputError(
            f"--precision bf16 is emulated on {emulated}; use --precision auto or fp32"
        )


def stage_log(logs: Path | None, name: str) -> Path | None:
    """LOGS/NAME.log, or None (the terminal) without a folder of logs."""
    return None if logs is None else logs / f"{name}.log"


def train(
    pipeline: Pipeline,
    task: str,
    train_minutes: float | None,
    logs: Path | None = None,
    threads: int | None = None,
    more_threads: Callable[[], int] | None = None,
) -> None:
    """Stage 3 for one task; `logs`, `threads` and `more_threads` as in train_and_evaluate and
    Pipeline.run. It always runs: with --resume a finished run returns at once and a stopped one
    (--train-minutes, SIGTERM, a kill, more threads) goes on."""
    log = pipeline.log(task)
    cap = [] if train_minutes is None else ["--max_minutes", str(train_minutes)]
    pipeline.run(
        f"3/6 train {task.upper()}",
        [],
        [f"train_{task}.py", "--file_path", str(pipeline.data), "--log", str(log),
         *SMALL_NETWORK, *TRAINING, *TASK_TRAINING[task],
         *precision_flags(pipeline.device, pipeline.precision),
         "--epochs", str(EPOCHS[task]), "--seed", str(pipeline.seed),
         *cap, "--resume",
         "--device", pipeline.device],
        stage_log(logs, f"train_{task}"), threads, more_threads,
    )  # fmt: skip


def calibrate(
    pipeline: Pipeline, task: str, logs: Path | None = None, threads: int | None = None
) -> None:
    """Stage 3 for VOOL, after training: each relation's logit offset from every 4th training scene
    (calibrate.py; it leaves a calibrated checkpoint as it is)."""
    if task not in CALIBRATED:
        return
    pipeline.run(
        f"3/6 calibrate {task.upper()}",
        [],
        ["calibrate.py", "--file_path", str(pipeline.data), "--load",
         str(pipeline.checkpoints[task]), "--device", pipeline.device],
        stage_log(logs, f"calibrate_{task}"), threads,
    )  # fmt: skip


def splits_scored(source: str) -> tuple[str, ...] | None:
    """The splits eval.py scores with relevancy from `source` (None: every split but train)."""
    return ORACLE_SPLITS if source == "oracle" else None


def split_flags(pipeline: Pipeline) -> list[str]:
    return [] if pipeline.splits is None else ["--splits", *pipeline.splits]


def evaluate(
    pipeline: Pipeline, task: str, logs: Path | None = None, threads: int | None = None
) -> None:
    """Stage 4 for one task's network (again when its stats are older than its weights: the
    training went on)."""
    stats, weights = pipeline.eval_stats(task), pipeline.checkpoints[task]
    stale = older_than(stats, weights)
    pipeline.run(
        f"4/6 evaluate {task.upper()}",
        [] if stale else finished(stats, pipeline, task),
        ["eval.py", "--task", task, "--file_path", str(pipeline.data),
         "--load", str(weights), "--device", pipeline.device, *split_flags(pipeline),
         "--num_workers", "0", "--cutoffs", *NETWORK_CUTOFFS, *(["--replace"] if stale else [])],
        stage_log(logs, f"eval_{task}"), threads,
    )  # fmt: skip


def evaluate_baselines(
    pipeline: Pipeline, task: str, logs: Path | None = None, threads: int | None = None
) -> None:
    """Stage 4 for one task's baselines, on the splits of its network (eval.py reads them from the
    training run's args.pkl, written when training starts)."""
    for baseline in BASELINES:
        pipeline.run(
            f"4/6 evaluate {task.upper()} baseline {baseline}",
            finished(pipeline.eval_stats(task, baseline), pipeline, task),
            ["eval.py", "--task", task, "--file_path", str(pipeline.data),
             "--baseline", baseline, "--args", str(pipeline.log(task) / "args.pkl"),
             "--output", str(pipeline.eval_stats(task, baseline)), "--device", pipeline.device,
             *split_flags(pipeline), "--num_workers", "0"],
            stage_log(logs, f"eval_{task}_{baseline}"), threads,
        )  # fmt: skip


def finished(stats: Path, pipeline: Pipeline, task: str) -> list[Path]:
    """[stats] when that stats file holds every split eval.py scores (an evaluation stopped between
    splits leaves the ones it finished, and eval.py goes on from there), else []."""
    if not stats.is_file():
        return []
    import pandas as pd

    lists = scene_file.load_split_lists(pipeline.data, task)
    splits = {split for split, names in lists.items() if split != "train" and names}
    if pipeline.splits is not None:
        splits &= set(pipeline.splits)
    return [stats] if splits <= set(pd.read_pickle(stats)["split"]) else []


def older_than(output: Path, source: Path) -> bool:
    """Whether `output` exists but was written before `source` (made from an earlier version)."""
    return output.exists() and output.stat().st_mtime < source.stat().st_mtime


def train_and_evaluate(
    pipeline: Pipeline,
    train_minutes: float | None,
    tasks: tuple[str, ...] = TASKS,
    then: Callable[[str, Path | None, int | None], None] | None = None,
) -> None:
    """Stages 3 and 4: one lane per task (train, calibrate VOOL, evaluate, then `then(task, logs,
    threads)`: the demo's visualization), the lanes side by side.

    The small networks' steps use two CPU threads poorly (2 cores: 0.40 s a VOOL step with both
    threads, 0.67 s each for two single-thread runs side by side), so each lane's stage gets the
    cores divided among the lanes still running when it starts, and writes its output to
    OUT/logs/. When a lane ends, a training still running in another is stopped (it saves where
    it is) and goes on with the freed cores (--resume: the same steps). The baselines learn
    nothing and need only a run's args.pkl: a lane done with its own work scores those of the
    tasks still training. One lane alone runs in the terminal as before.
    """
    then = then or (lambda task, logs, threads: None)
    if len(tasks) == 1:
        train(pipeline, tasks[0], train_minutes)
        calibrate(pipeline, tasks[0])
        evaluate(pipeline, tasks[0])
        then(tasks[0], None, None)
        evaluate_baselines(pipeline, tasks[0])
        return
    cores = available_cores()
    running = set(tasks)
    baselines_claimed: set[str] = set()
    lock = threading.Lock()

    def threads() -> int:
        with lock:
            return max(1, cores // len(running))

    def claim_baselines(task: str, lane_task: str) -> bool:
        """Whether this lane (of `lane_task`) scores `task`'s baselines: no lane has yet, and it is
        the lane's own task or one whose training has written its args.pkl."""
        with lock:
            ready = task == lane_task or (pipeline.log(task) / "args.pkl").is_file()
            if task in baselines_claimed or not ready:
                return False
            baselines_claimed.add(task)
            return True

    def lane(task: str) -> None:
        try:
            logs = pipeline.out / "logs"
            train(pipeline, task, train_minutes, logs, threads(), threads)
            calibrate(pipeline, task, logs, threads())
            evaluate(pipeline, task, logs, threads())
            then(task, logs, threads())
            for other in sorted(tasks, key=lambda name: name != task):  # its own first
                if claim_baselines(other, task):
                    evaluate_baselines(pipeline, other, logs, threads())
        finally:
            with lock:
                running.discard(task)

    columns = SpinnerColumn(), TextColumn("{task.description}  {task.fields[status]}")
    with Progress(*columns, TimeElapsedColumn(), console=console) as pipeline.progress:
        with ThreadPoolExecutor(len(tasks)) as pool:
            lanes = [pool.submit(lane, task) for task in tasks]
    pipeline.progress = None
    for stopped in lanes:
        stopped.result()  # raises a lane's error, once both lanes have stopped


def summarize(pipeline: Pipeline, source: str, tasks: tuple[str, ...] = TASKS) -> dict:
    """The tables of the networks and baselines; writes OUT/tables.json (summarize's figures) and
    OUT/summary.json (the same with the relevancy source); returns the summary."""
    rows = []
    for task in tasks:
        for approach in ("ours", *BASELINES):
            rows += [f"--{task}", f"{approach}={pipeline.eval_stats(task, approach)}"]
    tables = pipeline.out / "tables.json"
    pipeline.run(
        "5/6 summarize",
        [],  # cheap: the tables are printed on every run
        ["summarize.py", "--only-given", "--tables", ",".join(tasks), *rows, "--json", str(tables)],
    )  # fmt: skip
    relevancy = "oracle" if source == "oracle" else f"clip ViT-B-32 openai, {SALIENCY_CONFIG}"
    summary = {
        "relevancy_source": relevancy,
        "training": {task: training_record(pipeline, task) for task in tasks},
        **json.loads(tables.read_text()),
    }
    if source == "oracle":
        console.print(f"note: {NOVEL_VISUAL_NOTE}", soft_wrap=True)
        summary["notes"] = {"novel_visual": NOVEL_VISUAL_NOTE}
    with atomic_path(pipeline.out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def training_record(pipeline: Pipeline, task: str) -> dict:
    """The epochs a task's network trained of the epochs planned (--train-minutes may stop it)."""
    progress = training_progress(pipeline.log(task))
    trained, planned = progress if progress is not None else (0, EPOCHS[task])
    return {"epochs_trained": trained, "epochs_planned": planned}


def novel_room_scene(data: Path) -> Path:
    """The first scene file of the `unseen_instances` split (rooms no network trained on) with a
    description for VOOL to localize (a generated scene may have none)."""
    with open(data / scene_file.SPLIT_FILES["ovssc"], "rb") as f:
        names = pickle.load(f)["unseen_instances"]
    for name in sorted(names):
        with scene_file.SceneFile(data / name) as scene:
            if scene.descriptions()["target_obj_name"]:
                return data / name
    raise InputError(
        f"{data}: no novel-room scene with a description to visualize; raise --num-scenes"
    )


def visualize(
    pipeline: Pipeline,
    task: str,
    grid_size: int,
    num_frames: int,
    frame_size: int,
    logs: Path | None = None,
    threads: int | None = None,
) -> None:
    """Stage 6 for one task, at the end of its lane: the inference dump of a novel-room scene from
    its HDF5 file, with the relevancy stored there under the run's saliency config (the maps the
    network trained on: oracle or CLIP, never random CLIP weights), beside its ground truth; for
    OVSSC then the turntable video (VOOL's, one per description, take minutes each: `visualize.py
    vool-visualize` makes them)."""
    scene = novel_room_scene(pipeline.data)
    scene_dir = pipeline.vis / scene.stem
    dump = scene_dir / {"ovssc": "completion.npz", "vool": "localization.npz"}[task]
    pipeline.run(
        f"6/6 visualize {task.upper()}",
        [] if older_than(dump, pipeline.checkpoints[task]) else [dump],
        ["visualize.py", f"{task}-inference", str(scene), str(pipeline.checkpoints[task]),
         "--dump-path", str(pipeline.vis), "--grid-size", str(grid_size),
         "--device", pipeline.device],
        stage_log(logs, f"visualize_{task}"), threads,
    )  # fmt: skip
    if task != "ovssc":
        return
    video = scene_dir / "completion.mp4"
    pipeline.run(
        "6/6 render OVSSC",
        [] if older_than(video, dump) else [video],
        ["visualize.py", "ovssc-visualize", str(scene_dir),
         "--num-frames", str(num_frames), "--size", str(frame_size)],
        stage_log(logs, "render_ovssc"), threads,
    )  # fmt: skip


def verdict(task: str, figures: dict[str, dict], training: dict) -> str:
    """One line: does the network ("ours") beat every baseline on Novel Room, and by how much, and
    the epochs it trained (`training`: summary.json's record); a partly trained network is said
    to be one, with how to finish it. `figures` is one table of summarize's JSON (VOOL: its top
    level is the mean row)."""
    trained, planned = training["epochs_trained"], training["epochs_planned"]
    epochs = f"{trained} of {planned} epochs"
    if trained < planned:
        epochs = (
            f"partly trained: {epochs}; rerun demo.py without --train-minutes to finish its "
            "training (it goes on from its latest.pth)"
        )
    return f"{comparison(task, figures)}; {epochs}"


def comparison(task: str, figures: dict[str, dict]) -> str:
    """Does ours beat every baseline on Novel Room: its figure, the best baseline's, the margin."""
    room = {approach: row["novel_room"] for approach, row in figures.items()}
    prefix = "baseline: "
    baselines = {k[len(prefix) :]: v for k, v in room.items() if k.startswith(prefix)}
    scored = {name: value for name, value in baselines.items() if value is not None}
    ours = room.get("ours")
    if ours is None or not scored:
        missing = {relation for row in figures.values()
                   for relation, cells in row.get("relations", {}).items()
                   if cells["novel_room"] is None}  # fmt: skip
        why = (
            f" (no Novel Room row of {', '.join(sorted(missing))}, so no mean over the relations: "
            "too few held-out scenes, raise --num-scenes)"
            if missing
            else ""
        )
        return f"{task.upper()}: no Novel Room figure for ours or the baselines{why}, nothing to compare"
    best = max(scored, key=scored.get)
    margin = ours - scored[best]
    beats = "beats" if margin > 0 and len(scored) == len(baselines) else "does not beat"
    return (
        f"{task.upper()}: ours {ours:.1f} {beats} every baseline on Novel Room "
        f"(best baseline: {best} {scored[best]:.1f}, {margin:+.1f})"
    )


def print_done(pipeline: Pipeline, summary: dict) -> None:
    minutes = (time.perf_counter() - pipeline.started) / 60
    console.print(
        Panel(
            f"scenes and relevancy   {pipeline.data}\n"
            f"models and eval stats  {pipeline.models}/{{ovssc,vool}}/\n"
            f"tables                 {pipeline.out}/summary.json\n"
            f"visualization          {pipeline.vis}/ (png, obj, ply, npz, completion.mp4;\n"
            f"                       VOOL videos: python visualize.py vool-visualize <scene folder>)\n"
            f"total                  {minutes:.1f} min",
            title="demo done: the tables above are voxel 32^3 IoU x 100 on the held-out rooms",
            style="green",
        )
    )
    for task in TASKS:
        line = verdict(task, summary[task], summary["training"][task])
        console.print(line, style="yellow" if "partly trained" in line else None, soft_wrap=True)


PRECISIONS = ("auto", "bf16", "fp32")


def default_out(seed: int, scene_seed: int, precision: str) -> Path:
    """outputs/demo for the defaults; otherwise the seeds and precision are in the name."""
    name = "demo"
    if (seed, scene_seed, precision) != (0, 0, "auto"):
        name += f"_seed{seed}_scenes{scene_seed}" + ("" if precision == "auto" else f"_{precision}")
    return Path("outputs") / name


def check_flags(num_scenes, extra_train_seeds, train_minutes, relevancy_source, precision,
                grid_size, num_frames, frame_size) -> None:  # fmt: skip
    """The demo's own flags, before any stage runs (a bad one would fail stages later, in a child
    script's words)."""
    for option, value in (("--num-scenes", num_scenes), ("--grid-size", grid_size),
                          ("--num-frames", num_frames), ("--frame-size", frame_size)):  # fmt: skip
        if value < 1:
            raise InputError(f"{option} must be at least 1, got {value}")
    if extra_train_seeds < 0:
        raise InputError(f"--extra-train-seeds must be >= 0, got {extra_train_seeds}")
    if train_minutes is not None and not (math.isfinite(train_minutes) and train_minutes > 0):
        raise InputError(
            f"--train-minutes must be a finite number of minutes > 0, got {train_minutes:g}"
        )
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if relevancy_source not in ("auto", "clip", "oracle"):
        raise InputError(
            f"--relevancy-source must be auto, clip or oracle, got {relevancy_source!r}"
        )


@app.command()
def main(
    out: Annotated[
        Path | None,
        typer.Option(
            help="where every output of the demo goes (default: outputs/demo, with the seeds and "
            "precision in the name when they are not the defaults)"
        ),
    ] = None,
    num_scenes: Annotated[
        int,
        typer.Option(help="procedural scenes in every room: training and held-out (small preset)"),
    ] = 120,
    extra_train_seeds: Annotated[
        int,
        typer.Option(
            help="further seeds, generated in training rooms only: more training scenes, the "
            "same held-out ones (0: none)"
        ),
    ] = EXTRA_TRAIN_SEEDS,
    train_minutes: Annotated[
        float | None,
        typer.Option(
            help="stop each task's training after this many minutes (default: none, the epochs "
            "decide); a network it stops is said to be partly trained, and a rerun goes on"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    relevancy_source: Annotated[
        str,
        typer.Option(
            help="auto (CLIP if its weights are on this machine, else oracle), clip or oracle"
        ),
    ] = "auto",
    grid_size: Annotated[
        int, typer.Option(help="visualize: query grid per axis (the original: 240)")
    ] = 64,
    num_frames: Annotated[
        int, typer.Option(help="visualize: turntable frames (the original: 220)")
    ] = 72,
    frame_size: Annotated[
        int, typer.Option(help="visualize: frame width and height (the original: 1024)")
    ] = 512,
    fresh: Annotated[
        bool,
        typer.Option(
            help="start over: delete what an earlier demo made in OUT (only in a demo folder, "
            f"one holding {RUN_FILE}; other files stay)"
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="training seed of both networks (train_*.py --seed)", min=0)
    ] = 0,
    scene_seed: Annotated[
        int,
        typer.Option(
            help=f"another set of scenes, training and held-out alike: seeds from N x "
            f"{SCENE_SEED_STRIDE} on (0: seeds 0 ...)",
            min=0,
        ),
    ] = 0,
    precision: Annotated[
        str,
        typer.Option(
            help="training precision: auto (bf16 where the CPU or GPU runs it), bf16 (refused where "
            "emulated), fp32"
        ),
    ] = "auto",
) -> None:
    check_flags(num_scenes, extra_train_seeds, train_minutes, relevancy_source, precision,
                grid_size, num_frames, frame_size)  # fmt: skip
    check_precision(precision, device)
    run = {"seed": seed, "scene_seed": scene_seed, "precision": precision,
           "num_scenes": num_scenes, "extra_train_seeds": extra_train_seeds}  # fmt: skip
    out = out or default_out(seed, scene_seed, precision)
    claim_folder(out, run, fresh)
    pipeline = Pipeline(out, device, seed, precision)
    with pipeline.stopping_on_sigterm():
        generate_scenes(pipeline, num_scenes, extra_train_seeds, scene_seed)
        source = relevancy_source_for(relevancy_source)
        generate_relevancy(pipeline, source)
        pipeline.splits = splits_scored(source)

        def visualize_task(task: str, logs: Path | None, threads: int | None) -> None:
            visualize(pipeline, task, grid_size, num_frames, frame_size, logs, threads)

        train_and_evaluate(pipeline, train_minutes, then=visualize_task)
        summary = summarize(pipeline, source)
    print_done(pipeline, summary)


if __name__ == "__main__":
    run_app(app)
