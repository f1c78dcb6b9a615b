"""Tests of the LM-head options: ``softcap``, ``temperature``, ``z_loss`` and
``return_aux`` on the three softmax cross-entropies, and ``linear_log_probs``
(design.md, "How a loss is tested").

The references are float64 formulas written here, never calling jaxloss: the logits
are transformed, :math:`x' = c \\tanh(x / c) / T` (``-inf`` stays ``-inf``), and the
per-row loss is today's cross-entropy of :math:`x'` plus
:math:`\\varepsilon_z\\,\\mathrm{lse}(x')^2`. Float32 comparisons run every matmul, the
loss's and the reference's, at ``precision="highest"``."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss.testing import (
    assert_finite_differences,
    assert_matches_float64,
    assert_vjp_matches_reference,
)

N, D, V, CHUNK = 12, 6, 24, 5  # a chunk of 5 leaves a remainder of 4: the last is slid back
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, D)).astype(np.float32)
WEIGHT = (RNG.normal(size=(D, V)) * 0.8).astype(np.float32)
BIAS = RNG.normal(size=V).astype(np.float32)
LOGITS = (3 * RNG.normal(size=(N, V))).astype(np.float32)
LABELS = RNG.integers(0, V, size=N).astype(np.int32)
TOP = np.array([0, 3, 4])  # rows labelled with their largest logit (kept by ROW_MASK and IGNORED)
LABELS[TOP] = np.argmax(LOGITS[TOP], axis=-1)
LINEAR_LABELS = LABELS.copy()
LINEAR_LABELS[TOP] = np.argmax(
    HIDDEN[TOP].astype(np.float64) @ WEIGHT.astype(np.float64) + BIAS, axis=-1)
SOFT = RNG.dirichlet(np.ones(V), size=N).astype(np.float32)
CLASS_WEIGHTS = RNG.uniform(0.3, 2.0, size=V).astype(np.float32)
ROW_MASK = np.array([True, True, False] * (N // 3))
IGNORED = np.isin(np.arange(N), [1, 7])
# A class mask: the label's class kept, row 5 with no class left.
CLASS_MASK = RNG.uniform(size=(N, V)) < 0.7
CLASS_MASK[np.arange(N), LABELS] = True
CLASS_MASK[5] = False
# -inf logits on a few classes (never a label's).
NEG_INF = np.zeros((N, V), bool)
NEG_INF[:, [2, 9, 17]] = True
NEG_INF[np.arange(N), LABELS] = False
MASKED_LOGITS = np.where(NEG_INF, -np.inf, LOGITS).astype(np.float32)

HEAD = {"softcap": 4.0, "temperature": 0.7, "z_loss": 0.05}
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}

ice = jaxloss.softmax_cross_entropy_with_integer_labels
dce = jaxloss.softmax_cross_entropy
lce = functools.partial(jaxloss.linear_softmax_cross_entropy, precision="highest")


def llp(*args, **kwargs):
    """``jaxloss.linear_log_probs`` at full float32 matmul precision (looked up at the
    call, so that the rest of the file runs without it)."""
    return jaxloss.linear_log_probs(*args, precision="highest", **kwargs)


def matmul(a, b):
    return jnp.matmul(a, b, precision="highest")


def with_ignored(labels, ignore_index=-100):
    return np.where(IGNORED, ignore_index, labels).astype(np.int32)


# ---------------------------------------------------------------------------------
# float64 references.


def transform(x, softcap=None, temperature=1.0):
    """``x' = softcap tanh(x / softcap) / temperature``, ``-inf`` kept ``-inf``."""
    masked = x == -jnp.inf
    if softcap is not None:
        x = jnp.where(masked, -jnp.inf, softcap * jnp.tanh(jnp.where(masked, 0, x) / softcap))
    return x / temperature


