"""The networks: released state-dict layouts, forward shapes, gradients, and the kept quirks."""

import json

import pytest
import torch
from net_fixtures import APPROACHES, RELATIONS, random_batch, small_network

import net

STATE_DICTS = {
    "ovssc_ours": ("ovssc", "semantic_abstraction"),
    "ovssc_chefer_et_al": ("ovssc", "semantic_abstraction"),
    "ovssc_semantic_aware": ("ovssc", "semantic_aware"),
    "vool_ours": ("vool", "semantic_abstraction"),
    "vool_chefer_et_al": ("vool", "semantic_abstraction"),
    "vool_semantic_aware": ("vool", "semantic_aware"),
    "vool_clip_spatial": ("vool", "clip_spatial"),
}


@pytest.mark.parametrize("name", sorted(STATE_DICTS))
def test_default_network_matches_released_state_dict(shared_dir, name):
    reference = json.loads((shared_dir / "spec" / "state_dicts" / f"{name}.json").read_text())
    network = net.build_network(*STATE_DICTS[name])
    assert type(network).__name__ == reference["class"]
    ours = [(key, list(value.shape)) for key, value in network.state_dict().items()]
    assert ours == list(reference["state_dict"].items())  # same keys, shapes and order
    assert sum(p.numel() for p in network.parameters()) == reference["total_params"]


def test_released_spec_has_all_seven_state_dicts(shared_dir):
    names = {path.stem for path in (shared_dir / "spec" / "state_dicts").glob("*.json")}
    assert names == set(STATE_DICTS)


@pytest.mark.parametrize("name", sorted(APPROACHES))
def test_forward_shape_at_32_cubed(name):
    network = small_network(name, voxel_shape=(32, 32, 32), unet_num_levels=4)
    batch = random_batch(name, batch=2, rows=3, num_input=3000, num_output=700)
    with torch.no_grad():
        logits = network(**batch)
    assert logits.shape == (2, 3, 700)
    assert torch.isfinite(logits).all()
    assert network.steps.shape == (1,)


# Parameters that the original's forward never uses (models.md 2.7, "unused params").
UNUSED = {
    "SemAbs3D": set(),
    "SemanticAwareOVSSC": set(),
    "SemAbsVOOL": {"completion_net.visual_sampler"},
    "SemanticAwareVOOL": {"spatial_sampler"},
    "ClipSpatialVOOL": {"completion_net.visual_sampler"},
}


@pytest.mark.parametrize("name", sorted(APPROACHES))
def test_every_used_parameter_gets_a_gradient(name):
    network = small_network(name)
    batch = random_batch(name, batch=2, rows=len(RELATIONS) // 2 + 1)
    # Cover all seven relation embeddings across the batch.
    if "spatial_relation_name" in batch:
        rows = len(batch["spatial_relation_name"])
        batch["spatial_relation_name"] = [
            [RELATIONS[(2 * d + b) % 7] for b in range(2)] for d in range(rows)
        ]
    network(**batch).square().mean().backward()
    no_grad = {
        key for key, p in network.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
    }
    expected = {key for key, _ in network.named_parameters() if key.startswith(tuple(UNUSED[name]))}
    assert no_grad == expected


def test_unet_activation_checkpointing_gives_same_outputs_and_gradients():
    batch = random_batch("SemAbs3D")
    results = []
    for checkpointing in (False, True):
        network = small_network("SemAbs3D", activation_checkpointing=checkpointing)
        logits = network(**batch)
        logits.sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in network.parameters()]))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    torch.testing.assert_close(plain, ckpt)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_semantic_aware_ovssc_runs_unet_once_with_the_repeated_volume_output():
    network = small_network("SemanticAwareOVSSC").eval()
    batch = random_batch("SemanticAwareOVSSC", batch=2, rows=4)
    calls, outputs = [], []
    network.vol_feature_extractor.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0]) or outputs.append(o)
    )
    with torch.no_grad():
        logits = network(**batch)
        # The original: copy the UNet volume once per class (batch-major), decode each copy, cosine / 0.07.
        volume = outputs[0].repeat_interleave(4, dim=0)  # [B*P,C,X,Y,Z]
        queries = batch["output_xyz_pts"].reshape(8, -1, 3)
        features = network.visual_sampler(volume, network.virtual_grid, queries)  # [B*P,M,512]
        text = batch["semantic_class_features"].reshape(8, 1, -1)
        reference = (torch.nn.functional.cosine_similarity(features, text, dim=-1) / 0.07).view(
            2, 4, -1
        )
    assert calls == [2]  # one UNet pass over B=2 volumes, not B*P=8
    torch.testing.assert_close(logits, reference)


