"""Tests of the chunked linear cross-entropy (design.md, "How a loss is tested")."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.experimental import checkify

import jaxloss
from jaxloss.large_vocab import DEFAULT_CHUNK_SIZE, linear_softmax_cross_entropy
from jaxloss.testing import (
    assert_finite_differences,
    assert_grads_finite,
    assert_vjp_matches_reference,
)

N, D, V = 12, 6, 24
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, D)).astype(np.float32)
WEIGHT = (RNG.normal(size=(D, V)) * 0.8).astype(np.float32)
BIAS = RNG.normal(size=V).astype(np.float32)
LABELS = RNG.integers(0, V, size=N).astype(np.int32)
ROW_MASK = np.array([True, True, False] * (N // 3))
ARGNUMS = (0, 1, 2)

lce = linear_softmax_cross_entropy
ice = jaxloss.softmax_cross_entropy_with_integer_labels


def loss_of(chunk_size=None, reduction="sum", **kwargs):
    """``f(hidden, weight, bias)`` of the chunked loss (bias None: no bias)."""
    return lambda h, w, b: lce(h, w, LABELS if "labels" not in kwargs else kwargs["labels"],
                               bias=b, chunk_size=chunk_size, reduction=reduction,
                               **{k: v for k, v in kwargs.items() if k != "labels"})


def materialized(reduction="sum", labels=LABELS, **kwargs):
    """The same loss on the materialized logits, through jaxloss's integer cross-entropy."""
    def f(h, w, b):
        logits = h @ w if b is None else h @ w + b
        return ice(logits, labels, reduction=reduction, **kwargs)
    return f


def value_and_grads(f, bias=BIAS):
    """The value and the gradients of ``f``'s sum for hidden, weight (and bias)."""
    argnums = (0, 1) if bias is None else ARGNUMS
    return jax.jit(jax.value_and_grad(lambda *a: f(*a).sum(), argnums=argnums))(
        HIDDEN, WEIGHT, bias)


def ref_linear_ce(h, w, b, labels, label_smoothing=0.0):
    """The textbook formula in float64: -sum_c q_c log softmax(h w + b)_c."""
    x = h @ w + b
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    log_p = jnp.log(e / jnp.sum(e, axis=-1, keepdims=True))
    q = (1 - label_smoothing) * jax.nn.one_hot(labels, x.shape[-1]) + label_smoothing / x.shape[-1]
    return -jnp.sum(q * log_p, axis=-1)


# ---------------------------------------------------------------------------------
# 1. Values and gradients: the materialized optax version, float64 references.


class MaterializedConformanceTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        (None, True), (8, False), (5, True), (7, False),
    )
    def test_values_and_gradients_equal_optax(self, chunk_size, with_bias):
        bias = BIAS if with_bias else None
        ours = self.variant(lambda h, w, b: lce(h, w, LABELS, bias=b, chunk_size=chunk_size))

        def theirs(h, w, b):
            logits = h @ w if b is None else h @ w + b
            return optax.losses.softmax_cross_entropy_with_integer_labels(logits, LABELS)

        chex.assert_trees_all_close(ours(HIDDEN, WEIGHT, bias), theirs(HIDDEN, WEIGHT, bias),
                                    rtol=1e-5, atol=1e-5)
        value, grads = value_and_grads(ours, bias)
        want_value, want_grads = value_and_grads(theirs, bias)
        chex.assert_trees_all_close(value, want_value, rtol=1e-5)
        chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-5)
        assert len(grads) == (3 if with_bias else 2)


def test_default_chunk_size_is_documented():
    assert DEFAULT_CHUNK_SIZE == 2048
    assert "= 2048" in lce.__doc__ and "Wijmans" in lce.__doc__ and "2410.10989" in lce.__doc__


