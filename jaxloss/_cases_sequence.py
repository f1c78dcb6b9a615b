"""``jaxloss check`` cases of the sequence losses (CTC), with their float64 references.

The references run the CTC forward recursion over the blank-extended label sequence
(``2N + 1`` states) with optax's lattice, written independently of
:mod:`jaxloss.sequence`: every state starts at ``log_epsilon`` but the first blank, the
skip between two equal labels costs ``log_epsilon``, and the move from a label to the
blank after it weighs ``1 + epsilon`` (optax adds it twice, once times epsilon). None
calls jaxloss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.testing import CheckCase, Extreme

__all__ = ["cases", "ctc_loss_with_forward_probs_loss", "ref_ctc_loss",
           "ref_ctc_loss_with_forward_probs"]


def _log_softmax(x: jax.Array) -> jax.Array:
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (x - m) - jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))


def _lse(*xs: jax.Array) -> jax.Array:
    m = jax.lax.stop_gradient(jnp.maximum(jnp.maximum(xs[0], xs[1]), xs[-1]))
    return m + jnp.log(sum(jnp.exp(x - m) for x in xs))


def _shift(x: jax.Array, k: int) -> jax.Array:
    """``x[:, s - k]``, ``-inf`` for ``s < k``."""
    return jnp.concatenate([jnp.full((x.shape[0], k), -jnp.inf, x.dtype), x[:, :-k]], axis=1)


def _ref_log_p(
    logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array,
    blank_id: int, log_epsilon: float,
) -> tuple[jax.Array, list[jax.Array], jax.Array]:
    logits = jnp.asarray(logits)
    b, t, k = logits.shape
    n = labels.shape[1]
    s = 2 * n + 1
    eps = jnp.asarray(log_epsilon, logits.dtype)
    lp = _log_softmax(logits)
    ext = jnp.full((b, s), blank_id).at[:, 1::2].set(labels)  # blank, y1, blank, y2, ...
    valid = (ext >= 0) & (ext < k)
    lp_ext = jnp.where(valid[:, None, :], jnp.take_along_axis(
        lp, jnp.broadcast_to(jnp.where(valid, ext, 0)[:, None, :], (b, t, s)), axis=-1), 0)
    odd = (jnp.arange(s) % 2 == 1)[None, :]
    w1 = jnp.where(odd, 0.0, jnp.logaddexp(0.0, eps))  # blank -> label, label -> blank
    same = ext == jnp.concatenate([jnp.full((b, 2), -1), ext[:, :-2]], axis=1)
    w2 = jnp.where(odd & (jnp.arange(s) >= 3)[None, :], jnp.where(same, eps, 0.0), -jnp.inf)
    alpha = jnp.full((b, s), eps, logits.dtype).at[:, 0].set(0.0)
    alphas = []
    for i in range(t):
        new = lp_ext[:, i] + _lse(alpha, _shift(alpha, 1) + w1, _shift(alpha, 2) + w2)
        alpha = jnp.where(jnp.asarray(logit_paddings)[:, i:i + 1] != 0, alpha, new)
        alphas.append(alpha)
    lengths = jnp.clip(n - jnp.sum(label_paddings, axis=1).astype(jnp.int32), 0, n)
    last_blank = jnp.take_along_axis(alpha, 2 * lengths[:, None], axis=1)[:, 0]
    last_label = jnp.take_along_axis(alpha, jnp.maximum(2 * lengths - 1, 0)[:, None],
                                     axis=1)[:, 0]
    log_p = jnp.where(lengths > 0, jnp.logaddexp(last_blank, last_label), last_blank)
    return log_p, alphas, lengths


def ref_ctc_loss(
    logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array, *,
    blank_id: int = 0, log_epsilon: float = -1e5, zero_infinity: bool = False,
    where: jax.Array | None = None, reduction: str = "none",
) -> jax.Array:
    """-log p(labels | logits) by the forward recursion (float64 when given float64)."""
    log_p, _, lengths = _ref_log_p(logits, logit_paddings, labels, label_paddings, blank_id,
                                   log_epsilon)
    # Never below 0, the value only (as ctc_loss): optax's lattice can sum past 1 (a
    # label equal to the blank counts an alignment twice), where -log p is negative.
    losses = -log_p
    losses = losses - jax.lax.stop_gradient(jnp.minimum(losses, 0))
    if zero_infinity:
        labels = jnp.asarray(labels)
        pairs = (labels[:, 1:] == labels[:, :-1]) & (
            jnp.arange(1, labels.shape[1])[None, :] < lengths[:, None])
        frames = jnp.sum(jnp.asarray(logit_paddings) == 0, axis=1)
        losses = jnp.where(lengths + jnp.sum(pairs, axis=1) > frames, 0.0, losses)
    if where is not None:
        losses = jnp.where(where, losses, 0.0)
    if reduction == "sum":
        return jnp.sum(losses)
    if reduction == "mean":
        count = losses.size if where is None else jnp.sum(where)
        return jnp.sum(losses) / jnp.maximum(count, 1)
    return losses


def ref_ctc_loss_with_forward_probs(
    logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array, *,
    blank_id: int = 0, log_epsilon: float = -1e5,
) -> jax.Array:
    """The loss of :func:`ref_ctc_loss` (the check's loss is the first output)."""
    return ref_ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=blank_id,
                        log_epsilon=log_epsilon)


