"""Tests for jaxloss.similarity: log_cosh (exact at every finite error) and the cosine
losses (finite at a zero vector and at huge vectors), PyTorch's cosine_embedding_loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from absl.testing import parameterized

import jaxloss
from jaxloss.similarity import cosine_embedding_loss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
PREDS, TARGETS = RNG.normal(size=(4, 6)) * 2, RNG.normal(size=(4, 6))
MASK = RNG.uniform(size=(4, 6)) < 0.7
A, B = RNG.normal(size=(3, 4, 5)), RNG.normal(size=(3, 4, 5))
VMASK = RNG.uniform(size=(3, 4, 5)) < 0.7
VMASK[0, 0] = False  # a pair with nothing selected


# ----------------------------------------------------------------- naive float64 references


def ref_log_cosh(p, t=None):
    e = np.asarray(p, np.float64) - (0 if t is None else np.asarray(t, np.float64))
    return np.log(np.cosh(e))


def ref_cosine(a, b, epsilon=0.0, axis=-1, where=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if where is not None:
        a, b = np.where(where, a, 0), np.where(where, b, 0)
    na = np.sqrt(np.maximum(np.sum(a * a, axis=axis, keepdims=True), epsilon))
    nb = np.sqrt(np.maximum(np.sum(b * b, axis=axis, keepdims=True), epsilon))
    with np.errstate(invalid="ignore"):  # a pair with nothing selected: 0 / 0
        return np.nan_to_num(np.sum(a / na * (b / nb), axis=axis))


def ref_cosine_jnp(a, b):
    return jnp.sum(a * b, -1) / jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))


def _reduce(losses, reduction, rows=None):
    if rows is not None:
        losses = np.where(rows, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (losses.size if rows is None else rows.sum())


# ----------------------------------------------------------------- log_cosh


class LogCoshTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(reduction=("none", "mean", "sum"), masked=(False, True))
    def test_vs_reference_and_optax(self, reduction, masked):
        where = MASK if masked else None
        got = self.variant(lambda p, t: jaxloss.log_cosh(p, t, where=where,
                                                         reduction=reduction))(PREDS, TARGETS)
        want = ref_log_cosh(PREDS, TARGETS)
        chex.assert_trees_all_close(got, _reduce(want, reduction, where), rtol=1e-5)
        if reduction == "none" and not masked:
            chex.assert_trees_all_close(
                jaxloss.log_cosh(PREDS.astype(np.float32)),
                optax.losses.log_cosh(PREDS.astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_log_cosh_gradients():
    ref = lambda p, t: jnp.log(jnp.cosh(p - t))  # noqa: E731
    assert_vjp_matches_reference(jaxloss.log_cosh, ref, PREDS, TARGETS, argnums=(0, 1))
    # Around the switch between the two forms, |e| = 1.
    e = np.array([-1.0 - 1e-3, -1.0, -1.0 + 1e-3, 0.999, 1.0, 1.001, 0.0, 1e-5])
    assert_vjp_matches_reference(jaxloss.log_cosh, lambda p: jnp.log(jnp.cosh(p)), e)
    assert_finite_differences(jaxloss.log_cosh, PREDS[:2], TARGETS[:2], argnums=(0, 1),
                              order=2)


def test_log_cosh_extremes_exact():
    # Beyond |x| ~ 89 a naive float32 cosh overflows; the loss is |x| - log 2 exactly.
    x = np.array([89.5, -100.0, 500.0, 1e30, -3e38, 3e38], np.float32)
    value, grad = jax.vmap(jax.value_and_grad(jaxloss.log_cosh))(x)
    want = np.abs(x.astype(np.float64)) - np.log(2.0)
    chex.assert_trees_all_close(value, want.astype(np.float32), rtol=1e-7)
    chex.assert_trees_all_close(grad, np.sign(x), rtol=0, atol=0)  # tanh(x) = +-1 exactly
    with np.errstate(over="ignore"):
        assert np.all(np.isinf(np.log(np.cosh(x[:3]))))  # the naive float32 form
    # Near 0 the value keeps its relative precision (x^2/2), where a |x|-based form
    # cancels to 0.
    small = np.array([1e-4, -3e-3, 1e-20, 0.0], np.float32)
    value, grad = jax.vmap(jax.value_and_grad(jaxloss.log_cosh))(small)
    s64 = small.astype(np.float64)
    tiny = float(np.finfo(np.float32).tiny)  # the CPU flushes subnormals (5e-41) to 0
    chex.assert_trees_all_close(value, np.log1p(np.expm1(s64) ** 2 / (2 * np.exp(s64))),
                                rtol=1e-6, atol=tiny)
    chex.assert_trees_all_close(grad, np.tanh(s64), rtol=1e-6, atol=0)
    # bf16 computes in float32.
    out = jaxloss.log_cosh(jnp.asarray([300.0, -1e30], jnp.bfloat16))
    assert out.dtype == jnp.float32
    chex.assert_trees_all_close(out, np.array([300 - np.log(2), 1e30], np.float32),
                                rtol=1e-2)
    # Infinite errors: +inf with gradient +-1; NaN stays NaN.
    v, g = jax.vmap(jax.value_and_grad(jaxloss.log_cosh))(jnp.array([jnp.inf, -jnp.inf,
                                                                     jnp.nan]))
    assert v[0] == v[1] == jnp.inf and g[0] == 1 and g[1] == -1
    assert np.isnan(v[2])


# ----------------------------------------------------------------- cosine


class CosineTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(axis=(-1, (1, 2), None), epsilon=(0.0, 0.5))
    def test_vs_reference_and_optax(self, axis, epsilon):
        fn = self.variant(lambda a, b: jaxloss.cosine_similarity(a, b, epsilon=epsilon,
                                                                 axis=axis))
        got = fn(A * 0.3, B)
        want = ref_cosine(A * 0.3, B, epsilon, axis if axis is not None else (0, 1, 2))
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
        a32, b32 = (A * 0.3).astype(np.float32), B.astype(np.float32)
        chex.assert_trees_all_close(
            jaxloss.cosine_similarity(a32, b32, epsilon=epsilon, axis=axis),
            optax.losses.cosine_similarity(a32, b32, epsilon=epsilon, axis=axis),
            rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(
            jaxloss.cosine_distance(a32, b32, epsilon=epsilon, axis=axis),
            optax.losses.cosine_distance(a32, b32, epsilon=epsilon, axis=axis),
            rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(reduction=("none", "mean", "sum"))
    def test_where_and_reduction(self, reduction):
        fn = self.variant(lambda a, b: (
            jaxloss.cosine_similarity(a, b, where=VMASK, reduction=reduction),
            jaxloss.cosine_distance(a, b, where=VMASK, reduction=reduction)))
        sim, dist = fn(A, B)
        rows = VMASK.any(-1)
        want = ref_cosine(A, B, where=VMASK)
        chex.assert_trees_all_close(sim, _reduce(want, reduction, rows), rtol=1e-6)
        chex.assert_trees_all_close(dist, _reduce(1 - want, reduction, rows), rtol=1e-6)
        if reduction == "none":  # optax's values except on the empty pair (NaN-free 0)
            chex.assert_trees_all_close(
                sim[rows], optax.losses.cosine_similarity(A, B, where=VMASK)[rows], rtol=1e-6)


def test_cosine_gradients():
    assert_vjp_matches_reference(jaxloss.cosine_similarity, ref_cosine_jnp, A, B,
                                 argnums=(0, 1))
    assert_vjp_matches_reference(jaxloss.cosine_distance,
                                 lambda a, b: 1 - ref_cosine_jnp(a, b), A, B, argnums=(0, 1))
    assert_finite_differences(jaxloss.cosine_similarity, A[0], B[0], argnums=(0, 1), order=2)
    # With epsilon active (|a|^2 < epsilon) the norm of a is sqrt(epsilon): optax's clip.
    small = A[0] * 0.05
    eps = 0.25
    ref = lambda a, b, epsilon: jnp.sum(a / jnp.sqrt(jnp.maximum(jnp.sum(a * a, -1, keepdims=True),  # noqa: E731
                                                         eps))
                               * b / jnp.sqrt(jnp.maximum(jnp.sum(b * b, -1, keepdims=True),
                                                          eps)), -1)
    assert_vjp_matches_reference(jaxloss.cosine_similarity, ref, small, B[0], argnums=(0, 1),
                                 epsilon=eps)


def test_cosine_zero_vector_exact():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], np.float32)
    b = np.array([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    sim, (ga, gb) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.cosine_similarity(a, b)), argnums=(0, 1))(a, b)
    assert sim == 0
    assert np.all(np.asarray(ga) == 0) and np.all(np.asarray(gb) == 0)
    dist = jaxloss.cosine_distance(a, b)
    chex.assert_trees_all_close(dist, np.ones(2, np.float32), rtol=0, atol=0)
    # optax 0.2.8: NaN value and gradient at a zero vector.
    assert np.all(np.isnan(optax.losses.cosine_similarity(a, b)))
    assert np.isnan(jax.grad(lambda a: jnp.sum(optax.losses.cosine_similarity(a, b)))(a)).all()
    # With epsilon > 0 both give optax's finite value and gradient (b_hat / sqrt(eps)).
    eps = 1e-4
    g = jax.grad(lambda a: jnp.sum(jaxloss.cosine_similarity(a, b, epsilon=eps)))(a)
    g_optax = jax.grad(lambda a: jnp.sum(optax.losses.cosine_similarity(a, b, epsilon=eps)))(a)
    chex.assert_trees_all_close(g, g_optax, rtol=1e-5)
    chex.assert_trees_all_close(g[0], b[0] / np.linalg.norm(b[0]) / np.sqrt(eps), rtol=1e-5)


def test_cosine_huge_vectors_exact():
    # Squared norms overflow float32 above ~1.8e19: optax then returns 0.
    a = np.array([[1e30, 1e30, 0.0], [3e38, -3e38, 1e38]], np.float32)
    b = np.array([[1e30, 0.0, 0.0], [1.0, -1.0, 0.0]], np.float32)
    sim, (ga, gb) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.cosine_similarity(a, b)), argnums=(0, 1))(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=-1, keepdims=True), np.linalg.norm(b64, axis=-1,
                                                                          keepdims=True)
    s = np.sum(a64 / na * (b64 / nb), -1, keepdims=True)
    chex.assert_trees_all_close(sim, np.sum(s), rtol=1e-6)
    tiny = float(np.finfo(np.float32).tiny)  # row 1's 1e-40 is flushed to 0 on the CPU
    chex.assert_trees_all_close(ga, (b64 / nb - s * a64 / na) / na, rtol=1e-5, atol=tiny)
    # Row 1 cancels to ~1e-16: float32 knows it to its row scale (0.16) times 2^-24.
    chex.assert_trees_all_close(gb, (a64 / na - s * b64 / nb) / nb, rtol=1e-5, atol=1e-7)
    assert abs(float(ga[0, 0]) - 0.5 / np.sqrt(2) * 1e-30) < 1e-36  # a normal float
    assert optax.losses.cosine_similarity(a, b)[0] == 0  # optax's overflow
    bf = jaxloss.cosine_similarity(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    chex.assert_trees_all_close(bf, s[:, 0].astype(np.float32), rtol=1e-2)


def test_vmap_and_jit():
    f = jax.jit(jax.vmap(jaxloss.cosine_distance))
    chex.assert_trees_all_close(f(A, B), jaxloss.cosine_distance(A, B), rtol=1e-6)
    g = jax.vmap(jax.grad(jaxloss.log_cosh))(PREDS[0])
    chex.assert_trees_all_close(g, np.tanh(PREDS[0]), rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="targets"):
        jaxloss.log_cosh(PREDS, np.ones((5, 6)))
    with pytest.raises(ValueError, match="where"):
        jaxloss.log_cosh(PREDS, where=np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="predictions"):
        jaxloss.log_cosh(np.ones(3, np.int32))
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.log_cosh(PREDS, reduction="avg")
    for fn in (jaxloss.cosine_similarity, jaxloss.cosine_distance):
        with pytest.raises(ValueError, match="targets"):
            fn(A, np.ones((3, 4, 6)))
        with pytest.raises(ValueError, match="epsilon"):
            fn(A, B, epsilon=-1.0)
        with pytest.raises(ValueError, match="axis"):
            fn(A, B, axis=3)
        with pytest.raises(ValueError, match="reduction"):
            fn(A, B, reduction="avg")


# ----------------------------------------------------------------- cosine_embedding_loss
# PyTorch's CosineEmbeddingLoss: eps = 1e-12 added to each squared norm.

E_RNG = np.random.default_rng(1)
E1, E2 = E_RNG.normal(size=(6, 4)), E_RNG.normal(size=(6, 4))
E_Y = np.array([1.0, -1.0, 1.0, -1.0, 0.0, -1.0])  # 0: neither, loss 0 (PyTorch's)
E_ROWS = np.array([True, True, False, True, True, True])
E_MARGIN = 0.1


def ref_cosine_embedding(a, b, y, margin=0.0, xp=np):
    eps = 1e-12
    c = xp.sum(a * b, -1) / xp.sqrt((xp.sum(a * a, -1) + eps) * (xp.sum(b * b, -1) + eps))
    return xp.where(y == 1, 1 - c, 0) + xp.where(y == -1, xp.maximum(c - margin, 0), 0)


def _torch_cosine_embedding(a, b, y, **kwargs):
    ta, tb = (torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (a, b))
    out = torch.nn.functional.cosine_embedding_loss(ta, tb, torch.tensor(y), **kwargs)
    out.sum().backward()
    return out.detach().numpy(), (ta.grad.numpy(), tb.grad.numpy())


class CosineEmbeddingTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_vs_reference(self):
        fn = self.variant(lambda a, b: {r: cosine_embedding_loss(
            a, b, E_Y, margin=E_MARGIN, where=E_ROWS, reduction=r)
            for r in ("none", "mean", "sum")} | {"plain": cosine_embedding_loss(a, b, E_Y)})
        got = fn(E1, E2)
        want = ref_cosine_embedding(E1, E2, E_Y, E_MARGIN)
        assert want[4] == 0 and (want[E_Y == -1] > 0).any() and (want[E_Y == -1] == 0).any()
        chex.assert_trees_all_close(got["none"], np.where(E_ROWS, want, 0), rtol=1e-6)
        chex.assert_trees_all_close(got["sum"], want[E_ROWS].sum(), rtol=1e-6)
        chex.assert_trees_all_close(got["mean"], want[E_ROWS].mean(), rtol=1e-6)
        chex.assert_trees_all_close(got["plain"], ref_cosine_embedding(E1, E2, E_Y), rtol=1e-6)


jitted_cosine_embedding = jax.jit(cosine_embedding_loss, static_argnames="reduction")


def test_cosine_embedding_vs_torch(x64):
    """Values (every reduction) and gradients w.r.t. both inputs equal PyTorch's in
    float64, zero vectors and the tie at the margin included."""
    a, b = E1.copy(), E2.copy()
    a[0] = 0  # y = 1: loss 1, gradient -b_hat / sqrt(eps)
    b[1] = 0  # y = -1: cos 0 < margin
    y = E_Y.copy()
    out, pullback = jax.vjp(lambda a, b: jitted_cosine_embedding(a, b, y, margin=E_MARGIN),
                            a, b)
    want, want_grads = _torch_cosine_embedding(a, b, y, margin=E_MARGIN, reduction="none")
    chex.assert_trees_all_close(out, want, rtol=1e-12, atol=1e-15)
    # The zero vector's gradient is ~1e6; PyTorch forms it from sqrt(product), a few
    # ulps apart.
    chex.assert_trees_all_close(pullback(jnp.ones_like(out)), want_grads, rtol=1e-8,
                                atol=1e-12)
    assert abs(want_grads[0][0]).max() > 1e5
    for reduction in ("mean", "sum"):
        chex.assert_trees_all_close(
            jitted_cosine_embedding(a, b, y, margin=E_MARGIN, reduction=reduction),
            _torch_cosine_embedding(a, b, y, margin=E_MARGIN, reduction=reduction)[0],
            rtol=1e-12)
    # The tie cos = margin = 0: PyTorch's clamp_min passes the whole gradient.
    ta, tb = np.array([[2.0, 0.0]]), np.array([[0.0, 3.0]])
    g = jax.grad(lambda a, b: jnp.sum(jitted_cosine_embedding(a, b, np.array([-1.0]))),
                 argnums=(0, 1))(ta, tb)
    want_g = _torch_cosine_embedding(ta, tb, np.array([-1.0]), reduction="none")[1]
    chex.assert_trees_all_close(g, want_g, rtol=1e-12)
    chex.assert_trees_all_close(g, (np.array([[0.0, 0.5]]), np.array([[1 / 3, 0.0]])),
                                rtol=1e-9)


def test_cosine_embedding_gradients(x64):
    ref = lambda a, b, y, margin, **_: ref_cosine_embedding(a, b, y, margin, jnp)  # noqa: E731
    assert_vjp_matches_reference(cosine_embedding_loss, ref, E1, E2, E_Y, argnums=(0, 1),
                                 margin=np.float64(E_MARGIN), diff_kwargs=("margin",))
    assert_finite_differences(cosine_embedding_loss, E1, E2, E_Y, argnums=(0, 1), order=1,
                              margin=E_MARGIN)


def test_cosine_embedding_extremes_exact():
    f32 = np.float32
    # Row 0: a zero vector (y = 1): loss 1, gradient -b / (sqrt(eps) |b|) w.r.t. a, 0
    # w.r.t. b. Rows 1-2: huge vectors, whose squared norms overflow float32. Row 3: y = 2.
    a = np.array([[0.0, 0.0, 0.0], [1e30, 1e30, 0.0], [3e38, -3e38, 1e38], [1.0, 2.0, 3.0]],
                 f32)
    b = np.array([[1.0, -2.0, 2.0], [1e30, 0.0, 0.0], [1.0, -1.0, 0.0], [1.0, 0.0, 0.0]], f32)
    y = np.array([1.0, 1.0, -1.0, 2.0], f32)
    out, pullback = jax.vjp(jax.jit(cosine_embedding_loss), a, b, y)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=-1), np.linalg.norm(b64, axis=-1)
    cos = np.sum(a64 * b64, -1) / np.where(na * nb > 0, na * nb, 1)
    chex.assert_trees_all_close(out, np.array([1.0, 1 - cos[1], cos[2], 0.0], f32),
                                rtol=1e-6)
    ga, gb, gy = pullback(jnp.ones(4, f32))
    chex.assert_trees_all_close(ga[0], -b[0] / 3 * 1e6, rtol=1e-6)
    assert np.all(np.asarray(gb[0]) == 0) and np.all(np.asarray(gy) == 0)
    chex.assert_tree_all_finite((ga, gb))
    # d(1 - cos)/da for row 1: -(b_hat - cos a_hat) / |a|.
    want = -(b64[1] / nb[1] - cos[1] * a64[1] / na[1]) / na[1]
    chex.assert_trees_all_close(ga[1], want.astype(f32), rtol=1e-5, atol=1e-37)
    # bf16 computes in float32.
    bf = cosine_embedding_loss(jnp.asarray(E1, jnp.bfloat16), jnp.asarray(E2, jnp.bfloat16),
                               E_Y)
    assert bf.dtype == jnp.float32
    e1, e2 = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (E1, E2))
    chex.assert_trees_all_close(bf, ref_cosine_embedding(e1, e2, E_Y), rtol=1e-5, atol=1e-6)


def test_cosine_embedding_vmap_and_bad_input():
    f = jax.jit(jax.vmap(cosine_embedding_loss))
    chex.assert_trees_all_close(f(E1, E2, E_Y), cosine_embedding_loss(E1, E2, E_Y), rtol=1e-6)
    with pytest.raises(ValueError, match="input2"):
        cosine_embedding_loss(E1, E2[:, :3], E_Y)
    with pytest.raises(ValueError, match="targets"):
        cosine_embedding_loss(E1, E2, E_Y[:4])
    with pytest.raises(ValueError, match="where"):
        cosine_embedding_loss(E1, E2, E_Y, where=E_ROWS[:3])
    with pytest.raises(TypeError, match="input1"):
        cosine_embedding_loss(E1.astype(np.int32), E2, E_Y)
    with pytest.raises(ValueError, match="margin must be a scalar"):
        cosine_embedding_loss(E1, E2, E_Y, margin=np.ones(2))
    with pytest.raises(ValueError, match="feature axis"):
        cosine_embedding_loss(np.float32(1.0), np.float32(2.0), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        cosine_embedding_loss(E1, E2, E_Y, reduction="avg")
