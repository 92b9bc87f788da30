"""The 3D tab's work (the page is webpage_3d.py): a trained OVSSC or VOOL network asked about one
scene, answered on visualize.py's code path, and the answer as GLB views with IoU.

The scene is a dataset scene file (its stored relevancy and ground truth, dataset_scene.py), a
scene pickle or an uploaded RGB-D frame (frames.py; their relevancy needs CLIP weights). Each
request builds inference_run.py's `SceneRun` and calls `run_ovssc` or `run_vool`, which write what
`visualize.py ovssc-inference` / `vool-inference` write (<class>.obj, completion.npz;
<description>.ply, scene_rgb.ply, localization.npz) into the request's folder; the views are
built from those files (scene_glb.py). Loaded networks and the last scene's inputs are kept
between requests.

IoU, on visualize's query grid (docs/visualization.md#the-3d-tab-apppy): per OVSSC class, the voxels of
the completion against the ground-truth voxels of that class (both cut to the camera frustum and
TSDF <= 0, as the completion); for a VOOL description, the grid points whose logit exceeds the
page's cutoff against the grid points nearest to the target object's ground-truth points.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import clip_weights
import dataset_scene
import inference
import inference_run
import render
import scene_file
import scene_glb
from frames import Frame, build_frame, read_depth, read_pose, read_rgb, read_scene_pickle
from processes import resolve_device
from utils import InputError
from vocab import RELATIONS

REPO = Path(__file__).resolve().parent
DEMO = Path("outputs/demo")  # demo.py's default folder, relative to where the page is started
DEMO_CHECKPOINTS = {task: DEMO / "models" / task / "latest.pth" for task in ("ovssc", "vool")}
DEMO_DATA = DEMO / "data"
BUNDLED = REPO / "scene_files"
DEFAULT_GRID = 64  # the grid of the demo's visualize stage; visualize.py's own default is 240
MAX_GRID = inference.GRID_SIZE
UPLOAD = "your RGB-D frame (upload it below)"
# VOOL's region is the grid points whose logit exceeds a cutoff (the evaluation's threshold), set
# on the page; the demo's networks, trained on balanced samples, are best cut between 2.5 and 4
# (demo.py's NETWORK_CUTOFFS, docs/learning.md)
VOOL_CUTOFF = 3.0
KEPT_REQUESTS = 8  # the newest request folders kept on disk


@dataclass(frozen=True)
class SceneChoice:
    label: str  # what the page lists
    path: Path | None  # None: the uploaded frame
    split: str | None = None


def scene_choices(data: Path | None) -> list[SceneChoice]:
    """Every scene file under `data`, held-out splits first (each marked with its first held-out
    split, then train, then files in no split), then the bundled pickles, then the upload."""
    choices = []
    if data is not None and Path(data).is_dir():
        files = sorted(p for p in Path(data).iterdir() if dataset_scene.is_scene_file(p))
        split_of = scene_splits(Path(data))
        order = {name: k for k, name in enumerate(sorted(set(split_of.values()), key=split_rank))}
        files.sort(key=lambda p: order.get(split_of.get(p.name), len(order)))
        for path in files:
            split = split_of.get(path.name)
            mark = (
                "no split"
                if split is None
                else ("train" if split == "train" else f"held-out: {split}")
            )
            choices.append(SceneChoice(f"{path.stem} [{mark}]", path, split))
    for path in sorted(BUNDLED.glob("*.pkl")):
        choices.append(SceneChoice(f"{path.name} [bundled pickle: CLIP relevancy]", path))
    return [*choices, SceneChoice(UPLOAD, None)]


def split_rank(split: str) -> tuple[int, str]:
    return (split == "train", split)


def scene_splits(data: Path) -> dict[str, str]:
    """Scene file name -> its first split in ssc_split.pkl (held-out ones before train)."""
    try:
        splits = scene_file.load_split_lists(data, "ovssc")
    except InputError:  # no split pickle (or not one): every scene is in no split
        return {}
    first = {}
    for split in sorted(splits, key=split_rank):
        for name in splits[split]:
            first.setdefault(Path(name).name, split)
    return first


def relevancy_source(path: Path) -> str | None:
    """Who made a dataset scene's stored relevancy (generate_relevancy.py records it), or None."""
    with scene_file.SceneFile(path) as scene:
        if not scene.has(scene_file.SALIENCY_INDEX):
            return None
        return str(scene.get(scene_file.SALIENCY_INDEX).attrs.get("source", "unrecorded source"))


