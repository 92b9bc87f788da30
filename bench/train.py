"""Training speed and memory: steps per second and peak RSS, with and without data loading.

Each case runs in fresh processes (one, or two under torchrun with gloo), so peak memory is the case's
own. "with data" draws batches through training's loaders (--num-workers workers per process);
"without data" repeats one preloaded batch, so it is the network step alone (forward, loss, backward,
clipping, LAMB, schedule, and the per-batch metrics the loop computes). The first step is warm-up and
not timed.

    python bench/train.py                               # small config, both tasks, 1 and 2 processes
    python bench/train.py --configs default --tasks ovssc --procs 1 --steps 3

Configs: default = the original's (128^3 grid, 6 levels, 80k input and 400k query points; one class or
description per scene, as the original's measured step); small = 64^3 grid, 5 levels, 20k input and 50k
query points, 4 rows. Scenes: generated with oracle relevancy (the full preset for default, whose
images give 80k input points; the small preset for small) into --data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "default": ["--num_patches", "1", "--num_descs", "1"],
    "small": (
        "--voxel_shape 64 64 64 --unet_num_levels 5 --num_input_pts 20000 --num_output_pts 50000"
    ).split(),
}
PRESET = {"default": "full", "small": "small"}


def worker(cli: argparse.Namespace) -> None:
    """One process of a case (under torchrun when --procs 2): time --steps steps, print JSON."""
    import numpy as np

    import dataset
    import net
    import network_setup
    import optimization
    import processes
    import seeding
    import tasks
    import training

    task = tasks.TASKS[cli.task]
    argv = ["--file_path", str(cli.data / cli.config), "--log", "/tmp/unused", "--device", "cpu"]
    argv += CONFIGS[cli.config] + ["--num_workers", str(cli.num_workers)]
    argv += ["--activation_checkpointing"] if cli.activation_checkpointing else []
    args = training.prepare_args(cli.task, argv)
    procs = processes.setup_processes(args.device)
    processes.seed_all(0)
    data = dataset.make_datasets(
        args.file_path, cli.task, dataset.DatasetConfig.from_args(args), splits=("train",)
    )["train"]
    model = net.build_network(cli.task, args.approach, args)
    optimizer, scheduler = optimization.make_optimizer(model, args, total=1000)
    model, zero_grads_in_place = network_setup.distribute(model, procs)  # DDP as training uses it
    trainer = training.Trainer(task, args, procs, model, optimizer, scheduler, None, {})
    trainer.zero_grads_in_place = zero_grads_in_place
    model.train()
    loader = seeding.make_loader(data, True, args, procs, epoch=0)
    batches = iter(loader)
    fixed = next(batches)
    times = []
    for step in range(cli.steps + 1):
        start = time.perf_counter()
        batch = next(batches, None) if cli.with_data else fixed
        if batch is None:
            batches = iter(seeding.make_loader(data, True, args, procs, epoch=step))
            batch = next(batches)
        trainer.step(batch, training.TRAIN_CUTOFFS, train=True)
        if step:
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (ru_maxrss is in KB)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    result = dict(rank=procs.rank, step_s=float(np.median(times)), peak_gb=rss, workers_gb=children)
    print("RESULT " + json.dumps(result), flush=True)
    processes.teardown_processes()


def make_data(root: Path, config: str, count: int) -> Path:
    import generate_relevancy
    import generate_scenes
    import scenes

    folder = root / config
    if not (folder / "ssc_split.pkl").is_file():
        seeds = [0, 1, 3, 4, 5, 6][:count]  # training rooms (seed 2 is a test room)
        generate_scenes.generate_dataset(folder, seeds, scenes.PRESETS[PRESET[config]])
        generate_relevancy.dataset(folder, source="oracle", configs=["ours"])
    return folder


def run_case(cli, task, config, procs, with_data) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--task", task, "--config", config]
    script += ["--data", str(cli.data), "--steps", str(cli.steps)]
    script += ["--num-workers", str(cli.num_workers if with_data else 0)]
    script += ["--with-data"] if with_data else []
    script += ["--activation-checkpointing"] if cli.activation_checkpointing else []
    if procs == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(procs), "--", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cli.threads // procs))}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    results = [
        json.loads(line.split("RESULT ", 1)[1])
        for line in done.stdout.splitlines()
        if "RESULT " in line
    ]
    if done.returncode or not results:
        raise SystemExit(f"{task} {config} x{procs} failed:\n{done.stderr[-2000:]}")
    step = max(r["step_s"] for r in results)
    return dict(
        task=task,
        config=config,
        procs=procs,
        data=with_data,
        step_s=step,
        steps_per_s=procs / step,  # scenes per second over all processes at batch 1
        peak_gb=max(r["peak_gb"] for r in results),
        peak_total_gb=sum(r["peak_gb"] + r["workers_gb"] for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="ovssc")
    parser.add_argument("--config", default="small")
    parser.add_argument("--with-data", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=Path("outputs/bench_train"))
    parser.add_argument("--tasks", nargs="+", default=["ovssc", "vool"])
    parser.add_argument("--configs", nargs="+", default=["small"], choices=list(CONFIGS))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--num-workers", type=int, default=1, help="loader workers per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, split over procs")
    parser.add_argument("--activation-checkpointing", action="store_true")
    cli = parser.parse_args()
    if cli.worker:
        worker(cli)
        return
    rows = []
    for config in cli.configs:
        make_data(cli.data, config, count=4)
        for task in cli.tasks:
            for procs in cli.procs:
                for with_data in (False, True):
                    row = run_case(cli, task, config, procs, with_data)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("| task | config | processes | data loading | s/step | scenes/s | peak RSS per process |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['config']} | {r['procs']} | {'yes' if r['data'] else 'no'} "
            f"| {r['step_s']:.2f} | {r['steps_per_s']:.2f} | {r['peak_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    main()
