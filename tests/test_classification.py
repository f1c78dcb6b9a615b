"""Tests of the classification losses (design.md, "How a loss is tested")."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from absl.testing import absltest, parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss.classification import multilabel_soft_margin_loss, nll_loss, soft_margin_loss
from jaxloss.testing import (
    assert_finite_differences,
    assert_grads_finite,
    assert_vjp_matches_reference,
)

N, C = 8, 5
RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(N, C)) * 3).astype(np.float32)
LABELS = RNG.integers(0, C, size=N).astype(np.int32)
SOFT = RNG.dirichlet(np.ones(C), size=N).astype(np.float32)
ONEHOT = np.eye(C, dtype=np.float32)[LABELS]
PROBS = RNG.uniform(0.05, 0.95, size=(N, C)).astype(np.float32)
BINARY = RNG.integers(0, 2, size=(N, C)).astype(np.float32)
WEIGHTS = RNG.uniform(0.5, 2.0, size=C).astype(np.float32)
CLASS_MASK = RNG.uniform(size=(N, C)) > 0.3
CLASS_MASK[:, 0] = True  # every row keeps a class
ROW_MASK = np.array([True, False] * (N // 2))

sbce = jaxloss.sigmoid_binary_cross_entropy
bce = jaxloss.binary_cross_entropy
sce = jaxloss.softmax_cross_entropy
ice = jaxloss.softmax_cross_entropy_with_integer_labels
cce = jaxloss.categorical_cross_entropy


# Naive float64 references: the textbook formulas, PyTorch's conventions written out.

def ref_sigmoid_bce(x, y, pos_weight=1.0):
    s = 1 / (1 + jnp.exp(-x))
    return -(pos_weight * y * jnp.log(s) + (1 - y) * jnp.log(1 - s))


def ref_bce(p, y):
    return -(y * jnp.maximum(jnp.log(p), -100) + (1 - y) * jnp.maximum(jnp.log(1 - p), -100))


def ref_log_softmax(x):
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return jnp.log(e / jnp.sum(e, axis=-1, keepdims=True))


def ref_softmax_ce(x, y, label_smoothing=0.0):
    y = (1 - label_smoothing) * y + label_smoothing / x.shape[-1]
    return -jnp.sum(y * ref_log_softmax(x), axis=-1)


def ref_torch_cross_entropy(x, labels, weight=None, ignore_index=-100, label_smoothing=0.0,
                            reduction="mean"):
    """torch.nn.CrossEntropyLoss written out: (1-e) * nll + e/C * sum_c w_c (-log p_c);
    "mean" divides by the summed weights of the kept rows."""
    c = x.shape[-1]
    w = jnp.ones(c, x.dtype) if weight is None else weight
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    logp = ref_log_softmax(x)
    w_y = w[safe] * keep
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0] * w_y
    smooth = -jnp.sum(logp * w, axis=-1) * keep
    per_row = (1 - label_smoothing) * nll + label_smoothing / c * smooth
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return jnp.sum(per_row)
    return jnp.sum(per_row) / jnp.sum(w_y)


def ref_categorical_ce(p, y):
    p = jnp.clip(p / jnp.sum(p, axis=-1, keepdims=True), 1e-7, 1 - 1e-7)
    return -jnp.sum(y * jnp.log(p), axis=-1)


# ---------------------------------------------------------------------------------
# 1. Values: optax conformance, references, the seed's worked examples.


class OptaxConformanceTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_sigmoid_binary_cross_entropy(self):
        got = self.variant(sbce)(LOGITS, BINARY)
        chex.assert_trees_all_close(got, optax.losses.sigmoid_binary_cross_entropy(
            LOGITS, BINARY), rtol=1e-6)
        got = self.variant(sbce)(LOGITS, SOFT)
        chex.assert_trees_all_close(got, optax.losses.sigmoid_binary_cross_entropy(
            LOGITS, SOFT), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_softmax_cross_entropy(self):
        for where in (None, CLASS_MASK, ROW_MASK):
            got = self.variant(functools.partial(sce, where=where))(LOGITS, SOFT)
            want = optax.losses.softmax_cross_entropy(LOGITS, SOFT, where=where)
            chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_softmax_cross_entropy_with_integer_labels(self):
        for where in (None, CLASS_MASK, ROW_MASK):
            got = self.variant(functools.partial(ice, where=where))(LOGITS, LABELS)
            want = optax.losses.softmax_cross_entropy_with_integer_labels(
                LOGITS, LABELS, where=where)
            chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    def test_other_axes(self):
        logits = LOGITS.reshape(2, 4, C).transpose(0, 2, 1)  # classes on axis 1
        labels = LABELS.reshape(2, 4)
        chex.assert_trees_all_close(
            ice(logits, labels, axis=1),
            optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, axis=1),
            rtol=1e-6)
        chex.assert_trees_all_close(
            sce(logits, SOFT.reshape(2, 4, C).transpose(0, 2, 1), axis=1),
            optax.losses.softmax_cross_entropy(
                logits, SOFT.reshape(2, 4, C).transpose(0, 2, 1), axis=1), rtol=1e-6)
        multi = LOGITS.reshape(N, 1, C)
        chex.assert_trees_all_close(
            ice(multi, LABELS, axis=(1, 2)),
            optax.losses.softmax_cross_entropy_with_integer_labels(multi, LABELS, axis=(1, 2)),
            rtol=1e-6)

    def test_gradients_equal_optax(self):
        chex.assert_trees_all_close(
            jax.grad(lambda x: ice(x, LABELS).sum())(LOGITS),
            jax.grad(lambda x: optax.losses.softmax_cross_entropy_with_integer_labels(
                x, LABELS).sum())(LOGITS), rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(
            jax.grad(lambda x: sce(x, SOFT).sum())(LOGITS),
            jax.grad(lambda x: optax.losses.softmax_cross_entropy(x, SOFT).sum())(LOGITS),
            rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(
            jax.grad(lambda x: sbce(x, SOFT).sum())(LOGITS),
            jax.grad(lambda x: optax.losses.sigmoid_binary_cross_entropy(x, SOFT).sum())(
                LOGITS), rtol=1e-5, atol=1e-7)


def test_seed_binary_cross_entropy_examples():
    # y = 1: p = 0.9 is a small loss, p = 0.1 a large one.
    small, large = bce(jnp.array([0.9, 0.1]), jnp.array([1.0, 1.0]))
    np.testing.assert_allclose(small, -np.log(0.9), rtol=1e-6)
    np.testing.assert_allclose(large, -np.log(0.1), rtol=1e-6)
    assert small < 0.11 and large > 2.3
    # The same through the logits.
    logits = jnp.log(jnp.array([0.9, 0.1]) / (1 - jnp.array([0.9, 0.1])))
    chex.assert_trees_all_close(sbce(logits, jnp.ones(2)), jnp.array([small, large]),
                                rtol=1e-5)


def test_seed_categorical_examples():
    cat_dog_cow = jnp.array([[0.80, 0.15, 0.05], [0.05, 0.60, 0.35]])
    true_cat = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    good, bad = cce(cat_dog_cow, true_cat)
    np.testing.assert_allclose(good, -np.log(0.8), rtol=1e-6)
    np.testing.assert_allclose(bad, -np.log(0.05), rtol=1e-6)
    assert bad > 10 * good
    # Integer labels on the log-probabilities give the same numbers.
    chex.assert_trees_all_close(ice(jnp.log(cat_dog_cow), jnp.array([0, 0])),
                                jnp.array([good, bad]), rtol=1e-6)


def test_categorical_cross_entropy_matches_keras_formula(x64):
    p = jnp.asarray(PROBS, jnp.float64)
    chex.assert_trees_all_close(cce(p, SOFT), ref_categorical_ce(p, jnp.asarray(SOFT, float)),
                                rtol=1e-12)
    clipped = jnp.array([[0.0, 1.0, 0.0]])
    chex.assert_trees_all_close(cce(clipped, jnp.array([[1.0, 0.0, 0.0]])),
                                jnp.array([-np.log(1e-7)]), rtol=1e-9)


# ---------------------------------------------------------------------------------
# 2. Gradients: custom_vjp against jax.grad of the float64 reference; finite differences.


@pytest.mark.parametrize("case", ["sbce", "sbce_pos_weight", "bce", "sce", "sce_smooth",
                                  "ice", "ice_torch", "cce"])
def test_vjp_matches_reference_and_finite_differences(case, x64):
    w = jnp.asarray(WEIGHTS, jnp.float64)
    cases = {
        "sbce": (sbce, ref_sigmoid_bce, (LOGITS, SOFT), {}),
        "sbce_pos_weight": (lambda x, y: sbce(x, y, pos_weight=w),
                            lambda x, y: ref_sigmoid_bce(x, y, w), (LOGITS, BINARY), {}),
        "bce": (bce, ref_bce, (PROBS, SOFT), {}),
        "sce": (sce, ref_softmax_ce, (LOGITS, SOFT), {}),
        "sce_smooth": (functools.partial(sce, label_smoothing=0.3),
                       functools.partial(ref_softmax_ce, label_smoothing=0.3),
                       (LOGITS, SOFT), {}),
        "ice": (ice, lambda x, y: ref_torch_cross_entropy(x, y, reduction="none"),
                (LOGITS, LABELS), {}),
        "ice_torch": (
            lambda x, y: ice(x, y, class_weights=w, label_smoothing=0.2, reduction="mean"),
            lambda x, y: ref_torch_cross_entropy(x, y, w, label_smoothing=0.2),
            (LOGITS, LABELS), {}),
        "cce": (cce, ref_categorical_ce, (PROBS, SOFT), {}),
    }
    loss, reference, args, kwargs = cases[case]
    err = assert_vjp_matches_reference(loss, reference, *args, **kwargs)
    assert err < 1e-10
    assert_finite_differences(loss, *args, **kwargs)


def test_label_and_option_gradients(x64):
    """Cotangents of the other differentiable inputs: soft labels, pos_weight,
    class_weights, label smoothing."""
    w = jnp.asarray(WEIGHTS, jnp.float64)
    assert_vjp_matches_reference(sbce, ref_sigmoid_bce, LOGITS, SOFT, argnums=(0, 1))
    assert_vjp_matches_reference(lambda x, y, pw: sbce(x, y, pos_weight=pw), ref_sigmoid_bce,
                                 LOGITS, SOFT, w, argnums=(0, 1, 2))
    assert_vjp_matches_reference(bce, ref_bce, PROBS, SOFT, argnums=(0, 1))
    assert_vjp_matches_reference(sce, ref_softmax_ce, LOGITS, SOFT, argnums=(0, 1))
    assert_vjp_matches_reference(cce, ref_categorical_ce, PROBS, SOFT, argnums=(0, 1))
    assert_vjp_matches_reference(
        lambda x, w: ice(x, LABELS, class_weights=w, label_smoothing=0.1, reduction="sum"),
        lambda x, w: ref_torch_cross_entropy(x, LABELS, w, label_smoothing=0.1,
                                             reduction="sum"),
        LOGITS, w, argnums=(0, 1))
    # The smoothing coefficient itself, a traced value of the public option.
    smoothing_grad = jax.grad(
        lambda e: ice(jnp.asarray(LOGITS, float), LABELS, label_smoothing=e).sum())(0.1)
    want = jax.grad(lambda e: ref_torch_cross_entropy(
        jnp.asarray(LOGITS, float), LABELS, label_smoothing=e, reduction="sum"))(0.1)
    np.testing.assert_allclose(smoothing_grad, want, rtol=1e-10)


def test_pytorch_bce_gradient_convention(x64):
    """BCELoss backward: (p - y) / max(p (1 - p), eps) with PyTorch's eps = float32(1e-12)
    for every dtype (-1000000003995.80 at p = 0, y = 1 in float64, as torch gives)."""
    p = jnp.array([1e-13, 0.3, 1 - 1e-9, 0.0, 1.0, 0.0, 1.0])
    y = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    grad = jax.grad(lambda p: bce(p, y).sum())(p)
    want = (p - y) / jnp.maximum(p * (1 - p), float(np.float32(1e-12)))
    chex.assert_trees_all_close(grad, want, rtol=1e-12)
    np.testing.assert_allclose(grad[3], -1000000003995.8029, rtol=1e-15)
    chex.assert_trees_all_close(bce(p[3:], y[3:]), jnp.array([100.0, 100.0, 0.0, 0.0]))


class TorchSemanticsTest(parameterized.TestCase):
    """PyTorch CrossEntropyLoss / BCEWithLogitsLoss semantics, written out in float64."""

    @parameterized.product(weighted=(False, True), smoothing=(0.0, 0.15),
                           reduction=("none", "mean", "sum"))
    def test_cross_entropy_options(self, weighted, smoothing, reduction):
        with jax.enable_x64(True):
            x = jnp.asarray(LOGITS, float)
            labels = jnp.asarray(LABELS).at[::3].set(-100)
            w = jnp.asarray(WEIGHTS, float) if weighted else None
            got = ice(x, labels, class_weights=w, ignore_index=-100,
                      label_smoothing=smoothing, reduction=reduction)
            want = ref_torch_cross_entropy(x, labels, w, -100, smoothing, reduction)
            chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-14)
            g = jax.grad(lambda x: ice(x, labels, class_weights=w, ignore_index=-100,
                                       label_smoothing=smoothing, reduction=reduction).sum())
            g_ref = jax.grad(lambda x: ref_torch_cross_entropy(
                x, labels, w, -100, smoothing, reduction).sum())
            chex.assert_trees_all_close(g(x), g_ref(x), rtol=1e-10, atol=1e-14)
            np.testing.assert_array_equal(g(x)[::3], 0.0)  # ignored rows

    def test_ignore_index_inside_class_range(self):
        labels = jnp.asarray(LABELS).at[:3].set(2)
        keep = np.asarray(labels) != 2
        got = ice(LOGITS, labels, ignore_index=2, reduction="mean")
        want = optax.losses.softmax_cross_entropy_with_integer_labels(LOGITS, labels)[keep]
        np.testing.assert_allclose(got, want.mean(), rtol=1e-6)

    def test_no_row_kept_gives_zero_and_zero_gradient(self):
        labels = jnp.full((N,), -100)
        for w in (None, WEIGHTS):
            f = lambda x, w=w: ice(x, labels, ignore_index=-100, class_weights=w,  # noqa: E731
                                   reduction="mean")
            self.assertEqual(float(f(LOGITS)), 0.0)
            np.testing.assert_array_equal(jax.grad(f)(LOGITS), 0.0)

    def test_bce_with_logits_pos_weight(self):
        with jax.enable_x64(True):
            x, y, w = (jnp.asarray(a, float) for a in (LOGITS, BINARY, WEIGHTS))
            for reduction, fn in (("none", lambda a: a), ("mean", jnp.mean), ("sum", jnp.sum)):
                got = sbce(x, y, pos_weight=w, reduction=reduction)
                chex.assert_trees_all_close(got, fn(ref_sigmoid_bce(x, y, w)), rtol=1e-12)
            grad = jax.grad(lambda x: sbce(x, y, pos_weight=w).sum())(x)
            s = jax.nn.sigmoid(x)
            chex.assert_trees_all_close(grad, s * (w * y + 1 - y) - w * y, rtol=1e-12)

    def test_label_smoothing_conventions(self):
        # Keras: binary labels move toward 0.5.
        chex.assert_trees_all_close(
            sbce(LOGITS, BINARY, label_smoothing=0.2),
            optax.losses.sigmoid_binary_cross_entropy(LOGITS, BINARY * 0.8 + 0.1), rtol=1e-6)
        # (1 - e) onehot + e / C, optax.smooth_labels.
        chex.assert_trees_all_close(
            ice(LOGITS, LABELS, label_smoothing=0.2),
            optax.losses.softmax_cross_entropy(LOGITS, optax.smooth_labels(ONEHOT, 0.2)),
            rtol=1e-6)
        chex.assert_trees_all_close(
            sce(LOGITS, ONEHOT, label_smoothing=0.2),
            optax.losses.softmax_cross_entropy(LOGITS, optax.smooth_labels(ONEHOT, 0.2)),
            rtol=1e-6)


# ---------------------------------------------------------------------------------
# 3. Extremes.


def test_huge_logits_are_finite_and_exact():
    x = jnp.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30]], jnp.float32)
    labels = jnp.array([0, 2])
    loss = ice(x, labels)
    chex.assert_trees_all_close(loss, jnp.array([0.0, np.log(2.0)]), atol=1e-6)
    assert_grads_finite(ice, x, labels)
    assert_grads_finite(sce, x, jax.nn.one_hot(labels, 3))
    assert_grads_finite(sbce, x, jnp.ones_like(x))
    chex.assert_trees_all_close(sbce(x, jnp.ones_like(x))[0], jnp.array([0.0, 1e30, np.log(2)]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_whole_low_precision_range(dtype):
    top = float(jnp.finfo(dtype).max)
    x = jnp.array([[top, -top, 0.0], [-top, 1.0, top]], dtype)
    # Label logits 0 and top: the exact losses (top and 0) fit in float32. With the
    # label on -top the exact loss, 2 * top, does not: it comes back as +inf.
    labels = jnp.array([2, 2])
    for loss, target in ((ice, labels), (sce, jax.nn.one_hot(labels, 3)),
                         (sbce, jnp.ones((2, 3)))):
        out = loss(x, target)
        assert out.dtype == jnp.float32
        assert_grads_finite(loss, x, target)
        assert jax.grad(lambda x, loss=loss, t=target: loss(x, t).sum())(x).dtype == dtype


def test_bf16_logits_of_1e4_accumulate_in_float32():
    x = jnp.array([[1e4, -1e4, 3.0e3, 9.0e3], [1.2e4, 1.19e4, -5.0, 0.0]], jnp.bfloat16)
    labels = jnp.array([2, 1])
    loss = ice(x, labels)
    assert loss.dtype == jnp.float32
    rounded = x.astype(jnp.float32)
    chex.assert_trees_all_close(loss, ice(rounded, labels), rtol=1e-7)
    # 1e4 and 1e4 - 30 both round to 9984 in bf16: the exact loss of the rounded
    # logits is log 2; optax, accumulating in bf16, rounds it to 0.
    tie = jnp.array([[1e4, 1e4 - 30]], jnp.bfloat16)
    np.testing.assert_allclose(ice(tie, jnp.array([1])), [np.log(2.0)], rtol=1e-6)
    assert float(optax.losses.softmax_cross_entropy_with_integer_labels(
        tie, jnp.array([1]))[0]) == 0.0
    grad = jax.grad(lambda x: ice(x, labels).sum())(x)
    assert grad.dtype == jnp.bfloat16
    chex.assert_trees_all_close(grad.astype(jnp.float32),
                                jax.grad(lambda x: ice(x, labels).sum())(rounded), atol=1e-2)
    chex.assert_trees_all_close(sce(x, jax.nn.one_hot(labels, 4)), loss)


def ref_masked_softmax_ce(x, y, label_smoothing=0.0):
    """-sum_c q_c log softmax(x)_c over the classes that exist in the row (finite logit),
    with q = (1 - e) y + e / (their number): a class whose logit is -inf takes no
    probability and no smoothing mass. The log-softmax subtracts the row's max."""
    exists = x > -jnp.inf
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    safe = jnp.where(exists, x, m)  # no -inf (and no 0 * inf) in the arithmetic
    e = jnp.where(exists, jnp.exp(safe - m), 0.0)
    log_p = safe - m - jnp.log(jnp.sum(e, axis=-1, keepdims=True))
    q = (1 - label_smoothing) * y + label_smoothing * exists / jnp.sum(
        exists, axis=-1, keepdims=True)
    return -jnp.sum(jnp.where(exists, q * log_p, 0.0), axis=-1)


