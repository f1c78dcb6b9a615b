"""Arithmetic with PyTorch's conventions at the points where the textbook form is 0 * inf
or 0 / 0: the masked or undefined term is exactly 0, with a zero gradient."""

import jax
import jax.numpy as jnp


def times(coefficient: jax.Array, value: jax.Array) -> jax.Array:
    """``coefficient * value`` with 0 * inf = 0: a term whose weight is 0 is absent.

    The backward passes form ``cotangent * derivative`` with it too, so an element
    that a mask or ``ignore_index`` removed (cotangent 0) gets gradient 0 even where
    its input is NaN or inf."""
    return jnp.where(coefficient == 0, 0, coefficient * value)


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
