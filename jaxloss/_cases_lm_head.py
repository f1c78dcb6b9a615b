"""``jaxloss check`` cases of the LM-head options (``softcap``, ``temperature``,
``z_loss``) of the softmax cross-entropies, and of ``linear_log_probs`` (log-probs and
entropy), with their float64 references (textbook formulas that never call jaxloss).

The references transform the logits, :math:`x' = c \\tanh(x / c) / T` with ``-inf``
kept ``-inf``, and write :math:`-\\log p` as :math:`(m - x') + \\log s` around the
row's max so that they stay exact at the extremes; the z-term is
:math:`\\varepsilon_z\\,\\mathrm{lse}(x')^2`, not weighted by the class weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.classification import softmax_cross_entropy, softmax_cross_entropy_with_integer_labels
from jaxloss.large_vocab import linear_log_probs, linear_softmax_cross_entropy
from jaxloss.testing import CheckCase, Extreme

__all__ = ["cases", "ref_integer_ce", "ref_linear_ce", "ref_linear_log_probs",
           "ref_softmax_ce"]


def _transform(x: jax.Array, softcap: float | None, temperature: float) -> jax.Array:
    """:math:`c \\tanh(x / c) / T`; a ``-inf`` logit stays ``-inf`` (a masked class)."""
    masked = x == -jnp.inf
    # The masked entries stay out of every product: a derivative with respect to the
    # softcap or the temperature would meet 0 * inf there.
    safe = jnp.where(masked, 0, x)
    if softcap is not None:
        safe = softcap * jnp.tanh(safe / softcap)
    return jnp.where(masked, -jnp.inf, safe / temperature)


def _nll(
    x: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``-log softmax(x)`` over the last axis as ``(m - x) + log s`` (0 on the classes
    that do not exist: logit ``-inf`` or not ``valid``), the row's log-sum-exp (0 for
    a row with no class) and the mask of the classes that exist."""
    exists = x > -jnp.inf if valid is None else valid & (x > -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(jnp.where(exists, x, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    safe = jnp.where(exists, x, m)
    total = jnp.sum(jnp.where(exists, jnp.exp(safe - m), 0), axis=-1, keepdims=True)
    log_s = jnp.log(jnp.where(total > 0, total, 1))
    lse = jnp.where(jnp.any(exists, axis=-1), (m + log_s)[..., 0], 0)
    return jnp.where(exists, (m - safe) + log_s, 0), lse, exists


def _reduce(losses: jax.Array, reduction: str, keep: jax.Array,
            weights: jax.Array) -> jax.Array:
    """``"none"``/``"sum"``/``"mean"`` over the rows kept; ``"mean"`` divides by the sum
    of their ``weights`` (0 when none is kept)."""
    losses = jnp.where(keep, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    total = jnp.sum(jnp.where(keep, weights, 0))
    return jnp.where(total > 0, jnp.sum(losses) / jnp.where(total > 0, total, 1), 0)


def ref_integer_ce(
    x: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
    ignore_index: int | None = None, label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None, reduction: str = "none",
    softcap: float | None = None, temperature: float = 1.0, z_loss: float = 0.0,
    **_: object,
) -> jax.Array:
    """PyTorch's CrossEntropyLoss of :math:`x'`,
    :math:`\\sum_c w_c q_c (-\\log p_c) + \\varepsilon_z \\mathrm{lse}(x')^2`;
    ``where`` a mask of rows or of classes."""
    xp = _transform(x, softcap, temperature)
    labels = jnp.asarray(labels)
    valid, keep = None, jnp.ones(labels.shape, bool)
    if where is not None:
        where = jnp.asarray(where)
        if where.ndim == xp.ndim:
            valid, keep = where, jnp.any(where, axis=-1)
        else:
            keep = where
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
        labels = jnp.where(labels == ignore_index, 0, labels)
    nll, lse, exists = _nll(xp, valid)
    c = xp.shape[-1]
    w = jnp.ones(c) if class_weights is None else class_weights
    onehot = labels[..., None] == jnp.arange(c)
    uniform = exists / jnp.maximum(jnp.sum(exists, axis=-1, keepdims=True), 1)
    q = (1 - label_smoothing) * onehot + label_smoothing * uniform
    losses = jnp.sum(w * q * nll, axis=-1) + z_loss * lse**2
    return _reduce(losses, reduction, keep, jnp.sum(jnp.where(onehot, w, 0), axis=-1))


def ref_softmax_ce(
    x: jax.Array, y: jax.Array, *, where: jax.Array | None = None,
    label_smoothing: float = 0.0, reduction: str = "none", softcap: float | None = None,
    temperature: float = 1.0, z_loss: float = 0.0, **_: object,
) -> jax.Array:
    """optax's softmax cross-entropy of :math:`x'` (smoothing uniform over the classes
    that exist; ``where`` a mask of rows or classes) plus
    :math:`\\varepsilon_z \\mathrm{lse}(x')^2`."""
    xp = _transform(x, softcap, temperature)
    valid = None
    if where is not None:
        where = jnp.asarray(where)
        valid = jnp.broadcast_to(where if where.ndim == xp.ndim else where[..., None], xp.shape)
    nll, lse, exists = _nll(xp, valid)
    uniform = exists / jnp.maximum(jnp.sum(exists, axis=-1, keepdims=True), 1)
    q = (1 - label_smoothing) * y + label_smoothing * uniform
    if valid is not None:
        q = jnp.where(valid, q, 0)
    losses = jnp.sum(q * nll, axis=-1) + z_loss * lse**2
    keep = jnp.ones(losses.shape, bool) if valid is None else jnp.any(valid, axis=-1)
    return _reduce(losses, reduction, keep, jnp.ones(losses.shape))


def _logits(h: jax.Array, w: jax.Array, bias: jax.Array | None) -> jax.Array:
    x = jnp.matmul(h, w, precision="highest")
    return x if bias is None else x + bias


def ref_linear_ce(
    h: jax.Array, w: jax.Array, labels: jax.Array, *, bias: jax.Array | None = None,
    **kwargs: Any,
) -> jax.Array:
    return ref_integer_ce(_logits(h, w, bias), labels, **kwargs)


def ref_linear_log_probs(
    h: jax.Array, w: jax.Array, labels: jax.Array, *, bias: jax.Array | None = None,
    softcap: float | None = None, temperature: float = 1.0, return_entropy: bool = False,
    ignore_index: int | None = None, **_: object,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """:math:`\\log p_y` and :math:`H = \\sum_c p_c (-\\log p_c)` of
    :math:`p = \\mathrm{softmax}(x')` over the classes that exist; 0 on the rows
    labelled ``ignore_index``."""
    nll, _, exists = _nll(_transform(_logits(h, w, bias), softcap, temperature))
    labels = jnp.asarray(labels)
    ignored = (jnp.zeros(labels.shape, bool) if ignore_index is None
               else labels == ignore_index)
    safe = jnp.where(ignored, 0, labels)
    log_p = -jnp.take_along_axis(nll, safe[..., None], axis=-1)[..., 0]
    log_p = jnp.where(ignored, 0, log_p)
    if not return_entropy:
        return log_p
    entropy = jnp.sum(jnp.where(exists, jnp.exp(-nll) * nll, 0), axis=-1)
    return log_p, jnp.where(ignored, 0, entropy)


def _ref_log_probs(hidden: jax.Array, weight: jax.Array, labels: jax.Array,
                   **kwargs: Any) -> jax.Array:
    log_p = ref_linear_log_probs(hidden, weight, labels, **kwargs)
    assert not isinstance(log_p, tuple)
    return log_p


def _ref_log_probs_and_entropy(hidden: jax.Array, weight: jax.Array, labels: jax.Array,
                               **kwargs: Any) -> jax.Array:
    return jnp.stack(ref_linear_log_probs(hidden, weight, labels, return_entropy=True,
                                          **kwargs))


def _integer_extremes(labels: np.ndarray, x: np.ndarray) -> tuple[Extreme, ...]:
    """Logits of 1e30 capped (against float64 and an exact limit), bf16 near its
    largest values."""
    f32, bf16 = np.float32, jnp.bfloat16
    huge = (x * 1e29).astype(f32)
    huge[:, :2] = x[:, :2]  # moderate logits in each row: a gradient there
    # x' = [30, 30, -30, -inf, -30] / T at temperature T = 0.8: -log p is log 2 on the
    # ties and 75 + log 2 on the others; smoothing 0.1 over the 4 classes that exist;
    # the z-term of lse = 37.5 + log 2. Every logit is saturated or -inf: gradient 0.
    capped = np.array([[1e30, 1e30, -1e30, -np.inf, -1e30]], f32)
    ln2 = np.log(2.0)
    value = 0.9 * ln2 + 0.025 * (4 * ln2 + 150) + 0.05 * (37.5 + ln2) ** 2
    return (Extreme((huge, labels)),
            Extreme((jnp.asarray(np.clip(x.astype(np.float64) * 1e38, -3e38, 3e38), bf16), labels)),
            Extreme((capped, np.array([0], np.int32)), {"softcap": 30.0},
                    expected=([value], (np.zeros((1, 5)),))))


def _entropy_limits(temperature: float) -> Extreme:
    """Row 0 has logits 0 (uniform: log p = -log 4, H = log 4), row 1 one logit 1e4
    above the others (log p of it 0, H = 0). The gradient of log p + H with respect to
    x is (onehot - 1/4) / T on row 0 and exactly 0 on row 1; hidden row 0 is 0, so the
    weight gets nothing."""
    h = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    w = np.array([[1e4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    g0 = (np.eye(4)[1] - 0.25) / temperature
    ln4 = np.log(4.0)
    return Extreme((h, w, np.array([1, 0], np.int32)),
                   {"bias": np.zeros(4, np.float32), "softcap": None},
                   expected=([[-ln4, 0.0], [ln4, 0.0]],
                             (np.stack([w.astype(np.float64) @ g0, np.zeros(2)]),
                              np.zeros((2, 4)), g0)))


def cases(rng: np.random.Generator) -> list[CheckCase]:
    """The three softmax cross-entropies with ``softcap``, ``temperature`` and
    ``z_loss`` (and smoothing, ``ignore_index``, ``where``, a bias and a chunk that does
    not divide the vocabulary), and ``linear_log_probs`` (log-probs; log-probs and
    entropy stacked, so that a cotangent reaches each)."""
    def log_probs_and_entropy(hidden: jax.Array, weight: jax.Array, labels: jax.Array,
                              **kwargs: Any) -> jax.Array:
        return jnp.stack(linear_log_probs(hidden, weight, labels, return_entropy=True,
                                          **kwargs))

    f32, bf16 = np.float32, jnp.bfloat16
    n, c, d, v = 6, 5, 4, 10
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n).astype(np.int32)
    soft = rng.dirichlet(np.ones(c), size=n)
    hidden = rng.normal(size=(n, d))
    weight = rng.normal(size=(d, v)) * 0.8
    bias = rng.normal(size=v)
    vocab_labels = rng.integers(0, v, size=n).astype(np.int32)
    rows = np.arange(n) % 3 != 1
    some_ignored = np.where(np.arange(n) == 4, -100, labels).astype(np.int32)
    ignored = np.where(np.arange(n) == 2, -100, vocab_labels).astype(np.int32)
    temperature = 0.8
    head = {"softcap": 3.0, "temperature": temperature, "z_loss": 0.05}
    lm = {"softcap": 3.0, "temperature": temperature, "chunk_size": 4, "precision": "highest"}

    x32 = logits.astype(f32)
    masked = x32.copy()
    masked[:, 3] = -np.inf
    masked_soft = soft.copy()
    masked_soft[:, 3] = 0
    masked_soft /= masked_soft.sum(-1, keepdims=True)
    huge_dense = (x32 * 1e29).astype(f32)
    huge_dense[:, :2] = x32[:, :2]
    h32, w32, b32 = hidden.astype(f32), weight.astype(f32), bias.astype(f32)
    # Logits of 1e30, saturated by the cap, but for 3 moderate classes: a gradient there.
    huge_weight, huge_bias = (w32 * 1e29).astype(f32), (b32 * 1e29).astype(f32)
    huge_weight[:, :3], huge_bias[:3] = w32[:, :3], b32[:3]
    bf16_h, bf16_w = jnp.asarray(h32, bf16), jnp.asarray(w32, bf16)
    neg_inf_bias = b32.copy()
    neg_inf_bias[[1, 5]] = -np.inf
    live_labels = np.where(np.isin(vocab_labels, [1, 5]), 0, vocab_labels).astype(np.int32)
    return [
        CheckCase("softmax_cross_entropy_with_integer_labels[softcap,temperature,z_loss,"
                  "smoothing]", softmax_cross_entropy_with_integer_labels, ref_integer_ce,
                  (logits, labels), {**head, "label_smoothing": 0.1},
                  diff_kwargs=("softcap", "temperature", "z_loss", "label_smoothing"),
                  extremes=_integer_extremes(labels, x32)),
        CheckCase("softmax_cross_entropy_with_integer_labels[softcap,z_loss,class_weights,"
                  "ignore_index,where,mean]", softmax_cross_entropy_with_integer_labels,
                  ref_integer_ce, (logits, some_ignored),
                  {"softcap": 2.0, "z_loss": 0.1, "class_weights": rng.uniform(0.5, 2, c),
                   "ignore_index": -100, "where": rows, "reduction": "mean"},
                  diff_kwargs=("class_weights", "softcap", "z_loss"), fd_order=1),
        CheckCase("softmax_cross_entropy[softcap,z_loss]", softmax_cross_entropy,
                  ref_softmax_ce, (logits, soft), {"softcap": 3.0, "z_loss": 0.05},
                  argnums=(0, 1), diff_kwargs=("softcap", "z_loss"),
                  extremes=((huge_dense, soft.astype(f32)), (masked, masked_soft.astype(f32)),
                            (jnp.asarray(np.clip(logits * 1e38, -3e38, 3e38), bf16),
                             soft.astype(f32)))),
        CheckCase("linear_softmax_cross_entropy[softcap,temperature,z_loss,bias,chunk_size=4]",
                  linear_softmax_cross_entropy, ref_linear_ce, (hidden, weight, vocab_labels),
                  {"bias": bias, "z_loss": 0.05, **lm}, argnums=(0, 1),
                  diff_kwargs=("bias", "softcap", "temperature", "z_loss"),
                  extremes=(Extreme((h32, huge_weight, vocab_labels),
                                    {"bias": huge_bias}),
                            Extreme((bf16_h, bf16_w, vocab_labels),
                                    {"bias": jnp.asarray(b32, bf16)}))),
        CheckCase("linear_softmax_cross_entropy[softcap,temperature,z_loss,smoothing,"
                  "ignore_index,where,mean]",
                  linear_softmax_cross_entropy, ref_linear_ce, (hidden, weight, ignored),
                  {"bias": bias, "z_loss": 0.05, "label_smoothing": 0.2, "ignore_index": -100,
                   "where": rows, "reduction": "mean", **lm},
                  argnums=(0, 1),
                  diff_kwargs=("bias", "temperature", "z_loss", "label_smoothing"), fd_order=1),
        CheckCase("linear_log_probs[softcap,temperature,bias,ignore_index,chunk_size=4]",
                  linear_log_probs, _ref_log_probs, (hidden, weight, ignored),
                  {"bias": bias, "ignore_index": -100, **lm}, argnums=(0, 1),
                  diff_kwargs=("bias", "softcap", "temperature"),
                  extremes=(Extreme((h32, huge_weight, vocab_labels),
                                    {"bias": huge_bias}),
                            Extreme((h32, w32, live_labels), {"bias": neg_inf_bias}),
                            Extreme((bf16_h, bf16_w, vocab_labels),
                                    {"bias": jnp.asarray(b32, bf16)}))),
        CheckCase("linear_log_probs[return_entropy,softcap,temperature,bias,chunk_size=4]",
                  log_probs_and_entropy, _ref_log_probs_and_entropy,
                  (hidden, weight, ignored), {"bias": bias, "ignore_index": -100, **lm},
                  argnums=(0, 1), diff_kwargs=("bias", "temperature"),
                  # The entropy's temperature gradient is a sum over every logit that
                  # cancels to about 1/100 of its terms: float32 holds it to ~3e-5, so
                  # it is compared in float64 (the case's inputs), not at the extremes.
                  extremes=(_entropy_limits(temperature),
                            Extreme((h32, huge_weight, vocab_labels),
                                    {"bias": huge_bias}, diff_kwargs=("bias",)),
                            Extreme((h32, w32, live_labels), {"bias": neg_inf_bias},
                                    diff_kwargs=("bias",)),
                            Extreme((bf16_h, bf16_w, vocab_labels),
                                    {"bias": jnp.asarray(b32, bf16)}))),
    ]