NEG_INF_LOGITS = np.array([
    [2.0, -np.inf, 0.5, -np.inf, 1.0],  # two classes masked
    [-np.inf, 1.0, 3.0, 0.0, -np.inf],  # two others
    [-np.inf, -np.inf, 0.7, -np.inf, -np.inf],  # the label's class is the only one left
    [1e30, -np.inf, -1e30, 3e29, 5.0],  # huge logits: the label's ~7e29 below the max
    [0.3, -1.2, -np.inf, 2.2, 0.1],  # one masked
    [-np.inf, -np.inf, -np.inf, 4.0, -3.0],  # the label 7 below the one other class
])
NEG_INF_LABELS = np.array([0, 2, 2, 3, 4, 4], np.int32)


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float32, 1e-6, 1e-7),
                                               (np.float64, 1e-12, 1e-15)])
def test_neg_inf_masked_classes(dtype, rtol, atol):
    """-inf logits mask classes, differently in each row: values and gradients of the
    integer and the one-hot/soft softmax cross-entropy, with and without smoothing,
    equal the float64 loss over the classes that exist; masked logits get gradient 0."""
    x = NEG_INF_LOGITS
    exists = np.isfinite(x)
    onehot = np.eye(5)[NEG_INF_LABELS]
    soft = np.where(exists, np.random.default_rng(1).uniform(0.1, 1.0, x.shape), 0.0)
    soft /= soft.sum(-1, keepdims=True)
    with jax.enable_x64(dtype == np.float64):
        logits = jnp.asarray(x, dtype)
        cases = {
            "ice": (lambda x, e: ice(x, NEG_INF_LABELS, label_smoothing=e), onehot),
            "sce": (lambda x, e: sce(x, jnp.asarray(onehot, dtype), label_smoothing=e),
                    onehot),
            "sce_soft": (lambda x, e: sce(x, jnp.asarray(soft, dtype), label_smoothing=e),
                         soft),
        }
        for name, (loss, target) in cases.items():
            for smoothing in (0.0, 0.3):
                # Rows are independent: the gradient of the sum holds each row's own.
                value = loss(logits, smoothing)
                grad = jax.grad(lambda x, loss=loss, e=smoothing: loss(x, e).sum())(logits)
                with jax.enable_x64(True):
                    x64, y64 = jnp.asarray(x), jnp.asarray(target)
                    want = np.asarray(ref_masked_softmax_ce(x64, y64, smoothing))
                    want_grad = np.asarray(jax.grad(
                        lambda x, e=smoothing, y=y64: ref_masked_softmax_ce(x, y, e).sum())(x64))
                message = f"{name}, smoothing {smoothing}"
                chex.assert_tree_all_finite((value, grad))
                chex.assert_trees_all_close(value, want.astype(dtype), rtol=rtol, atol=atol,
                                            custom_message=message)
                chex.assert_trees_all_close(grad, want_grad.astype(dtype), rtol=rtol,
                                            atol=atol, custom_message=message)
                np.testing.assert_array_equal(np.asarray(grad)[~exists], 0.0)
                # The only class left is certain: loss 0, gradient 0.
                np.testing.assert_array_equal(value[2], 0.0)
                np.testing.assert_array_equal(grad[2], 0.0)
    # optax gives NaN for sce there.
    assert jnp.isnan(optax.losses.softmax_cross_entropy(x[:1], onehot[:1])[0])


