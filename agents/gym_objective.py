"""Any Gymnasium env with a k-hot action space as a batched objective, through seeded resets.

Leave-one-out needs several actions scored against the *same* context. An env whose
``reset(seed=s)`` fixes the context gives that: a context is a seed, and scoring ``N`` actions
for it means ``N`` resets with seed ``s``, one step each. Slower than a native batched objective
(one Python call per action) but it works for every such env.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from subset_rl.envs import Context, SubsetObjective

__all__ = ["GymEnvObjective", "SeedContext"]


@dataclass(frozen=True)
class SeedContext(Context):
    """Contexts that are reset seeds.

    Attributes:
        seeds: ``(batch,)`` int64 seeds passed to ``env.reset(seed=...)``.
    """

    seeds: torch.Tensor


class GymEnvObjective(SubsetObjective):
    """Scores k-hot actions by resetting ``env`` with the context's seed and taking one step.

    Args:
        env: a Gymnasium env whose action space has ``n`` (its length) and ``k`` (the subset
            size; a ``KHot`` space has both) and whose observation space is a flat ``Box``.
        k: subset size, if the action space does not say.
        device: device of the returned tensors.
    """

    def __init__(self, env: gym.Env, k: int | None = None, device: str | torch.device = "cpu"):
        space = env.action_space
        shape = getattr(space, "shape", None)
        if shape is None or len(shape) != 1:
            raise ValueError(
                f"env.action_space must be a flat binary space of shape (n,), found {space}"
            )
        k = getattr(space, "k", k)
        if k is None:
            raise ValueError(f"k is needed: the action space {space} does not define it")
        obs_shape = getattr(env.observation_space, "shape", None)
        if obs_shape is None or len(obs_shape) != 1:
            raise ValueError(
                f"env.observation_space must be a flat Box of shape (d,), found "
                f"{env.observation_space}"
            )
        super().__init__(int(shape[0]), int(k), device=device)
        self.env = env
        self.obs_dim = int(obs_shape[0])

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        dev = self._gen_device(generator)
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=dev)
        obs = [self.env.reset(seed=int(s))[0] for s in seeds.tolist()]
        obs_t = torch.as_tensor(np.stack(obs), dtype=self.dtype, device=self.device)
        return SeedContext(obs=obs_t, seeds=seeds.cpu())

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        if not isinstance(context, SeedContext):
            raise TypeError(f"context: expected a SeedContext, found {type(context).__name__}")
        actions = z.detach().cpu().numpy().astype(np.float32)
        out = np.empty(actions.shape[:2])
        seeds = context.seeds.tolist()
        for j in range(actions.shape[0]):
            for b, seed in enumerate(seeds):
                self.env.reset(seed=int(seed))
                out[j, b] = float(self.env.step(actions[j, b])[1])
        return {"reward": torch.as_tensor(out, dtype=self.dtype, device=self.device)}
