"""The THOR scene-file layout (docs/data.md#the-scene-file-layout): key names, reading, writing,
the atomic rewrite.

One HDF5 file per camera view, named "{seed:05d}|{room}.hdf5", beside the split pickles
`ssc_split.pkl` / `vool_split.pkl`. This module is the only one that knows a key name:
`SceneFile` reads a file (the released 269 GB files unchanged, and generated ones), `write_scene`
writes a generated view, `write_saliencies` adds the relevancy index through a temporary copy, and
`write_split_lists` / `load_split_lists` handle the split pickles.

Conventions stated once here:
- Top-level datasets hold rows; `data/<key>` holds region references to row 0. Read back, a
  reference keeps a leading axis of length 1, so `deref` takes element [0] and casts to float32,
  as the original's `deref_h5py`: rgb, seg and ids come back as float32.
- The `saliencies` index: per block `R|C` (R = rgb or domain_randomized_rgb, C = ours or
  chefer_et_al), the sorted labels then "mean" (`R|C|saliency_text_labels`), their text
  features, and region references into the top-level `saliencies` rows; blocks are appended in
  write order, L + 1 rows each. A label's map is found by its position in the label list.
- Quirk kept for fidelity (docs/data.md#the-mean-row-trap): the datasets subtract row L of the
  top-level `saliencies`, i.e. the rgb|ours mean, for every block; `mean_relevancy(own_mean=True)`
  (DatasetConfig's `fix_mean_relevancy`) follows the block's own reference instead.
- Every dataset is written gzip-compressed, chunked one row per chunk for the top-level ones; the
  level is the writer's argument (the original used 9).
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from utils import InputError, atomic_path

SPLIT_FILES = {"ovssc": "ssc_split.pkl", "vool": "vool_split.pkl"}
GZIP_LEVEL = 9  # the original's level for every dataset
DEFAULT_RELEVANCY_SHAPE = (128, 128)  # item shape of the top-level `saliencies`
TOP_LEVEL_DTYPES = dict(  # `saliencies` is written by write_saliencies
    rgb=np.uint8,
    depth=np.float32,
    seg=np.int32,
    tsdf_value_pts=np.float32,
    tsdf_xyz_pts=np.float32,
    full_xyz_pts=np.float32,
    full_objid_pts=np.int32,
)
DESCRIPTION_KEYS = (
    "target_obj_name",
    "target_obj_id",
    "target_obj_material",
    "reference_obj_name",
    "reference_obj_material",
    "spatial_relation_name",
)
SALIENCIES = "saliencies"  # the top-level rows
RGB_KEYS = ("rgb", "domain_randomized_rgb")  # the R of a relevancy block R|C
SALIENCY_INDEX = "data/saliencies"  # the per-block index group
LABELS_SUFFIX = "|saliency_text_labels"
FEATURES_SUFFIX = "|saliency_text_label_features"
MEAN_LABEL = "mean"


def scene_file_name(seed: int, room: str) -> str:
    """ "{seed:05d}|{room}.hdf5"."""
    return f"{seed:05d}|{room}.hdf5"


def class_name(entry: str) -> str:
    """ "apple[12]" -> "apple" (class names carry their id after the first "[")."""
    return entry.split("[")[0].strip()


SENTENCE_KEYS = ("target_obj_name", "spatial_relation_name", "reference_obj_name")


def relevancy_sentence(target: str, relation: str, reference: str) -> str:
    """The description sentence whose relevancy is stored: "mug in a cabinet"; the networks' "the T
    R the Ref" prompt is inference.py's."""
    return f"{target} {relation} a {reference}"


def relevancy_rgb_key(domain_randomized: bool) -> str:
    """The R of the relevancy block R|C read for the plain or the domain-randomised rgb."""
    return RGB_KEYS[domain_randomized]


# --------------------------------------------------------------------------------------------------
# one scene file


