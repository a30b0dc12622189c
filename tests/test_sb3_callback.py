"""SubsetMetricsCallback: SB3 runs write the TensorBoard tags and hyperparameters of native runs."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from subset_rl.agents import SFESS
from subset_rl.agents.base import BaseAgent
from subset_rl.sb3 import (
    KSubsetActorCriticPolicy,
    SubsetMetricsCallback,
    make_subset_vec_env,
    ppo_kwargs,
)

N, K = 8, 3
WEIGHTS = np.linspace(-1.0, 1.0, N)


def weighted_sum(z: np.ndarray) -> float:
    return float(z @ WEIGHTS)


def events(folder: Path) -> EventAccumulator:
    files = glob.glob(str(folder / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files
    acc = EventAccumulator(str(Path(files[0]).parent))
    acc.Reload()
    return acc


def hparam_keys(acc: EventAccumulator) -> set[str]:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return set(data.session_start_info.hparams)


class RewardRecorder(BaseCallback):
    """Keeps every env step's rewards."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.rewards.append(np.array(self.locals["rewards"], dtype=np.float64))
        return True


def train_sb3(algo: type, folder: Path, steps: int = 96) -> tuple[Any, RewardRecorder]:
    venv = make_subset_vec_env("subset_rl/BlackBoxSubset-v0", n_envs=2, seed=0,
                               env_kwargs={"f": weighted_sum, "n": N, "k": K})
    options: dict[str, Any] = {"n_steps": 16, "seed": 0, "tensorboard_log": str(folder)}
    if algo is PPO:
        options.update(ppo_kwargs(batch_size=16, n_steps=16))
    model = algo(KSubsetActorCriticPolicy, venv, **options)
    recorder = RewardRecorder()
    model.learn(steps, callback=[recorder, SubsetMetricsCallback()], log_interval=1)
    venv.close()
    return model, recorder


def test_ppo_run_logs_subset_metrics_against_timesteps(tmp_path: Path) -> None:
    model, recorder = train_sb3(PPO, tmp_path)
    acc = events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    for tag in ["subset/reward_mean", "subset/best_reward", "train/entropy", "train/grad_norm",
                "train/n_updates"]:
        assert tag in tags, tag
    # One dump per rollout of 16 steps x 2 envs; each value is that rollout's mean reward.
    rewards = np.stack(recorder.rewards)  # (steps, envs)
    means = [e.value for e in acc.Scalars("subset/reward_mean")]
    assert [e.step for e in acc.Scalars("subset/reward_mean")] == [32, 64, 96]
    np.testing.assert_allclose(means, rewards.reshape(3, -1).mean(1), rtol=1e-5)
    best = [e.value for e in acc.Scalars("subset/best_reward")]
    np.testing.assert_allclose(best, np.maximum.accumulate(rewards.reshape(3, -1).max(1)),
                               rtol=1e-6)
    # train/entropy is SB3's -entropy_loss; the gradient norm is positive and finite.
    entropy = [e.value for e in acc.Scalars("train/entropy")]
    entropy_loss = [e.value for e in acc.Scalars("train/entropy_loss")]
    np.testing.assert_allclose(entropy, -np.array(entropy_loss), rtol=1e-6)
    norms = np.array([e.value for e in acc.Scalars("train/grad_norm")])
    assert (norms > 0).all() and np.isfinite(norms).all()
    keys = hparam_keys(acc)
    assert {"agent", "env", "n", "k", "policy", "batch_size", "learning_rate", "optimizer",
            "max_grad_norm", "seed", "device"} <= keys
    # The gradient hooks are gone after training.
    assert all(not p._post_accumulate_grad_hooks for p in model.policy.parameters()
               if p._post_accumulate_grad_hooks is not None)


def test_a2c_run_logs_the_loss_too(tmp_path: Path) -> None:
    train_sb3(A2C, tmp_path, steps=64)
    acc = events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/entropy", "subset/reward_mean", "subset/best_reward"} <= tags


def test_native_and_sb3_runs_show_the_same_tags(tmp_path: Path) -> None:
    from subset_rl.envs import BlackBoxObjective

    objective = BlackBoxObjective(lambda z: z @ torch.as_tensor(WEIGHTS, dtype=z.dtype), N, K,
                                  batched=True)
    native = SFESS(objective, num_samples=4, batch_size=2, seed=0, log_interval=2,
                   tensorboard_log=tmp_path / "native")
    native.learn(4)
    train_sb3(PPO, tmp_path / "sb3", steps=64)
    native_acc, sb3_acc = events(tmp_path / "native"), events(tmp_path / "sb3")
    native_tags = set(native_acc.Tags()["scalars"]) - {"time/total_timesteps"}  # SB3's x-axis
    sb3_tags = set(sb3_acc.Tags()["scalars"])
    assert native_tags <= sb3_tags, native_tags - sb3_tags
    # The keys every native agent logs (an estimator adds its own, e.g. SFESS's num_samples).
    shared = set(BaseAgent.hyperparameters(native))
    assert shared <= hparam_keys(native_acc) and shared <= hparam_keys(sb3_acc)


def test_callback_names_the_env_from_its_spec(tmp_path: Path) -> None:
    venv = make_subset_vec_env("subset_rl/BlackBoxSubset-v0", n_envs=1, seed=0,
                               env_kwargs={"f": "numpy:sum", "n": 5, "k": 2})
    model = PPO(KSubsetActorCriticPolicy, venv, n_steps=8, batch_size=8)
    callback = SubsetMetricsCallback()
    callback.init_callback(model)
    params = callback.hyperparameters()
    assert params["env"] == "subset_rl/BlackBoxSubset-v0"
    assert (params["n"], params["k"], params["agent"]) == (5, 2, "PPO")
    assert SubsetMetricsCallback(env_id="mine").env_id == "mine"
    venv.close()


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_cli_sb3_run_writes_subset_tags(tmp_path: Path, algo: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from subset_rl.cli import main

    logdir = tmp_path / "run"
    steps = "64" if algo == "ppo" else "200"  # the CLI dumps A2C's logs every 10 updates
    code = main(["train", "subset_rl/KNNVoting-v0", "--agent", algo, "--steps", steps,
                 "--n-envs", "2", "--logdir", str(logdir), "--eval-contexts", "8", "--quiet",
                 "--env-kwargs", '{"n": 10, "k": 3}'])
    assert code == 0, capsys.readouterr().err
    acc = events(logdir)
    assert {"subset/reward_mean", "subset/best_reward"} <= set(acc.Tags()["scalars"])
    assert "env" in hparam_keys(acc)
