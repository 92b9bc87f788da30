"""Generate procedural scenes in the THOR HDF5 format (docs/data.md#the-scene-file-layout), with
no game engine (docs/data.md#how-a-view-is-made).

    python generate_scenes.py dataset dataset/ --num-scenes 1000 --num-processes 2
    python generate_scenes.py dataset demo_data/ --num-scenes 20 --preset small --vis-seed 3
    python generate_scenes.py dataset demo_data/ --start-seed 20 --num-scenes 40 --train-rooms-only
    python generate_scenes.py pickle scene_files/procedural_00003.pkl --seed 3 --preset small

`dataset` writes "{seed:05d}|{room}.hdf5" per seed (existing files that open and hold every key are
skipped; truncated or keyless ones are regenerated, one line each), then ssc_split.pkl
and vool_split.pkl over every scene file in the folder. Relevancy maps are added afterwards by
`generate_relevancy.py dataset`. Scene content is laid out by scene_layout.py and rendered by
scenes.py.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
from dataclasses import replace
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

import scene_file
import scene_layout
import scenes
from utils import (
    InputError,
    atomic_path,
    die_with_parent,
    remove_stale_temp_files,
    run_app,
    sigint_left_to_parent,
)

app = typer.Typer(add_completion=False, help=__doc__)

SEED_LIMIT = 2**32  # numpy's RandomState takes 0 <= seed < 2**32
# what a scene file must hold to count as "already there"
SCENE_KEYS = (
    *scene_file.TOP_LEVEL_DTYPES,
    scene_file.SALIENCIES,
    *(f"data/{key}" for key in ("cam_intr", "cam_pose", "scene_bounds", "objid_to_class")),
    "data/descriptions",
)


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
    broken = unusable_scene_files(out_dir)
    requested = {f"{seed:05d}" for seed in seeds}
    for name, problem in broken.items():
        action = "regenerating it" if seed_prefix(name) in requested else "left out of the splits"
        print(f"{problem}; {action}")
    existing = {seed_prefix(p.name) for p in out_dir.glob("*.hdf5") if p.name not in broken}
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
    with worker_pool(num_processes) as pool:
        for name in tqdm(pool.imap_unordered(_write_one, jobs), total=len(jobs), desc="scenes"):
            written.append(name)
            # after every scene, so that an interrupted folder is usable
            write_splits(out_dir, set(broken) - set(written))
    write_splits(out_dir, set(broken) - set(written))
    return written


def seed_prefix(name: str) -> str:
    """ "00012|FloorPlan3.hdf5" -> "00012"."""
    return name.split("|")[0]


def unusable_scene_files(out_dir: Path) -> dict[str, str]:
    """{file name: one-line problem} of the scene files in out_dir that do not open or lack a key
    (an interrupted copy, a truncated file)."""
    broken = {}
    for path in sorted(out_dir.glob("*.hdf5")):
        try:
            with scene_file.SceneFile(path) as scene:
                for key in SCENE_KEYS:
                    scene.get(key)
        except InputError as error:
            broken[path.name] = str(error)
    return broken


def write_splits(out_dir: Path, exclude: set[str] = frozenset()) -> None:
    """Both split pickles over every scene file now in the folder, but the `exclude` names."""
    names = [p.name for p in out_dir.glob("*.hdf5") if p.name not in exclude]
    scene_file.write_split_lists(out_dir, scenes.split_lists(names))


@contextlib.contextmanager
def worker_pool(num_processes: int):
    """A spawn pool of worker processes that never see Ctrl-C (the parent's KeyboardInterrupt
    leaves the pool's block, which terminates them) and end with the parent; one process: no
    pool."""
    if num_processes == 1:
        yield _Serial()
        return
    resource_tracker.ensure_running()  # starting, it unblocks Ctrl-C: so first
    with contextlib.ExitStack() as stack:
        with sigint_left_to_parent():  # a Ctrl-C meanwhile comes once the pool can be stopped
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(
                    num_processes, initializer=die_with_parent, initargs=(os.getpid(),)
                )
            )
        yield pool


class _Serial:
    """Stands in for a process pool with one process (no spawn overhead, easier debugging)."""

    @staticmethod
    def imap_unordered(fn, jobs):
        return map(fn, jobs)


def check_counts(**counts: int) -> None:
    """Each count (option name with "_" for "-") must be >= 1."""
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_seed(option: str, seed: int, num_scenes: int = 1) -> None:
    """Seeds seed .. seed + num_scenes - 1 must all be valid numpy seeds."""
    if not 0 <= seed <= SEED_LIMIT - num_scenes:
        scenes_from_it = f", and {num_scenes} scenes start at it" if num_scenes > 1 else ""
        raise InputError(
            f"{option} must be in 0..{SEED_LIMIT - num_scenes} (numpy seeds are "
            f"0 <= seed < 2**32{scenes_from_it}), got {seed}"
        )


PresetOpt = Annotated[
    str,
    typer.Option(
        help="size preset: full (896x896, 1M points, 64^3 TSDF) or small (128x128, 40k points, "
        "32^3)"
    ),
]
ImageSizeOpt = Annotated[
    int | None, typer.Option(help="image height and width (overrides the preset)")
]


@app.command()
def dataset(
    out_dir: Annotated[Path, typer.Argument(help="folder for the .hdf5 files and split pickles")],
    num_scenes: Annotated[int, typer.Option(help="number of seeds to generate")] = 100,
    start_seed: Annotated[int, typer.Option(help="first seed")] = 0,
    preset: PresetOpt = "full",
    image_size: ImageSizeOpt = None,
    num_output_pts: Annotated[
        int | None, typer.Option(help="ground-truth points per scene (overrides the preset)")
    ] = None,
    tsdf_size: Annotated[
        int | None, typer.Option(help="stored TSDF grid size per axis (overrides the preset)")
    ] = None,
    num_processes: Annotated[int, typer.Option(help="worker processes")] = 1,
    gzip_level: Annotated[
        int,
        typer.Option(
            help="gzip level of every dataset (the original used 9: same files, ~10x slower)"
        ),
    ] = 4,
    vis_seed: Annotated[
        list[int] | None,
        typer.Option(help="also write procedural_<seed>.pkl (visualize.py format) for this seed"),
    ] = None,
    train_rooms_only: Annotated[
        bool,
        typer.Option(
            help="skip the seeds whose room is a held-out (test) room: more training scenes, the "
            "held-out splits unchanged"
        ),
    ] = False,
):
    """Generate scene files and ssc_split.pkl / vool_split.pkl in OUT_DIR."""
    check_counts(num_scenes=num_scenes, num_processes=num_processes)
    if not 0 <= gzip_level <= 9:
        raise InputError(f"--gzip-level must be in 0..9, got {gzip_level}")
    check_seed("--start-seed", start_seed, num_scenes)
    vis_seed = vis_seed or []
    for seed in vis_seed:
        check_seed("--vis-seed", seed)
    options = scene_options(preset, image_size, num_output_pts, tsdf_size)
    seeds = list(range(start_seed, start_seed + num_scenes))
    if train_rooms_only:
        seeds = scene_layout.train_room_seeds(seeds)
    skipped = f", {num_scenes - len(seeds)} held-out-room seeds skipped" if train_rooms_only else ""
    start = time.perf_counter()
    written = generate_dataset(out_dir, seeds, options, num_processes, gzip_level, tuple(vis_seed))
    print(
        f"wrote {len(written)} scene files to {out_dir} ({len(seeds) - len(written)} already "
        f"there{skipped}, 0 failed) and the split pickles, in {time.perf_counter() - start:.1f} s"
    )


@app.command("pickle")
def pickle_command(
    out_path: Annotated[
        Path, typer.Argument(help="output .pkl (visualize.py's scene pickle format)")
    ],
    seed: Annotated[int, typer.Option(help="scene seed")] = 0,
    preset: PresetOpt = "small",
    image_size: ImageSizeOpt = None,
):
    """Write one generated scene as a visualization pickle (rgb, depth, cam_intr, cam_extr, classes,
    descriptions).
    """
    check_seed("--seed", seed)
    options = scene_options(preset, image_size, None, None)
    scene = scenes.generate_scene(seed, options)
    write_pickle(out_path, scenes.visualization_pickle(scene))
    print(f"wrote {out_path} ({scene['room']}, {len(scene['descriptions'])} descriptions)")


if __name__ == "__main__":
    run_app(app)
