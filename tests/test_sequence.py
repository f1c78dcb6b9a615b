"""Tests for jaxloss.sequence: CTC (optax's lattice, a log-space forward-backward vjp)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from jaxloss.sequence import ctc_loss, ctc_loss_with_forward_probs
from jaxloss.testing import assert_finite_differences, assert_vjp_matches_reference

RNG = np.random.default_rng(0)
B, T, K, N = 4, 10, 5, 4
LOGITS = (RNG.normal(size=(B, T, K)) * 2).astype(np.float32)
FRAMES = np.array([10, 7, 9, 8])
LOGIT_PADS = (np.arange(T)[None, :] >= FRAMES[:, None]).astype(np.float32)
LABELS = np.array([[1, 2, 2, 3], [4, 4, 1, 0], [2, 3, 1, 4], [1, 1, 1, 1]])
LENGTHS = np.array([4, 3, 2, 4])
LABEL_PADS = (np.arange(N)[None, :] >= LENGTHS[:, None]).astype(np.float32)
# Sequence 3 needs 7 frames (4 labels, 3 blanks between equal ones): 6 cannot fit.
SHORT_PADS = LOGIT_PADS.copy()
SHORT_PADS[3, 6:] = 1
WHERE = np.array([True, False, True, True])
EPS = -1e5


# ----------------------------------------------------------------- naive float64 references


def ref_numpy(logits, logit_pads, labels, label_pads, blank=0, eps=EPS):
    """optax's lattice with explicit loops, float64: the states are the labels with
    blanks around them; all start at eps but the first blank; skipping the blank
    between two equal labels costs eps; label -> next blank weighs 1 + e^eps (optax
    counts that move twice, once times eps)."""
    logits = np.asarray(logits, np.float64)
    losses = []
    for b in range(logits.shape[0]):
        m = logits[b].max(axis=-1, keepdims=True)
        lp = logits[b] - m - np.log(np.exp(logits[b] - m).sum(axis=-1, keepdims=True))
        n = labels.shape[1] - int(label_pads[b].sum())
        ext = [blank]
        for y in labels[b]:
            ext += [int(y), blank]
        s_count = len(ext)
        alpha = [0.0] + [eps] * (s_count - 1)
        for t in range(logits.shape[1]):
            if logit_pads[b, t]:
                continue
            new = []
            for s in range(s_count):
                terms = [alpha[s]]
                if s >= 1:
                    terms.append(alpha[s - 1] + (0.0 if s % 2 else np.logaddexp(0.0, eps)))
                if s % 2 and s >= 3:
                    terms.append(alpha[s - 2] + (eps if ext[s] == ext[s - 2] else 0.0))
                new.append(lp[t, ext[s]] + np.logaddexp.reduce(terms))
            alpha = new
        final = [alpha[2 * n]] + ([alpha[2 * n - 1]] if n else [])
        losses.append(-np.logaddexp.reduce(final))
    return np.array(losses)


def ref_jnp(logits, logit_pads, labels, label_pads, blank_id=0, log_epsilon=EPS):
    """The same recursion in jnp (batch and states vectorized, a scan over the frames),
    for the float64 vjp of the reference."""
    b, t, k = logits.shape
    s = 2 * labels.shape[1] + 1
    lp = jax.nn.log_softmax(logits, axis=-1)
    ext = np.full((b, s), blank_id)
    ext[:, 1::2] = labels
    lp_ext = jnp.take_along_axis(lp, np.broadcast_to(ext[:, None, :], (b, t, s)), axis=-1)
    odd = np.arange(s) % 2 == 1
    w1 = np.where(odd, 0.0, np.logaddexp(0.0, log_epsilon))
    w1[0] = -np.inf
    w2 = np.full((b, s), -np.inf)
    for j in range(3, s, 2):
        w2[:, j] = np.where(ext[:, j] == ext[:, j - 2], log_epsilon, 0.0)
    neg = jnp.full((b, 2), -jnp.inf)

    def step(alpha, frame):
        lp_t, pad_t = frame
        a1 = jnp.concatenate([neg[:, :1], alpha[:, :-1]], axis=1) + w1
        a2 = jnp.concatenate([neg, alpha[:, :-2]], axis=1) + w2
        m = jax.lax.stop_gradient(jnp.maximum(jnp.maximum(alpha, a1), a2))
        new = lp_t + m + jnp.log(jnp.exp(alpha - m) + jnp.exp(a1 - m) + jnp.exp(a2 - m))
        return jnp.where(pad_t[:, None] != 0, alpha, new), None

    alpha = jnp.full((b, s), log_epsilon).at[:, 0].set(0.0)
    alpha, _ = jax.lax.scan(step, alpha, (jnp.swapaxes(lp_ext, 0, 1), jnp.asarray(logit_pads).T))
    n = labels.shape[1] - np.asarray(label_pads).sum(axis=1).astype(int)
    rows = np.arange(b)
    last_label = alpha[rows, np.maximum(2 * n - 1, 0)]
    last = jnp.where(n > 0, jnp.logaddexp(alpha[rows, 2 * n], last_label), alpha[rows, 2 * n])
    return -last


def _torch_ctc(logits, frames, labels, lengths, blank=0, zero_infinity=False):
    """torch.nn.functional.ctc_loss in float64: per-sequence losses and d sum / d logits."""
    x = torch.tensor(np.asarray(logits, np.float64), requires_grad=True)
    log_probs = torch.log_softmax(x, dim=-1).transpose(0, 1)  # [T, B, K]
    loss = torch.nn.functional.ctc_loss(
        log_probs, torch.tensor(labels), torch.tensor(frames), torch.tensor(lengths),
        blank=blank, reduction="none", zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


@functools.cache
def _jitted_value_and_grad(fn, kw):
    def total(x, *args):
        losses = fn(x, *args, **dict(kw))
        return jnp.sum(losses), losses
    return jax.jit(jax.value_and_grad(total, has_aux=True))


def _vg(fn, logits, *args, **kw):
    """Per-sequence losses and d sum / d logits, one compilation per loss and options."""
    (_, losses), grad = _jitted_value_and_grad(fn, tuple(sorted(kw.items())))(logits, *args)
    return losses, grad


def _grad(fn, logits, *args, **kw):
    return _vg(fn, logits, *args, **kw)[1]


# ----------------------------------------------------------------- values


class ValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0, 2)
    def test_vs_reference_and_optax(self, blank):
        got = self.variant(lambda x: ctc_loss(x, LOGIT_PADS, LABELS, LABEL_PADS,
                                              blank_id=blank))(LOGITS)
        chex.assert_shape(got, (B,))
        assert got.dtype == jnp.float32
        chex.assert_trees_all_close(got, ref_numpy(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS,
                                                   blank), rtol=1e-5)
        chex.assert_trees_all_close(got, optax.ctc_loss(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS,
                                                        blank_id=blank), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("none", "mean", "sum")
    def test_zero_infinity_where_reduction(self, reduction):
        got = self.variant(lambda x: ctc_loss(x, SHORT_PADS, LABELS, LABEL_PADS,
                                              zero_infinity=True, where=WHERE,
                                              reduction=reduction))(LOGITS)
        losses = ref_numpy(LOGITS, SHORT_PADS, LABELS, LABEL_PADS)
        losses[3] = 0.0  # cannot fit: zero_infinity
        losses[~WHERE] = 0.0
        want = {"none": losses, "sum": losses.sum(), "mean": losses.sum() / WHERE.sum()}
        chex.assert_trees_all_close(got, want[reduction], rtol=1e-5)


def test_forward_probs_match_optax():
    got = ctc_loss_with_forward_probs(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS, blank_id=2)
    want = optax.ctc_loss_with_forward_probs(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS,
                                             blank_id=2)
    for g, w in zip(got, want, strict=True):
        chex.assert_equal_shape([g, w])
        chex.assert_trees_all_close(g, w, rtol=1e-5)  # log-alphas near -1e5: ulp 8e-3
    loss, grad = _vg(ctc_loss, LOGITS, LOGIT_PADS, LABELS, LABEL_PADS, blank_id=2)
    chex.assert_trees_all_close(got[0], loss, rtol=1e-6)
    chex.assert_trees_all_close(
        _grad(lambda *a, **kw: ctc_loss_with_forward_probs(*a, **kw)[0], LOGITS, LOGIT_PADS,
              LABELS, LABEL_PADS, blank_id=2), grad, atol=2e-6)


def test_conformance_with_torch():
    """Varied frame and label lengths, blank 2, both zero_infinity settings; exact CTC
    (log_epsilon=-inf) gives torch's inf where the labels cannot fit."""
    frames = T - SHORT_PADS.sum(axis=1).astype(int)
    for zero_infinity in (False, True):
        want, want_grad = _torch_ctc(LOGITS, frames, LABELS, LENGTHS, 2, zero_infinity)
        got, grad = _vg(ctc_loss, LOGITS, SHORT_PADS, LABELS, LABEL_PADS, blank_id=2,
                        zero_infinity=zero_infinity)
        if zero_infinity:
            chex.assert_trees_all_close(got, want, rtol=1e-5)
            chex.assert_trees_all_close(grad, want_grad, atol=2e-6)
        else:
            assert np.isinf(want[3])
            chex.assert_trees_all_close(got[:3], want[:3], rtol=1e-5)
            chex.assert_trees_all_close(grad[:3], want_grad[:3], atol=2e-6)
            exact = ctc_loss(LOGITS, SHORT_PADS, LABELS, LABEL_PADS, blank_id=2,
                             log_epsilon=-np.inf)
            assert np.isposinf(exact[3])
            chex.assert_trees_all_close(exact[:3], want[:3], rtol=1e-5)


