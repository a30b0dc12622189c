"""Where the objective runs: in this process, in local worker processes, or on a Ray cluster.

Every backend evaluates *chunks*, ``(m, n)`` arrays of subsets, with :func:`evaluate_chunk` and
returns one :class:`Outcome` per row, in order; failures (an exception, a NaN or a non-scalar)
come back as outcomes, never as exceptions, so that a failing subset does not take the others in
its chunk down with it. The caller (:class:`~subset_rl.optimize.evaluation.Evaluator`) decides
what a failure means.

Backends:

* :class:`SerialBackend`: in this process (``executor=None`` or ``"serial"``).
* :class:`PoolBackend`: a :class:`concurrent.futures.Executor`; ``executor="process"`` creates a
  :class:`~concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe with torch
  threads), so the objective must be picklable: a module-level function or an instance of a
  module-level class, not a lambda or a function defined inside another function. Scripts that use
  it need the usual ``if __name__ == "__main__":`` guard.
* :class:`RayBackend`: Ray core tasks (``executor="ray"`` or a cluster address such as
  ``"ray://head:10001"`` or ``"auto"``). Ray pickles with cloudpickle, so lambdas and functions
  of the driver script work; a function from another module is pickled by reference, so that
  module must be importable on the workers (ship it with a ``runtime_env``, or call
  ``ray.cloudpickle.register_pickle_by_value(module)``). Workers must also be able to import
  :mod:`subset_rl` (true on a local instance; on a remote cluster install it there).
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = [
    "Backend",
    "Outcome",
    "PoolBackend",
    "RayBackend",
    "SerialBackend",
    "evaluate_chunk",
    "make_backend",
]

_LOCAL_NAMES = (None, "serial", "process", "ray")


class Outcome(NamedTuple):
    """The result of evaluating one subset.

    Attributes:
        value: The objective's value (as returned, before any sign flip); NaN on failure.
        error: ``None`` on success, else a one-line description of the failure.
        traceback: Formatted traceback of the exception raised by the objective, if any.
        exception: The exception itself, kept only when evaluated in this process.
    """

    value: float
    error: str | None = None
    traceback: str | None = None
    exception: BaseException | None = None


def _scalar(value: Any) -> tuple[float, str | None]:
    """``value`` as a finite float, or NaN and what is wrong with it."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return math.nan, f"returned an array of shape {value.shape}; expected a real scalar"
        value = value.reshape(())[()]
    if not isinstance(value, numbers.Real):
        return math.nan, f"returned {type(value).__name__} {value!r:.60}; expected a real scalar"
    out = float(value)
    if not math.isfinite(out):
        return math.nan, f"returned {out}; expected a finite value"
    return out, None


def _failure(e: Exception, keep: bool) -> Outcome:
    return Outcome(
        math.nan,
        f"raised {type(e).__name__}: {e}",
        "".join(traceback.format_exception(type(e), e, e.__traceback__)),
        e if keep else None,
    )


