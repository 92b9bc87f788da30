"""summarize.py on hand-built stats frames; expected numbers are worked out by hand below from the
rules of docs/method.md#the-tables."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import summarize
from utils import InputError

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")
METRIC = "voxel32x32x32_iou"


def scene(room, seed=1):
    return f"{seed:05d}|FloorPlan{room}_physics"


# (split, scene_id, label, iou at cutoff -1.0, iou at cutoff -0.5)
OVSSC_ROWS = [
    ("unseen_instances", scene(26, 1), "sofa", 0.2, 1.0),
    ("unseen_instances", scene(26, 1), "bed", 0.4, 1.0),
    ("unseen_instances", scene(26, 1), "mug", 0.9, 1.0),  # novel class: not in Novel Room
    ("unseen_instances", scene(26, 2), "sofa", 0.6, 1.0),  # same room, other seed
    ("unseen_instances", scene(301, 3), "bed", 0.1, 1.0),
    ("unseen_instances", scene(301, 3), "chair", NAN, NAN),  # NaN skipped inside its room
    ("unseen_instances_dr", scene(26, 1), "sofa", 0.3, 0.0),
    ("unseen_instances_dr", scene(301, 3), "bed", 0.5, 0.0),
    ("unseen_instances_dr", scene(301, 3), "pot", 0.8, 0.0),  # novel class
    ("unseen_instances_synonyms", scene(26, 1), "couch", 0.5, 0.0),
    ("unseen_instances_synonyms", scene(26, 2), "couch", 0.7, 0.0),
    ("unseen_instances_synonyms", scene(26, 1), "tv", 0.2, 0.0),
    ("unseen_instances_synonyms", scene(26, 1), "bed", 0.9, 0.0),  # not a synonym: not Novel Vocab
    ("unseen_instances_synonyms", scene(26, 1), "mug", 0.4, 0.0),  # novel class
    ("train", scene(1, 9), "mug", 0.0, 0.0),  # train rows never count
]
# Best cutoff over ALL rows: mean at -1.0 = 6.5 / 14 = 0.464 > mean at -0.5 = 5 / 14 = 0.357
# (unseen_instances alone would pick -0.5, giving Novel Room 100: the trap).
# At -1.0, x 100:
#   Novel Room   rooms 26: (20+40+60)/3 = 40, 301: 10 (chair NaN skipped)  -> (40+10)/2 = 25
#   Novel Visual rooms 26: 30, 301: 50 (pot excluded)                     -> 40
#   Novel Vocab  couch (50+70)/2 = 60, tv 20 (bed and mug excluded)       -> 40
#   Novel Class  mug (90+40)/2 = 65 (train 0 excluded), pot 80            -> 72.5
OURS_OVSSC = {"Novel Room": 25.0, "Novel Visual": 40.0, "Novel Vocab": 40.0, "Novel Class": 72.5}
# The Semantic Aware frame is the same without the dr split: test_ovssc_without_dr_split_gives_nan_cell.


def ovssc_frame(rows=OVSSC_ROWS):
    records = []
    for split, scene_id, label, at_m1, at_m05 in rows:
        for cutoff, iou in ((-1.0, at_m1), (-0.5, at_m05)):
            records.append(
                dict(
                    scene_id=scene_id,
                    label=label,
                    point_iou=0.0,
                    **{METRIC: iou},
                    cutoff=cutoff,
                    split=split,
                )
            )
    return pd.DataFrame(records)


# VOOL, one cutoff. (split, scene, target, reference, relation, iou)
OURS_VOOL_ROWS = [
    ("unseen_instances", scene(26, 1), "apple", "table", "on", 0.2),
    ("unseen_instances", scene(26, 2), "apple", "table", "on", 0.4),
    ("unseen_instances", scene(301, 3), "bowl", "sink", "on", 0.6),
    ("unseen_instances", scene(26, 1), "mug", "table", "on", 0.9),  # novel class (target)
    ("unseen_instances", scene(26, 1), "apple", "box", "in", 0.5),
    ("unseen_instances", scene(26, 1), "[pad]", "[pad]", "[pad]", NAN),
    (
        "unseen_instances",
        scene(301, 3),
        "apple",
        "box",
        "in",
        NAN,
    ),  # room 301 all NaN: nanmean skips
    ("unseen_instances", scene(26, 1), "cup", "pot", "behind", 0.3),  # novel class (reference)
    ("unseen_instances_dr", scene(26, 1), "apple", "table", "on", 0.1),
    ("unseen_instances_synonyms", scene(26, 1), "tv", "table", "on", 0.4),
    ("unseen_instances_synonyms", scene(26, 1), "apple", "couch", "on", 0.6),
    ("unseen_instances_synonyms", scene(26, 1), "apple", "table", "on", 0.8),  # no synonym
    ("unseen_instances_synonyms", scene(26, 1), "tv", "box", "in", 0.2),
    ("train", scene(1, 9), "mug", "table", "on", 0.0),
]
# Relations of Ours in order of appearance: on, in, behind ([pad] skipped). x 100:
#   on:     Room rooms 26 (20+40)/2=30, 301 60 -> 45; Visual 10; Vocab (40+60)/2 = 50; Class 90
#   in:     Room room 26: 50, room 301 NaN -> nanmean 50; Visual –; Vocab 20; Class –
#   behind: Room – (only a novel-class row); Visual –; Vocab –; Class 30
#   mean:   plain mean over the three relations: NaN wherever one is NaN, so all –
OURS_VOOL = [
    ("on", [45.0, 10.0, 50.0, 90.0]),
    ("in", [50.0, NAN, 20.0, NAN]),
    ("behind", [NAN, NAN, NAN, 30.0]),
    ("mean", [NAN, NAN, NAN, NAN]),
]
# ClipSpatial: per relation (room, visual, vocab, novel class) rows; "left" is not a relation of Ours
CLIP_VALUES = {
    "in": (0.1, 0.2, 0.3, 0.4),
    "on": (0.5, 0.6, 0.7, 0.8),
    "behind": (0.0, 0.1, 0.2, 0.6),
    "left": (1.0, 1.0, 1.0, 1.0),
}
#   mean: Room (50+10+0)/3 = 20, Visual (60+20+10)/3 = 30, Vocab (70+30+20)/3 = 40, Class (80+40+60)/3 = 60
CLIP_VOOL = [
    ("on", [50.0, 60.0, 70.0, 80.0]),
    ("in", [10.0, 20.0, 30.0, 40.0]),
    ("behind", [0.0, 10.0, 20.0, 60.0]),
    ("mean", [20.0, 30.0, 40.0, 60.0]),
]


def vool_frame(rows):
    return pd.DataFrame(
        [
            dict(
                scene_id=s,
                target_obj_name=t,
                reference_obj_name=r,
                spatial_relation_name=rel,
                **{METRIC: v},
                cutoff=-1.0,
                split=split,
            )
            for split, s, t, r, rel, v in rows
        ]
    )


def clip_rows():
    rows = []
    for rel, (room, visual, vocab, novel) in CLIP_VALUES.items():
        rows += [
            ("unseen_instances", scene(26), "apple", "table", rel, room),
            ("unseen_instances_dr", scene(26), "apple", "table", rel, visual),
            ("unseen_instances_synonyms", scene(26), "tv", "table", rel, vocab),
            ("unseen_instances", scene(26), "mug", "table", rel, novel),
        ]
    return rows


# NYU: at cutoff 0.0 ceiling (0.2, 0.4) -> 30, floor 50, bed 10; Mean over labels (30+50+10)/3 = 30.
# cutoff -1.0 is 0.05 everywhere (worse). Other classes absent -> –.
def nyu_frame(metric="voxel60x60x60_iou"):
    rows = [("ceiling", 0.2), ("ceiling", 0.4), ("floor", 0.5), ("bed", 0.1)]
    return pd.DataFrame(
        [dict(label=lab, **{metric: v}, cutoff=0.0) for lab, v in rows]
        + [dict(label=lab, **{metric: 0.05}, cutoff=-1.0) for lab, _ in rows]
    )


@pytest.fixture
def models(tmp_path):
    """A models/ tree with Ours and Semantic Aware (OVSSC), Ours and ClipSpatial (VOOL), both NYU."""
    root = tmp_path / "models"
    for rel, frame in {
        "ours/ovssc/ovssc_eval_stats.pkl": ovssc_frame(),
        "semaware/ovssc/ovssc_eval_stats.pkl": ovssc_frame(
            [r for r in OVSSC_ROWS if r[0] != "unseen_instances_dr"]
        ),
        "ours/vool/vool_eval_stats.pkl": vool_frame(OURS_VOOL_ROWS),
        "clipspatial/vool/vool_eval_stats.pkl": vool_frame(clip_rows()),
        "ours/ovssc/ovssc_eval_stats_supervised_nyu_merged.pkl": nyu_frame(),
        "ours/ovssc/ovssc_eval_stats_zs_nyu_merged.pkl": nyu_frame("voxel64x64x64_iou"),
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        frame.to_pickle(root / rel)
    return root


def assert_cells(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, float) and math.isnan(e):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(e)


def test_ovssc_scores_selection_rules():
    scores = summarize.ovssc_scores(ovssc_frame())
    assert_cells([scores[c] for c in summarize.NOVEL_COLUMNS], list(OURS_OVSSC.values()))


def test_ovssc_without_dr_split_gives_nan_cell():
    # Without dr rows: mean at -1.0 = (2.2 + 2.7 + 0) / 11 = 0.445, at -0.5 = 5 / 11 = 0.4545:
    # -0.5 wins. There: Room rooms 26 100, 301 100 -> 100; Visual NaN; Vocab couch 0, tv 0 -> 0;
    # Novel Class mug (100 + 0) / 2 = 50.
    frame = ovssc_frame([r for r in OVSSC_ROWS if r[0] != "unseen_instances_dr"])
    scores = summarize.ovssc_scores(frame)
    assert_cells([scores[c] for c in summarize.NOVEL_COLUMNS], [100.0, NAN, 0.0, 50.0])


def test_plain_mean_over_rooms_propagates_an_all_nan_room():
    rows = [r for r in OVSSC_ROWS if r[2] != "bed" or r[0] != "unseen_instances"]
    rows = [
        (*r[:3], NAN if "301" in r[1] and r[0] == "unseen_instances" else r[3], r[4]) for r in rows
    ]
    # room 301 of unseen_instances now has only chair (NaN) -> its mean NaN -> OVSSC plain mean NaN
    assert math.isnan(summarize.ovssc_scores(ovssc_frame(rows))["Novel Room"])


def test_vool_scores_relations_and_mean_row():
    ours = vool_frame(OURS_VOOL_ROWS)
    relations = summarize.vool_relations(ours)
    assert relations == ["on", "in", "behind"]
    for frame, expected in ((ours, OURS_VOOL), (vool_frame(clip_rows()), CLIP_VOOL)):
        table = summarize.vool_scores(frame, relations)
        assert table.index.tolist() == [r for r, _ in expected]
        assert list(table.columns) == list(summarize.NOVEL_COLUMNS)
        for relation, cells in expected:
            assert_cells(table.loc[relation].tolist(), cells)


def test_nyu_scores():
    scores = summarize.nyu_scores(nyu_frame())
    assert scores["Ceiling"] == pytest.approx(30.0)
    assert scores["Floor"] == pytest.approx(50.0)
    assert scores["Bed"] == pytest.approx(10.0)
    assert math.isnan(scores["Wall"])
    assert scores["Mean"] == pytest.approx(30.0)
    assert list(scores) == [c.title() for c in summarize.NYU_CLASSES] + ["Mean"]


def test_tables_markdown_and_notes(models):
    tables, notes = summarize.summarize(models, ["ovssc", "vool", "nyu"], {})
    ovssc, vool, nyu = tables
    # missing approaches are left out, each with a note naming its file
    assert [row[0] for row in ovssc.rows] == ["Semantic Aware", "Ours"]
    assert any("chefer_et_al/ovssc/ovssc_eval_stats.pkl: not found" in n for n in notes)
    assert any("semaware/vool/vool_eval_stats.pkl: not found" in n for n in notes)
    # the zeroshot NYU file has 64^3 columns only: a clear note, row left out
    assert any("zs_nyu_merged.pkl: no column 'voxel60x60x60_iou'" in n for n in notes)
    assert [row[0] for row in nyu.rows] == ["Ours (Supervised)"]
    md = summarize.render_markdown(ovssc)
    assert "| Ours | 25.0 | 40.0 | 40.0 | 72.5 |" in md
    assert "| Semantic Aware | 100.0 | – | 0.0 | 50.0 |" in md
    assert ovssc.styles == ["white", "green"]
    md = summarize.render_markdown(vool)
    assert "| ClipSpatial | on | 50.0 | 60.0 | 70.0 | 80.0 |" in md
    assert "|  | mean | 20.0 | 30.0 | 40.0 | 60.0 |" in md
    assert "| Ours | on | 45.0 | 10.0 | 50.0 | 90.0 |" in md
    assert "|  | in | 50.0 | – | 20.0 | – |" in md
    assert [row[1] for row in vool.rows] == ["on", "in", "behind", "mean"] * 2
    assert vool.section_after == [False, False, False, True] * 2
    md = summarize.render_markdown(nyu)
    assert "| Ours (Supervised) | 30.0 | 50.0 | – | – | – | 10.0 | – | – | – | – | – | 30.0 |" in md
    csv_text = summarize.render_csv(vool)
    assert "FULL VOOL THOR,Ours,in,50.0,nan,20.0,nan" in csv_text


def test_override_and_other_metric(models, tmp_path):
    frame = ovssc_frame()
    frame.to_pickle(tmp_path / "mine.pkl")
    overrides = {
        "ovssc": summarize.parse_overrides(
            [f"chefer_et_al={tmp_path / 'mine.pkl'}"], summarize.OVSSC_APPROACHES, "--ovssc"
        )
    }
    (ovssc,), _ = summarize.summarize(models, ["ovssc"], overrides)
    assert [row[0] for row in ovssc.rows] == ["Semantic Aware", "SemAbs + [Chefer et al]", "Ours"]
    assert ovssc.section_after == [False, True, False]
    (nyu,), notes = summarize.summarize(models, ["nyu"], {}, nyu_metric="voxel64x64x64_iou")
    assert [row[0] for row in nyu.rows] == ["Ours (Zeroshot)"] and nyu.styles == ["green"]
    with pytest.raises(InputError, match="unknown approach 'mine'"):
        summarize.parse_overrides(["mine=x.pkl"], summarize.OVSSC_APPROACHES, "--ovssc")


def test_bad_files_get_one_line(models):
    bad = models / "ours/ovssc/ovssc_eval_stats.pkl"
    bad.write_text("not a pickle")
    pd.Series([1, 2]).to_pickle(models / "semaware/ovssc/ovssc_eval_stats.pkl")
    (table,), notes = summarize.summarize(models, ["ovssc"], {})
    assert table.rows == []
    assert any(n.startswith(f"{bad}: not a pickled DataFrame") for n in notes)
    assert any("semaware/ovssc/ovssc_eval_stats.pkl: holds a Series" in n for n in notes)
    ovssc_frame().drop(columns=["split"]).to_pickle(bad)
    _, notes = summarize.summarize(models, ["ovssc"], {})
    assert any(n == f"{bad}: no column 'split', row left out" for n in notes)
    frame = ovssc_frame()
    frame["scene_id"] = "kitchen_1"
    frame.to_pickle(bad)
    _, notes = summarize.summarize(models, ["ovssc"], {})
    assert any(n.startswith(f"{bad}: scene_id 'kitchen_1' has no FloorPlan") for n in notes)


def test_an_unfinished_eval_is_noted_with_what_it_leaves_out(models):
    """eval.py stopped after its first split: the stats file's provenance lists three splits."""
    path = models / "ours/ovssc/ovssc_eval_stats.pkl"
    frame = ovssc_frame([r for r in OVSSC_ROWS if r[0] == "unseen_instances"])
    splits = ("unseen_instances", "unseen_instances_dr", "unseen_instances_synonyms")
    frame.attrs = {"semabs_eval": {"task": "ovssc", "scenes": {s: ["a.hdf5"] for s in splits}}}
    frame.to_pickle(path)
    (table,), notes = summarize.summarize(models, ["ovssc"], {})
    assert [row[0] for row in table.rows] == ["Semantic Aware", "Ours"]  # the row stays
    assert notes[-1:] == [
        f"{path}: an unfinished eval, 1 of 3 splits scored (no unseen_instances_dr, "
        "unseen_instances_synonyms): Novel Visual empty, Novel Vocab empty, Novel Class from 1 of "
        "3 splits; rerun its eval.py command to finish it"
    ]


