"""A derivative rule written once, as a custom_vjp's forward and backward pass, that
serves every mode of differentiation.

JAX cannot apply forward mode (``jax.jvp``, ``jacfwd``, ``linearize``) to a
``jax.custom_vjp``. :class:`rule` makes a ``jax.custom_jvp`` from the same pair instead:
its tangent is the transpose of the backward pass, ``t_out = (v ↦ bwd(res, v))ᵀ(t)``,
formed by ``jax.linear_transpose``; for reverse mode JAX transposes that map back, which
is the backward pass again, on the forward pass's residuals. The custom rule stays the
one source of the derivative, in both modes.

What this asks of a backward pass: it is linear in the cotangent in JAX's sense (only
products with, sums and selects of it; never a branch on its value, so ``g == 0`` cannot
mask a NaN: a row left out must be made finite by its loss before the call, see
:func:`jaxloss._math.keep_rows`), and it returns each cotangent in its input's dtype. A
scan in it is checkpointed (``jax.checkpoint`` on the body), so that transposing does
not stack the per-step intermediates that the scan exists to avoid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def _differentiable(x: Any) -> bool:
    leaves = jax.tree.leaves(x)
    return bool(leaves) and all(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
                                for leaf in leaves)


class rule:  # noqa: N801 - used as a decorator, like jax.custom_vjp
    """``@rule(nondiff_argnums=...)`` on the primal, then ``f.defvjp(fwd, bwd)`` with
    ``jax.custom_vjp``'s conventions (``fwd`` takes every argument, ``bwd`` the
    non-differentiable ones, the residuals and the cotangent)."""

    # Symbolic zeros are always on inside; the attribute mirrors jax.custom_vjp's.
    symbolic_zeros = False

    def __init__(self, nondiff_argnums: Sequence[int] = ()) -> None:
        self.nondiff_argnums = tuple(nondiff_argnums)
        self._custom: Any = None
        self.__wrapped__: Callable[..., Any] | None = None
        self.fwd: Callable[..., Any] | None = None
        self.bwd: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        if self._custom is None:  # decorating the primal
            (fun,) = args
            self.__wrapped__ = fun
            self.__doc__ = fun.__doc__
            self._custom = jax.custom_jvp(fun, nondiff_argnums=self.nondiff_argnums)
            return self
        return self._custom(*args)

    def defvjp(self, fwd: Callable[..., Any], bwd: Callable[..., Any],
               symbolic_zeros: bool = False) -> None:
        """Defines the rule (``symbolic_zeros`` is accepted for ``jax.custom_vjp``'s
        signature and must be False: the backward pass gets arrays)."""
        if symbolic_zeros:
            raise ValueError("a rule's backward pass gets arrays: symbolic_zeros=False")
        self.fwd, self.bwd = fwd, bwd
        nondiff_argnums = self.nondiff_argnums

        def jvp(*args: Any) -> tuple[Any, Any]:
            *static, primals, tangents = args
            full = list(primals)
            for position, value in sorted(zip(nondiff_argnums, static, strict=True)):
                full.insert(position, value)
            out, residuals = fwd(*full)
            # Only the inputs being differentiated enter the tangent: an input held
            # fixed (a symbolic zero) costs nothing, and its derivative, infinite at
            # an extreme, cannot turn 0 * inf into NaN.
            moving = [i for i, (p, t) in enumerate(zip(primals, tangents, strict=True))
                      if _differentiable(p) and not _zero(t)]
            if not moving:
                return out, jax.tree.map(jnp.zeros_like, out)

            def tangent_map(out: Any, residuals: Any, kept: Any) -> Any:
                def pullback(g: Any) -> tuple[Any, ...]:
                    cotangents = bwd(*static, residuals, g)
                    return tuple(_like(cotangents[i], primals[i]) for i in moving)

                return jax.linear_transpose(pullback, out)(kept)[0]

            # Checkpointed: what the backward pass forms from the residuals alone (a
            # softmax, a smoothing term: [N, V]) is formed again when reverse mode
            # transposes this map, as the backward pass would, not kept from the forward
            # pass as a residual.
            t_out = jax.checkpoint(tangent_map, prevent_cse=False)(
                out, residuals, tuple(_instantiate(tangents[i], primals[i]) for i in moving))
            return out, t_out

        self._custom.defjvp(jvp, symbolic_zeros=True)


def _zero(t: Any) -> bool:
    return all(isinstance(leaf, SymbolicZero) for leaf in jax.tree.leaves(t))


def _instantiate(t: Any, primal: Any) -> Any:
    """A tangent with its symbolic zeros made arrays (an option held fixed beside one
    that moves)."""
    return jax.tree.map(lambda x, p: jnp.zeros_like(p) if isinstance(x, SymbolicZero) else x,
                        t, primal, is_leaf=lambda x: isinstance(x, SymbolicZero))


def _like(ct: Any, primal: Any) -> Any:
    """The backward pass's cotangent for ``primal``, zeros where it returned None."""
    if ct is None:
        return jax.tree.map(jnp.zeros_like, primal)
    return jax.tree.map(
        lambda c, p: c if c is not None or p is None else jnp.zeros_like(p), ct, primal,
        is_leaf=lambda x: x is None)
