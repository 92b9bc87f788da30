"""Calibrate a trained VOOL network's per-relation logit offsets on its training scenes (not in the
original): every Nth training scene scored as eval.py scores a split, each relation's logits shifted
so that one cutoff fits every relation, the offsets written into the checkpoint.

    python calibrate.py --file_path dataset/ --load logs/vool/latest.pth   # every 4th training scene
    python calibrate.py --file_path dataset/ --load logs/vool/latest.pth --every 1 --replace

The network must be trained with --relation_offsets; a relation no scored scene describes keeps
offset 0 (the line says which). A calibrated checkpoint is left as it is; --replace calibrates it
again, from zero offsets. The configuration is the training run's args.pkl beside the checkpoint
(or --args); at start the temporary files killed writers left beside the checkpoint are removed.
What and why: calibration.py's docstring and docs/learning.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import calibration
import options
from utils import remove_stale_temp_files, run_app

CUTOFFS = (-1.0, 6.0, 0.2)  # demo.py's network cutoffs


def parser() -> argparse.ArgumentParser:
    p = options.ArgumentParser(
        prog="calibrate.py", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    add = p.add_argument
    add("--file_path", required=True, help="dataset root: the train split of vool_split.pkl")
    add("--load", required=True, metavar="CKPT", help="the VOOL checkpoint, rewritten in place")
    options.add_args_file_flag(p)
    add("--every", type=options.COUNT, default=4, help="score every Nth training scene")
    add(
        "--cutoffs",
        type=float,
        nargs=3,
        action=options.CutoffRange,
        default=list(CUTOFFS),
        metavar=("START", "STOP", "STEP"),
        help="cutoffs np.arange(START, STOP, STEP) the best ones are chosen from",
    )
    add(
        "--replace",
        action="store_true",
        help="calibrate a calibrated checkpoint again, from zero offsets",
    )
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--num_workers", type=options.NONNEGATIVE_COUNT, default=0, help="DataLoader workers")
    return p


def run(argv: list[str] | None) -> None:
    start = time.time()
    cli = parser().parse_args(argv)
    for stale in remove_stale_temp_files(Path(cli.load).parent):
        print(f"removed {stale.name}, left by an interrupted run", flush=True)
    print(f"{calibration.calibrate(cli)} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    run_app(lambda: run(None))
