"""Where RL spends its time: k-hot PPO vs SB3's Bernoulli head, log_prob, samplers, op counts.

Usage:
    python benchmarks/bench_rl.py [--device cpu|cuda] [--repeats 5] [--quick] [--profile]
                                  [--only ppo logprob sampler ops] [--threads 1]

Prints Markdown tables, every ratio from numbers measured side by side in this one process:

* ``ppo``: PPO env steps per second on ``subset_rl/SensorPlacement-v0`` (n=256, k=10) with
  :class:`subset_rl.sb3.KSubsetActorCriticPolicy` (``entropy_grad`` on and off, and the CLI's
  settings) against SB3's default ``MlpPolicy``, which builds an independent Bernoulli head for the
  ``KHot`` (``MultiBinary``) space; split into rollout collection and ``train()``.
* ``logprob``: ``KSubsetPolicy(logits, k).log_prob(z)`` forward+backward against a SIMPLE-style
  O(nk) log-space dynamic program and the SFESS paper's Listing 1 (plain DFT).
* ``sampler``: the exact sampler against Gumbel top-k, and Gumbel noise drawn two ways.
* ``ops``: aten operators issued by one row's ``log_prob`` forward+backward at n=256, k=10.

Timed candidates of one table run interleaved (A, B, A, B, ... after one warm-up each), and the
tables report medians over ``--repeats``. ``--profile`` adds a cProfile of one k-hot PPO run.
torch runs on one thread throughout (PPO as ``subset-rl train`` does; the other tables by
``--threads``, because on a shared 2-core machine a second thread makes small ops erratic).
Wall times never appear in tests; this script is where they live.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from subset_rl import KSubsetPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distribution import plain_dft_log_normalizer  # noqa: E402  (script next to this one)

SECTIONS = ("ppo", "logprob", "sampler", "ops")
RUN_ORDER = ("ops", "logprob", "sampler", "ppo")  # the slow table last
ENV_ID = "subset_rl/SensorPlacement-v0"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up each, then ``repeats`` rounds A, B, A, B."""
    for fn in fns.values():
        fn()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _load() -> str:
    """The 1-minute load average (other processes skew timings: read it next to them)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def _load_note(start: str) -> None:
    print(f"\nload average {start} at the start of this table, {_load()} at its end\n")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences the C++ side's stderr (the profiler prints start/stop lines there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --------------------------------------------------------------------------------------------
# a. PPO: k-hot head vs SB3's Bernoulli head
# --------------------------------------------------------------------------------------------
class PhaseTimer:
    """Wraps a model's ``collect_rollouts`` and ``train`` and adds up their wall time."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.seconds = {"rollout": 0.0, "train": 0.0}
        for phase, attr in (("rollout", "collect_rollouts"), ("train", "train")):
            setattr(model, attr, self._timed(getattr(model, attr), phase, device))

    def _timed(self, method: Callable[..., Any], phase: str, device: torch.device) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                _sync(device)
                self.seconds[phase] += time.perf_counter() - start

        return run

    def reset(self) -> None:
        for phase in self.seconds:
            self.seconds[phase] = 0.0