class SceneFile:
    """Read access to one scene file; anything missing or malformed is a one-line InputError."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"scene file not found: {self.path}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputError(f"{self.path} is not a readable HDF5 file ({error})") from None
        self.scene_id = self.path.name.split(".")[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def has(self, key: str) -> bool:
        return key in self.file

    def get(self, key: str) -> h5py.Dataset | h5py.Group:
        if key not in self.file:
            raise InputError(f"{self.path}: missing key '{key}'")
        return self.file[key]

    def array(self, key: str, shape: tuple | None = None, dtype=None) -> np.ndarray:
        """A plain dataset, checked against an expected shape (None entries match any size)."""
        value = np.asarray(self.get(key)[()])
        if shape is not None and (
            value.ndim != len(shape)
            or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=True))
        ):
            raise InputError(f"{self.path}: '{key}' has shape {value.shape}, expected {shape}")
        return value if dtype is None else value.astype(dtype)

    def deref(self, key: str, refs: np.ndarray | None = None) -> np.ndarray:
        """Follow region references into the top-level dataset `key`; stack element [0] of each,
        float32.

        `refs` defaults to `data/<key>`. rgb, seg and ids therefore come back as float32.
        """
        top = self.get(key)
        if refs is None:
            refs = self.get(f"data/{key}")
            if refs.dtype != h5py.regionref_dtype:
                raise InputError(
                    f"{self.path}: 'data/{key}' is {refs.dtype}, expected region references"
                )
            refs = refs[()]
        try:
            return np.stack([top[ref][0] for ref in refs]).astype(np.float32)
        except (ValueError, OSError) as error:
            raise InputError(
                f"{self.path}: cannot follow the references into '{key}' ({error})"
            ) from None

    def image(self, key: str, channels: int | None) -> np.ndarray:
        value = self.deref(key)[0]
        expected = 2 if channels is None else 3
        if value.ndim != expected or (channels is not None and value.shape[2] != channels):
            raise InputError(
                f"{self.path}: '{key}' rows have shape {value.shape}, expected an H x W image"
            )
        return value

    def rgb(self, domain_randomized: bool = False) -> np.ndarray:
        """(H, W, 3) float32 in 0..255: the rendered view, or its domain-randomised copy."""
        if not domain_randomized:
            return self.image("rgb", 3)
        dr = self.array("data/domain_randomized_rgb")
        if dr.ndim != 4:
            raise InputError(
                f"{self.path}: no domain-randomised rgb in this scene (only test rooms have one)"
            )
        return dr[0].astype(np.float32)

    def has_saliencies(self) -> bool:
        """Whether generate_relevancy has stored the relevancy index (the scene is done)."""
        return self.has(SALIENCY_INDEX)

    def has_relevancy(self, config: str, rgb_key: str = "rgb") -> bool:
        """Whether the `rgb_key|config` relevancy block is stored."""
        return self.has(f"{SALIENCY_INDEX}/{rgb_key}|{config}")

    def has_segmentation(self) -> bool:
        return self.has("data/seg")

    def segmentation(self) -> np.ndarray:
        """(H, W) float32 object id per pixel, -1 for none."""
        return self.deref("seg")[0]

    def has_descriptions(self) -> bool:
        return self.has("data/descriptions/target_obj_name")

    def has_domain_randomized_rgb(self) -> bool:
        """Test rooms only; other rooms store a (1, 1) placeholder."""
        return (
            self.has("data/domain_randomized_rgb")
            and self.get("data/domain_randomized_rgb").ndim > 2
        )

    def relevancy_shape(self) -> tuple[int, int]:
        """Item shape of the top-level `saliencies` rows, or the THOR default when absent."""
        return (
            tuple(self.get(SALIENCIES).shape[1:])
            if self.has(SALIENCIES)
            else DEFAULT_RELEVANCY_SHAPE
        )

    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the stored rgb rows."""
        return tuple(self.get("rgb").shape[1:3])

    def depth(self) -> np.ndarray:
        depth = self.image("depth", None)
        if not np.all(np.isfinite(depth)):
            raise InputError(
                f"{self.path}: depth has {np.sum(~np.isfinite(depth))} NaN or infinite pixels"
            )
        return depth

    def camera(self) -> tuple[np.ndarray, np.ndarray]:
        """(cam_intr (3, 3), cam_pose (4, 4)) as stored, float64."""
        return self.array("data/cam_intr", (3, 3), np.float64), self.array(
            "data/cam_pose", (4, 4), np.float64
        )

    def object_classes(self) -> list[str]:
        """Class name per object id ("[k]" suffix removed)."""
        return [class_name(s) for s in self.array("data/objid_to_class", (None,)).astype(str)]

    def has_ground_truth(self) -> bool:
        return self.has("data/full_objid_pts")

    def ground_truth_ids(self) -> np.ndarray:
        """(N,) full_objid_pts: the object id of every ground-truth point."""
        return self.deref("full_objid_pts")[0]

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(full_xyz_pts (N, 3), full_objid_pts (N,)) float32."""
        xyz, objid = self.deref("full_xyz_pts")[0], self.deref("full_objid_pts")[0]
        if xyz.ndim != 2 or xyz.shape[1] != 3 or objid.shape != xyz.shape[:1]:
            raise InputError(
                f"{self.path}: full_xyz_pts {xyz.shape} and full_objid_pts {objid.shape} differ"
            )
        return xyz, objid

    def descriptions(self) -> dict[str, list]:
        """VOOL descriptions as lists (names as str, target ids as int); empty lists when there are
        none.
        """
        group = self.get("data/descriptions")
        keys = ("target_obj_name", "target_obj_id", "reference_obj_name", "spatial_relation_name")
        out = {}
        for key in keys:
            if key not in group:
                raise InputError(f"{self.path}: missing key 'data/descriptions/{key}'")
            value = np.asarray(group[key][()])
            out[key] = (
                value.astype(int).tolist() if key == "target_obj_id" else value.astype(str).tolist()
            )
        if len({len(v) for v in out.values()}) != 1:
            raise InputError(f"{self.path}: the description lists have different lengths")
        return out

    def relevancy_block(self, rgb_key: str, config: str) -> tuple[list[str], str]:
        """Sorted labels of the `rgb_key|config` block ("mean" last) and the block's group key."""
        block = f"{SALIENCY_INDEX}/{rgb_key}|{config}"
        if block not in self.file:
            raise InputError(
                f"{self.path}: no relevancy maps for {rgb_key}|{config}; "
                f"run `python generate_relevancy.py dataset {self.path.parent}` first"
            )
        labels = self.array(f"{block}{LABELS_SUFFIX}", (None,)).astype(str).tolist()
        if not labels or labels[-1] != MEAN_LABEL:
            raise InputError(f"{self.path}: {block}{LABELS_SUFFIX} does not end with 'mean'")
        return labels, block

    def label_index(self, labels: list[str], label: str, block: str) -> int:
        if label not in labels:
            raise InputError(f"{self.path}: label '{label}' has no relevancy map in {block}")
        return labels.index(label)

    def relevancy_maps(self, block: str, indices: list[int]) -> np.ndarray:
        """(len(indices), h, w) float32 maps, found by position in the block's reference list."""
        refs = self.get(block)[()]
        if len(indices) == 0:
            return np.zeros((0, *self.get(SALIENCIES).shape[1:]), np.float32)
        return self.deref(SALIENCIES, refs[indices])

    def label_features(self, block: str, indices: list[int]) -> np.ndarray:
        features = self.array(f"{block}{FEATURES_SUFFIX}", (None, None), np.float32)
        return features[indices]

    def mean_relevancy(self, labels: list[str], block: str, own_mean: bool) -> np.ndarray:
        """(h, w) "mean" map to subtract.

        Quirk kept for fidelity (docs/data.md#the-mean-row-trap): by default this is row L
        (= position of "mean") of the global `saliencies` dataset, i.e. the rgb|ours mean for every
        block.
        own_mean=True follows the block's own reference (the fix).
        """
        mean_idx = labels.index(MEAN_LABEL)
        if own_mean:
            return self.relevancy_maps(block, [mean_idx])[0]
        return np.asarray(self.get(SALIENCIES)[mean_idx], np.float32)


