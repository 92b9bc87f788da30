"""The command-line flags of training, evaluation and visualization, declared once.

The original's shared parser and per-script flags (docs/training.md). Names and defaults are the
original's, so its commands and its `args.pkl` files work unchanged. Changes, each a bug that only
hurt users:
- every flag that defaults to True can be switched off (`--no_domain_randomization`, ...);
- `--voxel_shape X Y Z` and `--scene_bounds x0 y0 z0 x1 y1 z1` can be set;
- `--device auto` (the default) picks CUDA when present, where the original hard-coded "cuda";
- `--gpus` is still accepted, but whether DDP runs is decided by the world size torchrun gives.
New: the `--fix_*` flags of fixes.py, `--activation_checkpointing`, `--amp_dtype`, `--clip_checkpoint`,
`--iou_loss`, `--iou_loss_weight`, `--iou_loss_sampling_weights`, `--bce_positive_weight`,
`--lovasz_margin`, `--relation_offsets`.

`args.pkl` (the pickled training Namespace beside a checkpoint) is read back by `load_args`, which
fills flags that an older file lacks with their defaults, so released and our own files read alike.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import fixes
from geometry import DEFAULT_SCENE_BOUNDS, DEFAULT_VOXEL_SHAPE
from schedules import SCHEDULES
from utils import InputError, atomic_path
from vocab import APPROACHES, NETWORK_INPUTS, POINTING_METHODS, SALIENCY_CONFIGS

ARGS_FILE = "args.pkl"


# -1, -0.5, .5 and -1e9, -2.5E-3: argparse's own pattern has no exponent, so it took -1e9 for an option
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ArgumentParser(argparse.ArgumentParser):
    """The parser of the scripts' flags. Two changes to argparse's: every negative number is a
    value, in scientific notation too (`--cutoffs -1e9 1e9 1e-9`; argparse read -1e9 as an
    unknown option, and none of our flags looks like a number); and a refusal is one line, the
    problem and where the flags are listed, without argparse's usage block of every flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def _add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """--name / --no_name, in the original's underscore style."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        f"--{name}", dest=name, action="store_true", help=f"{help} (default: {default})"
    )
    group.add_argument(f"--no_{name}", dest=name, action="store_false", help=argparse.SUPPRESS)
    parser.set_defaults(**{name: default})


@dataclass(frozen=True)
class Bounded:
    """An argparse type: a finite number of `kind` (int or float) from `minimum` (excluded when
    `above`) to `maximum`. A bad value stops the parse with argparse's one line
    (`error: argument --lr: must be a finite number > 0, got nan`); `check` applies the same rule
    to a value read back from args.pkl. `meaning` words the rule where the generated text would not.
    """

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    meaning: str | None = None
    also: tuple = ()  # values accepted beside the range (-1: every point)

    @property
    def requirement(self) -> str:
        if self.meaning is not None:
            return self.meaning
        noun = "an integer" if self.kind is int else "a finite number"
        if self.maximum is not None:
            return f"{noun} from {self.minimum} to {self.maximum}"
        if self.minimum is None:
            return noun
        return f"{noun} {'>' if self.above else '>='} {self.minimum}"

    def accepts(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if value in self.also:
            return True
        if self.minimum is not None and (
            value <= self.minimum if self.above else value < self.minimum
        ):
            return False
        return self.maximum is None or value <= self.maximum

    def check(self, value):
        """A stored value: `value` if it is a `kind` (no rounding, no text) that meets the rule."""
        try:
            converted = None if isinstance(value, str) else self.kind(value)
        except (TypeError, ValueError, OverflowError):
            converted = None
        if converted is None or converted != value or not self.accepts(converted):
            raise self.refusal(value)
        return converted

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise self.refusal(text) from None
        if not self.accepts(value):
            raise self.refusal(text)
        return value

    def refusal(self, shown) -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(f"must be {self.requirement}, got {shown}")


COUNT = Bounded(int, 1)  # sizes, batch size, epochs
# Point counts: -1 draws every point, as the original's sample size -1 did.
POINT_COUNT = Bounded(int, 1, also=(-1,), meaning="an integer >= 1, or -1 (every point)")
NONNEGATIVE_COUNT = Bounded(int, 0)
SEED = Bounded(int, 0, 2**32 - 1)  # numpy's seeds
EVERY = Bounded(int, 0, meaning="0 (never) or a positive epoch count")  # the original divided by it
FINITE = Bounded(float)
NONNEGATIVE = Bounded(float, 0)
POSITIVE = Bounded(float, 0, above=True)


def _scene_bounds(values: list[float]) -> list[list[float]]:
    lower, upper = values[:3], values[3:]
    if not all(u > lo for lo, u in zip(lower, upper)):
        raise argparse.ArgumentTypeError(
            f"--scene_bounds upper corner must exceed the lower: {values}"
        )
    return [lower, upper]


class _SceneBounds(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, _scene_bounds(values))
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))


