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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
