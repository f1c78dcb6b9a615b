"""Tests for jaxloss.regression: squared_error, l2_loss, huber_loss, MSE and MAE, and
PyTorch's smooth_l1_loss, poisson_nll_loss and gaussian_nll_loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from absl.testing import parameterized
from jax.experimental import checkify
from jax.test_util import check_grads

import jaxloss
from jaxloss.regression import gaussian_nll_loss, poisson_nll_loss, smooth_l1_loss
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

# Errors chosen at least 0.1 away from 0 and from +-delta for every delta in DELTAS, so
# the finite differences of check_grads never straddle a kink.
_ERRORS = np.array(
    [[-2.7, -1.3, -0.6, -0.2, 0.3, 0.8, 1.45, 2.9],
     [1.3, -2.9, 0.2, 2.7, -0.8, -1.45, 0.6, -0.3]]
)
_TARGETS = np.random.default_rng(0).normal(size=_ERRORS.shape)
PREDS = _TARGETS + _ERRORS
TARGETS = _TARGETS
MASK = np.array(
    [[True, False, True, True, False, True, True, False],
     [False, True, True, False, True, True, False, True]]
)
DELTAS = (0.5, 1.0, 2.0)

ELEMENTWISE = ("squared_error", "l2_loss", "huber_loss")
REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------- float64 references


def ref_elementwise(name, p, t, delta=1.0, xp=np):
    e = p - t if t is not None else p
    if name == "squared_error":
        return e**2
    if name == "l2_loss":
        return 0.5 * e**2
    a = xp.abs(e)
    return xp.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta))


def ref_reduce(losses, reduction, where=None, axis=None, xp=np):
    m = xp.ones(losses.shape, bool) if where is None else xp.broadcast_to(where, losses.shape)
    masked = xp.where(m, losses, 0.0)
    if reduction == "none":
        return masked
    total = masked.sum(axis=axis)
    if reduction == "sum":
        return total
    count = m.sum(axis=axis)
    return xp.where(count == 0, 0.0, total / xp.where(count == 0, 1, count))


def ref_mse(p, t, axis=None, where=None, xp=np):
    return ref_reduce((p - t) ** 2, "mean", where, axis, xp)


def ref_mae(p, t, axis=None, where=None, xp=np):
    return ref_reduce(xp.abs(p - t), "mean", where, axis, xp)


def f32(x):
    return jnp.asarray(x, jnp.float32)


def loss_fn(name, delta=1.0):
    """The jaxloss elementwise loss as a function of (p, t, **kw)."""
    if name == "huber_loss":
        return lambda p, t, **kw: jaxloss.huber_loss(p, t, delta=delta, **kw)
    return lambda p, t, **kw: getattr(jaxloss, name)(p, t, **kw)


ELEMENTWISE_CASES = [("squared_error", 1.0), ("l2_loss", 1.0)] + [
    ("huber_loss", d) for d in DELTAS
]
ELEMENTWISE_IDS = [f"{n}-{d}" for n, d in ELEMENTWISE_CASES]


# --------------------------------------------------------------------------- values


class ValueTest(chex.TestCase):
    """Values against the float64 reference and optax, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        *[(f"{n}_{r}_{d}", n, d, r) for n, d in ELEMENTWISE_CASES for r in REDUCTIONS]
    )
    def test_elementwise_vs_reference(self, name, delta, reduction):
        f = self.variant(lambda p, t: loss_fn(name, delta)(p, t, reduction=reduction))
        got = f(f32(PREDS), f32(TARGETS))
        want = ref_reduce(ref_elementwise(name, PREDS, TARGETS, delta), reduction)
        chex.assert_shape(got, want.shape)
        chex.assert_trees_all_close(got, want.astype(np.float32), rtol=2e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        *[(f"{n}_{r}_{d}", n, d, r) for n, d in ELEMENTWISE_CASES for r in REDUCTIONS]
    )
    def test_elementwise_where_vs_reference(self, name, delta, reduction):
        f = self.variant(
            lambda p, t, m: loss_fn(name, delta)(p, t, where=m, reduction=reduction)
        )
        got = f(f32(PREDS), f32(TARGETS), jnp.asarray(MASK))
        want = ref_reduce(ref_elementwise(name, PREDS, TARGETS, delta), reduction, MASK)
        chex.assert_shape(got, want.shape)
        chex.assert_trees_all_close(got, want.astype(np.float32), rtol=2e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("squared_error", "squared_error", 1.0),
        ("l2_loss", "l2_loss", 1.0),
        *[(f"huber_{d}", "huber_loss", d) for d in (0.1, *DELTAS, 5.0)],
    )
    def test_elementwise_vs_optax(self, name, delta):
        f = self.variant(loss_fn(name, delta))
        if name == "huber_loss":
            want = optax.losses.huber_loss(f32(PREDS), f32(TARGETS), delta=delta)
            want_none = optax.losses.huber_loss(f32(PREDS), delta=delta)
            got_none = jaxloss.huber_loss(f32(PREDS), delta=delta)
        else:
            want = getattr(optax.losses, name)(f32(PREDS), f32(TARGETS))
            want_none = getattr(optax.losses, name)(f32(PREDS))
            got_none = getattr(jaxloss, name)(f32(PREDS))
        got = f(f32(PREDS), f32(TARGETS))
        chex.assert_shape(got, PREDS.shape)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
        # targets=None: the predictions are the errors, as in optax.
        chex.assert_trees_all_close(got_none, want_none, rtol=1e-6, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("mse_all", "mse", None),
        ("mse_axis0", "mse", 0),
        ("mse_axis1", "mse", 1),
        ("mse_axis_neg", "mse", -1),
        ("mse_axis_tuple", "mse", (0, 1)),
        ("mae_all", "mae", None),
        ("mae_axis0", "mae", 0),
        ("mae_axis1", "mae", 1),
        ("mae_axis_tuple", "mae", (0, 1)),
    )
    def test_mean_losses_axis_where(self, name, axis):
        loss = getattr(jaxloss, name)
        ref = ref_mse if name == "mse" else ref_mae
        f = self.variant(lambda p, t: loss(p, t, axis=axis))
        fm = self.variant(lambda p, t, m: loss(p, t, axis=axis, where=m))
        want = ref(PREDS, TARGETS, axis=axis)
        got = f(f32(PREDS), f32(TARGETS))
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, np.float32(want), rtol=2e-6)
        want_m = ref(PREDS, TARGETS, axis=axis, where=MASK)
        got_m = fm(f32(PREDS), f32(TARGETS), jnp.asarray(MASK))
        chex.assert_shape(got_m, np.shape(want_m))
        chex.assert_trees_all_close(got_m, np.float32(want_m), rtol=2e-6)
        # The mask selects: the mean is not the unmasked one.
        assert not np.allclose(np.asarray(got_m), np.asarray(got))