MAX_CUTOFFS = 1000  # np.arange(-1, 2, 1e-9) would be 3e9 cutoffs (22 GB of rows to allocate)


def cutoff_range_problem(start: float, stop: float, step: float) -> str | None:
    """What is wrong with np.arange(START, STOP, STEP) as score cutoffs, or None."""
    if not all(math.isfinite(v) for v in (start, stop, step)):
        return "START STOP STEP must be finite numbers"
    if step <= 0:
        return "STEP must be > 0"
    if start >= stop:
        return "START must be below STOP"
    count = math.ceil((stop - start) / step)
    if count > MAX_CUTOFFS:
        return f"that is {count:,} cutoffs, at most {MAX_CUTOFFS} make sense"
    return None


class CutoffRange(argparse.Action):
    """--cutoffs START STOP STEP, checked when parsed (`cutoff_range_problem`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        problem = cutoff_range_problem(*values)
        if problem is not None:
            shown = " ".join(f"{v:g}" for v in values)
            parser.error(f"argument {option_string}: {problem}, got {shown}")
        setattr(namespace, self.dest, list(values))


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """The original's `utils.config_parser` flags (docs/training.md), with the fix flags."""
    add = parser.add_argument
    add("--file_path", required=True, help="dataset root holding ssc_split.pkl / vool_split.pkl")
    add(
        "--voxel_shape",
        type=COUNT,
        nargs=3,
        default=list(DEFAULT_VOXEL_SHAPE),
        metavar=("X", "Y", "Z"),
        help="feature-volume grid (and TSDF shape)",
    )
    add("--load", default=None, help="checkpoint to resume from (train) or to evaluate")
    add("--batch_size", type=COUNT, default=1, help="per-process training batch size")
    add("--num_warmup_steps", type=NONNEGATIVE_COUNT, default=1024)
    add(
        "--save_freq",
        type=EVERY,
        default=1,
        help="save ckpt_<epoch>.pth at epochs 0, N, 2N, ... and after the last epoch (0: never, "
        "latest.pth only); each holds the network and its LAMB state: ~425 MB for the default "
        "network, ~27 MB for demo.py's small one (--voxel_shape 32 32 32 --unet_num_levels 4)",
    )
    add(
        "--eval_freq",
        type=EVERY,
        default=5,
        help="evaluate unseen_instances every N epochs, from epoch 0 (0: never while training)",
    )
    add(
        "--gpus",
        nargs="+",
        default=["0"],
        help="accepted for the original's commands; torchrun decides",
    )
    add("--seed", type=SEED, default=0)
    add("--epochs", type=COUNT, default=200)
    add("--num_descs", type=COUNT, default=4, help="VOOL descriptions per training scene")
    add("--saliency_vmin", type=FINITE, default=None)
    add("--lr", type=POSITIVE, default=1e-3)
    add("--weight_decay", type=NONNEGATIVE, default=1e-5)
    add("--grad_max_norm", type=POSITIVE, default=2.0)
    add("--xyz_pts_noise", type=NONNEGATIVE, default=0.0)
    add(
        "--num_input_pts",
        type=POINT_COUNT,
        default=80_000,
        help="input points per scene (-1: every in-bounds point)",
    )
    add(
        "--num_output_pts",
        type=POINT_COUNT,
        default=400_000,
        help="query points per training scene (-1: every in-bounds point)",
    )
    add("--pointing_dim", type=COUNT, default=64)
    _add_bool(
        parser,
        "relation_offsets",
        False,
        "VOOL, semantic_abstraction (not in the original): one logit offset per spatial relation, "
        "zero until calibrate.py sets it from training scenes",
    )
    add("--unet_f_maps", type=COUNT, default=16)
    add("--unet_num_channels", type=COUNT, default=16)
    add("--unet_num_groups", type=COUNT, default=8)
    add("--unet_num_levels", type=COUNT, default=6)
    add("--num_patches", type=COUNT, default=4, help="OVSSC classes per training scene")
    add("--patch_mask_cutoff", type=FINITE, default=0.004)
    _add_bool(parser, "domain_randomization", True, "random rigid/scale transform in training")
    _add_bool(parser, "use_pts_feat_extractor", True, "per-point MLP before scattering")
    add("--pts_feat_extractor_hidden_dim", type=COUNT, default=128)
    _add_bool(parser, "subtract_mean_relevancy", True, "subtract the per-scene mean relevancy map")
    _add_bool(parser, "offset_patch_mask", False, "patch masks in {-1, 1} instead of {0, 1}")
    _add_bool(parser, "balance_positive_negative", False, "per-row BCE reweighting")
    add(
        "--bce_positive_weight",
        type=POSITIVE,
        default=None,
        help="weigh every positive this much against a negative in the BCE, the same in every row "
        "(not in the original; replaces --balance_positive_negative)",
    )
    add(
        "--iou_loss",
        choices=("none", "lovasz", "soft_jaccard"),
        default="none",
        help="add an IoU term per row to the BCE (not in the original): the Lovász hinge or the "
        "soft Jaccard loss, over the points the metrics score",
    )
    add("--iou_loss_weight", type=NONNEGATIVE, default=1.0, help="weight of --iou_loss")
    add(
        "--lovasz_margin",
        type=POSITIVE,
        default=1.0,
        help="--iou_loss lovasz: the hinge's margin in logits (Berman et al.: 1); the cosine "
        "pointing's logits are cos / 0.07, so margin 1 is satisfied at a cosine of 0.07",
    )
    _add_bool(
        parser,
        "iou_loss_sampling_weights",
        False,
        "weigh each point of --iou_loss by the inverse of its class's sampling rate in its row, so "
        "that the term scores the IoU of all the scene's points, not of the balanced sample",
    )
    _add_bool(
        parser, "balance_spatial_relations", True, "VOOL: descriptions uniform over relations"
    )
    _add_bool(parser, "always_replace_subsample_pts", False, "sample points with replacement")
    _add_bool(parser, "balance_spatial_sampling", True, "class-balanced training query points")
    _add_bool(parser, "decoder_concat_xyz_pts", True, "decoder also sees the query xyz")
    _add_bool(
        parser,
        "use_amp",
        False,
        "autocast: CUDA fp16 (with a gradient scaler) or bf16; CPU bf16 (about 1.2x faster "
        "training where the CPU has AMX or AVX512-BF16)",
    )
    add(
        "--amp_dtype",
        choices=("fp16", "bf16"),
        default="fp16",
        help="autocast type with --use_amp (CPU: bf16 only, with AMX or AVX512-BF16)",
    )
    add("--num_workers", type=NONNEGATIVE_COUNT, default=8, help="DataLoader workers per process")
    add(
        "--max_minutes",
        type=POSITIVE,
        default=None,
        help="stop after this much training time, saving latest.pth (one process only)",
    )
    add("--dr_pos", type=NONNEGATIVE, default=0.1)
    add("--dr_orn", type=NONNEGATIVE, default=0.3)
    add("--dr_scale", type=NONNEGATIVE, default=0.1)
    add(
        "--scene_bounds",
        type=FINITE,
        nargs=6,
        action=_SceneBounds,
        default=[list(c) for c in DEFAULT_SCENE_BOUNDS],
        metavar="B",
        help="x0 y0 z0 x1 y1 z1 (metres)",
    )
    add(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N (under torchrun: LOCAL_RANK's GPU)",
    )
    add("--pointing_method", choices=POINTING_METHODS, default="cosine_sim")
    add("--saliency_config", choices=SALIENCY_CONFIGS, default="ours")
    add("--network_inputs", nargs="+", choices=NETWORK_INPUTS, default=["saliency"])
    add("--lr_scheduler_type", choices=tuple(SCHEDULES), default="cosine_with_restarts")
    add(
        "--reduce_method",
        choices=("max", "mean"),
        default="max",
        help="scatter reduction (used only with --fix_scatter_reduce)",
    )
    _add_bool(
        parser, "activation_checkpointing", False, "recompute activations in backward (less memory)"
    )
    add(
        "--clip_checkpoint",
        default=None,
        help="semantic-aware VOOL: local CLIP ViT-B-32 weights for the object-name features "
        "(default: open_clip's openai weights from the cache)",
    )
    for fix in fixes.FIXES:
        if fix.used_by != "relevancy":
            _add_bool(parser, fix.name, False, f"{fix.fixed} [docs/{fix.where}]")


def add_args_file_flag(parser: argparse.ArgumentParser) -> None:
    """--args PATH of eval.py and calibrate.py: the configuration of the network given by --load."""
    parser.add_argument(
        "--args",
        dest="args_file",
        default=None,
        metavar="PATH",
        help="the training run's args.pkl (default: beside --load)",
    )


def training_parser(task: str) -> argparse.ArgumentParser:
    """train_ovssc.py / train_vool.py: shared flags + --log and --approach."""
    parser = ArgumentParser(
        prog=f"train_{task}.py", description=f"Train the {task.upper()} network."
    )
    add_shared_flags(parser)
    parser.add_argument("--log", required=True, help="output directory")
    parser.add_argument("--approach", choices=APPROACHES[task], default="semantic_abstraction")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --log from its latest.pth when there is one, else start it "
        "(for torchrun --max-restarts and a scheduler's requeue)",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a --log that holds a run, deleting its checkpoints, stats and "
        "TensorBoard files",
    )
    return parser


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """What the original's scripts did after parsing: semantic_aware reads RGB only."""
    if getattr(args, "approach", None) == "semantic_aware":
        args.network_inputs = ["rgb"]
    return args


