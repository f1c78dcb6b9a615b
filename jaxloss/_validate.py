"""Trace-time checks shared by every loss.

Shapes and dtypes are static under ``jax.jit``, so everything here raises while
tracing, with a message that names the argument, what it got and what was expected.
Values are not static; those are documented per loss and checked by
:func:`jaxloss.checked`.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeGuard, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "mean", "sum")


class Shaped(Protocol):
    """Anything with a static shape: an array, a tracer or a ``jax.ShapeDtypeStruct``."""

    @property
    def shape(self) -> tuple[int, ...]: ...


def describe(x: Any) -> str:
    """``shape=(2, 3) dtype=float32`` for an array-like, its type otherwise."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return f"type={type(x).__name__}"
    return f"shape={tuple(shape)} dtype={dtype}"


def as_array(name: str, x: Any) -> jax.Array:
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        return jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from e


def floating(name: str, x: Any) -> jax.Array:
    """``x`` as an array of a floating dtype; TypeError for any other kind."""
    x = as_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {describe(x)}")
    return x


def integer(name: str, x: Any) -> jax.Array:
    """``x`` as an array of an integer dtype; TypeError for any other kind."""
    x = as_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"{name} must have an integer dtype (class indices), got {describe(x)}; "
            "for one-hot or soft targets use the dense variant of this loss"
        )
    return x


def numeric(name: str, x: Any) -> jax.Array:
    """Floating, integer or bool (e.g. 0/1 labels), cast later to the compute dtype."""
    x = as_array(name, x)
    if not (
        jnp.issubdtype(x.dtype, jnp.floating)
        or jnp.issubdtype(x.dtype, jnp.integer)
        or x.dtype == jnp.bool_
    ):
        raise TypeError(f"{name} must be a real numeric array, got {describe(x)}")
    return x


def mask(name: str, x: Any) -> jax.Array | None:
    if x is None:
        return None
    x = as_array(name, x)
    if x.dtype != jnp.bool_:
        raise TypeError(f"{name} must be a boolean array, got {describe(x)}")
    return x


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype a loss computes and returns in: at least float32 (bf16/fp16 accumulate
    in float32), float64 when an input is float64."""
    return jnp.result_type(jnp.float32, *dtypes)


def broadcast_shapes(names: Sequence[str], *arrays: jax.Array) -> tuple[int, ...]:
    shapes = [tuple(a.shape) for a in arrays]
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        got = ", ".join(f"{n} {describe(a)}" for n, a in zip(names, arrays, strict=True))
        raise ValueError(f"shapes do not broadcast together: {got}") from None


def broadcasts_to(first_name: str, first: Shaped, **others: Shaped | None) -> None:
    """Each of ``others`` (None skipped) must broadcast to the shape of ``first``."""
    target = tuple(first.shape)
    for name, other in others.items():
        if other is None:
            continue
        try:
            fits = tuple(np.broadcast_shapes(tuple(other.shape), target)) == target
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} must broadcast to the shape of {first_name} {target}, "
                f"got {describe(other)}"
            )


def same_shape(name: str, x: jax.Array, expected: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {describe(x)}")


def _is_reduction(value: object) -> TypeGuard[Reduction]:
    return isinstance(value, str) and value in REDUCTIONS


def reduction(value: object) -> Reduction:
    if not _is_reduction(value):
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {value!r}")
    return value


def canonical_axis(name: str, axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim}")
    return int(axis) % ndim


def concrete_scalar(x: Any) -> float | None:
    """A Python float when ``x`` is known at trace time, else None."""
    if isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, np.ndarray | np.generic | jax.Array) and np.iscomplexobj(x):
        return None  # not a real value: _real raises with the argument's name
    if isinstance(x, np.ndarray | np.generic) and np.ndim(x) == 0:
        return float(x)
    if isinstance(x, jax.Array) and x.ndim == 0 and not isinstance(x, jax.core.Tracer):
        return float(x)
    return None


def _real(name: str, x: Any) -> None:
    """A complex option would pass the range checks below (concrete_scalar skips it) and
    lose its imaginary part silently in the loss's float arithmetic."""
    dtype = getattr(x, "dtype", None)
    if (isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real)) or (
            dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)):
        raise TypeError(f"{name} must be real, got {describe(x)}")


def in_unit_interval(name: str, x: Any) -> jax.Array:
    """A scalar in [0, 1], checked when static (a traced value is taken as given)."""
    _real(name, x)
    value = concrete_scalar(x)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    x = as_array(name, x)
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got {describe(x)}")
    return x


def check_unit_interval(name: str, x: Any) -> None:
    """:func:`in_unit_interval` as a check of :func:`jit`, before the jit: inside it a
    Python value would be traced and its range unknown (None passes: off)."""
    if x is not None:
        in_unit_interval(name, x)


def smoothing(name: str, x: Any, dtype: Any) -> jax.Array | None:
    """A label-smoothing value as a scalar array in ``dtype``; None when it is off
    (None, or a Python 0 that was not passed through :func:`jit`)."""
    if x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool) and x == 0):
        return None
    return in_unit_interval(name, x).astype(dtype)


