"""Classification losses: sigmoid/binary and softmax/categorical cross-entropy, and
PyTorch's negative log-likelihood and soft margin losses.

Each cross-entropy has a custom rule (:mod:`jaxloss._rules`: a forward and a backward
pass, serving reverse and forward mode) whose backward pass is the closed-form
derivative; ``nll_loss``, ``soft_margin_loss`` and ``multilabel_soft_margin_loss`` are
plain autodiff of stable (softplus) formulas, exact at logits of +-1e30.
The softmax losses keep only their inputs and one log-sum-exp per row as residuals
and form ``softmax - target`` in the backward pass, so no ``[N, C]`` probability
matrix is stored. All arithmetic is in at least float32 (bf16/fp16 logits accumulate
in float32); gradients come back in the input dtype.

Conventions where the math has edges (PyTorch's subgradients, never NaN on finite
input):

- A class whose logit is ``-inf`` does not exist for that row: it takes no
  probability, no label-smoothing mass, and contributes exactly 0 to the loss and its
  gradient while its target is 0.
- Logits of ``+-inf`` in the sigmoid losses give the exact limits (0, or +inf where
  the label disagrees) and the gradient ``sigmoid(x) - y``.
- Bad values cannot raise under ``jit``: an out-of-range integer label gives NaN;
  wrap the loss in :func:`jaxloss.checked` to raise instead.

Inside ``jax.shard_map`` (rows split over devices) the inputs of each custom rule are
first typed alike with :func:`jaxloss.distributed.match_varying`, so a replicated
option (``pos_weight``, ``class_weights``) gets its gradient summed over the devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _lm_head, _rules, _softmax, _validate
from jaxloss._math import kept as _kept
from jaxloss._math import times as _times
from jaxloss._math import unless_nonfinite
from jaxloss._reduce import Reduction, overflow_safe_mean, weighted_reduce
from jaxloss.distributed import AxisName, match_varying, replicated_sharding
from jaxloss.large_vocab import _vocab_parallel_integer_ce

__all__ = [
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "sigmoid_binary_cross_entropy",
    "soft_margin_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

# Keras' backend epsilon, the clip of categorical_cross_entropy's probabilities.
KERAS_EPSILON = 1e-7
# PyTorch BCELoss: each log is clamped at -100; its backward divides by
# max(p (1 - p), 1e-12).
BCE_LOG_CLAMP = -100.0
# PyTorch's constant is float32(1e-12) for every input dtype; the same here makes the
# float64 gradients equal bit for bit where the clamp is active.
BCE_GRAD_EPSILON = float(np.float32(1e-12))


# ---------------------------------------------------------------------------------
# Sigmoid (binary) cross-entropy on logits.


@_rules.rule()
def _sigmoid_bce(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array) -> jax.Array:
    return _sigmoid_bce_value(logits, labels, pos_weight)


def _sigmoid_bce_value(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array) -> jax.Array:
    r"""Per element :math:`\ell = w y\,\mathrm{softplus}(-x) + (1-y)\,\mathrm{softplus}(x)`.

    :math:`\partial\ell/\partial x = \sigma(x)(w y + 1 - y) - w y`,
    :math:`\partial\ell/\partial y = w\,\mathrm{softplus}(-x) - \mathrm{softplus}(x)`,
    :math:`\partial\ell/\partial w = y\,\mathrm{softplus}(-x)`.
    """
    x = logits.astype(labels.dtype)
    return _times(pos_weight * labels, jax.nn.softplus(-x)) + _times(
        1 - labels, jax.nn.softplus(x)
    )


def _sigmoid_bce_fwd(
    logits: jax.Array, labels: jax.Array, pos_weight: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    # The fwd rule computes the value itself: calling the custom_vjp function here
    # would break forward-over-reverse (jax.hessian).
    return _sigmoid_bce_value(logits, labels, pos_weight), (logits, labels, pos_weight)


def _sigmoid_bce_bwd(
    residuals: tuple[jax.Array, jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    logits, labels, pos_weight = residuals
    x = logits.astype(labels.dtype)
    wy = pos_weight * labels
    d_logits = g * (jax.nn.sigmoid(x) * (wy + 1 - labels) - wy)
    d_labels = g * (pos_weight * jax.nn.softplus(-x) - jax.nn.softplus(x))
    d_pos_weight = g * _times(labels, jax.nn.softplus(-x))
    return d_logits.astype(logits.dtype), d_labels, d_pos_weight


_sigmoid_bce.defvjp(_sigmoid_bce_fwd, _sigmoid_bce_bwd)


@_validate.jit(static_argnames=("reduction",),
               checks={"label_smoothing": _validate.check_unit_interval},
               options={"label_smoothing": 0.0})
def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
    label_smoothing: float | ArrayLike = 0.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Elementwise sigmoid cross-entropy on logits, with PyTorch's ``pos_weight``.

    .. math::
      \ell(x, y) = -\bigl[w\,y \log\sigma(x) + (1 - y)\log(1 - \sigma(x))\bigr]
                 = w\,y\,\mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)

    .. math::
      \frac{\partial\ell}{\partial x} = \sigma(x)\,(w y + 1 - y) - w y

    (:math:`\sigma(x) - y` for :math:`w = 1`). Same values as
    ``optax.losses.sigmoid_binary_cross_entropy``; values and gradients of PyTorch
    ``BCEWithLogitsLoss(pos_weight=w)``. At :math:`x = \pm\infty` the loss is its
    exact limit (0, or +inf where the label disagrees) and the gradient is
    :math:`\sigma(x) - y`, never NaN.

    Args:
      logits: logits of the positive class, any float shape.
      labels: targets in [0, 1] (hard or soft), broadcastable to ``logits``.
      pos_weight: weight :math:`w` of the positive term, broadcastable to ``logits``
        (e.g. one per class: ``n_negative / n_positive``).
      label_smoothing: :math:`\epsilon`; labels become
        :math:`y (1 - \epsilon) + \epsilon / 2` (Keras).
      where: boolean mask of the elements to include (broadcastable to ``logits``).
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(logits.dtype, float32)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> loss = jaxloss.sigmoid_binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1.0, 0.0]))
      >>> [round(v, 4) for v in loss.tolist()]  # log(1 + exp(-2)), log(1 + exp(-1))
      [0.1269, 0.3133]

    References:
      Goodfellow et al., `Deep Learning <http://www.deeplearningbook.org>`_, 2016, §6.2.2.
    """
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(logits.dtype)
    smoothing = _validate.smoothing("label_smoothing", label_smoothing, dtype)
    if pos_weight is not None:
        pos_weight = _validate.numeric("pos_weight", pos_weight)
    _validate.broadcasts_to("logits", logits, labels=labels, pos_weight=pos_weight,
                            where=where)
    labels = labels.astype(dtype)
    if smoothing is not None:
        labels = labels * (1 - smoothing) + 0.5 * smoothing
    # Broadcast as the logits are laid out (on an Explicit mesh, split like them): the
    # custom_vjp returns each gradient in its input's sharding.
    like = jnp.zeros_like(logits, dtype)
    labels = like + labels
    pos_weight = jnp.ones((), dtype) if pos_weight is None else pos_weight.astype(dtype)
    losses = _sigmoid_bce(*match_varying(_kept(logits, where), _kept(labels, where),
                                         like + pos_weight))
    return weighted_reduce(losses, reduction, where=where, denominator=None)


# ---------------------------------------------------------------------------------
# Binary cross-entropy on probabilities (PyTorch BCELoss).


@_rules.rule()
def _bce(probabilities: jax.Array, labels: jax.Array) -> jax.Array:
    return _bce_value(probabilities, labels)


def _bce_value(probabilities: jax.Array, labels: jax.Array) -> jax.Array:
    r""":math:`\ell = -[y \max(\log p, -100) + (1 - y)\max(\log(1 - p), -100)]`."""
    p = probabilities.astype(labels.dtype)
    log_p = jnp.maximum(jnp.log(p), BCE_LOG_CLAMP)
    log_not_p = jnp.maximum(jnp.log1p(-p), BCE_LOG_CLAMP)
    return -labels * log_p - (1 - labels) * log_not_p


