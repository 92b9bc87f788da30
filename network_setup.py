"""The network a run trains or scores: net.build_network's network for a run's flags, on its device,
with the CLIP text encoder semantic-aware VOOL needs (training.py and evaluation.py alike); under
torchrun, wrapped in DistributedDataParallel for training.
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch import nn

import net
from processes import Processes


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


def distribute(model: nn.Module, procs: Processes) -> tuple[nn.Module, bool]:
    """The network wrapped in DDP under torchrun (else as it is), and whether the trainer should
    zero gradients in place (Trainer.zero_grads_in_place).

    The unused-parameter search only for networks that leave some parameters without a gradient
    (it costs a traversal of the graph each step, and warns when it finds none); gradients laid
    out as DDP's buckets (match_gradient_layout) and kept as views of them, zeroed in place, so no
    gradient is copied into its bucket each step.
    """
    if not procs.ddp:
        return model, False
    unused = net.leaves_parameters_unused(model)
    match_gradient_layout(model)
    wrapped = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
        find_unused_parameters=unused,
        gradient_as_bucket_view=True,
    )
    return wrapped, not unused


def match_gradient_layout(model: nn.Module) -> None:
    """Give every gradient its parameter's strides, as DDP's buckets expect (DDP compares strides
    exactly, then copies the gradient into its bucket each step and warns "Grad strides do not
    match bucket view strides"). Only size-1 axes can differ: a 1x1x1 conv weight is stored
    channels-last (unet3d) and its gradient comes plain or channels-last depending on the conv
    algorithm. Their strides address no memory, so the fix is a view of the same memory (free)."""
    for parameter in model.parameters():
        if parameter.requires_grad and 1 in parameter.shape:
            parameter.register_hook(functools.partial(_restride, stride=parameter.stride()))


def _restride(grad: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    if grad.stride() == stride:
        return grad
    same = all(n == 1 or a == b for n, a, b in zip(grad.shape, grad.stride(), stride, strict=True))
    return grad.as_strided(grad.shape, stride, grad.storage_offset()) if same else grad
