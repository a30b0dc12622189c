"""The ``subset-rl`` command line: list the environments, train an agent, evaluate a checkpoint.

::

    subset-rl envs
    subset-rl train subset_rl/SensorPlacement-v0             # SFESS, about a minute on 2 cores
    subset-rl train subset_rl/KNNVoting-v0 --agent ppo --steps 10000
    subset-rl eval runs/SensorPlacement-v0-sfess-0           # or .../model.pt, .../model.zip
    subset-rl optimize mymodule:f --n 50 --k 5 --budget 2000 # see subset_rl.optimize.cli

``train`` shows a progress bar (``--quiet`` hides it), writes TensorBoard logs, periodic
checkpoints and the final model under ``--logdir`` (default ``runs/<env>-<agent>-<seed>``; a
folder that already holds a run is left alone and the new run goes to ``<logdir>_2``, ``_3``, ...,
as printed), then prints a table: the trained policy's deterministic reward on held-out
contexts drawn from a fixed evaluation generator, the baselines of that env on the *same*
contexts (uniformly random k-subsets for every env; QR pivoting for sensor placement; the k
nearest candidates for k-NN voting; the highest-variance features for feature acquisition), and
the wall time. It also saves a picture of what was selected (see :mod:`subset_rl.plots`). When
the trained policy is no better than the random k-subsets (within two standard errors), a
warning says so on stderr (PPO/A2C on k-NN voting: see :data:`subset_rl.defaults.SB3_DEFAULTS`).
The defaults of every agent live in :mod:`subset_rl.defaults`, shared with the Python API.

Envs with any observation space Gymnasium can flatten (``Box`` of any shape, ``Dict``,
``Tuple``, ``Discrete``, ...) work with the native agents; ``ppo``/``a2c`` take what SB3 takes
(``Tuple`` is refused with a one-line error).
``eval`` reloads a model (the env id is stored in it) and prints the same table.

Any env with a :class:`~subset_rl.envs.KHot` action space works, including your own: pass
``your_module:your_ns/YourEnv-v0`` so that the module registering it is imported.

``eval`` never runs code stored in a model file: a ``.pt`` is read with
``torch.load(weights_only=True)`` and a ``.zip`` with :func:`subset_rl.sb3.load_model`; a file
that needs arbitrary unpickling is refused unless ``--trust-pickle`` is given.

User errors (an unknown env id, ``k`` larger than ``n``, a pathwise estimator on a
non-differentiable objective, a device that is not available, a truncated, corrupt, foreign or
mismatched model file, a refused one, ...) print one line,
``subset-rl <command>: error: ...``, and exit with status 2, as argparse does. A run that
diverges (NaN/inf logits, rewards, loss or gradients; parameters or rollouts under PPO/A2C)
prints ``subset-rl train: training failed: step N (timestep T): <quantity> ...`` and exits with
status 1, as does an objective that fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subset_rl import defaults as _defaults

if TYPE_CHECKING:
    import gymnasium as gym
    import torch

    from subset_rl.envs import Context, SubsetObjective

__all__ = [
    "AGENTS",
    "EVAL_SEED",
    "CLIError",
    "EvalResult",
    "build_parser",
    "evaluate",
    "main",
]

SB3_AGENTS: tuple[str, ...] = ("ppo", "a2c")
PATHWISE_AGENTS: tuple[str, ...] = ("gs", "stgs", "simple", "imle", "aimle", "intermediate")
AGENTS: tuple[str, ...] = ("sfess", *SB3_AGENTS, *PATHWISE_AGENTS)
"""Names accepted by ``--agent``."""

EVAL_SEED = 2**31 - 1
"""Seed of the evaluation generator (the one :meth:`BaseAgent.evaluate` uses too)."""

# The defaults live in subset_rl.defaults, shared with the Python API; these names stay here for
# the code that imported them from the CLI.
NATIVE_DEFAULTS = _defaults.NATIVE_DEFAULTS
"""Settings of the native agents: :data:`subset_rl.defaults.NATIVE_DEFAULTS`."""

RECOMMENDED = _defaults.RECOMMENDED
"""Per-env overrides for ``sfess``: :data:`subset_rl.defaults.RECOMMENDED`."""

SB3_DEFAULTS = _defaults.SB3_DEFAULTS
"""Settings of ``ppo`` / ``a2c``: :data:`subset_rl.defaults.SB3_DEFAULTS`."""

RANDOM_SAMPLES = 32
"""Random k-subsets per evaluation context for the random baseline."""


class CLIError(Exception):
    """A usage error: printed as ``subset-rl <command>: error: <message>``, exit status 2."""


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------
def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``; errors say ``expected {what}``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, found {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, found {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, found {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected JSON, found {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"n\": 50}}', found {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``subset-rl`` argument parser (sub-commands ``envs``, ``train`` and ``eval``)."""
    parser = argparse.ArgumentParser(
        prog="subset-rl",
        description="Learn to choose k of n items for black-box objectives.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("envs", help="list the registered subset_rl environments",
                   description="List the registered subset_rl environments with n and k.")

    train = sub.add_parser(
        "train", help="train an agent on an env and compare it with the baselines",
        description="Train an agent, then print its reward next to the env's baselines on the "
        "same held-out contexts, and save a picture of what it selects.",
    )
    train.add_argument("env_id", metavar="ENV_ID",
                       help="a registered id, e.g. subset_rl/SensorPlacement-v0 (or "
                       "module:ns/Name-v0 for an env registered by your own module)")
    train.add_argument("--agent", choices=AGENTS, default="sfess",
                       help="sfess (score function + leave-one-out, default), ppo / a2c "
                       "(Stable-Baselines3 with the k-hot policy), or a pathwise estimator "
                       "(differentiable objectives only)")
    train.add_argument("--k", type=_positive_int, default=None,
                       help="number of items to choose (default: the env's)")
    train.add_argument("--steps", type=_positive_int, default=None,
                       help="gradient steps for sfess and the pathwise agents; environment "
                       "steps for ppo/a2c (default: tuned per env)")
    train.add_argument("--num-samples", type=_positive_int, default=None,
                       help="samples per context (sfess: >= 2 for leave-one-out)")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="contexts per step (ppo: minibatch size)")
    train.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    train.add_argument("--policy", choices=_defaults.POLICIES, default="auto",
                       help="native agents: free logits, an MLP on the observation, the "
                       "indirect parameterization, or per-item scores of [query, items] "
                       "observations (pairwise; default auto: pairwise for k-NN voting, free "
                       "for context-free envs, else mlp)")
    train.add_argument("--max-grad-norm", type=_positive_float, default=None,
                       help="gradient clipping of the native agents")
    train.add_argument("--ent-coef", type=_nonnegative_float, default=None,
                       help="entropy bonus (sfess, ppo, a2c)")
    train.add_argument("--utility", choices=("reward", "rank"), default=None,
                       help="sfess: rewards as they are (unbiased) or NES rank utilities "
                       "(default: per env; rank on SensorPlacement-v0)")
    train.add_argument("--polish", type=_nonnegative_int, default=None, metavar="N",
                       help="native agents with free logits: after training, improve the "
                       "policy's mode by a swap search of N evaluations on 128 training "
                       "contexts (0: none; default: per env, 4000 on SensorPlacement-v0)")
    train.add_argument("--n-envs", type=_positive_int, default=None,
                       help=f"ppo/a2c: parallel envs (default {SB3_DEFAULTS['n_envs']})")
    train.add_argument("--env-kwargs", type=_json_object, default=None, metavar="JSON",
                       help="keyword arguments of the env, e.g. '{\"n\": 50, \"noise_std\": 0.05}'")
    train.add_argument("--device", default="auto",
                       help="cpu, cuda, cuda:1 or auto (default: cuda when available)")
    train.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    train.add_argument("--logdir", type=Path, default=None,
                       help="TensorBoard logs, checkpoints, model and plot (default "
                       "runs/<env>-<agent>-<seed>; if it already holds a run, the first of "
                       "DIR_2, DIR_3, ... that does not)")
    train.add_argument("--checkpoint-freq", type=_positive_int, default=None,
                       help="steps between checkpoints (default: 5 per run)")
    _add_eval_options(train)

    ev = sub.add_parser(
        "eval", help="evaluate a saved model and compare it with the baselines",
        description="Reload a model saved by `subset-rl train` (a model.pt, model.zip or a "
        "periodic checkpoint, or the run folder) and print the same table.",
    )
    ev.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                    help="model file or the run folder holding model.pt / model.zip")
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ev.add_argument("--trust-pickle", action="store_true",
                    help="also load a file that needs arbitrary unpickling (an old checkpoint "
                    "with a pickled policy, or a .zip loaded by SB3's own loader); unpickling "
                    "runs any code the file names: only for files you trust")
    _add_eval_options(ev)

    try:  # `subset-rl optimize MODULE:FUNCTION ...` lives with the optimizer
        from subset_rl.optimize.cli import add_optimize_subcommand
    except ImportError:
        pass
    else:
        add_optimize_subcommand(sub)
    return parser


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-contexts", type=_positive_int, default=256,
                        help="held-out contexts for the table (default 256)")
    parser.add_argument("--no-plot", action="store_true", help="do not save the plot")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar or notes (the table is still printed)")
    parser.add_argument("--threads", type=_positive_int, default=_defaults.TORCH_THREADS,
                        help="CPU threads of torch (default 1: these small batched steps run "
                        "fastest on one thread, and far faster than on two busy cores)")