def scene_summary(choice: SceneChoice) -> str:
    """One Markdown line about a scene: where its relevancy comes from."""
    if choice.path is None:
        return "Your RGB-D frame: its relevancy is computed with CLIP (weights needed)."
    if choice.path.suffix == ".pkl":
        return f"`{choice.path.name}`: a scene pickle; its relevancy is computed with CLIP."
    source = relevancy_source(choice.path)
    split = "in no split" if choice.split is None else f"split `{choice.split}`"
    stored = "**no stored relevancy**" if source is None else f"stored relevancy: {source}"
    return f"`{choice.path.name}`, {split}; {stored}; ground truth shown beside the prediction."


def scene_descriptions(choice: SceneChoice) -> list[str]:
    """The descriptions a scene stores, as the page offers them ("the T R the Ref")."""
    if choice.path is None:
        return []
    if choice.path.suffix == ".pkl":
        triples = read_scene_pickle(choice.path).descriptions
    else:
        with scene_file.SceneFile(choice.path) as scene:
            if not scene.has_descriptions():
                return []
            stored = scene.descriptions()
        triples = zip(*(stored[key] for key in scene_file.SENTENCE_KEYS))
    return [inference.description_name(*(str(v) for v in t)) for t in triples]


# --------------------------------------------------------------------------------------------------
# what a request names


def parse_classes(text: str) -> list[str]:
    return list(
        dict.fromkeys(c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip())
    )


_ARTICLE = re.compile(r"^(the|a|an)(\s+|$)", re.IGNORECASE)
_RELATION = re.compile(
    r"(?:^|\s)(" + "|".join(sorted(map(re.escape, RELATIONS), key=len, reverse=True)) + r")(?:\s|$)"
)
DESCRIPTION_FORM = (
    "a description is 'the TARGET RELATION the REFERENCE', e.g. 'the banana in the safe', with "
    f"one of the relations {', '.join(RELATIONS)}"
)


def without_article(words: str) -> str:
    return _ARTICLE.sub("", words.strip()).strip()


def parse_description(text: str) -> tuple[str, str, str]:
    """'the banana in the safe' (or 'banana|in|safe') -> ('banana', 'in', 'safe'); one line naming
    what is accepted when the text is empty, names no relation, or leaves a part empty."""
    text = " ".join((text or "").split()).rstrip(".")
    if not text:
        raise InputError(f"no description: {DESCRIPTION_FORM}")
    if "|" in text:
        parts = [p.strip() for p in text.split("|")]
        if len(parts) != 3:
            raise InputError(f"'{text}' has {len(parts)} parts: target|relation|reference has 3")
        target, relation, reference = parts
        if relation not in RELATIONS:
            raise InputError(f"unknown relation '{relation}' in '{text}': {DESCRIPTION_FORM}")
    else:
        match = _RELATION.search(text.lower())
        if match is None:
            raise InputError(f"no known relation in '{text}': {DESCRIPTION_FORM}")
        relation = match.group(1)
        target, reference = text[: match.start(1)], text[match.end(1) :]
    target, reference = without_article(target), without_article(reference)
    for part, value in (("target", target), ("reference", reference)):
        if not value:
            raise InputError(f"'{text}' names no {part}: {DESCRIPTION_FORM}")
    return target, relation, reference


@dataclass
class Upload:
    """The files of an uploaded RGB-D frame, as `visualize.py rgbd-scene` takes them."""

    color: str | None
    depth: str | None
    intrinsics: str  # "fx fy cx cy"
    pose: str | None = None
    opengl_camera: bool = False

    def frame(self, classes, descriptions, scene_bounds) -> Frame:
        if not self.color or not self.depth:
            raise InputError("the upload needs a colour image and a depth image")
        try:
            values = [float(v) for v in self.intrinsics.replace(",", " ").split()]
        except ValueError:
            raise InputError(
                f"intrinsics are four numbers fx fy cx cy, got '{self.intrinsics}'"
            ) from None
        if len(values) != 4:
            raise InputError(f"intrinsics are four numbers fx fy cx cy, got '{self.intrinsics}'")
        pose = None if not self.pose else read_pose(self.pose, self.opengl_camera)
        frame, _ = build_frame(
            read_rgb(self.color), read_depth(self.depth, None), values, pose, classes,
            descriptions, scene_bounds=np.asarray(scene_bounds), source="the upload",
        )  # fmt: skip
        return frame


