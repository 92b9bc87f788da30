"""metrics.py against hand-computed cases and an independent slow numpy reference
(docs/method.md#rows-and-metrics)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import metrics
from grid import VirtualGrid

BOUNDS = ((-1.0, -1.0, -0.1), (1.0, 1.0, 1.9))


def t(rows):
    return torch.tensor(rows, dtype=torch.bool)


# ----------------------------------------------------------------------------- binary_metrics


def test_binary_metrics_hand_case_with_ignore():
    # entries:      0  1  2  3  4  5
    pred = t([[1, 1, 0, 0, 1, 1]])
    label = t([[1, 0, 1, 0, 0, 1]])
    ignore = t([[0, 0, 0, 0, 0, 1]])  # entry 5 (a TP) does not count
    out = metrics.binary_metrics(pred, label, ignore)
    # non-ignored: TP={0}, pred={0,1,4}, label={0,2}, union={0,1,2,4}, M=5
    assert out["precision"].item() == pytest.approx(1 / 3)
    assert out["recall"].item() == pytest.approx(1 / 2)
    assert out["iou"].item() == pytest.approx(1 / 4)
    assert out["false_negative"].item() == pytest.approx(1 / 5)  # entry 2
    assert out["false_positive"].item() == pytest.approx(2 / 5)  # entries 1, 4
    assert list(out) == list(metrics.METRIC_NAMES)
    assert all(v.shape == (1,) and v.dtype == torch.float32 for v in out.values())


def test_binary_metrics_nan_rules():
    pred = t([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]])
    label = t([[0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    ignore = t([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]])
    out = {k: v.tolist() for k, v in metrics.binary_metrics(pred, label, ignore).items()}
    # row 0: empty union -> iou, precision, recall NaN; rates 0
    assert all(math.isnan(out[k][0]) for k in ("iou", "precision", "recall"))
    assert out["false_negative"][0] == 0 and out["false_positive"][0] == 0
    # row 1: nothing predicted -> precision NaN, recall 0, iou 0, FN 1/3
    assert math.isnan(out["precision"][1]) and out["recall"][1] == 0 and out["iou"][1] == 0
    assert out["false_negative"][1] == pytest.approx(1 / 3)
    # row 2: nothing labelled -> recall NaN, precision 0, FP 1/3
    assert math.isnan(out["recall"][2]) and out["precision"][2] == 0
    assert out["false_positive"][2] == pytest.approx(1 / 3)
    # row 3: everything ignored -> all NaN (rates are 0/0 too)
    assert all(math.isnan(out[k][3]) for k in metrics.METRIC_NAMES)


# ----------------------------------------------------------------------------- voxelize


def test_voxel_index_border_and_clamping():
    # 4^3 grid over [0,3]^3: pitch 1, index trunc(p); p == 3 -> 3, beyond -> clamped
    bounds = ((0.0, 0.0, 0.0), (3.0, 3.0, 3.0))
    xyz = torch.tensor([[[3.0, 0.0, 0.0], [2.999, 0.0, 0.0], [-5.0, 7.0, 1.5], [0.5, 1.0, 2.2]]])
    index = metrics._voxel_index(xyz, bounds, 4)
    expected = [3 * 16, 2 * 16, 0 * 16 + 3 * 4 + 1, 0 + 1 * 4 + 2]
    assert index.tolist() == [expected]


def test_voxelize_ignore_rules():
    bounds = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # 2^3 grid: index n-1 = 1 only at the upper bound
    xyz = torch.tensor(
        [[[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
    )
    # voxels: points 0,1 -> 0; points 2,3 -> (1,0,0) = 4; point 4 -> (0,1,0) = 2
    pred = t([[[1, 0, 0, 0, 0]]])
    label = t([[[0, 1, 1, 0, 0]]])
    ignore = t([[[0, 0, 0, 1, 0]]])
    pred_v, label_v, ignore_v = metrics.voxelize(xyz, pred, label, ignore, bounds, 2)
    assert pred_v.shape == (1, 1, 8)
    assert pred_v[0, 0].nonzero().flatten().tolist() == [0]
    assert label_v[0, 0].nonzero().flatten().tolist() == [0, 4]
    # voxel 4 has an ignored point; voxels 1, 3, 5, 6, 7 have no point; voxels 0 and 2 count
    assert (~ignore_v[0, 0]).nonzero().flatten().tolist() == [0, 2]
    out = metrics.binary_metrics(pred_v[0], label_v[0], ignore_v[0])
    assert out["iou"].item() == 1.0 and out["false_positive"].item() == 0.0


def test_voxel_index_agrees_with_virtual_grid():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 5000, 3, generator=gen) * 2.6 - 1.3  # some points outside the bounds
    xyz[0, :3] = torch.tensor(BOUNDS[1])  # exactly on the upper bound
    xyz[0, 3:6] = torch.tensor(BOUNDS[0])
    for g in (32, 64):
        expected = VirtualGrid(BOUNDS, (g, g, g)).flat_index(xyz)
        assert torch.equal(metrics._voxel_index(xyz, BOUNDS, g), expected)
        # and voxelize puts each single-point row exactly in that voxel
        mask = torch.zeros(2, 1, 5000, dtype=torch.bool)
        mask[:, 0, 7] = True
        pred_v, _, _ = metrics.voxelize(xyz, mask, mask, torch.zeros_like(mask), BOUNDS, g)
        assert pred_v[:, 0].nonzero()[:, 1].tolist() == expected[:, 7].tolist()
    assert metrics._voxel_index(xyz, BOUNDS, 32)[0, :3].tolist() == [32**3 - 1] * 3


# ----------------------------------------------------------------------------- detailed_stats


def slow_reference(logits, label, ignore, xyz, cutoff, g):
    """Independent numpy loop: voxel metrics of one row at one cutoff, written straight from
    the voxel rules of docs/method.md#rows-and-metrics."""
    lower, upper = np.array(BOUNDS[0], np.float32), np.array(BOUNDS[1], np.float32)
    voxels = {}
    for n in range(len(xyz)):
        u = (xyz[n] - lower) * np.float32(g - 1) / (upper - lower)
        key = tuple(int(v) for v in np.minimum(np.maximum(u, 0), g - 1))
        p, lab, ign = voxels.get(key, (False, False, False))
        voxels[key] = (
            p or bool(logits[n] > np.float32(cutoff)),
            lab or bool(label[n]),
            ign or bool(ignore[n]),
        )
    tp = pp = lp = m = 0
    for p, lab, ign in voxels.values():
        if ign:
            continue
        m += 1
        tp += p and lab
        pp += p
        lp += lab
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {
        "precision": div(tp, pp),
        "recall": div(tp, lp),
        "false_negative": div(lp - tp, m),
        "false_positive": div(pp - tp, m),
        "iou": div(tp, pp + lp - tp),
    }