# ------------------------------------------------------------------------------------------------
# Environments
# ------------------------------------------------------------------------------------------------
def _registered_ids() -> list[str]:
    import gymnasium as gym

    import subset_rl.envs  # noqa: F401  (registers the ids)

    return sorted(i for i in gym.registry if i.startswith("subset_rl/"))


def _describe(env_id: str) -> str:
    """First line of the env class docstring."""
    import gymnasium as gym

    spec = gym.spec(env_id)
    entry = spec.entry_point
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        import importlib

        entry = getattr(importlib.import_module(module), name)
    doc = (getattr(entry, "__doc__", None) or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env[Any, Any]:
    """``gymnasium.make`` with the failures a user can cause turned into :class:`CLIError`."""
    import gymnasium as gym

    import subset_rl.envs  # noqa: F401

    shown = ", ".join(f"{k}={v!r}" for k, v in env_kwargs.items())
    if ":" in env_id and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # 'module:id' finds modules of the current folder, as -m does
    try:
        env = gym.make(env_id, **env_kwargs)
    except ModuleNotFoundError as err:
        reason = str(err).split(". Environment registration")[0]
        raise CLIError(f"cannot import the module of {env_id!r}: {reason}") from None
    except gym.error.MissingArgument as err:  # BlackBoxSubset-v0 without f, n, k
        raise CLIError(f"cannot make {env_id}: {err}; or register your own env with "
                       "make_blackbox_env (see examples/custom_env.py) and pass its id") from None
    except gym.error.Error:
        raise CLIError(
            f"unknown env id {env_id!r}; registered subset_rl envs: {', '.join(_registered_ids())}"
            " (see `subset-rl envs`; for an env of your own pass 'your_module:ns/Name-v0')"
        ) from None
    except TypeError as err:
        hint = ""
        if "BlackBoxSubset" in env_id:
            hint = ("; it wraps a Python callable f(z) -> float: register your own env with "
                    "make_blackbox_env (see examples/custom_env.py) and pass its id")
        raise CLIError(f"cannot make {env_id}: {err}{hint}") from None
    except ValueError as err:
        raise CLIError(f"cannot make {env_id}" + (f" with {shown}" if shown else "")
                       + f": {err}") from None
    k = getattr(env.action_space, "k", None)
    if k is None:
        env.close()
        raise CLIError(
            f"{env_id} has action space {env.action_space}, not a KHot(n, k) space: "
            "subset-rl trains policies that choose exactly k items"
        )
    return env


def _objective_of(env: gym.Env[Any, Any]) -> SubsetObjective:
    from subset_rl.agents import resolve_objective

    try:
        return resolve_objective(env)
    except (TypeError, ValueError) as err:  # an observation space with no flat form, ...
        raise CLIError(str(err)) from None


def _slug(env_id: str) -> str:
    name = env_id.split(":")[-1].split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _check_device(device: str) -> torch.device:
    from subset_rl.agents import resolve_device

    try:
        return resolve_device(device)
    except ValueError as err:
        raise CLIError(f"--device: {err}") from None


def _differentiable(objective: SubsetObjective) -> tuple[bool, str]:
    """Whether the objective declares a reward differentiable in the action, and why not."""
    if getattr(objective, "differentiable", False):
        return True, ""
    return False, "it declares differentiable=False"


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the result table.

    Attributes:
        name: Method.
        rewards: Rewards of shape ``(samples, contexts)`` on the evaluation contexts.
        success: Success indicators of the same shape, if the objective defines success.
    """

    name: str
    rewards: Any
    success: Any = None

    def summary(self) -> dict[str, float]:
        """Mean, standard error over contexts, median and success rate."""
        r = self.rewards.double()
        per_context = r.mean(0)
        count = per_context.numel()
        sem = float(per_context.std() / math.sqrt(count)) if count > 1 else float("nan")
        out = {"mean": float(r.mean()), "sem": sem, "median": float(r.median())}
        if self.success is not None:
            out["success"] = float(self.success.double().mean())
        return out


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        rows: The policy first, then the baselines.
        context: The evaluation contexts.
        actions: The policy's deterministic actions ``(contexts, n)``.
        marginals: Its inclusion probabilities ``(contexts, n)``, when available.
        deterministic_baselines: Baseline actions ``(contexts, n)`` to draw in the plot.
        seconds: Wall time of the evaluation.
    """

    rows: list[Row]
    context: Context
    actions: Any
    marginals: Any = None
    deterministic_baselines: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, dict[str, float]]:
        """The summaries by method name."""
        return {row.name: row.summary() for row in self.rows}


