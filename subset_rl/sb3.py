r"""Stable-Baselines3 glue: a k-hot action head for PPO, A2C and (optionally) MaskablePPO.

For a ``MultiBinary`` action space, and so for :class:`~subset_rl.envs.KHot` (a ``MultiBinary``
subclass), Stable-Baselines3 silently builds an *independent Bernoulli* head: each item is switched
on with its own coin, so a policy for ``k = 2`` happily emits 0, 3 or 7 ones. This module replaces
that head with the exact k-subset distribution :class:`~subset_rl.KSubsetPolicy`:

.. math::

    \pi_\theta(z \mid s) = \frac{\exp\langle l_\theta(s), z\rangle}{e_k(\exp l_\theta(s))},
    \qquad z \in \{0, 1\}^n,\ \textstyle\sum_i z_i = k,

where the logits :math:`l_\theta(s)` are a linear layer on the actor's latent features. Every
sampled and every deterministic (top-k) action has exactly ``k`` ones, ``log_prob`` is exact, and
items the :class:`~subset_rl.envs.KHot` space does not allow get logit ``-inf``.

Example:
    >>> import numpy as np
    >>> from stable_baselines3 import PPO
    >>> from subset_rl.envs import make_blackbox_env
    >>> from subset_rl.sb3 import KSubsetActorCriticPolicy, ppo_kwargs
    >>> env = make_blackbox_env(lambda z: float(z[:3].sum()), n=8, k=3)
    >>> model = PPO(KSubsetActorCriticPolicy, env, **ppo_kwargs(n_steps=64, batch_size=32))
    >>> action, _ = model.predict(np.zeros(1, np.float32), deterministic=True)
    >>> action.dtype, action.shape, int(action.sum())
    (dtype('float32'), (8,), 3)

PPO hyperparameters:
    PPO's importance ratio :math:`\pi_\theta(z)/\pi_{\theta_\text{old}}(z)` is a ratio of
    probabilities of whole subsets, so its log sums the changes of all ``k`` chosen items (and of
    the normalizer) and moves faster than for one categorical choice. With SB3's defaults
    (learning rate ``3e-4``, ``n_epochs=10``, no ``target_kl``) ``approx_kl`` climbs to 0.15-0.2
    and the clip fraction to 0.6-0.7 after a few updates (measured for n=10, k=3 and n=50, k=10).
    :func:`ppo_kwargs` adds ``target_kl=0.02`` (PPO stops an update's epoch loop once the KL
    estimate exceeds ``1.5 * target_kl``), which keeps ``approx_kl`` near 0.02-0.03 and the clip
    fraction near 0.15 at the default learning rate ``3e-4`` without slowing learning on those
    problems. Without ``target_kl``, use a learning rate of about ``1e-4``.

Entropy cost:
    PPO and A2C compute the policy entropy on every minibatch. The entropy
    :math:`H = \log e_k - \sum_i \pi_i l_i` comes for free with ``log_prob`` (one pass gives
    :math:`\log e_k` and :math:`\pi`); its *gradient* :math:`-\operatorname{Cov}(z)\, l` needs
    second derivatives of :math:`\log e_k` and is computed only when it is backpropagated with a
    nonzero weight, so SB3's default ``ent_coef = 0`` costs nothing extra.
    ``policy_kwargs={"entropy_grad": False}`` still detaches it explicitly; :class:`KHotGuard`
    refuses ``entropy_grad=False`` with ``ent_coef > 0``.

Subprocesses:
    A ``SubprocVecEnv`` child must import :mod:`subset_rl.envs` to find the registered ids;
    :func:`make_subset_vec_env` does that for you (its env factory lives in this module, so the
    child imports it). Scripts that start subprocesses need an ``if __name__ == "__main__":`` guard.

Loading:
    ``PPO.load(path)`` unpickles the policy class, the spaces and the schedules stored in the
    zip, which runs any code a crafted file names. :func:`load_model` loads the same zip
    without unpickling anything (the pickled entries are replaced through SB3's
    ``custom_objects``); ``subset-rl eval`` uses it, and ``--trust-pickle`` opts back in to
    SB3's loader for files you trust.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution, make_proba_distribution
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from torch import Tensor, nn

from .distribution import SAMPLERS, KSubsetPolicy, Sampler
from .envs.spaces import KHot

try:  # optional: MaskablePPO support
    from sb3_contrib.common.maskable.distributions import MaskableDistribution
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    HAS_SB3_CONTRIB = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_SB3_CONTRIB = False

__all__ = [
    "HAS_SB3_CONTRIB",
    "KHotGuard",
    "KSubsetActorCriticPolicy",
    "KSubsetDistribution",
    "MaskableKSubsetActorCriticPolicy",
    "MaskableKSubsetDistribution",
    "ProgressBar",
    "SubsetDummyVecEnv",
    "SubsetMetricsCallback",
    "check_k_hot_policy",
    "check_k_hot_space",
    "default_head_for",
    "item_mask_to_multibinary",
    "load_model",
    "make_subset_vec_env",
    "ppo_kwargs",
]

SelfKSubsetDistribution = TypeVar("SelfKSubsetDistribution", bound="KSubsetDistribution")

_SB3_CONTRIB_HINT = (
    "needs sb3-contrib (MaskablePPO), which is not installed: `pip install sb3-contrib`"
)


# --------------------------------------------------------------------------------------------
# Spaces and checks
# --------------------------------------------------------------------------------------------
def check_k_hot_space(action_space: object) -> KHot:
    """Returns ``action_space`` if it is a :class:`~subset_rl.envs.KHot` space, else raises.

    Args:
        action_space: The action space given to a policy.

    Returns:
        The same space, typed as :class:`~subset_rl.envs.KHot`.

    Raises:
        ValueError: If the space is not a ``KHot`` space (a plain ``MultiBinary(n)`` does not say
            how many items to choose; use ``KHot(n, k)``).
    """
    if isinstance(action_space, KHot):
        return action_space
    hint = ""
    if isinstance(action_space, spaces.MultiBinary):
        hint = (
            " A plain MultiBinary space does not fix the number of ones; declare the env's "
            "action_space as subset_rl.envs.KHot(n, k)."
        )
    raise ValueError(
        f"k-hot policy: expected a subset_rl.envs.KHot action space, found {action_space!r} "
        f"({type(action_space).__name__}).{hint}"
    )


def default_head_for(action_space: spaces.Space[Any]) -> type[Distribution]:
    """The distribution class SB3's *default* policy would build for ``action_space``.

    Shows the pitfall this module exists for: for a :class:`~subset_rl.envs.KHot` space it is
    ``BernoulliDistribution`` (independent coins, any number of ones), not a k-subset head.

    Example:
        >>> default_head_for(KHot(5, 2)).__name__
        'BernoulliDistribution'
    """
    return type(make_proba_distribution(action_space))


def check_k_hot_policy(model: BaseAlgorithm | BasePolicy) -> None:
    """Raises if a model's action space is ``KHot`` but its policy head is not a k-subset head.

    SB3's default ``"MlpPolicy"`` on a ``KHot`` space builds an independent Bernoulli head whose
    actions have a random number of ones: depending on the env's ``invalid_action`` setting this
    raises in ``step`` or is silently projected or penalized. Call this after building a model
    (or use the :class:`KHotGuard` callback) to fail at once instead.

    Args:
        model: An SB3 algorithm (``PPO``, ``A2C``, ``MaskablePPO``, ...) or its policy.

    Raises:
        TypeError: If the action space is ``KHot`` and the policy's action distribution is not a
            :class:`KSubsetDistribution`.
        ValueError: If a :class:`KSubsetDistribution` disagrees with the space's ``n`` or ``k``.
    """
    policy = model.policy if isinstance(model, BaseAlgorithm) else model
    space = policy.action_space
    dist = getattr(policy, "action_dist", None)
    if not isinstance(space, KHot):
        return
    if not isinstance(dist, KSubsetDistribution):
        raise TypeError(
            f"policy {type(policy).__name__} acts in {space!r} with a "
            f"{type(dist).__name__} head: expected a KSubsetDistribution (exactly k={space.k} "
            "ones per action), found a head that samples items independently and gives the "
            "wrong number of ones. Use subset_rl.sb3.KSubsetActorCriticPolicy (or "
            "MaskableKSubsetActorCriticPolicy with MaskablePPO)."
        )
    if dist.action_dim != space.n or dist.k != space.k:
        raise ValueError(
            f"policy head has n={dist.action_dim}, k={dist.k}; expected n={space.n}, k={space.k} "
            f"from the action space {space!r}"
        )


def item_mask_to_multibinary(item_mask: Any) -> np.ndarray:
    """Converts per-item masks to sb3-contrib's ``MultiBinary`` mask layout.

    sb3-contrib's rollout buffer stores ``2 * n`` mask entries for a ``MultiBinary(n)`` space:
    for item ``i``, entry ``2 i`` allows value 0 and ``2 i + 1`` allows value 1. An env's
    ``action_masks()`` for :class:`MaskableKSubsetActorCriticPolicy` should return this layout
    (the policy also accepts plain per-item masks in ``predict``).

    Args:
        item_mask: Boolean array of shape ``(..., n)``; ``True`` means the item may be chosen.

    Returns:
        Boolean array of shape ``(..., 2 n)``.
    """
    mask = np.asarray(item_mask, dtype=bool)
    if mask.ndim < 1:
        raise ValueError(f"item_mask: expected shape (..., n), found shape {mask.shape}")
    out = np.ones(mask.shape + (2,), dtype=bool)
    out[..., 1] = mask
    return out.reshape(mask.shape[:-1] + (2 * mask.shape[-1],))


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, found {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Distribution
# --------------------------------------------------------------------------------------------
class KSubsetDistribution(Distribution):
    r"""SB3 distribution over k-hot actions whose ``.distribution`` is a ``KSubsetPolicy``.

    :math:`\log p(z) = \langle l, z\rangle - \log e_k(\exp l)`, with logits ``l`` from a linear
    layer (:meth:`proba_distribution_net`); disallowed items get ``l_i = -inf``. Actions are
    ``float32`` (the logits' dtype) 0/1 tensors of shape ``(batch, n)`` with exactly ``k`` ones.

    Args:
        action_dim: Number of items ``n``.
        k: Number of items per action, ``1 <= k <= number of allowed items``.
        allowed: Optional boolean mask of shape ``(n,)``; ``False`` items are never chosen.
        sampler: ``"exact"`` (default) or ``"gumbel"``, see :class:`~subset_rl.KSubsetPolicy`.
            ``"gumbel"`` samples a different distribution than ``log_prob`` scores, which biases
            PPO's ratio; keep ``"exact"`` unless you know why.
        entropy_grad: Whether :meth:`entropy` carries its gradient (second derivatives of the
            normalizer, about twice the cost of an update). ``False`` returns the value only:
            fine with ``ent_coef = 0``.
        validate_args: Check logits (NaN, ``+inf``, too few allowed items) and actions given to
            :meth:`log_prob` (k-hot). Costs a host sync per call on GPU.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``k`` or ``allowed`` do not fit ``action_dim``.
    """

    distribution: KSubsetPolicy

    def __init__(
        self,
        action_dim: int,
        k: int,
        *,
        allowed: Any = None,
        sampler: Sampler = "exact",
        entropy_grad: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("action_dim", action_dim), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name}: expected an int, found {type(value).__name__} {value!r}")
        if action_dim < 1:
            raise ValueError(f"action_dim: expected n >= 1, found {action_dim}")
        mask: np.ndarray | None = None
        if allowed is not None:
            mask = np.asarray(allowed, dtype=bool).reshape(-1)
            if mask.shape != (action_dim,):
                raise ValueError(
                    f"allowed: expected a boolean mask of shape ({action_dim},), found "
                    f"{np.shape(allowed)}"
                )
            if mask.all():
                mask = None
        available = action_dim if mask is None else int(mask.sum())
        if not 1 <= k <= available:
            raise ValueError(
                f"k: expected 1 <= k <= {available} (allowed items of n={action_dim}), found {k}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, found {sampler!r}")
        self.action_dim = int(action_dim)
        self.k = int(k)
        self.allowed = mask
        self.sampler: Sampler = sampler
        self.entropy_grad = _check_bool("entropy_grad", entropy_grad)
        self.validate_args = _check_bool("validate_args", validate_args)
        self._allowed_on: dict[torch.device, Tensor] = {}
        self._logits: Tensor | None = None

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        """A linear layer from the actor's latent features to the ``n`` logits.

        Args:
            latent_dim: Size of the actor's last hidden layer.
        """
        return nn.Linear(latent_dim, self.action_dim)

    def _allowed_tensor(self, device: torch.device) -> Tensor | None:
        if self.allowed is None:
            return None
        if device not in self._allowed_on:
            self._allowed_on[device] = torch.tensor(self.allowed, device=device)
        return self._allowed_on[device]

    def _make(self, logits: Tensor) -> KSubsetPolicy:
        return KSubsetPolicy(logits, self.k, sampler=self.sampler, validate_args=self.validate_args)

    def proba_distribution(
        self: SelfKSubsetDistribution, action_logits: Tensor
    ) -> SelfKSubsetDistribution:
        """Sets the logits (``(batch, n)``); disallowed items are set to ``-inf``.

        Returns:
            ``self``.

        Raises:
            ValueError: If the last dimension is not ``n`` (or, with ``validate_args``, the
                logits hold NaN or ``+inf``).
        """
        if action_logits.dim() < 1 or action_logits.shape[-1] != self.action_dim:
            raise ValueError(
                f"action_logits: expected shape (..., {self.action_dim}), found "
                f"{tuple(action_logits.shape)}"
            )
        allowed = self._allowed_tensor(action_logits.device)
        if allowed is not None:
            action_logits = action_logits.masked_fill(~allowed, float("-inf"))
        self._logits = action_logits
        self.distribution = self._make(action_logits)
        return self

    def log_prob(self, actions: Tensor) -> Tensor:
        """Exact log-probability of k-hot ``actions`` (any numeric dtype), shape ``(batch,)``."""
        logits = self.distribution.logits
        return self.distribution.log_prob(actions.to(dtype=logits.dtype))

    def entropy(self) -> Tensor:
        r"""Exact entropy :math:`\log e_k - \sum_i \pi_i l_i`, shape ``(batch,)``.

        With ``entropy_grad=False`` the result carries no gradient (see the class docstring).
        """
        if self.entropy_grad:
            return self.distribution.entropy()
        return self.distribution.entropy_value()

    def sample(self) -> Tensor:
        """One k-hot sample per row, shape ``(batch, n)``, the logits' dtype."""
        return self.distribution.sample()

    def mode(self) -> Tensor:
        """The most probable action: top-k of the logits, shape ``(batch, n)``."""
        return self.distribution.mode

    def actions_from_params(self, action_logits: Tensor, deterministic: bool = False) -> Tensor:
        """Sets the logits and returns actions (the mode when ``deterministic``)."""
        self.proba_distribution(action_logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, action_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Sets the logits, samples actions and returns ``(actions, log_prob)``."""
        actions = self.actions_from_params(action_logits)
        return actions, self.log_prob(actions)


def _check_policy_options(
    sampler: object, entropy_grad: object, validate_args: object
) -> dict[str, Any]:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, found {sampler!r}")
    return {
        "sampler": sampler,
        "entropy_grad": _check_bool("entropy_grad", entropy_grad),
        "validate_args": _check_bool("validate_args", validate_args),
    }


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------
def _with_features_extractor(
    observation_space: spaces.Space[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``kwargs`` with the feature extractor the observation space needs, unless one is given.

    ``CombinedExtractor`` for a ``Dict`` space (SB3's ``MultiInputPolicy``), SB3's default
    ``FlattenExtractor`` otherwise (``Box`` of any shape, ``Discrete``, ``MultiDiscrete``,
    ``MultiBinary``: SB3 one-hot encodes the discrete ones).

    Raises:
        ValueError: for a ``Tuple`` observation space, which SB3's rollout buffers cannot hold.
    """
    if isinstance(observation_space, spaces.Tuple):
        raise ValueError(
            f"observation_space: Stable-Baselines3 does not support Tuple observation spaces, "
            f"found {observation_space}; use a Dict space, or wrap the env in "
            "gymnasium.wrappers.FlattenObservation (the native agents take Tuple observations "
            "as they are)"
        )
    if isinstance(observation_space, spaces.Dict) and kwargs.get(
        "features_extractor_class"
    ) is None:
        from stable_baselines3.common.torch_layers import CombinedExtractor

        kwargs = dict(kwargs, features_extractor_class=CombinedExtractor)
    return kwargs


class _KSubsetPolicyMixin:
    """What both k-hot actor-critic policies share: options, ``k`` before ``_build``, the head."""

    action_net: nn.Module
    action_dist: Any

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Schedule,
        *args: Any,
        sampler: Sampler = "exact",
        entropy_grad: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        space = check_k_hot_space(action_space)
        kwargs = _with_features_extractor(observation_space, kwargs)
        if kwargs.get("use_sde"):
            raise ValueError(
                "use_sde: expected False, found True (gSDE is for continuous actions; the k-hot "
                "head has no state-dependent noise)"
            )
        # Read by _build, which the SB3 policy's __init__ calls.
        self.k = space.k
        self._subset_options = _check_policy_options(sampler, entropy_grad, validate_args)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    @property
    def entropy_grad(self) -> bool:
        """Whether the entropy carries its gradient."""
        return bool(self._subset_options["entropy_grad"])

    def _get_action_dist_from_latent(self, latent_pi: Tensor) -> Any:
        """The k-subset distribution for the actor's latent features ``(batch, latent_dim)``."""
        return self.action_dist.proba_distribution(action_logits=self.action_net(latent_pi))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self._subset_options)
        return data


class KSubsetActorCriticPolicy(_KSubsetPolicyMixin, ActorCriticPolicy):
    """Actor-critic policy whose action head is a :class:`KSubsetDistribution`.

    Use it as ``PPO(KSubsetActorCriticPolicy, env)`` or ``A2C(KSubsetActorCriticPolicy, env)`` on
    an env with a :class:`~subset_rl.envs.KHot` action space; ``k`` and the allowed items are read
    from the space. Everything else (``net_arch``, ``activation_fn``, feature extractors,
    ``ortho_init``, optimizer) is as in SB3's ``ActorCriticPolicy``; gSDE is not available.

    Observations: any space SB3 accepts. For a ``Dict`` observation space the policy picks
    SB3's ``CombinedExtractor`` (as ``MultiInputPolicy`` does), for the others SB3's
    ``FlattenExtractor``, unless ``policy_kwargs`` names a ``features_extractor_class``.

    Args:
        observation_space: Observation space.
        action_space: A :class:`~subset_rl.envs.KHot` space.
        lr_schedule: Learning-rate schedule (given by the algorithm).
        *args: Further positional arguments of ``ActorCriticPolicy``.
        sampler: ``"exact"`` (default) or ``"gumbel"``.
        entropy_grad: Whether the entropy carries its (second-order) gradient; ``False`` is
            faster and fine when ``ent_coef = 0``.
        validate_args: Whether the distribution checks its logits and actions.
        **kwargs: Further keyword arguments of ``ActorCriticPolicy``.

    Raises:
        ValueError: If the action space is not ``KHot`` or ``use_sde=True``.
    """

    action_dist: KSubsetDistribution

    def _make_action_dist(self) -> KSubsetDistribution:
        space = check_k_hot_space(self.action_space)
        return KSubsetDistribution(space.n, self.k, allowed=space.allowed, **self._subset_options)

    def _build(self, lr_schedule: Schedule) -> None:
        """Builds the networks and the optimizer with a k-subset action head.

        Mirrors ``ActorCriticPolicy._build``, whose head selection knows only SB3's own
        distributions (and would have built an independent Bernoulli head for ``KHot``).
        """
        self.action_dist = self._make_action_dist()
        self._build_mlp_extractor()
        self.action_net = self.action_dist.proba_distribution_net(
            latent_dim=self.mlp_extractor.latent_dim_pi
        )
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # The gains of ActorCriticPolicy: small action head, so the first policy is near
            # uniform over subsets.
            module_gains: dict[nn.Module, float] = {
                self.features_extractor: np.sqrt(2),
                self.mlp_extractor: np.sqrt(2),
                self.action_net: 0.01,
                self.value_net: 1,
            }
            if not self.share_features_extractor:
                del module_gains[self.features_extractor]
                module_gains[self.pi_features_extractor] = np.sqrt(2)
                module_gains[self.vf_features_extractor] = np.sqrt(2)
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )


# --------------------------------------------------------------------------------------------
# Maskable variant (sb3-contrib)
# --------------------------------------------------------------------------------------------
def _parse_item_masks(masks: Any, batch: int, n: int, device: torch.device) -> Tensor:
    """Per-item boolean masks ``(batch, n)`` from per-item or sb3-contrib MultiBinary layout."""
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
    m = m.to(device=device, dtype=torch.bool)
    if m.numel() == batch * n:
        return m.reshape(batch, n)
    if m.numel() == batch * 2 * n:
        pairs = m.reshape(batch, n, 2)
        if not bool(pairs[..., 0].all()):
            raise ValueError(
                "action_masks: the k-hot head can only forbid items (entry 2i+1 False); found "
                "masks forbidding value 0 (entry 2i False), i.e. forcing items in, which is not "
                "supported"
            )
        return pairs[..., 1]
    raise ValueError(
        f"action_masks: expected {batch * n} per-item entries (shape ({batch}, {n})) or "
        f"{batch * 2 * n} in sb3-contrib's MultiBinary layout (shape ({batch}, {2 * n})), found "
        f"shape {tuple(m.shape)}"
    )


if HAS_SB3_CONTRIB:

    class MaskableKSubsetDistribution(KSubsetDistribution, MaskableDistribution):
        """:class:`KSubsetDistribution` with per-item action masks, for sb3-contrib's MaskablePPO.

        Masked items get logit ``-inf`` (never chosen, no entropy contribution); a row must keep
        at least ``k`` items. Masks are per item (``(batch, n)``, ``True`` = may be chosen) or in
        sb3-contrib's ``MultiBinary`` layout ``(batch, 2 n)`` (see
        :func:`item_mask_to_multibinary`); masks that force an item *in* are refused.

        Args: as :class:`KSubsetDistribution`.
        """

        def apply_masking(self, masks: Any) -> None:
            """Applies masks to the current logits; ``None`` removes them.

            Raises:
                ValueError: If the masks have the wrong size, force items in, or leave a row
                    with fewer than ``k`` items.
            """
            if self._logits is None:
                raise ValueError("apply_masking: call proba_distribution(action_logits) first")
            logits = self._logits
            if masks is None:
                self.distribution = self._make(logits)
                return
            batch = logits.reshape(-1, self.action_dim).shape[0]
            item = _parse_item_masks(masks, batch, self.action_dim, logits.device)
            item = item.reshape(logits.shape)
            available = (item & torch.isfinite(logits)).sum(-1)
            if bool((available < self.k).any()):
                raise ValueError(
                    f"action_masks: each row needs at least k={self.k} allowed items, found a "
                    f"row with {int(available.min())}"
                )
            self.distribution = self._make(logits.masked_fill(~item, float("-inf")))

    class MaskableKSubsetActorCriticPolicy(_KSubsetPolicyMixin, MaskableActorCriticPolicy):
        """MaskablePPO policy with a :class:`MaskableKSubsetDistribution` head.

        ``MaskablePPO(MaskableKSubsetActorCriticPolicy, env)`` with an env whose
        ``action_masks()`` returns ``item_mask_to_multibinary(item_mask)`` (shape ``(2 n,)``, the
        layout sb3-contrib's rollout buffer stores for ``MultiBinary``); ``predict`` also takes
        per-item masks ``(n,)`` / ``(n_envs, n)``.

        Args:
            observation_space: Observation space.
            action_space: A :class:`~subset_rl.envs.KHot` space.
            lr_schedule: Learning-rate schedule.
            *args: Further positional arguments of ``MaskableActorCriticPolicy``.
            sampler: ``"exact"`` (default) or ``"gumbel"``.
            entropy_grad: Whether the entropy carries its gradient.
            validate_args: Whether the distribution checks its logits and actions.
            **kwargs: Further keyword arguments of ``MaskableActorCriticPolicy``.

        Raises:
            ValueError: If the action space is not ``KHot`` or ``use_sde=True``.
        """

        action_dist: MaskableKSubsetDistribution

        def _build(self, lr_schedule: Schedule) -> None:
            space = check_k_hot_space(self.action_space)
            self.action_dist = MaskableKSubsetDistribution(
                space.n, self.k, allowed=space.allowed, **self._subset_options
            )
            super()._build(lr_schedule)