def test_mse_worked_example():
    p, t = jnp.array([4.0, 5.0]), jnp.array([3.0, 3.0])
    value = jaxloss.mean_squared_error(p, t)
    assert value.dtype == jnp.float32
    assert float(value) == 2.5
    grad = jax.grad(jaxloss.mean_squared_error)(p, t)
    # 2/n (y_hat - y) = [1, 2]
    np.testing.assert_array_equal(np.asarray(grad), np.array([1.0, 2.0], np.float32))


def test_aliases():
    assert jaxloss.mse is jaxloss.mean_squared_error
    assert jaxloss.mae is jaxloss.mean_absolute_error


def test_mean_losses_match_mean_of_elementwise():
    p, t = f32(PREDS), f32(TARGETS)
    chex.assert_trees_all_close(
        jaxloss.mse(p, t), jnp.mean(optax.losses.squared_error(p, t)), rtol=1e-6
    )
    chex.assert_trees_all_close(jaxloss.mae(p, t), jnp.mean(jnp.abs(p - t)), rtol=1e-6)


def test_mean_losses_keras_axis_minus_one():
    # Keras averages over the last axis: one value per row.
    got = jaxloss.mse(f32(PREDS), f32(TARGETS), axis=-1)
    chex.assert_shape(got, (PREDS.shape[0],))
    chex.assert_trees_all_close(got, np.float32(((PREDS - TARGETS) ** 2).mean(-1)), rtol=2e-6)


def test_targets_broadcast():
    p = f32(PREDS)
    t = f32(TARGETS[0])  # (8,) against (2, 8)
    want = ref_mse(PREDS, np.broadcast_to(TARGETS[0], PREDS.shape))
    chex.assert_trees_all_close(jaxloss.mse(p, t), np.float32(want), rtol=2e-6)
    got = jaxloss.squared_error(p, 0.5)  # a Python scalar target
    chex.assert_trees_all_close(got, np.float32((PREDS - 0.5) ** 2), rtol=2e-6)


def test_integer_targets_accepted():
    got = jaxloss.mse(jnp.array([1.5, 2.5]), jnp.array([1, 3]))
    assert got.dtype == jnp.float32
    assert float(got) == 0.25


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_mean_losses_all_masked(name):
    loss = getattr(jaxloss, name)
    p, t = f32(PREDS), f32(TARGETS)
    none = jnp.zeros(PREDS.shape, bool)
    value, grad = jax.value_and_grad(lambda q: loss(q, t, where=none))(p)
    assert float(value) == 0.0
    chex.assert_tree_all_finite((value, grad))
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(PREDS.shape, np.float32))
    # An empty row with axis: that row is 0, the other row the mean of its selection.
    mask = np.array([[False] * 8, [True] * 8])
    rows = loss(p, t, axis=1, where=mask)
    chex.assert_shape(rows, (2,))
    grad = jax.grad(lambda q: loss(q, t, axis=1, where=mask).sum())(p)
    ref = ref_mse if name == "mse" else ref_mae
    chex.assert_trees_all_close(rows, np.float32(ref(PREDS, TARGETS, axis=1, where=mask)),
                                rtol=2e-6)
    assert float(rows[0]) == 0.0
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(np.asarray(grad[0]), np.zeros(8, np.float32))


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_all_masked(name):
    p, t = f32(PREDS), f32(TARGETS)
    none = jnp.zeros(PREDS.shape, bool)
    for reduction in REDUCTIONS:
        fn = lambda q, r=reduction: loss_fn(name)(q, t, where=none, reduction=r)  # noqa: E731
        value = fn(p)
        np.testing.assert_array_equal(np.asarray(value), np.zeros(np.shape(value), np.float32))
        grad = jax.grad(lambda q, fn=fn: fn(q).sum())(p)
        chex.assert_tree_all_finite(grad)
        np.testing.assert_array_equal(np.asarray(grad), np.zeros(PREDS.shape, np.float32))


@pytest.mark.parametrize("name", ["mse", "mae", *ELEMENTWISE])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_masked_non_finite_does_not_leak(name, bad):
    """A NaN/inf prediction under the mask reaches neither the value nor the gradient."""
    p = np.array([1.0, bad, 3.0, -2.0], np.float32)
    t = np.zeros(4, np.float32)
    m = np.array([True, False, True, True])
    if name in ("mse", "mae"):
        fn = lambda q: getattr(jaxloss, name)(q, t, where=m)  # noqa: E731
    else:
        fn = lambda q: loss_fn(name)(q, t, where=m, reduction="mean")  # noqa: E731
    value, grad = jax.value_and_grad(fn)(jnp.asarray(p))
    chex.assert_tree_all_finite(value)
    clean = np.where(m, p, 0.0)
    chex.assert_trees_all_close(value, fn(jnp.asarray(clean)), rtol=1e-6)
    chex.assert_tree_all_finite(grad)
    assert float(grad[1]) == 0.0


def test_mae_gradient_subgradient_at_zero():
    p = jnp.array([1.0, 2.0, 3.0, 4.0])
    t = jnp.array([1.0, 0.0, 3.0, 5.0])
    grad = jax.grad(jaxloss.mae)(p, t)
    # sign(e)/n, and 0 where the error is 0 (PyTorch's L1 subgradient).
    np.testing.assert_array_equal(np.asarray(grad), np.array([0.0, 0.25, 0.0, -0.25], np.float32))
    grad_t = jax.grad(jaxloss.mae, argnums=1)(p, t)
    np.testing.assert_array_equal(np.asarray(grad_t), -np.asarray(grad))