def normalizer(xp, valid=None):
    """``-log softmax(x')`` over the classes that exist (0 elsewhere) as
    ``(m - x') + log s``, the row's ``lse`` (0 for a row with no class) and the mask of
    the classes that exist."""
    exists = xp > -jnp.inf
    if valid is not None:
        exists = exists & valid
    m = jax.lax.stop_gradient(jnp.max(jnp.where(exists, xp, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    safe = jnp.where(exists, xp, m)
    total = jnp.sum(jnp.where(exists, jnp.exp(safe - m), 0), axis=-1, keepdims=True)
    log_s = jnp.log(jnp.where(total > 0, total, 1))
    nll = jnp.where(exists, (m - safe) + log_s, 0)
    lse = jnp.where(jnp.any(exists, axis=-1), (m + log_s)[..., 0], 0)
    return nll, lse, exists


def reduce(per_row, reduction, keep, weights):
    per_row = jnp.where(keep, per_row, 0)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return jnp.sum(per_row)
    total = jnp.sum(jnp.where(keep, weights, 0))
    return jnp.where(total > 0, jnp.sum(per_row) / jnp.where(total > 0, total, 1), 0)


def ref_integer_ce(x, labels, *, where=None, ignore_index=None, label_smoothing=0.0,
                   class_weights=None, reduction="none", softcap=None, temperature=1.0,
                   z_loss=0.0, **_):
    """PyTorch's CrossEntropyLoss of ``x'`` plus ``z_loss lse(x')^2`` (not weighted);
    ``where`` a mask of rows or of classes."""
    xp = transform(x, softcap, temperature)
    labels = jnp.asarray(labels)
    valid, keep = None, jnp.ones(labels.shape, bool)
    if where is not None:
        where = jnp.asarray(where)
        if where.ndim == xp.ndim:
            valid, keep = where, jnp.any(where, axis=-1)
        else:
            keep = where
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
        labels = jnp.where(labels == ignore_index, 0, labels)
    nll, lse, exists = normalizer(xp, valid)
    w = jnp.ones(xp.shape[-1]) if class_weights is None else class_weights
    onehot = labels[..., None] == jnp.arange(xp.shape[-1])
    uniform = exists / jnp.maximum(jnp.sum(exists, axis=-1, keepdims=True), 1)
    q = (1 - label_smoothing) * onehot + label_smoothing * uniform
    per_row = jnp.sum(w * q * nll, axis=-1) + z_loss * lse**2
    w_y = jnp.sum(jnp.where(onehot, w, 0), axis=-1)
    return reduce(per_row, reduction, keep, w_y)


def ref_integer_aux(x, labels, *, where=None, ignore_index=None, softcap=None,
                    temperature=1.0, z_loss=0.0, **_):
    """The aux fields (float64; ``correct`` a bool array), 0/False on excluded rows."""
    xp = transform(x, softcap, temperature)
    labels = jnp.asarray(labels)
    keep = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where)
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
    safe = jnp.where(keep, labels, 0)
    _, lse, _ = normalizer(xp)
    label_logit = jnp.take_along_axis(xp, safe[..., None], axis=-1)[..., 0]
    correct = label_logit >= jnp.max(xp, axis=-1)
    zero = jnp.zeros_like(lse)
    return {"lse": jnp.where(keep, lse, zero), "z_loss": jnp.where(keep, z_loss * lse**2, zero),
            "correct": keep & correct, "label_logit": jnp.where(keep, label_logit, zero)}


def ref_dense_ce(x, y, *, where=None, label_smoothing=0.0, reduction="none", softcap=None,
                 temperature=1.0, z_loss=0.0, **_):
    """optax's softmax_cross_entropy of ``x'`` (``where`` a mask of rows or classes;
    smoothing uniform over the classes that exist) plus ``z_loss lse(x')^2``."""
    xp = transform(x, softcap, temperature)
    valid = None
    if where is not None:
        where = jnp.asarray(where)
        valid = jnp.broadcast_to(where if where.ndim == xp.ndim else where[..., None], xp.shape)
    nll, lse, exists = normalizer(xp, valid)
    uniform = exists / jnp.maximum(jnp.sum(exists, axis=-1, keepdims=True), 1)
    q = (1 - label_smoothing) * y + label_smoothing * uniform
    if valid is not None:
        q = jnp.where(valid, q, 0)
    per_row = jnp.sum(q * nll, axis=-1) + z_loss * lse**2
    keep = jnp.ones(per_row.shape, bool) if valid is None else jnp.any(valid, axis=-1)
    return reduce(per_row, reduction, keep, jnp.ones(per_row.shape))


def ref_linear_ce(h, w, labels, *, bias=None, **kwargs):
    x = matmul(h, w) if bias is None else matmul(h, w) + bias
    return ref_integer_ce(x, labels, **kwargs)


def ref_linear_log_probs(h, w, labels, *, bias=None, softcap=None, temperature=1.0,
                         return_entropy=False, ignore_index=None, **_):
    """``log softmax(x')_y`` and ``H = sum_c p_c (-log p_c)`` over the classes that
    exist, 0 on rows labelled ``ignore_index``."""
    x = matmul(h, w) if bias is None else matmul(h, w) + bias
    nll, _, exists = normalizer(transform(x, softcap, temperature))
    labels = jnp.asarray(labels)
    ignored = (jnp.zeros(labels.shape, bool) if ignore_index is None
               else labels == ignore_index)
    safe = jnp.where(ignored, 0, labels)
    log_p = jnp.where(ignored, 0, -jnp.take_along_axis(nll, safe[..., None], axis=-1)[..., 0])
    if not return_entropy:
        return log_p
    entropy = jnp.sum(jnp.where(exists, jnp.exp(-nll) * nll, 0), axis=-1)
    return log_p, jnp.where(ignored, 0, entropy)


def f64(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def run64(f, *arrays):
    """``f(*arrays)`` in float64 (the arrays cast), in one jit, as NumPy arrays."""
    with jax.enable_x64(True):
        return jax.tree.map(np.asarray, jax.jit(f)(*f64(*arrays)))


# ---------------------------------------------------------------------------------
# 0. The references, checked against each other and against optax.


def _close64(pairs, rtol=1e-12, atol=0.0):
    """Each ``(got, want)`` of ``pairs()``, computed in one jit in float64, agrees."""
    with jax.enable_x64(True):
        pairs = jax.tree.map(np.asarray, jax.jit(pairs)())
    for i, (got, want) in enumerate(pairs):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"pair {i}")


def test_references_at_the_defaults_equal_optax():
    x, h, w, b, soft = f64(LOGITS, HIDDEN, WEIGHT, BIAS, SOFT)

    def pairs():
        logits = h @ w + b
        log_p, entropy = ref_linear_log_probs(h, w, LINEAR_LABELS, bias=b, return_entropy=True)
        log_softmax = jax.nn.log_softmax(logits)
        return [
            (ref_integer_ce(x, LABELS),
             optax.losses.softmax_cross_entropy_with_integer_labels(x, LABELS)),
            (ref_dense_ce(x, soft), optax.losses.softmax_cross_entropy(x, soft)),
            (ref_linear_ce(h, w, LINEAR_LABELS, bias=b), ref_integer_ce(logits, LINEAR_LABELS)),
            (log_p, log_softmax[np.arange(N), LINEAR_LABELS]),
            (entropy, -jnp.sum(jnp.exp(log_softmax) * log_softmax, -1)),
        ]

    _close64(pairs)


def test_reference_transform_and_z_term():
    x, weights = f64(MASKED_LOGITS, CLASS_WEIGHTS)
    finite = np.isfinite(x)
    safe = np.where(finite, x, 0)
    # The options with z_loss 0 are today's loss of the transformed logits (the
    # testing module's own reference, written independently).
    from jaxloss.testing import _ref_integer_ce
    kw = {"where": ROW_MASK, "ignore_index": -100, "label_smoothing": 0.2,
          "reduction": "mean"}

    def z_term(v):
        return (ref_integer_ce(v, LABELS, softcap=4.0, temperature=0.7, z_loss=0.05)
                - ref_integer_ce(v, LABELS, softcap=4.0, temperature=0.7))

    def pairs():
        xp = transform(x, 4.0, 0.7)
        lse = jax.nn.logsumexp(xp, axis=-1)
        # The z-term's gradient: 2 z lse softmax(x') times dx'/dx = (1 - tanh^2) / T.
        d_z = 2 * 0.05 * lse[:, None] * jax.nn.softmax(xp) * (1 - jnp.tanh(safe / 4) ** 2) / 0.7
        return [
            (jnp.where(finite, xp, 0), np.where(finite, 4.0 * np.tanh(safe / 4.0) / 0.7, 0)),
            (jnp.isneginf(xp), ~finite),
            (ref_integer_ce(x, with_ignored(LABELS), softcap=4.0, temperature=0.7,
                            class_weights=jnp.asarray(weights), **kw),
             _ref_integer_ce(xp, with_ignored(LABELS), class_weights=jnp.asarray(weights),
                             **kw)),
            (z_term(x), 0.05 * lse**2),
            (jax.grad(lambda v: jnp.sum(z_term(v)))(x), jnp.where(finite, d_z, 0)),
        ]

    _close64(pairs, rtol=1e-10, atol=1e-14)


def test_reference_entropy_gradient_is_the_closed_form():
    """dH/dx' = -p (log p + H), checked against jax.grad of the reference and its
    finite differences."""
    h, w, b = f64(HIDDEN, WEIGHT, BIAS)

    def entropy_of_bias(bias):
        return ref_linear_log_probs(h, w, LINEAR_LABELS, bias=bias, softcap=3.0,
                                    temperature=0.7, return_entropy=True)[1]

    def pairs():
        x = h @ w + b
        log_p = jax.nn.log_softmax(transform(x, 3.0, 0.7))
        p = jnp.exp(log_p)
        d_xp = -p * (log_p - jnp.sum(p * log_p, -1, keepdims=True))
        d_bias = jnp.sum(d_xp * (1 - jnp.tanh(x / 3.0) ** 2) / 0.7, axis=0)
        return [(jax.grad(lambda v: entropy_of_bias(v).sum())(b), d_bias)]

    _close64(pairs, rtol=1e-10, atol=1e-13)
    with jax.enable_x64(True):
        jax.test_util.check_grads(jax.jit(entropy_of_bias), (b,), order=1, modes=["rev"],
                                  eps=1e-6)


def test_case_module_references_agree():
    """The ``jaxloss check`` cases keep their own references: both sets agree."""
    from jaxloss import _cases_lm_head as cases
    x, h, w, b, soft = f64(MASKED_LOGITS, HIDDEN, WEIGHT, BIAS, SOFT)
    kw = {**HEAD, "label_smoothing": 0.1}
    lp = {"softcap": 3.0, "temperature": 0.7, "return_entropy": True}

    def pairs():
        return [
            (cases.ref_integer_ce(x, LABELS, **kw), ref_integer_ce(x, LABELS, **kw)),
            (cases.ref_softmax_ce(x, soft, **kw), ref_dense_ce(x, soft, **kw)),
            (cases.ref_linear_ce(h, w, LINEAR_LABELS, bias=b, **kw),
             ref_linear_ce(h, w, LINEAR_LABELS, bias=b, **kw)),
            (jnp.stack(cases.ref_linear_log_probs(h, w, LINEAR_LABELS, bias=b, **lp)),
             jnp.stack(ref_linear_log_probs(h, w, LINEAR_LABELS, bias=b, **lp))),
        ]

    _close64(pairs)


# ---------------------------------------------------------------------------------
# 1. Values and gradients against the float64 references.


INTEGER_OPTIONS = {
    "softcap": ({"softcap": 4.0}, {}),
    "temperature": ({"temperature": 0.7}, {}),
    "z_loss": ({"z_loss": 0.05}, {}),
    "all": ({**HEAD, "label_smoothing": 0.2, "ignore_index": -100, "where": ROW_MASK},
            {"labels": with_ignored(LABELS)}),
    "all_weights_mean": ({**HEAD, "label_smoothing": 0.2, "ignore_index": -100,
                          "where": ROW_MASK, "reduction": "mean"},
                         {"labels": with_ignored(LABELS), "class_weights": CLASS_WEIGHTS}),
    "class_mask_sum": ({**HEAD, "label_smoothing": 0.1, "where": CLASS_MASK,
                        "reduction": "sum"}, {}),
    "neg_inf": ({**HEAD, "label_smoothing": 0.3}, {"logits": MASKED_LOGITS}),
}


@pytest.mark.parametrize("case", list(INTEGER_OPTIONS))
def test_integer_ce_matches_reference(case):
    options, arrays = INTEGER_OPTIONS[case]
    logits, labels = arrays.get("logits", LOGITS), arrays.get("labels", LABELS)
    weights = arrays.get("class_weights")
    diff = {} if weights is None else {"class_weights": weights}
    assert_vjp_matches_reference(ice, ref_integer_ce, logits, labels, argnums=0,
                                 diff_kwargs=tuple(diff), rtol=1e-10, atol=1e-12,
                                 **options, **diff)


DENSE_OPTIONS = {
    "softcap": {"softcap": 4.0},
    "temperature": {"temperature": 0.7},
    "z_loss": {"z_loss": 0.05},
    "all": {**HEAD, "label_smoothing": 0.2, "where": ROW_MASK},
    "class_mask_mean": {**HEAD, "label_smoothing": 0.1, "where": CLASS_MASK,
                        "reduction": "mean"},
    "neg_inf_sum": {**HEAD, "label_smoothing": 0.3, "reduction": "sum"},
}


@pytest.mark.parametrize("case", list(DENSE_OPTIONS))
def test_dense_ce_matches_reference(case):
    logits = MASKED_LOGITS if case.startswith("neg_inf") else LOGITS
    soft = np.where(NEG_INF, 0, SOFT) if case.startswith("neg_inf") else SOFT
    assert_vjp_matches_reference(dce, ref_dense_ce, logits, soft, argnums=(0, 1), rtol=1e-10,
                                 atol=1e-12, **DENSE_OPTIONS[case])


def _linear(h, w, b, labels, **kwargs):
    return lce(h, w, labels, bias=b, chunk_size=CHUNK, **kwargs)


def _ref_linear(h, w, b, labels, **kwargs):
    return ref_linear_ce(h, w, labels, bias=b, **kwargs)


LINEAR_OPTIONS = {
    "softcap": {"softcap": 3.0},
    "temperature": {"temperature": 0.7},
    "z_loss": {"z_loss": 0.05},
    "all": {**HEAD, "label_smoothing": 0.2, "ignore_index": -100, "where": ROW_MASK},
    "all_mean": {**HEAD, "label_smoothing": 0.2, "ignore_index": -100, "where": ROW_MASK,
                 "reduction": "mean"},
    "all_sum": {**HEAD, "label_smoothing": 0.2, "ignore_index": -100, "where": ROW_MASK,
                "reduction": "sum"},
}


@pytest.mark.parametrize("case", list(LINEAR_OPTIONS))
def test_linear_ce_matches_reference(case):
    options = LINEAR_OPTIONS[case]
    labels = with_ignored(LINEAR_LABELS) if "ignore_index" in options else LINEAR_LABELS
    assert_vjp_matches_reference(_linear, _ref_linear, HIDDEN, WEIGHT, BIAS, labels,
                                 argnums=(0, 1, 2), rtol=1e-10, atol=1e-12, **options)


FD_N, FD_V = 4, 7
FD_LABELS = np.where(np.arange(FD_N) == 1, -100, LABELS[:FD_N] % FD_V).astype(np.int32)
FD_HEAD = {"softcap": 2.0, "temperature": 0.8, "z_loss": 0.1}
FD_SOFT = SOFT[:FD_N, :FD_V] / SOFT[:FD_N, :FD_V].sum(-1, keepdims=True)
FD_CASES = {
    "integer": (lambda x, w: ice(x, FD_LABELS, class_weights=w, ignore_index=-100,
                                 label_smoothing=0.2, **FD_HEAD),
                (LOGITS[:FD_N, :FD_V] / 2, CLASS_WEIGHTS[:FD_V])),
    "dense": (lambda x, t: dce(x, t, label_smoothing=0.2, **FD_HEAD),
              (LOGITS[:FD_N, :FD_V] / 2, FD_SOFT)),
    "linear": (lambda h, w, b: lce(h, w, FD_LABELS, bias=b, chunk_size=3, ignore_index=-100,
                                   label_smoothing=0.2, **FD_HEAD),
               (HIDDEN[:FD_N], WEIGHT[:, :FD_V], BIAS[:FD_V])),
}


@pytest.mark.parametrize("kind", list(FD_CASES))
def test_finite_differences_second_order(kind):
    """Order 2: the backward passes' own derivatives (jax.hessian uses them)."""
    loss, args = FD_CASES[kind]
    assert_finite_differences(loss, *args, argnums=tuple(range(len(args))), order=2)


# ---------------------------------------------------------------------------------
# 2. linear_log_probs.


HEAD_LP = {"softcap": 3.0, "temperature": 0.7}
LP_OPTIONS = {**HEAD_LP, "ignore_index": -100}


def _lp_output(mode):
    """The output under test: log-probs alone (from either form), the entropy alone
    (cotangent only on it), or both stacked (a cotangent on each)."""
    def pick(out):
        if mode == "log_probs":
            return out
        if mode == "log_probs_of_pair":
            return out[0]
        if mode == "entropy":
            return out[1]
        return jnp.stack(out)
    return pick, mode != "log_probs"


@pytest.mark.parametrize("mode, options", [
    ("log_probs", LP_OPTIONS), ("log_probs_of_pair", LP_OPTIONS), ("entropy", LP_OPTIONS),
    ("both", LP_OPTIONS), ("both", {}),
], ids=["log_probs", "log_probs_of_pair", "entropy", "both", "both_plain"])
def test_linear_log_probs_matches_reference(mode, options):
    pick, entropy = _lp_output(mode)
    labels = with_ignored(LINEAR_LABELS) if "ignore_index" in options else LINEAR_LABELS

    def loss(h, w, b):
        return pick(llp(h, w, labels, bias=b, chunk_size=CHUNK, return_entropy=entropy,
                        **options))

    def ref(h, w, b):
        return pick(ref_linear_log_probs(h, w, labels, bias=b, return_entropy=entropy,
                                         **options))

    assert_vjp_matches_reference(loss, ref, HIDDEN, WEIGHT, BIAS, argnums=(0, 1, 2),
                                 rtol=1e-10, atol=1e-12)


def test_linear_log_probs_without_bias_and_leading_axes():
    labels = LINEAR_LABELS.reshape(3, 4)
    log_p, entropy = llp(HIDDEN.reshape(3, 4, D), WEIGHT, labels, chunk_size=7,
                         return_entropy=True, softcap=3.0)
    assert log_p.shape == entropy.shape == (3, 4)
    assert log_p.dtype == entropy.dtype == jnp.float32
    want = run64(lambda h, w: ref_linear_log_probs(h, w, LINEAR_LABELS, softcap=3.0,
                                                   return_entropy=True), HIDDEN, WEIGHT)
    chex.assert_trees_all_close((log_p.reshape(-1), entropy.reshape(-1)),
                                jax.tree.map(lambda a: np.asarray(a, np.float32), want),
                                **F32_TOL)


def test_linear_log_probs_finite_differences():
    labels = np.where(np.arange(4) == 2, -100, LINEAR_LABELS[:4] % 7).astype(np.int32)
    assert_finite_differences(
        lambda h, w, b: jnp.stack(llp(h, w, labels, bias=b, chunk_size=3, return_entropy=True,
                                      **LP_OPTIONS)),
        HIDDEN[:4], WEIGHT[:, :7], BIAS[:7], argnums=(0, 1, 2), order=2)


def _lp_value_and_grads(labels, bias=BIAS, weight=WEIGHT, **options):
    """Log-probs and entropy, and the gradients of a weighted sum of both, in one jit."""
    cot = np.random.default_rng(1).normal(size=(2, N)).astype(np.float32)

    def f(h, w, b):
        out = llp(h, w, labels, bias=b, chunk_size=CHUNK, return_entropy=True, **options)
        return jnp.sum(jnp.stack(out) * cot), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
        HIDDEN, weight, bias)
    return out, grads


def test_linear_log_probs_ignored_rows_are_zero():
    labels = with_ignored(LINEAR_LABELS)
    (log_p, entropy), grads = _lp_value_and_grads(labels, **LP_OPTIONS)
    np.testing.assert_array_equal(np.asarray(log_p)[IGNORED], 0.0)
    np.testing.assert_array_equal(np.asarray(entropy)[IGNORED], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[0])[IGNORED], 0.0)
    assert np.all(np.asarray(log_p)[~IGNORED] < 0) and np.all(np.asarray(entropy)[~IGNORED] > 0)
    # The ignored rows reach neither the weight nor the bias.
    kept = ~IGNORED
    cot = np.random.default_rng(1).normal(size=(2, N)).astype(np.float32)
    want = run64(jax.grad(lambda h, w, b: jnp.sum(jnp.stack(ref_linear_log_probs(
        h, w, LINEAR_LABELS[kept], bias=b, return_entropy=True, **HEAD_LP)) * cot[:, kept]),
        argnums=(1, 2)), HIDDEN[kept], WEIGHT, BIAS)
    chex.assert_trees_all_close(grads[1:], jax.tree.map(lambda a: np.asarray(a, np.float32),
                                                        want), **F32_TOL)


