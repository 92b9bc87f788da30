"""Relevancy maps from the command line: `image` (one picture, a per-label figure) and
`dataset` (every scene .hdf5 under a folder, stored in the original layout).

Spec: ../shared/spec/relevancy.md section 5 (CLI), ../shared/spec/data.md sections 1.5 (layout)
and 2.8 (label set, prompts, configs).

    python generate_relevancy.py image [FILE] --labels vase --labels "red ball" --pretrained openai
    python generate_relevancy.py dataset dataset/ [--source clip|oracle] [--replace]
    torchrun --nproc_per_node 4 generate_relevancy.py dataset dataset/    # scenes sharded by RANK

Differences from the original CLI: the dataset command has no NUM_PROCESSES / LOCAL positionals
(ray is gone; processes come from torchrun, or RANK / WORLD_SIZE set by hand, on GPU or CPU);
`--replace` regenerates instead of only deleting; a scene file is rewritten through a temporary
copy, so a crash or Ctrl-C never leaves it half-written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

import figures
import processes
import relevancy
import scene_file
from cli_options import CheckpointOpt, DeviceOpt, ModelOpt, PretrainedOpt, TilingOpt
from inputs import CLIP_TEXT_DIM
from processes import resolve_device
from scene_file import SceneFile, class_name, sentence
from utils import InputError, atomic_path, remove_stale_temp_files, run_app
from vocab import SALIENCY_CONFIGS, SYNONYMS

DEFAULT_LABELS = ["vase", "red ball", "lamp", "window", "table", "wooden floor", "wall"]
DROPPED_LABELS = {"unlabelled", "empty", "out of bounds"}
ORACLE_SOURCE = "oracle: ground-truth masks (upper bound), not CLIP"

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

# --------------------------------------------------------------------------------------------------
# image


@app.command()
def image(
    file_path: Annotated[
        Path, typer.Argument(help="RGB image (default: the bundled assets/room.png)")
    ] = relevancy.DEFAULT_IMAGE,
    labels: Annotated[list[str] | None, typer.Option("--labels", help="repeatable")] = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="repeatable; {} = label")
    ] = None,
    config: Annotated[str, typer.Option(help="ours, chefer_et_al or fast")] = "ours",
    tiling: TilingOpt = None,
    fix_crop_tiling: Annotated[
        bool, typer.Option(help="every pixel at every scale (same as --tiling full)")
    ] = False,
    resize: Annotated[
        str | None,
        typer.Option(help="crop resize: pil (parity, default) or torch (batched, faster on GPU)"),
    ] = None,
    img_dim: Annotated[
        int | None, typer.Option(help="base crop size (default: image height, as the original)")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="open_clip model (default ViT-B-32, or read from --checkpoint)"),
    ] = None,
    pretrained: PretrainedOpt = "openai",
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="local CLIP weights: OpenAI .pt (TorchScript or state dict) or open_clip state "
            "dict; the architecture is read from the file (overrides --pretrained)"
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str, typer.Option(help="fp32, or fp16 / bf16 autocast (GPU; not parity)")
    ] = "fp32",
    batch_size: Annotated[
        int | None, typer.Option(help="crop forwards per batch (default: 32, or by GPU memory)")
    ] = None,
    max_crop_forwards: Annotated[
        int, typer.Option(help="stop before a run needing more crop forwards than this")
    ] = relevancy.MAX_CROP_FORWARDS,
    seed: Annotated[
        int, typer.Option(help="colour-jitter seed (the original never seeded it)")
    ] = 0,
    vmin: float = 0.002,
    vmax: float = 0.008,
    columns: Annotated[
        int | None, typer.Option(help="figure layout: panels per row (default: by label count)")
    ] = None,
    panel_width: Annotated[
        int | None, typer.Option(help="figure panel width in pixels (default: image width)")
    ] = None,
    output: Annotated[Path, typer.Option(help="per-label figure (PNG)")] = Path("grads.png"),
    save_maps: Annotated[
        Path | None, typer.Option(help="also save the raw (N, H, W) maps as .npy")
    ] = None,
) -> None:
    """Relevancy maps of one image: a per-label figure with the mean over labels subtracted."""
    labels = labels or DEFAULT_LABELS
    prompts = prompts or [relevancy.HOME_PROMPT]
    relevancy.check_labels(labels, prompts)
    if fix_crop_tiling:
        if tiling not in (None, "full"):
            raise InputError("--fix-crop-tiling contradicts --tiling parity")
        tiling = "full"
    if columns is not None and columns < 1:
        raise InputError(f"--columns must be at least 1, got {columns}")
    if panel_width is not None and panel_width < 16:
        raise InputError(f"--panel-width must be at least 16 pixels, got {panel_width}")
    picture = relevancy.load_image(file_path)
    height, width = picture.shape[:2]
    settings = relevancy.saliency_config(config, img_dim or height, tiling, resize)
    forwards = relevancy.check_crop_budget(height, width, settings, config, max_crop_forwards)
    torch_device = resolve_device(device)
    extractor = relevancy.build_extractor(
        model, pretrained, checkpoint, torch_device, batch_size, precision
    )
    estimate = forwards * extractor.crop_seconds()
    print(
        f"{config} on a {width}x{height} image: {forwards:,} crop forwards, about "
        f"{relevancy.format_seconds(estimate)} on {torch_device} ({precision})",
        flush=True,
    )
    start = time.perf_counter()
    maps, _ = extractor(picture, labels, prompts, settings, seed, progress=True)
    print(
        f"relevancy of {len(labels)} labels took {time.perf_counter() - start:.1f} s, "
        f"maps {tuple(maps.shape)}"
    )
    if save_maps is not None:
        with atomic_path(save_maps) as tmp, open(tmp, "wb") as handle:
            np.save(handle, maps.numpy())
    figure, note = figures.figure_of_maps(
        picture, maps, list(labels), vmin, vmax, columns, panel_width
    )
    if note:
        print(f"note: {note}")
    with atomic_path(output) as tmp:
        figure.save(tmp, format="PNG")
    print(f"wrote {output}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="local port")] = 7860,
    checkpoint: Annotated[
        Path | None, typer.Option(help="local CLIP weights offered on the page")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """The local web page (app.py): upload an image, type labels, see and download the maps."""
    try:
        import app as web_app
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise InputError(
            "the web page needs gradio: pip install -r requirements-app.txt"
        ) from error
    web_app.serve(port=port, checkpoint=checkpoint, device=device)


# --------------------------------------------------------------------------------------------------
# dataset: scene files


def scene_labels(scene: SceneFile) -> tuple[list[str], list[str] | None]:
    """(label set of data.md 2.8, visible labels or None without ground truth)."""
    names = scene.object_classes()
    labels, visible = set(names), None
    if scene.has_segmentation() and scene.has_ground_truth():
        in_view = set(np.unique(scene.deref("seg")).astype(int)) - {-1}
        in_points = set(np.unique(scene.deref("full_objid_pts")).astype(int)) - {-1}
        visible = sorted({names[i] for i in in_view & in_points if 0 <= i < len(names)})
        labels = set(visible)
    for target, relation, reference in scene_descriptions(scene):
        labels |= {target, reference, sentence(target, relation, reference)}
        labels.add(
            sentence(SYNONYMS.get(target, target), relation, SYNONYMS.get(reference, reference))
        )
    labels = {class_name(label) for label in labels}
    labels |= {SYNONYMS[label] for label in labels if label in SYNONYMS}
    return sorted(labels - DROPPED_LABELS), visible


def scene_descriptions(scene: SceneFile) -> list[tuple[str, str, str]]:
    """(target, relation, reference) of every description; none when the scene has none."""
    if not scene.has_descriptions():
        return []
    columns = scene.descriptions()
    keys = ("target_obj_name", "spatial_relation_name", "reference_obj_name")
    return list(zip(*(columns[key] for key in keys), strict=True))


def scene_rgbs(scene: SceneFile) -> dict[str, np.ndarray]:
    """{"rgb": uint8 frame, "domain_randomized_rgb": frame when it is a real image (data.md 1.5)}."""
    rgbs = {"rgb": scene.rgb()}
    if scene.has_domain_randomized_rgb():
        rgbs["domain_randomized_rgb"] = scene.rgb(domain_randomized=True)
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
    seg = scene.deref("seg")[0].astype(int)
    names = scene.object_classes()
    originals = {synonym: name for name, synonym in SYNONYMS.items()}
    targets = {}
    for t, r, ref in scene_descriptions(scene):
        targets[sentence(t, r, ref)] = targets[
            sentence(SYNONYMS.get(t, t), r, SYNONYMS.get(ref, ref))
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


@app.command()
def dataset(
    file_path: Annotated[
        Path, typer.Argument(help="folder searched recursively for scene .hdf5 files")
    ],
    source: Annotated[
        str, typer.Option(help="clip, or oracle: maps from ground-truth masks")
    ] = "clip",
    configs: Annotated[
        list[str] | None, typer.Option("--configs", help="default: ours, chefer_et_al")
    ] = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="default: by path (spec 4)")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="regenerate scenes that already have relevancies")
    ] = False,
    tiling: TilingOpt = None,
    model: ModelOpt = "ViT-B-32",
    pretrained: PretrainedOpt = "openai",
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    batch_size: int = 32,
    seed: int = 0,
    oracle_blur: Annotated[float, typer.Option(help="oracle: Gaussian blur sigma in pixels")] = 0.0,
    oracle_noise: Annotated[float, typer.Option(help="oracle: std of added Gaussian noise")] = 0.0,
    oracle_scale: Annotated[float, typer.Option(help="oracle: value inside the mask")] = 0.02,
    stop_on_error: Annotated[
        bool, typer.Option(help="stop at the first unreadable scene instead of listing them all")
    ] = False,
) -> None:
    """Relevancies of every scene under FILE_PATH, stored in the original layout (data.md 1.5)."""
    if source not in ("clip", "oracle"):
        raise InputError(f"unknown --source {source!r}; choose clip or oracle")
    configs = configs or list(SALIENCY_CONFIGS)
    for name in configs:
        relevancy.saliency_config(name, 224, tiling)  # validate names early
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    start = time.perf_counter()
    found = find_scenes(file_path)
    if file_path.is_dir():
        for stale in remove_stale_temp_files(file_path, recursive=True):
            print(f"removed {stale}, left by an interrupted run")
    mine = processes.shard(found, rank, world_size)
    failed: dict[Path, str] = {}

    def fail(path: Path, error: Exception) -> None:
        if stop_on_error:
            raise error
        failed[path] = str(error) if isinstance(error, InputError) else f"{path}: {error}"

    scenes = []
    for path in mine:
        try:
            if replace or not scene_done(path):
                scenes.append(path)
        except (InputError, OSError) as error:
            fail(path, error)
    extractor, source_name = None, ORACLE_SOURCE
    if source == "clip" and scenes:
        extractor = relevancy.build_extractor(
            model, pretrained, checkpoint, processes.local_device(device), batch_size
        )
        source_name = f"clip {model} {checkpoint or pretrained}"
    prompts = prompts or [relevancy.default_prompt(file_path)]
    rng = np.random.default_rng(seed + rank)

    def compute(scene, labels, rgb, config_name):
        """(maps (N, H, W), text features (N, D)) of one rgb frame and config."""
        if extractor is None:
            maps = oracle_maps(scene, labels, oracle_blur, oracle_noise, oracle_scale, rng)
            return maps, torch.zeros(len(labels), CLIP_TEXT_DIM)
        settings = relevancy.saliency_config(config_name, min(rgb.shape[:2]), tiling)
        return extractor(rgb, labels, prompts, settings, seed)

    done = 0
    for path in tqdm(scenes, desc=f"scenes (rank {rank}/{world_size})", unit="scene"):
        try:
            store_scene(path, configs, compute, source_name, replace)
            done += 1
        except (InputError, OSError) as error:
            fail(path, error)
    skipped = len(mine) - len(scenes) - len(failed)
    print(
        f"rank {rank}/{world_size}: {done} scenes processed, {skipped} skipped (already done), "
        f"{len(failed)} failed, of {len(mine)} under {file_path}; written in place, "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if failed:
        for reason in failed.values():
            print(f"  failed: {reason}", file=sys.stderr)
        first = next(iter(failed.values()))
        raise InputError(f"{len(failed)} of {len(mine)} scenes failed (listed above); {first}")


def store_scene(path: Path, configs: list[str], compute, source_name: str, replace: bool) -> None:
    """Relevancy blocks of one scene, stored through scene_file (data.md 1.5)."""
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


if __name__ == "__main__":
    run_app(app)
