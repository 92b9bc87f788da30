"""Seconds the web page's 3D tab takes to answer: an OVSSC completion of every class of a held-out
scene and a VOOL localization of one of its descriptions, as the page computes them
(scene_query.SceneQueries: visualize's inference, the GLB views, the IoU).

    python bench/app_3d.py                          # the demo's networks and scenes (make demo)
    python bench/app_3d.py --grids 64 --grids 128 --grids 240 --threads 2
    python bench/app_3d.py --demo none              # stand-in: see below

Without a demo folder the networks are the demo's architecture (demo.py's SMALL_NETWORK, random
weights: the cost of a forward does not depend on the weights) and the scenes three generated
small-preset scenes with oracle relevancy. Each request runs twice: the first also loads the
network and reads the scene (kept for the next request), the second is what a user waits for
after that. Target (issue 37): about 10 s on 2 CPU cores at the page's grid.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import checkpoint  # noqa: E402
import demo  # noqa: E402
import generate_relevancy  # noqa: E402
import generate_scenes  # noqa: E402
import net  # noqa: E402
import options  # noqa: E402
import scene_query  # noqa: E402
import scenes  # noqa: E402
import training  # noqa: E402

STAND_IN_SEEDS = [0, 1, 2]  # seed 2 is a held-out room


def stand_in(root: Path) -> tuple[dict[str, Path], Path]:
    """Random-weight networks of the demo's architecture and three small scenes."""
    data = root / "data"
    generate_scenes.generate_dataset(data, STAND_IN_SEEDS, scenes.PRESETS["small"])
    generate_relevancy.dataset(data, source="oracle", configs=[demo.SALIENCY_CONFIG])
    checkpoints = {}
    for task in demo.TASKS:
        argv = ["--file_path", str(data), "--log", str(root / task), *demo.SMALL_NETWORK]
        args = training.prepare_args(task, argv + demo.TASK_TRAINING[task])
        folder = root / task
        folder.mkdir()
        network = net.build_network(task, args.approach, args)
        checkpoint.save_checkpoint(folder / "latest.pth", network, None, 0)
        options.save_args(args, folder)
        checkpoints[task] = folder / "latest.pth"
    return checkpoints, data


def timed(request) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of this process, the answer's status line)."""
    wall, cpu = time.perf_counter(), time.process_time()
    answer = request()
    return time.perf_counter() - wall, time.process_time() - cpu, answer.status


def main(
    demo_dir: Annotated[
        str, typer.Option("--demo", help="demo folder, or none for the stand-in")
    ] = "outputs/demo",
    grids: Annotated[list[int] | None, typer.Option(help="query points per axis")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 2,
) -> None:
    torch.set_num_threads(threads)
    folder = Path(demo_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if demo_dir != "none" and (folder / "data").is_dir():
            checkpoints = {t: folder / "models" / t / "latest.pth" for t in demo.TASKS}
            data, source = folder / "data", f"the demo's networks and scenes ({folder})"
        else:
            checkpoints, data = stand_in(Path(tmp))
            source = "stand-in: demo-architecture networks with random weights, small scenes"
        choice = scene_query.scene_choices(data)[0]
        description = scene_query.scene_descriptions(choice)[0]
        queries = scene_query.SceneQueries("cpu")
        print(f"{source}; scene {choice.label}; {threads} torch threads")
        for grid in grids or [scene_query.DEFAULT_GRID]:
            requests = {
                "OVSSC, every class": lambda g=grid: queries.ovssc(
                    choice, None, checkpoints["ovssc"], "", "fast", g
                ),
                f"VOOL, '{description}'": lambda g=grid: queries.vool(
                    choice, None, checkpoints["vool"], description, "fast", g
                ),
            }
            for name, request in requests.items():
                for attempt in ("first", "again"):
                    wall, cpu, status = timed(request)
                    print(f"grid {grid}^3  {name:<45} {attempt:<5} {wall:6.1f} s wall "
                          f"{cpu:6.1f} s CPU   ({status})", flush=True)  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
