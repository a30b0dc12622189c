"""Swap polishing of a trained policy's mode (``BaseAgent.polish``) and the hybrid's warm start.

References are brute-force enumerations of every k-subset of small problems.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from subset_rl.agents import SFESS
from subset_rl.envs import BlackBoxObjective
from subset_rl.optimize import optimize

N, K = 12, 4


def _problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mixed-sign quadratic: items interact, so the best items alone are not the optimum."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=N)
    q = rng.normal(scale=1.5, size=(N, N))
    return w, (q + q.T) / 2


def _value(w: np.ndarray, q: np.ndarray, idx: tuple[int, ...]) -> float:
    z = np.zeros(N)
    z[list(idx)] = 1
    return float(z @ w + z @ q @ z)


def _brute_force(w: np.ndarray, q: np.ndarray, allowed: list[int] | None = None):
    items = range(N) if allowed is None else allowed
    return max((_value(w, q, c), c) for c in itertools.combinations(items, K))


def _objective(seed: int, device: torch.device, forbidden=None) -> BlackBoxObjective:
    w, q = _problem(seed)
    wt = torch.as_tensor(w, dtype=torch.float32, device=device)
    qt = torch.as_tensor(q, dtype=torch.float32, device=device)

    def f(z: torch.Tensor) -> torch.Tensor:
        return z @ wt + ((z @ qt) * z).sum(-1)

    return BlackBoxObjective(f, N, K, batched=True, device=device, forbidden=forbidden)


def _mode(agent: SFESS) -> list[int]:
    obs = torch.zeros(1, agent.obs_dim, device=agent.device)
    with torch.no_grad():
        return torch.nonzero(agent.distribution(obs).mode[0]).flatten().tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_polish_reaches_the_brute_force_optimum_and_makes_it_the_mode(seed, device):
    w, q = _problem(seed)
    best_value, best = _brute_force(w, q)
    agent = SFESS(_objective(seed, device), num_samples=4, batch_size=1, learning_rate=0.05,
                  seed=seed, device=device).learn(20)
    before = _mode(agent)
    result = agent.polish(budget=200, num_contexts=1)  # C(12, 4) = 495 subsets
    assert result.history.values[0] == pytest.approx(_value(w, q, tuple(before)), abs=1e-4)
    assert result.best_value == pytest.approx(best_value, abs=1e-4)
    assert tuple(_mode(agent)) == best
    assert result.n_evaluations <= 200


def test_polish_exchanges_logits_and_optimizer_state_as_pairs(device):
    seed = 3
    agent = SFESS(_objective(seed, device), num_samples=4, batch_size=1, learning_rate=0.05,
                  seed=seed, device=device).learn(20)
    param = agent.policy.logits
    adam = agent.optimizer.state[param]
    pairs_before = sorted(zip(param.tolist(), adam["exp_avg"].tolist(),
                              adam["exp_avg_sq"].tolist(), strict=True))
    before = _mode(agent)
    result = agent.polish(budget=200, num_contexts=1)
    assert tuple(_mode(agent)) == tuple(result.best_indices) != tuple(before)
    pairs_after = sorted(zip(param.tolist(), adam["exp_avg"].tolist(),
                             adam["exp_avg_sq"].tolist(), strict=True))
    assert pairs_after == pairs_before  # a relabelling: same distribution shape, same state
    agent.learn(5)  # training goes on from the relabelled logits


def test_polish_never_worsens_and_keeps_the_mode_when_it_is_best(device):
    seed = 1
    w, q = _problem(seed)
    best_value, best = _brute_force(w, q)
    agent = SFESS(_objective(seed, device), num_samples=4, batch_size=1, seed=0, device=device)
    with torch.no_grad():
        agent.policy.logits.fill_(-3.0)
        agent.policy.logits[list(best)] = 3.0
    logits = agent.policy.logits.detach().clone()
    result = agent.polish(budget=50, num_contexts=1)
    assert result.best_value == pytest.approx(best_value, abs=1e-4)
    assert torch.equal(agent.policy.logits.detach(), logits)  # nothing better: unchanged


def test_polish_never_chooses_forbidden_items(device):
    seed = 2
    w, q = _problem(seed)
    _, unconstrained = _brute_force(w, q)
    forbidden = list(unconstrained[:2])
    allowed = [i for i in range(N) if i not in forbidden]
    best_value, best = _brute_force(w, q, allowed)
    agent = SFESS(_objective(seed, device, forbidden=forbidden), num_samples=4, batch_size=1,
                  seed=seed, device=device).learn(10)
    result = agent.polish(budget=150, num_contexts=1)
    assert result.best_value == pytest.approx(best_value, abs=1e-4)
    assert tuple(_mode(agent)) == best
    assert not set(_mode(agent)) & set(forbidden)


def test_polish_scores_on_training_contexts_and_improves_sensor_placement(device):
    """A stochastic objective: the polished mode is better on held-out contexts too."""
    agent = SFESS("subset_rl/SensorPlacement-v0", num_samples=16, batch_size=2, seed=0,
                  device=device, env_kwargs={"device": str(device)}).learn(150)
    before = agent.evaluate()
    result = agent.polish(budget=300, num_contexts=64)
    assert result.best_value > result.history.values[0]
    assert agent.evaluate() > before


def test_polish_rejects_bad_input(device):
    agent = SFESS(_objective(0, device), num_samples=4, seed=0, device=device)
    with pytest.raises(ValueError, match="budget must be an int >= 1, found 0"):
        agent.polish(budget=0)
    with pytest.raises(TypeError, match="num_contexts must be an int"):
        agent.polish(budget=10, num_contexts=2.5)
    with pytest.raises(ValueError, match="no budget given and this agent's polish_budget is 0"):
        agent.polish()  # polish_budget defaults to 0 outside the tuned envs
    with pytest.raises(ValueError, match="polish_budget must be an int >= 0, found -1"):
        SFESS(_objective(0, device), num_samples=4, polish_budget=-1)
    mlp = SFESS(_objective(0, device), num_samples=4, policy="mlp", seed=0, device=device)
    with pytest.raises(ValueError, match="context-free policy .*found MLPLogits"):
        mlp.polish(budget=10)


def test_polish_budget_is_a_saved_setting(tmp_path, device):
    agent = SFESS(_objective(0, device), num_samples=4, polish_budget=30, seed=0, device=device)
    assert agent.hyperparameters()["polish_budget"] == 30
    agent.learn(2).save(tmp_path / "a.pt")
    loaded = SFESS.load(tmp_path / "a.pt", _objective(0, device), device=device)
    assert loaded.polish_budget == 30
    assert loaded.polish().n_evaluations <= 30


# ------------------------------------------------------------------ the hybrid's warm start
def test_hybrid_warm_start_evaluates_the_mode_first_and_searches_from_it():
    w, q = _problem(0)
    best_value, best = _brute_force(w, q)
    logits = np.full(N, -1.0)
    logits[[0, 1, 2, 3]] = 1.0
    res = optimize(lambda z: float(z @ w + z @ q @ z), N, K, budget=150, seed=0,
                   progress=False, options={"explore": 0.0, "logits": logits})
    assert tuple(res.history.subsets[0]) == (0, 1, 2, 3)
    assert res.best_value == pytest.approx(best_value)
    assert res.best_indices == best


def test_hybrid_warm_start_with_phase_one():
    w, q = _problem(4)
    best_value, _ = _brute_force(w, q)
    logits = torch.linspace(-1, 1, N)
    res = optimize(lambda z: float(z @ w + z @ q @ z), N, K, budget=200, seed=0,
                   progress=False, options={"logits": logits})
    assert tuple(res.history.subsets[0]) == tuple(range(N - K, N))
    assert res.best_value == pytest.approx(best_value)
    for step in ("adam", "natural"):
        res = optimize(lambda z: float(z @ w), N, K, budget=60, seed=0, progress=False,
                       options={"logits": logits, "step": step})
        assert res.n_evaluations == 60


@pytest.mark.parametrize(
    ("logits", "error", "match"),
    [
        (np.zeros(N - 1), ValueError, r"expected shape \(12,\), found \(11,\)"),
        (np.full(N, np.nan), ValueError, "expected finite values, found 12 non-finite"),
        ("high", TypeError, r"options\['logits'\]: expected n = 12 real numbers, found str"),
    ],
)
def test_hybrid_warm_start_rejects_bad_logits(logits, error, match):
    with pytest.raises(error, match=match):
        optimize(lambda z: 0.0, N, K, budget=10, progress=False, options={"logits": logits})
