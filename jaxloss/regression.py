"""Regression losses: squared error, MSE, MAE, L2 and Huber (optax's), and PyTorch's
smooth L1, Poisson and Gaussian negative log-likelihoods.

These are elementwise functions whose autodiff derivative is already exact, so they
carry no custom_vjp. ``gaussian_nll_loss`` has two one-line ``jax.custom_jvp`` rules
(so ``jax.jvp`` and ``jax.hessian`` work): PyTorch's clamp of the variance, transparent
to the gradient, and a quotient whose derivative does not overflow. Inputs of bf16/fp16
are computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._math import abs0
from jaxloss._reduce import Axis, Reduction, weighted_reduce

__all__ = [
    "gaussian_nll_loss",
    "huber_loss",
    "l2_loss",
    "mae",
    "mean_absolute_error",
    "mean_squared_error",
    "mse",
    "poisson_nll_loss",
    "smooth_l1_loss",
    "squared_error",
]


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

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> jaxloss.squared_error(jnp.array([4.0, 5.0]), jnp.array([3.0, 3.0])).tolist()
      [1.0, 4.0]

    References:
      Hastie, Tibshirani and Friedman, `The Elements of Statistical Learning
      <https://hastie.su.domains/ElemStatLearn/>`_, section 2.4, Springer 2009.
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

    Args:
      predictions: predicted values, any shape.
      targets: target values broadcastable to ``predictions``, or None (the
        predictions are then the errors).
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Hastie, Tibshirani and Friedman, `The Elements of Statistical Learning
      <https://hastie.su.domains/ElemStatLearn/>`_, section 2.4, Springer 2009.
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
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

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

    Args:
      predictions: predicted values.
      targets: target values broadcastable to ``predictions``.
      axis: the axis or axes to average over (None: all).
      where: boolean mask of the elements to include.

    Returns:
      A scalar, or the means over ``axis``; 0 (zero gradient) when nothing is selected.

    Examples:
      The tutorial's worked example, errors 1 and 2:

      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> float(jaxloss.mean_squared_error(jnp.array([4.0, 5.0]), jnp.array([3.0, 3.0])))
      2.5

    References:
      Hastie, Tibshirani and Friedman, `The Elements of Statistical Learning
      <https://hastie.su.domains/ElemStatLearn/>`_, section 2.4, Springer 2009.
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

    Args:
      predictions: predicted values.
      targets: target values broadcastable to ``predictions``.
      axis: the axis or axes to average over (None: all).
      where: boolean mask of the elements to include.

    Returns:
      A scalar, or the means over ``axis``; 0 (zero gradient) when nothing is selected.

    References:
      Hastie, Tibshirani and Friedman, `The Elements of Statistical Learning
      <https://hastie.su.domains/ElemStatLearn/>`_, section 2.4, Springer 2009.
    """
    if targets is None:
        raise TypeError("targets must be an array, got None")
    errors, where = _masked(_errors(predictions, targets), where)
    return _finish(abs0(errors), "mean", where, axis)


mse = mean_squared_error
mae = mean_absolute_error


# ---------------------------------------------------------------------------------
# PyTorch's regression losses that optax lacks: SmoothL1Loss, PoissonNLLLoss and
# GaussianNLLLoss. Plain autodiff of stable formulas (no custom_vjp).


