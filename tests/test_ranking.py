"""Tests for jaxloss.ranking: ranking_softmax_loss (optax's listwise softmax loss)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from absl.testing import parameterized

from jaxloss.ranking import ranking_softmax_loss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 4, 5)) * 2
Y = RNG.integers(0, 4, size=(3, 4, 5)).astype(np.float64)
Y[0, 1] = 0  # a list without relevant items
W = RNG.uniform(0.5, 2.0, size=(3, 4, 5))
MASK = RNG.uniform(size=(3, 4, 5)) < 0.7
MASK[0, 0] = False  # a list with no valid item
MASK[1, 2] = [True, False, False, False, False]  # a list of one item
X32, Y32, W32 = X.astype(np.float32), Y.astype(np.float32), W.astype(np.float32)
OPTAX = optax.losses.ranking_softmax_loss
REDUCE = {"mean": jnp.mean, "sum": jnp.sum, "none": None}


# ----------------------------------------------------------------- naive float64 reference


def ref(x, y, where=None, weights=None, reduce_fn="mean"):
    """Loops over the lists: -sum over the valid items of w y log softmax(valid x)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape)
    valid = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    flat = [(xi[v], yi[v] * wi[v]) for xi, yi, wi, v in
            zip(x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]),
                w.reshape(-1, x.shape[-1]), valid.reshape(-1, x.shape[-1]), strict=True)]
    losses = np.array([
        -np.sum(c * (xv - xv.max() - np.log(np.sum(np.exp(xv - xv.max()))))) if xv.size else 0
        for xv, c in flat]).reshape(x.shape[:-1])
    rows = valid.any(axis=-1)
    if reduce_fn == "none":
        return losses
    if reduce_fn == "sum":
        return losses.sum()
    return losses.sum() / max(rows.sum(), 1)


def ref_jnp(x, y, weights=None, *, where=None, reduce_fn=jnp.mean):
    """The same in jnp, for jax.vjp (all items valid, or rows of valid items)."""
    c = y if weights is None else y * weights
    if where is not None:
        x = jnp.where(where, x, -1e300)
        c = jnp.where(where, c, 0)
    losses = -jnp.sum(c * jax.nn.log_softmax(x, axis=-1), axis=-1)
    if reduce_fn is None:
        return losses
    return jnp.mean(losses) if reduce_fn is jnp.mean else jnp.sum(losses)


def _optax(*args, **kwargs):
    return jax.jit(lambda *a: OPTAX(*a, **kwargs))(*args)


# ----------------------------------------------------------------- values and conformance


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(reduce_fn=tuple(REDUCE), options=("", "where,weights"))
    def test_vs_reference_and_optax(self, reduce_fn, options):
        where = MASK if "where" in options else None
        weights = W32 if "weights" in options else None
        fn = self.variant(lambda x, y: ranking_softmax_loss(
            x, y, where=where, weights=weights, reduce_fn=REDUCE[reduce_fn]))
        got = fn(X32, Y32)
        want = ref(X, Y, where, W if weights is not None else None, reduce_fn)
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(
            got, _optax(X32, Y32, where=where, weights=weights, reduce_fn=REDUCE[reduce_fn]),
            rtol=1e-6, atol=1e-6)


def test_vs_torch_cross_entropy_with_probabilities():
    got = jax.jit(lambda x, y: ranking_softmax_loss(x, y, reduce_fn=None))(X32, Y32)
    want = F.cross_entropy(torch.tensor(X.reshape(12, 5)), torch.tensor(Y.reshape(12, 5)),
                           reduction="none").numpy().reshape(3, 4)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_custom_reduce_fn_called_as_optax():
    def top(a, where=None):
        return jnp.max(a, where=where, initial=0.0)

    for where in (None, MASK):
        got = jax.jit(lambda x, y, w=where: ranking_softmax_loss(x, y, where=w,
                                                                  reduce_fn=top))(X32, Y32)
        chex.assert_trees_all_close(got, _optax(X32, Y32, where=where, reduce_fn=top),
                                    rtol=1e-6)


