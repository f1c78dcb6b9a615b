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
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _validate
from jaxloss._math import times as _times
from jaxloss.distributed import match_varying

__all__ = ["CrossEntropyAux", "Head", "head"]


class Head(NamedTuple):
    """The options of the head, each a scalar array (a traced value: a new value does
    not recompile, and each has a gradient) or None where it is off. Which options are
    on is static; :func:`head` gives None when all are off."""

    softcap: jax.Array | None
    temperature: jax.Array | None
    z_loss: jax.Array | None


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


def _concrete(name: str, value: Any) -> float | None:
    """The value of a scalar option when it is known before the jit (None when traced);
    TypeError for a bool, a non-real or a non-scalar."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise TypeError(f"{name} must be a real scalar, got {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    dtype = getattr(value, "dtype", None)
    if dtype is None or not (jnp.issubdtype(dtype, jnp.floating)
                             or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real scalar (a Python float or a 0-d array), "
                        f"got {_describe(value)}")
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got {_describe(value)}")
    if isinstance(value, jax.core.Tracer):
        return None
    return float(value)


def _describe(value: Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return f"{value!r}"
    return f"shape={tuple(shape)} dtype={dtype}"


def check_positive(name: str, value: Any) -> None:
    """A positive finite scalar (checked when its value is known; None passes: off)."""
    if value is None:
        return
    known = _concrete(name, value)
    if known is not None and not (math.isfinite(known) and known > 0):
        raise ValueError(f"{name} must be positive and finite, got {known!r}")


def check_softcap(name: str, value: Any) -> None:
    """``softcap``: None or a positive finite scalar (a check of ``_validate.jit``)."""
    check_positive(name, value)


def check_temperature(name: str, value: Any) -> None:
    """``temperature``: a positive finite scalar."""
    check_positive(name, value)


def check_z_loss(name: str, value: Any) -> None:
    """``z_loss``: a non-negative finite scalar."""
    if value is None:
        return
    known = _concrete(name, value)
    if known is not None and not (math.isfinite(known) and known >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {known!r}")


def check_flag(name: str, value: Any) -> None:
    """A static on/off option: True or False only (a TypeError, as for jaxloss's other
    flags)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


# The checks of ``_validate.jit`` for the options of the softmax cross-entropies, run
# before the jit: inside it a Python value is traced and its range unknown.
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "softcap": check_softcap, "temperature": check_temperature, "z_loss": check_z_loss,
    "return_aux": check_flag, "label_smoothing": _validate.check_unit_interval,
    "ignore_index": _validate.check_ignore_index}


# Where each option is off: a Python number equal to this compiles the path without
# it (``_validate.jit``'s ``options``); any other value, Python or traced, is a value.
OFF = {"temperature": 1.0, "z_loss": 0.0}


def head(softcap: Any, temperature: Any, z_loss: Any, dtype: Any) -> Head | None:
    """The options as scalar arrays in ``dtype`` (None where off; None when all are).

    Off is None here: ``_validate.jit`` turns a Python number equal to the option's off
    value (:data:`OFF`) into None before the jit, and a Python default that was not
    passed arrives as itself."""
    values: list[jax.Array | None] = []
    for name, value in (("softcap", softcap), ("temperature", temperature),
                        ("z_loss", z_loss)):
        if value is None or (isinstance(value, int | float) and value == OFF.get(name)):
            values.append(None)
            continue
        (check_z_loss if name == "z_loss" else check_positive)(name, value)
        values.append(jnp.asarray(value, dtype))
    if all(v is None for v in values):
        return None
    return Head(*values)


def transforms(h: Head | None) -> bool:
    """Whether the logits are changed before the softmax (softcap or temperature)."""
    return h is not None and (h.softcap is not None or h.temperature is not None)


def caps(h: Head | None) -> bool:
    """Whether the logits are softcapped."""
    return h is not None and h.softcap is not None


