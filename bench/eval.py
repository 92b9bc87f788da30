"""Seconds per scene of eval.py at the default configuration (128^3 network, all ~1M GT points of a
full-preset scene, 25 cutoffs, point + 32^3 + 64^3 columns), for OVSSC and VOOL, random weights.

    python generate_scenes.py dataset /tmp/evalbench/data --num-scenes 2
    python generate_relevancy.py dataset /tmp/evalbench/data --source oracle
    python bench/eval.py /tmp/evalbench/data            # CPU (torch's default threads)
    python bench/eval.py /tmp/evalbench/data --device cuda

Per scene it times the three parts of evaluation.score_scene: reading the sample (dataset), the network
forward (chunked one row at a time above 500k points) and the metrics (loss masks + detailed_stats).
The first scene of each task also pays one-time costs; the figures are the mean over all scenes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dataset  # noqa: E402
import eval as eval_script  # noqa: E402
import evaluation  # noqa: E402
import metrics  # noqa: E402
import net  # noqa: E402
import options  # noqa: E402
import scene_file  # noqa: E402
import tasks  # noqa: E402
from processes import resolve_device, to_device  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_task(task: str, file_path: str, device: torch.device, scenes: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".pth") as unused:  # --load must exist; not read
        cli = eval_script.parser().parse_args(
            ["--task", task, "--file_path", file_path, "--load", unused.name, "--approach"]
            + ["semantic_abstraction", "--num_workers", "0", "--device", str(device)]
        )
        args = evaluation.eval_config(cli)
    torch.manual_seed(0)
    model = net.build_network(task, args.approach, args).to(device).eval()  # random weights
    # every scene of the split pickle (train included), read as an evaluation split reads them
    names = sorted({n for ns in scene_file.load_split_lists(file_path, task).values() for n in ns})
    config = dataset.split_config(dataset.DatasetConfig.from_args(args), "unseen_instances")
    data = dataset.DATASET_CLASSES[task]([Path(file_path) / n for n in names], config)
    definition = tasks.TASKS[task]
    times = {"read": [], "forward": [], "metrics": []}
    shapes = []
    for index in range(min(scenes, len(data))):
        t0 = time.perf_counter()
        batch = torch.utils.data.default_collate([data[index]])
        batch = to_device(batch, device)
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = definition.forward(model, batch, args.chunk_points).float()
        sync(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            label, ignore, padded = definition.targets(batch)
            frame = metrics.row_stats(
                logits,
                label,
                ignore,
                evaluation.shared_points(batch["output_xyz_pts"]),
                args.cutoffs,
                args.scene_bounds,
                definition.row_columns(batch),
                padded,
                voxel_sizes=evaluation.VOXEL_SIZES,
            )
        sync(device)
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(value)
        shapes.append((tuple(logits.shape[1:]), len(frame)))
    return {"times": times, "shapes": shapes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file_path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=["ovssc", "vool"])
    a = p.parse_args()
    device = resolve_device(a.device)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, "
        f"voxel_shape {options.defaults().voxel_shape}, cutoffs {len(evaluation.CUTOFFS)} (default)"
    )
    for task in a.tasks:
        result = bench_task(task, a.file_path, device, a.scenes)
        t = result["times"]
        n = len(t["read"])
        per_scene = [sum(parts) for parts in zip(*t.values())]
        for i, ((rows, points), frame_rows) in enumerate(result["shapes"]):
            print(
                f"{task} scene {i}: {rows} rows x {points} points, {frame_rows} frame rows; "
                + ", ".join(f"{k} {v[i]:.1f} s" for k, v in t.items())
                + f"; total {per_scene[i]:.1f} s"
            )
        print(
            f"{task}: {sum(per_scene) / n:.1f} s per scene (mean of {n}; "
            + ", ".join(f"{k} {sum(v) / n:.1f}" for k, v in t.items())
            + ")"
        )


if __name__ == "__main__":
    main()