# --------------------------------------------------------------------------------------------------
# answers


@dataclass
class Answer:
    """One request's answer: the views (GLB paths), the IoU rows, the downloads and a status line."""

    view: Path
    truth_view: Path | None
    iou: list[tuple[str, float | None]]  # (class or description, IoU or None without ground truth)
    files: list[Path]
    status: str


class SceneQueries:
    """Networks and scene inputs kept between the page's requests (one at a time)."""

    def __init__(self, device: str = "auto", clip_options=("ViT-B-32", "openai", None)):
        self.device = resolve_device(device)
        self.clip_options = clip_options  # (model, pretrained, checkpoint) for pickles and uploads
        self.networks: dict = {}
        self.inputs: dict = {}
        self.lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="semabs-3d-"))
        self.requests = 0

    def clip_note(self) -> str | None:
        """None when CLIP relevancy can be computed, else the one line saying why not."""
        model, pretrained, checkpoint = self.clip_options
        if checkpoint is not None or pretrained == "none":
            return None
        if clip_weights.cached_weights(model, pretrained) is not None:
            return None
        return (
            "this scene's relevancy needs CLIP weights, and none were found on this machine: supply "
            "them by "
            + clip_weights.WEIGHT_SOURCES.split(", or --pretrained none")[0].replace(
                "--checkpoint PATH", "`python app.py --checkpoint PATH`"
            )
            + " (dataset scenes with stored relevancy need none)"
        )

    def network(self, checkpoint: str | Path | None, task: str):
        if not checkpoint or not str(checkpoint).strip():
            raise InputError(
                f"no {task.upper()} checkpoint: run `make demo` (it trains both networks), or give "
                f"`python app.py --{task} PATH/latest.pth`"
            )
        path = Path(str(checkpoint).strip()).expanduser()
        if not path.is_file():
            raise InputError(
                f"{task.upper()} checkpoint not found: {path} (run `make demo`, or give "
                f"`python app.py --{task} PATH/latest.pth`)"
            )
        key = (task, path.resolve(), path.stat().st_mtime_ns)
        if key not in self.networks:
            self.networks = {k: v for k, v in self.networks.items() if k[0] != task}
            self.networks[key] = load_network(path, task, self.device)
        return key, self.networks[key]

    def folder(self) -> Path:
        """A fresh folder for one request; only the newest KEPT_REQUESTS are kept."""
        self.requests += 1
        for old in sorted(self.root.iterdir(), key=lambda p: int(p.name))[: -KEPT_REQUESTS + 1]:
            shutil.rmtree(old, ignore_errors=True)
        out = self.root / str(self.requests)
        out.mkdir()
        return out

    def dataset_inputs(self, path: Path, task: str, key, trained):
        """inference_run.dataset_inputs of a dataset scene, kept for the next request on it."""
        _, args, approach = trained
        cached = self.inputs.get(task)
        if cached is None or cached[0] != (path, key):
            scene = inference_run.dataset_inputs(
                path, task, args, approach, self.clip_options, self.device
            )
            self.inputs[task] = cached = ((path, key), scene)
        return cached[1]

    def clip_inputs(self, frame: Frame, task: str, trained, config: str, out: Path):
        """A pickle's or an upload's inputs: CLIP relevancy of the frame's words (relevancies.png)."""
        note = self.clip_note()
        if note is not None:
            raise InputError(note)
        _, args, approach = trained
        labels = inference.relevancy_labels(frame, approach)
        maps, text = inference_run.scene_relevancy(
            frame, labels, approach, config, self.clip_options, self.device, 0, out
        )
        return inference.prepare_inputs(frame, maps, labels, text, args, task)

    def prepare(self, task, choice, upload, checkpoint, words, asked, config, grid_size, out):
        """The SceneRun of one request. `words(frame, stored, approach)` -> (frame, ground-truth
        rows or None) sets the request's classes or description (`stored`: a dataset scene, whose
        relevancy is stored for its own names only); `asked` = (classes, descriptions) of an upload."""
        key, trained = self.network(checkpoint, task)
        network, args, approach = trained
        check_grid(grid_size)
        truth = None
        if choice.path is not None and dataset_scene.is_scene_file(choice.path):
            frame, prepared, sample = self.dataset_inputs(choice.path, task, key, trained)
            frame, rows = words(frame, True, approach)
            truth = None if rows is None else truth_rows(sample, rows)
        else:
            frame = (
                read_scene_pickle(choice.path)
                if choice.path is not None
                else upload.frame(*asked, args.scene_bounds)
            )
            frame, _ = words(frame, False, approach)
            prepared = self.clip_inputs(frame, task, trained, config, out)
        grid = inference.query_grid(args.scene_bounds, grid_size)
        return inference_run.SceneRun(
            frame, self.device, network, args, approach, out, prepared, grid, grid_size,
            np.random.default_rng(0), truth,
        )  # fmt: skip

    def ovssc(self, choice, upload, checkpoint, classes_text, config, grid_size) -> Answer:
        with self.lock:
            start, out = time.perf_counter(), self.folder()
            asked = parse_classes(classes_text)

            def words(frame: Frame, stored: bool, approach: str):
                if not asked and not frame.classes:
                    raise InputError("no classes: type at least one, separated by commas")
                classes = asked or frame.classes
                if stored:
                    unknown = [c for c in classes if c not in frame.classes]
                    if unknown:
                        raise InputError(
                            f"no stored relevancy for {', '.join(map(repr, unknown))} in this "
                            f"scene; its classes are {', '.join(frame.classes)}"
                        )
                rows = [frame.classes.index(c) for c in classes] if stored else None
                return replace(frame, classes=classes), rows

            run = self.prepare(
                "ovssc", choice, upload, checkpoint, words, (asked, []), config, grid_size, out
            )
            written, _ = inference_run.run_ovssc(run)
            return ovssc_answer(run, written, time.perf_counter() - start)

    def vool(self, choice, upload, checkpoint, description_text, config, grid_size,
             cutoff: float = VOOL_CUTOFF) -> Answer:  # fmt: skip
        with self.lock:
            start, out = time.perf_counter(), self.folder()
            description = parse_description(description_text)

            def words(frame: Frame, stored: bool, approach: str):
                rows = None
                if stored:
                    check_stored_names(description, frame, approach)
                    if description in frame.descriptions:
                        rows = [frame.descriptions.index(description)]
                return replace(frame, descriptions=[description]), rows

            run = self.prepare(
                "vool", choice, upload, checkpoint, words, ([], [description]), config, grid_size,
                out,
            )  # fmt: skip
            (logits,) = inference_run.run_vool(run)
            return vool_answer(run, logits, float(cutoff), time.perf_counter() - start)


