"""Tests for jaxloss.sparsemax: optax's sparsemax losses, exact at any magnitude."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jaxloss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
S = (RNG.normal(size=(6, 5)) * 1.5).astype(np.float32)
Y = RNG.integers(0, 5, size=6)
X = (RNG.normal(size=(3, 4)) * 1.5).astype(np.float32)
B = RNG.integers(0, 2, size=(3, 4))
ROWS = np.array([True, False, True, True, False, True])


# ----------------------------------------------------------------- naive float64 references


def ref_binary(x, y):
    z = np.where(np.asarray(y) != 0, -np.asarray(x, np.float64), np.asarray(x, np.float64))
    return np.where(z <= -1, 0.0, np.where(z >= 1, z, (z + 1) ** 2 / 4))


def sparsemax(z):
    """Martins and Astudillo's Algorithm 1, one row at a time, in float64."""
    z = np.asarray(z, np.float64)
    zs = np.sort(z)[::-1]
    k = max(k for k in range(1, len(z) + 1) if 1 + k * zs[k - 1] > zs[:k].sum())
    return np.maximum(z - (zs[:k].sum() - 1) / k, 0)


def ref_multiclass(s, y):
    out = []
    for row, label in zip(np.asarray(s, np.float64), y, strict=True):
        p = sparsemax(row)
        out.append(p @ row - row[label] + 0.5 * (1 - p @ p))
    return np.array(out)


def ref_multiclass_jnp(s, y):
    """The loss with tau from the support, in jnp, for jax.vjp of the reference."""
    z = s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    zs = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, s.shape[-1] + 1)
    size = jnp.sum(1 + k * zs > jnp.cumsum(zs, axis=-1), axis=-1, keepdims=True)
    support = z >= jnp.take_along_axis(zs, size - 1, axis=-1)
    tau = (jnp.sum(jnp.where(support, z, 0), -1, keepdims=True) - 1) / size
    p = jnp.where(support, z - tau, 0)
    return (jnp.sum(p * z, -1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0]
            + 0.5 * (1 - jnp.sum(p * p, -1)))


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_multiclass_vs_reference_and_optax(self):
        got = self.variant(jaxloss.multiclass_sparsemax_loss)(S, Y)
        chex.assert_trees_all_close(got, ref_multiclass(S, Y), rtol=2e-6, atol=1e-6)
        chex.assert_trees_all_close(got, optax.losses.multiclass_sparsemax_loss(S, Y),
                                    rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_binary_vs_reference_and_optax(self):
        got = self.variant(jaxloss.sparsemax_loss)(X, B)
        chex.assert_trees_all_close(got, ref_binary(X, B), rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_close(got, optax.losses.sparsemax_loss(X, B), rtol=0, atol=0)

    @parameterized.parameters("none", "mean", "sum")
    def test_where_and_reduction(self, reduction):
        got = jaxloss.multiclass_sparsemax_loss(S, Y, where=ROWS, reduction=reduction)
        per = np.where(ROWS, ref_multiclass(S, Y), 0)
        want = {"none": per, "sum": per.sum(), "mean": per.sum() / ROWS.sum()}[reduction]
        chex.assert_trees_all_close(got, want, rtol=2e-6, atol=1e-6)
        mask = B.astype(bool)
        got = jaxloss.sparsemax_loss(X, B, where=mask, reduction=reduction)
        per = np.where(mask, ref_binary(X, B), 0)
        want = {"none": per, "sum": per.sum(), "mean": per.sum() / mask.sum()}[reduction]
        chex.assert_trees_all_close(got, want, rtol=2e-6, atol=1e-7)

    def test_batch_shapes(self):
        got = jaxloss.multiclass_sparsemax_loss(S.reshape(2, 3, 5), Y.reshape(2, 3))
        chex.assert_trees_all_close(got, ref_multiclass(S, Y).reshape(2, 3), rtol=2e-6,
                                    atol=1e-6)


def test_gradients_vs_float64_reference():
    assert_vjp_matches_reference(jaxloss.multiclass_sparsemax_loss, ref_multiclass_jnp, S, Y)
    assert_finite_differences(jaxloss.multiclass_sparsemax_loss, S, Y, order=1, eps=1e-7)
    assert_finite_differences(jaxloss.sparsemax_loss, X, B, order=1, eps=1e-7)
    p = np.stack([sparsemax(row) for row in S])
    g = jax.grad(lambda s: jnp.sum(jaxloss.multiclass_sparsemax_loss(s, Y)))(S)
    chex.assert_trees_all_close(g, p - np.eye(5)[Y], atol=1e-6)  # sparsemax - one_hot


def test_extremes_exact():
    s = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], [0.0, -np.inf, 0.5],
                  [3e38, -3e38, 1.0]], np.float32)
    y = np.array([0, 0, 0, 2])
    # Row by row: exact, p = e_0 then e_1; [0, -inf, 0.5] -> p = [1/4, 0, 3/4].
    out = jaxloss.multiclass_sparsemax_loss(s, y)
    np.testing.assert_allclose(out, [0.0, 2e30, 0.5625, 3e38], rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(jaxloss.multiclass_sparsemax_loss(a, y)))(s)
    np.testing.assert_allclose(g, [[0, 0, 0], [-1, 1, 0], [-0.75, 0, 0.75], [1, 0, -1]],
                               atol=1e-7)
    x = np.array([1e30, -1e30, 1.0, -1.0, 0.5, 3e38], np.float32)
    b = np.array([0, 1, 0, 1, 1, 0])
    value, g = jax.value_and_grad(lambda a: jnp.sum(jaxloss.sparsemax_loss(a, b)))(x)
    np.testing.assert_allclose(jaxloss.sparsemax_loss(x, b),
                               [1e30, 1e30, 1.0, 1.0, 0.0625, 3e38], rtol=1e-7)
    np.testing.assert_array_equal(g, [1.0, -1.0, 1.0, -1.0, -0.25, 1.0])
    bf = jaxloss.multiclass_sparsemax_loss(jnp.asarray(s[:2], jnp.bfloat16), y[:2])
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(bf, [0.0, 2e30], rtol=1e-2)


