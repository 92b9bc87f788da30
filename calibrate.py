"""Calibrate a trained VOOL network's per-relation logit offsets on its training scenes (not in the
original): every Nth training scene scored as eval.py scores a split, each relation's logits shifted
so that one cutoff fits every relation, the offsets written into the checkpoint. What and why:
calibration.py's docstring and docs/learning.md.

    python calibrate.py --file_path dataset/ --load logs/vool/latest.pth   # every 4th training scene

The network must be trained with --relation_offsets; a calibrated checkpoint is left as it is.
"""

from __future__ import annotations

import argparse
import time

import calibration
import options
from utils import run_app

CUTOFFS = (-1.0, 6.0, 0.2)  # demo.py's network cutoffs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_shared_flags(p)
    p.set_defaults(num_workers=0)
    add = p.add_argument
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
    return p


def run(argv: list[str] | None) -> None:
    start = time.time()
    cli = parser().parse_args(argv)
    print(f"{calibration.calibrate(cli)} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    run_app(lambda: run(None))
