r"""Log-cosh, cosine similarity and cosine distance (optax's regression losses that
``jaxloss.regression`` does not hold), and PyTorch's cosine embedding loss.

- ``log_cosh`` is exact across the whole range: :math:`\log(1 + 2\sinh^2(x/2))` near
  0 (no cancellation, so :math:`x^2/2` keeps its relative precision) and
  :math:`|x| + \mathrm{softplus}(-2|x|) - \log 2` beyond (no overflow of
  :math:`\cosh`, which a naive float32 form hits at :math:`|x| \approx 89`).
- The cosine losses divide each vector by its largest component first, so vectors up
  to the float32 maximum neither overflow nor underflow (optax 0.2.8 returns 0 for
  vectors of norm above about 1e19), and give a zero vector (with ``epsilon=0``)
  similarity 0 and gradient 0, where optax 0.2.8 gives NaN for both.
- ``cosine_embedding_loss`` adds PyTorch's :math:`\epsilon = 10^{-12}` to each squared
  norm, as PyTorch does, on the same scaled vectors: its values and gradients are
  PyTorch's (finite at a zero vector), without the overflow of PyTorch's float32
  product of squared norms.

The derivatives are autodiff of these forms (the branches guarded by a double
``where``), so there is no custom_vjp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _axes, _validate
from jaxloss._math import safe_divide, safe_sqrt
from jaxloss._reduce import Axis, Reduction, weighted_reduce

__all__ = ["cosine_distance", "cosine_embedding_loss", "cosine_similarity", "log_cosh"]

# What PyTorch's cosine_embedding_loss adds to each squared norm (ATen's EPSILON).
_TORCH_COSINE_EPS = 1e-12

# Below it log1p(2 sinh^2(x/2)) is used, above it |x| + softplus(-2|x|) - log 2; the
# latter is at least 0.43 there, so its cancellation costs at most a few ulps.
_LOG_COSH_SWITCH = 1.0


def _log_cosh(x: jax.Array) -> jax.Array:
    small = jnp.abs(x) < _LOG_COSH_SWITCH
    xs = jnp.where(small, x, 0)
    xl = jnp.abs(jnp.where(small, _LOG_COSH_SWITCH, x))
    near = jnp.log1p(2 * jnp.square(jnp.sinh(0.5 * xs)))
    far = xl + jax.nn.softplus(-2 * xl) - np.log(2.0).astype(x.dtype)
    return jnp.where(small, near, far)


def log_cosh(
    predictions: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Elementwise log-cosh of the error (``optax.losses.log_cosh``; Keras ``LogCosh``
    before its mean over the last axis).

    .. math::
      \ell(e) = \log\cosh e, \qquad \frac{d\ell}{de} = \tanh e

    About :math:`e^2/2` near 0 and :math:`|e| - \log 2` in the tails: a twice
    differentiable Huber loss. Computed as :math:`\log(1 + 2\sinh^2(e/2))` for
    :math:`|e| < 1` and :math:`|e| + \mathrm{softplus}(-2|e|) - \log 2` beyond, so it
    is exact for every finite error (a naive float32 :math:`\cosh` overflows at
    :math:`|e| \approx 89`); an infinite error gives +inf with gradient :math:`\pm 1`.

    Args:
      predictions: predicted values, any floating shape.
      targets: targets broadcastable to ``predictions``, or None (the predictions are
        the errors).
      where: boolean mask of the elements to include (broadcastable to
        ``predictions``).
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(predictions.dtype, float32)``.

    References:
      Chen et al, `Log Hyperbolic Cosine Loss Improves Variational Auto-Encoder
      <https://openreview.net/pdf?id=rkglvsC9Ym>`_, 2019.
    """
    reduction = _validate.reduction(reduction)
    predictions = _validate.floating("predictions", predictions)
    dtype = _validate.compute_dtype(predictions.dtype)
    errors = predictions.astype(dtype)
    if targets is not None:
        targets = _validate.numeric("targets", targets)
        _validate.broadcasts_to("predictions", predictions, targets=targets)
        errors = errors - targets.astype(dtype)
    where = _validate.mask("where", where)
    if where is not None:
        _validate.broadcasts_to("predictions", errors, where=where)
        where = jnp.broadcast_to(where, errors.shape)
        errors = jnp.where(where, errors, 0)
    return weighted_reduce(_log_cosh(errors), reduction, where=where, denominator=None)