def _bce_fwd(
    probabilities: jax.Array, labels: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _bce_value(probabilities, labels), (probabilities, labels)


def _bce_bwd(
    residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""PyTorch's: :math:`\partial\ell/\partial p = (p - y) / \max(p(1-p), 10^{-12})`,
    the exact derivative wherever :math:`p(1-p) > 10^{-12}` and finite at 0 and 1."""
    probabilities, labels = residuals
    p = probabilities.astype(labels.dtype)
    d_p = g * ((p - labels) / jnp.maximum(p * (1 - p), BCE_GRAD_EPSILON))
    log_p = jnp.maximum(jnp.log(p), BCE_LOG_CLAMP)
    log_not_p = jnp.maximum(jnp.log1p(-p), BCE_LOG_CLAMP)
    d_labels = g * (log_not_p - log_p)
    return d_p.astype(probabilities.dtype), d_labels


_bce.defvjp(_bce_fwd, _bce_bwd)


@_validate.jit(static_argnames=("reduction",))
def binary_cross_entropy(
    probabilities: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Elementwise binary cross-entropy on probabilities (PyTorch ``BCELoss``).

    .. math::
      \ell(p, y) = -\bigl[y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100)\bigr]

    .. math::
      \frac{\partial\ell}{\partial p} = \frac{p - y}{\max(p(1 - p),\, 10^{-12})}

    The clamp at -100 is PyTorch's: ``p = 0`` or ``1`` gives 100 or 0 and a finite
    gradient. On :math:`p \in (0, 1)` values and gradients are PyTorch's. With
    :math:`y = 1`, :math:`p = 0.9` gives 0.105 and :math:`p = 0.1` gives 2.303.

    Prefer :func:`sigmoid_binary_cross_entropy` on logits: a probability that has
    rounded to 0 or 1 has lost the information the loss needs.

    Args:
      probabilities: predicted probabilities in [0, 1].
      labels: targets in [0, 1], broadcastable to ``probabilities``.
      where: boolean mask of the elements to include.
      reduction: ``"none"`` (default), ``"mean"`` or ``"sum"``.

    References:
      Goodfellow, Bengio and Courville, `Deep Learning
      <https://www.deeplearningbook.org/contents/mlp.html>`_, section 6.2.2, MIT Press
      2016.
    """
    probabilities = _validate.floating("probabilities", probabilities)
    labels = _validate.numeric("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("probabilities", probabilities, labels=labels, where=where)
    dtype = _validate.compute_dtype(probabilities.dtype)
    labels = jnp.broadcast_to(labels.astype(dtype), probabilities.shape)
    losses = _bce(*match_varying(_kept(probabilities, where), _kept(labels, where)))
    return weighted_reduce(losses, reduction, where=where, denominator=None)


# ---------------------------------------------------------------------------------
# Softmax cross-entropy on logits: shared pieces.


def _classes_last(x: jax.Array, axis: int | Sequence[int]) -> tuple[jax.Array, int]:
    """Moves the class axes to the end, flattened into one; returns it and the batch rank."""
    axes = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
    if not axes:
        raise ValueError("axis must name at least one class axis, got ()")
    axes = tuple(_validate.canonical_axis("axis", a, x.ndim) for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis has repeated entries: {axis!r}")
    batch = tuple(a for a in range(x.ndim) if a not in axes)
    if axes == tuple(range(x.ndim - len(axes), x.ndim)) and len(axes) == 1:
        return x, len(batch)
    x = jnp.transpose(x, batch + axes)
    return x.reshape(x.shape[: len(batch)] + (-1,)), len(batch)


def _class_mask(
    where: jax.Array | None, logits_ndim: int, axis: int | Sequence[int]
) -> jax.Array | None:
    """optax's ``where``: a mask of classes (``logits.shape``) or of rows (the batch
    shape, extended over the classes); returned with the classes last."""
    if where is None:
        return None
    axes = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
    if where.ndim == logits_ndim - len(axes):
        where = jnp.expand_dims(where, axes)
    elif where.ndim != logits_ndim:
        raise ValueError(
            f"where must have the rank of logits ({logits_ndim}) or of the batch "
            f"({logits_ndim - len(axes)}), got {_validate.describe(where)}"
        )
    return _classes_last(where, axis)[0]


def _dense_inputs(
    name: str, x: jax.Array, labels: jax.Array, where: jax.Array | None,
    axis: int | Sequence[int], dtype: jnp.dtype, *, convert: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Inputs and dense targets with the classes last, and the class mask if any; the
    targets in ``dtype``, or with ``convert=False`` float ones (not wider than ``dtype``)
    as they came, for a rule that converts them where it reads them."""
    _validate.broadcasts_to(name, x, labels=labels)
    keep = (not convert and jnp.issubdtype(labels.dtype, jnp.floating)
            and jnp.dtype(labels.dtype).itemsize <= jnp.dtype(dtype).itemsize)
    labels = jnp.broadcast_to(labels if keep else labels.astype(dtype), x.shape)
    valid = _class_mask(where, x.ndim, axis)
    x, _ = _classes_last(x, axis)
    labels, _ = _classes_last(labels, axis)
    if valid is not None:
        valid = jnp.broadcast_to(valid, x.shape)
    return x, labels, valid


# Rows longer than this are reduced in blocks; see _log_normalizer.
_LONG_ROW = 32768
_BLOCK_RANGE = (1024, 4096)


def _row_block(classes: int) -> int | None:
    """The largest divisor of ``classes`` in ``_BLOCK_RANGE`` for a long row, else None."""
    if classes <= _LONG_ROW:
        return None
    low, high = _BLOCK_RANGE
    return next((b for b in range(high, low - 1, -1) if classes % b == 0), None)


def _log_normalizer(
    x: jax.Array, valid: jax.Array | None, dtype: jnp.dtype, beta: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Row max ``m`` (finite for an empty row; no gradient) and ``log sum exp(x - m)``, in
    ``dtype``, kept apart (see :mod:`jaxloss._softmax`).

    A long row is reduced in blocks of a few thousand classes (a free reshape): each
    block's max and sum of exponentials, then the blocks' sums rescaled to the row's
    max. Mathematically the same sum; measured on XLA's CPU backend, the one-level
    form of a row of 131072 classes took 6x as long (98 ms against 16 ms at
    [256, 131072] float32), while rows of a few thousand run at the speed of a pass
    over memory. Only the CPU compiles the blocks; other backends reduce the row whole.
    With ``beta``, the normalizer of ``beta * x`` (:func:`jaxloss._softmax.normalizer`)."""
    if valid is not None:
        x = jnp.where(valid, x, -jnp.inf)
    block = _row_block(x.shape[-1])
    if block is None:
        return _softmax.normalizer(x, dtype, beta=beta)
    # The blocks are a CPU measurement: on a GPU the one-level reduction is the faster
    # (measured on an H200), so each backend compiles its own form.
    # platform_dependent is annotated to return Any; it returns a branch's pair.
    pair: tuple[jax.Array, jax.Array] = jax.lax.platform_dependent(
        x, cpu=lambda x: _softmax.normalizer(x, dtype, block=block, beta=beta),
        default=lambda x: _softmax.normalizer(x, dtype, beta=beta))
    return pair


def _support(x: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The classes that exist (finite logit, not masked) and their count per row."""
    support = x > -jnp.inf
    if valid is not None:
        support = support & valid
    return support, jnp.sum(support, axis=-1, keepdims=True)


def _smoothing_support(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Uniform distribution over the classes that exist: finite logit, not masked."""
    support, count = _support(x, valid)
    return support / jnp.maximum(count, 1).astype(x.dtype)


def _cross_entropy_grad(
    x: jax.Array, m: jax.Array, log_s: jax.Array, valid: jax.Array | None, target: jax.Array,
    g: jax.Array, beta: jax.Array | float | None = None,
) -> jax.Array:
    """:math:`g\\,(p \\sum_c a_c - a)`, the gradient of :math:`\\sum_c a_c(\\mathrm{lse} - x_c)`."""
    p = _softmax.probabilities(x, m, log_s, valid, beta=beta)
    return g[..., None] * (p * jnp.sum(target, axis=-1, keepdims=True) - target)


# ---------------------------------------------------------------------------------
# Softmax cross-entropy with dense (one-hot or soft) targets.


# The inputs, then the row normalizer (m, log s) and, without options, exp(x - m).
_SoftmaxCEResiduals = tuple[
    jax.Array, jax.Array, jax.Array | None, jax.Array | None, _lm_head.Head | None,
    jax.Array, jax.Array, jax.Array | None]
_IntegerCEResiduals = tuple[
    jax.Array, jax.Array, jax.Array | None, jax.Array | None, jax.Array | None,
    jax.Array | None, _lm_head.Head | None, jax.Array, jax.Array]


@_rules.rule()
def _softmax_ce(
    logits: jax.Array, labels: jax.Array, smoothing: jax.Array | None,
    valid: jax.Array | None, head: _lm_head.Head | None,
) -> jax.Array:
    return _softmax_ce_fwd(logits, labels, smoothing, valid, head, residuals=False)[0]


def _dense_target(
    x: jax.Array, labels: jax.Array, smoothing: jax.Array | None, valid: jax.Array | None
) -> jax.Array:
    """:math:`q = (1 - \\epsilon) y + \\epsilon u` with :math:`u` uniform over the
    classes that exist; 0 on classes that ``where`` excludes (optax)."""
    target = labels
    if smoothing is not None:
        target = (1 - smoothing) * labels + smoothing * _smoothing_support(x, valid)
    return target if valid is None else jnp.where(valid, target, 0)


def _softmax_ce_fwd(
    logits: jax.Array, labels: jax.Array, smoothing: jax.Array | None,
    valid: jax.Array | None, head: _lm_head.Head | None, *, residuals: bool = True,
) -> tuple[jax.Array, _SoftmaxCEResiduals]:
    r""":math:`\ell = \sum_c q_c(\mathrm{lse}(x') - x'_c) + \varepsilon_z
    \mathrm{lse}(x')^2` with :math:`x'` the logits as ``head`` transforms them;
    residuals: the inputs and the normalizer :math:`(m, \log s)` per row, and without
    options :math:`e^{x - m}` (:func:`_keeps_exponentials`)."""
    beta = _lm_head.beta(head)
    dtype = _validate.compute_dtype(logits.dtype)

    def normalizer(logits: jax.Array, valid: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = _lm_head.transform(logits.astype(dtype), head)
        return (x, *_log_normalizer(x if _lm_head.caps(head) else logits, valid, dtype,
                                    beta))

    def exact(x: jax.Array, m: jax.Array, log_s: jax.Array, labels: jax.Array,
              valid: jax.Array | None) -> jax.Array:
        # Halves, doubled: m - x may overflow where the weighted sum does not.
        half = _softmax.neg_log_probabilities(x, m, log_s, scale=0.5, beta=beta)
        target = _dense_target(x, labels.astype(dtype), smoothing, valid)
        return 2 * jnp.sum(_times(target, half), axis=-1)

    def exact_in_blocks() -> jax.Array:
        # A few rows at a time: XLA's CPU backend writes the products of the select
        # form before summing them, and a branch's temporaries are allocated whether it
        # runs or not ([N, C] of them at once: 128 MiB at [1024, 32768]).
        if replicated_sharding(logits) is not None:
            # A map over rows split over an Explicit mesh has no one sharding: whole.
            return exact(*normalizer(logits, valid), labels, valid)

        def rows(a: jax.Array | None) -> jax.Array | None:
            return None if a is None else a.reshape(-1, a.shape[-1])

        flat_logits, flat_labels, flat_valid = (rows(a) for a in (logits, labels, valid))
        assert flat_logits is not None and flat_labels is not None
        n = flat_logits.shape[0]
        size = max(1, min((1 << 16) // logits.shape[-1], n))
        count = -(-n // size)
        # The last block ends at the last row (it overlaps the one before it).
        starts = jnp.minimum(jnp.arange(count) * size, n - size)

        def cut(a: jax.Array, start: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice_in_dim(a, start, size)

        def block(start: jax.Array) -> jax.Array:
            # Sliced here by index, not handed over by the map: XLA converts a mapped
            # bf16 operand to float32 whole, before the loop ([N, C] each).
            return exact(*normalizer(cut(flat_logits, start),
                                     None if flat_valid is None else cut(flat_valid, start)),
                         cut(flat_labels, start),
                         None if flat_valid is None else cut(flat_valid, start))

        out: jax.Array = jax.lax.map(block, starts)
        out = jnp.concatenate([out[:-1].reshape(-1), out[-1][count * size - n:]])
        return out.reshape(logits.shape[:-1])

    e = None
    if _keeps_exponentials(logits, None, None, valid, head):
        # The backward pass's softmax as e / s (see _keeps_exponentials).
        x = logits
        m, e, log_s = _softmax.exponentials(logits, dtype)
    else:
        x, m, log_s = normalizer(logits, valid)
    if residuals:
        # The max goes on to the backward pass too. Passed through a select (a no-op:
        # it is finite), it is broadcast inside each pass that reads it. Otherwise XLA's
        # CPU backend writes its [N, C] broadcast once for them all (measured: 128 MiB
        # at [1024, 32768]).
        m = _softmax.finite_shift(m)

    if logits.dtype == dtype:
        # As exact() wherever that is finite (halving is exact), and in one fused pass.
        plain = _softmax.neg_log_probabilities(x, m, log_s, beta=beta)
        loss = unless_nonfinite(
            jnp.sum(_dense_target(x, labels.astype(dtype), smoothing, valid) * plain,
                    axis=-1),
            exact_in_blocks)
    else:
        # Logits converted up (bf16): the conversion fuses into XLA's loop fusions, select
        # and all. The one-pass form with the branch is 2.4x faster at [4096, 1024], but
        # XLA converts the branch's bf16 logits to float32 whole, before its loop (2x-3x
        # optax's temporaries).
        loss = exact(x, m, log_s, labels, valid)
    z = _lm_head.z_term(head, m[..., 0], log_s[..., 0])
    if z is not None:
        loss = loss + z
    return loss, (logits, labels, smoothing, valid, head, m, log_s, e)


def _softmax_ce_bwd(
    residuals: _SoftmaxCEResiduals, g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array | None, None, _lm_head.Head | None]:
    r""":math:`\partial\ell/\partial x = p \sum_c q_c - q`;
    :math:`\partial\ell/\partial y_c = (1-\epsilon)(\mathrm{lse} - x_c)` on the classes
    that exist (0 elsewhere); :math:`\partial\ell/\partial\epsilon = \sum_c (u_c - y_c)
    (\mathrm{lse} - x_c)`; with ``head``, :math:`2\varepsilon_z \mathrm{lse}\,p` more
    on :math:`\partial\ell/\partial x'`, times :math:`\partial x'/\partial x`."""
    logits, raw_labels, smoothing, valid, head, m, log_s, e = residuals
    dtype = _validate.compute_dtype(logits.dtype)
    labels = raw_labels.astype(dtype)
    x = _lm_head.transform(logits.astype(dtype), head)
    beta = _lm_head.beta(head)
    target = _dense_target(x, labels, smoothing, valid)
    if e is None:
        d_logits = _cross_entropy_grad(x, m, log_s, valid, target, g, beta)
    else:
        p = _softmax.from_exponentials(e, log_s)
        d_logits = g[..., None] * (p * jnp.sum(target, axis=-1, keepdims=True) - target)
    z = _lm_head.z_coefficient(head, m[..., 0], log_s[..., 0])
    if z is not None:
        p = _softmax.probabilities(x, m, log_s, valid, beta=beta)
        d_logits = d_logits + (g * z)[..., None] * p
    d_head = _lm_head.head_cotangent(
        head, _lm_head.option_sums(head, d_logits, x, logits.astype(dtype), m),
        m[..., 0], log_s[..., 0], g)
    if _lm_head.transforms(head):
        d_logits = _lm_head.transform_grad(d_logits, logits.astype(dtype), head)
    exists = x > -jnp.inf if valid is None else valid & (x > -jnp.inf)
    half = jnp.where(exists, _softmax.neg_log_probabilities(x, m, log_s, scale=0.5,
                                                            beta=beta), 0)
    d_labels = 2 * g[..., None] * half
    d_smoothing = None
    if smoothing is not None:
        d_labels = (1 - smoothing) * d_labels
        shift = _smoothing_support(x, valid) - labels
        d_smoothing = 2 * jnp.sum(g[..., None] * (shift * half))
        d_smoothing = d_smoothing.astype(smoothing.dtype)
    return (d_logits.astype(logits.dtype), d_labels.astype(raw_labels.dtype), d_smoothing,
            None, d_head)


_softmax_ce.defvjp(_softmax_ce_fwd, _softmax_ce_bwd)


@_validate.jit(static_argnames=("axis", "reduction"), checks=_lm_head.CHECKS,
               options={"label_smoothing": 0.0, **_lm_head.OFF})
def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
    *,
    label_smoothing: float | ArrayLike = 0.0,
    reduction: Reduction = "none",
    softcap: float | ArrayLike | None = None,
    temperature: float | ArrayLike = 1.0,
    z_loss: float | ArrayLike = 0.0,
) -> jax.Array:
    r"""Softmax cross-entropy with one-hot or soft targets.

    .. math::
      \ell(x, y) = -\sum_c y_c \log \mathrm{softmax}(x)_c
                 = \sum_c y_c\,(\mathrm{lse}(x) - x_c),
      \qquad \frac{\partial\ell}{\partial x_c} = \mathrm{softmax}(x)_c \sum_k y_k - y_c

    Same values as ``optax.losses.softmax_cross_entropy`` wherever optax's are
    finite. A class with logit ``-inf`` and target 0 contributes exactly 0 (optax
    gives NaN): masking classes by setting their logits to ``-inf`` is safe.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: targets broadcastable to ``logits`` (rows summing to 1 for a
        distribution; any non-negative weights are accepted).
      axis: the class axis (or axes, flattened into one).
      where: as in optax: a boolean mask of classes (the shape of ``logits``) or of
        rows (the batch shape). Excluded classes take no probability and contribute
        0; a row with no class left has loss 0.
      label_smoothing: :math:`\epsilon`; targets become
        :math:`(1 - \epsilon) y + \epsilon / C`, over the :math:`C` classes whose
        logit is finite and which ``where`` includes.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.
      softcap: :math:`c > 0`, or None (default): the logits become
        :math:`x' = c \tanh(x / c)` before the softmax (Gemma 2). A ``-inf`` logit
        stays ``-inf``.
      temperature: :math:`\tau > 0` (default 1): the logits are divided by
        :math:`\tau` (after the softcap).
      z_loss: :math:`\varepsilon_z \ge 0` (default 0): adds
        :math:`\varepsilon_z\,\mathrm{lse}(x')^2` per row (PaLM's z-loss), with gradient
        :math:`2\varepsilon_z\,\mathrm{lse}(x')\,\mathrm{softmax}(x')`.
        :func:`softmax_cross_entropy_with_integer_labels` states the formulas.

    Returns:
      One loss per row (``logits.shape`` without ``axis``) for ``"none"``, in
      ``promote_types(logits.dtype, float32)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> loss = jaxloss.softmax_cross_entropy(jnp.array([[2.0, 1.0, 0.1]]),
      ...                                      jnp.array([[1.0, 0.0, 0.0]]))
      >>> [round(v, 4) for v in loss.tolist()]
      [0.417]

    References:
      Goodfellow et al., `Deep Learning <http://www.deeplearningbook.org>`_, 2016, §6.2.2.3;
      Szegedy et al., `Rethinking the Inception Architecture
      <https://arxiv.org/abs/1512.00567>`_, 2016 (label smoothing);
      Chowdhery et al., `PaLM <https://arxiv.org/abs/2204.02311>`_, 2022 (z-loss);
      Gemma Team, `Gemma 2 <https://arxiv.org/abs/2408.00118>`_, 2024 (softcapping).
    """
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(logits.dtype)
    smoothing = _validate.smoothing("label_smoothing", label_smoothing, dtype)
    x, y, valid = _dense_inputs("logits", logits, labels, where, axis, dtype, convert=False)
    head = _lm_head.head(softcap, temperature, z_loss, dtype)
    losses = _softmax_ce(*_lm_head.match_varying_with_head(head, x, y, smoothing, valid))
    rows = None if valid is None else jnp.any(valid, axis=-1)
    return weighted_reduce(losses, reduction, where=rows, denominator=None)


# ---------------------------------------------------------------------------------
# Softmax cross-entropy with integer labels (PyTorch CrossEntropyLoss).


def _class_axis_sharded(x: jax.Array) -> bool:
    """Whether the class (last) axis is sharded over an Explicit mesh."""
    spec = jax.typeof(x).sharding.spec
    return len(spec) == x.ndim and spec[-1] is not None


def _pick(x: jax.Array, labels: jax.Array, gather: bool) -> jax.Array:
    """``x[..., label]`` along the last axis; 0 for a label outside ``[0, C)``.

    A gather is one read per row; XLA's CPU backend takes as long for the one-hot
    compare-and-sum as for three passes over the logits. Where the class axis is
    sharded the gather's output sharding is ambiguous, and the compare is used."""
    if gather:
        inside = (labels >= 0) & (labels < x.shape[-1])
        index = jnp.where(inside, labels, 0)[..., None]
        return jnp.where(inside, jnp.take_along_axis(x, index, axis=-1)[..., 0], 0)
    classes = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.sum(jnp.where(classes == labels[..., None], x, 0), axis=-1)


def _at_label(values: jax.Array, labels: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``values`` (one per row) at each row's label, 0 elsewhere: the transpose of
    :func:`_pick`. The iota compare fuses into the backward pass's one elementwise
    pass over the logits; a scatter would be a pass of its own."""
    classes = jax.lax.broadcasted_iota(labels.dtype, shape, len(shape) - 1)
    return jnp.where(classes == labels[..., None], values[..., None], 0)


def _add_at_label(x: jax.Array, values: jax.Array, labels: jax.Array) -> jax.Array:
    """``x`` with ``values`` (one per row) added at each row's label (in range)."""
    rows = x.reshape(-1, x.shape[-1])
    index = jnp.arange(rows.shape[0])
    rows = rows.at[index, labels.reshape(-1)].add(values.reshape(-1), mode="drop")
    return rows.reshape(x.shape)


def _smoothing_terms(
    x: jax.Array, class_weights: jax.Array | None, smoothing: jax.Array | None,
    valid: jax.Array | None,
) -> jax.Array | None:
    """``eps * w * u``, the smoothing part of the target (None without smoothing)."""
    if smoothing is None:
        return None
    target = smoothing * _smoothing_support(x, valid)
    return target if class_weights is None else target * class_weights


def _label_coefficient(
    x: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
    smoothing: jax.Array | None, gather: bool,
) -> jax.Array:
    """:math:`(1 - \\epsilon) w_y`, the target weight of each row's label."""
    coefficient = jnp.ones(labels.shape, x.dtype)
    if class_weights is not None:
        coefficient = _pick(jnp.broadcast_to(class_weights, x.shape), labels, gather)
    return coefficient if smoothing is None else (1 - smoothing) * coefficient


def _keeps_exponentials(
    logits: jax.Array, class_weights: jax.Array | None, smoothing: jax.Array | None,
    valid: jax.Array | None, head: _lm_head.Head | None,
) -> bool:
    """Whether the integer CE keeps :math:`e^{x - m}` for its backward pass instead of
    the logits: without options, for logits already in the compute dtype and rows short
    enough to be reduced whole. The softmax is then :math:`e / s`, one exponential per
    entry in all (forming it again from the logits took a second: 1.35x optax's
    ``value_and_grad`` at [4096, 1024] float32 on the CPU, where exponentials are the
    cost)."""
    return (class_weights is None and smoothing is None and valid is None and head is None
            and logits.dtype == _validate.compute_dtype(logits.dtype))


@_rules.rule(nondiff_argnums=(7, 8))
def _integer_ce(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
    smoothing: jax.Array | None, valid: jax.Array | None, keep: jax.Array | None,
    head: _lm_head.Head | None, gather: bool, with_stats: bool,
) -> Any:
    return _integer_ce_fwd(logits, labels, class_weights, smoothing, valid, keep, head,
                           gather, with_stats, residuals=False)[0]


def _integer_ce_fwd(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
    smoothing: jax.Array | None, valid: jax.Array | None, keep: jax.Array | None,
    head: _lm_head.Head | None, gather: bool, with_stats: bool, *, residuals: bool = True,
) -> tuple[Any, _IntegerCEResiduals]:
    r""":math:`\ell = \alpha\,(\mathrm{lse} - x_y) + \sum_c \epsilon w_c u_c
    (\mathrm{lse} - x_c) + \varepsilon_z \mathrm{lse}^2` with :math:`\alpha = (1 -
    \epsilon) w_y`, on the logits as ``head`` transforms them; NaN for a label outside
    ``[0, C)``. The output is :math:`\ell/2`, doubled after the reduction (exactly: a
    power of 2), so that a weighted mean of losses near the float maximum is finite
    where it fits. Residuals: the inputs and the normalizer :math:`(m, \log s)` per
    row; in the plain case (:func:`_keeps_exponentials`) the exponentials
    :math:`e^{x - m}` in place of the logits. With ``with_stats`` the output is
    ``(loss / 2, m, log_s, x_y)``. ``keep`` (None: all) marks the rows that the
    reduction keeps: the backward pass reads the others as 0, so that their gradient is
    0 whatever they hold."""
    dtype = _validate.compute_dtype(logits.dtype)
    x = _lm_head.transform(logits.astype(dtype), head)
    beta = _lm_head.beta(head)
    # Without a softcap the max and the label's logit are read from the input dtype:
    # a gather from the float32 copy of bf16 logits would make XLA materialize that copy.
    source = x if _lm_head.caps(head) else logits
    block = _row_block(logits.shape[-1])
    if block is None and _keeps_exponentials(logits, class_weights, smoothing, valid, head):
        m, e, log_s = _softmax.exponentials(logits, dtype)
    elif residuals and _keeps_exponentials(logits, class_weights, smoothing, valid, head):
        # Long rows: a forward pass alone keeps the normalizer's per-block shifts (one
        # pass over memory); one that keeps e shifts by the row's max (two passes, and
        # no second exponential in the backward pass).
        # (Blocks on the CPU only, as in _log_normalizer.)
        assert block is not None
        m, e, log_s = jax.lax.platform_dependent(
            logits, cpu=lambda x: _softmax.blocked_exponentials(x, dtype, block),
            default=lambda x: _softmax.exponentials(x, dtype))
    else:
        m, log_s = _log_normalizer(source, valid, dtype, beta)
        e = logits
    label_logit = _pick(source, labels, gather).astype(dtype)
    # Halves, doubled: m - x may overflow where the weighted sum does not.
    label_half = _softmax.neg_log_probabilities(label_logit, m[..., 0], log_s[..., 0],
                                                scale=0.5, beta=beta)
    loss = _times(_label_coefficient(x, labels, class_weights, smoothing, gather), label_half)
    smooth = _smoothing_terms(x, class_weights, smoothing, valid)
    if smooth is not None:
        half = _softmax.neg_log_probabilities(x, m, log_s, scale=0.5, beta=beta)
        loss = loss + jnp.sum(_times(smooth, half), axis=-1)
    z = _lm_head.z_term(head, m[..., 0], log_s[..., 0])
    if z is not None:
        loss = loss + 0.5 * z
    in_range = (labels >= 0) & (labels < x.shape[-1])
    loss = jnp.where(in_range, loss, jnp.nan)
    out = (loss, m[..., 0], log_s[..., 0], label_logit) if with_stats else loss
    return out, (e, labels, class_weights, smoothing, valid, keep, head, m, log_s)


def _integer_ce_bwd(
    gather: bool, with_stats: bool, residuals: _IntegerCEResiduals, g: Any,
) -> tuple[jax.Array, None, jax.Array | None, jax.Array | None, None, None,
           _lm_head.Head | None]:
    r""":math:`\partial\ell/\partial x' = p \,(\sum_c a_c + 2\varepsilon_z
    \mathrm{lse}) - a` with :math:`a = \alpha\,\mathrm{onehot}(y) + \epsilon w u`
    (NaN on rows whose label is out of range), times :math:`\partial x'/\partial x`;
    :math:`\partial\ell/\partial w_c = \sum_n q_{nc}(\mathrm{lse}_n - x_{nc})`;
    :math:`\partial\ell/\partial\epsilon = \sum_n [\sum_c w_c u_{nc}(\mathrm{lse}_n
    - x_{nc}) - w_{y_n}(\mathrm{lse}_n - x_{n y_n})]`. The statistics of
    ``with_stats`` have no gradient: their cotangents are dropped. The options of
    ``head`` get theirs from :func:`jaxloss._lm_head.head_cotangent`."""
    if with_stats:
        g = g[0]
    g = 0.5 * g  # the output is half the loss
    logits, labels, class_weights, smoothing, valid, keep, head, m, log_s = residuals
    exponentials = _keeps_exponentials(logits, class_weights, smoothing, valid, head)
    if keep is not None:
        logits, m, log_s = (_kept(a, keep[..., None]) for a in (logits, m, log_s))
    dtype = _validate.compute_dtype(logits.dtype)
    x = _lm_head.transform(logits.astype(dtype), head)
    beta = _lm_head.beta(head)
    alpha = _label_coefficient(x, labels, class_weights, smoothing, gather)
    smooth = _smoothing_terms(x, class_weights, smoothing, valid)
    total = alpha
    if smooth is not None and class_weights is None:
        assert smoothing is not None
        # sum_c eps u_c = eps on a row with a class (no reduction over the row here).
        total = alpha + jnp.where(_support(x, valid)[1][..., 0] > 0, smoothing, 0)
    elif smooth is not None:
        total = alpha + jnp.sum(smooth, axis=-1)
    z = _lm_head.z_coefficient(head, m[..., 0], log_s[..., 0])
    if z is not None:
        total = total + z
    if exponentials:
        p = _softmax.from_exponentials(x, log_s)
    else:
        p = _softmax.probabilities(x, m, log_s, valid, beta=beta)
    # The derivative of each row's loss first, then one product with the cotangent:
    # reverse mode transposes this map twice (jaxloss._rules), and a single product
    # comes back as the one elementwise pass the backward pass is.
    factor = total[..., None] * p
    if smooth is not None:
        factor = factor - smooth
    # A row whose label is out of range: NaN (a factor per row, not a select per entry).
    in_range = (labels >= 0) & (labels < x.shape[-1])
    g_rows = g * jnp.where(in_range, 1, jnp.nan).astype(g.dtype)
    if gather and replicated_sharding(x) is None:
        # The label's term added in place after the elementwise pass: on XLA's CPU a
        # scatter of one entry per row costs less than a compare and select per entry.
        # (Over an Explicit mesh the scatter's sharding is ambiguous: the compare.)
        d_logits = _add_at_label(g_rows[..., None] * factor, -g_rows * alpha, labels)
    else:
        d_logits = g_rows[..., None] * (factor - _at_label(alpha, labels, x.shape))
    d_head = _lm_head.head_cotangent(
        head, _lm_head.option_sums(head, d_logits, x, logits.astype(dtype), m), m[..., 0],
        log_s[..., 0], g)
    if _lm_head.transforms(head):
        d_logits = _lm_head.transform_grad(d_logits, logits.astype(dtype), head)
    d_weights = d_smoothing = None
    if class_weights is not None or smoothing is not None:
        # Halves of -log p, doubled below (as in the forward pass).
        half = _softmax.neg_log_probabilities(x, m, log_s, scale=0.5, beta=beta)
        label_half = _softmax.neg_log_probabilities(_pick(x, labels, gather), m[..., 0],
                                                    log_s[..., 0], scale=0.5, beta=beta)
        kept_share = 1.0 if smoothing is None else 1 - smoothing
    if class_weights is not None:
        # A compare-and-sum down the rows, not a scatter: it fuses, and it has an
        # unambiguous sharding when the rows are split over devices.
        per_class = _at_label(g * (kept_share * label_half), labels, x.shape)
        if smoothing is not None:
            uniform = smoothing * _smoothing_support(x, valid)
            per_class = per_class + g[..., None] * _times(uniform, half)
        d_weights = 2 * jnp.sum(per_class.reshape(-1, x.shape[-1]), axis=0)
    if smoothing is not None:
        w_u = _smoothing_support(x, valid)
        w_y = jnp.ones(labels.shape, dtype)
        if class_weights is not None:
            w_u = w_u * class_weights
            w_y = _pick(jnp.broadcast_to(class_weights, x.shape), labels, gather)
        shift = jnp.sum(_times(w_u, half), axis=-1) - _times(w_y, label_half)
        d_smoothing = (2 * jnp.sum(g * shift)).astype(smoothing.dtype)
    return d_logits.astype(logits.dtype), None, d_weights, d_smoothing, None, None, d_head


_integer_ce.defvjp(_integer_ce_fwd, _integer_ce_bwd)


@_validate.jit(
    static_argnames=("axis", "reduction", "axis_name", "return_aux"),
    checks=_lm_head.CHECKS, options={"label_smoothing": 0.0, **_lm_head.OFF},
)
def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
    *,
    ignore_index: int | ArrayLike | None = -100,
    label_smoothing: float | ArrayLike = 0.0,
    class_weights: ArrayLike | None = None,
    reduction: Reduction = "none",
    axis_name: AxisName | None = None,
    softcap: float | ArrayLike | None = None,
    temperature: float | ArrayLike = 1.0,
    z_loss: float | ArrayLike = 0.0,
    return_aux: bool = False,
) -> Any:
    r"""Softmax cross-entropy with integer class labels (PyTorch ``CrossEntropyLoss``).

    .. math::
      \ell_n = \sum_c w_c\,q_{nc}\,(\mathrm{lse}(x_n) - x_{nc}), \qquad
      q_n = (1 - \epsilon)\,\mathrm{onehot}(y_n) + \epsilon\,u_n

    .. math::
      \frac{\partial\ell_n}{\partial x_{nc}} =
        \mathrm{softmax}(x_n)_c \sum_k w_k q_{nk} - w_c q_{nc}

    where :math:`u_n` is uniform over the classes of row :math:`n` whose logit is
    finite (and that ``where`` includes). Without weights or smoothing this is
    :math:`\mathrm{lse}(x_n) - x_{n y_n}`, optax's
    ``softmax_cross_entropy_with_integer_labels`` (same values wherever optax's are
    finite). With ``class_weights``, ``ignore_index`` and ``label_smoothing`` it is
    PyTorch's: ``"mean"`` divides by :math:`\sum_n w_{y_n}` over the rows kept, and is
    0 with zero gradient when no row is kept.

    Classes masked with ``-inf`` logits get no smoothing mass and zero gradient, and
    the loss stays finite while the label's own logit is finite. A label outside
    ``[0, C)`` (other than ``ignore_index``) gives NaN: wrap in
    :func:`jaxloss.checked` to raise instead.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: integer class ids of the shape of ``logits`` without ``axis``.
      axis: the class axis (or axes, flattened into one as in optax).
      where: a boolean mask of classes (the shape of ``logits``) or of rows (the
        batch shape), as in optax.
      ignore_index: a label value whose rows get loss 0 and gradient 0 and are left
        out of ``"mean"``: -100 by default, as PyTorch's (and Hugging Face's, Liger's,
        Cut Cross-Entropy's) padding label; None ignores no label. An int or a traced
        integer scalar.
      label_smoothing: :math:`\epsilon` in [0, 1], a Python float or a traced scalar
        (a new value does not recompile; differentiable).
      class_weights: :math:`w`, one non-negative weight per class (with
        ``axis_name``: this device's slice of them, like the logits).
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.
      axis_name: the mesh axis (or tuple of axes) that the class axis is split over,
        inside ``jax.shard_map`` (Megatron's vocabulary-parallel cross-entropy). Each
        device holds a contiguous slice of the classes, device :math:`r` the classes
        :math:`[rC/n, (r+1)C/n)`; ``labels`` are global class ids, the same on every
        device. The row maximum and the sum of exponentials are combined by ``pmax``
        and ``psum``, the label's logit comes from the device that owns it, and the
        ``[N, C]`` logits are never gathered: the backward pass is local. The losses
        (the same on every device of the axis) and the gradient of each slice equal
        the unsharded ones.
      softcap: :math:`c > 0`, or None (default): the logits become
        :math:`c \tanh(x / c)` before the softmax (Gemma 2's final-logit softcapping;
        Liger's and Cut Cross-Entropy's ``softcap``). A ``-inf`` logit stays ``-inf``.
      temperature: :math:`\tau > 0` (default 1): the (softcapped) logits are divided
        by :math:`\tau`.
      z_loss: :math:`\varepsilon_z \ge 0` (default 0): adds
        :math:`\varepsilon_z\,\mathrm{lse}(x')^2` to each row's loss, unweighted by
        ``class_weights`` (PaLM's z-loss, :math:`10^{-4}` there; Liger's
        ``lse_square_scale``). Its gradient is
        :math:`2\varepsilon_z\,\mathrm{lse}(x')\,\mathrm{softmax}(x')`.
      return_aux: return ``(loss, aux)``, ``aux`` a :class:`jaxloss.CrossEntropyAux` of
        per-row ``lse``, ``z_loss``, ``correct`` and ``label_logit`` from the same pass,
        without gradient.

    With ``softcap``, ``temperature`` or ``z_loss`` the loss is that of the logits
    :math:`x' = c \tanh(x / c) / \tau` plus the z-term, and the custom_vjp chains
    :math:`\partial x'/\partial x = \operatorname{sech}^2(x / c) / \tau`; every other
    option applies to :math:`x'` as it would to :math:`x`. The defaults compile the
    plain path.

    Returns:
      One loss per row for ``"none"``, in ``promote_types(logits.dtype, float32)``;
      with ``return_aux``, ``(loss, aux)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
      >>> loss = jaxloss.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
      >>> [round(v, 4) for v in loss.tolist()]
      [0.417, 0.1967]
      >>> mean = jaxloss.softmax_cross_entropy_with_integer_labels(
      ...     logits, jnp.array([0, -100]), ignore_index=-100, reduction="mean")
      >>> round(float(mean), 4)  # the ignored row is left out of the mean
      0.417

    References:
      Goodfellow et al., `Deep Learning <http://www.deeplearningbook.org>`_, 2016, §6.2.2.3;
      Müller et al., `When Does Label Smoothing Help?
      <https://arxiv.org/abs/1906.02629>`_, 2019;
      Chowdhery et al., `PaLM: Scaling Language Modeling with Pathways
      <https://arxiv.org/abs/2204.02311>`_, 2022, §5 (z-loss);
      Gemma Team, `Gemma 2: Improving Open Language Models at a Practical Size
      <https://arxiv.org/abs/2408.00118>`_, 2024 (logit softcapping).
    """
    logits = _validate.floating("logits", logits)
    labels = _validate.integer("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(logits.dtype)
    smoothing = _validate.smoothing("label_smoothing", label_smoothing, dtype)
    x, _ = _classes_last(logits, axis)
    _validate.same_shape("labels", labels, x.shape[:-1], "logits without the class axis")
    num_classes = x.shape[-1]
    valid = _class_mask(where, logits.ndim, axis)
    if valid is not None:
        valid = jnp.broadcast_to(valid, x.shape)
    if class_weights is not None:
        class_weights = _validate.numeric("class_weights", class_weights)
        _validate.same_shape("class_weights", class_weights, (num_classes,),
                             "one weight per class")
        class_weights = class_weights.astype(dtype)
    head = _lm_head.head(softcap, temperature, z_loss, dtype)

    if axis_name is not None:
        if not isinstance(axis, int):
            raise ValueError(
                f"axis_name needs a single class axis (a flattened tuple of sharded axes "
                f"has no contiguous global class ids), got axis={axis!r}")
        losses, keep, denominator, stats = _vocab_parallel_integer_ce(
            x, labels, axis_name=axis_name, valid=valid, ignore_index=ignore_index,
            smoothing=smoothing, class_weights=class_weights, head=head,
            with_stats=return_aux)
        loss = 2 * weighted_reduce(losses, reduction, where=keep, denominator=denominator)
        if not return_aux:
            return loss
        assert stats is not None
        return loss, _lm_head.aux(head, *stats, keep)

    keep = None if valid is None else jnp.any(valid, axis=-1)
    ignored = _validate.ignored("ignore_index", ignore_index, labels)
    if ignored is not None:
        keep = ~ignored if keep is None else keep & ~ignored
        # A safe label on ignored rows keeps their (masked) gradient free of NaN.
        labels = jnp.where(ignored, 0, labels)
    gather = not _class_axis_sharded(x)
    x, labels, class_weights, smoothing, valid, keep, head = (
        _lm_head.match_varying_with_head(head, x, labels, class_weights, smoothing, valid,
                                         keep))
    out = _integer_ce(x, labels, class_weights, smoothing, valid, keep, head, gather,
                      return_aux)
    losses = out[0] if return_aux else out
    denominator = None
    if class_weights is not None:
        denominator = _pick(jnp.broadcast_to(class_weights, x.shape), labels, gather)
    # Halves, reduced, then doubled (exact): a weighted mean that fits stays finite.
    loss = 2 * weighted_reduce(losses, reduction, where=keep, denominator=denominator)
    if not return_aux:
        return loss
    _, m, log_s, label_logit = out
    return loss, _lm_head.aux(head, m, log_s, label_logit, keep)


# ---------------------------------------------------------------------------------
# Categorical cross-entropy on probabilities (Keras).


@_rules.rule()
def _categorical_ce(probabilities: jax.Array, labels: jax.Array) -> jax.Array:
    return _categorical_ce_fwd(probabilities, labels)[0]


def _clipped(
    probabilities: jax.Array, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    p = probabilities.astype(dtype)
    total = jnp.sum(p, axis=-1, keepdims=True)
    ratio = p / total
    return ratio, jnp.clip(ratio, KERAS_EPSILON, 1 - KERAS_EPSILON), total


def _categorical_ce_fwd(
    probabilities: jax.Array, labels: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    r""":math:`\ell = -\sum_c y_c \log \mathrm{clip}(p_c / S, \varepsilon, 1 - \varepsilon)`,
    :math:`S = \sum_c p_c` (Keras normalizes, then clips)."""
    _, clipped, _ = _clipped(probabilities, labels.dtype)
    loss = -jnp.sum(_times(labels, jnp.log(clipped)), axis=-1)
    return loss, (probabilities, labels)


def _categorical_ce_bwd(
    residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""With :math:`r = p/S`, :math:`u = \mathrm{clip}(r)` and
    :math:`h_c = -y_c / u_c` where :math:`r_c` is inside the clip range (0 outside):
    :math:`\partial\ell/\partial p_k = (h_k - \sum_c h_c r_c) / S`;
    :math:`\partial\ell/\partial y_c = -\log u_c`."""
    probabilities, labels = residuals
    ratio, clipped, total = _clipped(probabilities, labels.dtype)
    inside = (ratio > KERAS_EPSILON) & (ratio < 1 - KERAS_EPSILON)
    h = jnp.where(inside, -labels / clipped, 0)
    d_p = g[..., None] * ((h - jnp.sum(h * ratio, axis=-1, keepdims=True)) / total)
    d_labels = g[..., None] * -jnp.log(clipped)
    return d_p.astype(probabilities.dtype), d_labels


_categorical_ce.defvjp(_categorical_ce_fwd, _categorical_ce_bwd)


@_validate.jit(static_argnames=("axis", "reduction"))
def categorical_cross_entropy(
    probabilities: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Categorical cross-entropy on probabilities (Keras
    ``CategoricalCrossentropy(from_logits=False)``).

    .. math::
      \ell(p, y) = -\sum_c y_c \log \mathrm{clip}\Bigl(\frac{p_c}{\sum_k p_k},
        10^{-7}, 1 - 10^{-7}\Bigr)

    Like Keras, the probabilities are renormalized to sum to 1 and clipped, so a
    probability of 0 gives a finite loss; where the clip is active the gradient is 0
    (Keras' behaviour: prefer :func:`softmax_cross_entropy` on logits, which has
    neither problem). For the true class cat with probabilities
    (cat 0.80, dog 0.15, cow 0.05) the loss is :math:`-\log 0.8 = 0.223`.

    Args:
      probabilities: predicted class probabilities, classes along ``axis``.
      labels: one-hot or soft targets broadcastable to ``probabilities``.
      axis: the class axis.
      where: a boolean mask of classes (the shape of ``probabilities``) or of rows
        (the batch shape); excluded classes are dropped before the renormalization.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.

    References:
      Goodfellow, Bengio and Courville, `Deep Learning
      <https://www.deeplearningbook.org/contents/mlp.html>`_, section 6.2.2, MIT Press
      2016.
    """
    probabilities = _validate.floating("probabilities", probabilities)
    labels = _validate.numeric("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    dtype = _validate.compute_dtype(probabilities.dtype)
    p, y, valid = _dense_inputs("probabilities", probabilities, labels, where, axis, dtype)
    rows = None
    if valid is not None:
        rows = jnp.any(valid, axis=-1, keepdims=True)
        # A row with no class left gets uniform p and no target: loss 0, gradient 0.
        p = jnp.where(valid, p, jnp.where(rows, 0, 1))
        y = jnp.where(valid, y, 0)
        rows = rows[..., 0]
    losses = _categorical_ce(*match_varying(p, y))
    return weighted_reduce(losses, reduction, where=rows, denominator=None)


# ---------------------------------------------------------------------------------
# PyTorch's losses that optax lacks: NLLLoss, SoftMarginLoss, MultiLabelSoftMarginLoss.
# Plain autodiff of stable formulas (no custom_vjp).


def _times_unless_infinite(coefficient: jax.Array, value: jax.Array) -> jax.Array:
    """``coefficient * value`` with ``0 * inf = 0`` where ``value`` is infinite.

    Unlike :func:`jaxloss._math.times`, a zero coefficient keeps its derivative
    ``value`` wherever ``value`` is finite (a label of exactly 0 or 1 is still
    differentiated); only the undefined product at an infinite logit is replaced."""
    return jnp.where((coefficient == 0) & jnp.isinf(value), 0, coefficient * value)


@_validate.jit(static_argnames=("reduction",),
               checks={"ignore_index": _validate.check_ignore_index})
def nll_loss(
    log_probs: ArrayLike,
    labels: ArrayLike,
    *,
    class_weights: ArrayLike | None = None,
    ignore_index: int | ArrayLike | None = -100,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Negative log-likelihood of integer labels (PyTorch ``nll_loss``).

    .. math::
      \ell_n = -w_{y_n}\, z_{n y_n}, \qquad
      \frac{\partial \ell_n}{\partial z_{nc}} = -w_{y_n} [c = y_n], \qquad
      \frac{\partial \ell_n}{\partial w_c} = -z_{n y_n} [c = y_n]

    for log-probabilities :math:`z` (e.g. ``jax.nn.log_softmax(logits)``); on them it
    equals :func:`softmax_cross_entropy_with_integer_labels` of the logits. The class
    axis is the **last** one (PyTorch's is dim 1: ``jnp.moveaxis(x, 1, -1)``).
    ``"mean"`` is PyTorch's weighted mean :math:`\sum_n \ell_n / \sum_n w_{y_n}` over
    the rows kept (not ignored, selected by ``where``); it is 0 with zero gradient when
    no row is kept (PyTorch gives NaN). Only the label's entry is read: other classes
    may be ``-inf`` (log-probability 0) and get gradient 0; a weight of 0 makes a row's
    loss exactly 0 even where its log-probability is ``-inf``.

    A label outside ``[0, C)`` (other than ``ignore_index``) gives a NaN loss and
    gradient (PyTorch raises): wrap in :func:`jaxloss.checked` to raise instead.

    Args:
      log_probs: log-probabilities, ``[..., num_classes]``.
      labels: integer class ids, ``[...]`` (``log_probs.shape[:-1]``).
      class_weights: :math:`w`, one non-negative weight per class (PyTorch's
        ``weight``), ``[num_classes]``.
      ignore_index: a label value whose rows get loss 0 and gradient 0 and are left out
        of ``"mean"``: -100 by default, as PyTorch's; None ignores no label. An int or
        a traced integer scalar (a new value does not recompile).
      where: boolean mask of the rows to include, broadcastable to ``labels``.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(log_probs.dtype, float32)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> probs = jnp.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2]])
      >>> loss = jaxloss.nll_loss(jnp.log(probs), jnp.array([0, 1]))
      >>> [round(v, 4) for v in loss.tolist()]  # -log 0.8, -log 0.7
      [0.2231, 0.3567]

    References:
      PyTorch, `torch.nn.NLLLoss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.NLLLoss.html>`_.
    """
    log_probs = _validate.floating("log_probs", log_probs)
    labels = _validate.integer("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    if log_probs.ndim < 1:
        raise ValueError(
            f"log_probs must have a class axis, got {_validate.describe(log_probs)}")
    _validate.same_shape("labels", labels, log_probs.shape[:-1],
                         "log_probs without the class axis")
    _validate.broadcasts_to("labels", labels, where=where)
    dtype = _validate.compute_dtype(log_probs.dtype)
    num_classes = log_probs.shape[-1]
    keep = None if where is None else jnp.broadcast_to(where, labels.shape)
    ignored = _validate.ignored("ignore_index", ignore_index, labels)
    if ignored is not None:
        keep = ~ignored if keep is None else keep & ~ignored
    if keep is not None:
        # A safe label on the rows left out keeps their (masked) gradient free of NaN.
        labels = jnp.where(keep, labels, 0)
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.clip(labels, 0, num_classes - 1)
    gather = not _class_axis_sharded(log_probs)
    # Picked from the input dtype, as in the cross-entropy: no float32 copy of [N, C].
    picked = _pick(log_probs, safe_labels, gather).astype(dtype)
    weight = jnp.ones(labels.shape, dtype)
    if class_weights is not None:
        class_weights = _validate.numeric("class_weights", class_weights)
        _validate.same_shape("class_weights", class_weights, (num_classes,),
                             "one weight per class")
        class_weights = class_weights.astype(dtype)
        weight = _pick(jnp.broadcast_to(class_weights, log_probs.shape), safe_labels, gather)
    # NaN, not a silent 0, for a label out of range: its loss and its gradient.
    coefficient = jnp.where(in_range, weight, jnp.nan)
    losses = -_times(coefficient, picked)
    return weighted_reduce(losses, reduction, where=keep,
                           denominator=None if class_weights is None else weight)


@_validate.jit(static_argnames=("reduction",))
def soft_margin_loss(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Elementwise soft margin (logistic) loss of PyTorch ``soft_margin_loss``.

    .. math::
      \ell(x, y) = \log\bigl(1 + e^{-y x}\bigr) = \mathrm{softplus}(-y x), \qquad
      \frac{\partial \ell}{\partial x} = -y\,\sigma(-y x), \qquad
      \frac{\partial \ell}{\partial y} = -x\,\sigma(-y x)

    The smooth counterpart of :func:`jaxloss.hinge_loss`; for :math:`y \in \{-1, 1\}`
    it is :func:`sigmoid_binary_cross_entropy` of the labels :math:`(1 + y)/2`. The
    softplus form is exact for any finite margin: :math:`x = 10^{30}` gives 0 and
    gradient 0 where :math:`y = 1`, and :math:`10^{30}` and gradient 1 where
    :math:`y = -1`. ``"mean"`` averages over every element, as PyTorch's.

    Args:
      predictions: scores :math:`x`, any floating shape.
      targets: :math:`y \in \{-1, 1\}`, broadcastable to ``predictions``.
      where: boolean mask of the elements to include, broadcastable to ``predictions``.
      reduction: ``"none"`` (default, one value per element), ``"mean"`` or ``"sum"``.

    Returns:
      The losses, in ``promote_types(predictions.dtype, float32)``.

    References:
      PyTorch, `torch.nn.SoftMarginLoss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.SoftMarginLoss.html>`_.
    """
    predictions = _validate.floating("predictions", predictions)
    targets = _validate.numeric("targets", targets)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    _validate.broadcasts_to("predictions", predictions, targets=targets, where=where)
    dtype = _validate.compute_dtype(predictions.dtype)
    margins = predictions.astype(dtype) * targets.astype(dtype)
    if where is not None:
        where = jnp.broadcast_to(where, margins.shape)
        # Masked margins are 0 before the loss is formed: a NaN there reaches neither
        # the value nor the gradient.
        margins = jnp.where(where, margins, 0)
    return weighted_reduce(jax.nn.softplus(-margins), reduction, where=where,
                           denominator=None)


@_validate.jit(static_argnames=("reduction",))
def multilabel_soft_margin_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Multi-label one-versus-all logistic loss (PyTorch ``multilabel_soft_margin_loss``).

    .. math::
      \ell(x, y) = -\frac1C \sum_{c=1}^C w_c \bigl[y_c \log\sigma(x_c)
        + (1 - y_c) \log\sigma(-x_c)\bigr]
      = \frac1C \sum_c w_c \bigl[y_c\,\mathrm{softplus}(-x_c)
        + (1 - y_c)\,\mathrm{softplus}(x_c)\bigr]

    .. math::
      \frac{\partial \ell}{\partial x_c} = \frac{w_c}{C}\bigl(\sigma(x_c) - y_c\bigr),
      \qquad \frac{\partial \ell}{\partial y_c} = -\frac{w_c}{C}\, x_c

    One value per example: the class mean of :func:`sigmoid_binary_cross_entropy`,
    each class scaled by its weight; the mean divides by :math:`C` whatever the
    weights (they do not renormalize), as PyTorch's. The softplus form is exact at
    logits :math:`\pm 10^{30}` (and gives the limits at :math:`\pm\infty`).

    Args:
      logits: ``[..., num_classes]``.
      labels: targets in [0, 1] (hard or soft), broadcastable to ``logits``.
      class_weights: :math:`w`, broadcastable to ``logits`` (usually one per class,
        ``[num_classes]``; PyTorch's ``weight``).
      where: boolean mask of the examples to include, broadcastable to
        ``logits.shape[:-1]``.
      reduction: ``"none"`` (default, one value per example), ``"mean"`` (over the
        examples) or ``"sum"``.

    Returns:
      The losses, in ``promote_types(logits.dtype, float32)``.

    References:
      PyTorch, `torch.nn.MultiLabelSoftMarginLoss
      <https://docs.pytorch.org/docs/stable/generated/torch.nn.MultiLabelSoftMarginLoss.html>`_.
    """
    logits = _validate.floating("logits", logits)
    labels = _validate.numeric("labels", labels)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    if logits.ndim < 1:
        raise ValueError(f"logits must have a class axis, got {_validate.describe(logits)}")
    if class_weights is not None:
        class_weights = _validate.numeric("class_weights", class_weights)
    _validate.broadcasts_to("logits", logits, labels=labels, class_weights=class_weights)
    batch = logits.shape[:-1]
    if where is not None:
        _validate.broadcasts_to("logits without the class axis",
                               jax.ShapeDtypeStruct(batch, jnp.bool_), where=where)
        where = jnp.broadcast_to(where, batch)
    dtype = _validate.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    y = jnp.broadcast_to(labels.astype(dtype), x.shape)
    if where is not None:
        # Masked rows are 0 before the loss is formed (no NaN leaks from them).
        x, y = jnp.where(where[..., None], x, 0), jnp.where(where[..., None], y, 0)
    terms = (_times_unless_infinite(y, jax.nn.softplus(-x))
             + _times_unless_infinite(1 - y, jax.nn.softplus(x)))
    if class_weights is not None:
        terms = _times_unless_infinite(class_weights.astype(dtype), terms)
    losses = overflow_safe_mean(terms, x.shape[-1], axis=-1)
    return weighted_reduce(losses, reduction, where=where, denominator=None)
