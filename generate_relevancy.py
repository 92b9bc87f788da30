"""Relevancy maps from the command line: `image` (one picture, a per-label figure) and
`dataset` (every scene .hdf5 under a folder, stored in the original layout).

The commands: docs/relevancy.md (the image command and its figure, the dataset command: label set,
prompts, configs); the stored layout: docs/data.md#the-scene-file-layout.

    python generate_relevancy.py image [FILE] --labels vase --labels "red ball" --pretrained openai
    python generate_relevancy.py dataset dataset/ [--source clip|oracle] [--replace]
    torchrun --nproc_per_node 4 generate_relevancy.py dataset dataset/    # scenes sharded by RANK

Differences from the original CLI: the dataset command has no NUM_PROCESSES / LOCAL positionals
(ray is gone; processes come from torchrun, or RANK / WORLD_SIZE set by hand, on GPU or CPU);
`--replace` regenerates instead of only deleting; a scene file is rewritten through a temporary
copy, so a crash or Ctrl-C never leaves it half-written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

import figures
import relevancy
import relevancy_dataset
import relevancy_image
from cli_options import (
    CheckpointOpt,
    DeviceOpt,
    FixCropTilingOpt,
    ModelOpt,
    PretrainedOpt,
    SaliencyConfigOpt,
    SaliencyConfigsOpt,
    TilingOpt,
)
from processes import resolve_device
from relevancy_dataset import ClipSettings, OracleSettings
from saliency import MAX_CROP_FORWARDS, check_crop_budget, crop_tiling, saliency_config
from utils import InputError, run_app

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

# --------------------------------------------------------------------------------------------------
# image


@app.command()
def image(
    file_path: Annotated[
        Path, typer.Argument(help="RGB image (default: the bundled assets/room.png)")
    ] = relevancy_image.DEFAULT_IMAGE,
    labels: Annotated[list[str] | None, typer.Option("--labels", help="repeatable")] = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="repeatable; {} = label")
    ] = None,
    config: SaliencyConfigOpt = "ours",
    tiling: TilingOpt = None,
    fix_crop_tiling: FixCropTilingOpt = False,
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
        str,
        typer.Option(
            help="fp32; bf16 autocast on GPUs and on CPUs with AMX or AVX512-BF16, fp16 on GPUs "
            "(not parity)"
        ),
    ] = "fp32",
    batch_size: Annotated[
        int | None, typer.Option(help="crop forwards per batch (default: 32, or by GPU memory)")
    ] = None,
    max_crop_forwards: Annotated[
        int, typer.Option(help="stop before a run needing more crop forwards than this")
    ] = MAX_CROP_FORWARDS,
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
    labels = labels or relevancy_image.DEFAULT_LABELS
    prompts = prompts or [relevancy.HOME_PROMPT]
    relevancy.check_labels(labels, prompts)
    tiling = crop_tiling(tiling, fix_crop_tiling)
    relevancy_image.check_layout(columns, panel_width)
    picture = relevancy_image.load_image(file_path)
    height, width = picture.shape[:2]
    settings = saliency_config(config, img_dim or height, tiling, resize)
    forwards = check_crop_budget(height, width, settings, config, max_crop_forwards)
    torch_device = resolve_device(device)
    extractor = relevancy.build_extractor(
        model, pretrained, checkpoint, torch_device, batch_size, precision
    )
    estimate = relevancy_image.format_seconds(forwards * extractor.crop_seconds())
    print(
        f"{config} on a {width}x{height} image: {forwards:,} crop forwards, about {estimate} on "
        f"{torch_device} ({precision}{'' if precision == 'fp32' else ' autocast, not parity'})",
        flush=True,
    )
    start = time.perf_counter()
    maps, _ = extractor(picture, labels, prompts, settings, seed, progress=True)
    print(
        f"relevancy of {len(labels)} labels took {time.perf_counter() - start:.1f} s, "
        f"maps {tuple(maps.shape)}"
    )
    if save_maps is not None:
        relevancy_image.save_maps(save_maps, maps)
    figure, note = figures.figure_of_maps(
        picture, maps, list(labels), vmin, vmax, columns, panel_width
    )
    if note:
        print(f"note: {note}")
    relevancy_image.save_png(output, figure)
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
        import webpage
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise InputError(
            "the web page needs gradio: pip install -r requirements-app.txt"
        ) from error
    webpage.serve(port=port, checkpoint=checkpoint, device=device)


# --------------------------------------------------------------------------------------------------
# dataset


@app.command()
def dataset(
    file_path: Annotated[
        Path, typer.Argument(help="folder searched recursively for scene .hdf5 files")
    ],
    source: Annotated[
        str, typer.Option(help="clip, or oracle: maps from ground-truth masks")
    ] = "clip",
    configs: SaliencyConfigsOpt = None,
    prompts: Annotated[
        list[str] | None,
        typer.Option(
            "--prompts",
            help="default: the game-engine prompt; the home-photo one for matterport, nyu paths",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="regenerate scenes that already have relevancies")
    ] = False,
    tiling: TilingOpt = None,
    fix_crop_tiling: FixCropTilingOpt = False,
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
    """Relevancies of every scene under FILE_PATH, stored in the original layout
    (docs/data.md#the-scene-file-layout)."""
    tiling = crop_tiling(tiling, fix_crop_tiling)
    configs = relevancy_dataset.check_request(source, configs, tiling)
    start = time.perf_counter()
    found = relevancy_dataset.find_scenes(file_path)
    for stale in relevancy_dataset.remove_stale(file_path):
        print(f"removed {stale}, left by an interrupted run")
    outcome = relevancy_dataset.generate(
        file_path,
        found,
        configs,
        source,
        prompts,
        replace,
        tiling,
        ClipSettings(model, pretrained, checkpoint, device, batch_size),
        OracleSettings(oracle_blur, oracle_noise, oracle_scale),
        seed,
        stop_on_error,
    )
    print(outcome.summary(file_path, time.perf_counter() - start))
    if outcome.failed:
        for reason in outcome.failed.values():
            print(f"  failed: {reason}", file=sys.stderr)
        raise InputError(outcome.failure())


if __name__ == "__main__":
    run_app(app)
