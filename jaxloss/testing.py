"""Gradient verification for custom_vjp losses, public so users can check their own.

The helpers run in float64 (they enable it for their own duration): a custom_vjp is
compared with ``jax.grad`` of a naive reference, and with finite differences through
``jax.test_util.check_grads`` in reverse mode (a custom_vjp has no forward mode).
:func:`run_checks` applies them to every built-in loss; ``jaxloss check`` prints it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import jaxloss

__all__ = [
    "CheckCase",
    "CheckResult",
    "assert_finite_differences",
    "assert_grads_finite",
    "assert_vjp_matches_reference",
    "builtin_cases",
    "run_checks",
]

Loss = Callable[..., jax.Array]


def _to_float64(x: Any) -> Any:
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.asarray(x, jnp.float64)
    return x


def _split(args: Sequence[Any], argnums: Sequence[int]):
    """``f(*diff_args)`` with the other positional arguments fixed."""
    fixed = list(args)

    def bind(call: Loss, kwargs: dict[str, Any]) -> Callable[..., jax.Array]:
        def f(*diff_args: Any) -> jax.Array:
            full = list(fixed)
            for i, a in zip(argnums, diff_args, strict=True):
                full[i] = a
            return call(*full, **kwargs)

        return f

    return bind, [args[i] for i in argnums]


def _argnums(argnums: int | Sequence[int]) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _vjp(f: Callable[..., jax.Array], primals: Sequence[Any], seed: int):
    out, pullback = jax.vjp(f, *primals)
    cotangent = jax.random.normal(jax.random.key(seed), out.shape, out.dtype)
    return out, pullback(cotangent)


def assert_vjp_matches_reference(
    loss: Loss,
    reference: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int = 0,
    **kwargs: Any,
) -> float:
    """Asserts that ``loss``'s gradient equals ``jax.grad(reference)`` in float64.

    Both are pulled back along the same random cotangent (so per-example outputs are
    checked row by row, not only through their sum). Floating arguments are cast to
    float64 and ``reference`` should be the plain textbook formula.

    Returns:
      The largest relative error, ``max|g - g_ref| / max|g_ref|`` over the arguments.
    """
    nums = _argnums(argnums)
    with jax.enable_x64(True):
        args64 = tuple(_to_float64(a) for a in args)
        kwargs64 = {k: _to_float64(v) for k, v in kwargs.items()}
        bind, primals = _split(args64, nums)
        out, grads = _vjp(bind(loss, kwargs64), primals, seed)
        ref_out, ref_grads = _vjp(bind(reference, kwargs64), primals, seed)
        chex.assert_trees_all_close(out, ref_out, rtol=rtol, atol=atol)
        chex.assert_trees_all_close(grads, ref_grads, rtol=rtol, atol=atol)
        errors = [
            float(jnp.max(jnp.abs(g - r)) / jnp.maximum(jnp.max(jnp.abs(r)), 1e-300))
            for g, r in zip(grads, ref_grads, strict=True)
        ]
    return max(errors)


def assert_grads_finite(
    loss: Loss, *args: Any, argnums: int | Sequence[int] = 0, **kwargs: Any
) -> None:
    """Asserts that the loss and its gradient are finite at ``args`` (in their own
    dtypes: this is the check for bf16 inputs and extreme magnitudes)."""
    bind, primals = _split(args, _argnums(argnums))
    f = bind(loss, kwargs)
    out, grads = _vjp(f, primals, 0)
    chex.assert_tree_all_finite(out)
    chex.assert_tree_all_finite(grads)


def assert_finite_differences(
    loss: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    order: int = 2,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    **kwargs: Any,
) -> None:
    """``jax.test_util.check_grads(..., order, modes=["rev"])`` in float64.

    Reverse mode only: ``jax.jvp`` does not go through a ``jax.custom_vjp``. Order 2
    checks the backward pass's own derivative (``jax.hessian`` relies on it).
    """
    with jax.enable_x64(True):
        args64 = tuple(_to_float64(a) for a in args)
        kwargs64 = {k: _to_float64(v) for k, v in kwargs.items()}
        bind, primals = _split(args64, _argnums(argnums))
        check_grads(bind(loss, kwargs64), tuple(primals), order=order, modes=["rev"],
                    eps=eps, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------
# The built-in losses: naive references, typical inputs and extremes.


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One loss to verify: typical inputs for the gradient checks, and extreme
    inputs at which loss and gradient must stay finite."""

    name: str
    loss: Loss
    reference: Loss
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    extremes: tuple[tuple[Any, ...], ...] = ()
    custom_vjp: bool = True
    argnums: tuple[int, ...] = (0,)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    custom_vjp: bool
    max_rel_error: float
    finite_differences: bool
    extremes_finite: bool
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.finite_differences and self.extremes_finite and not self.error


