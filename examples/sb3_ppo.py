"""Stable-Baselines3 PPO with the exact k-hot policy, next to SFESS and SB3's default head.

Run ``python examples/sb3_ppo.py`` (``--help`` for options). It

1. trains ``PPO(KSubsetActorCriticPolicy, ...)`` on ``subset_rl/FeatureAcquisition-v0`` (choose
   ``k`` of the 64 pixels of a digit for a fixed gradient-boosting classifier) with an
   ``EvalCallback`` and TensorBoard logs (``tensorboard --logdir runs/sb3_ppo``), the recommended
   PPO settings of :func:`subset_rl.sb3.ppo_kwargs` and the :class:`~subset_rl.sb3.KHotGuard`;
2. trains SFESS (leave-one-out REINFORCE, :class:`subset_rl.agents.SFESS`) with the same number
   of objective evaluations, and compares both with random subsets;
3. shows why the k-hot head is needed: SB3's default ``"MlpPolicy"`` builds an independent
   Bernoulli head on a ``KHot`` space. On a toy black box (reward = summed fixed weights of the
   chosen items, n = 10, k = 3) both PPO variants get the same 2048 steps, invalid actions
   (a count other than k) penalized with reward -1.

Output with the defaults (seed 0; wall times on 2 CPU cores shared with other jobs)::

    subset_rl/FeatureAcquisition-v0: k = 10 of n = 64 pixels, 4096 objective evaluations each
    method                        accuracy   wall time
    random subsets                   0.537
    PPO + KSubsetActorCritic         0.761      289.0s
    SFESS (LOO, N = 16)              0.760        5.8s

    Toy black box, n = 10, k = 3, best subset [1, 3, 5]
    SB3's default head for KHot(10, 3): BernoulliDistribution
    k-hot PPO      : ones per sampled action [3, 3, 3], deterministic subset [1, 3, 5]
    Bernoulli PPO  : ones per sampled action [4, 2, 2], deterministic subset []

PPO and SFESS reach the same accuracy for the same number of classifier calls, but PPO steps the
Gym env one instance at a time (about 10 ms of tree-ensemble prediction per step, most of its
wall time), while SFESS scores each batch with one call of the batched objective. The Bernoulli
head never settles on 3 items: its deterministic action (each item rounded on its own) is empty.

PPO settings: the importance ratio of PPO is a ratio of whole-subset probabilities, so use
``target_kl`` (``ppo_kwargs()`` sets 0.02 with SB3's learning rate 3e-4) or a learning rate near
1e-4; see the docstring of :mod:`subset_rl.sb3`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from subset_rl.agents import SFESS
from subset_rl.envs import make_blackbox_env
from subset_rl.sb3 import (
    KHotGuard,
    KSubsetActorCriticPolicy,
    default_head_for,
    make_subset_vec_env,
    ppo_kwargs,
)

ENV_ID = "subset_rl/FeatureAcquisition-v0"
TOY_WEIGHTS = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0, 0.5, 0.4, 0.6])


def toy_reward(z: np.ndarray) -> float:
    """The toy black box of part 3: summed weights of the chosen items."""
    return float(z @ TOY_WEIGHTS)


def mean_accuracy(objective, z: torch.Tensor, contexts: int = 2000, seed: int = 1) -> float:  # noqa: ANN001
    """Mean reward of a fixed subset ``z`` (``(n,)``) or of one random subset per context."""
    gen = torch.Generator().manual_seed(seed)
    ctx = objective.sample_context(contexts, generator=gen)
    z = z.expand(1, contexts, objective.n) if z.dim() == 1 else z.unsqueeze(0)
    return float(objective(z.to(objective.dtype), ctx).mean())


def feature_acquisition(args: argparse.Namespace) -> None:
    env_kwargs = {"k": args.k}
    venv = make_subset_vec_env(ENV_ID, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
    eval_env = make_subset_vec_env(ENV_ID, n_envs=1, seed=args.seed + 1000, env_kwargs=env_kwargs)
    objective = venv.get_attr("unwrapped")[0].objective
    n = objective.n

    model = PPO(
        KSubsetActorCriticPolicy,
        venv,
        seed=args.seed,
        device=args.device,
        tensorboard_log=args.logdir,
        policy_kwargs={"entropy_grad": False},  # ent_coef = 0: skip the entropy's gradient
        **ppo_kwargs(n_steps=64, batch_size=128, n_epochs=4),
    )
    eval_cb = EvalCallback(
        eval_env, eval_freq=max(1, args.steps // (2 * args.n_envs)), n_eval_episodes=100
    )
    start = time.perf_counter()
    model.learn(args.steps, callback=[KHotGuard(), eval_cb], tb_log_name="ppo_khot")
    ppo_time = time.perf_counter() - start
    obs0 = np.zeros(venv.observation_space.shape, np.float32)
    ppo_subset, _ = model.predict(obs0, deterministic=True)
    ppo_acc = mean_accuracy(objective, torch.as_tensor(ppo_subset))

    # SFESS with the same number of objective evaluations (batch_size * num_samples per step).
    per_step = 16 * 16
    sfess = SFESS(
        ENV_ID,
        env_kwargs=env_kwargs,
        batch_size=16,
        num_samples=16,
        learning_rate=0.1,
        device=args.device,
        seed=args.seed,
        tensorboard_log=numbered_folder(Path(args.logdir), "sfess"),  # sfess_1, sfess_2, ...
    )
    start = time.perf_counter()
    sfess.learn(max(1, args.steps // per_step))
    sfess_time = time.perf_counter() - start
    with torch.no_grad():
        sfess_subset = sfess.distribution(torch.zeros(1, sfess.obs_dim)).mode[0].cpu()
    sfess_acc = mean_accuracy(objective, sfess_subset)

    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(2000, n, generator=gen)
    random_z = torch.zeros(2000, n).scatter_(1, scores.topk(args.k, dim=1).indices, 1.0)
    random_acc = mean_accuracy(objective, random_z)

    print(f"\n{ENV_ID}: k = {args.k} of n = {n} pixels, {args.steps} objective evaluations each")
    print(f"{'method':<28}{'accuracy':>10}{'wall time':>12}")
    print(f"{'random subsets':<28}{random_acc:>10.3f}{'':>12}")
    print(f"{'PPO + KSubsetActorCritic':<28}{ppo_acc:>10.3f}{ppo_time:>11.1f}s")
    print(f"{'SFESS (LOO, N = 16)':<28}{sfess_acc:>10.3f}{sfess_time:>11.1f}s")
    print(f"best EvalCallback mean reward (PPO): {eval_cb.best_mean_reward:.3f}")
    print(f"TensorBoard logs: {args.logdir}")
    venv.close()
    eval_env.close()


def bernoulli_comparison(args: argparse.Namespace) -> None:
    best = sorted(np.argsort(-TOY_WEIGHTS)[:3].tolist())
    print(f"\nToy black box, n = 10, k = 3, best subset {best}")
    head = default_head_for(make_blackbox_env(toy_reward, 10, 3).action_space).__name__
    print(f"SB3's default head for KHot(10, 3): {head}")
    for name, policy in (("k-hot PPO", KSubsetActorCriticPolicy), ("Bernoulli PPO", "MlpPolicy")):
        # Invalid actions (a count other than k) are penalized with reward -1, not raised.
        def make() -> object:
            return make_blackbox_env(toy_reward, 10, 3, invalid_action="penalize")

        venv = DummyVecEnv([make] * 8)
        model = PPO(
            policy,
            venv,
            seed=args.seed,
            device=args.device,
            **ppo_kwargs(n_steps=16, batch_size=64, n_epochs=4),
        )
        model.learn(2048)
        obs = np.zeros((3, 1), np.float32)
        sampled, _ = model.predict(obs)
        mode, _ = model.predict(obs[0], deterministic=True)
        print(
            f"{name:<15}: ones per sampled action {sampled.sum(-1).astype(int).tolist()}, "
            f"deterministic subset {np.flatnonzero(mode).tolist()}"
        )


def numbered_folder(parent: Path, name: str) -> Path:
    """``parent/name_1``, or the first ``name_2``, ``name_3``, ... not yet there (SB3's numbering
    of ``ppo_khot_1``, ...), so a second run never adds its TensorBoard log to the first's."""
    number = 1
    while (parent / f"{name}_{number}").exists():
        number += 1
    return parent / f"{name}_{number}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096, help="env steps (objective calls)")
    parser.add_argument("--k", type=int, default=10, help="pixels to acquire")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", "--logdir", dest="logdir", default="runs/sb3_ppo",
        help="folder of the TensorBoard logs (each run adds numbered ppo_khot_N/ and sfess_N/)",
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    feature_acquisition(args)
    bernoulli_comparison(args)


if __name__ == "__main__":
    main()
