"""The training loop shared by the native agents: objective, policy, logging, checkpoints.

Surface as in Stable-Baselines3: ``learn(total_steps, callback=None, progress_bar=False)``
returns ``self``; ``predict(obs, deterministic=False)`` returns ``(action, None)``;
``save(path)`` / ``load(path, ...)``. A *step* is one gradient update on a batch of contexts.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import HParam, Logger, configure
from torch import Tensor, nn

from subset_rl import KSubsetPolicy
from subset_rl import defaults as _defaults
from subset_rl.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_save,
    link_latest,
    read_checkpoint,
    recover_checkpoint_dir,
    save_checkpoint,
)
from subset_rl.envs import SubsetObjective

from .gym_objective import GymEnvObjective, flatten_observations
from .policies import FreeLogits, IPLogits, MLPLogits, PairwiseLogits, build_policy

if TYPE_CHECKING:
    from subset_rl.optimize import OptimizeResult

__all__ = ["BaseAgent", "resolve_device", "resolve_objective"]

Callback = Callable[["BaseAgent"], Any]

#: The built-in policies by class, so that a checkpoint stores a name and not a pickled module.
_POLICY_NAMES: dict[type[nn.Module], str] = {
    MLPLogits: "mlp", FreeLogits: "free", IPLogits: "ip", PairwiseLogits: "pairwise",
}
_OPTIMIZER_NAMES: dict[type[torch.optim.Optimizer], str] = {
    torch.optim.Adam: "adam", torch.optim.SGD: "sgd",
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available; a CUDA device that is not available is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', found {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_objective(
    env: SubsetObjective | gym.Env | str, env_kwargs: dict[str, Any] | None = None
) -> SubsetObjective:
    """The batched objective behind an objective, a subset_rl env, any k-hot env, or an env id."""
    if isinstance(env, SubsetObjective):
        return env
    if isinstance(env, str):
        import subset_rl.envs  # noqa: F401  (registers the ids)

        try:
            env = gym.make(env, **(env_kwargs or {}))
        except gym.error.Error as err:
            known = sorted(i for i in gym.registry if i.startswith("subset_rl/"))
            raise ValueError(f"unknown env id {env!r}; registered subset_rl ids: {known}") from err
    if isinstance(env, gym.Env):
        objective = getattr(env.unwrapped, "objective", None)
        if isinstance(objective, SubsetObjective):
            return objective
        return GymEnvObjective(env)
    raise TypeError(
        f"env must be a SubsetObjective, a gymnasium.Env or an env id, found {type(env).__name__}"
    )


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, ``fsync``, then rename over ``path``.

    See :func:`subset_rl.checkpoint.atomic_save`.
    """
    atomic_save(obj, path)


