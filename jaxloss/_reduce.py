"""Reductions shared by every loss: ``"none"``, ``"mean"`` and ``"sum"`` with masks
and weights."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate

Reduction = Literal["none", "mean", "sum"]
Axis = int | tuple[int, ...] | None


def reduce(
    losses: ArrayLike,
    reduction: Reduction = "mean",
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    axis: Axis = None,
) -> jax.Array:
    r"""Reduces per-example losses, honouring a mask and weights.

    With mask :math:`m` (``where``, default all true) and weights :math:`w` (default 1):

    - ``"none"``: :math:`m_i w_i \ell_i` (masked entries are exactly 0);
    - ``"sum"``: :math:`\sum_i m_i w_i \ell_i`;
    - ``"mean"``: :math:`\sum_i m_i w_i \ell_i / \sum_i m_i w_i`, the weighted mean of
      PyTorch's losses; 0, with zero gradient, when nothing is selected.

    Masked entries never reach the result or its gradient, so a NaN or inf under the
    mask is harmless.

    Args:
      losses: per-example (or per-element) losses.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      where: boolean mask broadcastable to ``losses``.
      weights: non-negative weights broadcastable to ``losses``.
      axis: axes to reduce over for ``"mean"`` and ``"sum"`` (None: all).

    Returns:
      The reduced losses, in at least float32.
    """
    reduction = _validate.reduction(reduction)
    losses = _validate.floating("losses", losses)
    where = _validate.mask("where", where)
    if weights is not None:
        weights = _validate.numeric("weights", weights)
    arrays = [a for a in (losses, where, weights) if a is not None]
    names = [n for n, a in zip(("losses", "where", "weights"), (losses, where, weights),
                               strict=True) if a is not None]
    shape = _validate.broadcast_shapes(names, *arrays)
    if shape != tuple(losses.shape):
        raise ValueError(
            f"where and weights must broadcast to the shape of losses {tuple(losses.shape)}, "
            f"got where {_validate.describe(where)}, weights {_validate.describe(weights)}"
        )
    dtype = _validate.compute_dtype(losses.dtype)
    losses = losses.astype(dtype)
    if weights is not None:
        weights = jnp.broadcast_to(weights.astype(dtype), losses.shape)
        weighted = losses * weights
    else:
        weighted = losses
    return weighted_reduce(weighted, reduction, where=where, denominator=weights, axis=axis)


def weighted_reduce(
    weighted_losses: jax.Array,
    reduction: str,
    *,
    where: jax.Array | None,
    denominator: jax.Array | None,
    axis: Axis = None,
) -> jax.Array:
    """The reduction on losses that already carry their weights.

    ``"mean"`` divides by ``sum(where * denominator)`` (by the count of selected entries
    when ``denominator`` is None). Losses whose weight is not a plain factor (PyTorch's
    class-weighted, label-smoothed cross-entropy) pass their own denominator here.
    """
    if where is not None:
        where = jnp.broadcast_to(where, weighted_losses.shape)
        weighted_losses = jnp.where(where, weighted_losses, 0)
    if reduction == "none":
        return weighted_losses
    if reduction == "sum":
        return jnp.sum(weighted_losses, axis=axis)
    if denominator is None:
        denominator = jnp.ones_like(weighted_losses)
    denominator = jnp.broadcast_to(denominator.astype(weighted_losses.dtype),
                                   weighted_losses.shape)
    if where is not None:
        denominator = jnp.where(where, denominator, 0)
    count = jnp.sum(denominator, axis=axis, keepdims=True)
    empty = count == 0
    # The double where keeps the gradient of an empty selection at exactly 0.
    mean = jnp.where(empty, 0, overflow_safe_mean(weighted_losses, jnp.where(empty, 1, count),
                                                  axis=axis, keepdims=True))
    return _squeeze(mean, axis)


def _squeeze(x: jax.Array, axis: Axis) -> jax.Array:
    return jnp.squeeze(x, axis=tuple(range(x.ndim)) if axis is None else axis)


def overflow_safe_mean(
    values: jax.Array,
    count: jax.Array | float,
    *,
    axis: Axis = None,
    keepdims: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    """``sum(values) / count`` over ``axis`` (and over the devices of ``axis_name``, by a
    ``psum``), finite wherever the mean is.

    ``count`` is a scalar or has the shape of the sum with ``keepdims=True``. Where the
    sum overflows although the terms are finite, the result is the sum of
    ``values / count`` instead; elsewhere it is the plain ``sum / count`` of
    ``jnp.mean``, so ordinary values are unchanged."""
    total = jnp.sum(values, axis=axis, keepdims=True)
    scaled = jnp.sum(values / count, axis=axis, keepdims=True)
    if axis_name is not None:
        total, scaled = jax.lax.psum((total, scaled), axis_name)
    mean = jnp.where(jnp.isinf(total) & jnp.isfinite(scaled), scaled, total / count)
    return mean if keepdims else _squeeze(mean, axis)
