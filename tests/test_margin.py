"""Tests for jaxloss.margin: binary and multiclass hinge and perceptron losses."""

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
OUTPUTS = RNG.normal(size=(4, 6)) * 2
SIGNS = np.where(RNG.uniform(size=(4, 6)) < 0.5, -1.0, 1.0)
MASK = RNG.uniform(size=(4, 6)) < 0.7
SCORES = RNG.normal(size=(3, 4, 5)) * 2
LABELS = RNG.integers(0, 5, size=(3, 4))
ROWS = RNG.uniform(size=(3, 4)) < 0.7

BINARY = {"hinge_loss": jaxloss.hinge_loss, "perceptron_loss": jaxloss.perceptron_loss}
MULTICLASS = {"multiclass_hinge_loss": jaxloss.multiclass_hinge_loss,
              "multiclass_perceptron_loss": jaxloss.multiclass_perceptron_loss}


# ----------------------------------------------------------------- naive float64 references


def ref_binary(name, f, y, xp=np):
    z = (1 - f * y) if name == "hinge_loss" else -f * y
    return xp.maximum(z, 0)


def ref_multiclass(name, s, labels, xp=np):
    """Loops over the classes: max over j of s_j + margin_j, minus the label's score."""
    c = s.shape[-1]
    one_hot = (labels[..., None] == xp.arange(c)).astype(s.dtype)
    margin = (1 - one_hot) if name == "multiclass_hinge_loss" else 0 * one_hot
    return xp.max(s + margin, axis=-1) - xp.sum(s * one_hot, axis=-1)


def _reduce(losses, reduction, where=None):
    if where is not None:
        losses = np.where(where, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (losses.size if where is None else where.sum())


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=tuple(BINARY), reduction=("none", "mean", "sum"),
                           masked=(False, True))
    def test_binary(self, name, reduction, masked):
        where = MASK if masked else None
        got = self.variant(lambda f, y: BINARY[name](f, y, where=where, reduction=reduction))(
            OUTPUTS, SIGNS)
        want = _reduce(ref_binary(name, OUTPUTS, SIGNS), reduction, where)
        chex.assert_trees_all_close(got, want, rtol=1e-6)
        if reduction == "none" and not masked:
            chex.assert_trees_all_close(got, getattr(optax.losses, name)(OUTPUTS, SIGNS),
                                        rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=tuple(MULTICLASS), reduction=("none", "mean", "sum"),
                           masked=(False, True))
    def test_multiclass(self, name, reduction, masked):
        where = ROWS if masked else None
        got = self.variant(lambda s, y: MULTICLASS[name](s, y, where=where,
                                                         reduction=reduction))(SCORES, LABELS)
        chex.assert_shape(got, (3, 4) if reduction == "none" else ())
        want = _reduce(ref_multiclass(name, SCORES, LABELS), reduction, where)
        chex.assert_trees_all_close(got, want, rtol=1e-6)
        if reduction == "none" and not masked:
            # optax forms (s_y + 1 - 1) - s_y, a rounding error (2e-7) above 0; here it
            # is s_y - s_y = 0 exactly.
            chex.assert_trees_all_close(got, getattr(optax.losses, name)(SCORES, LABELS),
                                        rtol=1e-6, atol=1e-6)


def test_binary_broadcast_targets_like_optax():
    y = SIGNS[0]
    chex.assert_trees_all_close(jaxloss.hinge_loss(OUTPUTS, y),
                                optax.losses.hinge_loss(OUTPUTS, y), rtol=1e-6)


def test_out_of_range_label_like_optax():
    labels = LABELS.copy()
    labels[0, 0] = 7
    for name, fn in MULTICLASS.items():
        chex.assert_trees_all_close(fn(SCORES, labels),
                                    getattr(optax.losses, name)(SCORES, labels), rtol=1e-6,
                                    atol=1e-6)


# ----------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", tuple(BINARY))
def test_binary_gradients(name):
    assert_vjp_matches_reference(BINARY[name], lambda f, y: ref_binary(name, f, y, jnp),
                                 OUTPUTS, SIGNS, argnums=(0, 1))
    assert_finite_differences(BINARY[name], OUTPUTS, SIGNS, argnums=(0, 1), order=2)


@pytest.mark.parametrize("name", tuple(MULTICLASS))
def test_multiclass_gradients(name):
    assert_vjp_matches_reference(MULTICLASS[name],
                                 lambda s, y: ref_multiclass(name, s, y, jnp), SCORES, LABELS)
    assert_finite_differences(MULTICLASS[name], SCORES, LABELS, order=2)


