"""Native agents: learning, pathwise estimators, checkpoints (exact resume), TensorBoard, errors."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from subset_rl.agents import SFESS, GymEnvObjective, Pathwise
from subset_rl.envs import BlackBoxObjective, Context, KHot, SubsetObjective

WEIGHTS = torch.tensor([0.3, -1.0, 2.0, 0.1, 1.5, -0.5, 0.9, 1.2, 0.0, -2.0])
BEST = set(WEIGHTS.topk(3).indices.tolist())  # {2, 4, 7}


def linear_objective(device: torch.device) -> BlackBoxObjective:
    w = WEIGHTS.to(device)
    return BlackBoxObjective(
        lambda z: (z * w).sum(-1), 10, 3, batched=True, differentiable=True, device=device
    )


class ContextualLinear(SubsetObjective):
    """Observation = item values; reward = sum of the chosen items' values (best: top-k)."""

    def __init__(self, n: int = 8, k: int = 2, device: torch.device | str = "cpu") -> None:
        super().__init__(n, k, device=device)
        self.obs_dim = n

    def _sample_context(self, batch_size, generator):
        return Context(obs=self._randn((batch_size, self.n), generator))

    def _evaluate(self, z, context):
        return {"reward": (z * context.obs).sum(-1)}


def _chosen(agent) -> set[int]:
    action, _ = agent.predict(np.zeros(agent.obs_dim, np.float32), deterministic=True)
    return set(np.flatnonzero(action).tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sfess_finds_best_subset_of_a_black_box(seed, device):
    agent = SFESS(linear_objective(device), num_samples=8, batch_size=4, learning_rate=0.1,
                  seed=seed, device=device)
    assert agent.policy_name == "auto" and type(agent.policy).__name__ == "FreeLogits"
    agent.learn(150)
    assert _chosen(agent) == BEST
    assert agent.best_reward.item() == pytest.approx(WEIGHTS.topk(3).values.sum().item())


def test_sfess_contextual_policy_beats_random(device):
    objective = ContextualLinear(device=device)
    agent = SFESS(objective, num_samples=8, batch_size=32, learning_rate=3e-3, seed=0,
                  device=device)
    assert type(agent.policy).__name__ == "MLPLogits"
    before = agent.evaluate(512)
    agent.learn(60)
    after = agent.evaluate(512)
    # E[top-2 of 8 normals] = 2.85; a random pair scores 0 on average.
    assert before < 1.0 < 2.0 < after


@pytest.mark.parametrize("estimator", ["gs", "stgs", "simple", "imle", "aimle", "intermediate"])
def test_pathwise_estimators_train_on_differentiable_objective(estimator, device):
    agent = Pathwise(linear_objective(device), estimator=estimator, num_samples=4, batch_size=4,
                     learning_rate=0.1, seed=0, device=device)
    agent.learn(200)
    assert _chosen(agent) == BEST, estimator


def test_pathwise_refuses_black_box(device):
    objective = BlackBoxObjective(lambda z: float(z[0]), 6, 2, device=device)
    with pytest.raises(ValueError, match="black box"):
        Pathwise(objective, estimator="stgs", device=device)
    with pytest.raises(ValueError, match="black box"):
        Pathwise("subset_rl/SensorPlacement-v0", estimator="simple", device=device)
    lying = BlackBoxObjective(lambda z: torch.ones(z.shape[:2]), 6, 2, batched=True,
                              differentiable=True, device=device)
    with pytest.raises(ValueError, match="carries no gradient"):
        Pathwise(lying, estimator="stgs", device=device).learn(1)


def test_resume_from_checkpoint_continues_exactly(tmp_path, device):
    def make(**kw):
        return SFESS(ContextualLinear(device=device), num_samples=4, batch_size=8,
                     learning_rate=1e-2, seed=3, device=device, **kw)

    straight = make().learn(20)
    first = make(checkpoint_dir=tmp_path, checkpoint_freq=5).learn(12)
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "step_10.pt", "step_5.pt"]
    del first
    resumed = make().learn(20, resume_from=tmp_path / "step_10.pt")
    assert resumed.num_steps == 20 and resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, device):
    agent = SFESS(linear_objective(device), num_samples=4, seed=0, device=device).learn(3)
    path = tmp_path / "agent.pt"
    agent.save(path)
    good = path.read_bytes()

    def killed(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", killed)
    agent.learn(2)
    with pytest.raises(KeyboardInterrupt):
        agent.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["agent.pt"]  # no temporary left behind
    loaded = SFESS.load(path, env=linear_objective(device), device=device)
    assert loaded.num_steps == 3


def test_save_load_round_trip_predicts_identically(tmp_path, device):
    agent = SFESS(ContextualLinear(device=device), num_samples=4, seed=0, device=device)
    agent.learn(10)
    agent.save(tmp_path / "a.pt")
    loaded = SFESS.load(tmp_path / "a.pt", env=ContextualLinear(device=device), device=device)
    obs = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    a, _ = agent.predict(obs, deterministic=True)
    b, _ = loaded.predict(obs, deterministic=True)
    assert np.array_equal(a, b)
    assert a.shape == (5, 8) and a.dtype == np.float32 and (a.sum(-1) == 2).all()
    single, _ = loaded.predict(obs[0])
    assert single.shape == (8,) and single.sum() == 2
    with pytest.raises(ValueError, match="holds a 'SFESS' agent"):
        Pathwise(ContextualLinear(device=device), device=device,
                 reward_fn=lambda z, ctx: (z * ctx.obs).sum(-1)).learn(
            1, resume_from=tmp_path / "a.pt"
        )


def test_load_without_env_needs_an_id(tmp_path, device):
    agent = SFESS(linear_objective(device), num_samples=4, device=device)
    agent.save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="pass it as load"):
        SFESS.load(tmp_path / "a.pt", device=device)


