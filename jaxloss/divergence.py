r"""Kullback-Leibler divergences: ``kl_divergence``, ``kl_divergence_with_log_targets``
and the generalized (Bregman) divergence of unnormalized distributions.

Same names, arguments and values as optax's, with the convention :math:`0 \log 0 = 0`
carried into the gradient: a target that is exactly 0 contributes 0 to the loss and
gets gradient 0 (PyTorch ``kl_div``'s subgradient), and the prediction of its class
gets gradient 0, even where that prediction's log-probability is ``-inf``. optax
0.2.8 gives a NaN gradient for such a target, and a NaN loss where a zero target
meets a ``-inf`` log-prediction or, with log targets, where a log target is ``-inf``.

The derivatives are autodiff of the stable formula (the zero terms selected by a
double ``where``), so there is no custom_vjp and ``jax.jvp``/``jax.hessian`` work.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _axes, _validate
from jaxloss._reduce import Axis, Reduction

__all__ = [
    "convex_kl_divergence",
    "generalized_kl_divergence",
    "kl_divergence",
    "kl_divergence_with_log_targets",
]


def _inputs(
    log_predictions: ArrayLike, second: ArrayLike, second_name: str,
    where: ArrayLike | None, axis: Axis,
) -> tuple[jax.Array, jax.Array, jax.Array | None, tuple[int, ...]]:
    log_predictions = _validate.floating("log_predictions", log_predictions)
    second = _validate.floating(second_name, second)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(log_predictions.dtype, second.dtype)
    lp, t, where = _axes.broadcast(("log_predictions", second_name, "where"),
                                   log_predictions.astype(dtype), second.astype(dtype), where)
    reduced = _axes.axes(axis, lp.ndim)
    return lp, t, where, reduced


def _masked(where: jax.Array | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Masked elements are replaced by 0 before any term is formed, so that a NaN or
    inf there reaches neither the value nor the gradient."""
    if where is None:
        return arrays
    return tuple(jnp.where(where, a, 0) for a in arrays)


def _sum(terms: jax.Array, where: jax.Array | None, reduced: tuple[int, ...]) -> jax.Array:
    if where is not None:
        terms = jnp.where(where, terms, 0)
    return jnp.sum(terms, axis=reduced)


def _kl_terms(lp: jax.Array, t: jax.Array) -> jax.Array:
    r""":math:`t(\log t - \log p)`, and exactly 0 with gradient 0 (in both) where
    :math:`t = 0`; elsewhere the gradient is :math:`(\log t + 1 - \log p,\ -t)`."""
    zero = t == 0
    safe_t = jnp.where(zero, 1, t)
    safe_lp = jnp.where(zero, 0, lp)
    return jnp.where(zero, 0, safe_t * (jnp.log(safe_t) - safe_lp))