def _unit(x: jax.Array, epsilon: jax.Array, reduced: tuple[int, ...], *,
          additive: bool = False) -> jax.Array:
    r""":math:`x / \sqrt{\max(\lVert x \rVert^2, \epsilon)}` over ``reduced`` (optax's
    clip), or :math:`x / \sqrt{\lVert x \rVert^2 + \epsilon}` with ``additive``
    (PyTorch's ``cosine_embedding_loss``), formed from :math:`x / s` with
    :math:`s = \max |x|` (a constant for the gradient), and 0 with gradient 0 where the
    denominator is 0."""
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=reduced, keepdims=True))
    scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1)
    root = jnp.sqrt(scale)
    scaled = x / root / root  # twice by sqrt(s): 1/s stays out of the subnormals
    squares = jnp.sum(jnp.square(scaled), axis=reduced, keepdims=True)
    floor = jnp.sqrt(epsilon) / root / root
    norm = safe_sqrt(squares)
    if additive:
        # sqrt(|x|^2 + eps) / s = hypot(|x / s|, sqrt(eps) / s), without overflow.
        return safe_divide(scaled, jnp.hypot(norm, floor))
    # sqrt(max(|x|^2, eps)) / s = max(|x / s|, sqrt(eps) / s), both sides finite.
    return safe_divide(scaled, jnp.maximum(norm, floor))


def _cosine(
    predictions: ArrayLike, targets: ArrayLike, epsilon: ArrayLike, axis: Axis,
    where: ArrayLike | None,
) -> tuple[jax.Array, jax.Array | None, tuple[int, ...]]:
    """The similarities of each pair, the broadcast mask and the reduced axes."""
    _validate.non_negative("epsilon", epsilon)
    a = _validate.floating("predictions", predictions)
    b = _validate.floating("targets", targets)
    where = _validate.mask("where", where)
    eps = _validate.as_array("epsilon", epsilon)
    if eps.ndim != 0:
        raise ValueError(f"epsilon must be a scalar, got {_validate.describe(eps)}")
    dtype = _validate.compute_dtype(a.dtype, b.dtype)
    a, b, where = _axes.broadcast(("predictions", "targets", "where"), a.astype(dtype),
                                  b.astype(dtype), where)
    reduced = _axes.axes(axis, a.ndim)
    if where is not None:
        a, b = jnp.where(where, a, 0), jnp.where(where, b, 0)
    eps = eps.astype(dtype)
    similarity = jnp.sum(_unit(a, eps, reduced) * _unit(b, eps, reduced), axis=reduced)
    return similarity, where, reduced


