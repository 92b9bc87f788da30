"""The networks: released state-dict layouts, forward shapes, gradients, and the kept quirks."""

import json
from pathlib import Path

import pytest
import torch
from net_fixtures import APPROACHES, RELATIONS, random_batch, small_network

import net
import tasks
from utils import InputError

# Names and shapes of the seven released checkpoints' state dicts, in state-dict order, with their
# class and parameter count: facts about the released files, kept as test data.
RELEASED = Path(__file__).parent / "data" / "state_dicts"
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
def test_default_network_matches_released_state_dict(name):
    reference = json.loads((RELEASED / f"{name}.json").read_text())
    network = net.build_network(*STATE_DICTS[name])
    assert type(network).__name__ == reference["class"]
    ours = [(key, list(value.shape)) for key, value in network.state_dict().items()]
    assert ours == list(reference["state_dict"].items())  # same keys, shapes and order
    assert sum(p.numel() for p in network.parameters()) == reference["total_params"]


def test_the_test_data_has_all_seven_released_state_dicts():
    names = {path.stem for path in RELEASED.glob("*.json")}
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


# Parameters that the original's forward never uses (docs/method.md#the-baselines-of-the-paper).
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


def test_vool_rows_with_equal_inputs_share_one_unet_pass(monkeypatch):
    """Equal relevancy rows of one scene (a label two descriptions share) go through the UNet once;
    equal rows of two scenes do not (their points differ). Logits and gradients are those of one
    pass per row."""
    batch = random_batch("SemAbsVOOL", batch=2, rows=3)
    target, reference = batch["input_target_saliency_pts"], batch["input_reference_saliency_pts"]
    target[0, 1] = target[0, 0]  # two descriptions of scene 0 share their target
    reference[0, 2] = target[0, 0]  # and a third has it as its reference
    target[1, 0] = target[0, 0]  # scene 1: the same map over its own points
    network = small_network("SemAbsVOOL")
    sizes = []
    network.completion_net.vol_feature_extractor.register_forward_hook(
        lambda module, inputs, output: sizes.append(len(inputs[0]))
    )

    def logits_and_gradients():
        network.zero_grad()
        logits = network(**batch)
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    logits, grads = logits_and_gradients()
    every_row = lambda features, rows_per_scene: (torch.arange(len(features)),) * 2  # noqa: E731
    monkeypatch.setattr(net, "distinct_rows", every_row)
    expected_logits, expected_grads = logits_and_gradients()
    assert sizes == [2 * 2 * 3 - 2, 2 * 2 * 3]
    torch.testing.assert_close(logits, expected_logits)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_vool_descriptions_on_shared_points_equal_one_description_at_a_time():
    """Evaluation queries every description at the scene's points: each volume is then sampled
    once, with the logits of running the descriptions one by one."""
    batch = random_batch("SemAbsVOOL", batch=2, rows=3)
    batch["output_xyz_pts"] = batch["output_xyz_pts"][:, :1].expand(-1, 3, -1, -1)
    batch["input_reference_saliency_pts"][:, 2] = batch["input_target_saliency_pts"][:, 0]
    network = small_network("SemAbsVOOL").eval()
    with torch.no_grad():
        logits = network(**batch)
        one_by_one = tasks.chunked_forward(network, batch, tasks.VOOL_ROW_KEYS, rows=3)
    torch.testing.assert_close(logits, one_by_one, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize(
    "f_maps, groups, problem",
    [
        (12, 8, "--unet_f_maps 12 at level 0: 12 channels, not a multiple of --unet_num_groups 8"),
        (6, 8, "--unet_f_maps 6 at level 1: 12 channels, not a multiple of --unet_num_groups 8"),
    ],
)
def test_a_unet_width_its_group_norms_cannot_split_is_one_line(f_maps, groups, problem):
    with pytest.raises(InputError) as error:
        net.SemAbs3D(
            voxel_shape=(8, 8, 8), unet_num_levels=2, unet_f_maps=f_maps, unet_num_groups=groups
        )
    assert str(error.value).startswith(problem) and "\n" not in str(error.value)
    net.SemAbs3D(voxel_shape=(8, 8, 8), unet_num_levels=2, unet_f_maps=f_maps, unet_num_groups=2)