def test_sigmoid_infinite_logits_limits():
    x = jnp.array([jnp.inf, jnp.inf, -jnp.inf, -jnp.inf, jnp.inf])
    y = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5])
    loss = sbce(x, y)
    np.testing.assert_array_equal(loss, [0.0, jnp.inf, 0.0, jnp.inf, jnp.inf])
    grad = jax.grad(lambda x: sbce(x, y).sum())(x)
    np.testing.assert_array_equal(grad, jax.nn.sigmoid(x) - y)
    grad_w = jax.grad(lambda x: sbce(x, y, pos_weight=3.0).sum())(x)
    chex.assert_tree_all_finite(grad_w)


def test_probabilities_zero_and_one():
    p = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    y = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    for loss in (bce, cce):
        assert_grads_finite(loss, p, y)
    np.testing.assert_allclose(bce(p, y), [[100.0, 100.0, 0.0], [0.0, 0.0, 0.0]])


def test_nan_in_nan_out():
    x = LOGITS.copy()
    x[1, 2] = np.nan
    for loss, target in ((ice, LABELS), (sce, SOFT), (sbce, SOFT)):
        out = np.asarray(loss(x, target))
        assert np.isnan(out[1]).any()
        assert np.isfinite(np.delete(out, 1, axis=0)).all()
    p = PROBS.copy()
    p[1, 2] = np.nan
    assert np.isnan(np.asarray(bce(p, SOFT))[1, 2]) and np.isnan(cce(p, SOFT)[1])