def test_mae_gradient_is_sign_over_n():
    grad = jax.grad(jaxloss.mae)(f32(PREDS), f32(TARGETS))
    want = np.sign(PREDS - TARGETS) / PREDS.size
    np.testing.assert_array_equal(np.asarray(grad), want.astype(np.float32))
    # With where: sign / (selected count), 0 off the mask.
    grad = jax.grad(lambda p: jaxloss.mae(p, f32(TARGETS), where=MASK))(f32(PREDS))
    want = np.where(MASK, np.sign(PREDS - TARGETS) / MASK.sum(), 0.0)
    np.testing.assert_array_equal(np.asarray(grad), want.astype(np.float32))


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_gradient_at_zero_error(name):
    p = jnp.array([1.0, 2.0])
    grad = jax.grad(lambda q: loss_fn(name)(q, p, reduction="sum"))(p)
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(2, np.float32))


# ------------------------------------------------------------------------ gradients


def _grad_cases():
    cases = []
    # One reduction per loss (both "sum" and "mean" are covered) keeps the compiles few.
    reductions = ("sum", "mean", "mean", "sum", "mean")
    for (name, delta), reduction in zip(ELEMENTWISE_CASES, reductions, strict=True):
        cases.append(pytest.param(
            lambda p, t, m, n=name, d=delta, r=reduction: loss_fn(n, d)(
                p, t, where=m, reduction=r),
            lambda p, t, m, n=name, d=delta, r=reduction: ref_reduce(
                ref_elementwise(n, p, t, d, xp=jnp), r, m, xp=jnp),
            id=f"{name}-{delta}-{reduction}",
        ))
    for axis in (None, 1):
        cases.append(pytest.param(
            lambda p, t, m, a=axis: jaxloss.mse(p, t, axis=a, where=m).sum(),
            lambda p, t, m, a=axis: ref_mse(p, t, a, m, xp=jnp).sum(),
            id=f"mse-axis{axis}",
        ))
        cases.append(pytest.param(
            lambda p, t, m, a=axis: jaxloss.mae(p, t, axis=a, where=m).sum(),
            lambda p, t, m, a=axis: ref_mae(p, t, a, m, xp=jnp).sum(),
            id=f"mae-axis{axis}",
        ))
    return cases


@pytest.mark.parametrize(("fn", "ref"), _grad_cases())
def test_gradients_vs_reference_float64(x64, fn, ref):
    p, t, m = jnp.asarray(PREDS), jnp.asarray(TARGETS), jnp.asarray(MASK)
    assert p.dtype == jnp.float64
    value, got = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(p, t, m)
    want_value, want = jax.jit(jax.value_and_grad(ref, argnums=(0, 1)))(p, t, m)
    assert value.dtype == jnp.float64
    chex.assert_trees_all_close(value, want_value, rtol=1e-13, atol=1e-14)
    chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-14)
    for g in got:
        assert g.dtype == jnp.float64
    # Mask off the grid: gradient 0 there.
    assert not np.any(np.asarray(got[0])[~MASK])


# check_grads is the slowest check: one case per loss (and both MSE/MAE axis forms).
CHECK_IDS = ("squared_error-1.0-sum", "l2_loss-1.0-mean", "huber_loss-0.5-mean",
             "mse-axis1", "mae-axisNone")
CHECK_CASES = [c for c in _grad_cases() if c.id in CHECK_IDS]
assert len(CHECK_CASES) == len(CHECK_IDS)


@pytest.mark.parametrize(("fn", "ref"), CHECK_CASES)
def test_check_grads_order2(x64, fn, ref):
    del ref
    p, t, m = jnp.asarray(PREDS), jnp.asarray(TARGETS), jnp.asarray(MASK)
    check_grads(lambda q, s: fn(q, s, m), (p, t), order=2, modes=["rev"])


def test_huber_gradient_is_clipped_error(x64):
    p, t = jnp.asarray(PREDS), jnp.asarray(TARGETS)
    for delta in DELTAS:
        grad = jax.grad(lambda q, d=delta: jaxloss.huber_loss(q, t, delta=d, reduction="sum"))(p)
        chex.assert_trees_all_close(grad, np.clip(PREDS - TARGETS, -delta, delta), rtol=1e-14)


# --------------------------------------------------------------------------- dtypes


LOSSES_1 = {
    "squared_error": lambda p, t: jaxloss.squared_error(p, t, reduction="mean"),
    "l2_loss": lambda p, t: jaxloss.l2_loss(p, t, reduction="mean"),
    "huber_loss": lambda p, t: jaxloss.huber_loss(p, t, delta=0.5, reduction="mean"),
    "mse": jaxloss.mse,
    "mae": jaxloss.mae,
}


@pytest.mark.parametrize("name", LOSSES_1)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes(name, dtype):
    fn = LOSSES_1[name]
    p = jnp.asarray(PREDS, dtype)
    t = jnp.asarray(TARGETS, dtype)
    value, grad = jax.value_and_grad(fn)(p, t)
    assert value.dtype == jnp.float32
    assert grad.dtype == dtype
    # Accumulated in float32 from the low-precision inputs.
    pp = np.asarray(p, np.float64)
    tt = np.asarray(t, np.float64)
    want = {
        "squared_error": ref_mse(pp, tt),
        "l2_loss": 0.5 * ref_mse(pp, tt),
        "huber_loss": ref_elementwise("huber_loss", pp, tt, 0.5).mean(),
        "mse": ref_mse(pp, tt),
        "mae": ref_mae(pp, tt),
    }[name]
    chex.assert_trees_all_close(value, np.float32(want), rtol=1e-5)
    # Elementwise "none" output is float32 too.
    if name in ELEMENTWISE:
        assert loss_fn(name)(p, t).dtype == jnp.float32


@pytest.mark.parametrize("name", LOSSES_1)
def test_float64_stays_float64(x64, name):
    p, t = jnp.asarray(PREDS), jnp.asarray(TARGETS)
    value, grad = jax.value_and_grad(LOSSES_1[name])(p, t)
    assert value.dtype == jnp.float64
    assert grad.dtype == jnp.float64


@pytest.mark.parametrize("name", LOSSES_1)
def test_float32_result_dtype(name):
    value, grad = jax.value_and_grad(LOSSES_1[name])(f32(PREDS), f32(TARGETS))
    assert value.dtype == jnp.float32
    assert grad.dtype == jnp.float32


