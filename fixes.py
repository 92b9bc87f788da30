"""Every behaviour fix of the original's number-changing quirks, in one table.

The original's behaviour is the default everywhere, so that the released checkpoints reproduce their
published numbers; each fix is a boolean named `fix_<what>`, off by default. This table is the one
place they are declared: the network constructors and `dataset.DatasetConfig` take them as keyword
arguments of the same name, the training, evaluation and visualization scripts get a
`--fix_<what>` flag per row (options.py), `generate_relevancy.py` gets `--fix-crop-tiling`, and the
fidelity table of docs/differences.md is `python fixes.py` (markdown).

Bugs that only hurt users (crashes, GPU-only code, flags that cannot be set) are fixed outright and
are not in this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fix:
    name: str  # keyword argument and flag name
    where: str  # the docs section that describes the quirk, "<page>.md#<anchor>" inside docs/
    used_by: str  # "network", "dataset", "relevancy", "training" or "evaluation"
    original: str  # what the original does (the default)
    fixed: str  # what the fix does instead


FIXES = (
    Fix(
        "fix_scatter_reduce",
        "method.md#the-voxel-grid",
        "network",
        "input point features are mean-scattered into voxels although reduce_method says max",
        "scatter with reduce_method (max by default)",
    ),
    Fix(
        "fix_decoder_sampling",
        "method.md#implicit-decoder",
        "network",
        "decoder normalises grid indices by G (not G-1) and swaps x and z for grid_sample",
        "reads in (z,y,x) order, each query from the voxel it lies in (half a voxel below its "
        "index, where the scatter stores it)",
    ),
    Fix(
        "fix_mean_relevancy",
        "data.md#the-mean-row-trap",
        "dataset",
        "the mean map subtracted is always the rgb|ours block's, whatever block is read",
        "subtracts the mean map of the block that is read",
    ),
    Fix(
        "fix_vool_patch_mask_scale",
        "method.md#from-stored-maps-to-point-features",
        "dataset",
        "VOOL patch masks compare the x50-scaled relevancy with patch_mask_cutoff",
        "compares the unscaled relevancy, as OVSSC does",
    ),
    Fix(
        "fix_ovssc_dr_args",
        "method.md#sampling-domain-randomisation-and-the-frustum-mask",
        "dataset",
        "OVSSC domain randomisation ignores --dr_* and uses 0.05 / 0.3 / 0.1",
        "OVSSC uses --dr_pos, --dr_orn, --dr_scale",
    ),
    Fix(
        "fix_crop_tiling",
        "method.md#crops-scales-copies-and-flips",
        "relevancy",
        "crop offsets compare the column with the height, so some pixels get no crop at some scales",
        "every pixel is covered at every scale",
    ),
    Fix(
        "fix_lr_schedule_world_size",
        "method.md#lamb-and-the-learning-rate-schedule",
        "training",
        "the schedule's total steps ignore the world size, so N processes use 1/N of the cosine",
        "total steps = epochs x batches per process",
    ),
    Fix(
        "fix_rate_argmin",
        "method.md#the-epoch-loop",
        "training",
        "the epoch summary picks the argmax cutoff for false-positive/negative rates too",
        "picks the argmin cutoff for the two rates",
    ),
)


def names(used_by: str) -> tuple[str, ...]:
    """The fix names one component takes, e.g. names("dataset")."""
    return tuple(fix.name for fix in FIXES if fix.used_by == used_by)


def section_link(where: str) -> str:
    """Link to a docs section from a page of docs/: "[method.md: the voxel grid](...)"."""
    page, anchor = where.split("#")
    return f"[{page}: {anchor.replace('-', ' ')}]({where})"


def markdown_table() -> str:
    """The fidelity table of docs/differences.md."""
    rows = ["| flag | described in | original (default) | with the flag |", "|---|---|---|---|"]
    rows += [
        f"| `--{f.name}` | {section_link(f.where)} | {f.original} | {f.fixed} |" for f in FIXES
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