@pytest.mark.parametrize("chunk_size, smoothing", [(5, 0.0), (8, 0.3)])
def test_vjp_matches_float64_reference(chunk_size, smoothing, x64):
    def loss(h, w, b, labels):
        return lce(h, w, labels, bias=b, chunk_size=chunk_size, label_smoothing=smoothing)

    def reference(h, w, b, labels):
        return ref_linear_ce(h, w, b, labels, smoothing)

    assert_vjp_matches_reference(loss, reference, HIDDEN, WEIGHT, BIAS, LABELS,
                                 argnums=ARGNUMS, rtol=1e-10, atol=1e-12)


def test_finite_differences_second_order(x64):
    def loss(h, w, b):
        return lce(h, w, LABELS[:3] % 10, bias=b, chunk_size=3, label_smoothing=0.2)

    assert_finite_differences(loss, HIDDEN[:3], WEIGHT[:, :10], BIAS[:10], argnums=ARGNUMS,
                              order=2)


# ---------------------------------------------------------------------------------
# 2. Options: ignore_index, label_smoothing, where, reductions.


@pytest.mark.parametrize("options", [
    {},
    {"label_smoothing": 0.2},
    {"label_smoothing": 1.0},
    {"where": ROW_MASK},
    {"ignore_index": -100, "labels": np.where(ROW_MASK, LABELS, -100)},
    {"ignore_index": 3, "labels": np.where(ROW_MASK, LABELS, 3)},
    {"ignore_index": -1, "labels": np.where(ROW_MASK, LABELS, -1), "label_smoothing": 0.1,
     "where": np.roll(ROW_MASK, 1)},
], ids=["plain", "smoothing", "smoothing1", "where", "ignore", "ignore_in_range", "all"])
def test_options_match_integer_cross_entropy(options):
    def every_reduction(loss):
        """Per-row losses, and value and gradients of "mean" and "sum", in one jit."""
        def f(h, w, b):
            return loss("none")(h, w, b), [
                jax.value_and_grad(loss(r), argnums=ARGNUMS)(h, w, b) for r in ("mean", "sum")]
        return jax.jit(f)(HIDDEN, WEIGHT, BIAS)

    got = every_reduction(lambda r: loss_of(chunk_size=5, reduction=r, **options))
    want = every_reduction(lambda r: materialized(reduction=r, **options))
    assert got[0].shape == (N,) and got[1][0][0].shape == ()
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    if "where" in options or "ignore_index" in options:
        masked = ~np.asarray(options.get("where", True)) | (
            np.asarray(options.get("labels", LABELS)) == options.get("ignore_index"))
        assert masked.any()
        np.testing.assert_array_equal(np.asarray(got[0])[masked], 0.0)
        for _, grads in got[1]:
            np.testing.assert_array_equal(np.asarray(grads[0])[masked], 0.0)


def test_mean_with_no_row_kept_is_zero_with_zero_gradient():
    f = loss_of(chunk_size=7, reduction="mean", where=np.zeros(N, bool))
    value, grads = value_and_grads(f)
    assert float(value) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_leading_batch_axes_are_rows():
    h, labels = HIDDEN.reshape(3, 4, D), LABELS.reshape(3, 4)
    got = lce(h, WEIGHT, labels, bias=BIAS, chunk_size=5, where=ROW_MASK.reshape(3, 4))
    assert got.shape == (3, 4)
    want = lce(HIDDEN, WEIGHT, LABELS, bias=BIAS, chunk_size=5, where=ROW_MASK)
    chex.assert_trees_all_close(got.reshape(-1), want, rtol=1e-6)


# ---------------------------------------------------------------------------------
# 3. Dtypes and extremes.


def test_bf16_inputs_accumulate_in_float32():
    h, w, b = (jnp.asarray(a, jnp.bfloat16) for a in (HIDDEN, WEIGHT, BIAS))
    loss = lce(h, w, LABELS, bias=b, chunk_size=5)
    assert loss.dtype == jnp.float32
    rounded = [a.astype(jnp.float32) for a in (h, w, b)]
    want = lce(*rounded[:2], LABELS, bias=rounded[2], chunk_size=5)
    # Only the float32 sums of bf16 products differ in their rounding order.
    chex.assert_trees_all_close(loss, want, rtol=1e-5, atol=1e-5)

    def total(h, w, b):
        return lce(h, w, LABELS, bias=b, chunk_size=5).sum()

    grads = jax.grad(total, argnums=ARGNUMS)(h, w, b)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
    want_grads = jax.grad(total, argnums=ARGNUMS)(*rounded)
    for g, want_g in zip(grads, want_grads, strict=True):
        scale = float(jnp.max(jnp.abs(want_g)))
        chex.assert_trees_all_close(g.astype(jnp.float32), want_g, atol=2e-2 * scale)