# ---------------------------------------------------------------------- composition


@pytest.mark.parametrize("name", LOSSES_1)
def test_vmap_matches_rows(name):
    fn = LOSSES_1[name]
    p, t = f32(PREDS), f32(TARGETS)
    got, got_g = jax.jit(jax.vmap(jax.value_and_grad(fn)))(p, t)
    chex.assert_shape(got, (PREDS.shape[0],))
    chex.assert_shape(got_g, PREDS.shape)
    row = jax.jit(jax.value_and_grad(fn))
    want, want_g = (jnp.stack(x) for x in zip(*[row(p[i], t[i]) for i in range(2)], strict=True))
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    chex.assert_trees_all_close(got_g, want_g, rtol=1e-6)


def test_vmap_mse_equals_axis():
    p, t = f32(PREDS), f32(TARGETS)
    chex.assert_trees_all_close(jax.vmap(jaxloss.mse)(p, t), jaxloss.mse(p, t, axis=1),
                                rtol=1e-6)
    chex.assert_trees_all_close(
        jax.vmap(jaxloss.mae, in_axes=(1, 1))(p, t), jaxloss.mae(p, t, axis=0), rtol=1e-6
    )


def test_jit_of_grad():
    p, t = f32(PREDS), f32(TARGETS)
    for fn in LOSSES_1.values():
        chex.assert_trees_all_close(jax.jit(jax.grad(fn))(p, t), jax.grad(fn)(p, t),
                                    rtol=1e-6)


def test_hessians():
    p, t = f32(PREDS[0]), f32(TARGETS[0])
    n = p.shape[0]
    eye = np.eye(n, dtype=np.float32)

    def l2(q):
        return jaxloss.l2_loss(q, t, reduction="sum")

    def hub(q, d):  # a traced delta: one compilation for every delta
        return jaxloss.huber_loss(q, t, delta=d, reduction="mean")

    @jax.jit
    def hessians(q, d):
        return (jax.hessian(jaxloss.mse)(q, t), jax.hessian(jaxloss.mae)(q, t),
                jax.hessian(l2)(q), jax.hessian(hub)(q, d), jax.jacrev(jax.jacrev(hub))(q, d))

    for delta in DELTAS:
        h_mse, h_mae, h_l2, h_hub, rr_hub = hessians(p, delta)
        chex.assert_trees_all_close(h_mse, 2.0 / n * eye, atol=1e-7)
        chex.assert_trees_all_close(h_mae, 0.0 * eye)
        chex.assert_trees_all_close(h_l2, eye, atol=1e-7)
        inside = (np.abs(PREDS[0] - TARGETS[0]) <= delta).astype(np.float32)
        assert 0 < inside.sum() < n
        chex.assert_trees_all_close(h_hub, np.diag(inside) / n, atol=1e-7)
        chex.assert_trees_all_close(rr_hub, np.diag(inside) / n, atol=1e-7)


# The multi-device tests run on the 4 CPU devices of conftest.py (on_cpu: their
# single-device references too), whatever the default backend is.


def test_pmap_over_devices(on_cpu):
    assert len(on_cpu) == 4
    p = np.asarray(PREDS.reshape(4, 4), np.float32)
    t = np.asarray(TARGETS.reshape(4, 4), np.float32)
    for name, fn in LOSSES_1.items():
        values, grads = jax.pmap(jax.value_and_grad(fn), devices=on_cpu)(p, t)
        chex.assert_shape(values, (4,))
        assert len(values.sharding.device_set) == 4
        want_v, want_g = jax.jit(jax.vmap(jax.value_and_grad(fn)))(p, t)
        chex.assert_trees_all_close(values, want_v, rtol=1e-6, custom_message=name)
        chex.assert_trees_all_close(grads, want_g, rtol=1e-6, custom_message=name)


def test_pmap_mean_across_devices(on_cpu):
    """A global MSE from per-device sums and counts with psum, equal to the unsharded one."""
    p, t = f32(PREDS.reshape(4, 4)), f32(TARGETS.reshape(4, 4))

    def global_mse(q, s):
        local = jaxloss.squared_error(q, s, reduction="sum")
        return jax.lax.psum(local, "d") / jax.lax.psum(q.size, "d")

    got = jax.pmap(global_mse, axis_name="d", devices=on_cpu)(p, t)
    chex.assert_trees_all_close(got, jnp.full(4, jaxloss.mse(p, t)), rtol=1e-6)


def test_sharded_inputs(on_cpu):
    mesh = jax.make_mesh((4,), ("data",), devices=on_cpu)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    p = np.asarray(PREDS.reshape(4, 4), np.float32)
    t = np.asarray(TARGETS.reshape(4, 4), np.float32)
    ps, ts = jax.device_put(p, sharding), jax.device_put(t, sharding)
    assert len(ps.sharding.device_set) == 4

    def every_loss(a, b):
        return {name: jax.value_and_grad(fn)(a, b) for name, fn in LOSSES_1.items()}

    got = jax.jit(every_loss)(ps, ts)
    want = jax.jit(every_loss)(jnp.asarray(p), jnp.asarray(t))
    for name in LOSSES_1:
        chex.assert_shape(got[name][1], p.shape)
        chex.assert_trees_all_close(got[name], want[name], rtol=1e-6, custom_message=name)
    # The unsharded result itself is right (so agreeing with it means something).
    chex.assert_trees_all_close(want["mse"][0], np.float32(ref_mse(p, t)), rtol=2e-6)
    chex.assert_trees_all_close(want["mae"][1], np.float32(np.sign(p - t) / p.size))


def test_sharded_elementwise_none(on_cpu):
    mesh = jax.make_mesh((4,), ("data",), devices=on_cpu)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    p = np.asarray(PREDS.reshape(4, 4), np.float32)
    t = np.asarray(TARGETS.reshape(4, 4), np.float32)
    got = jax.jit(lambda a, b: jaxloss.huber_loss(a, b, delta=0.5))(
        jax.device_put(p, sharding), jax.device_put(t, sharding)
    )
    chex.assert_shape(got, p.shape)
    chex.assert_trees_all_close(got, np.float32(ref_elementwise("huber_loss", p, t, 0.5)),
                                rtol=2e-6)


