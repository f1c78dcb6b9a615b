"""Tests for jaxloss.margin: binary and multiclass hinge and perceptron losses (optax's),
and PyTorch's multi-margin, multilabel-margin, margin-ranking and hinge-embedding losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from absl.testing import parameterized

import jaxloss
from jaxloss.margin import (
    hinge_embedding_loss,
    margin_ranking_loss,
    multi_margin_loss,
    multilabel_margin_loss,
)
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


# ================================================================= PyTorch's margin losses
# multi_margin_loss, multilabel_margin_loss, margin_ranking_loss, hinge_embedding_loss:
# against naive float64 references and torch.nn.functional (float64 tensors).

T_RNG = np.random.default_rng(1)
T_SCORES = T_RNG.normal(size=(4, 5))
T_LABELS = T_RNG.integers(0, 5, size=4)
T_WEIGHTS = T_RNG.uniform(0.5, 2.0, size=5)
T_ROWS = np.array([True, False, True, True])
# Targets padded with -1: only the entries before the first -1 count (row 1: a
# duplicate, row 2: none, row 3: an entry after the -1 that is ignored).
T_MULTILABEL = np.array([[3, 0, -1, -1, -1], [1, 1, 4, -1, -1], [-1, 0, 1, 2, 3],
                         [2, -1, 4, 4, 4]])
T_X1, T_X2 = T_RNG.normal(size=(3, 4)), T_RNG.normal(size=(3, 4))
T_SIGNS = np.where(T_RNG.uniform(size=(3, 4)) < 0.5, -1.0, 1.0)
T_MASK = T_RNG.uniform(size=(3, 4)) < 0.7
T_DIST = np.abs(T_RNG.normal(size=(3, 4))) * 1.5
T_HINGE_Y = np.array([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 0.0], [2.0, -1.0, 1.0, -1.0]])


def ref_multi_margin(s, labels, p=1, margin=1.0, w=None):
    """PyTorch's loop: sum over j != y of w_y max(0, margin - s_y + s_j)^p / C."""
    s = np.asarray(s, np.float64)
    out = np.zeros(s.shape[0])
    for n, y in enumerate(labels):
        for j in range(s.shape[1]):
            if j != y:
                out[n] += max(0.0, margin - s[n, y] + s[n, j]) ** p
        out[n] *= (1.0 if w is None else w[y]) / s.shape[1]
    return out


def ref_multi_margin_jnp(s, labels, p=1, margin=1.0, w=None):
    c = s.shape[-1]
    one_hot = labels[:, None] == jnp.arange(c)
    z = margin - jnp.sum(jnp.where(one_hot, s, 0), -1, keepdims=True) + s
    h = jnp.where(one_hot, 0, jnp.maximum(z, 0) ** p)
    scale = 1.0 if w is None else w[labels]
    return scale * jnp.sum(h, -1) / c


def ref_multilabel(s, targets):
    """PyTorch's loop: targets up to the first negative entry, each against every
    non-target class."""
    s = np.asarray(s, np.float64)
    out = np.zeros(s.shape[0])
    for n in range(s.shape[0]):
        listed = []
        for t in targets[n]:
            if t < 0:
                break
            listed.append(int(t))
        for j in listed:
            for i in range(s.shape[1]):
                if i not in listed:
                    out[n] += max(0.0, 1 - s[n, j] + s[n, i])
        out[n] /= s.shape[1]
    return out


def ref_multilabel_jnp(s, targets):
    counted = jnp.cumsum(targets < 0, axis=-1) == 0
    c = s.shape[-1]
    is_target = jnp.any(counted[:, :, None] & (targets[:, :, None] == jnp.arange(c)), axis=1)
    x_j = jnp.take_along_axis(s, jnp.where(counted, targets, 0), axis=-1)
    z = 1 - x_j[:, :, None] + s[:, None, :]
    return jnp.sum(jnp.where(counted[:, :, None] & ~is_target[:, None, :],
                             jnp.maximum(z, 0), 0), axis=(1, 2)) / c


def ref_ranking(x1, x2, y, margin=0.0, xp=np):
    return xp.maximum(-y * (x1 - x2) + margin, 0)


def ref_hinge_embedding(x, y, margin=1.0, xp=np):
    return xp.where(y != 1, xp.maximum(margin - x, 0), 0) + xp.where(y != -1, x, 0)