def ctc_loss_with_forward_probs_loss(
    logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array, *,
    blank_id: int = 0, log_epsilon: float = -1e5,
) -> jax.Array:
    """The per-sequence loss of ``ctc_loss_with_forward_probs`` (its first output), the
    form ``CheckCase`` takes."""
    from jaxloss.sequence import ctc_loss_with_forward_probs

    return ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings,
                                       blank_id=blank_id, log_epsilon=log_epsilon)[0]


def cases(rng: np.random.Generator) -> list[CheckCase]:
    """ctc_loss (custom_vjp) plain and with its options, and the loss of
    ctc_loss_with_forward_probs (autodiff through the recursion)."""
    from jaxloss.sequence import ctc_loss

    b, t, k, n = 3, 6, 4, 3
    logits = rng.normal(size=(b, t, k)) * 2
    logit_paddings = np.zeros((b, t))
    logit_paddings[1, 4:] = 1  # 4 frames
    logit_paddings[2, 2] = 1  # a padded frame in the middle
    labels = np.array([[1, 2, 2], [3, 1, 0], [2, 3, 1]])
    label_paddings = np.zeros((b, n))
    label_paddings[1, 2:] = 1  # 2 labels
    # Sequence 2 cannot fit in 2 frames: 3 labels.
    short = logit_paddings.copy()
    short[2, 2:] = 1
    where = np.array([True, True, False])

    # +-1e30 logits that single out one alignment: loss 0 and gradient 0, exactly.
    path = np.array([[1, 0, 2, 0, 2, 0], [3, 3, 1, 0, 0, 0], [2, 3, 1, 1, 0, 0]])
    forced = np.where(np.arange(k) == path[..., None], 1e30, -1e30).astype(np.float32)
    forced_pads = np.zeros((b, t), np.float32)
    forced_pads[1, 4:] = 1
    forced_pads[2, 4:] = 1
    exact = Extreme((forced, forced_pads, labels, label_paddings),
                    expected=(np.zeros(b), (np.zeros((b, t, k)),)))
    # A class masked with -inf (never a label), in float32; bf16 logits.
    masked = logits.astype(np.float32)
    masked[:, :, 0] = -np.inf
    masked_extreme = Extreme((masked, logit_paddings.astype(np.float32), labels,
                              label_paddings.astype(np.float32)), {"blank_id": 3})
    bf16 = Extreme((jnp.asarray(logits, jnp.bfloat16), logit_paddings, labels,
                    label_paddings))
    base = (logits, logit_paddings, labels, label_paddings)
    return [
        CheckCase("ctc_loss", ctc_loss, ref_ctc_loss, base,
                  extremes=(exact, masked_extreme, bf16)),
        CheckCase("ctc_loss[blank_id=2,impossible]", ctc_loss, ref_ctc_loss,
                  (logits, short, labels, label_paddings), {"blank_id": 2}, fd_order=1),
        CheckCase("ctc_loss[zero_infinity,where,mean]", ctc_loss, ref_ctc_loss,
                  (logits, short, labels, label_paddings),
                  {"zero_infinity": True, "where": where, "reduction": "mean"}, fd_order=1,
                  extremes=(Extreme((forced, np.ones((b, t), np.float32), labels,
                                     label_paddings),
                                    {"where": None, "reduction": "sum"},
                                    expected=(0.0, (np.zeros((b, t, k)),))),)),
        CheckCase("ctc_loss_with_forward_probs", ctc_loss_with_forward_probs_loss,
                  ref_ctc_loss_with_forward_probs, base, custom_vjp=False,
                  extremes=(exact,)),
    ]
