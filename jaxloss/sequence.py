r"""Sequence losses: connectionist temporal classification (CTC), optax's ``ctc_loss`` and
``ctc_loss_with_forward_probs``.

The lattice is optax's: the forward variables start at :math:`\log\epsilon` (optax's
``log_epsilon``, default ``-1e5``) rather than :math:`-\infty`, and a transition between
two equal consecutive labels without a blank between them is not forbidden but costs
:math:`\log\epsilon`. So a sequence whose labels cannot fit its frames gets a large
finite loss (about :math:`-\log\epsilon` per missing frame), never ``inf`` or NaN, and
the values equal optax's. ``log_epsilon=-inf`` gives the exact CTC of PyTorch's
``ctc_loss`` (``inf`` for such a sequence), and ``zero_infinity=True`` gives such a
sequence loss 0 and gradient 0, as PyTorch's option.

:func:`ctc_loss` has a custom rule (:mod:`jaxloss._rules`) whose backward pass is the
forward-backward (alpha-beta) recursion in log space, not autodiff through the scan: its
residuals are the forward variables, :math:`O(T B (2N+1))`, and the log-probabilities.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _rules, _validate
from jaxloss._reduce import Reduction, weighted_reduce

__all__ = [
    "ctc_loss",
    "ctc_loss_with_forward_probs",
]


# ---------------------------------------------------------------------------------
# Inputs.


def _inputs(
    logits: ArrayLike, logit_paddings: ArrayLike, labels: ArrayLike,
    label_paddings: ArrayLike, blank_id: object, log_epsilon: ArrayLike,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, int, jax.Array]:
    """Checks shapes and dtypes (at trace time, naming the argument)."""
    logits = _validate.floating("logits", logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [batch, frames, classes], got "
                         f"{_validate.describe(logits)}")
    b, t, k = logits.shape
    logit_paddings = _validate.numeric("logit_paddings", logit_paddings)
    _validate.same_shape("logit_paddings", logit_paddings, (b, t), "[batch, frames] of logits")
    labels = _validate.integer("labels", labels)
    if labels.ndim != 2 or labels.shape[0] != b:
        raise ValueError(f"labels must have shape [batch, max_labels] with batch {b} (that "
                         f"of logits), got {_validate.describe(labels)}")
    label_paddings = _validate.numeric("label_paddings", label_paddings)
    _validate.same_shape("label_paddings", label_paddings, labels.shape, "that of labels")
    if isinstance(blank_id, bool) or not isinstance(blank_id, numbers.Integral):
        raise TypeError(f"blank_id must be an int, got {blank_id!r}")
    if not 0 <= int(blank_id) < k:
        raise ValueError(f"blank_id must be in [0, {k}) (the classes of logits), "
                         f"got {blank_id}")
    _check_log_epsilon("log_epsilon", log_epsilon)
    log_epsilon = _validate.numeric("log_epsilon", log_epsilon)
    if log_epsilon.ndim != 0:
        raise ValueError(f"log_epsilon must be a scalar, got {_validate.describe(log_epsilon)}")
    return logits, logit_paddings, labels, label_paddings, int(blank_id), log_epsilon


def _batch_like(x: jax.Array, ref: jax.Array) -> jax.Array:
    """``x`` with its leading (batch) axis split over an Explicit mesh as ``ref``'s is:
    JAX's ``where``, ``concatenate`` and scan carries take operands of one sharding, and
    a custom_vjp's gradient must have its input's type. A no-op where they agree
    already (always without a mesh, on an Auto mesh, or inside ``jax.shard_map``)."""
    want, have = jax.typeof(ref).sharding, jax.typeof(x).sharding
    batch = want.spec[0] if len(want.spec) else None
    mesh = have.mesh if want.mesh.empty else want.mesh
    if mesh.empty or not x.ndim or (have.spec[0] if len(have.spec) else None) == batch:
        return x
    spec = jax.sharding.PartitionSpec(batch, *(None,) * (x.ndim - 1))
    out: jax.Array = jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, spec))
    return out


def _extended(labels: jax.Array, blank_id: int) -> jax.Array:
    """The extended sequence: blank, label 1, blank, ..., label N, blank (``[B, 2N + 1]``)."""
    b, n = labels.shape
    # Formed from the labels (not scattered into a new array), so that it keeps their
    # type: their sharding over a mesh, or their variance inside jax.shard_map.
    blanks = jnp.full_like(labels, blank_id)
    last = jnp.full_like(jnp.sum(labels, axis=1, keepdims=True), blank_id, labels.dtype)
    pairs = jnp.stack([blanks, labels], axis=-1).reshape(b, 2 * n)
    return jnp.concatenate([pairs, last], axis=1)


def _emissions(logp: jax.Array, ext: jax.Array) -> jax.Array:
    """The log-probability of each state at each frame, ``[T, B, 2N + 1]``. An
    out-of-range label emits with probability 1 (its one-hot row is 0 in optax)."""
    b, t, k = logp.shape
    valid = (ext >= 0) & (ext < k)
    index = jnp.broadcast_to(jnp.where(valid, ext, 0)[:, None, :], (b, t, ext.shape[1]))
    lp = jnp.where(valid[:, None, :], jnp.take_along_axis(logp, index, axis=-1), 0)
    return jnp.transpose(lp, (1, 0, 2))


def _lattice(
    ext: jax.Array, label_paddings: jax.Array, log_epsilon: jax.Array, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The log-weights of optax's transitions into each state from the one before
    (``w1``: blank -> label 0; label -> blank :math:`\\log(1 + \\epsilon)`, as optax adds
    that move twice, once times :math:`\\epsilon`) and from two before (``w2``: label ->
    next label 0, or :math:`\\log\\epsilon` when the two are equal; none into a blank),
    and the number of labels."""
    b, s = ext.shape
    eps = log_epsilon.astype(dtype)
    state = jnp.arange(s)
    label = state % 2 == 1
    w1 = jnp.where(label, 0, jnp.logaddexp(jnp.zeros((), dtype), eps))
    w1 = jnp.where(state == 0, -jnp.inf, w1).astype(dtype)
    same = jnp.concatenate([jnp.zeros_like(ext[:, :2], bool), ext[:, 2:] == ext[:, :-2]],
                           axis=1)
    # where, not eps * same, so that log_epsilon = -inf gives exact CTC, not NaN.
    w2 = jnp.where(same, eps, jnp.zeros((), dtype))
    w2 = jnp.where((label & (state >= 3))[None, :], w2, -jnp.inf).astype(dtype)
    n = (s - 1) // 2
    lengths = n - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
    return w1, w2, jnp.clip(lengths, 0, n)


