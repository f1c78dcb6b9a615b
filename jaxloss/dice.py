r"""Dice losses for segmentation: ``dice_loss`` (soft Dice and Tversky),
``binary_dice_loss`` and ``multiclass_generalized_dice_loss``.

Same names, arguments and values as optax's, with one convention where optax 0.2.8
divides 0 by 0 (``smooth=0`` and a class whose targets and probabilities are all 0
over the summed axes; or ``alpha=0`` and no targets): the Dice coefficient of that
class is 1 (the limit ``smooth -> 0``: nothing predicted where nothing is), so its loss
is 0, with gradient 0 (the one-sided derivatives are infinite). optax gives NaN for that
value and its gradient.

``dice_loss`` and ``multiclass_generalized_dice_loss`` with ``apply_softmax=False``
check, as optax does, that concrete predictions sum to 1 over the class axis (a
ValueError naming "valid probability distributions" otherwise); traced predictions
(under ``jax.jit`` or a transformation) cannot be checked and pass. Two further
differences, neither of a value: ``binary_dice_loss(apply_sigmoid=False)`` takes the
predictions as the probabilities they must be, without that check (which in optax
rejects any binary probability but 1); and ``axis`` may not include the class axis (the
last).

The derivatives are autodiff of the formula (the 0/0 selected by a double ``where``),
so there is no custom_vjp and ``jax.jvp``/``jax.hessian`` work.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _axes, _validate
from jaxloss._reduce import Reduction

__all__ = ["binary_dice_loss", "dice_loss", "multiclass_generalized_dice_loss"]


def _scalar_like(name: str, x: Any) -> jax.Array:
    x = _validate.as_array(name, x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number or array, got {_validate.describe(x)}")
    return x


def _pair(predictions: Any, targets: Any) -> tuple[jax.Array, jax.Array]:
    predictions = _validate.floating("predictions", predictions)
    targets = _validate.numeric("targets", targets)
    dtypes = (predictions.dtype,) + (() if targets.dtype == jnp.bool_ else (targets.dtype,))
    dtype = _validate.compute_dtype(*dtypes)
    return predictions.astype(dtype), targets.astype(dtype)


def _class_axis_check(predictions: jax.Array, targets: jax.Array) -> None:
    if predictions.ndim == 0:
        raise ValueError(f"predictions must have at least one axis, got "
                         f"{_validate.describe(predictions)}")
    if tuple(predictions.shape) != tuple(targets.shape):
        raise ValueError(f"targets must have the shape of predictions "
                         f"{tuple(predictions.shape)}, got {_validate.describe(targets)}")


def _check_distributions(predictions: jax.Array) -> None:
    """optax's check that concrete probabilities sum to 1 over the class axis (the
    last); traced values cannot be checked and pass."""
    if isinstance(predictions, jax.core.Tracer):
        return
    sums = np.sum(np.asarray(predictions), axis=-1)
    if not np.allclose(sums, 1.0, rtol=1e-5):
        raise ValueError(
            "When apply_softmax=False, predictions must be valid probability "
            "distributions that sum to 1 along the class axis. "
            f"Found sum range: [{np.min(sums):.6f}, {np.max(sums):.6f}]"
        )


def _dice_terms(
    probs: jax.Array, targets: jax.Array, reduced: tuple[int, ...], smooth: jax.Array,
    alpha: jax.Array, beta: jax.Array,
) -> jax.Array:
    """``1 - (I + smooth) / (I + alpha FP + beta FN + smooth)`` per class, 0 (with gradient
    0) where that is 0/0."""
    intersection = jnp.sum(probs * targets, axis=reduced)
    pred_sum = jnp.sum(probs, axis=reduced)
    target_sum = jnp.sum(targets, axis=reduced)
    numerator = intersection + smooth
    denominator = (intersection + alpha * (pred_sum - intersection)
                   + beta * (target_sum - intersection) + smooth)
    undefined = (denominator == 0) & (numerator == 0)
    safe_den = jnp.where(undefined, 1, denominator)
    safe_num = jnp.where(undefined, 0, numerator)
    return jnp.where(undefined, 0, 1 - safe_num / safe_den)


def _dice(
    predictions: jax.Array, targets: jax.Array, class_weights: jax.Array | None,
    smooth: jax.Array, alpha: jax.Array, beta: jax.Array, apply_softmax: bool,
    reduction: Reduction, ignore_background: bool, axis: int | tuple[int, ...] | None,
) -> jax.Array:
    """optax's dice_loss on validated arrays of equal shape."""
    ndim = predictions.ndim
    if axis is None:
        reduced = tuple(range(1, ndim - 1))
    else:
        reduced = _axes.axes(axis, ndim)
        if ndim - 1 in reduced:
            raise ValueError(f"axis must not include the class axis (the last), got {axis!r}")
    classes = predictions.shape[-1]
    if apply_softmax:
        probs = (jax.nn.sigmoid(predictions) if classes == 1
                 else jax.nn.softmax(predictions, axis=-1))
    else:
        probs = predictions
    dtype = predictions.dtype
    losses = _dice_terms(probs, targets, reduced, smooth.astype(dtype), alpha.astype(dtype),
                         beta.astype(dtype))
    if class_weights is not None:
        losses = losses * class_weights.astype(dtype)
    if ignore_background and classes > 1:
        losses = losses[..., 1:]
    if reduction == "mean":
        return jnp.mean(losses, axis=-1)
    if reduction == "sum":
        return jnp.sum(losses, axis=-1)
    return losses


