"""Print the paper's result tables from eval.py stats frames (docs/method.md#the-tables).

    python summarize.py                                  # released models/ layout, rich tables
    python summarize.py --tables ovssc --format markdown --ovssc ours=runs/new/ovssc_eval_stats.pkl
    python summarize.py --only-given --ovssc ours=run/ovssc_eval_stats.pkl \
        --ovssc lifted_relevancy=run/lifted_relevancy_eval_stats.pkl --json tables.json

Baselines that learn nothing (eval.py --baseline) are rows of the OVSSC and VOOL tables when given:
--ovssc lifted_relevancy=PATH, --ovssc all_in_frustum=PATH (they have no default file). --only-given
summarizes only the rows given; --json writes the figures as printed (IoU x 100, NaN as null).

Three tables, each one row per approach (VOOL: one row per approach and spatial relation, plus a mean):
    OVSSC THOR      Novel Room / Novel Visual / Novel Vocab / Novel Class, voxel 32^3 IoU x 100
    FULL VOOL THOR  the same four columns per spatial relation
    OVSSC NYU       per NYU class and their mean, voxel 60^3 IoU x 100

Selection rules (docs/method.md#the-one-cutoff-protocol): one best cutoff per approach, the argmax
over cutoffs of the metric's mean over all rows; Novel Room / Visual average per room first, Novel
Vocab / Class (OVSSC) per label first; Novel Class pools every non-train split.

Fixed against the original (docs/differences.md#bugs-fixed-outright): paths are options, a missing
or unreadable stats file leaves its row out with one line on stderr instead of stopping, NaN cells
print as "–" instead of crashing the to_csv round trip, and the VOOL mean row averages however many
relations there are.

Works on pandas frames alone: it imports neither torch nor dataset.py (vocab.py holds the synonym map
and the test classes; utils.py, torch-free, the error handler). Note that stats files are pickles: only read files you trust.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from utils import InputError, atomic_path, run_app
from vocab import PAD, PROVENANCE_KEY, SYNONYMS, TEST_CLASSES

THOR_METRIC = "voxel32x32x32_iou"
NYU_METRIC = "voxel60x60x60_iou"
NOVEL_COLUMNS = ("Novel Room", "Novel Visual", "Novel Vocab", "Novel Class")
# the split each THOR column reads (Novel Class pools every non-train split)
SPLIT_COLUMNS = {
    "unseen_instances": "Novel Room",
    "unseen_instances_dr": "Novel Visual",
    "unseen_instances_synonyms": "Novel Vocab",
}
NYU_CLASSES = (
    "ceiling",
    "floor",
    "wall",
    "window",
    "chair",
    "bed",
    "sofa",
    "table",
    "tvs",
    "furn",
    "objs",
)

# key -> (row label, path under --models-dir, None: no default file, a row only when given); the
# order is the table's row order. The baselines learn nothing (eval.py --baseline NAME).
BASELINES = {
    "lifted_relevancy": ("Baseline: lifted relevancy", None),
    "all_in_frustum": ("Baseline: all in frustum", None),
}
OVSSC_APPROACHES = {
    **BASELINES,
    "semaware": ("Semantic Aware", "semaware/ovssc/ovssc_eval_stats.pkl"),
    "chefer_et_al": ("SemAbs + [Chefer et al]", "chefer_et_al/ovssc/ovssc_eval_stats.pkl"),
    "ours": ("Ours", "ours/ovssc/ovssc_eval_stats.pkl"),
}
VOOL_APPROACHES = {
    **BASELINES,
    "semaware": ("Semantic Aware", "semaware/vool/vool_eval_stats.pkl"),
    "clipspatial": ("ClipSpatial", "clipspatial/vool/vool_eval_stats.pkl"),
    "chefer_et_al": ("SemAbs + [Chefer et al]", "chefer_et_al/vool/vool_eval_stats.pkl"),
    "ours": ("Ours", "ours/vool/vool_eval_stats.pkl"),
}
NYU_APPROACHES = {
    "supervised": ("Ours (Supervised)", "ours/ovssc/ovssc_eval_stats_supervised_nyu_merged.pkl"),
    "zeroshot": ("Ours (Zeroshot)", "ours/ovssc/ovssc_eval_stats_zs_nyu_merged.pkl"),
}
TABLES = ("ovssc", "vool", "nyu")
FORMATS = ("rich", "markdown", "csv")


@dataclass
class Table:
    """A rendered-format-free table: cells are str or float (NaN allowed)."""

    title: str
    columns: list[str]
    left_columns: int  # the first columns are text (left-justified), the rest numbers
    rows: list[list] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    section_after: list[bool] = field(default_factory=list)
    figures: dict[str, dict] = field(default_factory=dict)  # JSON key of approach -> its figures

    def add(self, cells: list, style: str = "white", end_section: bool = False) -> None:
        self.rows.append(cells)
        self.styles.append(style)
        self.section_after.append(end_section)


# ----------------------------------------------------------------------------- loading


def load_stats(
    path: Path,
    columns: list[str],
    notes: list[str],
    task: str,
    split_columns: dict[str, str] | None = None,
) -> pd.DataFrame | None:
    """The pickled frame at path, or None with one line in notes saying why it is left out: not a
    frame, another task's stats (`task`: ovssc or vool), no rows, columns missing. A frame from an
    eval.py that stopped before its last split is kept, with a note naming the splits missing and
    (`split_columns`: split -> its table column) what that leaves out."""
    if not path.is_file():
        notes.append(f"{path}: not found, row left out")
        return None
    try:
        frame = pd.read_pickle(path)
    except Exception as error:  # any unpickling failure means "not a stats frame"; say which
        notes.append(
            f"{path}: not a pickled DataFrame ({type(error).__name__}: {error}), row left out"
        )
        return None
    if not isinstance(frame, pd.DataFrame):
        notes.append(f"{path}: holds a {type(frame).__name__}, not a DataFrame, row left out")
        return None
    if len(frame) == 0:
        notes.append(f"{path}: no rows, row left out")
        return None
    made_by = frame.attrs.get(PROVENANCE_KEY)
    made_by = made_by if isinstance(made_by, dict) else {}
    other = made_by.get("task") or stats_task(frame)
    if other is not None and other != task:
        notes.append(
            f"{path}: {other.upper()} stats (eval.py --task {other}), not {task.upper()}'s, row "
            "left out"
        )
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hint = ""
        if NYU_METRIC in missing:
            hint = " (the NYU table needs 60^3 voxel metrics, which eval.py does not compute; pick another with --nyu-metric)"
        notes.append(f"{path}: no column {', '.join(map(repr, missing))}{hint}, row left out")
        return None
    unfinished = unfinished_note(frame, made_by.get("scenes"), split_columns or {})
    if unfinished is not None:
        notes.append(f"{path}: {unfinished}")
    return frame


def stats_task(frame: pd.DataFrame) -> str | None:
    """The task whose eval.py rows a frame holds, by its columns (VOOL rows name a relation)."""
    if "spatial_relation_name" in frame.columns:
        return "vool"
    return "ovssc" if "label" in frame.columns else None


def unfinished_note(
    frame: pd.DataFrame, scenes: dict | None, split_columns: dict[str, str]
) -> str | None:
    """What an eval.py stopped before its last split left out: its provenance lists the splits it
    was to score (`scenes`: split -> scene files); None when every one with scenes is there."""
    if not isinstance(scenes, dict) or "split" not in frame.columns:
        return None
    planned = [split for split, names in scenes.items() if len(names)]
    missing = [split for split in planned if split not in set(frame["split"])]
    if not missing:
        return None
    scored = f"{len(planned) - len(missing)} of {len(planned)} splits"
    left_out = [f"{split_columns[split]} empty" for split in missing if split in split_columns]
    if split_columns:  # the THOR tables' Novel Class pools every split
        left_out.append(f"Novel Class from {scored}")
    effect = f": {', '.join(left_out)}" if left_out else ""
    return (
        f"an unfinished eval, {scored} scored (no {', '.join(missing)}){effect}; rerun its eval.py "
        "command to finish it"
    )


def room_ids(scene_id: pd.Series) -> pd.Series:
    """'00123|FloorPlan26_physics' -> 26: the int after "FloorPlan" in the first "_" token."""
    text = scene_id.astype(str).str.split("_").str[0].str.split("FloorPlan").str[1]
    rooms = pd.to_numeric(text, errors="coerce")
    if rooms.isna().any():
        bad = scene_id[rooms.isna()].iloc[0]
        raise InputError(f"scene_id {bad!r} has no FloorPlan<room> in its first '_' token")
    return rooms.astype(int)


def at_best_cutoff(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows at the cutoff whose mean metric over all rows is largest; none if all NaN."""
    means = frame.groupby("cutoff")[metric].mean().dropna()
    if means.empty:
        return frame.iloc[:0]
    return frame[frame["cutoff"] == means.idxmax()]