# ----------------------------------------------------------------- gradients


def _grads(fn, *args):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)),
                                      argnums=tuple(range(len(args)))))(*args)


def test_gradients_vs_float64_reference_and_optax():
    loss = jax.jit(lambda x, y, w: ranking_softmax_loss(x, y, weights=w, reduce_fn=jnp.sum))
    assert_vjp_matches_reference(loss, lambda x, y, w: ref_jnp(x, y, w, reduce_fn=jnp.sum),
                                 X, Y, W, argnums=(0, 1, 2))
    masked = jax.jit(lambda x, y: ranking_softmax_loss(x, y, where=MASK[1], reduce_fn=None))
    assert_vjp_matches_reference(masked, lambda x, y: ref_jnp(x, y, where=MASK[1],
                                                              reduce_fn=None),
                                 X[1], Y[1], argnums=(0, 1))
    assert_finite_differences(loss, X[0], Y[0], W[0], argnums=(0, 1, 2), order=2)
    # d/dx = p sum(c) - c (as optax), d/dy = -w log p, d/dw = -y log p.
    for kwargs in ({"weights": W32}, {"where": MASK, "reduce_fn": None}):
        _, got = _grads(lambda x, y, kw=kwargs: ranking_softmax_loss(x, y, **kw), X32, Y32)
        _, want = _grads(lambda x, y, kw=kwargs: OPTAX(x, y, **kw), X32, Y32)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- extremes

INF = np.inf


def test_minus_inf_logit_of_an_irrelevant_item():
    x = np.array([[2.0, -INF, 3.0], [-INF, 1e30, 1e30]], np.float32)
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    loss, (g_x, g_y) = _grads(lambda a, b: ranking_softmax_loss(a, b, reduce_fn=None), x, y)
    sig = 1 / (1 + np.exp(-1.0))  # softmax of (2, 3): (1 - sig, sig)
    chex.assert_trees_all_close(loss, np.log1p(np.exp(1.0)) + np.log(2.0), rtol=1e-6)
    chex.assert_trees_all_close(g_x, np.array([[-sig, 0, sig], [0, 0.5, -0.5]]), atol=1e-6)
    # -log p: 0 for the absent -inf terms (label 0), log(1 + e) - 1 + 1 = log(1 + e) - 0.
    chex.assert_trees_all_close(
        g_y, np.array([[np.log1p(np.exp(1.0)), 0, np.log1p(np.exp(-1.0))],
                       [0, np.log(2.0), np.log(2.0)]]), rtol=1e-6)
    assert np.isnan(_optax(x, y))  # optax 0.2.8: 0 * -inf


def test_near_float32_max():
    x = np.array([[3e38, -3e38, 0.0], [3e38, -3e38, 0.0]], np.float32)
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.25, 0.0]], np.float32)
    loss, (g_x, g_y) = _grads(lambda a, b: ranking_softmax_loss(a, b, reduce_fn=None), x, y)
    x64 = x.astype(np.float64)
    # Row 0: the top item, loss 0; row 1: 0.25 (m - x_1) = 1.5e38 (m - x_1 itself overflows).
    chex.assert_trees_all_close(loss, 0.25 * (x64[1, 0] - x64[1, 1]), rtol=1e-6)
    chex.assert_trees_all_close(g_x, np.array([[0, 0, 0], [0.25, -0.25, 0]]), atol=0)
    assert np.all(g_y[:, 1] == np.inf)  # -log p = 6e38, beyond float32
    chex.assert_trees_all_close(g_y[:, 2], x[:, 0], rtol=1e-6)
    assert np.isnan(_optax(x[:1], y[:1])) and np.isinf(_optax(x[1:], y[1:]))


