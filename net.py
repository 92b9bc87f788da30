"""The 3D networks of Semantic Abstraction and its baselines (docs/method.md#the-networks).

OVSSC (open-vocabulary semantic scene completion):
    SemAbs3D            "ours" and "SemAbs + Chefer et al": one relevancy map per class -> occupancy logits
    SemanticAwareOVSSC  baseline: RGB points -> CLIP-space point features, cosine with class text features
VOOL (visually obscured object localization):
    SemAbsVOOL          "ours": target and reference relevancy volumes, learned relation embeddings
    SemanticAwareVOOL   baseline: RGB points, CLIP text of target and reference names, relation embedding
    ClipSpatialVOOL     baseline: relevancy of the whole description sentence

Every network takes the whole batch dict (`net(**batch)`), ignores the keys it does not use, and returns
raw logits [B, P or D, M] (no sigmoid). Constructor defaults are the training scripts' defaults, so
`SemAbs3D()` builds the released architecture. `build_network(task, approach, args)` picks the
arguments a network uses out of a training Namespace (args.pkl) and rejects unknown keys.

Fidelity quirks, kept by default so that the released checkpoints reproduce their published outputs:
    B1  the point-to-voxel scatter averages (mean) although reduce_method says "max".
        Fix: fix_scatter_reduce=True uses reduce_method.
    B2  the decoder normalises grid indices by G instead of G-1 and hands them to grid_sample in (x,y,z)
        order, which grid_sample reads as (z,y,x): x and z are swapped. Fix: fix_decoder_sampling=True
        reads each query in (z,y,x) order at the voxel it lies in
        (see decoder.ImplicitVolumetricDecoder).
    B3  VOOL completion nets never get decoder_concat_xyz_pts (their own sampler has no xyz input).
Bugs that only hurt users are fixed: grid.VirtualGrid follows its inputs' device (B9); SemanticAwareOVSSC
runs the UNet once per scene instead of once per class (B10, same output).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from decoder import ImplicitVolumetricDecoder, PointingAttention, distinct_rows, point_mlp
from geometry import DEFAULT_SCENE_BOUNDS, DEFAULT_VOXEL_SHAPE
from grid import VirtualGrid
from inputs import CLIP_TEXT_DIM
from unet3d import ResidualUNet3D, maybe_checkpoint
from utils import InputError
from vocab import NETWORK_INPUTS, PAD, RELATIONS

SPATIAL_RELATIONS = (*RELATIONS, PAD)  # a learned embedding each: docs/method.md#vool-semabsvool
OFFSET_ORDER = tuple(sorted(SPATIAL_RELATIONS))  # the relations of SemAbsVOOL.relation_offsets


def pts_feature_dim(network_inputs: Sequence[str]) -> int:
    """Per-point input features: 1 for saliency, 3 for rgb, 1 for patch_masks (tsdf is a volume)."""
    unknown = set(network_inputs) - set(NETWORK_INPUTS)
    if unknown:
        raise InputError(
            f"unknown network_inputs {sorted(unknown)}: use saliency, rgb, patch_masks, tsdf"
        )
    return (
        1 * ("saliency" in network_inputs)
        + 3 * ("rgb" in network_inputs)
        + ("patch_masks" in network_inputs)
    )


def check_group_norm(in_channels: int, f_maps: int, num_groups: int, num_levels: int) -> None:
    """Each GroupNorm of the UNet splits its input channels (the UNet's input, then f_maps x 2^level)
    into num_groups groups, or into one where there are fewer channels: a clear line for a width
    it cannot split, instead of torch's error from inside the constructor."""
    widths = [("the UNet's input", in_channels)]
    widths += [
        (f"--unet_f_maps {f_maps} at level {level}", f_maps * 2**level)
        for level in range(num_levels)
    ]
    for name, channels in widths:
        if channels >= num_groups and channels % num_groups:
            raise InputError(
                f"{name}: {channels} channels, not a multiple of --unet_num_groups {num_groups} "
                "(each GroupNorm of the UNet splits its channels into that many groups)"
            )


class SemAbs3D(nn.Module):
    """OVSSC network: per-patch point features -> voxel grid -> 3D UNet -> implicit decoder.

    Patches (one relevancy map per class) never interact: each goes through the shared network alone.
    """

    leaves_parameters_unused = False  # every parameter gets a gradient each step (DDP: see below)

    def __init__(
        self,
        voxel_shape: Sequence[int] = DEFAULT_VOXEL_SHAPE,
        scene_bounds=DEFAULT_SCENE_BOUNDS,
        unet_num_channels: int = 16,
        unet_f_maps: int = 16,
        unet_num_groups: int = 8,
        unet_num_levels: int = 6,
        network_inputs: Sequence[str] = ("saliency",),
        use_pts_feat_extractor: bool = True,
        pts_feat_extractor_hidden_dim: int = 128,
        reduce_method: str = "max",
        output_dim: int = 1,
        decoder_concat_xyz_pts: bool = True,
        fix_scatter_reduce: bool = False,
        fix_decoder_sampling: bool = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.register_buffer("steps", torch.zeros(1))
        self.network_inputs = tuple(network_inputs)
        self.virtual_grid = VirtualGrid(scene_bounds, voxel_shape)
        self.scatter_reduce = reduce_method if fix_scatter_reduce else "mean"  # quirk B1
        self.use_tsdf = "tsdf" in self.network_inputs
        feature_dim = pts_feature_dim(self.network_inputs)
        scattered_channels = unet_num_channels - self.use_tsdf
        if use_pts_feat_extractor:
            self.pts_feat_extractor = point_mlp(
                3 + feature_dim, pts_feat_extractor_hidden_dim, scattered_channels
            )
            unet_in_channels = unet_num_channels
        else:
            self.pts_feat_extractor = None
            unet_in_channels = feature_dim + self.use_tsdf
        check_group_norm(unet_in_channels, unet_f_maps, unet_num_groups, unet_num_levels)
        self.vol_feature_extractor = ResidualUNet3D(
            in_channels=unet_in_channels,
            out_channels=unet_num_channels,
            f_maps=unet_f_maps,
            num_groups=unet_num_groups,
            num_levels=unet_num_levels,
            activation_checkpointing=activation_checkpointing,
        )
        self.visual_sampler = ImplicitVolumetricDecoder(
            unet_num_channels, output_dim, decoder_concat_xyz_pts, fix_sampling=fix_decoder_sampling
        )
        self.output_dim = output_dim
        self.activation_checkpointing = activation_checkpointing

    def voxelize(self, xyz: torch.Tensor, features: torch.Tensor, tsdf_vol=None) -> torch.Tensor:
        """xyz [B',N,3], features [B',N,F], tsdf_vol [B',X,Y,Z] (one per row) -> UNet input volume
        [B',C,X,Y,Z]."""
        if self.pts_feat_extractor is not None:
            point_input = torch.cat([xyz, features], dim=-1)  # [B',N,3+F]
            features = maybe_checkpoint(
                self.activation_checkpointing, self.pts_feat_extractor, point_input
            )
        volume = self.virtual_grid.scatter_points(
            xyz, features, self.scatter_reduce
        )  # [B',C,X,Y,Z]
        if not self.use_tsdf:
            return volume
        return torch.cat([tsdf_vol.to(volume)[:, None], volume], dim=1)

    def encode(self, input_xyz_pts: torch.Tensor, input_feature_pts: torch.Tensor, tsdf_vol=None):
        """xyz [B,N,3], features [B,P,N,F] -> UNet volume [B*P,C,X,Y,Z], batch-major (b0p0, b0p1, ...).

        Rows of one scene with equal features go through the network once (`encode_distinct`)."""
        volumes, _, inverse = self.encode_distinct(input_xyz_pts, input_feature_pts, tsdf_vol)
        return volumes if len(volumes) == len(inverse) else volumes[inverse]

    def encode_distinct(self, input_xyz_pts, input_feature_pts, tsdf_vol=None):
        """xyz [B,N,3], features [B,P,N,F] -> (volumes [R',C,X,Y,Z] of the distinct rows, the row
        [R'] each was computed for, and each row's volume [B*P]), rows batch-major (b0p0, b0p1, ...).

        Rows of one scene with equal features (a label two descriptions share, padded rows, the RGB
        every row repeats) go through the point MLP and the UNet once, and share the volume: the
        same values up to float rounding (a smaller UNet batch), with their gradients summed.
        """
        batch, num_patches, num_points, _ = input_feature_pts.shape
        features = input_feature_pts.reshape(batch * num_patches, num_points, -1)  # [B*P,N,F]
        if self.use_tsdf:
            grid_shape = self.virtual_grid.grid_shape
            if tsdf_vol is None or tuple(tsdf_vol.shape) != (batch, *grid_shape):
                got = None if tsdf_vol is None else tuple(tsdf_vol.shape)
                raise InputError(
                    f"tsdf_vol must be [B,{','.join(map(str, grid_shape))}] with B = {batch}, "
                    f"got {got}"
                )
        first, inverse = distinct_rows(features, num_patches)
        scene = first // num_patches
        volume = self.voxelize(
            input_xyz_pts[scene], features[first], tsdf_vol[scene] if self.use_tsdf else None
        )
        return self.vol_feature_extractor(volume), first, inverse

    def decode(
        self, decoder: ImplicitVolumetricDecoder, volume: torch.Tensor, output_xyz_pts: torch.Tensor
    ):
        """volume [B*P_in,C,...], queries [B,P,M,3] -> [B,P,M,output_dim].

        With P_in < P (one RGB volume shared by all classes), each volume answers the queries of all
        P/P_in patches at once instead of being copied P times (fix B10, same output).
        """
        batch, num_patches, num_queries, _ = output_xyz_pts.shape
        queries = output_xyz_pts.reshape(volume.shape[0], -1, 3)  # [B*P_in, (P/P_in)*M, 3]
        return decoder(volume, self.virtual_grid, queries).view(batch, num_patches, num_queries, -1)

    def forward(
        self, input_xyz_pts, input_feature_pts, output_xyz_pts, tsdf_vol=None, **kwargs
    ) -> torch.Tensor:
        """-> [B,P,M] logits when output_dim is 1, else [B,P,M,output_dim] point features."""
        volume = self.encode(input_xyz_pts, input_feature_pts, tsdf_vol)
        output = self.decode(self.visual_sampler, volume, output_xyz_pts)
        return output.squeeze(-1) if self.output_dim == 1 else output


class SemanticAwareOVSSC(SemAbs3D):
    """OVSSC baseline: RGB points -> 512-d CLIP-space point features; logits are cosine / 0.07 with the
    class text features (semantic_class_features [B,P,512])."""

    def __init__(
        self, clip_hidden_dim: int = CLIP_TEXT_DIM, pointing_method: str = "cosine_sim", **kwargs
    ):
        kwargs.update(output_dim=clip_hidden_dim, network_inputs=("rgb",))
        super().__init__(**kwargs)
        self.semantic_class_pointer = PointingAttention(clip_hidden_dim, pointing_method)

    def forward(
        self,
        input_xyz_pts,
        input_feature_pts,
        output_xyz_pts,
        semantic_class_features,
        tsdf_vol=None,
        **kwargs,
    ):
        batch, num_patches, num_queries, _ = output_xyz_pts.shape
        point_features = super().forward(
            input_xyz_pts, input_feature_pts, output_xyz_pts, tsdf_vol
        )  # [B,P,M,512]
        logits = self.semantic_class_pointer(
            point_features.reshape(batch * num_patches, num_queries, -1),
            semantic_class_features.reshape(batch * num_patches, 1, -1).to(point_features),
        )  # [B*P,M,1]
        return logits.view(batch, num_patches, num_queries)


def batch_major(names: Sequence[Sequence[str]]) -> list[list[str]]:
    """Strings collated as [D][B] (PyTorch's default collate of per-sample lists) -> [B][D]."""
    return [list(row) for row in zip(*names)]


class VOOLNetwork(nn.Module):
    """What the VOOL networks share: a `steps` buffer, a SemAbs3D completion net, and a spatial
    sampler reading `sampler_volumes` stacked completion volumes at the query points."""

    # Some parameters get no gradient: SemAbsVOOL and ClipSpatialVOOL never use the completion net's
    # own decoder, SemanticAwareVOOL never uses the spatial sampler, and a relation absent from a
    # batch leaves its embedding unused. DDP must look for them (find_unused_parameters).
    leaves_parameters_unused = True

    def __init__(
        self,
        sampler_volumes: int,
        sampler_output_dim: int,
        decoder_concat_xyz_pts: bool = True,
        unet_num_channels: int = 16,
        fix_decoder_sampling: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.register_buffer("steps", torch.zeros(1))
        # Quirk B3: decoder_concat_xyz_pts is not passed on, so the completion net's sampler has no xyz.
        self.completion_net = SemAbs3D(
            unet_num_channels=unet_num_channels,
            fix_decoder_sampling=fix_decoder_sampling,
            decoder_concat_xyz_pts=False,
            **kwargs,
        )
        self.spatial_sampler = ImplicitVolumetricDecoder(
            sampler_volumes * unet_num_channels,
            sampler_output_dim,
            decoder_concat_xyz_pts,
            fix_sampling=fix_decoder_sampling,
        )


class SemAbsVOOL(VOOLNetwork):
    """VOOL network: target and reference relevancy volumes from one shared completion net, a spatial
    decoder on both, and cosine pointing against a learned embedding of the spatial relation.

    `relation_offsets` (not in the original): a buffer of one logit offset per relation, added to
    that relation's logits; zero until calibrate.py sets it from training scenes.
    """

    def __init__(
        self,
        pointing_method: str = "cosine_sim",
        pointing_dim: int = 64,
        relation_offsets: bool = False,
        **kwargs,
    ):
        super().__init__(sampler_volumes=2, sampler_output_dim=pointing_dim, **kwargs)
        self.pointer = PointingAttention(pointing_dim, pointing_method)
        self.relation_embeddings = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(pointing_dim)) for name in sorted(SPATIAL_RELATIONS)}
        )
        if relation_offsets:
            self.register_buffer("relation_offsets", torch.zeros(len(OFFSET_ORDER)))
        else:
            self.relation_offsets = None

    def embed_relations(self, spatial_relation_name: Sequence[Sequence[str]]) -> torch.Tensor:
        """Relation names laid out [D][B] -> embeddings [B,D,pointing_dim]."""
        rows = batch_major(spatial_relation_name)
        for name in {name for row in rows for name in row} - set(self.relation_embeddings):
            raise InputError(
                f"unknown spatial relation {name!r}: known relations are {sorted(self.relation_embeddings)}"
            )
        return torch.stack(
            [torch.stack([self.relation_embeddings[name] for name in row]) for row in rows]
        )

    def offset_relations(self, logits: torch.Tensor, spatial_relation_name) -> torch.Tensor:
        """logits [B,D,M] + each row's relation offset (`relation_offsets`, in sorted name order)."""
        if self.relation_offsets is None:
            return logits
        position = {name: k for k, name in enumerate(OFFSET_ORDER)}
        index = [[position[name] for name in row] for row in batch_major(spatial_relation_name)]
        offsets = self.relation_offsets[torch.tensor(index, device=logits.device)]  # [B,D]
        return logits + offsets[..., None].to(logits)

    def point(self, point_features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """point_features [B*D,M,E], query [B,D,E] -> logits [B,D,M]."""
        batch, num_descs, _ = query.shape
        logits = self.pointer(point_features, query.reshape(batch * num_descs, 1, -1))  # [B*D,M,1]
        return logits.view(batch, num_descs, -1)

    def forward(
        self,
        input_xyz_pts,
        input_target_saliency_pts,
        input_reference_saliency_pts,
        output_xyz_pts,
        spatial_relation_name,
        tsdf_vol=None,
        **kwargs,
    ) -> torch.Tensor:
        batch, num_descs, num_queries, _ = output_xyz_pts.shape
        # One UNet batch holds each scene's target then reference volumes, a label that several of
        # them share once; GroupNorm is per sample, so this equals separate passes of the net.
        saliencies = torch.cat(
            [input_target_saliency_pts, input_reference_saliency_pts], dim=1
        )  # [B,2D,N,1]
        volumes, first, inverse = self.completion_net.encode_distinct(
            input_xyz_pts, saliencies, tsdf_vol
        )  # [V,C,X,Y,Z], [V], [B*2D]
        target, reference = inverse.view(batch, 2, num_descs).unbind(1)  # volume of each row [B,D]
        queries = output_xyz_pts.reshape(batch * num_descs, num_queries, 3)
        coords = self.spatial_sampler.normalized_query(self.completion_net.virtual_grid, queries)
        if num_descs > 1 and bool((output_xyz_pts == output_xyz_pts[:, :1]).all()):
            # every description queries its scene's points (evaluation): each volume is sampled once
            scene_coords = coords.view(batch, num_descs, num_queries, 3)[:, 0]  # [B,M,3]
            sampled = self.spatial_sampler.sample(volumes, scene_coords[first // (2 * num_descs)])
            pairs = [sampled[target.flatten()], sampled[reference.flatten()]]  # [B*D,M,C] each
            sampled = torch.cat(pairs, dim=-1)  # [B*D,M,2C]
        else:
            pairs = torch.cat([volumes[target.flatten()], volumes[reference.flatten()]], dim=1)
            sampled = self.spatial_sampler.sample(pairs, coords)  # [B*D,M,2C]
        point_features = self.spatial_sampler.head(sampled, coords)  # [B*D,M,E]
        logits = self.point(
            point_features, self.embed_relations(spatial_relation_name).to(point_features)
        )  # [B,D,M]
        return self.offset_relations(logits, spatial_relation_name)


TextEncoder = Callable[[list[str]], torch.Tensor]  # names -> [len(names), 512] CLIP text features


class SemanticAwareVOOL(SemAbsVOOL):
    """VOOL baseline: RGB completion net with a 64-d point head; the query is an MLP of the CLIP text
    features of the target and reference names (bare names, not normalised) and the relation embedding.

    The text features come from the batch (target_obj_text_features / reference_obj_text_features,
    [B,D,512]) when present, else from `text_encoder(names)` (e.g. open_clip ViT-B-32 encode_text).
    """

    def __init__(
        self,
        pointing_dim: int = 64,
        clip_hidden_dim: int = CLIP_TEXT_DIM,
        text_encoder: TextEncoder | None = None,
        **kwargs,
    ):
        kwargs.update(network_inputs=("rgb",), output_dim=pointing_dim)
        super().__init__(pointing_dim=pointing_dim, **kwargs)
        self.mlp = nn.Linear(2 * clip_hidden_dim + pointing_dim, pointing_dim)
        self.text_encoder = text_encoder

    def encode_names(self, names: Sequence[Sequence[str]]) -> torch.Tensor:
        """Names laid out [D][B] -> [B,D,512] text features."""
        if self.text_encoder is None:
            raise InputError(
                "SemanticAwareVOOL needs CLIP text features: pass target_obj_text_features/"
                "reference_obj_text_features in the batch or build the network with a text_encoder"
            )
        rows = batch_major(names)
        features = self.text_encoder([name for row in rows for name in row])
        return features.view(len(rows), len(rows[0]), -1)

    def forward(
        self,
        input_xyz_pts,
        input_rgb_pts,
        output_xyz_pts,
        spatial_relation_name,
        target_obj_name=None,
        reference_obj_name=None,
        target_obj_text_features=None,
        reference_obj_text_features=None,
        tsdf_vol=None,
        **kwargs,
    ) -> torch.Tensor:
        batch, num_descs, num_queries, _ = output_xyz_pts.shape
        point_features = self.completion_net(
            input_xyz_pts, input_rgb_pts, output_xyz_pts, tsdf_vol
        )  # [B,D,M,E]
        if target_obj_text_features is None:
            target_obj_text_features = self.encode_names(target_obj_name)
        if reference_obj_text_features is None:
            reference_obj_text_features = self.encode_names(reference_obj_name)
        relations = self.embed_relations(spatial_relation_name).to(point_features)
        query = self.mlp(
            torch.cat(
                [
                    target_obj_text_features.to(point_features),
                    reference_obj_text_features.to(point_features),
                    relations,
                ],
                dim=-1,
            )
        )  # [B,D,E]
        return self.point(point_features.reshape(batch * num_descs, num_queries, -1), query)


class ClipSpatialVOOL(VOOLNetwork):
    """VOOL baseline: the relevancy of the whole description sentence -> completion net -> logits."""

    def __init__(self, **kwargs):
        super().__init__(sampler_volumes=1, sampler_output_dim=1, **kwargs)

    def forward(
        self, input_xyz_pts, input_description_saliency_pts, output_xyz_pts, tsdf_vol=None, **kwargs
    ) -> torch.Tensor:
        volume = self.completion_net.encode(input_xyz_pts, input_description_saliency_pts, tsdf_vol)
        logits = self.completion_net.decode(
            self.spatial_sampler, volume, output_xyz_pts
        )  # [B,D,M,1]
        return logits.squeeze(-1)


OVSSC_NETWORKS = {"semantic_abstraction": SemAbs3D, "semantic_aware": SemanticAwareOVSSC}
VOOL_NETWORKS = {
    "semantic_abstraction": SemAbsVOOL,
    "semantic_aware": SemanticAwareVOOL,
    "clip_spatial": ClipSpatialVOOL,
}
NETWORKS = {"ovssc": OVSSC_NETWORKS, "vool": VOOL_NETWORKS}


# Constructor arguments set by the networks themselves, never taken from a configuration.
_INTERNAL_ARGUMENTS = {"self", "kwargs", "output_dim", "sampler_volumes", "sampler_output_dim"}


def network_arguments(network_class: type[nn.Module]) -> set[str]:
    """The configuration keys a network class uses: its constructors' parameters along the class
    chain, plus the completion net's for the VOOL networks."""
    classes = list(network_class.__mro__)
    if issubclass(network_class, VOOLNetwork):
        classes.append(SemAbs3D)
    names = set()
    for klass in classes:
        if "__init__" in vars(klass) and issubclass(klass, nn.Module) and klass is not nn.Module:
            names |= set(inspect.signature(klass.__init__).parameters)
    return names - _INTERNAL_ARGUMENTS


def leaves_parameters_unused(network: nn.Module) -> bool:
    """Whether a training step can leave some of the network's parameters without a gradient (the
    networks say so; any other module is assumed to)."""
    return bool(getattr(network, "leaves_parameters_unused", True))


def build_network(
    task: str,
    approach: str = "semantic_abstraction",
    config: argparse.Namespace | Mapping | None = None,
    **overrides,
) -> nn.Module:
    """The network of (task, approach), configured like the training scripts configure it.

    `config` is a training Namespace (e.g. options.load_args("args.pkl")), from which the keys the
    network uses are picked and the others (lr, epochs, ...) left; or a plain mapping, which like
    `overrides` must hold only keys the network uses: an unknown key is an InputError naming it.
    """
    if task not in NETWORKS:
        raise InputError(f"unknown task {task!r}: use ovssc or vool")
    if approach not in NETWORKS[task]:
        raise InputError(
            f"unknown {task} approach {approach!r}: use one of {sorted(NETWORKS[task])}"
        )
    network_class = NETWORKS[task][approach]
    accepted = network_arguments(network_class)
    if isinstance(config, argparse.Namespace):
        chosen = {k: v for k, v in vars(config).items() if k in accepted}
    else:
        chosen = dict(config or {})
    chosen.update(overrides)
    unknown = sorted(set(chosen) - accepted)
    if unknown:
        raise InputError(
            f"{network_class.__name__} has no argument {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    return network_class(**chosen)
