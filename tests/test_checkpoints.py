"""Safe persistence: nothing runs from a file, damaged files are named, writes survive SIGKILL.

Every load path (``SFESS.load``, ``learn(resume_from=...)``, ``subset-rl eval`` on a ``.pt`` and
on a ``.zip``) is given a crafted file whose pickled payload would ``touch`` a marker file: the
marker must not appear (and does appear when the file is explicitly trusted, which shows the
payload is live). Damaged files raise ``ValueError`` in Python and exit with status 2 and one
line in the CLI. A training subprocess is killed with SIGKILL at random moments and its
checkpoint folder checked after each kill.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from subset_rl.agents import SFESS
from subset_rl.checkpoint import (
    TEMP_SUFFIX,
    read_checkpoint,
    recover_checkpoint_dir,
    remove_stale_temporaries,
    save_checkpoint,
)
from subset_rl.cli import main
from subset_rl.envs import BlackBoxObjective, make_blackbox_env

ENV_ID = "ckpttest/Linear-v0"
REPO = Path(__file__).resolve().parents[1]


def weighted_sum(z: torch.Tensor) -> torch.Tensor:
    """Batched and differentiable: a linear reward over 10 items."""
    return (z * torch.linspace(-1.0, 1.0, z.shape[-1], dtype=z.dtype)).sum(-1)


def _make_linear(k: int = 2, **kw):
    return make_blackbox_env(weighted_sum, 10, k, batched=True, differentiable=True, **kw)


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=_make_linear)


class Payload:
    """Unpickling this runs ``touch marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("subset-rl eval: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def small_agent(**kw) -> SFESS:
    kw.setdefault("num_samples", 4)
    kw.setdefault("batch_size", 4)
    kw.setdefault("seed", 0)
    return SFESS(ENV_ID, device="cpu", **kw)


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "model.pt"
    small_agent().learn(3).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# What a checkpoint holds
# ------------------------------------------------------------------------------------------------
def _plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(_plain(k) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, str, int, float, bool))


def test_checkpoint_holds_only_tensors_and_plain_data(saved):
    state = torch.load(saved, weights_only=True)  # raises if anything else is pickled
    assert _plain(state)
    assert state["policy"] == {"name": "free", "class": "FreeLogits"}
    json.dumps(state["config"])
    assert isinstance(state["generator_state"], torch.Tensor)
    assert isinstance(state["torch_rng_state"], torch.Tensor)
    agent = SFESS.load(saved, device="cpu")  # the policy is rebuilt from its name
    assert agent.num_steps == 3 and type(agent.policy).__name__ == "FreeLogits"


def test_custom_policy_module_is_passed_again(tmp_path):
    objective = BlackBoxObjective(weighted_sum, 10, 2, batched=True)
    custom = torch.nn.Sequential(torch.nn.Linear(1, 10))
    agent = SFESS(objective, policy=custom, num_samples=4, device="cpu").learn(2)
    agent.save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt: the policy is a custom module \(Sequential\)"):
        SFESS.load(tmp_path / "a.pt", env=objective, device="cpu")
    fresh = torch.nn.Sequential(torch.nn.Linear(1, 10))
    loaded = SFESS.load(tmp_path / "a.pt", env=objective, device="cpu", policy=fresh)
    for a, b in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_exact_resume_from_the_periodic_checkpoints(tmp_path):
    straight = small_agent().learn(12)
    small_agent(checkpoint_dir=tmp_path, checkpoint_freq=4).learn(9)
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "step_8.pt")
    resumed = small_agent().learn(12, resume_from=tmp_path / "last.pt")
    assert resumed.num_steps == 12
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    for key, value in straight.optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, resumed.optimizer.state_dict()["state"][0][key])
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


