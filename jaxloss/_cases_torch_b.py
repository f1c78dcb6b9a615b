r"""``jaxloss check`` cases of PyTorch's margin and embedding losses that optax lacks:
``multi_margin_loss``, ``multilabel_margin_loss``, ``margin_ranking_loss``,
``hinge_embedding_loss``, ``cosine_embedding_loss`` and
``triplet_margin_with_distance_loss``.

The references are PyTorch's definitions written out in ``jax.numpy`` (run in float64),
with PyTorch's subgradients at the kinks: 0 where its kernels test :math:`z > 0`
(``multi_margin_loss``, ``multilabel_margin_loss``), the whole gradient where it calls
``clamp_min`` (the others). None of them calls jaxloss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.contrastive import triplet_margin_with_distance_loss
from jaxloss.margin import (
    hinge_embedding_loss,
    margin_ranking_loss,
    multi_margin_loss,
    multilabel_margin_loss,
)
from jaxloss.similarity import cosine_embedding_loss
from jaxloss.testing import CheckCase, Extreme

__all__ = ["cases"]

_EPS_COSINE = 1e-12  # added to each squared norm by PyTorch's cosine_embedding_loss
_EPS_PAIRWISE = 1e-6  # added to each difference by PyTorch's pairwise_distance


def _reduce(
    losses: jax.Array, reduction: str = "none", where: jax.Array | None = None,
) -> jax.Array:
    if where is not None:
        losses = jnp.where(where, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    count = losses.size if where is None else jnp.sum(where)
    return jnp.sum(losses) / count


def _relu(z: jax.Array) -> jax.Array:
    """max(0, z) with the subgradient 0 at 0 (PyTorch's kernels: z > 0)."""
    return jnp.where(z > 0, z, 0)


def _clamp_min(z: jax.Array) -> jax.Array:
    """PyTorch's clamp_min(z, 0): the whole gradient at 0."""
    return jnp.where(z < 0, 0, z)


def _ref_multi_margin(
    s: jax.Array, labels: jax.Array, *, p: int = 1, margin: float = 1.0,
    class_weights: jax.Array | None = None, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    c = s.shape[-1]
    one_hot = labels[..., None] == jnp.arange(c)
    s_y = jnp.sum(jnp.where(one_hot, s, 0), axis=-1, keepdims=True)
    h = _relu(margin - s_y + s)
    losses = jnp.sum(jnp.where(one_hot, 0, h**p), axis=-1) / c
    if class_weights is not None:
        losses = losses * jnp.sum(jnp.where(one_hot, class_weights, 0), axis=-1)
    return _reduce(losses, reduction, where)


def _ref_multilabel_margin(
    s: jax.Array, targets: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    c = s.shape[-1]
    listed = jnp.cumsum(targets < 0, axis=-1) == 0  # the entries before the first -1
    is_target = jnp.any(listed[..., :, None] & (targets[..., :, None] == jnp.arange(c)),
                        axis=-2)
    s_j = jnp.take_along_axis(s, jnp.where(listed, targets, 0), axis=-1)
    z = 1 - s_j[..., :, None] + s[..., None, :]
    pairs = listed[..., :, None] & ~is_target[..., None, :]
    return _reduce(jnp.sum(jnp.where(pairs, _relu(z), 0), axis=(-2, -1)) / c, reduction,
                   where)


def _ref_margin_ranking(
    x1: jax.Array, x2: jax.Array, y: jax.Array, *, margin: float = 0.0,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    return _reduce(_clamp_min(-y * (x1 - x2) + margin), reduction, where)


def _ref_hinge_embedding(
    x: jax.Array, y: jax.Array, *, margin: float = 1.0, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    losses = jnp.where(y != 1, _clamp_min(margin - x), 0) + jnp.where(y != -1, x, 0)
    return _reduce(losses, reduction, where)


def _ref_cosine_embedding(
    a: jax.Array, b: jax.Array, y: jax.Array, *, margin: float = 0.0,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    c = jnp.sum(a * b, axis=-1) / jnp.sqrt((jnp.sum(a * a, axis=-1) + _EPS_COSINE)
                                           * (jnp.sum(b * b, axis=-1) + _EPS_COSINE))
    losses = jnp.where(y == 1, 1 - c, 0) + jnp.where(y == -1, _clamp_min(c - margin), 0)
    return _reduce(losses, reduction, where)


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """A user's distance for triplet_margin_with_distance_loss: 1 - cosine similarity."""
    # jnp.linalg.norm is annotated to return Any.
    norm_a: jax.Array = jnp.linalg.norm(a, axis=-1)
    norm_b: jax.Array = jnp.linalg.norm(b, axis=-1)
    return 1 - jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


def _pairwise(a: jax.Array, b: jax.Array) -> jax.Array:
    """torch.nn.functional.pairwise_distance: ||a - b + 1e-6||_2 (never 0 here)."""
    distance: jax.Array = jnp.linalg.norm(a - b + _EPS_PAIRWISE, axis=-1)  # Any in JAX
    return distance


def _ref_triplet_with_distance(
    a: jax.Array, p: jax.Array, n: jax.Array, *,
    distance_function: Callable[..., jax.Array] | None = None, margin: float = 1.0,
    swap: bool = False, where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    d = _pairwise if distance_function is None else distance_function
    negative = d(a, n)
    if swap:
        negative = jnp.minimum(negative, d(p, n))
    return _reduce(_clamp_min(d(a, p) - negative + margin), reduction, where)


def cases(rng: np.random.Generator) -> list[CheckCase]:
    """One or two cases per loss: its options, every differentiable argument (margins
    and class weights too), and extremes with exact limits (+-1e30 and 3e38 scores, the
    kinks, a zero vector, anchor == positive == negative)."""
    f32, third = np.float32, 1 / 3
    n, c = 6, 5
    scores = rng.normal(size=(n, c)) * 2
    labels = rng.integers(0, c, size=n)
    weights = rng.uniform(0.5, 2.0, size=c)
    rows = np.array([True, False, True, True, False, True])
    # Class indices padded with -1; an index after the first -1 does not count.
    targets = np.array([[3, 0, -1, -1, -1], [1, 1, 4, -1, -1], [-1, 0, 1, 2, 3],
                        [2, -1, 4, 4, 4], [0, 1, 2, 3, -1], [4, 2, -1, 0, 0]])
    x1, x2 = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    signs = np.where(rng.uniform(size=(n, 4)) < 0.5, -1.0, 1.0)
    distances = np.abs(rng.normal(size=(n, 4))) * 1.5
    hinge_y = np.where(rng.uniform(size=(n, 4)) < 0.5, -1.0, 1.0)
    hinge_y[0, 0], hinge_y[1, 1] = 0.0, 2.0  # neither 1 nor -1: x + max(0, m - x)
    emb_a, emb_b, emb_n = (rng.normal(size=(n, 4)) for _ in range(3))
    cos_y = np.array([1.0, -1.0, 1.0, -1.0, 0.0, -1.0])

    # Extremes in float32, with exact values and gradients of sum(loss).
    mm_s = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], [3e38, -3e38, 1.0],
                     [1.0, 0.0, 0.5]], f32)  # the last: z_1 = 0 (kink), z_2 = 0.5
    mm_y = np.array([0, 0, 2, 0])
    mm_value = [0.0, 1e30, 1e38, 0.5 / 3]
    mm_grad = np.array([[0, 0, 0], [-2 * third, third, third], [third, 0, -third],
                        [-third, 0, third]])
    mm_margin_grad = np.array(4 * third)  # the active pairs, over C
    ml_s = np.array([[-1e30, 1e30, 0.0, 0.0], [1.0, 0.0, 0.5, 2.0]], f32)
    ml_t = np.array([[0, 2, -1, 1], [0, -1, 2, 2]])  # targets {0, 2} and {0}
    ml_grad = np.array([[-0.5, 0.5, -0.5, 0.5], [-0.5, 0.0, 0.25, 0.25]])
    mr_x1 = np.array([1e30, -1e30, 1.0, 2.0], f32)
    mr_x2 = np.array([0.0, 0.0, 1.0, 0.0], f32)
    mr_y = np.array([1.0, 1.0, 1.0, -1.0], f32)  # the third at the kink z = 0
    he_x = np.array([1e30, 1e30, -1e30, 1.0, 0.5, 3.0], f32)
    he_y = np.array([1.0, -1.0, -1.0, -1.0, -1.0, 0.0], f32)  # the fourth at x = m
    cos_a = np.array([[0.0, 0.0, 0.0], [1e30, 1e30, 0.0], [3e38, -3e38, 1e38],
                      [1.0, 2.0, 3.0]], f32)
    cos_b = np.array([[1.0, -2.0, 2.0], [1e30, 0.0, 0.0], [1.0, -1.0, 0.0],
                      [3.0, 1.0, 2.0]], f32)
    cos_t = np.array([1.0, 1.0, -1.0, -1.0], f32)
    same = np.tile(np.array([1.0, 2.0, 3.0, 4.0], f32), (2, 1))
    huge_a = np.array([[1e30, 0.0, 0.0, 0.0]], f32)
    huge_n = np.array([[-1e30, 0.0, 0.0, 0.0]], f32)
    zero = np.zeros((1, 4), f32)

    return [
        CheckCase("multi_margin_loss", multi_margin_loss, _ref_multi_margin,
                  (scores, labels), {"margin": np.asarray(0.8)}, custom_vjp=False,
                  diff_kwargs=("margin",),
                  extremes=(Extreme((mm_s, mm_y), {"margin": np.asarray(1.0, f32)},
                                    expected=(mm_value, (mm_grad, mm_margin_grad))),)),
        CheckCase("multi_margin_loss[p=2,class_weights,where,mean]", multi_margin_loss,
                  _ref_multi_margin, (scores, labels),
                  {"p": 2, "class_weights": weights, "where": rows, "reduction": "mean"},
                  custom_vjp=False, diff_kwargs=("class_weights",),
                  # z^2 = 4e38 overflows float32; the loss, 5e38 / 3, does not.
                  extremes=(Extreme((np.array([[-1e19, 1e19, 0.0]], f32), np.array([0])),
                                    {"class_weights": np.ones(3, f32), "where": None}),)),
        CheckCase("multilabel_margin_loss", multilabel_margin_loss, _ref_multilabel_margin,
                  (scores, targets), custom_vjp=False,
                  extremes=(Extreme((ml_s, ml_t), expected=([1e30, 2.5 / 4], (ml_grad,))),)),
        CheckCase("multilabel_margin_loss[where,sum]", multilabel_margin_loss,
                  _ref_multilabel_margin, (scores, targets),
                  {"where": rows, "reduction": "sum"}, custom_vjp=False),
        CheckCase("margin_ranking_loss", margin_ranking_loss, _ref_margin_ranking,
                  (x1, x2, signs), {"margin": np.asarray(0.3)}, argnums=(0, 1, 2),
                  diff_kwargs=("margin",), custom_vjp=False,
                  extremes=(Extreme((mr_x1, mr_x2, mr_y), {"margin": np.asarray(0.0, f32)},
                                    expected=([0.0, 1e30, 0.0, 2.0], (
                                        [0, -1, -1, 1], [0, 1, 1, -1], [0, 1e30, 0, -2],
                                        np.asarray(3.0)))),)),
        CheckCase("hinge_embedding_loss[where,mean]", hinge_embedding_loss,
                  _ref_hinge_embedding, (distances, hinge_y),
                  {"margin": np.asarray(1.5), "where": signs > 0, "reduction": "mean"},
                  diff_kwargs=("margin",), custom_vjp=False,
                  extremes=(Extreme((he_x, he_y), {"margin": np.asarray(1.0, f32),
                                                   "where": None, "reduction": "none"},
                                    expected=([1e30, 0, 1e30, 0, 0.5, 3.0], (
                                        [1, 0, -1, -1, -1, 1], np.asarray(3.0)))),)),
        CheckCase("cosine_embedding_loss", cosine_embedding_loss, _ref_cosine_embedding,
                  (emb_a, emb_b, cos_y), {"margin": np.asarray(0.1)}, argnums=(0, 1),
                  diff_kwargs=("margin",), custom_vjp=False,
                  # A zero vector (gradient b_hat / sqrt(eps), PyTorch's), huge vectors
                  # whose squared norms overflow float32.
                  extremes=(Extreme((cos_a, cos_b, cos_t), {"margin": np.asarray(0.5, f32)}),
                            (jnp.asarray(emb_a, jnp.bfloat16), jnp.asarray(emb_b, jnp.bfloat16),
                             cos_y))),
        CheckCase("cosine_embedding_loss[where,sum]", cosine_embedding_loss,
                  _ref_cosine_embedding, (emb_a, emb_b, cos_y),
                  {"margin": np.asarray(-0.2), "where": rows, "reduction": "sum"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("triplet_margin_with_distance_loss[swap]", triplet_margin_with_distance_loss,
                  _ref_triplet_with_distance, (emb_a, emb_b, emb_n),
                  {"margin": np.asarray(1.5), "swap": True}, argnums=(0, 1, 2),
                  diff_kwargs=("margin",),
                  extremes=(
                      # a == p == n: the loss is the margin; every d = ||eps||, whose
                      # gradient entries are +-1/2, and the swap's tied minimum shares its
                      # gradient equally: d/da = 1/2 - 1/4, d/dp = -1/2 - 1/4, d/dn = 1/2.
                      Extreme((same, same, same), {"margin": np.asarray(1.0, f32)},
                              expected=([1.0, 1.0], (np.full((2, 4), 0.25),
                                                     np.full((2, 4), -0.75),
                                                     np.full((2, 4), 0.5),
                                                     np.asarray(2.0)))),
                      # Huge embeddings: the swap picks d(p, n) = d(a, p) = 1e30.
                      Extreme((huge_a, zero, huge_n), {"margin": np.asarray(1.0, f32)},
                              expected=([1.0], ([[1, 0, 0, 0]], [[-2, 0, 0, 0]],
                                                [[1, 0, 0, 0]], np.asarray(1.0)))))),
        CheckCase("triplet_margin_with_distance_loss[cosine,where,mean]",
                  triplet_margin_with_distance_loss, _ref_triplet_with_distance,
                  (emb_a, emb_b, emb_n),
                  {"distance_function": _cosine_distance, "margin": np.asarray(0.5),
                   "where": rows, "reduction": "mean"},
                  argnums=(0, 1, 2), diff_kwargs=("margin",), custom_vjp=False),
    ]