# ----------------------------------------------------------------- extremes and kinks


def test_binary_extremes_and_kinks_exact():
    f = np.array([1e30, -1e30, 1.0, 0.5, 0.0, -3e38], np.float32)
    y = np.array([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    for name, value, g_f, g_y in [
        ("hinge_loss", [1e30, 0, 0, 0.5, 1, 3e38], [1, 0, 0, -1, -1, -1],
         [-1e30, 0, 0, -0.5, 0, 3e38]),
        # perceptron: kink at f y = 0 (the fifth), subgradient 0.
        ("perceptron_loss", [1e30, 0, 0, 0, 0, 3e38], [1, 0, 0, 0, 0, -1],
         [-1e30, 0, 0, 0, 0, 3e38]),
    ]:
        out, pullback = jax.vjp(BINARY[name], f, y)
        chex.assert_trees_all_close(out, np.array(value, np.float32), rtol=1e-7)
        gf, gy = pullback(jnp.ones_like(out))
        chex.assert_trees_all_close(gf, np.array(g_f, np.float32), rtol=0, atol=0)
        chex.assert_trees_all_close(gy, np.array(g_y, np.float32), rtol=1e-7)


def test_multiclass_extremes_exact():
    s = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], [3e38, -3e38, 1.0]], np.float32)
    labels = np.array([0, 0, 2])
    for name, value in [("multiclass_hinge_loss", [0.0, 2e30, 3e38]),
                        ("multiclass_perceptron_loss", [0.0, 2e30, 3e38])]:
        out, g = jax.value_and_grad(lambda s, fn=MULTICLASS[name]: jnp.sum(fn(s, labels)))(s)
        per_row = MULTICLASS[name](s, labels)
        chex.assert_trees_all_close(per_row, np.array(value, np.float32), rtol=1e-7)
        chex.assert_trees_all_close(
            g, np.array([[0, 0, 0], [-1, 1, 0], [1, 0, -1]], np.float32), rtol=0, atol=0)
    # bf16 scores compute in float32.
    out = jaxloss.multiclass_hinge_loss(jnp.asarray(s, jnp.bfloat16), labels)
    assert out.dtype == jnp.float32
    # Tied maxima share the gradient equally (jnp.max's subgradient).
    g = jax.grad(lambda s: jnp.sum(jaxloss.multiclass_perceptron_loss(s, np.array([0]))))(
        np.array([[0.0, 2.0, 2.0]], np.float32))
    chex.assert_trees_all_close(g, np.array([[-1.0, 0.5, 0.5]], np.float32))


def test_masked_nan_does_not_leak():
    s = SCORES.copy()
    s[~ROWS] = np.nan
    g = jax.grad(lambda s: jaxloss.multiclass_hinge_loss(s, LABELS, where=ROWS,
                                                         reduction="sum"))(s)
    chex.assert_tree_all_finite(g)
    f = OUTPUTS.copy()
    f[~MASK] = np.inf
    out = jaxloss.hinge_loss(f, SIGNS, where=MASK)
    chex.assert_tree_all_finite(out)


def test_vmap_jit_hessian():
    f = jax.jit(jax.vmap(jaxloss.multiclass_hinge_loss))
    chex.assert_trees_all_close(f(SCORES, LABELS), jaxloss.multiclass_hinge_loss(SCORES, LABELS))
    h = jax.hessian(lambda f: jnp.sum(jaxloss.hinge_loss(f, SIGNS[0])))(OUTPUTS[0])
    chex.assert_trees_all_close(h, np.zeros((6, 6)))  # piecewise linear


def test_bad_input():
    with pytest.raises(ValueError, match="targets"):
        jaxloss.hinge_loss(OUTPUTS, np.ones((5, 6)))
    with pytest.raises(ValueError, match="targets"):  # perceptron: optax's equal shapes
        jaxloss.perceptron_loss(OUTPUTS, SIGNS[0])
    with pytest.raises(TypeError, match="predictor_outputs"):
        jaxloss.hinge_loss(np.ones(3, np.int32), np.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.hinge_loss(OUTPUTS, SIGNS, reduction="avg")
    for fn in MULTICLASS.values():
        with pytest.raises(ValueError, match="labels"):
            fn(SCORES, LABELS[0])
        with pytest.raises(TypeError, match="labels"):
            fn(SCORES, LABELS.astype(np.float32))
        with pytest.raises(ValueError, match="where"):
            fn(SCORES, LABELS, where=np.ones((2, 4), bool))
