"""subset_rl.optimize executors: local processes, a user executor and Ray give the serial run."""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from subset_rl.optimize import EvaluationError, WeightedCoverage, optimize

N, K = 16, 3
OBJ = WeightedCoverage.random(N, universe=50, density=0.12, seed=4)


def fails_on_zero_one(z):
    """Raises on every subset holding items 0 and 1 (module level: picklable)."""
    if z[0] and z[1]:
        raise RuntimeError("sensor 0 and 1 collide")
    return OBJ(z)


def run(f, executor, method="sfess", budget=90, **kw):
    kw.setdefault("seed", 0)
    return optimize(f, N, K, budget=budget, method=method, executor=executor, progress=False, **kw)


def same_run(a, b):
    assert a.history.subsets == b.history.subsets
    np.testing.assert_allclose(a.history.values, b.history.values, rtol=1e-6)
    assert a.best_indices == b.best_indices and a.best_value == pytest.approx(b.best_value)
    assert a.history.errors.keys() == b.history.errors.keys()


def test_process_executor_gives_the_serial_result():
    serial = run(OBJ, None)
    parallel = run(OBJ, "process", workers=2)
    same_run(serial, parallel)
    assert parallel.executor == "process" and serial.executor == "serial"


def test_process_executor_batched_and_failures():
    # batched objective split over two processes in chunks of 5 rows
    same_run(
        run(OBJ.batch, None, batched=True),
        run(OBJ.batch, "process", batched=True, batch=5, workers=2),
    )
    with pytest.raises(EvaluationError, match=r"subset with items \[0, 1, \d+\]") as info:
        run(fails_on_zero_one, "process", method="random", budget=400, samples=40, workers=2)
    err = info.value
    assert "collide" in err.reason and "RuntimeError" in err.remote_traceback
    assert err.result.n_evaluations > 0 and err.subset in err.result.history.subsets


def test_user_executor_accepts_closures():
    with ThreadPoolExecutor(2) as pool:
        a = run(lambda z: OBJ(z), pool, method="cem")
        assert a.executor == "ThreadPoolExecutor"
    same_run(a, run(OBJ, None, method="cem"))


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (pip install ray); the Ray executor is untested"
    )
    # This test module is not importable on Ray's workers: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # address="local": a new instance even where `ray start` recorded a cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_serial_result(ray_instance):
    same_run(run(OBJ, None), run(OBJ, "ray"))
    assert ray_instance.is_initialized()  # a running instance is used and left running
    # closures travel with cloudpickle; an address uses the running instance too
    same_run(run(OBJ, None, method="annealing"), run(lambda z: OBJ(z), "auto", method="annealing"))


def test_ray_executor_failures(ray_instance):
    with pytest.raises(EvaluationError, match=r"subset with items \[0, 1, \d+\]") as info:
        run(fails_on_zero_one, "ray", method="random", budget=400, samples=40)
    assert info.value.result.n_evaluations > 0 and "collide" in info.value.reason
    with pytest.warns(UserWarning, match="failed and were skipped"):
        skipped = run(fails_on_zero_one, "ray", method="random", budget=200, on_error="skip")
    with pytest.warns(UserWarning, match="failed and were skipped"):
        same_run(
            skipped, run(fails_on_zero_one, None, method="random", budget=200, on_error="skip")
        )
    assert skipped.n_failed > 0 and all(
        math.isnan(skipped.history.values[i]) for i in skipped.history.errors
    )


SIX = WeightedCoverage.random(6, universe=20, density=0.3, seed=2)


class ExitsOn:
    """Dies with ``os._exit(3)`` (or sleeps an hour, ``hang=True``) on the subset [0, 1, 2]."""

    def __init__(self, hang: bool = False, interrupt: bool = False) -> None:
        self.hang, self.interrupt = hang, interrupt

    def __call__(self, z):
        if z[0] and z[1] and z[2]:
            if self.interrupt:
                raise KeyboardInterrupt
            if self.hang:
                import time

                time.sleep(3600)
            import os

            os._exit(3)
        return SIX(z)


def test_ray_crashed_task_is_retried_then_a_named_failure(ray_instance):
    # n = 6, k = 3: random search with budget 20 evaluates every subset, [0, 1, 2] included
    with pytest.warns(UserWarning, match="1 of 20 evaluations failed"):
        res = optimize(
            ExitsOn(),
            6,
            3,
            budget=20,
            method="random",
            seed=0,
            progress=False,
            executor="ray",
            on_error="skip",
            retries=1,
        )
    ((index, reason),) = res.history.errors.items()
    assert res.history.subsets[index] == (0, 1, 2) and res.n_evaluations == 20
    assert "WorkerCrashedError" in reason and "2 attempts" in reason
    ok = optimize(SIX, 6, 3, budget=20, method="random", seed=0, progress=False)
    assert res.history.subsets == ok.history.subsets


def test_ray_timeout(ray_instance):
    import time

    start = time.monotonic()
    with pytest.warns(UserWarning, match="1 of 20 evaluations failed"):
        res = optimize(
            ExitsOn(hang=True),
            6,
            3,
            budget=20,
            method="random",
            seed=0,
            progress=False,
            executor="ray",
            on_error="skip",
            timeout=5.0,
        )
    assert time.monotonic() - start < 60
    ((index, reason),) = res.history.errors.items()
    assert res.history.subsets[index] == (0, 1, 2) and reason.startswith("timed out after 5 s")


ADDRESS_CLIENT = """
import sys
import numpy as np
import ray
from subset_rl.optimize import WeightedCoverage, optimize

f = WeightedCoverage.random(10, seed=0)
res = optimize(f, 10, 3, budget=30, method="random", seed=0, progress=False, executor=sys.argv[1])
ref = optimize(f, 10, 3, budget=30, method="random", seed=0, progress=False)
assert res.history.subsets == ref.history.subsets
np.testing.assert_array_equal(res.history.values, ref.history.values)
print("DONE", res.executor, ray.is_initialized())
"""


@pytest.mark.slow
def test_ray_executor_against_a_running_cluster_address(tmp_path):
    """A head started with ``ray start --head``; a fresh process connects by its address."""
    import os
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    ray = pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        script = tmp_path / "client.py"
        script.write_text(ADDRESS_CLIENT)
        out = subprocess.run(
            [sys.executable, str(script), address], env=env, capture_output=True, timeout=120
        )
        assert f"DONE ray({address}) False" in out.stdout.decode(), out.stderr.decode()[-3000:]
    finally:
        head.send_signal(signal.SIGTERM)  # --block stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        # `ray start` recorded the head as this machine's cluster; forget it again
        recorded = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
        if os.path.exists(recorded) and open(recorded).read().strip() == address:
            os.remove(recorded)


def test_ray_keyboard_interrupt_in_f_returns_the_completed_evaluations(ray_instance):
    with pytest.warns(UserWarning, match="interrupted"):
        res = optimize(
            ExitsOn(interrupt=True),
            6,
            3,
            budget=20,
            method="random",
            seed=0,
            progress=False,
            executor="ray",
            batch=1,
        )
    assert res.interrupted and 0 < res.n_evaluations < 20
    assert (0, 1, 2) not in res.history.subsets
