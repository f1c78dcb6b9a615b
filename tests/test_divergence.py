"""Tests for jaxloss.divergence: the KL family, with 0 log 0 = 0 in value and gradient."""

import warnings

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
P = RNG.dirichlet(np.ones(5), size=(3, 4))  # [3, 4, 5], strictly positive
T = RNG.dirichlet(np.ones(5), size=(3, 4))
LP, LT = np.log(P), np.log(T)
MASK = RNG.uniform(size=(3, 4, 5)) < 0.7
MASK[0, 0] = False  # an example with nothing selected

KL = {
    "kl_divergence": jaxloss.kl_divergence,
    "kl_divergence_with_log_targets": jaxloss.kl_divergence_with_log_targets,
    "generalized_kl_divergence": jaxloss.generalized_kl_divergence,
}


def _optax(name):
    return getattr(optax.losses, name)


# ----------------------------------------------------------------- naive float64 references


def ref(name, lp, second, axis=-1, where=None, reduction="none"):
    """The textbook formulas (targets strictly positive here), in NumPy float64."""
    lp, second = np.asarray(lp, np.float64), np.asarray(second, np.float64)
    if name == "kl_divergence":
        terms = second * (np.log(second) - lp)
    elif name == "kl_divergence_with_log_targets":
        terms = np.exp(second) * (second - lp)
    else:
        terms = second * (np.log(second) - lp) + np.exp(lp) - second
    axes = tuple(range(lp.ndim)) if axis is None else axis
    if where is not None:
        terms = np.where(where, terms, 0)
    losses = terms.sum(axis=axes)
    rows = None if where is None else np.broadcast_to(where, terms.shape).any(axis=axes)
    if rows is not None:
        losses = np.where(rows, losses, 0)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / (losses.size if rows is None else rows.sum())
    return losses


def ref_jnp(name):
    """The same formula in jnp, for jax.vjp of the reference (positive targets)."""
    def f(lp, second):
        if name == "kl_divergence":
            terms = second * (jnp.log(second) - lp)
        elif name == "kl_divergence_with_log_targets":
            terms = jnp.exp(second) * (second - lp)
        else:
            terms = second * (jnp.log(second) - lp) + jnp.exp(lp) - second
        return jnp.sum(terms, axis=-1)
    return f


def _second(name):
    return LT if name == "kl_divergence_with_log_targets" else (
        2 * T if name == "generalized_kl_divergence" else T)


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=tuple(KL), axis=(-1, (1, 2), None))
    def test_vs_reference_and_optax(self, name, axis):
        fn = self.variant(lambda a, b: KL[name](a, b, axis))
        got = fn(LP.astype(np.float32), _second(name).astype(np.float32))
        want = ref(name, LP, _second(name), axis)
        chex.assert_shape(got, np.shape(want))
        chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-6)
        chex.assert_trees_all_close(
            got, _optax(name)(LP.astype(np.float32), _second(name).astype(np.float32), axis),
            rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=tuple(KL), reduction=("none", "mean", "sum"))
    def test_where_and_reduction(self, name, reduction):
        fn = self.variant(lambda a, b, w: KL[name](a, b, -1, w, reduction=reduction))
        got = fn(LP, _second(name), MASK)
        chex.assert_trees_all_close(got, ref(name, LP, _second(name), -1, MASK, reduction),
                                    rtol=2e-5, atol=1e-6)
        if reduction == "none":  # optax's where, positional as in optax
            chex.assert_trees_all_close(got, _optax(name)(LP, _second(name), -1, MASK),
                                        rtol=1e-5, atol=1e-6)


def test_convex_kl_is_generalized_kl_and_deprecated_as_in_optax():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = optax.losses.convex_kl_divergence(LP, 2 * T)
    with pytest.warns(DeprecationWarning, match="use generalized_kl_divergence") as caught:
        got = jaxloss.convex_kl_divergence(LP, 2 * T, -1, None, reduction="none")
    assert caught[0].filename == __file__  # points at the caller, as optax's does
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    chex.assert_trees_all_close(got, jaxloss.generalized_kl_divergence(LP, 2 * T))


