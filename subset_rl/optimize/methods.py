r"""The search methods. Each maximizes through an :class:`~.evaluation.Evaluator` until it is done.

========== ======================================================================= ==============
method     what it does                                                             ``samples``
========== ======================================================================= ==============
hybrid     the default: learn a :class:`~subset_rl.KSubsetPolicy` (CEM on exact     swaps per
           samples, or Adam / natural gradient), then iterated local search with    request (8)
           swap moves from its best subset (:func:`run_hybrid`)
sfess      gradient ascent on :math:`E_{z\sim p_l}[f(z)]` over the logits of a      subsets per
           :class:`~subset_rl.KSubsetPolicy`, with the SFESS leave-one-out          step (8)
           estimator (:func:`~subset_rl.estimators.sfess_surrogate`) and Adam
random     uniformly random k-subsets                                               per request
                                                                                    (64)
greedy     forward selection: add the item with the largest value, ``k`` times;     (unused)
           ``n k - k (k - 1) / 2`` evaluations, on subsets of sizes 1..k
annealing  simulated annealing with swap moves (one out, one in), parallel          chains (8)
           chains, geometric cooling over the budget
cem        cross-entropy method: sample a :class:`~subset_rl.KSubsetPolicy`, move   population
           its marginals toward the elite frequencies                               (64)
qr         QR column pivoting on ``basis.T`` (sensor placement); one evaluation     (unused)
========== ======================================================================= ==============

Method options (``optimize(..., options={...})``):

* ``hybrid``: ``explore`` (0.5: share of the budget for phase 1, which also ends once a request
  brings no new subset), ``step`` (``"cem"``; ``"adam"``, ``"natural"``), ``population`` (64,
  CEM samples per request), ``elite_frac`` (0.1), ``smoothing`` (0.7), ``lr`` (0.2, Adam),
  ``kl_step`` (0.1, natural gradient: trust region as a share of the entropy), ``learn_swaps``
  (True: rank swaps by gains fitted online), ``logits`` (``None``; a warm start: ``n`` finite
  logits, e.g. a trained policy's, whose mode is evaluated first and from which phase 1 starts
  and phase 2 ranks its swaps; with ``explore=0`` the run is a swap search from that mode),
  ``restart`` (3: a new local search from a uniformly random subset once that many full cycles
  of kick sizes found nothing better than the current local optimum; ``0``/``None``: never).
  Measured in ``benchmarks/bench_search.py``.
* ``sfess``: ``lr`` (0.2, Adam step on the logits), ``baseline`` (``"loo"`` or ``"none"``).
  Small requests (8 samples) give many gradient steps per budget; tuned with
  ``examples/compare_optimizers.py`` (8 samples / lr 0.2 beat 16 / 0.5 and 32 / 0.1 there).
* ``annealing``: ``t0`` (initial temperature; default: the standard deviation of the chains'
  random starting values), ``t_final`` (final temperature; default ``t0 * 1e-3``).
* ``cem``: ``elite_frac`` (0.1), ``smoothing`` (0.7: weight of the elite frequencies in the new
  marginals), ``min_prob`` (1e-3: marginals are kept in ``[min_prob, 1 - min_prob]`` so no item
  is ruled out for good).
* ``qr``: ``basis`` (required): array of shape ``(n, r)`` whose rows describe the items, e.g.
  POD modes; with ``k > r`` the later pivots carry little meaning, so pass at least ``k`` modes.
* ``random``, ``greedy``: none.

Failed evaluations (``on_error="skip"``) count as the worst outcome: greedy, CEM and the hybrid
never pick them, annealing and the swap search reject the move, and SFESS gives them the lowest
value of their request.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..distribution import KSubsetPolicy
from ..estimators import rank_utilities, sfess_surrogate
from ..poisson_binomial import log_normalizer
from ..poisson_binomial import marginals as cp_marginals
from .evaluation import Evaluator

__all__ = ["METHODS", "MethodSpec", "Run", "greedy_evaluations"]


@dataclass
class Run:
    """Everything a method needs.

    Attributes:
        ev: The evaluator (the only way to call the objective).
        n: Number of items.
        k: Subset size.
        samples: Subsets per request (the method's meaning, see the module table).
        device: Torch device of the method's tensors.
        rng: NumPy generator.
        generator: Torch generator on ``device``.
        options: The method's options, defaults filled in.
        notes: Messages the method adds to the result's ``message``.
    """

    ev: Evaluator
    n: int
    k: int
    samples: int
    device: torch.device
    rng: np.random.Generator
    generator: torch.Generator
    options: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        """float64 on CPU (exact and cheap at these sizes), float32 on accelerators."""
        return torch.float64 if self.device.type == "cpu" else torch.float32


def _uniform_subsets(rng: np.random.Generator, n: int, k: int, m: int) -> np.ndarray:
    """``m`` uniformly random k-hot rows (top-k of i.i.d. uniform keys)."""
    keys = rng.random((m, n))
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
    out = np.zeros((m, n), dtype=np.int8)
    np.put_along_axis(out, idx, 1, axis=1)
    return out


# ---------------------------------------------------------------------- random search
def run_random(run: Run) -> None:
    """Uniform random search: requests of ``samples`` random k-subsets until done."""
    while not run.ev.done:
        run.ev.evaluate(_uniform_subsets(run.rng, run.n, run.k, run.samples))


# ---------------------------------------------------------------------- greedy
def greedy_evaluations(n: int, k: int) -> int:
    """Evaluations greedy forward selection needs: ``n + (n - 1) + ... + (n - k + 1)``."""
    return sum(n - j for j in range(k))


def run_greedy(run: Run) -> None:
    """Forward selection: ``k`` steps, each adding the item whose addition scores best.

    Step ``j`` evaluates every current set plus one item (subsets of size ``j``), so ``f`` must
    accept indicator vectors with fewer than ``k`` ones. For monotone submodular ``f`` the
    result is within ``1 - 1/e`` of the optimum (Nemhauser, Wolsey & Fisher, 1978). Ties go to
    the lowest index. If the budget cannot cover a step, greedy stops there (with a warning) and
    the result has no subset of size ``k`` unless one was reached.
    """
    ev, n, k = run.ev, run.n, run.k
    need = greedy_evaluations(n, k)
    if need > ev.remaining:
        msg = (
            f"greedy forward selection needs {need} evaluations for n={n}, k={k} "
            f"(n + (n-1) + ... + (n-k+1)), found budget={ev.budget}; it will stop before "
            f"choosing all {k} items"
        )
        warnings.warn(msg, UserWarning, stacklevel=4)
    chosen: list[int] = []
    for step in range(k):
        if ev.done:
            run.notes.append(
                f"greedy stopped after choosing {step} of {k} items ({ev.stop_reason}); it "
                f"needs {need} evaluations"
            )
            return
        candidates = [i for i in range(n) if i not in chosen]
        rows = np.zeros((len(candidates), n), dtype=np.int8)
        rows[:, chosen] = 1
        rows[np.arange(len(candidates)), candidates] = 1
        req = ev.evaluate(rows)
        if not req.complete:
            run.notes.append(
                f"greedy stopped in step {step + 1} of {k} ({len(chosen)} items chosen): the "
                f"budget of {ev.budget} evaluations is below the {need} it needs"
            )
            ev.stop(run.notes[-1])
            return
        ok = ~np.isnan(req.values)
        if not ok.any():
            run.notes.append(f"greedy stopped in step {step + 1}: every candidate failed")
            ev.stop(run.notes[-1])
            return
        chosen.append(candidates[int(np.argmax(np.where(ok, req.values, -np.inf)))])
    run.notes.append(f"greedy finished: {k} items chosen with {ev.n_evaluations} evaluations")
    ev.stop(run.notes[-1])


# ---------------------------------------------------------------------- simulated annealing
def run_annealing(run: Run) -> None:
    """Simulated annealing with swap moves on ``samples`` independent chains.

    Each request proposes one swap per chain (drop a random chosen item, add a random unchosen
    one); a chain accepts with probability ``min(1, exp(delta / T))``. The temperature cools
    geometrically from ``t0`` to ``t_final`` as the budget is spent.
    """
    ev, n, k, rng = run.ev, run.n, run.k, run.rng
    chains = _uniform_subsets(rng, n, k, run.samples)
    req = ev.evaluate(chains)
    current = np.where(req.evaluated & ~req.failed, req.values, -np.inf)
    t0 = run.options["t0"]
    if t0 is None:
        finite = current[np.isfinite(current)]
        spread = float(finite.std()) if finite.size >= 2 else 0.0
        t0 = spread if spread > 0 else 1.0
    t_final = run.options["t_final"] if run.options["t_final"] is not None else t0 * 1e-3
    if t_final > t0:
        raise ValueError(f"options['t_final']: expected <= t0={t0:g}, found {t_final:g}")
    if k == n:
        ev.stop("only one subset exists (k = n)")
        return
    while not ev.done:
        temp = t0 * (t_final / t0) ** min(ev.fraction_used, 1.0)
        proposals = chains.copy()
        for row in proposals:
            out = rng.choice(np.flatnonzero(row))
            into = rng.choice(np.flatnonzero(row == 0))
            row[out], row[into] = 0, 1
        req = ev.evaluate(proposals)
        for c in range(run.samples):
            if not req.evaluated[c] or req.failed[c]:
                continue
            delta = req.values[c] - current[c]
            if delta >= 0 or rng.random() < math.exp(delta / temp):
                chains[c], current[c] = proposals[c], req.values[c]


# ---------------------------------------------------------------------- CEM and SFESS
def _logit(p: torch.Tensor) -> torch.Tensor:
    # torch.logit on float64 CPU tensors takes ~15 ms per call in torch 2.13; this does not.
    return torch.log(p) - torch.log1p(-p)


def fit_logits(
    target: torch.Tensor, k: int, init: torch.Tensor | None = None, iterations: int = 10
) -> torch.Tensor:
    r"""Logits whose k-subset marginals approximate ``target`` (``sum(target) = k``).

    The fixed-point iteration :math:`l \leftarrow l + \operatorname{logit}(t) -
    \operatorname{logit}(\pi(l))` of Chen, Dempster & Liu (1994) for conditional Poisson
    sampling, with the exact marginals :math:`\pi` of :func:`subset_rl.marginals`.

    Args:
        target: ``(n,)`` marginals in ``(0, 1)``.
        k: Subset size.
        init: Starting logits (default ``logit(target)``).
        iterations: Number of fixed-point steps.

    Returns:
        ``(n,)`` logits (no gradient).
    """
    with torch.no_grad():
        eps = torch.finfo(target.dtype).eps
        goal = _logit(target.clamp(eps, 1 - eps))
        logits = goal.clone() if init is None else init.detach().clone()
    for _ in range(iterations):
        pi = cp_marginals(logits, k).detach()
        with torch.no_grad():
            logits = logits + goal - _logit(pi.clamp(eps, 1 - eps))
            logits = logits - logits.mean()
    return logits


#: CEM stops once all elites equal the distribution's mode this many requests in a row.
_CEM_PATIENCE = 5


def _check_cem_options(elite_frac: float, smoothing: float, min_prob: float) -> None:
    """The CEM options' ranges (shared by ``cem`` and the hybrid's phase 1)."""
    if not 0 < elite_frac <= 1:
        raise ValueError(f"options['elite_frac']: expected a value in (0, 1], found {elite_frac}")
    if not 0 < smoothing <= 1:
        raise ValueError(f"options['smoothing']: expected a value in (0, 1], found {smoothing}")
    if not 0 < min_prob < 0.5:
        raise ValueError(f"options['min_prob']: expected a value in (0, 0.5), found {min_prob}")


def _cem_update(
    dist: KSubsetPolicy,
    z: torch.Tensor,
    values: np.ndarray,
    k: int,
    elite_frac: float,
    smoothing: float,
    min_prob: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CEM step: logits whose marginals move toward the elite frequencies.

    The best ``ceil(elite_frac * len(values))`` rows of ``z`` (NaN values never) give the elite
    frequencies ``q``; the new marginals ``(1 - smoothing) pi + smoothing q``, clipped to
    ``[min_prob, 1 - min_prob]``, are matched by :func:`fit_logits` (3 steps from the current
    logits). Needs at least one finite value.

    Returns:
        The new logits and ``q``.
    """
    ok = ~np.isnan(values)
    n_elite = max(1, math.ceil(elite_frac * len(values)))
    order = np.argsort(-np.where(ok, values, -np.inf), kind="stable")
    elite = order[: min(n_elite, int(ok.sum()))]
    q = z[torch.as_tensor(elite, device=z.device)].mean(0)
    target = ((1 - smoothing) * dist.marginals.detach() + smoothing * q).clamp(
        min_prob, 1 - min_prob
    )
    return fit_logits(target, k, init=dist.logits.detach(), iterations=3), q