# ------------------------------------------------------------------------ bad input


ALL_FIVE = {
    "squared_error": jaxloss.squared_error,
    "l2_loss": jaxloss.l2_loss,
    "huber_loss": jaxloss.huber_loss,
    "mse": jaxloss.mse,
    "mae": jaxloss.mae,
}


@pytest.mark.parametrize("name", ALL_FIVE)
def test_integer_predictions_rejected(name):
    with pytest.raises(TypeError, match="predictions"):
        ALL_FIVE[name](np.array([1, 2]), np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="predictions"):
        jax.jit(ALL_FIVE[name])(np.array([1, 2]), np.array([1.0, 2.0]))


@pytest.mark.parametrize("name", ALL_FIVE)
def test_shapes_must_broadcast(name):
    with pytest.raises(ValueError, match="predictions") as info:
        ALL_FIVE[name](np.ones((2, 3)), np.ones((4,)))
    assert "targets" in str(info.value)
    assert "(2, 3)" in str(info.value) and "(4,)" in str(info.value)
    with pytest.raises(ValueError, match="targets"):
        jax.jit(ALL_FIVE[name])(np.ones((2, 3)), np.ones((4,)))


@pytest.mark.parametrize("name", ALL_FIVE)
def test_targets_may_not_broadcast_the_predictions_up(name):
    """A [B, 1] model output against [B] targets would silently give a [B, B] loss."""
    with pytest.raises(ValueError, match=r"targets must broadcast to the shape of "
                                         r"predictions \(4, 1\)"):
        ALL_FIVE[name](np.ones((4, 1)), np.ones((4,)))


@pytest.mark.parametrize("delta", [0.0, -1.0])
def test_huber_delta_must_be_positive(delta):
    with pytest.raises(ValueError, match="delta"):
        jaxloss.huber_loss(np.ones(3), np.zeros(3), delta=delta)
    with pytest.raises(ValueError, match="delta"):
        jax.jit(lambda p, t: jaxloss.huber_loss(p, t, delta=delta))(np.ones(3), np.zeros(3))


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("reduction", ["avg", "Mean", None])
def test_unknown_reduction(name, reduction):
    with pytest.raises(ValueError, match="reduction"):
        ALL_FIVE[name](np.ones(3), np.zeros(3), reduction=reduction)


@pytest.mark.parametrize("name", ALL_FIVE)
def test_where_must_be_bool(name):
    with pytest.raises(TypeError, match="where"):
        ALL_FIVE[name](np.ones(3), np.zeros(3), where=np.array([1, 0, 1]))
    with pytest.raises(TypeError, match="where"):
        ALL_FIVE[name](np.ones(3), np.zeros(3), where=np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("name", ALL_FIVE)
def test_where_shape_must_broadcast(name):
    with pytest.raises(ValueError, match="where"):
        ALL_FIVE[name](np.ones(3), np.zeros(3), where=np.ones(4, bool))


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_mean_losses_need_targets(name):
    with pytest.raises(TypeError, match="targets"):
        ALL_FIVE[name](np.ones(3), None)


# ------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("name", ["huber_loss", "mae"])
def test_large_finite_values_give_finite_loss(name):
    p = jnp.array([1e18, -1e18, 3e18, 0.5], jnp.float32)
    t = jnp.array([0.0, 0.0, -1e18, 0.0], jnp.float32)
    if name == "huber_loss":
        fn = lambda q, s: jaxloss.huber_loss(q, s, delta=1.0, reduction="mean")  # noqa: E731
        elem = jaxloss.huber_loss(p, t)
        chex.assert_tree_all_finite(elem)
        want = ref_elementwise("huber_loss", np.float64(p), np.float64(t))
        chex.assert_trees_all_close(elem, np.float32(want), rtol=1e-6)
    else:
        fn = jaxloss.mae
    value, grad = jax.value_and_grad(fn)(p, t)
    chex.assert_tree_all_finite((value, grad))
    want = (np.abs(np.float64(p) - np.float64(t)) if name == "mae"
            else ref_elementwise("huber_loss", np.float64(p), np.float64(t))).mean()
    chex.assert_trees_all_close(value, np.float32(want), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.array([1, -1, 1, 0.5 if name == "huber_loss"
                                                           else 1], np.float32) / 4)


@pytest.mark.parametrize("name", ["huber_loss", "mae"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_range_finite(name, dtype):
    big = float(jnp.finfo(dtype).max)
    # One extreme element per reduction (two would overflow even a float32 sum).
    p = jnp.array([big, 1.0, -2.0, 0.5], dtype)
    t = jnp.zeros(4, dtype)
    fn = (jaxloss.mae if name == "mae"
          else lambda q, s: jaxloss.huber_loss(q, s, reduction="mean"))
    value, grad = jax.value_and_grad(fn)(p, t)
    chex.assert_tree_all_finite((value, grad))
    assert value.dtype == jnp.float32
    assert grad.dtype == dtype
    if name == "huber_loss":
        elem = jaxloss.huber_loss(jnp.array([big, -big], dtype), jnp.zeros(2, dtype))
        chex.assert_tree_all_finite(elem)
        chex.assert_trees_all_close(elem, np.full(2, big - 0.5, np.float32), rtol=1e-6)


@pytest.mark.parametrize("name", LOSSES_1)
def test_nan_input_gives_nan(name):
    fn = LOSSES_1[name]
    p = jnp.array([1.0, jnp.nan, 2.0, -3.0])
    t = jnp.zeros(4)
    assert np.isnan(float(fn(p, t)))
    assert np.isnan(float(fn(t, p)))
    assert np.isnan(float(jax.jit(fn)(p, t)))
    if name in ELEMENTWISE:
        out = np.asarray(loss_fn(name)(p, t))
        assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2, 3]]))


# ------------------------------------------- PyTorch's smooth L1, Poisson and Gaussian NLL

