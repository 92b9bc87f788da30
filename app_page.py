"""The local web page of `python app.py`: the relevancy tab (webpage.py) and the 3D tab
(webpage_3d.py) in one gradio Blocks, one request at a time (a second one waits in the queue)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home from a local page

import gradio as gr  # noqa: E402

import clip_weights  # noqa: E402
import scene_query  # noqa: E402
import webpage  # noqa: E402
import webpage_3d  # noqa: E402


def defaults(ovssc: Path | None, vool: Path | None, data: Path | None):
    """({task: checkpoint}, data): the given paths, else the demo's outputs where they exist."""
    given = {"ovssc": ovssc, "vool": vool}
    checkpoints = {
        task: path if path is not None else existing(scene_query.DEMO_CHECKPOINTS[task])
        for task, path in given.items()
    }
    return checkpoints, data if data is not None else existing(scene_query.DEMO_DATA)


def existing(path: Path) -> Path | None:
    return path if path.exists() else None


def build_page(
    checkpoint: Path | None = None,
    device: str = "auto",
    ovssc: Path | None = None,
    vool: Path | None = None,
    data: Path | None = None,
    models: tuple[str, ...] = webpage.MODELS,
    weights: str | None = None,
) -> gr.Blocks:
    """`checkpoint`: CLIP weights for both tabs; ovssc, vool, data: the 3D tab's networks and
    scenes (default: the demo's)."""
    checkpoints, data = defaults(ovssc, vool, data)
    clip = (None, "openai", checkpoint) if checkpoint is not None else ("ViT-B-32", "openai", None)
    queries = scene_query.SceneQueries(device, clip)
    with gr.Blocks(title="Semantic Abstraction") as page:
        with gr.Tab("Relevancy", elem_id="tab-relevancy"):
            webpage.relevancy_tab(checkpoint, device, models, weights)
        with gr.Tab("3D scene", elem_id="tab-3d"):
            webpage_3d.scene_tab(queries, checkpoints, data)
    page.queue(default_concurrency_limit=1, max_size=32)
    return page


def serve(port: int = 7860, checkpoint: Path | None = None, device: str = "auto",
          ovssc: Path | None = None, vool: Path | None = None,
          data: Path | None = None) -> None:  # fmt: skip
    if checkpoint is not None:
        clip_weights.read_weights(checkpoint)  # a bad file stops here with one line
    page = build_page(checkpoint, device, ovssc, vool, data)
    page.launch(server_name="127.0.0.1", server_port=port)
