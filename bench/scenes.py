"""Scenes per minute of generate_scenes.py at the original sizes and at the small preset.

    python bench/scenes.py --num-processes 2 --full-scenes 20 --small-scenes 100

Targets (issue 3): at least 10 scenes/minute at full size (896x896 image, 1M GT points, 64^3 TSDF)
and 100 scenes/minute with the small preset, on 2 CPU cores. Writes into a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import generate_scenes  # noqa: E402
import scenes  # noqa: E402

TARGETS = {"full": 10.0, "small": 100.0}


def scenes_per_minute(preset: str, num_scenes: int, num_processes: int, gzip_level: int) -> float:
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        generate_scenes.generate_dataset(
            Path(out_dir),
            list(range(num_scenes)),
            scenes.PRESETS[preset],
            num_processes,
            gzip_level,
        )
        return num_scenes / (time.perf_counter() - start) * 60


def main(
    num_processes: int = typer.Option(2, help="worker processes"),
    full_scenes: int = typer.Option(20, help="scenes to time at full size"),
    small_scenes: int = typer.Option(100, help="scenes to time with the small preset"),
    gzip_level: int = typer.Option(4, help="gzip level (the original used 9)"),
):
    for preset, count in (("full", full_scenes), ("small", small_scenes)):
        rate = scenes_per_minute(preset, count, num_processes, gzip_level)
        o = scenes.PRESETS[preset]
        print(
            f"{preset:5s} ({o.image_size}x{o.image_size}, {o.num_output_pts} pts, "
            f"{o.tsdf_size}^3 TSDF): "
            f"{rate:7.1f} scenes/min with {num_processes} processes, gzip {gzip_level} "
            f"(target {TARGETS[preset]:.0f}, ratio {rate / TARGETS[preset]:.2f})"
        )


if __name__ == "__main__":
    typer.run(main)
