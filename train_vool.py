"""Train a VOOL network (visually obscured object localization).

Spec: train-eval.md 1.2 and 1.8, models.md 4. The loop, checkpoints and logging are training.py's;
this file holds the task: its approach table, loss and per-row columns.

    python train_vool.py --file_path dataset/ --log logs/vool
    torchrun --nproc_per_node 2 train_vool.py --file_path dataset/ --log logs/vool
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import net
import training
from scene_file import SENTENCE_KEYS
from vocab import PAD

APPROACHES = {approach: cls.__name__ for approach, cls in net.NETWORKS["vool"].items()}
# Keys with a description axis, all sliced when running one description at a time. The original
# left input_rgb_pts and the object names whole, so semantic_aware failed there (train-eval.md 1.8).
ROW_KEYS = (
    "input_target_saliency_pts",
    "input_reference_saliency_pts",
    "input_description_saliency_pts",
    "input_rgb_pts",
    "output_xyz_pts",
    "target_obj_text_features",
    "reference_obj_text_features",
    *SENTENCE_KEYS,
)


def padded_rows(batch: dict) -> torch.Tensor:
    """bool [B, D]: descriptions added as padding ("[pad]")."""
    relations = batch["spatial_relation_name"]  # collated [D][B]
    return torch.tensor([[name == PAD for name in row] for row in zip(*relations)])


def loss(logits: torch.Tensor, batch: dict, args: argparse.Namespace):
    """BCE over every entry, padding included (its labels are all zero), as the original; only
    accuracy and the metrics ignore padding and out-of-bounds points."""
    label = batch["output_label_pts"] > 0.5  # [B, D, N]
    padded = padded_rows(batch).to(logits.device)
    ignore = padded[..., None] | training.per_row(batch["out_of_bounds_pts"], label.shape)
    weight = training.bce_weight(label, args.balance_positive_negative)
    value = F.binary_cross_entropy_with_logits(logits.float(), label.float(), weight=weight)
    return value, label, ignore, padded


def row_columns(batch: dict) -> dict:
    columns = {
        key: [list(row) for row in zip(*batch[key])]
        for key in ("target_obj_name", "reference_obj_name", "spatial_relation_name")
    }
    rows = columns["target_obj_name"]
    columns = {"scene_id": [[s] * len(r) for s, r in zip(batch["scene_id"], rows)], **columns}
    return columns


def forward(model, batch: dict) -> torch.Tensor:
    rows, points = batch["output_xyz_pts"].shape[1:3]
    if points > training.CHUNK_POINTS:
        return training.chunked_forward(model, batch, ROW_KEYS, rows)
    return model(**batch)


TASK = training.Task("vool", loss, row_columns, forward)


def main(argv: list[str] | None = None) -> None:
    training.main(TASK, argv)


if __name__ == "__main__":
    main()