# --------------------------------------------------------------------------------------------------
# writing


def _gzip(level: int) -> dict:
    return dict(compression="gzip", compression_opts=level)


def _write_list(group: h5py.Group, key: str, values: list, gzip: int) -> None:
    """A Python list as the original `write_to_hdf5` stores it: vlen UTF-8 strings, int64, or (0,)
    float64.
    """
    if not values:
        group.create_dataset(key, data=np.zeros(0), **_gzip(gzip))
    elif isinstance(values[0], str):
        group.create_dataset(key, data=values, dtype=h5py.string_dtype(), **_gzip(gzip))
    else:
        group.create_dataset(key, data=np.asarray(values, np.int64), **_gzip(gzip))


def write_scene(path, scene: dict, relevancy_size: int = 128, gzip: int = GZIP_LEVEL) -> None:
    """Write one view in the THOR layout (the `saliencies` rows stay empty until
    `generate_relevancy.py dataset` adds them). `scene` holds the arrays by key name, descriptions
    as a list of dicts.
    """
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for key, dtype in TOP_LEVEL_DTYPES.items():
            item = np.asarray(scene[key], dtype)
            top = f.create_dataset(
                key,
                data=item[None],
                maxshape=(None, *item.shape),
                chunks=(1, *item.shape),
                **_gzip(gzip),
            )
            refs = data.create_dataset(key, (1,), dtype=h5py.regionref_dtype, **_gzip(gzip))
            refs[0] = top.regionref[0, ...]
        _create_saliencies(f, (relevancy_size, relevancy_size), gzip)
        dr_rgb = scene["domain_randomized_rgb"]
        dr_rgb = np.zeros((1, 1)) if dr_rgb is None else np.asarray(dr_rgb, np.uint8)[None]
        plain = dict(
            domain_randomized_rgb=dr_rgb,
            cam_intr=np.asarray(scene["cam_intr"], np.float64),
            cam_pose=np.asarray(scene["cam_pose"], np.float64),
            scene_bounds=np.asarray(scene["scene_bounds"], np.float64),
            objid_to_class=np.array([s.encode() for s in scene["objid_to_class"]]),
        )
        for key, value in plain.items():
            data.create_dataset(key, data=value, **_gzip(gzip))
        descriptions = data.create_group("descriptions")
        for key in DESCRIPTION_KEYS:
            _write_list(descriptions, key, [d[key] for d in scene["descriptions"]], gzip)


