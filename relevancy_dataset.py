"""The relevancy dataset: every scene .hdf5 under a folder gets its relevancy blocks in the
original layout, computed by CLIP (relevancy.py) or, as an upper bound, from ground-truth masks
(the oracle). Defines the scene's label set and descriptions, its rgb frames, the oracle maps, the
scene search, resuming, sharding over processes (processes.shard) and the failure bookkeeping of
`generate_relevancy.py dataset`: docs/relevancy.md#the-dataset-command (label set, prompts,
configs) and docs/data.md#the-scene-file-layout (where the maps go).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

import processes
import relevancy
import scene_file
from inputs import CLIP_TEXT_DIM
from saliency import saliency_config
from scene_file import RGB_KEYS, SENTENCE_KEYS, SceneFile, class_name, relevancy_sentence
from utils import InputError, remove_stale_temp_files
from vocab import SALIENCY_CONFIGS, SYNONYMS

SOURCES = ("clip", "oracle")
DROPPED_LABELS = {"unlabelled", "empty", "out of bounds"}
ORACLE_SOURCE = "oracle: ground-truth masks (upper bound), not CLIP"


@dataclass(frozen=True)
class ClipSettings:
    """The CLIP model of `--source clip` and how it runs."""

    model: str = "ViT-B-32"
    pretrained: str = "openai"
    checkpoint: Path | None = None
    device: str = "auto"
    batch_size: int = 32


@dataclass(frozen=True)
class OracleSettings:
    """`--source oracle`: scale * mask, blurred by a Gaussian of sigma `blur` pixels, + noise."""

    blur: float = 0.0
    noise: float = 0.0
    scale: float = 0.02


@dataclass
class Outcome:
    """What one process did: scene counts and the reason of each failure."""

    rank: int
    world_size: int
    mine: int  # scenes of this process's shard
    done: int = 0
    skipped: int = 0  # scenes with relevancies already (none with replace)
    failed: dict[Path, str] = field(default_factory=dict)

    def summary(self, root: Path, seconds: float) -> str:
        return (
            f"rank {self.rank}/{self.world_size}: {self.done} scenes processed, {self.skipped} skipped "
            f"(already done), {len(self.failed)} failed, of {self.mine} under {root}; written in "
            f"place, in {seconds:.1f} s"
        )

    def failure(self) -> str:
        first = next(iter(self.failed.values()))
        return f"{len(self.failed)} of {self.mine} scenes failed (listed above); {first}"


def scene_labels(scene: SceneFile) -> tuple[list[str], list[str] | None]:
    """(label set of docs/relevancy.md#the-dataset-command, visible labels or None without ground
    truth)."""
    names = scene.object_classes()
    labels, visible = set(names), None
    if scene.has_segmentation() and scene.has_ground_truth():
        in_view = set(np.unique(scene.segmentation()).astype(int)) - {-1}
        in_points = set(np.unique(scene.ground_truth_ids()).astype(int)) - {-1}
        visible = sorted({names[i] for i in in_view & in_points if 0 <= i < len(names)})
        labels = set(visible)
    for target, relation, reference in scene_descriptions(scene):
        labels |= {target, reference, relevancy_sentence(target, relation, reference)}
        labels.add(
            relevancy_sentence(
                SYNONYMS.get(target, target), relation, SYNONYMS.get(reference, reference)
            )
        )
    labels = {class_name(label) for label in labels}
    labels |= {SYNONYMS[label] for label in labels if label in SYNONYMS}
    return sorted(labels - DROPPED_LABELS), visible


def scene_descriptions(scene: SceneFile) -> list[tuple[str, str, str]]:
    """(target, relation, reference) of every description; none when the scene has none."""
    if not scene.has_descriptions():
        return []
    columns = scene.descriptions()
    return list(zip(*(columns[key] for key in SENTENCE_KEYS), strict=True))


def scene_rgbs(scene: SceneFile) -> dict[str, np.ndarray]:
    """{"rgb": uint8 frame, "domain_randomized_rgb": frame when it is a real image (a placeholder
    elsewhere: docs/data.md#the-scene-file-layout)}."""
    plain, randomized = RGB_KEYS
    rgbs = {plain: scene.rgb()}
    if scene.has_domain_randomized_rgb():
        rgbs[randomized] = scene.rgb(domain_randomized=True)
    return {name: rgb.astype(np.uint8) for name, rgb in rgbs.items()}  # stored as uint8


def oracle_maps(
    scene: SceneFile,
    labels: list[str],
    blur: float,
    noise: float,
    scale: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """(N, H, W) ground-truth relevancy: scale * blurred mask of the label's objects + noise.

    A sentence label "T R a Ref" takes its target's mask; a synonym takes its original's mask.
    """
    if not scene.has_segmentation():
        raise InputError(
            f"{scene.path}: --source oracle needs ground-truth segmentation (data/seg)"
        )
    seg = scene.segmentation().astype(int)
    names = scene.object_classes()
    originals = {synonym: name for name, synonym in SYNONYMS.items()}
    targets = {}
    for t, r, ref in scene_descriptions(scene):
        targets[relevancy_sentence(t, r, ref)] = targets[
            relevancy_sentence(SYNONYMS.get(t, t), r, SYNONYMS.get(ref, ref))
        ] = t
    maps = []
    for label in labels:
        name = targets.get(label, label)
        ids = [i for i, n in enumerate(names) if n in (name, originals.get(name))]
        mask = np.isin(seg, ids).astype(np.float32)
        relevance = scale * gaussian_filter(mask, blur) if blur > 0 else scale * mask
        maps.append(relevance + noise * rng.standard_normal(mask.shape).astype(np.float32))
    return torch.from_numpy(np.stack(maps))


def find_scenes(root: Path) -> list[Path]:
    """Every *.hdf5 under root, recursive, sorted then reversed (as the original)."""
    if not root.exists():
        raise InputError(f"scene folder not found: {root}")
    scenes = [root] if root.is_file() else sorted(root.rglob("*.hdf5"))
    if not scenes:
        raise InputError(f"no scene .hdf5 files found under {root}")
    return scenes[::-1]


def scene_done(path: Path) -> bool:
    with SceneFile(path) as scene:
        return scene.has_saliencies()


def store_scene(
    path: Path, configs: list[str], compute: Callable, source_name: str, replace: bool
) -> None:
    """Relevancy blocks of one scene, stored through scene_file
    (docs/data.md#the-scene-file-layout)."""
    with SceneFile(path) as scene:
        labels, visible = scene_labels(scene)
        if not labels:
            raise InputError(f"{path}: empty scene (no labels)")
        shape = scene.relevancy_shape()
        blocks = {}
        for rgb_name, rgb in scene_rgbs(scene).items():
            for name in configs:
                maps, features = compute(scene, labels, rgb, name)
                maps = relevancy.resize_maps(maps.float(), shape)  # stored at the rows' shape
                blocks[f"{rgb_name}|{name}"] = (labels, maps, features)
    scene_file.write_saliencies(path, blocks, visible, source_name, replace)


def check_request(source: str, configs: list[str] | None, tiling: str | None) -> list[str]:
    """The configs to store (default: the original's, SALIENCY_CONFIGS), checked with the source
    before any scene is read."""
    if source not in SOURCES:
        raise InputError(f"unknown --source {source!r}; choose clip or oracle")
    configs = configs or list(SALIENCY_CONFIGS)
    for name in configs:
        saliency_config(name, 224, tiling)  # validate names early
    return configs


def check_writable(folders: list[Path]) -> None:
    """Refuse, before any relevancy is computed, a folder of scenes that cannot be written: each
    scene file is rewritten in place, through a temporary file beside it (atomic_path)."""
    for folder in folders:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise InputError(
                f"{folder} cannot be written ({error.strerror or error}): relevancy is stored in "
                "place, in each scene file; copy the scenes to a folder you can write"
            ) from None


def remove_stale(root: Path) -> list[Path]:
    """Temporary files an interrupted run left under a scene folder, removed."""
    return remove_stale_temp_files(root, recursive=True) if root.is_dir() else []


def generate(
    root: Path,
    found: list[Path],
    configs: list[str],
    source: str = "clip",
    prompts: list[str] | None = None,
    replace: bool = False,
    tiling: str | None = None,
    clip: ClipSettings = ClipSettings(),
    oracle: OracleSettings = OracleSettings(),
    seed: int = 0,
    stop_on_error: bool = False,
) -> Outcome:
    """Relevancies of this process's share of `found` (the scenes under `root`), each stored in
    place; a scene that fails is listed in the outcome (or raised, with stop_on_error)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = processes.shard(found, rank, world_size)
    outcome = Outcome(rank, world_size, len(mine))

    def fail(path: Path, error: Exception) -> None:
        if stop_on_error:
            raise error
        outcome.failed[path] = str(error) if isinstance(error, InputError) else f"{path}: {error}"

    scenes = []
    for path in mine:
        try:
            if replace or not scene_done(path):
                scenes.append(path)
            else:
                outcome.skipped += 1
        except (InputError, OSError) as error:
            fail(path, error)
    check_writable(sorted({path.parent for path in scenes}))
    extractor, source_name = None, ORACLE_SOURCE
    if source == "clip" and scenes:
        extractor = relevancy.build_extractor(
            clip.model,
            clip.pretrained,
            clip.checkpoint,
            processes.local_device(clip.device),
            clip.batch_size,
        )
        source_name = f"clip {clip.model} {clip.checkpoint or clip.pretrained}"
    prompts = prompts or [relevancy.default_prompt(root)]
    rng = np.random.default_rng(seed + rank)

    def compute(scene, labels, rgb, config_name):
        """(maps (N, H, W), text features (N, D)) of one rgb frame and config."""
        if extractor is None:
            maps = oracle_maps(scene, labels, oracle.blur, oracle.noise, oracle.scale, rng)
            return maps, torch.zeros(len(labels), CLIP_TEXT_DIM)
        settings = saliency_config(config_name, min(rgb.shape[:2]), tiling)
        return extractor(rgb, labels, prompts, settings, seed)

    for path in tqdm(scenes, desc=f"scenes (rank {rank}/{world_size})", unit="scene"):
        try:
            store_scene(path, configs, compute, source_name, replace)
            outcome.done += 1
        except (InputError, OSError) as error:
            fail(path, error)
    return outcome
