"""Procedural indoor scenes in the THOR scene format, without a game engine
(docs/data.md#how-a-view-is-made).

A scene is a room (floor, walls, ceiling) holding furniture made of boxes and cylinders (cabinets,
drawers, fridges and safes are closed hollow containers; boxes, garbage cans and laundry hampers are
open-top containers; tables, shelves, counters and sofas are supports) and small objects placed in,
on, behind and beside them, laid out by scene_layout.py. One camera view is rendered with open3d's
RaycastingScene (RGB, metric depth, instance segmentation), then:

- ground-truth occupancy points: a uniform sample of the scene bounds plus samples inside every
  object's box, each labelled with the object whose solid contains it or "empty";
- the single-frame TSDF of the original (geometry.integrate_tsdf) and its visibility mask;
- VOOL descriptions and their ground-truth rewrites by the rules of docs/method.md#vool-ground-truth
  (A: in/on from the placement parent, B: the synthetic "banana in a <container>", C: behind / left
  / right / in front of).

World frame: z up, the same camera centre (-1.5, 0, 0.8), optical axis (+x), image right (-y) and
0.6 world units per metre as the THOR files' stored pose (docs/method.md#camera-conventions), but
image down maps to -z so gravity points down (the stored THOR pose is a reflection, and which way
gravity points in the released files is not known). So "behind" means larger x and "on the right of"
smaller y, as in THOR files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

import geometry
from scene_file import relevancy_sentence
from scene_layout import SceneObject, draw_room, is_test_room, layout_scene

WORLD_PER_METRE = 0.6
# camera-to-world: columns are the camera's right, down and forward axes in the world, times 0.6
# m->units
CAMERA_POSE = np.array(
    [
        [0.0, 0.0, WORLD_PER_METRE, -1.5],
        [-WORLD_PER_METRE, 0.0, 0.0, 0.0],
        [0.0, -WORLD_PER_METRE, 0.0, 0.8],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# the released generator's class lists and thresholds (docs/method.md#vool-ground-truth)
CONTAINER_CLASSES = {
    "cabinet",
    "fridge",
    "drawer",
    "bathtub basin",
    "bowl",
    "box",
    "cup",
    "desk",
    "garbage can",
    "laundry hamper",
    "microwave",
    "mug",
    "pot",
    "safe",
    "sink basin",
    "toaster",
}
NO_LOCALIZATION_CLASSES = {
    "wall",
    "ceiling",
    "floor",
    "empty",
    "countertop",
    "drawer",
    "counter",
    "banana",
}
NEVER_DESCRIBED = {"floor", "rug", "baseboard", "light fixture", "decal"}
DIRECTION_DOT_THRESHOLD = 0.6
BEHIND_BIN_PX = 10

# --------------------------------------------------------------------------------------------------
# rendering


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres along the optical axis; 0 where no hit
    seg: np.ndarray  # (H, W) int32 object index, -1 where no hit


def _random_appearance(
    num_objects: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Per object: base colour (K, 3) in [0, 1] and a procedural stripe texture (K, 4): direction,
    frequency.
    """
    colours = rng.uniform(0.15, 0.95, size=(num_objects, 3))
    textures = np.concatenate(
        [rng.normal(size=(num_objects, 3)), rng.uniform(5, 60, (num_objects, 1))], axis=1
    )
    textures[rng.rand(num_objects) < 0.4, 3] = 0.0  # plain colour for some objects
    return colours, textures


def _camera_rays(cam_intr: np.ndarray, cam_pose: np.ndarray, image_shape) -> np.ndarray:
    """(H, W, 6) world-frame rays through each pixel; the direction is scaled so that t_hit ==
    depth.
    """
    height, width = image_shape
    pix_dirs = geometry.camera_points(np.ones(image_shape), cam_intr)  # (H*W, 3), z = 1
    dirs = pix_dirs @ cam_pose[:3, :3].T
    origins = np.broadcast_to(cam_pose[:3, 3], dirs.shape)
    return np.concatenate([origins, dirs], axis=1).reshape(height, width, 6).astype(np.float32)