def test_non_finite_input_under_a_mask_leaks_into_neither_value_nor_gradient():
    bad = LOGITS.copy()
    bad[1] = np.nan
    bad[3, 2] = np.inf
    bad_p = PROBS.copy()
    bad_p[1] = np.nan
    element_mask = np.ones((N, C), bool)
    element_mask[1] = element_mask[3, 2] = False
    row_mask = np.ones(N, bool)
    row_mask[[1, 3]] = False
    ignored = np.where(row_mask, LABELS, -100)
    cases = [
        (lambda x: sbce(x, BINARY, pos_weight=WEIGHTS, where=element_mask, reduction="mean"),
         bad),
        (lambda p: bce(p, BINARY, where=element_mask, reduction="mean"), bad_p),
        (lambda x: sce(x, SOFT, where=row_mask, reduction="mean"), bad),
        (lambda x: sce(x, SOFT, where=element_mask, reduction="sum"), bad),
        (lambda x: ice(x, LABELS, where=row_mask, label_smoothing=0.1, reduction="mean"), bad),
        (lambda x: ice(x, ignored, ignore_index=-100, class_weights=WEIGHTS,
                       reduction="mean"), bad),
        (lambda p: cce(p, SOFT, where=row_mask, reduction="mean"), bad_p),
    ]
    for loss, x in cases:
        value, grad = jax.value_and_grad(loss)(x)
        chex.assert_tree_all_finite((value, grad))
        np.testing.assert_array_equal(np.asarray(grad)[1], 0.0)
    # Unmasked, the same NaN does propagate.
    assert np.isnan(jax.grad(lambda x: ice(x, LABELS).sum())(bad)[1]).all()


def test_out_of_range_label_gives_nan():
    labels = LABELS.copy()
    labels[3] = C
    out = ice(LOGITS, labels)
    assert np.isnan(out[3]) and np.isfinite(np.delete(np.asarray(out), 3)).all()
    assert np.isnan(jax.grad(lambda x: ice(x, labels).sum())(LOGITS)[3]).all()


def _per_row_and_grad(loss):
    """Per-row losses and the gradient of their sum, one compile per loss."""
    return jax.jit(lambda x: (loss(x), jax.grad(lambda x: loss(x).sum())(x)))


_PROPERTY_LOSSES = {
    "ice": _per_row_and_grad(lambda x: ice(x, jnp.array([0, 3, 1]))),
    "ice_options": _per_row_and_grad(
        lambda x: ice(x, jnp.array([0, 3, 1]), label_smoothing=0.1,
                      class_weights=jnp.array([1.0, 2.0, 0.5, 1.0]))),
    "sce": _per_row_and_grad(
        lambda x: sce(x, jnp.full((3, 4), 0.25), label_smoothing=0.1)),
    "sbce": _per_row_and_grad(
        lambda x: sbce(x, jnp.full((3, 4), 0.3), pos_weight=2.0)),
}
F32_MAX = float(np.finfo(np.float32).max)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(
    width=32, allow_nan=False, allow_infinity=False)))
def test_property_finite_logits_give_finite_loss_and_gradient(x):
    # A row's cross-entropy is at most (its max logit - min logit) + log C, so it is
    # finite wherever that bound fits in float32; beyond it the exact loss itself
    # exceeds float32 and +inf is its correct rounding. The gradient is always finite.
    spread = np.ptp(x.astype(np.float64), axis=-1)
    representable = spread * 2.5 + 10 < F32_MAX
    for name, f in _PROPERTY_LOSSES.items():
        losses, grad = f(x)
        losses = np.asarray(losses).reshape(3, -1)
        assert np.isfinite(losses[representable]).all(), (name, x)
        assert np.isfinite(grad).all(), (name, x)


# ---------------------------------------------------------------------------------
# 4. Composition: jit, vmap, grad, hessian, pmap, sharded inputs.


def test_vmap_matches_batch():
    for loss, target in ((ice, LABELS), (sce, SOFT), (sbce, SOFT)):
        chex.assert_trees_all_close(jax.vmap(loss)(LOGITS, target), loss(LOGITS, target),
                                    rtol=1e-6)
    chex.assert_trees_all_close(jax.vmap(cce)(PROBS, SOFT), cce(PROBS, SOFT), rtol=1e-6)
    grads = jax.vmap(jax.grad(lambda x, y: ice(x[None], y[None]).sum()))(LOGITS, LABELS)
    chex.assert_trees_all_close(grads, jax.grad(lambda x: ice(x, LABELS).sum())(LOGITS),
                                rtol=1e-6)


def test_hessian(x64):
    x = jnp.asarray(LOGITS[:2], float)
    labels = jnp.asarray(LABELS[:2])
    h = jax.hessian(lambda x: ice(x, labels, label_smoothing=0.1).sum())(x)
    h_ref = jax.hessian(lambda x: ref_softmax_ce(
        x, jax.nn.one_hot(labels, C), label_smoothing=0.1).sum())(x)
    chex.assert_trees_all_close(h, h_ref, rtol=1e-9, atol=1e-12)
    y = jnp.asarray(SOFT[:2], float)
    h_ref = jax.hessian(lambda x: ref_sigmoid_bce(x, y).sum())(x)
    # Reverse over reverse, and jax.hessian's forward over reverse.
    for hessian in (lambda f: jax.jacrev(jax.jacrev(f)), jax.hessian):
        h = hessian(lambda x: sbce(x, y).sum())(x)
        chex.assert_trees_all_close(h, h_ref, rtol=1e-9, atol=1e-12)
    p = jnp.asarray(PROBS[:2], float)
    h = jax.hessian(lambda p: bce(p, y).sum())(p)
    chex.assert_trees_all_close(h, jax.hessian(lambda p: ref_bce(p, y).sum())(p), rtol=1e-9)


def test_forward_mode_leaves_masked_rows_untouched():
    # The rule is linear in the cotangent (jaxloss._rules): a row left out reaches no
    # tangent and no gradient even where it holds NaN, in both modes.
    bad = LOGITS.copy()
    bad[1] = np.nan
    labels = np.where(np.arange(N) == 1, -100, LABELS)
    tangent = np.random.default_rng(1).standard_normal(bad.shape).astype(np.float32)
    for reduction in ("none", "mean"):
        f = functools.partial(ice, labels=labels, label_smoothing=0.1, reduction=reduction)
        out, t_out = jax.jvp(f, (bad,), (tangent,))
        chex.assert_tree_all_finite((out, t_out))
        grad = jax.grad(lambda x, f=f: jnp.sum(f(x)))(bad)
        np.testing.assert_array_equal(np.asarray(grad)[1], 0.0)
        np.testing.assert_allclose(np.sum(t_out), np.vdot(grad, tangent), rtol=1e-5)