def test_linear_log_probs_out_of_range_label_gives_nan():
    labels = LINEAR_LABELS.copy()
    labels[[3, 6]] = [V, -1]
    bad = np.isin(np.arange(N), [3, 6])
    log_p, entropy = llp(HIDDEN, WEIGHT, labels, bias=BIAS, chunk_size=CHUNK,
                         return_entropy=True, ignore_index=-100, **HEAD_LP)
    assert np.isnan(np.asarray(log_p)[bad]).all()
    assert np.isfinite(np.asarray(log_p)[~bad]).all()
    assert np.isfinite(np.asarray(entropy)[~bad]).all()
    assert np.isnan(np.asarray(llp(HIDDEN, WEIGHT, labels, chunk_size=CHUNK))[bad]).all()


def test_linear_log_probs_neg_inf_bias_masks_classes():
    masked = np.isin(np.arange(V), [1, 6, 7, 20, 23])
    bias = np.where(masked, -np.inf, BIAS).astype(np.float32)
    labels = np.where(masked[LINEAR_LABELS], 0, LINEAR_LABELS).astype(np.int32)
    (log_p, entropy), grads = _lp_value_and_grads(labels, bias=bias, **HEAD_LP)
    chex.assert_tree_all_finite((log_p, entropy, grads))
    np.testing.assert_array_equal(np.asarray(grads[1])[:, masked], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[2])[masked], 0.0)
    # Against the reference on the classes that exist (the masked columns removed).
    live_labels = np.cumsum(~masked)[labels] - 1
    cot = np.random.default_rng(1).normal(size=(2, N)).astype(np.float32)
    def ref(h, w, b):
        out, vjp = jax.vjp(lambda h, w, b: jnp.stack(ref_linear_log_probs(
            h, w, live_labels, bias=b, return_entropy=True, **HEAD_LP)), h, w, b)
        return out, vjp(cot.astype(h.dtype))

    out, want_grads = run64(ref, HIDDEN, WEIGHT[:, ~masked], BIAS[~masked])
    chex.assert_trees_all_close(jnp.stack((log_p, entropy)), np.asarray(out, np.float32),
                                **F32_TOL)
    live = (grads[0], np.asarray(grads[1])[:, ~masked], np.asarray(grads[2])[~masked])
    chex.assert_trees_all_close(live, jax.tree.map(lambda a: np.asarray(a, np.float32),
                                                   want_grads), **F32_TOL)


