"""The main job's costs piece by piece: CPU seconds per demo-size training step (VOOL and OVSSC),
per evaluated held-out scene and per calibrated training scene, and per training sample read, for
this tree and, with --against REV, a git revision of it, side by side.

    python bench/demo_stages.py                                   # this tree
    python bench/demo_stages.py --against HEAD~5 --rounds 3       # before / after, alternating

Each figure comes from its own process, one thread (as each of the demo's two lanes trains), with
demo.py's recipe (its network, points, descriptions and flags; fp32) on the demo's scenes with
oracle relevancy (generated into --data when missing). The two trees run alternately, --rounds
times, and each figure is the median: CPU time (time.thread_time) rather than wall time, so that a
busy machine moves the figures less (it still slows memory-bound work). The networks have random
weights (the cost of a step does not depend on them); a training step is timed on preloaded batches
(forward, loss, backward, clipping, LAMB and the step's metrics), the data separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("train", "data", "eval", "calibrate")
TASKS = ("vool", "ovssc")
LABELS = {
    "train": "training step",
    "data": "training sample read",
    "eval": "evaluated scene (unseen_instances)",
    "calibrate": "calibrated scene (every 4th training scene)",
}


def seeded_samples(data, seed: int):
    """The tree's SeededSamples of `data` for rank 0 (in seeding.py since 772ee0e, training.py
    before)."""
    import training

    if hasattr(training, "SeededSamples"):
        return training.SeededSamples(data, seed, 0)
    import seeding

    return seeding.SeededSamples(data, seed, 0)


def worker(cli: argparse.Namespace) -> None:
    """In the tree at cli.repo: time cli.count items of one part of one task; print RESULT json."""
    sys.path.insert(0, str(cli.repo))
    import numpy as np
    import torch

    import dataset
    import demo
    import optimization
    import training

    task = cli.task
    flags = [*demo.SMALL_NETWORK, *demo.TRAINING, *demo.TASK_TRAINING[task]]
    argv = ["--file_path", str(cli.data), "--log", str(cli.tmp), "--device", "cpu", *flags]
    args = training.prepare_args(task, argv)
    collate = torch.utils.data.default_collate
    times = []
    if cli.part in ("train", "data"):
        import net
        import processes
        import tasks

        config = dataset.DatasetConfig.from_args(args)
        data = dataset.make_datasets(args.file_path, task, config, splits=("train",))["train"]
        samples = seeded_samples(data, 0)
        if cli.part == "data":
            for index in range(cli.count + 1):
                start = time.thread_time()
                samples[(index, index % len(data))]
                times.append(time.thread_time() - start)
        else:
            batches = [collate([samples[(i, i % len(data))]]) for i in range(cli.count + 1)]
            torch.manual_seed(0)
            model = net.build_network(task, args.approach, args).train()
            optimizer, scheduler = optimization.make_optimizer(model, args, total=1000)
            trainer = training.Trainer(
                tasks.TASKS[task], args, processes.setup_processes("cpu"), model, optimizer,
                scheduler, None, {},
            )  # fmt: skip
            for batch in batches:
                start = time.thread_time()
                trainer.step(batch, training.TRAIN_CUTOFFS, train=True)
                times.append(time.thread_time() - start)
    else:
        times = score_scenes(cli, args, collate)
    print("RESULT " + json.dumps({"seconds": float(np.median(times[1:])), "n": len(times) - 1}))


def score_scenes(cli: argparse.Namespace, args: argparse.Namespace, collate) -> list[float]:
    """Seconds per scene of evaluation.score_scene on a random-weight checkpoint: held-out scenes
    (eval) or every 4th training scene (calibrate), read as eval.py reads them."""
    import torch

    import calibration
    import checkpoint
    import eval as eval_script
    import evaluation
    import net
    import options

    torch.manual_seed(0)
    model = net.build_network(cli.task, args.approach, args)
    options.save_args(args, cli.tmp)
    weights = Path(cli.tmp) / "latest.pth"
    checkpoint.save_checkpoint(weights, model, None, 1)
    eval_cli = eval_script.parser().parse_args(
        ["--task", cli.task, "--file_path", str(cli.data), "--load", str(weights)]
        + ["--device", "cpu", "--num_workers", "0", "--cutoffs", "-1", "6", "0.2"]
    )
    args = evaluation.eval_config(eval_cli)
    scorer = evaluation.make_scorer(args, torch.device("cpu"))
    if cli.part == "calibrate":
        data = calibration.training_scenes(args, 4)
    else:
        import dataset

        config = dataset.DatasetConfig.from_args(args)
        split = "unseen_instances"
        data = dataset.make_datasets(args.file_path, cli.task, config, splits=(split,))[split]
    samples = seeded_samples(data, args.seed)
    times = []
    for index in range(min(cli.count + 1, len(data))):
        start = time.thread_time()
        evaluation.score_scene(scorer, collate([samples[(index, index)]]), args)
        times.append(time.thread_time() - start)
    return times


def source_tree(revision: str, folder: Path) -> Path:
    """The files of `revision` of this repository, unpacked into `folder`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def make_data(folder: Path) -> None:
    """The demo's scenes and oracle relevancy in `folder`, unless its split pickles are there."""
    if (folder / "vool_split.pkl").is_file() and (folder / "ssc_split.pkl").is_file():
        return
    python = [sys.executable]
    subprocess.run(
        [*python, "generate_scenes.py", "dataset", str(folder), "--num-scenes", "120"]
        + ["--preset", "small", "--num-processes", "2"],
        cwd=REPO,
        check=True,
    )
    subprocess.run(
        [*python, "generate_relevancy.py", "dataset", str(folder), "--source", "oracle"],
        cwd=REPO,
        check=True,
    )


def measure(tree: Path, task: str, part: str, cli: argparse.Namespace) -> float | None:
    """One worker process in `tree`: seconds per item, or None when that tree cannot run it."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repo", str(tree)]
        command += ["--task", task, "--part", part, "--data", str(cli.data.resolve())]
        command += ["--count", str(cli.count), "--tmp", tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(f"{tree.name} {task} {part}: failed\n{done.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT ") :])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, default="vool", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=PARTS, default="train", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=Path("outputs/bench_demo/data"))
    parser.add_argument("--against", metavar="REV", help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two trees")
    parser.add_argument("--count", type=int, default=8, help="timed items per process")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    cli = parser.parse_args()
    if cli.worker:
        worker(cli)
        return
    make_data(cli.data)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO}
        if cli.against:
            trees = {cli.against: source_tree(cli.against, Path(tmp)), **trees}
        results: dict[tuple, list[float]] = {}
        for _ in range(cli.rounds):
            for task, part in measured(cli):
                for name, tree in trees.items():
                    seconds = measure(tree, task, part, cli)
                    if seconds is not None:
                        results.setdefault((task, part, name), []).append(seconds)
    header = " | ".join(trees)
    print(f"| CPU seconds per (1 thread, median of {cli.rounds} rounds) | {header} |")
    print("|---|" + "---|" * len(trees))
    for task, part in measured(cli):
        cells = []
        for name in trees:
            values = results.get((task, part, name))
            cells.append(f"{statistics.median(values):.3f}" if values else "-")
        print(f"| {task.upper()} {LABELS[part]} | " + " | ".join(cells) + " |")


def measured(cli: argparse.Namespace) -> list[tuple[str, str]]:
    """The (task, part) pairs asked for; only VOOL is calibrated."""
    pairs = [(task, part) for task in cli.tasks for part in cli.parts]
    return [(task, part) for task, part in pairs if (task, part) != ("ovssc", "calibrate")]


if __name__ == "__main__":
    main()
