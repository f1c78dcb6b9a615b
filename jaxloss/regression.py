"""Regression losses: squared error, MSE, MAE, L2 and Huber.

These are smooth, elementwise functions whose autodiff derivative is already exact,
so they carry no custom_vjp. Inputs of bf16/fp16 are computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._math import abs0
from jaxloss._reduce import Axis, Reduction, weighted_reduce


def _errors(predictions: ArrayLike, targets: ArrayLike | None) -> jax.Array:
    predictions = _validate.floating("predictions", predictions)
    dtype = _validate.compute_dtype(predictions.dtype)
    if targets is None:
        return predictions.astype(dtype)
    targets = _validate.numeric("targets", targets)
    # Targets may broadcast up to the predictions, never the other way: a [B, 1]
    # output against [B] targets would silently become a [B, B] loss.
    _validate.broadcasts_to("predictions", predictions, targets=targets)
    return predictions.astype(dtype) - targets.astype(dtype)


def _masked(errors: jax.Array, where: ArrayLike | None) -> tuple[jax.Array, jax.Array | None]:
    """Zeroes masked errors before the loss is formed, so that a NaN or inf under the
    mask reaches neither the value nor the gradient."""
    where = _validate.mask("where", where)
    if where is None:
        return errors, None
    shape = _validate.broadcast_shapes(("predictions", "where"), errors, where)
    errors, where = jnp.broadcast_to(errors, shape), jnp.broadcast_to(where, shape)
    return jnp.where(where, errors, 0), where


def _finish(
    losses: jax.Array, reduction: Reduction, where: jax.Array | None, axis: Axis = None
) -> jax.Array:
    reduction = _validate.reduction(reduction)
    return weighted_reduce(losses, reduction, where=where, denominator=None, axis=axis)


def squared_error(
    predictions: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Elementwise squared error, :math:`(\hat y - y)^2`.

    Same values as ``optax.losses.squared_error``. With ``targets=None`` the
    predictions are taken as the errors.

    Args:
      predictions: predicted values, any shape.
      targets: target values broadcastable to ``predictions``, or None.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    Returns:
      The squared errors, in ``promote_types(predictions.dtype, float32)``.
    """
    errors, where = _masked(_errors(predictions, targets), where)
    return _finish(errors**2, reduction, where)


def l2_loss(
    predictions: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Half the squared error, :math:`\tfrac12(\hat y - y)^2` (``optax.losses.l2_loss``).

    The factor 1/2 makes the gradient :math:`\hat y - y`.
    """
    errors, where = _masked(_errors(predictions, targets), where)
    return _finish(0.5 * errors**2, reduction, where)


def huber_loss(
    predictions: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    delta: float = 1.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Huber loss (``optax.losses.huber_loss``; PyTorch ``HuberLoss``).

    .. math::
      \ell(e) = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
      \delta (|e| - \tfrac12 \delta) & |e| > \delta \end{cases}

    Quadratic near zero, linear in the tails, so outliers pull with force at most
    :math:`\delta`.

    Args:
      predictions: predicted values.
      targets: targets broadcastable to ``predictions``, or None.
      delta: the point where the loss turns linear; must be > 0.

    References:
      Huber, `Robust Estimation of a Location Parameter
      <https://doi.org/10.1214/aoms/1177703732>`_, 1964.
    """
    _validate.positive("delta", delta)
    errors, where = _masked(_errors(predictions, targets), where)
    abs_errors = jnp.abs(errors)
    quadratic = jnp.minimum(abs_errors, delta)
    linear = abs_errors - quadratic
    return _finish(0.5 * quadratic**2 + delta * linear, reduction, where)


def mean_squared_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    axis: Axis = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Mean squared error over ``axis`` (all elements when None).

    .. math::
      \mathrm{MSE} = \frac1n \sum_{i=1}^n (\hat y_i - y_i)^2, \qquad
      \frac{\partial\,\mathrm{MSE}}{\partial \hat y_i} = \frac2n (\hat y_i - y_i)

    where :math:`n` counts the elements selected by ``where``. ``[4, 5]`` against
    ``[3, 3]`` gives :math:`(1 + 4)/2 = 2.5`. PyTorch ``nn.MSELoss()``, Keras
    ``MeanSquaredError`` (which averages over the last axis: ``axis=-1``).

    Returns:
      A scalar, or the means over ``axis``; 0 (zero gradient) when nothing is selected.
    """
    if targets is None:
        raise TypeError("targets must be an array, got None")
    errors, where = _masked(_errors(predictions, targets), where)
    return _finish(errors**2, "mean", where, axis)


def mean_absolute_error(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    axis: Axis = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Mean absolute error over ``axis`` (all elements when None).

    .. math::
      \mathrm{MAE} = \frac1n \sum_{i=1}^n |\hat y_i - y_i|

    The gradient is :math:`\operatorname{sign}(\hat y_i - y_i)/n`, 0 where the error
    is 0 (PyTorch ``nn.L1Loss``; Keras ``MeanAbsoluteError``).
    """
    if targets is None:
        raise TypeError("targets must be an array, got None")
    errors, where = _masked(_errors(predictions, targets), where)
    return _finish(abs0(errors), "mean", where, axis)


mse = mean_squared_error
mae = mean_absolute_error