def _shared_parser() -> argparse.ArgumentParser:
    """A parser of the shared flags alone, none of them required."""
    parser = argparse.ArgumentParser()
    add_shared_flags(parser)
    for action in parser._actions:
        action.required = False
    return parser


def defaults() -> argparse.Namespace:
    """Every shared flag at its default (file_path left None)."""
    return _shared_parser().parse_args([])


# Keys of a stored Namespace that describe the run rather than the model (not compared on resume).
RUN_KEYS = {
    "log",
    "file_path",
    "load",
    "gpus",
    "device",
    "num_workers",
    "epochs",
    "save_freq",
    "eval_freq",
    "task",
    "clip_checkpoint",
    "resume",
    "overwrite",
    "max_minutes",
}


def load_args(path: str | Path) -> argparse.Namespace:
    """A training Namespace from args.pkl; flags the file lacks (older or original files) get their
    defaults, which are the original's behaviour."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path} not found: the training arguments are read from args.pkl beside the checkpoint"
        )
    try:
        with open(path, "rb") as f:
            stored = pickle.load(f)
    except Exception as error:  # pickle raises many types on a bad file
        raise InputError(
            f"{path} is not a readable args.pkl ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(stored, argparse.Namespace):
        raise InputError(f"{path} holds a {type(stored).__name__}, not a training Namespace")
    args = defaults()
    vars(args).update(vars(stored))
    args.scene_bounds = [[float(v) for v in corner] for corner in _as_corners(args.scene_bounds)]
    check_values(args, path)
    args.voxel_shape = [int(v) for v in args.voxel_shape]
    return args


def check_values(args: argparse.Namespace, source: Path) -> None:
    """Hold the values of a stored Namespace to the rules of the flags (`Bounded`): one InputError
    naming the file and the flag, where a command line would have stopped at parsing."""
    for action in _shared_parser()._actions:
        value = getattr(args, action.dest, None)
        if not isinstance(action.type, Bounded) or value is None:
            continue
        for item in _numbers(value):
            try:
                action.type.check(item)
            except argparse.ArgumentTypeError as error:
                raise InputError(f"{source}: {action.dest} {error}") from None


def _numbers(value) -> list:
    """The numbers of a value, a list (voxel_shape) or nested lists (scene_bounds) flattened."""
    if isinstance(value, list | tuple):
        return [number for item in value for number in _numbers(item)]
    return [value]


def _as_corners(bounds) -> list[list[float]]:
    flat = [
        float(v) for corner in bounds for v in (corner if hasattr(corner, "__len__") else [corner])
    ]
    if len(flat) != 6:
        raise InputError(f"scene_bounds must hold 6 numbers, got {bounds!r}")
    return [flat[:3], flat[3:]]


def differences(stored: argparse.Namespace, current: argparse.Namespace) -> list[str]:
    """'name: stored -> current' for every model/data flag that differs (resume check)."""
    lines = []
    for name in sorted(set(vars(stored)) | set(vars(current))):
        if name in RUN_KEYS:
            continue
        old, new = getattr(stored, name, None), getattr(current, name, None)
        if old != new:
            lines.append(f"{name}: {old!r} -> {new!r}")
    return lines


def save_args(args: argparse.Namespace, log_dir: str | Path) -> Path:
    """Write <log>/args.pkl atomically (a plain argparse.Namespace, as the original's)."""
    path = Path(log_dir) / ARGS_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(argparse.Namespace(**vars(args)), f)
    return path
