"""Tests of the contrastive and metric-learning losses (design.md, "How a loss is tested").

The matmul losses (info_nce, ntxent) are compared in float32 at precision="highest",
with the other side's matmuls at "highest" too (a GPU's default is TF32)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss.contrastive import triplet_margin_with_distance_loss as triplet_with_distance
from jaxloss.testing import (
    assert_finite_differences,
    assert_grads_finite,
    assert_vjp_matches_reference,
)

B, D = 8, 4
RNG = np.random.default_rng(0)
EA = RNG.normal(size=(B, D)).astype(np.float32)
EB = RNG.normal(size=(B, D)).astype(np.float32)
EC = RNG.normal(size=(B, D)).astype(np.float32)
SIMILAR = np.array([1, 0, 1, 0, 0, 1, 1, 0], np.float32)
MASK = np.array([True, True, False, True, False, True, True, True])
MARGIN = 2.0  # with D = 4 normal embeddings, some dissimilar hinges are active
T_MARGIN = 1.0  # triplets: every option set has active and inactive rows
TRIPLET_OPTIONS = ((1, False), (1, True), (2, False), (2, True))  # (norm_degree, swap)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# InfoNCE: CLIP-style unit embeddings, B = 10 so that chunks of 3 and 4 leave a remainder.
Q10 = _unit(RNG.normal(size=(10, D)))
K10 = _unit(Q10 + 0.7 * RNG.normal(size=(10, D)))
Q, K = Q10[:B], K10[:B]
TAU = 0.07

contrastive = jaxloss.contrastive_loss
from_distance = jaxloss.contrastive_loss_from_distance
triplet = jaxloss.triplet_margin_loss
info_nce = jaxloss.info_nce
ntxent = jaxloss.ntxent
HIGHEST = "highest"
distance = jaxloss.pairwise_distance
make_pairs = jaxloss.make_pairs
METRICS = ("euclidean", "squared_euclidean", "cosine")
# optax, compiled once (its eager op-by-op dispatch is slow).
optax_ntxent = jax.jit(optax.losses.ntxent)
optax_triplet = jax.jit(optax.losses.triplet_margin_loss)


# Naive float64 references: the plain formulas (PyTorch's conventions written out),
# jitted so that their derivatives compile once instead of dispatching op by op.

@functools.partial(jax.jit, static_argnames="metric")
def ref_distance(a, b, metric="euclidean"):
    """torch.nn.functional.pairwise_distance(a, b, eps=0), its square, 1 - cosine."""
    if metric == "euclidean":
        return jnp.linalg.norm(a - b, axis=-1)
    if metric == "squared_euclidean":
        return jnp.sum((a - b) ** 2, axis=-1)
    return 1 - jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


@functools.partial(jax.jit, static_argnames="metric")
def ref_contrastive(a, b, y, margin=1.0, metric="euclidean"):
    d = ref_distance(a, b, metric)
    return 0.5 * (y * d**2 + (1 - y) * jnp.maximum(margin - d, 0) ** 2)


@jax.jit
def ref_tfa_contrastive(d, y, margin=1.0):
    """TensorFlow Addons' ContrastiveLoss (no factor 1/2)."""
    return y * d**2 + (1 - y) * jnp.maximum(margin - d, 0) ** 2


@functools.partial(jax.jit, static_argnames=("norm_degree", "swap"))
def ref_triplet(a, p, n, margin=1.0, norm_degree=2, eps=1e-6, swap=False):
    """torch.nn.TripletMarginLoss: d(x, y) = ||x - y + eps||_p."""
    def dist(x, y):
        return jnp.sum(jnp.abs(x - y + eps) ** norm_degree, -1) ** (1 / norm_degree)

    d_an = dist(a, n)
    if swap:
        d_an = jnp.minimum(d_an, dist(p, n))
    return jnp.maximum(dist(a, p) - d_an + margin, 0)


@functools.partial(jax.jit, static_argnames="symmetric")
def ref_info_nce(q, k, t, symmetric=False):
    s = q @ k.T / t
    diag = jnp.diagonal(s)
    row = jnp.log(jnp.sum(jnp.exp(s), axis=1)) - diag
    if not symmetric:
        return row
    col = jnp.log(jnp.sum(jnp.exp(s), axis=0)) - diag
    return 0.5 * (row + col)


@jax.jit
def ref_ntxent(e, labels, t=TAU):
    u = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    s = u @ u.T / t
    same = labels[:, None] == labels[None, :]
    pos = same & ~jnp.eye(len(labels), dtype=bool)
    neg_sum = jnp.sum(jnp.where(same, 0, jnp.exp(s)), axis=1, keepdims=True)
    per_pair = -jnp.log(jnp.exp(s) / (jnp.exp(s) + neg_sum))
    return jnp.sum(jnp.where(pos, per_pair, 0)) / jnp.sum(pos)


# ---------------------------------------------------------------------------------
# 1. Values against float64 references and the optax namesakes.