def run_cem(run: Run) -> np.ndarray:
    """Cross-entropy method over k-subsets with a :class:`~subset_rl.KSubsetPolicy`.

    Each request draws ``samples`` exact samples; the top ``elite_frac`` (failures excluded)
    give elite frequencies ``q`` (summing to ``k``); the new marginals are
    ``(1 - smoothing) pi + smoothing q``, clipped to ``[min_prob, 1 - min_prob]``, and the
    logits are refitted to them with :func:`fit_logits`. The run stops (converged) once every
    elite is the distribution's mode (the top-k of the logits) for 5 requests in a row.

    Returns:
        The final marginals.
    """
    ev, k, opts = run.ev, run.k, run.options
    elite_frac, smoothing, min_prob = opts["elite_frac"], opts["smoothing"], opts["min_prob"]
    _check_cem_options(elite_frac, smoothing, min_prob)
    logits = torch.zeros(run.n, dtype=run.dtype, device=run.device)
    streak = 0
    while not ev.done:
        dist = KSubsetPolicy(logits, k)
        z = dist.sample((run.samples,), generator=run.generator)
        req = ev.evaluate(z)
        if not req.complete:
            break
        if np.isnan(req.values).all():
            continue
        logits, q = _cem_update(dist, z, req.values, k, elite_frac, smoothing, min_prob)
        streak = streak + 1 if bool((q == dist.mode).all()) else 0
        if streak >= _CEM_PATIENCE:
            ev.stop(
                f"converged: every CEM elite was the distribution's mode for {streak} "
                "consecutive requests"
            )
    return KSubsetPolicy(logits, k).marginals.detach().cpu().numpy().astype(np.float64)