def _score(objective: SubsetObjective, z: torch.Tensor, ctx: Context) -> tuple[Any, Any]:
    import torch

    with torch.no_grad():
        values = objective.evaluate(z.to(objective.device), ctx, validate=True)
    return values["reward"].cpu(), (values["success"].cpu() if "success" in values else None)


def _random_subsets(objective: SubsetObjective, samples: int, batch: int,
                    gen: torch.Generator) -> torch.Tensor:
    """Uniform k-subsets of the allowed items, shape ``(samples, batch, n)``."""
    import torch

    keys = torch.rand(samples, batch, objective.n, generator=gen)
    keys = keys.masked_fill(~objective.allowed.cpu(), -1.0)
    idx = keys.topk(objective.k, dim=-1).indices
    return torch.zeros(samples, batch, objective.n).scatter_(-1, idx, 1.0)


def baselines(objective: SubsetObjective, ctx: Context, gen: torch.Generator,
              random_samples: int = RANDOM_SAMPLES) -> dict[str, torch.Tensor]:
    """The baselines of an objective as k-hot actions ``(samples, batch, n)``.

    Every objective gets uniformly random k-subsets; sensor placement also QR pivoting, k-NN
    voting the k nearest candidates (Euclidean, in the env's feature space), feature acquisition
    the k features of largest variance over the data set (no labels used).
    """
    import torch

    from subset_rl.envs import (
        FeatureAcquisitionObjective,
        KNNVotingObjective,
        SensorPlacementObjective,
    )

    batch, n, k = ctx.batch_size, objective.n, objective.k
    out: dict[str, torch.Tensor] = {}
    if isinstance(objective, SensorPlacementObjective):
        qr = torch.as_tensor(objective.qr_placement(), dtype=torch.float32)
        out["QR pivoting"] = qr.expand(1, batch, n).clone()
    elif isinstance(objective, KNNVotingObjective):
        dist = (ctx.candidates - ctx.query.unsqueeze(1)).norm(dim=-1).cpu()
        idx = dist.topk(k, dim=-1, largest=False).indices
        out[f"{k} nearest candidates"] = torch.zeros(1, batch, n).scatter_(-1, idx[None], 1.0)
    elif isinstance(objective, FeatureAcquisitionObjective):
        var = torch.as_tensor(objective.dataset.X.var(0), dtype=torch.float32)
        var = var.masked_fill(~objective.allowed.cpu(), -1.0)
        z = torch.zeros(n).scatter_(0, var.topk(k).indices, 1.0)
        out["highest-variance features"] = z.expand(1, batch, n).clone()
    samples = random_samples if type(objective).__name__ != "GymEnvObjective" else 4
    out[f"random k-subset (mean of {samples})"] = _random_subsets(objective, samples, batch, gen)
    return out