def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Kullback-Leibler divergence of the predictions from the targets
    (``optax.losses.kl_divergence``; PyTorch ``KLDivLoss(reduction="none")`` summed
    over ``axis``; Keras ``KLDivergence`` without its clipping).

    .. math::
      D_{\mathrm{KL}}(t \,\|\, p) = \sum_i t_i (\log t_i - \log p_i), \qquad
      \frac{\partial D}{\partial \log p_i} = -t_i, \qquad
      \frac{\partial D}{\partial t_i} = \log t_i + 1 - \log p_i

    with :math:`0 \log 0 = 0`: a target :math:`t_i = 0` contributes 0 and gets
    gradient 0 (PyTorch's subgradient; the one-sided derivative is :math:`-\infty`),
    whatever :math:`\log p_i` is, ``-inf`` included. optax 0.2.8 gives a NaN gradient
    there (and a NaN loss when :math:`\log p_i = -\infty`).

    Args:
      log_predictions: log-probabilities of the predicted distribution, ``[..., dim]``.
      targets: probabilities of the target distribution (non-negative; a negative
        one gives NaN), broadcastable with ``log_predictions``.
      axis: axis or axes holding the distribution (None: all).
      where: boolean mask of the elements to include (broadcastable to the inputs).
      reduction: ``"none"`` (default, one value per distribution), ``"mean"`` (over the
        distributions with an element selected) or ``"sum"``.

    Returns:
      The divergences, shape ``[...]``, in ``promote_types(dtype, float32)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> log_predictions = jnp.log(jnp.array([0.5, 0.5]))
      >>> targets = jnp.array([0.8, 0.2])  # 0.8 log(0.8 / 0.5) + 0.2 log(0.2 / 0.5)
      >>> round(float(jaxloss.kl_divergence(log_predictions, targets)), 4)
      0.1927

    References:
      Kullback and Leibler, `On Information and Sufficiency
      <https://www.jstor.org/stable/2236703>`_, 1951.
    """
    reduction = _validate.reduction(reduction)
    lp, t, where, reduced = _inputs(log_predictions, targets, "targets", where, axis)
    lp, t = _masked(where, lp, t)
    return _axes.finish(_sum(_kl_terms(lp, t), where, reduced), reduction, where, reduced)


def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Kullback-Leibler divergence with the targets in log space
    (``optax.losses.kl_divergence_with_log_targets``; PyTorch
    ``KLDivLoss(log_target=True)`` summed over ``axis``).

    .. math::
      D = \sum_i e^{\log t_i} (\log t_i - \log p_i), \qquad
      \frac{\partial D}{\partial \log p_i} = -t_i, \qquad
      \frac{\partial D}{\partial \log t_i} = t_i (\log t_i + 1 - \log p_i)

    A target whose probability :math:`e^{\log t_i}` is 0 (``log_targets = -inf``, or
    so negative that the exponential underflows) contributes 0 with gradient 0, the
    limit of both; optax 0.2.8 and PyTorch give NaN for ``-inf``.

    Args:
      log_predictions: log-probabilities of the predicted distribution, ``[..., dim]``.
      log_targets: log-probabilities of the target distribution.
      axis: axis or axes holding the distribution (None: all).
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Kullback and Leibler, `On Information and Sufficiency
      <https://doi.org/10.1214/aoms/1177729694>`_, Ann. Math. Statist. 1951.
    """
    reduction = _validate.reduction(reduction)
    lp, lt, where, reduced = _inputs(log_predictions, log_targets, "log_targets", where, axis)
    lp, lt = _masked(where, lp, lt)
    zero = jnp.exp(lt) == 0
    safe_lt = jnp.where(zero, 0, lt)
    safe_lp = jnp.where(zero, 0, lp)
    terms = jnp.where(zero, 0, jnp.exp(safe_lt) * (safe_lt - safe_lp))
    return _axes.finish(_sum(terms, where, reduced), reduction, where, reduced)


def generalized_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Generalized Kullback-Leibler divergence of unnormalized distributions
    (``optax.losses.generalized_kl_divergence``): the Bregman divergence of
    :math:`f(x) = x \log x - x`.

    .. math::
      D = \sum_i t_i (\log t_i - \log p_i) + p_i - t_i, \qquad
      \frac{\partial D}{\partial \log p_i} = p_i - t_i, \qquad
      \frac{\partial D}{\partial t_i} = \log t_i - \log p_i

    with :math:`0 \log 0 = 0` and gradient 0 of that term at :math:`t_i = 0` (so
    :math:`\partial D / \partial t_i = -1` there), as :func:`kl_divergence`.
    ``convex_kl_divergence`` (optax's deprecated name) warns and calls this function.

    Args:
      log_predictions: log of the (unnormalized) predicted measure, ``[..., dim]``.
      targets: the (unnormalized, non-negative) target measure.
      axis: axis or axes holding the measure (None: all).
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Boyd and Vandenberghe, `Convex Optimization
      <https://stanford.edu/~boyd/cvxbook/bv_cvxbook.pdf>`_, p. 90.
      L. M. Bregman, `The relaxation method of finding the common point of convex
      sets <https://doi.org/10.1016/0041-5553(67)90040-7>`_, 1967.
    """
    reduction = _validate.reduction(reduction)
    lp, t, where, reduced = _inputs(log_predictions, targets, "targets", where, axis)
    lp, t = _masked(where, lp, t)
    terms = _kl_terms(lp, t) + (jnp.exp(lp) - t)
    return _axes.finish(_sum(terms, where, reduced), reduction, where, reduced)


def convex_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
) -> jax.Array:
    """Deprecated, as in optax: :func:`generalized_kl_divergence` (same arguments and
    values), with optax's ``DeprecationWarning``."""
    warnings.warn("The function convex_kl_divergence is deprecated. Please use "
                  "generalized_kl_divergence instead.", category=DeprecationWarning,
                  stacklevel=2)
    return generalized_kl_divergence(log_predictions, targets, axis, where,
                                     reduction=reduction)