def _torch(fn, *args, diff=(0,), **kwargs):
    """torch.nn.functional.<fn> in float64 and the gradient of its sum w.r.t. the
    arguments ``diff``."""
    tensors = [torch.tensor(np.asarray(a)) for a in args]
    for i in diff:
        tensors[i].requires_grad_(True)
    out = getattr(torch.nn.functional, fn)(*tensors, **kwargs)
    out.sum().backward()
    return out.detach().numpy(), tuple(tensors[i].grad.numpy() for i in diff)


class TorchMarginValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_values_vs_reference(self):
        @self.variant
        def f(s, x1, x2, d):
            return {
                "mm": multi_margin_loss(s, T_LABELS),
                "mm2": multi_margin_loss(s, T_LABELS, p=2, margin=0.7,
                                         class_weights=T_WEIGHTS),
                "mm_mean": multi_margin_loss(s, T_LABELS, class_weights=T_WEIGHTS,
                                             where=T_ROWS, reduction="mean"),
                "ml": multilabel_margin_loss(s, T_MULTILABEL),
                "ml_sum": multilabel_margin_loss(s, T_MULTILABEL, where=T_ROWS,
                                                 reduction="sum"),
                "mr": margin_ranking_loss(x1, x2, T_SIGNS, margin=0.3),
                "mr_mean": margin_ranking_loss(x1, x2, T_SIGNS, where=T_MASK,
                                               reduction="mean"),
                "he": hinge_embedding_loss(d, T_HINGE_Y, margin=1.5),
                "he_sum": hinge_embedding_loss(d, T_HINGE_Y, where=T_MASK, reduction="sum"),
            }

        got = f(T_SCORES, T_X1, T_X2, T_DIST)
        mm = ref_multi_margin(T_SCORES, T_LABELS)
        chex.assert_trees_all_close(got["mm"], mm, rtol=1e-6)
        chex.assert_trees_all_close(
            got["mm2"], ref_multi_margin(T_SCORES, T_LABELS, 2, 0.7, T_WEIGHTS), rtol=1e-6)
        weighted = ref_multi_margin(T_SCORES, T_LABELS, w=T_WEIGHTS)
        # PyTorch's mean of this loss: over the examples, not over their weights.
        chex.assert_trees_all_close(got["mm_mean"], weighted[T_ROWS].mean(), rtol=1e-6)
        ml = ref_multilabel(T_SCORES, T_MULTILABEL)
        assert ml[2] == 0 and ml[0] > 0 and ml[1] > 0
        chex.assert_trees_all_close(got["ml"], ml, rtol=1e-6)
        chex.assert_trees_all_close(got["ml_sum"], ml[T_ROWS].sum(), rtol=1e-6)
        mr = ref_ranking(T_X1, T_X2, T_SIGNS, 0.3)
        chex.assert_trees_all_close(got["mr"], mr, rtol=1e-6)
        chex.assert_trees_all_close(got["mr_mean"], ref_ranking(T_X1, T_X2, T_SIGNS)[T_MASK]
                                    .mean(), rtol=1e-6)
        he = ref_hinge_embedding(T_DIST, T_HINGE_Y, 1.5)
        chex.assert_trees_all_close(got["he"], he, rtol=1e-6)
        chex.assert_trees_all_close(got["he_sum"], ref_hinge_embedding(T_DIST, T_HINGE_Y)
                                    [T_MASK].sum(), rtol=1e-6)


TORCH_CALLS = {  # id: (torch name, ours, args, differentiated args, our options, torch's)
    "multi_margin": ("multi_margin_loss", multi_margin_loss, (T_SCORES, T_LABELS), (0,), {},
                     {}),
    "multi_margin[p=2,weights]": (
        "multi_margin_loss", multi_margin_loss, (T_SCORES, T_LABELS), (0,),
        {"p": 2, "margin": 0.7, "class_weights": T_WEIGHTS},
        {"p": 2, "margin": 0.7, "weight": torch.tensor(T_WEIGHTS)}),
    "multilabel_margin": ("multilabel_margin_loss", multilabel_margin_loss,
                          (T_SCORES, T_MULTILABEL), (0,), {}, {}),
    "margin_ranking": ("margin_ranking_loss", margin_ranking_loss, (T_X1, T_X2, T_SIGNS),
                       (0, 1, 2), {"margin": 0.3}, {"margin": 0.3}),
    "hinge_embedding": ("hinge_embedding_loss", hinge_embedding_loss, (T_DIST, T_HINGE_Y),
                        (0,), {"margin": 1.5}, {"margin": 1.5}),
}


