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
    spec: str  # where the quirk is described in ../shared/spec
    used_by: str  # "network", "dataset", "relevancy", "training" or "evaluation"
    original: str  # what the original does (the default)
    fixed: str  # what the fix does instead


FIXES = (
    Fix(
        "fix_scatter_reduce",
        "models.md 7 (B1), train-eval.md 6.17",
        "network",
        "input point features are mean-scattered into voxels although reduce_method says max",
        "scatter with reduce_method (max by default)",
    ),
    Fix(
        "fix_decoder_sampling",
        "models.md 7 (B2), train-eval.md 6.17",
        "network",
        "decoder normalises grid indices by G (not G-1) and swaps x and z for grid_sample",
        "reads in (z,y,x) order, each query from the voxel it lies in (half a voxel below its "
        "index, where the scatter stores it)",
    ),
    Fix(
        "fix_mean_relevancy",
        "data.md 1.5 (mean-row trap)",
        "dataset",
        "the mean map subtracted is always the rgb|ours block's, whatever block is read",
        "subtracts the mean map of the block that is read",
    ),
    Fix(
        "fix_vool_patch_mask_scale",
        "models.md 3 (B5)",
        "dataset",
        "VOOL patch masks compare the x50-scaled relevancy with patch_mask_cutoff",
        "compares the unscaled relevancy, as OVSSC does",
    ),
    Fix(
        "fix_ovssc_dr_args",
        "train-eval.md 1.1 (dr_pos / dr_orn / dr_scale)",
        "dataset",
        "OVSSC domain randomisation ignores --dr_* and uses 0.05 / 0.3 / 0.1",
        "OVSSC uses --dr_pos, --dr_orn, --dr_scale",
    ),
    Fix(
        "fix_crop_tiling",
        "relevancy.md 3.3",
        "relevancy",
        "crop offsets compare the column with the height, so some pixels get no crop at some scales",
        "every pixel is covered at every scale",
    ),
    Fix(
        "fix_lr_schedule_world_size",
        "train-eval.md 1.5, 6.2",
        "training",
        "the schedule's total steps ignore the world size, so N processes use 1/N of the cosine",
        "total steps = epochs x batches per process",
    ),
    Fix(
        "fix_rate_argmin",
        "train-eval.md 6.6",
        "training",
        "the epoch summary picks the argmax cutoff for false-positive/negative rates too",
        "picks the argmin cutoff for the two rates",
    ),
)


def names(used_by: str) -> tuple[str, ...]:
    """The fix names one component takes, e.g. names("dataset")."""
    return tuple(fix.name for fix in FIXES if fix.used_by == used_by)


def markdown_table() -> str:
    """The fidelity table of docs/differences.md."""
    rows = ["| flag | spec | original (default) | with the flag |", "|---|---|---|---|"]
    rows += [f"| `--{f.name}` | {f.spec} | {f.original} | {f.fixed} |" for f in FIXES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
