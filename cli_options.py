"""Options shared by the typer scripts (generate_relevancy, visualize), declared once with
`Annotated` so that one concept has one spelling and one help text everywhere (docs/layout.md).
SaliencyConfigOpt takes one relevancy config, SaliencyConfigsOpt several (repeatable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str, typer.Option(help="open_clip model name (any ViT: ViT-B-32, ViT-B-16, ViT-L-14)")
]
PretrainedOpt = Annotated[
    str,
    typer.Option(help="open_clip pretrained tag (downloads or uses the HF cache); 'none' = random"),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(help="local open_clip state dict or OpenAI-format .pt (overrides --pretrained)"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]
TilingOpt = Annotated[
    str | None, typer.Option(help="parity (original quirks) or full (every pixel at every scale)")
]
FixCropTilingOpt = Annotated[
    bool, typer.Option(help="every pixel at every scale (same as --tiling full)")
]
SaliencyConfigOpt = Annotated[
    str,
    typer.Option(
        "--saliency-config", help="relevancy config: ours (original), chefer_et_al or fast"
    ),
]
SaliencyConfigsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--saliency-config",
        help="relevancy configs to store, repeatable (default: ours and chefer_et_al)",
    ),
]