def point_reference(logits, label, ignore, cutoff):
    keep = ~ignore
    pred = logits[keep] > np.float32(cutoff)
    lab = label[keep]
    tp, pp, lp, m = (pred & lab).sum(), pred.sum(), lab.sum(), keep.sum()
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {
        "precision": div(tp, pp),
        "recall": div(tp, lp),
        "false_negative": div(lp - tp, m),
        "false_positive": div(pp - tp, m),
        "iou": div(tp, pp + lp - tp),
    }


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    B, P, N = 2, 3, 400
    xyz = torch.rand(B, N, 3, generator=gen) * 2.2 - 1.1
    xyz[:, :, 2] += 0.9
    logits = torch.randn(B, P, N, generator=gen) * 1.5 - 1.0
    label = torch.rand(B, P, N, generator=gen) < 0.3
    ignore = torch.rand(B, P, N, generator=gen) < 0.1
    ignore[1, 2] = True  # a fully ignored row
    padded = torch.tensor([[False, False, True], [False, False, False]])
    cutoffs = list(np.arange(-2.5, 0.0, 0.1))[::6] + [0.3]  # unsorted tail: order must be kept
    cutoffs = [cutoffs[-1]] + cutoffs[:-1]
    rows = {
        "scene_id": [["s0"] * 3, ["s1"] * 3],
        "label": [["mug", "pot", ""], ["sofa", "tv", "bed"]],
    }
    frame = metrics.detailed_stats(
        logits, label, ignore, xyz, cutoffs, torch.tensor(BOUNDS), rows, (32, 4), padded
    )
    return dict(
        xyz=xyz,
        logits=logits,
        label=label,
        ignore=ignore,
        padded=padded,
        cutoffs=cutoffs,
        frame=frame,
    )


