"""The network a run trains or scores: net.build_network's network for a run's flags, on its device,
with the CLIP text encoder semantic-aware VOOL needs (training.py and evaluation.py alike).
"""

from __future__ import annotations

import argparse

import torch

import net


def text_encoder(args: argparse.Namespace, device: torch.device):
    """Semantic-aware VOOL: CLIP ViT-B-32 text features of the bare object names
    (docs/networks.md)."""
    import relevancy

    model, tokenizer = relevancy.load_model(checkpoint=args.clip_checkpoint, device=device)

    def encode(names: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_text(tokenizer(names).to(device)).float()

    return encode


def network_on_device(task: str, args: argparse.Namespace, device: torch.device, **overrides):
    """net.build_network's network for args, moved to `device`; semantic-aware VOOL also gets the
    CLIP text encoder its names need (the original ran CLIP inside the network)."""
    if (task, args.approach) == ("vool", "semantic_aware") and "text_encoder" not in overrides:
        overrides["text_encoder"] = text_encoder(args, device)
    return net.build_network(task, args.approach, args, **overrides).to(device)
