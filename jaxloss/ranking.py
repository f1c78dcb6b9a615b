r"""Listwise ranking losses: ``ranking_softmax_loss`` (optax's).

Same name, arguments (``where``, ``weights``, ``reduce_fn``), values and shapes as
``optax.losses.ranking_softmax_loss`` wherever optax's value is finite. The loss is
formed from :math:`-\log p_i = (m - s_i) + \log \sum_j e^{s_j - m}` (halved, so that it
never overflows for finite logits), and an item whose weighted label is 0 contributes
exactly 0, with gradient 0 in its label and weight, even where its log-probability is
``-inf``. So finite logits, ``-inf`` logits of items without relevance, and bf16/fp16
logits (computed in float32) give finite, exact losses, where optax 0.2.8 gives NaN for
a ``-inf`` logit with label 0 and for logits near the float32 range (``3e38`` and
``-3e38`` in one list), and rounds to the input's dtype.

The derivatives are autodiff of that formula (no custom_vjp: it would not be more
stable), so ``jax.jvp`` and ``jax.hessian`` work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._reduce import weighted_reduce
from jaxloss._softmax import finite_shift

__all__ = ["ranking_softmax_loss"]


def _half_neg_log_softmax(x: jax.Array) -> jax.Array:
    r""":math:`-\tfrac12 \log \mathrm{softmax}(x)` over the last axis: finite for finite
    ``x`` (:math:`m - x_i` alone may overflow), ``+inf`` where :math:`x_i = -\infty`. A
    row of ``-inf`` only (every item masked) has normalizer 0: its log is taken as 0,
    with gradient 0, so that no NaN reaches the gradient of such a row."""
    m = jax.lax.stop_gradient(finite_shift(jnp.max(x, axis=-1, keepdims=True,
                                                    initial=-jnp.inf)))
    total = jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True)
    empty = total == 0
    log_s = jnp.where(empty, 0, jnp.log(jnp.where(empty, 1, total)))
    return (0.5 * m - 0.5 * x) + 0.5 * log_s


def _reduce(losses: jax.Array, lists: jax.Array | None,
            reduce_fn: Callable[..., ArrayLike] | None) -> jax.Array:
    """optax's reduction: lists with no valid item are left out (``lists`` False)."""
    if reduce_fn is None:
        return weighted_reduce(losses, "none", where=lists, denominator=None)
    if reduce_fn is jnp.mean:
        # 0 with gradient 0 when no list is valid (optax: 0, its NaN replaced).
        return weighted_reduce(losses, "mean", where=lists, denominator=None)
    if reduce_fn is jnp.sum:
        return weighted_reduce(losses, "sum", where=lists, denominator=None)
    return jnp.asarray(reduce_fn(losses, where=lists))


def ranking_softmax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduce_fn: Callable[..., ArrayLike] | None = jnp.mean,
) -> jax.Array:
    r"""Ranking softmax loss (``optax.losses.ranking_softmax_loss``), the listwise
    cross-entropy between the labels and the softmax of the scores of a list's items
    (ListNet's top-one loss; the softmax loss of Bruch et al.).

    With :math:`c_i = w_i y_i` over the valid items :math:`i` of a list and
    :math:`p = \mathrm{softmax}(s)` over those items,

    .. math::
      \ell(s, y) = -\sum_i c_i \log p_i, \qquad
      \frac{\partial \ell}{\partial s_i} = p_i \sum_j c_j - c_i, \qquad
      \frac{\partial \ell}{\partial y_i} = -w_i \log p_i, \qquad
      \frac{\partial \ell}{\partial w_i} = -y_i \log p_i.

    The labels are not normalized (as in optax): a list whose labels are all 0 has
    loss 0. A term with :math:`c_i = 0` is exactly 0 with gradient 0 in :math:`y_i`
    and :math:`w_i` where :math:`\log p_i = -\infty` (a ``-inf`` logit, a masked
    item); elsewhere the gradients are exactly the ones above.

    Args:
      logits: the items' scores, ``[..., list_size]``, floating (bf16/fp16 are
        computed in float32); ``-inf`` for an item that cannot be ranked first.
      labels: the items' relevance, numeric, broadcastable to ``logits``.
      where: boolean mask of the valid items, broadcastable to ``logits``; the others
        are left out of the softmax and of the loss. A list with no valid item has
        loss 0 and is left out of the reduction.
      weights: per-item weights (numeric, broadcastable to ``logits``), multiplying
        the labels.
      reduce_fn: ``jnp.mean`` (default: the mean over the lists with a valid item; 0,
        with gradient 0, when there is none), ``jnp.sum``, ``None`` (the per-list
        losses, shape ``logits.shape[:-1]``, 0 for a list with no valid item), or any
        function called as ``reduce_fn(losses, where=valid_lists)``, as optax does
        (``valid_lists`` is None without ``where``). This is optax's argument, kept
        for drop-in use in place of jaxloss's ``reduction=``.

    Returns:
      The reduced loss (per-list losses with ``reduce_fn=None``), in
      ``promote_types(dtype, float32)``.

    References:
      Cao, Qin, Liu, Tsai and Li, `Learning to Rank: From Pairwise Approach to
      Listwise Approach <https://doi.org/10.1145/1273496.1273513>`_, ICML 2007.

      Bruch, Wang, Bendersky and Najork, `An Analysis of the Softmax Cross Entropy
      Loss for Learning-to-Rank with Binary Relevance
      <https://doi.org/10.1145/3341981.3344221>`_, ICTIR 2019.
    """
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    if logits.ndim < 1:
        raise ValueError(f"logits must have a list axis [..., list_size], got "
                         f"{_validate.describe(logits)}")
    where = _validate.mask("where", where)
    if weights is not None:
        weights = _validate.numeric("weights", weights)
    _validate.broadcasts_to("logits", logits, labels=labels, where=where, weights=weights)
    if reduce_fn is not None and not callable(reduce_fn):
        raise TypeError(f"reduce_fn must be a function such as jnp.mean or None, got "
                        f"{reduce_fn!r}")
    dtypes: list[Any] = [logits.dtype, labels.dtype]
    if weights is not None:
        dtypes.append(weights.dtype)
    dtype = _validate.compute_dtype(*dtypes)
    x = logits.astype(dtype)
    c = jnp.broadcast_to(labels.astype(dtype), x.shape)
    if weights is not None:
        c = c * weights.astype(dtype)
    lists = None
    if where is not None:
        where = jnp.broadcast_to(where, x.shape)
        x = jnp.where(where, x, -jnp.inf)
        c = jnp.where(where, c, 0)
        lists = jnp.any(where, axis=-1)
    half = _half_neg_log_softmax(x)
    absent = (c == 0) & jnp.isinf(half)
    losses = 2 * jnp.sum(c * jnp.where(absent, 0, half), axis=-1)
    return _reduce(losses, lists, reduce_fn)