def run_sfess(run: Run) -> np.ndarray:
    """Stochastic gradient ascent on the expected value with the SFESS(+LOO) estimator.

    The logits of a :class:`~subset_rl.KSubsetPolicy` (starting at zero: uniform) are updated by
    Adam with the gradient of :func:`~subset_rl.estimators.sfess_surrogate` on ``samples`` exact
    draws per request. Cached draws cost no budget but still inform the gradient.

    Returns:
        The final marginals.
    """
    ev, k, opts = run.ev, run.k, run.options
    lr, baseline = opts["lr"], opts["baseline"]
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"options['lr']: expected a positive number, found {lr!r}")
    if baseline not in ("loo", "none"):
        raise ValueError(f"options['baseline']: expected 'loo' or 'none', found {baseline!r}")
    if baseline == "loo" and run.samples < 2:
        raise ValueError(
            f"samples: the leave-one-out baseline needs samples >= 2, found {run.samples}"
        )
    logits = torch.zeros(run.n, dtype=run.dtype, device=run.device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=float(lr))
    while not ev.done:
        dist = KSubsetPolicy(logits, k)
        z = dist.sample((run.samples,), generator=run.generator)
        req = ev.evaluate(z)
        if not req.complete:
            break
        values = req.values
        ok = ~np.isnan(values)
        if not ok.any():
            continue
        values = np.where(ok, values, values[ok].min())
        rewards = torch.as_tensor(values, dtype=run.dtype, device=run.device)
        opt.zero_grad()
        (-sfess_surrogate(dist, z, rewards, baseline=baseline)).backward()
        opt.step()
    return KSubsetPolicy(logits.detach(), k).marginals.detach().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------- hybrid (the default)
