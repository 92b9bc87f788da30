"""relevancy.py with small random-weight open_clip ViTs: per-crop maths, batched backward, flips,
tiling and coverage, paste-back, text features, weight loading."""

import warnings
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from relevancy_models import TINY, TINY_224
from relevancy_reference import coverage, reference_crop_relevancy

import clip_weights
import relevancy
import saliency
from saliency import SaliencyConfig
from utils import InputError


@pytest.fixture(scope="module")
def extractor224(tiny_models):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random CLIP weights"):
        model, tokenizer = clip_weights.load_model(TINY_224, pretrained="none")
    return relevancy.RelevancyExtractor(model, tokenizer)


@pytest.fixture(scope="module")
def extractor64(tiny_models):
    torch.manual_seed(1)
    with pytest.warns(UserWarning):
        model, tokenizer = clip_weights.load_model(TINY, pretrained="none")
    return relevancy.RelevancyExtractor(model, tokenizer)


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_crop_map_equals_attention_times_gradient_from_open_clip_forward(extractor224, monkeypatch):
    """Hand computation through open_clip's own forward: record the last block's per-head attention
    weights (torch MultiheadAttention, need_weights), backprop each label's logit, apply
    docs/method.md#one-crop-a-chefer-style-map."""
    model = extractor224.model
    block = model.visual.transformer.resblocks[-1]
    recorded = {}

    def attention(q_x, k_x=None, v_x=None, attn_mask=None):
        out, weights = block.attn(q_x, q_x, q_x, need_weights=True, average_attn_weights=False)
        probabilities = (
            weights._base
        )  # torch returns a view of the (B * heads, T, T) tensor it used
        probabilities.retain_grad()
        recorded["weights"] = probabilities
        return out

    crops = torch.randn(3, 3, 224, 224)
    text = extractor224.text_features(["mug", "chair"], [relevancy.HOME_PROMPT])
    expected = []
    monkeypatch.setattr(block, "attention", attention)
    with torch.enable_grad():
        features = model.encode_image(crops.requires_grad_(True), normalize=True)
        logits = 100 * features @ text.T
        for p in range(2):
            recorded["weights"].grad = None
            logits[:, p].sum().backward(retain_graph=True)
            weights = recorded["weights"]
            cam = (
                (weights.grad * weights).clamp(min=0).view(3, -1, 50, 50).mean(1)[:, 0, 1:]
            )  # (B, 49)
            expected.append(cam.reshape(3, 7, 7))
    monkeypatch.undo()
    maps = extractor224.crop_relevancy(crops.detach(), text)
    assert maps.shape == (2, 3, 7, 7)
    torch.testing.assert_close(maps, torch.stack(expected), rtol=1e-4, atol=1e-7)
    assert maps.abs().max() > 0


def test_batched_backward_equals_per_label_autograd_grad(extractor224):
    crops = torch.randn(4, 3, 224, 224)
    text = extractor224.text_features(["a", "b", "c", "d", "e"], [relevancy.HOME_PROMPT])
    fast = extractor224.crop_relevancy(crops, text)
    reference = reference_crop_relevancy(extractor224.model, crops, text)
    assert (fast - reference).abs().max() <= 1e-5 * (reference.max() - reference.min())
    unclamped = extractor224.crop_relevancy(crops, text, positive_only=False)
    assert (unclamped < 0).any() and (fast >= 0).all()


def test_bf16_weights_cast_once_give_autocasts_maps(extractor224):
    """bf16 keeps a copy of the tower with its matrix-product weights already bf16: with attention's
    fused path off, its forward equals autocast's casting the fp32 weights on every call bit for bit,
    the maps to a bf16 rounding (the backward sums in another order); its maps are close to fp32's,
    and the caller's model stays fp32."""
    model, tokenizer = extractor224.model, extractor224.tokenizer
    low = relevancy.RelevancyExtractor(model, tokenizer, precision="bf16")
    block = low.visual.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == block.attn.out_proj.weight.dtype == torch.bfloat16
    assert block.mlp.c_fc.weight.dtype == low.visual.conv1.weight.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == low.visual.positional_embedding.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    crops = torch.randn(3, 3, 224, 224)
    text = low.text_features(["mug", "chair"], [relevancy.HOME_PROMPT])
    maps = low.crop_relevancy(crops, text)
    fp32 = extractor224.crop_relevancy(crops, text)
    assert 0 < (maps - fp32).abs().max() < 0.05 * (fp32.max() - fp32.min())

    def tokens_and_maps(visual):
        low.visual = visual
        with low._autocast():
            tokens = low._last_block_inputs(crops)
        return tokens, low.crop_relevancy(crops, text)

    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        tokens_cast_once, cast_once = tokens_and_maps(low.visual)
        tokens_cast_each_call, cast_each_call = tokens_and_maps(model.visual)
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
    assert tokens_cast_once.dtype == torch.bfloat16
    assert torch.equal(tokens_cast_once, tokens_cast_each_call)
    assert (cast_once - cast_each_call).abs().max() <= 2**-7 * cast_each_call.abs().max()


