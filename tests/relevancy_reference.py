"""Reference computations for checking relevancy.py (tests and bench only): the per-scale crop
coverage of a saliency config, and the straightforward per-label autograd relevancy of a crop batch
(docs/method.md#crops-scales-copies-and-flips)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from relevancy import LOGIT_SCALE
from saliency import SaliencyConfig, scale_tiles


def coverage(height: int, width: int, config: SaliencyConfig) -> np.ndarray:
    """(S, H, W) bool: which pixels each scale's crops cover."""
    tiles = scale_tiles(height, width, config)
    covered = np.zeros((len(tiles), height, width), bool)
    for s, (tile, regions) in enumerate(tiles):
        for row, col in regions:
            covered[s, row : row + tile, col : col + tile] = True
    return covered


def reference_crop_relevancy(
    model, crops: torch.Tensor, text: torch.Tensor, positive_only: bool = True
):
    """The straightforward computation, for checks only (slow) -> (N, B, g, g).

    A full autograd forward that records the last block's complete (B, h, T, T) attention, and one
    `autograd.grad` per label.
    """
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    attn_module, heads = block.attn, block.attn.num_heads
    with torch.enable_grad():
        tokens = visual._embeds(crops)
        for earlier in visual.transformer.resblocks[:-1]:
            tokens = earlier(tokens)
        batch, num_tokens, width = tokens.shape
        head_dim = width // heads
        q, k, v = F.linear(
            block.ln_1(tokens), attn_module.in_proj_weight, attn_module.in_proj_bias
        ).chunk(3, -1)
        q, k, v = (t.view(batch, num_tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        attention = ((q * head_dim**-0.5) @ k.transpose(-1, -2)).softmax(-1)  # (B, h, T, T)
        if not attention.requires_grad:
            attention.requires_grad_(True)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, num_tokens, width)
        out = tokens + block.ls_1(attn_module.out_proj(mixed))
        out = out + block.ls_2(block.mlp(block.ln_2(out)))
        pooled, _ = visual._pool(out)
        logits = (
            LOGIT_SCALE * F.normalize(pooled @ visual.proj, dim=-1) @ text.to(pooled).T
        )  # (B, N)
        grads = torch.stack(
            [
                torch.autograd.grad(logits[:, p].sum(), attention, retain_graph=True)[0]
                for p in range(text.shape[0])
            ]
        )  # (N, B, h, T, T)
    cam = grads * attention.detach()
    if positive_only:
        cam = cam.clamp(min=0)
    cls_row = cam.mean(2)[:, :, 0, 1:]  # (N, B, T - 1)
    grid = visual.grid_size[0]
    return cls_row.reshape(*cls_row.shape[:2], grid, grid)