def mean_of_group_means(rows: pd.DataFrame, by, score: str, skipna: bool) -> float:
    """Mean per group (NaN skipped inside a group), then the mean over groups: plain (NaN if a
    group's mean is NaN) or nanmean (skipna=True). NaN when there are no rows."""
    if rows.empty:
        return math.nan
    return float(rows.groupby(by)[score].mean().mean(skipna=skipna))


# ----------------------------------------------------------------------------- the three tables


def ovssc_scores(frame: pd.DataFrame, metric: str = THOR_METRIC) -> dict[str, float]:
    """One OVSSC THOR row: the four Novel columns, metric x 100 at the best cutoff."""
    rows = at_best_cutoff(frame, metric).copy()
    rows["score"] = rows[metric] * 100
    rows["room_id"] = room_ids(rows["scene_id"])
    novel_class = rows["label"].isin(TEST_CLASSES)
    novel_vocab = rows["label"].isin(set(SYNONYMS.values()))
    split = rows["split"]
    return {
        "Novel Room": mean_of_group_means(
            rows[(split == "unseen_instances") & ~novel_class], "room_id", "score", skipna=False
        ),
        "Novel Visual": mean_of_group_means(
            rows[(split == "unseen_instances_dr") & ~novel_class], "room_id", "score", skipna=False
        ),
        "Novel Vocab": mean_of_group_means(
            rows[(split == "unseen_instances_synonyms") & novel_vocab],
            "label",
            "score",
            skipna=False,
        ),
        "Novel Class": mean_of_group_means(
            rows[novel_class & (split != "train")], "label", "score", skipna=False
        ),
    }