class ValueTest(chex.TestCase):
    """Each test compiles one function (self.variant) that computes all its cases."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_pairwise_distance(self):
        with jax.enable_x64(True):
            a, b = EA.astype(float), EB.astype(float)

            @self.variant
            def f(a, b):
                out = {m: distance(a, b, metric=m) for m in METRICS}
                out["default"] = distance(a, b)
                out["axis0"] = distance(a.T, b.T, axis=0)
                out["broadcast"] = distance(a, b[0], metric="cosine")
                return out

            got = f(a, b)
            for metric in METRICS:
                chex.assert_shape(got[metric], (B,))
                chex.assert_trees_all_close(got[metric], ref_distance(a, b, metric), rtol=1e-12)
            chex.assert_trees_all_close(got["default"], ref_distance(a, b), rtol=1e-12)
            chex.assert_trees_all_close(got["axis0"], ref_distance(a, b), rtol=1e-12)
            chex.assert_trees_all_close(got["broadcast"], ref_distance(a, b[:1], "cosine"),
                                        rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_contrastive_loss(self):
        with jax.enable_x64(True):
            a, b, y = EA.astype(float), EB.astype(float), SIMILAR.astype(float)
            d = ref_distance(a, b)
            bracket = y * d**2 + (1 - y) * jnp.maximum(MARGIN - d, 0) ** 2
            assert float(jnp.max(bracket[y == 0])) > 0  # some hinges are active

            @self.variant
            def f(a, b, y):
                out = {m: contrastive(a, b, y, margin=MARGIN, metric=m) for m in METRICS}
                # Default margin 1 and the Euclidean metric; bool labels are accepted.
                out["default"] = contrastive(a, b, y > 0.5)
                for reduction in ("mean", "sum"):
                    out[reduction] = contrastive(a, b, y, margin=MARGIN, reduction=reduction)
                out["where_mean"] = contrastive(a, b, y, margin=MARGIN, where=MASK,
                                                reduction="mean")
                out["where"] = contrastive(a, b, y, margin=MARGIN, where=MASK)
                return out

            got = f(a, b, y)
            for metric in METRICS:
                chex.assert_trees_all_close(got[metric], ref_contrastive(a, b, y, MARGIN, metric),
                                            rtol=1e-12)
            chex.assert_trees_all_close(got["default"], ref_contrastive(a, b, y), rtol=1e-12)
            # The tutorial's 1/(2N) sum_i [...].
            np.testing.assert_allclose(got["mean"], jnp.sum(bracket) / (2 * B), rtol=1e-12)
            np.testing.assert_allclose(got["sum"], 0.5 * jnp.sum(bracket), rtol=1e-12)
            np.testing.assert_allclose(got["where_mean"],
                                       jnp.sum(bracket[MASK]) / (2 * MASK.sum()), rtol=1e-12)
            np.testing.assert_allclose(got["where"], jnp.where(MASK, 0.5 * bracket, 0),
                                       rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_contrastive_loss_from_distance(self):
        d = np.array([0.0, 0.3, 0.9, 1.0, 1.7, 2.5, 0.5, 3.0], np.float32)

        @self.variant
        def f(d, y):
            return {
                "default": from_distance(d, y),
                "margin2": from_distance(d, y, margin=2.0),
                "worked": from_distance(jnp.array([2.0, 0.5, 1.5]), jnp.array([1.0, 0.0, 0.0])),
                "embeddings": from_distance(distance(EA, EB), y, margin=MARGIN),
            }

        got = f(d, SIMILAR)
        d64, y64 = d.astype(float), SIMILAR.astype(float)
        chex.assert_trees_all_close(got["default"], 0.5 * ref_tfa_contrastive(d64, y64),
                                    rtol=1e-6)
        # TensorFlow Addons' ContrastiveLoss values are twice these.
        chex.assert_trees_all_close(2 * got["default"], ref_tfa_contrastive(d64, y64),
                                    rtol=1e-6)
        chex.assert_trees_all_close(2 * got["margin2"], ref_tfa_contrastive(d64, y64, 2.0),
                                    rtol=1e-6)
        # Worked values: similar d^2/2, dissimilar (m - d)^2/2 inside the margin, else 0.
        chex.assert_trees_all_close(got["worked"], jnp.array([2.0, 0.125, 0.0]))
        # The embedding version is this one applied to the distances.
        chex.assert_trees_all_close(got["embeddings"],
                                    contrastive(EA, EB, SIMILAR, margin=MARGIN), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_triplet_vs_torch_reference(self):
        with jax.enable_x64(True):
            a, p, n = EA.astype(float), EB.astype(float), EC.astype(float)

            @self.variant
            def f(a, p, n):
                out = {f"{k}{s}": triplet(a, p, n, margin=T_MARGIN, norm_degree=k, swap=s)
                       for k, s in TRIPLET_OPTIONS}
                for reduction in ("mean", "sum"):
                    out[reduction] = triplet(a, p, n, margin=T_MARGIN, swap=True,
                                             reduction=reduction)
                return out

            got = f(a, p, n)
            for k, s in TRIPLET_OPTIONS:
                want = ref_triplet(a, p, n, T_MARGIN, k, swap=s)
                chex.assert_trees_all_close(got[f"{k}{s}"], want, rtol=1e-12)
                assert 0 < int(jnp.sum(want > 0)) < B  # active and inactive rows
                if s:  # the swap changes some rows
                    assert not np.allclose(want, ref_triplet(a, p, n, T_MARGIN, k))
            want = ref_triplet(a, p, n, T_MARGIN, 2, swap=True)
            np.testing.assert_allclose(got["mean"], jnp.mean(want), rtol=1e-12)
            np.testing.assert_allclose(got["sum"], jnp.sum(want), rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_triplet_vs_optax(self):
        @self.variant
        def f(a, p, n):
            return (triplet(a, p, n, margin=MARGIN, eps=0.0), triplet(a, p, n, margin=MARGIN),
                    triplet(a, p, n, margin=MARGIN, norm_degree=1))

        exact, default, l1 = f(EA, EB, EC)
        chex.assert_trees_all_close(exact, optax_triplet(EA, EB, EC, margin=MARGIN, eps=0.0),
                                    rtol=1e-6, atol=1e-6)
        chex.assert_trees_all_close(default, optax_triplet(EA, EB, EC, margin=MARGIN),
                                    atol=1e-5)
        # optax's norm_degree=1 is a signed sum, not the L1 distance.
        theirs = optax_triplet(EA, EB, EC, margin=MARGIN, norm_degree=1)
        signed = np.maximum((EA - EB).sum(-1) - (EA - EC).sum(-1) + MARGIN, 0)
        chex.assert_trees_all_close(theirs, signed, atol=1e-5)
        assert np.max(np.abs(np.asarray(l1) - np.asarray(theirs))) > 0.1
        with jax.enable_x64(True):
            want = np.asarray(ref_triplet(EA.astype(float), EB.astype(float),
                                          EC.astype(float), MARGIN, 1))
        chex.assert_trees_all_close(l1, want.astype(np.float32), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_info_nce(self):
        with jax.enable_x64(True):
            q, k = Q.astype(float), K.astype(float)

            @self.variant
            def f(q, k):
                out = {str(s): info_nce(q, k, temperature=TAU, symmetric=s)
                       for s in (False, True)}
                for reduction in ("mean", "sum"):
                    out[reduction] = info_nce(q, k, temperature=TAU, symmetric=True,
                                              reduction=reduction)
                out["default"] = info_nce(q, k)
                return out

            got = f(q, k)
            for symmetric in (False, True):
                chex.assert_shape(got[str(symmetric)], (B,))
                chex.assert_trees_all_close(got[str(symmetric)], ref_info_nce(q, k, TAU, symmetric),
                                            rtol=1e-12, atol=1e-12)
            want = ref_info_nce(q, k, TAU, True)
            np.testing.assert_allclose(got["mean"], jnp.mean(want), rtol=1e-12)
            np.testing.assert_allclose(got["sum"], jnp.sum(want), rtol=1e-12)
        # The default temperature is 0.07; non-symmetric InfoNCE is the cross-entropy of
        # the score rows against the diagonal.
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(Q @ K.T / TAU, np.arange(B))
        chex.assert_trees_all_close(got["default"], ce, rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ntxent_vs_optax(self):
        layouts = {
            "pairs": [0, 0, 1, 1, 2, 2, 3, 3],
            "groups_of_3": [0, 0, 0, 1, 1, 1, 2, 2],
            "mixed_with_singleton": [4, 1, 4, 1, 2, 2, 2, 7],
            "one_class": [5] * B,
        }
        layouts = {name: np.array(labels, np.int32) for name, labels in layouts.items()}

        @self.variant
        def f(e):
            return {name: (ntxent(e, labels, precision=HIGHEST),
                           ntxent(e, labels, 0.5, precision=HIGHEST))
                    for name, labels in layouts.items()}

        got = f(EA)
        for name, labels in layouts.items():
            for value, temperature in zip(got[name], (TAU, 0.5), strict=True):
                with jax.default_matmul_precision(HIGHEST):
                    want = optax_ntxent(EA, labels, temperature)
                assert np.isfinite(want), name
                chex.assert_shape(value, ())
                chex.assert_trees_all_close(value, want, rtol=1e-5, atol=1e-6,
                                            custom_message=name)
        # A row without negatives: each of its positives costs -log(e^s / e^s) = 0.
        np.testing.assert_allclose(got["one_class"][0], 0.0, atol=1e-6)
        with jax.enable_x64(True):
            e = EA.astype(float)
            labels = layouts["groups_of_3"]
            chex.assert_trees_all_close(ntxent(e, labels), ref_ntxent(e, labels), rtol=1e-10)


def test_ntxent_without_positive_pairs_is_zero_with_zero_gradient():
    labels = np.arange(B, dtype=np.int32)
    value, grad = jax.value_and_grad(ntxent)(EA, labels)
    assert float(value) == 0.0
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(grad, 0.0)
    # optax divides 0 by 0 positive pairs.
    assert np.isnan(optax_ntxent(EA, labels))


# ---------------------------------------------------------------------------------
# 2. Gradients: against jax.grad of the float64 references; finite differences.
# Each check stacks the option sets into one output, so that it compiles once; the
# leading axis of a mismatch names the option set.


def test_pairwise_distance_gradients(x64):
    def loss(a, b):
        return jnp.stack([distance(a, b, metric=m) for m in METRICS])

    def ref(a, b):
        return jnp.stack([ref_distance(a, b, m) for m in METRICS])

    err = assert_vjp_matches_reference(loss, ref, EA, EB, argnums=(0, 1))
    assert err < 1e-10
    # (finite differences through the Euclidean custom_vjp: the contrastive and triplet
    # gradient tests below)


def test_contrastive_gradients(x64):
    """Away from d = 0: jax.grad of the naive formula (PyTorch autograd of the same), in
    the embeddings and the margin."""
    margins = {"euclidean": 1.0, "squared_euclidean": 1.0, "cosine": 0.45}

    def loss(a, b, y, m):
        return jnp.stack([contrastive(a, b, y, margin=m * margins[k], metric=k)
                          for k in METRICS])

    def ref(a, b, y, m):
        return jnp.stack([ref_contrastive(a, b, y, m * margins[k], k) for k in METRICS])

    err = assert_vjp_matches_reference(loss, ref, EA, EB, SIMILAR, np.asarray(MARGIN),
                                       argnums=(0, 1, 3))
    assert err < 1e-10
    assert_finite_differences(lambda a, b: contrastive(a, b, SIMILAR, margin=MARGIN), EA, EB,
                              argnums=(0, 1))


def test_contrastive_mean_gradient(x64):
    def loss(a, b):
        return contrastive(a, b, SIMILAR, margin=MARGIN, where=MASK, reduction="mean")

    def ref(a, b):
        return jnp.sum(jnp.where(MASK, ref_contrastive(a, b, SIMILAR, MARGIN), 0)) / MASK.sum()

    assert_vjp_matches_reference(loss, ref, EA, EB, argnums=(0, 1))


def test_contrastive_from_distance_gradient(x64):
    d = np.array([0.2, 0.3, 0.9, 1.2, 1.7, 2.5, 0.5, 3.0])
    assert_vjp_matches_reference(
        lambda d, m: from_distance(d, SIMILAR, margin=m),
        lambda d, m: 0.5 * ref_tfa_contrastive(d, SIMILAR, m), d, np.asarray(2.0),
        argnums=(0, 1))


def test_triplet_axis_and_optax_positional_order():
    rng = np.random.default_rng(3)
    a, p, n = (rng.normal(size=(4, 2, 3)).astype(np.float32) for _ in range(3))
    want = jaxloss.triplet_margin_loss(*(np.moveaxis(x, 0, -1) for x in (a, p, n)),
                                       margin=0.5, norm_degree=3, eps=1e-3)
    # optax's order: (anchors, positives, negatives, axis, norm_degree, margin, eps).
    got = jaxloss.triplet_margin_loss(a, p, n, 0, 3, 0.5, 1e-3)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="axis"):
        jaxloss.triplet_margin_loss(a, p, n, 3)


def test_triplet_gradients(x64):
    """Norm degrees 1 and 2, with and without the swap (TRIPLET_OPTIONS, in order)."""
    def loss(a, p, n):
        return jnp.stack([triplet(a, p, n, margin=T_MARGIN, norm_degree=k, swap=s)
                          for k, s in TRIPLET_OPTIONS])

    def ref(a, p, n):
        return jnp.stack([ref_triplet(a, p, n, T_MARGIN, k, swap=s) for k, s in TRIPLET_OPTIONS])

    assert_vjp_matches_reference(loss, ref, EA, EB, EC, argnums=(0, 1, 2))
    # finite differences through the three distances of the custom_vjp
    assert_finite_differences(lambda a, p, n: triplet(a, p, n, margin=T_MARGIN, swap=True),
                              EA, EB, EC, argnums=(0, 1, 2))


# (symmetric, chunk_size); chunked and not symmetric is compared with unchunked below.
INFO_NCE_OPTIONS = ((False, None), (True, None), (True, 3))


def test_info_nce_gradients(x64):
    """Queries, keys and the temperature against jax.grad of the reference, for every
    (symmetric, chunk_size) in INFO_NCE_OPTIONS; B = 10, so chunks of 3 leave one row."""
    def loss(q, k, t):
        return jnp.stack([info_nce(q, k, temperature=t, symmetric=s, chunk_size=c)
                          for s, c in INFO_NCE_OPTIONS])

    def ref(q, k, t):
        return jnp.stack([ref_info_nce(q, k, t, s) for s, _ in INFO_NCE_OPTIONS])

    err = assert_vjp_matches_reference(loss, ref, Q10, K10, np.asarray(0.3), argnums=(0, 1, 2))
    assert err < 1e-10
    # check_grads, order 2, through the chunked scan.
    assert_finite_differences(
        lambda q, k, t: info_nce(q, k, temperature=t, symmetric=True, chunk_size=3),
        Q10, K10, np.asarray(0.3), argnums=(0, 1, 2), order=2)


def test_info_nce_mean_gradient_with_temperature(x64):
    assert_vjp_matches_reference(
        lambda q, k, t: info_nce(q, k, temperature=t, symmetric=True, reduction="mean"),
        lambda q, k, t: jnp.mean(ref_info_nce(q, k, t, True)), Q, K, np.asarray(TAU),
        argnums=(0, 1, 2), rtol=1e-8)


def test_ntxent_gradient_matches_reference(x64):
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    assert_vjp_matches_reference(lambda e: ntxent(e, labels, 0.5),
                                 lambda e: ref_ntxent(e, labels, 0.5), EA)


def test_triplet_gradient_at_the_hinge_tie(x64):
    """violation = d(a, p) - d(a, n) + m = 0 exactly: PyTorch's clamp_min passes the whole
    gradient there (jnp.maximum would halve it)."""
    a = np.zeros((1, 2))
    p, n = np.array([[1.0, 0.0]]), np.array([[0.0, 4.0]])  # d(a, p) = 1, d(a, n) = 4
    np.testing.assert_array_equal(triplet(a, p, n, eps=0.0, margin=3.0), [0.0])
    grad = jax.grad(lambda a: triplet(a, p, n, eps=0.0, margin=3.0).sum())(a)
    np.testing.assert_allclose(grad, [[-1.0, 1.0]])


# ---------------------------------------------------------------------------------
# Distance 0 (and zero vectors): PyTorch's subgradient 0, not NaN.


def test_distance_gradient_is_zero_where_a_equals_b():
    a = EA.copy()
    a[1] = EB[1]
    a[5] = EB[5]
    for metric in METRICS:
        f = functools.partial(distance, metric=metric)
        grads = jax.grad(lambda a, b, f=f: f(a, b).sum(), argnums=(0, 1))(a, EB)
        chex.assert_tree_all_finite(grads)
        grad_a, grad_b = (np.asarray(g) for g in grads)
        # Exactly 0 for the norms; the cosine is smooth there (a maximum of the
        # similarity), its gradient 0 up to rounding.
        atol = 1e-6 if metric == "cosine" else 0.0
        np.testing.assert_allclose(grad_a[[1, 5]], 0.0, atol=atol)
        np.testing.assert_allclose(grad_b[[1, 5]], 0.0, atol=atol)
        assert np.abs(grad_a[0]).sum() > 0
        np.testing.assert_allclose(np.asarray(f(a, EB))[[1, 5]], 0.0, atol=1e-6)
    # The naive norm is NaN there.
    naive = np.asarray(jax.grad(lambda a: jnp.linalg.norm(a - EB, axis=-1).sum())(a))
    assert np.isnan(naive[[1, 5]]).all()


def test_cosine_distance_of_zero_vector():
    """torch's cosine_similarity of a zero vector is 0: distance 1, gradient 0."""
    a = EA.copy()
    a[2] = 0.0
    b = EB.copy()
    b[3] = 0.0
    b[2] = 0.0  # both zero in row 2
    a[6] = 0.0
    f = functools.partial(distance, metric="cosine")
    got = np.asarray(f(a, b))
    np.testing.assert_allclose(got[[2, 3, 6]], 1.0)
    grad_a, grad_b = jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))(a, b)
    chex.assert_tree_all_finite((grad_a, grad_b))
    for row in (2, 3, 6):
        np.testing.assert_array_equal(grad_a[row], 0.0)
        np.testing.assert_array_equal(grad_b[row], 0.0)
    # Euclidean and squared Euclidean distances between two zero vectors.
    for metric in ("euclidean", "squared_euclidean"):
        grad = jax.grad(lambda a, m=metric: distance(a, b, metric=m).sum())(a)
        chex.assert_tree_all_finite(grad)
        np.testing.assert_array_equal(grad[2], 0.0)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_contrastive_gradient_at_distance_zero(label):
    """Both towers equal (a Siamese start): jaxloss 0, the naive norm version NaN."""
    y = np.full(B, label, np.float32)
    loss, (grad_a, grad_b) = jax.value_and_grad(
        lambda a, b: contrastive(a, b, y, margin=MARGIN).sum(), argnums=(0, 1))(EA, EA)
    chex.assert_tree_all_finite((grad_a, grad_b))
    np.testing.assert_array_equal(grad_a, 0.0)
    np.testing.assert_array_equal(grad_b, 0.0)
    np.testing.assert_allclose(loss, B * 0.5 * (1 - label) * MARGIN**2)
    with jax.enable_x64(True):
        a = jnp.asarray(EA, float)
        naive = jax.grad(lambda a, b: ref_contrastive(a, b, y, MARGIN).sum(),
                         argnums=(0, 1))(a, a)
        assert np.isnan(naive[0]).all() and np.isnan(naive[1]).all()
    # Also in a batch where the other pairs are at d > 0, and through the mean.
    a = EA.copy()
    a[0] = EB[0]
    grad = jax.grad(lambda a: contrastive(a, EB, y, margin=MARGIN, reduction="mean"))(a)
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(grad[0], 0.0)