def test_linear_log_probs_bf16_inputs_return_float32():
    h, w, b = (jnp.asarray(a, jnp.bfloat16) for a in (HIDDEN, WEIGHT, BIAS))
    log_p, entropy = llp(h, w, LINEAR_LABELS, bias=b, chunk_size=CHUNK, return_entropy=True,
                         **HEAD_LP)
    assert log_p.dtype == entropy.dtype == jnp.float32
    want = run64(lambda h, w, b: ref_linear_log_probs(h, w, LINEAR_LABELS, bias=b,
                                                      return_entropy=True, **HEAD_LP),
                 *(np.asarray(a.astype(jnp.float32)) for a in (h, w, b)))
    # bf16 products summed in float32: close to the float64 value of the same inputs.
    chex.assert_trees_all_close((log_p, entropy),
                                jax.tree.map(lambda a: np.asarray(a, np.float32), want),
                                rtol=1e-4, atol=1e-4)
    grads = jax.grad(lambda h, w, b: jnp.sum(jnp.stack(llp(
        h, w, LINEAR_LABELS, bias=b, chunk_size=CHUNK, return_entropy=True, **HEAD_LP))),
        argnums=(0, 1, 2))(h, w, b)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def test_entropy_extremes_are_exact():
    """A uniform row has entropy log V (log-prob -log V); a row with one logit 1e4 above
    the others has entropy 0 and log-prob 0 for that label, with gradient exactly 0."""
    h = np.zeros((2, D), np.float32)
    h[1, 0] = 1.0
    w = np.zeros((D, V), np.float32)
    w[0, 4] = 1e4
    labels = np.array([3, 4], np.int32)
    log_p, entropy = llp(h, w, labels, chunk_size=CHUNK, return_entropy=True, temperature=0.7)
    np.testing.assert_allclose(entropy, [np.log(V), 0.0], rtol=2e-6, atol=0)
    np.testing.assert_allclose(log_p, [-np.log(V), 0.0], rtol=2e-6, atol=0)
    d_h, d_w = jax.grad(lambda h, w: jnp.sum(llp(h, w, labels, chunk_size=CHUNK,
                                                 return_entropy=True, temperature=0.7)[1]),
                        argnums=(0, 1))(h, w)
    # dH/dx' = -p (log p + H): 0 in both rows; on the uniform row log p + H cancels to
    # the rounding of log V, far below the log-prob's gradient there (1e4 / (V T)).
    chex.assert_tree_all_finite((d_h, d_w))
    np.testing.assert_allclose(d_h[0], 0.0, atol=1e-5 * 1e4 / (V * 0.7))
    np.testing.assert_array_equal(d_h[1], 0.0)
    np.testing.assert_array_equal(d_w, 0.0)  # h[0] = 0 and the second row's gradient is 0
    # The log-prob's gradient: (onehot - 1/V) / T on the uniform row, 0 on the other.
    d_h, d_w = jax.grad(lambda h, w: jnp.sum(llp(h, w, labels, chunk_size=CHUNK,
                                                 temperature=0.7)), argnums=(0, 1))(h, w)
    g0 = (np.eye(V)[3] - 1 / V) / 0.7
    np.testing.assert_allclose(d_h, np.stack([w.astype(np.float64) @ g0, np.zeros(D)]),
                               rtol=1e-6, atol=0)
    np.testing.assert_array_equal(d_w, 0.0)  # h[0] = 0 and the second row's gradient is 0