def vool_relations(frame: pd.DataFrame) -> list[str]:
    """Spatial relations in order of first appearance, [pad] skipped."""
    return [r for r in frame["spatial_relation_name"].unique() if r != PAD]


def vool_scores(
    frame: pd.DataFrame, relations: list[str], metric: str = THOR_METRIC
) -> pd.DataFrame:
    """FULL VOOL THOR rows of one approach: index relations + "mean", columns NOVEL_COLUMNS."""
    rows = at_best_cutoff(frame, metric).copy()
    rows["score"] = rows[metric] * 100
    rows["room_id"] = room_ids(rows["scene_id"])
    vocab = set(SYNONYMS.values())
    novel_vocab = rows["target_obj_name"].isin(vocab) | rows["reference_obj_name"].isin(vocab)
    novel_class = rows["target_obj_name"].isin(TEST_CLASSES) | rows["reference_obj_name"].isin(
        TEST_CLASSES
    )
    split = rows["split"]
    table = {}
    for relation in relations:
        rel = rows["spatial_relation_name"] == relation
        vocab_rows = rows[rel & (split == "unseen_instances_synonyms") & novel_vocab]
        class_rows = rows[rel & novel_class & (split != "train")]
        table[relation] = {
            "Novel Room": mean_of_group_means(
                rows[rel & (split == "unseen_instances") & ~novel_class], "room_id", "score", True
            ),
            "Novel Visual": mean_of_group_means(
                rows[rel & (split == "unseen_instances_dr") & ~novel_class],
                "room_id",
                "score",
                True,
            ),
            "Novel Vocab": float(vocab_rows["score"].mean()),  # nanmean over rows, NaN if none
            "Novel Class": float(class_rows["score"].mean()),
        }
    out = pd.DataFrame.from_dict(table, orient="index", columns=list(NOVEL_COLUMNS))
    # the per-approach mean over its relation rows (plain: NaN if a relation is NaN)
    out.loc["mean"] = out.mean(skipna=False) if len(out) else math.nan
    return out


