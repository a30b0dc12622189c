"""SFESS agent with NES rank utilities (``utility="rank"``)."""

from __future__ import annotations

import pytest
import torch

from subset_rl.agents import SFESS
from subset_rl.envs import BlackBoxObjective

WEIGHTS = torch.tensor([0.1, 3.0, -1.0, 0.2, 2.5, 0.0, 1.0, -2.0, 2.0, 0.3])


def heavy_tailed(device: torch.device) -> BlackBoxObjective:
    """Linear in z, but one bad item costs 1e6: raw rewards would be dominated by it."""
    w = WEIGHTS.to(device)

    def f(z: torch.Tensor) -> torch.Tensor:
        return (z * w).sum(-1) - 1e6 * z[..., 7]

    return BlackBoxObjective(f, 10, 3, batched=True, device=device)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_utility_learns_the_best_subset_despite_heavy_tails(seed, device):
    agent = SFESS(heavy_tailed(device), num_samples=8, batch_size=4, learning_rate=0.1,
                  utility="rank", seed=seed, device=device).learn(150)
    mode = agent.distribution(torch.zeros(1, 1, device=device)).mode[0]
    assert torch.nonzero(mode).flatten().tolist() == [1, 4, 8]


def test_rank_utility_is_saved_and_validated(tmp_path, device):
    agent = SFESS(heavy_tailed(device), num_samples=4, utility="rank", seed=0, device=device)
    assert agent.hyperparameters()["utility"] == "rank"
    agent.learn(2).save(tmp_path / "a.pt")
    loaded = SFESS.load(tmp_path / "a.pt", heavy_tailed(device), device=device)
    assert loaded.utility == "rank"
    with pytest.raises(ValueError, match="utility must be 'reward' or 'rank', found 'ranks'"):
        SFESS(heavy_tailed(device), utility="ranks")
