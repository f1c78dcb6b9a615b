"""Tests for jaxloss.reduce: "none" / "sum" / "mean" with where masks and weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxloss

_RNG = np.random.default_rng(0)
LOSSES = _RNG.uniform(0.1, 3.0, size=(2, 8))
WHERE = np.array(
    [[True, False, True, True, False, True, False, True],
     [False, False, True, True, True, False, True, False]]
)
WEIGHTS = _RNG.uniform(0.5, 2.0, size=(2, 8))


def ref(losses, reduction, where=None, weights=None, axis=None):
    """numpy float64 reference: m·w·x, its sum, and sum(m·w·x) / sum(m·w)."""
    losses = np.asarray(losses, np.float64)
    m = np.ones(losses.shape) if where is None else np.broadcast_to(where, losses.shape)
    w = np.ones(losses.shape) if weights is None else np.broadcast_to(weights, losses.shape)
    m = m.astype(np.float64)
    num = np.where(m > 0, w * losses, 0.0)
    if reduction == "none":
        return num
    total = num.sum(axis=axis)
    if reduction == "sum":
        return total
    count = (m * w).sum(axis=axis)
    return np.where(count == 0, 0.0, total / np.where(count == 0, 1.0, count))


def f32(x):
    return jnp.asarray(x, jnp.float32)


CASES = [
    (f"{r}_{'w' if use_where else ''}{'W' if use_weights else ''}", r, use_where, use_weights)
    for r in ("none", "sum", "mean")
    for use_where in (False, True)
    for use_weights in (False, True)
]


class ReduceValueTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_vs_numpy(self, reduction, use_where, use_weights):
        where = WHERE if use_where else None
        weights = WEIGHTS if use_weights else None
        f = self.variant(
            lambda x, m, w: jaxloss.reduce(x, reduction, where=m, weights=w)
        )
        got = f(f32(LOSSES), where, None if weights is None else f32(weights))
        want = ref(LOSSES, reduction, where, weights)
        chex.assert_shape(got, np.shape(want))
        assert got.dtype == jnp.float32
        chex.assert_trees_all_close(got, np.float32(want), rtol=2e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("sum_0", "sum", 0), ("sum_1", "sum", 1), ("mean_0", "mean", 0),
        ("mean_1", "mean", 1), ("mean_neg", "mean", -1), ("mean_tuple", "mean", (0, 1)),
    )
    def test_axis(self, reduction, axis):
        f = self.variant(
            lambda x, m, w: jaxloss.reduce(x, reduction, where=m, weights=w, axis=axis)
        )
        got = f(f32(LOSSES), WHERE, f32(WEIGHTS))
        want = ref(LOSSES, reduction, WHERE, WEIGHTS, axis=axis)
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, np.float32(want), rtol=2e-6)
        plain = self.variant(lambda x: jaxloss.reduce(x, reduction, axis=axis))(f32(LOSSES))
        chex.assert_trees_all_close(plain, np.float32(ref(LOSSES, reduction, axis=axis)),
                                    rtol=2e-6)


def test_default_reduction_is_mean():
    got = jaxloss.reduce(f32(LOSSES))
    chex.assert_shape(got, ())
    chex.assert_trees_all_close(got, np.float32(LOSSES.mean()), rtol=2e-6)


def test_weighted_mean_is_weight_normalised():
    losses = jnp.array([1.0, 2.0, 3.0, 4.0])
    weights = jnp.array([1.0, 0.0, 3.0, 2.0])
    where = jnp.array([True, True, True, False])
    # sum(w·x)/sum(w) over selected: (1 + 0 + 9) / (1 + 0 + 3) = 2.5
    assert float(jaxloss.reduce(losses, "mean", where=where, weights=weights)) == 2.5
    # not the count of selected entries: (1 + 9) / 3 would be 3.333...
    assert float(jaxloss.reduce(losses, "sum", where=where, weights=weights)) == 10.0
    # Unmasked: (1 + 9 + 8) / 6 = 3
    assert float(jaxloss.reduce(losses, weights=weights)) == 3.0


def test_integer_weights_accepted():
    got = jaxloss.reduce(jnp.array([1.0, 2.0, 4.0]), weights=jnp.array([1, 2, 1]))
    assert got.dtype == jnp.float32
    assert float(got) == 9.0 / 4.0


def test_where_and_weights_broadcast():
    row_mask = np.array([[True], [False]])  # (2, 1)
    col_weights = WEIGHTS[0]  # (8,)
    got = jaxloss.reduce(f32(LOSSES), "mean", where=row_mask, weights=f32(col_weights))
    want = ref(LOSSES, "mean", row_mask, col_weights)
    chex.assert_trees_all_close(got, np.float32(want), rtol=2e-6)
    got = jaxloss.reduce(f32(LOSSES), "none", where=row_mask, weights=f32(col_weights))
    chex.assert_shape(got, LOSSES.shape)
    chex.assert_trees_all_close(got, np.float32(ref(LOSSES, "none", row_mask, col_weights)),
                                rtol=2e-6)
    # A scalar mask / weight.
    got = jaxloss.reduce(f32(LOSSES), "sum", where=True, weights=2.0)
    chex.assert_trees_all_close(got, np.float32(2 * LOSSES.sum()), rtol=2e-6)


@pytest.mark.parametrize("use_weights", [False, True])
def test_masked_entries_exactly_zero_in_none(use_weights):
    losses = np.array(LOSSES, np.float32)
    losses[~WHERE] = np.resize([np.nan, np.inf, -np.inf, 1e30, 7.0], (~WHERE).sum())
    w = f32(WEIGHTS) if use_weights else None
    got = np.asarray(jaxloss.reduce(jnp.asarray(losses), "none", where=WHERE, weights=w))
    chex.assert_shape(got, LOSSES.shape)
    np.testing.assert_array_equal(got[~WHERE], 0.0)
    assert not np.signbit(got[~WHERE]).any()  # +0, not -0
    expected = np.float32(ref(losses, "none", WHERE, WEIGHTS if use_weights else None))
    np.testing.assert_allclose(got[WHERE], expected[WHERE], rtol=2e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("use_weights", [False, True])
def test_non_finite_under_mask_does_not_leak(reduction, bad, use_weights):
    losses = np.array(LOSSES, np.float32)
    losses[~WHERE] = bad
    w = f32(WEIGHTS) if use_weights else None

    def fn(x):
        return jaxloss.reduce(x, reduction, where=WHERE, weights=w).sum()

    value, grad = jax.value_and_grad(fn)(jnp.asarray(losses))
    chex.assert_tree_all_finite((value, grad))
    clean = np.where(WHERE, losses, 0.0)
    want = ref(clean, reduction, WHERE, WEIGHTS if use_weights else None).sum()
    chex.assert_trees_all_close(value, np.float32(want), rtol=2e-6)
    np.testing.assert_array_equal(np.asarray(grad)[~WHERE], 0.0)


@pytest.mark.parametrize("use_weights", [False, True])
def test_gradient(use_weights):
    w = f32(WEIGHTS) if use_weights else None
    wn = WEIGHTS if use_weights else np.ones(LOSSES.shape)
    m = WHERE.astype(np.float64)
    grads = {
        r: jax.grad(lambda x, r=r: jaxloss.reduce(x, r, where=WHERE, weights=w).sum())(
            f32(LOSSES))
        for r in ("none", "sum", "mean")
    }
    chex.assert_trees_all_close(grads["none"], np.float32(m * wn), rtol=1e-6)
    chex.assert_trees_all_close(grads["sum"], np.float32(m * wn), rtol=1e-6)
    chex.assert_trees_all_close(grads["mean"], np.float32(m * wn / (m * wn).sum()), rtol=1e-6)


def test_gradient_wrt_weights(x64):
    losses, weights = jnp.asarray(LOSSES), jnp.asarray(WEIGHTS)
    assert losses.dtype == jnp.float64

    def fn(x, w):
        return jaxloss.reduce(x, "mean", where=WHERE, weights=w)

    def naive(x, w):
        m = jnp.asarray(WHERE)
        return jnp.sum(jnp.where(m, w * x, 0.0)) / jnp.sum(jnp.where(m, w, 0.0))

    value = fn(losses, weights)
    assert value.dtype == jnp.float64
    chex.assert_trees_all_close(value, ref(LOSSES, "mean", WHERE, WEIGHTS), rtol=1e-14)
    got = jax.grad(fn, argnums=(0, 1))(losses, weights)
    want = jax.grad(naive, argnums=(0, 1))(losses, weights)
    chex.assert_trees_all_close(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", ["all_masked", "zero_weights", "both"])
def test_empty_selection(case):
    where = np.zeros(LOSSES.shape, bool) if case in ("all_masked", "both") else None
    weights = jnp.zeros(LOSSES.shape) if case in ("zero_weights", "both") else None

    def fn(x):
        return jaxloss.reduce(x, "mean", where=where, weights=weights)

    value, grad = jax.value_and_grad(fn)(f32(LOSSES))
    chex.assert_tree_all_finite((value, grad))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(LOSSES.shape, np.float32))
    assert float(jaxloss.reduce(f32(LOSSES), "sum", where=where, weights=weights)) == 0.0


def test_empty_row_with_axis():
    where = WHERE.copy()
    where[1] = False

    def fn(x):
        return jaxloss.reduce(x, "mean", where=where, axis=1)

    rows = jax.jit(fn)(f32(LOSSES))
    chex.assert_shape(rows, (2,))
    assert float(rows[1]) == 0.0
    chex.assert_trees_all_close(rows, np.float32(ref(LOSSES, "mean", where, axis=1)), rtol=2e-6)
    grad = jax.grad(lambda x: fn(x).sum())(f32(LOSSES))
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(np.asarray(grad[1]), np.zeros(8, np.float32))
    chex.assert_trees_all_close(grad[0], np.float32(WHERE[0] / WHERE[0].sum()), rtol=1e-6)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_low_precision_losses_give_float32(dtype, reduction):
    losses = jnp.asarray(LOSSES, dtype)

    def fn(x):
        return jaxloss.reduce(x, reduction, where=WHERE, weights=f32(WEIGHTS))

    value = fn(losses)
    assert value.dtype == jnp.float32
    want = ref(np.asarray(losses, np.float64), reduction, WHERE, WEIGHTS)
    chex.assert_trees_all_close(value, np.float32(want), rtol=1e-6)
    grad = jax.grad(lambda x: fn(x).sum())(losses)
    assert grad.dtype == dtype


def test_low_precision_sum_accumulates_in_float32():
    # 4096 ones: a bf16 accumulator would stall at 256.
    ones = jnp.ones(4096, jnp.bfloat16)
    got = jaxloss.reduce(ones, "sum")
    assert got.dtype == jnp.float32
    assert float(got) == 4096.0


def test_float64_stays_float64(x64):
    got = jaxloss.reduce(jnp.asarray(LOSSES), "mean", where=WHERE)
    assert got.dtype == jnp.float64
    chex.assert_trees_all_close(got, ref(LOSSES, "mean", WHERE), rtol=1e-15)


def test_vmap_matches_axis():
    f = jax.vmap(lambda x, m, w: jaxloss.reduce(x, "mean", where=m, weights=w))
    got = f(f32(LOSSES), jnp.asarray(WHERE), f32(WEIGHTS))
    want = jaxloss.reduce(f32(LOSSES), "mean", where=WHERE, weights=f32(WEIGHTS), axis=1)
    chex.assert_trees_all_close(got, want, rtol=1e-6)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, 1])
def test_unknown_reduction(reduction):
    with pytest.raises(ValueError, match="reduction"):
        jaxloss.reduce(f32(LOSSES), reduction)


@pytest.mark.parametrize("where", [np.ones((2, 8), np.int32), np.ones((2, 8), np.float32)])
def test_where_must_be_bool(where):
    with pytest.raises(TypeError, match="where"):
        jaxloss.reduce(f32(LOSSES), "mean", where=where)
    with pytest.raises(TypeError, match="where"):
        jax.jit(lambda x, m: jaxloss.reduce(x, "mean", where=m))(f32(LOSSES), where)


def test_integer_losses_rejected():
    with pytest.raises(TypeError, match="losses"):
        jaxloss.reduce(np.ones((2, 8), np.int32))


@pytest.mark.parametrize(
    ("where_shape", "weights_shape"),
    [((3,), None), ((2, 4), None), (None, (3, 8)), (None, (2, 8, 1)), ((8, 2), (2, 8))],
)
def test_shapes_must_broadcast_to_losses(where_shape, weights_shape):
    where = None if where_shape is None else np.ones(where_shape, bool)
    weights = None if weights_shape is None else np.ones(weights_shape, np.float32)
    with pytest.raises(ValueError) as info:
        jaxloss.reduce(f32(LOSSES), "mean", where=where, weights=weights)
    message = str(info.value)
    assert "losses" in message
    assert ("where" if where_shape is not None else "weights") in message


def test_mask_may_not_enlarge_losses():
    # (8,) losses with a (2, 8) mask broadcast together, but not *to* the losses.
    with pytest.raises(ValueError, match="where"):
        jaxloss.reduce(f32(LOSSES[0]), "none", where=WHERE)
    with pytest.raises(ValueError, match="weights"):
        jaxloss.reduce(f32(LOSSES[0]), "sum", weights=f32(WEIGHTS))
