"""The one set of default settings that the Python API and the ``subset-rl`` CLI share.

The native agents (:class:`~subset_rl.agents.SFESS` and the pathwise estimators), the CLI's
``train`` command, :func:`subset_rl.sb3.ppo_kwargs` and the CLI's PPO/A2C runs all read their
defaults here, so ``SFESS("subset_rl/SensorPlacement-v0").learn(2500).polish()`` does what
``subset-rl train subset_rl/SensorPlacement-v0`` does, with the settings it prints.
Measurements behind the values are in ``benchmarks/README.md`` (``bench_threads.py`` for
:data:`TORCH_THREADS`).

Settings use the CLI's names: ``steps`` (gradient steps of the native agents, environment steps
of PPO/A2C), ``num_samples``, ``batch_size``, ``lr`` (the agents' ``learning_rate``),
``max_grad_norm``, ``ent_coef``, ``utility`` (SFESS: ``"reward"`` or ``"rank"``), ``polish``
(evaluations of :meth:`~subset_rl.agents.base.BaseAgent.polish` after training, 0: none; the
agents' ``polish_budget``); PPO/A2C add ``n_envs`` and ``n_steps``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "A2C_DEFAULTS",
    "NATIVE_DEFAULTS",
    "POLICIES",
    "PPO_DEFAULTS",
    "RECOMMENDED",
    "SB3_DEFAULTS",
    "TORCH_THREADS",
    "native_settings",
    "sb3_settings",
]

POLICIES: tuple[str, ...] = ("auto", "mlp", "free", "ip", "pairwise")
"""The built-in policies of the native agents (``policy=`` and ``subset-rl train --policy``)."""

TORCH_THREADS: int = 1
"""CPU threads of torch while an agent trains or evaluates (``subset-rl --threads`` too).

These small batched steps run fastest on one thread, and far faster than on two busy cores
(see ``benchmarks/bench_threads.py``). The agents set it only inside ``learn()`` and
``evaluate()`` and restore the caller's setting afterwards; ``torch_threads=None`` leaves torch
alone.
"""

NATIVE_DEFAULTS: dict[str, Any] = {
    "steps": 500, "num_samples": 16, "batch_size": 16, "lr": 1e-2,
    "max_grad_norm": None, "ent_coef": 0.0, "utility": "reward", "polish": 0,
}
"""Settings of the native agents (``sfess`` and the pathwise estimators) on any env."""

RECOMMENDED: dict[str, dict[str, Any]] = {
    # A free logit vector over the 256 cells; heavy-tailed rewards (a badly conditioned
    # placement has a relative error in the hundreds): NES rank utilities per snapshot, 64
    # placements ranked on each of 2 snapshots per step. Measured with
    # benchmarks/bench_agent_sensor.py (table in benchmarks/README.md).
    # Then 4,000 swap-polishing evaluations of the mode (BaseAgent.polish), each on the same
    # 128 training contexts.
    "subset_rl/SensorPlacement-v0": {
        "steps": 2500, "num_samples": 64, "batch_size": 2, "lr": 0.05,
        "max_grad_norm": None, "ent_coef": 0.0, "utility": "rank", "polish": 4000,
    },
    # An MLP on the query and its candidates.
    "subset_rl/KNNVoting-v0": {"lr": 1e-3},
}
"""Per-env overrides of :data:`NATIVE_DEFAULTS` for the ``sfess`` agent."""

SB3_DEFAULTS: dict[str, Any] = {"steps": 10_000, "n_envs": 8, "batch_size": 128, "n_steps": 64}
"""Settings of the CLI's ``ppo`` / ``a2c`` runs; their ``steps`` counts environment steps.

Measured with ``subset-rl train ENV --agent ppo|a2c [--steps S] [--lr LR] --quiet --no-plot``
(seed 0, 2 busy cores; mean reward on the 256 held-out contexts, random k-subsets in brackets):

=====================  =====  ==================  ==================  ==========
env                    agent  settings            trained (random)    wall time
=====================  =====  ==================  ==================  ==========
SensorPlacement-v0     ppo    defaults            -0.230 (-1.587)     21 s
SensorPlacement-v0     a2c    defaults            -0.929 (-1.587)     16 s
FeatureAcquisition-v0  ppo    defaults            0.809 (0.538)       53 s
FeatureAcquisition-v0  a2c    defaults            0.840 (0.538)       49 s
KNNVoting-v0           ppo    defaults            0.121 (0.093)       15 s
KNNVoting-v0           ppo    50,000 steps        0.092 (0.093)       ~75 s
KNNVoting-v0           ppo    50,000, lr 1e-3     0.109 (0.093)       ~75 s
KNNVoting-v0           a2c    defaults            0.084 (0.093)       23 s
KNNVoting-v0           a2c    50,000 steps        0.110 (0.093)       ~70 s
=====================  =====  ==================  ==================  ==========

PPO and A2C (one sample per context, an MLP on the flattened query and 100 candidates) do not
beat random on k-NN voting within minutes, at any of these settings (``sfess``: 0.92), so the
defaults stay short and ``subset-rl train`` prints a warning whenever the trained policy is no
better than random k-subsets on the evaluation contexts.
"""

PPO_DEFAULTS: dict[str, Any] = {"learning_rate": 3e-4, "target_kl": 0.02, "n_steps": 256}
"""What :func:`subset_rl.sb3.ppo_kwargs` returns: SB3's learning rate with ``target_kl=0.02``
(the subset-level importance ratio moves fast, see :mod:`subset_rl.sb3`) and ``n_steps=256``, so
that a rollout of 8 envs is 2,048 steps (SB3's ``n_steps=2048`` makes it 16,384)."""

A2C_DEFAULTS: dict[str, Any] = {}
"""Overrides of SB3's A2C defaults for the CLI's ``a2c`` runs."""


def _env_key(env_id: str | None) -> str | None:
    """The registered id of ``env_id`` without a ``module:`` prefix."""
    return None if env_id is None else env_id.split(":")[-1]


def native_settings(env_id: str | None = None, agent: str = "sfess") -> dict[str, Any]:
    """The default settings of a native agent on an env.

    Args:
        env_id: A registered id (``module:`` prefix allowed), or ``None`` for an objective or
            env object (then :data:`NATIVE_DEFAULTS`).
        agent: ``"sfess"`` (per-env :data:`RECOMMENDED` values apply) or a pathwise estimator
            name (one sample per context).

    Returns:
        A fresh dict with the keys of :data:`NATIVE_DEFAULTS`.
    """
    out = dict(NATIVE_DEFAULTS)
    if agent == "sfess":
        out.update(RECOMMENDED.get(_env_key(env_id) or "", {}))
    else:
        out["num_samples"] = 1
    return out


def sb3_settings(env_id: str | None = None, agent: str = "ppo") -> dict[str, Any]:
    """The default settings of the CLI's PPO/A2C runs on an env.

    Args:
        env_id: A registered id, or ``None``.
        agent: ``"ppo"`` or ``"a2c"``.

    Returns:
        A fresh dict with the keys of :data:`SB3_DEFAULTS`.
    """
    if agent not in ("ppo", "a2c"):
        raise ValueError(f"agent must be 'ppo' or 'a2c', found {agent!r}")
    return dict(SB3_DEFAULTS)
