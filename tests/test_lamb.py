"""LAMB against updates computed by hand (docs/method.md#lamb-and-the-learning-rate-schedule)."""

import math

import pytest
import torch

from lamb import Lamb


def hand_lamb_step(p, g, m, v, lr, betas, eps, weight_decay):
    """One step in plain Python floats: moments, no bias correction, decay, trust ratio with ||p|| <= 10."""
    m = [betas[0] * mi + (1 - betas[0]) * gi for mi, gi in zip(m, g, strict=True)]
    v = [betas[1] * vi + (1 - betas[1]) * gi * gi for vi, gi in zip(v, g, strict=True)]
    r = [mi / (math.sqrt(vi) + eps) + weight_decay * pi for mi, vi, pi in zip(m, v, p, strict=True)]
    weight_norm = min(math.sqrt(sum(pi * pi for pi in p)), 10.0)
    adam_norm = math.sqrt(sum(ri * ri for ri in r))
    trust = weight_norm / adam_norm if weight_norm > 0 and adam_norm > 0 else 1.0
    return [pi - lr * trust * ri for pi, ri in zip(p, r, strict=True)], m, v, trust


@pytest.mark.parametrize("start", [[3.0, 4.0], [0.0, 0.0], [30.0, 40.0]])  # norm 5, 0, 50 (clamped)
def test_two_lamb_steps_match_hand_computation(start):
    hyper = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = Lamb([param], **hyper)
    p, m, v = list(start), [0.0, 0.0], [0.0, 0.0]
    for grad in ([0.1, -0.2], [-0.3, 0.05]):
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        p, m, v, trust = hand_lamb_step(p, grad, m, v, **hyper)
        assert param.tolist() == pytest.approx(p, rel=1e-12, abs=1e-15)
        state = optimizer.state[param]
        assert float(state["trust_ratio"]) == pytest.approx(trust, rel=1e-12)
    assert state["step"] == 2
    assert state["exp_avg"].tolist() == pytest.approx(m)
    assert state["exp_avg_sq"].tolist() == pytest.approx(v)
    assert set(state) == {
        "step",
        "exp_avg",
        "exp_avg_sq",
        "weight_norm",
        "adam_norm",
        "trust_ratio",
    }


def test_adam_flag_forces_trust_ratio_one():
    param = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = Lamb([param], lr=0.1, adam=True)
    param.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    optimizer.step()
    # m = 0.1, v = 0.001, r = 0.1 / (sqrt(0.001) + 1e-6) per element, step lr * r.
    r = 0.1 / (math.sqrt(0.001) + 1e-6)
    assert param.tolist() == pytest.approx([3.0 - 0.1 * r, 4.0 - 0.1 * r])


def test_parameters_without_gradient_get_no_state():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = Lamb([used, unused])
    used.grad = torch.ones(2)
    optimizer.step()
    assert unused not in optimizer.state and unused.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(eps=-1.0), dict(betas=(1.0, 0.9))])
def test_invalid_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError, match="invalid"):
        Lamb([torch.nn.Parameter(torch.ones(1))], **kwargs)