class VariantsTest(chex.TestCase):
    """chex's variants, with_pmap included: it replicates the arguments to the 4 CPU
    devices of conftest.py and returns the first device's output, compared with the
    loss on the CPU (the other variants run on the default backend)."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_value_and_grad(self):
        def f(x, t):
            return ice(x, t, class_weights=WEIGHTS, label_smoothing=0.1, reduction="mean")

        cpu = jax.devices("cpu")
        pmap = self.variant.type is chex.ChexVariantType.WITH_PMAP
        with jax.default_device(cpu[0] if pmap else None):
            value, grad = self.variant(jax.value_and_grad(f), devices=cpu)(LOGITS, LABELS)
            want_value, want_grad = jax.value_and_grad(f)(LOGITS, LABELS)
        chex.assert_trees_all_close(value, want_value, rtol=1e-6)
        chex.assert_trees_all_close(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_pmap_over_batch_shards(on_cpu):
    n = len(on_cpu)
    assert n == 4
    x = jnp.asarray(LOGITS[: 2 * n].reshape(n, 2, C))
    labels = jnp.asarray(LABELS[: 2 * n].reshape(n, 2))

    @functools.partial(jax.pmap, axis_name="i", devices=on_cpu)
    def step(x, labels):
        loss, grad = jax.value_and_grad(lambda x: ice(x, labels, reduction="mean"))(x)
        return jax.lax.pmean(loss, "i"), grad

    loss, grad = step(x, labels)
    flat_loss, flat_grad = jax.value_and_grad(
        lambda x: ice(x, labels.reshape(-1), reduction="mean"))(x.reshape(-1, C))
    chex.assert_trees_all_close(loss, jnp.full((n,), flat_loss), rtol=1e-6)
    chex.assert_trees_all_close(grad.reshape(-1, C) / n, flat_grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def mesh(cpu_devices):
    """The 4 CPU devices (the tests that use it run on_cpu, their references too)."""
    return jax.make_mesh((4,), ("data",), devices=cpu_devices)


def test_sharded_inputs(mesh, on_cpu):
    rows = NamedSharding(mesh, P("data"))
    put = functools.partial(jax.device_put, device=rows)
    cases = [
        (lambda x, t: ice(x, t, class_weights=WEIGHTS, label_smoothing=0.1,
                          ignore_index=1, reduction="mean"), LOGITS, LABELS),
        (lambda x, t: sce(x, t, where=CLASS_MASK, reduction="sum"), LOGITS, SOFT),
        (lambda x, t: sbce(x, t, pos_weight=WEIGHTS, reduction="mean"), LOGITS, BINARY),
        (lambda x, t: bce(x, t, reduction="mean"), PROBS, BINARY),
        (lambda x, t: cce(x, t, reduction="mean"), PROBS, SOFT),
        (lambda x, t: ice(x, t), LOGITS, LABELS),
    ]
    for loss, x, t in cases:
        f = jax.jit(jax.value_and_grad(lambda x, t, loss=loss: loss(x, t).sum()))
        value, grad = f(put(x), put(t))
        want_value, want_grad = f(x, t)
        chex.assert_trees_all_close(value, want_value, rtol=1e-6)
        chex.assert_trees_all_close(grad, want_grad, rtol=1e-6, atol=1e-7)
        assert grad.sharding.spec[0] == "data"


def test_long_rows_reduced_in_blocks(x64):
    """Rows longer than 32768 classes are reduced block by block (a CPU speed-up): the
    same values and gradients as the float64 reference, with -inf blocks, a masked
    class range, huge logits and label smoothing."""
    from jaxloss.classification import _row_block

    v = 9 * 4096
    assert _row_block(v) == 4096 and _row_block(32768) is None
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, v)) * 4
    x[1, : 3 * 4096] = -np.inf  # whole blocks absent
    x[2] *= 1e29  # |x| up to ~1e30
    x[3, 5] = 60.0  # one dominant class
    labels = np.array([7, v - 1, int(np.argmax(x[2])), 5], np.int32)
    where = np.ones((4, v), bool)
    where[0, 4096:8192] = False
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        logits = jnp.asarray(x, dtype)
        for kwargs in ({}, {"label_smoothing": 0.1, "where": where}):
            mask = kwargs.get("where", np.ones((4, v), bool))
            eps = kwargs.get("label_smoothing", 0.0)

            def reference(z, mask=mask, eps=eps):
                z = jnp.where(mask, z, -jnp.inf)
                logp = z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)
                exists = mask & jnp.isfinite(z)
                q = (1 - eps) * jax.nn.one_hot(labels, v, dtype=z.dtype) + eps * exists / (
                    jnp.sum(exists, axis=-1, keepdims=True))
                return jnp.sum(jnp.where(q > 0, -q * logp, 0), axis=-1)

            got, got_grad = jax.value_and_grad(lambda z, kw=kwargs: ice(z, labels, **kw).sum())(
                logits)
            want, want_grad = jax.value_and_grad(lambda z: reference(z).sum())(
                logits.astype(np.float64))
            chex.assert_trees_all_close(got, want.astype(got.dtype), rtol=rtol)
            chex.assert_trees_all_close(got_grad, want_grad.astype(got_grad.dtype),
                                        rtol=rtol, atol=1e-12 if dtype == np.float64 else 1e-7)
        dense = sce(logits, jax.nn.one_hot(labels, v, dtype=logits.dtype))
        chex.assert_trees_all_close(dense, ice(logits, labels), rtol=rtol)


def test_inside_shard_map(on_cpu):
    """Rows split over the CPU devices inside jax.shard_map (check_vma on): the summed
    loss and its gradients, including the replicated weights', equal the one-device
    ones."""
    mesh = jaxloss.distributed.data_mesh(devices=on_cpu)  # Auto axes: places the inputs
    shard_map = functools.partial(jax.shard_map, mesh=mesh, out_specs=P())
    cases = [
        (lambda x, t, w: ice(x, t, class_weights=w, label_smoothing=0.1), LOGITS, LABELS),
        (lambda x, t, w: sce(x, t, label_smoothing=0.1) * w[0], LOGITS, SOFT),
        (lambda x, t, w: sbce(x, t, pos_weight=w), LOGITS, BINARY),
        (lambda x, t, w: bce(x, t) * w, PROBS, BINARY),
        (lambda x, t, w: cce(x, t) * w[0], PROBS, SOFT),
    ]
    for loss, x, t in cases:
        def total(x, t, w, loss=loss):
            return jax.lax.psum(jnp.sum(loss(x, t, w)), "data")

        sharded = shard_map(total, in_specs=(P("data"), P("data"), P()))
        f = jax.jit(jax.value_and_grad(sharded, argnums=(0, 2)))
        value, grads = f(x, t, WEIGHTS)
        want_value, want_grads = jax.value_and_grad(
            lambda x, w, t=t, loss=loss: jnp.sum(loss(x, t, w)), argnums=(0, 1))(x, WEIGHTS)
        chex.assert_trees_all_close(value, want_value, rtol=1e-6)
        chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)


def test_class_axis_sharded_logits(mesh, on_cpu):
    """Logits split over the classes take the one-hot compare (a gather's output
    sharding is ambiguous there): same values and gradients as the gather."""
    logits = np.tile(LOGITS, (1, 4))[:, :16]  # 16 classes over 4 devices
    columns = jax.device_put(logits, NamedSharding(mesh, P(None, "data")))
    for kwargs in ({}, {"label_smoothing": 0.2, "class_weights": np.linspace(0.5, 2, 16),
                        "ignore_index": 3, "reduction": "mean"}):
        f = jax.jit(jax.value_and_grad(lambda x, kw=kwargs: ice(x, LABELS, **kw).sum()))
        value, grad = f(columns)
        want_value, want_grad = f(logits)
        chex.assert_trees_all_close(value, want_value, rtol=1e-6)
        chex.assert_trees_all_close(grad, want_grad, rtol=1e-6, atol=1e-7)
        assert grad.sharding.spec[1] == "data"


# ---------------------------------------------------------------------------------
# 5. Bad input.


@pytest.mark.parametrize("call, error, words", [
    (lambda: ice(LOGITS, LABELS.astype(np.float32)), TypeError, ["labels", "integer"]),
    (lambda: ice(LOGITS.astype(np.int32), LABELS), TypeError, ["logits", "floating"]),
    (lambda: ice(LOGITS, LABELS[:3]), ValueError, ["labels", "(3,)", "(8,)"]),
    (lambda: ice(LOGITS, LABELS, class_weights=WEIGHTS[:3]), ValueError, ["class_weights"]),
    (lambda: ice(LOGITS, LABELS, reduction="avg"), ValueError, ["reduction", "avg"]),
    (lambda: ice(LOGITS, LABELS, label_smoothing=1.5), ValueError, ["label_smoothing"]),
    (lambda: ice(LOGITS, LABELS, axis=3), ValueError, ["axis"]),
    (lambda: ice(LOGITS, LABELS, where=CLASS_MASK.astype(int)), TypeError, ["where"]),
    (lambda: sce(LOGITS, SOFT[:, :3]), ValueError, ["labels", "logits"]),
    (lambda: sce(LOGITS, SOFT, label_smoothing=-0.1), ValueError, ["label_smoothing"]),
    (lambda: sbce(LOGITS, BINARY[:3]), ValueError, ["labels", "logits"]),
    (lambda: sbce(LOGITS, BINARY, pos_weight=WEIGHTS[:2]), ValueError, ["pos_weight"]),
    (lambda: sbce(LOGITS, BINARY, reduction=None), ValueError, ["reduction"]),
    (lambda: bce(LABELS, LABELS), TypeError, ["probabilities"]),
    (lambda: cce(PROBS, SOFT[:3]), ValueError, ["labels", "probabilities"]),
])
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_checked_raises_on_bad_values():
    checked_ice = jaxloss.checked(ice)
    chex.assert_trees_all_close(checked_ice(LOGITS, LABELS), ice(LOGITS, LABELS))
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class ids in"):
        checked_ice(LOGITS, LABELS.at[2].set(7) if hasattr(LABELS, "at") else
                    np.where(np.arange(N) == 2, 7, LABELS))
    # ignore_index is a valid value.
    checked_ice(LOGITS, np.where(np.arange(N) == 2, -100, LABELS), ignore_index=-100)
    with pytest.raises(checkify.JaxRuntimeError, match="probabilities must lie in"):
        jaxloss.checked(bce)(PROBS + 1.0, BINARY)
    with pytest.raises(checkify.JaxRuntimeError, match="labels must lie in"):
        jaxloss.checked(sbce)(LOGITS, BINARY * 2)
    nan_logits = LOGITS.copy()
    nan_logits[0, 0] = np.nan
    with pytest.raises(checkify.JaxRuntimeError, match="logits contains 1 NaN"):
        jaxloss.checked(sce)(nan_logits, SOFT)
    with pytest.raises(checkify.JaxRuntimeError, match="predictions contains"):
        jaxloss.checked(jaxloss.mse)(nan_logits, LOGITS)
    # Through functools.partial the domain checks still run, with the bound options.
    partial = functools.partial(ice, ignore_index=-100)
    checked_partial = jaxloss.checked(partial)
    checked_partial(LOGITS, np.where(np.arange(N) == 2, -100, LABELS))
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class ids in"):
        checked_partial(LOGITS, np.where(np.arange(N) == 2, 7, LABELS))


# ---------------------------------------------------------------------------------
# PyTorch's nll_loss, soft_margin_loss and multilabel_soft_margin_loss: values against
# float64 references and torch.nn.functional (values and gradients), extremes, bad input.

TRNG = np.random.default_rng(1)
T_LOGITS = TRNG.normal(size=(2, 3, C)) * 3  # [N, d, C]: the class axis last
T_LOG_PROBS = np.asarray(T_LOGITS - np.log(np.exp(T_LOGITS).sum(-1, keepdims=True)))
T_LABELS = TRNG.integers(0, C, size=(2, 3))
T_IGNORED = np.where(TRNG.uniform(size=(2, 3)) < 0.3, -100, T_LABELS)
T_IGNORED[0, 0] = -100
T_ROWS = np.array([[True, False, True], [True, True, False]])
T_SIGNS = np.where(TRNG.uniform(size=(2, 3, C)) < 0.5, -1.0, 1.0)
T_SOFT = TRNG.uniform(size=(2, 3, C))
T_WEIGHTS = TRNG.uniform(0.5, 2.0, size=C)
T_ELEMENTS = TRNG.uniform(size=(2, 3, C)) < 0.7


def ref_nll(lp, labels, weight=None, ignore_index=None, where=None, reduction="none", xp=np):
    """PyTorch's NLLLoss written out: -w_y lp_y per row, weighted mean over kept rows."""
    c = lp.shape[-1]
    w = xp.ones(c) if weight is None else weight
    one_hot = labels[..., None] == xp.arange(c)
    keep = xp.ones(labels.shape, bool) if where is None else xp.asarray(where)
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
    w_y = xp.where(keep, xp.sum(xp.where(one_hot, w, 0), axis=-1), 0)
    losses = -w_y * xp.sum(xp.where(one_hot, lp, 0), axis=-1)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / w_y.sum()