def test_tensorboard_scalars_are_written(tmp_path, device):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agent = SFESS(linear_objective(device), num_samples=4, batch_size=2, seed=0,
                  tensorboard_log=tmp_path, log_interval=5, device=device)
    agent.learn(20)
    files = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert files
    acc = EventAccumulator(str(Path(files[0]).parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["rollout/ep_rew_mean", "train/loss", "train/grad_norm", "train/entropy",
                "subset/reward_mean", "subset/best_reward", "time/fps"]:
        assert tag in tags, tag
    steps = [e.step for e in acc.Scalars("subset/best_reward")]
    assert steps == [5 * 8, 10 * 8, 15 * 8, 20 * 8]  # x-axis: objective evaluations
    best = [e.value for e in acc.Scalars("subset/best_reward")]
    assert best == sorted(best)


def test_callback_can_stop_training(device):
    agent = SFESS(linear_objective(device), num_samples=4, device=device)
    agent.learn(100, callback=lambda a: a.num_steps < 7)
    assert agent.num_steps == 7


class SeededEnv(gym.Env):
    """A plain Gymnasium env whose reset(seed) fixes the context: obs = item values."""

    def __init__(self, n: int = 6, k: int = 2) -> None:
        self.action_space = KHot(n, k)
        self.observation_space = gym.spaces.Box(-5, 5, (n,), np.float32)
        self._obs = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = self.np_random.standard_normal(self.action_space.n).astype(np.float32)
        return self._obs.copy(), {}

    def step(self, action):
        reward = float((np.asarray(action) * self._obs).sum())
        return self._obs.copy(), reward, True, False, {}


def test_any_seeded_gym_env_works_through_resets(device):
    env = SeededEnv()
    agent = SFESS(env, num_samples=4, batch_size=8, learning_rate=3e-3, seed=0, device=device)
    assert isinstance(agent.objective, GymEnvObjective)
    ctx = agent.objective.sample_context(3, torch.Generator().manual_seed(0))
    z = torch.zeros(2, 3, 6)
    z[..., :2] = 1
    rewards = agent.objective(z, ctx)
    assert torch.allclose(rewards[0], ctx.obs[:, :2].sum(-1).cpu().float())
    before = agent.evaluate(128)
    agent.learn(60)
    assert agent.evaluate(128) > before + 0.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 1}, ValueError, "num_samples >= 2"),
        ({"baseline": "mean"}, ValueError, "baseline must be"),
        ({"sampler": "foo"}, ValueError, "sampler must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must be"),
        ({"policy": "transformer"}, ValueError, "policy must be one of"),
        ({"optimizer": "lbfgs"}, ValueError, "optimizer must be one of"),
        ({"device": "tpu"}, ValueError, "device must be"),
    ],
)
def test_bad_arguments(kwargs, error, match, device):
    with pytest.raises(error, match=match):
        SFESS(linear_objective(device), **({"device": device} | kwargs))


