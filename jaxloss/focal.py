r"""Reweighted cross-entropies: the sigmoid focal loss, PolyLoss and optax's "safe"
softmax cross-entropy.

Built on :func:`jaxloss.sigmoid_binary_cross_entropy` and
:func:`jaxloss.softmax_cross_entropy` (whose custom_vjps give exact limits and treat a
``-inf`` logit with target 0 as a class that does not exist); the reweighting factors
are autodiff of stable log-space forms. Values are optax's wherever optax's are
finite; optax 0.2.8's ``poly_loss_cross_entropy`` is NaN for a ``-inf`` logit with
target 0, where this one is finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _axes, _validate
from jaxloss._reduce import Axis, Reduction, weighted_reduce
from jaxloss.classification import sigmoid_binary_cross_entropy, softmax_cross_entropy

__all__ = ["poly_loss_cross_entropy", "safe_softmax_cross_entropy", "sigmoid_focal_loss"]


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike | None = None,
    gamma: ArrayLike = 2.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Sigmoid focal loss (``optax.losses.sigmoid_focal_loss``; torchvision
    ``sigmoid_focal_loss``).

    .. math::
      \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{CE}(x, y), \qquad
      1 - p_t = (1 - y)\,\sigma(x) + y\,\sigma(-x), \qquad
      \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    with :math:`\mathrm{CE}` the sigmoid cross-entropy
    :math:`y\,\mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)` and
    :math:`\alpha_t = 1` when ``alpha`` is None. The modulating factor is formed in
    log space, :math:`\exp(\gamma \log(1 - p_t))` with
    :math:`\log(1 - p_t) = \mathrm{logsumexp}(\log\sigma(x), \log\sigma(-x);
    b = (1 - y, y))`, so it is exact for every finite logit (a logit of
    :math:`\pm 10^4` gives the exact 0 or :math:`|x|`) and for :math:`\gamma < 1`.
    Gradients (logits, labels, ``alpha``, ``gamma``) are autodiff of this form.

    Args:
      logits: logits, any floating shape.
      labels: targets in [0, 1] (hard or soft), broadcastable to ``logits``.
      alpha: weight of the positive class in (0, 1), or None.
      gamma: the focusing exponent, >= 0.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    References:
      Lin et al, `Focal Loss for Dense Object Detection
      <https://arxiv.org/abs/1708.02002>`_, 2017.
    """
    reduction = _validate.reduction(reduction)
    _validate.non_negative("gamma", gamma)
    if alpha is not None:
        _validate.in_unit_interval("alpha", alpha)
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("logits", logits, labels=labels, where=where)
    dtype = _validate.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    y = jnp.broadcast_to(labels.astype(dtype), x.shape)
    if where is not None:
        where = jnp.broadcast_to(where, x.shape)
        x, y = jnp.where(where, x, 0), jnp.where(where, y, 0)
    ce = sigmoid_binary_cross_entropy(x, y)
    log_one_minus_pt = jax.nn.logsumexp(
        jnp.stack([jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)], axis=-1), axis=-1,
        b=jnp.stack([1 - y, y], axis=-1))
    losses = ce * jnp.exp(jnp.asarray(gamma, dtype) * log_one_minus_pt)
    if alpha is not None:
        alpha = jnp.asarray(alpha, dtype)
        losses = (alpha * y + (1 - alpha) * (1 - y)) * losses
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def poly_loss_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    epsilon: ArrayLike = 2.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Poly-1 loss: softmax cross-entropy plus :math:`\epsilon` times the first
    polynomial term (``optax.losses.poly_loss_cross_entropy``).

    .. math::
      \ell = -\sum_c y_c \log p_c + \epsilon \sum_c y_c (1 - p_c), \qquad
      \frac{\partial \ell}{\partial x_c} = p_c \textstyle\sum_k y_k - y_c
        + \epsilon\,p_c \bigl(\sum_k y_k p_k - y_c\bigr)

    with :math:`p = \mathrm{softmax}(x)` (:math:`\sum_c y_c (1 - p_c) = 1 - p_t` for
    one-hot labels). The cross-entropy is :func:`jaxloss.softmax_cross_entropy`: a
    ``-inf`` logit with target 0 is a class that does not exist (probability 0,
    contributing 0), where optax 0.2.8 gives NaN; the target of such a class gets the
    poly term's gradient :math:`\epsilon (1 - 0)` only. Logits of :math:`\pm 10^4`
    give the exact values (e.g. ``2e4 + epsilon`` for a one-hot label on the ``-1e4``
    logit against a ``1e4`` one).

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: target distributions broadcastable to ``logits``.
      epsilon: the coefficient of :math:`1 - p_t` (2 for ImageNet, -1 for detection in
        the paper).
      axis: the class axis or axes.
      where: boolean mask of the classes to include, broadcastable to ``logits`` (as
        in optax); a row with no class left has loss 0.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.

    References:
      Leng et al, `PolyLoss: A Polynomial Expansion Perspective of Classification Loss
      Functions <https://arxiv.org/abs/2204.12511>`_, 2022.
    """
    reduction = _validate.reduction(reduction)
    logits = _validate.floating("logits", logits)
    labels = _validate.floating("labels", labels)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(logits.dtype)
    _validate.broadcasts_to("logits", logits, labels=labels, where=where)
    x = logits.astype(dtype)
    y = jnp.broadcast_to(labels.astype(dtype), x.shape)
    if where is not None:
        where = jnp.broadcast_to(where, x.shape)
    reduced = _axes.axes(axis, x.ndim)
    ce = softmax_cross_entropy(x, y, axis=axis if isinstance(axis, int) else reduced,
                               where=where)
    if where is not None:  # excluded classes: no probability, no target
        x, y = jnp.where(where, x, -jnp.inf), jnp.where(where, y, 0)
    p = jax.nn.softmax(_finite_max_shift(x, reduced), axis=reduced)
    one_minus_pt = jnp.sum(y * (1 - p), axis=reduced)
    losses = ce + jnp.asarray(epsilon, dtype) * one_minus_pt
    return _axes.finish(losses, reduction, where, reduced)


def _finite_max_shift(x: jax.Array, reduced: tuple[int, ...]) -> jax.Array:
    """``x`` less its (finite) maximum, so that a row whose classes are all ``-inf``
    gives probabilities 0 (not NaN) and a ``-inf`` class a zero gradient."""
    exists = x > -jnp.inf
    m = jax.lax.stop_gradient(jnp.max(jnp.where(exists, x, -jnp.inf), axis=reduced,
                                      keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    return jnp.where(exists, x - m, -jnp.inf)


def safe_softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Softmax cross-entropy with :math:`0 \log 0 = 0` for a ``-inf`` logit with target
    0 (``optax.losses.safe_softmax_cross_entropy``).

    .. math::
      \ell(x, y) = -\sum_c y_c \log \mathrm{softmax}(x)_c, \qquad
      \frac{\partial\ell}{\partial x_c} = \mathrm{softmax}(x)_c \sum_k y_k - y_c

    :func:`jaxloss.softmax_cross_entropy` over the last axis, which already follows
    this convention; the gradient with respect to the target of a ``-inf`` class is 0
    (that class does not exist; optax gives ``+inf``).

    Args:
      logits: unnormalized log-probabilities, ``[..., num_classes]``.
      labels: target distributions broadcastable to ``logits``.
      where: a boolean mask of classes (the shape of ``logits``) or of rows.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.

    References:
      Goodfellow, Bengio and Courville, `Deep Learning
      <https://www.deeplearningbook.org/contents/mlp.html>`_, section 6.2.2.3 (softmax
      units for multinoulli output distributions), MIT Press 2016.
    """
    return softmax_cross_entropy(logits, labels, where=where, reduction=reduction)