def check_ignore_index(name: str, x: Any) -> None:
    """``ignore_index``: None, or an integer scalar (a Python int or a 0-d integer
    array, possibly traced)."""
    if x is None:
        return
    if isinstance(x, bool) or isinstance(x, np.bool_):
        raise TypeError(f"{name} must be an int or None, got {x!r}")
    if isinstance(x, numbers.Integral):
        return
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or np.ndim(x) != 0:
        raise TypeError(f"{name} must be an int, a 0-d integer array or None, "
                        f"got {describe(x) if dtype is not None else repr(x)}")


def ignored(name: str, ignore_index: Any, labels: jax.Array) -> jax.Array | None:
    """Where ``labels`` equal ``ignore_index`` (None when it is None)."""
    check_ignore_index(name, ignore_index)
    if ignore_index is None:
        return None
    if isinstance(ignore_index, numbers.Integral):
        info = jnp.iinfo(labels.dtype)
        if not info.min <= int(ignore_index) <= info.max:
            return None  # no label can equal it (-100 and unsigned labels)
    return labels == jnp.asarray(ignore_index).astype(labels.dtype)


def non_negative(name: str, x: Any) -> None:
    _real(name, x)
    value = concrete_scalar(x)
    if value is not None and not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def positive(name: str, x: Any) -> None:
    _real(name, x)
    value = concrete_scalar(x)
    if value is not None and not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")


Precision = Any  # what jnp.matmul's precision takes; see precision()


def precision(name: str, value: Any) -> Precision:
    """A matmul precision as ``jnp.matmul`` takes it, canonical (and hashable, so it can
    be a static argument): None (follow ``jax_default_matmul_precision``), a
    ``jax.lax.Precision`` or its name (``"default"``, ``"high"``, ``"highest"``,
    ``"bfloat16"``, ``"tensorfloat32"``, ``"float32"``, ...), a pair of those (one per
    operand), or a ``jax.lax.DotAlgorithmPreset``. Strings become
    ``jax.lax.Precision``; anything else raises ValueError naming ``name``."""

    def one(v: Any) -> Any:
        if isinstance(v, jax.lax.Precision | jax.lax.DotAlgorithmPreset):
            return v
        if isinstance(v, str):
            try:
                return jax.lax.Precision(v)
            except ValueError:
                pass
        raise ValueError(
            f"{name} must be None, a jax.lax.Precision or one of 'default', 'high', "
            f"'highest' (also 'bfloat16', 'tensorfloat32', 'float32'), a pair of them, or "
            f"a jax.lax.DotAlgorithmPreset; got {value!r}")

    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and not any(
            isinstance(v, jax.lax.DotAlgorithmPreset) for v in value):
        return (one(value[0]), one(value[1]))
    return one(value)


def check_precision(name: str, value: Any) -> None:
    """:func:`precision` as a check of :func:`jit` (before the static argument is hashed)."""
    precision(name, value)


P = ParamSpec("P")
R = TypeVar("R")


def jit(
    *,
    static_argnames: Sequence[str] = (),
    checks: dict[str, Callable[[str, Any], None]] | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``jax.jit`` that first checks the named arguments whose values are known.

    A scalar such as ``margin`` or ``temperature`` may be traced (learned, scheduled,
    or passed through the caller's own jit), so it cannot be static; inside the jit its
    value is never known. Checked here, before the jit, a Python or concrete value is
    validated and a traced one passes as documented.

    ``options`` maps numeric options to the value at which they are off (label
    smoothing 0, temperature 1, ...). Such an option is a traced value, so a new value
    does not recompile; only a Python number equal to its off value is passed on as
    None, which compiles the path without the option (the defaults keep their code).

    A static argument that cannot be hashed (an array where a Python value is
    expected) raises a TypeError naming it, not jit's own message.
    """
    static = tuple(static_argnames)
    off_values = dict(options or {})

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        # jax.jit keeps the call signature, but its annotation (JitWrapped) does not say so.
        jitted = cast("Callable[..., R]", jax.jit(fn, static_argnames=static))
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            for name, check in (checks or {}).items():
                if name in arguments:
                    check(name, arguments[name])
            for name in static:
                if name in arguments:
                    _hashable(name, arguments[name])
            for name, off in off_values.items():
                value = arguments.get(name, signature.parameters[name].default)
                if _is_python_number(value, off):
                    arguments[name] = None
            return jitted(*bound.args, **bound.kwargs)

        return wrapper

    return decorate


def _is_python_number(value: Any, off: Any) -> bool:
    """Whether ``value`` is a Python (or NumPy) number equal to ``off``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.generic):
        return False
    return bool(value == off)


def _hashable(name: str, value: Any) -> None:
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{name} is a static option (it changes what is compiled) and must be a "
            f"hashable Python value, got {describe(value)}") from None