def dice_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    class_weights: ArrayLike | None = None,
    smooth: ArrayLike = 1.0,
    alpha: ArrayLike = 0.5,
    beta: ArrayLike = 0.5,
    apply_softmax: bool = True,
    reduction: Reduction = "mean",
    ignore_background: bool = False,
    axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    r"""Soft Dice loss, and Tversky loss with ``alpha != beta``
    (``optax.losses.dice_loss``; Keras ``Dice``, MONAI ``DiceLoss``/``TverskyLoss``).

    Per class :math:`c`, with :math:`p` the probabilities (softmax of the logits, or
    sigmoid with one class), :math:`I_c = \sum_i p_{ic} t_{ic}`,
    :math:`P_c = \sum_i p_{ic}`, :math:`T_c = \sum_i t_{ic}` over ``axis``:

    .. math::
      L_c = 1 - \frac{I_c + s}{I_c + \alpha (P_c - I_c) + \beta (T_c - I_c) + s}

    With ``smooth = 0``, a class with :math:`P_c = T_c = 0` (or, with
    :math:`\alpha = 0`, :math:`T_c = 0`) is 0/0: its loss is 0 with gradient 0 (the
    limit :math:`s \to 0`); optax 0.2.8 gives NaN.

    Args:
      predictions: logits (probabilities with ``apply_softmax=False``),
        ``[batch, ..., classes]``; one axis fewer than ``targets`` for one class.
      targets: one-hot (or soft) targets of the same shape (one axis fewer for one
        class).
      class_weights: weights of the classes, ``[classes]`` (differentiable).
      smooth: added to the numerator and the denominator (differentiable).
      alpha: weight of the false positives (differentiable).
      beta: weight of the false negatives (differentiable).
      apply_softmax: softmax over the classes (sigmoid with one class) first; False:
        the predictions are probabilities; concrete ones must sum to 1 over the
        classes (ValueError otherwise, as in optax).
      reduction: over the classes: ``"mean"`` (default), ``"sum"`` or ``"none"``.
      ignore_background: leave class 0 out (with more than one class).
      axis: the axes summed over (default: all but the first and the last); not the
        class axis.

    Returns:
      ``[batch, ...]`` (``[..., classes]`` with ``reduction="none"``), in
      ``promote_types(dtype, float32)``.

    References:
      Milletari et al., `V-Net <https://arxiv.org/abs/1606.04797>`_, 2016; Salehi et
      al., `Tversky loss function <https://arxiv.org/abs/1706.05721>`_, 2017.
    """
    return _dice_loss(predictions, targets, class_weights, smooth, alpha, beta,
                      apply_softmax, reduction, ignore_background, axis,
                      check_distributions=True)