def test_another_tasks_stats_are_named_as_such(models):
    ovssc = models / "ours/ovssc/ovssc_eval_stats.pkl"
    vool = models / "ours/vool/vool_eval_stats.pkl"
    overrides = {"ovssc": {"ours": vool}, "vool": {"ours": ovssc}}
    _, notes = summarize.summarize(models, ["ovssc", "vool"], overrides)
    assert f"{vool}: VOOL stats (eval.py --task vool), not OVSSC's, row left out" in notes
    assert f"{ovssc}: OVSSC stats (eval.py --task ovssc), not VOOL's, row left out" in notes
    assert not [n for n in notes if "no column" in n]


def run_cli(*args, cwd=REPO):
    """Run summarize.py as a script in a fresh interpreter; also report whether torch got imported."""
    code = (
        "import runpy, sys; sys.argv = ['summarize.py', *sys.argv[1:]]\n"
        f"try:\n    runpy.run_path({str(REPO / 'summarize.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_cli_runs_without_torch(models):
    result = run_cli("--models-dir", str(models), "--tables", "ovssc,vool", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    assert "NO_TORCH" in result.stderr
    assert "| Ours | 25.0 | 40.0 | 40.0 | 72.5 |" in result.stdout
    assert "chefer_et_al/ovssc/ovssc_eval_stats.pkl: not found, row left out" in result.stderr
    rich_run = run_cli("--models-dir", str(models), "--tables", "nyu")
    assert rich_run.returncode == 0, rich_run.stderr
    assert "OVSSC NYU" in rich_run.stdout and "Ours (Supervised)" in rich_run.stdout
    assert "NO_TORCH" in rich_run.stderr


def test_cli_help_and_errors(tmp_path):
    result = run_cli("--help")
    assert result.returncode == 0 and "--models-dir" in result.stdout
    assert "NO_TORCH" in result.stderr
    result = run_cli("--models-dir", str(tmp_path), "--tables", "ovssc,foo")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "error: --tables takes a comma-separated subset of ovssc,vool,nyu, got 'ovssc,foo'"
    )
    result = run_cli("--models-dir", str(tmp_path), "--tables", "nyu")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2].startswith("error: no stats file could be read for nyu")
    result = run_cli("--models-dir", str(tmp_path), "--json", str(tmp_path))  # not its temp file
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"error: --json {tmp_path} is a folder: give the JSON file's name"
    )