def evaluate(
    objective: SubsetObjective,
    act: Callable[[Any], tuple[Any, Any]],
    policy_name: str,
    num_contexts: int = 256,
) -> EvalResult:
    """Scores a policy and the baselines on the same held-out contexts.

    Args:
        objective: The batched objective.
        act: Maps observations ``(contexts, obs_dim)`` to the policy's deterministic k-hot
            actions ``(contexts, n)`` and its inclusion probabilities (or ``None``).
        policy_name: Name of the policy's row.
        num_contexts: Number of contexts, drawn with a generator seeded with
            :data:`EVAL_SEED` (the same contexts for every policy and every run).

    Returns:
        The table rows and what the plot needs.
    """
    import torch

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    ctx = objective.sample_context(num_contexts, generator=gen)
    with torch.no_grad():
        actions, marginals = act(ctx.obs)
    actions = torch.as_tensor(actions).float().cpu()
    rows = [Row(policy_name, *_score(objective, actions.unsqueeze(0), ctx))]
    deterministic = {}
    for name, z in baselines(objective, ctx, gen).items():
        rows.append(Row(name, *_score(objective, z, ctx)))
        if z.shape[0] == 1:
            deterministic[name] = z[0]
    return EvalResult(
        rows=rows, context=ctx, actions=actions,
        marginals=None if marginals is None else torch.as_tensor(marginals).float().cpu(),
        deterministic_baselines=deterministic, seconds=time.perf_counter() - start,
    )


def format_table(result: EvalResult, header: list[str], times: list[tuple[str, float]]) -> str:
    """The result table as text."""
    summaries = [(row.name, row.summary()) for row in result.rows]
    has_success = all("success" in s for _, s in summaries)
    width = max(len(name) for name, _ in summaries) + 2
    lines = [*header, ""]
    title = f"  {'method':<{width}}{'reward (mean ± s.e.)':>24}{'median':>11}"
    if has_success:
        title += f"{'success':>10}"
    lines += [title, "  " + "-" * (len(title) - 2)]
    for name, s in summaries:
        line = f"  {name:<{width}}{s['mean']:>13.4f} ± {s['sem']:<8.4f}{s['median']:>11.4f}"
        if has_success:
            line += f"{100 * s['success']:>9.1f}%"
        lines.append(line)
    lines += ["", "  wall time: " + ", ".join(f"{what} {sec:.1f} s" for what, sec in times)]
    return "\n".join(lines)


def no_better_than_random(result: EvalResult) -> str | None:
    """A warning when the trained policy does not clearly beat random k-subsets, else ``None``.

    "Clearly" means its mean reward exceeds the random baseline's by more than two standard
    errors of the difference, on the same evaluation contexts.

    Args:
        result: What :func:`evaluate` measured (the policy's row first).

    Returns:
        The warning text, or ``None`` when the policy is clearly better (or there is no random
        row).
    """
    policy = result.rows[0].summary()
    for row in result.rows[1:]:
        if row.name.startswith("random k-subset"):
            rand = row.summary()
            break
    else:
        return None
    sems = [x for x in (policy["sem"], rand["sem"]) if math.isfinite(x)]
    margin = 2.0 * math.sqrt(sum(x * x for x in sems))
    if policy["mean"] - rand["mean"] > margin:
        return None
    return (
        f"warning: the trained policy is no better than random k-subsets (reward "
        f"{policy['mean']:.4f} vs {rand['mean']:.4f}, within two standard errors or below); "
        "it has not learned: train longer (--steps), change the learning rate (--lr), or try "
        "--agent sfess"
    )


def _save_plot(objective: SubsetObjective, result: EvalResult, path: Path, policy_name: str,
               title: str, quiet: bool) -> Path | None:
    from subset_rl.plots import matplotlib_available, plot_selection

    if not matplotlib_available():
        if not quiet:
            print("note: matplotlib is not installed, so no plot was saved "
                  "(pip install matplotlib, or the dev extra)")
        return None
    return plot_selection(
        objective, result.context, result.actions.numpy(), path,
        marginals=None if result.marginals is None else result.marginals.numpy(),
        baselines={k: v.numpy() for k, v in result.deterministic_baselines.items()},
        policy_name=policy_name, title=title,
    )


# ------------------------------------------------------------------------------------------------
# Agents
# ------------------------------------------------------------------------------------------------
def _native_act(agent: Any) -> Callable[[Any], tuple[Any, Any]]:
    def act(obs: Any) -> tuple[Any, Any]:
        dist = agent.distribution(obs.to(agent.device))
        return dist.mode.cpu(), dist.marginals.cpu()

    return act