def render(
    objects: list[SceneObject],
    cam_intr,
    cam_pose,
    image_shape,
    colour_rngs: list[np.random.RandomState],
) -> list[Render]:
    """Ray-cast the scene once; shade it once per appearance RNG (e.g. original and domain-
    randomised).
    """
    scene = o3d.t.geometry.RaycastingScene()
    geometry_to_object = []
    for index, obj in enumerate(objects):
        for part in obj.parts:
            mesh = o3d.t.geometry.TriangleMesh.from_legacy(part.mesh())
            scene.add_triangles(mesh)
            geometry_to_object.append(index)
    hits = scene.cast_rays(o3d.core.Tensor(_camera_rays(cam_intr, cam_pose, image_shape)))
    t_hit = hits["t_hit"].numpy()
    hit = np.isfinite(t_hit)
    depth = np.where(hit, t_hit, 0.0).astype(np.float32)
    geom = hits["geometry_ids"].numpy().astype(np.int64)
    seg = np.where(hit, np.asarray(geometry_to_object + [-1])[np.where(hit, geom, -1)], -1).astype(
        np.int32
    )
    normals = hits["primitive_normals"].numpy()
    points = geometry.backproject(depth, cam_intr, cam_pose).reshape(*image_shape, 3)
    light = np.array([-0.5, 0.3, 0.8]) / np.linalg.norm([-0.5, 0.3, 0.8])
    shade = 0.45 + 0.55 * np.abs(normals @ light)
    renders = []
    for rng in colour_rngs:
        colours, textures = _random_appearance(len(objects), rng)
        obj = np.where(seg >= 0, seg, 0)
        phase = np.einsum("hwc,hwc->hw", points, textures[obj, :3]) * textures[obj, 3]
        stripes = 1.0 + 0.25 * np.sign(np.sin(phase)) * (textures[obj, 3] > 0)
        rgb = colours[obj] * (shade * stripes)[..., None]
        rgb[seg < 0] = 0.0
        renders.append(Render((np.clip(rgb, 0, 1) * 255).astype(np.uint8), depth, seg))
    return renders


# --------------------------------------------------------------------------------------------------
# ground truth