def nyu_scores(frame: pd.DataFrame, metric: str = NYU_METRIC) -> dict[str, float]:
    """One OVSSC NYU row: per-class means at the best cutoff and the mean over every label."""
    rows = at_best_cutoff(frame, metric)
    per_label = (rows[metric] * 100).groupby(rows["label"]).mean()
    scores = {name.title(): float(per_label.get(name, math.nan)) for name in NYU_CLASSES}
    scores["Mean"] = float(per_label.mean()) if len(per_label) else math.nan
    return scores


def _resolve(
    approaches: dict, models_dir: Path, overrides: dict[str, Path], only_given: bool
) -> list[tuple[str, str, Path]]:
    """(key, row label, stats path) per row: the given path, else the default file under
    models_dir; approaches without a default file (baselines), or every one not given when
    only_given, have no row."""
    rows = []
    for key, (label, default) in approaches.items():
        if key in overrides:
            rows.append((key, label, overrides[key]))
        elif default is not None and not only_given:
            rows.append((key, label, models_dir / default))
    return rows


def json_key(key: str) -> str:
    """An approach's key in the JSON: its summarize key, baselines as "baseline: <name>"."""
    return f"baseline: {key.replace('_', ' ')}" if key in BASELINES else key


def json_figures(scores: dict[str, float]) -> dict[str, float]:
    """{"Novel Room": x, ...} -> {"novel_room": x, ...}."""
    return {column.lower().replace(" ", "_"): float(value) for column, value in scores.items()}


def _scores_or_note(score, path: Path, notes: list[str], *args):
    """score(*args), or None with a note naming the file when its contents are unusable."""
    try:
        return score(*args)
    except InputError as error:
        notes.append(f"{path}: {error}, row left out")
        return None


def ovssc_table(paths: list[tuple[str, str, Path]], metric: str, notes: list[str]) -> Table:
    table = Table("OVSSC THOR", ["Approach", *NOVEL_COLUMNS], left_columns=1)
    needed = ["scene_id", "label", "split", "cutoff", metric]
    for key, name, path in paths:
        frame = load_stats(path, needed, notes, "ovssc", SPLIT_COLUMNS)
        if frame is None:
            continue
        scores = _scores_or_note(ovssc_scores, path, notes, frame, metric)
        if scores is None:
            continue
        style = "green" if name == "Ours" else "white"
        table.add(
            [name, *(scores[c] for c in NOVEL_COLUMNS)],
            style,
            end_section=name == "SemAbs + [Chefer et al]",
        )
        table.figures[json_key(key)] = json_figures(scores)
    return table


def vool_table(paths: list[tuple[str, str, Path]], metric: str, notes: list[str]) -> Table:
    table = Table(
        "FULL VOOL THOR", ["Approach", "Spatial Relation", *NOVEL_COLUMNS], left_columns=2
    )
    needed = [
        "scene_id",
        "target_obj_name",
        "reference_obj_name",
        "spatial_relation_name",
        "split",
        "cutoff",
        metric,
    ]
    loaded = [
        (key, name, path, load_stats(path, needed, notes, "vool", SPLIT_COLUMNS))
        for key, name, path in paths
    ]
    loaded = [row for row in loaded if row[3] is not None]
    if not loaded:
        return table
    # relations come from the Ours frame, as the original's, else from the first approach loaded
    frames = {name: frame for _, name, _, frame in loaded}
    relations = vool_relations(frames.get("Ours", loaded[0][3]))
    for key, name, path, frame in loaded:
        scores = _scores_or_note(vool_scores, path, notes, frame, relations, metric)
        if scores is None:
            continue
        table.figures[json_key(key)] = {
            **json_figures(scores.loc["mean"].to_dict()),
            "relations": {
                relation: json_figures(scores.loc[relation].to_dict()) for relation in relations
            },
        }
        style = "green" if name == "Ours" else "white"
        for i, (relation, values) in enumerate(scores.iterrows()):
            table.add(
                [name if i == 0 else "", relation, *values.tolist()],
                style,
                end_section=relation == "mean" and i == len(scores) - 1,
            )
    return table