# ---------------------------------------------------------------------------------
# 3. return_aux.


AUX_FIELDS = ("lse", "z_loss", "correct", "label_logit")


def _aux_call(kind, return_aux, **options):
    if kind == "integer":
        return lambda x: ice(x, with_ignored(LABELS), where=ROW_MASK, ignore_index=-100,
                             label_smoothing=0.1, return_aux=return_aux, **options)
    return lambda h, w, b: lce(h, w, with_ignored(LINEAR_LABELS), bias=b, chunk_size=CHUNK,
                               where=ROW_MASK, ignore_index=-100, label_smoothing=0.1,
                               return_aux=return_aux, **options)


@pytest.mark.parametrize("kind", ["integer", "linear"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_return_aux(kind, reduction):
    args = (LOGITS,) if kind == "integer" else (HIDDEN, WEIGHT, BIAS)
    argnums = tuple(range(len(args)))
    loss, aux = _aux_call(kind, True, reduction=reduction, **HEAD)(*args)
    assert isinstance(aux, jaxloss.CrossEntropyAux)
    assert aux._fields == AUX_FIELDS
    for field in AUX_FIELDS:
        assert getattr(aux, field).shape == (N,), field
    assert aux.correct.dtype == jnp.bool_
    plain = _aux_call(kind, False, reduction=reduction, **HEAD)(*args)
    np.testing.assert_array_equal(loss, plain)  # bitwise
    if kind == "integer":
        want = run64(lambda x: ref_integer_aux(x, with_ignored(LABELS), where=ROW_MASK,
                                               ignore_index=-100, **HEAD), LOGITS)
    else:
        want = run64(lambda h, w, b: ref_integer_aux(
            matmul(h, w) + b, with_ignored(LINEAR_LABELS), where=ROW_MASK, ignore_index=-100,
            **HEAD), HIDDEN, WEIGHT, BIAS)
    excluded = ~ROW_MASK | IGNORED
    assert want["correct"][TOP].all()
    for field in ("lse", "z_loss", "label_logit"):
        chex.assert_trees_all_close(getattr(aux, field), want[field].astype(np.float32),
                                    **F32_TOL)
        np.testing.assert_array_equal(np.asarray(getattr(aux, field))[excluded], 0.0)
    np.testing.assert_array_equal(aux.correct, want["correct"])
    assert not np.asarray(aux.correct)[excluded].any()
    # The gradient of the loss is the same with and without the aux, and the aux has none.
    total = jax.grad(lambda *a: _aux_call(kind, True, reduction=reduction, **HEAD)(*a)[0].sum(),
                     argnums=argnums)(*args)
    want_total = jax.grad(lambda *a: _aux_call(kind, False, reduction=reduction, **HEAD)(*a)
                          .sum(), argnums=argnums)(*args)
    chex.assert_trees_all_close(total, want_total, rtol=1e-6, atol=0)
    of_aux = jax.grad(lambda *a: sum(jnp.sum(v) for v in _aux_call(
        kind, True, reduction=reduction, **HEAD)(*a)[1][:2]), argnums=argnums)(*args)
    for g in of_aux:
        np.testing.assert_array_equal(g, 0.0)


def test_return_aux_z_loss_zero_and_no_head():
    loss, aux = ice(LOGITS, LABELS, return_aux=True)
    np.testing.assert_array_equal(aux.z_loss, 0.0)
    np.testing.assert_array_equal(loss, ice(LOGITS, LABELS))
    want = run64(lambda x: ref_integer_aux(x, LABELS), LOGITS)
    chex.assert_trees_all_close(aux.lse, np.asarray(want["lse"], np.float32), **F32_TOL)
    np.testing.assert_array_equal(aux.correct, np.asarray(want["correct"]))
    chex.assert_trees_all_close(aux.label_logit, LOGITS[np.arange(N), LABELS], rtol=0, atol=0)


# ---------------------------------------------------------------------------------
# 4. The defaults change nothing.


DEFAULTS = {"softcap": None, "temperature": 1.0, "z_loss": 0.0}


@pytest.mark.parametrize("kind", ["integer", "dense", "linear"])
def test_explicit_defaults_are_bitwise_the_same(kind):
    if kind == "integer":
        args, argnums = (LOGITS, CLASS_WEIGHTS), (0, 1)

        def call(x, w, **kw):
            return ice(x, with_ignored(LABELS), ignore_index=-100, class_weights=w,
                       label_smoothing=0.1, reduction="mean", **kw)
    elif kind == "dense":
        args, argnums = (LOGITS, SOFT), (0, 1)

        def call(x, y, **kw):
            return dce(x, y, label_smoothing=0.1, where=ROW_MASK, reduction="sum", **kw)
    else:
        args, argnums = (HIDDEN, WEIGHT, BIAS), (0, 1, 2)

        def call(h, w, b, **kw):
            return lce(h, w, with_ignored(LINEAR_LABELS), bias=b, chunk_size=CHUNK,
                       ignore_index=-100, label_smoothing=0.1, reduction="mean", **kw)

    got = jax.value_and_grad(lambda *a: call(*a, **DEFAULTS), argnums=argnums)(*args)
    want = jax.value_and_grad(call, argnums=argnums)(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------------
# 5. Extremes.


def test_softcap_makes_huge_logits_exact():
    """Logits of 1e30 capped at 30: the loss of the capped logits, exactly; the
    gradient at a saturated logit is 0 (1 - tanh^2 = 0)."""
    huge = LOGITS * np.float32(1e29)
    huge[:, :V // 2] = LOGITS[:, :V // 2]  # half the logits moderate: a gradient there
    cap = {"softcap": 30.0, "temperature": 0.7, "z_loss": 1e-3}
    assert_matches_float64(ice, ref_integer_ce, huge, LABELS, label_smoothing=0.1, **cap)
    assert_matches_float64(dce, ref_dense_ce, huge, SOFT, argnums=(0, 1), **cap)
    assert_matches_float64(_linear, _ref_linear, HIDDEN, WEIGHT * np.float32(1e29), BIAS,
                           LINEAR_LABELS, argnums=(0, 1, 2), **cap)
    # Exact: x' = [30, 30, -30] / T; the loss of label 0 is log 2 + e^-60/T..., its
    # gradient 0 (each logit saturated).
    x = np.array([[1e30, 1e30, -1e30]], np.float32)
    value, grad = jax.value_and_grad(lambda x: ice(x, np.array([0]), softcap=30.0,
                                                   z_loss=1e-3).sum())(x)
    lse = 30 + np.log(2 + np.exp(-60.0))
    np.testing.assert_allclose(value, lse - 30 + 1e-3 * lse**2, rtol=1e-6)
    np.testing.assert_array_equal(grad, 0.0)


def test_z_loss_at_large_logits_is_exact():
    x = np.array([[1e4, 1e4 - 1, 0.0, -5.0], [1e4, -1e4, 3e4, 2.0]], np.float32)
    labels = np.array([1, 3])
    assert_matches_float64(ice, ref_integer_ce, x, labels, z_loss=1e-2)
    lse0 = 1e4 + np.log1p(np.exp(-1.0))
    lse1 = 3e4
    got = ice(x, labels, z_loss=1e-2)
    np.testing.assert_allclose(got, [lse0 - (1e4 - 1) + 1e-2 * lse0**2,
                                     lse1 - 2.0 + 1e-2 * lse1**2], rtol=1e-6)
    assert_matches_float64(dce, ref_dense_ce, x, np.eye(4, dtype=np.float32)[labels],
                           argnums=(0, 1), z_loss=1e-2)


def test_neg_inf_logits_stay_masked_under_softcap():
    """-inf is not capped to -softcap: the class stays out of the softmax, the
    smoothing and the z-term, with gradient 0."""
    for loss, ref, second in ((ice, ref_integer_ce, LABELS),
                              (dce, ref_dense_ce, np.where(NEG_INF, 0, SOFT))):
        argnums = 0 if loss is ice else (0, 1)
        assert_matches_float64(loss, ref, MASKED_LOGITS, second, argnums=argnums,
                               label_smoothing=0.2, **HEAD)
        grad = jax.grad(lambda x, loss=loss, second=second: loss(
            x, second, label_smoothing=0.2, **HEAD).sum())(MASKED_LOGITS)
        np.testing.assert_array_equal(np.asarray(grad)[NEG_INF], 0.0)
    # The loss differs from the one with the class at -softcap.
    capped = np.where(NEG_INF, np.float32(-1e30), LOGITS)
    assert not np.allclose(ice(MASKED_LOGITS, LABELS, **HEAD), ice(capped, LABELS, **HEAD))


# ---------------------------------------------------------------------------------
# 6. Bad input.


def _calls(options):
    """Each public function with ``options``."""
    return [
        lambda: ice(LOGITS, LABELS, **options),
        lambda: dce(LOGITS, SOFT, **options),
        lambda: lce(HIDDEN, WEIGHT, LABELS, **options),
    ]


BAD_HEAD = [
    ({"softcap": 0.0}, "softcap"), ({"softcap": -1.0}, "softcap"),
    ({"softcap": float("inf")}, "softcap"), ({"softcap": float("nan")}, "softcap"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"z_loss": -1e-4}, "z_loss"), ({"z_loss": float("inf")}, "z_loss"),
    ({"z_loss": float("nan")}, "z_loss"),
]


@pytest.mark.parametrize("options, word", BAD_HEAD,
                         ids=[f"{k}={v}" for (o, _) in BAD_HEAD for k, v in o.items()])
def test_bad_head_options_raise(options, word):
    calls = _calls(options)
    if "z_loss" not in options:
        calls.append(lambda: llp(HIDDEN, WEIGHT, LABELS, **options))
    for call in calls:
        with pytest.raises(ValueError, match=word):
            call()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_non_bool_flags_raise_type_error(value):
    """A flag that is not a Python bool is a TypeError naming it, as for every other
    flag in jaxloss (shift_equivariant, full, log_input, zero_infinity)."""
    for call in (lambda: ice(LOGITS, LABELS, return_aux=value),
                 lambda: lce(HIDDEN, WEIGHT, LABELS, return_aux=value)):
        with pytest.raises(TypeError, match="return_aux"):
            call()
    with pytest.raises(TypeError, match="return_entropy"):
        llp(HIDDEN, WEIGHT, LABELS, return_entropy=value)


def test_dense_ce_has_no_return_aux():
    with pytest.raises(TypeError):
        dce(LOGITS, SOFT, return_aux=True)


# ---------------------------------------------------------------------------------
# 7. axis_name: the classes split over the CPU devices inside jax.shard_map.


AXIS = "model"


@pytest.fixture(scope="module")
def mesh():
    cpu = jax.devices("cpu")
    return jax.make_mesh((len(cpu),), (AXIS,), devices=cpu)


def _sharded_vs_unsharded(loss, arrays, specs, diff, mesh):
    """Per-row losses with their aux, and the value and gradients of "mean", sharded
    (``axis_name``) and unsharded, each in one jit."""
    def run(sharded):
        def call(reduction, return_aux, *a):
            extra = {"axis_name": AXIS} if sharded else {}
            return loss(*a, reduction=reduction, return_aux=return_aux, **extra)

        def wrap(reduction, return_aux):
            f = functools.partial(call, reduction, return_aux)
            if not sharded:
                return f
            return jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=P())

        def f(*a):
            def mean(*d):
                full = list(a)
                for i, v in zip(diff, d, strict=True):
                    full[i] = v
                return wrap("mean", False)(*full)
            grads = jax.value_and_grad(mean, argnums=tuple(range(len(diff))))(
                *(a[i] for i in diff))
            return wrap("none", True)(*a), grads

        values = arrays
        if sharded:
            values = [jax.device_put(v, NamedSharding(mesh, s))
                      for v, s in zip(arrays, specs, strict=True)]
        return jax.jit(f)(*values)

    return run(True), run(False)


# The numeric options as arrays, replicated over the mesh, differentiated too.
OPTIONS = [np.float32(v) for v in (HEAD["softcap"], HEAD["temperature"], HEAD["z_loss"], 0.1)]


def _options(c, t, z, e):
    return {"softcap": c, "temperature": t, "z_loss": z, "label_smoothing": e}


def test_integer_ce_axis_name(mesh, on_cpu):
    labels = with_ignored(LABELS)

    def loss(x, w, c, t, z, e, **kw):
        return ice(x, labels, class_weights=w, where=ROW_MASK, ignore_index=-100,
                   **_options(c, t, z, e), **kw)

    got, want = _sharded_vs_unsharded(loss, [LOGITS, CLASS_WEIGHTS, *OPTIONS],
                                      (P(None, AXIS), P(AXIS), P(), P(), P(), P()),
                                      (0, 1, 2, 3, 4, 5), mesh)
    chex.assert_trees_all_close(got, want, **F32_TOL)
    (_, aux), _ = got
    np.testing.assert_array_equal(aux.correct, want[0][1].correct)
    assert aux.correct[TOP].all()


def test_linear_ce_axis_name(mesh, on_cpu):
    labels = with_ignored(LINEAR_LABELS)

    def loss(h, w, b, c, t, z, e, **kw):
        return lce(h, w, labels, bias=b, chunk_size=CHUNK, where=ROW_MASK, ignore_index=-100,
                   **_options(c, t, z, e), **kw)

    got, want = _sharded_vs_unsharded(
        loss, [HIDDEN, WEIGHT, BIAS, *OPTIONS], (P(), P(None, AXIS), P(AXIS), P(), P(), P(), P()),
        (0, 1, 2, 3, 4, 5, 6), mesh)
    chex.assert_trees_all_close(got, want, **F32_TOL)
    (_, aux), _ = got
    np.testing.assert_array_equal(aux.correct, want[0][1].correct)
    # And the unsharded values against the float64 reference.
    want_rows = run64(lambda h, w, b: ref_linear_ce(
        h, w, labels, bias=b, where=ROW_MASK, ignore_index=-100, label_smoothing=0.1, **HEAD),
        HIDDEN, WEIGHT, BIAS)
    chex.assert_trees_all_close(got[0][0], np.asarray(want_rows, np.float32), **F32_TOL)


def test_checked_linear_log_probs_raises_on_a_bad_label():
    checked = jaxloss.checked(jaxloss.linear_log_probs)
    with pytest.raises(Exception, match=r"labels must be class ids in \[0, 24\)"):
        checked(HIDDEN, WEIGHT, np.where(np.arange(N) == 1, V + 3, LINEAR_LABELS))
    ok = checked(HIDDEN, WEIGHT, with_ignored(LINEAR_LABELS), ignore_index=-100)
    assert np.all(np.isfinite(np.asarray(ok)))


def test_softcap_gives_no_gradient_to_nan_entries_that_are_left_out():
    """A NaN logit (or hidden state) on an ignored row, or a NaN logit of a class that
    `where` masks, reaches no gradient with softcap on, as without it."""
    logits = np.array([[np.nan, 0.0, 1.0], [1.0, 2.0, 3.0]], np.float32)
    grad = jax.grad(lambda x: ice(x, np.array([-100, 0]), ignore_index=-100, softcap=5.0,
                                  reduction="sum"))(logits)
    np.testing.assert_array_equal(np.asarray(grad)[0], 0.0)
    assert np.all(np.isfinite(np.asarray(grad)))
    masked = np.array([[1.0, 2.0, np.nan]], np.float32)
    grad = jax.grad(lambda x: ice(x, np.array([0]), where=np.array([[True, True, False]]),
                                  softcap=5.0, reduction="sum"))(masked)
    assert np.all(np.isfinite(np.asarray(grad))) and float(grad[0, 2]) == 0.0
    hidden = np.array([[1.0, 0.0], [np.nan, 1.0]], np.float32)
    weight = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 1.0]], np.float32)
    labels = np.array([0, -100])
    for f in (lambda w: lce(hidden, w, labels, ignore_index=-100, softcap=5.0, reduction="sum"),
              lambda w: jnp.sum(llp(hidden, w, labels, ignore_index=-100, softcap=5.0))):
        assert np.all(np.isfinite(np.asarray(jax.grad(f)(weight))))