def sample_ground_truth(
    objects: list[SceneObject],
    num_points: int,
    scene_bounds: np.ndarray,
    rng: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled occupancy points inside the bounds: (num_points, 3) float32 xyz, (num_points,) int32
    ids.

    Half are uniform over the bounds, the rest are split evenly over the objects' boxes (clipped to
    the bounds), as the exporter samples each collider box. A point takes the id of the object whose
    solid contains it, else the "empty" id len(objects). Hidden parts are sampled like any other.
    """
    num_uniform = num_points // 2
    per_object = np.full(len(objects), (num_points - num_uniform) // len(objects))
    per_object[: (num_points - num_uniform) % len(objects)] += 1
    chunks = [rng.uniform(scene_bounds[0], scene_bounds[1], size=(num_uniform, 3))]
    for obj, count in zip(objects, per_object, strict=True):
        lo = np.clip(obj.lower, scene_bounds[0], scene_bounds[1])
        hi = np.clip(obj.upper, scene_bounds[0], scene_bounds[1])
        chunks.append(rng.uniform(lo, hi, size=(count, 3)))
    xyz = np.concatenate(chunks)[rng.permutation(num_points)]
    objid = np.full(num_points, len(objects), np.int32)
    for index, obj in enumerate(objects):
        objid[obj.contains(xyz)] = index
    return xyz.astype(np.float32), objid


def should_add_relation(target: str, relation: str, reference: str, added: set[str]) -> bool:
    """The sentence filter of the THOR generator (docs/method.md#vool-ground-truth)."""
    if target == reference or "ceiling" in reference:
        return False
    if target in NEVER_DESCRIBED or reference in NEVER_DESCRIBED:
        return False
    if relevancy_sentence(target, relation, reference) in added:
        return False
    if relation not in ("in", "on"):
        pairs = [(target, reference), (reference, target)]
        if any(relevancy_sentence(a, r, b) in added for a, b in pairs for r in ("in", "on")):
            return False
    return True


@dataclass
class GroundTruth:
    """Mutable per-view ground truth that the description rules rewrite, in place
    (docs/data.md#how-a-view-is-made)."""

    xyz: np.ndarray  # (N, 3) world
    objid: np.ndarray  # (N,) int32, index into classes
    classes: list[str]  # class name per id
    visible_pts: np.ndarray  # (N,) bool: in observed free space (TSDF > 0)
    seg_ids: set[int]  # ids with pixels in the segmentation
    descriptions: list[dict] = field(default_factory=list)
    sentences: set[str] = field(default_factory=set)

    def add(self, target_id: int, relation: str, reference: str) -> bool:
        target = self.classes[target_id]
        if not should_add_relation(target, relation, reference, self.sentences):
            return False
        self.sentences.add(relevancy_sentence(target, relation, reference))
        self.descriptions.append(
            dict(
                target_obj_name=target,
                target_obj_id=target_id,
                target_obj_material="",
                reference_obj_name=reference,
                reference_obj_material="",
                spatial_relation_name=relation,
            )
        )
        return True

    def rewrite_hidden(self, region: np.ndarray, target_id: int) -> None:
        """Points of `region` that are not observed free space take the hidden target's id."""
        self.objid[region & ~self.visible_pts] = target_id


def _receptacle_region(xyz: np.ndarray, objects: list[SceneObject], name: str) -> np.ndarray | None:
    """Union of the receptacle boxes of every instance of a class, or None if the class has none."""
    boxes = [r for obj in objects if obj.name == name for r in obj.receptacles]
    if not boxes:
        return None
    return np.any([r.contains(xyz) for r in boxes], axis=0)


def add_descriptions(gt: GroundTruth, objects: list[SceneObject], cam_intr, cam_pose) -> None:
    """VOOL descriptions and their GT rewrites, rules A, B and C of
    docs/method.md#vool-ground-truth, in that order."""
    present = set(np.unique(gt.objid).tolist())
    # A. in / on from the placement parent (the floor is never a parent for in/on)
    for index, obj in enumerate(objects):
        parent = obj.parent
        if (
            parent in (None, 0)
            or parent not in gt.seg_ids
            or index not in present
            or parent not in present
        ):
            continue
        reference = objects[parent].name
        relation = "in" if reference in CONTAINER_CLASSES else "on"
        if gt.add(index, relation, reference) and index not in gt.seg_ids:
            region = _receptacle_region(gt.xyz, objects, reference)
            if region is not None:
                gt.rewrite_hidden(region, index)
    # B. the fictitious, never visible "banana in a <container>"
    for index in sorted(gt.seg_ids):
        reference = gt.classes[index]
        region = (
            _receptacle_region(gt.xyz, objects, reference)
            if reference in CONTAINER_CLASSES
            else None
        )
        # deviation: a banana whose region has no hidden point would have an empty GT, so it is
        # skipped
        if region is None or not np.any(region & ~gt.visible_pts):
            continue
        if should_add_relation("banana", "in", reference, gt.sentences):
            gt.classes.append("banana")
            gt.add(len(gt.classes) - 1, "in", reference)
            # deviation: the banana takes only "empty" points, so it cannot erase the hidden objects
            # that rule A just wrote into the same containers
            gt.rewrite_hidden(region & (gt.objid == gt.classes.index("empty")), len(gt.classes) - 1)
    _add_geometric_relations(gt, cam_intr, cam_pose)
    # deviation: a later rewrite can take all the points of an earlier hidden target; drop those
    counts = np.bincount(gt.objid, minlength=len(gt.classes))
    gt.descriptions = [d for d in gt.descriptions if counts[d["target_obj_id"]] > 0]


def _id_statistics(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per id: point count (K,), centroid (K, 3), xy extent (K, 2), on the current labels."""
    k = len(gt.classes)
    counts = np.bincount(gt.objid, minlength=k)
    order = np.argsort(gt.objid, kind="stable")
    xyz = gt.xyz[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = counts > 0
    centroids = np.zeros((k, 3))
    extents = np.zeros((k, 2))
    centroids[present] = np.add.reduceat(xyz, starts[present], axis=0) / counts[present, None]
    lo = np.minimum.reduceat(xyz[:, :2], starts[present], axis=0)
    hi = np.maximum.reduceat(xyz[:, :2], starts[present], axis=0)
    extents[present] = hi - lo
    return counts, centroids, extents


def _behind_region(gt: GroundTruth, reference: str, cam_intr, cam_pose) -> np.ndarray:
    """Points farther from the camera than the back side of the reference class, per 10-px image
    bin.
    """
    u, v, z = geometry.project(gt.xyz.astype(np.float64), cam_intr, cam_pose)
    u, v = np.round(u).astype(np.int64), np.round(v).astype(np.int64)
    u, v = u - u.min(), v - v.min()
    bu, bv = u // BEHIND_BIN_PX, v // BEHIND_BIN_PX
    bins = bu * (bv.max() + 1) + bv
    is_ref = np.isin(gt.objid, [i for i, name in enumerate(gt.classes) if name == reference])
    back_side = np.full(bins.max() + 1, -np.inf)  # -inf: no reference point in the bin
    np.maximum.at(back_side, bins[is_ref], z[is_ref])
    has_ref = np.isfinite(back_side)
    return has_ref[bins] & (z > back_side[bins])


def _add_geometric_relations(gt: GroundTruth, cam_intr, cam_pose) -> None:
    """Rule C: behind (with the hidden-target rewrite), then right / left / in front of for visible
    targets.
    """
    empty_id = gt.classes.index("empty")
    counts, centroids, extents = _id_statistics(gt)
    references = [i for i in sorted(gt.seg_ids) if gt.classes[i] not in NO_LOCALIZATION_CLASSES]
    for ref in references:
        reference = gt.classes[ref]
        for target in range(len(gt.classes)):
            if (
                target == ref
                or counts[target] == 0
                or gt.classes[target] in NO_LOCALIZATION_CLASSES
            ):
                continue
            delta = centroids[ref] - centroids[target]
            distance = np.linalg.norm(delta)
            if distance == 0 or distance > min(max(2 * extents[ref].max(), 0.1), 1.0):
                continue
            direction = delta / distance
            if direction @ np.array([-1.0, 0, 0]) > DIRECTION_DOT_THRESHOLD:
                if gt.add(target, "behind", reference) and target not in gt.seg_ids:
                    behind = _behind_region(gt, reference, cam_intr, cam_pose)
                    gt.rewrite_hidden(behind & (gt.objid == empty_id), target)
                    counts, centroids, extents = _id_statistics(gt)
            if reference == "cabinet" or target not in gt.seg_ids:
                continue
            for relation, axis in (
                ("on the right of", (0, 1, 0)),
                ("on the left of", (0, -1, 0)),
                ("in front of", (1, 0, 0)),
            ):
                if direction @ np.array(axis, float) > DIRECTION_DOT_THRESHOLD and gt.add(
                    target, relation, reference
                ):
                    break


# --------------------------------------------------------------------------------------------------
# one view, and its file


@dataclass(frozen=True)
class SceneOptions:
    """Sizes of a generated view; the defaults are the original's."""

    image_size: int = 896
    num_output_pts: int = 1_000_000
    tsdf_size: int = 64
    relevancy_size: int = 128


PRESETS = {
    "full": SceneOptions(),
    "small": SceneOptions(image_size=128, num_output_pts=40_000, tsdf_size=32),
}


def generate_scene(seed: int, options: SceneOptions = PRESETS["full"]) -> dict:
    """Everything one scene file holds, deterministic in `seed` (descriptions as dicts)."""
    rng = np.random.RandomState(seed)
    room = draw_room(rng)
    objects = layout_scene(room, rng)
    image_shape = (options.image_size, options.image_size)
    cam_intr = geometry.pinhole_intrinsics(*image_shape)
    appearance_rngs = [np.random.RandomState([seed, 1])]
    if is_test_room(room):  # domain-randomised colours of the same view, test rooms only
        appearance_rngs.append(np.random.RandomState([seed, 2]))
    renders = render(objects, cam_intr, CAMERA_POSE, image_shape, appearance_rngs)
    view = renders[0]
    bounds = geometry.THOR_SCENE_BOUNDS
    xyz, objid = sample_ground_truth(objects, options.num_output_pts, bounds, rng)
    tsdf_shape = (options.tsdf_size,) * 3
    tsdf, tsdf_xyz = geometry.integrate_tsdf(view.depth, cam_intr, CAMERA_POSE, bounds, tsdf_shape)
    visible_pts = tsdf[tuple(geometry.grid_index(xyz, bounds, tsdf_shape).T)] > 0
    gt = GroundTruth(
        xyz=xyz,
        objid=objid,
        classes=[obj.name for obj in objects] + ["empty"],
        visible_pts=visible_pts,
        seg_ids=set(np.unique(view.seg[view.seg >= 0]).tolist()),
    )
    add_descriptions(gt, objects, cam_intr, CAMERA_POSE)
    return dict(
        room=room,
        objects=objects,  # the layout (not written to the file)
        rgb=view.rgb,
        domain_randomized_rgb=renders[1].rgb if len(renders) > 1 else None,
        depth=view.depth,
        seg=view.seg,
        cam_intr=cam_intr,
        cam_pose=CAMERA_POSE.copy(),
        scene_bounds=bounds.copy(),
        tsdf_value_pts=tsdf.reshape(-1),
        tsdf_xyz_pts=tsdf_xyz,
        full_xyz_pts=gt.xyz,
        full_objid_pts=gt.objid,
        objid_to_class=[f"{name}[{k}]" for k, name in enumerate(gt.classes)],
        descriptions=gt.descriptions,
    )


def visualization_pickle(scene: dict) -> dict:
    """The visualize.py scene dict (docs/data.md#the-scene-pickle) for a generated view."""
    classes = [name.split("[")[0] for name in scene["objid_to_class"]]
    visible = sorted({classes[i] for i in np.unique(scene["seg"][scene["seg"] >= 0])} - {"empty"})
    return dict(
        rgb=np.asarray(scene["rgb"], np.uint8),
        depth=np.asarray(scene["depth"], np.float32),
        cam_intr=np.asarray(scene["cam_intr"], np.float64),
        cam_extr=np.asarray(scene["cam_pose"], np.float64),
        ovssc_obj_classes=visible,
        descriptions=[
            [d["target_obj_name"], d["spatial_relation_name"], d["reference_obj_name"]]
            for d in scene["descriptions"]
        ],
    )


def split_lists(file_names: list[str]) -> dict[str, list[str]]:
    """ssc_split.pkl / vool_split.pkl content (docs/method.md#splits): train rooms, and the test
    rooms three times.
    """
    names = sorted(file_names)
    test = [n for n in names if is_test_room(n.split("|", 1)[1].removesuffix(".hdf5"))]
    return dict(
        train=[n for n in names if n not in test],
        unseen_instances=test,
        unseen_instances_dr=list(test),
        unseen_instances_synonyms=list(test),
    )
