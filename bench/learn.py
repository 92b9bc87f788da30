"""Is the main job's verdict one lucky draw? The demo's training, evaluation and tables for several
training seeds on one set of scenes, each seed's figure and the spread, for ours and the baselines.

    python bench/learn.py --seeds 0 1 2                      # about 13 minutes a seed on 2 cores
    python bench/learn.py --seeds 0 1 2 --precision fp32     # as a CPU without bf16 trains
    python bench/learn.py --seeds 0 1 2 --scene-seed 1       # another set of scenes

Every figure is what summarize.py's tables print on Novel Room (voxel 32^3 IoU x 100, one best
cutoff per approach; VOOL: the mean of the six relations), from the demo's own stages (demo.py):
its scenes and oracle relevancy (OUT/data_scenes<N>, made once), then per seed OUT/seed<S>_<precision>/
with the models, eval stats and tables (summary.json). A seed whose folder is complete is read, not
run again. The last lines give each task's margin over the best baseline, per seed and at least.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import demo  # noqa: E402
import demo_run  # noqa: E402
from utils import atomic_path  # noqa: E402

APPROACHES = ("ours", "baseline: lifted relevancy", "baseline: all in frustum")


def run_folder_name(scene_seed: int, seed: int, precision: str) -> str:
    """One folder per set of scenes, training seed and precision, so that runs of several
    --scene-seed values share an --out as their scene folders (data_scenesN) do."""
    return f"scenes{scene_seed}_seed{seed}_{precision}"


def run_seed(out: Path, data: Path, seed: int, cli: argparse.Namespace) -> dict:
    """The demo's stages 3-5 for one training seed on the shared scenes; -> its summary."""
    folder = out / run_folder_name(cli.scene_seed, seed, cli.precision)
    run = {"seed": seed, "scene_seed": cli.scene_seed, "precision": cli.precision}
    demo_run.check_run(folder, run)
    pipeline = demo.Pipeline(folder, cli.device, seed, cli.precision, data=data)
    pipeline.splits = demo.splits_scored("oracle")
    tasks = tuple(cli.tasks)
    demo.train_and_evaluate(pipeline, train_minutes=None, tasks=tasks)  # never capped
    return demo.summarize(pipeline, "oracle", tasks)


def novel_room(summary: dict, task: str, approach: str) -> float | None:
    return summary[task].get(approach, {}).get("novel_room")


def table(summaries: dict[int, dict], tasks: list[str]) -> list[str]:
    """Markdown rows: task, approach, one column a seed, mean, spread (max - min)."""
    seeds = list(summaries)
    lines = [
        "| task | approach | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
        "|---|---|" + "---|" * (len(seeds) + 2),
    ]
    for task in tasks:
        for approach in APPROACHES:
            values = [novel_room(summaries[s], task, approach) for s in seeds]
            known = [v for v in values if v is not None]
            cells = " | ".join("-" if v is None else f"{v:.1f}" for v in values)
            mean = f"{sum(known) / len(known):.1f}" if known else "-"
            spread = f"{max(known) - min(known):.1f}" if known else "-"
            lines.append(f"| {task.upper()} | {approach} | {cells} | {mean} | {spread} |")
    return lines


def margins(summaries: dict[int, dict], tasks: list[str]) -> list[str]:
    """Per task: ours minus the best baseline, per seed, and the smallest."""
    lines = []
    for task in tasks:
        per_seed = {}
        for seed, summary in summaries.items():
            ours = novel_room(summary, task, "ours")
            scored = [novel_room(summary, task, a) for a in APPROACHES[1:]]
            if ours is not None and None not in scored:
                per_seed[seed] = ours - max(scored)
        listed = ", ".join(f"seed {s} {m:+.1f}" for s, m in per_seed.items())
        least = f"{min(per_seed.values()):+.1f}" if per_seed else "-"
        lines.append(f"{task.upper()}: margin over the best baseline {listed}; at least {least}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add = p.add_argument
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds, one run each")
    add(
        "--scene-seed",
        type=int,
        default=0,
        help="seed of the set of scenes every training seed shares (demo.py --scene-seed)",
    )
    add(
        "--precision",
        choices=demo.PRECISIONS,
        default="auto",
        help="training precision, as demo.py's: bf16 autocast, fp32, or auto (bf16 where the "
        "hardware runs it fast)",
    )
    add("--num-scenes", type=int, default=120, help="scenes generated (demo.py --num-scenes)")
    add("--device", default="cpu", help="cpu, cuda or auto")
    add(
        "--tasks",
        nargs="+",
        choices=demo.TASKS,
        default=list(demo.TASKS),
        help="the tasks trained and evaluated",
    )
    add(
        "--out",
        type=Path,
        default=Path("outputs/learn"),
        help="folder of the scenes, every seed's run and the results (results_*.md, .json)",
    )
    return p


def main() -> None:
    cli = parser().parse_args()
    data = cli.out / f"data_scenes{cli.scene_seed}"
    scenes = demo.Pipeline(cli.out, cli.device, data=data)
    demo.generate_scenes(scenes, cli.num_scenes, demo.EXTRA_TRAIN_SEEDS, cli.scene_seed)
    demo.generate_relevancy(scenes, "oracle")
    summaries = {seed: run_seed(cli.out, data, seed, cli) for seed in cli.seeds}
    lines = table(summaries, cli.tasks) + [""] + margins(summaries, cli.tasks)
    print("\n".join(lines))
    name = f"results_scenes{cli.scene_seed}_{cli.precision}_{'_'.join(cli.tasks)}"
    for suffix, text in ((".md", "\n".join(lines)), (".json", json.dumps(summaries, indent=1))):
        with atomic_path(cli.out / f"{name}{suffix}") as tmp:
            tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
