r"""Margin losses: binary and multiclass hinge and perceptron losses (optax's).

Piecewise linear, so their derivatives are autodiff of the formulas with PyTorch's
subgradient 0 at a kink of :math:`\max(0, z)` (``ReLU``); the multiclass maximum
shares its gradient equally among tied maxima (``jnp.max``'s subgradient). No
custom_vjp. Values are optax's for every finite input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._reduce import Reduction, weighted_reduce

__all__ = [
    "hinge_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "perceptron_loss",
]


def _relu(z: jax.Array) -> jax.Array:
    """:math:`\\max(0, z)` with the subgradient 0 at 0."""
    return jnp.where(z > 0, z, 0)


def _binary(predictor_outputs, targets, where, reduction, *, same_shape: bool):
    reduction = _validate.reduction(reduction)
    outputs = _validate.floating("predictor_outputs", predictor_outputs)
    targets = _validate.numeric("targets", targets)
    if same_shape:
        _validate.same_shape("targets", targets, outputs.shape, "that of predictor_outputs")
    else:
        _validate.broadcasts_to("predictor_outputs", outputs, targets=targets)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("predictor_outputs", outputs, where=where)
    dtype = _validate.compute_dtype(outputs.dtype)
    margins = outputs.astype(dtype) * targets.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, margins.shape)
        margins = jnp.where(where, margins, 0)
    return margins, where, reduction


def hinge_loss(
    predictor_outputs: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Binary hinge loss (``optax.losses.hinge_loss``; PyTorch ``SoftMarginLoss``'s
    piecewise-linear sibling; Keras ``Hinge`` before its mean over the last axis).

    .. math::
      \ell(f, y) = \max(0, 1 - f y), \qquad
      \frac{\partial \ell}{\partial f} = -y\,[f y < 1], \qquad
      \frac{\partial \ell}{\partial y} = -f\,[f y < 1]

    (subgradient 0 at the kink :math:`f y = 1`).

    Args:
      predictor_outputs: outputs of the decision function, any floating shape.
      targets: targets in :math:`\{-1, 1\}`, broadcastable to ``predictor_outputs``.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    References:
      `Hinge loss <https://en.wikipedia.org/wiki/Hinge_loss>`_, Wikipedia.
    """
    margins, where, reduction = _binary(predictor_outputs, targets, where, reduction,
                                        same_shape=False)
    return weighted_reduce(_relu(1 - margins), reduction, where=where, denominator=None)


def perceptron_loss(
    predictor_outputs: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Binary perceptron loss (``optax.losses.perceptron_loss``).

    .. math::
      \ell(f, y) = \max(0, -f y), \qquad
      \frac{\partial \ell}{\partial f} = -y\,[f y < 0]

    (subgradient 0 at :math:`f y = 0`). As optax, ``targets`` must have the shape of
    ``predictor_outputs`` (ValueError otherwise).

    Args:
      predictor_outputs: scores of the model, any floating shape.
      targets: targets in :math:`\{-1, 1\}`, the shape of ``predictor_outputs``.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      `Perceptron <https://en.wikipedia.org/wiki/Perceptron>`_, Wikipedia.
    """
    margins, where, reduction = _binary(predictor_outputs, targets, where, reduction,
                                        same_shape=True)
    return weighted_reduce(_relu(-margins), reduction, where=where, denominator=None)


def _multiclass(scores, labels, where, reduction):
    reduction = _validate.reduction(reduction)
    scores = _validate.floating("scores", scores)
    labels = _validate.integer("labels", labels)
    if scores.ndim < 1:
        raise ValueError(f"scores must have a class axis, got {_validate.describe(scores)}")
    _validate.same_shape("labels", labels, scores.shape[:-1], "the batch shape of scores")
    where = _validate.mask("where", where)
    _validate.broadcasts_to("labels", labels, where=where)
    dtype = _validate.compute_dtype(scores.dtype)
    scores = scores.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, labels.shape)
        scores = jnp.where(where[..., None], scores, 0)
    one_hot = jax.nn.one_hot(labels, scores.shape[-1], dtype=dtype)
    label_score = jnp.sum(jnp.where(one_hot > 0, scores, 0), axis=-1)
    return scores, one_hot, label_score, where, reduction


def multiclass_hinge_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multiclass hinge loss of Crammer and Singer (``optax.losses.multiclass_hinge_loss``;
    Keras ``CategoricalHinge`` on one-hot labels).

    .. math::
      \ell(s, y) = \max_j \bigl(s_j + 1 - [j = y]\bigr) - s_y, \qquad
      \frac{\partial \ell}{\partial s} = e_{j^*} - e_y

    with :math:`j^*` the maximizing class (the gradient shared equally among tied
    maxima).

    Args:
      scores: scores of the model, ``[..., num_classes]``.
      labels: integer labels, ``[...]``. An out-of-range label selects no class (its
        one-hot row is 0), as in optax: the loss is then :math:`\max_j s_j + 1`.
      where: boolean mask of the examples to include, broadcastable to ``labels``.
      reduction: ``"none"`` (default, one value per example), ``"mean"`` or ``"sum"``.

    References:
      Crammer and Singer, `On the Algorithmic Implementation of Multiclass Kernel-based
      Vector Machines <https://jmlr.org/papers/v2/crammer01a.html>`_, JMLR 2001.
    """
    scores, one_hot, label_score, where, reduction = _multiclass(scores, labels, where,
                                                                 reduction)
    losses = jnp.max(scores + (1 - one_hot), axis=-1) - label_score
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def multiclass_perceptron_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multiclass perceptron loss (``optax.losses.multiclass_perceptron_loss``).

    .. math::
      \ell(s, y) = \max_j s_j - s_y, \qquad
      \frac{\partial \ell}{\partial s} = e_{j^*} - e_y

    (the gradient of the maximum shared equally among tied maxima). An out-of-range
    label selects no class, as in optax.

    Args:
      scores: scores of the model, ``[..., num_classes]``.
      labels: integer labels, ``[...]``.
      where: boolean mask of the examples to include, broadcastable to ``labels``.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Collins, `Discriminative training methods for Hidden Markov Models
      <https://aclanthology.org/W02-1001/>`_, EMNLP 2002.
    """
    scores, _, label_score, where, reduction = _multiclass(scores, labels, where, reduction)
    losses = jnp.max(scores, axis=-1) - label_score
    return weighted_reduce(losses, reduction, where=where, denominator=None)