def ppo_configs(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The PPO models to compare, built once (construction is not timed)."""
    from stable_baselines3 import PPO

    import subset_rl.envs  # noqa: F401  (registers the subset_rl/ ids)
    from subset_rl.sb3 import KSubsetActorCriticPolicy, make_subset_vec_env, ppo_kwargs

    # SB3's Bernoulli head emits any number of ones; "project" makes the env evaluate the top-k
    # of such an action, so both heads pay for the same objective. k-hot actions are unaffected.
    env_kwargs = {"invalid_action": "project"}
    common: dict[str, Any] = {
        "n_steps": args.n_steps, "batch_size": args.batch_size, "n_epochs": args.n_epochs,
        "seed": 0, "device": device, "verbose": 0,
    }
    # target_kl=None for the compared rows: every epoch runs, so both heads do the same work.
    specs: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
        ("k-hot, entropy_grad=True", KSubsetActorCriticPolicy, {"entropy_grad": True},
         ppo_kwargs(target_kl=None)),
        ("k-hot, entropy_grad=False", KSubsetActorCriticPolicy, {"entropy_grad": False},
         ppo_kwargs(target_kl=None)),
        ("Bernoulli (MlpPolicy)", "MlpPolicy", {}, {"learning_rate": 3e-4}),
    ]
    if not args.quick:
        specs.append(("k-hot, CLI settings (target_kl=0.02, entropy_grad=False)",
                      KSubsetActorCriticPolicy, {"entropy_grad": False}, ppo_kwargs()))
    models = {}
    for name, policy, policy_kwargs, options in specs:
        env = make_subset_vec_env(ENV_ID, n_envs=args.n_envs, seed=0, env_kwargs=env_kwargs)
        models[name] = PPO(policy, env, policy_kwargs=policy_kwargs, **{**options, **common})
    return models


def bench_ppo(args: argparse.Namespace, device: torch.device) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.ppo_threads)
    try:
        load = _load()
        models = ppo_configs(args, device)
        timers = {name: PhaseTimer(model, device) for name, model in models.items()}
        rollout = args.n_envs * args.n_steps
        steps = max(rollout, args.ppo_steps // rollout * rollout)
        phases: dict[str, dict[str, list[float]]] = {
            name: {"rollout": [], "train": []} for name in models
        }

        def learn(name: str) -> Callable[[], None]:
            def run() -> None:
                timers[name].reset()
                models[name].learn(steps)
                for phase, seconds in timers[name].seconds.items():
                    phases[name][phase].append(seconds)

            return run

        print(f"## PPO on {ENV_ID} (n=256, k=10)\n")
        print(f"{steps} env steps per repeat, n_envs={args.n_envs}, n_steps={args.n_steps}, "
              f"batch_size={args.batch_size}, n_epochs={args.n_epochs}, lr 3e-4, ent_coef 0, "
              f"target_kl None unless said; torch threads {args.ppo_threads} (the CLI's "
              f"default); device {device}; median of {args.repeats}, interleaved\n")
        times = interleaved({name: learn(name) for name in models}, device, args.repeats)
        for name in models:  # drop the warm-up's phases
            for phase in ("rollout", "train"):
                phases[name][phase] = phases[name][phase][1:]
        base_name = "Bernoulli (MlpPolicy)"
        base = _median(times[base_name])
        base_r = _median(phases[base_name]["rollout"])
        base_t = _median(phases[base_name]["train"])
        print("| policy head | env steps/s | steps/s vs Bernoulli | rollout s / 1k steps | "
              "train s / 1k steps | rollout time vs Bernoulli | train time vs Bernoulli |")
        print("|---|---|---|---|---|---|---|")
        per_k = 1000 / steps
        for name in models:
            t = _median(times[name])
            r = _median(phases[name]["rollout"])
            tr = _median(phases[name]["train"])
            print(f"| {name} | {steps / t:.0f} | {base / t:.2f}x | {r * per_k:.3f} | "
                  f"{tr * per_k:.3f} | {r / base_r:.1f}x | {tr / base_t:.1f}x |", flush=True)
        _load_note(load)
        if args.profile:
            profile_ppo(models["k-hot, entropy_grad=True"], steps)
    finally:
        torch.set_num_threads(threads)


def profile_ppo(model: Any, steps: int) -> None:
    """cProfile of one k-hot PPO ``learn``: where the time goes, by function."""
    profiler = cProfile.Profile()
    profiler.enable()
    model.learn(steps)
    profiler.disable()
    for key, title in (("cumulative", "cumulative time"), ("tottime", "own time")):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(22)
        text = out.getvalue()
        start = text.find("   ncalls")
        print(f"### cProfile of one k-hot PPO learn ({steps} steps, entropy_grad=True), "
              f"by {title}\n\n```\n{text[start:].rstrip()}\n```\n")


# --------------------------------------------------------------------------------------------
# b. log_prob forward+backward vs SIMPLE's dynamic program and the SFESS paper's Listing 1
# --------------------------------------------------------------------------------------------
def simple_dp_log_normalizer(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``log e_k(exp l)`` by the SIMPLE paper's O(nk) log-space dynamic program, batched.

    Ahmed et al. (2023) run over the items once, keeping ``log P(j of the first i
    Bernoulli(sigmoid(l)) succeed)`` for ``j = 0..k``; then
    ``log e_k = log PB_k + sum softplus(l)``. Marginals come from differentiating it.
    ``log 0`` is a large finite negative number, not ``-inf``: ``logaddexp(-inf, -inf)`` has a
    NaN gradient.
    """
    batch, n = logits.shape
    log_p = torch.nn.functional.logsigmoid(logits)
    log_q = torch.nn.functional.logsigmoid(-logits)
    log_zero = torch.finfo(logits.dtype).min / 4
    state = torch.full((batch, k + 1), log_zero, dtype=logits.dtype, device=logits.device)
    state[:, 0] = 0.0
    pad = state[:, :1].clone().fill_(log_zero)
    for i in range(n):
        stay = state + log_q[:, i : i + 1]
        take = torch.cat([pad, state[:, :-1]], dim=1) + log_p[:, i : i + 1]
        state = torch.logaddexp(stay, take)
    return state[:, k] + torch.nn.functional.softplus(logits).sum(-1)


def _fwd_bwd(logits: torch.Tensor, z: torch.Tensor, k: int, how: str) -> Callable[[], None]:
    def run() -> None:
        x = logits.detach().requires_grad_(True)
        if how == "ours":
            lp = KSubsetPolicy(x, k).log_prob(z)
        elif how == "ours-novalidate":
            lp = KSubsetPolicy(x, k, validate_args=False).log_prob(z)
        elif how == "simple-dp":
            lp = (z * x).sum(-1) - simple_dp_log_normalizer(x, k)
        else:
            lp = (z * x).sum(-1) - plain_dft_log_normalizer(x, k)
        lp.sum().backward()

    return run


def bench_logprob(args: argparse.Namespace, device: torch.device) -> None:
    load = _load()
    print("## log_prob forward+backward, float32, batch 128\n")
    print(f"device {device}, torch threads {torch.get_num_threads()}; median of "
          f"{args.repeats}, interleaved. `x N` = that baseline's time / KSubsetPolicy's "
          "(default arguments); SIMPLE DP = the O(nk) log-space dynamic program of Ahmed et "
          "al. (written in this script); Listing 1 = the SFESS paper's plain DFT.\n")
    print("| n | k | KSubsetPolicy.log_prob | validate_args=False | SIMPLE DP | x SIMPLE | "
          "Listing 1 | x Listing 1 | max abs log Z diff vs DP |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator(device="cpu").manual_seed(0)
    for n, k in ((100, 10), (784, 50)):
        logits = torch.randn(128, n, generator=gen).to(device)
        z = KSubsetPolicy(logits, k).sample()
        hows = ("ours", "ours-novalidate", "simple-dp", "listing-1")
        times = interleaved({h: _fwd_bwd(logits, z, k, h) for h in hows}, device, args.repeats)
        med = {h: _median(t) for h, t in times.items()}
        with torch.no_grad():
            diff = (KSubsetPolicy(logits, k).log_normalizer
                    - simple_dp_log_normalizer(logits.double(), k).float()).abs().max()
        ours = med["ours"]
        print(f"| {n} | {k} | {_fmt(ours)} | {_fmt(med['ours-novalidate'])} | "
              f"{_fmt(med['simple-dp'])} | {med['simple-dp'] / ours:.2f} | "
              f"{_fmt(med['listing-1'])} | {med['listing-1'] / ours:.0f} | {float(diff):.1e} |",
              flush=True)
    _load_note(load)


# --------------------------------------------------------------------------------------------
# c. Exact sampler vs Gumbel top-k; Gumbel noise two ways
# --------------------------------------------------------------------------------------------
def bench_sampler(args: argparse.Namespace, device: torch.device) -> None:
    n, k, rows, samples = 784, 50, 128, 32
    load = _load()
    gen = torch.Generator(device="cpu").manual_seed(1)
    logits = torch.randn(rows, n, generator=gen).to(device)
    tiny = torch.finfo(logits.dtype).tiny
    shape = (samples, rows, n)

    def noise_exponential() -> torch.Tensor:
        e = torch.empty(shape, device=device).exponential_()
        return -torch.log(e.clamp_min(tiny))

    def noise_loglog() -> torch.Tensor:
        u = torch.rand(shape, device=device)
        return -torch.log(-torch.log(u.clamp_min(tiny)))

    fns: dict[str, Callable[[], object]] = {
        "exact": lambda: KSubsetPolicy(logits, k).sample((samples,)),
        "gumbel": lambda: KSubsetPolicy(logits, k, sampler="gumbel").sample((samples,)),
        "exponential": noise_exponential,
        "loglog": noise_loglog,
    }
    times = interleaved(fns, device, args.repeats)
    med = {name: _median(t) for name, t in times.items()}
    print(f"## Sampling {samples} samples for each of {rows} rows, n = {n}, k = {k}\n")
    print(f"device {device}, torch threads {torch.get_num_threads()}; median of "
          f"{args.repeats}, interleaved\n")
    print("| what | time | ratio |")
    print("|---|---|---|")
    print(f"| exact sampler (conditional Poisson) | {_fmt(med['exact'])} | "
          f"{med['exact'] / med['gumbel']:.2f}x Gumbel top-k |")
    print(f"| Gumbel top-k (`sampler=\"gumbel\"`, not CP) | {_fmt(med['gumbel'])} | 1.00 |")
    print(f"| Gumbel noise `-log(E)`, `E = exponential_()` | {_fmt(med['exponential'])} | "
          f"{med['exponential'] / med['loglog']:.2f}x `-log(-log(u))` |")
    print(f"| Gumbel noise `-log(-log(u))`, `u = rand()` | {_fmt(med['loglog'])} | 1.00 |")
    _load_note(load)


# --------------------------------------------------------------------------------------------
# d. aten ops of one row's log_prob forward+backward
# --------------------------------------------------------------------------------------------
class OpCounter(TorchDispatchMode):
    """Counts the aten operators that reach the backends (after autograd), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select")


def bench_ops(args: argparse.Namespace, device: torch.device) -> None:
    n, k = 256, 10
    gen = torch.Generator(device="cpu").manual_seed(2)
    logits = torch.randn(n, generator=gen).to(device)
    z = KSubsetPolicy(logits, k).sample()

    def ksubset(entropy: bool, validate: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def loss(x: torch.Tensor) -> torch.Tensor:
            d = KSubsetPolicy(x, k, validate_args=validate)
            return d.log_prob(z) + d.entropy() if entropy else d.log_prob(z)

        return loss

    def bernoulli(entropy: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def loss(x: torch.Tensor) -> torch.Tensor:
            d = torch.distributions.Bernoulli(logits=x)
            out = d.log_prob(z).sum()
            return out + d.entropy().sum() if entropy else out

        return loss

    cases = {
        "KSubsetPolicy log_prob": ksubset(False, True),
        "KSubsetPolicy log_prob, validate_args=False": ksubset(False, False),
        "KSubsetPolicy log_prob + entropy": ksubset(True, True),
        "KSubsetPolicy log_prob + entropy, validate_args=False": ksubset(True, False),
        "Bernoulli log_prob": bernoulli(False),
        "Bernoulli log_prob + entropy": bernoulli(True),
    }
    print(f"## aten ops of one row's forward+backward, n = {n}, k = {k}, device {device}\n")
    print("dispatched = operators reaching the backend after autograd (a TorchDispatchMode "
          "counter); profiler = `aten::` events of torch.profiler (nested calls included); "
          "syncs = `_local_scalar_dense`/`nonzero`/`masked_select` calls (host syncs on GPU)\n")
    print("| call | dispatched ops | profiler aten events | syncs |")
    print("|---|---|---|---|")
    top: dict[str, collections.Counter[str]] = {}
    for name, loss in cases.items():
        loss(logits.clone().requires_grad_(True)).backward()  # warm-up (lazy inits)
        x = logits.clone().requires_grad_(True)
        with OpCounter() as counter:
            loss(x).backward()
        x = logits.clone().requires_grad_(True)
        with _quiet_stderr(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
        ) as prof:
            loss(x).backward()
        events = sum(1 for e in prof.events() if e.name.startswith("aten::"))
        syncs = sum(counter.counts[op] for op in SYNC_OPS)
        top[name] = counter.counts
        print(f"| {name} | {sum(counter.counts.values())} | {events} | {syncs} |", flush=True)
    print()
    for name in ("KSubsetPolicy log_prob", "KSubsetPolicy log_prob + entropy"):
        common = ", ".join(f"{op.removeprefix('aten.')} {c}" for op, c in
                           top[name].most_common(10))
        print(f"most frequent in {name}: {common}\n")


# --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per table (default 5, 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer PPO steps and repeats, no CLI-settings row (smoke run)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="tables to run (default all)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one k-hot PPO run")
    parser.add_argument("--ppo-steps", type=int, default=None,
                        help="env steps per timed PPO run (default 4096, 1024 with --quick)")
    parser.add_argument("--ppo-threads", type=int, default=1,
                        help="torch threads during PPO (default 1, as `subset-rl train`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads outside PPO (default 1: on a shared 2-core machine "
                        "two threads make small ops erratic; 0 keeps torch's default)")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-epochs", type=int, default=10)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.ppo_steps is None:
        args.ppo_steps = 1024 if args.quick else 4096
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# bench_rl: {' '.join(sys.argv[1:]) or '(defaults)'}\n")
    print(f"torch {torch.__version__}, device {device} ({name}), {os.cpu_count()} CPUs, "
          f"load average {_load()} at start\n")
    runners = {"ppo": bench_ppo, "logprob": bench_logprob, "sampler": bench_sampler,
               "ops": bench_ops}
    for section in RUN_ORDER:
        if section in args.only:
            runners[section](args, device)


if __name__ == "__main__":
    main()