RRNG = np.random.default_rng(3)
R_PREDS = RRNG.normal(size=(3, 4)) * 2
R_TARGETS = RRNG.normal(size=(3, 4))
R_MASK = RRNG.uniform(size=(3, 4)) < 0.7
R_COUNTS = np.array([[0.0, 1.0, 2.0, 5.0], [3.0, 0.0, 1.0, 7.0], [2.0, 4.0, 0.0, 1.0]])
R_RATES = RRNG.uniform(0.2, 3.0, size=(3, 4))
R_VAR = RRNG.uniform(0.2, 2.0, size=(3, 4))
R_VAR[0, 1] = 1e-8  # below eps: clamped


def ref_smooth_l1(p, t, beta=1.0, xp=np):
    a = xp.abs(p - t)
    if beta == 0:
        return a
    return xp.where(a < beta, 0.5 * (p - t) ** 2 / beta, a - 0.5 * beta)


def ref_poisson(x, y, log_input=True, full=False, eps=1e-8, xp=np):
    losses = xp.exp(x) - y * x if log_input else x - y * xp.log(x + eps)
    if full:
        big = xp.where(y > 1, y, 2.0)  # the formula is only used where y > 1
        stirling = big * xp.log(big) - big + 0.5 * xp.log(2 * np.pi * big)
        losses = losses + xp.where(y > 1, stirling, 0.0)
    return losses


def ref_gaussian(mu, y, var, full=False, eps=1e-6, xp=np):
    """PyTorch's, its clamp transparent to the gradient (torch clamps under no_grad)."""
    v = xp.maximum(var, eps)
    if xp is jnp:
        v = var + jax.lax.stop_gradient(v - var)
    return 0.5 * (xp.log(v) + (mu - y) ** 2 / v) + (0.5 * np.log(2 * np.pi) if full else 0.0)


_NEW = {  # name: (loss, reference, args, option sets)
    "smooth_l1_loss": (smooth_l1_loss, ref_smooth_l1, (R_PREDS, R_TARGETS),
                       ({"beta": 0.5}, {"beta": 0.0})),
    "poisson_nll_loss": (poisson_nll_loss, ref_poisson, (R_PREDS, R_COUNTS),
                         ({}, {"full": True})),
    "poisson_nll_loss[rate]": (poisson_nll_loss, ref_poisson, (R_RATES, R_COUNTS),
                               ({"log_input": False}, {"log_input": False, "full": True,
                                                       "eps": 0.1})),
    "gaussian_nll_loss": (gaussian_nll_loss, ref_gaussian, (R_PREDS, R_TARGETS, R_VAR),
                          ({}, {"full": True, "eps": 0.3})),
}


class TorchRegressionValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_NEW)
    def test_values_vs_float64_reference(self, name):
        loss, ref, args, options = _NEW[name]
        args32 = tuple(a.astype(np.float32) for a in args)
        combos = [(options[0], None, "none"), (options[0], R_MASK, "mean"),
                  (options[-1], R_MASK, "sum"), (options[-1], None, "none")]
        for kw, where, reduction in combos:
            got = self.variant(lambda *a, kw=kw, where=where, reduction=reduction: loss(
                *a, where=where, reduction=reduction, **kw))(*args32)
            want = ref_reduce(ref(*args, **kw), reduction, where)
            chex.assert_shape(got, np.shape(want))
            assert got.dtype == jnp.float32
            chex.assert_trees_all_close(got, want, rtol=3e-6, atol=1e-6)


def _torch_vjp(fn, args, argnums, cotangent):
    tensors = [torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
    for i in argnums:
        tensors[i].requires_grad_(True)
    out = fn(*tensors)
    grads = torch.autograd.grad(out, [tensors[i] for i in argnums],
                                grad_outputs=torch.tensor(cotangent))
    return out.detach().numpy(), [g.numpy() for g in grads]


def _jax_vjp(fn, args, argnums, cotangent):
    def bound(*diff):
        full = list(args)
        for i, d in zip(argnums, diff, strict=True):
            full[i] = d
        return fn(*full)

    out, pullback = jax.vjp(bound, *(jnp.asarray(args[i]) for i in argnums))
    return np.asarray(out), [np.asarray(g) for g in pullback(jnp.asarray(cotangent))]


# (name, options, args, argnums); the torch function is torch.nn.functional.<name>.
_TORCH_CASES = [
    ("smooth_l1_loss", {"beta": 1.0}, (R_PREDS, R_TARGETS), (0, 1)),
    ("smooth_l1_loss", {"beta": 0.3}, (R_PREDS, R_TARGETS), (0, 1)),
    ("smooth_l1_loss", {"beta": 0.0}, (R_PREDS, R_TARGETS), (0, 1)),
    ("poisson_nll_loss", {"log_input": True, "full": True}, (R_PREDS, R_COUNTS), (0, 1)),
    ("poisson_nll_loss", {"log_input": False, "full": False, "eps": 1e-3},
     (R_RATES, R_COUNTS), (0, 1)),
    ("poisson_nll_loss", {"log_input": False, "full": True}, (R_RATES, R_COUNTS), (0, 1)),
    ("gaussian_nll_loss", {}, (R_PREDS, R_TARGETS, R_VAR), (0, 1, 2)),
    ("gaussian_nll_loss", {"full": True, "eps": 0.5}, (R_PREDS, R_TARGETS, R_VAR), (0, 1, 2)),
    ("gaussian_nll_loss", {}, (R_PREDS, R_TARGETS, R_VAR[:, 0]), (0, 1, 2)),  # [N]: per row
    # Square: [N] against [N, N] is still one variance per row (numpy would broadcast it
    # along the rows).
    ("gaussian_nll_loss", {}, (R_PREDS[:, :3], R_TARGETS[:, :3], R_VAR[:, 1]), (0, 1, 2)),
    ("gaussian_nll_loss", {}, (R_PREDS, R_TARGETS, R_VAR[:, :1]), (0, 1, 2)),
    ("gaussian_nll_loss", {"full": True}, (R_PREDS, R_TARGETS, R_VAR[:1]), (0, 1, 2)),
    ("gaussian_nll_loss", {}, (R_PREDS, R_TARGETS, 0.7), (0, 1)),
]


@pytest.mark.parametrize("name, options, args, argnums", _TORCH_CASES,
                         ids=[f"{c[0]}-{c[1]}-{np.shape(c[2][0])}-{np.shape(c[2][-1])}"
                              for c in _TORCH_CASES])
def test_torch_conformance_values_and_gradients(name, options, args, argnums, x64):
    """Values and vector-Jacobian products equal torch.nn.functional's in float64, for
    each reduction (the gradient of the clamped variance included: PyTorch's)."""
    ours = getattr(jaxloss.regression, name)
    theirs = getattr(torch.nn.functional, name)
    for reduction in ("none", "mean", "sum"):
        shape = np.shape(theirs(*(torch.tensor(a) if isinstance(a, np.ndarray) else a
                                  for a in args), reduction=reduction, **options))
        cotangent = np.random.default_rng(4).normal(size=shape)
        got, got_grads = _jax_vjp(
            lambda *a, r=reduction: ours(*a, reduction=r, **options), args, argnums, cotangent)
        want, want_grads = _torch_vjp(
            lambda *a, r=reduction: theirs(*a, reduction=r, **options), args, argnums,
            cotangent)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=reduction)
        for g, w in zip(got_grads, want_grads, strict=True):
            if name == "poisson_nll_loss" and options.get("full"):
                # torch's d/dy is NaN at y = 0 (0 * log 0 in its masked Stirling term);
                # ours is the derivative of the other terms there, finite.
                nan = np.isnan(w)
                assert not (nan & (args[1] != 0)).any()
                assert np.isfinite(g).all()
                g, w = g[~nan], w[~nan]
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13, err_msg=reduction)


