"""``jaxloss check`` cases of ``make_fenchel_young_loss`` and ``ranking_softmax_loss``,
with their float64 references (textbook formulas that never call jaxloss)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.fenchel_young import make_fenchel_young_loss
from jaxloss.ranking import ranking_softmax_loss
from jaxloss.testing import CheckCase, Extreme

__all__ = ["cases"]


def _log_normalizer(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The row max ``m`` (0 for a row of -inf; no gradient) and ``log sum exp(x - m)``
    (0, not -inf, for a row of -inf: such rows carry no weight)."""
    m = jnp.max(x, axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    total = jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True)
    return m, jnp.log(jnp.where(total == 0, 1, total))


def _ref_fy_logsumexp(scores: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Softmax cross-entropy with unnormalized targets, :math:`\mathrm{lse}(s) -
    \langle y, s \rangle`, written around the max: :math:`\log \sum e^{s - m} - \sum
    y (s - m) + m (1 - \sum y)`, exact at any magnitude of finite scores."""
    m, log_s = _log_normalizer(scores)
    return (log_s[..., 0] - jnp.sum(targets * (scores - m), axis=-1)
            + m[..., 0] * (1 - jnp.sum(targets, axis=-1)))


def _ref_ranking(logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
                 weights: jax.Array | None = None,
                 reduce_fn: Callable[..., jax.Array] | None = jnp.mean) -> jax.Array:
    """ListNet's loss: -sum over the valid items of w y log softmax(valid logits)."""
    c = labels if weights is None else labels * weights
    x = logits if where is None else jnp.where(where, logits, -jnp.inf)
    m, log_s = _log_normalizer(x)
    log_p = (x - m) - log_s
    if where is None:
        losses, rows = -jnp.sum(c * log_p, axis=-1), None
    else:
        losses = -jnp.sum(jnp.where(where, c * jnp.where(where, log_p, 0), 0), axis=-1)
        rows = jnp.any(where, axis=-1)
        losses = jnp.where(rows, losses, 0)
    if reduce_fn is None:
        return losses
    if reduce_fn is jnp.sum:
        return jnp.sum(losses)
    count = losses.size if rows is None else jnp.sum(rows)
    return jnp.sum(losses) / jnp.maximum(count, 1)


def _ranking_extremes() -> tuple[Extreme, ...]:
    """Exact limits of the per-list losses (``reduce_fn=None``) in float32, and a bf16
    list near its largest values (against the float64 reference)."""
    f32 = np.float32
    inf = np.inf
    x = np.array([[3e38, -3e38, 0.0, 5.0],           # label on the top item
                  [-inf, 1e30, 1e30, -1e30],          # ties; a -inf item of label 0
                  [-inf, -inf, -inf, -inf],           # no item can be ranked
                  [3e38, -3e38, 0.0, 0.0]], f32)      # a finite loss beyond m - x
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [0, 0.25, 0, 0]], f32)
    x64 = x.astype(np.float64)
    ln2 = np.log(2.0)
    value = np.array([0.0, 4e30 + 3 * ln2, 0.0, 0.25 * (x64[3, 0] - x64[3, 1])])
    g_x = np.array([[0, 0, 0, 0], [0, 0.5, 1.5, -2], [0, 0, 0, 0], [0.25, -0.25, 0, 0]])
    # d/dy = -log p: top - x (the top item's own is log 1 = 0); 0 for a -inf item of
    # label 0 (an absent term) and for the row with no finite item.
    g_y = np.array([[0.0, *(x64[0, 0] - x64[0, 1:])],
                    [0.0, ln2, ln2, 2e30 + ln2],
                    [0.0, 0.0, 0.0, 0.0],
                    [0.0, *(x64[3, 0] - x64[3, 1:])]])
    bf16 = jnp.array([[3.0e38, -3.0e38, 1e4, -1e4, 0.0]] * 2, jnp.bfloat16)
    bf16_y = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0.5]], f32)
    return (Extreme((x, y), expected=(value, (g_x, g_y))), Extreme((bf16, bf16_y)))


def _fy_extremes(shifted: bool) -> tuple[Extreme, ...]:
    f32 = np.float32
    big = np.array([[1e30, -1e30, 0.0, 5.0, -5.0]] * 2, f32)
    onehot = np.eye(5, dtype=f32)[[0, 2]]
    bf16 = jnp.array([[3.0e38, -3.0e38, 1e4, -1e4, 0.0]] * 2, jnp.bfloat16)
    out = [Extreme((big, onehot)), Extreme((bf16, onehot))]
    # -inf scores with target 0 (optax: NaN); tied scores, at 1e30 when shifted (the
    # default difference lse - <y, s> cancels to 0 there, in optax too).
    tie = 1e30 if shifted else 3.0
    s = np.array([[-np.inf, tie, tie], [2.0, -np.inf, 0.0]], f32)
    y = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 0.5]], f32)
    sig = 1 / (1 + np.exp(-2.0))
    value = np.array([np.log(2.0), np.log1p(np.exp(2.0)) - 1])
    g_s = np.array([[0.0, 0.5, -0.5], [sig - 0.5, 0.0, 0.5 - sig]])
    g_y = np.array([[0.0, -tie, -tie], [-2.0, 0.0, 0.0]])
    out.append(Extreme((s, y), expected=(value, (g_s, g_y))))
    return tuple(out)


def cases(rng: np.random.Generator) -> list[CheckCase]:
    """Cases of ``make_fenchel_young_loss`` (built on ``jax.nn.logsumexp``, so the
    softmax cross-entropy; default and ``shift_equivariant``) and
    ``ranking_softmax_loss`` (its reductions, ``where``, ``weights``)."""
    n, c = 6, 5
    scores = rng.normal(size=(n, c)) * 3
    targets = rng.dirichlet(np.ones(c), size=n)
    graded = rng.integers(0, 4, size=(n, c)).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, size=(n, c))
    where = rng.uniform(size=(n, c)) < 0.7
    where[1] = False  # a list with no valid item
    where[4] = [True, False, False, False, False]  # a list of one item
    return [
        CheckCase("make_fenchel_young_loss[logsumexp]",
                  make_fenchel_young_loss(jax.nn.logsumexp), _ref_fy_logsumexp,
                  (scores, targets), argnums=(0, 1), custom_vjp=False,
                  extremes=_fy_extremes(False)),
        CheckCase("make_fenchel_young_loss[logsumexp,shift_equivariant]",
                  make_fenchel_young_loss(jax.nn.logsumexp, shift_equivariant=True),
                  _ref_fy_logsumexp, (scores, 2 * targets), argnums=(0, 1),
                  custom_vjp=False, extremes=_fy_extremes(True)),
        CheckCase("ranking_softmax_loss", ranking_softmax_loss, _ref_ranking,
                  (scores, graded), argnums=(0, 1), custom_vjp=False),
        CheckCase("ranking_softmax_loss[reduce_fn=None]", ranking_softmax_loss, _ref_ranking,
                  (scores, graded), {"reduce_fn": None}, argnums=(0, 1), custom_vjp=False,
                  extremes=_ranking_extremes()),
        CheckCase("ranking_softmax_loss[where,weights,sum]", ranking_softmax_loss,
                  _ref_ranking, (scores, graded),
                  {"where": where, "weights": weights, "reduce_fn": jnp.sum},
                  argnums=(0, 1), diff_kwargs=("weights",), custom_vjp=False),
    ]
