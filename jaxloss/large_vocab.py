"""Large-vocabulary cross-entropy: the softmax cross-entropy of a linear layer's output,
computed chunk by chunk over the vocabulary so that the ``[N, V]`` logits are never held.

A language model's last layer maps hidden states ``[N, D]`` to logits ``[N, V]``; at
``N = 4096`` tokens and ``V = 32768`` words those logits take 512 MiB in float32, and
the materialized cross-entropy's value and gradient hold twice that. Here the logits of
``chunk_size`` words at a time are formed, reduced into an online log-sum-exp and
dropped; the backward pass forms them again, chunk by chunk, to build the gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._checked import check_labels, register_checks
from jaxloss._math import times as _times
from jaxloss._reduce import Reduction, weighted_reduce

__all__ = ["DEFAULT_CHUNK_SIZE", "linear_softmax_cross_entropy"]

# Vocabulary entries per chunk, chosen by measurement at N = 4096, D = 512, V = 32768
# float32 on a 2-core CPU: the value and gradient need 1/20 of the materialized
# version's temporary memory (4096 would need 1/12, over the 1/16 goal) and run a few
# percent faster than with 1024 or 512 (1/30, 1/41). See the docstring's figures.
DEFAULT_CHUNK_SIZE = 2048


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


def _chunk_logits(hidden, weight, bias, begin, fresh, chunk, dtype):
    """:math:`x = H W_{:,k} + b_k` for the chunk's columns :math:`k`, accumulated in
    ``dtype`` (float32 for bf16 inputs); ``-inf`` on the columns that are not new."""
    w = jax.lax.dynamic_slice_in_dim(weight, begin, chunk, axis=1)
    x = jnp.matmul(hidden, w, preferred_element_type=dtype)
    if bias is not None:
        x = x + jax.lax.dynamic_slice_in_dim(bias, begin, chunk).astype(dtype)
    return _select(fresh, x, -jnp.inf), w


def _forward(hidden, weight, bias, labels, vocab, chunk, smoothing):
    """One scan over the chunks: the online log-sum-exp, the label's logit and, with
    smoothing, the count and mean of the logits that exist (finite) in each row."""
    dtype = _validate.compute_dtype(hidden.dtype, weight.dtype,
                                    *(() if bias is None else (bias.dtype,)))
    rows = hidden.shape[0]

    def step(carry, start):
        m, s, x_label, x_sum, count = carry
        begin, fresh = _chunk_columns(start, vocab, chunk)
        x, _ = _chunk_logits(hidden, weight, bias, begin, fresh, chunk, dtype)
        # Online log-sum-exp: m is the running max (0 while the row has only -inf).
        m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(x, axis=1)))
        shift = jnp.where(jnp.isneginf(m_new), 0, m_new)
        s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
        # The label's logit, when this chunk holds it as a new column: a gather of one
        # entry per row (the very value the log-sum-exp saw, so the loss of a row
        # whose label has the largest logit is exactly log s however large x is).
        local = labels - begin
        hit = (labels >= start) & (local < chunk)
        picked = jnp.take_along_axis(x, jnp.clip(local, 0, chunk - 1)[:, None], axis=1)
        x_label = x_label + jnp.where(hit, picked[:, 0], 0)
        if smoothing:
            exists = x > -jnp.inf
            # Scaled by 1/V so that the sum of V huge logits cannot overflow.
            x_sum = x_sum + jnp.sum(jnp.where(exists, x, 0), axis=1) / vocab
            count = count + jnp.sum(exists, axis=1, dtype=count.dtype)
        return (m_new, s, x_label, x_sum, count), None

    init = (jnp.full((rows,), -jnp.inf, dtype), jnp.zeros((rows,), dtype),
            jnp.zeros((rows,), dtype), jnp.zeros((rows,), dtype),
            jnp.zeros((rows,), labels.dtype))
    starts = _chunk_starts(vocab, chunk, labels.dtype)
    (m, s, x_label, x_sum, count), _ = jax.lax.scan(step, init, starts)
    m = jnp.where(jnp.isneginf(m), 0, m)
    log_s = jnp.log(s)
    # (m - x) + log s keeps the label's term exact when |x| is huge (as in
    # classification._neg_log_softmax).
    loss = (m - x_label) + log_s
    if smoothing:
        mean = x_sum * (vocab / jnp.maximum(count, 1).astype(dtype))
        uniform = jnp.where(count > 0, (m - mean) + log_s, 0)
        loss = _times(jnp.asarray(1 - smoothing, dtype), loss) + smoothing * uniform
    in_range = (labels >= 0) & (labels < vocab)
    loss = jnp.where(in_range, loss, jnp.nan)
    return loss, m + log_s, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _linear_ce(hidden, weight, bias, labels, vocab, chunk, smoothing):
    return _forward(hidden, weight, bias, labels, vocab, chunk, smoothing)[0]


def _linear_ce_fwd(hidden, weight, bias, labels, vocab, chunk, smoothing):
    r""":math:`\ell_n = \sum_c q_{nc}(\mathrm{lse}(x_n) - x_{nc})`, NaN for a label
    outside ``[0, V)``. Residuals: the inputs, :math:`\mathrm{lse}` per row and, with
    smoothing, the number of classes per row whose logit is finite."""
    loss, lse, count = _forward(hidden, weight, bias, labels, vocab, chunk, smoothing)
    return loss, (hidden, weight, bias, labels, lse, count if smoothing else None)


def _linear_ce_bwd(vocab, chunk, smoothing, residuals, g):
    r"""Per chunk :math:`k` of columns, with :math:`G = g\,(P - Q)` on those columns
    (:math:`P` the softmax rebuilt from :math:`\mathrm{lse}`, :math:`Q` the target):
    :math:`\partial H \mathrel{+}= G W_{:,k}^\top`, :math:`\partial W_{:,k} = H^\top G`,
    :math:`\partial b_k = \sum_n G_{n\cdot}`."""
    hidden, weight, bias, labels, lse, count = residuals
    dtype = lse.dtype
    operand = jnp.promote_types(hidden.dtype, weight.dtype)
    in_range = (labels >= 0) & (labels < vocab)
    # A row with an out-of-range label has a NaN loss, and a NaN gradient where its
    # cotangent is not 0 (as classification's integer cross-entropy).
    g = jnp.where(~in_range & (g != 0), jnp.nan, g.astype(dtype))
    lse = jnp.where(jnp.isneginf(lse), 0, lse)
    # A row whose cotangent is 0 (masked, ignored) reaches no gradient, even where
    # its hidden state is NaN or inf.
    hidden_kept = jnp.where((g != 0)[:, None], hidden, 0)
    total = None
    if smoothing:
        uniform = smoothing / jnp.maximum(count, 1).astype(dtype)
        total = (1 - smoothing) + jnp.where(count > 0, smoothing, 0)

    def step(carry, start):
        d_hidden, d_weight, d_bias = carry
        begin, fresh = _chunk_columns(start, vocab, chunk)
        x, w = _chunk_logits(hidden, weight, bias, begin, fresh, chunk, dtype)
        p = jnp.exp(x - lse[:, None])
        columns = begin + jnp.arange(chunk, dtype=begin.dtype)
        onehot = _select(fresh, labels[:, None] == columns, False).astype(dtype)
        if smoothing:
            target = (1 - smoothing) * onehot + jnp.where(x > -jnp.inf, uniform[:, None], 0)
            grad = p * total[:, None] - target
        else:
            grad = p - onehot
        grad = _times(g[:, None], grad)
        d_b = jnp.sum(grad, axis=0) if d_bias is not None else None
        grad = grad.astype(operand)
        d_hidden = d_hidden + jnp.matmul(grad, w.T, preferred_element_type=dtype)
        d_w = jnp.matmul(hidden_kept.T, grad, preferred_element_type=dtype)
        old = jax.lax.dynamic_slice_in_dim(d_weight, begin, chunk, axis=1)
        d_weight = jax.lax.dynamic_update_slice_in_dim(
            d_weight, _select(fresh, d_w.astype(d_weight.dtype), old), begin, axis=1)
        if d_bias is not None:
            old = jax.lax.dynamic_slice_in_dim(d_bias, begin, chunk)
            d_bias = jax.lax.dynamic_update_slice_in_dim(
                d_bias, _select(fresh, d_b.astype(d_bias.dtype), old), begin, axis=0)
        return (d_hidden, d_weight, d_bias), None

    init = (jnp.zeros(hidden.shape, dtype), jnp.zeros(weight.shape, weight.dtype),
            None if bias is None else jnp.zeros(bias.shape, bias.dtype))
    starts = _chunk_starts(vocab, chunk, labels.dtype)
    (d_hidden, d_weight, d_bias), _ = jax.lax.scan(step, init, starts)
    return d_hidden.astype(hidden.dtype), d_weight, d_bias, None


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


def _check_linear_ce(hidden, weight, labels, *, bias=None, chunk_size=None,
                     ignore_index=None, label_smoothing=0.0, where=None, reduction="none"):
    check_labels("labels", labels, jnp.shape(weight)[-1], ignore_index)


@register_checks(_check_linear_ce)
@_validate.jit(static_argnames=("chunk_size", "ignore_index", "label_smoothing", "reduction"))
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
    2-core CPU, about 1.15 times its time (the extra matmul, partly paid back by never
    writing ``[N, V]`` arrays). Memory is dominated by the chunk's two ``[N, chunk]``
    float32 blocks (logits and their gradient): 1024 needs 34 MiB, 4096 needs 88 MiB,
    in about the same time.

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

    Returns:
      One loss per row (``labels.shape``) for ``"none"``, in
      ``promote_types(hidden.dtype, weight.dtype, float32)``.

    References:
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
    labels = jnp.where((labels >= 0) & (labels < vocab), labels, -1).astype(index)
    losses = _linear_ce(hidden, weight, bias, labels, vocab, chunk, smoothing)
    return weighted_reduce(losses.reshape(shape), reduction,
                           where=None if keep is None else keep.reshape(shape),
                           denominator=None)
