"""subset_rl.optimize fault tolerance: dead workers, timeouts, non-real values, Ctrl-C, journal."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from subset_rl.optimize import (
    EvaluationError,
    ProcessPool,
    WeightedCoverage,
    optimize,
)
from subset_rl.optimize.evaluation import Journal

N, K = 7, 3  # C(7, 3) = 35 subsets: random search with budget 35 evaluates each one
ALL = math.comb(N, K)
OBJ = WeightedCoverage.random(N, universe=30, density=0.2, seed=1)
BAD = (0, 1, 2)


def key_of(z) -> tuple[int, ...]:
    return tuple(np.flatnonzero(np.asarray(z)).tolist())


class Logged:
    """Picklable objective that appends each subset it is called on to a file, then acts.

    ``action`` on the subset ``BAD``: ``"exit"`` (the process dies with ``os._exit(3)``),
    ``"hang"`` (sleeps ``hang`` seconds), ``"interrupt"`` (raises ``KeyboardInterrupt``).
    """

    def __init__(self, log: Path, action: str | None = None, hang: float = 60.0) -> None:
        self.log, self.action, self.hang = str(log), action, hang

    def __call__(self, z) -> float:
        key = key_of(z)
        with open(self.log, "a") as fh:
            fh.write(" ".join(map(str, key)) + "\n")
        if key == BAD:
            if self.action == "exit":
                os._exit(3)
            if self.action == "hang":
                time.sleep(self.hang)
            if self.action == "interrupt":
                raise KeyboardInterrupt
        return OBJ(z)


def calls(log: Path) -> list[tuple[int, ...]]:
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]  # a cut-off last line is no call record
    return [tuple(int(i) for i in line.split()) for line in lines]


def run(f, **kw):
    kw.setdefault("seed", 0)
    kw.setdefault("progress", False)
    kw.setdefault("method", "random")
    kw.setdefault("budget", ALL)
    return optimize(f, N, K, **kw)


@pytest.fixture(scope="module")
def pool():
    with ProcessPool(2) as p:
        yield p


# ---------------------------------------------------------------------- non-real values
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, "returned bool True"),
        (np.bool_(False), "returned bool False"),
        (np.array([1.0, 2.0]), r"array of shape \(2,\)"),
        (np.zeros((0,)), r"array of shape \(0,\)"),
        (np.array([True]), "returned bool"),
        (torch.tensor(True), "returned bool"),
        (1 + 2j, "returned complex"),
        ("3.5", "returned str"),
        (None, "returned NoneType"),
    ],
)
def test_non_real_values_are_failures(value, match):
    with pytest.raises(EvaluationError, match=match) as info:
        run(lambda z: value, budget=5)
    assert info.value.result.n_failed == len(info.value.failures) == 5


def test_real_scalars_of_every_kind_are_accepted():
    for value in (
        3,
        np.int64(3),
        np.float32(3.0),
        np.array(3.0),
        np.array([[3.0]]),
        torch.full((1,), 3.0),
    ):
        res = run(lambda z, v=value: v, budget=3)
        assert res.n_failed == 0 and res.best_value == 3.0


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (lambda z: torch.ones(z.shape[0], dtype=torch.bool), "returned dtype bool"),
        (lambda z: np.array(["1"] * z.shape[0]), "returned dtype <U1"),
        (lambda z: torch.ones(z.shape[0], dtype=torch.complex64), "returned dtype complex64"),
    ],
)
def test_batched_non_real_values_are_failures(values, match):
    with pytest.raises(EvaluationError, match=match):
        run(values, batched=True, budget=4)


# ---------------------------------------------------------------------- dead workers
@pytest.mark.parametrize("retries", [0, 1])
def test_worker_calling_os_exit_on_one_subset_is_named_and_the_run_continues(
    tmp_path, pool, retries
):
    log = tmp_path / "calls.txt"
    pids = [w.process.pid for w in pool._procs]
    with pytest.warns(UserWarning, match="1 of 35 evaluations failed"):
        res = run(Logged(log, "exit"), executor=pool, on_error="skip", retries=retries)
    assert res.n_evaluations == ALL and res.n_failed == 1
    ((index, reason),) = res.history.errors.items()
    assert res.history.subsets[index] == BAD
    assert "worker process died (exit code 3)" in reason
    assert ("attempts" in reason) == (retries > 0)
    # the dead worker was replaced; every other subset was evaluated exactly once
    assert sorted(w.process.pid for w in pool._procs) != sorted(pids)
    made = calls(log)
    assert made.count(BAD) == retries + 1
    assert sorted(set(made) - {BAD}) == sorted(made_other := [c for c in made if c != BAD])
    assert len(made_other) == ALL - 1
    # the same run without the crash gives the same values on the other subsets
    ok = run(OBJ)
    for s, v in zip(res.history.subsets, res.history.values, strict=True):
        if s != BAD:
            assert v == ok.history.values[ok.history.subsets.index(s)]


def test_worker_dying_with_on_error_raise_keeps_every_completed_evaluation(tmp_path):
    with pytest.raises(EvaluationError, match=r"subset with items \[0, 1, 2\].*died") as info:
        run(Logged(tmp_path / "calls.txt", "exit"), executor="process", workers=2, retries=0)
    partial = info.value.result  # the whole first request (its distinct subsets) is kept
    ref = run(OBJ)
    first = int((ref.history.round == 0).sum())
    assert partial.n_evaluations == first > 1 and partial.n_failed == 1
    assert info.value.subset == BAD and partial.history.subsets == ref.history.subsets[:first]


def test_broken_concurrent_futures_pool_makes_failures_not_a_crash(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as ex, pytest.warns(UserWarning):
        res = run(Logged(tmp_path / "calls.txt", "exit"), executor=ex, on_error="skip")
    assert res.n_evaluations == ALL and res.n_failed >= 1
    assert any("BrokenProcessPool" in m for m in res.history.errors.values())


# ---------------------------------------------------------------------- timeouts
def test_hanging_objective_times_out_and_the_run_continues(tmp_path, pool):
    start = time.monotonic()
    with pytest.warns(UserWarning, match="1 of 35 evaluations failed"):
        res = run(
            Logged(tmp_path / "calls.txt", "hang"), executor=pool, on_error="skip", timeout=1.0
        )
    assert time.monotonic() - start < 30  # not the 60 s the objective sleeps
    ((index, reason),) = res.history.errors.items()
    assert res.history.subsets[index] == BAD and reason.startswith("timed out after 1 s")
    # the pool is healthy afterwards
    assert run(OBJ, executor=pool).n_failed == 0


class HangingBatch:
    """Batched objective that hangs on every batch holding the subset ``BAD``."""

    def __call__(self, z):
        if any(key_of(row) == BAD for row in z):
            time.sleep(60)
        return OBJ.batch(z)


def test_batched_timeout_fails_the_whole_batch(pool):
    with pytest.warns(UserWarning, match="4 of 35 evaluations failed"):
        res = run(
            HangingBatch(), executor=pool, on_error="skip", timeout=1.0, batched=True, batch=4
        )
    bad = [res.history.subsets[i] for i in res.history.errors]
    assert BAD in bad and all(m.startswith("timed out") for m in res.history.errors.values())


def test_timeout_is_refused_where_a_call_cannot_be_stopped():
    from concurrent.futures import ThreadPoolExecutor

    with pytest.raises(ValueError, match="cannot be stopped.*executor='serial'"):
        run(OBJ, timeout=1.0)
    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="cannot be stopped"):
        run(OBJ, executor=ex, timeout=1.0)
    with pytest.raises(ValueError, match="timeout: expected a finite number"):
        run(OBJ, executor="process", timeout=0)
    with pytest.raises(TypeError, match="timeout: expected a number"):
        run(OBJ, executor="process", timeout="1")
    with pytest.raises(ValueError, match="retries: expected an int >= 0"):
        run(OBJ, retries=-1)


# ---------------------------------------------------------------------- pool reuse
def test_pool_is_reused_across_calls_and_gives_the_serial_result(pool):
    pids = sorted(w.process.pid for w in pool._procs)
    for method in ("sfess", "cem"):
        a = optimize(OBJ, N, K, budget=30, method=method, seed=3, progress=False, executor=pool)
        b = optimize(OBJ, N, K, budget=30, method=method, seed=3, progress=False)
        assert a.history.subsets == b.history.subsets and a.executor == "ProcessPool"
        np.testing.assert_array_equal(a.history.values, b.history.values)
    assert sorted(w.process.pid for w in pool._procs) == pids  # no new processes
    closed = ProcessPool(1)
    closed.close()
    with pytest.raises(ValueError, match="ProcessPool is closed"):
        run(OBJ, executor=closed)


# ---------------------------------------------------------------------- KeyboardInterrupt
def interrupt_on_seventh_call():
    count = [0]

    def f(z):
        count[0] += 1
        if count[0] == 7:
            raise KeyboardInterrupt
        return OBJ(z)

    return f


def test_keyboard_interrupt_in_f_returns_the_completed_evaluations():
    with pytest.warns(UserWarning, match="interrupted"):
        res = run(interrupt_on_seventh_call())
    assert res.interrupted and res.n_evaluations == 6 and "interrupted" in res.message
    assert res.to_dict()["interrupted"] is True
    ref = run(OBJ)
    assert res.history.subsets == ref.history.subsets[:6]


def test_keyboard_interrupt_from_the_callback_and_in_a_worker(tmp_path, pool):
    def callback(state):
        if state.round == 1:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted"):
        res = run(OBJ, method="sfess", budget=100, callback=callback)
    ref = run(OBJ, method="sfess", budget=100, callback=lambda state: state.round == 1)
    assert res.interrupted and res.history.subsets == ref.history.subsets  # two requests
    with pytest.warns(UserWarning, match="interrupted"):
        res = run(Logged(tmp_path / "calls.txt", "interrupt"), executor=pool, batch=1)
    assert res.interrupted and 0 < res.n_evaluations < ALL and BAD not in res.history.subsets
    assert run(OBJ, executor=pool).n_failed == 0  # the pool still works


# ---------------------------------------------------------------------- journal
def test_journal_resume_never_calls_f_on_a_journaled_subset(tmp_path):
    path = tmp_path / "sub" / "run.jsonl"
    log = tmp_path / "calls.txt"
    first = optimize(
        Logged(log), N, K, budget=25, method="sfess", seed=5, progress=False, journal=path
    )
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"subset_rl.optimize journal": 1, "n": N, "k": K}
    assert len(lines) == 1 + first.n_evaluations == 1 + len(calls(log))
    # the same run again: everything replayed, f never called
    log.unlink()
    again = optimize(
        Logged(log), N, K, budget=25, method="sfess", seed=5, progress=False, journal=path
    )
    assert calls(log) == [] and again.n_replayed == again.n_evaluations == first.n_evaluations
    assert again.history.subsets == first.history.subsets and "replayed" in again.message
    np.testing.assert_array_equal(again.history.values, first.history.values)
    # a cut-off last line is dropped (and cut off the file); only that subset is evaluated again
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    again = optimize(
        Logged(log), N, K, budget=25, method="sfess", seed=5, progress=False, journal=path
    )
    assert calls(log) == [first.history.subsets[-1]]
    assert path.read_bytes() == data and again.history.subsets == first.history.subsets


def test_journal_records_failures_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "run.jsonl"
    with pytest.warns(UserWarning, match="1 of 35 evaluations failed"):
        run(
            Logged(tmp_path / "a.txt", "exit"),
            executor="process",
            workers=2,
            retries=0,
            journal=path,
            on_error="skip",
        )
    journal = Journal(path, N, K)
    journal.close()
    entries = journal.entries
    assert len(entries) == ALL and "died" in entries[BAD][1] and math.isnan(entries[BAD][0])
    with pytest.raises(ValueError, match=r"run.jsonl was written for n=7, found n=8"):
        optimize(OBJ, 8, 3, budget=5, progress=False, journal=path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        run(OBJ, journal=path)
    held = Journal(tmp_path / "held.jsonl", N, K)
    with pytest.raises(ValueError, match="held.jsonl is in use by another run"):
        run(OBJ, journal=tmp_path / "held.jsonl")
    held.close()
    assert run(OBJ, journal=tmp_path / "held.jsonl").n_evaluations == ALL
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="is not a subset_rl.optimize journal"):
        run(OBJ, journal=other)


KILL_SCRIPT = """
import sys, time
import numpy as np
from subset_rl.optimize import ProcessPool, WeightedCoverage, optimize