def test_detailed_stats_columns_order_and_index(batch):
    frame, cutoffs = batch["frame"], batch["cutoffs"]
    expected = ["scene_id", "label"]
    for prefix in ("point", "voxel32x32x32", "voxel4x4x4"):
        expected += [f"{prefix}_{m}" for m in metrics.METRIC_NAMES]
    assert list(frame.columns) == expected + ["cutoff"]
    C = len(cutoffs)
    assert len(frame) == 2 * C * 3
    # scene -> cutoff (given order) -> class; index restarts per (scene, cutoff)
    assert frame["scene_id"].tolist() == ["s0"] * 3 * C + ["s1"] * 3 * C
    assert frame["cutoff"].tolist() == [c for _ in range(2) for c in cutoffs for _ in range(3)]
    assert frame["label"].tolist()[:6] == ["mug", "pot", "", "mug", "pot", ""]
    assert frame.index.tolist() == [0, 1, 2] * (2 * C)


def test_detailed_stats_matches_slow_reference(batch):
    frame = batch["frame"]
    logits, label, ignore, xyz = (batch[k].numpy() for k in ("logits", "label", "ignore", "xyz"))
    for i, (_, row) in enumerate(frame.iterrows()):
        b, rest = divmod(i, 3 * len(batch["cutoffs"]))
        c, p = divmod(rest, 3)
        cutoff = batch["cutoffs"][c]
        assert row["cutoff"] == cutoff
        if batch["padded"][b, p]:
            continue
        refs = {
            "point": point_reference(logits[b, p], label[b, p], ignore[b, p], cutoff),
            "voxel4x4x4": slow_reference(
                logits[b, p], label[b, p], ignore[b, p], xyz[b], cutoff, 4
            ),
        }
        if i % 7 == 0:  # the 32^3 loop is slower; a sample of rows is enough
            refs["voxel32x32x32"] = slow_reference(
                logits[b, p], label[b, p], ignore[b, p], xyz[b], cutoff, 32
            )
        for prefix, ref in refs.items():
            for name, value in ref.items():
                got = row[f"{prefix}_{name}"]
                if math.isnan(value):
                    assert math.isnan(got), (i, prefix, name)
                else:
                    assert got == pytest.approx(value, abs=1e-12), (i, prefix, name)


def test_detailed_stats_padded_rows_are_nan(batch):
    frame = batch["frame"]
    metric_cols = [c for c in frame.columns if c not in ("scene_id", "label", "cutoff")]
    pad_rows = frame[(frame["scene_id"] == "s0") & (frame["label"] == "")]
    assert len(pad_rows) == len(batch["cutoffs"])
    assert pad_rows[metric_cols].isna().all().all()
    # the fully ignored (not padded) row is NaN too, other rows are mostly not
    assert frame[frame["label"] == "bed"][metric_cols].isna().all().all()
    assert frame[frame["label"] == "mug"]["point_false_positive"].notna().all()


def test_detailed_stats_64_columns_and_vool_row_columns():
    xyz = torch.zeros(1, 4, 3)
    logits = torch.tensor([[[1.0, -1.0, 0.0, 2.0]]])
    label = t([[[1, 0, 0, 1]]])
    ignore = torch.zeros_like(label)
    rows = {
        "scene_id": [["a"]],
        "target_obj_name": [["mug"]],
        "reference_obj_name": [["table"]],
        "spatial_relation_name": [["on"]],
    }
    frame = metrics.detailed_stats(logits, label, ignore, xyz, [-1.5, 0.5], BOUNDS, rows, (32, 64))
    assert list(frame.columns[:4]) == list(rows)
    assert [c for c in frame.columns if c.startswith("voxel64x64x64_")] == [
        f"voxel64x64x64_{m}" for m in metrics.METRIC_NAMES
    ]
    # all 4 points share one voxel: labelled, predicted at both cutoffs -> iou 1
    assert frame["voxel64x64x64_iou"].tolist() == [1.0, 1.0]
    # points: cutoff -1.5 -> all predicted: TP 2, PP 4 -> iou 0.5; cutoff 0.5 -> {0, 3} -> iou 1
    assert frame["point_iou"].tolist() == [0.5, 1.0]
    assert frame["point_false_positive"].tolist() == [0.5, 0.0]


# ----------------------------------------------------------------------------- epoch summary


def summary_frame():
    return pd.DataFrame(
        {
            "label": ["a", "b", "a", "b", "a", "b", "a"],
            "point_iou": [0.2, 0.4, 0.5, 0.7, 0.1, float("nan"), 0.9],
            "point_false_positive": [0.1, 0.3, 0.2, 0.2, 0.05, 0.05, 0.0],
            "voxel32x32x32_recall": [float("nan")] * 7,
            "cutoff": [-1.0, -1.0, -0.5, -0.5, 0.0, 0.0, -1.0],
            "split": ["unseen_instances"] * 6 + ["train"],
        }
    )