def nyu_table(paths: list[tuple[str, str, Path]], metric: str, notes: list[str]) -> Table:
    columns = [*(c.title() for c in NYU_CLASSES), "Mean"]
    table = Table("OVSSC NYU", ["Approach", *columns], left_columns=1)
    for key, name, path in paths:
        frame = load_stats(path, ["label", "cutoff", metric], notes, "ovssc")
        if frame is None:
            continue
        scores = nyu_scores(frame, metric)
        style = "green" if name == "Ours (Zeroshot)" else "white"
        table.add(
            [name, *(scores[c] for c in columns)], style, end_section=name == "Ours (Supervised)"
        )
        table.figures[json_key(key)] = json_figures(scores)
    return table


# ----------------------------------------------------------------------------- rendering


def cell_text(value, nan: str = "–") -> str:
    if isinstance(value, str):
        return value
    return nan if value is None or math.isnan(value) else f"{value:.1f}"


def render_rich(table: Table, console: Console) -> None:
    out = RichTable(title=table.title, box=box.MINIMAL_DOUBLE_HEAD)
    for i, column in enumerate(table.columns):
        out.add_column(column, justify="left" if i < table.left_columns else "right")
    for cells, style, end in zip(table.rows, table.styles, table.section_after):
        out.add_row(*(cell_text(c) for c in cells), style=style, end_section=end)
    console.print(out)


def render_markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |"]
    lines.append(
        "|"
        + "|".join("---" if i < table.left_columns else "---:" for i in range(len(table.columns)))
        + "|"
    )
    lines += ["| " + " | ".join(cell_text(c) for c in cells) + " |" for cells in table.rows]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", *table.columns])
    approach = ""
    for cells in table.rows:
        approach = cells[0] or approach  # CSV repeats the approach on every row (machine-readable)
        cells = [approach, *cells[1:]]
        writer.writerow([table.title, *(cell_text(c, nan="nan") for c in cells)])
    return buffer.getvalue()


def null_nan(value):
    """The figures with every NaN as None (JSON null), nested dicts kept."""
    if isinstance(value, dict):
        return {key: null_nan(item) for key, item in value.items()}
    return None if math.isnan(value) else value


