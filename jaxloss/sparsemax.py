r"""Sparsemax losses: the binary ``sparsemax_loss`` and ``multiclass_sparsemax_loss``,
the Fenchel-Young losses of the Gini negentropy.

Same names, positional arguments and values as optax's, with ``where``/``reduction``
keywords as the margin losses. The multiclass loss is computed on the scores less their
largest, on which it depends only through the entries within 1 of it: exact at any
magnitude (``1e30``, ``-inf`` for a class that does not exist), its gradient
``sparsemax(scores) - one_hot(label)``. It takes any batch shape ``[..., classes]``
(optax's only ``[batch, classes]``).

The derivatives are autodiff of the formulas (no custom_vjp), so ``jax.jvp`` and
``jax.hessian`` work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._reduce import Reduction, weighted_reduce

__all__ = ["multiclass_sparsemax_loss", "sparsemax_loss"]


def sparsemax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Binary sparsemax loss (``optax.losses.sparsemax_loss``): ``sparse_plus`` of the
    logit signed by the label,

    .. math::
      \ell(x, y) = \mathrm{sparse\_plus}(\pm x), \qquad
      \mathrm{sparse\_plus}(z) = 0 \ (z \le -1), \ \tfrac14 (z + 1)^2 \ (|z| < 1),
      \ z \ (z \ge 1)

    with :math:`-x` for a label that is not 0 (the positive class) and :math:`x` for 0;
    zero exactly when ``jax.nn.sparse_sigmoid(logits) == labels``.

    Args:
      logits: the scores, ``[...]``.
      labels: 0/1 labels (any non-zero is 1), broadcastable to ``logits``.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
      <https://arxiv.org/abs/1901.02324>`_, JMLR 2020.
    """
    reduction = _validate.reduction(reduction)
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    _validate.broadcasts_to("logits", logits, labels=labels)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("logits", logits, where=where)
    x = logits.astype(_validate.compute_dtype(logits.dtype))
    z = jnp.where(labels != 0, -x, x)
    if where is not None:
        where = jnp.broadcast_to(where, z.shape)
        z = jnp.where(where, z, -1)
    middle = jnp.clip(z, -1, 1)
    losses = jnp.where(z <= -1, 0, jnp.where(z >= 1, z, (middle + 1) ** 2 / 4))
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def _sparsemax_shifted(z: jax.Array) -> jax.Array:
    """sparsemax of ``z`` (largest entry 0) over the last axis: ``max(z - tau, 0)``."""
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    # z in decreasing order, as -jnp.sort(-z): the order found without a gradient and
    # applied by a gather (differentiable). jnp.sort's derivative sorts an iota of its
    # own along, which has no sharding: over an Explicit mesh, under jax.set_mesh, sort
    # rejects the pair. This iota is typed like z.
    iota = jnp.zeros_like(z, dtype=jnp.int32) + jnp.arange(z.shape[-1], dtype=jnp.int32)
    _, order = jax.lax.sort((jax.lax.stop_gradient(-z), iota), dimension=z.ndim - 1,
                            num_keys=1)
    z_sorted = jnp.take_along_axis(z, order, axis=-1)
    cumsum = jnp.cumsum(jnp.where(z_sorted > -2, z_sorted, 0), axis=-1)
    # Entries below -2 are never in the support (the largest is 0, tau >= -1).
    support = (z_sorted > -2) & (1 + k * jnp.where(z_sorted > -2, z_sorted, 0) > cumsum)
    count = jnp.sum(support, axis=-1, keepdims=True)
    total = jnp.take_along_axis(cumsum, (count - 1).astype(jnp.int32), axis=-1)
    tau = (total - 1) / count.astype(z.dtype)
    return jnp.where(z > tau, z - tau, 0)


def multiclass_sparsemax_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multiclass sparsemax loss (``optax.losses.multiclass_sparsemax_loss``; Martins
    and Astudillo's), the Fenchel-Young loss of the Gini negentropy:

    .. math::
      \ell(s, y) = \langle p, s \rangle - s_y + \tfrac12 (1 - \|p\|^2), \qquad
      p = \mathrm{sparsemax}(s), \qquad \nabla_s \ell = p - e_y

    Args:
      scores: the scores, ``[..., classes]`` (``-inf`` for a class that does not exist).
      labels: integer labels, ``[...]``.
      where: boolean mask of the examples to include, broadcastable to ``labels``.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Martins and Astudillo, `From Softmax to Sparsemax
      <https://arxiv.org/abs/1602.02068>`_, ICML 2016.
    """
    reduction = _validate.reduction(reduction)
    scores = _validate.floating("scores", scores)
    labels = _validate.integer("labels", labels)
    if scores.ndim < 1:
        raise ValueError(f"scores must have a class axis, got {_validate.describe(scores)}")
    _validate.same_shape("labels", labels, scores.shape[:-1], "the batch shape of scores")
    where = _validate.mask("where", where)
    _validate.broadcasts_to("labels", labels, where=where)
    dtype = _validate.compute_dtype(scores.dtype)
    s = scores.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, labels.shape)
        s = jnp.where(where[..., None], s, 0)
    z = s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    p = _sparsemax_shifted(z)
    in_support = p > 0
    one_hot = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.bool_)
    label_z = jnp.sum(jnp.where(one_hot, z, 0), axis=-1)
    inner = jnp.sum(p * jnp.where(in_support, z, 0), axis=-1)
    losses = inner - label_z + 0.5 * (1 - jnp.sum(p * p, axis=-1))
    return weighted_reduce(losses, reduction, where=where, denominator=None)
