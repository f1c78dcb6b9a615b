"""Contrastive and metric-learning losses: pairwise distances, the contrastive loss of
Siamese networks, triplet margin, NT-Xent and InfoNCE, and pair sampling.

The naive Euclidean distance ``jnp.linalg.norm(a - b)`` has a NaN gradient at
``a == b``, exactly where a Siamese network starts (both towers share weights, so a
pair of identical inputs has distance 0). Here the distance carries a custom rule
(:mod:`jaxloss._rules`, reverse and forward mode) that returns PyTorch's subgradient 0
there, and every loss built on it inherits a finite gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _rules, _softmax, _validate
from jaxloss import distributed as dist
from jaxloss._math import abs0
from jaxloss._math import safe_divide as _safe_divide
from jaxloss._math import safe_sqrt as _safe_sqrt
from jaxloss._reduce import Reduction, overflow_safe_mean, weighted_reduce

__all__ = [
    "contrastive_loss",
    "contrastive_loss_from_distance",
    "info_nce",
    "make_pairs",
    "ntxent",
    "pairwise_distance",
    "siglip_loss",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
]

Metric = Literal["euclidean", "squared_euclidean", "cosine"]
METRICS = ("euclidean", "squared_euclidean", "cosine")


# ---------------------------------------------------------------------------------
# Distances.


@_rules.rule()
def _euclidean(a: jax.Array, b: jax.Array, eps: jax.Array) -> jax.Array:
    return _euclidean_value(a, b, eps)


def _scaled(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x / s`` and ``s = max |x|`` over the last axis (1 where that is 0 or not finite).

    Dividing twice by sqrt(s) keeps 1/s out of the subnormal range, which the CPU
    flushes to zero, for |x| up to the float32 maximum."""
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1)
    root = jnp.sqrt(scale)
    return x / root / root, scale


def _norm(x: jax.Array) -> jax.Array:
    """The 2-norm over the last axis, scaled so that squaring cannot overflow (or
    underflow) while the norm itself is representable."""
    unit, scale = _scaled(x)
    return scale[..., 0] * jnp.sqrt(jnp.sum(jnp.square(unit), axis=-1))


def _euclidean_value(a: jax.Array, b: jax.Array, eps: jax.Array) -> jax.Array:
    r""":math:`d = \lVert a - b + \epsilon \rVert_2` over the last axis.

    The plain root of the sum of squares, one pass, wherever that is exact: the sum
    neither overflows nor is so small that squares flushed to zero could matter (at
    most ``n * tiny`` lost, below ``eps`` of the sum). Only then are the rows scaled by
    their largest entry first (:func:`_norm`, two passes), in a branch that runs only
    when a row needs it."""
    sum_sq = jnp.sum(jnp.square(a - b + eps), axis=-1)
    info = jnp.finfo(sum_sq.dtype)
    low = a.shape[-1] * float(info.tiny) / float(info.eps)
    ok = (sum_sq >= low) & (sum_sq <= info.max)  # False for NaN
    plain = jnp.sqrt(sum_sq)
    # The predicate from a min and a max of the rows: both fuse with the sum's pass.
    every = (jnp.min(sum_sq, initial=info.max) >= low) & (jnp.max(sum_sq, initial=0) <= info.max)
    return jax.lax.cond(every, lambda: plain,
                        lambda: jnp.where(ok, plain, _norm(a - b + eps)))