class BaseAgent(abc.ABC):
    """Common machinery; subclasses implement :meth:`_loss`.

    Args:
        env: a :class:`~subset_rl.envs.SubsetObjective`, a Gymnasium env (its batched objective
            is used when it has one, else seeded resets of the env itself), or a registered id.
            The env's observation space may be any space Gymnasium can flatten (``Box`` of any
            shape, ``Dict``, ``Tuple``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``): the
            policy sees :func:`gymnasium.spaces.utils.flatten` of it (``obs_dim`` its size) and
            :meth:`predict` takes the env's own observations.
        policy: ``"auto"`` (per-item scores for query + items observations such as k-NN
            voting, an MLP for other contextual objectives, free logits otherwise), ``"mlp"``,
            ``"free"``, ``"ip"`` (indirect parameterization), ``"pairwise"``, or an
            ``nn.Module`` mapping observations ``(batch, obs_dim)`` to logits ``(batch, n)``.
        batch_size: contexts per step (``None``: the default for this env, shared with the
            CLI; see :func:`subset_rl.defaults.native_settings`).
        learning_rate: optimizer step size (``None``: the default for this env).
        optimizer: ``"adam"``, ``"sgd"`` or a ``torch.optim.Optimizer`` class.
        max_grad_norm: gradient clipping (``None`` or ``inf`` for none; ``"auto"``: the default
            for this env); the norm is logged.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds the agent's generator (contexts and samples) and the policy initialisation.
        tensorboard_log: folder for TensorBoard event files (``None``: no logging to disk).
        log_interval: steps between logged rows.
        checkpoint_dir: folder for periodic checkpoints ``step_N.pt``, with ``last.pt`` a link
            to the newest (``None``: none). :meth:`learn` first removes the temporary files of
            a run killed mid-write and repairs ``last.pt`` (see :mod:`subset_rl.checkpoint`).
        checkpoint_freq: steps between checkpoints (written atomically).
        env_kwargs: keyword arguments for ``gymnasium.make`` when ``env`` is an id.
        verbose: 0 silent, 1 prints the logged rows.
        torch_threads: CPU threads of torch inside :meth:`learn` and :meth:`evaluate`
            (default :data:`subset_rl.defaults.TORCH_THREADS`, 1, as the CLI: these small steps
            run fastest on one thread); the caller's setting is restored when they return.
            ``None`` leaves torch's setting alone.
        polish_budget: evaluations that :meth:`polish` spends when called without a budget
            (``None``: the default for this env, 4,000 on ``SensorPlacement-v0``, else 0).
            :meth:`learn` never polishes; ``subset-rl train`` calls :meth:`polish` after it
            when this is positive and the policy is the free logit vector.

    The defaults of ``batch_size``, ``learning_rate`` and ``max_grad_norm`` come from
    :mod:`subset_rl.defaults`, the same values ``subset-rl train`` uses for an env id (for
    example ``lr=0.05, batch_size=2`` and no clipping on ``subset_rl/SensorPlacement-v0``).
    """

    _agent_name: str = "sfess"

    def __init__(
        self,
        env: SubsetObjective | gym.Env | str,
        *,
        policy: str | nn.Module = "auto",
        batch_size: int | None = None,
        learning_rate: float | None = None,
        optimizer: str | type[torch.optim.Optimizer] = "adam",
        max_grad_norm: float | str | None = "auto",
        device: str | torch.device = "auto",
        seed: int | None = 0,
        tensorboard_log: str | os.PathLike | None = None,
        log_interval: int = 10,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_freq: int = 1000,
        env_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        torch_threads: int | None = _defaults.TORCH_THREADS,
        polish_budget: int | None = None,
    ) -> None:
        self.env_id = env if isinstance(env, str) else None
        self.env_kwargs = dict(env_kwargs or {})
        self.torch_threads = (
            None if torch_threads is None else _positive_int("torch_threads", torch_threads)
        )
        preset = _defaults.native_settings(self.env_id, self._agent_name)
        if batch_size is None:
            batch_size = preset["batch_size"]
        if learning_rate is None:
            learning_rate = preset["lr"]
        if polish_budget is None:
            polish_budget = preset["polish"]
        self.polish_budget = _positive_int("polish_budget", polish_budget, minimum=0)
        if isinstance(max_grad_norm, str):
            if max_grad_norm != "auto":
                raise ValueError(
                    f"max_grad_norm must be a positive float, None or 'auto', found "
                    f"{max_grad_norm!r}"
                )
            max_grad_norm = preset["max_grad_norm"]
        self.objective = resolve_objective(env, env_kwargs)
        self.device = resolve_device(device)
        self.n, self.k = self.objective.n, self.objective.k
        self.batch_size = _positive_int("batch_size", batch_size)
        self.learning_rate = _positive_float("learning_rate", learning_rate)
        self.log_interval = _positive_int("log_interval", log_interval)
        self.checkpoint_freq = _positive_int("checkpoint_freq", checkpoint_freq)
        self.max_grad_norm = math.inf if max_grad_norm is None else float(max_grad_norm)
        self.seed = seed
        self.verbose = verbose
        self.tensorboard_log = None if tensorboard_log is None else Path(tensorboard_log)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(int(seed))
            torch.manual_seed(int(seed))
        else:
            self.generator.seed()
        probe = self.objective.sample_context(2, generator=self._probe_generator())
        self.obs_dim = int(probe.obs.shape[-1])
        contextual = bool(getattr(self.objective, "contextual", bool((probe.obs != 0).any())))
        self.policy_name = policy if isinstance(policy, str) else type(policy).__name__
        item_features = getattr(self.objective, "n_features", None)
        self.policy = build_policy(
            policy, self.obs_dim, self.n, contextual, item_features
        ).to(self.device)
        # A built-in policy is stored by name and rebuilt on load; a custom module must be
        # passed again to load(path, policy=...).
        self.policy_spec = _POLICY_NAMES.get(type(self.policy)) if isinstance(policy, str) else None
        self.logit_mask = self.objective.logit_mask().to(self.device)
        self.optimizer = self._make_optimizer(optimizer)
        self.num_steps = 0
        self.num_timesteps = 0
        self.best_reward = torch.tensor(-math.inf, device=self.device)
        self.best_action: Tensor | None = None
        self.logger: Logger | None = None
        self._ep_rewards: deque[float] = deque(maxlen=100)
        self._watched_logits: list[Tensor] | None = None  # the logits of the step in progress

    # ------------------------------------------------------------------ construction helpers
    def _probe_generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(12345)

    def _make_optimizer(
        self, optimizer: str | type[torch.optim.Optimizer]
    ) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if isinstance(optimizer, str):
            table = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
            if optimizer not in table:
                raise ValueError(f"optimizer must be one of {sorted(table)}, found {optimizer!r}")
            optimizer = table[optimizer]
        self.optimizer_class = optimizer
        return optimizer(params, lr=self.learning_rate)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters (the policy's; subclasses may add their own modules)."""
        return list(self.policy.parameters())

    def hyperparameters(self) -> dict[str, Any]:
        """The settings logged once to TensorBoard."""
        return {
            "agent": type(self).__name__,
            "env": self.env_id or type(self.objective).__name__,
            "n": self.n,
            "k": self.k,
            "policy": self.policy_name,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "optimizer": self.optimizer_class.__name__,
            "max_grad_norm": self.max_grad_norm,
            "seed": -1 if self.seed is None else self.seed,
            "device": str(self.device),
        }

    # ------------------------------------------------------------------ the policy
    def logits(self, obs: Tensor) -> Tensor:
        """Masked logits ``(batch, n)`` for observations ``(batch, obs_dim)``."""
        out = self.policy(obs.to(device=self.device, dtype=torch.float32))
        if out.shape[-1] != self.n:
            raise ValueError(f"policy must output logits of shape (batch, {self.n}), found "
                             f"{tuple(out.shape)}")
        logits = out + self.logit_mask
        if self._watched_logits is not None:  # inside a training step: checked once at its end
            self._watched_logits.append(logits.detach())
        return logits

    def distribution(self, obs: Tensor, sampler: str = "exact") -> KSubsetPolicy:
        """The k-subset policy for a batch of observations."""
        return KSubsetPolicy(self.logits(obs), self.k, sampler=sampler, validate_args=False)

    def predict(
        self, observation: np.ndarray, deterministic: bool = False
    ) -> tuple[np.ndarray, None]:
        """Action(s) for observation(s), as Stable-Baselines3's ``predict``.

        Args:
            observation: ``(obs_dim,)`` or ``(n_envs, obs_dim)``; for an env whose observation
                space is not a flat ``Box`` (a ``Dict``, ``Tuple``, ``Discrete``, a ``Box`` of
                another shape...), one observation of that space or a batch of them as a vector
                env returns them (flat rows of size ``obs_dim`` work too).
            deterministic: the mode (top-k of the logits) instead of a sample.

        Returns:
            ``(action, None)``; ``action`` is float32 k-hot of shape ``(n,)`` or ``(n_envs, n)``.

        Raises:
            ValueError: the observation fits neither the env's space nor ``(obs_dim,)``.
        """
        space = getattr(self.objective, "observation_space", None)
        if space is not None:
            rows, single = flatten_observations(space, observation)
            obs = torch.as_tensor(rows, device=self.device)
        else:
            obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)
            single = obs.dim() == 1
            if single:
                obs = obs.unsqueeze(0)
        if obs.dim() != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"observation must have shape ({self.obs_dim},) or (n_envs, {self.obs_dim}), "
                f"found {tuple(np.shape(observation))}"
            )
        with torch.no_grad():
            d = self.distribution(obs)
            z = d.mode if deterministic else d.sample(generator=self.generator)
        action = z.cpu().numpy().astype(np.float32)
        return (action[0] if single else action), None

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def _loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """One step's loss to minimise and device-side statistics (``rewards``, ``z``...)."""

    def _setup_logger(self) -> None:
        if self.logger is not None:
            return
        formats = ["stdout"] if self.verbose else []
        folder = None
        if self.tensorboard_log is not None:
            formats.append("tensorboard")
            folder = str(self.tensorboard_log)
        self.logger = configure(folder, formats)
        self.logger.record(
            "hparams",
            HParam(self.hyperparameters(), {"subset/reward_mean": 0.0, "subset/best_reward": 0.0}),
            exclude=("stdout", "log", "json", "csv"),
        )

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Runs the body with :attr:`torch_threads` CPU threads, then restores the caller's."""
        wanted = self.torch_threads
        before = torch.get_num_threads()
        if wanted is None or wanted == before:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def learn(
        self,
        total_steps: int,
        callback: Callback | None = None,
        progress_bar: bool = False,
        resume_from: str | os.PathLike | None = None,
        trust_pickle: bool = False,
    ) -> BaseAgent:
        """Train for ``total_steps`` gradient steps.

        Runs with ``torch_threads`` CPU threads (see the class), restoring the caller's
        setting on return.

        Args:
            total_steps: number of steps to take; with ``resume_from``, the total of the run
                that wrote the checkpoint (training continues until ``num_steps`` reaches it).
            callback: called as ``callback(agent)`` after every step; returning ``False`` stops.
            progress_bar: show a tqdm progress bar.
            resume_from: a checkpoint from :meth:`save` (or the periodic ones) to continue
                exactly: same parameters, optimizer state, RNG state and step count. It is read
                with ``torch.load(weights_only=True)``: nothing in it is executed.
            trust_pickle: allow a ``resume_from`` file that needs arbitrary unpickling (an old
                version 1 checkpoint); only for files you trust.

        Returns:
            ``self``.

        Raises:
            FloatingPointError: when training diverges: the logits, the rewards, the loss or the
                gradient norm of a step is NaN/inf (checked every step, before the update). The
                message names the step, the timestep and the quantity; the agent keeps the
                parameters from before that update.
            ValueError: ``resume_from`` is refused (it holds pickled objects), truncated,
                corrupt, not a subset_rl checkpoint, or for another agent, policy, ``n`` or
                ``k``; the message names the file.
        """
        total_steps = _positive_int("total_steps", total_steps, minimum=0)
        with self._threads():
            return self._learn(total_steps, callback, progress_bar, resume_from, trust_pickle)

    def _learn(
        self,
        total_steps: int,
        callback: Callback | None,
        progress_bar: bool,
        resume_from: str | os.PathLike | None,
        trust_pickle: bool,
    ) -> BaseAgent:
        if self.checkpoint_dir is not None:  # a previous run may have been killed mid-write:
            recover_checkpoint_dir(self.checkpoint_dir)  # before resuming from its last.pt
        if resume_from is not None:
            path = Path(resume_from)
            self._load_state(read_checkpoint(path, trust_pickle=trust_pickle), path)
            remaining = max(0, total_steps - self.num_steps)
        else:
            remaining = total_steps
        self._setup_logger()
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=remaining, desc=type(self).__name__, unit="step")
        start, start_timesteps = time.perf_counter(), self.num_timesteps
        try:
            for _ in range(remaining):
                stats = self._train_step()
                if self.num_steps % self.log_interval == 0:
                    self._log(stats, start, start_timesteps)
                if self.checkpoint_dir is not None and self.num_steps % self.checkpoint_freq == 0:
                    # The step file first, then last.pt as a link to it: last.pt is never
                    # ahead of the newest step, and recover_checkpoint_dir() repairs a kill
                    # between the two.
                    step_path = self.checkpoint_dir / f"step_{self.num_steps}.pt"
                    self.save(step_path)
                    link_latest(step_path, self.checkpoint_dir / "last.pt")
                if bar is not None:
                    bar.update(1)
                    if self.num_steps % self.log_interval == 0:
                        bar.set_postfix(reward=f"{float(stats['rewards'].mean()):.4g}")
                if callback is not None and callback(self) is False:
                    break
        finally:
            if bar is not None:
                bar.close()
        return self

    def _train_step(self) -> dict[str, Tensor]:
        """One update; raises :class:`FloatingPointError` before it if anything is non-finite.

        The logits, the rewards, the loss and the gradient norm are checked together with one
        host sync per update, before ``optimizer.step()``: when the check fails, the parameters
        are still those that produced the failing step (finite unless the logits were not).
        """
        self.policy.train()
        self._watched_logits = []
        try:
            loss, stats = self._loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as err:
            # Non-finite logits make the sampler or the normalizer fail with an unrelated error
            # (``cannot convert float NaN to integer``); name the cause instead.
            message = self._nonfinite_logits_message()
            if message is not None:
                raise FloatingPointError(message) from err
            raise
        finally:
            watched, self._watched_logits = self._watched_logits, None
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)
        rewards, z = stats["rewards"].detach(), stats["z"].detach()
        self._check_finite(watched, rewards, loss.detach(), grad_norm.detach())
        try:
            self.optimizer.step()
        except RuntimeError as err:  # Adam's lr / bias correction beyond float32's range
            if "overflow" not in str(err):
                raise
            raise FloatingPointError(
                f"{self._where()}: the optimizer step overflowed ({err}); lower the learning "
                f"rate (now {self.learning_rate:g})"
            ) from err
        flat = rewards.reshape(-1)
        best = flat.max()
        better = best > self.best_reward
        arg = flat.argmax()
        z_best = z.reshape(-1, self.n)[arg]
        self.best_action = z_best if self.best_action is None else torch.where(
            better, z_best, self.best_action
        )
        self.best_reward = torch.maximum(self.best_reward, best)
        self.num_steps += 1
        self.num_timesteps += flat.numel()
        stats = dict(stats, rewards=rewards, z=z, loss=loss.detach(), grad_norm=grad_norm.detach())
        self._last_stats = stats
        return stats

    # ------------------------------------------------------------------ divergence checks
    def _logit_counts(self, watched: list[Tensor]) -> list[Tensor]:
        """Device-side counts ``[NaN, +inf, rows with fewer than k logits above -inf]``."""
        zero = torch.zeros((), dtype=torch.long, device=self.device)
        counts = [zero, zero, zero]
        for logits in watched:
            available = (logits > -math.inf).sum(-1)
            counts = [
                counts[0] + torch.isnan(logits).sum(),
                counts[1] + torch.isposinf(logits).sum(),
                counts[2] + (available < self.k).sum(),
            ]
        return counts

    def _where(self) -> str:
        return f"step {self.num_steps + 1} (timestep {self.num_timesteps})"

    def _logits_message(self, nan: int, posinf: int, short: int, total: int) -> str | None:
        if not (nan or posinf or short):
            return None
        parts = [f"{nan} NaN" if nan else "", f"{posinf} +inf" if posinf else ""]
        found = ", ".join(p for p in parts if p)
        found = f"{found} of {total}" if found else ""
        if short:
            found = (found + "; " if found else "") + (
                f"{short} rows with fewer than k={self.k} logits above -inf"
            )
        return (
            f"{self._where()}: logits are not finite ({found}); the policy "
            f"diverged: lower the learning rate (now {self.learning_rate:g}) or clip gradients "
            "with max_grad_norm, and check that the objective's rewards are of a sane scale"
        )

    def _nonfinite_logits_message(self) -> str | None:
        watched = self._watched_logits or []
        if not watched:
            return None
        nan, posinf, short = torch.stack(self._logit_counts(watched)).tolist()
        return self._logits_message(nan, posinf, short, sum(t.numel() for t in watched))

    def _check_finite(
        self, watched: list[Tensor], rewards: Tensor, loss: Tensor, grad_norm: Tensor
    ) -> None:
        """Raises :class:`FloatingPointError` naming the first non-finite quantity of a step.

        Checked in causal order (logits, rewards, loss, gradient norm) with one host sync.
        """
        counts = self._logit_counts(watched) + [
            torch.isnan(rewards).sum(),
            torch.isinf(rewards).sum(),
            (~torch.isfinite(loss)).sum(),
            (~torch.isfinite(grad_norm)).sum(),
        ]
        nan, posinf, short, r_nan, r_inf, bad_loss, bad_grad = torch.stack(
            [c.to(self.device) for c in counts]
        ).tolist()
        message = self._logits_message(nan, posinf, short, sum(t.numel() for t in watched))
        if message is None and (r_nan or r_inf):
            found = ", ".join(
                p for p in (f"{r_nan} NaN" if r_nan else "", f"{r_inf} inf" if r_inf else "") if p
            )
            message = (
                f"{self._where()}: rewards are not finite ({found} of {rewards.numel()}); the "
                f"objective {type(self.objective).__name__} returned them for valid k-hot "
                "actions: check the objective (or reward_fn)"
            )
        if message is None and bad_loss:
            message = (
                f"{self._where()}: the loss is {float(loss)} with finite logits and rewards; "
                f"lower the learning rate (now {self.learning_rate:g}) or check the scale of "
                "the objective's rewards"
            )
        if message is None and bad_grad:
            message = (
                f"{self._where()}: the gradient norm is {float(grad_norm)} with a finite loss; "
                f"lower the learning rate (now {self.learning_rate:g}), clip gradients with "
                "max_grad_norm, or check the objective's gradient (reward_fn)"
            )
        if message is not None:
            raise FloatingPointError(message)

    def _log(self, stats: dict[str, Tensor], start: float, start_timesteps: int) -> None:
        if self.logger is None:
            self._setup_logger()
        loss = float(stats["loss"])  # finite: checked by _train_step
        rewards = stats["rewards"]
        self._ep_rewards.extend(rewards.reshape(-1)[:256].tolist())
        with torch.no_grad():
            entropy = float(stats["entropy"].mean()) if "entropy" in stats else float("nan")
        elapsed = max(time.perf_counter() - start, 1e-9)
        record = self.logger.record  # type: ignore[union-attr]
        record("rollout/ep_rew_mean", float(np.mean(self._ep_rewards)))
        record("train/loss", loss)
        record("train/grad_norm", float(stats["grad_norm"]))
        record("train/entropy", entropy)
        record("train/n_updates", self.num_steps)
        record("subset/reward_mean", float(rewards.mean()))
        record("subset/best_reward", float(self.best_reward))
        record("time/fps", int((self.num_timesteps - start_timesteps) / elapsed))
        record("time/total_timesteps", self.num_timesteps)
        self.logger.dump(step=self.num_timesteps)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ evaluation
    def polish(
        self, budget: int | None = None, num_contexts: int = 128, progress: bool = False
    ) -> OptimizeResult:
        r"""Improve the policy's mode by swap moves scored on fixed training contexts.

        Policy-gradient training ends in a concentrated distribution whose mode can still be
        improved by exchanging one chosen item for another: sampling rarely proposes removing
        an item whose marginal is near 1, and single noisy rewards can hardly tell two close
        subsets apart. This runs :func:`subset_rl.optimize.optimize`'s swap search (the
        ``hybrid`` method with ``explore=0``) from the mode, on the objective averaged over
        ``num_contexts`` contexts drawn once from the training generator (common random
        numbers: every candidate is scored on the same contexts, never on evaluation ones),
        with swaps ranked by the learned logits:

        .. math::

            \max_{|S| = k}\ \frac{1}{C}\sum_{c=1}^{C} f(S, x_c), \quad
            S_0 = \operatorname{mode}.

        When a better subset is found, the logits of the items swapped out and in exchange
        their values (and their optimizer state), so the distribution keeps its shape and its
        mode becomes the subset found; training can continue from there.

        Only for a context-free policy (the free logit vector, ``policy="free"``, which
        ``"auto"`` picks for objectives without observations): a policy that conditions on
        the context has no single mode to polish.

        Args:
            budget: Distinct subsets to score (default ``polish_budget``, the env's default;
                ``subset-rl train --polish``). Each costs ``num_contexts`` reward evaluations.
            num_contexts: Training contexts the subsets are scored on.
            progress: Show a progress bar of the evaluations.

        Returns:
            The search result; ``history.values[0]`` is the mode's value before, ``best_value``
            the polished mode's (both on the ``num_contexts`` contexts).

        Raises:
            ValueError: a contextual policy, or ``budget`` / ``num_contexts`` below 1.
        """

        if budget is None:
            if not self.polish_budget:
                raise ValueError(
                    "polish: no budget given and this agent's polish_budget is 0 (the default "
                    "outside the tuned envs); call polish(budget=N) or set polish_budget"
                )
            budget = self.polish_budget
        budget = _positive_int("budget", budget)
        num_contexts = _positive_int("num_contexts", num_contexts)
        if not isinstance(self.policy, FreeLogits):
            raise ValueError(
                f"polish needs a context-free policy (free logits), found "
                f"{type(self.policy).__name__}: a policy that conditions on the context has "
                "no single mode to improve"
            )
        with self._threads():
            return self._polish(budget, num_contexts, progress)

    def _polish(self, budget: int, num_contexts: int, progress: bool) -> OptimizeResult:
        from subset_rl.optimize import optimize

        objective = self.objective
        allowed = torch.isfinite(self.logit_mask).nonzero().flatten()
        n_allowed = int(allowed.numel())
        ctx = objective.sample_context(num_contexts, generator=self.generator)
        per_call = max(1, 8192 // num_contexts)
        full_idx = allowed.to(objective.device)

        def f(zs: Tensor) -> Tensor:  # (m, n_allowed) -> mean reward over the contexts
            z = torch.zeros(zs.shape[0], self.n, device=objective.device)
            z[:, full_idx] = zs.to(device=objective.device, dtype=z.dtype)
            z = z[:, None, :].expand(-1, num_contexts, -1)
            with torch.no_grad():
                return objective(z, ctx, validate=False).mean(1).double().cpu()

        param = self.policy.logits
        logits = param.detach()[allowed.to(param.device)].double().cpu()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device))
        result = optimize(
            f, n_allowed, self.k, budget=budget, batched=True, batch=per_call,
            device="cpu", seed=seed, progress=progress,
            options={"explore": 0.0, "logits": logits.numpy()},
        )
        if not result.best_value > result.history.values[0]:
            return result
        best = allowed[list(result.best_indices)].to(param.device)
        with torch.no_grad():
            mode = torch.zeros(self.n, dtype=torch.bool, device=param.device)
            mode[(param + self.logit_mask.to(param.device)).topk(self.k).indices] = True
            target = torch.zeros_like(mode)
            target[best] = True
            ins = (target & ~mode).nonzero().flatten()
            outs = (mode & ~target).nonzero().flatten()
            perm = torch.arange(self.n, device=param.device)
            perm[ins], perm[outs] = outs, ins
            param.copy_(param[perm])
            for buffer in self.optimizer.state.get(param, {}).values():
                if isinstance(buffer, Tensor) and buffer.shape == param.shape:
                    buffer.copy_(buffer[perm])
            top = (param + self.logit_mask.to(param.device)).topk(self.k).indices
            if not bool(target[top].all()):  # tied logits at the boundary: lift the new ones
                gap = float(param[target].min() - param[~target & torch.isfinite(
                    self.logit_mask.to(param.device))].max())
                param[target] += max(0.0, -gap) + 1e-3
        return result

    def evaluate(self, num_contexts: int = 256, deterministic: bool = True) -> float:
        """Mean reward of the policy on fresh contexts (drawn from a separate generator).

        Runs with ``torch_threads`` CPU threads, as :meth:`learn`.
        """
        with self._threads():
            return self._evaluate(_positive_int("num_contexts", num_contexts), deterministic)

    def _evaluate(self, num_contexts: int, deterministic: bool) -> float:
        gen = torch.Generator(device=self.device).manual_seed(2**31 - 1)
        ctx = self.objective.sample_context(num_contexts, gen)
        with torch.no_grad():
            d = self.distribution(ctx.obs)
            z = d.mode if deterministic else d.sample(generator=gen)
            z = z.unsqueeze(0).to(self.objective.device)
            return float(self.objective(z, ctx, validate=False).mean())

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "class": type(self).__name__,
            "config": self._plain_config(),
            "policy": {"name": self.policy_spec, "class": type(self.policy).__name__},
            "policy_state": self.policy.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "generator_state": self.generator.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "num_steps": int(self.num_steps),
            "num_timesteps": int(self.num_timesteps),
            "best_reward": self.best_reward.cpu(),
            "best_action": None if self.best_action is None else self.best_action.cpu(),
            "obs_dim": int(self.obs_dim),
            "n": int(self.n),
            "k": int(self.k),
            "logit_mask": self.logit_mask.cpu(),
            "extra": self._extra_state(),
        }

    def _config(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_grad_norm": None if math.isinf(self.max_grad_norm) else self.max_grad_norm,
            "seed": self.seed,
            "log_interval": self.log_interval,
            "checkpoint_freq": self.checkpoint_freq,
            "torch_threads": self.torch_threads,
            "polish_budget": self.polish_budget,
            "optimizer": _OPTIMIZER_NAMES.get(self.optimizer_class),
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
        }

    def _plain_config(self) -> dict[str, Any]:
        """:meth:`_config` as JSON data; env arguments that are not JSON are left out.

        Without them (a callable ``f``, an array...) the env cannot be rebuilt from the
        checkpoint, so :meth:`load` then needs ``env=``.
        """
        config = {key: _plain_scalar(value) for key, value in self._config().items()}
        if config.get("optimizer") is None:
            config.pop("optimizer", None)
        try:
            json.dumps(config["env_kwargs"], allow_nan=False)
        except (TypeError, ValueError):
            config["env_id"], config["env_kwargs"] = None, {}
        try:
            json.dumps(config)
        except (TypeError, ValueError) as err:  # a setting of ours that is not plain: a bug
            raise TypeError(f"agent settings must be JSON data to be saved: {err}") from None
        return config

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        return None

    def _load_state(self, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
        """Restores a checkpoint read by :func:`~subset_rl.checkpoint.read_checkpoint`.

        Everything is checked before anything is changed, so a refused checkpoint leaves the
        agent as it was.

        Raises:
            ValueError: the checkpoint is for another agent class, ``n``, ``k``, observation
                size or policy; the message names ``path``.
        """
        if state.get("class") != type(self).__name__:
            raise ValueError(
                f"{path}: checkpoint holds a {state.get('class')!r} agent, not a "
                f"{type(self).__name__!r}"
            )
        if (state["n"], state["k"]) != (self.n, self.k):
            raise ValueError(
                f"{path}: checkpoint is for n={state['n']}, k={state['k']}; this agent has "
                f"n={self.n}, k={self.k}"
            )
        if state.get("obs_dim", self.obs_dim) != self.obs_dim:
            raise ValueError(
                f"{path}: checkpoint is for observations of size {state['obs_dim']}; this "
                f"agent's env has {self.obs_dim}"
            )
        policy_state = self.policy.state_dict()
        saved = state["policy_state"]
        bad = sorted(set(policy_state) ^ set(saved)) + sorted(
            key for key in set(policy_state) & set(saved)
            if not isinstance(saved[key], Tensor) or saved[key].shape != policy_state[key].shape
        )
        if bad:
            raise ValueError(
                f"{path}: the policy weights do not fit this agent's "
                f"{type(self.policy).__name__} policy (keys or shapes differ: "
                f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})"
            )
        backup = (self.optimizer.state_dict(), self.generator.get_state())
        try:
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.generator.set_state(state["generator_state"])
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            self.optimizer.load_state_dict(backup[0])
            self.generator.set_state(backup[1])
            raise ValueError(
                f"{path}: the optimizer or generator state does not fit this agent "
                f"({' '.join(str(err).split())[:160]})"
            ) from None
        self.policy.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng_state"])
        self.num_steps = int(state["num_steps"])
        self.num_timesteps = int(state["num_timesteps"])
        self.best_reward = state["best_reward"].to(self.device)
        best = state["best_action"]
        self.best_action = None if best is None else best.to(self.device)
        self._load_extra_state(state["extra"])

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (temporary file, ``fsync``, then rename).

        The checkpoint holds tensors and plain data only (state dicts, the settings as JSON
        data, the RNG states as tensors) and a SHA-256 digest of them; see
        :mod:`subset_rl.checkpoint`.
        """
        save_checkpoint(self._state(), Path(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        env: SubsetObjective | gym.Env | str | None = None,
        device: str | torch.device = "auto",
        *,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> BaseAgent:
        """Rebuild an agent from a checkpoint.

        The file is read with ``torch.load(weights_only=True)`` and its digest checked; the
        policy is rebuilt from its stored name (a custom ``nn.Module`` policy must be passed
        again as ``policy=``), then the saved weights and states are loaded into it.

        Args:
            path: the checkpoint.
            env: the objective/env to continue training on; defaults to the env id stored in
                the checkpoint (required when the agent was built from an object).
            device: where to put the agent.
            trust_pickle: also accept a file that needs arbitrary unpickling (a version 1
                checkpoint, which pickled the policy module). Unpickling can run any code:
                only for files you trust.
            **kwargs: overrides of the stored settings (``policy=`` for a custom module).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is refused (pickled objects), truncated, corrupt, not a
                subset_rl checkpoint, or for another agent, ``n`` or ``k``; the message names
                the file and what is wrong.
        """
        dev = resolve_device(device)
        state = read_checkpoint(path, trust_pickle=trust_pickle)
        config = dict(state["config"])
        env_id, env_kwargs = config.pop("env_id", None), config.pop("env_kwargs", None) or {}
        if env is None:
            if env_id is None:
                raise ValueError(
                    f"{path}: this checkpoint was trained on an objective object (or env "
                    "arguments that are not JSON data), not an env id: pass it as "
                    "load(path, env=...)"
                )
            env = env_id
        if state.get("version") == 1:  # trusted old format: the pickled module itself
            policy: Any = state["policy"]
        else:
            policy = state["policy"].get("name")
        if policy is None and "policy" not in kwargs:
            raise ValueError(
                f"{path}: the policy is a custom module ({state['policy'].get('class')}), "
                "which a checkpoint does not store: build it again and pass "
                "load(path, policy=module)"
            )
        config["policy"] = policy
        config.update(kwargs)
        try:
            agent = cls(env, device=dev, env_kwargs=env_kwargs, **config)
        except TypeError as err:
            raise ValueError(f"{path}: its settings do not fit {cls.__name__}: {err}") from None
        agent._load_state(state, path)
        return agent


def _plain_scalar(value: Any) -> Any:
    """A NumPy or 0-d torch scalar as the Python number it holds; anything else unchanged."""
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.dim() == 0):
        return value.item()
    return value


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, found {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, found {value}")
    return int(value)


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a positive float, found {value!r}")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite float, found {value}")
    return float(value)
