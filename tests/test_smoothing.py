"""Tests for jaxloss.smoothing.smooth_labels."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
ONE_HOT = np.eye(5)[RNG.integers(0, 5, size=(2, 3))]  # [2, 3, 5]
MASK = RNG.uniform(size=(2, 3, 5)) < 0.7
MASK[0, 0] = False


def ref(y, alpha, k):
    return (1 - alpha) * y + alpha / k


class SmoothTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_vs_reference_and_optax(self):
        got = self.variant(jaxloss.smooth_labels)(ONE_HOT, 0.1)
        chex.assert_trees_all_close(got, ref(ONE_HOT, 0.1, 5), rtol=1e-6)
        chex.assert_trees_all_close(got, optax.smooth_labels(ONE_HOT, 0.1), rtol=1e-6)
        chex.assert_trees_all_close(jnp.sum(got, -1), np.ones((2, 3)), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_where_and_axis(self):
        got = self.variant(lambda y: jaxloss.smooth_labels(y, 0.2, where=MASK))(ONE_HOT)
        k = MASK.sum(-1, keepdims=True)
        with np.errstate(divide="ignore"):
            want = optax.smooth_labels(ONE_HOT, 0.2, where=MASK)
        rows = k[..., 0] > 0
        chex.assert_trees_all_close(got[rows], np.asarray(want)[rows], rtol=1e-6)
        # The row with no class selected keeps (1 - alpha) y (optax: inf).
        chex.assert_trees_all_close(got[0, 0], 0.8 * ONE_HOT[0, 0], rtol=1e-6)
        got = jaxloss.smooth_labels(ONE_HOT, 0.3, axis=(1, 2))
        chex.assert_trees_all_close(got, ref(ONE_HOT, 0.3, 15), rtol=1e-6)


def test_gradients():
    assert_vjp_matches_reference(jaxloss.smooth_labels, lambda y, a: ref(y, a, 5), ONE_HOT,
                                 np.asarray(0.1), argnums=(0, 1))
    assert_finite_differences(jaxloss.smooth_labels, ONE_HOT, np.asarray(0.1), argnums=(0, 1),
                              order=2)
    g = jax.grad(lambda a: jnp.sum(jaxloss.smooth_labels(ONE_HOT, a, where=MASK)))(0.2)
    k = MASK.sum(-1, keepdims=True)
    want = np.sum(np.where(k > 0, 1 / np.maximum(k, 1), 0) - ONE_HOT)
    chex.assert_trees_all_close(g, want, rtol=1e-6)
    chex.assert_trees_all_close(jax.vmap(jaxloss.smooth_labels, (0, None))(ONE_HOT, 0.1),
                                ref(ONE_HOT, 0.1, 5), rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        jaxloss.smooth_labels(ONE_HOT, 1.5)
    with pytest.raises(TypeError, match="labels"):
        jaxloss.smooth_labels(np.ones((2, 3), np.int32), 0.1)
    with pytest.raises(ValueError, match="where"):
        jaxloss.smooth_labels(ONE_HOT, 0.1, where=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="axis"):
        jaxloss.smooth_labels(ONE_HOT, 0.1, axis=3)
