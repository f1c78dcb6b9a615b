"""Tests for jaxloss.focal: sigmoid focal loss, PolyLoss and the safe softmax
cross-entropy (values vs float64 and optax, gradients, logits of +-1e4 and -inf)."""

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
X = (RNG.normal(size=(4, 5)) * 3).astype(np.float32)
Y = RNG.uniform(size=(4, 5)).astype(np.float32)  # soft binary labels
SOFT = RNG.dirichlet(np.ones(5), size=4).astype(np.float32)
MASK = RNG.uniform(size=(4, 5)) < 0.7
MASK[1] = False  # a row with no class


# ----------------------------------------------------------------- naive float64 references


def ref_focal(x, y, alpha=None, gamma=2.0, xp=np):
    p = 1 / (1 + xp.exp(-x))
    ce = -(y * xp.log(p) + (1 - y) * xp.log(1 - p))
    loss = ce * ((1 - y) * p + y * (1 - p)) ** gamma
    return loss if alpha is None else (alpha * y + (1 - alpha) * (1 - y)) * loss


def ref_poly(x, y, epsilon=2.0, xp=np):
    p = xp.exp(x) / xp.sum(xp.exp(x), axis=-1, keepdims=True)
    return -xp.sum(y * xp.log(p), axis=-1) + epsilon * xp.sum(y * (1 - p), axis=-1)