def ref_soft_margin(x, y, where=None, reduction="none", xp=np):
    return _ref_reduce(xp.log(1 + xp.exp(-y * x)), reduction, where, xp)


def ref_multilabel(x, y, weight=None, where=None, reduction="none", xp=np):
    s = 1 / (1 + xp.exp(-x))
    terms = -(y * xp.log(s) + (1 - y) * xp.log(1 - s))
    if weight is not None:
        terms = terms * weight
    return _ref_reduce(terms.mean(axis=-1), reduction, where, xp)


def _ref_reduce(losses, reduction, where, xp=np):
    m = xp.ones(losses.shape, bool) if where is None else xp.broadcast_to(where, losses.shape)
    losses = xp.where(m, losses, 0)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / m.sum()


# name: (loss, reference, args, masks, option sets)
_TORCH_A = {
    "nll_loss": (nll_loss, ref_nll, (T_LOG_PROBS, T_LABELS), T_ROWS,
                 ({}, {"class_weights": T_WEIGHTS, "ignore_index": -100})),
    "soft_margin_loss": (soft_margin_loss, ref_soft_margin, (T_LOGITS, T_SIGNS), T_ELEMENTS,
                         ({},)),
    "multilabel_soft_margin_loss": (multilabel_soft_margin_loss, ref_multilabel,
                                    (T_LOGITS, T_SOFT), T_ROWS,
                                    ({}, {"class_weights": T_WEIGHTS})),
}


def _ref_kwargs(kw):
    """The reference's names of the options (PyTorch's ``weight``)."""
    return {("weight" if k == "class_weights" else k): v for k, v in kw.items()}


class TorchLossValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_TORCH_A)
    def test_values_vs_float64_reference(self, name):
        loss, ref, args, mask, options = _TORCH_A[name]
        x32 = args[0].astype(np.float32)
        # Each reduction with and without a mask, the options on the last two.
        combos = [(options[0], None, "none"), (options[0], mask, "mean"),
                  (options[-1], mask, "sum"), (options[-1], None, "mean")]
        for kw, where, reduction in combos:
            y = T_IGNORED if "ignore_index" in kw else args[1]
            got = self.variant(lambda x, y, kw=kw, where=where, reduction=reduction: loss(
                x, y, where=where, reduction=reduction, **kw))(x32, y)
            want = ref(args[0], y, where=where, reduction=reduction, **_ref_kwargs(kw))
            chex.assert_shape(got, np.shape(want))
            assert got.dtype == jnp.float32
            chex.assert_trees_all_close(got, want, rtol=2e-6, atol=2e-6)


