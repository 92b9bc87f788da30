"""Train an OVSSC network (open-vocabulary semantic scene completion).

Spec: train-eval.md 1.2 and 1.8, models.md 4. The loop, checkpoints and logging are training.py's;
this file holds the task: its approach table, loss and per-row columns.

    python train_ovssc.py --file_path dataset/ --log logs/ovssc
    torchrun --nproc_per_node 2 train_ovssc.py --file_path dataset/ --log logs/ovssc
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import net
import training

# --approach -> network class (semantic_aware reads RGB instead of relevancy: options.finalize)
APPROACHES = {approach: cls.__name__ for approach, cls in net.NETWORKS["ovssc"].items()}
ROW_KEYS = ("input_feature_pts", "semantic_class_features", "output_xyz_pts")


def padded_rows(batch: dict) -> torch.Tensor:
    """bool [B, P]: classes added as padding (label "")."""
    labels = batch["patch_labels"]  # collated [P][B]
    return torch.tensor([[label == "" for label in row] for row in zip(*labels)])


def loss(logits: torch.Tensor, batch: dict, args: argparse.Namespace):
    """BCE over the non-ignored entries (padding, out-of-bounds and out-of-frustum are ignored)."""
    label = batch["output_label_pts"] > 0.5  # [B, P, N]
    padded = padded_rows(batch).to(logits.device)  # [B, P]
    ignore = (
        padded[..., None]
        | training.per_row(batch["out_of_bounds_pts"], label.shape)
        | training.per_row(batch["out_of_frustum_pts_mask"], label.shape)
    )
    keep = ~ignore
    weight = training.bce_weight(label, args.balance_positive_negative)
    value = F.binary_cross_entropy_with_logits(
        logits[keep].float(),
        label[keep].float(),
        weight=None if weight is None else weight[keep],
    )
    return value, label, ignore, padded


def row_columns(batch: dict) -> dict:
    labels = [list(row) for row in zip(*batch["patch_labels"])]  # [B][P]
    scene_ids = [[scene] * len(row) for scene, row in zip(batch["scene_id"], labels)]
    return {"scene_id": scene_ids, "label": labels}


def forward(model, batch: dict) -> torch.Tensor:
    rows, points = batch["output_xyz_pts"].shape[1:3]
    if points > training.CHUNK_POINTS:
        return training.chunked_forward(model, batch, ROW_KEYS, rows)
    return model(**batch)


TASK = training.Task("ovssc", loss, row_columns, forward)


def main(argv: list[str] | None = None) -> None:
    training.main(TASK, argv)


if __name__ == "__main__":
    main()