def _rank_utilities(values: np.ndarray) -> np.ndarray:
    """:func:`~subset_rl.estimators.rank_utilities` of a 1-d array (NaN ranks last)."""
    return rank_utilities(torch.as_tensor(values, dtype=torch.float64)).numpy()


def fisher_vector_product(logits: torch.Tensor, k: int, v: torch.Tensor) -> torch.Tensor:
    r"""Exact :math:`F v` for the Fisher information :math:`F = \operatorname{Cov}(z)` of
    :class:`~subset_rl.KSubsetPolicy`.

    ``F`` is the Hessian of :math:`\log e_k(e^l)` (an exponential family), so ``F v`` is one
    Hessian-vector product: the gradient of :math:`\pi(l) \cdot v` by double backward through
    the exact normalizer. ``F 1 = 0`` (the size is fixed).
    """
    with torch.enable_grad():
        x = logits.detach().requires_grad_(True)
        (pi,) = torch.autograd.grad(log_normalizer(x, k), x, create_graph=True)
        (fv,) = torch.autograd.grad(pi @ v, x)
    return fv


def natural_direction(
    logits: torch.Tensor, k: int, g: torch.Tensor, iterations: int = 10, damping: float = 1e-3
) -> torch.Tensor:
    r"""Solves :math:`(F + \lambda I) d = g` by conjugate gradients with exact ``F v``.

    :math:`\lambda` is ``damping`` times the mean of the diagonal of ``F`` (the variances
    :math:`\pi_i(1-\pi_i)`), so the step stays finite where the distribution is near
    deterministic.
    """
    pi = cp_marginals(logits, k).detach()
    lam = damping * float((pi * (1 - pi)).mean()) + 1e-12
    d = torch.zeros_like(g)
    r = g.clone()
    p = r.clone()
    rr = float(r @ r)
    if rr == 0.0:
        return d
    for _ in range(iterations):
        ap = fisher_vector_product(logits, k, p) + lam * p
        pap = float(p @ ap)
        if pap <= 0:
            break
        alpha = rr / pap
        d = d + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        if rr_new <= 1e-20 * float(g @ g):
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return d


#: Marginals of the hybrid's CEM phase stay in [1e-3, 1 - 1e-3] (``cem``'s default min_prob).
_HYBRID_MIN_PROB = 1e-3