@pytest.mark.parametrize("call", TORCH_CALLS.values(), ids=TORCH_CALLS.keys())
def test_torch_margin_conformance(call, x64):
    """Values (every reduction) and gradients w.r.t. every floating input equal
    torch.nn.functional's in float64."""
    name, fn, args, diff, kwargs, torch_kwargs = call
    want, want_grads = _torch(name, *args, diff=diff, reduction="none", **torch_kwargs)

    def ours(*floats):
        full = list(args)
        for i, x in zip(diff, floats, strict=True):
            full[i] = x
        return fn(*full, **kwargs)

    out, pullback = jax.vjp(ours, *(jnp.asarray(args[i]) for i in diff))
    chex.assert_trees_all_close(out, want, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(pullback(jnp.ones_like(out)), want_grads, rtol=1e-12,
                                atol=1e-14)
    for reduction in ("mean", "sum"):
        chex.assert_trees_all_close(
            fn(*args, **kwargs, reduction=reduction),
            _torch(name, *args, diff=diff, reduction=reduction, **torch_kwargs)[0],
            rtol=1e-12)


def test_torch_margin_gradients(x64):
    """Gradients w.r.t. every differentiable argument (margin and class weights too)
    against jax.grad of the float64 references, and finite differences."""
    assert_vjp_matches_reference(
        multi_margin_loss, lambda s, margin, class_weights, **_: ref_multi_margin_jnp(
            s, T_LABELS, 2, margin, class_weights),
        T_SCORES, margin=np.float64(0.7), class_weights=T_WEIGHTS, p=2,
        diff_kwargs=("margin", "class_weights"), labels=T_LABELS)
    assert_vjp_matches_reference(lambda s: multilabel_margin_loss(s, T_MULTILABEL),
                                 lambda s: ref_multilabel_jnp(s, T_MULTILABEL), T_SCORES)
    assert_vjp_matches_reference(
        margin_ranking_loss, lambda x1, x2, y, margin: ref_ranking(x1, x2, y, margin, jnp),
        T_X1, T_X2, T_SIGNS, margin=np.float64(0.3), argnums=(0, 1, 2),
        diff_kwargs=("margin",))
    assert_vjp_matches_reference(
        hinge_embedding_loss,
        lambda x, margin, **_: ref_hinge_embedding(x, T_HINGE_Y, margin, jnp),
        T_DIST, margin=np.float64(1.5), diff_kwargs=("margin",), targets=T_HINGE_Y)
    assert_finite_differences(lambda s: multi_margin_loss(s, T_LABELS, p=2), T_SCORES,
                              order=1)
    assert_finite_differences(margin_ranking_loss, T_X1, T_X2, T_SIGNS, argnums=(0, 1, 2),
                              order=1)


def test_torch_margin_extremes_and_kinks_exact():
    f32 = np.float32
    # multi_margin_loss, p = 1: +-1e30 and 3e38 scores; the last row has the kink
    # z_1 = 1 - 1 + 0 = 0 (subgradient 0, as PyTorch's kernel) and z_2 = 0.5.
    s = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], [3e38, -3e38, 1.0],
                  [1.0, 0.0, 0.5]], f32)
    labels = np.array([0, 0, 2, 0])
    out, g = jax.vjp(jax.jit(lambda s: multi_margin_loss(s, labels)), s)
    chex.assert_trees_all_close(out, np.array([0, 1e30, 1e38, 0.5 / 3], f32), rtol=3e-7)
    third = 1 / 3
    chex.assert_trees_all_close(
        g(jnp.ones(4, f32))[0],
        np.array([[0, 0, 0], [-2 * third, third, third], [third, 0, -third],
                  [-third, 0, third]], f32), rtol=1e-7, atol=0)
    # p = 2: z^2 = 4e38 overflows float32, z (z / C) does not.
    s2 = np.array([[-1e19, 1e19, 0.0]], f32)
    out, g = jax.vjp(jax.jit(lambda s: multi_margin_loss(s, np.array([0]), p=2)), s2)
    chex.assert_trees_all_close(out, np.array([5e38 / 3], f32), rtol=1e-6)
    chex.assert_trees_all_close(g(jnp.ones(1, f32))[0],
                                np.array([[-2e19, 4e19 / 3, 2e19 / 3]], f32), rtol=1e-6)
    # multilabel_margin_loss: targets {0, 2} (the 1 after the -1 is ignored), huge
    # scores; then the kink z = 1 - 1 + 0 = 0 with subgradient 0.
    s = np.array([[-1e30, 1e30, 0.0, 0.0], [1.0, 0.0, 0.5, 2.0]], f32)
    t = np.array([[0, 2, -1, 1], [0, -1, 2, 2]])
    out, g = jax.vjp(jax.jit(lambda s: multilabel_margin_loss(s, t)), s)
    chex.assert_trees_all_close(out, np.array([1e30, 2.5 / 4], f32), rtol=1e-7)
    chex.assert_trees_all_close(g(jnp.ones(2, f32))[0],
                                np.array([[-0.5, 0.5, -0.5, 0.5], [-0.5, 0, 0.25, 0.25]], f32),
                                rtol=0, atol=0)
    # margin_ranking_loss: the third is at the kink z = 0, where PyTorch's clamp_min
    # passes the whole gradient.
    x1 = np.array([1e30, -1e30, 1.0, 2.0], f32)
    x2 = np.array([0.0, 0.0, 1.0, 0.0], f32)
    y = np.array([1.0, 1.0, 1.0, -1.0], f32)
    out, g = jax.vjp(jax.jit(margin_ranking_loss), x1, x2, y)
    chex.assert_trees_all_close(out, np.array([0, 1e30, 0, 2], f32), rtol=1e-7)
    g1, g2, gy = g(jnp.ones(4, f32))
    chex.assert_trees_all_close((g1, g2, gy), (np.array([0, -1, -1, 1], f32),
                                               np.array([0, 1, 1, -1], f32),
                                               np.array([0, 1e30, 0, -2], f32)), rtol=1e-7,
                                atol=0)
    t_grads = _torch("margin_ranking_loss", x1[2:].astype(float), x2[2:].astype(float),
                     y[2:].astype(float), diff=(0, 1, 2), reduction="none")[1]
    chex.assert_trees_all_close(tuple(t_grads), (g1[2:], g2[2:], gy[2:]))
    # hinge_embedding_loss: y = 0 gives x + max(0, m - x) (PyTorch's); x = m for y = -1
    # is the kink, with the whole gradient.
    x = np.array([1e30, 1e30, -1e30, 1.0, 0.5, 3.0], f32)
    y = np.array([1.0, -1.0, -1.0, -1.0, -1.0, 0.0], f32)
    out, g = jax.vjp(jax.jit(lambda x: hinge_embedding_loss(x, y)), x)
    chex.assert_trees_all_close(out, np.array([1e30, 0, 1e30, 0, 0.5, 3], f32), rtol=1e-7)
    chex.assert_trees_all_close(g(jnp.ones(6, f32))[0], np.array([1, 0, -1, -1, -1, 1], f32),
                                rtol=0, atol=0)
    chex.assert_trees_all_close(
        _torch("hinge_embedding_loss", x[3:].astype(float), y[3:].astype(float),
               reduction="none")[1][0], np.asarray(g(jnp.ones(6, f32))[0][3:]))