# ----------------------------------------------------------------- gradients


def test_gradients_vs_float64_reference_and_optax():
    # Varied lengths, blank 2, and sequence 3 cannot fit (its gradient too is exact).
    args = (LOGITS, SHORT_PADS, LABELS, LABEL_PADS)
    assert_vjp_matches_reference(ctc_loss, ref_jnp, *args, blank_id=2, rtol=1e-8, atol=1e-11)
    # The second order is checked against the reference's in test_vmap_hessian_pmap (and
    # by finite differences in jaxloss check).
    assert_finite_differences(ctc_loss, *args, blank_id=2, order=1)
    chex.assert_trees_all_close(
        _grad(ctc_loss, LOGITS, LOGIT_PADS, LABELS, LABEL_PADS),
        _grad(optax.ctc_loss, LOGITS, LOGIT_PADS, LABELS, LABEL_PADS), atol=2e-6)


def test_long_sequences():
    """T = 300 against the float64 loops (values) and float64 torch (gradient)."""
    rng = np.random.default_rng(1)
    t, labels = 300, rng.integers(1, K, size=(2, 40))
    logits = (rng.normal(size=(2, t, K)) * 3).astype(np.float32)
    pads = np.zeros((2, t), np.float32)
    pads[1, 250:] = 1
    label_pads = np.zeros((2, 40), np.float32)
    label_pads[1, 30:] = 1
    got = ctc_loss(logits, pads, labels, label_pads)
    chex.assert_trees_all_close(got, ref_numpy(logits, pads, labels, label_pads), rtol=1e-5)
    want, want_grad = _torch_ctc(logits, np.array([300, 250]), labels, np.array([40, 30]))
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    # float32 over 300 frames: within 3e-5 (optax's autodiff: about 1e-4).
    chex.assert_trees_all_close(_grad(ctc_loss, logits, pads, labels, label_pads), want_grad,
                                atol=3e-5)