# A baseline frame small enough to score by hand: at its one cutoff, Novel Room = rooms 26:
# (30 + 50) / 2 = 40, 301: 10 -> 25; Novel Visual room 26: 20; no synonym or novel-class rows.
BASELINE_ROWS = [
    ("unseen_instances", scene(26, 1), "sofa", 0.3, 0.3),
    ("unseen_instances", scene(26, 2), "bed", 0.5, 0.5),
    ("unseen_instances", scene(301, 3), "sofa", 0.1, 0.1),
    ("unseen_instances_dr", scene(26, 1), "sofa", 0.2, 0.2),
]
BASELINE_OVSSC = {
    "novel_room": 25.0,
    "novel_visual": 20.0,
    "novel_vocab": None,
    "novel_class": None,
}


def test_baseline_rows_only_when_given(models, tmp_path):
    ovssc_frame(BASELINE_ROWS).to_pickle(tmp_path / "lifted.pkl")
    vool_frame(clip_rows()).to_pickle(tmp_path / "frustum.pkl")
    (ovssc, vool), notes = summarize.summarize(models, ["ovssc", "vool"], {})
    assert [row[0] for row in ovssc.rows] == ["Semantic Aware", "Ours"]
    assert not any("lifted_relevancy" in n or "all_in_frustum" in n for n in notes)
    overrides = {
        "ovssc": {"lifted_relevancy": tmp_path / "lifted.pkl"},
        "vool": {"all_in_frustum": tmp_path / "frustum.pkl"},
    }
    (ovssc, vool), _ = summarize.summarize(models, ["ovssc", "vool"], overrides)
    assert [row[0] for row in ovssc.rows] == [
        "Baseline: lifted relevancy",
        "Semantic Aware",
        "Ours",
    ]
    assert_cells(ovssc.rows[0][1:], [25.0, 20.0, NAN, NAN])
    # the baseline is scored on the relations of Ours ("left" left out), as ClipSpatial is
    assert [row[:2] for row in vool.rows][:4] == [
        ["Baseline: all in frustum", "on"], ["", "in"], ["", "behind"], ["", "mean"]
    ]  # fmt: skip
    assert_cells(vool.rows[3][2:], CLIP_VOOL[3][1])