def test_triplet_gradient_at_distance_zero():
    """a == p with eps = 0: the L1 and L2 distances have subgradient 0."""
    for norm_degree in (1, 2):
        grads = jax.grad(lambda a, p, n, k=norm_degree: triplet(
            a, p, n, norm_degree=k, eps=0.0, margin=10.0).sum(), argnums=(0, 1, 2))(
                EA, EA, EC)
        chex.assert_tree_all_finite(grads)
        with jax.enable_x64(True):
            # only the negative distance contributes: -d/da d(a, n)
            want = jax.jit(jax.grad(lambda a, n, k=norm_degree: -jnp.sum(
                jnp.sum(jnp.abs(a - n) ** k, -1) ** (1 / k))))(EA.astype(float),
                                                             EC.astype(float))
        chex.assert_trees_all_close(grads[0], want.astype(np.float32), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(grads[1], 0.0)


# ---------------------------------------------------------------------------------
# InfoNCE chunking and dtypes.


@pytest.mark.parametrize("symmetric, chunk_size", [  # B = 10: 2 divides it, 3 does not
    (False, 2), (False, 3), (True, 2), (True, 3), (True, 12)])
def test_info_nce_chunked_equals_unchunked(symmetric, chunk_size):
    def value_and_grads(chunk):
        def f(q, k, t):
            return info_nce(q, k, temperature=t, symmetric=symmetric, chunk_size=chunk,
                            precision=HIGHEST)

        @jax.jit
        def both(q, k, t):
            # a cotangent that differs per row, so rows are not checked only in sum
            grads = jax.grad(lambda *x: (f(*x) * jnp.arange(1.0, 11.0)).sum(),
                             argnums=(0, 1, 2))(q, k, t)
            return f(q, k, t), grads

        return both(Q10, K10, TAU)

    want = value_and_grads(None)
    got = value_and_grads(chunk_size)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    assert got[0].dtype == jnp.float32


def _values_and_grads(cases):
    """{name: (loss, args)} -> {name: (per-example losses, grads of their sum w.r.t. every
    argument)}, one small compiled function per case."""
    out = {}
    for name, (loss, args) in cases.items():
        def run(*args, loss=loss):
            grads = jax.grad(lambda *x: loss(*x).sum(), argnums=tuple(range(len(args))))(*args)
            return loss(*args), grads

        out[name] = jax.jit(run)(*args)
    return out


def _low_precision_cases(dtype):
    a, b = EA.astype(dtype), EB.astype(dtype)
    q, k = Q.astype(dtype), K.astype(dtype)
    return {
        "contrastive": (lambda a, b: contrastive(a, b, SIMILAR, margin=MARGIN), (a, b)),
        "triplet": (lambda a, b: triplet(a, b, EC, swap=True), (a, b)),
        "info_nce_symmetric_chunked": (
            lambda q, k: info_nce(q, k, temperature=0.5, symmetric=True, chunk_size=3,
                                  precision=HIGHEST),
            (q, k)),
    }


@functools.cache
def _float32_values_and_grads():
    return _values_and_grads(_low_precision_cases(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes(dtype):
    """float32 losses and gradients in the input dtype, close to the float32 results."""
    got = _values_and_grads(_low_precision_cases(dtype))
    want = _float32_values_and_grads()
    tol = 3e-2 if dtype == jnp.bfloat16 else 3e-3
    for name, (values, grads) in got.items():
        assert values.dtype == jnp.float32, name
        assert all(g.dtype == dtype for g in grads), name
        chex.assert_trees_all_close(values, want[name][0], rtol=tol, atol=tol,
                                    custom_message=name)
        chex.assert_trees_all_close(tuple(g.astype(jnp.float32) for g in grads),
                                    want[name][1], rtol=tol, atol=tol, custom_message=name)


# ---------------------------------------------------------------------------------
# 3. Extremes.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_extremes_are_finite(dtype):
    top = float(jnp.finfo(dtype).max)
    tiny = float(jnp.finfo(dtype).smallest_subnormal)
    # Equal vectors at the ends of the range (d = 0), subnormal differences, and
    # distances whose square fits in float32 (for fp16: the whole range against its
    # negation).
    big = 1e18 if dtype == jnp.bfloat16 else top
    a = np.array([[top, -top], [-top, top], [tiny, 0.0], [big, -big]], dtype)
    b = np.array([[top, -top], [-top, top], [0.0, tiny], [-big, big]], dtype)
    y = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    assert_grads_finite(lambda a, b: contrastive(a, b, y), a, b, argnums=(0, 1))
    np.testing.assert_allclose(contrastive(a, b, y)[:3], [0.0, 0.5, 0.0], atol=1e-12)
    # The squared distance's square must fit too (the overflow is a separate test).
    a2, b2 = a.copy(), b.copy()
    if dtype == jnp.bfloat16:
        a2[3], b2[3] = [1e9, -1e9], [-1e9, 1e9]
    # The cosine gradient grows like 1/|a|: vectors of a moderate norm, over the range.
    mid = 1e18 if dtype == jnp.bfloat16 else 1e4
    c = np.array([[mid, -mid], [-1.0, 1.0], [0.0, 0.0], [mid, 1.0]], dtype)
    # InfoNCE at the top of the range: q = top (2I - 1), k = I; every row is certain.
    q = (top * (2 * np.eye(4) - 1)).astype(dtype)
    k = np.eye(4, dtype=dtype)
    cases = {
        "contrastive_squared": (
            lambda a, b: contrastive(a, b, y, metric="squared_euclidean"), (a2, b2)),
        "contrastive_cosine": (lambda a, b: contrastive(a, b, y, metric="cosine"),
                               (c, c[::-1])),
        "triplet": (triplet, (a, b, b[::-1])),
        "triplet_l1_swap": (lambda a, b: triplet(a, b, a, swap=True, norm_degree=1), (a, b)),
        "ntxent": (lambda a: ntxent(a, np.array([0, 0, 1, 1])), (a,)),
        "info_nce_symmetric": (
            lambda q, k: info_nce(q, k, temperature=1.0, symmetric=True, reduction="mean"),
            (q, k)),
    }
    out = _values_and_grads(cases)
    for name, (values, grads) in out.items():
        chex.assert_tree_all_finite((values, grads), custom_message=name)
        assert values.dtype == jnp.float32, name  # float32 accumulation
        assert all(g.dtype == dtype for g in grads), name
    np.testing.assert_array_equal(out["info_nce_symmetric"][0], 0.0)
    np.testing.assert_array_equal(info_nce(q, k, temperature=1.0), 0.0)


def test_fp16_range_values_exact():
    top = float(jnp.finfo(jnp.float16).max)
    a = np.array([[top, -top, 0.0], [-top, top, 1.0]], np.float16)
    b = np.array([[-top, top, 0.0], [1.0, -1.0, top]], np.float16)
    y, labels = np.array([1.0, 0.0]), np.array([0, 1, 0, 1])
    with jax.enable_x64(True):
        a64, b64 = a.astype(float), b.astype(float)
        want_d = np.asarray(ref_distance(a64, b64))
        want_l = np.asarray(ref_contrastive(a64, b64, y))
        want_n = np.asarray(ref_ntxent(np.concatenate([a64, b64]), labels))
    chex.assert_trees_all_close(distance(a, b), want_d.astype(np.float32), rtol=1e-6)
    chex.assert_trees_all_close(contrastive(a, b, y.astype(np.float32)),
                                want_l.astype(np.float32), rtol=1e-6)
    chex.assert_trees_all_close(ntxent(np.concatenate([a, b]), labels, precision=HIGHEST),
                                want_n.astype(np.float32), rtol=1e-5)


def test_dissimilar_pair_whose_squared_distance_overflows():
    """A dissimilar pair far beyond the margin costs exactly 0, with gradient 0, also when
    d (finite) squared exceeds the dtype: y d^2 must not become 0 * inf = NaN."""
    dissimilar = jnp.zeros(2)
    np.testing.assert_array_equal(from_distance(jnp.array([1e20, 3.0]), dissimilar), 0.0)
    big = 1e18
    a = jnp.array([[big, -big], [3.0, 4.0]], jnp.bfloat16)
    b = jnp.array([[-big, big], [0.0, 0.0]], jnp.bfloat16)
    for dtype in (jnp.bfloat16, jnp.float32):
        loss, grad = jax.value_and_grad(lambda a, b: contrastive(
            a, b, dissimilar, metric="squared_euclidean").sum())(a.astype(dtype), b.astype(dtype))
        np.testing.assert_array_equal(loss, 0.0)
        np.testing.assert_array_equal(grad, 0.0)


def test_euclidean_distance_whose_square_overflows():
    """Finite float32 inputs whose distance (2e20 sqrt 2) fits in float32 but whose squared
    distance does not: the distance is finite; a dissimilar pair costs 0 with gradient 0;
    a similar pair's gradient is a - b; the triplet loss is finite, with finite gradients."""
    a = np.array([[1e20, 1e20], [3.0, 4.0]], np.float32)
    b = np.array([[-1e20, -1e20], [0.0, 0.0]], np.float32)
    with jax.enable_x64(True):
        want_d = np.asarray(ref_distance(a.astype(float), b.astype(float)))
        want_t = np.asarray(ref_triplet(a.astype(float), 3 * b.astype(float), b.astype(float)))
    chex.assert_trees_all_close(distance(a, b), want_d.astype(np.float32), rtol=1e-6)
    loss, grad = jax.value_and_grad(lambda a: contrastive(a, b, jnp.zeros(2)).sum())(a)
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    grad = jax.grad(lambda a: contrastive(a, b, jnp.ones(2)).sum())(a)
    chex.assert_trees_all_close(grad, a - b, rtol=1e-6)
    chex.assert_trees_all_close(triplet(a, 3 * b, b), want_t.astype(np.float32), rtol=1e-5)
    assert_grads_finite(lambda a, p, n: triplet(a, p, n, swap=True), a, b, 3 * b,
                        argnums=(0, 1, 2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cosine_distance_of_huge_vectors(dtype):
    """Cosine distance is scale invariant: a == b at the top of the range is 0, a == -b
    is 2, with finite gradients (the squared norms overflow, the cosine does not)."""
    top = 1e20 if dtype == jnp.float32 else float(jnp.finfo(dtype).max)
    a = jnp.array([[top, -top], [top, top]], dtype)
    b = jnp.array([[top, -top], [-top, -top]], dtype)
    chex.assert_trees_all_close(distance(a, b, metric="cosine"), jnp.array([0.0, 2.0]),
                                atol=1e-6)
    assert_grads_finite(lambda a, b: distance(a, b, metric="cosine"), a, b, argnums=(0, 1))


def test_nan_in_nan_out():
    a = EA.copy()
    a[2, 1] = np.nan
    d = np.array([0.5, 1.0, np.nan, 2.0, 0.1, 0.2, 0.3, 0.4], np.float32)
    outputs = {
        "contrastive": contrastive(a, EB, SIMILAR),
        "contrastive_dissimilar": contrastive(a, EB, jnp.zeros(B)),
        "from_distance": from_distance(d, SIMILAR),
        "triplet": triplet(a, EB, EC),
        "triplet_swap_l1": triplet(EB, EC, a, swap=True, norm_degree=1),
        "squared_euclidean": distance(a, EB, metric="squared_euclidean"),
        "euclidean": distance(EB, a),
        "cosine": distance(a, EB, metric="cosine"),
        "contrastive_cosine": contrastive(EB, a, SIMILAR, metric="cosine"),
    }
    for name, out in outputs.items():
        out = np.asarray(out)
        assert np.isnan(out[2]), (name, out)
        assert np.isfinite(np.delete(out, 2)).all(), (name, out)
    q = Q.copy()
    q[2, 0] = np.nan
    out = np.asarray(info_nce(q, K))
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
    assert np.isnan(info_nce(q, K, symmetric=True)).any()
    assert np.isnan(info_nce(q, K, chunk_size=3)[2])
    assert np.isnan(ntxent(a, np.array([0, 0, 1, 1, 2, 2, 3, 3])))
    assert np.isnan(jax.grad(lambda a: contrastive(a, EB, SIMILAR).sum())(a)[2]).any()


# ---------------------------------------------------------------------------------
# 4. Composition: jit, vmap, grad, hessian, pmap, sharded inputs.


def test_vmap_matches_batch():
    chex.assert_trees_all_close(
        jax.vmap(lambda a, b, y: contrastive(a, b, y, margin=MARGIN))(EA, EB, SIMILAR),
        contrastive(EA, EB, SIMILAR, margin=MARGIN), rtol=1e-6)
    chex.assert_trees_all_close(jax.vmap(triplet)(EA, EB, EC), triplet(EA, EB, EC),
                                rtol=1e-6)
    chex.assert_trees_all_close(jax.vmap(distance)(EA, EB), distance(EA, EB), rtol=1e-6)
    # A batch of InfoNCE problems, and per-pair gradients of the contrastive loss.
    qs, ks = np.stack([Q, K]), np.stack([K, Q])
    loss = functools.partial(info_nce, precision=HIGHEST)
    chex.assert_trees_all_close(jax.vmap(loss)(qs, ks),
                                jnp.stack([loss(Q, K), loss(K, Q)]), rtol=1e-6)
    grads = jax.vmap(jax.grad(lambda a, b, y: contrastive(a[None], b[None], y[None]).sum()))(
        EA, EB, SIMILAR)
    chex.assert_trees_all_close(grads, jax.grad(
        lambda a: contrastive(a, EB, SIMILAR).sum())(EA), rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_contrastive_hessian(metric, x64):
    a, b = jnp.asarray(EA[:3], float), jnp.asarray(EB[:3], float)
    y = jnp.asarray(SIMILAR[:3], float)

    def f(a):
        return contrastive(a, b, y, margin=MARGIN, metric=metric).sum()

    h_ref = jax.jit(jax.hessian(lambda a: ref_contrastive(a, b, y, MARGIN, metric).sum()))(a)
    assert np.abs(h_ref).max() > 0.1
    chex.assert_trees_all_close(jax.jit(jax.hessian(f))(a), h_ref, rtol=1e-9, atol=1e-12)
    if metric == "euclidean":  # the custom_vjp, reverse-over-reverse too
        chex.assert_trees_all_close(jax.jit(jax.jacrev(jax.jacrev(f)))(a), h_ref, rtol=1e-9,
                                    atol=1e-12)


def test_info_nce_hessian(x64):
    q, k = Q[:4].astype(float), K[:4].astype(float)

    def f(q, symmetric=False, chunk=None):
        return info_nce(q, k, temperature=0.5, symmetric=symmetric, chunk_size=chunk).sum()

    h_ref = jax.jit(jax.hessian(lambda q: ref_info_nce(q, k, 0.5).sum()))(q)
    chex.assert_trees_all_close(jax.jit(jax.hessian(f))(q), h_ref, rtol=1e-9, atol=1e-12)
    # Symmetric, chunked: reverse-over-reverse through the scan.
    h_ref = jax.jit(jax.hessian(lambda q: ref_info_nce(q, k, 0.5, True).sum()))(q)
    h = jax.jit(jax.jacrev(jax.jacrev(functools.partial(f, symmetric=True, chunk=3))))(q)
    chex.assert_trees_all_close(h, h_ref, rtol=1e-9, atol=1e-12)


def test_forward_mode_keeps_the_subgradient_and_the_chunks():
    # jvp at a == b: the distance's rule gives PyTorch's subgradient 0 in forward mode
    # too (plain autodiff of the norm would give NaN).
    t_out = jax.jvp(lambda a: distance(a, EA), (EA,), (EB,))[1]
    np.testing.assert_array_equal(t_out, 0.0)
    # The chunked symmetric InfoNCE in forward mode equals its unchunked form.
    def f(chunk):
        return lambda q: info_nce(q, K, symmetric=True, chunk_size=chunk, precision=HIGHEST)
    want = jax.jvp(f(None), (Q,), (K,))[1]
    np.testing.assert_allclose(jax.jvp(f(3), (Q,), (K,))[1], want, rtol=1e-5, atol=2e-5)


class VariantsTest(chex.TestCase):
    """chex's variants, with_pmap included: the arguments replicated to the 4 CPU
    devices of conftest.py, compared with the loss on the CPU (the other variants run on
    the default backend)."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_value_and_grad(self):
        cases = [
            (lambda a, b: contrastive(a, b, SIMILAR, margin=MARGIN, reduction="mean"),
             EA, EB),
            (lambda a, b: triplet(a, b, EC, swap=True, reduction="mean"), EA, EB),
            (lambda q, k: info_nce(q, k, symmetric=True, chunk_size=3, reduction="mean",
                                   precision=HIGHEST), Q, K),
        ]
        cpu = jax.devices("cpu")
        pmap = self.variant.type is chex.ChexVariantType.WITH_PMAP
        for f, x, y in cases:
            with jax.default_device(cpu[0] if pmap else None):
                value, grad = self.variant(jax.value_and_grad(f, argnums=(0, 1)),
                                           devices=cpu)(x, y)
                want_value, want_grad = jax.value_and_grad(f, argnums=(0, 1))(x, y)
            chex.assert_trees_all_close(value, want_value, rtol=1e-6)
            chex.assert_trees_all_close(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_pmap_over_batch_shards(on_cpu):
    n = len(on_cpu)
    assert n == 4
    a, b = EA.reshape(n, 2, D), EB.reshape(n, 2, D)
    y = SIMILAR.reshape(n, 2)

    @functools.partial(jax.pmap, axis_name="i", devices=on_cpu)
    def step(a, b, y):
        loss, grad = jax.value_and_grad(
            lambda a: contrastive(a, b, y, margin=MARGIN, reduction="mean"))(a)
        return jax.lax.pmean(loss, "i"), grad

    loss, grad = step(a, b, y)
    flat_loss, flat_grad = jax.value_and_grad(
        lambda a: contrastive(a, EB, SIMILAR, margin=MARGIN, reduction="mean"))(EA)
    chex.assert_trees_all_close(loss, jnp.full((n,), flat_loss), rtol=1e-6)
    chex.assert_trees_all_close(grad.reshape(B, D) / n, flat_grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def mesh(cpu_devices):
    """The 4 CPU devices (the tests that use it run on_cpu, their references too)."""
    return jax.make_mesh((4,), ("data",), devices=cpu_devices)


def _assert_sharded_equals_unsharded(mesh, loss, args, argnums=(0, 1)):
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, P("data")))
    f = jax.jit(jax.value_and_grad(lambda *x: loss(*x).sum(), argnums=argnums))
    value, grads = f(*(put(x) for x in args))
    want_value, want_grads = f(*args)
    chex.assert_trees_all_close(value, want_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)


def test_sharded_inputs(mesh, on_cpu):
    cases = [
        (lambda a, b, y: contrastive(a, b, y, margin=MARGIN, reduction="mean"),
         (EA, EB, SIMILAR)),
        (lambda a, b, y: contrastive(a, b, y, metric="cosine", where=MASK, reduction="sum"),
         (EA, EB, SIMILAR)),
        (lambda a, b, y: contrastive(a, b, y, metric="squared_euclidean"), (EA, EB, SIMILAR)),
        (lambda a, p, n: triplet(a, p, n, swap=True, reduction="mean"), (EA, EB, EC)),
        (lambda a, p, n: triplet(a, p, n, norm_degree=1), (EA, EB, EC)),
    ]
    for loss, args in cases:
        _assert_sharded_equals_unsharded(mesh, loss, args)


@pytest.mark.parametrize("symmetric, chunk_size", [(False, None), (True, 3)])
def test_info_nce_sharded_inputs(mesh, on_cpu, symmetric, chunk_size):
    """Rows of queries and keys sharded over the mesh of CPU devices."""
    def loss(q, k):
        return info_nce(q, k, symmetric=symmetric, chunk_size=chunk_size, reduction="mean",
                        precision=HIGHEST)

    _assert_sharded_equals_unsharded(mesh, loss, (Q, K))


def test_ntxent_and_siglip_on_an_explicit_mesh_with_replicated_labels(on_cpu):
    """JAX's default mesh (Explicit axes) under jax.set_mesh: the rows' scores are split
    as the batch is (each device scores its rows against every row), also with labels
    left whole on every device."""
    mesh = jax.make_mesh((2,), ("data",), devices=on_cpu[:2])

    def f(a, b, t, bias, labels):
        return (ntxent(a, labels, 0.5, precision=HIGHEST)
                + jaxloss.siglip_loss(a, b, t, bias, precision=HIGHEST))

    f = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
    args = (EA, EB, np.float32(2.0), np.float32(-1.0))
    labels = np.repeat(np.arange(B // 2), 2).astype(np.int32)
    want = f(*args, labels)
    with jax.set_mesh(mesh):
        got = f(*(jax.device_put(x, P("data") if x.ndim else P()) for x in args),
                jax.device_put(labels, P()))
    assert got[1][0].sharding.spec[0] == "data"
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_siglip_temperature_and_bias_of_shape_1():
    """big_vision's learned t' and b have shape (1,); so do their gradients."""
    loss = jax.jit(jax.value_and_grad(
        lambda *a: jaxloss.siglip_loss(*a, precision=HIGHEST), argnums=(0, 1, 2, 3)))
    value, grads = loss(Q, K, np.full((1,), 10.0, np.float32), np.full((1,), -10.0, np.float32))
    want_value, want_grads = loss(Q, K, np.float32(10.0), np.float32(-10.0))
    assert value.shape == () and grads[2].shape == (1,) and grads[3].shape == (1,)
    chex.assert_trees_all_close((value, grads[:2]), (want_value, want_grads[:2]), rtol=1e-6)
    chex.assert_trees_all_close((grads[2][0], grads[3][0]), want_grads[2:], rtol=1e-6)
    # As info_nce takes a temperature of shape (1,) (the rows' terms of order 1/TAU
    # cancel: float32's absolute precision there).
    chex.assert_trees_all_close(
        info_nce(Q, K, temperature=np.full((1,), TAU, np.float32), precision=HIGHEST),
        info_nce(Q, K, temperature=TAU, precision=HIGHEST), rtol=1e-6, atol=2e-6)
    with pytest.raises(ValueError, match="temperature must be a scalar or of shape"):
        jaxloss.siglip_loss(Q, K, np.ones((2,), np.float32), -10.0)


def test_siglip_float32_embeddings_give_float32_under_x64(x64):
    """The embeddings set the dtype (as info_nce's): a float64 temperature or bias (a
    Python float, or jnp.asarray under jax_enable_x64) does not promote the loss."""
    for t, bias in ((10.0, -10.0), (jnp.asarray(10.0), jnp.asarray([-10.0]))):
        assert jnp.asarray(t).dtype == jnp.float64
        value, grads = jax.value_and_grad(jaxloss.siglip_loss, argnums=(0, 2, 3))(
            Q, K, t, bias)
        assert value.dtype == jnp.float32, value.dtype
        assert grads[0].dtype == jnp.float32
        assert grads[1].dtype == grads[2].dtype == jnp.float64  # their own dtype
    assert jaxloss.siglip_loss(Q, K, 10.0, -10.0, reduction="none").dtype == jnp.float32
    assert jaxloss.siglip_loss(Q.astype(np.float64), K, 10.0, -10.0).dtype == jnp.float64


# ---------------------------------------------------------------------------------
# Pair sampling.


SIZES = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3], np.int32)  # every class >= 2 members
SINGLETONS = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 4], np.int32)  # classes 1 and 3 alone
# The same shape throughout, so that each (num_pairs, fraction) compiles once.
DRAWS = 200


@functools.cache
def _sampler(num_pairs, positive_fraction):
    """DRAWS samples at once, compiled once per setting."""
    return jax.jit(jax.vmap(lambda labels, k: make_pairs(
        labels, k, num_pairs, positive_fraction=positive_fraction), in_axes=(None, 0)))


def _draws(labels, num_pairs=16, positive_fraction=0.5, seed=0):
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    return tuple(np.asarray(x) for x in _sampler(num_pairs, positive_fraction)(labels, keys))


def _assert_valid(labels, index_a, index_b, similar):
    n = len(labels)
    assert index_a.dtype == np.int32 and index_b.dtype == np.int32
    assert similar.dtype == np.bool_
    assert ((index_a >= 0) & (index_a < n) & (index_b >= 0) & (index_b < n)).all()
    np.testing.assert_array_equal(similar, labels[index_a] == labels[index_b])


def test_make_pairs_is_jittable_and_deterministic():
    # _sampler is jax.jit(jax.vmap(make_pairs)) over DRAWS keys.
    first = _draws(SIZES)
    chex.assert_shape(first, [(DRAWS, 16)] * 3)
    _assert_valid(SIZES, *first)
    chex.assert_trees_all_equal(first, _draws(SIZES))  # same keys, same pairs
    assert not all(np.array_equal(x[3], x[4]) for x in first)  # other keys, others
    assert not all(np.array_equal(x, y) for x, y in zip(first, _draws(SIZES, seed=5),
                                                        strict=True))


def test_make_pairs_balance():
    index_a, index_b, similar = _draws(SIZES)
    _assert_valid(SIZES, index_a, index_b, similar)
    np.testing.assert_array_equal(similar.sum(axis=1), 8)
    # No self pairs: every class has at least two members.
    assert (index_a != index_b).all()
    # round(10 * 0.25) = round(2.5) = 2 positives (make_pairs itself is jitted).
    for key in jax.random.split(jax.random.key(2), 20):
        out = [np.asarray(x) for x in make_pairs(SIZES, key, 10, positive_fraction=0.25)]
        _assert_valid(SIZES, *out)
        assert out[2].sum() == round(10 * 0.25) == 2
        assert (out[0] != out[1]).all()


@pytest.mark.parametrize("labels", [SIZES, SINGLETONS], ids=["sizes", "singletons"])
def test_make_pairs_coverage(labels):
    index_a, index_b, similar = _draws(labels, 16, 0.5, seed=1)
    _assert_valid(labels, index_a, index_b, similar)
    n = len(labels)
    for index in (index_a, index_b):
        counts = np.bincount(index.ravel(), minlength=n)
        assert (counts > 0).all(), counts
    # Every class of two or more members: each example appears about equally often, and
    # the positives anchored in class 1 reach all three of its members.
    counts = np.bincount(np.concatenate([index_a.ravel(), index_b.ravel()]), minlength=n)
    partners = set(index_b[similar & (labels[index_a] == 1)].tolist())
    if labels is SIZES:
        mean = counts.mean()
        assert (counts > 0.6 * mean).all() and (counts < 1.4 * mean).all(), counts
        assert partners == {2, 3, 4}
    else:  # class 1 is a single example: never a positive
        assert not partners


def test_make_pairs_singleton_class_is_never_a_positive_anchor():
    index_a, index_b, similar = _draws(SINGLETONS, 16, 0.5)
    _assert_valid(SINGLETONS, index_a, index_b, similar)
    np.testing.assert_array_equal(similar.sum(axis=1), 8)
    lonely = np.isin(index_a, [2, 6]) | np.isin(index_b, [2, 6])
    assert lonely.any()
    assert not similar[lonely].any()
    assert (index_a != index_b).all()


def test_make_pairs_all_singletons_never_self_pair():
    """Every class has one member: no positive exists, and no example is paired with
    itself."""
    labels = np.arange(10, dtype=np.int32)
    index_a, index_b, similar = _draws(labels, 16, 0.5)
    _assert_valid(labels, index_a, index_b, similar)
    assert (index_a != index_b).all(), int((index_a == index_b).sum())
    assert not similar.any()


def test_make_pairs_one_class():
    """No negatives exist; the similar identity still holds, and (every class having >= 2
    members) the positives are not self pairs."""
    labels = np.full(10, 3, np.int32)
    index_a, index_b, similar = _draws(labels, 16, 0.5)
    _assert_valid(labels, index_a, index_b, similar)
    assert similar.all()
    assert (index_a != index_b).all(), int((index_a == index_b).sum())


# ---------------------------------------------------------------------------------
# 5. Bad input.


F32 = EA
INT = EA.astype(np.int32)


KEY = jax.random.key(0)
BAD_INPUTS = {  # id: (call, error, words the message must contain)
    "distance-int-a": (lambda: distance(INT, EB), TypeError,
                       ["a must have a floating dtype", "int32"]),
    "distance-int-b": (lambda: distance(EA, INT), TypeError, ["b must have a floating dtype"]),
    "distance-metric": (lambda: distance(EA, EB, metric="manhattan"), ValueError,
                        ["metric must be one of", "manhattan"]),
    "distance-shapes": (lambda: distance(EA, EB[:3]), ValueError,
                        ["a shape=(8, 4)", "b shape=(3, 4)"]),
    "distance-axis": (lambda: distance(EA, EB, axis=2), ValueError, ["axis=2"]),
    "contrastive-int-a": (lambda: contrastive(INT, EB, SIMILAR), TypeError,
                          ["embeddings_a must have a floating dtype"]),
    "contrastive-int-b": (lambda: contrastive(EA, INT, SIMILAR), TypeError,
                          ["embeddings_b must have a floating dtype"]),
    "contrastive-margin": (lambda: contrastive(EA, EB, SIMILAR, margin=-1.0), ValueError,
                           ["margin must be >= 0", "-1"]),
    "contrastive-margin-array": (
        lambda: contrastive(EA, EB, SIMILAR, margin=np.float32(-0.5)), ValueError,
        ["margin", "-0.5"]),
    "contrastive-metric": (lambda: contrastive(EA, EB, SIMILAR, metric="l1"), ValueError,
                           ["metric must be one of", "l1"]),
    "contrastive-shapes": (lambda: contrastive(EA, EB[:5], SIMILAR), ValueError,
                           ["embeddings_a shape=(8, 4)", "embeddings_b shape=(5, 4)"]),
    "contrastive-similar-shape": (lambda: contrastive(EA, EB, SIMILAR[:3]), ValueError,
                                  ["similar shape=(3,)"]),
    "contrastive-reduction": (lambda: contrastive(EA, EB, SIMILAR, reduction="avg"),
                              ValueError, ["reduction must be one of", "avg"]),
    "contrastive-where": (lambda: contrastive(EA, EB, SIMILAR, where=MASK.astype(int)),
                          TypeError, ["where must be a boolean array"]),
    "from-distance-int": (lambda: from_distance(INT[:, 0], SIMILAR), TypeError,
                          ["distances must have a floating dtype"]),
    "from-distance-margin": (lambda: from_distance(EA[:, 0], SIMILAR, margin=-0.5),
                             ValueError, ["margin must be >= 0"]),
    "from-distance-similar-shape": (lambda: from_distance(EA[:, 0], SIMILAR[:2]), ValueError,
                                    ["similar shape=(2,)"]),
    "triplet-int-anchors": (lambda: triplet(INT, EB, EC), TypeError,
                            ["anchors must have a floating dtype"]),
    "triplet-int-negatives": (lambda: triplet(EA, EB, INT), TypeError,
                              ["negatives must have a floating dtype"]),
    "triplet-margin": (lambda: triplet(EA, EB, EC, margin=-1.0), ValueError,
                       ["margin must be >= 0"]),
    "triplet-norm-degree": (lambda: triplet(EA, EB, EC, norm_degree=0.5), ValueError,
                            ["norm_degree must be a number >= 1", "0.5"]),
    "triplet-norm-degree-0": (lambda: triplet(EA, EB, EC, norm_degree=0), ValueError,
                              ["norm_degree"]),
    "triplet-shapes": (lambda: triplet(EA, EB[:3], EC), ValueError,
                       ["anchors shape=(8, 4)", "positives shape=(3, 4)"]),
    "triplet-reduction": (lambda: triplet(EA, EB, EC, reduction="max"), ValueError,
                          ["reduction must be one of", "max"]),
    "info-nce-int-queries": (lambda: info_nce(INT, K), TypeError,
                             ["queries must have a floating dtype"]),
    "info-nce-int-keys": (lambda: info_nce(Q, INT), TypeError,
                          ["keys must have a floating dtype"]),
    "info-nce-shapes": (lambda: info_nce(Q, K[:5]), ValueError,
                        ["keys must have shape (8, 4)", "(5, 4)"]),
    "info-nce-rank": (lambda: info_nce(Q[0], K[0]), ValueError,
                      ["queries must be [batch, features]"]),
    "info-nce-chunk-0": (lambda: info_nce(Q, K, chunk_size=0), ValueError,
                         ["chunk_size must be a positive int", "got 0"]),
    "info-nce-chunk-negative": (lambda: info_nce(Q, K, chunk_size=-2), ValueError,
                                ["chunk_size"]),
    "info-nce-chunk-float": (lambda: info_nce(Q, K, chunk_size=2.5), ValueError,
                             ["chunk_size"]),
    "info-nce-temperature-0": (lambda: info_nce(Q, K, temperature=0.0), ValueError,
                               ["temperature must be > 0"]),
    "info-nce-temperature-negative": (lambda: info_nce(Q, K, temperature=-0.1), ValueError,
                                      ["temperature must be > 0", "-0.1"]),
    "info-nce-reduction": (lambda: info_nce(Q, K, reduction="avg"), ValueError,
                           ["reduction must be one of", "avg"]),
    "ntxent-int-embeddings": (lambda: ntxent(INT, np.zeros(B, np.int32)), TypeError,
                              ["embeddings must have a floating dtype"]),
    "ntxent-float-labels": (lambda: ntxent(EA, SIMILAR), TypeError,
                            ["labels must have an integer dtype"]),
    "ntxent-labels-shape": (lambda: ntxent(EA, np.zeros(3, np.int32)), ValueError,
                            ["labels must have shape (8,)", "(3,)"]),
    "ntxent-temperature": (lambda: ntxent(EA, np.zeros(B, np.int32), 0.0), ValueError,
                           ["temperature must be > 0"]),
    "ntxent-rank": (lambda: ntxent(EA[0], np.zeros(1, np.int32)), ValueError,
                    ["embeddings must be [batch, features]"]),
    "make-pairs-float-labels": (lambda: make_pairs(SIMILAR, KEY, 4), TypeError,
                                ["labels must have an integer dtype"]),
    "make-pairs-num-pairs": (lambda: make_pairs(SIZES, KEY, 0), ValueError,
                             ["num_pairs must be a positive int"]),
    "make-pairs-fraction": (lambda: make_pairs(SIZES, KEY, 4, positive_fraction=1.5),
                            ValueError, ["positive_fraction must be in [0, 1]"]),
    "make-pairs-one-label": (lambda: make_pairs(SIZES[:1], KEY, 4), ValueError,
                             ["labels must be [N] with N >= 2"]),
}


@pytest.mark.parametrize("call, error, words", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_checked_raises_on_bad_values():
    checked = jaxloss.checked(contrastive)
    chex.assert_trees_all_close(checked(EA, EB, SIMILAR, margin=MARGIN),
                                contrastive(EA, EB, SIMILAR, margin=MARGIN))
    bad = SIMILAR.copy()
    bad[3], bad[5] = 2.0, -1.0  # above and below [0, 1]
    with pytest.raises(ValueError, match=r"similar must lie in \[0, 1\]; 2 value") as info:
        checked(EA, EB, bad)
    assert isinstance(info.value, checkify.JaxRuntimeError)
    nan = EA.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="embeddings_a contains 1 NaN"):
        checked(nan, EB, SIMILAR)
    checked_distance = jaxloss.checked(from_distance)
    with pytest.raises(ValueError, match="distances must lie in"):
        checked_distance(-np.abs(EA[:, 0]), SIMILAR)


@pytest.mark.cpu_backend_only
@pytest.mark.parametrize("symmetric", [False, True])
def test_chunked_info_nce_memory(symmetric):
    """At B = 8192, D = 256, chunk 1024 the chunked value_and_grad needs at most 1/4 of
    the unchunked temp memory (XLA's own figure; compiled, not run)."""
    spec = jax.ShapeDtypeStruct((8192, 256), jnp.float32)

    def temp_bytes(chunk_size):
        f = jax.value_and_grad(lambda q, k: info_nce(
            q, k, symmetric=symmetric, chunk_size=chunk_size, reduction="mean"), argnums=(0, 1))
        return jax.jit(f).lower(spec, spec).compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(None), temp_bytes(1024)
    assert whole >= 8192 * 8192 * 4  # the B x B score matrix, at least
    assert chunked <= whole / 4, (chunked, whole)


# ---------------------------------------------------------------------------------
# triplet_margin_with_distance_loss (PyTorch's TripletMarginWithDistanceLoss).


def cosine_distance_fn(x, y):
    """A user distance: 1 - cosine similarity (one function object: one compilation)."""
    return 1 - jaxloss.cosine_similarity(x, y)


def torch_cosine_distance_fn(x, y):
    return 1 - torch.nn.functional.cosine_similarity(x, y)


W_MARGIN = 0.5  # cosine distances lie in [0, 2]: active and inactive rows
W_ROWS = np.array([True, False, True, True, True, False, True, True])
W_OPTIONS = {  # id: (ours, torch's, swap)
    "default": (None, None, False),
    "default-swap": (None, None, True),
    "cosine": (cosine_distance_fn, torch_cosine_distance_fn, False),
    "cosine-swap": (cosine_distance_fn, torch_cosine_distance_fn, True),
}


@functools.partial(jax.jit, static_argnames=("cosine", "swap"))
def ref_triplet_with_distance(a, p, n, margin=1.0, cosine=False, swap=False):
    def dist(x, y):
        if cosine:
            return 1 - jnp.sum(x * y, -1) / (jnp.linalg.norm(x, axis=-1)
                                             * jnp.linalg.norm(y, axis=-1))
        return jnp.linalg.norm(x - y + 1e-6, axis=-1)  # torch.pairwise_distance

    d_an = dist(a, n)
    if swap:
        d_an = jnp.minimum(d_an, dist(p, n))
    return jnp.maximum(dist(a, p) - d_an + margin, 0)


def _torch_triplet_with_distance(a, p, n, **kwargs):
    ts = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (a, p, n)]
    out = torch.nn.functional.triplet_margin_with_distance_loss(*ts, **kwargs)
    out.sum().backward()
    return out.detach().numpy(), tuple(t.grad.numpy() for t in ts)


class TripletWithDistanceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_vs_reference(self):
        with jax.enable_x64(True):
            a, p, n = EA.astype(float), EB.astype(float), EC.astype(float)

            @self.variant
            def f(a, p, n):
                out = {k: triplet_with_distance(a, p, n, distance_function=fn,
                                                margin=W_MARGIN, swap=s)
                       for k, (fn, _, s) in W_OPTIONS.items()}
                out["mean"] = triplet_with_distance(a, p, n, margin=W_MARGIN, where=W_ROWS,
                                                    reduction="mean")
                out["sum"] = triplet_with_distance(a, p, n, swap=True, reduction="sum")
                out["triplet_margin_loss"] = triplet(a, p, n, margin=W_MARGIN)
                return out

            got = f(a, p, n)
            for k, (fn, _, s) in W_OPTIONS.items():
                want = ref_triplet_with_distance(a, p, n, W_MARGIN, fn is not None, s)
                chex.assert_trees_all_close(got[k], want, rtol=1e-12)
                assert 0 < int(jnp.sum(want > 0)) < B, k  # active and inactive rows
            want = ref_triplet_with_distance(a, p, n, W_MARGIN)
            chex.assert_trees_all_close(got["mean"], jnp.mean(want[W_ROWS]), rtol=1e-12)
            chex.assert_trees_all_close(got["sum"], jnp.sum(
                ref_triplet_with_distance(a, p, n, swap=True)), rtol=1e-12)
            # The default distance is triplet_margin_loss's (p = 2, eps = 1e-6).
            chex.assert_trees_all_close(got["default"], got["triplet_margin_loss"], rtol=1e-12)


@pytest.mark.parametrize("option", W_OPTIONS.values(), ids=W_OPTIONS.keys())
def test_triplet_with_distance_vs_torch(option, x64):
    """Values (every reduction) and gradients w.r.t. anchors, positives and negatives
    equal PyTorch's in float64."""
    fn, torch_fn, swap = option
    a, p, n = EA.astype(float), EB.astype(float), EC.astype(float)
    out, pullback = jax.vjp(lambda a, p, n: triplet_with_distance(
        a, p, n, distance_function=fn, margin=W_MARGIN, swap=swap), a, p, n)
    want, want_grads = _torch_triplet_with_distance(
        a, p, n, distance_function=torch_fn, margin=W_MARGIN, swap=swap, reduction="none")
    chex.assert_trees_all_close(out, want, rtol=1e-12, atol=1e-15)
    chex.assert_trees_all_close(pullback(jnp.ones_like(out)), want_grads, rtol=1e-10,
                                atol=1e-14)
    for reduction in ("mean", "sum"):
        chex.assert_trees_all_close(
            triplet_with_distance(a, p, n, distance_function=fn, margin=W_MARGIN, swap=swap,
                                  reduction=reduction),
            _torch_triplet_with_distance(a, p, n, distance_function=torch_fn,
                                         margin=W_MARGIN, swap=swap,
                                         reduction=reduction)[0], rtol=1e-12)


def test_triplet_with_distance_gradients(x64):
    def ref(a, p, n, margin, **_):
        return ref_triplet_with_distance(a, p, n, margin, True, True)

    assert_vjp_matches_reference(triplet_with_distance, ref, EA, EB, EC, argnums=(0, 1, 2),
                                 diff_kwargs=("margin",), margin=np.float64(W_MARGIN),
                                 distance_function=cosine_distance_fn, swap=True)
    assert_finite_differences(lambda a, p, n: triplet_with_distance(a, p, n, swap=True),
                              EA, EB, EC, argnums=(0, 1, 2), order=1)


def test_triplet_with_distance_extremes_exact():
    f32 = np.float32
    # Row 0: a == p == n: the distances are equal (||eps||), the loss is the margin, and
    # the gradients are PyTorch's: u = eps / ||eps|| = 1/2 per entry, the swap's tied
    # minimum sharing its gradient equally (d/dp = -u - u/2). Row 1: huge embeddings;
    # the swap picks d(p, n) = d(a, p), so the loss is the margin again.
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1e30, 0.0, 0.0, 0.0]], f32)
    p = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], f32)
    n = np.array([[1.0, 2.0, 3.0, 4.0], [-1e30, 0.0, 0.0, 0.0]], f32)
    out, pullback = jax.vjp(jax.jit(lambda a, p, n: triplet_with_distance(a, p, n, swap=True)),
                            a, p, n)
    chex.assert_trees_all_close(out, np.ones(2, f32), rtol=0, atol=0)
    grads = pullback(jnp.ones(2, f32))
    want = _torch_triplet_with_distance(a, p, n, swap=True, reduction="none")[1]
    chex.assert_trees_all_close(grads, want, rtol=1e-6, atol=1e-35)
    chex.assert_trees_all_close(grads[1][0], np.full(4, -0.75, f32), rtol=1e-6)
    chex.assert_trees_all_close(grads[0][1], np.array([1, 0, 0, 0], f32), atol=1e-35)
    chex.assert_trees_all_close(grads[1][1], np.array([-2, 0, 0, 0], f32), atol=1e-35)
    # a == p with a distance that is exactly 0 there: its subgradient 0.
    g = jax.grad(lambda a, p: triplet_with_distance(
        a, p, EC, distance_function=distance, margin=10.0).sum(), argnums=(0, 1))(EA, EA)
    np.testing.assert_array_equal(g[1], 0.0)
    chex.assert_trees_all_close(g[0], -(EA - EC) / np.linalg.norm(EA - EC, axis=-1,
                                                                   keepdims=True), rtol=1e-5)
    # bf16 computes in float32.
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (EA, EB, EC)]
    out = triplet_with_distance(*bf, distance_function=cosine_distance_fn)
    assert out.dtype == jnp.float32
    with jax.enable_x64(True):
        want = ref_triplet_with_distance(*(np.asarray(x, np.float64) for x in bf), cosine=True)
    chex.assert_trees_all_close(out, want.astype(f32), rtol=1e-5, atol=1e-6)