# ----------------------------------------------------------------- extremes


def test_labels_that_cannot_fit():
    got = ctc_loss(LOGITS, SHORT_PADS, LABELS, LABEL_PADS)
    chex.assert_trees_all_close(got, optax.ctc_loss(LOGITS, SHORT_PADS, LABELS, LABEL_PADS),
                                rtol=1e-6)
    chex.assert_trees_all_close(got[3], ref_numpy(LOGITS, SHORT_PADS, LABELS, LABEL_PADS)[3],
                                rtol=1e-6)
    assert 1e5 < got[3] < 1.1e5
    g = _grad(ctc_loss, LOGITS, SHORT_PADS, LABELS, LABEL_PADS)
    chex.assert_tree_all_finite(g)
    # Each unpadded frame's gradient is softmax - posterior: it sums to 0 over classes.
    chex.assert_trees_all_close(g.sum(-1), np.zeros((B, T)), atol=1e-5)
    g0 = _grad(ctc_loss, LOGITS, SHORT_PADS, LABELS, LABEL_PADS, zero_infinity=True)
    assert ctc_loss(LOGITS, SHORT_PADS, LABELS, LABEL_PADS, zero_infinity=True)[3] == 0
    assert np.all(np.asarray(g0[3]) == 0)
    chex.assert_trees_all_close(g0[:3], g[:3], atol=0)


