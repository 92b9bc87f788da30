"""Test helper: add the `saliencies` layout (docs/data.md#the-scene-file-layout) to a scene file,
built by hand from that description.

The relevancy code writes this layout for real; the dataset tests build it themselves so that they
check the reader against the described layout, not against another module.
"""

from __future__ import annotations

import h5py
import numpy as np

from scene_file import class_name
from vocab import SYNONYMS

RGB_KEYS = ("rgb", "domain_randomized_rgb")
CONFIGS = ("ours", "chefer_et_al")


def scene_labels(f: h5py.File) -> list[str]:
    """The label set of docs/relevancy.md#the-dataset-command: visible classes, description names
    and sentences, synonyms; sorted.
    """
    classes = [class_name(s) for s in f["data/objid_to_class"][()].astype(str)]
    seg = f["seg"][f["data/seg"][0]][0]
    labels = {classes[i] for i in np.unique(seg).astype(int) if i >= 0}
    descs = f["data/descriptions"]
    if descs["target_obj_name"].shape[0]:
        names = [
            np.asarray(descs[k][()]).astype(str)
            for k in ("target_obj_name", "spatial_relation_name", "reference_obj_name")
        ]
        for t, r, ref in zip(*names, strict=True):
            labels |= {
                t,
                ref,
                f"{t} {r} a {ref}",
                f"{SYNONYMS.get(t, t)} {r} a {SYNONYMS.get(ref, ref)}",
            }
    labels |= {SYNONYMS[label] for label in labels if label in SYNONYMS}
    return sorted(labels - {"unlabelled", "empty", "out of bounds"})


def add_relevancy_layout(path, seed: int = 0, shape=(128, 128), block_offsets=None) -> list[str]:
    """Append one block per (rgb key, config) to `saliencies` and write `data/saliencies`; returns
    labels.

    Map values are random (about +-0.02), each block's last row is its own mean. `block_offsets`
    adds a constant per block so tests can tell the blocks apart.
    """
    rng = np.random.RandomState(seed)
    with h5py.File(path, "a") as f:
        labels = scene_labels(f)
        keys = ["rgb"] + (
            ["domain_randomized_rgb"] if f["data/domain_randomized_rgb"].ndim == 4 else []
        )
        if "saliencies" not in f:
            f.create_dataset(
                "saliencies", (0, *shape), np.float32, maxshape=(None, *shape), chunks=(1, *shape)
            )
        top = f["saliencies"]
        group = f["data"].create_group("saliencies")
        for block, (rgb_key, config) in enumerate((r, c) for r in keys for c in CONFIGS):
            maps = rng.normal(0, 0.02, (len(labels), *shape)).astype(np.float32)
            if block_offsets is not None:
                maps += block_offsets[block]
            rows = np.concatenate([maps, maps.mean(0, keepdims=True)])
            start = top.shape[0]
            top.resize(start + len(rows), axis=0)
            top[start:] = rows
            refs = group.create_dataset(
                f"{rgb_key}|{config}", (len(rows),), dtype=h5py.regionref_dtype
            )
            for i in range(len(rows)):
                refs[i] = top.regionref[start + i : start + i + 1]
            text = np.array([s.encode() for s in labels + ["mean"]])
            group.create_dataset(f"{rgb_key}|{config}|saliency_text_labels", data=text)
            features = rng.normal(size=(len(rows), 512))
            group.create_dataset(
                f"{rgb_key}|{config}|saliency_text_label_features",
                data=features / np.linalg.norm(features, axis=1, keepdims=True),
            )
    return labels
