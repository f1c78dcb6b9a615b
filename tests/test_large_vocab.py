"""Tests of the chunked linear cross-entropy (design.md, "How a loss is tested").

The references never call jaxloss: optax on ``hidden @ weight``, and PyTorch's
``cross_entropy`` written out in float64 (``ref_linear_ce``). Float32 comparisons run
every matmul, the loss's and the reference's, at ``precision="highest"``."""

import functools

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

# The loss under test, its matmuls at full float32 precision (a GPU's default is TF32).
lce = functools.partial(linear_softmax_cross_entropy, precision="highest")


def matmul(a, b):
    """``a @ b`` at full precision, for the references."""
    return jnp.matmul(a, b, precision="highest")


def loss_of(chunk_size=None, reduction="sum", **kwargs):
    """``f(hidden, weight, bias)`` of the chunked loss (bias None: no bias)."""
    return lambda h, w, b: lce(h, w, LABELS if "labels" not in kwargs else kwargs["labels"],
                               bias=b, chunk_size=chunk_size, reduction=reduction,
                               **{k: v for k, v in kwargs.items() if k != "labels"})


def ref_linear_ce(h, w, b, labels, label_smoothing=0.0, ignore_index=None, where=None,
                  reduction="none"):
    """torch.nn.functional.cross_entropy(h @ w + b, labels, ignore_index=,
    label_smoothing=, reduction=) written out, to be called in float64: per row
    (1 - e) (-log p_y) + e / V sum_c (-log p_c), with the log-softmax
    log p = x - m - log sum_c exp(x_c - m), m the row's max (finite for logits of 1e30).
    Rows whose label is ignore_index, or where False, count 0; "mean" divides by the
    number of the other rows (0 when there is none)."""
    x = matmul(h, w) if b is None else matmul(h, w) + b
    m = jnp.max(x, axis=-1, keepdims=True)
    log_p = x - m - jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))
    labels = jnp.asarray(labels)
    keep = jnp.ones(labels.shape, bool)
    if ignore_index is not None:
        keep &= labels != ignore_index
    if where is not None:
        keep &= jnp.asarray(where)
    safe = jnp.where(keep, labels, 0)
    nll = -jnp.take_along_axis(log_p, safe[:, None], axis=-1)[:, 0]
    smooth = -jnp.mean(log_p, axis=-1)
    per_row = jnp.where(keep, (1 - label_smoothing) * nll + label_smoothing * smooth, 0.0)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return jnp.sum(per_row)
    return jnp.sum(per_row) / jnp.maximum(jnp.sum(keep), 1)


def naive_linear_ce(h, w, b, labels):
    """The textbook -log softmax(h w + b)_y: exp(x - max) underflows to 0 for a label
    logit far below the max, and its log is -inf."""
    x = matmul(h, w) + b
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    p = e / jnp.sum(e, axis=-1, keepdims=True)
    return -jnp.log(jnp.take_along_axis(p, jnp.asarray(labels)[:, None], axis=-1)[:, 0])


def reference(reduction="sum", labels=LABELS, **kwargs):
    """``f(hidden, weight, bias)`` of :func:`ref_linear_ce` on the inputs cast to
    float64, with ``loss_of``'s signature (call it under ``jax.enable_x64``)."""
    def f(h, w, b):
        h, w, b = (None if a is None else jnp.asarray(a, jnp.float64) for a in (h, w, b))
        return ref_linear_ce(h, w, b, labels, reduction=reduction, **kwargs)
    return f


def value_and_grads(f, bias=BIAS, hidden=HIDDEN, weight=WEIGHT):
    """The value and the gradients of ``f``'s sum for hidden, weight (and bias)."""
    argnums = (0, 1) if bias is None else ARGNUMS
    return jax.jit(jax.value_and_grad(lambda *a: f(*a).sum(), argnums=argnums))(
        hidden, weight, bias)


def float64_value_and_grads(f, bias=BIAS, hidden=HIDDEN, weight=WEIGHT):
    """:func:`value_and_grads` of a reference, in float64."""
    with jax.enable_x64(True):
        return jax.tree.map(np.asarray, value_and_grads(
            f, *(None if a is None else np.asarray(a, np.float64)
                 for a in (bias, hidden, weight))))


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
            logits = matmul(h, w) if b is None else matmul(h, w) + b
            return optax.losses.softmax_cross_entropy_with_integer_labels(logits, LABELS)

        chex.assert_trees_all_close(ours(HIDDEN, WEIGHT, bias), theirs(HIDDEN, WEIGHT, bias),
                                    rtol=1e-5, atol=1e-5)
        value, grads = value_and_grads(ours, bias)
        want_value, want_grads = value_and_grads(theirs, bias)
        chex.assert_trees_all_close(value, want_value, rtol=1e-5)
        chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-5)
        assert len(grads) == (3 if with_bias else 2)


