"""Arithmetic with PyTorch's conventions at the points where the textbook form is 0 * inf
or 0 / 0: the masked or undefined term is exactly 0, with a zero gradient."""

from collections.abc import Callable

import jax
import jax.numpy as jnp


@jax.custom_jvp
def times(coefficient: jax.Array, value: jax.Array) -> jax.Array:
    """``coefficient * value`` with 0 * inf = 0: a term whose weight is 0 is absent.

    Its derivative in the coefficient is ``value`` at 0 too (only a non-finite value
    counts as 0 there): the select's own derivative would be 0, a wrong second
    derivative at a label of exactly 0 or 1. (The select form is also the fast one: a
    product with a selected factor compiles to a slower reduction on the CPU.)"""
    return jnp.where(coefficient == 0, 0, coefficient * value)


@times.defjvp
def _times_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
    c, v = primals
    dc, dv = tangents
    absent = c == 0
    factor = jnp.where(absent & ~jnp.isfinite(v), 0, v)
    return times(c, v), dc * factor + jnp.where(absent, 0, c * dv)


def unless_nonfinite(fast: jax.Array, exact: Callable[[], jax.Array]) -> jax.Array:
    """``fast``, or ``exact()`` where an entry of ``fast`` is not finite; ``exact`` runs
    only when one is (a value: for the primal of a custom rule).

    For sums of products that must give 0 * inf = 0 (:func:`times`) or keep a product
    that overflows apart from the sum: a select per entry is not fused into a reduction
    on XLA's CPU (the products are written to memory first; 2.3x the time of the plain
    sum of products at [4096, 1024]), nor is a min or max. So the plain sum comes first,
    and only if some row of it is NaN or infinite are the rows formed again with the
    care they need. ``exact`` should form its inputs again from the arguments, so that
    neither they nor what they are made of (a softmax's normalizer) are kept in memory
    for it: a value with a second user is not fused into the reduction that forms it."""
    # One max of the rows: NaN or inf if any row is (and cheaper than any(...)).
    top = jnp.max(fast)
    out: jax.Array = jax.lax.cond(
        jnp.isfinite(top), lambda: fast, lambda: jnp.where(jnp.isfinite(fast), fast, exact()))
    return out


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, and 0 (with zero gradient) where the denominator is 0."""
    zero = denominator == 0
    return jnp.where(zero, 0, numerator / jnp.where(zero, 1, denominator))


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` with gradient 0, not inf, at ``x = 0`` (NaN stays NaN)."""
    zero = x == 0
    return jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, x)))


def abs0(x: jax.Array) -> jax.Array:
    """``|x|`` with PyTorch's subgradient 0 at ``x = 0`` (``jnp.abs`` gives 1 there)."""
    return x * jnp.sign(x)


def kept(x: jax.Array, where: jax.Array | None) -> jax.Array:
    """``x`` where ``where`` holds (broadcast against it), 0 elsewhere.

    A custom rule's backward pass is linear in the cotangent (:mod:`jaxloss._rules`), so
    an entry that a mask leaves out (cotangent 0) gets gradient 0 only where its own
    derivative is finite. Its input set to 0 before the rule makes it so, whatever it
    held (NaN or inf padding); the select's transpose then gives it exactly 0."""
    if where is None:
        return x
    return jnp.where(where, x, jnp.zeros((), x.dtype))
