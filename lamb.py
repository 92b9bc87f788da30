"""LAMB optimizer as Semantic Abstraction trains with it
(docs/method.md#lamb-and-the-learning-rate-schedule).

The pytorch-lamb variant (You et al. 2019, "Large Batch Optimization for Deep Learning"): Adam moments
without bias correction, weight decay added to the update direction, and a per-tensor trust ratio
||p|| / ||update|| with ||p|| clamped to [0, 10]. The per-parameter state (step, exp_avg, exp_avg_sq,
weight_norm, adam_norm, trust_ratio) has the released checkpoints' names.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class Lamb(Optimizer):
    """adam=True turns the trust ratio off (plain Adam without bias correction)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, adam=False):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.adam = adam

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                update = exp_avg / exp_avg_sq.sqrt().add(group["eps"])  # no bias correction
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                weight_norm = p.norm().clamp(0, 10)
                adam_norm = update.norm()
                # Ratio 1 where either norm is 0 (e.g. zero-initialised biases); no host sync.
                trust_ratio = torch.where(
                    (weight_norm > 0) & (adam_norm > 0),
                    weight_norm / adam_norm,
                    torch.ones_like(adam_norm),
                )
                if self.adam:
                    trust_ratio = torch.ones_like(trust_ratio)
                state.update(weight_norm=weight_norm, adam_norm=adam_norm, trust_ratio=trust_ratio)
                p.sub_(group["lr"] * trust_ratio * update)
        return loss
