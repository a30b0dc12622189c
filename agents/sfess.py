"""SFESS: score-function training of a k-subset policy with a leave-one-out baseline."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from subset_rl import defaults as _defaults
from subset_rl.estimators import rank_utilities, sfess_surrogate

from .base import BaseAgent

__all__ = ["SFESS"]


class SFESS(BaseAgent):
    r"""Train a :class:`~subset_rl.KSubsetPolicy` on a black-box objective (REINFORCE + LOO).

    Each step draws ``batch_size`` contexts, ``num_samples`` exact k-subsets per context, scores
    them all with the objective's batched form in one call, and ascends

    .. math::

        \hat g = \frac{1}{BN}\sum_{b,j}\Bigl(f(z_{bj}) - \frac{1}{N-1}\sum_{i\neq j} f(z_{bi})\Bigr)
        \nabla_\phi \log p_\phi(z_{bj} \mid o_b),

    the SFESS+VR estimator (unbiased with the exact sampler). One host sync per step checks that
    the logits, rewards, loss and gradient norm are finite (a :class:`FloatingPointError` names
    the step and the quantity otherwise); statistics are read back every ``log_interval`` steps.

    Args:
        env: objective, env or env id (see :class:`~subset_rl.agents.base.BaseAgent`).
        num_samples: ``N`` samples per context (``>= 2`` with the leave-one-out baseline);
            ``None``: the shared default for the env (:func:`subset_rl.defaults.native_settings`,
            what ``subset-rl train`` uses). ``ent_coef`` and ``utility`` default the same way.
        baseline: ``"loo"`` (default) or ``"none"`` (plain SFESS).
        sampler: ``"exact"`` (default) or ``"gumbel"`` (biased; for comparison only).
        ent_coef: weight of an entropy bonus (0 unless the env's defaults say otherwise).
        utility: ``"reward"`` (the default except on SensorPlacement-v0): the rewards
            themselves, the unbiased SFESS(+VR) estimate of :math:`\nabla E[f]`. ``"rank"``:
            fitness shaping as in NES/CMA-ES (Wierstra et al., 2014): per context, the ``N``
            rewards are replaced by centred rank weights
            :math:`u_r = \max(0, \log(N/2 + 1) - \log r) / \sum - 1/N` (ties share their
            weight). The update then ignores the rewards' scale and outliers (a sensor placement
            with a relative error in the hundreds weighs no more than any other worst sample);
            it ascends a monotone transform of ``f``, not :math:`E[f]` itself, so it is not an
            unbiased estimate of :math:`\nabla E[f]`.
        **kwargs: the shared settings of :class:`~subset_rl.agents.base.BaseAgent`.

    Example:
        >>> agent = SFESS("subset_rl/SensorPlacement-v0", num_samples=16, device="cpu")
        >>> agent.learn(200).evaluate()  # doctest: +SKIP
    """

    def __init__(
        self,
        env: Any,
        *,
        num_samples: int | None = None,
        baseline: str = "loo",
        sampler: str = "exact",
        ent_coef: float | None = None,
        utility: str | None = None,
        **kwargs: Any,
    ) -> None:
        preset = _defaults.native_settings(env if isinstance(env, str) else None, "sfess")
        num_samples = preset["num_samples"] if num_samples is None else num_samples
        ent_coef = preset["ent_coef"] if ent_coef is None else ent_coef
        utility = preset["utility"] if utility is None else utility
        if utility not in ("reward", "rank"):
            raise ValueError(f"utility must be 'reward' or 'rank', found {utility!r}")
        if baseline not in ("loo", "none"):
            raise ValueError(f"baseline must be 'loo' or 'none', found {baseline!r}")
        if sampler not in ("exact", "gumbel"):
            raise ValueError(f"sampler must be 'exact' or 'gumbel', found {sampler!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, found {num_samples!r}")
        if baseline == "loo" and num_samples < 2:
            raise ValueError(
                f"the leave-one-out baseline needs num_samples >= 2, found {num_samples}; use "
                "more samples or baseline='none'"
            )
        self.num_samples = num_samples
        self.baseline = baseline
        self.sampler = sampler
        self.ent_coef = float(ent_coef)
        self.utility = utility
        super().__init__(env, **kwargs)

    def hyperparameters(self) -> dict[str, Any]:
        return super().hyperparameters() | {
            "polish_budget": self.polish_budget,
            "num_samples": self.num_samples,
            "baseline": self.baseline,
            "sampler": self.sampler,
            "ent_coef": self.ent_coef,
            "utility": self.utility,
        }

    def _config(self) -> dict[str, Any]:
        return super()._config() | {
            "num_samples": self.num_samples,
            "baseline": self.baseline,
            "sampler": self.sampler,
            "ent_coef": self.ent_coef,
            "utility": self.utility,
        }

    def _loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        ctx = self.objective.sample_context(self.batch_size, generator=self.generator)
        dist = self.distribution(ctx.obs, sampler=self.sampler)
        z = dist.sample((self.num_samples,), generator=self.generator)
        rewards = self.objective(z.to(self.objective.device), ctx, validate=False)
        rewards = rewards.to(device=self.device, dtype=z.dtype)
        signal = rank_utilities(rewards) if self.utility == "rank" else rewards
        surrogate = sfess_surrogate(dist, z, signal, baseline=self.baseline)
        loss = -surrogate
        stats: dict[str, Tensor] = {"rewards": rewards, "z": z}
        if self.ent_coef:
            entropy = dist.entropy()
            loss = loss - self.ent_coef * entropy.mean()
            stats["entropy"] = entropy.detach()
        elif self.num_steps % self.log_interval == self.log_interval - 1:
            stats["entropy"] = dist.entropy().detach()
        return loss, stats