def test_empty_lists_and_no_relevance():
    # All labels 0, a list of -inf only, every item masked: loss 0, logits' gradient 0;
    # the labels' is -log p where it is finite, else 0 (no NaN from log(0 / 0)).
    x = np.array([[1.0, 2.0, 3.0], [-INF, -INF, -INF]], np.float32)
    y = np.zeros((2, 3), np.float32)
    neg_log_p = np.log(np.exp(x[0]).sum()) - x[0]
    for masked in (False, True):
        for reduce_fn, n in ((jnp.mean, 2), (None, 1)):
            kw = {"where": np.zeros((2, 3), bool)} if masked else {}
            loss, (g_x, g_y) = _grads(lambda a, b, kw=kw, r=reduce_fn: ranking_softmax_loss(
                a, b, reduce_fn=r, **kw), x, y)
            assert float(loss) == 0.0
            chex.assert_trees_all_close(g_x, np.zeros((2, 3)), atol=0)
            want = np.zeros((2, 3)) if masked else np.stack([neg_log_p / n, np.zeros(3)])
            chex.assert_trees_all_close(g_y, want, rtol=1e-6, atol=0)
    # With a relevant label elsewhere, the mean is over the lists with a valid item.
    where = np.array([[True, True, False], [False, False, False]])
    y1 = np.array([[1.0, 0, 0], [1.0, 0, 0]], np.float32)
    got = jax.jit(lambda a, b: ranking_softmax_loss(a, b, where=where))(x, y1)
    chex.assert_trees_all_close(got, np.log1p(np.exp(1.0)), rtol=1e-6)
    chex.assert_trees_all_close(got, _optax(x, y1, where=where), rtol=1e-6)


def test_low_precision_computes_in_float32():
    x16, y16 = jnp.asarray(X32, jnp.bfloat16), jnp.asarray(Y32, jnp.bfloat16)
    loss, (g_x, _) = _grads(lambda a, b: ranking_softmax_loss(a, b), x16, y16)
    assert loss.dtype == jnp.float32 and g_x.dtype == jnp.bfloat16
    chex.assert_trees_all_close(loss, ref(np.asarray(x16, np.float64),
                                          np.asarray(y16, np.float64)), rtol=1e-5)
    big = jnp.array([[65504, -65504, 1e4]], jnp.float16)
    got = jax.jit(lambda a: ranking_softmax_loss(a, np.array([[0.0, 0.5, 1.0]])))(big)
    chex.assert_trees_all_close(got, 0.5 * 131008 + (65504 - 1e4), rtol=1e-6)


# ----------------------------------------------------------------- composition and errors


def test_vmap_jvp_hessian():
    per_list = jax.jit(jax.vmap(lambda x, y: ranking_softmax_loss(x, y, reduce_fn=None)))
    chex.assert_trees_all_close(per_list(X32, Y32), ref(X, Y, reduce_fn="none"), rtol=1e-5)
    p, total = jax.nn.softmax(X32[0, 0]), Y32[0, 0].sum()
    h = jax.jit(jax.hessian(lambda x: ranking_softmax_loss(x, Y32[0, 0])))(X32[0, 0])
    chex.assert_trees_all_close(h, total * (np.diag(p) - np.outer(p, p)), atol=1e-5)
    _, tangent = jax.jit(lambda x: jax.jvp(lambda a: ranking_softmax_loss(a, Y32[0, 0]),
                                           (x,), (x,)))(X32[0, 0])
    chex.assert_trees_all_close(tangent, (p * total - Y32[0, 0]) @ X32[0, 0], rtol=1e-5)


def test_bad_input():
    with pytest.raises(TypeError, match="logits"):
        ranking_softmax_loss(np.ones((2, 3), np.int32), Y32[0, :2, :3])
    with pytest.raises(ValueError, match="logits"):
        ranking_softmax_loss(np.float32(1.0), np.float32(1.0))
    with pytest.raises(ValueError, match="labels"):
        ranking_softmax_loss(X32, Y32[..., :4])
    with pytest.raises(TypeError, match="where"):
        ranking_softmax_loss(X32, Y32, where=MASK.astype(np.float32))
    with pytest.raises(ValueError, match="weights"):
        ranking_softmax_loss(X32, Y32, weights=np.ones((2, 5)))
    with pytest.raises(TypeError, match="reduce_fn"):
        ranking_softmax_loss(X32, Y32, reduce_fn="mean")