def _log_softmax_naive(x: jax.Array) -> jax.Array:
    e = jnp.exp(x)
    return jnp.log(e / jnp.sum(e, axis=-1, keepdims=True))


def _ref_sigmoid_bce(x, y, *, pos_weight=1.0, label_smoothing=0.0, **_):
    y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    s = 1 / (1 + jnp.exp(-x))
    return -(pos_weight * y * jnp.log(s) + (1 - y) * jnp.log(1 - s))


def _ref_bce(p, y, **_):
    return -(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))


def _ref_softmax_ce(x, y, *, label_smoothing=0.0, **_):
    c = x.shape[-1]
    y = (1 - label_smoothing) * y + label_smoothing / c
    return -jnp.sum(y * _log_softmax_naive(x), axis=-1)


def _ref_integer_ce(x, labels, *, class_weights=None, label_smoothing=0.0, **_):
    c = x.shape[-1]
    w = jnp.ones(c) if class_weights is None else class_weights
    q = (1 - label_smoothing) * jax.nn.one_hot(labels, c) + label_smoothing / c
    return -jnp.sum(w * q * _log_softmax_naive(x), axis=-1)


def _ref_categorical_ce(p, y, **_):
    return -jnp.sum(y * jnp.log(p / jnp.sum(p, axis=-1, keepdims=True)), axis=-1)


def _ref_squared(p, t, **_):
    return (p - t) ** 2


def _ref_huber(p, t, *, delta=1.0, **_):
    e = jnp.abs(p - t)
    return jnp.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta))


def _ref_distance(a, b):
    return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))


def _ref_contrastive(a, b, y, *, margin=1.0, **_):
    d = _ref_distance(a, b)
    return 0.5 * (y * d**2 + (1 - y) * jnp.maximum(margin - d, 0) ** 2)


def _ref_triplet(a, p, n, *, margin=1.0, norm_degree=2, eps=1e-6, **_):
    def dist(x, y):
        return jnp.sum(jnp.abs(x - y + eps) ** norm_degree, axis=-1) ** (1 / norm_degree)

    return jnp.maximum(dist(a, p) - dist(a, n) + margin, 0)


def _ref_ntxent(e, labels, temperature=0.07):
    unit = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    s = unit @ unit.T / temperature
    same = labels[:, None] == labels[None, :]
    positive = same & ~jnp.eye(len(labels), dtype=bool)
    negatives = jnp.sum(jnp.where(same, 0, jnp.exp(s)), axis=-1, keepdims=True)
    per_pair = -jnp.log(jnp.exp(s) / (jnp.exp(s) + negatives))
    return jnp.sum(jnp.where(positive, per_pair, 0)) / jnp.sum(positive)


def _ref_info_nce(q, k, *, temperature=0.07, symmetric=False, **_):
    s = q @ k.T / temperature
    rows = jnp.log(jnp.sum(jnp.exp(s), axis=1)) - jnp.diag(s)
    if not symmetric:
        return rows
    return 0.5 * (rows + jnp.log(jnp.sum(jnp.exp(s), axis=0)) - jnp.diag(s))


def _ref_siglip(x, y, t, b):
    z = x @ y.T * t + b
    sign = 2 * jnp.eye(len(x)) - 1
    return -jnp.sum(jnp.log(1 / (1 + jnp.exp(-sign * z)))) / len(x)


def _ref_linear_ce(h, w, labels, **_):
    return _ref_integer_ce(h @ w, labels)


