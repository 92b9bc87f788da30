"""Evaluate a trained OVSSC or VOOL checkpoint on every non-train split (spec: train-eval.md 1.3, 1.4,
1.8, 2.5 and 6 item 11).

    python eval.py --task ovssc --file_path dataset/ --load models/ours/ovssc/ovssc.pth
    torchrun --nproc_per_node 4 eval.py --task vool --file_path dataset/ --load models/ours/vool/vool.pth
    python eval.py --task ovssc --file_path nyu_ovssc/ --load models/ours/ovssc/ovssc.pth --suffix nyu

What is scored and how, and the changes from the original, are evaluation.py's (its docstring).
"""

from __future__ import annotations

import argparse
import time

import evaluation
import options
import processes
import tasks
from utils import run_app
from vocab import APPROACHES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate an OVSSC or VOOL checkpoint.")
    options.add_shared_flags(p)
    add = p.add_argument
    add("--task", choices=tuple(APPROACHES), required=True)
    add(
        "--args",
        dest="args_file",
        default=None,
        metavar="PATH",
        help="the training run's args.pkl (default: beside --load)",
    )
    add(
        "--approach",
        default=None,
        help="without an args.pkl: the approach the checkpoint was trained as (the shared flags "
        "give the rest of the configuration)",
    )
    add("--output", default=None, help="stats file (default: <checkpoint stem>_eval_stats.pkl)")
    add("--suffix", default="", help="stats file <checkpoint stem>_eval_stats_<SUFFIX>.pkl")
    add("--replace", action="store_true", help="evaluate every split again (default: resume)")
    add(
        "--chunk_points",
        type=int,
        default=tasks.CHUNK_POINTS,
        help="above this many query points the net runs one class/description at a time",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    run_app(lambda: run(argv))


def run(argv: list[str] | None) -> None:
    start = time.time()
    args = evaluation.eval_config(parser().parse_args(argv))
    procs = processes.setup_processes(args.device)
    try:
        result = evaluation.evaluate(args, procs)
    finally:
        processes.teardown_processes()
    if procs.main:
        skipped = f", {len(result.skipped)} already done" if result.skipped else ""
        print(
            f"eval {args.task}: {len(result.splits)} splits ({', '.join(result.splits) or '-'})"
            f"{skipped}, {result.scenes} scenes, {result.rows} rows -> {result.path} "
            f"in {time.time() - start:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