def test_triplet_with_distance_vmap_and_bad_input():
    f = jax.jit(jax.vmap(lambda a, p, n: triplet_with_distance(a, p, n, swap=True)))
    chex.assert_trees_all_close(f(EA, EB, EC), triplet_with_distance(EA, EB, EC, swap=True),
                                rtol=1e-6)
    for margin in (0.0, -1.0, np.float32(-0.5)):
        with pytest.raises(ValueError, match="margin must be > 0"):
            triplet_with_distance(EA, EB, EC, margin=margin)
    with pytest.raises(TypeError, match="distance_function must be a callable"):
        triplet_with_distance(EA, EB, EC, distance_function="euclidean")
    with pytest.raises(ValueError, match=r"distance_function must return .* \(8,\)"):
        triplet_with_distance(EA, EB, EC, distance_function=jnp.subtract)
    with pytest.raises(ValueError, match="positives shape=\\(3, 4\\)"):
        triplet_with_distance(EA, EB[:3], EC)
    with pytest.raises(TypeError, match="negatives must have a floating dtype"):
        triplet_with_distance(EA, EB, INT)
    with pytest.raises(ValueError, match="where"):
        triplet_with_distance(EA, EB, EC, where=W_ROWS[:3])
    with pytest.raises(ValueError, match="reduction"):
        triplet_with_distance(EA, EB, EC, reduction="max")
