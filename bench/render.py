"""Seconds to render a turntable of a typical completion with render.py (visualize.py's renderer).

    python bench/render.py                       # 220 frames, 1024 px: the ovssc-visualize default
    python bench/render.py --num-frames 48 --size 512

The typical scene: the ARKit-sized generated scene scene_files/procedural_00002.pkl back-projected,
its observed surfaces thickened 10 cm behind into a 240^3 query grid (the original's), cut into 8
"classes" by position and meshed with inference.volume_mesh, as ovssc-inference writes them.
Target (issue 11): under a minute on 2 CPU cores for the default turntable.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import frames  # noqa: E402
import geometry  # noqa: E402
import inference  # noqa: E402
import render  # noqa: E402


def typical_meshes(scene: Path, grid_size: int, classes: int = 8):
    frame = frames.read_scene_pickle(scene)
    bounds = geometry.THOR_SCENE_BOUNDS
    grid = inference.query_grid(bounds, grid_size)
    u, v, z = geometry.project(grid, frame.cam_intr, frame.cam_extr)
    height, width = frame.shape
    inside = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    surface = np.zeros(len(grid))
    surface[inside] = frame.depth[v[inside].astype(int), u[inside].astype(int)]
    occupied = inside & (surface > 0) & (z >= surface) & (z <= surface + 0.1)
    occupied = occupied.reshape((grid_size,) * 3)
    occupied[[0, -1]] = occupied[:, [0, -1]] = occupied[:, :, [0, -1]] = False
    # "classes": slabs along x and y, so neighbouring meshes touch like real objects
    index = np.indices(occupied.shape)
    label = (index[0] * 2 // grid_size) * (classes // 2) + index[1] * (classes // 2) // grid_size
    shapes = []
    for k in range(classes):
        mesh = inference.volume_mesh(occupied & (label == k), bounds)
        if mesh is not None:
            shapes.append(render.mesh_shape(*mesh, render.PALETTE[k]))
    return shapes


def main(
    num_frames: int = typer.Option(220, help="turntable frames"),
    size: int = typer.Option(1024, help="frame width and height"),
    grid_size: int = typer.Option(240, help="query grid of the meshes"),
    scene: Path = typer.Option(REPO / "scene_files" / "procedural_00002.pkl"),
) -> None:
    start = time.perf_counter()
    shapes = typical_meshes(scene, grid_size)
    triangles = sum(len(s.triangles) for s in shapes)
    print(f"meshes: {len(shapes)}, {triangles:,} triangles, {time.perf_counter() - start:.1f} s")
    names = [f"class {k}" for k in range(len(shapes))]
    legend = render.legend(names, render.PALETTE[: len(shapes)], size)
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "completion.mp4"
        start = time.perf_counter()
        render.render_turntable(shapes, video, num_frames, size, legend_image=legend)
        seconds = time.perf_counter() - start
        count = sum(1 for _ in imageio.get_reader(video, format="FFMPEG"))
    print(
        f"turntable: {count} frames of {size}x{size} in {seconds:.1f} s "
        f"({seconds / num_frames * 1000:.0f} ms/frame); target < 60 s: "
        f"{'met' if seconds < 60 else 'missed'}"
    )


if __name__ == "__main__":
    typer.run(main)