def test_only_given_has_no_default_rows_and_no_notes(models):
    overrides = {"ovssc": {"ours": models / "ours/ovssc/ovssc_eval_stats.pkl"}}
    (ovssc, vool), notes = summarize.summarize(
        models, ["ovssc", "vool"], overrides, only_given=True
    )
    assert [row[0] for row in ovssc.rows] == ["Ours"] and vool.rows == [] and notes == []
    assert summarize.chosen_tables(
        "ovssc,vool,nyu", {**overrides, "vool": {}, "nyu": {}}, True
    ) == ["ovssc"]


def test_json_matches_the_printed_table_and_hand_values(models, tmp_path):
    ovssc_frame(BASELINE_ROWS).to_pickle(tmp_path / "lifted.pkl")
    out = tmp_path / "tables.json"
    result = run_cli(
        "--models-dir", str(tmp_path / "nowhere"), "--only-given", "--format", "markdown",
        "--ovssc", f"ours={models / 'ours/ovssc/ovssc_eval_stats.pkl'}",
        "--ovssc", f"lifted_relevancy={tmp_path / 'lifted.pkl'}",
        "--vool", f"ours={models / 'ours/vool/vool_eval_stats.pkl'}",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"ovssc", "vool"}
    assert list(figures["ovssc"]) == ["baseline: lifted relevancy", "ours"]
    assert figures["ovssc"]["baseline: lifted relevancy"] == pytest.approx(BASELINE_OVSSC)
    ours = figures["ovssc"]["ours"]
    assert ours == pytest.approx({c.lower().replace(" ", "_"): v for c, v in OURS_OVSSC.items()})
    # every printed OVSSC cell is the JSON figure to one decimal ("–" for null)
    for key, label in (
        ("ours", "Ours"),
        ("baseline: lifted relevancy", "Baseline: lifted relevancy"),
    ):
        cells = [
            summarize.cell_text(math.nan if v is None else v)
            for v in figures["ovssc"][key].values()
        ]
        assert f"| {label} | {' | '.join(cells)} |" in result.stdout
    vool = figures["vool"]["ours"]
    assert vool["novel_room"] is None and vool["novel_class"] is None  # the mean row: all NaN
    assert list(vool["relations"]) == ["on", "in", "behind"]
    assert vool["relations"]["on"] == pytest.approx(
        {"novel_room": 45.0, "novel_visual": 10.0, "novel_vocab": 50.0, "novel_class": 90.0}
    )
    assert vool["relations"]["in"]["novel_visual"] is None


def test_empty_frame_is_left_out_with_a_note(models):
    path = models / "ours/ovssc/ovssc_eval_stats.pkl"
    ovssc_frame().iloc[:0].to_pickle(path)
    (table,), notes = summarize.summarize(
        models, ["ovssc"], {"ovssc": {"ours": path}}, only_given=True
    )
    assert table.rows == [] and notes == [f"{path}: no rows, row left out"]
    result = run_cli("--only-given", "--ovssc", f"ours={path}", "--tables", "ovssc")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"note: {path}: no rows, row left out"
    assert result.stderr.splitlines()[1] == (
        "error: no stats file could be read for ovssc (see the notes above)"
    )


def test_only_given_without_a_row_is_an_error():
    result = run_cli("--only-given", "--tables", "vool")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "error: --only-given needs an APPROACH=PATH (--ovssc, --vool, --nyu) for vool"
    )