def test_patch_grid_comes_from_the_model(extractor64):
    maps = extractor64.crop_relevancy(
        torch.randn(2, 3, 64, 64), extractor64.text_features(["x"], ["{}"])
    )
    assert maps.shape == (1, 2, 4, 4)


def test_flip_averaging_is_mean_of_map_and_mirrored_crops_map(extractor224):
    image = random_image(224, 224)
    with_flip = SaliencyConfig(
        ((224, 56),), horizontal_flipping=True, augmentations=0, tiling="full"
    )
    plain = SaliencyConfig(((224, 56),), horizontal_flipping=False, augmentations=0, tiling="full")
    labels = ["cup", "lamp"]
    flipped, _ = extractor224(image, labels, config=with_flip)
    straight, _ = extractor224(image, labels, config=plain)
    mirrored, _ = extractor224(np.ascontiguousarray(image[:, ::-1]), labels, config=plain)
    assert not torch.allclose(straight, mirrored.flip(-1), atol=1e-6)
    torch.testing.assert_close(flipped, (straight + mirrored.flip(-1)) / 2, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    ("width", "height", "counts"),
    [
        (640, 480, [2, 15, 35, 208]),
        (896, 896, [1, 9, 25, 169]),
        (512, 512, [1, 9, 25, 169]),
        (1280, 1024, [2, 12, 35, 208]),
        (192, 256, [0, 3, 15, 108]),  # portrait ARKit, img_dim = height
        (1280, 720, [4, 18, 40, 208]),
    ],
)
def test_parity_crop_counts_match_the_original(width, height, counts):
    tiles = saliency.scale_tiles(height, width, saliency.saliency_config("ours", height))
    assert [len(regions) for _, regions in tiles] == counts


def test_parity_coverage_and_full_tiling_covers_every_pixel():
    config = saliency.saliency_config("ours", 480)
    covered = coverage(480, 640, config)
    uncovered_columns = [(~c.any(0)).sum() for c in covered]
    assert uncovered_columns == [40, 0, 40, 70]  # docs/method.md#crops-scales-copies-and-flips
    assert covered[3][:, :570].all() and not covered[3][:, 570:].any()
    assert saliency.num_crop_forwards(480, 640, config) == 3120
    for height, width in [(480, 640), (720, 1280), (256, 192), (300, 301)]:
        for name in saliency.CONFIGS:
            full = saliency.saliency_config(name, height, tiling="full")
            assert coverage(height, width, full).all(), (name, height, width)


def test_chefer_parity_leaves_last_columns_zero_and_full_fills_them(extractor64):
    image = random_image(48, 64)
    parity, features = extractor64(
        image, ["a", "b"], config=saliency.saliency_config("chefer_et_al", 48)
    )
    assert parity.shape == (2, 48, 64) and features.shape == (2, 32)
    assert (parity[:, :, 60:] == 0).all() and (
        parity[:, :, :60] > 0
    ).all()  # crops at cols 0 and 12
    full, _ = extractor64(
        image, ["a", "b"], config=saliency.saliency_config("chefer_et_al", 48, "full")
    )
    assert (full > 0).all()


def test_paste_back_means_per_scale_then_over_scales():
    tiles = [(4, [(0, 0), (0, 2)]), (2, [(0, 0)])]
    sums = [
        torch.tensor([[[[1.0]], [[3.0]]]]).expand(1, 2, 2, 2) * 2,
        torch.full((1, 1, 2, 2), 10.0),
    ]
    out = relevancy.paste_back(sums, tiles, (4, 6), copies=2, tiling="full")
    # scale 4: copies summed -> region means 1 and 3; overlap columns 2-3 average to 2
    scale4 = torch.tensor([1.0, 1, 2, 2, 3, 3]).expand(4, 6)
    scale2 = torch.zeros(4, 6)
    scale2[:2, :2] = 5.0
    expected = (scale4 * 4 / (4 + 1e-5) + scale2) / 2
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5)


