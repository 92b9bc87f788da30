"""CLIP weights in every form (clip_weights.read_weights / load_model), parity-mode crop
preprocessing, per-addition fp16 accumulators and reduced precision, on small random models."""

import argparse
import copy
import time
import warnings

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from relevancy_reference import reference_crop_relevancy

import clip_weights
import relevancy
import saliency
from utils import InputError

INT_ENTRIES = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}


@pytest.fixture(scope="module")
def openai_source():
    """A small CLIP ViT in OpenAI's storage: QuickGELU, linear weights in fp16.

    Heads = width / 64, as CLIP's build_model infers them, so the architecture is recoverable.
    """
    torch.manual_seed(6)
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=32)
    text = open_clip.model.CLIPTextCfg(layers=1, width=64, heads=1)
    source = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    open_clip.model.convert_weights_to_lp(source.eval(), dtype=torch.float16)
    return source


def maps_of(model, seed=0):
    extractor = relevancy.RelevancyExtractor(model, open_clip.get_tokenizer("ViT-B-32"))
    torch.manual_seed(seed)
    crops = torch.randn(2, 3, 224, 224)
    return extractor.crop_relevancy(crops, extractor.text_features(["cup", "lamp"], ["{}"]))


def test_every_openai_form_loads_with_quickgelu_and_gives_identical_maps(openai_source, tmp_path):
    state = openai_source.state_dict()
    archive = tmp_path / "archive.pt"
    scripted = copy.deepcopy(openai_source).float()  # same values, scriptable in fp32
    scripted.attn_mask = scripted._buffers.pop("attn_mask")  # OpenAI's files have no attn_mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        torch.jit.save(torch.jit.script(scripted), archive)
    forms = {
        "torchscript": archive,
        "plain": state,
        "plain + integer entries": {**state, **INT_ENTRIES},
        "state_dict wrapper, DDP prefix": {
            "epoch": 3,
            "state_dict": {f"module.{k}": v for k, v in {**state, **INT_ENTRIES}.items()},
        },
    }
    maps = {}
    for name, content in forms.items():
        path = content if name == "torchscript" else tmp_path / f"{len(maps)}.pt"
        if name != "torchscript":
            torch.save(content, path)
        model, model_name = clip_weights.model_from_weights(path)
        assert model_name == "ViT-B-32"  # unknown architecture: CLIP's tokenizer, heads = width/64
        assert isinstance(
            model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
        ), name
        assert model.visual.conv1.weight.dtype == torch.float32
        maps[name] = maps_of(model.eval())
    reference = maps.pop("torchscript")
    assert reference.abs().max() > 0
    for name, value in maps.items():
        assert torch.equal(value, reference), name


def test_open_clip_fp32_weights_keep_gelu_unless_the_name_says_quickgelu(openai_source, tmp_path):
    path = tmp_path / "open_clip.pt"
    torch.save({k: v.float() for k, v in openai_source.state_dict().items()}, path)
    model, _ = clip_weights.model_from_weights(path)
    assert not isinstance(
        model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )


def test_model_name_contradicting_the_weights_is_one_line(openai_source, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(openai_source.state_dict(), path)
    with pytest.raises(InputError, match="--model ViT-B-16 contradicts") as error:
        clip_weights.load_model("ViT-B-16", checkpoint=path)
    assert "patch 32" in str(error.value) and "\n" not in str(error.value)


def test_mismatch_names_missing_unexpected_and_misshaped_keys(openai_source, tmp_path):
    state = dict(openai_source.state_dict())
    del state["visual.ln_pre.bias"]
    state["visual.extra.weight"] = torch.zeros(2)
    state["visual.ln_post.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as error:
        clip_weights.model_from_weights(path)
    message = str(error.value)
    assert "1 missing: visual.ln_pre.bias" in message
    assert "1 unexpected: visual.extra.weight" in message
    assert "1 mis-shaped: visual.ln_post.weight [3] vs [64]" in message


def test_foreign_and_garbage_files_are_one_line_without_unsafe_advice(tmp_path):
    cases = {
        "foreign.pt": ({"net": {"conv.weight": torch.zeros(2)}}, "holds no CLIP ViT weights"),
        "objects.pt": ({"args": argparse.Namespace(lr=1)}, "Python objects besides tensors"),
        "list.pt": ([torch.zeros(1)], "holds a list, not a state dict"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(InputError, match=message) as error:
            clip_weights.load_model(None, checkpoint=tmp_path / name)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pt is not a PyTorch weights file") as error:
        clip_weights.load_model(None, checkpoint=tmp_path / "garbage.pt")
    assert "weights_only" not in str(error.value)


def test_offline_without_cached_weights_fails_fast_naming_every_way(monkeypatch):
    monkeypatch.setattr(clip_weights, "cached_weights", lambda *args: None)
    monkeypatch.setattr(clip_weights, "hub_reachable", lambda *args, **kwargs: False)
    start = time.perf_counter()
    with pytest.raises(InputError) as error:
        clip_weights.load_model("ViT-B-32", pretrained="openai")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    for way in ("--checkpoint PATH", "--pretrained none", "~/.cache/clip", "go online"):
        assert way in message, way


def test_parity_crop_preprocessing_equals_pil_bicubic_exactly(tiny_models):
    with pytest.warns(UserWarning):
        model, tokenizer = clip_weights.load_model("semabs-tiny-vit-224", pretrained="none")
    extractor = relevancy.RelevancyExtractor(model, tokenizer)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 300, 300, 3), dtype=np.uint8)
    ours = extractor.preprocess(torch.from_numpy(crops).permute(0, 3, 1, 2), resize="pil")
    mean = torch.tensor(relevancy.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(relevancy.CLIP_STD).view(3, 1, 1)
    for crop, got in zip(crops, ours, strict=True):
        pil = np.array(Image.fromarray(crop).resize((224, 224), Image.BICUBIC))
        expected = (torch.from_numpy(pil).permute(2, 0, 1).float() / 255 - mean) / std
        assert torch.equal(got, expected)
    fast = extractor.preprocess(torch.from_numpy(crops).permute(0, 3, 1, 2), resize="torch")
    assert not torch.equal(fast, ours)
    assert (fast - ours).abs().max() * min(relevancy.CLIP_STD) <= 0.1  # close, not equal


def test_parity_accumulators_round_to_fp16_at_every_addition():
    """Numbers whose fp16 sum depends on rounding at each addition: 1.0, then four copies of 2^-11.
    fp16's spacing at 1.0 is 2^-10, so 1 + 2^-11 is a tie that rounds (to even) back to 1.0, four
    times: the parity sum is 1.0. Added in fp32 (or small ones first) the sum is 1 + 2^-9 =
    1.001953125, exact in fp16 too. The crop is 2x2 with a 2x2 tile, so the upsampling is exact."""
    values = [1.0] + [2.0**-11] * 4  # the five copies, in the order they are added
    sums = [torch.tensor(values).reshape(5, 1, 1, 1, 1).expand(5, 1, 1, 2, 2).contiguous()]
    tiles = [(2, [(0, 0)])]
    counts = np.float32(1e-5)
    for _ in values:
        counts = np.float32(counts + np.float32(1))
    parity = relevancy.paste_back(sums, tiles, (2, 2), copies=5, tiling="parity")
    assert torch.equal(parity, torch.full((1, 2, 2), float(np.float32(1.0) / counts)))
    full = relevancy.paste_back(sums, tiles, (2, 2), copies=5, tiling="full")
    torch.testing.assert_close(full, torch.full((1, 2, 2), 1.001953125 / float(counts)))
    small_first = relevancy.paste_back([sums[0].flip(0)], tiles, (2, 2), copies=5, tiling="parity")
    torch.testing.assert_close(small_first, full)  # the order of additions matters in fp16


def test_bf16_autocast_on_cpu_is_close_to_fp32_and_fp32_unchanged(openai_source, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(openai_source.state_dict(), path)
    model, _ = clip_weights.load_model(None, checkpoint=path)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    exact = relevancy.RelevancyExtractor(model, tokenizer)
    low = relevancy.RelevancyExtractor(model, tokenizer, precision="bf16")
    crops = torch.randn(2, 3, 224, 224)
    text = exact.text_features(["cup", "lamp"], ["{}"])
    reference = reference_crop_relevancy(model, crops, text)
    fp32 = exact.crop_relevancy(crops, text)
    assert (fp32 - reference).abs().max() <= 1e-5 * (reference.max() - reference.min())
    bf16 = low.crop_relevancy(crops, text)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().max() <= 0.1 * (fp32.max() - fp32.min())
    with pytest.raises(InputError, match="unknown precision"):
        relevancy.RelevancyExtractor(model, tokenizer, precision="fp8")


def test_cuda_out_of_memory_halves_the_batch_and_gives_the_same_maps(tiny_models, monkeypatch):
    with pytest.warns(UserWarning):
        model, tokenizer = clip_weights.load_model("semabs-tiny-vit", pretrained="none")
    extractor = relevancy.RelevancyExtractor(model, tokenizer, batch_size=8)
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    config = saliency.saliency_config("chefer_et_al", 16)  # 15 crops
    expected, _ = extractor(image, ["a", "b"], config=config)
    real, sizes = extractor._chunk_maps, []

    def small_memory(copies, tiles, chunk, text, config):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(copies, tiles, chunk, text, config)

    monkeypatch.setattr(extractor, "_chunk_maps", small_memory)
    maps, _ = extractor(image, ["a", "b"], config=config)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    # batch size changes fp32 summation order, which can flip one fp16 accumulator rounding
    assert (maps - expected).abs().max() <= 1e-3 * (expected.max() - expected.min())