def test_unknown_env_id_and_missing_cuda():
    with pytest.raises(ValueError, match="unknown env id"):
        SFESS("subset_rl/NoSuchEnv-v0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            SFESS(linear_objective(torch.device("cpu")), device="cuda")


def test_k_larger_than_n_is_refused():
    with pytest.raises(ValueError):
        BlackBoxObjective(lambda z: 0.0, 4, 5)


def test_pairwise_policy_learns_knn_voting(device):
    """Query + candidates observations get the per-candidate policy, which learns k-NN voting.

    Random 5-subsets of 100 candidates vote right about 9% of the time and the 5 nearest
    candidates about 80%; 100 steps of SFESS reach well above random.
    """
    agent = SFESS("subset_rl/KNNVoting-v0", num_samples=16, batch_size=16, learning_rate=3e-3,
                  seed=0, device=device)
    assert type(agent.policy).__name__ == "PairwiseLogits"
    assert agent.evaluate(256) < 0.3
    agent.learn(100)
    assert agent.evaluate(256) > 0.6
    with pytest.raises(ValueError, match="pairwise"):
        SFESS(linear_objective(device), policy="pairwise", device=device)


# ------------------------------------------------------------------ divergence: FloatingPointError
class DivergingLinear(ContextualLinear):
    """ContextualLinear whose rewards turn NaN/inf after ``after`` calls (no validation of its own,
    as a user's objective)."""

    def __init__(self, after: int, device: torch.device | str = "cpu") -> None:
        super().__init__(device=device)
        self.after, self.calls = after, 0

    def _evaluate(self, z, context):
        self.calls += 1
        reward = (z * context.obs).sum(-1)
        if self.calls > self.after:
            reward = reward.clone()
            reward.view(-1)[0] = float("nan")
            reward.view(-1)[1] = float("inf")
        return {"reward": reward}


def _set_nan(module: torch.nn.Module) -> None:
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] = float("nan")


def _finite(agent) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in agent.parameters())


def test_sfess_names_non_finite_rewards_and_the_step(device):
    agent = SFESS(DivergingLinear(after=3, device=device), num_samples=4, batch_size=8, seed=0,
                  device=device)
    with pytest.raises(FloatingPointError,
                       match=r"^step 4 \(timestep 96\): rewards are not finite \(1 NaN, 1 inf "
                       r"of 32\); the objective DivergingLinear .*check the objective"):
        agent.learn(10)
    # Checked before the update: the agent keeps the parameters of step 3.
    assert agent.num_steps == 3 and _finite(agent)


def test_sfess_nan_parameter_is_named_as_logits_not_an_unrelated_error(device):
    agent = SFESS(linear_objective(device), num_samples=4, batch_size=2, seed=0, device=device)
    agent.learn(5)
    _set_nan(agent.policy)  # free logits: one NaN item in each of the 2 contexts
    with pytest.raises(FloatingPointError,
                       match=r"^step 6 \(timestep 40\): logits are not finite \(2 NaN of 20\); "
                       r".*lower the learning rate"):
        agent.learn(5)


def test_sfess_huge_learning_rate_stops_at_infinite_logits(device):
    objective = BlackBoxObjective(lambda z: 1e6 * (z * WEIGHTS.to(z.device)).sum(-1), 10, 3,
                                  batched=True, device=device)
    agent = SFESS(objective, num_samples=4, baseline="none", optimizer="sgd", learning_rate=1e35,
                  seed=0, device=device)
    with pytest.raises(FloatingPointError,
                       match=r"^step \d+ \(timestep \d+\): logits are not finite \(.*inf.*"
                       r"lower the learning rate \(now 1e\+35\)"):
        agent.learn(50)


def test_absurd_learning_rate_is_a_floating_point_error(device):
    agent = SFESS(linear_objective(device), num_samples=4, learning_rate=1e38, seed=0,
                  device=device)
    with pytest.raises(FloatingPointError,
                       match=r"^step 1 \(timestep 0\): the optimizer step overflowed .*now 1e\+38"):
        agent.learn(2)


