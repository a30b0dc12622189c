"""Where the objective runs: in this process, in local worker processes, or on a Ray cluster.

Every backend evaluates *chunks*, ``(m, n)`` arrays of subsets, with :func:`evaluate_chunk` and
returns one :class:`Outcome` per row, in order; failures (an exception, a NaN, a value that is
not a real number, a worker that died or timed out) come back as outcomes, never as exceptions,
so that a failing subset does not take the others in its chunk down with it. Each outcome is
also reported as soon as it is known (for the journal, and so that ``KeyboardInterrupt`` loses
no completed evaluation). The caller (:class:`~subset_rl.optimize.evaluation.Evaluator`) decides
what a failure means.

Backends:

* :class:`SerialBackend`: in this process (``executor=None`` or ``"serial"``); no timeout.
* :class:`PoolBackend`: a :class:`ProcessPool` (``executor="process"`` creates one per call;
  pass one to keep it across calls) or any :class:`concurrent.futures.Executor`. The pool uses
  the ``spawn`` start method (safe with torch threads), so the objective must be picklable: a
  module-level function or an instance of a module-level class, not a lambda or a function
  defined inside another function. Scripts that use it need the usual
  ``if __name__ == "__main__":`` guard. The pool replaces a worker that dies and stops a call
  that runs past the timeout; a plain ``Executor`` can do neither.
* :class:`RayBackend`: Ray core tasks (``executor="ray"`` or a cluster address such as
  ``"ray://head:10001"`` or ``"auto"``). Ray pickles with cloudpickle, so lambdas and functions
  of the driver script work; a function from another module is pickled by reference, so that
  module must be importable on the workers (ship it with a ``runtime_env``, or call
  ``ray.cloudpickle.register_pickle_by_value(module)``). Workers must also be able to import
  :mod:`subset_rl` (true on a local instance; on a remote cluster install it there).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, as_completed
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = [
    "Backend",
    "Outcome",
    "PoolBackend",
    "ProcessPool",
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
    if isinstance(value, bool | np.bool_):
        return (
            math.nan,
            f"returned bool {bool(value)}; expected a real scalar (a bool is not a value)",
        )
    if not isinstance(value, numbers.Real):
        return math.nan, f"returned {type(value).__name__} {value!r:.60}; expected a real scalar"
    out = float(value)
    if not math.isfinite(out):
        return math.nan, f"returned {out}; expected a finite value"
    return out, None


def _failure(e: BaseException, keep: bool) -> Outcome:
    return Outcome(
        math.nan,
        f"raised {type(e).__name__}: {e}",
        "".join(traceback.format_exception(type(e), e, e.__traceback__)),
        e if keep else None,
    )


#: ``before(lo, hi)``: a call of ``f`` on rows ``lo:hi`` starts; ``after(lo, outcomes)``: it ended.
Before = Callable[[int, int], None]
After = Callable[[int, list[Outcome]], None]


def _batched_values(values: Any, m: int, shape: tuple[int, ...]) -> list[Outcome]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "iuf":
        kind = f"dtype {arr.dtype}" if arr.dtype != object else type(values).__name__
        msg = f"returned {kind}; expected {m} real values (shape ({m},))"
        return [Outcome(math.nan, msg)] * m
    if arr.shape != (m,):
        msg = f"returned shape {arr.shape} for a batch of shape {shape}; expected ({m},)"
        return [Outcome(math.nan, msg)] * m
    return [
        Outcome(float(v))
        if math.isfinite(v)
        else Outcome(math.nan, f"returned {v}; expected a finite value")
        for v in arr.astype(np.float64).tolist()
    ]


def evaluate_chunk(
    f: Callable[[Any], Any],
    rows: np.ndarray,
    batched: bool,
    device: str,
    keep_exceptions: bool = False,
    before: Before | None = None,
    after: After | None = None,
) -> list[Outcome]:
    """Evaluates ``f`` on each row of ``rows`` and never raises for a failing subset.

    A bool, a complex number, a string or an array of size other than 1 is a failure, never
    cast; so are NaN and inf. Only ``Exception`` is caught: ``KeyboardInterrupt`` and
    ``SystemExit`` propagate (the outcomes already reported through ``after`` are kept by the
    caller).

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
        before: Called with ``(lo, hi)`` before each call of ``f`` on rows ``lo:hi``.
        after: Called with ``(lo, outcomes)`` after each call of ``f``.

    Returns:
        One :class:`Outcome` per row, in order.
    """
    rows = np.asarray(rows, dtype=np.float64)

    def call(lo: int, hi: int) -> list[Outcome]:
        if before is not None:
            before(lo, hi)
        try:
            if batched:
                x = torch.as_tensor(rows[lo:hi], dtype=torch.float32, device=device)
                out = _batched_values(f(x), hi - lo, x.shape)
            else:
                out = [Outcome(*_scalar(f(rows[lo].copy())))]
        except Exception as e:
            out = [_failure(e, keep_exceptions)] * (hi - lo)
            if hi - lo > 1:
                return [o for i in range(lo, hi) for o in call(i, i + 1)]
        if after is not None:
            after(lo, out)
        return out

    m = rows.shape[0]
    if not batched:
        return [o for i in range(m) for o in call(i, i + 1)]
    return call(0, m) if m else []


def _split(rows: np.ndarray, chunk: int) -> list[np.ndarray]:
    return [rows[i : i + chunk] for i in range(0, rows.shape[0], chunk)]


#: Called with ``[(row index in the request, outcome), ...]`` as evaluations complete.
Report = Callable[[list[tuple[int, Outcome]]], None]


class Backend(Protocol):
    """What the evaluator needs from a backend."""

    #: Number of parallel workers (1 for serial).
    workers: int

    def evaluate(self, rows: np.ndarray, report: Report | None = None) -> list[Outcome]:
        """One outcome per row of the ``(m, n)`` array ``rows``, in order; each outcome is also
        passed to ``report`` as soon as it is known (so that an interruption loses none)."""

    def close(self) -> None:
        """Releases what the backend started (pools, a Ray instance)."""


def _reporter(report: Report | None, offset: int) -> After | None:
    if report is None:
        return None

    def after(lo: int, out: list[Outcome]) -> None:
        report([(offset + lo + j, o) for j, o in enumerate(out)])

    return after


class SerialBackend:
    """Evaluates in this process.

    A ``timeout`` cannot be enforced here (a call in this process cannot be stopped from the
    outside), so :func:`~subset_rl.optimize.optimize` refuses one with this backend.

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

    def evaluate(self, rows: np.ndarray, report: Report | None = None) -> list[Outcome]:
        """See :class:`Backend`."""
        size = self.chunk or max(rows.shape[0], 1)
        out: list[Outcome] = []
        for lo in range(0, rows.shape[0], size):
            after = _reporter(report, lo)
            out += evaluate_chunk(
                self.f, rows[lo : lo + size], self.batched, self.device, True, after=after
            )
        return out

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------- local processes
class _Unloadable:
    """Stands in for an objective that cannot be unpickled in a worker: every call fails."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __call__(self, z: Any) -> float:
        raise RuntimeError(self.why)


def _worker_main(conn: Connection) -> None:
    """Loop of a :class:`ProcessPool` worker process.

    Messages in: ``("objective", token, payload, batched, device)``, ``("task", rows)``,
    ``("stop",)``. Out, for a task: ``("start", lo, hi)`` before each call of the objective,
    ``("result", lo, outcomes)`` after it, then ``("end", next_row)``, or ``("interrupted",)``
    when the objective raised ``KeyboardInterrupt``.
    """
    torch.set_num_threads(1)  # one process per core; no oversubscription
    parent = os.getppid()

    def watch_parent() -> None:  # a parent killed by SIGKILL leaves no one to stop a busy worker
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    job: tuple[Any, bool, str] = (_Unloadable("no objective was sent"), False, "cpu")
    current = [0, 0]  # rows of the call running (lo == hi: none)

    def before(lo: int, hi: int) -> None:
        current[:] = [lo, hi]
        conn.send(("start", lo, hi))

    def after(lo: int, out: list[Outcome]) -> None:
        current[:] = [lo + len(out), lo + len(out)]
        conn.send(("result", lo, out))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except KeyboardInterrupt:  # Ctrl-C reaches the process group: the parent decides
            continue
        if msg[0] == "stop":
            return
        if msg[0] == "objective":
            try:
                f = pickle.loads(msg[2])
            except Exception as e:
                f = _Unloadable(
                    f"the objective cannot be unpickled in the worker process: "
                    f"{type(e).__name__}: {e}"
                )
            job = (f, msg[3], msg[4])
            continue
        rows = msg[1]
        current[:] = [0, 0]
        try:
            evaluate_chunk(job[0], rows, job[1], job[2], before=before, after=after)
            conn.send(("end", rows.shape[0]))
        except KeyboardInterrupt:
            conn.send(("interrupted",))
        except BaseException as e:  # SystemExit and the like in the objective: a failure
            lo, hi = current
            if hi > lo:
                conn.send(("result", lo, [_failure(e, False)] * (hi - lo)))
            conn.send(("end", hi))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker process of a :class:`ProcessPool` and what it is doing."""

    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child,), name="subset-rl-worker")
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.token: int | None = None
        self.piece: tuple[int, int, int] | None = None  # rows lo:hi of the request, attempt
        self.call: tuple[int, int, float] | None = None  # rows of the call running, its start

    def send(self, msg: tuple[Any, ...]) -> bool:
        try:
            self.conn.send(msg)
        except (OSError, EOFError):
            return False
        return True

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        self.send(("stop",))
        self.process.join(2)
        self.kill()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.send(("stop",))
    for w in workers:
        w.process.join(2)
        w.kill()