OBJ = WeightedCoverage.random(12, universe=40, density=0.15, seed=0)
LOG, SLEEP, BUDGET = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

def f(z):
    with open(LOG, "a") as fh:
        fh.write(" ".join(map(str, np.flatnonzero(z).tolist())) + "\\n")
        fh.flush()
    time.sleep(SLEEP)
    return OBJ(z)

if __name__ == "__main__":
    pool = None
    if sys.argv[5] == "process":
        pool = ProcessPool(2)
        optimize(OBJ, 12, 3, budget=2, executor=pool, progress=False)  # workers up
    pids = [] if pool is None else [w.process.pid for w in pool._procs]
    print("READY", *pids, flush=True)
    res = optimize(f, 12, 3, budget=BUDGET, method="sfess", seed=7, progress=False,
                   journal=sys.argv[1], executor=pool)
    print("DONE", res.n_evaluations, res.n_replayed)
"""


def read_journal(path: Path) -> set[tuple[int, ...]]:
    if not path.exists():
        return set()
    j = Journal(path, 12, 3)
    j.close()
    return set(j.entries)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize(
    ("kills", "sleep", "budget", "executor"),
    [
        (3, 0.03, 150, "serial"),
        pytest.param(20, 0.05, 220, "serial", marks=pytest.mark.slow),
        pytest.param(4, 0.05, 150, "process", marks=pytest.mark.slow),
    ],
    ids=["3-kills", "20-kills", "4-kills-process"],
)
def test_journal_survives_sigkill_at_random_moments(tmp_path, kills, sleep, budget, executor):
    """Kills a run at random moments (start-up, evaluating, writing the journal) ``kills``
    times, each time checking the journal, then lets one finish: the objective is never called
    twice on a journaled subset, and the result equals the uninterrupted run's. The objective
    is slow enough (``sleep`` per call; 3/4 of the kills come within 0.4 s of the job's start
    of optimization, 1/4 within 1.5 s of its launch) that every kill hits a running job.
    With ``executor="process"`` the pool's workers exit too once their parent is killed."""
    import signal
    import subprocess
    import sys

    from subset_rl.optimize import WeightedCoverage

    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    journal = tmp_path / "run.jsonl"
    rng = np.random.default_rng(kills)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.monotonic()
    killed = 0
    for attempt in range(kills + 1):
        before = read_journal(journal)
        log = tmp_path / f"calls{attempt}.txt"
        workers: list[int] = []
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(journal),
                str(log),
                str(sleep),
                str(budget),
                executor,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if attempt < kills:
            try:
                if rng.random() < 0.25:  # anywhere, start-up included
                    proc.wait(timeout=float(rng.uniform(0.0, 1.5)))
                else:  # while optimizing: replaying, evaluating, writing the journal
                    ready = proc.stdout.readline().split()
                    assert ready[:1] == [b"READY"]
                    workers = [int(pid) for pid in ready[1:]]
                    proc.wait(timeout=float(rng.uniform(0.0, 0.4)))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed += 1
        out, err = proc.communicate(timeout=120)
        for line in out.splitlines():  # READY not read above
            if line.startswith(b"READY"):
                workers = [int(pid) for pid in line.split()[1:]]
        if executor == "process" and proc.returncode == -signal.SIGKILL:
            deadline = time.monotonic() + 10
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(alive(pid) for pid in workers), "orphaned workers kept running"
        # the journal reads back after every kill, and nothing journaled was evaluated again
        entries = read_journal(journal)
        assert not set(calls(log)) & before, f"run {attempt} evaluated journaled subsets again"
        assert before <= set(entries)
        assert set(entries) - before <= set(calls(log))
        if b"DONE" in out:
            break
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert b"DONE" in out, err.decode()[-2000:]
    assert killed == kills
    assert time.monotonic() - start < 10 * (kills + 1)
    # the resumed run is the uninterrupted run
    obj = WeightedCoverage.random(12, universe=40, density=0.15, seed=0)
    ref = optimize(obj, 12, 3, budget=budget, method="sfess", seed=7, progress=False)
    final = optimize(
        lambda z: pytest.fail("journaled"),
        12,
        3,
        budget=budget,
        method="sfess",
        seed=7,
        progress=False,
        journal=journal,
    )
    assert final.history.subsets == ref.history.subsets
    np.testing.assert_allclose(final.history.values, ref.history.values, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert final.n_replayed == final.n_evaluations == ref.n_evaluations