else:  # pragma: no cover - depends on the environment

    def __getattr__(name: str) -> Any:
        if name in ("MaskableKSubsetDistribution", "MaskableKSubsetActorCriticPolicy"):
            raise ImportError(f"subset_rl.sb3.{name} {_SB3_CONTRIB_HINT}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Guard, helpers
# --------------------------------------------------------------------------------------------
class KHotGuard(BaseCallback):
    """Callback that fails loudly when a model would act with the wrong number of ones or diverges.

    At training start it runs :func:`check_k_hot_policy` (refusing SB3's silent Bernoulli head on
    a ``KHot`` space) and refuses ``entropy_grad=False`` with ``ent_coef > 0``; at every step it
    checks that the actions sent to the envs have exactly ``k`` ones. Before each rollout it
    checks that the policy's parameters are finite (one host sync), and after it that the rollout
    buffer's rewards, log-probabilities, values, returns and advantages are, so that a diverging
    run stops with the quantity named instead of an unrelated error in the k-subset sampler.

    Example:
        ``model.learn(10_000, callback=KHotGuard())``

    Raises:
        TypeError: From :func:`check_k_hot_policy`.
        ValueError: If ``ent_coef > 0`` while the entropy has no gradient, or an action does
            not have ``k`` ones.
        FloatingPointError: If a parameter or a rollout quantity is NaN/inf; the message names
            the timestep, the number of gradient updates so far and the quantity.
    """

    # Rollout-buffer fields in causal order, with what to say about each.
    _ROLLOUT_FIELDS: tuple[tuple[str, str], ...] = (
        ("rewards", "check the env's reward (the objective)"),
        ("log_probs", "the policy diverged: lower the learning rate or max_grad_norm"),
        ("values", "the value function diverged: lower the learning rate or vf_coef"),
        ("returns", "check the scale of the rewards, gamma and gae_lambda"),
        ("advantages", "check the scale of the rewards, gamma and gae_lambda"),
    )

    def _where(self) -> str:
        updates = getattr(self.model, "_n_updates", 0)
        return f"timestep {self.model.num_timesteps} (after {updates} gradient updates)"

    def _on_training_start(self) -> None:
        check_k_hot_policy(self.model)
        policy = self.model.policy
        ent_coef = getattr(self.model, "ent_coef", 0.0)
        if getattr(policy, "entropy_grad", True) is False and float(ent_coef) > 0:
            raise ValueError(
                f"ent_coef={ent_coef} needs the entropy's gradient, but the policy was built "
                "with entropy_grad=False; pass policy_kwargs={'entropy_grad': True}"
            )

    def _on_step(self) -> bool:
        space = self.model.action_space
        actions = self.locals.get("actions")
        if isinstance(space, KHot) and actions is not None:
            a = np.asarray(actions).reshape(-1, space.n)
            counts = (a != 0).sum(-1)
            if (counts != space.k).any():
                raise ValueError(
                    f"action check: expected k={space.k} ones per action, found counts "
                    f"{counts.tolist()[:8]}"
                )
        return True

    def _on_rollout_start(self) -> None:
        params = list(self.model.policy.named_parameters())
        if not params:
            return
        finite = torch.stack([torch.isfinite(p).all() for _, p in params])
        if bool(finite.all()):
            return
        bad = [
            f"{name} ({int(torch.isnan(p).sum())} NaN, {int(torch.isinf(p).sum())} inf)"
            for name, p in params
            if not bool(torch.isfinite(p).all())
        ]
        lr = getattr(self.model, "learning_rate", None)
        now = f" (now {lr:g})" if isinstance(lr, numbers.Real) else ""
        raise FloatingPointError(
            f"{self._where()}: the policy's parameters are not finite: {', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}; training diverged: lower the learning "
            f"rate{now} or max_grad_norm, and check the scale of the rewards"
        )

    def _on_rollout_end(self) -> None:
        buffer = self.locals.get("rollout_buffer", getattr(self.model, "rollout_buffer", None))
        if buffer is None:
            return
        for field, hint in self._ROLLOUT_FIELDS:
            values = getattr(buffer, field, None)
            if values is None:
                continue
            values = np.asarray(values)
            if np.isfinite(values).all():
                continue
            nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            found = ", ".join(p for p in (f"{nan} NaN" if nan else "",
                                          f"{inf} inf" if inf else "") if p)
            raise FloatingPointError(
                f"{self._where()}: the rollout's {field} are not finite ({found} of "
                f"{values.size}); {hint}"
            )


class SubsetMetricsCallback(BaseCallback):
    """Logs what the native agents log, so SB3 and native runs show the same TensorBoard tags.

    The native agents (:mod:`subset_rl.agents`) write ``subset/reward_mean``,
    ``subset/best_reward``, ``train/entropy``, ``train/grad_norm`` and a table of hyperparameters;
    SB3 writes ``train/entropy_loss`` and no gradient norm. This callback adds, against the same
    x-axis (``num_timesteps``, one objective evaluation per env step):

    - ``subset/reward_mean``: mean reward of the env steps since the last log dump (the original
      rewards where the env is wrapped in ``VecNormalize``);
    - ``subset/best_reward``: best reward of any env step so far;
    - ``train/entropy``: mean policy entropy of the last update (``-train/entropy_loss``);
    - ``train/grad_norm``: mean total gradient norm of the last update's minibatches, before
      clipping (as the native agents report it);
    - ``train/n_updates`` in TensorBoard too, and for A2C (which logs only the parts)
      ``train/loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss``;
    - ``hparams``: the native agents' keys (``agent``, ``env``, ``n``, ``k``, ``policy``,
      ``batch_size``, ``learning_rate``, ``optimizer``, ``max_grad_norm``, ``seed``,
      ``device``) plus ``n_envs``, ``n_steps``, ``gamma`` and ``ent_coef``, with the metrics
      ``subset/reward_mean`` and ``subset/best_reward``.

    ``subset-rl train`` attaches it to every PPO/A2C run.

    Example:
        ``model.learn(10_000, callback=[KHotGuard(), SubsetMetricsCallback()])``

    Args:
        env_id: Env name for the ``env`` hyperparameter; by default the id in the first env's
            spec (or its class name).
        verbose: SB3's verbosity.
    """

    def __init__(self, env_id: str | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.env_id = env_id
        self.best_reward = -np.inf
        self._norms: list[Tensor] = []
        self._handles: list[Any] = []
        self._pending: Tensor | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """The settings logged once, keyed as the native agents' ``hyperparameters()``."""
        model = self.model
        space = model.action_space
        n = int(getattr(space, "n", -1))
        lr = model.learning_rate
        learning_rate = float(lr) if isinstance(lr, numbers.Real) else float(model.lr_schedule(1.0))
        n_envs = int(model.n_envs)
        n_steps = int(getattr(model, "n_steps", 1))
        optimizer = getattr(model.policy, "optimizer", None)
        return {
            "agent": type(model).__name__,
            "env": self.env_id or self._env_name(),
            "n": n,
            "k": int(getattr(space, "k", -1)),
            "policy": type(model.policy).__name__,
            "batch_size": int(getattr(model, "batch_size", None) or n_steps * n_envs),
            "learning_rate": learning_rate,
            "optimizer": type(optimizer).__name__ if optimizer is not None else "none",
            "max_grad_norm": float(getattr(model, "max_grad_norm", float("inf"))),
            "seed": -1 if model.seed is None else int(model.seed),
            "device": str(model.device),
            "n_envs": n_envs,
            "n_steps": n_steps,
            "gamma": float(getattr(model, "gamma", float("nan"))),
            "ent_coef": float(getattr(model, "ent_coef", 0.0)),
        }

    def _env_name(self) -> str:
        try:
            spec = self.training_env.get_attr("spec", [0])[0]
        except (AttributeError, IndexError):
            spec = None
        if spec is not None and getattr(spec, "id", None):
            return str(spec.id)
        try:
            return type(self.training_env.get_attr("unwrapped", [0])[0]).__name__
        except (AttributeError, IndexError):
            return type(self.training_env).__name__

    def _on_training_start(self) -> None:
        self.logger.record(
            "hparams",
            HParam(self.hyperparameters(), {"subset/reward_mean": 0.0, "subset/best_reward": 0.0}),
            exclude=("stdout", "log", "json", "csv"),
        )
        self._on_training_end()  # hooks left by an earlier learn() that raised
        for param in self.model.policy.parameters():
            if param.requires_grad:
                self._handles.append(param.register_post_accumulate_grad_hook(self._add_norm))
        optimizer = getattr(self.model.policy, "optimizer", None)
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._end_minibatch))

    def _add_norm(self, param: Tensor) -> None:
        # After backward, before SB3 clips: the squared norms of one minibatch's gradients.
        if param.grad is not None:
            square = param.grad.detach().float().pow(2).sum()
            self._pending = square if self._pending is None else self._pending + square

    def _end_minibatch(self, *_: Any) -> None:
        if self._pending is not None:
            self._norms.append(self._pending.sqrt())
            self._pending = None

    def _on_step(self) -> bool:
        rewards = self.locals.get("rewards")
        if rewards is None:
            return True
        env = self.training_env
        if isinstance(env, VecNormalize):
            rewards = env.get_original_reward()
        values = np.asarray(rewards, dtype=np.float64).reshape(-1)
        for value in values:  # record_mean averages every env step until the next dump
            self.logger.record_mean("subset/reward_mean", float(value))
        if values.size:
            self.best_reward = max(self.best_reward, float(values.max()))
            self.logger.record("subset/best_reward", self.best_reward)
        return True

    def _on_rollout_start(self) -> None:
        # The last update's train/* values are still in the logger (dumped after this rollout).
        values = self.logger.name_to_value
        entropy_loss = values.get("train/entropy_loss")
        if entropy_loss is not None:
            self.logger.record("train/entropy", -float(entropy_loss))
            parts = [values.get("train/policy_loss"), values.get("train/value_loss")]
            if "train/loss" not in values and None not in parts:  # A2C logs the parts only
                ent_coef = float(getattr(self.model, "ent_coef", 0.0))
                vf_coef = float(getattr(self.model, "vf_coef", 0.5))
                loss = parts[0] + ent_coef * float(entropy_loss) + vf_coef * parts[1]
                self.logger.record("train/loss", float(loss))
            # SB3 keeps n_updates out of TensorBoard; the native agents plot it.
            self.logger.record("train/n_updates", int(getattr(self.model, "_n_updates", 0)))
        if self._norms:
            self.logger.record("train/grad_norm", float(torch.stack(self._norms).mean()))
            self._norms = []

    def _on_training_end(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ProgressBar(BaseCallback):
    """A tqdm progress bar over environment steps (SB3's own ``progress_bar=True`` needs rich).

    Args:
        total: Environment steps of the run (the ``total_timesteps`` given to ``learn``);
            ``None`` reads it from the model when training starts.
        desc: Label of the bar (default: the algorithm's name).

    Example:
        ``model.learn(20_000, callback=[KHotGuard(), ProgressBar()])``
    """

    def __init__(self, total: int | None = None, desc: str | None = None) -> None:
        super().__init__()
        self.total, self.desc = total, desc
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        total = self.total
        if total is None:
            total = int(self.locals.get("total_timesteps", 0)) - self.model.num_timesteps or None
        self.bar = tqdm(total=total, desc=self.desc or type(self.model).__name__, unit="step")

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def ppo_kwargs(**overrides: Any) -> dict[str, Any]:
    """Recommended PPO keyword arguments for the k-hot policy (see the module docstring).

    ``learning_rate=3e-4`` (SB3's default) with ``target_kl=0.02`` keeps the subset-level
    importance ratio in range, and ``n_steps=256`` keeps a rollout short: 2,048 steps with 8
    envs (SB3's ``n_steps=2048`` would make it 16,384, minutes of silence before the first
    update); everything else is SB3's default unless overridden. The values are
    :data:`subset_rl.defaults.PPO_DEFAULTS`.

    Example:
        ``PPO(KSubsetActorCriticPolicy, env, **ppo_kwargs(n_steps=64, batch_size=128))``;
        pass ``n_steps`` (and any other key) *through* ``ppo_kwargs``, not next to it, since
        the dict already holds it.

    Args:
        **overrides: Keys to set or replace.

    Returns:
        A fresh dict.
    """
    from .defaults import PPO_DEFAULTS

    out: dict[str, Any] = dict(PPO_DEFAULTS)
    out.update(overrides)
    return out


class SubsetDummyVecEnv(DummyVecEnv):
    """SB3's ``DummyVecEnv`` that lets envs batch the expensive part of their steps.

    Before stepping its envs one by one, it hands each group of envs whose (unwrapped) class
    has a static ``prefetch_steps(items)`` method their ``(env, action)`` pairs, so they can
    compute what their steps need in one batched call;
    :meth:`~subset_rl.envs.FeatureAcquisitionEnv.prefetch_steps` predicts the classifier rows
    of all envs at once (one ``predict_proba`` instead of one per env). Everything else,
    including what ``step`` returns, is ``DummyVecEnv``'s; for envs without the method it is
    ``DummyVecEnv``.
    """

    def step_wait(self) -> Any:
        """Prefetches, then steps every env as ``DummyVecEnv`` does."""
        groups: dict[Any, list[tuple[Any, Any]]] = {}
        for env, action in zip(self.envs, self.actions, strict=True):
            base = env.unwrapped
            hook = getattr(type(base), "prefetch_steps", None)
            if callable(hook):
                groups.setdefault(hook, []).append((base, action))
        for hook, items in groups.items():
            if len(items) > 1:
                hook(items)
        return super().step_wait()


def _make_registered_env(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    # Lives in this module so that a SubprocVecEnv child unpickling it imports subset_rl.sb3,
    # hence subset_rl.envs, which registers the subset_rl/ ids.
    import subset_rl.envs  # noqa: F401

    return gym.make(env_id, **kwargs)


def make_subset_vec_env(
    env_id: str | Callable[..., gym.Env[Any, Any]],
    n_envs: int = 1,
    seed: int | None = None,
    *,
    subprocess: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> VecEnv:
    """``stable_baselines3.common.env_util.make_vec_env`` that works with subprocesses.

    A registered id (``"subset_rl/KNNVoting-v0"``) is made through a factory defined in this
    module, so each ``SubprocVecEnv`` child imports :mod:`subset_rl.envs` and finds the id.

    Args:
        env_id: A registered id or a callable returning an env.
        n_envs: Number of envs.
        seed: Seed of the first env (the others get ``seed + i``).
        subprocess: Use ``SubprocVecEnv`` (the calling script needs an
            ``if __name__ == "__main__":`` guard) instead of :class:`SubsetDummyVecEnv`
            (a ``DummyVecEnv`` that batches the feature-acquisition classifier over its envs).
        env_kwargs: Keyword arguments of the env (for ``BlackBoxSubset-v0``, ``f`` must be
            picklable: a module-level function).
        **kwargs: Further arguments of ``make_vec_env`` (``monitor_dir``, ``wrapper_class``, ...).

    Returns:
        The vectorized env.
    """
    if isinstance(env_id, str):
        env_id = partial(_make_registered_env, env_id)
    if subprocess:
        from stable_baselines3.common.vec_env import SubprocVecEnv

        kwargs.setdefault("vec_env_cls", SubprocVecEnv)
    kwargs.setdefault("vec_env_cls", SubsetDummyVecEnv)
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, **kwargs)


# ------------------------------------------------------------------------------------------------
# Loading without unpickling
# ------------------------------------------------------------------------------------------------
_CONSTANT_RE = re.compile(r"ConstantSchedule\(val=([-+0-9.eE]+|inf|nan)\)")
_BUFFER_MODULES = ("stable_baselines3.common.buffers", "sb3_contrib.common.maskable.buffers")


def _readable(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value if isinstance(value, str) else None


def _schedule_value(item: dict[str, Any], fallback: float) -> float:
    """The value of a pickled constant schedule, read from its JSON description."""
    match = _CONSTANT_RE.search(_readable(item, "value_schedule") or "")
    return float(match.group(1)) if match else fallback


def _check_spaces(
    path: Any, data: dict[str, Any], observation_space: spaces.Space[Any], action_space: KHot
) -> None:
    """Compares the JSON descriptions of the saved spaces with the env's spaces."""
    saved = data.get("action_space")
    if isinstance(saved, dict):
        n, k = saved.get("n"), saved.get("k")
        if (n, k) != (None, None) and (str(n), str(k)) != (str(action_space.n),
                                                           str(action_space.k)):
            raise ValueError(
                f"{path}: the model is for n={n}, k={k}; the env has n={action_space.n}, "
                f"k={action_space.k}"
            )
    saved = data.get("observation_space")
    shape = getattr(observation_space, "shape", None)
    if isinstance(saved, dict) and shape is not None and "_shape" in saved:
        found = saved["_shape"]
        if not isinstance(found, list) or [str(s) for s in found] != [str(s) for s in shape]:
            raise ValueError(
                f"{path}: the model is for observations of shape {found}; the env's are "
                f"{list(shape)}"
            )


def load_model(
    algorithm: type[BaseAlgorithm],
    path: str | os.PathLike,
    *,
    observation_space: spaces.Space[Any],
    action_space: KHot,
    device: str | torch.device = "auto",
    trust_pickle: bool = False,
    **kwargs: Any,
) -> BaseAlgorithm:
    """``algorithm.load(path)`` without unpickling anything stored in the zip.

    A Stable-Baselines3 zip keeps its weights in ``.pth`` files (read with
    ``weights_only=True``) and its settings in a JSON ``data`` entry, where the objects JSON
    cannot hold (the policy class, the spaces, schedules, buffers, the last observation) are
    cloudpickled. Unpickling runs whatever code the file names, so each pickled entry is
    replaced through SB3's ``custom_objects`` before it is read: the policy class by
    :class:`KSubsetActorCriticPolicy` (or the maskable one), the spaces by the env's (checked
    against the ``n``, ``k`` and shape described in the file), constant schedules by their
    value, buffers and the last observation by SB3's defaults. A pickled entry not in that list
    is refused. The result predicts exactly as the saved model; its schedules are constants
    (the last learning rate and clip range), so use ``trust_pickle=True`` on a file you trust
    to continue training with the original schedules.

    Args:
        algorithm: ``PPO``, ``A2C`` or ``MaskablePPO``.
        path: the ``.zip``.
        observation_space: the env's observation space.
        action_space: the env's :class:`~subset_rl.envs.KHot` action space.
        device: where to put the policy.
        trust_pickle: load with SB3's own loader, unpickling the entries (runs their code).
        **kwargs: further arguments of ``algorithm.load``.

    Raises:
        ValueError: the file is not a readable Stable-Baselines3 zip, holds a pickled entry
            that cannot be replaced (naming it and the opt-in), or is for another ``n``, ``k``
            or observation shape; the message names the file.
    """
    import io
    import json
    import zipfile
    from collections import deque

    from .checkpoint import TRUST_PICKLE_HINT

    with open(path, "rb") as fh:  # read once: the file checked is the file loaded
        raw = fh.read()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            damaged = archive.testzip()  # the CRC of every entry
            if damaged is not None:
                raise ValueError(f"the CRC of its entry {damaged!r} does not match: corrupt")
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"{path} is not a readable Stable-Baselines3 model zip ({' '.join(str(err).split())})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: its 'data' entry is not a JSON object")
    _check_spaces(path, data, observation_space, action_space)
    custom = dict(kwargs.pop("custom_objects", None) or {})
    if not trust_pickle:
        maskable = HAS_SB3_CONTRIB and algorithm.__name__.startswith("Maskable")
        policy_class = MaskableKSubsetActorCriticPolicy if maskable else KSubsetActorCriticPolicy
        learning_rate = data.get("learning_rate")
        lr = float(learning_rate) if isinstance(learning_rate, (int, float)) else 0.0
        window = data.get("_stats_window_size")
        window = window if isinstance(window, int) and window > 0 else 100
        for key, item in data.items():
            if key in custom or not (isinstance(item, dict) and ":serialized:" in item):
                continue
            module = _readable(item, "__module__")
            if key == "policy_class" and module == __name__:
                custom[key] = policy_class
            elif key == "observation_space":
                custom[key] = observation_space
            elif key == "action_space":
                custom[key] = action_space
            elif key in ("lr_schedule", "learning_rate"):
                custom[key] = _schedule_value(item, lr)
            elif key == "clip_range":
                custom[key] = _schedule_value(item, 0.2)
            elif key == "clip_range_vf":
                custom[key] = _schedule_value(item, 0.2)
            elif key == "rollout_buffer_class" and module in _BUFFER_MODULES:
                custom[key] = None
            elif key in ("_last_obs", "_last_episode_starts", "_last_original_obs"):
                custom[key] = None
            elif key in ("ep_info_buffer", "ep_success_buffer"):
                custom[key] = deque(maxlen=window)
            else:
                kind = _readable(item, ":type:") or "an object"
                raise ValueError(
                    f"{path}: refused to load: its entry {key!r} is a pickled {kind} "
                    f"({module or 'unknown module'}) that subset_rl cannot rebuild without "
                    f"running code from the file; {TRUST_PICKLE_HINT}"
                )
        if isinstance(custom.get("lr_schedule"), float):
            from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule

            custom["lr_schedule"] = FloatSchedule(ConstantSchedule(custom["lr_schedule"]))
    try:
        model = algorithm.load(io.BytesIO(raw), device=device, custom_objects=custom, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, OSError, EOFError,
            zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path}: cannot load the model: {type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}"
        ) from None
    return model