def test_torch_regression_gradients_vs_reference(x64):
    assert_vjp_matches_reference(lambda p, t: smooth_l1_loss(p, t, beta=0.5),
                                 lambda p, t: ref_smooth_l1(p, t, 0.5, jnp), R_PREDS,
                                 R_TARGETS, argnums=(0, 1))
    assert_vjp_matches_reference(
        lambda x, y: poisson_nll_loss(x, y, full=True, where=R_MASK, reduction="mean"),
        lambda x, y: ref_reduce(ref_poisson(x, y, full=True, xp=jnp), "mean", R_MASK, xp=jnp),
        R_PREDS, R_COUNTS, argnums=(0, 1))
    assert_vjp_matches_reference(
        lambda x, y: poisson_nll_loss(x, y, log_input=False, full=True),
        lambda x, y: ref_poisson(x, y, False, True, xp=jnp), R_RATES, R_COUNTS, argnums=(0, 1))
    assert_vjp_matches_reference(
        lambda m, y, v: gaussian_nll_loss(m, y, v, full=True),
        lambda m, y, v: ref_gaussian(m, y, v, True, xp=jnp), R_PREDS, R_TARGETS, R_VAR,
        argnums=(0, 1, 2))
    assert_finite_differences(lambda p, t: smooth_l1_loss(p, t, beta=0.5), R_PREDS,
                              R_TARGETS, argnums=(0, 1), order=1)
    assert_finite_differences(lambda x, y: poisson_nll_loss(x, y, full=True), R_PREDS,
                              R_COUNTS + 0.5, argnums=(0, 1), order=1)
    assert_finite_differences(gaussian_nll_loss, R_PREDS, R_TARGETS, R_VAR + 0.1,
                              argnums=(0, 1, 2), order=2)


def test_smooth_l1_beta_zero_is_l1_and_huber_over_beta():
    e = np.array([-2.0, -0.3, 0.0, 0.2, 1e30], np.float32)
    out, pullback = jax.vjp(lambda p: smooth_l1_loss(p, np.zeros(5, np.float32), beta=0.0), e)
    np.testing.assert_array_equal(out, np.abs(e))
    np.testing.assert_array_equal(pullback(jnp.ones(5))[0], [-1, -1, 0, 1, 1])  # sign, 0 at 0
    out, pullback = jax.vjp(lambda p: smooth_l1_loss(p, np.zeros(5, np.float32)), e)
    np.testing.assert_allclose(out, np.array([1.5, 0.045, 0, 0.02, 1e30], np.float32),
                               rtol=2e-7)
    np.testing.assert_allclose(pullback(jnp.ones(5))[0],
                               np.array([-1, -0.3, 0, 0.2, 1], np.float32), rtol=3e-7)
    for beta in (0.25, 2.0):
        chex.assert_trees_all_close(smooth_l1_loss(R_PREDS, R_TARGETS, beta=beta),
                                    jaxloss.huber_loss(R_PREDS, R_TARGETS, delta=beta) / beta,
                                    rtol=1e-6)


def test_poisson_extremes_exact():
    # log-rate: e^x - y x. A zero count gives no NaN (also at x = -inf), exp overflow is
    # +inf (float32: e^100), and x = -1e30 gives 1e30 y with gradient -y.
    x = np.array([-1e30, -1e30, 0.0, 100.0, -np.inf, 1e30], np.float32)
    y = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 2.0], np.float32)
    out, pullback = jax.vjp(poisson_nll_loss, x, y)
    np.testing.assert_array_equal(out, np.array([0, 1e30, 1, np.inf, 0, np.inf], np.float32))
    gx, gy = pullback(jnp.ones(6))
    np.testing.assert_array_equal(gx[:5], [0, -1, 1, np.inf, 0])
    np.testing.assert_array_equal(gy[:4], np.array([1e30, 1e30, 0, -100], np.float32))
    # rate: lambda - y log(lambda + eps); 0 log 0 = 0 (eps = 0), with gradient 0.
    rate = np.array([0.0, 0.0, 2.0, 1e30], np.float32)
    y = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    out, pullback = jax.vjp(lambda r, y: poisson_nll_loss(r, y, log_input=False, eps=0.0),
                            rate, y)
    np.testing.assert_array_equal(out, np.array([0, np.inf, 2, 1e30], np.float32))
    gr, gy = (np.asarray(g) for g in pullback(jnp.ones(4)))
    np.testing.assert_array_equal(gr[[0, 2, 3]], [1, 1, 1])
    np.testing.assert_array_equal(gy[[0, 2]], np.array([0, -np.log(2)], np.float32))
    # full: Stirling's term only where y > 1.
    y = np.array([0.0, 1.0, 2.0], np.float32)
    out = poisson_nll_loss(np.zeros(3, np.float32), y, full=True)
    chex.assert_trees_all_close(out, np.array(
        [1, 1, 1 + 2 * np.log(2) - 2 + 0.5 * np.log(4 * np.pi)], np.float32), rtol=1e-7)