@pytest.mark.parametrize("estimator", ["gs", "stgs", "simple", "imle", "aimle", "intermediate"])
def test_pathwise_nan_parameter_is_named_as_logits(estimator, device):
    agent = Pathwise(linear_objective(device), estimator=estimator, batch_size=2, seed=0,
                     device=device)
    _set_nan(agent.policy)
    with pytest.raises(FloatingPointError,
                       match=r"^step 1 \(timestep 0\): logits are not finite \(2 NaN of 20\)"):
        agent.learn(3)


def test_pathwise_names_rewards_loss_and_gradient(device):
    def make(reward_fn, **kw):
        return Pathwise(ContextualLinear(device=device), estimator="stgs", reward_fn=reward_fn,
                        batch_size=4, seed=0, device=device, **kw)

    calls = []

    def nan_after_two(z, ctx):
        calls.append(1)
        reward = (z * ctx.obs).sum(-1)
        return reward * float("nan") if len(calls) > 2 else reward

    with pytest.raises(FloatingPointError,
                       match=r"^step 3 \(timestep 8\): rewards are not finite \(4 NaN of 4\)"):
        make(nan_after_two).learn(5)
    # finite rewards whose mean overflows float32
    with pytest.raises(FloatingPointError, match=r"^step 1 \(timestep 0\): the loss is -inf"):
        make(lambda z, ctx: z.sum(-1) * 1e38, num_samples=8).learn(2)
    # finite loss, infinite derivative (sqrt at the unchosen items' 0)
    with pytest.raises(FloatingPointError,
                       match=r"^step 1 \(timestep 0\): the gradient norm is nan .*max_grad_norm"):
        make(lambda z, ctx: z.sqrt().sum(-1)).learn(2)


def test_divergence_check_does_not_hide_other_errors(device):
    objective = BlackBoxObjective(lambda z: float("nan"), 6, 2, device=device)
    with pytest.raises(Exception, match="expected a finite value") as info:
        SFESS(objective, num_samples=2, device=device).learn(1)  # the objective's own check
    assert not isinstance(info.value, FloatingPointError)


class DivergingEnv(gym.Env):
    """A plain Gymnasium env with a k-hot action whose reward turns NaN after ``after`` steps."""

    def __init__(self, after: int) -> None:
        self.action_space = KHot(6, 2)
        self.observation_space = gym.spaces.Box(-5, 5, (6,), np.float32)
        self.after, self.calls = after, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(6, np.float32), {}

    def step(self, action):
        self.calls += 1
        reward = float("nan") if self.calls > self.after else float(np.asarray(action)[:2].sum())
        return np.zeros(6, np.float32), reward, True, False, {}


def test_sb3_guard_names_nan_rewards_and_parameters(device):
    from stable_baselines3 import A2C, PPO

    from subset_rl.sb3 import KHotGuard, KSubsetActorCriticPolicy

    model = PPO(KSubsetActorCriticPolicy, DivergingEnv(after=40), n_steps=16, batch_size=16,
                n_epochs=1, seed=0, device=device)
    with pytest.raises(FloatingPointError,
                       match=r"^timestep 48 \(after 2 gradient updates\): the rollout's rewards "
                       r"are not finite \(8 NaN of 16\); check the env's reward"):
        model.learn(160, callback=KHotGuard())
    model = A2C(KSubsetActorCriticPolicy, DivergingEnv(after=10**9), n_steps=8, seed=0,
                device=device)
    model.learn(16, callback=KHotGuard())
    with torch.no_grad():
        model.policy.action_net.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError,
                       match=r"^timestep 16 \(after 2 gradient updates\): the policy's parameters "
                       r"are not finite: action_net.weight \(1 NaN, 0 inf\)"):
        model.learn(16, callback=KHotGuard(), reset_num_timesteps=False)


def test_cli_train_reports_divergence_in_one_line(tmp_path, capsys):
    from subset_rl.cli import main
    from subset_rl.envs.base import SubsetEnv

    if "agentstest/Diverging-v0" not in gym.registry:
        gym.register(id="agentstest/Diverging-v0",
                     entry_point=lambda **kw: SubsetEnv(DivergingLinear(**kw)))
    code = main(["train", "agentstest/Diverging-v0", "--env-kwargs", '{"after": 5}',
                 "--steps", "20", "--num-samples", "4", "--batch-size", "4", "--device", "cpu",
                 "--quiet", "--no-plot", "--logdir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("subset-rl train: training failed: step 6 (timestep 80): rewards are "
                          "not finite (1 NaN, 1 inf of 16)"), err