# ------------------------------------------------------------------------------------------------
# Malicious files, every load path
# ------------------------------------------------------------------------------------------------
def _malicious_pt(tmp_path: Path, saved: Path, where: str) -> tuple[Path, Path]:
    """A real checkpoint with a payload in it (version 2 layout, or the old pickled module)."""
    marker = tmp_path / f"marker-{where}"
    state = torch.load(saved, weights_only=True)
    if where == "config":
        state["config"]["seed"] = Payload(marker)
    elif where == "policy":  # the old layout: a pickled object where the module was
        state["version"] = 1
        state["policy"] = Payload(marker)
    else:  # the whole file
        state = Payload(marker)
    path = tmp_path / f"evil-{where}.pt"
    torch.save(state, path)
    return path, marker


LOAD_PATHS = ("load", "resume", "cli")


@pytest.mark.parametrize("where", ["config", "policy", "file"])
@pytest.mark.parametrize("how", LOAD_PATHS)
def test_malicious_pt_is_refused_on_every_load_path(how, where, tmp_path, saved, capsys):
    path, marker = _malicious_pt(tmp_path, saved, where)
    if how == "load":
        with pytest.raises(ValueError) as info:
            SFESS.load(path, device="cpu")
        message = str(info.value)
    elif how == "resume":
        agent = small_agent()
        before = [p.detach().clone() for p in agent.policy.parameters()]
        with pytest.raises(ValueError) as info:
            agent.learn(5, resume_from=path)
        message = str(info.value)
        assert agent.num_steps == 0
        after = list(agent.policy.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    else:
        code, out, err = run_cli(capsys, "eval", str(path), "--no-plot", "--eval-contexts", "4")
        assert_one_line_error(code, out, err)
        message = err
    assert not marker.exists()
    assert str(path) in message
    assert "posix.system" in message and "trust_pickle=True" in message
    assert "--trust-pickle" in message


def test_malicious_pt_payload_is_live_when_trusted(tmp_path, saved):
    """The check of the test above: trusting the file does run the payload."""
    path, marker = _malicious_pt(tmp_path, saved, "file")
    with pytest.raises(ValueError, match="not a subset_rl agent checkpoint"):
        SFESS.load(path, device="cpu", trust_pickle=True)
    assert marker.exists()


def test_old_pickled_checkpoint_needs_the_opt_in(tmp_path, saved, capsys):
    agent = SFESS.load(saved, device="cpu")
    state = torch.load(saved, weights_only=True)
    state["version"], state["policy"] = 1, agent.policy  # version 1 pickled the module
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(ValueError, match="FreeLogits.*trust_pickle=True"):
        SFESS.load(old, device="cpu")
    code, out, err = run_cli(capsys, "eval", str(old), "--no-plot", "--eval-contexts", "4")
    assert_one_line_error(code, out, err, str(old), "--trust-pickle")
    loaded = SFESS.load(old, device="cpu", trust_pickle=True)
    assert loaded.num_steps == agent.num_steps
    code, out, err = run_cli(capsys, "eval", str(old), "--no-plot", "--eval-contexts", "4",
                             "--trust-pickle")
    assert code == 0, err


@pytest.fixture(scope="module")
def ppo_zip(tmp_path_factory) -> Path:
    pytest.importorskip("subset_rl.sb3")
    from stable_baselines3 import PPO

    from subset_rl.sb3 import KSubsetActorCriticPolicy, make_subset_vec_env, ppo_kwargs

    vec_env = make_subset_vec_env(ENV_ID, n_envs=2, seed=0)
    model = PPO(KSubsetActorCriticPolicy, vec_env, device="cpu",
                **ppo_kwargs(n_steps=32, batch_size=32, n_epochs=1))
    model.learn(64)
    model.subset_rl_run = {"agent": "ppo", "env_id": ENV_ID, "env_kwargs": {}, "seed": 0}
    path = tmp_path_factory.mktemp("ppo") / "model.zip"
    model.save(path)
    vec_env.close()
    return path


def _rewrite_zip(source: Path, target: Path, edit) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            blob = zin.read(item.filename)
            if item.filename == "data":
                data = json.loads(blob)
                edit(data)
                blob = json.dumps(data).encode()
            zout.writestr(item, blob)


def _pickled(marker: Path) -> dict[str, str]:
    return {":type:": "<class 'object'>",
            ":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode()}


def test_ppo_zip_loads_without_unpickling_and_predicts_the_same(ppo_zip, capsys):
    from stable_baselines3 import PPO

    code, out, err = run_cli(capsys, "eval", str(ppo_zip), "--no-plot", "--eval-contexts", "8")
    assert code == 0, err
    trusted = PPO.load(ppo_zip, device="cpu")
    code, out2, err = run_cli(capsys, "eval", str(ppo_zip), "--no-plot", "--eval-contexts", "8",
                              "--trust-pickle")
    assert code == 0, err
    table = [line for line in out.splitlines() if "±" in line]
    assert table == [line for line in out2.splitlines() if "±" in line]
    assert trusted.num_timesteps == 64


@pytest.mark.parametrize("key", ["_last_obs", "policy_class", "lr_schedule", "evil"])
def test_malicious_zip_is_not_unpickled(key, ppo_zip, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.zip"
    _rewrite_zip(ppo_zip, evil, lambda data: data.__setitem__(key, _pickled(marker)))
    code, out, err = run_cli(capsys, "eval", str(evil), "--no-plot", "--eval-contexts", "4")
    assert not marker.exists()
    if key in ("_last_obs", "lr_schedule"):  # replaced by safe values: loads and evaluates
        assert code == 0, err
    else:  # nothing safe to put there: refused, naming the entry and the opt-in
        assert_one_line_error(code, out, err, str(evil), repr(key), "--trust-pickle")


def test_malicious_zip_payload_is_live_when_trusted(ppo_zip, tmp_path, capsys):
    """The check of the test above: SB3's own loader runs the payload."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.zip"
    _rewrite_zip(ppo_zip, evil, lambda data: data.__setitem__("_last_obs", _pickled(marker)))
    run_cli(capsys, "eval", str(evil), "--no-plot", "--eval-contexts", "4", "--trust-pickle")
    assert marker.exists()


def test_zip_for_another_k_is_named(ppo_zip, tmp_path, capsys):
    other = tmp_path / "other.zip"

    def edit(data):
        data["subset_rl_run"]["env_kwargs"] = {"k": 3}

    _rewrite_zip(ppo_zip, other, edit)
    code, out, err = run_cli(capsys, "eval", str(other), "--no-plot")
    assert_one_line_error(code, out, err, str(other), "n=10, k=2", "k=3")


# ------------------------------------------------------------------------------------------------
# Damaged, foreign and mismatched files
# ------------------------------------------------------------------------------------------------
def _truncated(saved: Path, target: Path) -> None:
    target.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])


def _missing_key(saved: Path, target: Path) -> None:
    state = torch.load(saved, weights_only=True)
    del state["optimizer_state"]
    torch.save(state, target)


def _edited_tensor(saved: Path, target: Path) -> None:
    state = torch.load(saved, weights_only=True)
    state["policy_state"]["logits"][0] += 1.0  # digest no longer matches
    torch.save(state, target)


def _foreign(saved: Path, target: Path) -> None:
    torch.save({"hello": torch.ones(2)}, target)


def _text(saved: Path, target: Path) -> None:
    target.write_text("not a checkpoint\n")


def _empty(saved: Path, target: Path) -> None:
    target.write_bytes(b"")


def _wrong_type(saved: Path, target: Path) -> None:
    state = torch.load(saved, weights_only=True)
    state["n"] = "ten"
    torch.save(state, target)


DAMAGED = {
    "truncated": (_truncated, "truncated or corrupt"),
    "missing key": (_missing_key, "missing key(s) 'optimizer_state'"),
    "edited tensor": (_edited_tensor, "SHA-256 digest"),
    "foreign torch file": (_foreign, "not a subset_rl agent checkpoint"),
    "text file": (_text, "truncated or corrupt"),
    "empty file": (_empty, "is empty"),
    "wrong type": (_wrong_type, "'n' is a str"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_file_is_named_in_python_and_the_cli(case, tmp_path, saved, capsys):
    make, fragment = DAMAGED[case]
    bad = tmp_path / "bad.pt"
    make(saved, bad)
    with pytest.raises(ValueError) as info:
        SFESS.load(bad, device="cpu")
    assert str(bad) in str(info.value) and fragment in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        small_agent().learn(5, resume_from=bad)
    code, out, err = run_cli(capsys, "eval", str(bad), "--no-plot")
    assert_one_line_error(code, out, err, str(bad), fragment)


def test_bit_flips_never_load_a_different_agent(tmp_path, saved):
    """``torch.save`` files have no checksum: the stored digest catches flips in tensor data."""
    good = saved.read_bytes()
    reference = SFESS.load(saved, device="cpu")
    caught = 0
    rng = random.Random(0)
    positions = sorted(rng.sample(range(len(good)), 60))
    for pos in positions:
        flipped = bytearray(good)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad = tmp_path / "flipped.pt"
        bad.write_bytes(bytes(flipped))
        try:
            agent = SFESS.load(bad, device="cpu")
        except ValueError as err:
            assert str(bad) in str(err) and "\n" not in str(err)
            caught += 1
            continue
        # a flip in zip padding or metadata: the same agent or nothing
        assert torch.equal(agent.policy.logits, reference.policy.logits), pos
        assert torch.equal(agent.generator.get_state(), reference.generator.get_state()), pos
    assert caught > 0


def test_n_k_mismatch_is_named(tmp_path, capsys):
    agent = small_agent(env_kwargs={"k": 3})
    path = tmp_path / "k3.pt"
    agent.save(path)
    with pytest.raises(ValueError, match=r"k3\.pt: checkpoint is for n=10, k=3; this agent has "
                                         r"n=10, k=2"):
        SFESS.load(path, env=_make_linear(), device="cpu")
    with pytest.raises(ValueError, match="n=10, k=3"):
        small_agent().learn(5, resume_from=path)
    # a consistent file (its digest matches) whose stored env arguments make another k
    state = read_checkpoint(path)
    state["config"]["env_kwargs"] = {"k": 2}
    save_checkpoint(state, path)
    code, out, err = run_cli(capsys, "eval", str(path), "--no-plot")
    assert_one_line_error(code, out, err, str(path), "n=10, k=3", "k=2")


# ------------------------------------------------------------------------------------------------
# Atomic writes, stale temporaries, last.pt
# ------------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".step_3.pt.{_dead_pid()}.abc123{TEMP_SUFFIX}"
    live = tmp_path / f".step_4.pt.{os.getpid()}.abc123{TEMP_SUFFIX}"
    foreign = tmp_path / ".step_5.pt.tmp"
    for p in (dead, live, foreign):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name])


def test_last_is_relinked_to_the_newest_step(tmp_path):
    agent = small_agent(checkpoint_dir=tmp_path, checkpoint_freq=2).learn(4)
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "step_4.pt")
    # as if killed between writing step_6.pt and linking last.pt to it
    agent.checkpoint_dir = None
    agent.learn(2).save(tmp_path / "step_6.pt")
    stale = tmp_path / f".last.pt.{_dead_pid()}.x1y2z3{TEMP_SUFFIX}"
    stale.write_bytes(b"")
    small_agent(checkpoint_dir=tmp_path, checkpoint_freq=100).learn(0)  # the next start
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "step_6.pt")
    assert not stale.exists()
    # a last.pt that equals no step file is the user's: left alone
    (tmp_path / "last.pt").unlink()
    SFESS(ENV_ID, num_samples=4, device="cpu", seed=5).learn(1).save(tmp_path / "last.pt")
    theirs = (tmp_path / "last.pt").read_bytes()
    agent.learn(1).save(tmp_path / "step_7.pt")
    recover_checkpoint_dir(tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == theirs


TRAINER = """
import sys
from subset_rl.agents import SFESS
from subset_rl.envs import BlackBoxObjective
import torch
folder = sys.argv[1]
objective = BlackBoxObjective(lambda z: z[..., :3].sum(-1), 64, 4, batched=True)
agent = SFESS(objective, policy="mlp", num_samples=2, batch_size=2, seed=0, device="cpu",
              checkpoint_dir=folder, checkpoint_freq=1)
last = folder + "/last.pt"
import os
print("ready", flush=True)
agent.learn(10**6, resume_from=last if os.path.exists(last) else None)
"""


def _check_folder(folder: Path, objective) -> int:
    """The invariants after the next start; returns the newest step (0 when none)."""
    recover_checkpoint_dir(folder)  # what learn() does when it starts
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(TEMP_SUFFIX)], names
    steps = sorted(int(n[5:-3]) for n in names if n.startswith("step_"))
    if not steps:
        assert "last.pt" not in names
        return 0
    newest = folder / f"step_{steps[-1]}.pt"
    assert (folder / "last.pt").read_bytes() == newest.read_bytes()
    agent = SFESS.load(folder / "last.pt", env=objective, device="cpu", policy="mlp")
    assert agent.num_steps == steps[-1]
    return steps[-1]


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_leaves_a_consistent_folder(kills, tmp_path):
    folder = tmp_path / "checkpoints"
    objective = BlackBoxObjective(lambda z: z[..., :3].sum(-1), 64, 4, batched=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    rng = random.Random(1234)
    newest, orphans = 0, 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(folder)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        orphans += any(p.name.endswith(TEMP_SUFFIX) for p in folder.iterdir()) \
            if folder.is_dir() else 0
        step = _check_folder(folder, objective)
        assert step >= newest  # resumed from last.pt: never goes back
        newest = step
    assert newest > 0


def test_cli_train_cleans_up_and_links_last(tmp_path, capsys):
    logdir = tmp_path / "run"
    (logdir / "checkpoints").mkdir(parents=True)
    pid = _dead_pid()
    stale = [logdir / f".model.pt.{pid}.aaaa1111{TEMP_SUFFIX}",
             logdir / "checkpoints" / f".step_2.pt.{pid}.bbbb2222{TEMP_SUFFIX}"]
    for p in stale:
        p.write_bytes(b"partial")
    code, out, err = run_cli(capsys, "train", ENV_ID, "--steps", "6", "--checkpoint-freq", "2",
                             "--num-samples", "4", "--batch-size", "4", "--logdir", str(logdir),
                             "--eval-contexts", "4", "--quiet", "--no-plot")
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    checkpoints = logdir / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["last.pt", "step_2.pt", "step_4.pt", "step_6.pt"]
    assert os.path.samefile(checkpoints / "last.pt", checkpoints / "step_6.pt")
    assert not [p for p in logdir.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    code, out, err = run_cli(capsys, "eval", str(checkpoints / "last.pt"), "--no-plot",
                             "--eval-contexts", "4")
    assert code == 0, err


def test_cli_ppo_checkpoints_are_written_atomically_and_load_safely(tmp_path, capsys):
    pytest.importorskip("subset_rl.sb3")
    code, out, err = run_cli(capsys, "train", ENV_ID, "--agent", "ppo", "--steps", "128",
                             "--n-envs", "2", "--batch-size", "64", "--checkpoint-freq", "64",
                             "--logdir", str(tmp_path), "--eval-contexts", "4", "--quiet",
                             "--no-plot")
    assert code == 0, err
    zips = sorted((tmp_path / "checkpoints").glob("model_*_steps.zip"))
    assert zips and not [p for p in tmp_path.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    code, out, err = run_cli(capsys, "eval", str(zips[-1]), "--no-plot", "--eval-contexts", "4")
    assert code == 0, err


def test_last_is_a_copy_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    agent = small_agent(checkpoint_dir=tmp_path, checkpoint_freq=2).learn(4)
    last, step_4 = tmp_path / "last.pt", tmp_path / "step_4.pt"
    assert not os.path.samefile(last, step_4) and last.read_bytes() == step_4.read_bytes()
    agent.checkpoint_dir = None
    agent.learn(2).save(tmp_path / "step_6.pt")  # killed before last.pt was written
    recover_checkpoint_dir(tmp_path)
    assert last.read_bytes() == (tmp_path / "step_6.pt").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def _truncated_zip(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])


def _flipped_weights_zip(source: Path, target: Path) -> None:
    blob = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("policy.pth")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    blob[middle] ^= 0xFF
    target.write_bytes(bytes(blob))


def _no_weights_zip(source: Path, target: Path) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            if item.filename != "policy.pth":
                zout.writestr(item, zin.read(item.filename))


DAMAGED_ZIPS = {
    "truncated": (_truncated_zip, "not a readable Stable-Baselines3 model zip"),
    "flipped weights": (_flipped_weights_zip, "'policy.pth' does not match: corrupt"),
    "no weights": (_no_weights_zip, "cannot load the model"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_ZIPS))
def test_damaged_zip_is_named(case, ppo_zip, tmp_path, capsys):
    damage, fragment = DAMAGED_ZIPS[case]
    bad = tmp_path / "bad.zip"
    damage(ppo_zip, bad)
    code, out, err = run_cli(capsys, "eval", str(bad), "--no-plot", "--eval-contexts", "4")
    assert_one_line_error(code, out, err, str(bad), fragment)


def test_load_model_in_python(ppo_zip, tmp_path):
    from stable_baselines3 import PPO

    from subset_rl.sb3 import load_model

    env = _make_linear()
    model = load_model(PPO, ppo_zip, observation_space=env.observation_space,
                       action_space=env.action_space, device="cpu")
    trusted = PPO.load(ppo_zip, device="cpu")
    obs = torch.zeros(5, 1).numpy()
    assert (model.predict(obs, deterministic=True)[0]
            == trusted.predict(obs, deterministic=True)[0]).all()
    other = _make_linear(k=3)
    with pytest.raises(ValueError, match=r"model\.zip: the model is for n=10, k=2; the env has "
                                         r"n=10, k=3"):
        load_model(PPO, ppo_zip, observation_space=other.observation_space,
                   action_space=other.action_space, device="cpu")
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.zip"
    _rewrite_zip(ppo_zip, evil, lambda data: data.__setitem__("evil", _pickled(marker)))
    with pytest.raises(ValueError, match=r"evil\.zip: refused to load: its entry 'evil'.*"
                                         r"trust_pickle=True"):
        load_model(PPO, evil, observation_space=env.observation_space,
                   action_space=env.action_space, device="cpu")
    assert not marker.exists()


def test_pathwise_aimle_state_round_trips(tmp_path):
    from subset_rl.agents import Pathwise

    agent = Pathwise(ENV_ID, estimator="aimle", num_samples=2, batch_size=4, seed=0,
                     device="cpu").learn(5)
    agent.save(tmp_path / "p.pt")
    torch.load(tmp_path / "p.pt", weights_only=True)
    loaded = Pathwise.load(tmp_path / "p.pt", device="cpu")
    assert loaded.estimator == "aimle" and loaded.num_steps == 5
    for key, value in agent.aimle.state_dict().items():
        assert torch.equal(value, loaded.aimle.state_dict()[key])
    agent.learn(3)
    loaded.learn(3)
    for a, b in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_numpy_settings_are_saved_as_plain_numbers(tmp_path):
    import numpy as np

    agent = small_agent(seed=np.int64(3), max_grad_norm=np.float32(1.0))
    agent.save(tmp_path / "np.pt")
    state = torch.load(tmp_path / "np.pt", weights_only=True)
    assert state["config"]["seed"] == 3 and type(state["config"]["seed"]) is int
    assert SFESS.load(tmp_path / "np.pt", device="cpu").seed == 3


def test_resume_from_last_after_a_kill_between_step_and_last(tmp_path):
    agent = small_agent(checkpoint_dir=tmp_path, checkpoint_freq=2).learn(4)
    agent.checkpoint_dir = None
    agent.learn(2).save(tmp_path / "step_6.pt")  # killed before last.pt was linked to it
    resumed = small_agent(checkpoint_dir=tmp_path, checkpoint_freq=2)
    resumed.learn(6, resume_from=tmp_path / "last.pt")  # repaired first: resumes at step 6
    assert resumed.num_steps == 6
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
