"""Helpers of the losses that reduce over optax's ``axis`` with an elementwise ``where``
(the KL family, cosine similarity, label smoothing)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _validate
from jaxloss._reduce import weighted_reduce


def axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """optax's ``axis`` (an int, a tuple of ints, or None for all) as sorted axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, tuple | list):
        out = tuple(_validate.canonical_axis("axis", a, ndim) for a in axis)
        if len(set(out)) != len(out):
            raise ValueError(f"axis must not repeat an axis, got {axis!r}")
        return tuple(sorted(out))
    return (_validate.canonical_axis("axis", axis, ndim),)


def broadcast(names: tuple[str, ...], *arrays: jax.Array | None) -> tuple[Any, ...]:
    """The arrays (None skipped) broadcast to their common shape."""
    present = [(n, a) for n, a in zip(names, arrays, strict=True) if a is not None]
    shape = _validate.broadcast_shapes(tuple(n for n, _ in present), *(a for _, a in present))
    return tuple(None if a is None else jnp.broadcast_to(a, shape) for a in arrays)


def finish(losses: jax.Array, reduction: str, where: jax.Array | None,
           reduced: tuple[int, ...]) -> jax.Array:
    """Reduces per-example losses; with an elementwise ``where``, an example none of
    whose elements is selected is left out of ``"mean"`` (its loss is 0)."""
    rows = None if where is None else jnp.any(where, axis=reduced)
    return weighted_reduce(losses, reduction, where=rows, denominator=None)
