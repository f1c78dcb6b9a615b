r"""Fenchel-Young losses built from a max function (``optax.losses.make_fenchel_young_loss``).

The loss of a regularized max function :math:`\Omega^*` (``max_fun``) is
:math:`\Omega^*(\theta) - \langle \theta, y \rangle` over the last axis. Its gradient
in :math:`\theta` is :math:`\hat y(\theta) - y` with :math:`\hat y = \nabla \Omega^*`
(Danskin's theorem), which is exactly what autodiff of ``max_fun`` gives: one backward
pass of ``max_fun``, as a custom_vjp would spend, so there is no custom_vjp. Autodiff
also keeps ``jax.jvp`` and ``jax.hessian`` working and differentiates the extra
arguments of ``max_fun`` (a learned temperature), which a custom_vjp would have to
thread through by hand.

Same values and shapes as optax 0.2.8 wherever optax's are finite, with these
differences (the last one changes values only for calls with keyword arguments): a
target that is exactly 0 contributes nothing to the inner product, so a score of
``-inf`` (a class that does not exist) gives the right finite loss where optax gives
NaN (``0 * -inf``), with gradient 0 in that score and that target; bf16/fp16 scores
are computed in float32; and the extra ``*args``/``**kwargs`` reach ``max_fun``
(optax 0.2.8 raises TypeError for extra positional arguments and silently drops
keyword arguments).

The loss is a difference of two numbers of the scores' size, so at scores of
``1e30`` it cancels to 0 where the exact loss is of order 1 (optax's too). A max
function that commutes with shifts (every max over the probability simplex) can declare
it, ``shift_equivariant=True``: the loss is then formed on the scores less their
maximum, exact at any magnitude.

There is no ``where=``/``reduction=``: every keyword argument of the returned loss
belongs to ``max_fun`` (``jax.nn.logsumexp`` has a ``where=`` of its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxloss import _validate
from jaxloss._softmax import finite_shift

__all__ = ["make_fenchel_young_loss"]

MaxFun = Callable[..., ArrayLike]
"""A max function: a 1-D array of scores (and any extra arguments) to a scalar."""


def _inner(targets: jax.Array, scores: jax.Array) -> jax.Array:
    r""":math:`\langle y, \theta \rangle` over the last axis, a term whose target is 0
    absent (0, gradient 0 in both) where its score is infinite; elsewhere the gradient
    is exact (:math:`\theta` in :math:`y`, :math:`y` in :math:`\theta`)."""
    absent = (targets == 0) & jnp.isinf(scores)
    return jnp.sum(targets * jnp.where(absent, 0, scores), axis=-1)


@jax.custom_jvp
def _shifted_inner(targets: jax.Array, scores: jax.Array, shift: jax.Array) -> jax.Array:
    r""":math:`\langle y, \theta \rangle - m` over the last axis, formed as
    :math:`\sum_i y_i (\theta_i - m) - m (1 - \sum_i y_i)` (``shift`` is :math:`m`,
    ``[..., 1]``) so that it does not cancel when :math:`|\theta| \gg` the result;
    :math:`\theta_i - m` is formed from halves, finite for finite scores. A term whose
    target is 0 is absent where its score is infinite, as in :func:`_inner`."""
    absent = (targets == 0) & jnp.isinf(scores)
    half = jnp.where(absent, 0, 0.5 * scores - 0.5 * shift)
    mass = jnp.sum(jnp.where(absent, 0, targets), axis=-1)
    return 2 * jnp.sum(targets * half, axis=-1) - shift[..., 0] * (1 - mass)


@_shifted_inner.defjvp
def _shifted_inner_jvp(
    primals: tuple[jax.Array, jax.Array, jax.Array],
    tangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    # The derivative of <y, theta> - m, from the inputs themselves: -theta_i itself
    # where theta_i - m overflows (a score near -3e38 under one near 3e38).
    targets, scores, shift = primals
    d_targets, d_scores, d_shift = tangents
    absent = (targets == 0) & jnp.isinf(scores)
    out = _shifted_inner(targets, scores, shift)
    d_out = (jnp.sum(d_targets * jnp.where(absent, 0, scores) + targets * d_scores, axis=-1)
             - d_shift[..., 0])
    return out, d_out


def _max_rows(max_fun: MaxFun, scores: jax.Array, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> jax.Array:
    """``max_fun`` of each row of ``scores`` (``args``/``kwargs`` the same for every
    row), shape ``scores.shape[:-1]``."""
    batch, n = scores.shape[:-1], scores.shape[-1]
    rows = scores.reshape((math.prod(batch), n))
    values = jax.vmap(lambda row: jnp.asarray(max_fun(row, *args, **kwargs)))(rows)
    if values.shape != rows.shape[:1]:
        raise ValueError(
            f"max_fun must return a scalar for a 1-D row of scores, got shape "
            f"{tuple(values.shape[1:])} for a row of shape ({n},)")
    return values.astype(scores.dtype).reshape(batch)


def make_fenchel_young_loss(
    max_fun: MaxFun, *, shift_equivariant: bool = False
) -> Callable[..., jax.Array]:
    r"""Creates the Fenchel-Young loss of a max function
    (``optax.losses.make_fenchel_young_loss``).

    For a regularizer :math:`\Omega` and its conjugate, the max function
    :math:`\Omega^*(\theta) = \max_{p} \langle p, \theta \rangle - \Omega(p)`, the loss
    of scores :math:`\theta` and targets :math:`y` is

    .. math::
      \ell(\theta, y) = \Omega^*(\theta) - \langle \theta, y \rangle, \qquad
      \nabla_\theta \ell = \hat y(\theta) - y, \qquad \nabla_y \ell = -\theta

    with :math:`\hat y(\theta) = \nabla \Omega^*(\theta) = \arg\max_p \langle p,
    \theta \rangle - \Omega(p)` (Danskin's theorem). The full Fenchel-Young loss adds
    :math:`\Omega(y)`, which does not depend on :math:`\theta`; as in optax it is
    left out, so the loss is not 0 at :math:`\hat y = y` in general.
    ``jax.nn.logsumexp`` gives the softmax cross-entropy (:math:`\hat y` the softmax),
    ``jnp.max`` the perceptron loss, a sparsemax conjugate the sparsemax loss.

    A target that is exactly 0 contributes 0 to :math:`\langle \theta, y \rangle`,
    with gradient 0 in that score and that target, even where its score is ``-inf``
    (optax: NaN); elsewhere the gradients are exactly the ones above.

    Args:
      max_fun: the max function :math:`\Omega^*`: takes a 1-D array of scores (then
        the loss's extra arguments) and returns a scalar. It is applied to each row
        (the last axis) of the scores, in float32 at least (bf16/fp16 scores are
        converted). It should be numerically stable itself (a log-sum-exp with its
        max subtracted): the loss is as finite as ``max_fun`` is.
      shift_equivariant: declares :math:`\Omega^*(\theta + c \mathbf 1) =
        \Omega^*(\theta) + c` (a max over the probability simplex: ``logsumexp``,
        ``jnp.max``, the sparsemax and entmax conjugates). The loss is then formed on
        the scores less their row maximum :math:`m` (without gradient), as
        :math:`\Omega^*(\theta - m) - \langle \theta - m, y \rangle + m (1 -
        \sum_i y_i)`: the same loss and gradients, but exact at any magnitude, where
        the default difference of two large numbers cancels (scores ``[1e30, 1e30]``
        and a one-hot target give 0 instead of :math:`\log 2` with ``logsumexp``, in
        optax too). Default False (optax's formula, right for any ``max_fun``). A
        wrong declaration gives wrong values.

    Returns:
      ``fenchel_young_loss(scores, targets, *args, **kwargs)``, where ``scores`` is
      ``[..., n]`` (floating), ``targets`` broadcasts with it (``[..., n]``, numeric),
      and ``*args``/``**kwargs`` are passed unchanged to every call of ``max_fun`` (the
      same for every row). It returns the per-row losses, of the broadcast batch shape,
      in ``promote_types(dtype, float32)``.

    References:
      Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
      <https://arxiv.org/abs/1901.02324>`_, JMLR 2020.
    """
    if not callable(max_fun):
        raise TypeError(f"max_fun must be callable, got {type(max_fun).__name__}")
    if not isinstance(shift_equivariant, bool):
        raise TypeError(f"shift_equivariant must be a bool, got {shift_equivariant!r}")

    def fenchel_young_loss(scores: ArrayLike, targets: ArrayLike, *args: Any,
                           **kwargs: Any) -> jax.Array:
        scores = _validate.floating("scores", scores)
        targets = _validate.numeric("targets", targets)
        if scores.ndim < 1:
            raise ValueError(f"scores must have a last axis [..., n], got "
                             f"{_validate.describe(scores)}")
        if targets.ndim < 1 or targets.shape[-1] != scores.shape[-1]:
            raise ValueError(f"targets must have the last axis of scores ({scores.shape[-1]}"
                             f"), got {_validate.describe(targets)}")
        try:
            np.broadcast_shapes(scores.shape, targets.shape)
        except ValueError:
            raise ValueError(f"targets must broadcast with scores "
                             f"{_validate.describe(scores)}, got "
                             f"{_validate.describe(targets)}") from None
        dtype = _validate.compute_dtype(scores.dtype, targets.dtype)
        s, t = scores.astype(dtype), targets.astype(dtype)
        if not shift_equivariant:
            return _max_rows(max_fun, s, args, kwargs) - _inner(t, s)
        m = jax.lax.stop_gradient(finite_shift(jnp.max(s, axis=-1, keepdims=True,
                                                       initial=-jnp.inf)))
        return _max_rows(max_fun, s - m, args, kwargs) - _shifted_inner(t, s, m)

    fenchel_young_loss.__doc__ = (
        f"Fenchel-Young loss of ``{getattr(max_fun, '__name__', repr(max_fun))}``: "
        "``max_fun(scores) - <scores, targets>`` over the last axis (see "
        ":func:`jaxloss.make_fenchel_young_loss`).")
    return fenchel_young_loss
