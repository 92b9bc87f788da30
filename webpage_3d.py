"""The page's "3D scene" tab: pick a scene, ask the trained OVSSC network for a completion or the VOOL
network for a description ("the banana in the safe"), and turn the answer around in 3D beside the
ground truth, with IoU and the files visualize.py writes for the same request.

`scene_tab` lays out the components inside the caller's Blocks (app_page.py); the work is
scene_query.py's and the GLB views scene_glb.py's. A bad input is one line on the page (gr.Error);
requests run one at a time (the page's queue), with the inference's progress bar.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home from a local page

import gradio as gr  # noqa: E402

import scene_glb  # noqa: E402
import scene_query  # noqa: E402
from saliency import CONFIGS  # noqa: E402
from utils import InputError  # noqa: E402

VIEW_HEIGHT = 420
# the views' first camera (alpha, beta, radius): behind the scene's camera, which looks along +x in
# the demo's scenes, 30 degrees above the horizon (glTF's y-up frame, scene_glb.py)
CAMERA = (180, 60, None)


def setup_line(checkpoints: dict[str, Path | None], data: Path | None) -> str:
    """One line: what the tab runs on, or how to get it."""
    missing = [f"--{task}" for task, path in checkpoints.items() if path is None]
    if data is None:
        missing.append("--data")
    if missing:
        return (
            f"**No {', '.join(missing)} and no demo outputs under `{scene_query.DEMO}`**: run "
            "`make demo` (it trains both networks on its scenes), or start the page with "
            "`python app.py --ovssc CKPT --vool CKPT --data DIR`."
        )
    return (
        f"Networks `{checkpoints['ovssc']}` (OVSSC) and `{checkpoints['vool']}` (VOOL); "
        f"scenes under `{data}`."
    )


def iou_table(rows: list[tuple[str, float | None]], colored: bool) -> str:
    """Markdown: one row per class or description, IoU in percent ("-" without ground truth)."""
    lines = ["| | IoU |", "|---|---:|"]
    for k, (name, value) in enumerate(rows):
        swatch = ""
        if colored:
            r, g, b = scene_glb.class_color(k)
            swatch = f'<span style="color:rgb({r},{g},{b})">&#9632;</span> '
        lines.append(f"| {swatch}{name} | {'-' if value is None else f'{100 * value:.1f}'} |")
    scored = [value for _, value in rows if value is not None]
    if len(rows) > 1 and scored:
        lines.append(f"| **mean over {len(scored)}** | **{100 * sum(scored) / len(scored):.1f}** |")
    return "\n".join(lines)


def view_3d(label: str, elem_id: str) -> gr.Model3D:
    """An interactive 3D view of the tab (a GLB, turned with the mouse), on a white background."""
    return gr.Model3D(
        label=label, elem_id=elem_id, height=VIEW_HEIGHT, clear_color=(1, 1, 1, 1),
        camera_position=CAMERA,
    )  # fmt: skip


def query_row(label: str, placeholder: str, elem_id: str, button: str, button_id: str):
    """A text box and the button that runs its request, on one row: -> (textbox, button)."""
    with gr.Row():
        text = gr.Textbox(label=label, placeholder=placeholder, elem_id=elem_id, scale=3)
        run = gr.Button(button, variant="primary", elem_id=button_id, scale=1)
    return text, run


def scene_tab(
    queries: scene_query.SceneQueries,
    checkpoints: dict[str, Path | None],
    data: Path | None,
) -> None:
    choices = {choice.label: choice for choice in scene_query.scene_choices(data)}
    first = next(iter(choices.values()))
    gr.Markdown(
        "## See it in 3D: semantic scene completion and obscured-object localization\n"
        "Pick a scene, then complete it (OVSSC) or ask where something is (VOOL). Drag to turn "
        "the view, scroll to zoom. Each class has one colour; its hidden part (what the camera "
        "cannot see) is lighter and half transparent."
    )
    gr.Markdown(setup_line(checkpoints, data), elem_id="setup-3d")
    with gr.Row():
        with gr.Column(scale=1):
            scene = gr.Dropdown(list(choices), value=first.label, label="scene", elem_id="scene")
            summary = gr.Markdown(scene_query.scene_summary(first), elem_id="scene-summary")
            with gr.Accordion(
                "your RGB-D frame (visualize.py rgbd-scene's conventions)",
                open=False,
                elem_id="upload-3d",
            ):
                color = gr.File(label="colour image", type="filepath", elem_id="upload-color")
                depth = gr.File(
                    label="depth: 16-bit PNG in mm, or .npy / float TIFF in metres",
                    type="filepath",
                    elem_id="upload-depth",
                )
                intrinsics = gr.Textbox(
                    label="intrinsics: fx fy cx cy", elem_id="upload-intrinsics"
                )
                pose = gr.File(
                    label="pose: 4x4 camera-to-world, text or .npy (default: a level camera)",
                    type="filepath",
                )
                opengl = gr.Checkbox(label="the pose has OpenGL camera axes (ARKit)")
            with gr.Accordion("networks and settings", open=False, elem_id="settings-3d"):
                ovssc_checkpoint = gr.Textbox(
                    str(checkpoints["ovssc"] or ""), label="OVSSC checkpoint", elem_id="ovssc-ckpt"
                )
                vool_checkpoint = gr.Textbox(
                    str(checkpoints["vool"] or ""), label="VOOL checkpoint", elem_id="vool-ckpt"
                )
                grid = gr.Slider(
                    8, scene_query.MAX_GRID, value=scene_query.DEFAULT_GRID, step=1,
                    label="query grid per axis (visualize.py: 240; time grows with its cube)",
                )  # fmt: skip
                cutoff = gr.Number(
                    scene_query.VOOL_CUTOFF,
                    label="VOOL cutoff: the region is logit > cutoff",
                    elem_id="vool-cutoff",
                )
                config = gr.Radio(
                    list(CONFIGS), value="fast", label="relevancy config (pickles and uploads)"
                )
        with gr.Column(scale=2):
            gr.Markdown("### OVSSC: complete the scene")
            classes, ovssc_run = query_row(
                "classes, separated by commas", "empty: the scene's classes", "classes", "Complete",
                "ovssc-run",
            )  # fmt: skip
            ovssc_status = gr.Markdown(elem_id="ovssc-status")
            with gr.Row():
                ovssc_view = view_3d("completion", "ovssc-view")
                truth_view = view_3d("ground truth", "ovssc-truth")
            ovssc_iou = gr.Markdown(elem_id="ovssc-iou")
            ovssc_files = gr.File(
                label="downloads", file_count="multiple", elem_id="ovssc-files", height=140
            )

            gr.Markdown("### VOOL: where is it?")
            description, vool_run = query_row(
                "description: the TARGET RELATION the REFERENCE", "the banana in the safe",
                "description", "Localize", "vool-run",
            )  # fmt: skip
            examples = gr.Dataset(
                components=[description],
                samples=examples_of(first),
                label="this scene's descriptions",
                elem_id="descriptions",
            )
            vool_status = gr.Markdown(elem_id="vool-status")
            vool_view = view_3d(
                "prediction (blue) and ground truth (red) over the scene's points", "vool-view"
            )
            vool_iou = gr.Markdown(elem_id="vool-iou")
            vool_files = gr.File(
                label="downloads", file_count="multiple", elem_id="vool-files", height=140
            )

    def on_scene(label):
        choice = choices[label]
        try:
            return scene_query.scene_summary(choice), gr.Dataset(samples=examples_of(choice))
        except InputError as error:
            raise gr.Error(str(error)) from error

    scene.change(on_scene, scene, [summary, examples])
    examples.click(lambda sample: sample[0], examples, description)
    upload = [color, depth, intrinsics, pose, opengl]

    def on_ovssc(label, *values, progress=gr.Progress(track_tqdm=True)):
        *files, checkpoint, text, grid_size, relevancy_config = values
        try:
            answer = queries.ovssc(
                choices[label], scene_query.Upload(*files), checkpoint, text, relevancy_config,
                int(grid_size),
            )  # fmt: skip
        except InputError as error:
            raise gr.Error(str(error)) from error
        return (
            answer.status, str(answer.view), answer.truth_view and str(answer.truth_view),
            iou_table(answer.iou, colored=True), [str(p) for p in answer.files],
        )  # fmt: skip

    def on_vool(label, *values, progress=gr.Progress(track_tqdm=True)):
        *files, checkpoint, text, grid_size, relevancy_config, cut = values
        try:
            answer = queries.vool(
                choices[label], scene_query.Upload(*files), checkpoint, text, relevancy_config,
                int(grid_size), float(cut),
            )  # fmt: skip
        except InputError as error:
            raise gr.Error(str(error)) from error
        return (
            answer.status, str(answer.view), iou_table(answer.iou, colored=False),
            [str(p) for p in answer.files],
        )  # fmt: skip

    ovssc_run.click(
        on_ovssc,
        inputs=[scene, *upload, ovssc_checkpoint, classes, grid, config],
        outputs=[ovssc_status, ovssc_view, truth_view, ovssc_iou, ovssc_files],
    )
    vool_run.click(
        on_vool,
        inputs=[scene, *upload, vool_checkpoint, description, grid, config, cutoff],
        outputs=[vool_status, vool_view, vool_iou, vool_files],
    )


def examples_of(choice: scene_query.SceneChoice) -> list[list[str]]:
    return [[text] for text in scene_query.scene_descriptions(choice)] or [["the mug on the table"]]
