"""Tests for jaxloss.dice: optax's Dice losses, with 0/0 (smooth = 0, empty class) = 0."""

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
X = RNG.normal(size=(2, 4, 3, 3)).astype(np.float32)  # [batch, H, W, classes]
LABELS = RNG.integers(0, 3, size=(2, 4, 3))
T = np.eye(3, dtype=np.float32)[LABELS]
PROBS = RNG.dirichlet(np.ones(3), size=(2, 4, 3)).astype(np.float32)
W = np.array([0.5, 1.0, 2.0], np.float32)


# ----------------------------------------------------------------- naive float64 references


def ref_dice(x, t, *, class_weights=None, smooth=1.0, alpha=0.5, beta=0.5, apply_softmax=True,
             reduction="mean", ignore_background=False, axis=None):
    """The textbook formula in NumPy float64 (no 0/0 in the inputs it is given)."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    if x.ndim == t.ndim - 1:
        x = x[..., None]
    if t.ndim == x.ndim - 1:
        t = t[..., None]
    if not apply_softmax:
        p = x
    elif x.shape[-1] == 1:
        p = 1 / (1 + np.exp(-x))
    else:
        p = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    axes = tuple(range(1, x.ndim - 1)) if axis is None else axis
    inter, ps, ts = (p * t).sum(axis=axes), p.sum(axis=axes), t.sum(axis=axes)
    loss = 1 - (inter + smooth) / (inter + alpha * (ps - inter) + beta * (ts - inter) + smooth)
    if class_weights is not None:
        loss = loss * np.asarray(class_weights, np.float64)
    if ignore_background and x.shape[-1] > 1:
        loss = loss[..., 1:]
    return {"none": loss, "sum": loss.sum(axis=-1), "mean": loss.mean(axis=-1)}[reduction]


def ref_generalized(x, t, *, smooth=1.0, apply_softmax=True, ignore_background=False):
    f = np.asarray(t, np.float64).sum(axis=tuple(range(t.ndim - 1)))
    w = 1 / (f**2 + 1e-7)
    w = w / w.sum() * len(w)
    return ref_dice(x, t, class_weights=w, smooth=smooth, apply_softmax=apply_softmax,
                    reduction="none", ignore_background=ignore_background).mean()


def ref_dice_jnp(x, t, smooth=1.0):
    """The default dice_loss in jnp, for jax.vjp of the reference."""
    p = jax.nn.softmax(x, axis=-1)
    inter, ps, ts = (jnp.sum(v, axis=(1, 2)) for v in (p * t, p, t))
    return jnp.mean(1 - (inter + smooth) / (inter + 0.5 * (ps - inter) + 0.5 * (ts - inter)
                                             + smooth), axis=-1)


OPTIONS = (
    {},
    {"alpha": 0.3, "beta": 0.7, "reduction": "none"},
    {"class_weights": W, "ignore_background": True, "reduction": "sum", "smooth": 0.5},
    {"axis": (0, 1, 2)},
    {"axis": 1, "smooth": 2.0},
)


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*OPTIONS)
    def test_dice_loss_vs_reference_and_optax(self, **kwargs):
        got = self.variant(lambda a, b: jaxloss.dice_loss(a, b, **kwargs))(X, T)
        want = ref_dice(X, T, **kwargs)
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, want, rtol=2e-6, atol=1e-6)
        chex.assert_trees_all_close(got, optax.losses.dice_loss(X, T, **kwargs), rtol=1e-6,
                                    atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(False, True)
    def test_generalized_vs_reference_and_optax(self, ignore_background):
        got = self.variant(lambda a, b: jaxloss.multiclass_generalized_dice_loss(
            a, b, ignore_background=ignore_background, smooth=0.5))(X, T)
        want = ref_generalized(X, T, smooth=0.5, ignore_background=ignore_background)
        chex.assert_trees_all_close(got, want, rtol=2e-6)
        chex.assert_trees_all_close(got, optax.losses.multiclass_generalized_dice_loss(
            X, T, ignore_background=ignore_background, smooth=0.5), rtol=1e-6)

    @chex.variants(without_jit=True)
    @parameterized.parameters(((2, 4, 3), (2, 4, 3)), ((2, 4, 3, 1), (2, 4, 3, 1)),
                              ((2, 4, 3), (2, 4, 3, 1)), ((2, 4, 3, 1), (2, 4, 3)), ((5,), (5,)))
    def test_binary_dice_loss_shapes(self, x_shape, t_shape):
        x = X[..., 0].reshape(-1)[:np.prod(x_shape)].reshape(x_shape)
        t = T[..., 1].reshape(-1)[:np.prod(t_shape)].reshape(t_shape)
        got = self.variant(jaxloss.binary_dice_loss)(x, t)
        want = optax.losses.binary_dice_loss(x, t)
        chex.assert_shape(got, want.shape)
        chex.assert_trees_all_close(got, want, rtol=1e-6)
        x1 = x if x.shape[-1] == 1 and x.ndim > 1 else x[..., None]
        t1 = t if t.shape[-1] == 1 and t.ndim > 1 else t[..., None]
        chex.assert_trees_all_close(got, ref_dice(x1, t1), rtol=2e-6)

    def test_probabilities(self):
        got = jaxloss.dice_loss(PROBS, T, apply_softmax=False, reduction="none")
        chex.assert_trees_all_close(got, ref_dice(PROBS, T, apply_softmax=False,
                                                  reduction="none"), rtol=2e-6)
        p = PROBS / PROBS.sum(axis=-1, keepdims=True)  # optax checks the sums eagerly
        chex.assert_trees_all_close(
            jaxloss.multiclass_generalized_dice_loss(p, T, apply_softmax=False),
            optax.losses.multiclass_generalized_dice_loss(p, T, apply_softmax=False),
            rtol=1e-6)
        # Binary probabilities: optax 0.2.8 rejects any but 1; jaxloss takes them.
        pb, tb = PROBS[..., 0], T[..., 0]
        with pytest.raises(ValueError):
            optax.losses.binary_dice_loss(pb, tb, apply_sigmoid=False)
        chex.assert_trees_all_close(jaxloss.binary_dice_loss(pb, tb, apply_sigmoid=False),
                                    ref_dice(pb[..., None], tb[..., None], apply_softmax=False),
                                    rtol=2e-6)


def test_probabilities_that_do_not_sum_to_one_raise_when_concrete():
    bad = PROBS * 0.5
    for loss in (jaxloss.dice_loss, jaxloss.multiclass_generalized_dice_loss,
                 optax.losses.dice_loss):
        with pytest.raises(ValueError, match="valid probability distributions"):
            loss(bad, T, apply_softmax=False)
    # Traced values cannot be checked: they pass (and so do the logits' defaults).
    got = jax.jit(lambda p: jaxloss.dice_loss(p, T, apply_softmax=False))(bad)
    chex.assert_trees_all_close(got, ref_dice(bad, T, apply_softmax=False), rtol=2e-6)
    jaxloss.dice_loss(bad, T)
    jaxloss.binary_dice_loss(bad[..., 0], T[..., 0], apply_sigmoid=False)  # not checked


# ----------------------------------------------------------------- gradients


def test_gradients_vs_float64_reference():
    assert_vjp_matches_reference(jaxloss.dice_loss, ref_dice_jnp, X, T, argnums=(0, 1))
    x, t = X[:, :2], T[:, :2]
    assert_finite_differences(
        jaxloss.dice_loss, x, t, argnums=(0, 1), order=1,
        diff_kwargs=("class_weights", "smooth", "alpha", "beta"), class_weights=W,
        smooth=np.asarray(0.5), alpha=np.asarray(0.3), beta=np.asarray(0.7))
    assert_finite_differences(jaxloss.multiclass_generalized_dice_loss, x, t, argnums=(0, 1),
                              order=1)
    assert_finite_differences(jaxloss.binary_dice_loss, x[..., 0], t[..., 0], argnums=(0, 1),
                              diff_kwargs=("smooth",), order=1, smooth=np.asarray(1.0))


# ----------------------------------------------------------------- 0/0: empty classes

# Valid probabilities (one-hot) and targets, class 1 empty in both in example 0.
P0 = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]], np.float32)
T0 = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]], np.float32)


def test_empty_class_with_smooth_zero_exact():
    loss = lambda p, t: jaxloss.dice_loss(p, t, smooth=0.0, apply_softmax=False,  # noqa: E731
                                          reduction="none")
    value = loss(P0, T0)
    # Example 0: class 0 exact (1 - 2/2), class 1 0/0 -> 0. Example 1: class 0 has
    # I = 0, P = 1, T = 0 -> 1 - 0/0.5 = 1; class 1 I = 1, P = 1, T = 2 -> 1 - 1/1.5.
    chex.assert_trees_all_close(value, np.array([[0.0, 0.0], [1.0, 1 / 3]]), rtol=1e-6)
    g_p, g_t = jax.grad(lambda p, t: jnp.sum(loss(p, t)), argnums=(0, 1))(P0, T0)
    chex.assert_tree_all_finite((g_p, g_t))
    # Example 0: d(1 - I/D)/dp_i = -(t_i/2 - (1 - t_i)/2)/I with I = 2 on class 0; 0 on
    # the empty class 1.
    np.testing.assert_array_equal(g_p[0], np.array([[-0.25, 0.0], [-0.25, 0.0]]))
    np.testing.assert_array_equal(g_t[0], np.array([[-0.25, 0.0], [-0.25, 0.0]]))
    with np.errstate(invalid="ignore"):
        out = optax.losses.dice_loss(P0, T0, smooth=0.0, apply_softmax=False, reduction="none")
    assert np.isnan(out[0, 1]) and np.isfinite(out[1]).all()
    g = jax.grad(lambda p: jnp.sum(optax.losses.dice_loss(
        p, T0, smooth=0.0, apply_softmax=True, reduction="none")))(P0 * 1e30)
    assert np.isnan(g).any()  # optax: a NaN gradient once probabilities are exactly 0


def test_binary_empty_masks_exact():
    x = np.full((2, 3), -1e30, np.float32)  # sigmoid exactly 0
    t = np.zeros((2, 3), np.float32)
    value, (g_x, g_t) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.binary_dice_loss(a, b, smooth=0.0)), argnums=(0, 1))(x, t)
    assert value == 0.0
    np.testing.assert_array_equal(g_x, 0.0)
    np.testing.assert_array_equal(g_t, 0.0)
    z = np.zeros((2, 3), np.float32)  # all-zero probabilities and targets
    value, g = jax.value_and_grad(lambda a: jnp.sum(jaxloss.binary_dice_loss(
        a, z, smooth=0.0, apply_sigmoid=False)))(z)
    assert value == 0.0
    np.testing.assert_array_equal(g, 0.0)
    assert np.isnan(optax.losses.binary_dice_loss(x, t, smooth=0.0)).all()


def test_alpha_zero_no_targets_exact():
    # alpha = 0 and T = 0: 0 / (0 * P) -> 0 for every prediction.
    value, g = jax.value_and_grad(lambda p: jnp.sum(jaxloss.dice_loss(
        p, np.zeros_like(PROBS), smooth=0.0, alpha=0.0, apply_softmax=False)))(PROBS)
    assert value == 0.0
    np.testing.assert_array_equal(g, 0.0)
    assert np.isnan(optax.losses.dice_loss(PROBS / PROBS.sum(-1, keepdims=True),
                                           np.zeros_like(PROBS), smooth=0.0, alpha=0.0,
                                           apply_softmax=False)).all()


def test_huge_logits_and_bf16():
    big = X * 1e30
    got = jaxloss.dice_loss(big, T, reduction="none")
    hard = np.eye(3)[np.argmax(X, axis=-1)]
    chex.assert_trees_all_close(got, ref_dice(hard, T, apply_softmax=False, reduction="none"),
                                rtol=1e-6)
    chex.assert_tree_all_finite(jax.grad(lambda a: jnp.sum(jaxloss.dice_loss(a, T)))(big))
    xb = jnp.asarray(X, jnp.bfloat16)
    out = jaxloss.dice_loss(xb, T)
    assert out.dtype == jnp.float32
    chex.assert_trees_all_close(out, ref_dice(np.asarray(xb, np.float32), T), rtol=1e-5)
    assert jax.grad(lambda a: jnp.sum(jaxloss.dice_loss(a, T)))(xb).dtype == jnp.bfloat16
    # Integer and boolean targets are cast.
    chex.assert_trees_all_close(jaxloss.dice_loss(X, T.astype(np.int32)),
                                jaxloss.dice_loss(X, T.astype(bool)), rtol=0)


# ----------------------------------------------------------------- composition and errors


def test_vmap_and_jit():
    f = jax.vmap(lambda a, b: jaxloss.dice_loss(a[None], b[None])[0])
    chex.assert_trees_all_close(f(X, T), jaxloss.dice_loss(X, T), rtol=1e-6)
    g = jax.jit(jax.vmap(jaxloss.multiclass_generalized_dice_loss))
    want = np.array([jaxloss.multiclass_generalized_dice_loss(X[i], T[i]) for i in range(2)])
    chex.assert_trees_all_close(g(X, T), want, rtol=1e-6)
    smooth_grad = jax.jit(jax.grad(lambda s: jnp.sum(jaxloss.dice_loss(X, T, smooth=s))))(1.0)
    chex.assert_tree_all_finite(smooth_grad)


def test_bad_input():
    with pytest.raises(ValueError, match="targets"):
        jaxloss.dice_loss(X, T[..., :2])
    with pytest.raises(ValueError, match="targets"):
        jaxloss.multiclass_generalized_dice_loss(X, T[:1])
    with pytest.raises(ValueError, match="targets"):
        jaxloss.binary_dice_loss(X[..., 0], T[:1, ..., 0])
    with pytest.raises(ValueError, match="class_weights"):
        jaxloss.dice_loss(X, T, class_weights=np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="class_weights"):
        jaxloss.dice_loss(X, T, class_weights=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.dice_loss(X, T, reduction="avg")
    with pytest.raises(ValueError, match="axis"):
        jaxloss.dice_loss(X, T, axis=4)
    with pytest.raises(ValueError, match="axis"):
        jaxloss.dice_loss(X, T, axis=(1, -1))
    with pytest.raises(TypeError, match="predictions"):
        jaxloss.dice_loss(X.astype(np.int32), T)
    with pytest.raises(TypeError, match="targets"):
        jaxloss.binary_dice_loss(X[..., 0], "abc")
    with pytest.raises(TypeError, match="smooth"):
        jaxloss.dice_loss(X, T, smooth=np.array(True))