def test_all_padded_sequences():
    """No frame: loss 0 for no labels; otherwise optax's -log(2 eps) = 1e5 - log 2."""
    pads, label_pads = np.ones((B, T), np.float32), LABEL_PADS.copy()
    label_pads[0] = 1
    got, g = _vg(ctc_loss, LOGITS, pads, LABELS, label_pads)
    want = np.full(B, 1e5 - math.log(2), np.float32)
    want[0] = 0
    chex.assert_trees_all_close(got, want, rtol=0)
    chex.assert_trees_all_close(got, optax.ctc_loss(LOGITS, pads, LABELS, label_pads), rtol=0)
    assert np.all(np.asarray(g) == 0)
    assert np.all(np.asarray(_vg(ctc_loss, LOGITS, pads, LABELS, label_pads,
                                 zero_infinity=True)[0]) == 0)


def test_repeated_labels_exact():
    """[a, a] in 3 frames has one alignment, a blank a; in 2 it cannot fit."""
    pads, labels, label_pads = LOGIT_PADS.copy(), LABELS.copy(), LABEL_PADS.copy()
    labels[:2], label_pads[:2] = [2, 2, 0, 0], [0, 0, 1, 1]
    pads[0], pads[1] = np.arange(T) >= 3, np.arange(T) >= 2
    x64 = LOGITS[0, :3].astype(np.float64)
    lp = x64 - x64.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    got, g = _vg(ctc_loss, LOGITS, pads, labels, label_pads)
    chex.assert_trees_all_close(got[0], -(lp[0, 2] + lp[1, 0] + lp[2, 2]), rtol=1e-6)
    chex.assert_trees_all_close(g[0, :3], np.exp(lp) - np.eye(K)[[2, 0, 2]], atol=1e-6)
    assert np.all(np.asarray(g[0, 3:]) == 0)
    assert got[1] > 1e5  # cannot fit: optax's large finite loss
    got0, g0 = _vg(ctc_loss, LOGITS, pads, labels, label_pads, zero_infinity=True)
    assert got0[1] == 0 and np.all(np.asarray(g0[1]) == 0)
    chex.assert_trees_all_close(got0[0], got[0], rtol=0)