def test_gaussian_extremes_and_clamp_gradient():
    # Variance below eps (and 0): clamped to eps in the value; the gradient is PyTorch's,
    # the derivative at v = eps passed through the clamp (not 0).
    mu = np.array([1e-4, 0.0, 1e20, 1e30], np.float32)
    var = np.array([1e-9, 0.0, 1e20, 1.0], np.float32)
    out, pullback = jax.vjp(lambda m, v: gaussian_nll_loss(m, np.zeros(4, np.float32), v),
                            mu, var)
    eps, e = np.float64(np.float32(1e-6)), mu.astype(np.float64)
    want = [0.5 * (np.log(eps) + e[0] ** 2 / eps), 0.5 * np.log(eps),
            0.5 * (np.log(1e20) + 1e20), np.inf]
    chex.assert_trees_all_close(out, np.array(want, np.float32), rtol=1e-6)
    g_mu, g_var = pullback(jnp.ones(4))
    chex.assert_trees_all_close(g_mu[:3], np.array([e[0] / eps, 0, 1], np.float32), rtol=1e-6)
    chex.assert_trees_all_close(g_var[:3], np.array(
        [0.5 * (1 / eps - e[0] ** 2 / eps**2), 0.5 / eps, 0.5 * (1e-20 - 1)], np.float32),
        rtol=1e-6)
    # A negative variance gives NaN (no raise under jit); jaxloss.checked raises.
    out = jax.jit(gaussian_nll_loss)(mu, np.zeros(4), -var - 1)
    assert np.isnan(np.asarray(out)).all()
    with pytest.raises(checkify.JaxRuntimeError, match="variance must lie in"):
        jaxloss.checked(gaussian_nll_loss)(mu, np.zeros(4, np.float32), -var - 1)
    jaxloss.checked(gaussian_nll_loss)(mu, np.zeros(4, np.float32), var)
    with pytest.raises(checkify.JaxRuntimeError, match="targets must lie in"):
        jaxloss.checked(poisson_nll_loss)(R_PREDS, -R_COUNTS - 1)


def test_torch_regression_bf16_computes_in_float32():
    for fn, args in ((smooth_l1_loss, (R_PREDS, R_TARGETS)), (poisson_nll_loss, (R_PREDS,
                                                                                  R_COUNTS)),
                     (gaussian_nll_loss, (R_PREDS, R_TARGETS, R_VAR))):
        low = jnp.asarray(args[0], jnp.bfloat16)
        out, pullback = jax.vjp(lambda a, fn=fn, args=args: fn(a, *args[1:]), low)
        assert out.dtype == jnp.float32
        assert pullback(jnp.ones_like(out))[0].dtype == jnp.bfloat16
        chex.assert_trees_all_close(out, fn(np.asarray(low, np.float32), *args[1:]),
                                    rtol=1e-6)
    big = jnp.array([3e38, -3e38], jnp.bfloat16)
    chex.assert_trees_all_close(smooth_l1_loss(big, jnp.zeros(2, jnp.bfloat16)),
                                np.full(2, float(jnp.bfloat16(3e38)) - 0.5, np.float32))


def test_torch_regression_masked_non_finite_does_not_leak():
    bad = np.where(R_MASK, R_PREDS, np.nan)
    neg = np.where(R_MASK, R_VAR, -1.0)
    for fn, args in ((smooth_l1_loss, (bad, R_TARGETS)), (poisson_nll_loss, (bad, R_COUNTS)),
                     (gaussian_nll_loss, (bad, R_TARGETS, neg))):
        value, grads = jax.value_and_grad(
            lambda *a, fn=fn: fn(*a, where=R_MASK, reduction="mean"),
            argnums=tuple(range(len(args))))(*(jnp.asarray(a, jnp.float32) for a in args))
        chex.assert_tree_all_finite((value, grads))


def test_torch_regression_composition():
    f = jax.jit(jax.vmap(lambda m, y, v: gaussian_nll_loss(m, y, v)))
    chex.assert_trees_all_close(f(R_PREDS, R_TARGETS, R_VAR[:, 0]),
                                gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR[:, 0]), rtol=1e-6)
    m = np.float32(R_PREDS[1])
    h = jax.hessian(lambda m: gaussian_nll_loss(m, R_TARGETS[1], R_VAR[1], reduction="sum"))(m)
    chex.assert_trees_all_close(h, np.diag(1 / R_VAR[1]), rtol=1e-6)
    h = jax.hessian(lambda x: poisson_nll_loss(x, R_COUNTS[1], reduction="sum"))(m)
    chex.assert_trees_all_close(h, np.diag(np.exp(m)), rtol=1e-6)


@pytest.mark.parametrize("call, error, words", [
    (lambda: smooth_l1_loss(R_PREDS, R_TARGETS, beta=-0.5), ValueError, ["beta"]),
    (lambda: smooth_l1_loss(R_PREDS, R_TARGETS[:2]), ValueError, ["targets"]),
    (lambda: poisson_nll_loss(np.ones(3, np.int32), np.ones(3)), TypeError, ["input"]),
    (lambda: poisson_nll_loss(R_PREDS, R_COUNTS, eps=-1.0), ValueError, ["eps"]),
    (lambda: poisson_nll_loss(R_PREDS, R_COUNTS, full=1), TypeError, ["full"]),
    (lambda: poisson_nll_loss(R_PREDS, R_COUNTS, log_input="yes"), TypeError, ["log_input"]),
    (lambda: poisson_nll_loss(R_PREDS, R_COUNTS, where=R_MASK[:2]), ValueError, ["where"]),
    (lambda: poisson_nll_loss(R_PREDS, R_COUNTS, reduction="avg"), ValueError,
     ["reduction"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR[:2]), ValueError,
     ["variance", "(2, 4)"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR[:1, :1]), ValueError, ["variance"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR[:, :2]), ValueError, ["variance"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR, eps=-1e-6), ValueError, ["eps"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS, R_VAR, full=None), TypeError, ["full"]),
    (lambda: gaussian_nll_loss(R_PREDS, R_TARGETS[:, :3], R_VAR), ValueError, ["targets"]),
])
def test_torch_regression_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
