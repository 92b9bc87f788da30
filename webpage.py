"""The local web page for relevancy maps (the paper's public demo, on the user's own machine):
`relevancy_tab` lays out the components, whose button runs `compute`; `build_demo` makes them a
page of their own and `serve` launches it (`python generate_relevancy.py serve`). `python app.py`
serves them as the first tab of app_page.py's page, beside the 3D tab (webpage_3d.py).

Upload an image (or pick the bundled one), type labels and a prompt template, choose the config
and the CLIP model, and see each label's map over the image; the raw maps (.npy) and the figure
(.png) can be downloaded. Requests run one at a time: a second one waits in the queue. Without
CLIP weights the page says so and offers random weights only as a labelled smoke test. The maths
is relevancy.py's and the figure figures.py's; only the page modules (webpage.py, webpage_3d.py,
app_page.py) import gradio.
Colours: docs/relevancy.md#the-image-command-and-its-figure.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home from a local page

import gradio as gr  # noqa: E402

import clip_weights  # noqa: E402
import relevancy  # noqa: E402
import relevancy_image  # noqa: E402
from figures import overlay, relevancy_figure, shown_maps  # noqa: E402
from processes import resolve_device  # noqa: E402
from saliency import CONFIGS, check_crop_budget, saliency_config  # noqa: E402
from utils import InputError  # noqa: E402

OPENAI = "OpenAI CLIP weights"
RANDOM = "random weights (smoke test only: the maps mean nothing)"
MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
MAX_SIDE = 4096  # pixels; larger images are refused with a message (the CLI takes them)
VMIN, VMAX = 0.002, 0.008


class Extractors:
    """One loaded model at a time, shared by the queued requests."""

    def __init__(self, device: str, checkpoint: Path | None):
        self.device = resolve_device(device)
        self.checkpoint = checkpoint
        self.key = None
        self.extractor = None
        self.lock = threading.Lock()

    def get(self, model: str, weights: str) -> relevancy.RelevancyExtractor:
        with self.lock:
            if self.key != (model, weights):
                checkpoint = self.checkpoint if weights.startswith("checkpoint") else None
                pretrained = "none" if weights == RANDOM else "openai"
                clip_model, tokenizer = clip_weights.load_model(
                    None if checkpoint else model, pretrained, checkpoint, self.device
                )
                self.extractor = relevancy.RelevancyExtractor(
                    clip_model, tokenizer, self.device, None
                )
                self.key = (model, weights)
            return self.extractor


def weights_status(checkpoint: Path | None) -> tuple[list[str], str, str]:
    """(weight choices, default choice, a Markdown line about them)."""
    if checkpoint is not None:
        choice = f"checkpoint {checkpoint.name}"
        return [choice, RANDOM], choice, f"Weights: `{checkpoint}` (architecture from the file)."
    if clip_weights.cached_weights("ViT-B-32", "openai") is not None:
        return [OPENAI, RANDOM], OPENAI, "Weights: OpenAI CLIP, found in the local cache."
    return (
        [OPENAI, RANDOM],
        RANDOM,
        "**No CLIP weights were found on this machine**, so the page starts with random weights: "
        "a smoke test of the page, whose maps mean nothing. To get real maps, supply weights by "
        + clip_weights.WEIGHT_SOURCES.replace(
            "--checkpoint PATH", "`python app.py --checkpoint PATH`"
        )
        + ".",
    )


def parse_labels(text: str) -> list[str]:
    return [label.strip() for label in (text or "").replace("\n", ",").split(",") if label.strip()]


def compute(image_path, labels_text, prompt, config_name, model, weights, extractors, progress):
    """(gallery of (overlay, label), figure path, [maps .npy, figure .png], status Markdown)."""
    if not image_path:
        raise InputError("no image: upload one or pick the bundled example")
    labels = parse_labels(labels_text)
    if not labels:
        raise InputError("no labels: type at least one, separated by commas")
    relevancy.check_labels(labels, [prompt])
    picture = relevancy_image.load_image(image_path)
    height, width = picture.shape[:2]
    if max(height, width) > MAX_SIDE:
        raise InputError(
            f"the image is {width}x{height} pixels; the page takes up to {MAX_SIDE} on a side "
            "(resize it, or use generate_relevancy.py image)"
        )
    config = saliency_config(config_name, height)
    forwards = check_crop_budget(
        height, width, config, config_name, advice="use a smaller image or the fast config"
    )
    progress(0, desc="loading the model")
    extractor = extractors.get(model, weights)
    start = time.perf_counter()

    def report(done, total):
        progress(done / total, desc=f"{done:,} of {total:,} crop forwards")

    maps, _ = extractor(picture, labels, [prompt], config, seed=0, on_progress=report)
    seconds = time.perf_counter() - start
    shown, low, high, note = shown_maps(maps, VMIN, VMAX)
    gallery = [
        (overlay(picture, m, low, high), label) for m, label in zip(shown, labels, strict=True)
    ]
    caption = "raw relevancy (one label)" if note else "relevancy minus the mean over labels"
    figure = relevancy_figure(picture, shown, labels, low, high, caption=caption)
    folder = Path(tempfile.mkdtemp(prefix="semabs-relevancy-"))
    maps_path, figure_path = folder / "relevancy_maps.npy", folder / "relevancy_figure.png"
    relevancy_image.save_maps(maps_path, maps)
    relevancy_image.save_png(figure_path, figure)
    status = (
        f"{len(labels)} labels, {config_name}, {forwards:,} crop forwards in {seconds:.1f} s on "
        f"{extractors.device}; maps {width}x{height}, shape (labels, height, width)."
    )
    if weights == RANDOM:
        status = "**Random weights: a smoke test, these maps mean nothing.** " + status
    if note:
        status += f" Note: {note}."
    return gallery, str(figure_path), [str(maps_path), str(figure_path)], status


def relevancy_tab(
    checkpoint: Path | None = None,
    device: str = "auto",
    models: tuple[str, ...] = MODELS,
    weights: str | None = None,
) -> None:
    """The relevancy page's components, inside the caller's Blocks (or one of its tabs)."""
    extractors = Extractors(device, checkpoint)
    choices, default_weights, weights_line = weights_status(checkpoint)
    examples = (
        [str(relevancy_image.DEFAULT_IMAGE)] if relevancy_image.DEFAULT_IMAGE.is_file() else []
    )
    gr.Markdown(
        "## Semantic Abstraction: multi-scale CLIP relevancy\n"
        "Each label's relevancy map over the image (Ha & Song, CoRL 2022). Blue tints what is "
        "not relevant; relevant parts stay clear. `ours` runs thousands of crop forwards "
        "(minutes on a CPU); `fast` and `chefer_et_al` take seconds."
    )
    gr.Markdown(weights_line, elem_id="weights-status")
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", label="image", elem_id="image", height=320)
            if examples:
                gr.Examples(examples=examples, inputs=image, label="bundled image")
            labels = gr.Textbox(
                value="vase, lamp, table, wooden floor",
                label="labels, separated by commas",
                elem_id="labels",
            )
            prompt = gr.Textbox(value=relevancy.HOME_PROMPT, label="prompt template ({} = label)")
            config = gr.Radio(list(CONFIGS), value="fast", label="config", elem_id="config")
            model = gr.Dropdown(
                list(models), value=models[0], label="CLIP model", interactive=checkpoint is None
            )
            weight_choice = gr.Radio(
                choices, value=weights or default_weights, label="weights", elem_id="weights"
            )
            run = gr.Button("Compute relevancy", variant="primary", elem_id="run")
        with gr.Column():
            status = gr.Markdown(elem_id="status")
            gallery = gr.Gallery(label="maps", columns=2, elem_id="maps", height="auto")
            figure = gr.Image(label="figure", type="filepath", elem_id="figure")
            files = gr.File(
                label="downloads: raw maps (.npy) and figure (.png)", file_count="multiple"
            )

    def on_run(image_path, labels_text, prompt_text, config_name, model_name, weights_name,
               progress=gr.Progress()):  # fmt: skip
        try:
            return compute(
                image_path, labels_text, prompt_text, config_name, model_name,
                weights_name, extractors, progress,
            )  # fmt: skip
        except InputError as error:
            raise gr.Error(str(error)) from error

    run.click(
        on_run,
        inputs=[image, labels, prompt, config, model, weight_choice],
        outputs=[gallery, figure, files, status],
    )


def build_demo(
    checkpoint: Path | None = None,
    device: str = "auto",
    models: tuple[str, ...] = MODELS,
    weights: str | None = None,
) -> gr.Blocks:
    """The relevancy page alone (`generate_relevancy.py serve`); app.py adds the 3D tab."""
    with gr.Blocks(title="Semantic Abstraction: CLIP relevancy") as demo:
        relevancy_tab(checkpoint, device, models, weights)
    demo.queue(default_concurrency_limit=1, max_size=32)  # a second request waits its turn
    return demo


def serve(port: int = 7860, checkpoint: Path | None = None, device: str = "auto") -> None:
    if checkpoint is not None:
        clip_weights.read_weights(checkpoint)  # a bad file stops here with one line
    build_demo(checkpoint, device).launch(server_name="127.0.0.1", server_port=port)