def run_hybrid(run: Run) -> np.ndarray:
    r"""Learn a k-subset distribution, then polish its best subsets with swaps (the default).

    Phase 1 (until ``explore`` of the budget is spent, or earlier once the distribution has
    concentrated so that a request brings no new subset) moves a
    :class:`~subset_rl.KSubsetPolicy` toward good subsets with one of three updates
    (``step``):

    * ``"cem"`` (default): ``population`` exact samples per request; the logits are refitted
      (:func:`fit_logits`, exact marginals) so that the marginals move a share ``smoothing``
      toward the frequencies of the best ``elite_frac`` of the request.
    * ``"adam"``: ``samples`` exact samples per request; Adam (``lr``) ascends the score-function
      estimate :math:`\sum_j u_j (z_j - \pi)` with NES rank utilities :math:`u_j`
      (:func:`~subset_rl.estimators.rank_utilities`).
    * ``"natural"``: the same estimate preconditioned by the exact Fisher information
      :math:`F = \operatorname{Cov}(z)` (conjugate gradients on exact Hessian-vector products
      of :math:`\log e_k`, :func:`natural_direction`), with a trust region on the exact KL
      divergence of a share ``kl_step`` of the current (exact) entropy per step.

    Phase 2 is an iterated local search from the best subset found (:func:`_swap_search`):
    one-out-one-in swaps proposed without repetition, ranked by the phase-1 logits plus an
    additive model of the swap gains fitted online (``learn_swaps``), ``samples`` per request;
    the best improving swap (or the combination of all disjoint improving swaps, when it is
    better) is taken; a local optimum is left by random kicks whose size grows while they fail,
    and after ``restart`` full cycles of kick sizes without improvement the search starts again
    from a uniformly random subset (the best subset so far is kept by the run, never lost).

    Why: a distribution over subsets finds the good region with few evaluations and no
    assumption on ``f`` (phase 1), and swaps exploit the structure greedy exploits (what an
    item adds *given* the others) without ever calling ``f`` on a subset of another size
    (phase 2). Measured against greedy, annealing and CEM on 8 problem families in
    ``benchmarks/bench_search.py`` (tables in ``examples/results/search/``). The three phase-1
    updates were compared there as well (budget 2000, 3 seeds, 7 families): ``"cem"`` was within
    0.5% of the best of the three on every family, ``"adam"`` 8% behind on coverage with pair
    bonuses, ``"natural"`` 3% behind on the QUBO (and the slowest). This is a search
    heuristic: the utilities and elites make no claim of unbiasedness (the ``sfess`` method
    keeps the unbiased estimator).

    Returns:
        The marginals of the phase-1 distribution.
    """
    ev, n, k, opts, m = run.ev, run.n, run.k, run.options, run.samples
    explore, step = opts["explore"], opts["step"]
    if isinstance(explore, bool) or not isinstance(explore, int | float) or not 0 <= explore <= 1:
        raise ValueError(f"options['explore']: expected a fraction in [0, 1], found {explore!r}")
    if step not in ("cem", "adam", "natural"):
        raise ValueError(f"options['step']: expected 'cem', 'adam' or 'natural', found {step!r}")
    for name in ("lr", "kl_step"):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"options[{name!r}]: expected a positive number, found {v!r}")
    restart = opts["restart"]
    if restart is not None and (
        isinstance(restart, bool) or not isinstance(restart, int) or restart < 0
    ):
        raise ValueError(
            f"options['restart']: expected an int >= 0 or None, found {restart!r}"
        )
    population = opts["population"]
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise ValueError(f"options['population']: expected an int >= 2, found {population!r}")
    elite_frac, smoothing = opts["elite_frac"], opts["smoothing"]
    _check_cem_options(elite_frac, smoothing, _HYBRID_MIN_PROB)
    if step != "cem" and m < 2:
        raise ValueError(
            f"samples: the hybrid method's {step!r} step ranks the samples of a request and "
            f"needs samples >= 2, found {m}"
        )
    logits = _warm_logits(opts["logits"], n, run)
    if k == n:
        ev.evaluate(np.ones((1, n), dtype=np.int8))
        ev.stop("only one subset exists (k = n)")
        return np.ones(n)
    if opts["logits"] is not None:  # a warm start: its mode first
        ev.evaluate(KSubsetPolicy(logits, k, validate_args=False).mode[None])
    adam = None
    if step == "adam":
        param = logits.clone().requires_grad_(True)
        adam = torch.optim.Adam([param], lr=float(opts["lr"]))
    # ---------------------------------------------------------------- phase 1: learn
    while not ev.done and ev.fraction_used < explore:
        dist = KSubsetPolicy(logits, k, validate_args=False)
        z = dist.sample((population if step == "cem" else m,), generator=run.generator)
        before = ev.n_evaluations
        req = ev.evaluate(z)
        if ev.n_evaluations == before:  # concentrated: every draw seen before
            break
        values = np.where(req.evaluated, req.values, np.nan)
        if np.isnan(values).all():
            continue
        if step == "cem":
            logits = _cem_update(dist, z, values, k, elite_frac, smoothing, _HYBRID_MIN_PROB)[0]
            continue
        u = torch.as_tensor(_rank_utilities(values), dtype=run.dtype, device=run.device)
        g = (u[:, None] * (z - dist.marginals.detach())).sum(0) / len(values)
        if adam is not None:
            param.grad = -g
            adam.step()
            logits = param.detach() - param.detach().mean()
        else:
            logits = _natural_step(logits, k, g, dist, float(opts["kl_step"]))
    marg = cp_marginals(logits, k).detach().cpu().numpy().astype(np.float64)
    # ---------------------------------------------------------------- phase 2: swap polishing
    _swap_search(run, logits.detach().cpu().numpy().astype(np.float64))
    return marg