def test_ours_end_to_end_is_seeded_and_differs_across_seeds(extractor64):
    image = random_image(16, 20)
    config = saliency.saliency_config("ours", 16)
    config = replace(config, scales=config.scales[:3])  # without the 4 px tiles: 732 forwards
    first, _ = extractor64(image, ["a", "b"], config=config, seed=3)
    again, _ = extractor64(image, ["a", "b"], config=config, seed=3)
    other, _ = extractor64(image, ["a", "b"], config=config, seed=4)
    assert first.shape == (2, 16, 20) and torch.isfinite(first).all()
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_text_features_are_normalised_prompt_means_without_renormalising(extractor64):
    prompts = ["a photo of a {}.", "a drawing of a {}."]
    features = extractor64.text_features(["cup", "dog"], prompts)
    tokens = extractor64.tokenizer([p.format("cup") for p in prompts])
    with torch.no_grad():
        each = F.normalize(extractor64.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(features[0], each.mean(0))
    assert features.norm(dim=-1).max() < 1
    single = extractor64.text_features(["cup"], prompts[:1])
    torch.testing.assert_close(single.norm(dim=-1), torch.ones(1))


def test_bad_inputs_raise_input_error(extractor64, tiny_models):
    with pytest.raises(InputError, match="unknown saliency config"):
        saliency.saliency_config("best", 480)
    with pytest.raises(InputError, match="unknown tiling"):
        saliency.saliency_config("ours", 480, tiling="half")
    with pytest.raises(InputError, match="uint8"):
        extractor64(np.zeros((8, 8, 3), np.float32), ["a"])
    with pytest.raises(InputError, match="no labels"):
        extractor64(random_image(8, 8), [])
    with pytest.raises(InputError, match="unknown open_clip model"):
        clip_weights.load_model("ViT-X-99", pretrained="none")
    with pytest.raises(InputError, match="checkpoint file not found"):
        clip_weights.load_model(TINY, checkpoint="/nonexistent/clip.pt")


def test_missing_weights_error_names_both_options(tiny_models, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(InputError, match="--checkpoint PATH") as error:
        clip_weights.load_model("ViT-B-32", pretrained="openai")
    assert "--pretrained openai" in str(error.value)


def test_checkpoint_file_round_trip(tiny_models, tmp_path):
    torch.manual_seed(5)
    source = open_clip.create_model(TINY, pretrained=None)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    loaded, _ = clip_weights.load_model(TINY, checkpoint=path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="is not a PyTorch weights file"):
        clip_weights.load_model(TINY, checkpoint=path)


def test_default_prompt_follows_the_path():
    assert relevancy.default_prompt("data/thor/") == relevancy.THOR_PROMPT
    assert relevancy.default_prompt("/data/Matterport3D/x") == relevancy.HOME_PROMPT
    assert relevancy.default_prompt("nyu_ovssc/") == relevancy.HOME_PROMPT


def test_openai_format_torchscript_checkpoint_loads_with_fp16_rounded_weights(tmp_path):
    """An OpenAI-format file (a TorchScript archive, as ~/.cache/clip/ViT-B-32.pt): the architecture
    is read from the file and the weights come back fp16-rounded, as in the original."""
    torch.manual_seed(6)
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=32)
    text = open_clip.model.CLIPTextCfg(layers=1, width=64, heads=1)
    source = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    source.attn_mask = source._buffers.pop("attn_mask")  # OpenAI's files have no attn_mask entry
    path = tmp_path / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        torch.jit.save(torch.jit.script(source), path)
        loaded, _ = clip_weights.load_model(None, checkpoint=path)  # architecture from the file
        with pytest.raises(InputError, match="--model ViT-B-32 contradicts"):
            clip_weights.load_model("ViT-B-32", checkpoint=path)
    state = loaded.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(state[name], tensor) or torch.equal(
            state[name], tensor.half().float()
        ), name
    assert loaded.visual.transformer.resblocks[-1].attn.num_heads == 1  # width 64 / 64
    extractor = relevancy.RelevancyExtractor(loaded, open_clip.get_tokenizer("ViT-B-32"))
    maps = extractor.crop_relevancy(
        torch.randn(1, 3, 224, 224), extractor.text_features(["x"], ["{}"])
    )
    assert maps.shape == (1, 1, 7, 7)
