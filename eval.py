"""Evaluate a trained OVSSC or VOOL checkpoint, or a baseline, on every non-train split, or on
those --splits names (docs/evaluation.md; the protocol: docs/method.md#the-one-cutoff-protocol).

    python eval.py --task ovssc --file_path dataset/ --load models/ours/ovssc/ovssc.pth
    torchrun --nproc_per_node 4 eval.py --task vool --file_path dataset/ --load models/ours/vool/vool.pth
    python eval.py --task ovssc --file_path nyu_ovssc/ --load models/ours/ovssc/ovssc.pth --suffix nyu
    python eval.py --task ovssc --file_path dataset/ --baseline lifted_relevancy --args logs/ovssc/args.pkl

Where it writes: only the stats file, `--output PATH` or by default `<checkpoint stem>_eval_stats.pkl`
beside the checkpoint (`..._eval_stats_<SUFFIX>.pkl` with --suffix; `<NAME>_<TASK>_eval_stats.pkl`
beside --args for --baseline NAME); at start it removes the temporary files killed writers left in that
folder. What is scored and how, and the changes from the original, are evaluation.py's (its docstring).
"""

from __future__ import annotations

import argparse
import time

import baselines
import dataset
import evaluation
import options
import processes
import tasks
from utils import remove_stale_temp_files, run_app
from vocab import APPROACHES


def parser() -> argparse.ArgumentParser:
    p = options.ArgumentParser(
        prog="eval.py",
        description="Evaluate an OVSSC or VOOL checkpoint, or a baseline. Writes only the stats "
        "file (--output), after removing temporary files killed writers left beside it.",
    )
    options.add_shared_flags(p)
    # None: not given, so eval caps the default to the cores available (evaluation.capped_num_workers)
    p.set_defaults(num_workers=None)
    add = p.add_argument
    add("--task", choices=tuple(APPROACHES), required=True)
    options.add_args_file_flag(p)
    add(
        "--approach",
        default=None,
        help="without an args.pkl: the approach the checkpoint was trained as (the shared flags "
        "give the rest of the configuration)",
    )
    add(
        "--baseline",
        choices=tuple(baselines.BASELINES),
        default=None,
        help="score this baseline instead of a checkpoint (no --load), with the data configuration "
        "of --args RUN/args.pkl",
    )
    add(
        "--output",
        default=None,
        help="stats file (default: <checkpoint stem>_eval_stats.pkl beside --load; "
        "<BASELINE>_<TASK>_eval_stats.pkl beside --args with --baseline)",
    )
    add("--suffix", default="", help="stats file <stem>_eval_stats_<SUFFIX>.pkl")
    add("--replace", action="store_true", help="evaluate every split again (default: resume)")
    add(
        "--splits",
        nargs="+",
        default=None,
        metavar="SPLIT",
        help="score only these splits of the split file (default: every split but train)",
    )
    add(
        "--cutoffs",
        type=float,
        nargs=3,
        action=options.CutoffRange,
        default=None,
        metavar=("START", "STOP", "STEP"),
        help="score cutoffs np.arange(START, STOP, STEP) (default: the original's -2.5 0 0.1; "
        "a baseline's own)",
    )
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
    cli = parser().parse_args(argv)
    workers_note = None
    if cli.num_workers is None:
        cli.num_workers, workers_note = evaluation.capped_num_workers(
            options.defaults().num_workers
        )
    args = evaluation.eval_config(cli)
    procs = processes.setup_processes(args.device)
    try:
        if procs.main:
            report_start(args, workers_note)
        result = evaluation.evaluate(args, procs)
    finally:
        processes.teardown_processes()
    if procs.main:
        note = dataset.without_rows_note(args.task, result.without_rows)
        if note:
            print(note, flush=True)
        skipped = f", {len(result.skipped)} already done" if result.skipped else ""
        print(
            f"eval {args.task}: {len(result.splits)} splits ({', '.join(result.splits) or '-'})"
            f"{skipped}, {result.scenes} scenes, {result.rows} rows -> {result.path} "
            f"in {time.time() - start:.1f} s",
            flush=True,
        )


def report_start(args: argparse.Namespace, workers_note: str | None) -> None:
    """The worker cap's note, and the stale temporary files removed beside the stats file."""
    if workers_note:
        print(workers_note, flush=True)
    folder = evaluation.stats_path(args).parent
    for stale in remove_stale_temp_files(folder):
        print(f"removed {stale.name}, left by an interrupted run", flush=True)


if __name__ == "__main__":
    main()