def beta(h: Head | None) -> jax.Array | None:
    """The inverse temperature :math:`1/\\tau`, or None without a temperature.

    The temperature is not applied to the logits: the softmax machinery
    (:mod:`jaxloss._softmax`, ``beta=``) scales differences of logits,
    :math:`(x - m)/\\tau`, never the logits themselves. :math:`x/\\tau - m/\\tau`
    rounds each quotient apart (or fuses one into a multiply-add), so that at logits of
    1e30 the row's maximum would sit 1e22 away from itself and its exponential overflow.
    """
    return None if h is None or h.temperature is None else 1 / h.temperature


def transform(x: jax.Array, h: Head | None) -> jax.Array:
    """The softcapped logits :math:`c \\tanh(x / c)`, ``-inf`` kept (the temperature is
    :func:`beta`'s)."""
    if h is None or h.softcap is None:
        return x
    c = h.softcap.astype(x.dtype)
    # +-inf stay out of the quotient: its derivative by c would be inf there (times a
    # zero cotangent: NaN in a second derivative).
    capped = c * jnp.tanh(_finite(x) / c)
    return jnp.where(jnp.isneginf(x), x, jnp.where(jnp.isposinf(x), c, capped))


def _finite(x: jax.Array) -> jax.Array:
    """``x`` with +-inf replaced by 0 (NaN kept), for a quotient by an option."""
    return jnp.where(jnp.isinf(x), 0, x)


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
    ``x``; 0 where ``d`` is 0, even where ``x`` is NaN (a masked entry). Linear in
    ``d`` (:mod:`jaxloss._rules`): the slope is 0 where ``x`` is not finite, and where
    such an ``x`` is not masked ``d`` is NaN already."""
    if h is None:
        return d
    if h.softcap is not None:
        slope = sech2(_finite(x) / h.softcap.astype(x.dtype))
        d = d * jnp.where(jnp.isfinite(x), slope, 0)
    if h.temperature is not None:
        d = d / h.temperature.astype(d.dtype)
    return d


def z_coefficient(h: Head | None, m: jax.Array, log_s: jax.Array) -> jax.Array | None:
    """:math:`2\\varepsilon\\,\\mathrm{lse}` per row, the z-loss's factor on the softmax in
    the gradient (0 on a row with no class; None without z-loss)."""
    if h is None or h.z_loss is None:
        return None
    value = lse(h, m, log_s)
    return jnp.where(jnp.isfinite(value), 2 * h.z_loss * value, 0)


def z_term(h: Head | None, m: jax.Array, log_s: jax.Array) -> jax.Array | None:
    """:math:`\\varepsilon\\,\\mathrm{lse}^2` per row as :math:`(\\sqrt\\varepsilon\\,
    \\mathrm{lse})^2`, which overflows only where the term does (0 on a row with no
    class; None without z-loss)."""
    if h is None or h.z_loss is None:
        return None
    value = lse(h, m, log_s)
    return jnp.where(jnp.isfinite(value), jnp.square(jnp.sqrt(h.z_loss) * value), 0)


def aux(h: Head | None, m: jax.Array, log_s: jax.Array, label_logit: jax.Array,
        keep: jax.Array | None) -> CrossEntropyAux:
    """The per-row statistics from the normalizer :math:`(m, \\log s)` and the label's
    logit, both of the softcapped logits before the temperature (:func:`beta`), without
    gradient, zeroed on the rows not kept."""
    m, log_s, label_logit, h = jax.lax.stop_gradient((m, log_s, label_logit, h))
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


# ---------------------------------------------------------------------------------
# The options' own gradients. With d the gradient with respect to the logits as the
# softmax sees them (x'' = x'/tau, x' = c tanh(x/c)), already times the cotangent:
#   d ell / d tau = -(1/tau^2) sum_c d_c x'_c,
#   d ell / d c   = (1/tau) sum_c d_c (tanh(x_c/c) - (x_c/c) sech^2(x_c/c)),
#   d ell / d eps = g lse(x'')^2   (the z-loss).
# The first is summed as sum_c d_c (x'_c - m) + m sum_c d_c, so that at logits of 1e30
# the large terms cancel exactly: sum_c d_c is known in closed form per row (g times
# the z-loss coefficient; 0 without it).


def cap_slope(x: jax.Array, h: Head) -> jax.Array:
    r""":math:`\partial x'/\partial c = \tanh u - u \operatorname{sech}^2 u`, :math:`u =
    x/c`, at the raw logits: 1 at :math:`+\infty`, 0 at :math:`-\infty` (a masked class
    stays masked whatever :math:`c`)."""
    assert h.softcap is not None
    u = _finite(x) / h.softcap.astype(x.dtype)
    slope = jnp.tanh(u) - u * sech2(u)
    return jnp.where(jnp.isneginf(x), 0, jnp.where(jnp.isposinf(x), 1, slope))


def option_sums(h: Head | None, d: jax.Array, x: jax.Array, raw: jax.Array,
                m: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
    """Over the entries of one block of logits (all of them, or a chunk):
    :math:`\\sum d\\,(x' - m)` for the temperature and :math:`\\sum \\beta\\,d\\,
    \\partial x'/\\partial c` for the softcap (None where that option is off). ``x`` are
    the softcapped logits, ``raw`` the logits before it, ``m`` the row max of ``x``
    (broadcast against it)."""
    if h is None:
        return None, None
    t = c = None
    if h.temperature is not None:
        # Linear in d: the factor is 0 where not finite (a class at -inf, or a NaN
        # logit, whose d is then NaN or, masked, 0).
        shifted = x - m
        t = jnp.sum(d * jnp.where(jnp.isfinite(shifted), shifted, 0))
    if h.softcap is not None:
        b = beta(h)
        scaled = d if b is None else d * b.astype(d.dtype)
        slope = cap_slope(raw, h)
        c = jnp.sum(scaled * jnp.where(jnp.isfinite(slope), slope, 0))
    return t, c


def head_cotangent(h: Head | None, sums: tuple[jax.Array | None, jax.Array | None],
                   m: jax.Array, log_s: jax.Array, g: jax.Array, share: float = 1.0,
                   ) -> Head | None:
    """The cotangent of :class:`Head` from :func:`option_sums` (added up over every
    block) and the per-row normalizer ``(m, log s)`` and cotangent ``g`` (0 on rows that
    are left out). ``share`` scales the per-row terms: ``1/n`` where each of ``n``
    devices adds its own block sums and the per-row terms are the same on each."""
    if h is None:
        return None
    t, c = sums
    d_softcap = d_temperature = d_z = None
    z = z_coefficient(h, m, log_s)
    if h.temperature is not None:
        assert t is not None
        rows = 0.0 if z is None else share * jnp.sum(g * _times(z, m))
        b = beta(h)
        assert b is not None
        d_temperature = (-(b * b) * (t + rows)).astype(h.temperature.dtype)
    if h.softcap is not None:
        assert c is not None
        d_softcap = c.astype(h.softcap.dtype)
    if h.z_loss is not None:
        value = lse(h, m, log_s)
        squares = jnp.where(jnp.isfinite(value), jnp.square(value), 0)
        d_z = (share * jnp.sum(g * squares)).astype(h.z_loss.dtype)
    return Head(d_softcap, d_temperature, d_z)


def match_varying_with_head(h: Head | None, *xs: jax.Array | None) -> tuple[Any, ...]:
    """``xs`` and then ``h`` typed alike by :func:`jaxloss.distributed.match_varying`
    (inside ``jax.shard_map``, so that a replicated option's cotangent is summed over
    the devices by the cast's transpose)."""
    if h is None:
        return (*match_varying(*xs), None)
    matched = match_varying(*xs, *h)
    return (*matched[: len(xs)], Head(*matched[len(xs):]))