@jax.jit
def _all_four(s, labels, targets, where):
    return (multi_margin_loss(s, labels, where=where),
            multilabel_margin_loss(s, targets, where=where),
            margin_ranking_loss(s, s, jnp.ones(5, s.dtype)),
            hinge_embedding_loss(s, jnp.ones(5, s.dtype)))


def test_torch_margin_dtypes_nan_and_out_of_range():
    bf = jnp.asarray(T_SCORES, jnp.bfloat16)
    outs = _all_four(bf, T_LABELS, T_MULTILABEL, None)
    assert all(out.dtype == jnp.float32 for out in outs)
    chex.assert_trees_all_close(outs[0], ref_multi_margin(np.asarray(bf, np.float64),
                                                          T_LABELS), rtol=1e-6)
    # PyTorch raises on an out-of-range label (or target index); under jit the row is NaN.
    bad_labels = np.array([0, 5, -1, 2])
    bad_targets = T_MULTILABEL.copy()
    bad_targets[0, 1], bad_targets[1, 0] = 7, 5
    mm, ml, _, _ = map(np.asarray, _all_four(T_SCORES, bad_labels, bad_targets, None))
    np.testing.assert_array_equal(np.isnan(mm), [False, True, True, False])
    np.testing.assert_array_equal(np.isnan(ml), [True, True, False, False])
    # NaN in, NaN out (PyTorch's kernel would drop it); a masked NaN does not leak.
    s = T_SCORES.copy()
    s[1, 0] = np.nan
    assert np.isnan(_all_four(s, T_LABELS, T_MULTILABEL, None)[0][1])
    g = jax.grad(lambda s: sum(jnp.sum(o) for o in _all_four(s, T_LABELS, T_MULTILABEL,
                                                             T_ROWS)[:2]))(s)
    chex.assert_tree_all_finite(g)