def _create_saliencies(f: h5py.File, item_shape: tuple, gzip: int) -> None:
    f.create_dataset(
        SALIENCIES,
        (0, *item_shape),
        np.float32,
        maxshape=(None, *item_shape),
        chunks=(1, *item_shape),
        **_gzip(gzip),
    )


@contextlib.contextmanager
def atomic_rewrite(path: str | Path) -> Iterator[h5py.File]:
    """Edit a copy of an existing scene file, renamed over it only when the block succeeds: an
    interruption (Ctrl-C, kill -9) leaves the original untouched.
    """
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as scene:
            yield scene


def write_saliencies(
    path: str | Path,
    blocks: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]],
    visible: list[str] | None,
    source: str,
    replace: bool,
    gzip: int = GZIP_LEVEL,
) -> None:
    """Store {"R|C": (labels, maps (L, h, w), text (L, D))} in the layout of
    docs/data.md#the-scene-file-layout.

    Maps must already have the item shape of `saliencies` (`SceneFile.relevancy_shape`). Each block
    gets its L rows and their mean (the "mean" label), text features with their mean, every row
    L2-normalised. `replace` deletes the existing index and rows first; `source` is recorded in
    the index group's attrs. The file is rewritten atomically (`atomic_rewrite`).
    """
    with atomic_rewrite(path) as scene:
        data = scene["data"]
        item_shape = scene[SALIENCIES].shape[1:] if SALIENCIES in scene else DEFAULT_RELEVANCY_SHAPE
        if replace:
            for key in [k for k in data if "salienc" in k]:
                del data[key]
            if SALIENCIES in scene:
                del scene[SALIENCIES]
        if SALIENCIES not in scene:
            _create_saliencies(scene, item_shape, gzip)
        if "visible_scene_obj_labels" in data:
            del data["visible_scene_obj_labels"]
        if visible is not None:
            data.create_dataset(
                "visible_scene_obj_labels", data=np.array(visible, dtype="S"), **_gzip(gzip)
            )
        group = scene.create_group(SALIENCY_INDEX)
        group.attrs["source"] = source
        store = scene[SALIENCIES]
        for key, (labels, maps, features) in blocks.items():
            maps = torch.as_tensor(maps).float()
            if tuple(maps.shape[1:]) != tuple(item_shape):
                raise ValueError(f"maps of {key} are {tuple(maps.shape)}, the rows {item_shape}")
            rows = torch.cat([maps, maps.mean(0, keepdim=True)]).numpy()  # (L + 1, h, w)
            features = torch.as_tensor(features)
            features = torch.cat([features, features.mean(0, keepdim=True)]).float()
            features = torch.nn.functional.normalize(features, dim=-1).numpy()
            labels = np.array([*labels, MEAN_LABEL], dtype="S")
            _write(group, f"{key}{LABELS_SUFFIX}", labels, gzip)
            _write(group, f"{key}{FEATURES_SUFFIX}", features, gzip)
            first = store.shape[0]
            store.resize(first + len(rows), axis=0)
            store[first:] = rows
            refs = [store.regionref[i] for i in range(first, first + len(rows))]
            _write(group, key, np.array(refs, dtype=h5py.regionref_dtype), gzip)


def _write(group: h5py.Group, key: str, array: np.ndarray, gzip: int) -> None:
    group.create_dataset(key, data=array, **_gzip(gzip))


# --------------------------------------------------------------------------------------------------
# split pickles


def write_split_lists(folder: str | Path, splits: dict[str, list[str]]) -> list[Path]:
    """Write both split pickles (the same lists, as the original) atomically; returns their paths."""
    paths = []
    for name in SPLIT_FILES.values():
        path = Path(folder) / name
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(splits, f, protocol=4)
        paths.append(path)
    return paths


def load_split_lists(file_path: str | Path, task: str) -> dict[str, list[str]]:
    """`<file_path>/ssc_split.pkl` or `vool_split.pkl`: {split: [relative scene path, ...]}."""
    if task not in SPLIT_FILES:
        raise InputError(f"unknown task '{task}'; use ovssc or vool")
    path = Path(file_path) / SPLIT_FILES[task]
    if not path.is_file():
        raise InputError(f"split file not found: {path}")
    with open(path, "rb") as f:
        splits = pickle.load(f)
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise InputError(f"{path} must hold a dict of split name -> list of scene paths")
    return splits