def write_json(path: Path, names: list[str], tables: list[Table]) -> None:
    """{"ovssc": {approach: {"novel_room": x, ...}}, "vool": {...}, ...} (IoU x 100, NaN as null),
    written atomically."""
    figures = {name: null_nan(table.figures) for name, table in zip(names, tables)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(figures, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- command line


def parse_overrides(entries: list[str], approaches: dict, option: str) -> dict[str, Path]:
    """["ours=path", ...] -> {"ours": Path}; unknown keys and malformed entries are errors."""
    out = {}
    for entry in entries:
        key, sep, path = entry.partition("=")
        if not sep or not path:
            raise InputError(f"{option} takes APPROACH=PATH, got {entry!r}")
        if key not in approaches:
            raise InputError(f"{option}: unknown approach {key!r}; known: {', '.join(approaches)}")
        out[key] = Path(path)
    return out


def summarize(
    models_dir: Path,
    tables: list[str],
    overrides: dict[str, dict[str, Path]],
    thor_metric: str = THOR_METRIC,
    nyu_metric: str = NYU_METRIC,
    only_given: bool = False,
) -> tuple[list[Table], list[str]]:
    """Build the requested tables; the notes say which stats files were left out and why."""
    notes: list[str] = []
    builders = {
        "ovssc": (ovssc_table, OVSSC_APPROACHES, thor_metric),
        "vool": (vool_table, VOOL_APPROACHES, thor_metric),
        "nyu": (nyu_table, NYU_APPROACHES, nyu_metric),
    }
    out = []
    for name in tables:
        build, approaches, metric = builders[name]
        paths = _resolve(approaches, models_dir, overrides.get(name, {}), only_given)
        out.append(build(paths, metric, notes))
    return out, notes


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    models_dir: Annotated[Path, typer.Option(help="root of the released models/ layout")] = Path(
        "models"
    ),
    tables: Annotated[
        str, typer.Option(help="comma-separated subset of ovssc,vool,nyu")
    ] = "ovssc,vool,nyu",
    format: Annotated[str, typer.Option("--format", help="rich, markdown or csv")] = "rich",
    ovssc: Annotated[
        list[str] | None,
        typer.Option(
            help="APPROACH=PATH stats file replacing the default; APPROACH in "
            f"{', '.join(OVSSC_APPROACHES)}"
        ),
    ] = None,
    vool: Annotated[
        list[str] | None,
        typer.Option(help=f"APPROACH=PATH; APPROACH in {', '.join(VOOL_APPROACHES)}"),
    ] = None,
    nyu: Annotated[
        list[str] | None,
        typer.Option(help=f"APPROACH=PATH; APPROACH in {', '.join(NYU_APPROACHES)}"),
    ] = None,
    thor_metric: Annotated[
        str, typer.Option(help="metric column of the THOR tables")
    ] = THOR_METRIC,
    nyu_metric: Annotated[
        str,
        typer.Option(
            help="metric column of the NYU table (eval.py writes voxel64x64x64_iou, not 60^3)"
        ),
    ] = NYU_METRIC,
    only_given: Annotated[
        bool, typer.Option(help="only the rows named with --ovssc/--vool/--nyu (no default files)")
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="also write the tables' figures (IoU x 100, NaN as null) as JSON"
        ),
    ] = None,
) -> None:
    """Print the OVSSC THOR, FULL VOOL THOR and OVSSC NYU tables (docs/method.md#the-tables)."""
    if format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if json_path is not None and json_path.is_dir():
        raise InputError(f"--json {json_path} is a folder: give the JSON file's name")
    overrides = {
        "ovssc": parse_overrides(ovssc or [], OVSSC_APPROACHES, "--ovssc"),
        "vool": parse_overrides(vool or [], VOOL_APPROACHES, "--vool"),
        "nyu": parse_overrides(nyu or [], NYU_APPROACHES, "--nyu"),
    }
    chosen = chosen_tables(tables, overrides, only_given)
    built, notes = summarize(models_dir, chosen, overrides, thor_metric, nyu_metric, only_given)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not any(table.rows for table in built):
        raise InputError(
            f"no stats file could be read for {','.join(chosen)} (see the notes above)"
        )
    print_tables(built, format)
    if json_path is not None:
        write_json(json_path, chosen, built)


def chosen_tables(tables: str, overrides: dict[str, dict], only_given: bool) -> list[str]:
    """The --tables names; with only_given, those of them with a row given."""
    chosen = [t.strip() for t in tables.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TABLES]
    if unknown or not chosen:
        raise InputError(
            f"--tables takes a comma-separated subset of {','.join(TABLES)}, got {tables!r}"
        )
    if only_given:
        chosen = [t for t in chosen if overrides[t]]
        if not chosen:
            raise InputError(
                f"--only-given needs an APPROACH=PATH (--ovssc, --vool, --nyu) for {tables}"
            )
    return chosen


def print_tables(built: list[Table], format: str) -> None:
    console = Console()
    for table in built:
        if not table.rows:
            print(f"note: {table.title}: no rows", file=sys.stderr)
            continue
        if format == "rich":
            render_rich(table, console)
        elif format == "markdown":
            print(render_markdown(table))
        else:
            print(render_csv(table))


if __name__ == "__main__":
    run_app(app)
