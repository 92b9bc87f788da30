"""GLB scenes for the web page's 3D views (webpage_3d.py): the OVSSC completion or its ground truth as
one coloured mesh per class, split into the part the camera sees and the hidden part, and the VOOL
prediction and ground truth over the scene's point cloud.

Colours: each class takes the palette colour of its index in the request's class list
(render.PALETTE, the turntables' palette), the same in the prediction's and the ground truth's
view; hidden parts are the class colour, lighter and half transparent. A face is hidden when the
camera cannot see its centre: the rule of dataset_scene.hidden_voxels (more than one grid pitch
behind the observed depth, or at a pixel without depth). VOOL: the prediction in
comparisons.PREDICTION_COLOR (blue, the surface of the region above the cutoff), the ground truth
in comparisons.TRUTH_COLOR (red, half transparent cubes of one grid pitch), the scene's points
faded as in localization_vs_gt.png.

The scene's world is z-up (geometry.py); glTF is y-up, so every GLB turns it once at the root.
Node names are the legend: "<class> (visible)", "<class> (hidden)", "prediction", "ground truth",
"scene points".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial

import comparisons
import dataset_scene
import render
from frames import Frame
from utils import atomic_path

HIDDEN_ALPHA = 0.45  # opacity of hidden parts and of the ground-truth cubes
HIDDEN_LIGHTEN = 0.45  # how far hidden parts are mixed towards white
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def class_color(index: int) -> np.ndarray:
    return render.PALETTE[index % len(render.PALETTE)]


def material(color, alpha: float = 1.0) -> PBRMaterial:
    rgba = [*(int(c) for c in color), int(round(255 * alpha))]
    blend = {"alphaMode": "BLEND"} if alpha < 1 else {}
    return PBRMaterial(baseColorFactor=rgba, metallicFactor=0.0, roughnessFactor=0.9,
                       doubleSided=True, **blend)  # fmt: skip


def coloured_mesh(vertices, faces, color, alpha: float = 1.0) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float32), np.asarray(faces), process=False)
    mesh.visual = trimesh.visual.TextureVisuals(material=material(color, alpha))
    return mesh


def hidden_faces(vertices, faces, frame: Frame, pitch: float) -> np.ndarray:
    """(F,) bool: faces whose centre the camera cannot see (dataset_scene.hidden_voxels's rule)."""
    centres = np.asarray(vertices)[np.asarray(faces)].mean(1)
    return dataset_scene.hidden_voxels(np.zeros(len(centres), np.int16), centres, frame, pitch)


def class_meshes(name: str, index: int, vertices, faces, frame: Frame, pitch: float):
    """[(node name, mesh)]: the visible and the hidden faces of one class's mesh (each when any)."""
    hidden = hidden_faces(vertices, faces, frame, pitch)
    color = class_color(index)
    lighter = color + (255 - color.astype(np.float64)) * HIDDEN_LIGHTEN
    parts = [
        (f"{name} (visible)", faces[~hidden], color, 1.0),
        (f"{name} (hidden)", faces[hidden], lighter, HIDDEN_ALPHA),
    ]
    return [
        (node, coloured_mesh(vertices, part, c, alpha))
        for node, part, c, alpha in parts
        if len(part)
    ]


def cubes_mesh(points, size: float, color, alpha: float = 1.0) -> trimesh.Trimesh:
    """Each point as an axis-aligned cube of edge `size` (render.cubes_shape's cubes), one mesh."""
    shape = render.cubes_shape(points, np.zeros((len(points), 3), np.uint8), size)
    return coloured_mesh(shape.vertices, shape.triangles, color, alpha)


def scene_points(xyz, rgb) -> trimesh.PointCloud:
    """The scene's points in their colours, faded as in localization_vs_gt.png."""
    fade = comparisons.SCENE_FADE
    faded = np.asarray(rgb, np.float64) * (1 - fade) + 255 * fade
    colors = np.concatenate([faded, np.full((len(faded), 1), 255.0)], 1).astype(np.uint8)
    return trimesh.PointCloud(np.asarray(xyz, np.float32), colors=colors)


def write_glb(path: Path, nodes: list[tuple[str, trimesh.Trimesh | trimesh.PointCloud]]) -> Path:
    """A GLB of the named nodes, turned from the z-up world to glTF's y-up; written atomically."""
    scene = trimesh.Scene()
    for name, geometry in nodes:
        scene.add_geometry(geometry, geom_name=name, node_name=name, transform=Z_UP_TO_Y_UP)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(scene.export(file_type="glb"))
    return path


def completion_glb(path: Path, meshes: list[tuple[str, int, np.ndarray, np.ndarray]],
                   frame: Frame, pitch: float) -> Path:  # fmt: skip
    """OVSSC view: meshes = [(class, class index, vertices, faces)]."""
    nodes = []
    for name, index, vertices, faces in meshes:
        nodes += class_meshes(name, index, vertices, faces, frame, pitch)
    return write_glb(path, nodes)


def localization_glb(path: Path, scene_xyz, scene_rgb, region, truth, pitch: float) -> Path:
    """VOOL view: the scene's points, the predicted region's mesh (vertices, faces; None when
    empty) and the ground truth's points as cubes (None without ground truth)."""
    nodes = [("scene points", scene_points(scene_xyz, scene_rgb))]
    if region is not None:
        nodes.append(("prediction", coloured_mesh(*region, comparisons.PREDICTION_COLOR)))
    if truth is not None and len(truth):
        nodes.append(
            ("ground truth", cubes_mesh(truth, pitch, comparisons.TRUTH_COLOR, HIDDEN_ALPHA))
        )
    return write_glb(path, nodes)