def _torch_value_and_vjp(fn, args, argnums, cotangent):
    tensors = [torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
    for i in argnums:
        tensors[i].requires_grad_(True)
    out = fn(*tensors)
    grads = torch.autograd.grad(out, [tensors[i] for i in argnums],
                                grad_outputs=torch.tensor(cotangent))
    return out.detach().numpy(), [g.numpy() for g in grads]


def _jax_value_and_vjp(fn, args, argnums, cotangent):
    def bound(*diff):
        full = list(args)
        for i, d in zip(argnums, diff, strict=True):
            full[i] = d
        return fn(*full)

    out, pullback = jax.vjp(bound, *(jnp.asarray(args[i]) for i in argnums))
    return np.asarray(out), [np.asarray(g) for g in pullback(jnp.asarray(cotangent))]


# (jaxloss, torch, args, argnums): torch.nn.functional takes the class axis at dim 1.
_TORCH_CONFORMANCE = {
    "nll_loss": (nll_loss, lambda lp, y, **kw: F.nll_loss(lp.movedim(-1, 1), y, **kw),
                 (T_LOG_PROBS, T_LABELS), (0,), {}),
    "nll_loss[weights,ignore_index]": (
        lambda lp, y, **kw: nll_loss(lp, y, class_weights=T_WEIGHTS, ignore_index=-100, **kw),
        lambda lp, y, **kw: F.nll_loss(lp.movedim(-1, 1), y, weight=torch.tensor(T_WEIGHTS),
                                       ignore_index=-100, **kw),
        (T_LOG_PROBS, T_IGNORED), (0,), {}),
    "nll_loss[ignore_index inside the classes,2d]": (
        lambda lp, y, **kw: nll_loss(lp, y, ignore_index=2, class_weights=T_WEIGHTS, **kw),
        lambda lp, y, **kw: F.nll_loss(lp, y, ignore_index=2, weight=torch.tensor(T_WEIGHTS),
                                       **kw),
        (T_LOG_PROBS[0], T_LABELS[0]), (0,), {}),
    "soft_margin_loss": (soft_margin_loss, F.soft_margin_loss, (T_LOGITS, T_SIGNS), (0,), {}),
    "multilabel_soft_margin_loss": (
        lambda x, y, **kw: multilabel_soft_margin_loss(x, y, class_weights=T_WEIGHTS, **kw),
        lambda x, y, **kw: F.multilabel_soft_margin_loss(x, y, weight=torch.tensor(T_WEIGHTS),
                                                         **kw),
        (T_LOGITS, T_SOFT), (0, 1), {}),
}


@pytest.mark.parametrize("case", list(_TORCH_CONFORMANCE))
def test_torch_conformance_values_and_gradients(case, x64):
    """reduction="none" values and vector-Jacobian products equal torch's (float64);
    "mean" and "sum" follow PyTorch's definitions."""
    ours, theirs, args, argnums, _ = _TORCH_CONFORMANCE[case]
    for reduction in ("none", "mean", "sum"):
        shape = np.shape(theirs(*(torch.tensor(a) for a in args), reduction=reduction))
        cotangent = np.random.default_rng(2).normal(size=shape)
        got, got_grads = _jax_value_and_vjp(
            lambda *a, r=reduction: ours(*a, reduction=r), args, argnums, cotangent)
        want, want_grads = _torch_value_and_vjp(
            lambda *a, r=reduction: theirs(*a, reduction=r), args, argnums, cotangent)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=reduction)
        for g, w in zip(got_grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, err_msg=reduction)


def test_nll_loss_is_cross_entropy_of_the_logits():
    chex.assert_trees_all_close(
        nll_loss(jax.nn.log_softmax(LOGITS), LABELS, class_weights=WEIGHTS, reduction="mean"),
        ice(LOGITS, LABELS, class_weights=WEIGHTS, reduction="mean"), rtol=1e-6)


def test_torch_a_gradients_vs_reference(x64):
    w = jnp.asarray(T_WEIGHTS)
    assert_vjp_matches_reference(
        lambda lp, w: nll_loss(lp, T_IGNORED, class_weights=w, ignore_index=-100,
                               where=T_ROWS, reduction="mean"),
        lambda lp, w: ref_nll(lp, T_IGNORED, w, -100, T_ROWS, "mean", jnp),
        T_LOG_PROBS, w, argnums=(0, 1))
    assert_vjp_matches_reference(soft_margin_loss, lambda x, y: ref_soft_margin(x, y, xp=jnp),
                                 T_LOGITS, T_SIGNS, argnums=(0, 1))
    assert_vjp_matches_reference(
        lambda x, y, w: multilabel_soft_margin_loss(x, y, class_weights=w),
        lambda x, y, w: ref_multilabel(x, y, w, xp=jnp), T_LOGITS, T_SOFT, w,
        argnums=(0, 1, 2))
    assert_finite_differences(
        lambda lp, w: nll_loss(lp, T_LABELS, class_weights=w, reduction="mean"),
        T_LOG_PROBS, w, argnums=(0, 1), order=1)
    assert_finite_differences(soft_margin_loss, T_LOGITS, T_SIGNS, argnums=(0, 1), order=1)
    assert_finite_differences(
        lambda x, y, w: multilabel_soft_margin_loss(x, y, class_weights=w, reduction="sum"),
        T_LOGITS, T_SOFT, w, argnums=(0, 1, 2), order=1)


def test_torch_a_extremes_exact():
    # nll_loss reads only the label's entry: -inf elsewhere is harmless; a weight of 0
    # removes a row whose log-probability is -inf.
    lp = np.array([[-np.inf, 0.0, -np.inf], [0.0, -np.inf, -1e30], [0.0, -np.inf, -3.0]],
                  np.float32)
    labels = np.array([1, 2, 1])
    out, pullback = jax.vjp(lambda lp: nll_loss(lp, labels, class_weights=np.array(
        [1.0, 0.0, 1.0], np.float32)), lp)
    np.testing.assert_array_equal(out, np.array([0.0, 1e30, 0.0], np.float32))
    np.testing.assert_array_equal(pullback(jnp.ones(3))[0],
                                  [[0, 0, 0], [0, 0, -1], [0, 0, 0]])
    # soft_margin_loss: softplus(-y x), exact at +-1e30 and at the float32 maximum.
    x = np.array([1e30, 1e30, -1e30, -1e30, 0.0, 3e38, np.inf], np.float32)
    y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0], np.float32)
    out, pullback = jax.vjp(soft_margin_loss, x, y)
    np.testing.assert_array_equal(out, np.array([0, 1e30, 1e30, 0, np.log(2), 3e38, 0],
                                                np.float32))
    gx, gy = pullback(jnp.ones(7))
    np.testing.assert_array_equal(gx, [0, 1, -1, 0, -0.5, 1, 0])
    # (d/dy at x = inf is -inf * 0: not asserted.)
    np.testing.assert_array_equal(gy[:6], np.array([0, -1e30, 1e30, 0, 0, -3e38], np.float32))
    # multilabel_soft_margin_loss: per class softplus, mean over C = 4.
    x = np.array([[1e30, -1e30, 1e30, -1e30], [np.inf, -np.inf, 2.0, -2.0]], np.float32)
    y = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.5, 0.5]], np.float32)
    out, pullback = jax.vjp(multilabel_soft_margin_loss, x, y)
    chex.assert_trees_all_close(out, np.array([5e29, (2 + 2 * np.log1p(np.exp(-2.0))) / 4],
                                              np.float32), rtol=2e-7)
    gx, gy = pullback(jnp.ones(2))
    np.testing.assert_array_equal(gx[0], [0, 0, 0.25, -0.25])
    np.testing.assert_array_equal(gx[1, :2], [0, 0])
    np.testing.assert_array_equal(gy[0], np.array([-2.5e29, 2.5e29, -2.5e29, 2.5e29],
                                                  np.float32))
    # A class weight of 0 removes an infinite term.
    out = multilabel_soft_margin_loss(x[1:], np.zeros((1, 4), np.float32),
                                      class_weights=np.array([0.0, 1, 1, 1], np.float32))
    want = (np.log1p(np.exp(2.0)) + np.log1p(np.exp(-2.0))) / 4
    chex.assert_trees_all_close(out, np.array([want], np.float32), rtol=2e-7)