def test_epoch_summary_argmax_and_quirk():
    rows = metrics.epoch_summary(summary_frame())
    by_key = {(s, c): (score, cut) for s, c, score, cut in rows}
    assert [(s, c) for s, c, _, _ in rows] == [
        ("unseen_instances", "point_iou"),
        ("unseen_instances", "point_false_positive"),
        ("unseen_instances", "voxel32x32x32_recall"),
        ("train", "point_iou"),
        ("train", "point_false_positive"),
        ("train", "voxel32x32x32_recall"),
    ]
    # iou means per cutoff: -1: 0.3, -0.5: 0.6, 0: 0.1 (NaN skipped) -> -0.5, 60
    assert by_key[("unseen_instances", "point_iou")] == pytest.approx((60.0, -0.5))
    # FP means: -1: 0.2, -0.5: 0.2, 0: 0.05 -> argmax (quirk 6) takes the first max, -1.0
    assert by_key[("unseen_instances", "point_false_positive")] == pytest.approx((20.0, -1.0))
    score, cut = by_key[("unseen_instances", "voxel32x32x32_recall")]
    assert math.isnan(score) and math.isnan(cut)
    assert by_key[("train", "point_iou")] == pytest.approx((90.0, -1.0))
    fixed = metrics.epoch_summary(summary_frame(), fix_rate_argmin=True)
    fixed = {(s, c): (score, cut) for s, c, score, cut in fixed}
    assert fixed[("unseen_instances", "point_false_positive")] == pytest.approx((5.0, 0.0))
    assert fixed[("unseen_instances", "point_iou")] == pytest.approx((60.0, -0.5))


def test_format_epoch_summary():
    text = metrics.format_epoch_summary([("train", "point_iou", 60.0, -0.5)])
    assert text.splitlines() == ["train", "    POINT_IOU" + " " * 21 + ": 60.00     -0.50"]


def test_no_device_named():
    from pathlib import Path

    assert "cuda" not in Path(metrics.__file__).read_text().lower()


# ------------------------------------------------------------------ row_stats, per-row query points


def test_row_stats_per_row_points_scores_each_row_on_its_own_points(batch):
    """Training's balanced sampling gives each row its own query points (xyz [B, R, N, 3]): every
    row is scored against the slow reference on its own points, in the shared-points layout (scene
    -> cutoff -> row, the index restarting per (scene, cutoff))."""
    gen = torch.Generator().manual_seed(2)
    B, R, N = 2, 3, 300
    xyz = torch.rand(B, R, N, 3, generator=gen) * 2.2 - 1.1
    xyz[..., 2] += 0.9
    xyz[0, 1] *= 0.3  # row 1 of scene 0 crowded into a few voxels: voxel counts differ by row
    logits = torch.randn(B, R, N, generator=gen)
    label = torch.rand(B, R, N, generator=gen) < 0.3
    ignore = torch.rand(B, R, N, generator=gen) < 0.1
    padded = torch.tensor([[False, False, True], [False, False, False]])
    cutoffs = [0.5, -1.0]
    rows = {"scene_id": [["s0"] * 3, ["s1"] * 3], "label": [["mug", "pot", ""], ["a", "b", "c"]]}
    frame = metrics.row_stats(
        logits, label, ignore, xyz, cutoffs, torch.tensor(BOUNDS), rows, padded, (4,)
    )
    assert frame["label"].tolist() == (["mug", "pot", ""] * 2) + (["a", "b", "c"] * 2)
    assert frame["cutoff"].tolist() == [c for _ in range(B) for c in cutoffs for _ in range(R)]
    assert frame.index.tolist() == [0, 1, 2] * (B * len(cutoffs))
    arrays = [x.numpy() for x in (logits, label, ignore, xyz)]
    for i, (_, got) in enumerate(frame.iterrows()):
        b, rest = divmod(i, R * len(cutoffs))
        c, p = divmod(rest, R)
        if padded[b, p]:
            assert np.isnan(got["point_iou"]) and np.isnan(got["voxel4x4x4_iou"])
            continue
        lg, lb, ig, pts = (a[b, p] for a in arrays)
        refs = {
            "point": point_reference(lg, lb, ig, cutoffs[c]),
            "voxel4x4x4": slow_reference(lg, lb, ig, pts, cutoffs[c], 4),
        }
        for prefix, ref in refs.items():
            for name, value in ref.items():
                assert got[f"{prefix}_{name}"] == pytest.approx(value, abs=1e-12, nan_ok=True), (
                    i,
                    prefix,
                    name,
                )