def ref_ce(x, y, xp=np):
    p = xp.exp(x) / xp.sum(xp.exp(x), axis=-1, keepdims=True)
    return -xp.sum(y * xp.log(p), axis=-1)


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((None, 2.0), (0.25, 0.5), (None, 0.0))
    def test_focal(self, alpha, gamma):
        got = self.variant(lambda x, y: jaxloss.sigmoid_focal_loss(x, y, alpha=alpha,
                                                                   gamma=gamma))(X, Y)
        chex.assert_trees_all_close(got, ref_focal(X.astype(np.float64), Y, alpha, gamma),
                                    rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(
            got, optax.losses.sigmoid_focal_loss(X, Y, alpha=alpha, gamma=gamma), rtol=1e-5,
            atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(epsilon=(2.0, -1.0), masked=(False, True))
    def test_poly(self, epsilon, masked):
        where = MASK if masked else None
        got = self.variant(lambda x, y: jaxloss.poly_loss_cross_entropy(
            x, y, epsilon=epsilon, where=where))(X, SOFT)
        want = optax.losses.poly_loss_cross_entropy(X, SOFT, epsilon=epsilon, where=where)
        if where is None:
            chex.assert_trees_all_close(got, ref_poly(X, SOFT, epsilon), rtol=1e-5)
            chex.assert_trees_all_close(got, want, rtol=1e-5)
        else:  # optax's where, except the row with no class: 0 (optax: NaN)
            rows = MASK.any(-1)
            chex.assert_trees_all_close(got[rows], want[rows], rtol=1e-5)
            assert got[1] == 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_safe_softmax_cross_entropy(self):
        got = self.variant(jaxloss.safe_softmax_cross_entropy)(X, SOFT)
        chex.assert_trees_all_close(got, ref_ce(X, SOFT), rtol=1e-5)
        chex.assert_trees_all_close(got, optax.losses.safe_softmax_cross_entropy(X, SOFT),
                                    rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions(reduction):
    for fn, args in [(jaxloss.sigmoid_focal_loss, (X, Y)),
                     (jaxloss.poly_loss_cross_entropy, (X, SOFT)),
                     (jaxloss.safe_softmax_cross_entropy, (X, SOFT))]:
        per = np.asarray(fn(*args))
        want = per.mean() if reduction == "mean" else per.sum()
        chex.assert_trees_all_close(fn(*args, reduction=reduction), want, rtol=1e-6)
    m = np.asarray(jaxloss.sigmoid_focal_loss(X, Y, where=MASK, reduction=reduction))
    per = np.where(MASK, ref_focal(X, Y), 0)
    chex.assert_trees_all_close(m, per.sum() / (MASK.sum() if reduction == "mean" else 1),
                                rtol=1e-5)


# ----------------------------------------------------------------- gradients


def test_gradients_vs_float64_reference():
    def focal(x, y, *, alpha, gamma):
        return ref_focal(x, y, alpha, gamma, jnp)

    assert_vjp_matches_reference(jaxloss.sigmoid_focal_loss, focal, X, Y, argnums=(0, 1),
                                 diff_kwargs=("alpha", "gamma"), alpha=np.asarray(0.25),
                                 gamma=np.asarray(1.5))
    assert_vjp_matches_reference(jaxloss.poly_loss_cross_entropy,
                                 lambda x, y, *, epsilon: ref_poly(x, y, epsilon, jnp), X, SOFT,
                                 argnums=(0, 1), diff_kwargs=("epsilon",),
                                 epsilon=np.asarray(2.0))
    assert_vjp_matches_reference(jaxloss.safe_softmax_cross_entropy,
                                 lambda x, y: ref_ce(x, y, jnp), X, SOFT, argnums=(0, 1))
    # Order 1: the second derivative is checked against the reference's Hessian below.
    assert_finite_differences(jaxloss.sigmoid_focal_loss, X[:2], Y[:2], argnums=(0, 1),
                              order=1, gamma=2.0)
    assert_finite_differences(jaxloss.poly_loss_cross_entropy, X[:2], SOFT[:2],
                              argnums=(0, 1), order=1)


# ----------------------------------------------------------------- extremes


def test_focal_at_1e4_exact():
    x = np.array([1e4, -1e4, 1e4, -1e4, 100.0], np.float32)
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0], np.float32)
    out, pullback = jax.vjp(jaxloss.sigmoid_focal_loss, x, y)
    gx, gy = pullback(jnp.ones_like(out))
    chex.assert_trees_all_close(out, np.array([0, 1e4, 1e4, 0, 100], np.float32), rtol=1e-7)
    chex.assert_trees_all_close(gx, np.array([0, -1, 1, 0, 1], np.float32), atol=1e-7)
    chex.assert_trees_all_close(gy, np.array([0, 3e4, -3e4, 0, -300], np.float32), rtol=1e-6)
    # gamma < 1: the factor (1 - p_t)^gamma in log space stays exact.
    v = jaxloss.sigmoid_focal_loss(x, y, gamma=0.5)
    chex.assert_trees_all_close(v, np.array([0, 1e4, 1e4, 0, 100], np.float32), rtol=1e-7)


def test_poly_at_1e4_and_minus_inf_exact():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    out, pullback = jax.vjp(jaxloss.poly_loss_cross_entropy, x, y)
    gx, gy = pullback(jnp.ones_like(out))
    chex.assert_trees_all_close(out, np.array([0.0, 20002.0], np.float32), rtol=1e-7)
    chex.assert_trees_all_close(gx, np.array([[0, 0, 0], [-1, 1, 0]], np.float32), atol=1e-7)
    chex.assert_trees_all_close(gy, np.array([[0, 20002, 10002], [20002, 0, 10002]],
                                             np.float32), rtol=1e-7)
    chex.assert_trees_all_close(out, optax.losses.poly_loss_cross_entropy(x, y), rtol=1e-7)
    # A -inf logit with target 0: optax 0.2.8 gives NaN; here the class does not exist.
    xi = np.array([[-np.inf, 1.0, 0.0]], np.float32)
    yi = np.array([[0.0, 1.0, 0.0]], np.float32)
    assert np.isnan(optax.losses.poly_loss_cross_entropy(xi, yi)[0])
    out, pullback = jax.vjp(jaxloss.poly_loss_cross_entropy, xi, yi)
    p1 = 1 / (1 + np.exp(-1.0))
    want = -np.log(p1) + 2 * (1 - p1)
    chex.assert_trees_all_close(out, np.array([want], np.float32), rtol=1e-6)
    gx, gy = pullback(jnp.ones_like(out))
    # d/dx = (p - y) - 2 p_1 (e_1 - p): exactly 0 at the -inf class. d/dy of that class:
    # the cross-entropy's 0 (the class does not exist) plus the poly term's 2 (1 - 0).
    p = np.array([0.0, p1, 1 - p1])
    chex.assert_trees_all_close(gx[0], (p - [0, 1, 0]) - 2 * p1 * ([0, 1, 0] - p), rtol=1e-6,
                                atol=1e-7)
    assert gx[0, 0] == 0 and gy[0, 0] == 2
    # bf16 logits compute in float32.
    out = jaxloss.poly_loss_cross_entropy(jnp.asarray(x, jnp.bfloat16), y)
    assert out.dtype == jnp.float32
    chex.assert_trees_all_close(out, np.array([0.0, 20002.0], np.float32), rtol=1e-2)


def test_safe_softmax_minus_inf():
    x = np.array([[-np.inf, 1.0, 0.0]], np.float32)
    y = np.array([[0.0, 1.0, 0.0]], np.float32)
    out = jaxloss.safe_softmax_cross_entropy(x, y)
    chex.assert_trees_all_close(out, optax.losses.safe_softmax_cross_entropy(x, y), rtol=1e-6)
    gx, gy = jax.grad(lambda x, y: jnp.sum(jaxloss.safe_softmax_cross_entropy(x, y)),
                      argnums=(0, 1))(x, y)
    chex.assert_tree_all_finite((gx, gy))
    assert gx[0, 0] == 0 and gy[0, 0] == 0  # optax: d/dy of the -inf class is +inf


def test_vmap_and_hessian():
    f = jax.vmap(jaxloss.poly_loss_cross_entropy)
    chex.assert_trees_all_close(f(X, SOFT), jaxloss.poly_loss_cross_entropy(X, SOFT),
                                rtol=1e-6)
    h = jax.hessian(lambda x: jnp.sum(jaxloss.sigmoid_focal_loss(x, Y[0])))(X[0])
    h_ref = jax.hessian(lambda x: jnp.sum(ref_focal(x, Y[0], xp=jnp)))(X[0])
    chex.assert_trees_all_close(h, h_ref, rtol=1e-4, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="labels"):
        jaxloss.sigmoid_focal_loss(X, np.ones((3, 5)))
    with pytest.raises(ValueError, match="gamma"):
        jaxloss.sigmoid_focal_loss(X, Y, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        jaxloss.sigmoid_focal_loss(X, Y, alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        jaxloss.poly_loss_cross_entropy(X, np.ones((3, 5)))
    with pytest.raises(ValueError, match="where"):
        jaxloss.poly_loss_cross_entropy(X, SOFT, where=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.safe_softmax_cross_entropy(X, SOFT, reduction="avg")
    with pytest.raises(TypeError, match="logits"):
        jaxloss.safe_softmax_cross_entropy(np.ones((2, 3), np.int32), SOFT[:2, :3])
