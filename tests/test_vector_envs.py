"""Vector envs never hang: Gymnasium's ``AsyncVectorEnv`` (``fork``, ``spawn``, ``forkserver``) and
SB3's ``SubprocVecEnv`` with every id form the docs show.

Each combination runs as a script in its own process group with a timeout, so a hang fails the
test (and its stuck children are killed) instead of stalling the suite. The parent of every
script first runs a multi-threaded torch op, as any training script has: torch's CPU wheels use
GNU OpenMP, whose thread pool does not survive ``fork``, and before the at-fork hook in
``subset_rl.envs`` the first torch op in a forked child waited forever.

The default run covers the combination that hung (``fork``) for both vector env classes and the
"import inside ``main()``" script with SB3's default start method; ``make test-slow`` runs the
whole matrix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 120.0
"""Seconds a script may run; a healthy one takes well under 30 s on 2 shared cores."""

# (id without prefix, kwargs source) for every shipped env, kept small so children start fast.
SPECS = {
    "SensorPlacement": ("subset_rl/SensorPlacement-v0", "{}"),
    "KNNVoting": ("subset_rl/KNNVoting-v0", "{'n': 12, 'k': 3}"),
    "FeatureAcquisition": ("subset_rl/FeatureAcquisition-v0", "{'k': 4}"),
    "BlackBoxSubset": (
        "subset_rl/BlackBoxSubset-v0",
        "{'f': functools.partial(np.dot, np.linspace(-1.0, 1.0, 10)), 'n': 10, 'k': 3}",
    ),
}

SCRIPT = """
import functools
import sys

import gymnasium as gym
import numpy as np
import torch
{top_import}

VEC, CONTEXT, PREFIX = {vec!r}, {context!r}, {prefix!r}
SPECS = [{specs}]


def main():
    {main_import}
    # The parent has used torch's thread pool (two threads), as any training script has.
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul(2.0).sum()
    for env_id, kwargs in SPECS:
        env_id = PREFIX + env_id
        print("making", VEC, CONTEXT, env_id, flush=True)
        fns = [functools.partial(gym.make, env_id, **kwargs) for _ in range(2)]
        if VEC == "gymnasium":
            venv = gym.vector.AsyncVectorEnv(fns, context=CONTEXT)
            venv.reset(seed=0)
            _, rewards, *_ = venv.step(venv.action_space.sample())
        else:
            from stable_baselines3.common.vec_env import SubprocVecEnv

            venv = SubprocVecEnv(fns, start_method=CONTEXT)
            venv.seed(0)
            venv.reset()
            actions = np.stack([venv.action_space.sample() for _ in range(2)])
            _, rewards, _, _ = venv.step(actions)
        venv.close()
        if rewards.shape != (2,) or not np.isfinite(rewards).all():
            sys.exit(f"bad rewards for {{env_id}}: {{rewards!r}}")
        print("ok", env_id, flush=True)


if __name__ == "__main__":
    main()
"""


def write_script(
    tmp_path: Path,
    vec: str,
    context: str | None,
    envs: list[str],
    *,
    id_form: str = "prefixed",
) -> Path:
    """Writes one vector-env script.

    Args:
        tmp_path: Folder for the script.
        vec: ``"gymnasium"`` (``AsyncVectorEnv``) or ``"sb3"`` (``SubprocVecEnv``).
        context: The multiprocessing start method (``None``: the class's default).
        envs: Keys of :data:`SPECS`.
        id_form: ``"prefixed"``: ``"subset_rl.envs:subset_rl/..."`` ids and ``subset_rl.envs``
            imported inside ``main()`` only; ``"plain"``: plain ids and ``import subset_rl.envs``
            at the top of the script (the form of docs/envs.md's first example).

    Returns:
        The script's path.
    """
    if id_form not in ("prefixed", "plain"):
        raise ValueError(f"id_form: expected 'prefixed' or 'plain', found {id_form!r}")
    prefixed = id_form == "prefixed"
    source = SCRIPT.format(
        top_import="" if prefixed else "import subset_rl.envs  # registers the ids",
        main_import="import subset_rl.envs  # noqa: F401" if prefixed else "pass",
        vec=vec,
        context=context,
        prefix="subset_rl.envs:" if prefixed else "",
        specs=", ".join(f"({SPECS[e][0]!r}, {SPECS[e][1]})" for e in envs),
    )
    path = tmp_path / f"vec_{vec}_{context}_{id_form}.py"
    path.write_text(source)
    return path


def run_script(path: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Runs ``path`` in its own process group; a run past ``timeout`` kills the group and fails.

    Args:
        path: The script.
        timeout: Seconds before the run counts as hung.

    Returns:
        The finished process (its return code is not checked here).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the script and every child it starts share one process group
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stuck workers too, not only the script
        out, _ = proc.communicate()
        pytest.fail(f"{path.name} hung (killed after {timeout:.0f} s); its output:\n{out}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def check_runs(path: Path, envs: list[str]) -> None:
    """Runs the script and checks that every env made, stepped and closed."""
    result = run_script(path)
    assert result.returncode == 0, result.stdout
    for name in envs:
        assert f"ok {'subset_rl.envs:' if 'prefixed' in path.name else ''}{SPECS[name][0]}" in (
            result.stdout
        ), result.stdout


# --- default run: the combinations that hung ------------------------------------------------
@pytest.mark.parametrize("vec", ["gymnasium", "sb3"])
def test_fork_context_does_not_hang(tmp_path: Path, vec: str) -> None:
    envs = ["KNNVoting", "SensorPlacement"]
    check_runs(write_script(tmp_path, vec, "fork", envs), envs)


def test_subproc_vec_env_finds_prefixed_ids_imported_inside_main(tmp_path: Path) -> None:
    # SB3's default start method (forkserver on Linux): the children import nothing of the
    # script's main(), so only the "subset_rl.envs:" prefix makes them register the ids.
    envs = ["KNNVoting"]
    check_runs(write_script(tmp_path, "sb3", None, envs), envs)


# --- make test-slow: every context, every env, both id forms --------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("id_form", ["prefixed", "plain"])
@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("vec", ["gymnasium", "sb3"])
def test_every_context_and_id_form(tmp_path: Path, vec: str, context: str, id_form: str) -> None:
    # Every env with the prefixed id; the plain id resolves the same way for any env, so two do.
    envs = list(SPECS) if id_form == "prefixed" else ["KNNVoting", "SensorPlacement"]
    check_runs(write_script(tmp_path, vec, context, envs, id_form=id_form), envs)


def test_hung_script_fails_instead_of_hanging(tmp_path: Path) -> None:
    """The harness itself: a script that never ends is a failure after the timeout."""
    path = tmp_path / "sleeps.py"
    path.write_text("import time\ntime.sleep(600)\n")
    with pytest.raises(pytest.fail.Exception, match="hung"):
        run_script(path, timeout=1.0)


def test_write_script_refuses_unknown_id_form(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="id_form"):
        write_script(tmp_path, "sb3", "fork", ["KNNVoting"], id_form="bare")