def load_network(path: Path, task: str, device):
    """inference_run.load_trained, with one plain line when the file is the other task's network."""
    try:
        return inference_run.load_trained(path, task, device)
    except InputError:
        other = "vool" if task == "ovssc" else "ovssc"
        try:
            inference_run.load_trained(path, other, device)
        except InputError:
            raise  # not the other task's either: the loader's own line
        raise InputError(
            f"{path} holds the {other.upper()} network, not the {task.upper()} one: give a "
            f"checkpoint of train_{task}.py"
        ) from None


def check_grid(grid_size: int) -> None:
    if not 2 <= int(grid_size) <= inference.GRID_SIZE:
        raise InputError(
            f"the grid takes 2 to {inference.GRID_SIZE} points per axis, got {grid_size}"
        )


def check_stored_names(description, frame: Frame, approach: str) -> None:
    """A dataset scene holds the relevancy of its stored descriptions' names only (clip_spatial
    networks read whole stored sentences)."""
    if approach == "clip_spatial" and description not in frame.descriptions:
        raise InputError(
            "this clip_spatial network reads the stored relevancy of whole descriptions: pick one "
            "of this scene's descriptions"
        )
    names = sorted({n for target, _, reference in frame.descriptions for n in (target, reference)})
    for part, name in zip(("target", "reference"), description[::2]):
        if name not in names:
            raise InputError(
                f"the {part} '{name}' has no stored relevancy in this scene; its descriptions name "
                f"{', '.join(names)}"
            )


def truth_rows(sample: dict, rows: list[int]) -> dict:
    """The evaluation sample with only `rows` of its per-row ground truth."""
    labels = np.asarray(sample["output_label_pts"])
    xyz = np.asarray(sample["output_xyz_pts"])
    return {
        **sample,
        "output_label_pts": labels[rows],
        "output_xyz_pts": xyz[rows] if len(xyz) == len(labels) else xyz,
    }


# --------------------------------------------------------------------------------------------------
# from visualize's files to the views