def _dice_loss(
    predictions: ArrayLike, targets: ArrayLike, class_weights: ArrayLike | None,
    smooth: ArrayLike, alpha: ArrayLike, beta: ArrayLike, apply_softmax: bool,
    reduction: Reduction, ignore_background: bool, axis: int | tuple[int, ...] | None,
    *, check_distributions: bool,
) -> jax.Array:
    """:func:`dice_loss`; ``check_distributions=False`` (binary_dice_loss) leaves out
    the check that probabilities sum to 1."""
    reduction = _validate.reduction(reduction)
    predictions, targets = _pair(predictions, targets)
    if predictions.ndim == targets.ndim - 1:
        predictions = predictions[..., None]
    if targets.ndim == predictions.ndim - 1:
        targets = targets[..., None]
    _class_axis_check(predictions, targets)
    if class_weights is not None:
        class_weights = _validate.floating("class_weights", class_weights)
        if class_weights.ndim != 1 or class_weights.shape[0] not in (1,
                                                                     predictions.shape[-1]):
            raise ValueError(f"class_weights must have shape ({predictions.shape[-1]},) "
                             f"(one per class), got {_validate.describe(class_weights)}")
    if check_distributions and not apply_softmax:
        _check_distributions(predictions)
    return _dice(predictions, targets, class_weights, _scalar_like("smooth", smooth),
                 _scalar_like("alpha", alpha), _scalar_like("beta", beta), apply_softmax,
                 reduction, ignore_background, axis)


def multiclass_generalized_dice_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    smooth: ArrayLike = 1.0,
    apply_softmax: bool = True,
    ignore_background: bool = False,
) -> jax.Array:
    r"""Generalized Dice loss (``optax.losses.multiclass_generalized_dice_loss``; MONAI
    ``GeneralizedDiceLoss``): :func:`dice_loss` per class, weighted by
    :math:`w_c \propto 1 / (F_c^2 + 10^{-7})` with :math:`F_c` the class's total target
    (over every axis but the last), normalized to sum to the number of classes, then
    averaged over the batch and the classes. The weights are functions of the targets
    and are differentiated with them, as in optax.

    Args:
      predictions: logits (probabilities with ``apply_softmax=False``),
        ``[batch, ..., classes]``.
      targets: one-hot (or soft) targets of the same shape.
      smooth: added to the numerator and the denominator (differentiable).
      apply_softmax: softmax over the classes first (sigmoid with one class); False:
        the predictions are probabilities; concrete ones must sum to 1 over the
        classes (ValueError otherwise, as in optax).
      ignore_background: leave class 0 out of the mean (it still counts in the
        normalization of the weights, as in optax).

    Returns:
      A scalar, in ``promote_types(dtype, float32)``.

    References:
      Sudre et al., `Generalised Dice overlap
      <https://arxiv.org/abs/1707.03237>`_, 2017.
    """
    predictions, targets = _pair(predictions, targets)
    _class_axis_check(predictions, targets)
    if not apply_softmax:
        _check_distributions(predictions)
    frequencies = jnp.sum(targets, axis=tuple(range(targets.ndim - 1)))
    weights = 1.0 / (frequencies**2 + 1e-7)
    weights = weights / jnp.sum(weights) * weights.shape[0]
    half = jnp.asarray(0.5)
    return jnp.mean(_dice(predictions, targets, weights, _scalar_like("smooth", smooth), half,
                          half, apply_softmax, "none", ignore_background, None))


def binary_dice_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    smooth: ArrayLike = 1.0,
    apply_sigmoid: bool = True,
) -> jax.Array:
    r"""Binary Dice loss (``optax.losses.binary_dice_loss``): :func:`dice_loss` of one
    class, the sigmoid of the logits against 0/1 (or soft) targets, summed over every
    axis but the first.

    .. math::
      \ell = 1 - \frac{I + s}{(P + T) / 2 + s}, \qquad
      I = \sum_i p_i t_i, \; P = \sum_i p_i, \; T = \sum_i t_i, \; p = \sigma(x)

    (:math:`s` is ``smooth``), with the gradient of :func:`dice_loss`.

    Args:
      predictions: logits (probabilities with ``apply_sigmoid=False``), ``[batch, ...]``
        or ``[batch, ..., 1]``.
      targets: targets of the same shape.
      smooth: added to the numerator and the denominator (differentiable).
      apply_sigmoid: sigmoid first; False: the predictions are probabilities (optax
        0.2.8 raises then, unless every prediction is 1).

    Returns:
      ``[batch]`` (``[batch, ...]`` less the summed axes), in
      ``promote_types(dtype, float32)``.

    References:
      Milletari, Navab and Ahmadi, `V-Net: Fully Convolutional Neural Networks for
      Volumetric Medical Image Segmentation <https://arxiv.org/abs/1606.04797>`_, 3DV 2016.
    """
    predictions, targets = _pair(predictions, targets)
    if predictions.ndim == targets.ndim and predictions.ndim and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return _dice_loss(predictions, targets, None, smooth, 0.5, 0.5, apply_sigmoid, "mean",
                      False, None, check_distributions=False)