def test_torch_margin_jit_vmap_hessian():
    f = jax.jit(jax.vmap(lambda s, t: multilabel_margin_loss(s, t)))
    chex.assert_trees_all_close(f(T_SCORES, T_MULTILABEL),
                                multilabel_margin_loss(T_SCORES, T_MULTILABEL), rtol=1e-6)
    h = jax.jit(jax.hessian(lambda s: jnp.sum(multi_margin_loss(s, T_LABELS[:2], p=2))))(
        T_SCORES[:2])
    # p = 2: the Hessian of (m - s_y + s_j)^2 / C on the active pairs.
    s64, c = T_SCORES[:2], T_SCORES.shape[1]
    want = np.zeros((2, c, 2, c))
    for n in range(2):
        y = T_LABELS[n]
        for j in range(c):
            if j != y and 1 - s64[n, y] + s64[n, j] > 0:
                v = np.zeros(c)
                v[j], v[y] = 1, -1
                want[n, :, n, :] += 2 * np.outer(v, v) / c
    chex.assert_trees_all_close(h, want, rtol=1e-5, atol=1e-6)


def test_torch_margin_bad_input():
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        multi_margin_loss(T_SCORES, T_LABELS, p=3)
    # Out-of-range labels: NaN under jit, an error through jaxloss.checked.
    with pytest.raises(ValueError, match="labels must be class ids in \\[0, 5\\)"):
        jaxloss.checked(multi_margin_loss)(T_SCORES, np.array([0, 5, 1, 2]))
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        multi_margin_loss(T_SCORES, T_LABELS.astype(np.float32))
    with pytest.raises(ValueError, match="labels must have shape"):
        multi_margin_loss(T_SCORES, T_LABELS[:3])
    with pytest.raises(ValueError, match="class_weights must have shape"):
        multi_margin_loss(T_SCORES, T_LABELS, class_weights=np.ones(4))
    with pytest.raises(ValueError, match="margin must be a scalar"):
        multi_margin_loss(T_SCORES, T_LABELS, margin=np.ones(2))
    with pytest.raises(ValueError, match="where"):
        multi_margin_loss(T_SCORES, T_LABELS, where=np.ones(3, bool))
    with pytest.raises(TypeError, match="targets must have an integer dtype"):
        multilabel_margin_loss(T_SCORES, T_MULTILABEL.astype(np.float32))
    with pytest.raises(ValueError, match="targets must have shape"):
        multilabel_margin_loss(T_SCORES, T_MULTILABEL[:, :3])
    with pytest.raises(TypeError, match="scores"):
        multilabel_margin_loss(T_MULTILABEL, T_MULTILABEL)
    with pytest.raises(ValueError, match="input1"):
        margin_ranking_loss(T_X1, T_X2[:, :3], T_SIGNS)
    with pytest.raises(TypeError, match="input2"):
        margin_ranking_loss(T_X1, T_MULTILABEL[:3, :4], T_SIGNS)
    with pytest.raises(ValueError, match="reduction"):
        margin_ranking_loss(T_X1, T_X2, T_SIGNS, reduction="avg")
    with pytest.raises(ValueError, match="targets"):
        hinge_embedding_loss(T_DIST, np.ones((2, 4)))
    with pytest.raises(TypeError, match="distances"):
        hinge_embedding_loss(T_MULTILABEL, np.ones(5))