def test_extreme_and_masked_logits():
    # +-1e30 logits that single out one alignment: loss 0 and gradient 0, exactly.
    path = np.array([[1, 0, 2, 0, 2, 3, 3, 3, 0, 0], [4, 0, 4, 1, 1, 0, 0, 0, 0, 0],
                     [2, 2, 3, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1, 1, 0, 0]])
    x = np.where(np.arange(K) == path[..., None], 1e30, -1e30).astype(np.float32)
    got, g = _vg(ctc_loss, x, LOGIT_PADS, LABELS, LABEL_PADS)
    assert np.all(np.asarray(got) == 0) and np.all(np.asarray(g) == 0)
    chex.assert_trees_all_close(optax.ctc_loss(x, LOGIT_PADS, LABELS, LABEL_PADS), np.zeros(B))
    # A class masked with -inf (0: never a label but as padding): finite, the reference's.
    masked = LOGITS.copy()
    masked[:, :, 0] = -np.inf
    got, g = _vg(ctc_loss, masked, LOGIT_PADS, LABELS, LABEL_PADS, blank_id=2)
    chex.assert_trees_all_close(got, ref_numpy(masked, LOGIT_PADS, LABELS, LABEL_PADS, 2),
                                rtol=1e-5)
    chex.assert_tree_all_finite(g)
    assert np.all(np.asarray(g[:, :, 0]) == 0)
    # optax 0.2.8 multiplies the -inf log-probability by a 0 one-hot entry: NaN.
    assert np.all(np.isnan(optax.ctc_loss(masked, LOGIT_PADS, LABELS, LABEL_PADS, blank_id=2)))


def test_near_certain_alignment_is_never_negative():
    """Label 1 in two frames at +30 (+60) against 0: "1 1" has probability 1 in float32
    and "1 -", "- 1" e^-30 (e^-60) each, so log p summed to +9e-14 (+8.8e-27) and the
    loss came out negative (optax's too, its issue #1771). The loss is clamped at 0,
    the value only: the gradient stays the rule's, p_t(k) - gamma_t(k) (e^-z for the
    classes no alignment uses)."""
    x = np.zeros((2, 2, 4), np.float32)
    x[0, :, 1], x[1, :, 1] = 30.0, 60.0
    args = (np.zeros((2, 2), np.float32), np.array([[1], [1]]), np.zeros((2, 1), np.float32))
    off_path = np.exp(-np.array([30.0, 60.0]))[:, None, None] * np.ones((2, 2, 2))
    for fn in (ctc_loss, lambda *a: ctc_loss_with_forward_probs(*a)[0]):
        g, losses = jax.jit(jax.grad(lambda x, f=fn: (jnp.sum(f(x, *args)), f(x, *args)),
                                     has_aux=True))(x)
        losses = np.asarray(losses)
        assert np.all(losses == 0) and not np.any(np.signbit(losses)), losses
        chex.assert_trees_all_close(g[..., 2:], off_path, rtol=1e-5)
        assert np.all(np.abs(np.asarray(g[..., :2])) < 1e-12)
    # optax 0.2.8 is below its minimum there.
    assert np.all(np.asarray(optax.ctc_loss(x, *args)) < 0)


def test_bf16_computes_in_float32():
    x = jnp.asarray(LOGITS, jnp.bfloat16)
    got = ctc_loss(x, LOGIT_PADS, LABELS, LABEL_PADS)
    assert got.dtype == jnp.float32
    want = ctc_loss(np.asarray(x.astype(jnp.float32)), LOGIT_PADS, LABELS, LABEL_PADS)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    assert _grad(ctc_loss, x, LOGIT_PADS, LABELS, LABEL_PADS).dtype == jnp.bfloat16


def test_masked_nan_does_not_leak():
    x = LOGITS.copy()
    x[1] = np.nan
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda a: ctc_loss(a, LOGIT_PADS, LABELS, LABEL_PADS, where=WHERE, reduction="sum")))
    got, g = value_and_grad(x)
    chex.assert_trees_all_close(got, value_and_grad(LOGITS)[0], rtol=0)
    chex.assert_tree_all_finite(g)
    assert np.all(np.asarray(g[1]) == 0)


# ----------------------------------------------------------------- composition and errors