def test_vool_single_unet_batch_equals_two_completion_passes():
    network = small_network("SemAbsVOOL").eval()
    batch = random_batch("SemAbsVOOL", batch=2, rows=3)
    with torch.no_grad():
        logits = network(**batch)
        cn = network.completion_net
        target = cn.encode(batch["input_xyz_pts"], batch["input_target_saliency_pts"])
        reference = cn.encode(batch["input_xyz_pts"], batch["input_reference_saliency_pts"])
        features = network.spatial_sampler(
            torch.cat([target, reference], dim=1),
            cn.virtual_grid,
            batch["output_xyz_pts"].reshape(6, -1, 3),
        )  # [B*D,M,64]
        relations = batch["spatial_relation_name"]  # [D][B]
        expected = torch.stack(
            [
                torch.stack(
                    [
                        torch.nn.functional.cosine_similarity(
                            features[b * 3 + d],
                            network.relation_embeddings[relations[d][b]][None],
                            dim=-1,
                        )
                        / 0.07
                        for d in range(3)
                    ]
                )
                for b in range(2)
            ]
        )
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_vool_relation_offsets_shift_each_row_by_its_relation():
    """relation_offsets adds its buffer's entry of each row's relation (sorted names) to that row's
    logits; the rest is the same network (same weights)."""
    batch = random_batch("SemAbsVOOL", batch=2, rows=3)
    plain = small_network("SemAbsVOOL").eval()
    offset = small_network("SemAbsVOOL", relation_offsets=True).eval()
    assert set(offset.state_dict()) - set(plain.state_dict()) == {"relation_offsets"}
    assert not any("relation_offsets" in name for name, _ in offset.named_parameters())
    offset.load_state_dict({**plain.state_dict(), "relation_offsets": torch.arange(7) * 0.5})
    with torch.no_grad():
        shift = offset(**batch) - plain(**batch)  # [B,D,M]
    relations = batch["spatial_relation_name"]  # [D][B]
    order = sorted(RELATIONS)
    expected = torch.tensor(
        [[0.5 * order.index(relations[d][b]) for d in range(3)] for b in range(2)]
    )
    torch.testing.assert_close(shift, expected[..., None].expand_as(shift), rtol=0, atol=1e-5)


def test_vool_unknown_relation_is_a_clear_error():
    network = small_network("SemAbsVOOL")
    batch = random_batch("SemAbsVOOL", batch=1, rows=1)
    batch["spatial_relation_name"] = [["under"]]
    with pytest.raises(net.InputError, match="unknown spatial relation 'under'"):
        network(**batch)


def test_semantic_aware_vool_text_encoder_receives_names_batch_major():
    seen = []

    def text_encoder(names):
        seen.append(list(names))
        return torch.stack([torch.full((net.CLIP_TEXT_DIM,), float(len(name))) for name in names])

    network = small_network("SemanticAwareVOOL", text_encoder=text_encoder).eval()
    batch = random_batch("SemanticAwareVOOL", batch=2, rows=3)
    with torch.no_grad():
        from_encoder = network(
            **{k: v for k, v in batch.items() if not k.endswith("text_features")}
        )
        features = {
            key: text_encoder([n for row in net.batch_major(batch[name]) for n in row]).view(
                2, 3, -1
            )
            for key, name in (
                ("target_obj_text_features", "target_obj_name"),
                ("reference_obj_text_features", "reference_obj_name"),
            )
        }
        from_batch = network(**{**batch, **features})
    assert seen[0] == [
        "object 0 0",
        "object 1 0",
        "object 2 0",
        "object 0 1",
        "object 1 1",
        "object 2 1",
    ]
    torch.testing.assert_close(from_encoder, from_batch)


def test_semantic_aware_vool_without_text_features_says_what_to_pass():
    network = small_network("SemanticAwareVOOL")
    batch = {
        k: v
        for k, v in random_batch("SemanticAwareVOOL").items()
        if not k.endswith("text_features")
    }
    with pytest.raises(net.InputError, match="needs CLIP text features"):
        network(**batch)


def test_tsdf_input_is_channel_zero_and_shape_checked():
    network = small_network("SemAbs3D", network_inputs=("saliency", "tsdf"))
    assert network.pts_feat_extractor[4].out_features == 7  # unet_num_channels - 1
    batch = random_batch("SemAbs3D")
    seen = []
    network.vol_feature_extractor.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    tsdf = torch.rand(2, 16, 16, 16)
    network(**batch, tsdf_vol=tsdf)
    torch.testing.assert_close(seen[0][:, 0], tsdf.repeat_interleave(3, dim=0))
    with pytest.raises(net.InputError, match="tsdf_vol must be"):
        network(**batch, tsdf_vol=torch.ones(2))


def test_build_network_rejects_unknown_task_and_approach():
    with pytest.raises(net.InputError, match="unknown task"):
        net.build_network("ssc")
    with pytest.raises(net.InputError, match="clip_spatial"):
        net.build_network("ovssc", "clip_spatial")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_network_follows_its_device_on_cuda():
    network = small_network("SemAbsVOOL").eval()
    batch = random_batch("SemAbsVOOL")
    with torch.no_grad():
        on_cpu = network(**batch)
        on_gpu = network.cuda()(
            **{k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
        )
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)
