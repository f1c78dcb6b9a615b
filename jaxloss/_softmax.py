r"""The softmax's normalizer, shared by every loss built on a log-sum-exp.

A row's normalizer is kept as two numbers, never as their sum: the shift :math:`m`
(the row's max, without gradient) and :math:`\log s` with :math:`s = \sum_c e^{x_c -
m} \ge 1`. At :math:`|m| \approx 10^{30}` the float32 sum :math:`m + \log s` is just
:math:`m`, and probabilities rebuilt as :math:`e^{x - (m + \log s)}` would sum to the
number of tied maxima. Rebuilt as

.. math::
  p_c = \exp\bigl(\min(x_c - m, 0) - \max(\log s, 0)\bigr)

each is at most 1 and a row's sum is 1 at any scale. The clamps matter where a
backward pass recomputes :math:`x` (a chunk of ``hidden @ weight``, a block of scores)
and the recomputation differs from the forward pass's in its last bits, as it may on
another CPU or at another matmul precision: at :math:`10^{31}` one ulp is
:math:`10^{24}`, and an unclamped :math:`x - m` of that size overflows ``exp``. The
clamps change values only, never slopes (``jax.hessian`` goes through the backward
passes, and ``jnp.minimum`` would halve the derivative at the tie :math:`x = m`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._math import times


def _zero_where(x: jax.Array, clamp: jax.Array) -> jax.Array:
    """``x`` with 0 where ``clamp``, keeping the derivative of ``x`` there: the clamps
    correct values that rounding moved past a bound, not the mathematics, so the slope
    (which ``jax.hessian`` and the output's own linearization use) stays the exact one."""
    return jnp.where(clamp, x - jax.lax.stop_gradient(x), x)


def finite_shift(m: jax.Array) -> jax.Array:
    """A row max usable as a shift: 0 where the row has only ``-inf`` (or is empty)."""
    return jnp.where(jnp.isneginf(m), 0, m)


def normalizer(
    x: jax.Array, dtype: jnp.dtype, *, axis: int = -1, block: int | None = None,
    beta: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""``(m, log s)`` of ``x`` along ``axis`` (kept as a size-1 axis), in ``dtype``.

    ``m`` is the max (finite for a row of ``-inf``: the lowest float, or 0 with
    ``block``; no gradient), ``log s`` is
    :math:`\log \sum e^{x - m}` (:math:`\ge 0`, ``-inf`` for a row of ``-inf``). The max
    is taken in ``x``'s own dtype (exact) so that the only conversion is inside the sum,
    where XLA fuses it instead of copying ``x``. With ``block`` (a divisor of the last
    axis, ``axis=-1`` only) the row is reduced in blocks of that many entries and the
    blocks' sums rescaled to the row's max: the same sum, which XLA's CPU backend runs
    much faster for very long rows.

    With ``beta`` (an inverse temperature) the normalizer is that of :math:`\beta x`:
    :math:`\log s = \log \sum e^{\beta (x - m)}` with ``m`` still the max of ``x``
    itself, so that :math:`\mathrm{lse}(\beta x) = \beta m + \log s`. The difference is
    taken before the product: :math:`\beta x - \beta m` would round the two products
    apart (or fuse one into a multiply-add), and at the max, at 1e30, be 1e22 instead
    of 0."""
    if block is None:
        m, _, log_s = exponentials(x, dtype, axis=axis, beta=beta)
        return m, log_s
    xb = x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))
    block_max = jax.lax.stop_gradient(jnp.max(xb, axis=-1).astype(dtype))
    block_sum = jnp.sum(jnp.exp(_scaled(xb.astype(dtype) - finite_shift(block_max)[..., None],
                                        beta)), axis=-1)
    m = finite_shift(jnp.max(block_max, axis=-1, keepdims=True))
    # An empty block has block_sum 0 and scale exp(-inf) = 0: no 0 * inf.
    scale = jnp.exp(_scaled(block_max - m, beta))
    return m, jnp.log(jnp.sum(block_sum * scale, axis=-1, keepdims=True))


def exponentials(
    x: jax.Array, dtype: jnp.dtype, *, axis: int = -1, beta: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``(m, e, log s)``: :func:`normalizer`'s ``m`` and ``log s`` (one level) and the
    exponentials :math:`e = e^{\beta (x - m)}` they are summed from. Where only the
    normalizer is used, XLA fuses ``e`` into the sum and never writes it; a backward
    pass that keeps ``e`` forms the softmax as :math:`e / s` without a second
    exponential."""
    m = jax.lax.stop_gradient(_shift_max(x, axis).astype(dtype))
    e = jnp.exp(_scaled(x.astype(dtype) - m, beta))
    return m, e, jnp.log(jnp.sum(e, axis=axis, keepdims=True))


def blocked_exponentials(
    x: jax.Array, dtype: jnp.dtype, block: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`exponentials` along the last axis, its two reductions taken in blocks of
    ``block`` entries (a divisor of the row), which XLA's CPU backend runs much faster
    for very long rows (see :func:`normalizer`)."""
    xb = x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))
    top = jnp.max(xb, axis=-1, initial=jnp.finfo(x.dtype).min)
    m = jax.lax.stop_gradient(jnp.max(top, axis=-1, keepdims=True).astype(dtype))
    e = jnp.exp(x.astype(dtype) - m)
    s = jnp.sum(jnp.sum(e.reshape(xb.shape), axis=-1), axis=-1, keepdims=True)
    return m, e, jnp.log(s)


def from_exponentials(e: jax.Array, log_s: jax.Array) -> jax.Array:
    """The softmax :math:`e / s` from :func:`exponentials`' ``e`` and ``log s``: 0 on a
    row of ``-inf`` (``e = 0`` and ``s = 0`` there)."""
    empty = jnp.isneginf(log_s)
    return e * jnp.where(empty, 0, jnp.exp(-jnp.where(empty, 0, log_s)))


def _shift_max(x: jax.Array, axis: int) -> jax.Array:
    """The max along ``axis`` (kept), but at least the lowest finite float: a row of
    ``-inf`` gets a finite shift from the reduction itself. (A select after it, as
    :func:`finite_shift`, splits XLA's CPU fusion of the max with the sums that use it:
    a pass over the row more.)"""
    return jnp.max(x, axis=axis, keepdims=True, initial=jnp.finfo(x.dtype).min)


def _scaled(d: jax.Array, beta: jax.Array | float | None) -> jax.Array:
    """``beta * d`` (``d`` itself without ``beta``); an infinite ``d`` (a class at
    ``-inf``) stays out of the product, whose derivative by ``beta`` would be inf there
    (times a zero cotangent: NaN in a second derivative)."""
    if beta is None:
        return d
    infinite = jnp.isinf(d)
    return jnp.where(infinite, d, beta * jnp.where(infinite, 0, d))


def online_update(
    m: jax.Array, s: jax.Array, x: jax.Array, *, axis: int, beta: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Folds a block ``x`` into a running ``(m, s)`` along ``axis`` (reduced away):
    :math:`m' = \max(m, \max x)`, :math:`s' = s\,e^{\beta(m - m')} + \sum
    e^{\beta(x - m')}` (:math:`\beta = 1` without ``beta``; see :func:`normalizer`).
    Start from ``m = -inf``, ``s = 0``; finish with :func:`finish`."""
    m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(x, axis=axis)))
    shift = finite_shift(m_new)
    s = (s * jnp.exp(_scaled(m - shift, beta))
         + jnp.sum(jnp.exp(_scaled(x - jnp.expand_dims(shift, axis), beta)), axis=axis))
    return m_new, s


def finish(m: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A running ``(m, s)`` as ``(m, log s)`` with a finite shift."""
    return finite_shift(m), jnp.log(s)


def combine(
    m: jax.Array, s: jax.Array, axis_name: str | tuple[str, ...], *,
    beta: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Per-device ``(m_i, s_i)`` of the same rows as the global ``(m, s)``:
    :math:`m = \mathrm{pmax}_i m_i`, :math:`s = \mathrm{psum}_i s_i e^{m_i - m}`.

    ``m_i`` may be ``-inf`` (a device whose entries are all ``-inf``): its ``s_i`` is 0
    and contributes 0, however far below 0 the global max is."""
    m_i = finite_shift(m)
    # The max is only a shift; pmax has no derivative rule (second derivatives).
    top = finite_shift(jax.lax.pmax(jax.lax.stop_gradient(m), axis_name))
    return top, jax.lax.psum(times(s, jnp.exp(_scaled(m_i - top, beta))), axis_name)


# Logits that a backward pass recomputes are taken as the forward pass's maximum where they
# lie within this many float epsilons (relative to |m|) of it. A recomputation that is not
# bit-identical (another CPU's kernel, another fusion) moves a dot product by a few ulps of
# its terms; at |m| = 1e31 that is 1e24, and the row's maximum recomputed that much lower
# would get probability exp(-1e24) = 0 instead of 1. At ordinary scales the window is
# below the float32 rounding of the logits themselves (1.9e-6 relative).
RECOMPUTE_ULPS = 16


def recompute_tolerance(dtype: jnp.dtype) -> float:
    """The relative window of :func:`probabilities` for logits recomputed in ``dtype``."""
    return RECOMPUTE_ULPS * float(jnp.finfo(dtype).eps)


def probabilities(
    x: jax.Array, m: jax.Array, log_s: jax.Array, valid: jax.Array | None = None, *,
    recomputed: bool = False, beta: jax.Array | float | None = None,
) -> jax.Array:
    r"""The softmax rebuilt from its normalizer (``m`` and ``log_s`` broadcast against
    ``x``): :math:`\exp((x - m) - \log s)`; 0 where ``valid`` is False and where
    :math:`x = -\infty`.

    ``recomputed=True`` is for logits that a backward pass formed again (a chunk of
    ``hidden @ weight``, a block of scores), which may differ from those the normalizer
    was formed from: then :math:`x - m` is clamped at 0, and taken as 0 where it lies
    within :func:`recompute_tolerance` :math:`\cdot |m|` below 0, and :math:`\log s` is
    clamped at 0, so that each entry lies in :math:`[0, 1]`. The clamps change values,
    not slopes (:func:`_zero_where`). Without it, ``x`` must be the very values the
    normalizer was formed from (then :math:`x \le m` and :math:`\log s \ge 0` hold
    exactly, and the clamps would only cost time)."""
    if valid is not None:
        x = jnp.where(valid, x, -jnp.inf)
    # A row of -inf only (log s = -inf): every entry 0, not exp(-inf + inf). The shift
    # passes through the same select on purpose: as the forward pass's very ``x - m``,
    # XLA's CSE would merge the two and write that [N, C] difference to memory (measured:
    # a third slower value_and_grad at [4096, 1024] on the CPU).
    empty = jnp.isneginf(log_s)
    d = x - jnp.where(empty, 0, m)
    log_s = jnp.where(empty, 0, log_s)
    if recomputed:
        d = _zero_where(d, d > -recompute_tolerance(d.dtype) * jnp.abs(m))
        log_s = _zero_where(log_s, log_s < 0)
    return jnp.exp(_scaled(d, beta) - log_s)


def neg_log_probabilities(
    x: jax.Array, m: jax.Array, log_s: jax.Array, *, scale: float = 1.0,
    recomputed: bool = False, beta: jax.Array | float | None = None,
) -> jax.Array:
    r"""``scale`` times :math:`-\log p_c = (m - x_c) + \log s`, as such rather than
    :math:`\mathrm{lse} - x_c`, so that the term of a class near the max keeps its
    precision when :math:`|x|` is huge.

    ``scale=0.5`` never overflows for finite ``x``: :math:`m - x_c` can exceed the
    float32 maximum (logits near :math:`\pm 3 \cdot 10^{38}`, bf16's range) where a
    weighted sum of the terms does not, so weighted sums are formed from halves and
    doubled (halving is exact). ``recomputed=True`` (``x`` formed apart from the values
    the normalizer saw, e.g. a diagonal taken elementwise) clamps :math:`m - x_c` at 0,
    value only (:func:`_zero_where`): never below :math:`\log s`."""
    if scale == 1.0 and beta is None and not recomputed:
        # log s - (x - m): the same number as (m - x) + log s (negation is exact), with
        # the difference that the sum of exponentials forms (XLA computes it once).
        return log_s - (x - m)
    d = scale * m - scale * x if scale != 1.0 else m - x
    if recomputed:
        d = _zero_where(d, d < 0)
    return _scaled(d, beta) + (scale * log_s if scale != 1.0 else log_s)