def builtin_cases(seed: int = 0) -> list[CheckCase]:
    """The cases ``jaxloss check`` runs: one per built-in loss (and option set)."""
    rng = np.random.default_rng(seed)
    n, c = 6, 5
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n)
    soft = rng.dirichlet(np.ones(c), size=n)
    probs = rng.uniform(0.05, 0.95, size=(n, c))
    binary = rng.integers(0, 2, size=(n, c)).astype(float)
    preds, targets = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    weights = rng.uniform(0.5, 2.0, size=c)

    f32 = np.float32
    big = np.array([[1e30, -1e30, 0.0, 5.0, -5.0]] * 2, f32)
    masked = np.array([[2.0, -np.inf, 0.5, -np.inf, 1.0]] * 2, f32)
    bf16 = jnp.array([[3.0e38, -3.0e38, 1e4, -1e4, 0.0]] * 2, jnp.bfloat16)
    fp16 = jnp.array([[65504, -65504, 1e4, -1e4, 0.0]] * 2, jnp.float16)
    two_labels = np.array([0, 2])
    two_onehot = np.eye(c, dtype=f32)[two_labels]
    edge_p = np.array([[0.0, 1.0, 1e-30, 1 - 1e-7, 0.5]] * 2, f32)
    edge_y = np.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0]], f32)
    emb_a, emb_b, emb_n = (rng.normal(size=(n, 4)) for _ in range(3))
    similar = np.array([1.0, 0.0] * (n // 2))
    groups = np.array([0, 0, 1, 1, 2, 2])
    same = np.ones((2, 4), f32)  # distance 0, both labels
    bf16_emb = jnp.asarray(rng.normal(size=(4, 4)) * 100, jnp.bfloat16)
    scale, shift = np.array(2.0), np.array(-1.0)  # siglip's temperature and bias
    huge_a, huge_b = (np.asarray(rng.normal(size=(2, 4)) * 1e15, f32) for _ in range(2))
    siglip_f32 = (f32(10.0), f32(-10.0))
    siglip_bf16 = (jnp.bfloat16(10.0), jnp.bfloat16(-10.0))
    hidden, vocab_weight = rng.normal(size=(n, 4)), rng.normal(size=(4, 10))
    vocab_labels = rng.integers(0, 10, size=n)
    huge_weight = np.asarray(rng.normal(size=(4, 10)) * 1e15, f32)
    bf16_weight = jnp.asarray(rng.normal(size=(4, 10)) * 1e18, jnp.bfloat16)

    return [
        CheckCase("squared_error", jaxloss.squared_error, _ref_squared, (preds, targets),
                  extremes=((np.full((2, 2), 1e18, f32), np.zeros((2, 2), f32)),),
                  custom_vjp=False),
        CheckCase("huber_loss", jaxloss.huber_loss, _ref_huber, (preds, targets),
                  {"delta": 0.7},
                  extremes=((big, np.zeros_like(big)), (bf16, jnp.zeros_like(bf16))),
                  custom_vjp=False),
        CheckCase("mean_squared_error", jaxloss.mean_squared_error,
                  lambda p, t: jnp.mean((p - t) ** 2), (preds, targets),
                  extremes=((np.full((2, 2), 1e18, f32), np.zeros((2, 2), f32)),),
                  custom_vjp=False),
        CheckCase("mean_absolute_error", jaxloss.mean_absolute_error,
                  lambda p, t: jnp.mean(jnp.abs(p - t)), (preds, targets),
                  extremes=((big, np.zeros_like(big)),),
                  custom_vjp=False),
        CheckCase("sigmoid_binary_cross_entropy", jaxloss.sigmoid_binary_cross_entropy,
                  _ref_sigmoid_bce, (logits, binary),
                  extremes=((big, edge_y), (bf16, edge_y), (fp16, edge_y))),
        CheckCase("sigmoid_binary_cross_entropy[pos_weight,smoothing]",
                  jaxloss.sigmoid_binary_cross_entropy, _ref_sigmoid_bce, (logits, soft),
                  {"pos_weight": weights, "label_smoothing": 0.1},
                  extremes=((big, edge_y),)),
        CheckCase("binary_cross_entropy", jaxloss.binary_cross_entropy, _ref_bce,
                  (probs, binary), extremes=((edge_p, edge_y),)),
        CheckCase("softmax_cross_entropy", jaxloss.softmax_cross_entropy, _ref_softmax_ce,
                  (logits, soft),
                  extremes=((big, two_onehot), (masked, two_onehot), (bf16, two_onehot),
                            (fp16, two_onehot))),
        CheckCase("softmax_cross_entropy[smoothing]", jaxloss.softmax_cross_entropy,
                  _ref_softmax_ce, (logits, soft), {"label_smoothing": 0.2},
                  extremes=((masked, two_onehot),)),
        CheckCase("softmax_cross_entropy_with_integer_labels",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, labels),
                  extremes=((big, two_labels), (masked, two_labels), (bf16, two_labels),
                            (fp16, two_labels))),
        CheckCase("softmax_cross_entropy_with_integer_labels[weights,smoothing]",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, labels), {"class_weights": weights, "label_smoothing": 0.1},
                  extremes=((masked, two_labels), (big, two_labels))),
        CheckCase("categorical_cross_entropy", jaxloss.categorical_cross_entropy,
                  _ref_categorical_ce, (probs, soft), extremes=((edge_p, two_onehot),)),
        CheckCase("pairwise_distance", jaxloss.pairwise_distance, _ref_distance,
                  (emb_a, emb_b), argnums=(0, 1), extremes=((same, same),)),
        CheckCase("contrastive_loss", jaxloss.contrastive_loss, _ref_contrastive,
                  (emb_a, emb_b, similar), {"margin": 2.0}, argnums=(0, 1),
                  extremes=((same, same, np.array([1.0, 0.0])),
                            (bf16_emb, bf16_emb, np.array([1.0, 0.0, 1.0, 0.0])))),
        CheckCase("triplet_margin_loss", jaxloss.triplet_margin_loss, _ref_triplet,
                  (emb_a, emb_b, emb_n), {"margin": 3.0}, argnums=(0, 1, 2),
                  custom_vjp=False, extremes=((same, same, same),)),
        CheckCase("triplet_margin_loss[norm_degree=1]", jaxloss.triplet_margin_loss,
                  _ref_triplet, (emb_a, emb_b, emb_n), {"margin": 3.0, "norm_degree": 1},
                  argnums=(0, 1, 2), custom_vjp=False, extremes=((same, same, same),)),
        CheckCase("ntxent", jaxloss.ntxent, _ref_ntxent, (emb_a, groups), custom_vjp=False,
                  extremes=((same, np.array([0, 1])), (bf16_emb, np.array([0, 0, 1, 1])))),
        CheckCase("info_nce", jaxloss.info_nce, _ref_info_nce, (emb_a, emb_b),
                  {"temperature": 0.5}, argnums=(0, 1),
                  extremes=((same, same), (bf16_emb, bf16_emb))),
        CheckCase("info_nce[symmetric,chunked]",
                  functools.partial(jaxloss.info_nce, symmetric=True, chunk_size=4),
                  _ref_info_nce, (emb_a, emb_b), {"temperature": 0.5, "symmetric": True},
                  argnums=(0, 1), extremes=((bf16_emb, bf16_emb),)),
        CheckCase("siglip_loss", jaxloss.siglip_loss, _ref_siglip,
                  (emb_a, emb_b, scale, shift), argnums=(0, 1, 2, 3), custom_vjp=False,
                  extremes=((huge_a, huge_b, *siglip_f32),
                            (bf16_emb * 1e13, bf16_emb, *siglip_bf16))),
        CheckCase("linear_softmax_cross_entropy[chunk_size=4,V=10]",
                  jaxloss.linear_softmax_cross_entropy, _ref_linear_ce,
                  (hidden, vocab_weight, vocab_labels), {"chunk_size": 4}, argnums=(0, 1),
                  extremes=((huge_a, huge_weight, two_labels),
                            (huge_a.astype(jnp.bfloat16) * 1e3, bf16_weight,
                             two_labels))),
    ]


def run_case(case: CheckCase) -> CheckResult:
    error, rel, fd, extremes = "", float("nan"), False, False
    try:
        rel = assert_vjp_matches_reference(case.loss, case.reference, *case.args,
                                           argnums=case.argnums, rtol=1e-7, atol=1e-10,
                                           **case.kwargs)
    except AssertionError as e:
        error = f"gradient differs from jax.grad of the reference: {str(e)[:200]}"
    try:
        assert_finite_differences(case.loss, *case.args, argnums=case.argnums, **case.kwargs)
        fd = True
    except AssertionError as e:
        error = error or f"finite differences: {str(e)[:200]}"
    try:
        for args in case.extremes:
            assert_grads_finite(case.loss, *args, argnums=case.argnums, **case.kwargs)
        extremes = True
    except AssertionError as e:
        error = error or f"extremes: {str(e)[:200]}"
    return CheckResult(case.name, case.custom_vjp, rel, fd, extremes, error)


def run_checks(cases: Sequence[CheckCase] | None = None) -> list[CheckResult]:
    """Runs every check over ``cases`` (default: :func:`builtin_cases`)."""
    return [run_case(case) for case in (builtin_cases() if cases is None else cases)]