def _pair(name: str, x: ArrayLike, targets: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``x`` and ``targets`` (broadcast up to ``x``, never the other way) in the
    compute dtype."""
    x = _validate.floating(name, x)
    targets = _validate.numeric("targets", targets)
    _validate.broadcasts_to(name, x, targets=targets)
    dtype = _validate.compute_dtype(x.dtype)
    return x.astype(dtype), jnp.broadcast_to(targets.astype(dtype), x.shape)


def _where(name: str, shape: tuple[int, ...], where: ArrayLike | None) -> jax.Array | None:
    where = _validate.mask("where", where)
    if where is None:
        return None
    _validate.broadcasts_to(name, jax.ShapeDtypeStruct(shape, jnp.bool_), where=where)
    return jnp.broadcast_to(where, shape)


def smooth_l1_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    beta: float = 1.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Smooth L1 loss (PyTorch ``smooth_l1_loss``), elementwise.

    .. math::
      \ell(e) = \begin{cases} \tfrac12 e^2 / \beta & |e| < \beta \\
      |e| - \tfrac12 \beta & |e| \ge \beta \end{cases}, \qquad
      \frac{\partial \ell}{\partial \hat y} = \begin{cases} e / \beta & |e| < \beta \\
      \operatorname{sign}(e) & |e| \ge \beta \end{cases}

    with :math:`e = \hat y - y`. It is :func:`huber_loss` with :math:`\delta = \beta`
    divided by :math:`\beta`: quadratic near 0 with curvature :math:`1/\beta`, slope 1
    in the tails (Huber's slope is :math:`\delta`). ``beta=0`` is exactly the L1 loss
    :math:`|e|`, with PyTorch's gradient :math:`\operatorname{sign}(e)` (0 at
    :math:`e = 0`), and no division by zero.

    Args:
      predictions: predicted values :math:`\hat y`.
      targets: targets :math:`y`, broadcastable to ``predictions``.
      beta: where the loss turns linear; >= 0 (ValueError otherwise, as PyTorch).
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(predictions.dtype, float32)``.

    References:
      Girshick, `Fast R-CNN <https://arxiv.org/abs/1504.08083>`_, ICCV 2015;
      PyTorch, `torch.nn.SmoothL1Loss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.SmoothL1Loss.html>`_.
    """
    _validate.non_negative("beta", beta)
    errors, where = _masked(_errors(predictions, targets), where)
    abs_errors = abs0(errors)
    beta = jnp.asarray(beta, errors.dtype)
    # The pieces agree at |e| = beta; taking the quadratic one there also gives e = 0
    # the derivative 0 in beta at beta = 0 (the loss is 0 for every beta > 0). Its
    # divisor is kept nonzero where beta = 0, so no 0 / 0 reaches the gradient; and
    # e (e / beta) rather than e^2 / beta: no overflow for a huge beta.
    safe_beta = jnp.where(beta > 0, beta, 1)
    losses = jnp.where(abs_errors <= beta, 0.5 * abs_errors * (abs_errors / safe_beta),
                       abs_errors - 0.5 * beta)
    return _finish(losses, reduction, where)


def poisson_nll_loss(
    input: ArrayLike,
    targets: ArrayLike,
    *,
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Poisson negative log-likelihood (PyTorch ``poisson_nll_loss``), elementwise.

    With ``log_input=True`` the input is the log-rate :math:`x = \log\lambda`, else the
    rate :math:`\lambda` itself:

    .. math::
      \ell = e^x - y x, \quad \frac{\partial\ell}{\partial x} = e^x - y
      \qquad\text{or}\qquad
      \ell = \lambda - y \log(\lambda + \varepsilon), \quad
      \frac{\partial\ell}{\partial\lambda} = 1 - \frac{y}{\lambda + \varepsilon}

    (:math:`\partial\ell/\partial y = -x` or :math:`-\log(\lambda + \varepsilon)`),
    the negative log-likelihood of the count :math:`y` up to :math:`\log y!`. With
    ``full=True`` Stirling's approximation of :math:`\log y!`,
    :math:`y \log y - y + \tfrac12 \log(2\pi y)`, is added where :math:`y > 1` (0
    elsewhere, as PyTorch's: so the loss jumps by :math:`\tfrac12\log 2\pi - 1
    \approx -0.081` as :math:`y` crosses 1).

    Edges: a target of 0 contributes :math:`0 \cdot x = 0` (also at :math:`x = -\infty`,
    and :math:`0 \log 0 = 0` where :math:`\lambda + \varepsilon = 0`, with gradient 0;
    PyTorch gives NaN there). :math:`e^x` overflows to ``inf`` for large :math:`x`
    (:math:`x > 88.7` in float32): that is the value, not a NaN. :math:`x = -10^{30}`
    gives :math:`10^{30} y` and gradient :math:`-y`.

    Args:
      input: the log-rate (``log_input=True``) or the rate (``log_input=False``, >= 0).
      targets: counts :math:`y \ge 0`, broadcastable to ``input``.
      log_input: whether ``input`` is the log of the rate.
      full: add the Stirling term.
      eps: :math:`\varepsilon`, added to the rate inside the log (``log_input=False``).
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(input.dtype, float32)``.

    References:
      PyTorch, `torch.nn.PoissonNLLLoss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.PoissonNLLLoss.html>`_;
      McCullagh and Nelder, *Generalized Linear Models*, 2nd ed., 1989, ch. 6.
    """
    if not isinstance(log_input, bool):
        raise TypeError(f"log_input must be a bool, got {log_input!r}")
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {full!r}")
    _validate.non_negative("eps", eps)
    reduction = _validate.reduction(reduction)
    x, y = _pair("input", input, targets)
    where = _where("input", x.shape, where)
    if where is not None:
        # Masked elements become a harmless point before any term is formed.
        x, y = jnp.where(where, x, 0 if log_input else 1), jnp.where(where, y, 0)
    if log_input:
        rate = jnp.exp(x)
        # 0 * x = 0 for a zero count, also at x = -inf.
        count_term = jnp.where((y == 0) & jnp.isinf(x), 0, y * x)
        # Where exp overflows the loss is +inf, also where y x overflows too (inf - inf
        # would be NaN); elsewhere the plain difference, so d/dy = -x stays exact.
        losses = jnp.where(jnp.isinf(rate) & jnp.isinf(count_term), rate, rate - count_term)
    else:
        shifted = x + jnp.asarray(eps, x.dtype)
        zero = (shifted == 0) & (y == 0)  # 0 log 0 = 0, with a zero gradient
        log_rate = jnp.log(jnp.where(zero, 1, shifted))
        losses = x - jnp.where(zero, 0, y * log_rate)
    if full:
        big = y > 1
        safe = jnp.where(big, y, 2)
        stirling = safe * jnp.log(safe) - safe + 0.5 * jnp.log(2 * jnp.pi * safe)
        losses = losses + jnp.where(big, stirling, 0)
    return _finish(losses, reduction, where)


@jax.custom_jvp
def _clamp_below(x: jax.Array, low: jax.Array) -> jax.Array:
    """``max(x, low)`` whose derivative is 1 everywhere (PyTorch clamps the variance
    under ``no_grad``: its gradient passes the clamp unchanged)."""
    return jnp.maximum(x, low)


@_clamp_below.defjvp
def _clamp_below_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    x, low = primals
    return jnp.maximum(x, low), tangents[0]


@jax.custom_jvp
def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    r"""``numerator / denominator`` whose derivative is formed from the quotient:
    :math:`(\dot n - (n/d)\,\dot d) / d`. JAX's own rule forms :math:`d^{-2}`, which
    overflows for a float32 variance above 1.8e19 and drops the term."""
    return numerator / denominator


@_ratio.defjvp
def _ratio_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    numerator, denominator = primals
    d_numerator, d_denominator = tangents
    out = numerator / denominator
    return out, (d_numerator - out * d_denominator) / denominator


def _variance(variance: ArrayLike, shape: tuple[int, ...]) -> jax.Array:
    """PyTorch's shapes of ``var``: a scalar; ``shape``; ``shape[:-1]`` (one variance
    per row, given a last axis of 1 here); or the rank of ``shape`` with exactly one
    axis of size 1 where ``shape``'s is not (homoscedastic along it)."""
    variance = _validate.numeric("variance", variance)
    vshape = tuple(variance.shape)
    if vshape == shape or variance.ndim == 0:
        return variance
    if len(shape) >= 1 and vshape == shape[:-1]:
        return variance[..., None]
    if len(vshape) == len(shape):
        mismatched = [v for v, s in zip(vshape, shape, strict=True) if v != s]
        if mismatched == [1]:
            return variance
    raise ValueError(
        f"variance must have the shape of predictions {shape}, that shape without its "
        f"last axis, or one axis of size 1 in its place (PyTorch's rule), or be a "
        f"scalar; got {_validate.describe(variance)}")


def gaussian_nll_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    variance: ArrayLike,
    *,
    full: bool = False,
    eps: float = 1e-6,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Gaussian negative log-likelihood (PyTorch ``gaussian_nll_loss``), elementwise.

    .. math::
      \ell = \tfrac12 \Bigl(\log v + \frac{(\mu - y)^2}{v}\Bigr)
        \;\bigl(+\, \tfrac12 \log 2\pi \text{ if full}\bigr), \qquad
      v = \max(\sigma^2, \varepsilon)

    .. math::
      \frac{\partial \ell}{\partial \mu} = \frac{\mu - y}{v}, \qquad
      \frac{\partial \ell}{\partial \sigma^2} = \frac12 \Bigl(\frac1v
        - \frac{(\mu - y)^2}{v^2}\Bigr)

    for the predicted mean :math:`\mu`, the target :math:`y` and the predicted variance
    :math:`\sigma^2`. As in PyTorch the clamp at :math:`\varepsilon` is invisible to
    the gradient: where :math:`\sigma^2 < \varepsilon` the variance still gets the
    derivative above (at :math:`v = \varepsilon`), not 0. This is PyTorch's gradient
    (documented there), and it keeps pushing a collapsed variance back up where the
    true derivative of the clamp would leave it stuck. The squared error is formed as
    :math:`e\,(e / v)`, finite wherever the quotient is, and its derivative from the
    quotient too (never :math:`v^{-2}`, which overflows for a large variance).

    ``variance`` takes PyTorch's shapes: that of ``predictions`` (heteroscedastic); that
    shape without its last axis (one variance per row, e.g. ``[N]`` for
    ``predictions`` ``[N, D]``: note that this is not numpy's broadcasting); the rank
    of ``predictions`` with one axis of size 1 (e.g. ``[N, 1]``); or a scalar. The
    output, for ``"none"``, has the shape of ``predictions``.

    A negative variance cannot raise under ``jit`` (PyTorch raises): it gives a NaN
    loss, and :func:`jaxloss.checked` raises on it.

    Args:
      predictions: the predicted means :math:`\mu`.
      targets: samples :math:`y`, broadcastable to ``predictions``.
      variance: the predicted variances :math:`\sigma^2 \ge 0` (shapes above).
      full: add the constant :math:`\tfrac12 \log 2\pi`.
      eps: :math:`\varepsilon \ge 0`, the clamp of the variance.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(predictions.dtype, float32)``.

    References:
      Nix and Weigend, `Estimating the mean and variance of the target probability
      distribution <https://doi.org/10.1109/ICNN.1994.374138>`_, ICNN 1994;
      PyTorch, `torch.nn.GaussianNLLLoss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.GaussianNLLLoss.html>`_.
    """
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {full!r}")
    _validate.non_negative("eps", eps)
    reduction = _validate.reduction(reduction)
    mu, y = _pair("predictions", predictions, targets)
    variance = jnp.broadcast_to(_variance(variance, mu.shape).astype(mu.dtype), mu.shape)
    where = _where("predictions", mu.shape, where)
    errors = mu - y
    if where is not None:
        errors, variance = jnp.where(where, errors, 0), jnp.where(where, variance, 1)
    v = _clamp_below(variance, jnp.asarray(eps, mu.dtype))
    # A negative variance is outside the domain: NaN, as the docstring says.
    v = jnp.where(variance < 0, jnp.nan, v)
    losses = 0.5 * (jnp.log(v) + errors * _ratio(errors, v))
    if full:
        losses = losses + 0.5 * np.log(2 * np.pi)
    return _finish(losses, reduction, where)