def test_default_chunk_size_is_documented():
    doc = linear_softmax_cross_entropy.__doc__
    assert DEFAULT_CHUNK_SIZE == 2048
    assert "= 2048" in doc and "Wijmans" in doc and "2410.10989" in doc


@pytest.mark.parametrize("chunk_size, smoothing", [(5, 0.0), (8, 0.3)])
def test_vjp_matches_float64_reference(chunk_size, smoothing, x64):
    def loss(h, w, b, labels):
        return lce(h, w, labels, bias=b, chunk_size=chunk_size, label_smoothing=smoothing)

    def ref(h, w, b, labels):
        return ref_linear_ce(h, w, b, labels, smoothing)

    assert_vjp_matches_reference(loss, ref, HIDDEN, WEIGHT, BIAS, LABELS,
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
def test_options_match_float64_reference(options):
    def every_reduction(loss):
        """Per-row losses, and value and gradients of "mean" and "sum", in one jit."""
        def f(h, w, b):
            return loss("none")(h, w, b), [
                jax.value_and_grad(loss(r), argnums=ARGNUMS)(h, w, b) for r in ("mean", "sum")]
        return jax.jit(f)(HIDDEN, WEIGHT, BIAS)

    got = every_reduction(lambda r: loss_of(chunk_size=5, reduction=r, **options))
    with jax.enable_x64(True):
        want = every_reduction(lambda r: reference(reduction=r, **options))
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
    # Logits of order 1e30 (weights of 1e29): the textbook softmax overflows. The first
    # three rows are labelled with their largest logit (loss 0), the others lose ~1e29.
    w = WEIGHT * 1e29
    labels = LABELS.copy()
    labels[:3] = np.argmax(HIDDEN[:3].astype(np.float64) @ w.astype(np.float64) + BIAS, -1)
    for smoothing in (0.0, 0.2):
        f = loss_of(chunk_size=5, reduction="none", labels=labels, label_smoothing=smoothing)
        loss = f(HIDDEN, w, BIAS)
        (value, grads), (want, want_grads) = (
            value_and_grads(f, weight=w),
            float64_value_and_grads(reference(reduction="none", labels=labels,
                                              label_smoothing=smoothing), weight=w))
        chex.assert_tree_all_finite((loss, grads))
        with jax.enable_x64(True):
            want_loss = np.asarray(reference(reduction="none", labels=labels,
                                             label_smoothing=smoothing)(HIDDEN, w, BIAS))
        chex.assert_trees_all_close(loss, want_loss.astype(np.float32), rtol=1e-5)
        chex.assert_trees_all_close(value, want.astype(np.float32), rtol=1e-5)
        for g, want_g in zip(grads, want_grads, strict=True):
            scale = float(np.max(np.abs(want_g)))
            chex.assert_trees_all_close(g, want_g.astype(np.float32), rtol=1e-5,
                                        atol=1e-6 * scale)
    loss = lce(HIDDEN, w, labels, bias=BIAS, chunk_size=5)
    np.testing.assert_array_equal(loss[:3], 0.0)
    assert float(jnp.min(loss[3:])) > 1e28
    assert not np.isfinite(np.asarray(naive_linear_ce(HIDDEN, w, BIAS, LABELS))).all()


def test_neg_inf_bias_masks_classes():
    bias = BIAS.copy()
    masked = np.zeros(V, bool)
    masked[[1, 6, 7, 20, 23]] = True
    bias[masked] = -np.inf
    labels = np.where(masked[LABELS], 0, LABELS)
    # The reference: the loss over the classes that exist (columns of the weight and
    # the bias kept, the labels renumbered); the smoothing mass goes to them only.
    live = ~masked
    live_labels = np.cumsum(live)[labels] - 1
    for smoothing in (0.0, 0.3):
        value, grads = value_and_grads(
            loss_of(chunk_size=7, labels=labels, label_smoothing=smoothing), bias)
        chex.assert_tree_all_finite((value, grads))
        np.testing.assert_array_equal(np.asarray(grads[1])[:, masked], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[masked], 0.0)
        want, want_grads = float64_value_and_grads(
            reference(labels=live_labels, label_smoothing=smoothing), BIAS[live],
            weight=WEIGHT[:, live])
        chex.assert_trees_all_close(value, want.astype(np.float32), rtol=1e-5)
        live_grads = (grads[0], np.asarray(grads[1])[:, live], np.asarray(grads[2])[live])
        chex.assert_trees_all_close(live_grads, jax.tree.map(
            lambda g: g.astype(np.float32), want_grads), rtol=1e-5, atol=1e-6)


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
    checked = jaxloss.checked(linear_softmax_cross_entropy)
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be class ids in"):
        checked(HIDDEN, WEIGHT, labels)
    chex.assert_trees_all_close(checked(HIDDEN, WEIGHT, LABELS),
                                linear_softmax_cross_entropy(HIDDEN, WEIGHT, LABELS))


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


@pytest.mark.cpu_backend_only
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
    want, want_grads = float64_value_and_grads(reference(reduction="mean"))
    chex.assert_trees_all_close(f(HIDDEN, WEIGHT, BIAS), want.astype(np.float32), rtol=1e-6)
    step = jax.jit(jax.grad(f, argnums=ARGNUMS))
    chex.assert_trees_all_close(step(HIDDEN, WEIGHT, BIAS),
                                jax.tree.map(lambda g: g.astype(np.float32), want_grads),
                                rtol=1e-5, atol=1e-7)
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


def test_forward_mode_per_row_and_without_the_logits():
    # reduction="none": one tangent per row, J t formed chunk by chunk; the per-row
    # Jacobian in the weight ([N, D, V]) is never formed.
    def f(h, w, b):
        return lce(h, w, LABELS, bias=b, chunk_size=5, label_smoothing=0.1, z_loss=1e-3)

    def materialized(h, w, b):
        return jaxloss.softmax_cross_entropy_with_integer_labels(
            jnp.matmul(h, w, precision="highest") + b, LABELS, label_smoothing=0.1,
            z_loss=1e-3)

    primals = (HIDDEN, WEIGHT, BIAS)
    tangents = tuple(np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
                     for a in primals)
    got = jax.jvp(f, primals, tangents)[1]
    np.testing.assert_allclose(got, jax.jvp(materialized, primals, tangents)[1], rtol=2e-4,
                               atol=2e-5)
    # Compiled, the forward mode keeps the chunked memory: below one [N, V] of logits.
    n, d, v = 512, 64, 4096
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v))] * 2
    labels = jnp.zeros(n, jnp.int32)
    jvp = jax.jit(lambda h, w, th, tw: jax.jvp(
        lambda h, w: linear_softmax_cross_entropy(h, w, labels, chunk_size=512), (h, w),
        (th, tw)))
    temp = jvp.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp < n * v * 4, temp


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
    (lambda: linear_softmax_cross_entropy(HIDDEN, WEIGHT, LABELS, precision="fast"),
     ValueError, ["precision", "'fast'"]),
])
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ---------------------------------------------------------------------------------
# shift_labels: the causal language-modelling targets.


