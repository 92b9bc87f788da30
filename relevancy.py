"""Multi-scale CLIP relevancy maps on open_clip vision transformers: the algorithm of
docs/method.md#multi-scale-relevancy.

Defines the per-crop Chefer-style relevancy of the last visual block, the extractor that cuts an
image into crops (saliency.py: configs and tiling), runs them in batches with flip averaging and
pastes the maps back, and the text features used as targets. The CLIP weights come from
clip_weights.py.

Per crop c and label p the map is (docs/method.md#one-crop-a-chefer-style-map):

    rel[p, c] = mean_heads( max(0, dS_p/dA * A) )[CLS row, patch columns] -> (grid, grid)

with A the post-softmax attention of the LAST visual block and S_p = 100 * cos(f_c, t_p). Only the
CLS output of the last block reaches the image feature (token pooling), so only A's CLS row has a
gradient and only that row is built with autograd; the blocks before it run without autograd, and
all labels' gradients come from one batched vector-Jacobian product
(`torch.autograd.grad(..., is_grads_batched=True)`).

Quirks kept for parity (default `tiling="parity"`), fixed by `tiling="full"` (`--tiling full`):
* a column offset is skipped when it is >= the image height: landscape images lose columns
  (docs/method.md#crops-scales-copies-and-flips);
* no edge crop: pixels beyond the last full stride are not covered at that scale;
* a tile larger than the image gives no crop (portrait images with img_dim = height);
* every pixel is divided by the number of scales, covered or not, and the per-scale
  accumulators are rounded to fp16 at every addition
  (docs/method.md#paste-back-and-the-mean-over-scales).
Crops are resized with PIL's bicubic one by one by default (`resize="pil"`, `--resize pil`,
docs/method.md#weights-preprocessing-and-precision), as the original; `resize="torch"` (the `fast`
config's, or `--resize torch`) resizes a batch with torch's antialiased uint8 bicubic instead (same
filter family, small rounding differences).
Known differences from the original that are not flags: the colour jitter is torchvision's on
tensors, seeded (the original never seeded it); labels are not re-run in chunks of 32 (all labels
share one image forward).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import ColorJitter
from tqdm import tqdm

from clip_weights import load_model
from processes import bf16_emulated_on
from saliency import SaliencyConfig, saliency_config, scale_tiles
from utils import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 100.0  # fixed factor of the original, not logit_scale.exp()
HOME_PROMPT = "a photograph of a {} in a home."
THOR_PROMPT = "a render of a {} in a game engine."
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# The 80 ImageNet prompt templates of CLIP, used when a config sets imagenet_prompt_ensemble
# (docs/method.md#prompts-and-text-features).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def low_precision_copy(visual: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """visual itself for fp32 (dtype None), else a copy whose matrix-product weights (linear layers,
    attention projections, patch embedding, output projection) are already in dtype.

    Under autocast with the fp32 weights, every call cast each weight again (autocast caches a cast
    only for weights that require grad, within one autocast region), and nn.MultiheadAttention took
    its fused path, which autocast does not reach, so attention ran in fp32. With the weights in
    dtype the attention blocks run in dtype too (their projections and scaled-dot-product attention)
    and nothing is cast twice: a CPU bf16 batch took half the fp32 time instead of as long, with
    maps about as close to fp32's (docs/performance.md#bf16-on-the-cpu). Layer norms, embeddings and
    the additions stay fp32, as autocast keeps them. The copy costs 2 bytes a weight and leaves the
    caller's model as it is.
    """
    if dtype is None:
        return visual
    low = copy.deepcopy(visual)
    tensors = [low.proj]
    for module in low.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            names = ("in_proj_weight", "in_proj_bias", *(f"{x}_proj_weight" for x in "qkv"))
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            names = ("weight", "bias")
        else:
            continue
        tensors += [getattr(module, name, None) for name in names]
    for tensor in tensors:
        if tensor is not None:
            tensor.data = tensor.data.to(dtype)
    return low


# --------------------------------------------------------------------------------------------------
# Extractor


class RelevancyExtractor:
    """Relevancy maps of an open_clip ViT (token pooling, nn.MultiheadAttention blocks).

    `precision` "fp16" / "bf16" runs the image side under torch.autocast (the original ran the
    whole model in fp16 on CUDA: docs/method.md#weights-preprocessing-and-precision): not parity, the maps move
    (docs/performance.md#relevancy); "fp32" is exact. The scripts allow on each device only what
    its hardware runs (check_precision). `batch_size` counts crop forwards (flipped copies
    included); None picks one from free GPU memory on CUDA (32 on CPU), and a CUDA out-of-memory
    error halves it and retries.
    """

    def __init__(
        self,
        model,
        tokenizer,
        device: str | torch.device = "cpu",
        batch_size: int | None = 32,
        precision: str = "fp32",
    ):
        visual = model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if (
            blocks is None
            or not isinstance(blocks[-1].attn, torch.nn.MultiheadAttention)
            or getattr(visual, "pool_type", None) != "tok"
            or getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "final_ln_after_pool", False)
        ):
            raise InputError(
                "relevancy needs an open_clip ViT with CLS-token pooling (e.g. ViT-B-32)"
            )
        if precision not in PRECISIONS:
            raise InputError(
                f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision]
        self.visual = low_precision_copy(visual, self.autocast_dtype)
        self.batch_size = batch_size if batch_size is not None else self._auto_batch_size()
        self.input_size = (
            visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        )
        self.grid = visual.grid_size[0]
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or CLIP_STD).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._crop_seconds: float | None = None

    def _auto_batch_size(self) -> int:
        """Crops per batch that fit half the free GPU memory (32 on CPU)."""
        if self.device.type != "cuda":
            return 32
        free, _ = torch.cuda.mem_get_info(self.device)
        visual = self.visual
        tokens = visual.grid_size[0] * visual.grid_size[1] + 1
        element = 4 if self.autocast_dtype is None else 2
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        # one block's live activations (qkv, 4x MLP, residuals ~ 16 widths) + the input crop
        per_crop = tokens * visual.transformer.width * element * 16 + 3 * size * size * 4 * 2
        return int(max(32, min(1024, free // 2 // per_crop)))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ---- text side (docs/method.md#prompts-and-text-features)

    @torch.no_grad()
    def text_features(self, labels: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """(N, D): per label, the mean over prompts of the L2-normalised prompt embeddings.

        QUIRK (parity): the mean is not re-normalised, so a multi-prompt feature has norm < 1.
        Always fp32, whatever the precision.
        """
        missing = [
            (lab, p)
            for lab in dict.fromkeys(labels)
            for p in prompts
            if (lab, p) not in self._text_cache
        ]
        if missing:
            texts = [p.format(lab) for lab, p in missing]
            tokens = self.tokenizer(texts).to(self.device)
            features = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
            self._text_cache.update(zip(missing, features, strict=True))
        return torch.stack(
            [torch.stack([self._text_cache[(lab, p)] for p in prompts]).mean(0) for lab in labels]
        )

    # ---- per crop (docs/method.md#one-crop-a-chefer-style-map)

    def _last_block_inputs(self, crops: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        with torch.no_grad():
            tokens = visual._embeds(crops)  # (B, T, width)
            for block in visual.transformer.resblocks[:-1]:
                tokens = block(tokens)
        return tokens

    def crop_logits(self, tokens: torch.Tensor, text: torch.Tensor):
        """Last block for the CLS query only.

        Returns the CLS-row attention (B, heads, T), requiring grad, and the logits (B, N).
        """
        visual = self.visual
        block = visual.transformer.resblocks[-1]
        attn_module = block.attn
        heads = attn_module.num_heads
        batch, num_tokens, width = tokens.shape
        head_dim = width // heads
        with torch.no_grad():
            q, k, v = F.linear(
                block.ln_1(tokens), attn_module.in_proj_weight, attn_module.in_proj_bias
            ).chunk(3, -1)
            q = q[:, 0].view(batch, heads, 1, head_dim) * head_dim**-0.5  # (B, h, 1, hd)
            k = k.view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # (B, h, T, hd)
            v = v.view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # (B, h, T, hd)
            attention = (q @ k.transpose(-1, -2)).softmax(-1).squeeze(2)  # (B, h, T)
        attention.requires_grad_(True)
        heads_out = (attention.unsqueeze(2) @ v).reshape(batch, 1, width)  # (B, 1, width)
        cls = tokens[:, :1] + block.ls_1(attn_module.out_proj(heads_out))
        cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
        pooled, _ = visual._pool(cls)
        features = F.normalize(pooled @ visual.proj, dim=-1)  # (B, D)
        return attention, LOGIT_SCALE * features @ text.to(features).T  # (B, N)

    def crop_relevancy(self, crops: torch.Tensor, text: torch.Tensor, positive_only: bool = True):
        """(N, B, grid, grid) fp32 relevancy of preprocessed crops (B, 3, S, S) for text (N, D)."""
        with self._autocast():
            attention, logits = self.crop_logits(self._last_block_inputs(crops), text)
        num_labels = text.shape[0]
        # one batched VJP: row p of `selector` picks label p's logit in every crop
        selector = torch.eye(num_labels, dtype=logits.dtype, device=logits.device)
        selector = selector[:, None, :].expand(num_labels, *logits.shape)  # (N, B, N)
        (grads,) = torch.autograd.grad(
            logits, attention, selector, is_grads_batched=True
        )  # (N, B, h, T)
        maps = relevancy_from_attention(attention.detach(), grads, self.grid, positive_only)
        return maps.float()

    # ---- crops (docs/method.md#crops-scales-copies-and-flips)

    def preprocess(self, crops: torch.Tensor, resize: str = "pil") -> torch.Tensor:
        """uint8 crops (B, 3, s, s) -> normalised float (B, 3, S, S)
        (docs/method.md#weights-preprocessing-and-precision).

        resize "pil" (parity): each crop through PIL's bicubic `Image.resize`, antialiased when
        shrinking, exactly as the original's torchvision Resize on a PIL image; CPU, in threads.
        resize "torch": antialiased bicubic on the uint8 batch, on the crops' device; close to
        PIL but not equal (rounding and kernel support differ at the 1/255 level).
        """
        size = self.input_size
        if crops.shape[-1] != size:
            if resize == "pil":
                arrays = crops.permute(0, 2, 3, 1).cpu().numpy()  # (B, s, s, 3) uint8

                def pil_resize(array):
                    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))

                if len(arrays) >= 4:
                    resized = list(_resize_pool().map(pil_resize, arrays))
                else:
                    resized = [pil_resize(a) for a in arrays]
                crops = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
            else:
                crops = F.interpolate(
                    crops.contiguous(memory_format=torch.channels_last),
                    size=(size, size),
                    mode="bicubic",
                    antialias=True,
                    align_corners=False,
                )
        crops = crops.float() / 255.0
        mean, std = self.mean.to(crops.device), self.std.to(crops.device)
        return ((crops - mean) / std).contiguous()

    @staticmethod
    def image_copies(image: np.ndarray, augmentations: int, seed: int | None) -> list[torch.Tensor]:
        """[original, jittered copies] as (3, H, W) uint8 tensors
        (docs/method.md#crops-scales-copies-and-flips)."""
        base = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)  # (3, H, W)
        copies = [base]
        if augmentations:
            jitter = ColorJitter(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.1)
            rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
            with rng:
                if seed is not None:
                    torch.manual_seed(seed)
                copies += [jitter(base) for _ in range(augmentations)]
        return copies

    def crop_seconds(self) -> float:
        """Measured seconds per crop forward (with its share of the backward), for estimates."""
        if self._crop_seconds is None:
            count = min(4, self.batch_size)
            crops = torch.zeros(count, 3, self.input_size, self.input_size, device=self.device)
            text = torch.zeros(1, self.visual.output_dim, device=self.device)
            self.crop_relevancy(crops, text)  # warm-up
            start = time.perf_counter()
            self.crop_relevancy(crops, text)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._crop_seconds = (time.perf_counter() - start) / count
        return self._crop_seconds

    # ---- whole image (docs/method.md#paste-back-and-the-mean-over-scales)

    def __call__(
        self,
        image: np.ndarray,
        labels: Sequence[str],
        prompts: Sequence[str] = (HOME_PROMPT,),
        config: SaliencyConfig | None = None,
        seed: int | None = 0,
        progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (N, H, W) float32 and text features (N, D) of an RGB uint8 image (H, W, 3).

        `on_progress(done, total)` is called after every batch with crop-forward counts.
        """
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise InputError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        check_labels(labels, prompts)
        height, width = image.shape[:2]
        config = config or saliency_config("ours", height)
        if config.imagenet_prompt_ensemble:
            prompts = IMAGENET_TEMPLATES
        text = self.text_features(labels, prompts).to(self.device)
        tiles = scale_tiles(height, width, config)
        copies = self.image_copies(image, config.augmentations, seed)
        if config.resize == "torch":
            copies = [copy.to(self.device) for copy in copies]
        sums = self._crop_maps(copies, tiles, text, config, progress, on_progress)
        maps = paste_back(sums, tiles, (height, width), len(copies), config.tiling, self.device)
        return maps, text.cpu()

    def _crop_maps(self, copies, tiles, text, config, progress, on_progress) -> list[torch.Tensor]:
        """Per scale, each copy's and crop's (N, grid, grid) map, flips averaged: (C, N, R_s, g, g)
        fp32 on the CPU; batches of crops, halved on CUDA out-of-memory."""
        num_labels = text.shape[0]
        sums = [
            torch.zeros(len(copies), num_labels, len(regions), self.grid, self.grid)
            for _, regions in tiles
        ]
        jobs = [
            (c, s, i)
            for c in range(len(copies))
            for s, (_, regions) in enumerate(tiles)
            for i in range(len(regions))
        ]
        flips = 2 if config.horizontal_flipping else 1
        per_batch = max(1, self.batch_size // flips)
        total = len(jobs) * flips
        bar = tqdm(total=total, desc="crop forwards", unit="crop", disable=not progress)
        start = 0
        while start < len(jobs):
            chunk = jobs[start : start + per_batch]
            try:
                maps = self._chunk_maps(copies, tiles, chunk, text, config)
            except torch.cuda.OutOfMemoryError:
                if per_batch == 1:
                    raise
                torch.cuda.empty_cache()
                per_batch //= 2  # retry the same crops in smaller batches
                continue
            for j, (c, s, i) in enumerate(chunk):
                sums[s][c, :, i] = maps[:, j]
            start += len(chunk)
            bar.update(len(chunk) * flips)
            if on_progress is not None:
                on_progress(start * flips, total)
        bar.close()
        return sums

    def _chunk_maps(self, copies, tiles, chunk, text, config) -> torch.Tensor:
        """(N, b, grid, grid) fp32 CPU maps of (copy, scale, region) jobs, flips averaged."""
        crops = self._cut(copies, tiles, chunk, config.resize).to(self.device)  # (b, 3, S, S)
        if config.horizontal_flipping:
            crops = torch.cat([crops, crops.flip(-1)])
        maps = self.crop_relevancy(crops, text, config.positive_attn_only).cpu()
        if config.horizontal_flipping:
            # flip the maps of the flipped crops back and average
            maps = (maps[:, : len(chunk)] + maps[:, len(chunk) :].flip(-1)) / 2
        return maps

    def _cut(self, copies, tiles, chunk, resize: str = "pil") -> torch.Tensor:
        """Preprocessed crops for (copy, scale, region) jobs, resized in batches per tile size."""
        out = [None] * len(chunk)
        by_tile: dict[int, list[int]] = {}
        for j, (_, s, _) in enumerate(chunk):
            by_tile.setdefault(tiles[s][0], []).append(j)
        for tile, members in by_tile.items():
            pieces = []
            for j in members:
                copy, scale, index = chunk[j]
                row, col = tiles[scale][1][index]
                pieces.append(copies[copy][:, row : row + tile, col : col + tile])
            for j, crop in zip(members, self.preprocess(torch.stack(pieces), resize), strict=True):
                out[j] = crop
        return torch.stack(out)


_POOL: ThreadPoolExecutor | None = None


def _resize_pool() -> ThreadPoolExecutor:
    """Threads for PIL's crop resizes (PIL releases the GIL while resizing)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2))))
    return _POOL


# --------------------------------------------------------------------------------------------------
# Labels, whole-image maps, prompts (docs/method.md#multi-scale-relevancy)


def check_labels(labels: Sequence[str], prompts: Sequence[str]) -> None:
    """Labels and prompt templates a user typed: each an InputError line when unusable."""
    if len(labels) == 0:
        raise InputError("no labels given")
    if any(not str(label).strip() for label in labels):
        raise InputError("an empty label was given; every label needs some text")
    if len(prompts) == 0:
        raise InputError("no prompt template given")
    for prompt in prompts:
        if "{}" not in prompt:
            raise InputError(f"prompt template {prompt!r} has no {{}} where the label goes")


def relevancy_from_attention(
    attention: torch.Tensor, grads: torch.Tensor, grid: int, positive_only: bool = True
) -> torch.Tensor:
    """CLS-row attention (B, h, T) and its gradients (N, B, h, T) -> maps (N, B, g, g)
    (docs/method.md#one-crop-a-chefer-style-map)."""
    cam = grads * attention
    if positive_only:
        cam = cam.clamp(min=0)
    cls_row = cam.mean(2)[..., 1:]  # (N, B, T - 1): patch columns, row-major over the grid
    return cls_row.reshape(*cls_row.shape[:2], grid, grid)


def paste_back(
    sums: list[torch.Tensor],
    tiles: list[tuple[int, list]],
    shape: tuple[int, int],
    copies: int,
    tiling: str,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per-scale mean over covering crops, then mean over scales -> (N, H, W) float32
    on the CPU, computed on `device` (thousands of small additions: fast on a GPU).

    `sums[s]` is (C, N, R_s, g, g), each copy's map of each region, or (N, R_s, g, g), the maps
    already summed over the `copies` copies.

    parity: as the original, the tile sizes in ascending order, each crop's upsampled map added
    into an fp16 accumulator one crop at a time, copy by copy (QUIRK: every addition rounds to
    fp16). full: the copies are summed first and the accumulators are fp32 (bilinear
    upsampling is linear, so upsampling the sum equals summing the upsampled maps).
    docs/method.md#paste-back-and-the-mean-over-scales
    """
    height, width = shape
    device = torch.device(device)
    sums = [(s if s.dim() == 5 else s[None]).to(device) for s in sums]  # (C or 1, N, R, g, g)
    num_labels = sums[0].shape[1]
    parity = tiling == "parity"
    if not parity:
        sums = [s.sum(0, keepdim=True) for s in sums]
    per_copy = 1 if parity else copies
    dtype = torch.float16 if parity else torch.float32
    # scales with equal tile size share one accumulator, as the original's dict keyed by size
    scale_maps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    order = sorted(range(len(tiles)), key=lambda s: tiles[s][0]) if parity else range(len(tiles))
    for s in order:
        tile, regions = tiles[s]
        acc, counts = scale_maps.setdefault(
            tile,
            (
                torch.zeros(num_labels, height, width, dtype=dtype, device=device),
                torch.full((height, width), 1e-5, device=device),
            ),
        )
        for copy_maps in sums[s]:  # (N, R, g, g)
            for start in range(0, len(regions), 32):
                block = copy_maps[:, start : start + 32]
                up = F.interpolate(block, size=(tile, tile), mode="bilinear", align_corners=False)
                for (row, col), region_map in zip(
                    regions[start : start + 32], up.unbind(1), strict=True
                ):
                    acc[:, row : row + tile, col : col + tile] += region_map
                    counts[row : row + tile, col : col + tile] += per_copy
    total = torch.zeros(num_labels, height, width, device=device)
    for tile in sorted(scale_maps) if parity else scale_maps:
        acc, counts = scale_maps[tile]
        total += acc.float() / counts
    # QUIRK (parity): divide by the number of scales even where a scale covers nothing;
    # --tiling full covers every pixel at every scale
    return (total / len(scale_maps)).cpu()


def mean_over_labels(maps: torch.Tensor) -> torch.Tensor:
    """Contrastive maps: map_l - mean_k map_k per pixel
    (docs/method.md#subtracting-the-mean-over-labels)."""
    return maps - maps.mean(0, keepdim=True)


def resize_maps(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) -> (N, *shape) with nearest-exact, as the dataset command stores them
    (docs/relevancy.md#the-dataset-command)."""
    if tuple(maps.shape[-2:]) == tuple(shape):
        return maps
    return F.interpolate(maps[None], size=shape, mode="nearest-exact")[0]


def default_prompt(path: str | Path) -> str:
    """THOR render prompt, or the home photo prompt when the path names matterport or nyu
    (docs/method.md#prompts-and-text-features)."""
    text = str(path).lower()
    return HOME_PROMPT if ("matterport" in text or "nyu" in text) else THOR_PROMPT


def check_precision(precision: str, device: torch.device) -> None:
    """--precision on `device`: reduced precision only where the hardware runs it. On a CPU without
    AMX or AVX512-BF16 PyTorch emulates bf16 (matrix products in plain loops, convolutions without
    oneDNN), 4-8x slower than fp32 (docs/performance.md#bf16-on-the-cpu); fp16 is for GPUs."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if device.type != "cpu" or precision == "fp32":
        return
    if precision == "fp16":
        raise InputError("--precision fp16 is for GPUs; on a CPU use fp32 (or bf16 with AMX)")
    emulated = bf16_emulated_on(device)
    if emulated:
        raise InputError(
            f"--precision bf16 is emulated on {emulated} and 4-8x slower than fp32; "
            "use --precision fp32"
        )


def build_extractor(
    model: str | None,
    pretrained: str,
    checkpoint: Path | None,
    device: torch.device,
    batch_size: int | None,
    precision: str = "fp32",
):
    """A RelevancyExtractor on the CLIP model that clip_weights.load_model builds from the flags
    (--model, --pretrained, --checkpoint, --precision: check_precision)."""
    check_precision(precision, device)
    clip_model, tokenizer = load_model(model, pretrained, checkpoint, device)
    return RelevancyExtractor(clip_model, tokenizer, device, batch_size, precision)