class ProcessPool:
    """Local worker processes (``spawn``) kept alive across :func:`~subset_rl.optimize.optimize`
    calls, so that their start-up (a Python interpreter importing torch, about a second each) is
    paid once.

    Use it as a context manager and pass it as ``executor``::

        with ProcessPool(8) as pool:
            for seed in range(10):
                optimize(f, n, k, budget=200, executor=pool, seed=seed)

    ``executor="process"`` creates one for a single call. Each worker runs one task at a time
    and reports the start and the result of every call of the objective, so that:

    * a worker that dies (``os._exit``, a segfault, the OOM killer) is replaced by a new
      process; the subset it was evaluating is tried again up to ``retries`` times (in a fresh
      worker) and then becomes a failure naming the exit code or signal; the other subsets of the
      request are evaluated as usual;
    * with a ``timeout``, a call running longer is stopped by killing its worker (replaced as
      above) and its subset becomes a failure; a timeout is not retried;
    * on ``KeyboardInterrupt`` the busy workers are killed (and restarted on the next use).

    Args:
        workers: Number of processes (default: the CPU count).
    """

    _tokens = itertools.count(1)

    def __init__(self, workers: int | None = None) -> None:
        import multiprocessing

        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1
        ):
            raise ValueError(f"workers: expected an int >= 1 or None, found {workers!r}")
        self.workers = int(workers or os.cpu_count() or 1)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs = [_Worker(self._ctx) for _ in range(self.workers)]
        self._closed = False
        self._lost = 0
        self._finalizer = weakref.finalize(self, _stop_all, self._procs)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"ProcessPool(workers={self.workers}, {state})"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stops the worker processes (idempotent)."""
        self._closed = True
        self._finalizer()

    def new_token(self) -> int:
        """A fresh id for an objective sent to the workers."""
        return next(self._tokens)

    def _replace(self, i: int) -> None:
        self._procs[i].kill()
        self._procs[i] = _Worker(self._ctx)

    def run(
        self,
        token: int,
        payload: bytes,
        rows: np.ndarray,
        *,
        batched: bool,
        device: str,
        chunk: int,
        timeout: float | None = None,
        retries: int = 2,
        report: Report | None = None,
    ) -> list[Outcome]:
        """Evaluates the objective ``payload`` (pickled, identified by ``token``) on ``rows``,
        ``chunk`` rows per task; one outcome per row, in order. See the class for failures."""
        if self._closed:
            raise ValueError("executor: this ProcessPool is closed")
        m = rows.shape[0]
        outs: list[Outcome | None] = [None] * m
        queue: deque[tuple[int, int, int]] = deque(
            (lo, min(lo + chunk, m), 0) for lo in range(0, m, chunk)
        )

        def record(lo: int, out: list[Outcome]) -> None:
            for j, o in enumerate(out):
                outs[lo + j] = o
            if report is not None:
                report([(lo + j, o) for j, o in enumerate(out)])

        def release(w: _Worker, culprit: tuple[int, int] | None) -> None:
            """Requeues the unfinished rows of ``w``'s piece after ``culprit``."""
            assert w.piece is not None
            lo, hi, _ = w.piece
            start = culprit[1] if culprit else lo
            rest = [i for i in range(start, hi) if outs[i] is None]
            if rest:
                queue.appendleft((rest[0], hi, 0))
            w.piece, w.call = None, None

        try:
            while queue or any(w.piece for w in self._procs):
                for i, w in enumerate(self._procs):
                    if w.piece is not None or not queue:
                        continue
                    if not w.process.is_alive():
                        self._replace(i)
                        w = self._procs[i]
                    if w.token != token:
                        if not w.send(("objective", token, payload, batched, device)):
                            continue
                        w.token = token
                    lo, hi, attempt = queue.popleft()
                    if not w.send(("task", rows[lo:hi])):
                        queue.appendleft((lo, hi, attempt))
                        continue
                    w.piece, w.call = (lo, hi, attempt), None
                busy = [w for w in self._procs if w.piece is not None]
                if not busy:  # every send failed (workers dying): replace them, try again
                    time.sleep(0.01)
                    continue
                wait_for: float | None = None
                if timeout is not None:
                    starts = [w.call[2] for w in busy if w.call is not None]
                    if starts:
                        wait_for = max(0.0, min(starts) + timeout - time.monotonic()) + 1e-3
                objects: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                mp_wait(objects, timeout=wait_for)
                for i, w in enumerate(self._procs):
                    if w.piece is not None:
                        self._poll(i, w, record, release, timeout, retries, queue)
        except BaseException:
            for i, w in enumerate(self._procs):
                if w.piece is not None:
                    w.piece = w.call = None
                    self._replace(i)
            raise
        if any(o is None for o in outs):  # cannot happen: every row ends in an outcome
            raise RuntimeError("ProcessPool: a row was left without an outcome")
        return outs  # type: ignore[return-value]

    def _poll(
        self,
        i: int,
        w: _Worker,
        record: Callable[[int, list[Outcome]], None],
        release: Callable[[_Worker, tuple[int, int] | None], None],
        timeout: float | None,
        retries: int,
        queue: deque[tuple[int, int, int]],
    ) -> None:
        """Reads what worker ``i`` sent; handles its death and its timeout."""
        assert w.piece is not None
        lo = w.piece[0]
        while w.piece is not None:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "start":
                w.call = (lo + msg[1], lo + msg[2], time.monotonic())
            elif msg[0] == "result":
                record(lo + msg[1], msg[2])
                w.call = None
            elif msg[0] == "end":
                release(w, None)
            elif msg[0] == "interrupted":
                w.piece = w.call = None
                raise KeyboardInterrupt("the objective raised KeyboardInterrupt in a worker")
        if w.piece is None:
            self._lost = 0
            return
        if not w.process.is_alive():
            how = _describe_exit(w.process.exitcode)
            if w.call is None:  # died outside the objective
                self._lost += 1
                release(w, None)
                self._replace(i)
                if self._lost > 3:
                    raise RuntimeError(
                        f"the pool's worker processes keep dying outside the objective ({how}); "
                        "their stderr says why (a script that starts a pool needs an "
                        "`if __name__ == '__main__':` guard)"
                    )
                return
            a, b, _ = w.call
            attempt = w.piece[2]
            release(w, (a, b))
            if attempt < retries:
                queue.appendleft((a, b, attempt + 1))
            else:
                tries = f" (in each of {attempt + 1} attempts)" if attempt else ""
                msg = f"the worker process died ({how}) while evaluating this subset{tries}"
                record(a, [Outcome(math.nan, msg)] * (b - a))
            self._replace(i)
        elif timeout is not None and w.call is not None:
            a, b, t0 = w.call
            if time.monotonic() - t0 > timeout:
                w.process.kill()
                w.process.join(5)
                release(w, (a, b))
                msg = f"timed out after {timeout:g} s (its worker process was stopped)"
                record(a, [Outcome(math.nan, msg)] * (b - a))
                self._replace(i)


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
    """Evaluates on a :class:`ProcessPool` (created here for ``executor="process"``, or passed
    in and then left running) or on any :class:`concurrent.futures.Executor`, chunk by chunk.

    A plain :class:`~concurrent.futures.Executor` cannot stop a call nor replace a dead worker:
    a ``BrokenExecutor`` (e.g. a ``ProcessPoolExecutor`` whose worker died) makes the subsets
    of the affected tasks failures, and no timeout can be given.

    Args:
        f: The objective.
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs (in the workers).
        workers: Number of processes of a pool created here (default: CPU count).
        chunk: Rows per task (default: the request split evenly over the workers).
        executor: A :class:`ProcessPool` or an executor to use (not shut down by
            :meth:`close`); ``None`` creates a :class:`ProcessPool`.
        timeout: Seconds a call of ``f`` may run (:class:`ProcessPool` only).
        retries: How often a subset whose evaluation killed its worker is tried again.
    """

    def __init__(
        self,
        f: Callable[[Any], Any],
        batched: bool,
        device: str,
        workers: int | None = None,
        chunk: int | None = None,
        executor: Executor | ProcessPool | None = None,
        timeout: float | None = None,
        retries: int = 2,
    ) -> None:
        self.f, self.batched, self.device, self.chunk = f, batched, device, chunk
        self.timeout, self.retries = timeout, retries
        self._own = executor is None
        self.pool: Executor | ProcessPool
        if executor is None or isinstance(executor, ProcessPool):
            self.payload = check_picklable(
                f, 'With executor="process"' if executor is None else "With a ProcessPool"
            )
            self.pool = ProcessPool(workers) if executor is None else executor
            self.workers = workers or self.pool.workers
            self.token = self.pool.new_token()
        else:
            if isinstance(executor, ProcessPoolExecutor):
                check_picklable(f, "With a ProcessPoolExecutor")
            self.workers = workers or getattr(executor, "_max_workers", None) or 1
            self.pool = executor

    def evaluate(self, rows: np.ndarray, report: Report | None = None) -> list[Outcome]:
        """See :class:`Backend`."""
        chunk = _chunk_size(rows.shape[0], self.workers, self.chunk)
        if isinstance(self.pool, ProcessPool):
            return self.pool.run(
                self.token,
                self.payload,
                rows,
                batched=self.batched,
                device=self.device,
                chunk=chunk,
                timeout=self.timeout,
                retries=self.retries,
                report=report,
            )
        parts = _split(rows, chunk)
        futures = {}
        out: list[list[Outcome]] = [[] for _ in parts]
        offsets = list(range(0, rows.shape[0], chunk))
        for j, p in enumerate(parts):
            try:
                futures[self.pool.submit(evaluate_chunk, self.f, p, self.batched, self.device)] = j
            except BrokenExecutor as e:
                out[j] = self._broken(e, len(p))
                if report is not None:
                    report([(offsets[j] + i, o) for i, o in enumerate(out[j])])
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                out[j] = fut.result()
            except BrokenExecutor as e:
                out[j] = self._broken(e, len(parts[j]))
            if report is not None:
                report([(offsets[j] + i, o) for i, o in enumerate(out[j])])
        return [o for part in out for o in part]

    @staticmethod
    def _broken(e: BaseException, m: int) -> list[Outcome]:
        msg = (
            f"the executor broke ({type(e).__name__}: {e}) while evaluating this subset's task; "
            "a concurrent.futures executor cannot be repaired, pass a "
            "subset_rl.optimize.ProcessPool to have dead workers replaced"
        )
        return [Outcome(math.nan, msg)] * m

    def close(self) -> None:
        """Stops the pool if it was created here."""
        if self._own:
            self.pool.close()  # type: ignore[union-attr]


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
    local instance when ``address`` is ``None``, else the running cluster at ``address``) and
    :meth:`close` shuts it down again; an instance that was already running is used as is and
    left running.

    At most ``workers`` tasks are in flight at once. A task whose worker dies
    (``WorkerCrashedError`` and other Ray system errors) is retried by Ray ``retries`` times;
    if it still fails and it held several subsets, each of them is tried again alone, so that
    only the subset that kills its worker becomes a failure. With a ``timeout``, each task
    holds one call of the objective (one subset, or one batch when batched) and is cancelled
    (its worker killed) once it has run that long, counted from its submission (including
    Ray's scheduling, so keep ``workers`` at most the free CPUs); a timeout is not retried.

    Args:
        f: The objective (pickled with cloudpickle: lambdas and closures work).
        batched: Whether ``f`` takes whole batches.
        device: Torch device of batched inputs (in the workers).
        address: Cluster address for ``ray.init`` (``None``: start a local instance).
        workers: Number of tasks in flight (default: the cluster's CPU count).
        chunk: Rows per task (overrides the split by ``workers``).
        timeout: Seconds a task may run.
        retries: Ray's ``max_retries`` for a task whose worker died.
    """

    def __init__(
        self,
        f: Callable[[Any], Any],
        batched: bool,
        device: str,
        address: str | None = None,
        workers: int | None = None,
        chunk: int | None = None,
        timeout: float | None = None,
        retries: int = 2,
    ) -> None:
        ray = self._ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
            self._started = True
        self.batched, self.device, self.chunk = batched, device, chunk
        self.timeout, self.retries = timeout, retries
        self.workers = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        self._f = ray.put(f)
        self._task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(
            evaluate_chunk
        )

    def evaluate(self, rows: np.ndarray, report: Report | None = None) -> list[Outcome]:
        """See :class:`Backend`."""
        ray = self._ray
        m = rows.shape[0]
        if self.timeout is not None and not self.batched:
            chunk = 1
        else:
            chunk = _chunk_size(m, self.workers, self.chunk)
        outs: list[Outcome | None] = [None] * m
        queue: deque[tuple[int, int]] = deque((lo, min(lo + chunk, m)) for lo in range(0, m, chunk))
        inflight: dict[Any, tuple[int, int, float]] = {}

        def record(lo: int, out: list[Outcome]) -> None:
            for j, o in enumerate(out):
                outs[lo + j] = o
            if report is not None:
                report([(lo + j, o) for j, o in enumerate(out)])

        try:
            while queue or inflight:
                while queue and len(inflight) < self.workers:
                    lo, hi = queue.popleft()
                    ref = self._task.remote(self._f, rows[lo:hi], self.batched, self.device)
                    inflight[ref] = (lo, hi, time.monotonic())
                wait_for = None
                if self.timeout is not None:
                    first = min(t0 for _, _, t0 in inflight.values())
                    wait_for = max(0.0, first + self.timeout - time.monotonic()) + 1e-3
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_for)
                for ref in done:
                    lo, hi, _ = inflight.pop(ref)
                    try:
                        record(lo, ray.get(ref))
                    except ray.exceptions.TaskCancelledError as e:  # not by us: Ctrl-C in f
                        raise KeyboardInterrupt(f"a Ray task was interrupted: {e}") from e
                    except ray.exceptions.RayTaskError as e:  # BaseException in the objective
                        record(lo, [Outcome(math.nan, f"raised {e.cause!r}")] * (hi - lo))
                    except ray.exceptions.RayError as e:  # the worker or its node died
                        if hi - lo > 1:
                            queue.extendleft((i, i + 1) for i in reversed(range(lo, hi)))
                            continue
                        msg = (
                            f"its Ray task failed ({type(e).__name__}: the worker died) in each "
                            f"of {self.retries + 1} attempts"
                        )
                        record(lo, [Outcome(math.nan, msg)])
                if self.timeout is not None:
                    now = time.monotonic()
                    for ref, (lo, hi, t0) in list(inflight.items()):
                        if now - t0 > self.timeout:
                            ray.cancel(ref, force=True)
                            del inflight[ref]
                            msg = f"timed out after {self.timeout:g} s (its Ray task was cancelled)"
                            record(lo, [Outcome(math.nan, msg)] * (hi - lo))
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        return outs  # type: ignore[return-value]

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
    timeout: float | None = None,
    retries: int = 2,
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
        timeout: Seconds a call of ``f`` may run (process pools and Ray only).
        retries: How often a subset whose evaluation killed its worker is tried again.

    Returns:
        The backend; call its ``close()`` when done.
    """
    validate_executor(executor)
    if executor is None or executor == "serial":
        return SerialBackend(f, batched, device, chunk)
    if isinstance(executor, Executor | ProcessPool):
        return PoolBackend(f, batched, device, workers, chunk, executor, timeout, retries)
    if executor == "process":
        return PoolBackend(f, batched, device, workers, chunk, None, timeout, retries)
    address = None if executor == "ray" else str(executor)
    return RayBackend(f, batched, device, address, workers, chunk, timeout, retries)


def is_ray_address(value: object) -> bool:
    """Whether ``value`` reads as a Ray cluster address."""
    return isinstance(value, str) and (
        value == "auto" or value.startswith("ray://") or (":" in value and " " not in value)
    )


def describe_executor(executor: object) -> str:
    """A short name for an ``executor`` argument (for messages and results)."""
    if isinstance(executor, Executor | ProcessPool):
        return type(executor).__name__
    if executor is None or executor in ("serial", "process", "ray"):
        return str(executor or "serial")
    return f"ray({executor})"


def validate_executor(executor: object) -> None:
    """Raises ``TypeError``/``ValueError`` for an ``executor`` argument that cannot work."""
    if isinstance(executor, ProcessPool) and executor.closed:
        raise ValueError("executor: this ProcessPool is closed")
    if executor is None or isinstance(executor, Executor | ProcessPool):
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
