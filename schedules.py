"""The learning-rate schedules of training (docs/method.md#lamb-and-the-learning-rate-schedule):
factor(step, warmup, total) of transformers 4.5.1's formulas, by --lr_scheduler_type name.
Torch-free, so that options.py takes the flag's choices from `SCHEDULES` and training.py the
factors.
"""

from __future__ import annotations

import math


def _warmup(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def constant(step: int, warmup: int, total: int) -> float:
    return 1.0


def constant_with_warmup(step: int, warmup: int, total: int) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0


def linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def cosine(step: int, warmup: int, total: int) -> float:
    """Half a cosine from 1 to 0 after warmup (num_cycles = 0.5)."""
    if step < warmup:
        return _warmup(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress)))


def cosine_with_restarts(step: int, warmup: int, total: int) -> float:
    """Hard restarts with num_cycles = 1: the same half cosine, and 0 from `total` on."""
    if step < warmup:
        return _warmup(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((1.0 * progress) % 1.0))))


# --lr_scheduler_type -> factor; the order is the flag's choices as the original listed them
SCHEDULES = {
    f.__name__: f for f in (constant, linear, cosine, cosine_with_restarts, constant_with_warmup)
}
