"""Pathwise training: the same loop as SFESS with a relaxed/pathwise estimator, for objectives
that are differentiable in the (relaxed) k-hot action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from subset_rl.envs import Context
from subset_rl.estimators import (
    AdaptiveIMLE,
    imle_topk,
    intermediate_loss_sample,
    relaxed_topk,
    simple_sample,
    straight_through_topk,
)

from .base import BaseAgent

__all__ = ["ESTIMATORS", "Pathwise"]

#: Estimator names and their papers.
ESTIMATORS: dict[str, str] = {
    "gs": "relaxed top-k Gumbel-softmax (Xie & Ermon 2019)",
    "stgs": "straight-through Gumbel top-k",
    "simple": "SIMPLE (Ahmed et al. 2023)",
    "imle": "I-MLE (Niepert et al. 2021)",
    "aimle": "adaptive I-MLE (Minervini et al. 2023)",
    "intermediate": "intermediate-loss sampling, generalised to k-subsets",
}

RewardFn = Callable[[Tensor, Context], Tensor]


class Pathwise(BaseAgent):
    """Maximise a differentiable reward through a relaxed or pathwise k-subset estimator.

    Each step draws ``batch_size`` contexts and ``num_samples`` (relaxed) k-hot actions per
    context from ``estimator``, computes the rewards with ``reward_fn`` (or the objective's own
    batched form when that is differentiable), and descends ``-mean(reward)``.

    Args:
        env: objective, env or env id (see :class:`~subset_rl.agents.base.BaseAgent`).
        estimator: one of :data:`ESTIMATORS`.
        reward_fn: ``reward_fn(z, context) -> (samples, batch)`` differentiable in ``z``
            (``(samples, batch, n)``). ``None`` uses the objective itself, which must then be
            declare ``differentiable = True`` (e.g. ``BlackBoxObjective(f, n, k, batched=True,
            differentiable=True)``); the built-in envs' objectives are black boxes.
        num_samples: actions per context.
        tau: temperature of ``gs``/``stgs``.
        lambda_: step size of ``imle`` and ``intermediate``.
        **kwargs: the shared settings of :class:`~subset_rl.agents.base.BaseAgent`.
    """

    _agent_name = "pathwise"  # defaults: subset_rl.defaults.native_settings(env, "pathwise")

    def __init__(
        self,
        env: Any,
        *,
        estimator: str = "stgs",
        reward_fn: RewardFn | None = None,
        num_samples: int = 1,
        tau: float = 0.5,
        lambda_: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, found {estimator!r}")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, found {type(reward_fn).__name__}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, found {num_samples!r}")
        self.estimator = estimator
        self.reward_fn = reward_fn
        self.num_samples = num_samples
        self.tau = float(tau)
        self.lambda_ = float(lambda_)
        super().__init__(env, **kwargs)
        if reward_fn is None and not getattr(self.objective, "differentiable", False):
            raise ValueError(
                f"{type(self.objective).__name__} is a black box (differentiable=False), so the "
                f"{estimator!r} estimator would get no gradient; pass a differentiable "
                "reward_fn(z, context) or use the SFESS agent"
            )
        self.aimle = AdaptiveIMLE(self.k).to(self.device) if estimator == "aimle" else None

    def hyperparameters(self) -> dict[str, Any]:
        return super().hyperparameters() | {
            "estimator": self.estimator,
            "num_samples": self.num_samples,
            "tau": self.tau,
            "lambda_": self.lambda_,
        }

    def _config(self) -> dict[str, Any]:
        return super()._config() | {
            "estimator": self.estimator,
            "num_samples": self.num_samples,
            "tau": self.tau,
            "lambda_": self.lambda_,
        }

    def _extra_state(self) -> dict[str, Any]:
        return {"aimle": None if self.aimle is None else self.aimle.state_dict()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        if self.aimle is not None and extra.get("aimle") is not None:
            self.aimle.load_state_dict(extra["aimle"])

    def _draw(self, logits: Tensor) -> Tensor:
        g, k = self.generator, self.k
        if self.estimator == "gs":
            return relaxed_topk(logits, k, self.tau, generator=g)
        if self.estimator == "stgs":
            return straight_through_topk(logits, k, self.tau, generator=g)
        if self.estimator == "simple":
            return simple_sample(logits, k, generator=g)
        if self.estimator == "imle":
            return imle_topk(logits, k, self.lambda_, generator=g)
        if self.estimator == "aimle":
            return self.aimle(logits, generator=g)  # type: ignore[misc]
        return intermediate_loss_sample(logits, k, self.lambda_, generator=g)

    def _loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        ctx = self.objective.sample_context(self.batch_size, generator=self.generator)
        logits = self.logits(ctx.obs)
        z = self._draw(logits.expand(self.num_samples, *logits.shape))
        if self.reward_fn is not None:
            rewards = self.reward_fn(z, ctx)
        else:
            zo = z.to(self.objective.device)
            rewards = self.objective.evaluate(zo, ctx, validate=False)["reward"]
        if not rewards.requires_grad:
            raise ValueError(
                "the reward carries no gradient to the action, so the "
                f"{self.estimator!r} estimator gets none; reward_fn (or an objective declared "
                "differentiable) must be a differentiable torch function of z"
            )
        rewards = rewards.to(self.device)
        return -rewards.mean(), {"rewards": rewards, "z": z}
