"""Large-vocabulary cross-entropy: the softmax cross-entropy of a linear layer's output,
computed chunk by chunk over the vocabulary so that the ``[N, V]`` logits are never held.

A language model's last layer maps hidden states ``[N, D]`` to logits ``[N, V]``; at
``N = 4096`` tokens and ``V = 32768`` words those logits take 512 MiB in float32, and
the materialized cross-entropy's value and gradient hold twice that. Here the logits of
``chunk_size`` words at a time are formed, reduced into an online log-sum-exp and
dropped; the backward pass forms them again, chunk by chunk, to build the gradients.

With ``axis_name`` the vocabulary is also sharded over devices, Megatron-style: inside
``jax.shard_map`` each device holds a contiguous ``V/n`` slice of the classes (of the
logits' last axis, or of the weight's columns), and the per-row max, sum of
exponentials and label logit are combined with ``pmax`` and ``psum``; the ``[N, V]``
logits are never gathered. :func:`_vocab_parallel_integer_ce` is that cross-entropy on
already-formed logit shards.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _softmax, _validate
from jaxloss._checked import check_labels, register_checks
from jaxloss._math import times as _times
from jaxloss._reduce import Reduction, weighted_reduce
from jaxloss.distributed import (
    AxisName,
    axis_index,
    axis_size,
    match_varying,
    varying,
    varying_axes,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "linear_softmax_cross_entropy", "shift_labels"]

# Vocabulary entries per chunk, chosen by measurement at N = 4096, D = 512, V = 32768
# float32 on a 2-core CPU: the value and gradient need 1/20 of the materialized
# version's temporary memory (4096 would need 1/12, over the 1/16 goal) and run a few
# percent faster than with 1024 or 512 (1/30, 1/41). See the docstring's figures.
DEFAULT_CHUNK_SIZE = 2048
"""Vocabulary columns per chunk of :func:`linear_softmax_cross_entropy` when
``chunk_size`` is None."""


# ---------------------------------------------------------------------------------
# Vocabulary parallelism: the class axis sharded over the mesh axes ``axis_name``.


_Arrays = TypeVar("_Arrays", bound=tuple[Any, ...])


def _vary_together(arrays: _Arrays, *like: jax.Array | None,
                   axis_name: AxisName | None = None) -> _Arrays:
    """The differentiable ``arrays`` of a custom_vjp typed as varying over every mesh
    axis that any of them (or of ``like``: labels, masks, cotangents) varies over, and
    over ``axis_name``; a no-op outside ``shard_map`` and under ``check_vma=False``.

    The backward pass returns each device's share of every cotangent (``d weight``
    sums over this device's rows, ``d hidden`` over its classes); where an input was
    replicated over an axis (the weight over a data axis, the hidden states over the
    vocabulary axis) the transpose of this cast, a ``psum``, adds the shares up. (Under
    ``check_vma=False`` shard_map's own transpose sums the cotangents of replicated
    inputs.) ``like`` is not cast: labels typed as varying over ``axis_name`` would
    make the per-row losses, equal on every shard, vary too. Also the initial carries
    of a scan over such inputs."""
    cast_arrays = tuple(arrays)
    if axis_name is not None:
        cast_arrays = tuple(None if a is None else varying(a, axis_name) for a in cast_arrays)
    # Each entry keeps its kind (an array stays an array, None stays None).
    return cast(_Arrays, match_varying(*cast_arrays, *like)[: len(cast_arrays)])


def _total_cotangent(g: jax.Array, typed_residual: jax.Array, axis_name: AxisName) -> jax.Array:
    """The cotangent of a loss that the forward pass summed over ``axis_name``.

    With ``check_vma=True`` (the default) that loss is typed invariant and ``g`` is its
    whole cotangent on every device. With ``check_vma=False`` shard_map's transpose
    hands each device a share of it (the shares add up to the cotangent, the convention
    under which ``psum`` transposes to ``psum``), so the shares are summed here. The
    mode is read off a residual that :func:`_vary_together` made varying over
    ``axis_name``: only with ``check_vma=True`` does its type say so."""
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if all(a in varying_axes(typed_residual) for a in axes):
        return g
    return jax.lax.psum(g, axis_name)


def _shard_labels(
    labels: jax.Array, local_vocab: int, axis_name: AxisName | None
) -> tuple[jax.Array, int, jax.Array]:
    """Global class ids -> this shard's column of each label (outside ``[0, local_vocab)``
    where another shard, or none, owns it), the global vocabulary and whether each label
    lies in it. Shard ``i`` of ``axis_name`` (``jax.lax.axis_index``) owns the classes
    ``[i V/n, (i + 1) V/n)``."""
    if axis_name is None:
        vocab = local_vocab
        local = labels
    else:
        vocab = local_vocab * axis_size(axis_name)
        offset = axis_index(axis_name).astype(labels.dtype) * local_vocab
        local = labels - offset
    in_range = (labels >= 0) & (labels < vocab)
    return jnp.where(in_range, local, -1), vocab, in_range


def _owner_pick(values: jax.Array, local: jax.Array, axis_name: AxisName) -> jax.Array:
    """``values[..., label]`` from the shard that owns the label, summed over the axis
    (the other shards add 0): one gather and one ``psum`` per row, never a gather of the
    classes. ``values`` is ``[..., V/n]`` (one row per label) or ``[V/n]`` (a table)."""
    columns = values.shape[-1]
    owned = (local >= 0) & (local < columns)
    index = jnp.where(owned, local, 0)
    if values.ndim == 1:
        picked = values[index]
    else:
        picked = jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]
    return jax.lax.psum(jnp.where(owned, picked, 0), axis_name)


# The inputs; per row the normalizer (m, log s), alpha, the total target weight (with
# smoothing), half the label's -log p (with class weights) and the count of classes
# (with smoothing).
_ShardedCEResiduals = tuple[
    jax.Array, jax.Array, jax.Array | None, jax.Array | None, jax.Array, jax.Array, jax.Array,
    jax.Array | None, jax.Array | None, jax.Array | None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sharded_integer_ce(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
    valid: jax.Array | None, smoothing: float, axis_name: AxisName,
) -> jax.Array:
    return _sharded_integer_ce_fwd(logits, labels, class_weights, valid, smoothing,
                                   axis_name)[0]


def _sharded_integer_ce_fwd(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
    valid: jax.Array | None, smoothing: float, axis_name: AxisName,
) -> tuple[jax.Array, _ShardedCEResiduals]:
    r""":math:`\ell = \alpha\,(\mathrm{lse} - x_y) + \epsilon \sum_c w_c u_c
    (\mathrm{lse} - x_c)` with :math:`\alpha = (1 - \epsilon) w_y`, the classes split
    over ``axis_name``: :math:`m = \mathrm{pmax}(\max_c x_c)`, :math:`\mathrm{lse} = m +
    \log \mathrm{psum}(\sum_c e^{x_c - m})`, :math:`x_y` and :math:`w_y` from the shard
    owning :math:`y`; NaN for a label outside ``[0, V)``. Residuals: the inputs and, per
    row, the normalizer :math:`(m, \log s)`, :math:`\alpha`, :math:`\alpha + \epsilon \sum_c w_c
    u_c` and, as needed, :math:`(\mathrm{lse} - x_y)/2` and the number of classes."""
    dtype = _validate.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    local, _, in_range = _shard_labels(labels, x.shape[-1], axis_name)
    masked = x if valid is None else jnp.where(valid, x, -jnp.inf)
    m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(masked, axis=-1)), axis_name)
    m = _softmax.finite_shift(m)
    s = jax.lax.psum(jnp.sum(jnp.exp(masked - m[..., None]), axis=-1), axis_name)
    log_s = jnp.log(s)
    # Halves of -log p, doubled: m - x may overflow where the weighted sum does not
    # (classification._integer_ce_fwd).
    label_half = _softmax.neg_log_probabilities(_owner_pick(x, local, axis_name), m, log_s,
                                                scale=0.5)
    alpha = (jnp.ones(labels.shape, dtype) if class_weights is None
             else _owner_pick(class_weights, local, axis_name))
    if smoothing:
        alpha = (1 - smoothing) * alpha
    loss = _times(alpha, label_half)
    total = count = None
    if smoothing:
        support = masked > -jnp.inf
        count = jax.lax.psum(jnp.sum(support, axis=-1), axis_name)
        smooth = _shard_smoothing(support, count, class_weights, smoothing, dtype)
        half = _softmax.neg_log_probabilities(x, m[..., None], log_s[..., None], scale=0.5)
        loss = loss + jax.lax.psum(jnp.sum(_times(smooth, half), axis=-1), axis_name)
        total = alpha + jax.lax.psum(jnp.sum(smooth, axis=-1), axis_name)
    loss = jnp.where(in_range, 2 * loss, jnp.nan)
    residuals = (logits, labels, class_weights, valid, m, log_s, alpha, total,
                 None if class_weights is None else label_half, count)
    return loss, residuals


def _shard_smoothing(
    support: jax.Array, count: jax.Array, class_weights: jax.Array | None, smoothing: float,
    dtype: jnp.dtype,
) -> jax.Array:
    """:math:`\\epsilon w_c u_c` on this shard's classes, :math:`u` uniform over the
    ``count`` classes of the row (on every shard) that exist."""
    smooth = smoothing * (support / jnp.maximum(count, 1)[..., None].astype(dtype))
    return smooth if class_weights is None else smooth * class_weights


def _sharded_integer_ce_bwd(
    smoothing: float, axis_name: AxisName, residuals: _ShardedCEResiduals, g: jax.Array
) -> tuple[jax.Array, None, jax.Array | None, None]:
    r""":math:`\partial\ell/\partial x_c = p_c (\alpha + \epsilon \sum_k w_k u_k) -
    \alpha [c = y] - \epsilon w_c u_c` on this shard's classes (:math:`p` rebuilt from
    the global :math:`\mathrm{lse}`, no collective); :math:`\partial\ell/\partial w_c
    = (1 - \epsilon)[c = y](\mathrm{lse} - x_y) + \epsilon u_c(\mathrm{lse} - x_c)`."""
    logits, labels, class_weights, valid, m, log_s, alpha, total, label_half, count = residuals
    g = _total_cotangent(g, logits, axis_name)
    dtype = _validate.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    local, _, in_range = _shard_labels(labels, x.shape[-1], axis_name)
    masked = x if valid is None else jnp.where(valid, x, -jnp.inf)
    p = _softmax.probabilities(masked, m[..., None], log_s[..., None])
    d_logits = _times((g * (alpha if total is None else total))[..., None], p)
    if smoothing:
        assert count is not None  # kept by the forward pass with smoothing
        smooth = _shard_smoothing(masked > -jnp.inf, count, class_weights, smoothing, dtype)
        d_logits = d_logits - _times(g[..., None], smooth)
    hit = jax.lax.broadcasted_iota(local.dtype, x.shape, x.ndim - 1) == local[..., None]
    d_logits = d_logits - jnp.where(hit, _times(g, alpha)[..., None], 0)
    # A row with an out-of-range label has a NaN loss, and a NaN gradient where its
    # cotangent is not 0.
    flagged = ~in_range & (g != 0)
    d_logits = jnp.where(flagged[..., None], jnp.nan, d_logits)
    d_weights = None
    if class_weights is not None:
        assert label_half is not None  # kept by the forward pass with class weights
        per_class = jnp.where(hit, _times(g, (1 - smoothing) * label_half)[..., None], 0)
        if smoothing:
            assert count is not None
            uniform = _shard_smoothing(masked > -jnp.inf, count, None, smoothing, dtype)
            half = _softmax.neg_log_probabilities(x, m[..., None], log_s[..., None], scale=0.5)
            per_class = per_class + _times(g[..., None], _times(uniform, half))
        d_weights = 2 * jnp.sum(per_class.reshape(-1, x.shape[-1]), axis=0)
    return d_logits.astype(logits.dtype), None, d_weights, None


_sharded_integer_ce.defvjp(_sharded_integer_ce_fwd, _sharded_integer_ce_bwd)


def _vocab_parallel_integer_ce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    axis_name: AxisName,
    valid: jax.Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    r"""Softmax cross-entropy with integer labels of logits whose class (last) axis is
    sharded over ``axis_name`` (Megatron-style vocabulary parallelism), to be called
    inside ``jax.shard_map``: the loss of
    :func:`jaxloss.softmax_cross_entropy_with_integer_labels` on the (never gathered)
    ``[..., V]`` logits, with the per-row max by ``pmax``, the sum of exponentials,
    the label's logit (and weight) and the smoothing sums by ``psum``.

    Args:
      logits: this device's ``[..., V/n]`` slice of the classes: shard ``i`` of
        ``axis_name`` (``jax.lax.axis_index``) holds classes ``[i V/n, (i + 1) V/n)``.
      labels: global class ids in ``[0, V)``, ``logits.shape[:-1]``, the same on every
        shard of the axis.
      axis_name: the mesh axis (or tuple of axes, in ``PartitionSpec`` order) that
        shards the classes.
      valid: None or a boolean class mask of this device's classes, ``logits.shape``
        (a row mask broadcast over them is fine): ``where`` with the classes last.
      ignore_index: a label value whose rows are left out (``keep`` False).
      label_smoothing: :math:`\epsilon`, a Python float (static; no gradient).
      class_weights: this device's ``[V/n]`` slice of the class weights (sharded like
        the logits' class axis, ``P(axis_name)``), in the compute dtype; differentiable.

    Returns:
      ``(losses, keep, denominator)``, the arguments of
      ``weighted_reduce(losses, reduction, where=keep, denominator=denominator)``:
      the per-row losses (``logits.shape[:-1]``, equal on every shard of the axis, NaN
      for a label outside ``[0, V)``), the rows kept (None: all; False where ``valid``
      excludes every class of the row on every shard, or the label is
      ``ignore_index``), and :math:`w_{y_n}` for ``"mean"`` (None without weights).
      Gradients flow to ``logits`` (this shard's classes) and ``class_weights``.
    """
    axis_size(axis_name)  # a clear error outside shard_map
    logits, class_weights = _vary_together((logits, class_weights), labels, valid,
                                           axis_name=axis_name)
    keep = None
    if valid is not None:
        rows = jnp.any(valid, axis=-1).astype(jnp.int32)
        keep = jax.lax.psum(rows, axis_name) > 0
    if ignore_index is not None:
        ignored = labels == ignore_index
        keep = ~ignored if keep is None else keep & ~ignored
        # A safe label on ignored rows keeps their (masked) gradient free of NaN.
        labels = jnp.where(ignored, 0, labels)
    smoothing = float(label_smoothing)
    losses = _sharded_integer_ce(logits, labels, class_weights, valid, smoothing, axis_name)
    denominator = None
    if class_weights is not None:
        local, _, _ = _shard_labels(labels, logits.shape[-1], axis_name)
        denominator = _owner_pick(class_weights, local, axis_name)
    return losses, keep, denominator


# ---------------------------------------------------------------------------------
# The chunked linear cross-entropy.


def _chunk_starts(vocab: int, chunk: int, index: jnp.dtype) -> jax.Array:
    """The nominal start of each chunk: ``0, chunk, 2 chunk, ...`` (the last may pass
    ``vocab - chunk``; :func:`_chunk_columns` slides it back)."""
    return jnp.arange(0, vocab, chunk, dtype=index)


def _chunk_columns(
    start: jax.Array, vocab: int, chunk: int
) -> tuple[jax.Array, jax.Array | None]:
    """Where the chunk's ``chunk`` columns begin and which of them are new (None: all).

    The last chunk, when ``chunk`` does not divide ``vocab``, is slid back to end at
    ``vocab`` rather than padded (padding would copy the whole weight); its columns
    that an earlier chunk already covered are masked like padding: logit ``-inf`` in
    the forward pass, gradient 0 in the backward pass.
    """
    if vocab % chunk == 0:
        return start, None
    begin = jnp.minimum(start, vocab - chunk)
    columns = begin + jnp.arange(chunk, dtype=start.dtype)
    return begin, columns >= start


def _select(fresh: jax.Array | None, new: jax.Array, old: jax.Array | float) -> jax.Array:
    """``new`` on the chunk's new columns (the last axis), ``old`` on the repeated ones."""
    return new if fresh is None else jnp.where(fresh, new, old)


def _chunk_logits(
    hidden: jax.Array, weight: jax.Array, bias: jax.Array | None, begin: jax.Array,
    fresh: jax.Array | None, chunk: int, dtype: jnp.dtype, precision: _validate.Precision,
) -> tuple[jax.Array, jax.Array]:
    """:math:`x = H W_{:,k} + b_k` for the chunk's columns :math:`k`, accumulated in
    ``dtype`` (float32 for bf16 inputs); ``-inf`` on the columns that are not new."""
    w = jax.lax.dynamic_slice_in_dim(weight, begin, chunk, axis=1)
    x = jnp.matmul(hidden, w, precision=precision, preferred_element_type=dtype)
    if bias is not None:
        x = x + jax.lax.dynamic_slice_in_dim(bias, begin, chunk).astype(dtype)
    return _select(fresh, x, -jnp.inf), w


def _forward(
    hidden: jax.Array, weight: jax.Array, bias: jax.Array | None, labels: jax.Array,
    vocab: int, chunk: int, smoothing: float, axis_name: AxisName | None,
    precision: _validate.Precision,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One scan over the chunks: the online log-sum-exp, the label's logit and, with
    smoothing, the count and mean of the logits that exist (finite) in each row.

    With ``axis_name`` the scan covers this device's ``vocab`` columns and the per-row
    statistics are then combined over the axis: the max by ``pmax``, the rescaled sums
    of exponentials, the label's logit (found by its owner only) and the smoothing sums
    by ``psum``."""
    dtype = _validate.compute_dtype(hidden.dtype, weight.dtype,
                                    *(() if bias is None else (bias.dtype,)))
    rows = hidden.shape[0]
    local, total_vocab, in_range = _shard_labels(labels, vocab, axis_name)

    def step(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array],
             start: jax.Array,
             ) -> tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], None]:
        m, s, x_label, x_sum, count = carry
        begin, fresh = _chunk_columns(start, vocab, chunk)
        x, _ = _chunk_logits(hidden, weight, bias, begin, fresh, chunk, dtype, precision)
        m_new, s = _softmax.online_update(m, s, x, axis=1)
        # The label's logit, when this chunk holds it as a new column: a gather of one
        # entry per row (the very value the log-sum-exp saw, so the loss of a row
        # whose label has the largest logit is exactly log s however large x is).
        offset = local - begin
        hit = (local >= start) & (offset < chunk)
        picked = jnp.take_along_axis(x, jnp.clip(offset, 0, chunk - 1)[:, None], axis=1)
        x_label = x_label + jnp.where(hit, picked[:, 0], 0)
        if smoothing:
            exists = x > -jnp.inf
            # Scaled by 1/V so that the sum of V huge logits cannot overflow.
            x_sum = x_sum + jnp.sum(jnp.where(exists, x, 0), axis=1) / total_vocab
            count = count + jnp.sum(exists, axis=1, dtype=count.dtype)
        return (m_new, s, x_label, x_sum, count), None

    init = (jnp.full((rows,), -jnp.inf, dtype), jnp.zeros((rows,), dtype),
            jnp.zeros((rows,), dtype), jnp.zeros((rows,), dtype),
            jnp.zeros((rows,), labels.dtype))
    init = _vary_together(init, hidden, weight, bias, labels)
    starts = _chunk_starts(vocab, chunk, labels.dtype)
    (m, s, x_label, x_sum, count), _ = jax.lax.scan(step, init, starts)
    if axis_name is not None:
        m, s = _softmax.combine(m, s, axis_name)
        x_label = jax.lax.psum(x_label, axis_name)
        if smoothing:
            x_sum = jax.lax.psum(x_sum, axis_name)
            count = jax.lax.psum(count, axis_name)
    m, log_s = _softmax.finish(m, s)
    loss = _softmax.neg_log_probabilities(x_label, m, log_s)
    if smoothing:
        mean = x_sum * (total_vocab / jnp.maximum(count, 1).astype(dtype))
        uniform = jnp.where(count > 0, (m - mean) + log_s, 0)
        loss = _times(jnp.asarray(1 - smoothing, dtype), loss) + smoothing * uniform
    loss = jnp.where(in_range, loss, jnp.nan)
    return loss, m, log_s, count


# The inputs, the normalizer (m, log s) per row and, with smoothing, the count of
# classes per row whose logit is finite.
_LinearCEResiduals = tuple[jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array,
                           jax.Array, jax.Array | None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _linear_ce(
    hidden: jax.Array, weight: jax.Array, bias: jax.Array | None, labels: jax.Array,
    vocab: int, chunk: int, smoothing: float, axis_name: AxisName | None,
    precision: _validate.Precision,
) -> jax.Array:
    return _forward(hidden, weight, bias, labels, vocab, chunk, smoothing, axis_name,
                    precision)[0]


def _linear_ce_fwd(
    hidden: jax.Array, weight: jax.Array, bias: jax.Array | None, labels: jax.Array,
    vocab: int, chunk: int, smoothing: float, axis_name: AxisName | None,
    precision: _validate.Precision,
) -> tuple[jax.Array, _LinearCEResiduals]:
    r""":math:`\ell_n = \sum_c q_{nc}(\mathrm{lse}(x_n) - x_{nc})`, NaN for a label
    outside ``[0, V)``. Residuals: the inputs, the normalizer :math:`(m, \log s)` per
    row and, with
    smoothing, the number of classes per row whose logit is finite. With ``axis_name``
    (``vocab`` is then this device's share) these are global: over every shard."""
    loss, m, log_s, count = _forward(hidden, weight, bias, labels, vocab, chunk, smoothing,
                                     axis_name, precision)
    return loss, (hidden, weight, bias, labels, m, log_s, count if smoothing else None)


def _linear_ce_bwd(
    vocab: int, chunk: int, smoothing: float, axis_name: AxisName | None,
    precision: _validate.Precision, residuals: _LinearCEResiduals, g: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array | None, None]:
    r"""Per chunk :math:`k` of columns, with :math:`G = g\,(P - Q)` on those columns
    (:math:`P` the softmax rebuilt from the normalizer, :math:`Q` the target; the
    recomputed logits may differ from the forward pass's in their last bits, and
    :func:`jaxloss._softmax.probabilities` keeps each entry of :math:`P` in [0, 1]):
    :math:`\partial H \mathrel{+}= G W_{:,k}^\top`, :math:`\partial W_{:,k} = H^\top G`,
    :math:`\partial b_k = \sum_n G_{n\cdot}`. With ``axis_name`` the chunks are this
    device's columns and :math:`\partial H` is this device's share, which the transpose
    of :func:`_vary_together` (or shard_map's, under ``check_vma=False``) sums."""
    hidden, weight, bias, labels, m, log_s, count = residuals
    if axis_name is not None:
        g = _total_cotangent(g, weight, axis_name)
    dtype = log_s.dtype
    operand = jnp.promote_types(hidden.dtype, weight.dtype)
    local, _, in_range = _shard_labels(labels, vocab, axis_name)
    # A row with an out-of-range label has a NaN loss, and a NaN gradient where its
    # cotangent is not 0 (as classification's integer cross-entropy).
    g = jnp.where(~in_range & (g != 0), jnp.nan, g.astype(dtype))
    # A row whose cotangent is 0 (masked, ignored) reaches no gradient, even where
    # its hidden state is NaN or inf.
    hidden_kept = jnp.where((g != 0)[:, None], hidden, 0)
    total = None
    if smoothing:
        assert count is not None  # kept by the forward pass with smoothing
        uniform = smoothing / jnp.maximum(count, 1).astype(dtype)
        total = (1 - smoothing) + jnp.where(count > 0, smoothing, 0)

    def step(carry: tuple[jax.Array, jax.Array, jax.Array | None], start: jax.Array
             ) -> tuple[tuple[jax.Array, jax.Array, jax.Array | None], None]:
        d_hidden, d_weight, d_bias = carry
        begin, fresh = _chunk_columns(start, vocab, chunk)
        x, w = _chunk_logits(hidden, weight, bias, begin, fresh, chunk, dtype, precision)
        p = _softmax.probabilities(x, m[:, None], log_s[:, None], recomputed=True)
        columns = begin + jnp.arange(chunk, dtype=begin.dtype)
        onehot = _select(fresh, local[:, None] == columns, False).astype(dtype)
        if smoothing:
            assert total is not None
            target = (1 - smoothing) * onehot + jnp.where(x > -jnp.inf, uniform[:, None], 0)
            grad = p * total[:, None] - target
        else:
            grad = p - onehot
        grad = _times(g[:, None], grad)
        d_b = jnp.sum(grad, axis=0) if d_bias is not None else None
        grad = grad.astype(operand)
        d_hidden = d_hidden + jnp.matmul(grad, w.T, precision=precision,
                                         preferred_element_type=dtype)
        d_w = jnp.matmul(hidden_kept.T, grad, precision=precision,
                         preferred_element_type=dtype)
        old = jax.lax.dynamic_slice_in_dim(d_weight, begin, chunk, axis=1)
        d_weight = jax.lax.dynamic_update_slice_in_dim(
            d_weight, _select(fresh, d_w.astype(d_weight.dtype), old), begin, axis=1)
        if d_bias is not None:
            assert d_b is not None
            old = jax.lax.dynamic_slice_in_dim(d_bias, begin, chunk)
            d_bias = jax.lax.dynamic_update_slice_in_dim(
                d_bias, _select(fresh, d_b.astype(d_bias.dtype), old), begin, axis=0)
        return (d_hidden, d_weight, d_bias), None

    init = (jnp.zeros(hidden.shape, dtype), jnp.zeros(weight.shape, weight.dtype),
            None if bias is None else jnp.zeros(bias.shape, bias.dtype))
    init = _vary_together(init, hidden, weight, bias, labels, g, log_s)
    starts = _chunk_starts(vocab, chunk, labels.dtype)
    (d_hidden, d_weight, d_bias), _outputs = jax.lax.scan(step, init, starts)
    return d_hidden.astype(hidden.dtype), d_weight, d_bias, None


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


def _check_linear_ce(hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
                     bias: ArrayLike | None = None, chunk_size: int | None = None,
                     ignore_index: int | None = None, label_smoothing: float = 0.0,
                     where: ArrayLike | None = None, reduction: Reduction = "none",
                     axis_name: AxisName | None = None,
                     precision: _validate.Precision = None) -> None:
    vocab = jnp.shape(weight)[-1]
    if axis_name is not None:
        vocab *= axis_size(axis_name)
    check_labels("labels", labels, vocab, ignore_index)


@register_checks(_check_linear_ce)
@_validate.jit(static_argnames=("chunk_size", "ignore_index", "label_smoothing", "reduction",
                               "axis_name", "precision"),
               checks={"precision": _validate.check_precision})
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
    axis_name: AxisName | None = None,
    precision: _validate.Precision = None,
) -> jax.Array:
    r"""Softmax cross-entropy of ``hidden @ weight + bias`` with integer labels, without
    ever holding the ``[N, V]`` logits.

    With :math:`x_n = h_n W + b` (:math:`V` classes) and target
    :math:`q_n = (1 - \epsilon)\,\mathrm{onehot}(y_n) + \epsilon\,u_n`:

    .. math::
      \ell_n = \sum_c q_{nc}\,(\mathrm{lse}(x_n) - x_{nc})
             = (1 - \epsilon)(\mathrm{lse}(x_n) - x_{n y_n})
               + \epsilon\,(\mathrm{lse}(x_n) - \bar x_n)

    where :math:`u_n` is uniform over the classes whose logit is finite (all :math:`V`
    unless ``bias`` masks some with ``-inf``) and :math:`\bar x_n` their mean logit. The
    derivatives, with :math:`P = \mathrm{softmax}(X)` row by row, :math:`Y = Q` and the
    upstream cotangent :math:`g_n` folded into :math:`P - Y`:

    .. math::
      \frac{\partial}{\partial H} = (P - Y)\,W^\top, \qquad
      \frac{\partial}{\partial W} = H^\top (P - Y), \qquad
      \frac{\partial}{\partial b} = \textstyle\sum_n (P - Y)_{n\cdot}

    The function is a ``jax.custom_vjp``. Its forward pass scans the vocabulary
    ``chunk_size`` columns at a time: forms that chunk's logits
    :math:`X_{:,k} = H W_{:,k} + b_k`, folds them into an online log-sum-exp
    (:math:`m \leftarrow \max(m, \max_k x)`,
    :math:`s \leftarrow s\,e^{m_{old} - m} + \sum_k e^{x - m}`) and picks the label's
    logit, then drops them. The residuals are the inputs and one log-sum-exp per row
    (with label smoothing, also the count of finite logits per row).
    The backward pass scans the chunks again, recomputes :math:`X_{:,k}` and
    :math:`P_{:,k} = e^{X_{:,k} - \mathrm{lse}}`, and accumulates the three sums above
    chunk by chunk (:math:`\partial H` over the chunks, :math:`\partial W_{:,k}` and
    :math:`\partial b_k` written per chunk). Memory is :math:`O(N \cdot
    \text{chunk})` instead of :math:`O(N V)`; the cost is one more matmul (the
    recomputed logits) than the materialized version's three.

    At :math:`N = 4096`, :math:`D = 512`, :math:`V = 32768` float32 with the default
    ``chunk_size`` (:data:`DEFAULT_CHUNK_SIZE` = 2048), ``jax.value_and_grad`` needs
    1/20 of the temporary memory of the materialized
    ``optax.softmax_cross_entropy_with_integer_labels(hidden @ weight, labels)``
    (``memory_analysis().temp_size_in_bytes``: 52 MiB against 1024 MiB) and, on a
    2-core CPU, 1.21 times its time (1.12 in an earlier run; the extra matmul, partly
    paid back by never writing ``[N, V]`` arrays). Memory is dominated by the chunk's
    two ``[N, chunk]`` float32 blocks (logits and their gradient): 1024 needs 34 MiB,
    4096 needs 88 MiB, in about the same time.

    Values and gradients are those of
    :func:`jaxloss.softmax_cross_entropy_with_integer_labels` applied to the
    materialized logits (so of optax's where it is finite), including its
    ``ignore_index``, ``label_smoothing`` and ``"mean"`` conventions; a class masked
    by a ``-inf`` bias takes no probability, no smoothing mass and gets gradient 0.
    bf16/fp16 inputs are multiplied with float32 accumulation
    (``preferred_element_type``) and the loss is computed in float32; the gradients
    come back in the input dtypes. A label outside ``[0, V)`` (other than
    ``ignore_index``) gives NaN: wrap in :func:`jaxloss.checked` to raise instead.
    ``jax.jvp`` does not go through a ``custom_vjp``; reverse mode (``jax.grad``,
    ``jax.jacrev`` of it) does.

    **Vocabulary parallelism** (Megatron-style; ``axis_name``). Inside
    ``jax.shard_map``, with the vocabulary split over the mesh axis ``axis_name`` of
    size :math:`n`, device :math:`i` (``jax.lax.axis_index``) holds the columns
    :math:`K_i = [iV/n, (i + 1)V/n)`: ``weight`` is its ``[D, V/n]`` slice and ``bias``
    its ``[V/n]`` slice, while ``hidden`` (replicated over the axis) and ``labels``
    (global class ids in ``[0, V)``) are the same on every device of the axis. Each
    device runs the chunked scan over its own columns, giving per row its max
    :math:`m_i`, its sum :math:`s_i = \sum_{k \in K_i} e^{x_k - m_i}` and, on the
    device that owns the label, :math:`x_y`; then

    .. math::
      m = \mathrm{pmax}_i\, m_i, \qquad
      \mathrm{lse} = m + \log \mathrm{psum}_i\, s_i e^{m_i - m}, \qquad
      x_y = \mathrm{psum}_i\, [y \in K_i]\, x_y

    (and, with smoothing, the psum of the count and sum of the finite logits), a few
    numbers per row: the ``[N, V]`` logits are never gathered, and memory per device
    is that of the single-device loss with :math:`V/n` classes. The backward pass
    exchanges no logits either: device :math:`i` forms :math:`P - Q` on its own columns from
    the global :math:`\mathrm{lse}`, giving its slices of :math:`\partial W` and
    :math:`\partial b` and its share :math:`(P - Q)_{:,K_i} W_{:,K_i}^\top` of
    :math:`\partial H`, which are summed over the axis (the transpose of ``hidden``'s
    replication, a ``psum``). The per-row losses, equal on every device of the axis,
    and the gradients equal the single-device loss's on the gathered weight. Both
    ``check_vma`` settings of ``shard_map`` are supported; ``axis_name`` may be a tuple
    of mesh axes (the columns split in ``PartitionSpec`` order). Rows may be split
    over another mesh axis at the same time (data parallelism)::

      mesh = jaxloss.distributed.data_mesh("model")  # all devices, one "model" axis

      @jax.shard_map(mesh=mesh, out_specs=P(),
                     in_specs=(P(), P(None, "model"), P("model"), P()))
      def loss(hidden, weight, bias, labels):   # weight [D, V/n], bias [V/n]
          return jaxloss.linear_softmax_cross_entropy(
              hidden, weight, labels, bias=bias, axis_name="model", reduction="mean")

      # Auto axes: shard_map splits the global arrays as in_specs says. (On a mesh
      # with Explicit axes, place them with jax.device_put first.)
      grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(hidden, weight, bias, labels)

    Args:
      hidden: :math:`H`, ``[N, D]`` (or ``[..., D]``: the leading axes are rows).
      weight: :math:`W`, ``[D, V]``, the layout of ``hidden @ weight``.
      labels: integer class ids, ``hidden.shape[:-1]``.
      bias: :math:`b`, ``[V]``, or None.
      chunk_size: vocabulary columns per chunk (None: :data:`DEFAULT_CHUNK_SIZE`); need
        not divide :math:`V` (the last chunk is slid back to end at :math:`V` and its
        repeated columns masked).
      ignore_index: a label value whose rows get loss 0 and gradient 0 and are left
        out of ``"mean"``.
      label_smoothing: :math:`\epsilon` in [0, 1] (PyTorch's
        :math:`(1 - \epsilon)\,\mathrm{onehot} + \epsilon / V`).
      where: boolean mask of the rows to include, ``labels.shape``.
      reduction: ``"none"`` (default, one value per row), ``"mean"`` or ``"sum"``.
      axis_name: None (default), or the mesh axis (or tuple of axes) of the enclosing
        ``jax.shard_map`` over which ``weight``'s columns and ``bias`` are split;
        ``labels`` stay global ids and :math:`V` above is then ``n * weight.shape[1]``.
      precision: the precision of the three matmuls (the logits, forward and backward,
        and the two gradient products), as ``jnp.matmul`` takes it: None (default:
        ``jax_default_matmul_precision``), ``"default"``, ``"high"``, ``"highest"``, a
        ``jax.lax.Precision`` or a pair. On a CPU float32 products are exact at any
        setting; the default is TF32 on NVIDIA GPUs and one bf16 pass on TPUs, whose
        rounding (about 1e-3 relative) reaches the loss and gradients. Pass
        ``"highest"`` to compare with a float64 reference or another implementation.

    Returns:
      One loss per row (``labels.shape``) for ``"none"``, in
      ``promote_types(hidden.dtype, weight.dtype, float32)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])  # logits = weight's rows
      >>> loss = jaxloss.linear_softmax_cross_entropy(hidden, weight, jnp.array([0, 1]),
      ...                                             chunk_size=2)
      >>> [round(v, 4) for v in loss.tolist()]
      [0.417, 0.1967]

    References:
      Shoeybi et al., `Megatron-LM: Training Multi-Billion Parameter Language Models
      Using Model Parallelism <https://arxiv.org/abs/1909.08053>`_, 2019 (the
      vocabulary-parallel cross-entropy);
      Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
      <https://arxiv.org/abs/2411.09009>`_, 2024 (Apple's Cut Cross-Entropy);
      Hsu et al., `Liger Kernel: Efficient Triton Kernels for LLM Training
      <https://arxiv.org/abs/2410.10989>`_, 2024 (fused linear cross-entropy).
    """
    hidden = _validate.floating("hidden", hidden)
    weight = _validate.floating("weight", weight)
    labels = _validate.integer("labels", labels)
    if bias is not None:
        bias = _validate.floating("bias", bias)
    smoothing = _validate.concrete_scalar(label_smoothing)
    _validate.in_unit_interval("label_smoothing", label_smoothing)
    reduction = _validate.reduction(reduction)
    where = _validate.mask("where", where)
    if hidden.ndim < 1:
        raise ValueError(f"hidden must be [N, D], got {_validate.describe(hidden)}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be [D, V], got {_validate.describe(weight)}")
    features, vocab = weight.shape
    if hidden.shape[-1] != features:
        raise ValueError(
            f"hidden's last axis must match weight's first (D = {features}), got hidden "
            f"{_validate.describe(hidden)}, weight {_validate.describe(weight)}"
        )
    _validate.same_shape("labels", labels, hidden.shape[:-1], "hidden without its last axis")
    if bias is not None:
        _validate.same_shape("bias", bias, (vocab,), "one entry per class, weight.shape[1]")
    if where is not None:
        _validate.same_shape("where", where, labels.shape, "one entry per row, labels.shape")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if vocab == 0:
        raise ValueError(f"weight must have at least one class, got {_validate.describe(weight)}")
    chunk = min(DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size, vocab)

    shape = labels.shape
    hidden = hidden.reshape(-1, features)
    labels = labels.reshape(-1)
    keep = None if where is None else where.reshape(-1)
    if ignore_index is not None:
        ignored = labels == ignore_index
        keep = ~ignored if keep is None else keep & ~ignored
        # A safe label on ignored rows keeps their (masked) gradient free of NaN.
        labels = jnp.where(ignored, 0, labels)
    # Class ids as wide as the compute dtype (-1 for any label outside [0, V)): XLA's
    # CPU backend fails to compile (an LLVM instruction-selection error) some fusions
    # that mix float64 vectors with int32 compares, in the second derivative.
    dtype = _validate.compute_dtype(hidden.dtype, weight.dtype,
                                    *(() if bias is None else (bias.dtype,)))
    index = jnp.int64 if jnp.dtype(dtype).itemsize > 4 else jnp.int32
    total_vocab = vocab if axis_name is None else vocab * axis_size(axis_name)
    labels = jnp.where((labels >= 0) & (labels < total_vocab), labels, -1).astype(index)
    hidden, weight, bias = _vary_together((hidden, weight, bias), labels, axis_name=axis_name)
    precision = _validate.precision("precision", precision)
    losses = _linear_ce(hidden, weight, bias, labels, vocab, chunk, smoothing, axis_name,
                        precision)
    return weighted_reduce(losses.reshape(shape), reduction,
                           where=None if keep is None else keep.reshape(shape),
                           denominator=None)


def shift_labels(
    tokens: ArrayLike,
    *,
    ignore_index: int = -100,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The labels of causal language modelling: position :math:`t` predicts token
    :math:`t + 1`.

    .. math::
      y_t = \begin{cases} x_{t+1} & t < T - 1 \text{ and } m_t \text{ and } m_{t+1} \\
      \text{ignore\_index} & \text{otherwise} \end{cases}

    along the last axis, with :math:`m` the ``where`` mask of real (not padding)
    tokens. The result goes with the logits of every position to
    :func:`linear_softmax_cross_entropy` or
    :func:`jaxloss.softmax_cross_entropy_with_integer_labels` with the same
    ``ignore_index``: the last position, padding, and positions whose next token is
    padding count in neither the loss nor its mean. Cut Cross-Entropy's ``shift``
    and Hugging Face's causal-LM loss shift the same way.

    Args:
      tokens: integer token ids, ``[..., T]``.
      ignore_index: the label of positions without a target.
      where: boolean mask of the real tokens, the shape of ``tokens`` (None: all).

    Returns:
      The labels, the shape and dtype of ``tokens``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxloss import shift_labels
      >>> shift_labels(jnp.array([5, 6, 7, 0]), where=jnp.array([1, 1, 1, 0]) > 0).tolist()
      [6, 7, -100, -100]

    References:
      Radford et al., `Improving Language Understanding by Generative Pre-Training
      <https://openai.com/research/language-unsupervised>`_, 2018 (the objective).
    """
    tokens = _validate.integer("tokens", tokens)
    if tokens.ndim < 1:
        raise ValueError(f"tokens must have a sequence axis, got {_validate.describe(tokens)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    fill = jnp.full(tokens.shape[:-1] + (1,), ignore_index, tokens.dtype)
    labels = jnp.concatenate([tokens[..., 1:], fill], axis=-1)
    mask = _validate.mask("where", where)
    if mask is not None:
        _validate.same_shape("where", mask, tuple(tokens.shape), "the shape of tokens")
        has_target = mask & jnp.concatenate([mask[..., 1:], jnp.zeros_like(mask[..., :1])],
                                            axis=-1)
        labels = jnp.where(has_target, labels, jnp.asarray(ignore_index, tokens.dtype))
    return labels