def test_softcap_second_derivatives_are_finite_far_out_and_at_neg_inf():
    """sech² and its derivative stay finite where cosh overflows (|x/c| > 89 in
    float32) and at -inf (a masked class; the slid-back chunk's repeated columns)."""
    x = np.array([[1.0, -np.inf, 500.0, 2.0]], np.float32)
    for f in (lambda v: ice(v, np.array([0]), softcap=5.0, z_loss=1e-3).sum(),
              lambda v: dce(v, np.array([[1.0, 0, 0, 0]], np.float32), softcap=5.0).sum()):
        assert np.all(np.isfinite(np.asarray(jax.hessian(f)(x))))
    rng = np.random.default_rng(3)
    h, w = rng.normal(size=(3, 4)), rng.normal(size=(4, 12)) * 3
    labels = np.array([1, 5, 11])
    with jax.enable_x64(True):
        for f in (lambda v: lce(v, w, labels, chunk_size=5, softcap=2.0, reduction="sum"),
                  lambda v: jnp.sum(llp(v, w, labels, chunk_size=5, softcap=2.0))):
            assert np.all(np.isfinite(np.asarray(jax.hessian(f)(h))))


@pytest.mark.parametrize("temperature", [3.0, 0.3, 0.7])
def test_temperature_is_exact_at_huge_logits(temperature):
    """x/τ − m/τ rounds the two quotients apart (or fuses one into a multiply-add): at
    1e30 the row's max would sit ~1e22 from itself. The differences are scaled instead,
    so a row whose label is the max has loss exactly 0, and the other row's is exact."""
    logits = np.array([[1e30, 0.0, -1e30, 3.0], [0.0, 1e30, 2.0, -1e30]], np.float32)
    labels = np.array([0, 1])
    for value in (ice(logits, labels, temperature=temperature),
                  dce(logits, np.eye(4, dtype=np.float32)[labels], temperature=temperature),
                  lce(np.eye(2, dtype=np.float32), logits, labels, temperature=temperature),
                  -llp(np.eye(2, dtype=np.float32), logits, labels, temperature=temperature)):
        np.testing.assert_array_equal(np.asarray(value), 0.0)
    _, entropy = llp(np.eye(2, dtype=np.float32), logits, labels, temperature=temperature,
                     return_entropy=True)
    np.testing.assert_array_equal(np.asarray(entropy), 0.0)
    grad = jax.grad(lambda v: ice(v, labels, temperature=temperature, reduction="sum"))(logits)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    other = ice(np.array([[1e6, 0.0, 3.0]], np.float32), np.array([1]), temperature=temperature)
    np.testing.assert_allclose(np.asarray(other), [1e6 / temperature], rtol=1e-6)


def test_entropy_at_the_edge_of_the_float32_range():
    """Logits of ±3e38 in one row: differences past the float range get weight 0, not
    0 * inf = NaN; the label at the max has log-probability 0 and the entropy is 0."""
    hidden = np.eye(2, dtype=np.float32)
    weight = np.array([[3e38, -3e38, 0.0], [-3e38, 0.0, 3e38]], np.float32)
    f = lambda w: llp(hidden, w, np.array([0, 2]), return_entropy=True, chunk_size=1)  # noqa: E731
    log_p, entropy = f(weight)
    np.testing.assert_array_equal(np.asarray(log_p), 0.0)
    np.testing.assert_array_equal(np.asarray(entropy), 0.0)
    grad = jax.grad(lambda w: jnp.sum(f(w)[0]) + jnp.sum(f(w)[1]))(weight)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
