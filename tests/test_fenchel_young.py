"""Tests for jaxloss.fenchel_young: make_fenchel_young_loss (optax's), with the
log-sum-exp (the softmax cross-entropy) and a sparsemax conjugate as max functions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from jaxloss.fenchel_young import make_fenchel_young_loss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
S = RNG.normal(size=(3, 4, 5)) * 3
Y = RNG.dirichlet(np.ones(5), size=(3, 4))
LABELS = RNG.integers(0, 5, size=(3, 4))
ONE_HOT = np.eye(5)[LABELS]
S32, Y32 = S.astype(np.float32), Y.astype(np.float32)

LSE = make_fenchel_young_loss(jax.nn.logsumexp)
LSE_SHIFT = make_fenchel_young_loss(jax.nn.logsumexp, shift_equivariant=True)


# ----------------------------------------------------------------- naive float64 references


def ref_lse(s, y):
    """lse(s) - <y, s> in NumPy float64, the max subtracted inside the log."""
    s, y = np.asarray(s, np.float64), np.asarray(y, np.float64)
    m = s.max(axis=-1, keepdims=True)
    return (m[..., 0] + np.log(np.exp(s - m).sum(axis=-1))) - (y * s).sum(axis=-1)


def ref_lse_jnp(s, y):
    return jax.scipy.special.logsumexp(s, axis=-1) - jnp.sum(y * s, axis=-1)


def sparsemax_conjugate(theta):
    r"""max over the simplex of <p, theta> - (|p|^2 - 1) / 2 for one row, exact at any
    magnitude: sparsemax of theta less its max (sorted, thresholded), -inf allowed."""
    m = jax.lax.stop_gradient(jnp.max(theta))
    z = theta - m
    z_sorted = -jnp.sort(-z)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumsum = jnp.cumsum(jnp.where(jnp.isfinite(z_sorted), z_sorted, 0))
    support = jnp.isfinite(z_sorted) & (1 + k * jnp.where(jnp.isfinite(z_sorted), z_sorted,
                                                            0) > cumsum)
    count = jnp.sum(support)
    tau = (cumsum[count - 1] - 1) / count
    p = jnp.where(z > tau, z - tau, 0)
    return m + jnp.sum(p * jnp.where(p > 0, z, 0)) - 0.5 * jnp.sum(p * p) + 0.5


SPARSE = make_fenchel_young_loss(sparsemax_conjugate)
SPARSE_SHIFT = make_fenchel_young_loss(sparsemax_conjugate, shift_equivariant=True)


# ----------------------------------------------------------------- values and conformance


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_logsumexp_vs_reference_optax_and_torch(self):
        for loss in (LSE, LSE_SHIFT):
            got = self.variant(loss)(S32, Y32)
            chex.assert_shape(got, (3, 4))
            chex.assert_trees_all_close(got, ref_lse(S32, Y32), rtol=1e-5, atol=1e-5)
            chex.assert_trees_all_close(
                got, optax.losses.make_fenchel_young_loss(jax.nn.logsumexp)(S32, Y32),
                rtol=1e-5, atol=1e-5)
        # Normalized targets: the softmax cross-entropy of PyTorch (float64).
        want = F.cross_entropy(torch.tensor(S.reshape(12, 5)), torch.tensor(Y.reshape(12, 5)),
                               reduction="none").numpy().reshape(3, 4)
        chex.assert_trees_all_close(self.variant(LSE)(S32, Y32), want, rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_broadcast_targets_and_max(self):
        optax_max = optax.losses.make_fenchel_young_loss(jnp.max)
        for s, y in ((S32, Y32[0, 0]), (S32[0, 0], Y32)):  # either batch shape may be larger
            got = self.variant(make_fenchel_young_loss(jnp.max))(s, y)
            want = optax_max(s, y)
            chex.assert_shape(got, want.shape)
            chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sparsemax_conjugate_is_the_sparsemax_loss(self):
        want = optax.losses.multiclass_sparsemax_loss(S32.reshape(12, 5), LABELS.reshape(12))
        for loss in (SPARSE, SPARSE_SHIFT):
            got = self.variant(loss)(S32, ONE_HOT.astype(np.float32))
            chex.assert_trees_all_close(got.reshape(12), want, rtol=1e-5, atol=1e-5)


def test_args_and_kwargs_reach_max_fun():
    def smooth_max(s, temperature=1.0, bias=0.0):
        return temperature * jax.nn.logsumexp(s / temperature) + bias

    loss = make_fenchel_young_loss(smooth_max)
    t, s, y = 2.0, S32[0], Y32[0]
    want = t * np.log(np.exp(S[0] / t).sum(-1)) - (Y[0] * S[0]).sum(-1)
    chex.assert_trees_all_close(jax.jit(lambda a, b: loss(a, b, temperature=t))(s, y), want,
                                rtol=1e-5)
    chex.assert_trees_all_close(jax.jit(lambda a, b: loss(a, b, t, 1.5))(s, y), want + 1.5,
                                rtol=1e-5)
    # Differentiable in them (autodiff; d/dT of T lse(s/T) = lse(s/T) - <p, s>/T).
    assert_finite_differences(jax.jit(lambda s, y, t: loss(s, y, temperature=t)), S[0, 0],
                              Y[0, 0], 2.0, argnums=(0, 2), order=2)
    # optax 0.2.8 drops keyword arguments and rejects positional ones.
    optax_loss = optax.losses.make_fenchel_young_loss(smooth_max)
    chex.assert_trees_all_close(jax.jit(lambda a, b: optax_loss(a, b, temperature=t))(s, y),
                                jax.jit(loss)(s, y), rtol=1e-6)
    with pytest.raises(TypeError):
        optax_loss(s, y, t)


# ----------------------------------------------------------------- gradients


def test_gradients_vs_float64_reference_and_optax():
    assert_vjp_matches_reference(jax.jit(LSE), ref_lse_jnp, S, Y, argnums=(0, 1))
    assert_vjp_matches_reference(jax.jit(LSE_SHIFT), ref_lse_jnp, S, 2 * Y, argnums=(0, 1))
    assert_finite_differences(jax.jit(LSE_SHIFT), S[0], 2 * Y[0], argnums=(0, 1), order=2)
    # Danskin: d/ds = softmax(s) - y, d/dy = -s.
    g_s, g_y = _value_and_grads(LSE, S32, Y32)[1]
    chex.assert_trees_all_close(g_s, jax.nn.softmax(S32) - Y32, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(g_y, -S32, rtol=0, atol=0)
    optax_g = _value_and_grads(optax.losses.make_fenchel_young_loss(jax.nn.logsumexp), S32,
                               Y32)[1][0]
    chex.assert_trees_all_close(g_s, optax_g, rtol=1e-5, atol=1e-6)
    g_sparse = _value_and_grads(SPARSE, S32, ONE_HOT)[1][0]
    optax_sparse = jax.jit(jax.grad(lambda a: jnp.sum(optax.losses.multiclass_sparsemax_loss(
        a.reshape(12, 5), LABELS.reshape(12)))))(S32)
    chex.assert_trees_all_close(g_sparse, optax_sparse, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- extremes

INF = np.inf
S_INF = np.array([[-INF, 3.0, 3.0], [2.0, -INF, 0.0]], np.float32)
Y_INF = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 0.5]], np.float32)


def _value_and_grads(loss, s, y):
    return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(loss(a, b)), argnums=(0, 1)))(s, y)


def test_minus_inf_scores_with_zero_targets_exact():
    sig = 1 / (1 + np.exp(-2.0))
    want = np.log(2.0) + np.log1p(np.exp(2.0)) - 1
    for loss in (LSE, LSE_SHIFT):
        value, (g_s, g_y) = _value_and_grads(loss, S_INF, Y_INF)
        chex.assert_trees_all_close(value, want, rtol=1e-6)
        chex.assert_trees_all_close(g_s, np.array([[0, 0.5, -0.5], [sig - 0.5, 0, 0.5 - sig]]),
                                    atol=1e-6)
        chex.assert_trees_all_close(g_y, np.array([[0, -3.0, -3.0], [-2.0, 0, 0]]), atol=0)
    # optax 0.2.8: 0 * -inf in <y, s> gives NaN.
    optax_lse = jax.jit(optax.losses.make_fenchel_young_loss(jax.nn.logsumexp))
    assert np.isnan(optax_lse(S_INF, Y_INF)[0])


def test_huge_scores_exact_when_shift_equivariant():
    s = np.array([[-1e30, 1e30, 1e30], [1e30, -1e30, 0.0], [3e38, -3e38, 0.0]], np.float32)
    y = np.array([[0, 0, 1], [1, 0, 0], [0.5, 0.25, 0.25]], np.float32)
    s64 = s.astype(np.float64)
    # Exact: log 2; log(1 + e^-1e30) = 0; 0.25 (m - s_1) + 0.25 (m - s_2) + 0.
    want = np.array([np.log(2.0), 0.0, 0.25 * (s64[2, 0] - s64[2, 1]) + 0.25 * s64[2, 0]])
    # Sparsemax: the tie gives p = (0, 1/2, 1/2), <p, z> - |p|^2 / 2 + 1/2 = 1/4.
    for loss, w in ((LSE_SHIFT, want), (SPARSE_SHIFT, np.array([0.25, *want[1:]]))):
        out, (g_s, g_y) = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))(s, y)
        chex.assert_trees_all_close(out, w, rtol=1e-6)
        chex.assert_trees_all_close(g_y, -s, rtol=0, atol=0)  # -s, even 3e38 from -3e38
        p = np.array([[0, 0.5, 0.5], [1, 0, 0], [1, 0, 0]])
        chex.assert_trees_all_close(g_s, p - y, atol=1e-6)
    # The default formula (optax's) cancels: lse(s) - <y, s> = 1e30 - 1e30 = 0.
    assert float(jax.jit(LSE)(s[0], y[0])) == 0.0
    optax_lse = jax.jit(optax.losses.make_fenchel_young_loss(jax.nn.logsumexp))
    assert float(optax_lse(s[0], y[0])) == 0.0


def test_sparsemax_extremes():
    s = np.array([[1e30, -1e30, 0.0], [-INF, 0.5, 0.0]], np.float32)
    y = np.array([[0, 0, 1], [0, 1, 0]], np.float32)
    value, (g_s, g_y) = _value_and_grads(SPARSE_SHIFT, s, y)
    # Row 0: p = e_0, loss 1e30 - 0; row 1: p = (0, 3/4, 1/4), <p,z> - |p|^2/2 + 1/2 - 0.5.
    p1 = np.array([0, 0.75, 0.25])
    row1 = p1 @ np.array([0, 0.5, 0.0]) - 0.5 * p1 @ p1 + 0.5 - 0.5
    chex.assert_trees_all_close(value, 1e30 + row1, rtol=1e-6)
    chex.assert_trees_all_close(g_s, np.stack([[1, 0, -1], p1 - y[1]]), atol=1e-6)
    chex.assert_trees_all_close(g_y, np.array([[-1e30, 1e30, 0], [0, -0.5, 0]]), atol=0)


def test_bf16_computes_in_float32():
    s16, y16 = jnp.asarray(S32, jnp.bfloat16), jnp.asarray(Y32, jnp.bfloat16)
    out = jax.jit(LSE)(s16, y16)
    assert out.dtype == jnp.float32
    chex.assert_trees_all_close(out, ref_lse(np.asarray(s16, np.float64),
                                             np.asarray(y16, np.float64)), rtol=1e-5, atol=1e-5)
    g = _value_and_grads(LSE_SHIFT, s16, y16)[1][0]
    assert g.dtype == jnp.bfloat16
    big = jnp.array([3e38, -3e38, 1e4], jnp.bfloat16)
    chex.assert_trees_all_close(jax.jit(LSE_SHIFT)(big, jnp.array([0, 0, 1.0])),
                                float(big[0]) - float(big[2]), rtol=1e-6)


# ----------------------------------------------------------------- composition and errors


def test_jit_vmap_jvp_hessian():
    chex.assert_trees_all_close(jax.jit(jax.vmap(LSE_SHIFT))(S32, Y32),
                                ref_lse(S32, Y32), rtol=1e-5, atol=1e-5)
    p = jax.nn.softmax(S32[0, 0])
    for loss in (LSE, LSE_SHIFT):  # d^2/ds^2 = diag(p) - p p^T
        h = jax.jit(jax.hessian(lambda a, f=loss: f(a, Y32[0, 0])))(S32[0, 0])
        chex.assert_trees_all_close(h, np.diag(p) - np.outer(p, p), atol=1e-6)
        _, tangent = jax.jit(lambda a, f=loss: jax.jvp(lambda b: f(b, Y32[0, 0]), (a,), (a,)))(
            S32[0, 0])
        chex.assert_trees_all_close(tangent, (p - Y32[0, 0]) @ S32[0, 0], rtol=1e-5)


def test_bad_input():
    with pytest.raises(TypeError, match="max_fun"):
        make_fenchel_young_loss("logsumexp")
    with pytest.raises(TypeError, match="shift_equivariant"):
        make_fenchel_young_loss(jnp.max, shift_equivariant=1)
    with pytest.raises(TypeError, match="scores"):
        LSE(np.ones((2, 3), np.int32), np.ones((2, 3)))
    with pytest.raises(ValueError, match="scores"):
        LSE(np.float32(1.0), np.ones(3))
    with pytest.raises(ValueError, match="targets"):
        LSE(S32, Y32[..., :4])
    with pytest.raises(ValueError, match="targets"):
        LSE(S32, np.ones((2, 1, 5)))
    with pytest.raises(ValueError, match="max_fun"):
        make_fenchel_young_loss(jax.nn.softmax)(S32, Y32)
