"""``jaxloss check`` cases of PyTorch's losses that optax lacks: ``nll_loss``,
``soft_margin_loss``, ``multilabel_soft_margin_loss``, ``smooth_l1_loss``,
``poisson_nll_loss`` and ``gaussian_nll_loss``.

The references are PyTorch's formulas written out in ``jax.numpy`` (run in float64),
in the forms that stay exact at the extremes (softplus through ``logaddexp``, the
label's entry selected rather than multiplied by a one-hot); none calls jaxloss. Every
loss here is plain autodiff (``custom_vjp=False``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.classification import multilabel_soft_margin_loss, nll_loss, soft_margin_loss
from jaxloss.regression import gaussian_nll_loss, poisson_nll_loss, smooth_l1_loss
from jaxloss.testing import CheckCase, Extreme

__all__ = ["cases"]


def _reduce(
    losses: jax.Array, reduction: str = "none", where: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """``"none"``/``"sum"``/``"mean"`` over the entries ``where`` selects; ``"mean"``
    divides by the sum of ``weights`` there (PyTorch's weighted mean)."""
    if where is not None:
        where = jnp.broadcast_to(where, losses.shape)
        losses = jnp.where(where, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    w = jnp.ones(losses.shape) if weights is None else jnp.broadcast_to(weights, losses.shape)
    if where is not None:
        w = jnp.where(where, w, 0)
    return jnp.sum(losses) / jnp.sum(w)


def _softplus(x: jax.Array) -> jax.Array:
    return jnp.logaddexp(x, 0.0)


def _ref_nll(
    lp: jax.Array, labels: jax.Array, *, class_weights: jax.Array | None = None,
    ignore_index: int | None = None, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    """PyTorch NLLLoss: :math:`-w_y z_y` per row; the weighted mean over kept rows."""
    c = lp.shape[-1]
    w = jnp.ones(c) if class_weights is None else class_weights
    keep = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where)
    if ignore_index is not None:
        keep = keep & (labels != ignore_index)
    one_hot = labels[..., None] == jnp.arange(c)
    w_y = jnp.sum(jnp.where(one_hot, w, 0), axis=-1)
    picked = jnp.sum(jnp.where(one_hot, lp, 0), axis=-1)
    return _reduce(-w_y * picked, reduction, keep, w_y)


def _ref_soft_margin(
    x: jax.Array, y: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    return _reduce(_softplus(-y * x), reduction, where)


def _ref_multilabel(
    x: jax.Array, y: jax.Array, *, class_weights: jax.Array | None = None,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    terms = y * _softplus(-x) + (1 - y) * _softplus(x)
    if class_weights is not None:
        terms = terms * class_weights
    return _reduce(jnp.mean(terms, axis=-1), reduction, where)


def _ref_smooth_l1(
    p: jax.Array, t: jax.Array, *, beta: float = 1.0, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    e = p - t
    a = e * jnp.sign(e)  # |e| with the subgradient 0 at 0
    safe_beta = jnp.where(beta > 0, beta, 1)
    losses = jnp.where(a < beta, 0.5 * a * a / safe_beta, a - 0.5 * beta)
    return _reduce(losses, reduction, where)


def _ref_poisson(
    x: jax.Array, y: jax.Array, *, log_input: bool = True, full: bool = False, eps: float = 1e-8,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    if log_input:
        losses = jnp.exp(x) - y * x
    else:
        z = x + eps
        zero = (z == 0) & (y == 0)  # 0 log 0 = 0
        losses = x - jnp.where(zero, 0, y * jnp.log(jnp.where(zero, 1, z)))
    if full:
        big = y > 1
        s = jnp.where(big, y, 2.0)
        losses = losses + jnp.where(big, s * jnp.log(s) - s + 0.5 * jnp.log(2 * jnp.pi * s), 0)
    return _reduce(losses, reduction, where)


def _ref_gaussian(
    mu: jax.Array, y: jax.Array, var: jax.Array, *, full: bool = False, eps: float = 1e-6,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    """PyTorch's; its clamp (under ``no_grad`` there) passes the gradient unchanged. A
    variance of the shape of ``mu`` without its last axis is one per row."""
    var = jnp.asarray(var)
    if var.ndim and var.shape == mu.shape[:-1]:
        var = var[..., None]
    v = var + jax.lax.stop_gradient(jnp.maximum(var, eps) - var)
    losses = 0.5 * (jnp.log(v) + (mu - y) ** 2 / v)
    if full:
        losses = losses + 0.5 * jnp.log(2 * jnp.pi)
    return _reduce(jnp.broadcast_to(losses, mu.shape), reduction, where)


def cases(rng: np.random.Generator) -> list[CheckCase]:
    """One or two cases per loss, with their options and extremes (exact limits where
    they are known in closed form)."""
    f32, bf16 = np.float32, jnp.bfloat16
    n, c = 6, 5
    logits = rng.normal(size=(n, c)) * 3
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    labels = rng.integers(0, c, size=n)
    weights = rng.uniform(0.5, 2.0, size=c)
    row_mask = np.array([True, False, True, True, False, True])
    ignored = np.where(np.roll(row_mask, 2), labels, -100)
    soft = rng.uniform(size=(n, c))
    signs = np.where(rng.uniform(size=(n, c)) < 0.5, -1.0, 1.0)
    element_mask = rng.uniform(size=(n, c)) < 0.7
    preds, targets = rng.normal(size=(n, c)) * 2, rng.normal(size=(n, c))
    counts = rng.poisson(2.0, size=(n, c)).astype(np.float64)
    # PyTorch's Stirling term jumps at y = 1: finite differences in y stay off it.
    counts = np.where(counts == 1, 1.5, counts)
    rates = rng.uniform(0.2, 3.0, size=(n, c))
    # Above eps here (finite differences see the clamp); below it in the extremes.
    variance = rng.uniform(0.2, 2.0, size=(n, c))
    clamped = np.asarray(variance[:2] * np.array([[1e-8], [0.1]]), f32)

    # nll_loss: only the label's entry is read (-inf elsewhere is harmless).
    nll_lp = np.array([[-np.inf, 0.0, -np.inf], [0.0, -np.inf, -1e30]], f32)
    nll_labels = np.array([1, 2])
    nll_bf16 = jnp.asarray(np.where(np.isinf(nll_lp), -3e38, nll_lp), bf16)
    # soft margin: softplus(-y x), exact at +-1e30 and the float32 maximum.
    sm_x = np.array([1e30, 1e30, -1e30, -1e30, 0.0, 3e38], f32)
    sm_y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], f32)
    sm_expected = (np.array([0.0, 1e30, 1e30, 0.0, np.log(2.0), 3e38]),
                   (np.array([0.0, 1.0, -1.0, 0.0, -0.5, 1.0]),
                    np.array([0.0, -1e30, 1e30, 0.0, 0.0, -3e38])))
    # multilabel: terms [0, 0, 1e30, 1e30] weighted [1, 2, 1, 0.5], mean over C = 4.
    ml_x = np.array([[1e30, -1e30, 1e30, -1e30]], f32)
    ml_y = np.array([[1.0, 0.0, 0.0, 1.0]], f32)
    ml_w = np.array([1.0, 2.0, 1.0, 0.5], f32)
    ml_expected = ([3.75e29], ([[0.0, 0.0, 0.25, -0.125]],
                               [[-2.5e29, 5e29, -2.5e29, 1.25e29]],
                               [0.0, 0.0, 2.5e29, 2.5e29]))
    # smooth L1 with beta = 0: the L1 loss, sign(e) (0 at 0), d/dbeta = -1/2 where e != 0
    # (the derivative from the right: beta < 0 is outside the domain).
    l1_e = np.array([-2.0, -0.25, 0.0, 0.5, 1e30], f32)
    l1_expected = (np.abs(l1_e.astype(np.float64)),
                   (np.sign(l1_e), -np.sign(l1_e), -0.5 * np.count_nonzero(l1_e)))
    # Poisson on the log-rate: 0 * x = 0 for a zero count; exp overflow is +inf.
    po_x = np.array([-1e30, -1e30, 0.0, 100.0, 0.0], f32)
    po_y = np.array([0.0, 1.0, 0.0, 0.0, 2.0], f32)
    stirling_2 = 2 * np.log(2.0) - 2 + 0.5 * np.log(4 * np.pi)
    po_expected = ([0.0, 1e30, 1.0, np.inf, 1.0 + stirling_2],
                   ([0.0, -1.0, 1.0, np.inf, -1.0],
                    [1e30, 1e30, 0.0, -100.0, np.log(2.0) + 0.25]))
    # Poisson on the rate, eps = 0: 0 log 0 = 0 with gradient 0.
    rate_x = np.array([0.0, 2.0, 1e30], f32)
    rate_y = np.array([0.0, 0.0, 1.0], f32)
    rate_expected = ([0.0, 2.0, 1e30], ([1.0, 1.0, 1.0], [0.0, -np.log(2.0), -np.log(1e30)]))
    # Gaussian: variance below eps and 0 (clamped, gradient passed through, PyTorch's),
    # and a mean and variance of 1e20 (e^2 / v^2 = 1: no overflow of v^-2).
    eps = float(np.float32(1e-6))
    ga_mu = np.array([1e-4, 0.0, 1e20], f32)
    ga_var = np.array([1e-9, 0.0, 1e20], f32)
    e = ga_mu.astype(np.float64)
    v = np.array([eps, eps, e[2]])
    ga_grad_mu = e / v
    ga_expected = (0.5 * (np.log(v) + e * (e / v)),
                   (ga_grad_mu, -ga_grad_mu, 0.5 * (1 / v - (e / v) ** 2)))
    zeros3 = np.zeros(3, f32)

    kw: dict[str, Any]
    return [
        CheckCase("nll_loss", nll_loss, _ref_nll, (log_probs, labels), custom_vjp=False,
                  extremes=(Extreme((nll_lp, nll_labels), expected=(
                      [0.0, 1e30], ([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],))),
                            (nll_bf16, nll_labels))),
        CheckCase("nll_loss[weights,ignore_index,where,mean]", nll_loss, _ref_nll,
                  (log_probs, ignored),
                  {"class_weights": weights, "ignore_index": -100, "where": row_mask,
                   "reduction": "mean"},
                  diff_kwargs=("class_weights",), custom_vjp=False),
        CheckCase("soft_margin_loss", soft_margin_loss, _ref_soft_margin, (preds, signs),
                  argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((sm_x, sm_y), expected=sm_expected),
                            (jnp.asarray(sm_x, bf16), jnp.asarray(sm_y, bf16)))),
        CheckCase("soft_margin_loss[where,mean]", soft_margin_loss, _ref_soft_margin,
                  (preds, signs), {"where": element_mask, "reduction": "mean"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("multilabel_soft_margin_loss[class_weights]", multilabel_soft_margin_loss,
                  _ref_multilabel, (logits, soft), {"class_weights": weights},
                  argnums=(0, 1), diff_kwargs=("class_weights",), custom_vjp=False,
                  extremes=(Extreme((ml_x, ml_y), {"class_weights": ml_w},
                                    expected=ml_expected),
                            Extreme((jnp.asarray(ml_x, bf16), ml_y), {"class_weights": ml_w}))),
        CheckCase("multilabel_soft_margin_loss[where,sum]", multilabel_soft_margin_loss,
                  _ref_multilabel, (logits, soft), {"where": row_mask, "reduction": "sum"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("smooth_l1_loss[beta]", smooth_l1_loss, _ref_smooth_l1, (preds, targets),
                  {"beta": np.asarray(0.7)}, argnums=(0, 1), diff_kwargs=("beta",),
                  custom_vjp=False,
                  extremes=(Extreme((l1_e, np.zeros(5, f32)), {"beta": f32(0.0)},
                                    expected=l1_expected),
                            Extreme((jnp.asarray(sm_x, bf16), jnp.zeros(6, bf16)),
                                    {"beta": f32(1.0)}))),
        CheckCase("smooth_l1_loss[beta=0,where,mean]", smooth_l1_loss, _ref_smooth_l1,
                  (preds, targets), {"beta": 0.0, "where": element_mask, "reduction": "mean"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("poisson_nll_loss[full]", poisson_nll_loss, _ref_poisson, (preds, counts),
                  {"full": True}, argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((po_x, po_y), expected=po_expected),)),
        CheckCase("poisson_nll_loss[rate,full,eps,where,sum]", poisson_nll_loss,
                  _ref_poisson, (rates, counts),
                  kw := {"log_input": False, "full": True, "eps": 1e-3, "where": element_mask,
                         "reduction": "sum"},
                  argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((rate_x, rate_y), {**kw, "eps": 0.0, "full": False,
                                                       "where": None, "reduction": "none"},
                                    expected=rate_expected),)),
        CheckCase("gaussian_nll_loss[full]", gaussian_nll_loss, _ref_gaussian,
                  (preds, targets, variance), {"full": True}, argnums=(0, 1, 2),
                  custom_vjp=False,
                  extremes=(Extreme((ga_mu, zeros3, ga_var), {"full": False},
                                    expected=ga_expected),
                            (jnp.asarray(preds[:2], bf16), jnp.asarray(targets[:2], bf16),
                             jnp.asarray(clamped, bf16)))),
        CheckCase("gaussian_nll_loss[per-row variance,eps,where,mean]", gaussian_nll_loss,
                  _ref_gaussian, (preds, targets, variance[:, 0]),
                  {"eps": 0.1, "where": element_mask, "reduction": "mean"},
                  argnums=(0, 1, 2), custom_vjp=False,
                  extremes=(Extreme((np.asarray(preds[:2], f32), np.asarray(targets[:2], f32),
                                     clamped[:, 0]), {"where": element_mask[:2]}),)),
    ]