def test_huge_logits_are_finite_and_exact():
    # Logits of order 1e30 (weights of 1e29): the textbook softmax overflows.
    w = WEIGHT * 1e29
    loss = lce(HIDDEN, w, LABELS, bias=BIAS, chunk_size=5)
    chex.assert_tree_all_finite(loss)
    chex.assert_trees_all_close(loss, ice(HIDDEN @ w + BIAS, LABELS), rtol=1e-5)
    assert float(jnp.max(loss)) > 1e28
    for smoothing in (0.0, 0.2):
        assert_grads_finite(
            lambda h, w, b, e=smoothing: lce(h, w, LABELS, bias=b, chunk_size=5,
                                             label_smoothing=e),
            HIDDEN, w, BIAS, argnums=ARGNUMS)
    assert not np.isfinite(np.asarray(ref_linear_ce(HIDDEN, w, BIAS, LABELS))).all()


def test_neg_inf_bias_masks_classes():
    bias = BIAS.copy()
    masked = np.zeros(V, bool)
    masked[[1, 6, 7, 20, 23]] = True
    bias[masked] = -np.inf
    labels = np.where(masked[LABELS], 0, LABELS)
    for smoothing in (0.0, 0.3):
        ours = loss_of(chunk_size=7, labels=labels, label_smoothing=smoothing)
        theirs = materialized(labels=labels, label_smoothing=smoothing)
        (value, grads), (want, want_grads) = (value_and_grads(ours, bias),
                                               value_and_grads(theirs, bias))
        chex.assert_tree_all_finite((value, grads))
        chex.assert_trees_all_close(value, want, rtol=1e-5)
        chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(grads[1])[:, masked], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[masked], 0.0)
    # The smoothing mass goes to the classes that exist only: the loss over them.
    live = ~masked
    chex.assert_trees_all_close(
        lce(HIDDEN, WEIGHT, labels, bias=bias, label_smoothing=0.3, chunk_size=7),
        ice(HIDDEN @ WEIGHT[:, live] + BIAS[live], np.cumsum(live)[labels] - 1,
            label_smoothing=0.3), rtol=1e-5)


def test_out_of_range_label_gives_nan():
    for bad in (V, -1):
        labels = LABELS.copy()
        labels[3] = bad
        f = loss_of(chunk_size=5, reduction="none", labels=labels)
        out = np.asarray(f(HIDDEN, WEIGHT, BIAS))
        assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()
        grads = value_and_grads(f)[1]
        assert np.isnan(grads[0][3]).all() and np.isfinite(np.delete(grads[0], 3, 0)).all()
        assert np.isnan(grads[1]).any()
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class ids in"):
        jaxloss.checked(lce)(HIDDEN, WEIGHT, labels)
    chex.assert_trees_all_close(jaxloss.checked(lce)(HIDDEN, WEIGHT, LABELS),
                                lce(HIDDEN, WEIGHT, LABELS))


def test_non_finite_rows_under_a_mask_reach_no_gradient():
    bad = HIDDEN.copy()
    bad[2] = np.nan
    bad[5, 1] = np.inf
    labels = np.where(np.arange(N) == 5, -100, LABELS)
    where = np.arange(N) != 2
    for reduction in ("mean", "sum"):
        value, grads = jax.value_and_grad(
            lambda h, w, b, r=reduction: lce(h, w, labels, bias=b, where=where,
                                             ignore_index=-100, chunk_size=5, reduction=r),
            argnums=ARGNUMS)(bad, WEIGHT, BIAS)
        chex.assert_tree_all_finite((value, grads))
        np.testing.assert_array_equal(np.asarray(grads[0])[[2, 5]], 0.0)
    # Unmasked, the same NaN does propagate.
    assert np.isnan(jax.grad(lambda h: lce(h, WEIGHT, LABELS).sum())(bad)[2]).all()


