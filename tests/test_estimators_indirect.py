"""Tests of the indirect parameterization (IP), the concrete-autoencoder selector and the
unique-percentage diagnostic."""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor

from subset_rl import KSubsetPolicy
from subset_rl.estimators import (
    AdaptiveIMLE,
    ConcreteSelector,
    IndirectLogits,
    imle_topk,
    intermediate_loss_sample,
    relaxed_topk,
    sfess,
    simple_sample,
    straight_through_topk,
    unique_percentage,
)

DEVICE = torch.device(os.environ.get("SUBSET_RL_TEST_DEVICE", "cpu"))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def test_indirect_logits_shapes() -> None:
    torch.manual_seed(0)
    single = IndirectLogits(num_items=12, embedding_dim=5).to(DEVICE)
    assert single.psi.shape == (5,)
    assert single.weight.shape == (12, 5) and single.bias.shape == (12,)
    assert single().shape == (12,)
    rows = IndirectLogits(num_items=12, embedding_dim=5, num_rows=3).to(DEVICE)
    assert rows.psi.shape == (3, 5)
    out = rows()
    assert out.shape == (3, 12) and out.device.type == DEVICE.type
    torch.testing.assert_close(out, rows.psi @ rows.weight.T + rows.bias)


def _surrogate_sfess(logits: Tensor, b: Tensor) -> Tensor:
    dist = KSubsetPolicy(logits.expand(4, -1), 3)
    result = sfess(dist, lambda z: ((z - b) ** 2).sum(-1), num_samples=4, generator=_gen(1))
    return result.surrogate


ESTIMATOR_LOSSES = {
    "sfess_loo": _surrogate_sfess,
    "gs": lambda x, b: ((relaxed_topk(x, 3, generator=_gen(2)) - b) ** 2).sum(),
    "stgs": lambda x, b: ((straight_through_topk(x, 3, generator=_gen(2)) - b) ** 2).sum(),
    "simple": lambda x, b: ((simple_sample(x, 3, generator=_gen(2)) - b) ** 2).sum(),
    "imle": lambda x, b: ((imle_topk(x.expand(8, -1), 3, generator=_gen(2)) - b) ** 2).sum(),
    "aimle": lambda x, b: ((AdaptiveIMLE(3)(x.expand(8, -1), _gen(2)) - b) ** 2).sum(),
    "intermediate": lambda x, b: (
        (intermediate_loss_sample(x, 3, generator=_gen(2)) - b) ** 2
    ).sum(),
}


@pytest.mark.parametrize("name", sorted(ESTIMATOR_LOSSES))
def test_gradients_reach_psi_w_and_b_through_every_estimator(name: str) -> None:
    torch.manual_seed(0)
    ip = IndirectLogits(num_items=8, embedding_dim=4).to(DEVICE)
    b = torch.randn(8, device=DEVICE)
    ESTIMATOR_LOSSES[name](ip(), b).backward()
    for param in (ip.psi, ip.weight, ip.bias):
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        assert param.grad.abs().sum() > 0, name
    # chain rule: dL/db = dL/dl, dL/dW = dL/dl psi^T, dL/dpsi = W^T dL/dl
    grad_l = ip.bias.grad
    torch.testing.assert_close(ip.weight.grad, torch.outer(grad_l, ip.psi.detach()))
    torch.testing.assert_close(ip.psi.grad, ip.weight.detach().T @ grad_l)


def test_unique_percentage_of_indices_and_selectors() -> None:
    idx = torch.tensor([[0, 1, 1, 2], [3, 3, 3, 3], [0, 1, 2, 3]], device=DEVICE)
    torch.testing.assert_close(
        unique_percentage(idx), torch.tensor([75.0, 25.0, 100.0], device=DEVICE)
    )
    weights = torch.nn.functional.one_hot(idx, 5).float()  # (3, 4, 5) selector weights
    torch.testing.assert_close(unique_percentage(weights), unique_percentage(idx))
    with pytest.raises(TypeError, match="selection must be"):
        unique_percentage(torch.zeros(3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match=r"\(\.\.\., k, n\)"):
        unique_percentage(torch.zeros(3, device=DEVICE))
    with pytest.raises(TypeError, match="torch.Tensor"):
        unique_percentage([0, 1])  # type: ignore[arg-type]


@pytest.mark.parametrize("embedding_dim", [None, 6])
def test_concrete_selector_training_and_eval(embedding_dim: int | None) -> None:
    torch.manual_seed(0)
    sel = ConcreteSelector(10, 4, temperature=0.5, embedding_dim=embedding_dim).to(DEVICE)
    x = torch.randn(7, 10, device=DEVICE)
    m = sel.selection(_gen(3))
    assert m.shape == (4, 10)
    torch.testing.assert_close(m.sum(-1), torch.ones(4, device=DEVICE))
    out = sel(x, generator=_gen(3))
    assert out.shape == (7, 4)
    out.pow(2).sum().backward()
    params = [p for p in sel.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    sel.eval()
    hard = sel.selection()
    assert bool(((hard == 0) | (hard == 1)).all()) and bool((hard.sum(-1) == 1).all())
    torch.testing.assert_close(sel(x), x[:, sel.indices()])
    expected = float(unique_percentage(sel.indices()))
    assert sel.unique_percentage() == expected and 25.0 <= expected <= 100.0
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., n=10\)"):
        sel(torch.randn(7, 9, device=DEVICE))


def test_concrete_selector_duplicates_are_counted() -> None:
    sel = ConcreteSelector(6, 3).to(DEVICE)
    with torch.no_grad():
        sel.direct_logits.zero_()
        sel.direct_logits[:, 2] = 1.0  # every selector picks feature 2
    assert sel.unique_percentage() == pytest.approx(100.0 / 3)


def test_indirect_argument_errors() -> None:
    with pytest.raises(ValueError, match="embedding_dim must be >= 1"):
        IndirectLogits(5, 0)
    with pytest.raises(TypeError, match="num_items must be an int"):
        IndirectLogits(5.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        ConcreteSelector(5, 2, temperature=-1.0)
