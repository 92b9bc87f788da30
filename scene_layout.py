"""What a procedural scene holds (docs/data.md#how-a-view-is-made): the THOR room types and their
held-out test rooms, solids (boxes, vertical cylinders, spheres), objects made of them (furniture:
closed and open containers, supports; small objects), and `layout_scene`, which puts 3-5 pieces of
furniture in a room and 6-12 small objects in and on them. scenes.py renders the result and derives
its ground truth and descriptions.

Units are world units (0.6 per metre, as the THOR files); z is up, the camera looks along +x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from vocab import TEST_CLASSES

ROOM_TYPES = {
    "kitchen": range(1, 31),
    "living room": range(201, 231),
    "bedroom": range(301, 331),
    "bathroom": range(401, 431),
}
TEST_ROOM_NUMBERS = {n for numbers in ROOM_TYPES.values() for n in list(numbers)[-5:]}
ROOMS = sorted(f"FloorPlan{n}_physics" for numbers in ROOM_TYPES.values() for n in numbers)


def room_number(room: str) -> int:
    return int(room.split("_")[0].removeprefix("FloorPlan"))


def is_test_room(room: str) -> bool:
    return room_number(room) in TEST_ROOM_NUMBERS


def draw_room(rng: np.random.RandomState) -> str:
    """A scene's room: the first draw of its seed's generator."""
    return ROOMS[rng.randint(len(ROOMS))]


def scene_room(seed: int) -> str:
    """The room generate_scene(seed) builds, without building it."""
    return draw_room(np.random.RandomState(seed))


def train_room_seeds(seeds) -> list[int]:
    """The seeds whose scene lies in a training room (not a held-out test room)."""
    return [seed for seed in seeds if not is_test_room(scene_room(seed))]


# --------------------------------------------------------------------------------------------------
# solids


@dataclass
class Part:
    """A solid primitive: an axis-aligned box, or a cylinder / sphere with a vertical axis.

    `center` and `size` are the centre and full extents of its axis-aligned bounding box.
    """

    kind: str
    center: np.ndarray
    size: np.ndarray

    @property
    def lower(self) -> np.ndarray:
        return self.center - self.size / 2

    @property
    def upper(self) -> np.ndarray:
        return self.center + self.size / 2

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        d = np.abs(xyz - self.center) / (self.size / 2)  # (N, 3), <= 1 inside the bounding box
        if self.kind == "box":
            return np.all(d <= 1, axis=1)
        if self.kind == "cylinder":
            return (d[:, 0] ** 2 + d[:, 1] ** 2 <= 1) & (d[:, 2] <= 1)
        return np.sum(d**2, axis=1) <= 1  # sphere (ellipsoid)

    def mesh(self) -> o3d.geometry.TriangleMesh:
        if self.kind == "box":
            mesh = o3d.geometry.TriangleMesh.create_box(*self.size)
            return mesh.translate(self.lower)
        if self.kind == "cylinder":
            mesh = o3d.geometry.TriangleMesh.create_cylinder(radius=0.5, height=1.0, resolution=24)
        else:
            mesh = o3d.geometry.TriangleMesh.create_sphere(radius=0.5, resolution=12)
        mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) * self.size)
        return mesh.translate(self.center)


def box(lower, upper) -> Part:
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    return Part("box", (lower + upper) / 2, upper - lower)


@dataclass
class SceneObject:
    """One instance: its class name, solid parts, colour, and the regions it offers to others."""

    name: str
    parts: list[Part]
    receptacles: list[Part] = field(
        default_factory=list
    )  # "inside" boxes (interiors, space on tops)
    supports: list[Part] = field(default_factory=list)  # free regions small objects may be put in
    parent: int | None = None  # index of the object it was placed in or on

    @property
    def lower(self) -> np.ndarray:
        return np.min([p.lower for p in self.parts], axis=0)

    @property
    def upper(self) -> np.ndarray:
        return np.max([p.upper for p in self.parts], axis=0)

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        inside = np.zeros(len(xyz), bool)
        near = np.all((xyz >= self.lower) & (xyz <= self.upper), axis=1)
        if near.any():
            pts = xyz[near]
            inside[near] = np.any([p.contains(pts) for p in self.parts], axis=0)
        return inside


def hollow_box(lower, upper, wall: float, open_top: bool) -> tuple[list[Part], Part]:
    """Walls of a box (closed, or without its lid) and its interior box."""
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    inner_lo, inner_hi = lo + wall, hi - wall
    if open_top:
        inner_hi[2] = hi[2]
    parts = [
        box(lo, [hi[0], hi[1], inner_lo[2]]),  # bottom
        box([lo[0], lo[1], inner_lo[2]], [inner_lo[0], hi[1], hi[2]]),  # front (towards camera)
        box([inner_hi[0], lo[1], inner_lo[2]], [hi[0], hi[1], hi[2]]),  # back
        box([inner_lo[0], lo[1], inner_lo[2]], [inner_hi[0], inner_lo[1], hi[2]]),  # right side
        box([inner_lo[0], inner_hi[1], inner_lo[2]], [inner_hi[0], hi[1], hi[2]]),  # left side
    ]
    if not open_top:
        parts.append(
            box([inner_lo[0], inner_lo[1], inner_hi[2]], [inner_hi[0], inner_hi[1], hi[2]])
        )
    return parts, box(inner_lo, inner_hi)


# --------------------------------------------------------------------------------------------------
# furniture: each builder takes the footprint's lower corner (x, y) and returns a SceneObject

# name: (depth x, width y, height z) in world units, and which room types use it
FURNITURE = {
    "cabinet": ((0.3, 0.35, 0.45), ("kitchen", "bathroom", "living room")),
    "fridge": ((0.4, 0.4, 1.0), ("kitchen",)),
    "drawer": ((0.3, 0.4, 0.35), ("bedroom", "living room")),
    "box": ((0.3, 0.3, 0.18), ("bedroom", "living room", "kitchen")),
    "garbage can": ((0.2, 0.2, 0.3), ("kitchen", "bathroom", "bedroom")),
    "laundry hamper": ((0.25, 0.25, 0.35), ("bedroom", "bathroom")),
    "dining table": ((0.45, 0.6, 0.45), ("kitchen", "living room")),
    "shelf": ((0.25, 0.5, 0.8), ("kitchen", "living room", "bedroom", "bathroom")),
    "countertop": ((0.35, 0.7, 0.55), ("kitchen", "bathroom")),
    "sofa": ((0.45, 0.8, 0.45), ("living room",)),
    "bed": ((0.8, 0.6, 0.3), ("bedroom",)),
    "safe": ((0.25, 0.25, 0.25), ()),  # novel class: test rooms only
}
CLOSED_CONTAINERS = {"cabinet", "fridge", "drawer", "safe"}
OPEN_CONTAINERS = {"box", "garbage can", "laundry hamper"}


def build_furniture(name: str, x: float, y: float) -> SceneObject:
    (dx, dy, dz), _ = FURNITURE[name]
    lo, hi = np.array([x, y, 0.0]), np.array([x + dx, y + dy, dz])
    if name in CLOSED_CONTAINERS or name in OPEN_CONTAINERS:
        parts, interior = hollow_box(lo, hi, 0.02, open_top=name in OPEN_CONTAINERS)
        if name == "fridge":  # a shelf halfway up, two compartments
            mid = (lo[2] + hi[2]) / 2
            parts.append(
                box(
                    [lo[0] + 0.02, lo[1] + 0.02, mid - 0.01],
                    [hi[0] - 0.02, hi[1] - 0.02, mid + 0.01],
                )
            )
            lower_room = box(interior.lower, [*interior.upper[:2], mid - 0.01])
            upper_room = box([*interior.lower[:2], mid + 0.01], interior.upper)
            return SceneObject(name, parts, [interior], [lower_room, upper_room])
        return SceneObject(name, parts, [interior], [interior])
    if name in ("dining table", "bed", "sofa"):
        top = hi[2] - (0.04 if name == "dining table" else 0.15)
        parts = [box([lo[0], lo[1], top], hi)]
        legs = 0.04
        for cx in (lo[0], hi[0] - legs):
            for cy in (lo[1], hi[1] - legs):
                parts.append(box([cx, cy, 0.0], [cx + legs, cy + legs, top]))
        if name == "sofa":  # a backrest along the far side; the seat in front of it is the support
            parts.append(box([hi[0] - 0.1, lo[1], hi[2]], [hi[0], hi[1], hi[2] + 0.3]))
            hi = np.array([hi[0] - 0.1, hi[1], hi[2]])
        space = box([lo[0], lo[1], hi[2]], [hi[0], hi[1], hi[2] + 0.25])
        return SceneObject(name, parts, [space], [space])
    if name == "shelf":
        board = 0.02
        parts = [box(lo, [hi[0], lo[1] + board, hi[2]]), box([lo[0], hi[1] - board, 0.0], hi)]
        levels = np.linspace(0.0, hi[2] - board, 3)
        spaces = []
        for i, z in enumerate(levels):
            parts.append(box([lo[0], lo[1] + board, z], [hi[0], hi[1] - board, z + board]))
            if i + 1 < len(levels):
                spaces.append(
                    box([lo[0], lo[1] + board, z + board], [hi[0], hi[1] - board, levels[i + 1]])
                )
        return SceneObject(name, parts, spaces, spaces)
    # countertop: a solid block with space on top
    space = box([lo[0], lo[1], hi[2]], [hi[0], hi[1], hi[2] + 0.25])
    return SceneObject(name, [box(lo, hi)], [space], [space])


# small objects: name -> parts builder at the origin (bottom centre at 0), as (kind, centre, size)
SMALL_OBJECTS = {
    "apple": [("sphere", (0, 0, 0.035), (0.07, 0.07, 0.07))],
    "tomato": [("sphere", (0, 0, 0.03), (0.06, 0.06, 0.06))],
    "potato": [("sphere", (0, 0, 0.025), (0.08, 0.05, 0.05))],
    "bread": [("box", (0, 0, 0.035), (0.15, 0.08, 0.07))],
    "book": [("box", (0, 0, 0.02), (0.12, 0.16, 0.04))],
    "laptop": [
        ("box", (0, 0, 0.01), (0.14, 0.2, 0.02)),
        ("box", (0.065, 0, 0.08), (0.01, 0.2, 0.14)),
    ],
    "cell phone": [("box", (0, 0, 0.005), (0.08, 0.04, 0.01))],
    "bowl": [("cylinder", (0, 0, 0.03), (0.12, 0.12, 0.06))],
    "cup": [("cylinder", (0, 0, 0.04), (0.06, 0.06, 0.08))],
    "vase": [("cylinder", (0, 0, 0.08), (0.07, 0.07, 0.16))],
    "spray bottle": [("cylinder", (0, 0, 0.07), (0.05, 0.05, 0.14))],
    "candle": [("cylinder", (0, 0, 0.04), (0.04, 0.04, 0.08))],
    "alarm clock": [("box", (0, 0, 0.04), (0.05, 0.09, 0.08))],
    "remote control": [("box", (0, 0, 0.01), (0.04, 0.12, 0.02))],
    "pillow": [("box", (0, 0, 0.04), (0.12, 0.2, 0.08))],
    "television": [("box", (0, 0, 0.12), (0.04, 0.3, 0.24))],
    "house plant": [
        ("cylinder", (0, 0, 0.04), (0.08, 0.08, 0.08)),
        ("sphere", (0, 0, 0.12), (0.12, 0.12, 0.1)),
    ],
    "statue": [
        ("box", (0, 0, 0.02), (0.06, 0.06, 0.04)),
        ("sphere", (0, 0, 0.09), (0.06, 0.06, 0.1)),
    ],
    "kettle": [("cylinder", (0, 0, 0.06), (0.1, 0.1, 0.12))],
    "soap bottle": [("cylinder", (0, 0, 0.05), (0.04, 0.04, 0.1))],
    "towel": [("box", (0, 0, 0.02), (0.1, 0.14, 0.04))],
    # novel (test) classes: only in test rooms
    "mug": [
        ("cylinder", (0, 0, 0.035), (0.06, 0.06, 0.07)),
        ("box", (0, 0.04, 0.035), (0.01, 0.02, 0.04)),
    ],
    "pot": [
        ("cylinder", (0, 0, 0.04), (0.14, 0.14, 0.08)),
        ("box", (0, 0.09, 0.07), (0.02, 0.06, 0.015)),
    ],
    "teddy bear": [
        ("sphere", (0, 0, 0.05), (0.1, 0.1, 0.1)),
        ("sphere", (0, 0, 0.13), (0.07, 0.07, 0.07)),
    ],
    "basket ball": [("sphere", (0, 0, 0.07), (0.14, 0.14, 0.14))],
    "wine bottle": [
        ("cylinder", (0, 0, 0.08), (0.05, 0.05, 0.16)),
        ("cylinder", (0, 0, 0.19), (0.02, 0.02, 0.06)),
    ],
}
TRAIN_SMALL = [name for name in SMALL_OBJECTS if name not in TEST_CLASSES]


def build_small(name: str, bottom_centre: np.ndarray) -> SceneObject:
    parts = [
        Part(kind, bottom_centre + np.array(c), np.array(s, float))
        for kind, c, s in SMALL_OBJECTS[name]
    ]
    return SceneObject(name, parts)


# --------------------------------------------------------------------------------------------------
# layout


def _overlaps(lo, hi, boxes, margin=0.0) -> bool:
    return any(np.all(lo < b_hi + margin) and np.all(hi > b_lo - margin) for b_lo, b_hi in boxes)


FLOOR_X = (-0.55, 0.92)  # usable floor in front of the back wall, seen by the camera
FLOOR_Y = (-0.92, 0.92)


def build_room() -> list[SceneObject]:
    """Floor, three walls and a ceiling; they extend past the bounds towards the camera so every ray
    hits.
    """
    return [
        SceneObject("floor", [box([-2.0, -1.0, -0.1], [1.0, 1.0, 0.0])]),
        SceneObject("wall", [box([0.94, -1.0, 0.0], [1.0, 1.0, 1.8])]),
        SceneObject("wall", [box([-2.0, -1.0, 0.0], [0.94, -0.94, 1.8])]),
        SceneObject("wall", [box([-2.0, 0.94, 0.0], [0.94, 1.0, 1.8])]),
        SceneObject("ceiling", [box([-2.0, -1.0, 1.8], [1.0, 1.0, 1.9])]),
    ]


def layout_scene(room: str, rng: np.random.RandomState) -> list[SceneObject]:
    """Room shell, 3-5 pieces of furniture for the room type, then 6-12 small objects put in or on
    them.

    The six test classes (TEST_CLASSES) are used only in test rooms.
    """
    room_type = next(t for t, numbers in ROOM_TYPES.items() if room_number(room) in numbers)
    novel = is_test_room(room)
    objects = build_room()
    furniture_names = [n for n, (_, types) in FURNITURE.items() if room_type in types]
    if novel:
        furniture_names.append("safe")
    footprints = []
    for name in rng.permutation(furniture_names)[: rng.randint(3, 6)]:
        (dx, dy, _), _ = FURNITURE[name]
        for _ in range(30):
            x = rng.uniform(FLOOR_X[0], FLOOR_X[1] - dx)
            y = rng.uniform(FLOOR_Y[0], FLOOR_Y[1] - dy)
            lo, hi = np.array([x, y]), np.array([x + dx, y + dy])
            if not _overlaps(lo, hi, footprints, margin=0.05):
                footprints.append((lo, hi))
                objects.append(build_furniture(name, x, y))
                break
    small_names = list(SMALL_OBJECTS) if novel else TRAIN_SMALL
    hosts = [(i, region) for i, obj in enumerate(objects) for region in obj.supports]
    floor_region = box([FLOOR_X[0], FLOOR_Y[0], 0.0], [FLOOR_X[1], FLOOR_Y[1], 0.5])
    furniture_columns = [(np.r_[lo, 0.0], np.r_[hi, 1.8]) for lo, hi in footprints]
    placed: list[tuple[np.ndarray, np.ndarray]] = []  # boxes of the small objects so far
    filled: set[int] = (
        set()
    )  # closed interiors already holding an object (one each, see add_descriptions)
    for _ in range(rng.randint(6, 13)):
        name = small_names[rng.randint(len(small_names))]
        for _ in range(20):
            on_floor = rng.rand() < 0.2 or not hosts
            host = rng.randint(len(hosts))
            parent, region = (0, floor_region) if on_floor else hosts[host]
            closed = objects[parent].name in CLOSED_CONTAINERS
            if closed and host in filled:
                continue
            obj = build_small(name, np.zeros(3))
            size = obj.upper - obj.lower
            if np.any(size > region.size):
                continue
            offset = region.lower + rng.rand(3) * (region.size - size) - obj.lower
            offset[2] = region.lower[2]  # resting on the region's floor
            obj = build_small(name, offset)
            blocked = placed + furniture_columns if on_floor else placed
            if _overlaps(obj.lower, obj.upper, blocked, margin=0.01):
                continue
            placed.append((obj.lower, obj.upper))
            if closed:
                filled.add(host)
            obj.parent = parent
            objects.append(obj)
            break
    return objects