# ---------------------------------------------------------------------------------
# The recursion, over the 2N + 1 states of the extended sequence.


# The fill of the shifts is formed from x (full_like of a slice), so that it has x's type:
# concatenate takes operands of one sharding only. x[..., :k] has min(k, S) states, which
# keeps the result's S states also when S < k.


def _shift(x: jax.Array, k: int) -> jax.Array:
    """``x[:, s - k]`` (``-inf`` before the first state)."""
    return jnp.concatenate([jnp.full_like(x[:, :k], -jnp.inf), x[:, :-k]], axis=1)


def _unshift(x: jax.Array, k: int) -> jax.Array:
    """``x[:, s + k]`` (0 after the last state)."""
    return jnp.concatenate([x[:, k:], jnp.zeros_like(x[:, :k])], axis=1)


def _lse3(x: jax.Array, y: jax.Array, z: jax.Array
          ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """log-sum-exp of three arrays, and the share of each term in the sum (its
    derivative), with a finite value and shares (0) where all are ``-inf``, so that the
    derivative has no NaN either."""
    m = jax.lax.stop_gradient(jnp.maximum(jnp.maximum(x, y), z))
    m = jnp.where(jnp.isfinite(m), m, 0)
    ex, ey, ez = jnp.exp(x - m), jnp.exp(y - m), jnp.exp(z - m)
    total = ex + ey + ez
    empty = total == 0
    inverse = jnp.where(empty, 0, 1 / jnp.where(empty, 1, total))
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1, total)))
    return lse, (ex * inverse, ey * inverse, ez * inverse)