def test_vmap_jit_hessian():
    f = jax.jit(jax.vmap(jaxloss.multiclass_sparsemax_loss))
    chex.assert_trees_all_close(f(S.reshape(2, 3, 5), Y.reshape(2, 3)),
                                jaxloss.multiclass_sparsemax_loss(S, Y).reshape(2, 3),
                                rtol=1e-6)
    # The Hessian of a row is the Jacobian of sparsemax: diag(s) - s s^T / |support|.
    h = jax.hessian(lambda r: jaxloss.multiclass_sparsemax_loss(r[None], Y[:1])[0])(S[0])
    support = (sparsemax(S[0]) > 0).astype(np.float64)
    chex.assert_trees_all_close(h, np.diag(support) - np.outer(support, support)
                                / support.sum(), atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="labels"):
        jaxloss.multiclass_sparsemax_loss(S, Y[:3])
    with pytest.raises(TypeError, match="labels"):
        jaxloss.multiclass_sparsemax_loss(S, Y.astype(np.float32))
    with pytest.raises(TypeError, match="scores"):
        jaxloss.multiclass_sparsemax_loss(S.astype(np.int32), Y)
    with pytest.raises(ValueError, match="scores"):
        jaxloss.multiclass_sparsemax_loss(np.float32(1.0), Y[0])
    with pytest.raises(ValueError, match="where"):
        jaxloss.multiclass_sparsemax_loss(S, Y, where=np.ones(4, bool))
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.sparsemax_loss(X, B, reduction="avg")
    with pytest.raises(ValueError, match="labels"):
        jaxloss.sparsemax_loss(X, np.ones((3, 5)))
    with pytest.raises(TypeError, match="logits"):
        jaxloss.sparsemax_loss(B, B)