def _euclidean_fwd(
    a: jax.Array, b: jax.Array, eps: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    d = _euclidean_value(a, b, eps)
    return d, (a, b, eps, d)


def _euclidean_bwd(
    residuals: tuple[jax.Array, jax.Array, jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r""":math:`\partial d/\partial a = (a - b + \epsilon)/d`, and 0 at :math:`d = 0`
    (PyTorch's subgradient of the norm)."""
    a, b, eps, d = residuals
    d_a = _safe_divide(g, d)[..., None] * (a - b + eps)
    return d_a, -d_a, jnp.sum(d_a).astype(eps.dtype)


_euclidean.defvjp(_euclidean_fwd, _euclidean_bwd)


def _lp_distance(a: jax.Array, b: jax.Array, p: float, eps: jax.Array) -> jax.Array:
    r""":math:`\lVert a - b + \epsilon \rVert_p` with a zero gradient at distance 0."""
    if p == 2:
        return _euclidean(*dist.match_varying(a, b, eps))
    x = a - b + eps
    if p == 1:
        return jnp.sum(abs0(x), axis=-1)
    total = jnp.sum(jnp.abs(x) ** p, axis=-1)
    positive = total > 0
    return jnp.where(positive, jnp.where(positive, total, 1) ** (1 / p), 0)


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """1 - cosine similarity; a zero vector has similarity 0 (distance 1), gradient 0.

    Each vector is divided by its largest |component| first (cosine is scale free), so
    huge vectors do not overflow the dot product."""

    a, b = _scaled(a)[0], _scaled(b)[0]
    norms = _safe_sqrt(jnp.sum(a * a, axis=-1)) * _safe_sqrt(jnp.sum(b * b, axis=-1))
    return 1 - _safe_divide(jnp.sum(a * b, axis=-1), norms)


def _embedding_pair(
    names: tuple[str, str], a: ArrayLike, b: ArrayLike, axis: int
) -> tuple[jax.Array, jax.Array]:
    """Two float embeddings broadcast together, feature axis last, in the compute dtype."""
    a = _validate.floating(names[0], a)
    b = _validate.floating(names[1], b)
    shape = _validate.broadcast_shapes(names, a, b)
    if not shape:
        raise ValueError(f"{names[0]} and {names[1]} must have a feature axis, got scalars")
    axis = _validate.canonical_axis("axis", axis, len(shape))
    dtype = _validate.compute_dtype(a.dtype, b.dtype)
    a = jnp.moveaxis(jnp.broadcast_to(a, shape), axis, -1).astype(dtype)
    b = jnp.moveaxis(jnp.broadcast_to(b, shape), axis, -1).astype(dtype)
    return a, b


def _distance(a: jax.Array, b: jax.Array, metric: str) -> jax.Array:
    if metric == "euclidean":
        return _euclidean(*dist.match_varying(a, b, jnp.zeros((), a.dtype)))
    if metric == "squared_euclidean":
        return jnp.sum(jnp.square(a - b), axis=-1)
    if metric == "cosine":
        return _cosine_distance(a, b)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


@_validate.jit(static_argnames=("metric", "axis"))
def pairwise_distance(
    a: ArrayLike, b: ArrayLike, *, metric: Metric = "euclidean", axis: int = -1
) -> jax.Array:
    r"""Distance between paired embeddings along ``axis``.

    - ``"euclidean"``: :math:`\lVert a - b \rVert_2` (``torch.nn.functional.
      pairwise_distance`` with ``eps=0``);
    - ``"squared_euclidean"``: :math:`\lVert a - b \rVert_2^2`;
    - ``"cosine"``: :math:`1 - \frac{a \cdot b}{\lVert a \rVert \lVert b \rVert}`, with
      similarity 0 (distance 1) when a vector is 0.

    The gradient is 0, not NaN, where ``a == b`` (Euclidean: PyTorch's subgradient of
    the norm) or a vector is 0 (cosine; ``torch.nn.functional.cosine_similarity``
    divides by its ``eps`` there instead, and its gradient is of order 1/eps).

    Args:
      a: embeddings.
      b: embeddings, broadcastable with ``a``.
      metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
      axis: the feature axis.

    Returns:
      The distances, the broadcast shape without ``axis``.

    References:
      `Euclidean distance <https://en.wikipedia.org/wiki/Euclidean_distance>`_ and
      `cosine similarity <https://en.wikipedia.org/wiki/Cosine_similarity>`_, Wikipedia.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a, b = _embedding_pair(("a", "b"), a, b, axis)
    return _distance(a, b, metric)


# ---------------------------------------------------------------------------------
# The contrastive loss (Hadsell, Chopra & LeCun).


def _contrastive_terms(distances: jax.Array, similar: jax.Array, margin: jax.Array) -> jax.Array:
    hinge = jnp.maximum(margin - distances, 0)
    squared = jnp.square(distances)
    # 0 * inf = 0 for a dissimilar pair at an overflowing distance; elsewhere the plain
    # product, whose derivative in `similar` is d^2 also at similar = 0.
    pull = jnp.where((similar == 0) & jnp.isinf(squared), 0, similar * squared)
    return 0.5 * (pull + (1 - similar) * jnp.square(hinge))


def _similar_labels(similar: ArrayLike, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    similar = _validate.numeric("similar", similar)
    if _validate.broadcast_shapes(("distances", "similar"), jnp.empty(shape), similar) != shape:
        raise ValueError(
            f"similar must broadcast to the {shape} pairs, got {_validate.describe(similar)}"
        )
    return jnp.broadcast_to(similar.astype(dtype), shape)


@_validate.jit(static_argnames=("reduction",), checks={"margin": _validate.non_negative})
def contrastive_loss_from_distance(
    distances: ArrayLike,
    similar: ArrayLike,
    *,
    margin: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""The contrastive loss of precomputed distances.

    .. math::
      \ell(d, y) = \tfrac12\bigl[y\,d^2 + (1 - y)\max(m - d, 0)^2\bigr]

    with :math:`y = 1` for a similar pair. TensorFlow Addons' ``ContrastiveLoss`` takes
    the same :math:`d` but has no factor :math:`\tfrac12`: its values are twice these.

    Args:
      distances: non-negative distances, one per pair.
      similar: 1 (or True) for a similar pair, 0 for a dissimilar one.
      margin: :math:`m \ge 0`, the distance beyond which a dissimilar pair costs nothing.
      where: boolean mask of the pairs to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Hadsell, Chopra & LeCun, `Dimensionality Reduction by Learning an Invariant
      Mapping <https://doi.org/10.1109/CVPR.2006.100>`_, CVPR 2006.
    """
    distances = _validate.floating("distances", distances)
    _validate.non_negative("margin", margin)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("distances", distances, where=where)
    dtype = _validate.compute_dtype(distances.dtype)
    similar = _similar_labels(similar, tuple(distances.shape), dtype)
    losses = _contrastive_terms(distances.astype(dtype), similar, jnp.asarray(margin, dtype))
    return weighted_reduce(losses, reduction, where=where, denominator=None)


@_validate.jit(static_argnames=("metric", "reduction"),
               checks={"margin": _validate.non_negative})
def contrastive_loss(
    embeddings_a: ArrayLike,
    embeddings_b: ArrayLike,
    similar: ArrayLike,
    *,
    margin: ArrayLike = 1.0,
    metric: Metric = "euclidean",
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Contrastive loss of a Siamese network's paired embeddings.

    .. math::
      \ell = \tfrac12\bigl[y\,d^2 + (1 - y)\max(m - d, 0)^2\bigr], \qquad
      d = \lVert a - b \rVert_2

    .. math::
      \frac{\partial\ell}{\partial a} = \Bigl[y - (1 - y)\frac{\max(m - d, 0)}{d}\Bigr]
        (a - b), \qquad \frac{\partial\ell}{\partial b} = -\frac{\partial\ell}{\partial a}

    :math:`y = 1` marks a similar pair (pulled together), :math:`y = 0` a dissimilar
    one (pushed apart until :math:`d \ge m`). ``reduction="mean"`` is the tutorial's
    :math:`\frac{1}{2N}\sum_i [\dots]`. At :math:`d = 0` the gradient is finite for both
    labels: 0 for a similar pair, and 0 for a dissimilar one (the direction to push is
    undefined; PyTorch's subgradient), where the naive ``jnp.linalg.norm`` version gives
    NaN for both. The care sits in the distance's ``jax.custom_vjp``
    (:func:`pairwise_distance`), which every metric goes through. Elsewhere the
    gradients are PyTorch autograd's of the same formula.

    Args:
      embeddings_a: embeddings of each pair's first side, ``[..., D]``.
      embeddings_b: embeddings of each pair's second side, ``[..., D]``.
      similar: 1 (or True) for a similar pair, 0 for a dissimilar one, ``[...]``.
      margin: :math:`m \ge 0`.
      metric: the distance :math:`d`: ``"euclidean"`` (default), ``"squared_euclidean"``
        or ``"cosine"``.
      where: boolean mask of the pairs to include.
      reduction: ``"none"`` (default, one value per pair), ``"mean"`` or ``"sum"``.

    Examples:
      A similar pair at distance 5 and a dissimilar pair at distance 1, inside the margin:

      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> a = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> b = jnp.array([[3.0, 4.0], [1.0, 2.0]])
      >>> jaxloss.contrastive_loss(a, b, jnp.array([1, 0]), margin=2.0).tolist()
      [12.5, 0.5]

    References:
      Hadsell, Chopra & LeCun, `Dimensionality Reduction by Learning an Invariant
      Mapping <https://doi.org/10.1109/CVPR.2006.100>`_, CVPR 2006.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a, b = _embedding_pair(("embeddings_a", "embeddings_b"), embeddings_a, embeddings_b, -1)
    return contrastive_loss_from_distance(
        _distance(a, b, metric), similar, margin=margin, where=where, reduction=reduction
    )


# ---------------------------------------------------------------------------------
# Triplet margin loss (PyTorch TripletMarginLoss).


@_validate.jit(static_argnames=("axis", "norm_degree", "swap", "reduction"),
               checks={"margin": _validate.non_negative})
def triplet_margin_loss(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike,
    axis: int = -1,
    norm_degree: float = 2,
    margin: ArrayLike = 1.0,
    eps: ArrayLike = 1e-6,
    *,
    swap: bool = False,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Triplet margin loss with PyTorch ``TripletMarginLoss`` semantics.

    .. math::
      \ell = \max\bigl(d(a, p) - d(a, n) + m,\ 0\bigr), \qquad
      d(x, y) = \lVert x - y + \epsilon \rVert_p

    With ``swap=True``, :math:`d(a, n)` becomes :math:`\min(d(a, n), d(p, n))`
    (Balntas et al.'s distance swap). Values and gradients are PyTorch's for
    :math:`p = 1` and :math:`p = 2`, with the subgradient 0 where a distance is 0.

    ``optax.losses.triplet_margin_loss`` differs in two ways: it adds :math:`\epsilon`
    inside the root, :math:`(\sum_i (x_i - y_i)^p + \epsilon)^{1/p}` (so equal values at
    ``eps=0``, within :math:`O(\epsilon)` otherwise), and takes no absolute value,
    which makes its ``norm_degree=1`` a signed sum rather than a distance.

    Args:
      anchors: embeddings ``[..., D]``.
      positives: embeddings ``[..., D]``, broadcastable with ``anchors``.
      negatives: embeddings ``[..., D]``, broadcastable with ``anchors``.
      axis: the feature axis (``D`` above), over which the distances are taken.
      norm_degree: :math:`p \ge 1`.
      margin: :math:`m \ge 0`.
      eps: added to each difference, as PyTorch does.
      swap: use the distance swap.
      reduction: ``"none"`` (default, one value per triplet), ``"mean"`` or ``"sum"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> anchor, positive = jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]])
      >>> negative = jnp.array([[0.0, 1.5]])  # max(1 - 1.5 + margin, 0)
      >>> loss = jaxloss.triplet_margin_loss(anchor, positive, negative, margin=1.0)
      >>> [round(v, 4) for v in loss.tolist()]
      [0.5]

    References:
      Balntas et al., `Learning local feature descriptors with triplets and shallow
      convolutional neural networks <https://doi.org/10.5244/C.30.119>`_, BMVC 2016.
    """
    if not isinstance(norm_degree, int | float) or not norm_degree >= 1:
        raise ValueError(f"norm_degree must be a number >= 1, got {norm_degree!r}")
    _validate.non_negative("margin", margin)
    reduction = _validate.reduction(reduction)
    names = ("anchors", "positives", "negatives")
    arrays = [_validate.floating(n, x) for n, x in zip(names, (anchors, positives, negatives),
                                                      strict=True)]
    shape = _validate.broadcast_shapes(names, *arrays)
    if not shape:
        raise ValueError("anchors, positives and negatives must have a feature axis")
    axis = _validate.canonical_axis("axis", axis, len(shape))
    dtype = _validate.compute_dtype(*(x.dtype for x in arrays))
    a, p, n = (jnp.moveaxis(jnp.broadcast_to(x, shape), axis, -1).astype(dtype)
               for x in arrays)
    eps = jnp.asarray(eps, dtype)
    positive = _lp_distance(a, p, norm_degree, eps)
    negative = _lp_distance(a, n, norm_degree, eps)
    if swap:
        negative = jnp.minimum(negative, _lp_distance(p, n, norm_degree, eps))
    violation = positive - negative + jnp.asarray(margin, dtype)
    # PyTorch's clamp_min: the whole gradient at the tie (jnp.maximum halves it), and
    # NaN stays NaN.
    losses = jnp.where(violation < 0, 0, violation)
    return weighted_reduce(losses, reduction, where=None, denominator=None)


# PyTorch's pairwise_distance default, the distance of triplet_margin_with_distance_loss.
_PAIRWISE_EPS = 1e-6


def _pairwise_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    r"""``torch.nn.functional.pairwise_distance(a, b)``: :math:`\lVert a - b + 10^{-6}
    \rVert_2` over the last axis, with gradient 0 at distance 0."""
    return _lp_distance(a, b, 2, jnp.asarray(_PAIRWISE_EPS, a.dtype))


@_validate.jit(static_argnames=("distance_function", "swap", "reduction"),
               checks={"margin": _validate.positive})
def triplet_margin_with_distance_loss(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike,
    *,
    distance_function: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    margin: ArrayLike = 1.0,
    swap: bool = False,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Triplet margin loss with a distance of your choice, as PyTorch's
    ``torch.nn.functional.triplet_margin_with_distance_loss``
    (``TripletMarginWithDistanceLoss``); optax has none.

    .. math::
      \ell = \max\bigl(d(a, p) - d(a, n) + m,\ 0\bigr), \qquad
      \frac{\partial \ell}{\partial a} = [z \ge 0]\,
        \bigl(\nabla_1 d(a, p) - \nabla_1 d(a, n)\bigr)

    with :math:`z = d(a, p) - d(a, n) + m` and the whole gradient at the tie
    :math:`z = 0` (PyTorch's ``clamp_min``); :math:`\partial \ell / \partial p =
    [z \ge 0]\, \nabla_2 d(a, p)`, :math:`\partial \ell / \partial n =
    -[z \ge 0]\, \nabla_2 d(a, n)`, :math:`\partial \ell / \partial m = [z \ge 0]`.
    With ``swap=True``, :math:`d(a, n)` becomes :math:`\min(d(a, n), d(p, n))` (the
    distance swap of Balntas et al.).

    The default distance is PyTorch's ``pairwise_distance``,
    :math:`d(x, y) = \lVert x - y + 10^{-6} \rVert_2` (what :func:`triplet_margin_loss`
    uses by default), with gradient 0 where that is 0.

    ``distance_function`` is a static argument of a ``jax.jit``: it is traced, as a pure
    function of its two arguments, into the compiled loss, so it must be hashable and is
    compared by identity. Pass the same function object each call (define it once, not
    as a new ``lambda`` per step) or each call compiles anew. It receives the embeddings
    broadcast together, ``[..., D]``, in the compute dtype (float32 for bf16/fp16
    inputs), and returns one distance per triplet, ``[...]``; its gradient is JAX's
    autodiff of it (e.g. ``lambda a, b: 1 - jaxloss.cosine_similarity(a, b)``).

    Args:
      anchors: embeddings ``[..., D]``.
      positives: embeddings ``[..., D]``, broadcastable with ``anchors``.
      negatives: embeddings ``[..., D]``, broadcastable with ``anchors``.
      distance_function: ``(x, y) -> distances``, or None for ``pairwise_distance``.
      margin: :math:`m > 0` (PyTorch raises otherwise; so does this, when the margin is
        known at trace time).
      swap: use the distance swap.
      where: boolean mask of the triplets to include, broadcastable to ``[...]``.
      reduction: ``"none"`` (default, one value per triplet), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, shape ``[...]``, in ``promote_types(dtype, float32)`` (or the
      distance's dtype, if that is wider).

    References:
      Balntas et al., `Learning local feature descriptors with triplets and shallow
      convolutional neural networks <https://doi.org/10.5244/C.30.119>`_, BMVC 2016.
    """
    if distance_function is not None and not callable(distance_function):
        raise TypeError(f"distance_function must be a callable (x, y) -> distances or None, "
                        f"got {type(distance_function).__name__}")
    _validate.positive("margin", margin)
    reduction = _validate.reduction(reduction)
    names = ("anchors", "positives", "negatives")
    arrays = [_validate.floating(n, x) for n, x in zip(names, (anchors, positives, negatives),
                                                      strict=True)]
    shape = _validate.broadcast_shapes(names, *arrays)
    if not shape:
        raise ValueError("anchors, positives and negatives must have a feature axis")
    margin = _validate.as_array("margin", margin)
    if margin.ndim != 0:
        raise ValueError(f"margin must be a scalar, got {_validate.describe(margin)}")
    where = _validate.mask("where", where)
    batch = shape[:-1]
    _validate.broadcasts_to("the batch shape of anchors", jax.ShapeDtypeStruct(batch, bool),
                            where=where)
    dtype = _validate.compute_dtype(*(x.dtype for x in arrays))
    a, p, n = (jnp.broadcast_to(x, shape).astype(dtype) for x in arrays)
    if where is not None:
        where = jnp.broadcast_to(where, batch)
        a, p, n = (jnp.where(where[..., None], x, 0) for x in (a, p, n))
    distance = _pairwise_distance if distance_function is None else distance_function

    def d(x: jax.Array, y: jax.Array) -> jax.Array:
        out = jnp.asarray(distance(x, y))
        if tuple(out.shape) != batch:
            raise ValueError(f"distance_function must return one distance per triplet, shape "
                             f"{batch}, got {_validate.describe(out)}")
        return out

    positive, negative = d(a, p), d(a, n)
    if swap:
        negative = jnp.minimum(negative, d(p, n))
    violation = positive - negative + margin.astype(dtype)
    losses = jnp.where(violation < 0, 0, violation)  # clamp_min: whole gradient at the tie
    return weighted_reduce(losses, reduction, where=where, denominator=None)


# ---------------------------------------------------------------------------------
# NT-Xent (SimCLR), optax's definition.


def _logsumexp_where(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Row log-sum-exp over ``mask``; -inf for an empty row, with no NaN in its gradient."""
    m = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isneginf(m), 0, m))
    total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, x, m) - m), 0), axis=-1)
    empty = total == 0
    return jnp.where(empty, -jnp.inf, m[..., 0] + jnp.log(jnp.where(empty, 1, total)))


@_validate.jit(static_argnames=("axis_name", "precision"),
               checks={"temperature": _validate.positive,
                       "precision": _validate.check_precision})
def ntxent(
    embeddings: ArrayLike,
    labels: ArrayLike,
    temperature: ArrayLike = 0.07,
    *,
    axis_name: dist.AxisName | None = None,
    precision: _validate.Precision = None,
) -> jax.Array:
    r"""Normalized temperature-scaled cross-entropy (NT-Xent, SimCLR), optax's definition.

    With :math:`s_{ij} = \cos(e_i, e_j)/\tau`, :math:`P` the positive pairs
    (:math:`i \ne j`, same label) and :math:`N_i` the negatives of :math:`i`:

    .. math::
      L = \frac{1}{|P|}\sum_{(i,j) \in P}
          -\log\frac{e^{s_{ij}}}{e^{s_{ij}} + \sum_{k \in N_i} e^{s_{ik}}}

    The same values as ``optax.losses.ntxent`` wherever optax's are finite; a batch
    with no positive pair gives 0 with a zero gradient (optax: NaN), and a row with no
    negative contributes 0 per positive.

    **Across devices** (``axis_name``, inside ``jax.shard_map``): each device holds
    :math:`b = B/n` rows of ``embeddings`` and ``labels``; the normalized embeddings
    and the labels of every device are gathered (the embeddings' gradient
    reduce-scattered back to their owner), each device computes its :math:`b \times B`
    rows of :math:`s`, and the sum over its positive pairs and their count are
    ``psum``-med: every device returns the global :math:`L`, equal to the single-device
    value, and the gradients equal the single-device ones.

    Args:
      embeddings: ``[batch, features]`` (this device's rows with ``axis_name``).
      labels: integer group ids ``[batch]``; equal ids mark positive pairs.
      temperature: :math:`\tau > 0`.
      axis_name: the mesh axis (or tuple of axes) the batch is split over, inside
        ``jax.shard_map``; None (default) for the whole batch on one device.
      precision: the precision of the similarity matmul, as ``jnp.matmul`` takes it: None
        (default: ``jax_default_matmul_precision``), ``"default"``, ``"high"``,
        ``"highest"``, a ``jax.lax.Precision`` or a pair; the backward pass uses the
        same. On a CPU float32 products are exact at any setting; the default is TF32
        on NVIDIA GPUs and one bf16 pass on TPUs (about 1e-3 relative). Pass
        ``"highest"`` to compare with a float64 reference or another implementation.

    Returns:
      A scalar, the mean over positive pairs (of the global batch with ``axis_name``).

    Raises:
      ValueError: ``axis_name`` is not bound (the call is not inside a
        ``jax.shard_map`` over that axis).

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual
      Representations <https://arxiv.org/abs/2002.05709>`_, 2020.
    """
    embeddings = _validate.floating("embeddings", embeddings)
    labels = _validate.integer("labels", labels)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [batch, features], got "
                         f"{_validate.describe(embeddings)}")
    _validate.same_shape("labels", labels, embeddings.shape[:1], "one label per embedding")
    _validate.positive("temperature", temperature)
    _check_axis_name(axis_name)
    dtype = _validate.compute_dtype(embeddings.dtype)
    e = embeddings.astype(dtype)
    # optax's cosine similarity: squared norms clipped at the dtype's epsilon.
    eps = jnp.finfo(embeddings.dtype).eps
    unit = e / jnp.sqrt(jnp.clip(jnp.sum(e * e, axis=-1, keepdims=True), eps))
    rows = labels.shape[0]
    if axis_name is None:
        # Over an Explicit mesh: each device scores its rows against every row (the
        # columns gathered), so the scores are split by rows as the batch is.
        unit_all, labels_all, offset = _replicated(unit), _replicated(labels), 0
    else:
        unit_all = dist.all_gather_with_grad(unit, axis_name)
        labels_all = dist.all_gather_with_grad(labels, axis_name)
        offset = dist.axis_index(axis_name) * rows
    precision = _validate.precision("precision", precision)
    s = jnp.matmul(unit, unit_all.T, precision=precision) / jnp.asarray(temperature, dtype)
    same = labels[:, None] == labels_all[None, :]
    itself = jnp.arange(rows)[:, None] + offset == jnp.arange(labels_all.shape[0])[None, :]
    positives = same & ~itself
    negatives_lse = _logsumexp_where(s, ~same)
    # -log(e^s / (e^s + sum_neg)) = logaddexp(s, lse_neg) - s, finite for finite s.
    per_pair = jnp.logaddexp(s, negatives_lse[:, None]) - s
    total = jnp.sum(jnp.where(positives, per_pair, 0))
    count = jnp.sum(positives).astype(dtype)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), dist.axis_tuple(axis_name))
    return _safe_divide(total, count)


# ---------------------------------------------------------------------------------
# InfoNCE (CLIP).


def _scores(q: jax.Array, k: jax.Array, temperature: jax.Array,
            precision: _validate.Precision) -> jax.Array:
    """:math:`q k^\\top / \\tau`, accumulated in the compute dtype (float32 for bf16)."""
    return jnp.matmul(q, k.T, precision=precision,
                      preferred_element_type=temperature.dtype) / temperature


def _row_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """``[B, ...]`` zero-padded to a multiple of ``chunk`` and split: ``[B/chunk, chunk, ...]``."""
    pad = -x.shape[0] % chunk
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape((-1, chunk) + x.shape[1:])


def _carry(axis_name: dist.AxisName | None, a: jax.Array,
           b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A scan's initial carry, varying over ``axis_name`` like the values it meets."""
    return (a, b) if axis_name is None else (dist.varying(a, axis_name),
                                             dist.varying(b, axis_name))


# The inputs, the row normalizer (m, log s) and the column one (symmetric only).
_InfoNCEResiduals = tuple[jax.Array, jax.Array, jax.Array, jax.Array,
                          tuple[jax.Array, jax.Array], tuple[jax.Array, ...] | None]


@_rules.rule(nondiff_argnums=(4, 5, 6, 7))
def _info_nce(q: jax.Array, k: jax.Array, k_all: jax.Array, temperature: jax.Array,
              symmetric: bool, chunk: int | None, axis_name: dist.AxisName | None,
              precision: _validate.Precision) -> jax.Array:
    return _info_nce_fwd(q, k, k_all, temperature, symmetric, chunk, axis_name, precision)[0]


def _info_nce_fwd(q: jax.Array, k: jax.Array, k_all: jax.Array, temperature: jax.Array,
                  symmetric: bool, chunk: int | None, axis_name: dist.AxisName | None,
                  precision: _validate.Precision) -> tuple[jax.Array, _InfoNCEResiduals]:
    r"""Row :math:`i`: :math:`\mathrm{lse}_j(s_{ij}) - s_{i,o+i}`; symmetric adds the
    column term and halves. ``q`` and ``k`` are this device's rows, ``k_all`` the keys
    of every device (``k`` itself on one device), :math:`o` the offset of this device's
    rows. Residuals: the inputs and the normalizer :math:`(m, \log s)` of each row (and
    column), kept apart (:mod:`jaxloss._softmax`)."""
    dtype = temperature.dtype
    batch = q.shape[0]
    diagonal = jnp.sum(q.astype(dtype) * k, axis=-1) / temperature
    col: tuple[jax.Array, ...] | None = None
    if chunk is None:
        s = _scores(q, k_all, temperature, precision)
        row_m, row_log_s = (a[:, 0] for a in _softmax.normalizer(s, dtype, axis=1))
        if symmetric and axis_name is None:
            col = tuple(a[0] for a in _softmax.normalizer(s, dtype, axis=0))
        elif symmetric and axis_name is not None:
            col_max = jnp.max(s, axis=0)
            col_sum = jnp.sum(jnp.exp(s - _softmax.finite_shift(col_max)), axis=0)
            col = _softmax.finish(*_softmax.combine(col_max, col_sum, axis_name))
    else:
        starts = jnp.arange(0, batch + (-batch % chunk), chunk)
        columns = k_all.shape[0]

        def step(carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, jax.Array]
                 ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
            q_chunk, start = xs
            s = _scores(q_chunk, k_all, temperature, precision)
            real = (start + jnp.arange(chunk) < batch)[:, None]
            s = jnp.where(real, s, -jnp.inf)
            m, log_s = _softmax.normalizer(s, dtype, axis=1)
            row = (m[:, 0], log_s[:, 0])
            if symmetric:  # online log-sum-exp down the columns
                carry = _softmax.online_update(*carry, s, axis=0)
            return carry, row

        init = _carry(axis_name, jnp.full((columns,), -jnp.inf, dtype),
                      jnp.zeros((columns,), dtype))
        (col_max, col_sum), (row_m, row_log_s) = jax.lax.scan(
            step, init, (_row_chunks(q, chunk), starts))
        row_m, row_log_s = row_m.reshape(-1)[:batch], row_log_s.reshape(-1)[:batch]
        if symmetric and axis_name is None:
            col = _softmax.finish(col_max, col_sum)
        elif symmetric and axis_name is not None:
            col = _softmax.finish(*_softmax.combine(col_max, col_sum, axis_name))
    loss = _softmax.neg_log_probabilities(diagonal, row_m, row_log_s, recomputed=True)
    if symmetric:
        assert col is not None  # symmetric: a column normalizer was computed above
        own = col if axis_name is None else tuple(
            jax.lax.dynamic_slice_in_dim(a, dist.axis_index(axis_name) * batch, batch)
            for a in col)
        loss = 0.5 * (loss + _softmax.neg_log_probabilities(diagonal, *own, recomputed=True))
    return loss, (q, k, k_all, temperature, (row_m, row_log_s), col)


def _info_nce_bwd(
    symmetric: bool, chunk: int | None, axis_name: dist.AxisName | None,
    precision: _validate.Precision, residuals: _InfoNCEResiduals, g: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""With :math:`G_{ij} = g^r_i P^r_{ij} + g^c_j P^c_{ij} - \delta_{j,o+i}(g^r_i +
    g^c_{o+i})` (:math:`P^r, P^c` the row and column softmax of :math:`s`, rebuilt from
    the normalizers with :func:`jaxloss._softmax.probabilities` so that a recomputed
    :math:`s` a few ulps off stays a probability; :math:`g^c` gathered from every
    device): :math:`\partial/\partial q = G k/\tau`,
    :math:`\partial/\partial k = G^\top q/\tau` (a partial sum per device, which the
    gather's transpose, a reduce-scatter, adds up on the keys' owner),
    :math:`\partial/\partial\tau = -\sum_{ij} G_{ij} s_{ij}/\tau`."""
    q, k, k_all, temperature, (row_m, row_log_s), col = residuals
    dtype = temperature.dtype
    batch = q.shape[0]
    g_row = 0.5 * g if symmetric else g
    g_own = 0.5 * g if symmetric else jnp.zeros_like(g)
    g_col = g_own
    if symmetric and axis_name is not None:  # every column's cotangent
        g_col = dist.all_gather_with_grad(g_own, axis_name)

    # The temperature's gradient sums G s over the block, with each softmax's terms
    # taken relative to its own max (row: m_i, column: m_j): at scores of 1e30 those
    # terms cancel exactly, in either mode. The max's share, g m per row (and column),
    # cancels against the diagonal's in closed form; over a split axis the columns'
    # share is summed across devices, so there the column terms stay unshifted.
    shift_columns = symmetric and axis_name is None

    def block(s: jax.Array, real: jax.Array | None, g_rows: jax.Array, m_rows: jax.Array,
              log_s_rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        r"""G for a block of rows (without the diagonal term; 0 on the rows that are
        not ``real``, a chunk's padding), and its share of :math:`\sum G s` (shifted
        as above)."""
        p = _softmax.probabilities(s, m_rows[:, None], log_s_rows[:, None],
                                   recomputed=True)
        row_part = g_rows[:, None] * p
        t = jnp.sum(row_part * (s - _softmax.finite_shift(m_rows)[:, None]))
        grad = row_part
        if symmetric:
            assert col is not None  # symmetric: the forward pass kept it
            p = _softmax.probabilities(s, col[0][None, :], col[1][None, :],
                                       recomputed=True)
            col_part = g_col[None, :] * p
            if real is not None:
                col_part = jnp.where(real, col_part, 0)
            shift = _softmax.finite_shift(col[0])[None, :] if shift_columns else 0
            t = t + jnp.sum(col_part * (s - shift))
            grad = grad + col_part
        return grad, t

    if chunk is None:
        s = _scores(q, k_all, temperature, precision)
        grad, d_t = block(s, None, g_row, row_m, row_log_s)
        d_q = jnp.matmul(grad, k_all.astype(dtype), precision=precision)
        d_k_all = jnp.matmul(grad.T, q.astype(dtype), precision=precision)
    else:
        starts = jnp.arange(0, batch + (-batch % chunk), chunk)
        rows = tuple(_row_chunks(a, chunk) for a in (g_row, row_m, row_log_s))

        def step(carry: tuple[jax.Array, jax.Array],
                 xs: tuple[jax.Array, tuple[jax.Array, ...], jax.Array]
                 ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
            d_k_all, d_t = carry
            q_chunk, row, start = xs
            s = _scores(q_chunk, k_all, temperature, precision)
            real = (start + jnp.arange(chunk) < batch)[:, None]
            grad, t = block(jnp.where(real, s, 0), real, *row)
            d_k_all = d_k_all + jnp.matmul(grad.T, q_chunk.astype(dtype), precision=precision)
            d_t = d_t + t
            return (d_k_all, d_t), jnp.matmul(grad, k_all.astype(dtype), precision=precision)

        init = _carry(axis_name, jnp.zeros(k_all.shape, dtype), jnp.zeros((), dtype))
        # Checkpointed: transposed for forward mode (:mod:`jaxloss._rules`) the step
        # recomputes its scores rather than stacking every chunk's, [B, B] in all.
        (d_k_all, d_t), d_q = jax.lax.scan(jax.checkpoint(step, prevent_cse=False), init,
                                           (_row_chunks(q, chunk), rows, starts))
        d_q = d_q.reshape(-1, q.shape[1])[:batch]
    # The positives s_{i,o+i}: -(g_row + g_col) each, on this device's own keys.
    g_diag = g_row + g_own
    d_q = d_q - g_diag[:, None] * k.astype(dtype)
    d_k = -g_diag[:, None] * q.astype(dtype)
    diagonal = jnp.sum(q.astype(dtype) * k, axis=-1) / temperature
    d_t = d_t - jnp.sum(g_row * (diagonal - _softmax.finite_shift(row_m)))
    if symmetric:
        own = diagonal
        if shift_columns:
            assert col is not None
            own = diagonal - _softmax.finite_shift(col[0])
        d_t = d_t - jnp.sum(g_own * own)
    return ((d_q / temperature).astype(q.dtype), (d_k / temperature).astype(k.dtype),
            (d_k_all / temperature).astype(k_all.dtype),
            (-d_t / temperature).astype(temperature.dtype))


_info_nce.defvjp(_info_nce_fwd, _info_nce_bwd)


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` whole on every device where its type is sharded over an Explicit mesh."""
    sharding = jax.typeof(x).sharding
    if sharding.mesh.empty or all(axis is None for axis in sharding.spec):
        return x
    return jax.sharding.reshard(
        x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def _global_reduce(losses: jax.Array, reduction: str,
                   axis_name: dist.AxisName | None) -> jax.Array:
    """``"none"``: this device's rows; ``"sum"`` / ``"mean"``: over the rows of every
    device along ``axis_name`` (a ``psum``, the same value on each)."""
    if axis_name is None:
        return weighted_reduce(losses, reduction, where=None, denominator=None)
    if reduction == "none":
        return losses
    axes = dist.axis_tuple(axis_name)
    if reduction == "sum":
        return jax.lax.psum(jnp.sum(losses), axes)
    return overflow_safe_mean(losses, float(losses.shape[0] * dist.axis_size(axis_name)),
                              axis_name=axes)


def _check_axis_name(axis_name: dist.AxisName | None) -> None:
    """A usable ``axis_name``: None, or a name bound by an enclosing ``jax.shard_map``."""
    if axis_name is not None:
        dist.axis_size(axis_name)


@_validate.jit(static_argnames=("symmetric", "chunk_size", "reduction", "axis_name",
                               "precision"),
               checks={"temperature": _validate.positive,
                       "precision": _validate.check_precision})
def info_nce(
    queries: ArrayLike,
    keys: ArrayLike,
    *,
    temperature: ArrayLike = 0.07,
    symmetric: bool = False,
    chunk_size: int | None = None,
    reduction: Reduction = "none",
    axis_name: dist.AxisName | None = None,
    precision: _validate.Precision = None,
) -> jax.Array:
    r"""InfoNCE with in-batch negatives (CLIP-style): row :math:`i`'s positive is key :math:`i`.

    .. math::
      s_{ij} = \frac{q_i \cdot k_j}{\tau}, \qquad
      \ell_i = \log\sum_j e^{s_{ij}} - s_{ii}, \qquad
      \frac{\partial \ell_i}{\partial s_{ij}} = \mathrm{softmax}_j(s_{i\cdot}) - \delta_{ij}

    ``symmetric=True`` averages both directions, :math:`\tfrac12(\ell_i^{q\to k} +
    \ell_i^{k\to q})`, CLIP's loss. The embeddings are used as given: L2-normalize them
    first for cosine similarity (CLIP does). The ``jax.custom_vjp`` keeps the inputs and
    one log-sum-exp per row (and per column) and recomputes :math:`s` in the backward
    pass. With ``chunk_size`` the rows are processed ``chunk_size`` at a time, forward
    and backward, so the :math:`B \times B` score matrix is never held whole: memory
    :math:`O(\text{chunk} \cdot B)` instead of :math:`O(B^2)`, same values. Inputs
    sharded over a mesh are gathered and the loss computed whole on every device.

    **Across devices** (``axis_name``, inside ``jax.shard_map``): each of the :math:`n`
    devices along the axis holds :math:`b = B/n` rows of queries and keys (device
    :math:`r` rows :math:`rb .. rb + b - 1` of the global batch). The keys are gathered
    (:func:`jaxloss.distributed.all_gather_with_grad`, whose transpose reduce-scatters
    their gradient back to the device that owns them) and each device computes only
    its :math:`b \times B` block of :math:`s`, chunked by ``chunk_size`` as above
    (OpenCLIP's ``local_loss`` with ``gather_with_grad``). The column (key-to-query)
    term of ``symmetric`` needs every query: each device's partial column
    log-sum-exp is combined by a ``pmax`` and a ``psum`` of :math:`B` numbers, and the
    backward pass gathers the :math:`B` column cotangents. Loss and gradients (of
    queries, keys and the replicated temperature) equal the single-device ones.

    Args:
      queries: ``[B, D]`` (e.g. image embeddings); ``[b, D]``, this device's rows,
        with ``axis_name``.
      keys: ``[B, D]`` (e.g. text embeddings); key :math:`i` is query :math:`i`'s
        positive; ``[b, D]`` with ``axis_name``.
      temperature: :math:`\tau > 0`; differentiable (CLIP learns it).
      symmetric: average the query-to-key and key-to-query losses.
      chunk_size: rows per block (None: all at once); need not divide :math:`B`.
      reduction: ``"none"`` (default, one value per row: this device's rows with
        ``axis_name``), ``"mean"`` or ``"sum"`` (over the global batch with
        ``axis_name``, the same value on every device).
      axis_name: the mesh axis (or tuple of axes) the batch is split over, inside
        ``jax.shard_map``; None (default) for the whole batch on one device.
      precision: the precision of the score matmuls (forward and backward), as
        ``jnp.matmul`` takes it: None (default: ``jax_default_matmul_precision``),
        ``"default"``, ``"high"``, ``"highest"``, a ``jax.lax.Precision`` or a pair.
        On a CPU float32 products are exact at any setting; the default is TF32 on
        NVIDIA GPUs and one bf16 pass on TPUs (about 1e-3 relative). Pass
        ``"highest"`` to compare with a float64 reference or another implementation.

    Raises:
      ValueError: ``axis_name`` is not bound (the call is not inside a
        ``jax.shard_map`` over that axis).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> queries = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> loss = jaxloss.info_nce(queries, queries, temperature=0.5)  # log(1 + exp(-2))
      >>> [round(v, 4) for v in loss.tolist()]
      [0.1269, 0.1269]

    References:
      van den Oord et al., `Representation Learning with Contrastive Predictive Coding
      <https://arxiv.org/abs/1807.03748>`_, 2018; Radford et al., `Learning Transferable
      Visual Models From Natural Language Supervision
      <https://arxiv.org/abs/2103.00020>`_, 2021; OpenCLIP's ``ClipLoss``
      (``local_loss=True, gather_with_grad=True``),
      https://github.com/mlfoundations/open_clip.
    """
    queries = _validate.floating("queries", queries)
    keys = _validate.floating("keys", keys)
    if queries.ndim != 2:
        raise ValueError(f"queries must be [batch, features], got {_validate.describe(queries)}")
    _validate.same_shape("keys", keys, queries.shape, "the shape of queries")
    _validate.positive("temperature", temperature)
    reduction = _validate.reduction(reduction)
    _check_axis_name(axis_name)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size is not None and chunk_size >= queries.shape[0]:
        chunk_size = None
    dtype = _validate.compute_dtype(queries.dtype, keys.dtype)
    temperature = jnp.asarray(temperature, dtype)
    precision = _validate.precision("precision", precision)
    if axis_name is None:
        # Every row needs every key: inputs sharded over an Explicit mesh are gathered
        # and the loss computed whole on each device (the cotangents flow back).
        queries, keys = _replicated(queries), _replicated(keys)
        # Inside jax.shard_map (per-device rows, no axis_name): the custom_vjp's
        # inputs typed alike, so the temperature's cotangent has its type.
        queries, keys, temperature = dist.match_varying(queries, keys, temperature)
        losses = _info_nce(queries, keys, keys, temperature, bool(symmetric), chunk_size,
                           None, precision)
    else:
        # Typed as varying, the replicated temperature's per-device partial cotangent
        # is psum-med by the cast's transpose.
        # match_varying as well: inputs that vary over another mesh axis too (a 2-D
        # mesh) need every input typed alike for the custom_vjp.
        queries, keys, temperature = dist.match_varying(
            *(dist.varying(x, axis_name) for x in (queries, keys, temperature)))
        keys_all = dist.all_gather_with_grad(keys, axis_name)
        losses = _info_nce(queries, keys, keys_all, temperature, bool(symmetric),
                           chunk_size, axis_name, precision)
    return _global_reduce(losses, reduction, axis_name)


# ---------------------------------------------------------------------------------
# SigLIP's pairwise sigmoid loss.


def _siglip_block(x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array,
                  positives: bool, precision: _validate.Precision) -> jax.Array:
    r"""Row sums of :math:`-\log\sigma(y_{ij} z_{ij})` for one block of pairs, with the
    labels :math:`+1` on the diagonal when ``positives`` (the block of matching texts)
    and :math:`-1` elsewhere."""
    z = jnp.matmul(x, y.T, precision=precision, preferred_element_type=scale.dtype)
    z = z * scale + bias
    if positives:
        # A product with the signs (exact), not a where: with the rows of z split over an
        # Explicit mesh, a select needs its mask split alike (under jax.set_mesh the
        # where's derivative failed on the unsplit eye); a product broadcasts it.
        z = z * jnp.where(jnp.eye(z.shape[0], z.shape[1], dtype=bool), 1, -1).astype(z.dtype)
    else:
        z = -z
    return -jnp.sum(jax.nn.log_sigmoid(z), axis=1)


@_validate.jit(static_argnames=("axis_name", "reduction", "precision"),
               checks={"temperature": _validate.positive,
                       "precision": _validate.check_precision})
def siglip_loss(
    image_embeddings: ArrayLike,
    text_embeddings: ArrayLike,
    temperature: ArrayLike,
    bias: ArrayLike,
    *,
    axis_name: dist.AxisName | None = None,
    reduction: Reduction = "mean",
    precision: _validate.Precision = None,
) -> jax.Array:
    r"""SigLIP's pairwise sigmoid loss: every image-text pair a binary classification.

    .. math::
      z_{ij} = t\, x_i \cdot y_j + b, \qquad
      \ell_i = -\sum_{j=1}^{B} \log\sigma(\lambda_{ij} z_{ij}), \qquad
      L = \frac1B \sum_i \ell_i

    with :math:`\lambda_{ij} = +1` for the matching pair (:math:`i = j`) and :math:`-1`
    otherwise. :math:`L` (``reduction="mean"``, the default) is the paper's loss and
    big_vision's ``l = mean(-sum(log_sigmoid(m1_diag1 * logits), axis=-1))``.
    ``temperature`` is the *multiplier* :math:`t` of the logits, big_vision's
    ``logits = zimg @ ztxt.T * t + b``: the paper learns :math:`t = e^{t'}` (initial
    :math:`t' = \log 10`) and :math:`b` (initial :math:`-10`), so pass
    ``jnp.exp(t_prime)``. (Unlike :func:`info_nce`'s :math:`\tau`, which divides.) The
    embeddings are used as given: L2-normalize them first, as SigLIP does. The
    gradient, :math:`\partial\ell_i/\partial z_{ij} = -\lambda_{ij}\,\sigma(-\lambda_{ij}
    z_{ij})`, comes from the stable ``jax.nn.log_sigmoid``: finite for every finite
    logit.

    **Across devices** (``axis_name``, inside ``jax.shard_map``): each of the :math:`n`
    devices holds :math:`b = B/n` images and their :math:`b` texts. Each device first
    scores its own texts (the only block with positives), then passes its text block
    around the ring with ``jax.lax.ppermute`` :math:`n - 1` times
    (:func:`jaxloss.distributed.ring_shift`), adding the all-negative block of each
    visiting text block: one :math:`b \times b` block of logits at a time, never the
    :math:`b \times B` row (the paper's chunked implementation, section 3.3). The
    logit blocks are rematerialized in the backward pass, but the scan keeps each
    visiting text block for it, so a device holds :math:`O(B D)` of text embeddings
    (as much as a gather) and :math:`O(b^2)` of logits. The texts' gradients travel
    the ring back to their owners. Loss and gradients equal the single-device ones.

    Args:
      image_embeddings: :math:`x`, ``[B, D]`` (``[b, D]``, this device's images, with
        ``axis_name``).
      text_embeddings: :math:`y`, ``[B, D]``; text :math:`i` matches image :math:`i`.
      temperature: :math:`t > 0`, the logit scale (differentiable): a scalar, or of
        shape ``(1,)`` as big_vision's learned parameter (the gradient comes back in
        its shape and dtype).
      bias: :math:`b`, the logit bias (differentiable): a scalar or of shape ``(1,)``.
      axis_name: the mesh axis (or tuple of axes) the batch is split over, inside
        ``jax.shard_map``; None (default) for the whole batch on one device.
      reduction: ``"mean"`` (default, :math:`L`), ``"sum"`` (:math:`\sum_i \ell_i`, the
        sum over all :math:`B^2` pairs) or ``"none"`` (:math:`\ell_i` per image: this
        device's images with ``axis_name``). ``"mean"`` and ``"sum"`` are over the
        global batch with ``axis_name``, the same value on every device. The default
        is ``"mean"``, unlike the per-example default of most jaxloss losses (and of
        :func:`info_nce`): SigLIP's loss is a property of the batch (each
        :math:`\ell_i` sums over every text of the batch, and grows with :math:`B`),
        and :math:`L` is what the paper and big_vision define and what
        ``jax.grad(siglip_loss)`` needs; :func:`ntxent` likewise returns the batch's
        mean. Keeping it spares existing callers a change of output shape.

      precision: the precision of the logit matmuls, as ``jnp.matmul`` takes it: None
        (default: ``jax_default_matmul_precision``), ``"default"``, ``"high"``,
        ``"highest"``, a ``jax.lax.Precision`` or a pair; the backward pass uses the
        same. On a CPU float32 products are exact at any setting; the default is TF32
        on NVIDIA GPUs and one bf16 pass on TPUs (about 1e-3 relative). Pass
        ``"highest"`` to compare with a float64 reference or another implementation.

    Returns:
      A scalar (``"mean"``, ``"sum"``) or ``[B]`` (``"none"``), in
      ``promote_types(embeddings dtype, float32)``: the embeddings set the dtype (a
      float64 ``temperature`` or ``bias`` under ``jax_enable_x64`` is cast to it).

    Raises:
      ValueError: ``axis_name`` is not bound (the call is not inside a
        ``jax.shard_map`` over that axis).

    References:
      Zhai et al., `Sigmoid Loss for Language Image Pre-Training
      <https://arxiv.org/abs/2303.15343>`_, ICCV 2023; big_vision's
      ``trainers/proj/image_text/siglip.py``,
      https://github.com/google-research/big_vision.
    """
    x = _validate.floating("image_embeddings", image_embeddings)
    y = _validate.floating("text_embeddings", text_embeddings)
    if x.ndim != 2:
        raise ValueError(f"image_embeddings must be [batch, features], got "
                         f"{_validate.describe(x)}")
    _validate.same_shape("text_embeddings", y, x.shape, "the shape of image_embeddings")
    temperature = _validate.floating("temperature", temperature)
    bias = _validate.floating("bias", bias)
    for name, value in (("temperature", temperature), ("bias", bias)):
        if value.shape not in ((), (1,)):
            raise ValueError(f"{name} must be a scalar or of shape (1,), got "
                             f"{_validate.describe(value)}")
    _validate.positive("temperature", temperature)
    reduction = _validate.reduction(reduction)
    _check_axis_name(axis_name)
    # The embeddings set the dtype, as info_nce's: a float64 temperature (under
    # jax_enable_x64) does not make a float32 model's loss float64. Its gradient comes
    # back in its own dtype and shape.
    dtype = _validate.compute_dtype(x.dtype, y.dtype)
    scale, bias = temperature.reshape(()).astype(dtype), bias.reshape(()).astype(dtype)
    precision = _validate.precision("precision", precision)
    if axis_name is None:
        # Over an Explicit mesh each device scores its images against every text (the
        # texts gathered): the logits are split by rows, as the batch is.
        losses = _siglip_block(x, _replicated(y), scale, bias, True, precision)
    else:
        block = jax.checkpoint(_siglip_block, static_argnums=(4, 5))
        losses = block(x, y, scale, bias, True, precision)

        def visit(carry: tuple[jax.Array, jax.Array],
                  _: None) -> tuple[tuple[jax.Array, jax.Array], None]:
            texts, total = carry
            texts = dist.ring_shift(texts, axis_name)
            return (texts, total + block(x, texts, scale, bias, False, precision)), None

        if dist.axis_size(axis_name) > 1:
            (_, losses), _ = jax.lax.scan(visit, (dist.varying(y, axis_name), losses), None,
                                          length=dist.axis_size(axis_name) - 1)
    return _global_reduce(losses, reduction, axis_name)


# ---------------------------------------------------------------------------------
# Pair sampling for Siamese training.


@_validate.jit(static_argnames=("num_pairs", "positive_fraction"))
def make_pairs(
    labels: ArrayLike,
    key: jax.Array,
    num_pairs: int,
    *,
    positive_fraction: float = 0.5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples balanced pairs of examples for Siamese training.

    ``round(num_pairs * positive_fraction)`` pairs are drawn as positives (an anchor
    from a class with at least two examples, and another example of its class) and the
    rest as negatives (an anchor and an example of another class), each uniformly at
    random, then shuffled. No example is paired with itself. Where the data make the
    balance impossible, every pair is of the kind that exists: all negatives when no
    class has two members, all positives when there is a single class. ``similar`` is
    computed from the labels, so ``similar[i] == (labels[index_a[i]] ==
    labels[index_b[i]])`` always holds.

    Args:
      labels: integer class ids ``[N]``.
      key: a ``jax.random`` key.
      num_pairs: how many pairs (static).
      positive_fraction: the share of similar pairs, in [0, 1] (static).

    Returns:
      ``(index_a, index_b, similar)``: int32 indices into ``labels`` and a bool array,
      each ``[num_pairs]``.
    """
    labels = _validate.integer("labels", labels)
    if labels.ndim != 1 or labels.shape[0] < 2:
        raise ValueError(f"labels must be [N] with N >= 2, got {_validate.describe(labels)}")
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive int, got {num_pairs!r}")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    n = labels.shape[0]
    order = jnp.argsort(labels)
    sorted_labels = labels[order]
    start = jnp.searchsorted(sorted_labels, labels, side="left")
    count = jnp.searchsorted(sorted_labels, labels, side="right") - start
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))

    key_pos, key_neg, key_pick_pos, key_pick_neg, key_shuffle = jax.random.split(key, 5)

    def anchors(key: jax.Array, eligible: jax.Array) -> jax.Array:
        weights = jnp.where(jnp.any(eligible), eligible, True).astype(jnp.float32)
        return jax.random.choice(key, n, (num_pairs,), p=weights / jnp.sum(weights))

    # A positive for every slot: another member of the anchor's class (the anchor's
    # own position in the sorted order is skipped).
    a_pos = anchors(key_pos, count >= 2)
    r = jax.random.randint(key_pick_pos, (num_pairs,), 0, jnp.maximum(count[a_pos] - 1, 1))
    r = jnp.where(r >= rank[a_pos] - start[a_pos], r + 1, r)
    b_pos = order[jnp.clip(start[a_pos] + r, 0, n - 1)]
    # A negative for every slot: uniform over the examples outside the anchor's class.
    a_neg = anchors(key_neg, count < n)
    r = jax.random.randint(key_pick_neg, (num_pairs,), 0, jnp.maximum(n - count[a_neg], 1))
    r = jnp.where(r >= start[a_neg], r + count[a_neg], r)
    b_neg = order[jnp.clip(r, 0, n - 1)]

    # The first round(num_pairs * fraction) slots are positives where the data have
    # any (a class with two members), and every slot is one where they have no
    # negatives (a single class); then the slots are shuffled.
    want_positive = jnp.arange(num_pairs) < round(num_pairs * positive_fraction)
    positive = jnp.where(jnp.any(count >= 2), want_positive, False) | jnp.all(count == n)
    perm = jax.random.permutation(key_shuffle, num_pairs)
    index_a = jnp.where(positive, a_pos, a_neg)[perm].astype(jnp.int32)
    index_b = jnp.where(positive, b_pos, b_neg)[perm].astype(jnp.int32)
    return index_a, index_b, labels[index_a] == labels[index_b]