def test_torch_a_low_precision_computes_in_float32():
    for dtype in (jnp.bfloat16,):
        x = jnp.asarray(T_LOGITS, dtype)
        lp = jnp.asarray(T_LOG_PROBS, dtype)
        for fn, args in ((nll_loss, (lp, T_LABELS)), (soft_margin_loss, (x, T_SIGNS)),
                         (multilabel_soft_margin_loss, (x, T_SOFT))):
            out, pullback = jax.vjp(lambda a, fn=fn, args=args: fn(a, *args[1:]), args[0])
            assert out.dtype == jnp.float32, (fn.__name__, out.dtype)
            assert pullback(jnp.ones_like(out))[0].dtype == dtype
            want = fn(np.asarray(args[0], np.float32), *args[1:])
            chex.assert_trees_all_close(out, want, rtol=1e-6)
    # bf16 scores of 1e30 (softplus in float32, not bf16).
    big = jnp.array([1e30, -1e30], jnp.bfloat16)
    chex.assert_trees_all_close(soft_margin_loss(big, np.array([-1.0, 1.0])),
                                np.full(2, float(jnp.bfloat16(1e30)), np.float32), rtol=0)


def test_nll_loss_no_row_kept_and_bad_labels():
    labels = np.full(N, -100)
    lp = np.asarray(jax.nn.log_softmax(LOGITS))
    value, grads = jax.value_and_grad(lambda lp, w: nll_loss(
        lp, labels, ignore_index=-100, class_weights=w, reduction="mean"), (0, 1))(lp, WEIGHTS)
    assert float(value) == 0.0  # PyTorch gives NaN (0 / 0)
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_array_equal(grads[1], 0.0)
    # A label out of range: NaN loss and gradient on its row, the others untouched.
    bad = LABELS.copy()
    bad[2] = C
    out, pullback = jax.vjp(lambda lp: nll_loss(lp, bad), lp)
    assert np.isnan(out[2]) and np.all(np.isfinite(np.delete(np.asarray(out), 2)))
    grad = np.asarray(pullback(jnp.ones(N))[0])
    assert np.isnan(grad[2]).any() and np.isfinite(np.delete(grad, 2, axis=0)).all()
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class ids in"):
        jaxloss.checked(nll_loss)(lp, bad)
    jaxloss.checked(nll_loss)(lp, np.where(np.arange(N) == 2, -100, LABELS), ignore_index=-100)
    with pytest.raises(checkify.JaxRuntimeError, match="labels must lie in"):
        jaxloss.checked(multilabel_soft_margin_loss)(LOGITS, BINARY * 2)


def test_torch_a_masked_non_finite_does_not_leak():
    lp = np.array(T_LOG_PROBS, np.float32)
    lp[~T_ROWS] = np.nan
    x = np.array(T_LOGITS, np.float32)
    x[~T_ROWS] = np.inf
    x_el = np.where(T_ELEMENTS, T_LOGITS, np.nan).astype(np.float32)
    for fn, args, where in ((nll_loss, (lp, T_LABELS), T_ROWS),
                            (multilabel_soft_margin_loss, (x, T_SOFT), T_ROWS),
                            (soft_margin_loss, (x_el, T_SIGNS), T_ELEMENTS)):
        value, grad = jax.value_and_grad(lambda a, fn=fn, args=args, where=where: fn(
            a, *args[1:], where=where, reduction="mean"))(args[0])
        chex.assert_tree_all_finite((value, grad))


def test_torch_a_composition(on_cpu):
    f = jax.jit(jax.vmap(nll_loss))
    chex.assert_trees_all_close(f(T_LOG_PROBS, T_LABELS), nll_loss(T_LOG_PROBS, T_LABELS))
    x, y = T_LOGITS[0, 0], T_SOFT[0, 0]
    h = jax.hessian(lambda x: multilabel_soft_margin_loss(x, y, class_weights=T_WEIGHTS))(x)
    s = jax.nn.sigmoid(x)
    chex.assert_trees_all_close(h, np.diag(T_WEIGHTS * s * (1 - s) / C), rtol=1e-5, atol=1e-7)
    h = jax.hessian(lambda x: jnp.sum(soft_margin_loss(x, T_SIGNS[0, 0])))(x)
    chex.assert_trees_all_close(h, np.diag(s * (1 - s)), rtol=1e-5, atol=1e-7)
    rows = np.asarray(jax.nn.log_softmax(LOGITS)).reshape(4, N // 4, C)
    got = jax.pmap(lambda lp, y: nll_loss(lp, y, reduction="sum"), devices=on_cpu)(
        rows, LABELS.reshape(4, -1))
    chex.assert_trees_all_close(got.sum(), nll_loss(rows.reshape(N, C), LABELS,
                                                    reduction="sum"), rtol=1e-6)


@pytest.mark.parametrize("call, error, words", [
    (lambda: nll_loss(LOGITS, LABELS.astype(np.float32)), TypeError, ["labels", "integer"]),
    (lambda: nll_loss(LOGITS.astype(np.int32), LABELS), TypeError, ["log_probs"]),
    (lambda: nll_loss(LOGITS, LABELS[:3]), ValueError, ["labels", "(3,)", "(8,)"]),
    (lambda: nll_loss(LOGITS[0, 0], LABELS[0]), ValueError, ["log_probs", "class axis"]),
    (lambda: nll_loss(LOGITS, LABELS, class_weights=WEIGHTS[:3]), ValueError,
     ["class_weights"]),
    (lambda: nll_loss(LOGITS, LABELS, where=np.ones(3, bool)), ValueError, ["where"]),
    (lambda: nll_loss(LOGITS, LABELS, reduction="avg"), ValueError, ["reduction"]),
    (lambda: soft_margin_loss(LOGITS, BINARY[:3]), ValueError, ["targets", "predictions"]),
    (lambda: soft_margin_loss(LABELS, LABELS), TypeError, ["predictions"]),
    (lambda: soft_margin_loss(LOGITS, BINARY, where=CLASS_MASK[:, :2]), ValueError,
     ["where"]),
    (lambda: multilabel_soft_margin_loss(LOGITS, BINARY[:3]), ValueError, ["labels"]),
    (lambda: multilabel_soft_margin_loss(LOGITS, BINARY, class_weights=WEIGHTS[:2]),
     ValueError, ["class_weights"]),
    (lambda: multilabel_soft_margin_loss(LOGITS, BINARY, where=CLASS_MASK), ValueError,
     ["where"]),
    (lambda: multilabel_soft_margin_loss(np.float32(1.0), 1.0), ValueError, ["logits"]),
])
def test_torch_a_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


if __name__ == "__main__":
    absltest.main()


def test_complex_options_raise_naming_the_argument():
    # A complex option passed the range checks and lost its imaginary part silently.
    x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
    for smoothing in (1j, np.complex64(0.1)):
        with pytest.raises(TypeError, match="label_smoothing must be real"):
            jaxloss.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing=smoothing)
        with pytest.raises(TypeError, match="label_smoothing must be real"):
            jaxloss.linear_softmax_cross_entropy(x, np.zeros((3, 4), np.float32), y,
                                                 label_smoothing=smoothing)
    with pytest.raises(TypeError, match="delta must be real"):
        jaxloss.huber_loss(x, x, delta=1 + 1j)


def test_weighted_mean_near_the_float_maximum_is_finite():
    """Weighted losses of 6e38 (weight 2 on a loss of 3e38) overflow float32 one by one,
    but their weighted mean, 3e38, fits: it is computed from halves."""
    logits = np.array([[1.5e38, -1.5e38], [-1.5e38, 1.5e38]], np.float32)
    labels = np.array([1, 0])
    weights = np.array([1.0, 2.0], np.float32)
    mean = ice(logits, labels, class_weights=weights, reduction="mean")
    np.testing.assert_allclose(float(mean), 3e38, rtol=1e-6)
    rows = ice(logits, labels, class_weights=weights)
    assert np.isinf(rows[0]) and np.isclose(rows[1], 3e38, rtol=1e-6)  # 6e38: beyond float32
    grad = jax.grad(lambda x: ice(x, labels, class_weights=weights, reduction="mean"))(logits)
    np.testing.assert_allclose(np.asarray(grad), [[2 / 3, -2 / 3], [-1 / 3, 1 / 3]], rtol=1e-6)
