"""Checkpoints in the released format (docs/networks.md#checkpoints).

A checkpoint is a dict {"net": network state dict, "optimizer": Lamb state dict, "epochs": last finished
epoch + 1}. The released `ovssc.pth` and `vool.pth` were saved from DDP, so their keys start with
`module.`. The original loader kept the text after the first "module." anywhere in a key, which
mangles keys of checkpoints saved without DDP ("basic_module." matches too: bug B8). This loader
strips only a leading `module.`, so both kinds load, and it refuses a checkpoint that does not fit the
network with one line naming the missing, unexpected and mis-shaped keys, before touching the network.
We save the bare network's keys (no `module.`), which this loader and a DDP-wrapped network both accept.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from utils import InputError, atomic_path
from vocab import PAD

DDP_PREFIX = "module."


def unwrap(net: nn.Module) -> nn.Module:
    """The bare network inside a DistributedDataParallel wrapper (or the network itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file; any problem is an InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder: give the .pth file in it")
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle warns about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise InputError(f"{path} is not a readable checkpoint ({load_failure(error)})") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("net"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise InputError(
            f"{path} is not a semabs checkpoint: expected a dict with net, optimizer, epochs; found {found}"
        )
    return dict(checkpoint)


def load_failure(error: Exception) -> str:
    """Why torch.load failed, in one line. Its weights-only loader's refusal (a foreign or corrupt
    file, or one holding objects beyond tensors and containers) comes without the advice to load
    the file with weights_only=False, which would run whatever code an untrusted file holds."""
    text = str(error).strip()
    refusal = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if refusal is not None:
        detail = refusal[1].split(" was not an allowed global")[0].strip()
        return f"torch's weights-only loader refused it: {detail}"
    first_sentence = text.splitlines()[0].split(". ")[0] if text else ""
    return f"{type(error).__name__}: {first_sentence}" if first_sentence else type(error).__name__


def non_finite_entry(state: Mapping, prefix: str = "") -> str | None:
    """The key of the first floating tensor in a (nested) state dict holding nan or inf."""
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found = non_finite_entry(value, f"{name}.")
            if found is not None:
                return found
        elif (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not torch.isfinite(value).all()
        ):
            return name
    return None


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a leading `module.` from every key that has one (only there, never inside a key)."""
    return {key.removeprefix(DDP_PREFIX): value for key, value in state_dict.items()}


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which of our networks a (prefix-free) state dict looks like, for error messages."""
    if "completion_net.pts_feat_extractor.0.weight" in state_dict:
        if "mlp.weight" in state_dict:
            return "SemanticAwareVOOL"
        return "SemAbsVOOL" if f"relation_embeddings.{PAD}" in state_dict else "ClipSpatialVOOL"
    sampler_out = state_dict.get("visual_sampler.mlp.2.weight")
    if sampler_out is not None:
        return "SemAbs3D" if sampler_out.shape[0] == 1 else "SemanticAwareOVSSC"
    return "an unknown network"


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    words: tuple[str, str, str] = ("missing keys", "unexpected keys", "wrong shapes"),
    entry: str = "{count} {what} ({examples})",
    more: str = ", ...",
) -> str:
    """'' when state_dict fits expected key by key and shape by shape, else what does not fit.

    One clause per kind of misfit (missing, unexpected, mis-shaped keys; `words` names them),
    joined by '; ': `entry` filled with the count, the word and the first three keys, followed by
    `more` (which may name the {rest}) when there are more. Our checkpoints and CLIP weights
    (clip_weights.py) word it differently.
    """
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {list(state_dict[key].shape)} vs {list(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]

    def examples(keys: list[str]) -> str:
        rest = len(keys) - 3
        return ", ".join(keys[:3]) + (more.format(rest=rest) if rest > 0 else "")

    return "; ".join(
        entry.format(count=len(keys), what=what, examples=examples(keys))
        for what, keys in zip(words, (missing, unexpected, wrong_shape), strict=True)
        if keys
    )


def check_state_dict(net: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one InputError line if state_dict does not fit net exactly (keys and shapes)."""
    problems = state_dict_mismatch(net.state_dict(), state_dict)
    if problems:
        raise InputError(
            f"{source} holds a {describe_state_dict(state_dict)} state dict that does not fit "
            f"{type(net).__name__}: {problems}"
        )


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits of a SHA-256 over a (prefix-free) state dict's keys, dtypes, shapes and
    values: the same weights give the same fingerprint whichever file or process saved them."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_network(
    net: nn.Module, path: str | Path, map_location: str | torch.device = "cpu"
) -> dict:
    """Load a checkpoint's network weights into net (bare or DDP-wrapped); return the checkpoint dict.

    Either every tensor is loaded or, on any mismatch, none is and an InputError explains why.
    """
    checkpoint = read_checkpoint(path, map_location)
    state_dict = strip_ddp_prefix(checkpoint["net"])
    bare = unwrap(net)
    check_state_dict(bare, state_dict, source=f"checkpoint {path}")
    bare.load_state_dict(state_dict)
    return checkpoint


def save_checkpoint(
    path: str | Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epochs: int,
    extra: Mapping | None = None,
) -> None:
    """Write {"net", "optimizer", "epochs"} atomically: an existing file survives a crash mid-write.

    `extra` adds keys beside the released three (training adds scheduler, scaler, rng, position),
    which the original's loader ignores. Non-finite weights or optimizer state are refused (an
    InputError naming the first such tensor) and nothing is written.
    """
    checkpoint = {
        **(extra or {}),
        "net": unwrap(net).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "epochs": epochs,
    }
    bad = non_finite_entry({"net": checkpoint["net"], "optimizer": checkpoint["optimizer"]})
    if bad is not None:
        raise InputError(f"{path} not written: {bad} holds nan or inf")
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