# ----------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", tuple(KL))
def test_gradients_vs_float64_reference(name):
    assert_vjp_matches_reference(KL[name], ref_jnp(name), LP, _second(name), argnums=(0, 1))
    assert_finite_differences(KL[name], LP[0], _second(name)[0], argnums=(0, 1), order=2)


# ----------------------------------------------------------------- zero targets (0 log 0 = 0)

T0 = np.array([[0.0, 0.5, 0.5], [0.0, 0.25, 0.75]], np.float32)
LP0 = np.array([[-np.inf, np.log(0.2), np.log(0.8)], [-1e30, np.log(0.5), np.log(0.5)]],
               np.float32)


def test_zero_targets_exact_value_and_gradient():
    value, (g_lp, g_t) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.kl_divergence(a, b)), argnums=(0, 1))(LP0, T0)
    t64, lp64 = T0.astype(np.float64), LP0.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.sum(np.where(t64 > 0, t64 * (np.log(np.where(t64 > 0, t64, 1)) - lp64), 0))
        want_g_t = np.where(t64 > 0, np.log(np.where(t64 > 0, t64, 1)) + 1 - lp64, 0)
    chex.assert_trees_all_close(value, want, rtol=1e-6)
    chex.assert_trees_all_close(g_lp, -T0, rtol=0, atol=0)  # exactly -t, 0 at t = 0
    chex.assert_trees_all_close(g_t, want_g_t, rtol=1e-6)
    assert g_t[0, 0] == 0 and g_t[1, 0] == 0
    # optax 0.2.8: NaN gradient for the zero targets, NaN loss against log p = -inf.
    assert np.isnan(optax.losses.kl_divergence(LP0, T0)[0])
    assert np.isnan(jax.grad(lambda b: jnp.sum(optax.losses.kl_divergence(LP0, b)))(T0)[1, 0])


def test_generalized_kl_zero_targets():
    lp, t = np.array([[-np.inf, np.log(2.0), 0.0]], np.float32), np.array([[0.0, 2.0, 0.0]],
                                                                           np.float32)
    value, (g_lp, g_t) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.generalized_kl_divergence(a, b)), argnums=(0, 1))(lp, t)
    chex.assert_trees_all_close(value, 1.0, rtol=1e-6)
    chex.assert_trees_all_close(g_lp, np.array([[0.0, 0.0, 1.0]]), atol=1e-6)
    chex.assert_trees_all_close(g_t, np.array([[-1.0, 0.0, -1.0]]), atol=1e-6)


def test_log_targets_minus_inf_exact():
    lt = np.array([[-np.inf, np.log(0.5), np.log(0.5)], [-200.0, 0.0, -np.inf]], np.float32)
    lp = np.array([[-np.inf, np.log(0.5), np.log(0.5)], [-np.inf, -1.0, 0.0]], np.float32)
    value, (g_lp, g_lt) = jax.value_and_grad(
        lambda a, b: jnp.sum(jaxloss.kl_divergence_with_log_targets(a, b)), argnums=(0, 1))(
        lp, lt)
    # Row 0: 0 + 0; row 1: exp(-200) underflows (0), 1 * (0 - (-1)) = 1, then 0.
    chex.assert_trees_all_close(value, 1.0, rtol=1e-6)
    chex.assert_trees_all_close(g_lp, np.array([[0.0, -0.5, -0.5], [0.0, -1.0, 0.0]]), atol=1e-6)
    chex.assert_trees_all_close(g_lt, np.array([[0.0, 0.5, 0.5], [0.0, 2.0, 0.0]]), atol=1e-6)
    with np.errstate(invalid="ignore"):
        assert np.isnan(optax.losses.kl_divergence_with_log_targets(lp[:1], lt[:1])[0])