# ---------------------------------------------------------------------------------
# 4. Memory (compile only) and composition.


def test_memory_is_at_most_a_sixteenth_of_the_materialized_version():
    n, d, v = 4096, 512, 32768
    args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32))

    def temp_bytes(f):
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = temp_bytes(lambda h, w, y: lce(h, w, y, reduction="mean"))
    full = temp_bytes(lambda h, w, y: optax.losses.softmax_cross_entropy_with_integer_labels(
        h @ w, y).mean())
    assert full > n * v * 4  # the [N, V] logits, and more
    assert chunked * 16 <= full, (chunked, full)


def test_jit_and_grad_compose():
    f = jax.jit(lambda h, w, b: lce(h, w, LABELS, bias=b, chunk_size=5, reduction="mean"))
    chex.assert_trees_all_close(f(HIDDEN, WEIGHT, BIAS),
                                materialized(reduction="mean")(HIDDEN, WEIGHT, BIAS), rtol=1e-6)
    step = jax.jit(jax.grad(f, argnums=ARGNUMS))
    want = jax.grad(materialized(reduction="mean"), argnums=ARGNUMS)(HIDDEN, WEIGHT, BIAS)
    chex.assert_trees_all_close(step(HIDDEN, WEIGHT, BIAS), want, rtol=1e-5, atol=1e-7)
    # A few steps of gradient descent lower the loss.
    params = (HIDDEN, WEIGHT, BIAS)
    start = f(*params)
    for _ in range(3):
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, step(*params))
    assert f(*params) < start
    # vmap over a batch of problems.
    batched = jax.vmap(lambda h: lce(h, WEIGHT, LABELS, bias=BIAS, chunk_size=5))(
        jnp.stack([HIDDEN, HIDDEN * 0.5]))
    chex.assert_trees_all_close(batched[1], lce(HIDDEN * 0.5, WEIGHT, LABELS, bias=BIAS),
                                rtol=1e-5)


def test_forward_mode_is_not_supported_through_custom_vjp():
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda h: lce(h, WEIGHT, LABELS), (HIDDEN,), (HIDDEN,))


# ---------------------------------------------------------------------------------
# 5. Bad input.


@pytest.mark.parametrize("call, error, words", [
    (lambda: lce(HIDDEN.astype(np.int32), WEIGHT, LABELS), TypeError, ["hidden", "floating"]),
    (lambda: lce(HIDDEN, WEIGHT.astype(np.int32), LABELS), TypeError, ["weight", "floating"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS.astype(np.float32)), TypeError, ["labels", "integer"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, bias=LABELS), TypeError, ["bias", "floating"]),
    (lambda: lce(HIDDEN, WEIGHT[:4], LABELS), ValueError, ["hidden", "weight", "D = 4"]),
    (lambda: lce(HIDDEN, WEIGHT[0], LABELS), ValueError, ["weight", "[D, V]"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS[:3]), ValueError, ["labels", "(3,)", "(12,)"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, bias=BIAS[:5]), ValueError, ["bias", "(5,)", "(24,)"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, where=ROW_MASK[:4]), ValueError, ["where", "(4,)"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, where=ROW_MASK.astype(int)), TypeError, ["where"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, chunk_size=0), ValueError, ["chunk_size", "0"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, chunk_size=2.5), ValueError, ["chunk_size"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, label_smoothing=1.5), ValueError,
     ["label_smoothing", "1.5"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, label_smoothing=-0.1), ValueError,
     ["label_smoothing"]),
    (lambda: lce(HIDDEN, WEIGHT, LABELS, reduction="avg"), ValueError, ["reduction", "avg"]),
])
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
