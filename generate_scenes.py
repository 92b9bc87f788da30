"""Generate procedural scenes in the THOR HDF5 format (spec data.md sections 1-2), with no game
engine.

    python generate_scenes.py dataset dataset/ --num-scenes 1000 --num-processes 2
    python generate_scenes.py dataset demo_data/ --num-scenes 20 --preset small --vis-seed 3
    python generate_scenes.py pickle scene_files/procedural_00003.pkl --seed 3 --preset small

`dataset` writes "{seed:05d}|{room}.hdf5" per seed (existing files are skipped), then ssc_split.pkl
and vool_split.pkl over every scene file in the folder. Relevancy maps are added afterwards by
`generate_relevancy.py dataset`. Scene content is built by scenes.py.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from dataclasses import replace
from pathlib import Path

import typer
from tqdm import tqdm

import scene_file
import scenes
from utils import InputError, atomic_path, die_with_parent, remove_stale_temp_files, run_app

app = typer.Typer(add_completion=False, help=__doc__)


def scene_options(
    preset: str, image_size: int | None, num_output_pts: int | None, tsdf_size: int | None
):
    if preset not in scenes.PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {sorted(scenes.PRESETS)}")
    overrides = dict(image_size=image_size, num_output_pts=num_output_pts, tsdf_size=tsdf_size)
    options = replace(
        scenes.PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}
    )
    if options.image_size < 8 or options.num_output_pts < 100 or options.tsdf_size < 4:
        raise InputError(f"sizes too small: {options} (need image >= 8, points >= 100, tsdf >= 4)")
    return options


def _write_one(job: tuple[int, Path, scenes.SceneOptions, int, Path | None]) -> str:
    """Generate and write one seed's file (and optionally its visualization pickle); returns the
    file name.
    """
    seed, out_dir, options, gzip_level, vis_dir = job
    scene = scenes.generate_scene(seed, options)
    name = scene_file.scene_file_name(seed, scene["room"])
    with atomic_path(out_dir / name) as tmp:
        scene_file.write_scene(tmp, scene, options.relevancy_size, gzip_level)
    if vis_dir is not None:
        write_pickle(vis_dir / f"procedural_{seed:05d}.pkl", scenes.visualization_pickle(scene))
    return name


def write_pickle(path: Path, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def generate_dataset(
    out_dir: Path,
    seeds: list[int],
    options: scenes.SceneOptions,
    num_processes: int = 1,
    gzip_level: int = 4,
    vis_seeds: tuple[int, ...] = (),
    vis_dir: Path | None = None,
) -> list[str]:
    """Write the scene files of `seeds` that are not there yet, then both split pickles; returns new
    names.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temp_files(out_dir):
        print(f"removed {stale.name}, left by an interrupted run")
    existing = {p.name.split("|")[0] for p in out_dir.glob("*.hdf5")}
    missing = [n for n in scene_file.SPLIT_FILES.values() if not (out_dir / n).exists()]
    if existing and missing:
        print(
            f"note: {out_dir} has {len(existing)} scene files but no {' / '.join(missing)} "
            "(an earlier run was interrupted); they are written as scenes complete"
        )
    jobs = [
        (seed, out_dir, options, gzip_level, (vis_dir or out_dir) if seed in vis_seeds else None)
        for seed in seeds
        if f"{seed:05d}" not in existing or seed in vis_seeds
    ]
    written = []
    with (
        multiprocessing.get_context("spawn").Pool(
            num_processes, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        if num_processes > 1
        else _Serial() as pool
    ):
        for name in tqdm(pool.imap_unordered(_write_one, jobs), total=len(jobs), desc="scenes"):
            written.append(name)
            write_splits(out_dir)  # after every scene, so that an interrupted folder is usable
    write_splits(out_dir)
    return written


def write_splits(out_dir: Path) -> None:
    """Both split pickles over every scene file now in the folder."""
    scene_file.write_split_lists(
        out_dir, scenes.split_lists([p.name for p in out_dir.glob("*.hdf5")])
    )


class _Serial:
    """Stands in for a process pool with one process (no spawn overhead, easier debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, jobs):
        return map(fn, jobs)


PRESET_HELP = (
    "size preset: full (896x896, 1M points, 64^3 TSDF) or small (128x128, 40k points, 32^3)"
)


@app.command()
def dataset(
    out_dir: Path = typer.Argument(..., help="folder for the .hdf5 files and split pickles"),
    num_scenes: int = typer.Option(100, help="number of seeds to generate"),
    start_seed: int = typer.Option(0, help="first seed"),
    preset: str = typer.Option("full", help=PRESET_HELP),
    image_size: int = typer.Option(None, help="image height and width (overrides the preset)"),
    num_output_pts: int = typer.Option(
        None, help="ground-truth points per scene (overrides the preset)"
    ),
    tsdf_size: int = typer.Option(
        None, help="stored TSDF grid size per axis (overrides the preset)"
    ),
    num_processes: int = typer.Option(1, help="worker processes"),
    gzip_level: int = typer.Option(
        4, help="gzip level of every dataset (the original used 9: same files, ~10x slower)"
    ),
    vis_seed: list[int] = typer.Option(
        [], help="also write procedural_<seed>.pkl (visualize.py format) for this seed"
    ),
):
    """Generate scene files and ssc_split.pkl / vool_split.pkl in OUT_DIR."""
    if num_scenes < 1 or num_processes < 1 or not 0 <= gzip_level <= 9:
        raise InputError("--num-scenes and --num-processes must be >= 1 and --gzip-level in 0..9")
    options = scene_options(preset, image_size, num_output_pts, tsdf_size)
    seeds = list(range(start_seed, start_seed + num_scenes))
    start = time.perf_counter()
    written = generate_dataset(out_dir, seeds, options, num_processes, gzip_level, tuple(vis_seed))
    print(
        f"wrote {len(written)} scene files to {out_dir} ({num_scenes - len(written)} already "
        f"there, 0 failed) and the split pickles, in {time.perf_counter() - start:.1f} s"
    )


@app.command("pickle")
def pickle_command(
    out_path: Path = typer.Argument(
        ..., help="output .pkl (visualize.py scene format, data.md section 5)"
    ),
    seed: int = typer.Option(0, help="scene seed"),
    preset: str = typer.Option("small", help=PRESET_HELP),
    image_size: int = typer.Option(None, help="image height and width (overrides the preset)"),
):
    """Write one generated scene as a visualization pickle (rgb, depth, cam_intr, cam_extr, classes,
    descriptions).
    """
    options = scene_options(preset, image_size, None, None)
    scene = scenes.generate_scene(seed, options)
    write_pickle(out_path, scenes.visualization_pickle(scene))
    print(f"wrote {out_path} ({scene['room']}, {len(scene['descriptions'])} descriptions)")


if __name__ == "__main__":
    run_app(app)