def test_vmap_hessian_pmap(cpu_devices):
    batched = jax.vmap(lambda x: ctc_loss(x, LOGIT_PADS, LABELS, LABEL_PADS))(
        np.stack([LOGITS, 2 * LOGITS]))
    chex.assert_trees_all_close(batched[1], ctc_loss(2 * LOGITS, LOGIT_PADS, LABELS,
                                                     LABEL_PADS), rtol=1e-6)
    x = LOGITS[:1, :4, :3].astype(np.float64)
    args = (np.zeros((1, 4)), np.array([[1, 2]]), np.zeros((1, 2)))
    with jax.enable_x64(True):
        h = jax.jit(jax.hessian(lambda a: ctc_loss(a, *args)[0]))(x)
        want = jax.jit(jax.hessian(lambda a: ref_jnp(a, *args)[0]))(x)
    chex.assert_trees_all_close(h, want, atol=1e-10)
    pmapped = jax.pmap(lambda a, p, y, q: ctc_loss(a, p, y, q), devices=cpu_devices)(
        LOGITS[:, None], LOGIT_PADS[:, None], LABELS[:, None], LABEL_PADS[:, None])
    chex.assert_trees_all_close(pmapped[:, 0], ctc_loss(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS),
                                rtol=1e-6)


def test_explicit_mesh_with_inputs_split_differently(cpu_devices):
    """On JAX's default (Explicit) mesh, under jax.set_mesh: the logits split over the
    batch and the paddings and labels whole on every device (made in the step, say),
    or the other way round. The scans' carries, the lattice's concatenations and the
    custom_vjp's gradient need one type for the batch: the others follow the logits."""
    mesh = jax.make_mesh((2,), ("data",), devices=cpu_devices[:2])
    args = (LOGITS, LOGIT_PADS, LABELS, LABEL_PADS)
    f = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(ctc_loss(*a, where=WHERE))))
    with jax.default_device(cpu_devices[0]):
        want = f(*args)
    for split in ((True, False, False, False), (False, True, True, True)):
        with jax.set_mesh(mesh):
            got = f(*(jax.device_put(x, P("data") if s else P())
                      for x, s in zip(args, split, strict=True)))
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_bad_input():
    args = (LOGITS, LOGIT_PADS, LABELS, LABEL_PADS)
    with pytest.raises(ValueError, match="logits"):
        ctc_loss(LOGITS[0], LOGIT_PADS, LABELS, LABEL_PADS)
    with pytest.raises(TypeError, match="logits"):
        ctc_loss(LABELS[:, :, None], LOGIT_PADS, LABELS, LABEL_PADS)
    with pytest.raises(ValueError, match="logit_paddings"):
        ctc_loss(LOGITS, LOGIT_PADS[:, :5], LABELS, LABEL_PADS)
    with pytest.raises(TypeError, match="labels"):
        ctc_loss(LOGITS, LOGIT_PADS, LABELS.astype(np.float32), LABEL_PADS)
    with pytest.raises(ValueError, match="labels"):
        ctc_loss(LOGITS, LOGIT_PADS, LABELS[:2], LABEL_PADS[:2])
    with pytest.raises(ValueError, match="label_paddings"):
        ctc_loss(LOGITS, LOGIT_PADS, LABELS, LABEL_PADS[:, :2])
    with pytest.raises(ValueError, match="blank_id"):
        ctc_loss(*args, blank_id=K)
    with pytest.raises(TypeError, match="blank_id"):
        ctc_loss(*args, blank_id=1.0)
    with pytest.raises(ValueError, match="log_epsilon"):
        ctc_loss(*args, log_epsilon=1.0)
    with pytest.raises(ValueError, match="where"):
        ctc_loss(*args, where=np.ones(3, bool))
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(*args, reduction="avg")
    with pytest.raises(TypeError, match="zero_infinity"):
        ctc_loss(*args, zero_infinity=1)
    with pytest.raises(ValueError, match="blank_id"):
        ctc_loss_with_forward_probs(*args, blank_id=-1)
