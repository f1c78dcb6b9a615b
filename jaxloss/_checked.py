"""``checked(loss)``: the value checks that cannot raise under ``jit``, via checkify."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import jax.numpy as jnp
from jax.experimental import checkify

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

# Each built-in loss registers the domain checks of its arguments; any other callable
# gets the NaN check alone.
_CHECKS: dict[Callable[..., Any], Callable[..., None]] = {}


def register_checks(check: Callable[..., None]) -> Callable[[F], F]:
    def decorate(loss: F) -> F:
        _CHECKS[loss] = check
        return loss

    return decorate


def _is_float_array(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def check_not_nan(name: str, x: Any) -> None:
    x = jnp.asarray(x)
    checkify.check(
        ~jnp.any(jnp.isnan(x)), f"{name} contains {{count}} NaN value(s)",
        count=jnp.sum(jnp.isnan(x)),
    )


def check_in_range(name: str, x: Any, low: float | None, high: float | None) -> None:
    x = jnp.asarray(x)
    ok = ~jnp.isnan(x) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.ones(x.shape, bool)
    if low is not None:
        ok = ok & (x >= low)
    if high is not None:
        ok = ok & (x <= high)
    interval = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    checkify.check(
        jnp.all(ok),
        f"{name} must lie in {interval}; {{count}} value(s) do not (first: {{first}})",
        count=jnp.sum(~ok),
        first=jnp.where(jnp.any(~ok), x.ravel()[jnp.argmin(ok.ravel())], 0).astype(jnp.float32),
    )


def check_labels(name: str, labels: Any, num_classes: int, ignore_index: int | None) -> None:
    labels = jnp.asarray(labels)
    ok = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        ok = ok | (labels == ignore_index)
    checkify.check(
        jnp.all(ok),
        f"{name} must be class ids in [0, {num_classes})"
        + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        + "; {count} are not (first: {first})",
        count=jnp.sum(~ok),
        first=jnp.where(jnp.any(~ok), labels.ravel()[jnp.argmin(ok.ravel())], 0),
    )


def checked(loss: Callable[P, R]) -> Callable[P, R]:
    """Wraps ``loss`` so that bad values raise instead of giving NaN.

    Under ``jit`` a loss cannot raise on values (an out-of-range label gives NaN). The
    wrapped loss checks, with ``jax.experimental.checkify``, that no floating input is
    NaN and, for the built-in losses, that each argument lies in its domain
    (probabilities and binary labels in [0, 1], integer labels in ``[0, C)`` or
    ``ignore_index``, weights >= 0), then raises ``checkify.JaxRuntimeError`` (a ValueError) naming
    the argument. It is for debugging and data validation: it costs a pass over the
    inputs and cannot itself be called under ``jit`` or inside ``jax.shard_map`` (so
    not with ``axis_name``: check the global arrays before sharding them instead).

    Example::

      safe_ce = jaxloss.checked(jaxloss.softmax_cross_entropy_with_integer_labels)
      safe_ce(logits, labels)   # raises if a label is out of range
    """
    domain = _domain_checks(loss)
    # run() passes the arguments on as arrays, which P cannot express.
    call: Callable[..., R] = loss

    @functools.wraps(loss)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        def run(*args: Any) -> R:
            names = list(_argument_names(loss, len(args))) + list(kwargs)
            for name, value in zip(names, list(args) + list(kwargs.values()), strict=True):
                if _is_float_array(value):
                    check_not_nan(name, value)
            if domain is not None:
                domain(*args, **kwargs)
            return call(*args, **kwargs)

        arrays = tuple(jnp.asarray(a) if a is not None else None for a in args)
        error, out = checkify.checkify(run)(*arrays)
        error.throw()
        return out

    return wrapper


def _domain_checks(loss: Callable[..., Any]) -> Callable[..., None] | None:
    """The registered checks of ``loss``, also through ``functools.partial`` (whose bound
    arguments are checked with the call's)."""
    if isinstance(loss, functools.partial):
        inner = _domain_checks(loss.func)
        if inner is None:
            return None
        bound_args, bound_kwargs = loss.args, loss.keywords

        def check(*args: Any, **kwargs: Any) -> None:
            inner(*bound_args, *args, **{**bound_kwargs, **kwargs})

        return check
    return _CHECKS.get(loss)


def _argument_names(fn: Callable[..., Any], n: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i}" for i in range(n)]