def _warm_logits(given: Any, n: int, run: Run) -> torch.Tensor:
    """The hybrid's starting logits: zeros, or the ``logits`` option checked and centred."""
    if given is None:
        return torch.zeros(n, dtype=run.dtype, device=run.device)
    try:
        arr = np.asarray(
            given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else given,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"options['logits']: expected n = {n} real numbers, found {type(given).__name__}"
        ) from e
    if arr.shape != (n,):
        raise ValueError(f"options['logits']: expected shape ({n},), found {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"options['logits']: expected finite values, found {int((~np.isfinite(arr)).sum())}"
            " non-finite"
        )
    return torch.as_tensor(arr - arr.mean(), dtype=run.dtype, device=run.device)


def _natural_step(
    logits: torch.Tensor, k: int, g: torch.Tensor, dist: KSubsetPolicy, kl_step: float
) -> torch.Tensor:
    r"""One natural-gradient step with a trust region on the exact KL divergence.

    Direction :math:`d = (F + \lambda I)^{-1} g`; length :math:`\eta = \sqrt{2\delta / d^\top F
    d}` (the quadratic model of the KL), halved until the exact
    :math:`KL(p_{l + \eta d} \| p_l) \le 1.5\,\delta`, with :math:`\delta` = ``kl_step`` times the
    exact entropy of ``dist`` (a relative radius: the KL that concentrating needs grows with
    :math:`\log\binom{n}{k}`).
    """
    from ..kl import kl_ksubset_ksubset

    d = natural_direction(logits, k, g)
    quad = float(d @ fisher_vector_product(logits, k, d))
    if not quad > 0:
        return logits
    radius = kl_step * max(float(dist.entropy_value()), 1e-3)
    eta = math.sqrt(2 * radius / quad)
    new = logits
    for _ in range(8):
        new = logits + eta * d
        if float(kl_ksubset_ksubset(KSubsetPolicy(new, k, validate_args=False), dist)) <= (
            1.5 * radius
        ):
            break
        eta /= 2
    return new - new.mean()