def grid_index(xyz: np.ndarray, bounds: np.ndarray, size: int) -> np.ndarray:
    """Flat index of the query-grid point nearest to each point (C order over x, y, z)."""
    pitch = inference.grid_pitch(bounds, size)
    ijk = np.clip(np.rint((np.asarray(xyz) - bounds[0]) / pitch), 0, size - 1).astype(np.int64)
    return np.ravel_multi_index(ijk.T, (size,) * 3)


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.count_nonzero(a | b)
    return None if union == 0 else np.count_nonzero(a & b) / union


def ovssc_answer(run: inference_run.SceneRun, written: list[str], seconds: float) -> Answer:
    out, size = run.out_dir, run.grid_size
    npz = np.load(out / "completion.npz")
    bounds = np.asarray(npz["scene_bounds"], np.float64)
    pitch = float(inference.grid_pitch(bounds, size).max())
    classes, stems = list(npz["classes"]), list(npz["file_stems"])
    predicted = np.full(size**3, -1, np.int16)
    predicted[grid_index(npz["xyz"], bounds, size)] = npz["label"]
    meshes = []
    for stem in written:
        vertices, faces = render.read_mesh(out / f"{stem}.obj")
        meshes.append((classes[stems.index(stem)], stems.index(stem), vertices, faces))
    view = scene_glb.completion_glb(out / "completion.glb", meshes, run.frame, pitch)
    files = [view, *(out / f"{s}.obj" for s in written), out / "completion.npz"]
    truth_view, rows = None, [(name, None) for name in classes]
    if "gt_labels" in npz:
        truth = np.asarray(npz["gt_labels"]).reshape(-1)
        rows = [(name, iou(predicted == k, truth == k)) for k, name in enumerate(classes)]
        truth_meshes = []
        for k, name in enumerate(classes):
            mesh = inference.volume_mesh((truth == k).reshape((size,) * 3), bounds)
            if mesh is not None:
                truth_meshes.append((name, k, *mesh))
        truth_view = scene_glb.completion_glb(
            out / "ground_truth.glb", truth_meshes, run.frame, pitch
        )
        files.insert(1, truth_view)
    files += [p for p in [out / "relevancies.png"] if p.is_file()]
    empty = len(classes) - len(written)
    status = (
        f"{len(classes)} classes completed on a {size}³ grid in {seconds:.1f} s"
        + (f" ({empty} empty)" if empty else "")
        + ("; ground truth beside it" if truth_view else "; no ground truth for this scene")
    )
    return Answer(view, truth_view, rows, files, status)


def vool_answer(
    run: inference_run.SceneRun, logits: np.ndarray, cutoff: float, seconds: float
) -> Answer:
    out, size = run.out_dir, run.grid_size
    npz = np.load(out / "localization.npz")
    bounds = np.asarray(npz["scene_bounds"], np.float64)
    pitch = float(inference.grid_pitch(bounds, size).max())
    name, stem = str(npz["descriptions"][0]), str(npz["file_stems"][0])
    predicted = logits > cutoff
    inside = inference.clear_border(
        np.where(predicted, 0, -1).astype(np.int16).reshape((size,) * 3)
    )
    region = inference.volume_mesh(inside == 0, bounds)  # closed: the border left empty
    truth_points, score = None, None
    if "gt_xyz" in npz:
        truth = np.zeros(size**3, bool)
        truth[grid_index(npz["gt_xyz"], bounds, size)] = True
        truth_points, score = run.grid[truth], iou(predicted, truth)
    scene_xyz, scene_rgb = inference.read_ply(out / "scene_rgb.ply")
    view = scene_glb.localization_glb(
        out / "localization.glb", scene_xyz, scene_rgb, region, truth_points, pitch
    )
    files = [view, out / f"{stem}.ply", out / "scene_rgb.ply", out / "localization.npz"]
    files += [p for p in [out / "relevancies.png"] if p.is_file()]
    truth_note = (
        "the target's ground truth in red" if truth_points is not None
        else "no ground truth (not one of this scene's stored descriptions)"
    )  # fmt: skip
    status = (
        f"'{name}': {np.count_nonzero(predicted):,} grid points above the cutoff {cutoff:g} (best "
        f"logit {logits.max():.2f}) on a {size}³ grid in {seconds:.1f} s; {truth_note}"
    )
    return Answer(view, None, [(name, score)], files, status)
