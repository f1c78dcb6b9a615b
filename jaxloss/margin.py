r"""Margin losses: binary and multiclass hinge and perceptron losses (optax's), and
PyTorch's multi-margin, multilabel-margin, margin-ranking and hinge-embedding losses.

Piecewise linear (or quadratic), so their derivatives are autodiff of the formulas
with PyTorch's subgradient at a kink of :math:`\max(0, z)`: 0 for optax's losses and
for PyTorch's ``multi_margin_loss`` and ``multilabel_margin_loss`` (whose kernels test
:math:`z > 0`), the whole gradient for PyTorch's ``margin_ranking_loss`` and
``hinge_embedding_loss`` (``clamp_min``, whose derivative is 1 at the tie). The
multiclass maximum shares its gradient equally among tied maxima (``jnp.max``'s
subgradient). No custom_vjp. Values are optax's, or PyTorch's, for every finite input.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._math import times
from jaxloss._reduce import Reduction, weighted_reduce

__all__ = [
    "hinge_embedding_loss",
    "hinge_loss",
    "margin_ranking_loss",
    "multi_margin_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multilabel_margin_loss",
    "perceptron_loss",
]


def _relu(z: jax.Array) -> jax.Array:
    """:math:`\\max(0, z)` with the subgradient 0 at 0."""
    return jnp.where(z > 0, z, 0)


def _clamp_min(z: jax.Array) -> jax.Array:
    """PyTorch's ``clamp_min(z, 0)``: the whole gradient at the tie ``z = 0`` (its
    derivative tests ``z >= 0``), and NaN stays NaN."""
    return jnp.where(z < 0, 0, z)


def _scalar(name: str, x: ArrayLike) -> jax.Array:
    x = _validate.as_array(name, x)
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got {_validate.describe(x)}")
    return x


def _binary(
    predictor_outputs: ArrayLike, targets: ArrayLike, where: ArrayLike | None,
    reduction: object, *, same_shape: bool,
) -> tuple[jax.Array, jax.Array | None, Reduction]:
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


def _multiclass(
    scores: ArrayLike, labels: ArrayLike, where: ArrayLike | None, reduction: object
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, Reduction]:
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


# ---------------------------------------------------------------------------------
# PyTorch's margin losses that optax lacks.


def _hinge(z: jax.Array) -> jax.Array:
    """:math:`\\max(0, z)` with the subgradient 0 at 0 (PyTorch's kernels test
    :math:`z > 0`), and NaN kept NaN (those kernels would drop it)."""
    return jnp.where((z > 0) | jnp.isnan(z), z, 0)


def _scores_and_rows(
    scores: ArrayLike, labels: ArrayLike, labels_name: str,
    labels_shape: Callable[[tuple[int, ...]], tuple[int, ...]], what: str,
    where: ArrayLike | None,
) -> tuple[jax.Array, jax.Array, jax.Array | None, tuple[int, ...]]:
    """The validated scores (rows outside ``where`` zeroed), labels and row mask."""
    scores = _validate.floating("scores", scores)
    labels = _validate.integer(labels_name, labels)
    if scores.ndim < 1:
        raise ValueError(f"scores must have a class axis, got {_validate.describe(scores)}")
    _validate.same_shape(labels_name, labels, labels_shape(scores.shape), what)
    where = _validate.mask("where", where)
    batch = scores.shape[:-1]
    _validate.broadcasts_to("the batch shape of scores", jax.ShapeDtypeStruct(batch, jnp.bool_),
                            where=where)
    return scores, labels, where, batch


def multi_margin_loss(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    p: int = 1,
    margin: ArrayLike = 1.0,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multiclass margin loss of Weston and Watkins, as PyTorch's
    ``torch.nn.functional.multi_margin_loss`` (``MultiMarginLoss``); optax has none.

    With :math:`C` classes, label :math:`y`, margin :math:`m` and class weights
    :math:`w` (default 1):

    .. math::
      \ell(x, y) = \frac{w_y}{C} \sum_{j \ne y} \max(0, z_j)^p, \qquad
      z_j = m - x_y + x_j,

    .. math::
      \frac{\partial \ell}{\partial x_j} = \frac{w_y}{C}\, p\, z_j^{p - 1} [z_j > 0]
      \quad (j \ne y), \qquad
      \frac{\partial \ell}{\partial x_y} = -\sum_{j \ne y}
        \frac{\partial \ell}{\partial x_j}, \qquad
      \frac{\partial \ell}{\partial m} = -\frac{\partial \ell}{\partial x_y}

    (subgradient 0 at the kink :math:`z_j = 0`, as PyTorch's kernel), and
    :math:`\partial \ell / \partial w_y = \ell / w_y`. ``reduction="mean"`` divides by
    the number of (selected) examples, not by the sum of their weights (PyTorch's
    definition for this loss).

    Args:
      scores: scores of the model, ``[..., num_classes]``.
      labels: integer labels, ``[...]``. PyTorch raises on a label outside
        ``[0, num_classes)``; under ``jit`` that cannot raise, so its loss is NaN
        (``jaxloss.checked`` raises).
      p: 1 (hinge, default) or 2 (squared hinge); static.
      margin: :math:`m` (PyTorch puts no bound on it).
      class_weights: :math:`w`, ``[num_classes]``, PyTorch's ``weight``.
      where: boolean mask of the examples to include, broadcastable to ``labels``.
      reduction: ``"none"`` (default, one value per example), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(scores.dtype, float32)``.

    References:
      Weston and Watkins, `Support Vector Machines for Multi-Class Pattern Recognition
      <https://www.esann.org/sites/default/files/proceedings/legacy/es1999-461.pdf>`_,
      ESANN 1999.
    """
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2 (PyTorch supports no other), got {p!r}")
    reduction = _validate.reduction(reduction)
    scores, labels, where, batch = _scores_and_rows(
        scores, labels, "labels", lambda s: s[:-1], "the batch shape of scores", where)
    margin = _scalar("margin", margin)
    num_classes = scores.shape[-1]
    dtypes = [scores.dtype]
    if class_weights is not None:
        class_weights = _validate.floating("class_weights", class_weights)
        _validate.same_shape("class_weights", class_weights, (num_classes,),
                             "one weight per class")
        dtypes.append(class_weights.dtype)
    dtype = _validate.compute_dtype(*dtypes)
    x = scores.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, batch)
        x = jnp.where(where[..., None], x, 0)
    is_label = labels[..., None] == jnp.arange(num_classes)
    x_y = jnp.sum(jnp.where(is_label, x, 0), axis=-1, keepdims=True)
    h = _hinge(margin.astype(dtype) - x_y + x)
    # Each term divided by C before the sum (and h (h / C) for p = 2): the mean stays
    # finite wherever it is representable.
    terms = h / num_classes if p == 1 else h * (h / num_classes)
    losses = jnp.sum(jnp.where(is_label, 0, terms), axis=-1)
    if class_weights is not None:
        w_y = jnp.sum(jnp.where(is_label, class_weights.astype(dtype), 0), axis=-1)
        losses = times(w_y, losses)
    valid = (labels >= 0) & (labels < num_classes)
    losses = jnp.where(valid, losses, jnp.nan)
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def multilabel_margin_loss(
    scores: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multilabel margin loss, as PyTorch's
    ``torch.nn.functional.multilabel_margin_loss`` (``MultiLabelMarginLoss``); optax
    has none.

    ``targets`` holds each example's target classes as indices padded with ``-1``: the
    entries before the first negative one are the targets :math:`T` (an index listed
    twice counts twice, as in PyTorch). With :math:`C` classes:

    .. math::
      \ell(x, T) = \frac{1}{C} \sum_{j \in T} \sum_{i \notin T} \max(0, z_{ji}), \qquad
      z_{ji} = 1 - (x_j - x_i),

    .. math::
      \frac{\partial \ell}{\partial x_i} = \frac{1}{C} \sum_{j \in T} [z_{ji} > 0]
      \quad (i \notin T), \qquad
      \frac{\partial \ell}{\partial x_j} = -\frac{1}{C} \sum_{i \notin T} [z_{ji} > 0]
      \quad (j \in T)

    (subgradient 0 at the kink :math:`z_{ji} = 0`, as PyTorch's kernel). Shapes are
    static: the targets are selected by masks, so the loss jit-compiles once per
    shape; it forms a ``[..., C, C]`` array of the pairs.

    Args:
      scores: scores of the model, ``[..., num_classes]``.
      targets: integer class indices, the shape of ``scores``, padded with ``-1``.
        PyTorch raises on an index of ``num_classes`` or more before the first ``-1``;
        under ``jit`` its example's loss is NaN instead.
      where: boolean mask of the examples to include, broadcastable to
        ``scores.shape[:-1]``.
      reduction: ``"none"`` (default, one value per example), ``"mean"`` (over the
        examples) or ``"sum"``.

    Returns:
      The losses, shape ``scores.shape[:-1]``, in ``promote_types(scores.dtype,
      float32)``.

    References:
      `MultiLabelMarginLoss
      <https://pytorch.org/docs/stable/generated/torch.nn.MultiLabelMarginLoss.html>`_,
      PyTorch documentation.
    """
    reduction = _validate.reduction(reduction)
    scores, targets, where, batch = _scores_and_rows(
        scores, targets, "targets", lambda s: s,
        "that of scores: class indices padded with -1", where)
    num_classes = scores.shape[-1]
    dtype = _validate.compute_dtype(scores.dtype)
    x = scores.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, batch)
        x = jnp.where(where[..., None], x, 0)
    # The slots before the first negative index count (PyTorch's loop stops there).
    counted = jnp.cumsum(targets < 0, axis=-1) == 0
    slot_is_class = counted[..., :, None] & (targets[..., :, None] == jnp.arange(num_classes))
    is_target = jnp.any(slot_is_class, axis=-2)
    x_j = jnp.take_along_axis(x, jnp.where(counted, targets, 0).clip(0, num_classes - 1),
                              axis=-1)
    z = 1 - x_j[..., :, None] + x[..., None, :]  # [..., slot j, class i]
    pairs = counted[..., :, None] & ~is_target[..., None, :]
    losses = jnp.sum(jnp.where(pairs, _hinge(z) / num_classes, 0), axis=(-2, -1))
    out_of_range = jnp.any(counted & (targets >= num_classes), axis=-1)
    losses = jnp.where(out_of_range, jnp.nan, losses)
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def margin_ranking_loss(
    input1: ArrayLike,
    input2: ArrayLike,
    targets: ArrayLike,
    *,
    margin: ArrayLike = 0.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Margin ranking loss, as PyTorch's ``torch.nn.functional.margin_ranking_loss``
    (``MarginRankingLoss``); optax has none.

    .. math::
      \ell(x_1, x_2, y) = \max\bigl(0,\ -y (x_1 - x_2) + m\bigr), \qquad
      \frac{\partial \ell}{\partial x_1} = -\frac{\partial \ell}{\partial x_2}
        = -y\,[z \ge 0], \qquad
      \frac{\partial \ell}{\partial y} = -(x_1 - x_2)\,[z \ge 0]

    with :math:`z = -y (x_1 - x_2) + m`; at the kink :math:`z = 0` the gradient is the
    whole one, as PyTorch's ``clamp_min``. :math:`y = 1` asks for
    :math:`x_1 > x_2 + m`, :math:`y = -1` for :math:`x_2 > x_1 + m`.

    Args:
      input1: the first scores to rank, any floating shape.
      input2: the second scores, broadcastable with ``input1``.
      targets: :math:`y \in \{-1, 1\}`, broadcastable with the inputs.
      margin: :math:`m` (PyTorch puts no bound on it).
      where: boolean mask of the elements to include (broadcastable to the result).
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, the broadcast shape, in at least float32.

    References:
      `MarginRankingLoss
      <https://pytorch.org/docs/stable/generated/torch.nn.MarginRankingLoss.html>`_,
      PyTorch documentation.
    """
    reduction = _validate.reduction(reduction)
    x1 = _validate.floating("input1", input1)
    x2 = _validate.floating("input2", input2)
    y = _validate.numeric("targets", targets)
    margin = _scalar("margin", margin)
    shape = _validate.broadcast_shapes(("input1", "input2", "targets"), x1, x2, y)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("the inputs", jax.ShapeDtypeStruct(shape, jnp.bool_), where=where)
    dtype = _validate.compute_dtype(x1.dtype, x2.dtype, y.dtype)
    x1, x2, y = (jnp.broadcast_to(a, shape).astype(dtype) for a in (x1, x2, y))
    if where is not None:
        where = jnp.broadcast_to(where, shape)
        x1, x2, y = (jnp.where(where, a, 0) for a in (x1, x2, y))
    losses = _clamp_min(-y * (x1 - x2) + margin.astype(dtype))
    return weighted_reduce(losses, reduction, where=where, denominator=None)


def hinge_embedding_loss(
    distances: ArrayLike,
    targets: ArrayLike,
    *,
    margin: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Hinge embedding loss, as PyTorch's ``torch.nn.functional.hinge_embedding_loss``
    (``HingeEmbeddingLoss``); optax has none.

    .. math::
      \ell(x, y) = \begin{cases}
        x & y = 1 \\
        \max(0, m - x) & y = -1 \\
        x + \max(0, m - x) = \max(x, m) & \text{any other } y
      \end{cases}

    The third line is what PyTorch computes for a target that is neither 1 nor -1
    (its two terms are selected by :math:`y \ne -1` and :math:`y \ne 1`).

    .. math::
      \frac{\partial \ell}{\partial x} = [y \ne -1] - [y \ne 1]\,[m - x \ge 0], \qquad
      \frac{\partial \ell}{\partial m} = [y \ne 1]\,[m - x \ge 0]

    (the whole gradient at the kink :math:`x = m`, as PyTorch's ``clamp_min``); the
    targets get gradient 0.

    Args:
      distances: :math:`x`, typically distances (e.g. L1) between pairs, any floating
        shape.
      targets: :math:`y \in \{-1, 1\}`, broadcastable to ``distances``.
      margin: :math:`m` (PyTorch puts no bound on it).
      where: boolean mask of the elements to include (broadcastable to ``distances``).
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, the shape of ``distances``, in at least float32.

    References:
      `HingeEmbeddingLoss
      <https://pytorch.org/docs/stable/generated/torch.nn.HingeEmbeddingLoss.html>`_,
      PyTorch documentation.
    """
    reduction = _validate.reduction(reduction)
    x = _validate.floating("distances", distances)
    y = _validate.numeric("targets", targets)
    margin = _scalar("margin", margin)
    _validate.broadcasts_to("distances", x, targets=y)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("distances", x, where=where)
    dtype = _validate.compute_dtype(x.dtype)
    x = x.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, x.shape)
        x = jnp.where(where, x, 0)
    y = jnp.broadcast_to(y, x.shape)
    push = jnp.where(y != 1, _clamp_min(margin.astype(dtype) - x), 0)
    pull = jnp.where(y != -1, x, 0)
    return weighted_reduce(push + pull, reduction, where=where, denominator=None)
