"""Small network configs and random batches shared by the network tests."""

from __future__ import annotations

import torch

import net

SMALL = dict(
    voxel_shape=(16, 16, 16),
    unet_num_levels=3,
    unet_f_maps=8,
    unet_num_groups=4,
    unet_num_channels=8,
)
RELATIONS = ["in", "on", "behind", "in front of", "on the left of", "on the right of", "[pad]"]

# (task, approach) of every network class, with the batch keys it reads.
APPROACHES = {
    "SemAbs3D": ("ovssc", "semantic_abstraction"),
    "SemanticAwareOVSSC": ("ovssc", "semantic_aware"),
    "SemAbsVOOL": ("vool", "semantic_abstraction"),
    "SemanticAwareVOOL": ("vool", "semantic_aware"),
    "ClipSpatialVOOL": ("vool", "clip_spatial"),
}


def random_xyz(shape, generator, bounds=net.DEFAULT_SCENE_BOUNDS) -> torch.Tensor:
    lower, upper = torch.tensor(bounds[0]), torch.tensor(bounds[1])
    return lower + torch.rand(*shape, 3, generator=generator) * (upper - lower)


def random_batch(name: str, batch=2, rows=3, num_input=500, num_output=200, seed=0) -> dict:
    """A batch for network `name` with B=batch, P or D=rows, N=num_input, M=num_output."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "input_xyz_pts": random_xyz((batch, num_input), g),
        "output_xyz_pts": random_xyz((batch, rows, num_output), g),
    }
    saliency = lambda: torch.randn(batch, rows, num_input, 1, generator=g)  # noqa: E731
    names = lambda: [[f"object {d} {b}" for b in range(batch)] for d in range(rows)]  # noqa: E731 [D][B]
    relations = [[RELATIONS[(d + b) % len(RELATIONS)] for b in range(batch)] for d in range(rows)]
    if name == "SemAbs3D":
        out["input_feature_pts"] = saliency()
    elif name == "SemanticAwareOVSSC":
        out["input_feature_pts"] = torch.rand(batch, 1, num_input, 3, generator=g)
        out["semantic_class_features"] = torch.randn(batch, rows, net.CLIP_TEXT_DIM, generator=g)
    elif name == "SemAbsVOOL":
        out.update(input_target_saliency_pts=saliency(), input_reference_saliency_pts=saliency())
        out["spatial_relation_name"] = relations
    elif name == "SemanticAwareVOOL":
        out["input_rgb_pts"] = torch.rand(batch, rows, num_input, 3, generator=g)
        out.update(
            spatial_relation_name=relations, target_obj_name=names(), reference_obj_name=names()
        )
        out["target_obj_text_features"] = torch.randn(batch, rows, net.CLIP_TEXT_DIM, generator=g)
        out["reference_obj_text_features"] = torch.randn(
            batch, rows, net.CLIP_TEXT_DIM, generator=g
        )
    elif name == "ClipSpatialVOOL":
        out["input_description_saliency_pts"] = saliency()
    return out


def small_network(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return net.build_network(*APPROACHES[name], **{**SMALL, **overrides})
