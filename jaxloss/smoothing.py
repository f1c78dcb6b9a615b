r"""Label smoothing, ``optax.smooth_labels``: not a loss but the targets of one."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _axes, _validate
from jaxloss._reduce import Axis

__all__ = ["smooth_labels"]


def smooth_labels(
    labels: ArrayLike,
    alpha: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Smoothed labels, :math:`(1 - \alpha)\,y + \alpha / K` (``optax.smooth_labels``).

    :math:`K` is the number of classes along ``axis``, or with ``where`` the number of
    classes it selects in each row (optax's convention: the smoothing is added to
    every entry, selected or not). Derivatives: :math:`\partial/\partial y = 1 - \alpha`,
    :math:`\partial/\partial\alpha = 1/K - y`. A row with no class selected
    (:math:`K = 0`) keeps :math:`(1 - \alpha)\,y` (optax gives inf).

    Args:
      labels: one-hot (or soft) labels, floating.
      alpha: the smoothing factor in [0, 1].
      axis: the class axis or axes.
      where: boolean mask of the classes, broadcastable to ``labels``.

    Returns:
      The smoothed labels, the shape of ``labels``, in
      ``promote_types(labels.dtype, float32)``.

    References:
      Müller et al, `When does label smoothing help?
      <https://arxiv.org/abs/1906.02629>`_, 2019.
    """
    labels = _validate.floating("labels", labels)
    alpha = _validate.in_unit_interval("alpha", alpha)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("labels", labels, where=where)
    dtype = _validate.compute_dtype(labels.dtype)
    y = labels.astype(dtype)
    alpha = alpha.astype(dtype)
    reduced = _axes.axes(axis, y.ndim)
    if where is None:
        spread = alpha / math.prod(y.shape[a] for a in reduced)
    else:
        count = jnp.sum(jnp.broadcast_to(where, y.shape), axis=reduced, keepdims=True)
        spread = jnp.where(count > 0, alpha / jnp.maximum(count, 1).astype(dtype), 0)
    return (1 - alpha) * y + spread