def _sb3_act(model: Any) -> Callable[[Any], tuple[Any, Any]]:
    import numpy as np
    import torch
    from gymnasium import spaces

    from subset_rl.agents.gym_objective import unflatten_observations

    space = model.observation_space

    def act(obs: Any) -> tuple[Any, Any]:
        obs_np = obs.cpu().numpy().astype(np.float32)
        if not (isinstance(space, spaces.Box) and space.shape == obs_np.shape[1:]):
            # contexts hold observations flattened (GymEnvObjective); the model wants the
            # env's own structure (a dict of arrays for a Dict space)
            obs_np = unflatten_observations(space, obs_np)
        actions, _ = model.predict(obs_np, deterministic=True)
        marginals = None
        try:
            obs_t, _ = model.policy.obs_to_tensor(obs_np)
            dist = model.policy.get_distribution(obs_t).distribution
            marginals = dist.marginals.cpu()
        except AttributeError:
            pass
        return torch.as_tensor(np.asarray(actions).reshape(obs.shape[0], -1)), marginals

    return act


def _import_sb3() -> Any:
    try:
        import subset_rl.sb3 as sb3
    except ImportError as err:
        raise CLIError(
            f"the ppo and a2c agents need subset_rl.sb3 (the k-hot policy for "
            f"Stable-Baselines3), which could not be imported: {err}"
        ) from None
    if not hasattr(sb3, "KSubsetActorCriticPolicy"):
        raise CLIError("subset_rl.sb3 has no KSubsetActorCriticPolicy; update subset_rl")
    return sb3


def _sb3_progress(total: int, desc: str) -> Any:
    from subset_rl.sb3 import ProgressBar

    return ProgressBar(total, desc)