def _row_max(x: jax.Array) -> jax.Array:
    """Each row's maximum (0 where it is not finite), a constant to differentiation."""
    top = jnp.max(x, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))


def _frame(lp: jax.Array, pad: jax.Array, w2: jax.Array, lengths: jax.Array) -> jax.Array:
    """An array typed like one frame of the recursions, ``[B, 2N + 1]``, whose value is
    never used (XLA drops its computation; T may be 0). A frame combines ``lp``
    (``[T, B, 2N + 1]``), ``pad`` (``[T, B]``), ``w2`` (``[B, 2N + 1]``) and
    ``lengths`` (``[B]``), so with a batch sharded over a mesh (or varying inside
    ``jax.shard_map``) a scan's initial carry formed like this has the type its body
    returns; without a mesh it is a plain array."""
    return jnp.where(jnp.any(pad, axis=0)[:, None] | (lengths[:, None] > 0),
                     jnp.sum(lp, axis=0), w2)


def _init(frame: jax.Array, eps: jax.Array) -> jax.Array:
    """The forward variables before the first frame: 0 for the initial blank, ``eps``
    elsewhere, typed like ``frame``."""
    state = jnp.arange(frame.shape[1])
    return jnp.where(state == 0, jnp.zeros_like(frame), jnp.full_like(frame, eps))


def _pick(alpha: jax.Array, index: jax.Array) -> jax.Array:
    """``alpha[b, index[b]]``, a per-row gather that keeps the batch's sharding."""
    return jnp.take_along_axis(alpha, index[:, None], axis=1)[:, 0]


def _final(alpha: jax.Array, lengths: jax.Array) -> jax.Array:
    """:math:`\\log p`: the blank after the last label, or the last label itself."""
    last_label = jnp.where(lengths > 0, _pick(alpha, jnp.maximum(2 * lengths - 1, 0)),
                           -jnp.inf)
    return jnp.logaddexp(_pick(alpha, 2 * lengths), last_label)


