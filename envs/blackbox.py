"""Any Python callable ``f(z) -> float`` (or a batched torch callable) as an objective and an env.

Failures are never silent: an exception raised by ``f`` and a NaN/inf value both surface as
:class:`~subset_rl.envs.objective.ObjectiveError` naming the action (its chosen items), with the
original exception chained.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium.error import MissingArgument
from numpy.typing import ArrayLike

from ._validation import as_index_mask, check_float, check_int, describe_items
from .base import SubsetEnv
from .objective import Context, ObjectiveError, SubsetObjective, finite_or_raise, placeholder_obs

__all__ = ["BlackBoxObjective", "BlackBoxSubsetEnv", "import_callable", "make_blackbox_env"]


def _callable_name(f: Callable[..., Any]) -> str:
    return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)


def import_callable(name: str) -> Callable[..., Any]:
    """Imports a callable named ``"module:attribute"`` (the attribute may be dotted).

    The form of Gymnasium's entry points; it keeps an env spec JSON-able when the objective is a
    module-level function.

    Example:
        >>> import_callable("numpy:sum") is np.sum
        True

    Args:
        name: ``"package.module:function"`` or ``"package.module:Class.method"``.

    Returns:
        The callable.

    Raises:
        TypeError: If ``name`` is not a string or names something that is not callable.
        ValueError: If ``name`` is malformed, the module cannot be imported or has no such
            attribute.
    """
    if not isinstance(name, str):
        raise TypeError(f"f: expected a 'module:function' string, found {type(name).__name__}")
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"f: expected a callable or a 'module:function' string such as "
            f"'my_package.objectives:score', found {name!r}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"f: cannot import module {module_name!r} named in {name!r}: {e}") from e
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ValueError(f"f: {name!r}: no attribute {part!r} in {obj!r}") from e
    if not callable(obj):
        raise TypeError(f"f: {name!r} names a {type(obj).__name__}, not a callable")
    return obj


class BlackBoxObjective(SubsetObjective):
    """Wraps a callable as a batched objective (no context: every call scores the same function).

    Args:
        f: With ``batched=False``: called once per action with a ``float64`` numpy array of shape
            ``(n,)`` holding 0s and 1s, returns a real scalar. With ``batched=True``: called once
            with a tensor of shape ``(samples, batch, n)`` (``dtype``, on ``device``), returns
            a tensor (or array) of shape ``(samples, batch)``. A ``"module:function"`` string
            is imported (:func:`import_callable`).
        n: Number of items.
        k: Number of items to choose.
        batched: Whether ``f`` takes whole batches.
        forbidden: Optional mask or indices of items that may not be chosen.
        success_threshold: If given, an action succeeds when its value is at least this.
        differentiable: With ``batched=True``, declare that ``f`` is differentiable in ``z``
            (then pathwise estimators can train on it).
        device: Torch device.
        dtype: Floating dtype.
    """

    def __init__(
        self,
        f: Callable[[Any], Any] | str,
        n: int,
        k: int,
        *,
        batched: bool = False,
        forbidden: ArrayLike | None = None,
        success_threshold: float | None = None,
        differentiable: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(f, str):
            f = import_callable(f)
        if not callable(f):
            raise TypeError(
                f"f: expected a callable or a 'module:function' string, found {type(f).__name__}"
            )
        if not isinstance(batched, bool):
            raise TypeError(f"batched: expected a bool, found {type(batched).__name__}")
        if not isinstance(differentiable, bool):
            raise TypeError(
                f"differentiable: expected a bool, found {type(differentiable).__name__}"
            )
        if differentiable and not batched:
            raise ValueError(
                "differentiable=True needs batched=True (a torch callable on (samples, batch, n) "
                "tensors); a per-action Python callable gets numpy arrays and no gradient"
            )
        n = check_int("n", n, minimum=1)
        allowed = None if forbidden is None else ~as_index_mask("forbidden", forbidden, n)
        super().__init__(n, k, allowed=allowed, device=device, dtype=dtype)
        self.f = f
        self.batched = batched
        self.differentiable = differentiable
        self.name = _callable_name(f)
        self.success_threshold: float | None = None
        if success_threshold is not None:
            self.success_threshold = check_float("success_threshold", success_threshold)
        self.has_success = self.success_threshold is not None

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        return Context(obs=placeholder_obs(batch_size, self.device))

    def _call_one(self, row: np.ndarray) -> float:
        try:
            value = self.f(row.copy())
        except Exception as e:
            raise ObjectiveError(
                f"objective {self.name} raised {type(e).__name__}: {e} on the {describe_items(row)}"
            ) from e
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if not isinstance(value, numbers.Real):
            raise ObjectiveError(
                f"objective {self.name} returned {type(value).__name__} {value!r:.80} on the "
                f"{describe_items(row)}; expected a real scalar"
            )
        out = float(value)
        if not np.isfinite(out):
            raise ObjectiveError(
                f"objective {self.name} returned {out} on the {describe_items(row)}; "
                "expected a finite value"
            )
        return out

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        samples, batch = z.shape[:2]
        if self.batched:
            try:
                values = self.f(z)
            except Exception as e:
                raise ObjectiveError(
                    f"objective {self.name} raised {type(e).__name__}: {e} on a batch of actions "
                    f"of shape {tuple(z.shape)}"
                ) from e
            try:
                values = torch.as_tensor(values).to(device=self.device, dtype=self.dtype)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ObjectiveError(
                    f"objective {self.name} returned {type(values).__name__}; expected a tensor "
                    f"of shape ({samples}, {batch})"
                ) from e
            if values.shape != (samples, batch):
                raise ObjectiveError(
                    f"objective {self.name} returned shape {tuple(values.shape)}; expected "
                    f"({samples}, {batch}) for actions of shape {tuple(z.shape)}"
                )
            finite_or_raise(values, z, f"objective {self.name}")
        else:
            rows = z.detach().cpu().numpy().astype(np.float64).reshape(-1, self.n)
            flat = np.array([self._call_one(row) for row in rows])
            values = torch.as_tensor(flat, device=self.device, dtype=self.dtype).view(
                samples, batch
            )
        out = {"reward": values}
        if self.success_threshold is not None:
            out["success"] = (values >= self.success_threshold).to(self.dtype)
        return out


class BlackBoxSubsetEnv(SubsetEnv):
    """Choose ``k`` of ``n`` items to maximise any black-box function.

    ## Description
    Wraps a Python callable ``f(z) -> float`` (or, with ``batched=True``, a torch callable on
    ``(samples, batch, n)`` tensors) as a one-step environment: the reward of a k-hot action is
    ``f(z)``. Exceptions raised by ``f`` and NaN/inf values raise ``ObjectiveError`` naming the
    action. The underlying :class:`BlackBoxObjective` is ``env.unwrapped.objective``.

    ## Action Space
    ``KHot(n, k)`` with exactly ``k`` ones, none at ``forbidden`` items. Float, int and bool arrays
    are accepted.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``0``: the function has no context.

    ## Rewards
    ``f(z)``. A penalized invalid action gets ``invalid_penalty`` and ``f`` is not called.

    ## Starting State
    Nothing is drawn: every episode is the same.

    ## Episode End
    Terminates after ``horizon`` steps (default 1); never truncates. ``info`` holds
    ``objective``, ``action_valid``, and ``is_success`` when ``success_threshold`` is given.

    ## Arguments
    ``f``, ``n``, ``k`` (required: ``gym.make`` without them raises
    ``gymnasium.error.MissingArgument``), ``batched`` (False), ``forbidden`` (None),
    ``success_threshold`` (None), ``device`` ("cpu"), ``invalid_action`` ("raise"),
    ``invalid_penalty`` (-1), ``horizon`` (1), ``render_mode`` (None or ``"rgb_array"``: the
    items, chosen ones lit). ``f`` may be a ``"module:function"`` string, imported on
    construction: then ``env.spec.to_json()`` works and the spec remakes the env, in this
    process or another. Pickling the env pickles ``f``: use a module-level function (or
    cloudpickle) for multiprocessing.

    ## Version History
    * v0: Initial version.
    """

    def __init__(
        self,
        f: Callable[[Any], Any] | str | None = None,
        n: int | None = None,
        k: int | None = None,
        *,
        batched: bool = False,
        invalid_action: str = "raise",
        invalid_penalty: float = -1.0,
        horizon: int = 1,
        render_mode: str | None = None,
        **objective_kwargs: Any,
    ) -> None:
        missing = [name for name, value in (("f", f), ("n", n), ("k", k)) if value is None]
        if missing:
            raise MissingArgument(
                f"BlackBoxSubset-v0 needs the objective f and the sizes n and k; missing "
                f"{', '.join(missing)}. Example: gym.make('subset_rl/BlackBoxSubset-v0', "
                "f='my_package.objectives:score', n=10, k=3) (a 'module:function' string keeps "
                "the spec JSON-able; any callable works too)"
            )
        objective = BlackBoxObjective(f, n, k, batched=batched, **objective_kwargs)
        super().__init__(
            objective,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            horizon=horizon,
            render_mode=render_mode,
        )


def make_blackbox_env(
    f: Callable[[Any], Any] | str, n: int, k: int, batched: bool = False, **kwargs: Any
) -> BlackBoxSubsetEnv:
    """Builds a :class:`BlackBoxSubsetEnv` around ``f``.

    Example:
        >>> import numpy as np
        >>> w = np.arange(6.0)
        >>> env = make_blackbox_env(lambda z: float(z @ w), n=6, k=2)
        >>> _ = env.reset(seed=0)
        >>> env.step(np.array([0, 0, 0, 0, 1, 1]))[1]
        9.0

    Args:
        f: The function (see :class:`BlackBoxObjective`) or its ``"module:function"`` name.
        n: Number of items.
        k: Number of items to choose.
        batched: Whether ``f`` scores ``(samples, batch, n)`` torch tensors at once.
        **kwargs: Further arguments of :class:`BlackBoxSubsetEnv`.

    Returns:
        The environment.
    """
    return BlackBoxSubsetEnv(f, n, k, batched=batched, **kwargs)