def cosine_similarity(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    epsilon: ArrayLike = 0.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Cosine similarity of predictions and targets (``optax.losses.cosine_similarity``;
    PyTorch ``F.cosine_similarity``; Keras ``CosineSimilarity`` is its negative).

    .. math::
      s(a, b) = \frac{a}{\max(\lVert a \rVert, \sqrt\epsilon)} \cdot
                \frac{b}{\max(\lVert b \rVert, \sqrt\epsilon)}, \qquad
      \frac{\partial s}{\partial a} = \frac{\hat b - s\,\hat a}{\lVert a \rVert}
      \quad (\lVert a \rVert^2 > \epsilon)

    with :math:`\hat a = a / \lVert a \rVert`, and
    :math:`\partial s / \partial a = \hat b / \sqrt\epsilon` where
    :math:`\lVert a \rVert^2 < \epsilon` (optax's clip of the squared norms at
    ``epsilon``, whose values these are).

    Zero-vector convention: with ``epsilon=0`` a zero vector has similarity 0, and the
    gradient with respect to both vectors of that pair is 0 (the similarity has no
    limit there; PyTorch's ``CosineSimilarity`` gives similarity 0 too). optax 0.2.8
    gives NaN for the value and the gradient.

    The norms are formed from the vectors divided by their largest component, so
    vectors of any finite size give the right cosine (optax's squared norms overflow
    above about 1e19 in float32).

    Args:
      predictions: the predicted vectors, ``[..., dim]``.
      targets: the target vectors, broadcastable with ``predictions``.
      epsilon: the floor of the squared norms (>= 0).
      axis: the axis or axes of the vectors (None: all).
      where: boolean mask of the elements to include (broadcastable to the inputs).
      reduction: ``"none"`` (default, one value per vector pair), ``"mean"`` (over the
        pairs with an element selected) or ``"sum"``.

    Returns:
      The similarities, shape ``[...]``, in ``promote_types(dtype, float32)``.

    References:
      `Cosine similarity <https://en.wikipedia.org/wiki/Cosine_similarity>`_, Wikipedia.
    """
    reduction = _validate.reduction(reduction)
    similarity, where, reduced = _cosine(predictions, targets, epsilon, axis, where)
    return _axes.finish(similarity, reduction, where, reduced)


def cosine_distance(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    epsilon: ArrayLike = 0.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Cosine distance, :math:`1 - s(a, b)` (``optax.losses.cosine_distance``;
    PyTorch ``CosineEmbeddingLoss`` on similar pairs).

    :func:`cosine_similarity` gives :math:`s` and its conventions: a zero vector (with
    ``epsilon=0``) is at distance 1 with gradient 0, where optax 0.2.8 gives NaN.
    ``where``-masked pairs (no element selected) give 0, not 1, and are left out of
    ``"mean"``.

    Args:
      predictions: vectors along ``axis``.
      targets: vectors broadcastable to ``predictions``.
      epsilon: floor of each norm (optax's); 0 by default.
      axis: the vector axis or axes.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default, one value per vector), ``"mean"`` or ``"sum"``.

    References:
      `Cosine similarity <https://en.wikipedia.org/wiki/Cosine_similarity>`_, Wikipedia.
    """
    reduction = _validate.reduction(reduction)
    similarity, where, reduced = _cosine(predictions, targets, epsilon, axis, where)
    return _axes.finish(1 - similarity, reduction, where, reduced)


def cosine_embedding_loss(
    input1: ArrayLike,
    input2: ArrayLike,
    targets: ArrayLike,
    *,
    margin: ArrayLike = 0.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Cosine embedding loss, as PyTorch's ``torch.nn.functional.cosine_embedding_loss``
    (``CosineEmbeddingLoss``); optax has none.

    With PyTorch's :math:`\epsilon = 10^{-12}` added to each squared norm,

    .. math::
      c = \frac{x_1 \cdot x_2}{\sqrt{(\lVert x_1 \rVert^2 + \epsilon)
                                      (\lVert x_2 \rVert^2 + \epsilon)}}, \qquad
      \ell(x_1, x_2, y) = \begin{cases}
        1 - c & y = 1 \\
        \max(0, c - m) & y = -1 \\
        0 & \text{any other } y
      \end{cases}

    .. math::
      \frac{\partial c}{\partial x_1} = \frac{\hat x_2 - c\, \hat x_1}
        {\sqrt{\lVert x_1 \rVert^2 + \epsilon}}, \qquad
      \hat x = \frac{x}{\sqrt{\lVert x \rVert^2 + \epsilon}}

    so :math:`\partial \ell / \partial x_1 = -\partial c / \partial x_1` for
    :math:`y = 1` and :math:`\partial c / \partial x_1\,[c - m \ge 0]` for
    :math:`y = -1` (the whole gradient at the tie :math:`c = m`, as PyTorch's
    ``clamp_min``), and symmetrically for :math:`x_2`. A zero vector has :math:`c = 0`
    and the finite gradient :math:`\hat x_2 / \sqrt\epsilon` that PyTorch gives (the
    :math:`\epsilon` makes the loss differentiable there). The norms are formed from
    the vectors divided by their largest component (as :func:`cosine_similarity`), so
    vectors of any finite size give the right cosine, where PyTorch's float32 product of
    squared norms overflows above about 1e19.

    Args:
      input1: the first embeddings, ``[..., dim]``; the cosine is over the last axis.
      input2: the second embeddings, broadcastable with ``input1``.
      targets: :math:`y \in \{-1, 1\}`, broadcastable to the batch shape ``[...]``
        (gradient 0).
      margin: :math:`m` (PyTorch suggests :math:`[0, 0.5]` and checks nothing).
      where: boolean mask of the pairs to include, broadcastable to ``[...]``.
      reduction: ``"none"`` (default, one value per pair), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, shape ``[...]``, in ``promote_types(dtype, float32)``.

    References:
      `CosineEmbeddingLoss
      <https://pytorch.org/docs/stable/generated/torch.nn.CosineEmbeddingLoss.html>`_,
      PyTorch documentation.
    """
    reduction = _validate.reduction(reduction)
    a = _validate.floating("input1", input1)
    b = _validate.floating("input2", input2)
    y = _validate.numeric("targets", targets)
    margin = _validate.as_array("margin", margin)
    if margin.ndim != 0:
        raise ValueError(f"margin must be a scalar, got {_validate.describe(margin)}")
    where = _validate.mask("where", where)
    shape = _validate.broadcast_shapes(("input1", "input2"), a, b)
    if not shape:
        raise ValueError(f"input1 and input2 must have a feature axis, got input1 "
                         f"{_validate.describe(a)}, input2 {_validate.describe(b)}")
    batch = jax.ShapeDtypeStruct(shape[:-1], jnp.bool_)
    _validate.broadcasts_to("the batch shape of the inputs", batch, targets=y, where=where)
    dtype = _validate.compute_dtype(a.dtype, b.dtype)
    a, b = jnp.broadcast_to(a, shape).astype(dtype), jnp.broadcast_to(b, shape).astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, batch.shape)
        a, b = jnp.where(where[..., None], a, 0), jnp.where(where[..., None], b, 0)
    eps = jnp.asarray(_TORCH_COSINE_EPS, dtype)
    last = (len(shape) - 1,)
    c = jnp.sum(_unit(a, eps, last, additive=True) * _unit(b, eps, last, additive=True),
                axis=-1)
    y = jnp.broadcast_to(y, batch.shape)
    violation = c - margin.astype(dtype)
    losses = (jnp.where(y == 1, 1 - c, 0)
              + jnp.where(y == -1, jnp.where(violation < 0, 0, violation), 0))
    return weighted_reduce(losses, reduction, where=where, denominator=None)