def test_masked_nan_does_not_leak():
    lp = LP.copy()
    lp[~MASK] = np.nan
    g = jax.grad(lambda a: jaxloss.kl_divergence(a, T, where=MASK, reduction="sum"))(lp)
    chex.assert_tree_all_finite(g)
    assert np.all(np.asarray(g)[~MASK] == 0)


# ----------------------------------------------------------------- composition and errors


def test_vmap_hessian_and_dtypes():
    f = jax.vmap(jaxloss.kl_divergence)
    chex.assert_trees_all_close(f(LP, T), jaxloss.kl_divergence(LP, T), rtol=1e-6)
    h = jax.hessian(lambda a: jnp.sum(jaxloss.generalized_kl_divergence(a, 2 * T[0, 0])))(
        LP[0, 0])
    chex.assert_trees_all_close(h, np.diag(P[0, 0]), rtol=1e-5)  # d^2/dlp^2 = diag(p)
    out = jaxloss.kl_divergence(jnp.asarray(LP, jnp.bfloat16), jnp.asarray(T, jnp.bfloat16))
    assert out.dtype == jnp.float32
    g = jax.grad(lambda a: jnp.sum(jaxloss.kl_divergence(a, T)))(jnp.asarray(LP, jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", tuple(KL))
def test_bad_input(name):
    fn = KL[name]
    second = "log_targets" if name == "kl_divergence_with_log_targets" else "targets"
    with pytest.raises(ValueError, match=second):
        fn(LP, np.ones((3, 4, 6)))
    with pytest.raises(ValueError, match="axis"):
        fn(LP, T, 3)
    with pytest.raises(ValueError, match="reduction"):
        fn(LP, T, reduction="avg")
    with pytest.raises(ValueError, match="where"):
        fn(LP, T, where=np.ones((2, 5), bool))
    with pytest.raises(TypeError, match="log_predictions"):
        fn(np.ones((3, 5), np.int32), T)


# ----------------------------------------------------------------- PyTorch conformance


def test_kl_divergence_equals_torch_kl_div_summed_over_classes():
    """``F.kl_div(log_p, t, reduction="none").sum(-1)`` (and with ``log_target=True``),
    values and gradients with respect to both arguments, zero targets included."""
    import torch

    t = T.copy()
    t[0, 0] = [0.0, 0.5, 0.5, 0.0, 0.0]  # 0 log 0 = 0, as PyTorch's xlogy
    with jax.enable_x64(True):
        for name, second, log_target in (("kl_divergence", t, False),
                                         ("kl_divergence_with_log_targets", LT, True)):
            got, grads = jax.value_and_grad(
                lambda lp, s, name=name: jnp.sum(KL[name](lp, s) * np.arange(1, 5)),
                argnums=(0, 1))(LP, second)
            lp_t = torch.tensor(LP, requires_grad=True)
            s_t = torch.tensor(second, requires_grad=True)
            per_row = torch.nn.functional.kl_div(lp_t, s_t, reduction="none",
                                                 log_target=log_target).sum(-1)
            want = (per_row * torch.arange(1, 5, dtype=torch.float64)).sum()
            want.backward()
            chex.assert_trees_all_close(KL[name](LP, second), per_row.detach().numpy(),
                                        rtol=1e-12)
            chex.assert_trees_all_close(got, want.item(), rtol=1e-12)
            chex.assert_trees_all_close(grads[0], lp_t.grad.numpy(), rtol=1e-10, atol=1e-14)
            # PyTorch's target gradient at a zero target is NaN (log 0); jaxloss's is 0,
            # its documented convention. Equal everywhere else.
            torch_gt = s_t.grad.numpy()
            zero = np.exp(second) == 0 if log_target else second == 0
            assert np.all(np.isnan(torch_gt[zero])) and np.all(np.asarray(grads[1])[zero] == 0)
            chex.assert_trees_all_close(np.asarray(grads[1])[~zero], torch_gt[~zero],
                                        rtol=1e-10, atol=1e-14)
