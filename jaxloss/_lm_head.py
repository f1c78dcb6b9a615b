r"""The language-model head's options shared by the softmax cross-entropies: logit
softcapping, temperature and the z-loss, and the per-row statistics a training loop logs.

With softcap :math:`c` and temperature :math:`\tau` the softmax sees

.. math::
  x' = \frac{c \tanh(x / c)}{\tau}, \qquad
  \frac{\partial x'}{\partial x} = \frac{\operatorname{sech}^2(x / c)}{\tau}

(Gemma 2's final-logit softcapping, then the sampling temperature), and the z-loss adds
:math:`\varepsilon\,\mathrm{lse}(x')^2` per row, whose gradient is
:math:`2\varepsilon\,\mathrm{lse}(x')\,\mathrm{softmax}(x')`. A logit of ``-inf`` stays
``-inf``: a class masked that way stays masked (:math:`c \tanh(-\infty)` would be
:math:`-c`, a class with probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._math import times as _times

__all__ = ["CrossEntropyAux", "Head", "head"]


class Head(NamedTuple):
    """The static options of the head (None from :func:`head` when all are defaults)."""

    softcap: float | None
    temperature: float
    z_loss: float


class CrossEntropyAux(NamedTuple):
    """What a training loop logs next to the loss, one entry per row (the shape of
    ``labels``), from the same pass as the loss and without gradient. On rows that
    ``ignore_index`` or ``where`` leaves out, every field is 0 (``correct`` False).

    Attributes:
      lse: :math:`\\mathrm{lse}(x')`, the log-normalizer of the row's (softcapped,
        tempered) logits.
      z_loss: the row's z-loss term :math:`\\varepsilon\\,\\mathrm{lse}(x')^2` (0 when
        ``z_loss=0``).
      correct: whether the label's logit is the row's largest (ties count as correct):
        the token accuracy is ``correct.sum() / kept``.
      label_logit: :math:`x'_y`, the label's logit as the softmax sees it.
    """

    lse: jax.Array
    z_loss: jax.Array
    correct: jax.Array
    label_logit: jax.Array


def _positive_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a positive finite Python float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def check_softcap(name: str, value: Any) -> None:
    """``softcap``: None or a positive finite number (a check of ``_validate.jit``)."""
    if value is not None:
        _positive_finite(name, value)


def check_temperature(name: str, value: Any) -> None:
    """``temperature``: a positive finite number."""
    _positive_finite(name, value)


def check_z_loss(name: str, value: Any) -> None:
    """``z_loss``: a non-negative finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a non-negative finite Python float, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    """A static on/off option: True or False only (a TypeError, as for jaxloss's other
    flags)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


# The checks of ``_validate.jit`` for the options, before their values are hashed.
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "softcap": check_softcap, "temperature": check_temperature, "z_loss": check_z_loss,
    "return_aux": check_flag}


def head(softcap: float | None, temperature: float, z_loss: float) -> Head | None:
    """The options, validated; None when they are the defaults (the code paths are then
    exactly those without the options)."""
    check_softcap("softcap", softcap)
    check_temperature("temperature", temperature)
    check_z_loss("z_loss", z_loss)
    if softcap is None and temperature == 1 and z_loss == 0:
        return None
    return Head(None if softcap is None else float(softcap), float(temperature),
                float(z_loss))


def transforms(h: Head | None) -> bool:
    """Whether the logits are changed before the softmax (softcap or temperature)."""
    return h is not None and (h.softcap is not None or h.temperature != 1)


def caps(h: Head | None) -> bool:
    """Whether the logits are softcapped."""
    return h is not None and h.softcap is not None


def beta(h: Head | None) -> float | None:
    """The inverse temperature :math:`1/\\tau`, or None at :math:`\\tau = 1`.

    The temperature is not applied to the logits: the softmax machinery
    (:mod:`jaxloss._softmax`, ``beta=``) scales differences of logits,
    :math:`(x - m)/\\tau`, never the logits themselves. :math:`x/\\tau - m/\\tau`
    rounds each quotient apart (or fuses one into a multiply-add), so that at logits of
    1e30 the row's maximum would sit 1e22 away from itself and its exponential overflow.
    """
    return None if h is None or h.temperature == 1 else 1 / h.temperature


def transform(x: jax.Array, h: Head | None) -> jax.Array:
    """The softcapped logits :math:`c \\tanh(x / c)`, ``-inf`` kept (the temperature is
    :func:`beta`'s)."""
    if h is None or h.softcap is None:
        return x
    c = h.softcap
    return jnp.where(jnp.isneginf(x), x, c * jnp.tanh(x / c))


def lse(h: Head | None, m: jax.Array, log_s: jax.Array) -> jax.Array:
    """:math:`\\mathrm{lse}(x') = m/\\tau + \\log s` from the normalizer of the
    softcapped logits."""
    b = beta(h)
    return m + log_s if b is None else b * m + log_s


def sech2(u: jax.Array) -> jax.Array:
    r""":math:`\operatorname{sech}^2 u = 4a/(1 + a)^2` with :math:`a = e^{-2|u|} \in
    [0, 1]`: full relative precision where :math:`1 - \tanh^2 u` would cancel, and
    neither it nor its derivative overflows, even at :math:`u = \pm\infty` (where
    :math:`1/\cosh^2` differentiates to inf/inf)."""
    a = jnp.exp(-2 * jnp.abs(u))
    return 4 * a / jnp.square(1 + a)


def transform_grad(d: jax.Array, x: jax.Array, h: Head | None) -> jax.Array:
    r"""``d`` (the gradient with respect to :math:`x'`) times
    :math:`\partial x'/\partial x = \operatorname{sech}^2(x/c)/\tau` at the raw logits
    ``x``; 0 where ``d`` is 0, even where ``x`` is NaN (an ignored or masked entry)."""
    if h is None:
        return d
    if h.softcap is not None:
        d = _times(d, sech2(x / h.softcap))
    if h.temperature != 1:
        d = d / h.temperature
    return d


def z_coefficient(h: Head | None, m: jax.Array, log_s: jax.Array) -> jax.Array | None:
    """:math:`2\\varepsilon\\,\\mathrm{lse}` per row, the z-loss's factor on the softmax in
    the gradient (0 on a row with no class; None without z-loss)."""
    if h is None or h.z_loss == 0:
        return None
    value = lse(h, m, log_s)
    return jnp.where(jnp.isfinite(value), 2 * h.z_loss * value, 0)


def z_term(h: Head | None, m: jax.Array, log_s: jax.Array) -> jax.Array | None:
    """:math:`\\varepsilon\\,\\mathrm{lse}^2` per row as :math:`(\\sqrt\\varepsilon\\,
    \\mathrm{lse})^2`, which overflows only where the term does (0 on a row with no
    class; None without z-loss)."""
    if h is None or h.z_loss == 0:
        return None
    value = lse(h, m, log_s)
    return jnp.where(jnp.isfinite(value), jnp.square(math.sqrt(h.z_loss) * value), 0)


def aux(h: Head | None, m: jax.Array, log_s: jax.Array, label_logit: jax.Array,
        keep: jax.Array | None) -> CrossEntropyAux:
    """The per-row statistics from the normalizer :math:`(m, \\log s)` and the label's
    logit, both of the softcapped logits before the temperature (:func:`beta`), without
    gradient, zeroed on the rows not kept."""
    m, log_s, label_logit = jax.lax.stop_gradient((m, log_s, label_logit))
    value = lse(h, m, log_s)
    z = z_term(h, m, log_s)
    b = beta(h)
    fields = CrossEntropyAux(
        lse=value, z_loss=jnp.zeros_like(value) if z is None else z,
        correct=(label_logit >= m) & jnp.isfinite(label_logit),
        label_logit=label_logit if b is None else b * label_logit)
    if keep is None:
        return fields
    return CrossEntropyAux(*(jnp.where(keep, f, jnp.zeros((), f.dtype)) for f in fields))