def evaluate_chunk(
    f: Callable[[Any], Any],
    rows: np.ndarray,
    batched: bool,
    device: str,
    keep_exceptions: bool = False,
) -> list[Outcome]:
    """Evaluates ``f`` on each row of ``rows`` and never raises for a failing subset.

    Args:
        f: The objective. Unbatched: called once per row with a ``float64`` numpy array of shape
            ``(n,)`` holding 0s and 1s, returns a real scalar. Batched: called with a ``float32``
            tensor of shape ``(m, n)`` on ``device``, returns ``m`` values (tensor or array). When
            a batched call raises, the rows are retried one at a time (as ``(1, n)`` batches) to
            find the failing subsets.
        rows: ``(m, n)`` array of 0/1 indicator vectors.
        batched: Whether ``f`` takes whole batches.
        device: Torch device of the batched tensors.
        keep_exceptions: Keep the exception objects in the outcomes (in-process only).

    Returns:
        One :class:`Outcome` per row, in order.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if not batched:
        out = []
        for row in rows:
            try:
                value = f(row.copy())
            except Exception as e:
                out.append(_failure(e, keep_exceptions))
                continue
            out.append(Outcome(*_scalar(value)))
        return out
    m = rows.shape[0]
    try:
        values = f(torch.as_tensor(rows, dtype=torch.float32, device=device))
    except Exception as e:
        if m == 1:
            return [_failure(e, keep_exceptions)]
        return [
            o for row in rows for o in evaluate_chunk(f, row[None], True, device, keep_exceptions)
        ]
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"returned {type(values).__name__}; expected {m} real values (shape ({m},))"
        return [Outcome(math.nan, msg)] * m
    if arr.shape != (m,):
        msg = f"returned shape {arr.shape} for a batch of shape {rows.shape}; expected ({m},)"
        return [Outcome(math.nan, msg)] * m
    return [
        Outcome(float(v))
        if math.isfinite(v)
        else Outcome(math.nan, f"returned {v}; expected a finite value")
        for v in arr.tolist()
    ]


def _split(rows: np.ndarray, chunk: int) -> list[np.ndarray]:
    return [rows[i : i + chunk] for i in range(0, rows.shape[0], chunk)]


class Backend(Protocol):
    """What the evaluator needs from a backend."""

    #: Number of parallel workers (1 for serial).
    workers: int

    def evaluate(self, rows: np.ndarray) -> list[Outcome]:
        """One outcome per row of the ``(m, n)`` array ``rows``, in order."""

    def close(self) -> None:
        """Releases what the backend started (pools, a Ray instance)."""


class SerialBackend:
    """Evaluates in this process.

    Args:
        f: The objective (see :func:`evaluate_chunk`).
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs.
        chunk: Largest batch passed to a batched ``f`` at once (``None``: the whole request).
    """

    workers = 1

    def __init__(
        self, f: Callable[[Any], Any], batched: bool, device: str, chunk: int | None = None
    ) -> None:
        self.f, self.batched, self.device, self.chunk = f, batched, device, chunk

    def evaluate(self, rows: np.ndarray) -> list[Outcome]:
        """See :class:`Backend`."""
        size = self.chunk or max(rows.shape[0], 1)
        return [
            o
            for part in _split(rows, size)
            for o in evaluate_chunk(self.f, part, self.batched, self.device, True)
        ]

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------- local processes
_WORKER: dict[str, Any] = {}


def _init_worker(payload: bytes, batched: bool, device: str) -> None:
    torch.set_num_threads(1)  # one process per core; no oversubscription
    _WORKER.update(f=pickle.loads(payload), batched=batched, device=device)


def _evaluate_in_worker(rows: np.ndarray) -> list[Outcome]:
    return evaluate_chunk(_WORKER["f"], rows, _WORKER["batched"], _WORKER["device"])


def check_picklable(f: Callable[[Any], Any], why: str) -> bytes:
    """Pickles ``f``, or raises a ``TypeError`` that says why it must be picklable."""
    try:
        return pickle.dumps(f)
    except Exception as e:
        name = getattr(f, "__qualname__", None) or type(f).__name__
        raise TypeError(
            f"{why} the objective must be picklable (a module-level function or an instance of "
            f"a module-level class; lambdas and functions defined inside other functions are "
            f"not), found {name!r} which fails to pickle: {type(e).__name__}: {e}. Use "
            'executor="ray" (cloudpickle) or executor=None instead.'
        ) from e


def _chunk_size(m: int, workers: int, chunk: int | None) -> int:
    return chunk if chunk else max(1, math.ceil(m / workers))


class PoolBackend:
    """Evaluates on a :class:`concurrent.futures.Executor`, chunk by chunk.

    Args:
        f: The objective.
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs (in the workers).
        workers: Number of processes of a pool created here (default: CPU count).
        chunk: Rows per task (default: the request split evenly over the workers).
        executor: An existing executor to use (not shut down by :meth:`close`); ``None``
            creates a ``spawn`` :class:`~concurrent.futures.ProcessPoolExecutor`.
    """

    def __init__(
        self,
        f: Callable[[Any], Any],
        batched: bool,
        device: str,
        workers: int | None = None,
        chunk: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        import multiprocessing

        self.f, self.batched, self.device, self.chunk = f, batched, device, chunk
        self._own = executor is None
        if executor is None:
            payload = check_picklable(f, 'With executor="process"')
            self.workers = workers or os.cpu_count() or 1
            self.pool: Executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(payload, batched, device),
            )
        else:
            if isinstance(executor, ProcessPoolExecutor):
                check_picklable(f, "With a ProcessPoolExecutor")
            self.workers = workers or getattr(executor, "_max_workers", None) or 1
            self.pool = executor

    def evaluate(self, rows: np.ndarray) -> list[Outcome]:
        """See :class:`Backend`."""
        parts = _split(rows, _chunk_size(rows.shape[0], self.workers, self.chunk))
        if self._own:
            futures = [self.pool.submit(_evaluate_in_worker, p) for p in parts]
        else:
            futures = [
                self.pool.submit(evaluate_chunk, self.f, p, self.batched, self.device)
                for p in parts
            ]
        return [o for fut in futures for o in fut.result()]

    def close(self) -> None:
        """Shuts down the pool if it was created here."""
        if self._own:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- Ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            'executor="ray" (or a Ray address) needs the ray package: pip install "ray>=2.9"'
        ) from e
    return ray


class RayBackend:
    """Evaluates with Ray core tasks (one CPU each), the objective shipped once via ``ray.put``.

    If Ray is not initialised yet, :meth:`__init__` calls ``ray.init(address=address)`` (a new
    local instance when ``address`` is ``None``) and :meth:`close` shuts it down again; an
    instance that was already running is used as is and left running.

    Args:
        f: The objective (pickled with cloudpickle: lambdas and closures work).
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs (in the workers).
        address: Cluster address for ``ray.init`` (``None``: start a local instance).
        workers: Number of tasks a request is split into (default: the cluster's CPU count).
        chunk: Rows per task (overrides the split by ``workers``).
    """

    def __init__(
        self,
        f: Callable[[Any], Any],
        batched: bool,
        device: str,
        address: str | None = None,
        workers: int | None = None,
        chunk: int | None = None,
    ) -> None:
        ray = self._ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
            self._started = True
        self.batched, self.device, self.chunk = batched, device, chunk
        self.workers = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        self._f = ray.put(f)
        self._task = ray.remote(num_cpus=1)(evaluate_chunk)

    def evaluate(self, rows: np.ndarray) -> list[Outcome]:
        """See :class:`Backend`."""
        parts = _split(rows, _chunk_size(rows.shape[0], self.workers, self.chunk))
        refs = [self._task.remote(self._f, p, self.batched, self.device) for p in parts]
        return [o for part in self._ray.get(refs) for o in part]

    def close(self) -> None:
        """Shuts Ray down if this backend started it."""
        if self._started:
            self._ray.shutdown()


def make_backend(
    executor: str | Executor | None,
    f: Callable[[Any], Any],
    *,
    batched: bool,
    device: str,
    workers: int | None = None,
    chunk: int | None = None,
) -> Backend:
    """The backend for an ``executor`` argument of :func:`~subset_rl.optimize.optimize`.

    Args:
        executor: ``None`` or ``"serial"``; ``"process"``; ``"ray"``; a Ray address (``"auto"``,
            ``"ray://host:port"`` or ``"host:port"``); or a :class:`concurrent.futures.Executor`.
        f: The objective.
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs.
        workers: Number of parallel workers (processes or Ray tasks per request).
        chunk: Rows per task or per batched call.

    Returns:
        The backend; call its ``close()`` when done.
    """
    validate_executor(executor)
    if executor is None or executor == "serial":
        return SerialBackend(f, batched, device, chunk)
    if isinstance(executor, Executor):
        return PoolBackend(f, batched, device, workers, chunk, executor=executor)
    if executor == "process":
        return PoolBackend(f, batched, device, workers, chunk)
    if executor == "ray":
        return RayBackend(f, batched, device, None, workers, chunk)
    return RayBackend(f, batched, device, str(executor), workers, chunk)


def is_ray_address(value: object) -> bool:
    """Whether ``value`` reads as a Ray cluster address."""
    return isinstance(value, str) and (
        value == "auto" or value.startswith("ray://") or (":" in value and " " not in value)
    )


def describe_executor(executor: object) -> str:
    """A short name for an ``executor`` argument (for messages and results)."""
    if isinstance(executor, Executor):
        return type(executor).__name__
    if executor is None or executor in ("serial", "process", "ray"):
        return str(executor or "serial")
    return f"ray({executor})"


def validate_executor(executor: object) -> None:
    """Raises ``TypeError``/``ValueError`` for an ``executor`` argument that cannot work."""
    if executor is None or isinstance(executor, Executor):
        return
    if isinstance(executor, str):
        if executor in _LOCAL_NAMES or is_ray_address(executor):
            return
        raise ValueError(
            "executor: expected None, 'serial', 'process', 'ray', a Ray address ('auto', "
            f"'ray://host:port' or 'host:port') or a concurrent.futures.Executor, found "
            f"{executor!r}"
        )
    raise TypeError(
        "executor: expected None, a str ('serial', 'process', 'ray' or a Ray address) or a "
        f"concurrent.futures.Executor, found {type(executor).__name__}"
    )