def _shift_by_hand(tokens, real, ignore_index):
    """Position t's label is token t + 1 when both are real tokens (a loop)."""
    labels = np.full_like(tokens, ignore_index)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if real[b, t] and real[b, t + 1]:
                labels[b, t] = tokens[b, t + 1]
    return labels


def test_shift_labels_against_a_hand_shifted_reference():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50, size=(3, 7)).astype(np.int32)
    lengths = np.array([7, 4, 1])
    real = np.arange(7) < lengths[:, None]  # right padding
    real[2] = [False, False, True, True, True, False, False]  # left and right padding
    for ignore_index, where in ((-100, None), (-100, real), (0, real)):
        got = jax.jit(functools.partial(jaxloss.shift_labels, ignore_index=ignore_index))(
            tokens, where=where)
        want = _shift_by_hand(tokens, np.ones_like(real) if where is None else where,
                              ignore_index)
        assert got.dtype == tokens.dtype
        np.testing.assert_array_equal(got, want)
    # Causal LM: the mean over the positions that have a next real token.
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    labels = jaxloss.shift_labels(tokens % 11, where=real)
    got = jaxloss.softmax_cross_entropy_with_integer_labels(logits, labels, ignore_index=-100,
                                                            reduction="mean")
    keep = labels != -100
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = lse - np.take_along_axis(logits, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    chex.assert_trees_all_close(got, nll[keep].mean(), rtol=1e-6)
    assert keep.sum() == 6 + 3 + 2


def test_shift_labels_bad_input():
    with pytest.raises(TypeError, match="tokens"):
        jaxloss.shift_labels(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="tokens"):
        jaxloss.shift_labels(np.int32(3))
    with pytest.raises(ValueError, match="where"):
        jaxloss.shift_labels(np.zeros((2, 4), np.int32), where=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="ignore_index"):
        jaxloss.shift_labels(np.zeros(4, np.int32), ignore_index=-1.0)