def _settings(args: argparse.Namespace, env_id: str) -> dict[str, Any]:
    if args.agent in SB3_AGENTS:
        settings = _defaults.sb3_settings(env_id.split(":")[-1], args.agent)
        for name in ("num_samples", "max_grad_norm", "polish"):
            if getattr(args, name) is not None:
                raise CLIError(f"--{name.replace('_', '-')} applies to the native agents "
                               f"(sfess and the pathwise estimators), not to {args.agent}")
        if args.policy != "auto":
            raise CLIError(f"--policy applies to the native agents, not to {args.agent}")
    else:
        settings = _defaults.native_settings(env_id, args.agent)
        if args.n_envs is not None:
            raise CLIError(f"--n-envs applies to ppo and a2c, not to {args.agent}")
        if args.ent_coef is not None and args.agent != "sfess":
            raise CLIError(f"--ent-coef applies to sfess, ppo and a2c, not to {args.agent}")
    if args.utility is not None and args.agent != "sfess":
        raise CLIError(f"--utility applies to sfess, not to {args.agent}")
    for name in ("steps", "num_samples", "batch_size", "lr", "max_grad_norm", "ent_coef",
                 "n_envs", "utility", "polish"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def _train_native(args: argparse.Namespace, env_id: str, env_kwargs: dict[str, Any],
                  settings: dict[str, Any], device: torch.device, logdir: Path) -> Any:
    import torch

    from subset_rl.agents import SFESS, Pathwise

    common: dict[str, Any] = {
        "policy": args.policy,
        "batch_size": settings["batch_size"],
        "learning_rate": settings["lr"],
        "max_grad_norm": settings["max_grad_norm"],
        "device": device,
        "seed": args.seed,
        "tensorboard_log": logdir,
        "checkpoint_dir": logdir / "checkpoints",
        "checkpoint_freq": args.checkpoint_freq or max(1, settings["steps"] // 5),
        "env_kwargs": env_kwargs,
        "num_samples": settings["num_samples"],
        "torch_threads": args.threads,
        "polish_budget": settings["polish"],
    }
    try:
        if args.agent == "sfess":
            agent = SFESS(env_id, ent_coef=settings["ent_coef"], utility=settings["utility"],
                          **common)
        else:
            agent = Pathwise(env_id, estimator=args.agent, **common)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    if args.polish and args.policy not in ("auto", "free"):  # (a default polish is skipped)
        raise CLIError(f"--polish needs the free-logit policy (--policy free, or auto on a "
                       f"context-free env), found --policy {args.policy}")
    if args.polish and not _is_free(agent):
        raise CLIError(f"--polish needs the free-logit policy; {env_id} is contextual, so "
                       f"--policy auto built {type(agent.policy).__name__}")
    agent.polished_from = None
    try:
        agent.learn(settings["steps"], progress_bar=not args.quiet)
        if settings["polish"] and _is_free(agent):
            obs = torch.zeros(1, agent.obs_dim, device=agent.device)
            with torch.no_grad():
                before = agent.distribution(obs).mode[0].cpu()
            if not args.quiet:
                print(f"polishing the mode: a swap search of {settings['polish']:,} "
                      "evaluations on 128 training contexts")
            agent.polish(settings["polish"], progress=not args.quiet)
            agent.polished_from = before
    except KeyboardInterrupt:
        print(f"\ninterrupted after {agent.num_steps} steps; evaluating the policy so far",
              file=sys.stderr)
    agent.save(logdir / "model.pt")
    return agent


def _is_free(agent: Any) -> bool:
    from subset_rl.agents.policies import FreeLogits

    return isinstance(agent.policy, FreeLogits)


def _train_sb3(args: argparse.Namespace, env_id: str, env_kwargs: dict[str, Any],
               settings: dict[str, Any], device: torch.device, logdir: Path) -> Any:
    sb3 = _import_sb3()
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    n_envs = settings["n_envs"]
    vec_env = sb3.make_subset_vec_env(env_id, n_envs=n_envs, seed=args.seed,
                                      env_kwargs=env_kwargs)
    policy_kwargs = {"entropy_grad": bool(settings.get("ent_coef") or 0.0)}
    kwargs: dict[str, Any] = {"seed": args.seed, "device": device, "verbose": 0,
                              "tensorboard_log": str(logdir), "policy_kwargs": policy_kwargs}
    if args.ent_coef is not None:
        kwargs["ent_coef"] = args.ent_coef
    if args.lr is not None:
        kwargs["learning_rate"] = args.lr
    try:
        if args.agent == "ppo":
            options = sb3.ppo_kwargs(n_steps=settings["n_steps"],
                                     batch_size=settings["batch_size"])
            options.update(kwargs)
            model = PPO(sb3.KSubsetActorCriticPolicy, vec_env, **options)
        else:
            model = A2C(sb3.KSubsetActorCriticPolicy, vec_env, **kwargs)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    except NotImplementedError as err:  # SB3 refuses the observation space (a Tuple, ...)
        raise CLIError(f"{args.agent} cannot train on {env_id}: {err}; use a Dict observation "
                       "space, or --agent sfess (any flattenable space)") from None
    model.subset_rl_run = {"agent": args.agent, "env_id": env_id, "env_kwargs": env_kwargs,
                           "seed": args.seed}
    freq = args.checkpoint_freq or max(1, settings["steps"] // 5)
    class AtomicCheckpointCallback(CheckpointCallback):
        """SB3's periodic checkpoints, each written atomically (temporary file, rename)."""

        def _on_step(self) -> bool:
            if self.n_calls % self.save_freq == 0:
                _save_sb3(self.model, Path(self._checkpoint_path(extension="zip")))
            return True

    callbacks = [AtomicCheckpointCallback(max(1, freq // n_envs),
                                          str(logdir / "checkpoints"), name_prefix="model")]
    if hasattr(sb3, "KHotGuard"):
        callbacks.append(sb3.KHotGuard())
    callbacks.append(sb3.SubsetMetricsCallback(env_id=env_id))  # the native agents' TB tags
    if not args.quiet:
        callbacks.append(_sb3_progress(settings["steps"], args.agent.upper()))
    try:
        model.learn(settings["steps"], callback=callbacks, tb_log_name=args.agent.upper(),
                    log_interval=1 if args.agent == "ppo" else 10)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {model.num_timesteps} steps; evaluating the policy so far",
              file=sys.stderr)
    _save_sb3(model, logdir / "model.zip")
    vec_env.close()
    return model


def _save_sb3(model: Any, path: Path) -> None:
    """``model.save`` to a temporary file, then renamed over ``path``."""
    from subset_rl.checkpoint import atomic_write

    atomic_write(path, model.save)


def _policy_label(agent_name: str) -> str:
    return {"sfess": "SFESS", "ppo": "PPO", "a2c": "A2C"}.get(agent_name, agent_name.upper())


def _header(env_id: str, objective: SubsetObjective, agent_name: str, trained: str,
            seed: Any, device: Any, contexts: int) -> list[str]:
    return [
        f"{env_id}  (n={objective.n}, k={objective.k})",
        f"agent {agent_name}, {trained}, seed {seed}, device {device}",
        f"rewards on {contexts} held-out contexts (evaluation seed {EVAL_SEED}); the policy "
        "acts deterministically (its top-k)",
    ]


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------
def cmd_envs(args: argparse.Namespace) -> int:
    """``subset-rl envs``: one line per registered id with n, k and a description."""
    import gymnasium as gym

    ids = _registered_ids()
    width = max(len(i) for i in ids) + 2
    print(f"{'id':<{width}}{'n':>5}{'k':>5}  description", flush=True)
    for env_id in ids:  # each env is made (some train a model first): print as they come
        desc = _describe(env_id)
        try:
            env = gym.make(env_id)
            n, k = str(env.action_space.n), str(getattr(env.action_space, "k", "?"))
            env.close()
        except (TypeError, gym.error.MissingArgument):
            n = k = "-"
            desc += " (needs f, n, k: see examples/custom_env.py)"
        print(f"{env_id:<{width}}{n:>5}{k:>5}  {desc}", flush=True)
    print("\nn and k are the defaults; change k with `subset-rl train ID --k K`, other "
          "arguments with --env-kwargs '{...}'.")
    return 0


_RUN_FILES: tuple[str, ...] = ("run.json", "model.pt", "model.zip")
"""What a finished or interrupted ``train`` leaves in its folder (besides logs, checkpoints)."""


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a training run: TensorBoard logs, a model or checkpoints.

    Args:
        folder: A run folder (it need not exist).

    Returns:
        ``True`` if it has any of :data:`_RUN_FILES`, an ``events.out.tfevents.*`` file at any
        depth (SB3 writes them into ``PPO_1/`` and the like) or a checkpoint; the hidden
        temporary files of a write cut short by a kill do not count.
    """
    if not folder.is_dir():
        return False
    if any((folder / name).exists() for name in _RUN_FILES):
        return True
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and any(not p.name.startswith(".") for p in checkpoints.iterdir()):
        return True
    return next(folder.rglob("events.out.tfevents.*"), None) is not None


def _fresh_run_dir(logdir: Path) -> Path:
    """The folder a new run writes to: ``logdir``, or ``logdir_2``, ``_3``, ... if it holds a run.

    A second run into the same folder would add a second TensorBoard log next to the first (the
    curves zig-zag between the two) and replace the model, so it goes to the first numbered
    sibling that holds no run, the way SB3 numbers ``PPO_1``, ``PPO_2``.

    Args:
        logdir: The requested folder.

    Returns:
        ``logdir`` itself when it does not exist or holds no run, else the numbered sibling.
    """
    if not _holds_run(logdir):
        return logdir
    base = logdir if logdir.name not in ("", ".", "..") else logdir.resolve()
    number = 2
    while True:
        candidate = base.with_name(f"{base.name}_{number}")
        if not candidate.exists() or (candidate.is_dir() and not _holds_run(candidate)):
            return candidate
        number += 1


def cmd_train(args: argparse.Namespace) -> int:
    """``subset-rl train``: train, evaluate against the baselines, save model and plot."""
    start = time.perf_counter()
    device = _check_device(args.device)
    env_id = args.env_id
    env_kwargs = dict(args.env_kwargs or {})
    if args.k is not None:
        env_kwargs["k"] = args.k
    sb3_agent = args.agent in SB3_AGENTS
    if (not sb3_agent and device.type == "cuda" and env_id.startswith("subset_rl/")
            and "device" not in env_kwargs):
        env_kwargs["device"] = str(device)  # keep the objective next to the policy
    settings = _settings(args, env_id)
    if sb3_agent:
        _import_sb3()
    env = make_env(env_id, env_kwargs)
    objective = _objective_of(env)
    if args.agent in PATHWISE_AGENTS:
        ok, why = _differentiable(objective)
        if not ok:
            raise CLIError(
                f"agent {args.agent!r} is a pathwise estimator and needs a reward that is "
                f"differentiable in the action, but {env_id} is a black box ({why}); use "
                "--agent sfess, ppo or a2c"
            )
    logdir = args.logdir or Path("runs") / f"{_slug(env_id)}-{args.agent}-{args.seed}"
    if logdir.exists() and not logdir.is_dir():
        raise CLIError(f"--logdir {logdir} exists and is not a directory")
    requested, logdir = logdir, _fresh_run_dir(logdir)
    if logdir != requested:  # shown even with --quiet: the run is not where it was asked to go
        print(f"{requested} holds an earlier run; this run writes to {logdir}", file=sys.stderr)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise CLIError(f"--logdir {logdir} is not writable: {err.strerror or err}") from None
    from subset_rl.checkpoint import remove_stale_temporaries

    for folder in {requested, logdir}:  # temporary files left by a run killed mid-write
        remove_stale_temporaries(folder)
        remove_stale_temporaries(folder / "checkpoints")
    if not args.quiet:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        print(f"training {args.agent} on {env_id} (n={objective.n}, k={objective.k}) on "
              f"{device}: {shown}; logs in {logdir}")
    setup = time.perf_counter() - start
    t0 = time.perf_counter()
    if sb3_agent:
        model = _train_sb3(args, env_id, env_kwargs, settings, device, logdir)
        act, trained = _sb3_act(model), f"{model.num_timesteps:,} env steps"
        checkpoint = logdir / "model.zip"
    else:
        model = _train_native(args, env_id, env_kwargs, settings, device, logdir)
        objective = model.objective
        act = _native_act(model)
        trained = (f"{model.num_steps:,} steps ({model.num_timesteps:,} reward evaluations)")
        if model.polished_from is not None:
            trained += f", then a {settings['polish']:,}-evaluation swap polish"
        checkpoint = logdir / "model.pt"
    train_seconds = time.perf_counter() - t0
    polished_from = None if sb3_agent else model.polished_from
    label = f"{_policy_label(args.agent)} (trained"
    label += " + swap polish)" if polished_from is not None else ")"
    result = evaluate(objective, act, label, args.eval_contexts)
    if polished_from is not None:  # the policy's mode before polishing, on the same contexts
        z = polished_from.float().expand(1, result.context.batch_size, -1)
        name = f"{_policy_label(args.agent)} (trained, before polish)"
        result.rows.insert(1, Row(name, *_score(objective, z, result.context)))
    times = [("training", train_seconds), ("evaluation", result.seconds),
             ("setup", setup), ("in all", time.perf_counter() - start)]
    header = _header(env_id, objective, args.agent, trained, args.seed, device,
                     args.eval_contexts)
    print()
    print(format_table(result, header, times))
    warning = no_better_than_random(result)
    if warning is not None:  # shown even with --quiet: the run did not do its job
        print(f"\n{warning}", file=sys.stderr)
    plot = None
    if not args.no_plot:
        plot = _save_plot(objective, result, logdir / "selection.png", label.split()[0],
                          f"{env_id}: {args.agent}", args.quiet)
    run = {"env_id": env_id, "env_kwargs": env_kwargs, "agent": args.agent, "seed": args.seed,
           "device": str(device), "settings": settings, "trained": trained,
           "train_seconds": train_seconds, "checkpoint": str(checkpoint),
           "eval_contexts": args.eval_contexts, "results": result.to_json()}
    (logdir / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    print(f"\n  model: {checkpoint}   (subset-rl eval {checkpoint})")
    if plot is not None:
        print(f"  plot:  {plot}")
    print(f"  TensorBoard: tensorboard --logdir {logdir}")
    return 0


def _resolve_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.pt", "model.zip"):
            if (path / name).is_file():
                return path / name
        raise CLIError(f"{path} holds no model.pt or model.zip")
    if not path.is_file():
        raise CLIError(f"no such checkpoint: {path}")
    return path


def _is_sb3_zip(path: Path) -> bool:
    """Stable-Baselines3 saves a zip with a JSON ``data`` entry (``torch.save`` zips differ)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return "data" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _with_device(env_kwargs: dict[str, Any], device: Any) -> dict[str, Any]:
    """The stored env arguments with a stored ``device`` replaced by the evaluation device."""
    out = dict(env_kwargs)
    if "device" in out:
        out["device"] = str(device)
    return out


def _load_sb3_for_eval(path: Path, device: Any, trust_pickle: bool) -> tuple[Any, ...]:
    """A PPO/A2C zip, loaded without unpickling (see :func:`subset_rl.sb3.load_model`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except Exception as err:  # noqa: BLE001 - any unreadable zip is a usage error here
        raise CLIError(f"{path} is not a readable Stable-Baselines3 model zip "
                       f"({' '.join(str(err).split())[:160]})") from None
    run = data.get("subset_rl_run") if isinstance(data, dict) else None
    if not isinstance(run, dict) or not isinstance(run.get("env_id"), str):
        raise CLIError(f"{path} was not saved by `subset-rl train`: it names no env id")
    agent_name = run.get("agent")
    if agent_name not in SB3_AGENTS:
        raise CLIError(f"{path} names agent {agent_name!r}, not one of {', '.join(SB3_AGENTS)}")
    env_kwargs = run.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise CLIError(f"{path}: its env arguments are not a JSON object")
    sb3 = _import_sb3()
    from stable_baselines3 import A2C, PPO

    env_id = run["env_id"]
    env = make_env(env_id, _with_device(env_kwargs, device))
    objective = _objective_of(env)
    try:
        model = sb3.load_model(PPO if agent_name == "ppo" else A2C, path,
                               observation_space=env.observation_space,
                               action_space=env.action_space, device=device,
                               trust_pickle=trust_pickle)
    except ValueError as err:
        raise CLIError(str(err)) from None
    trained = f"{model.num_timesteps:,} env steps"
    return env_id, agent_name, objective, _sb3_act(model), trained, run.get("seed")


def _load_native_for_eval(path: Path, device: Any, trust_pickle: bool) -> tuple[Any, ...]:
    """A native agent's checkpoint, read with ``weights_only=True`` and checked."""
    from subset_rl.agents import SFESS, Pathwise
    from subset_rl.checkpoint import read_checkpoint

    try:
        state = read_checkpoint(path, trust_pickle=trust_pickle)
    except (ValueError, OSError) as err:
        raise CLIError(str(err)) from None
    if state.get("class") not in ("SFESS", "Pathwise"):
        raise CLIError(f"{path} is not a subset_rl agent checkpoint: it holds a "
                       f"{state.get('class')!r} agent")
    config = state["config"]
    env_id = config.get("env_id")
    if env_id is None:
        raise CLIError(f"{path} was trained on an objective object, not an env id: load it "
                       "in Python with SFESS.load(path, env=...)")
    env_kwargs = config.get("env_kwargs") or {}
    if not isinstance(env_id, str) or not isinstance(env_kwargs, dict):
        raise CLIError(f"{path}: its env id or env arguments are damaged")
    env = make_env(env_id, _with_device(env_kwargs, device))
    cls = SFESS if state["class"] == "SFESS" else Pathwise
    try:
        agent = cls.load(path, env=env, device=device, trust_pickle=trust_pickle)
    except (ValueError, OSError) as err:
        raise CLIError(str(err)) from None
    agent_name = "sfess" if cls is SFESS else config.get("estimator", "pathwise")
    trained = f"{agent.num_steps:,} steps ({agent.num_timesteps:,} reward evaluations)"
    return env_id, agent_name, agent.objective, _native_act(agent), trained, config.get("seed")


def cmd_eval(args: argparse.Namespace) -> int:
    """``subset-rl eval``: reload a model and print the table (and save the plot)."""
    start = time.perf_counter()
    device = _check_device(args.device)
    path = _resolve_checkpoint(args.checkpoint)
    if path.suffix == ".zip" or _is_sb3_zip(path):
        env_id, agent_name, objective, act, trained, seed = _load_sb3_for_eval(
            path, device, args.trust_pickle
        )
    else:
        env_id, agent_name, objective, act, trained, seed = _load_native_for_eval(
            path, device, args.trust_pickle
        )
    label = f"{_policy_label(agent_name)} (trained)"
    result = evaluate(objective, act, label, args.eval_contexts)
    header = _header(env_id, objective, agent_name, trained, seed, device, args.eval_contexts)
    header[0] += f"  [{path}]"
    print(format_table(result, header, [("evaluation", result.seconds),
                                        ("in all", time.perf_counter() - start)]))
    warning = no_better_than_random(result)
    if warning is not None:
        print(f"\n{warning}", file=sys.stderr)
    if not args.no_plot:
        plot = _save_plot(objective, result, path.with_name(f"{path.stem}_selection.png"),
                          label.split()[0], f"{env_id}: {agent_name}", args.quiet)
        if plot is not None:
            print(f"\n  plot: {plot}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "envs": cmd_envs, "train": cmd_train, "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``subset-rl`` with ``argv`` (default ``sys.argv[1:]``) and returns the exit status.

    Returns:
        0 on success, 2 for usage errors (printed as one line on stderr), 1 when the objective
        or the training fails.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a bad argument (2)
        return int(exit_.code or 0)
    prog = f"{parser.prog} {args.command}"
    threads = None
    if getattr(args, "threads", None):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    try:
        command = COMMANDS.get(args.command) or args.func
        return int(command(args))
    except CLIError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"{prog}: training failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from subset_rl.envs import ObjectiveError

        if isinstance(err, ObjectiveError):
            print(f"{prog}: the objective failed: {err}", file=sys.stderr)
            return 1
        raise
    finally:
        if threads is not None:  # main() may run inside a larger program (tests, notebooks)
            import torch

            torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