def _swap_search(run: Run, scores: np.ndarray) -> None:
    """Iterated local search with one-out-one-in swaps from the best subset so far.

    Swaps are proposed without repetition from the current subset, ``samples`` per request,
    ordered by ``scores[in] - scores[out]`` plus Gumbel noise (items the model likes enter,
    items it dislikes leave). The best improving swap is taken; when several disjoint swaps
    improve, their combination is evaluated too. The ranking adds an additive model of the
    gains, ``gain(o -> i) ~ gain_in[i] + gain_out[o]``, fitted online to every evaluated swap
    (a least-mean-squares step; with ``learn_swaps``). When every swap of the current subset
    has been tried without improvement (a local optimum, confirmed at a cost of at most
    ``k (n - k)`` evaluations, fewer when some are cached), a kick of random swaps restarts the
    search from the best local optimum so far; the kick grows by one swap after each kick that
    found nothing better (variable neighbourhood search), up to ``min(k, n - k) / 2``. After
    ``restart`` full cycles of kick sizes without a better local optimum, the anchor is dropped
    and a new local search starts from a uniformly random subset (iterated local search with
    restarts on stagnation: kicks of a few swaps cannot cross between basins that differ in
    many items at once, such as the blocks of :class:`~.objectives.DeceptiveTrap`).
    """
    ev, n, k, rng, m = run.ev, run.n, run.k, run.rng, run.samples
    spread = float(scores.std())
    s = scores / spread if spread > 0 else np.zeros(n)
    if ev.best_key is None:
        ev.evaluate(_uniform_subsets(rng, n, k, 1))
    if ev.best_key is None:
        ev.stop("no subset could be evaluated")
        return
    current = np.zeros(n, dtype=bool)
    current[list(ev.best_key)] = True
    f_cur = ev.best
    anchor, f_anchor = current.copy(), f_cur
    # swaps (out, in) tried from the current subset; O(tried) memory, not O(n^2)
    tried_o: list[int] = []
    tried_i: list[int] = []
    pos = np.zeros(n, dtype=np.int64)  # row of an item in outs, column of an item in ins
    kicks, strength, failed, restarts = 0, 2, 0, 0
    max_strength = max(2, min(k, n - k) // 2)
    # restart after `restart` full cycles of kick sizes 2..max_strength found nothing better
    restart = (run.options["restart"] or 0) * (max_strength - 1)
    # additive model of a swap's gain, gain(o -> i) ~ gain_in[i] + gain_out[o], fitted online
    learn = bool(run.options["learn_swaps"])
    gain_in, gain_out, scale = np.zeros(n), np.zeros(n), 0.0
    idle = 0  # iterations without a request (everything they looked at was cached)
    while not ev.done:
        if idle > 10 * k * (n - k) + 100:  # nearly everything reachable was seen: random draws
            ev.evaluate(_uniform_subsets(rng, n, k, m))  # (cached ones count toward the stall)
            continue
        ins, outs = np.flatnonzero(~current), np.flatnonzero(current)
        prio = s[ins][None, :] - s[outs][:, None]
        if learn and scale > 0:
            prio = prio + (gain_in[ins][None, :] + gain_out[outs][:, None]) / scale
        prio = prio + rng.gumbel(size=prio.shape)
        if tried_o:
            pos[outs], pos[ins] = np.arange(len(outs)), np.arange(len(ins))
            prio[pos[np.array(tried_o)], pos[np.array(tried_i)]] = -np.inf
        open_ = int(np.isfinite(prio).sum())
        if open_ == 0:  # local optimum: kick (variable neighbourhood: larger after failures)
            if f_cur > f_anchor:
                anchor, f_anchor, strength, failed = current.copy(), f_cur, 2, 0
            else:
                strength = strength + 1 if strength < max_strength else 2
                failed += 1
            kicks += 1
            if restart and failed >= restart:  # stagnation: a new local search, random start
                failed, strength, restarts = 0, 2, restarts + 1
                current = _uniform_subsets(rng, n, k, 1)[0].astype(bool)
                anchor, f_anchor = current.copy(), -np.inf
            else:
                current = anchor.copy()
                for _ in range(min(strength, k, n - k)):
                    o = rng.choice(np.flatnonzero(current))
                    i = rng.choice(np.flatnonzero(~current))
                    current[o], current[i] = False, True
            hit = ev.cache.get(tuple(int(x) for x in np.flatnonzero(current)))
            if hit is None:
                req = ev.evaluate(current[None].astype(np.int8))
                if not req.evaluated[0]:
                    break
                hit = req.values[0]
            f_cur = -np.inf if math.isnan(hit) else hit
            tried_o, tried_i = [], []
            continue
        # the best-ranked untried swaps, skipping (but using) those already in the cache
        order = np.argsort(-prio.ravel(), kind="stable")[:open_]
        base = [int(x) for x in outs]
        o_list, i_list, cached_vals, fresh = [], [], [], 0
        for flat in order:
            o, i = int(outs[flat // len(ins)]), int(ins[flat % len(ins)])
            key = tuple(sorted([x for x in base if x != o] + [i]))
            hit = ev.cache.get(key)
            o_list.append(o)
            i_list.append(i)
            cached_vals.append(hit)
            if hit is None:
                fresh += 1
                if fresh >= m:
                    break
        o_idx, i_idx = np.array(o_list), np.array(i_list)
        take = len(o_idx)
        rows = np.repeat(current[None], take, 0).astype(np.int8)
        rows[np.arange(take), o_idx] = 0
        rows[np.arange(take), i_idx] = 1
        tried_o += o_list
        tried_i += i_list
        idle = 0 if fresh else idle + 1
        if fresh:
            req = ev.evaluate(rows)
            vals = np.where(req.evaluated & ~req.failed, req.values, -np.inf)
        else:  # every candidate was cached: no request (it would count as a stall)
            vals = np.array([-np.inf if v is None or math.isnan(v) else v for v in cached_vals])
        with np.errstate(invalid="ignore"):  # -inf - -inf: a failed swap from a failed subset
            gain = vals - f_cur
        fin = np.isfinite(gain)
        if fin.any():  # running mean of |gain|: the unit of the model's scores
            size = float(np.abs(gain[fin]).mean())
            scale = 0.9 * scale + 0.1 * size if scale else size
            for o, i, d in zip(o_idx[fin], i_idx[fin], gain[fin], strict=True):
                r = d - gain_in[i] - gain_out[o]
                gain_in[i] += 0.5 * r
                gain_out[o] += 0.5 * r
        good = np.flatnonzero(gain > 0)
        if good.size == 0:
            continue
        good = good[np.argsort(-gain[good])]
        best_row, best_val = rows[good[0]], vals[good[0]]
        # combine disjoint improving swaps
        used_o, used_i, combo = set(), set(), []
        for g in good:
            if o_idx[g] in used_o or i_idx[g] in used_i:
                continue
            used_o.add(o_idx[g])
            used_i.add(i_idx[g])
            combo.append(g)
        if len(combo) >= 2 and not ev.done:
            row = current.astype(np.int8)
            row[o_idx[combo]] = 0
            row[i_idx[combo]] = 1
            req2 = ev.evaluate(row[None])
            if req2.evaluated[0] and not req2.failed[0] and req2.values[0] > best_val:
                best_row, best_val = row, req2.values[0]
        moved_in = np.flatnonzero(best_row.astype(bool) & ~current)
        moved_out = np.flatnonzero(current & ~best_row.astype(bool))
        gain_out[moved_in], gain_in[moved_out] = -gain_in[moved_in], -gain_out[moved_out]
        current = best_row.astype(bool)
        f_cur = best_val
        tried_o, tried_i = [], []
    if kicks:
        run.notes.append(f"swap search: {kicks} local optima left by random kicks")
    if restarts:
        run.notes.append(f"{restarts} restarts from random subsets after stagnation")


# ---------------------------------------------------------------------- QR pivoting
def run_qr(run: Run) -> None:
    """QR column pivoting on ``basis.T`` (:func:`subset_rl.envs.qr_placement`): one evaluation."""
    from ..envs import qr_placement

    basis = np.asarray(run.options["basis"], dtype=np.float64)
    if basis.ndim != 2 or basis.shape[0] != run.n:
        raise ValueError(
            f"options['basis']: expected an array of shape (n={run.n}, r), found {basis.shape}"
        )
    if not np.isfinite(basis).all():
        raise ValueError("options['basis']: expected finite values, found NaN or inf")
    run.ev.evaluate(qr_placement(basis, run.k)[None])
    run.ev.stop("QR pivoting proposes one subset: 1 evaluation")


# ---------------------------------------------------------------------- registry
_REQUIRED = object()


@dataclass(frozen=True)
class MethodSpec:
    """A method and what it accepts.

    Attributes:
        run: The method (returns the final marginals or ``None``).
        samples: Default ``samples`` (``None``: the method does not use it).
        options: Accepted options and their defaults (``_REQUIRED`` marks required ones).
        summary: One line for help texts.
    """

    run: Callable[[Run], np.ndarray | None]
    samples: int | None
    options: dict[str, Any]
    summary: str

    def resolve(self, name: str, given: dict[str, Any] | None) -> dict[str, Any]:
        """The options with defaults filled in; unknown or missing ones raise ``TypeError``."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            accepted = sorted(self.options) or "none"
            raise TypeError(f"options: method {name!r} accepts {accepted}, found unknown {unknown}")
        out = {**self.options, **given}
        missing = sorted(key for key, v in out.items() if v is _REQUIRED)
        if missing:
            raise TypeError(f"options: method {name!r} requires {missing}, found none given")
        return out


METHODS: dict[str, MethodSpec] = {
    "hybrid": MethodSpec(
        run_hybrid,
        8,
        {
            "explore": 0.5,
            "step": "cem",
            "population": 64,
            "elite_frac": 0.1,
            "smoothing": 0.7,
            "lr": 0.2,
            "kl_step": 0.1,
            "learn_swaps": True,
            "logits": None,
            "restart": 3,
        },
        "learn a KSubsetPolicy (CEM / Adam / natural gradient), then swap polishing",
    ),
    "sfess": MethodSpec(
        run_sfess, 8, {"lr": 0.2, "baseline": "loo"}, "SFESS (leave-one-out) + Adam on logits"
    ),
    "random": MethodSpec(run_random, 64, {}, "uniform random search"),
    "greedy": MethodSpec(run_greedy, None, {}, "greedy forward selection"),
    "annealing": MethodSpec(
        run_annealing, 8, {"t0": None, "t_final": None}, "simulated annealing, swap moves"
    ),
    "cem": MethodSpec(
        run_cem,
        64,
        {"elite_frac": 0.1, "smoothing": 0.7, "min_prob": 1e-3},
        "cross-entropy method on a KSubsetPolicy",
    ),
    "qr": MethodSpec(run_qr, None, {"basis": _REQUIRED}, "QR pivoting on a basis (sensors)"),
}
"""Registered methods by name."""