def _alpha_step(alpha: jax.Array, lp_t: jax.Array, pad_t: jax.Array, w1: jax.Array,
                w2: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """The forward variables after one frame (the same at a padded frame), and each
    state's shares from staying, moving on one state and skipping a blank."""
    lse, shares = _lse3(alpha, _shift(alpha, 1) + w1, _shift(alpha, 2) + w2)
    return jnp.where(pad_t[:, None], alpha, lp_t + lse), shares


def _forward(
    lp: jax.Array, pad: jax.Array, w1: jax.Array, w2: jax.Array, lengths: jax.Array,
    eps: jax.Array, *, shares: bool,
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
    """:math:`\\log p`, the last frame's forward variables and, with ``shares``, every
    frame's shares of the three moves into each state (``[T, B, 2N + 1]`` each). Each
    frame's variables are shifted by their maximum (the shifts summed apart), so that
    they stay near 0 and float32 keeps their differences over hundreds of frames."""
    def step(carry: tuple[jax.Array, jax.Array], x: tuple[jax.Array, jax.Array]
             ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
        alpha, scale = carry
        new, moves = _alpha_step(alpha, *x, w1, w2)
        top = _row_max(new)
        return (new - top, scale + top[:, 0]), (moves if shares else ())

    alpha0 = _init(_frame(lp, pad, w2, lengths), eps)
    (last, scale), moves = jax.lax.scan(step, (alpha0, jnp.zeros_like(alpha0[:, 0])),
                                        (lp, pad))
    return scale + _final(last, lengths), last, moves


def _posteriors(
    last: jax.Array, lengths: jax.Array, pad: jax.Array, moves: tuple[jax.Array, ...]
) -> jax.Array:
    r"""The posterior :math:`\gamma_t(s) = \partial \log p / \partial \log p_t(y'_s)` of
    each state at each frame (``[T, B, 2N + 1]``; 0 at a padded frame), by the adjoint
    of the forward recursion. :math:`\alpha_t(s) = \log p_t(y'_s) + \log \sum_r
    e^{\alpha_{t-1}(r) + w_{rs}}` gives :math:`\partial \alpha_t(s) / \partial
    \alpha_{t-1}(r) = \pi_t(r \to s)`, the share of :math:`r` in that sum, so
    :math:`\gamma_{t-1}(r) = \sum_s \gamma_t(s) \pi_t(r \to s)`: products and sums
    of numbers in :math:`[0, 1]`, no exponential in the loop. A sequence with no
    alignment at all (``log_epsilon=-inf``) has no shares and gets 0."""
    s = last.shape[1]
    state = jnp.arange(s)[None, :]
    final = (state == 2 * lengths[:, None]) | (state == 2 * lengths[:, None] - 1)
    log_final = _final(last, lengths)[:, None]
    reached = final & jnp.isfinite(log_final) & jnp.isfinite(last)
    gamma = jnp.where(reached, jnp.exp(jnp.where(reached, last - log_final, 0)), 0)

    def step(gamma: jax.Array, x: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        stay, move, skip, pad_t = x
        prev = stay * gamma + _unshift(move * gamma, 1) + _unshift(skip * gamma, 2)
        keep = pad_t[:, None]
        return jnp.where(keep, gamma, prev), jnp.where(keep, 0, gamma)

    _, gammas = jax.lax.scan(step, gamma, (*moves, pad), reverse=True)
    return gammas


# The arguments of _ctc: log-probabilities, extended labels, frame padding, the
# lattice's two transition weights, label lengths and log epsilon.
_CTCInputs = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array,
                   jax.Array]


@_rules.rule()
def _ctc(
    logp: jax.Array, ext: jax.Array, pad: jax.Array, w1: jax.Array, w2: jax.Array,
    lengths: jax.Array, eps: jax.Array,
) -> jax.Array:
    return -_forward(_emissions(logp, ext), pad, w1, w2, lengths, eps, shares=False)[0]


def _ctc_fwd(
    logp: jax.Array, ext: jax.Array, pad: jax.Array, w1: jax.Array, w2: jax.Array,
    lengths: jax.Array, eps: jax.Array,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    r""":math:`\partial \ell / \partial \log p_t(k) = -\sum_{s:\, y'_s = k} \gamma_t(s)`,
    with the posteriors :math:`\gamma` of :func:`_posteriors`. The cotangent of a
    sequence's loss is a scalar, so the whole gradient is formed here and the backward
    pass only scales it: the residual is ``[B, T, K]``, not the recursion's shares."""
    log_p, last, moves = _forward(_emissions(logp, ext), pad, w1, w2, lengths, eps,
                                  shares=True)
    posterior = -_posteriors(last, lengths, pad, moves)
    # Back to the classes: the blanks' sum into the blank's column, and the labels' by a
    # product with their one-hot rows (exact: one nonzero term per label; the
    # posteriors are finite).
    k = logp.shape[-1]
    one_hot = jax.nn.one_hot(ext[:, 1::2], k, dtype=logp.dtype)
    grad = jnp.einsum("tbn,bnk->btk", posterior[..., 1::2], one_hot,
                      precision=jax.lax.Precision.HIGHEST)
    blanks = jnp.transpose(jnp.sum(posterior[..., 0::2], axis=-1))
    grad = grad + blanks[..., None] * jax.nn.one_hot(ext[:, :1], k, dtype=logp.dtype)
    return -log_p, (grad, w1, w2, eps)


def _ctc_bwd(
    res: tuple[jax.Array, jax.Array, jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, None, None, jax.Array, jax.Array, None, jax.Array]:
    grad, w1, w2, eps = res
    return (g[:, None, None] * grad, None, None, jnp.zeros_like(w1), jnp.zeros_like(w2),
            None, jnp.zeros_like(eps))


_ctc.defvjp(_ctc_fwd, _ctc_bwd)


def _prepare(
    logits: ArrayLike, logit_paddings: ArrayLike, labels: ArrayLike,
    label_paddings: ArrayLike, blank_id: object, log_epsilon: ArrayLike,
    where: jax.Array | None,
) -> tuple[_CTCInputs, jax.Array]:
    logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon = _inputs(
        logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon)
    logit_paddings, labels, label_paddings = (
        _batch_like(x, logits) for x in (logit_paddings, labels, label_paddings))
    dtype = _validate.compute_dtype(logits.dtype)
    logits = logits.astype(dtype)
    if where is not None:
        # A masked sequence's frames become 0 before any term is formed, so that a NaN
        # there reaches neither the loss nor the gradient.
        logits = jnp.where(where[:, None, None], logits, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ext = _extended(labels, blank_id)
    pad = jnp.transpose(logit_paddings != 0)
    w1, w2, lengths = _lattice(ext, label_paddings, log_epsilon, dtype)
    return (logp, ext, pad, w1, w2, lengths, log_epsilon.astype(dtype)), labels


def _nonnegative(loss: jax.Array) -> jax.Array:
    """``loss`` with a value below 0 raised to 0, and the gradient left as it is (the
    clamp is a constant to differentiation); inf and NaN stay as they are. Below 0:
    rounding at a near-certain alignment (-log p of a p that float32 rounds just above
    1), or optax's lattice summing past 1 (a label equal to the blank)."""
    return loss - jax.lax.stop_gradient(jnp.minimum(loss, 0))


# ---------------------------------------------------------------------------------
# Public losses.


def _check_log_epsilon(name: str, value: object) -> None:
    """A known ``log_epsilon`` must be <= 0 (checked before the jit; a traced one is
    taken as given)."""
    known = _validate.concrete_scalar(value)
    if known is not None and not known <= 0:
        raise ValueError(f"{name} must be <= 0 (the log of a tiny probability), got {known}")


@_validate.jit(static_argnames=("blank_id", "zero_infinity", "reduction"),
               checks={"log_epsilon": _check_log_epsilon})
def ctc_loss(
    logits: ArrayLike,
    logit_paddings: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: ArrayLike = -1e5,
    zero_infinity: bool = False,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Connectionist temporal classification loss (``optax.losses.ctc_loss``; PyTorch
    ``torch.nn.functional.ctc_loss`` with ``reduction="none"`` on ``log_softmax``
    inputs in ``[T, B, K]`` layout).

    With :math:`\log p_t(k)` the log-softmax of ``logits``, :math:`y'` the labels with a
    blank before, between and after them (:math:`2N+1` states) and :math:`\alpha_t(s)`
    the forward variables of the lattice of alignments (:math:`N` the sequence's number
    of labels),

    .. math::
      \alpha_t(s) = \log p_t(y'_s) + \log \sum_{r \to s} e^{\alpha_{t-1}(r) + w_{rs}},
      \qquad
      \ell = -\log p(y \mid x) = -\log\bigl(e^{\alpha_{T}(2N)} + e^{\alpha_T(2N - 1)}\bigr),

    where :math:`r \to s` are staying, moving on one state, or skipping the blank
    between two labels (:math:`w_{rs} = \log\epsilon` when the two labels are equal, else
    0), and :math:`\alpha_0(s) = \log\epsilon` but for the initial blank (0): optax's
    lattice, so a sequence whose labels cannot fit its frames has a large finite loss.
    With :math:`\beta_t(s)` the backward variables of the same lattice,

    .. math::
      \frac{\partial \ell}{\partial z_t(k)} = p_t(k)
        - \sum_{s:\, y'_s = k} e^{\alpha_t(s) + \beta_t(s) - \log p(y \mid x)}

    for the logits :math:`z_t` of an unpadded frame, and 0 at a padded one. The loss is
    never below 0: where float32 rounds a near-certain alignment's :math:`p` to more than
    1 (optax's loss is then about -1e-26, its issue #1771), or optax's lattice sums past
    1 (a label equal to ``blank_id`` counts some alignments twice; optax's loss is then
    negative), the value is 0 and the gradient still the one above. The
    gradient (a custom rule, :mod:`jaxloss._rules`) comes from the forward recursion
    (shifted per frame, so float32 keeps its differences over hundreds of frames): each
    state's shares of the three moves into it, kept per frame, carry the posteriors back
    from the last frame in products and sums, with no exponential in that loop, and
    the backward pass scales the result by the cotangent. It is written in
    differentiable operations,
    so every mode works: ``jax.jvp`` and ``jax.jacfwd`` (the rule transposed),
    ``jax.hessian`` and reverse over reverse. In float32 a sequence that cannot fit has
    a loss near :math:`-\log\epsilon` = 1e5, known to float32's absolute precision
    there (about 0.01), as optax's.

    Args:
      logits: ``[B, T, K]`` unnormalized log-probabilities of the classes, the blank
        among them; bf16/fp16 are computed in float32.
      logit_paddings: ``[B, T]``, 1 (any nonzero value) at a padded frame, 0 elsewhere;
        a padded frame is skipped wherever it is.
      labels: ``[B, N]`` integer labels. An out-of-range label emits with probability
        1 (as in optax); a label equal to ``blank_id`` is an ordinary label.
      label_paddings: ``[B, N]``, 1 at a padded label, 0 elsewhere, right-padded: the
        first ``N - sum(label_paddings[b])`` labels are the sequence's.
      blank_id: the class of the blank, in ``[0, K)``.
      log_epsilon: the log of the tiny probability that stands for 0 in the lattice
        (optax's). ``-inf`` gives exact CTC: ``inf`` for a sequence that cannot fit.
        It gets no gradient.
      zero_infinity: if True, a sequence whose labels cannot fit its frames (its labels
        and the blanks needed between equal neighbours outnumber its unpadded frames),
        or whose loss is ``inf``, gets loss 0 and gradient 0 (PyTorch's option).
      where: ``[B]`` boolean mask of the sequences to include; the others get loss 0
        and gradient 0, even where their logits are NaN.
      reduction: ``"none"`` (default, one loss per sequence), ``"mean"`` over the
        selected sequences, or ``"sum"``. PyTorch's ``"mean"`` first divides each loss
        by its number of labels; to get it, reduce
        ``ctc_loss(...) / jnp.maximum(label_lengths, 1)`` yourself.

    Returns:
      ``[B]`` (or a scalar when reduced), in ``promote_types(logits.dtype, float32)``.

    Examples:
      Uniform scores over three classes (the blank is 0) and the two-label target
      ``[1, 2]`` in three frames:

      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.zeros((1, 3, 3))
      >>> loss = jaxloss.ctc_loss(logits, jnp.zeros((1, 3)), jnp.array([[1, 2]]),
      ...                         jnp.zeros((1, 2)))
      >>> [round(v, 4) for v in loss.tolist()]  # -log(5 / 27): five alignments
      [1.6864]

    References:
      Graves et al., `Connectionist temporal classification: labelling unsegmented
      sequence data with recurrent neural networks
      <https://dl.acm.org/doi/abs/10.1145/1143844.1143891>`_, ICML 2006.
    """
    reduction = _validate.reduction(reduction)
    if not isinstance(zero_infinity, bool):
        raise TypeError(f"zero_infinity must be a bool, got {zero_infinity!r}")
    where = _validate.mask("where", where)
    logits_arr = _validate.floating("logits", logits)
    if where is not None and (logits_arr.ndim != 3 or tuple(where.shape)
                              != (logits_arr.shape[0],)):
        raise ValueError(f"where must have shape [batch] of logits, got "
                         f"{_validate.describe(where)}")
    if where is not None:
        where = _batch_like(where, logits_arr)
    args, labels = _prepare(logits_arr, logit_paddings, labels, label_paddings, blank_id,
                            log_epsilon, where)
    losses = _nonnegative(_ctc(*args))
    if zero_infinity:
        pad, lengths = args[2], args[5]
        frames = jnp.sum(~pad, axis=0)
        # A blank must separate each pair of equal neighbours among the labels.
        pairs = (labels[:, 1:] == labels[:, :-1]) & (
            jnp.arange(1, labels.shape[1])[None, :] < lengths[:, None])
        needed = lengths + jnp.sum(pairs, axis=1)
        losses = jnp.where((needed > frames) | jnp.isinf(losses), 0, losses)
    return weighted_reduce(losses, reduction, where=where, denominator=None)


@_validate.jit(static_argnames=("blank_id",), checks={"log_epsilon": _check_log_epsilon})
def ctc_loss_with_forward_probs(
    logits: ArrayLike,
    logit_paddings: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: ArrayLike = -1e5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""CTC loss and the forward variables of its lattice
    (``optax.losses.ctc_loss_with_forward_probs``).

    The loss is :func:`ctc_loss`'s (never below 0). The forward variables are the
    log-probabilities of the alignments of the first :math:`t + 1` frames that end in
    the blank after :math:`n` labels, :math:`\log\alpha_{\phi}(t, n)`, or in label
    :math:`n`, :math:`\log\alpha_{y}(t, n)` (in the recursion of :func:`ctc_loss`); the
    last frame's :math:`\alpha_\phi` also includes the move from label :math:`n-1` to the
    final read, as optax's. Everything is differentiated by autodiff through the
    recursion (the forward variables are outputs too); for the loss alone,
    :func:`ctc_loss` is cheaper.

    Args:
      logits: ``[B, T, K]`` logits.
      logit_paddings: ``[B, T]`` padding indicators of the frames.
      labels: ``[B, N]`` integer labels.
      label_paddings: ``[B, N]`` padding indicators of the labels (right-padded).
      blank_id: the class of the blank, in ``[0, K)``.
      log_epsilon: the log of the tiny probability that stands for 0.

    Returns:
      ``(loss, logalpha_blank, logalpha_label)``: ``[B]``, ``[T, B, N + 1]`` and
      ``[T, B, N]``, in ``promote_types(logits.dtype, float32)``.

    References:
      Graves et al., `Connectionist temporal classification: labelling unsegmented
      sequence data with recurrent neural networks
      <https://dl.acm.org/doi/abs/10.1145/1143844.1143891>`_, ICML 2006.
    """
    args, _ = _prepare(logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon,
                       None)
    logp, ext, pad, w1, w2, lengths, eps = args
    def step(alpha: jax.Array, x: tuple[jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array]:
        new = _alpha_step(alpha, *x, w1, w2)[0]
        return new, new

    lp = _emissions(logp, ext)
    _, alphas = jax.lax.scan(step, _init(_frame(lp, pad, w2, lengths), eps), (lp, pad))
    if not alphas.shape[0]:
        raise ValueError("logits must have at least one frame, got "
                         f"{_validate.describe(logits)}")
    log_p = _final(alphas[-1], lengths)
    phis, emits = alphas[..., 0::2], alphas[..., 1::2]
    # optax's last row of the blanks includes the final move from label n - 1.
    last = jnp.concatenate([phis[-1, :, :1], jnp.logaddexp(phis[-1, :, 1:], emits[-1])],
                           axis=1)
    return _nonnegative(-log_p), phis.at[-1].set(last), emits
