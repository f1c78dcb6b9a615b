"""Gradient verification for custom_vjp losses, public so users can check their own.

Three checks, each of value and gradient, with respect to every differentiable argument
(positional ``argnums`` and keyword ``diff_kwargs``: targets, weights, temperature,
margin, bias):

- :func:`assert_vjp_matches_reference`: in float64 (enabled for its own duration),
  ``jax.vjp`` of the loss against that of a plain reference formula;
- :func:`assert_finite_differences`: ``jax.test_util.check_grads`` in float64, reverse
  mode (a custom_vjp has no forward mode);
- :func:`assert_matches_float64`: at extreme inputs, in their own dtypes (float32 up
  to 1e30, bf16 and fp16 near their largest values, ``-inf``), against a numerically
  stable reference run in float64, or against exact limits.

:func:`run_checks` applies them to :func:`builtin_cases`, every public loss and its
options; ``jaxloss check`` prints the result.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
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
    "Extreme",
    "assert_finite_differences",
    "assert_grads_finite",
    "assert_jvp_matches_reference",
    "assert_matches_float64",
    "assert_vjp_matches_reference",
    "builtin_cases",
    "run_case",
    "run_checks",
]

Loss = Callable[..., jax.Array]


def _to_float64(x: Any) -> Any:
    """A floating array as a float64 JAX array (under x64); anything else as it is."""
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
        # Converted by NumPy: jnp's conversion compiles a program per shape and dtype.
        return jnp.asarray(np.asarray(x).astype(np.float64))
    return x


def _argnums(argnums: int | Sequence[int]) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _arg_names(loss: Loss, argnums: int | Sequence[int], diff_kwargs: Sequence[str]
               ) -> tuple[str, ...]:
    """The names of the differentiated arguments, for messages."""
    try:
        names = list(inspect.signature(loss).parameters)
    except (TypeError, ValueError):
        names = []
    return tuple(names[i] if i < len(names) and not names[i].startswith("*") else f"arg {i}"
                 for i in _argnums(argnums)) + tuple(diff_kwargs)


def _bind(
    args: Sequence[Any], kwargs: dict[str, Any], argnums: int | Sequence[int],
    diff_kwargs: Sequence[str],
) -> tuple[Callable[[Loss], Callable[..., jax.Array]], list[jax.Array]]:
    """``bind(loss)`` is ``f(*primals)``: the loss of the differentiated positional
    arguments, then the differentiated keyword arguments, with the others fixed."""
    nums, names = _argnums(argnums), tuple(diff_kwargs)

    def bind(call: Loss) -> Callable[..., jax.Array]:
        def f(*primals: Any) -> jax.Array:
            full = list(args)
            for i, a in zip(nums, primals[: len(nums)], strict=True):
                full[i] = a
            return call(*full, **{**kwargs, **dict(zip(names, primals[len(nums):],
                                                       strict=True))})

        return f

    # Arrays, so that a Python scalar (a temperature) can be a primal.
    return bind, [jnp.asarray(args[i]) for i in nums] + [jnp.asarray(kwargs[k]) for k in names]


def _cotangent(out: jax.Array, seed: int) -> np.ndarray:
    """A random cotangent, so that each output is checked, not only their sum."""
    return np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)


def _tangents(primals: Sequence[jax.Array], seed: int) -> list[np.ndarray]:
    """Random tangents, one per primal, in its dtype."""
    rng = np.random.default_rng(seed + 1)
    return [rng.standard_normal(np.shape(p)).astype(np.asarray(p).dtype) for p in primals]


def _assert_within(got: Any, want: Any, bound: Any, what: str) -> None:
    """``|got - want| <= bound`` entry by entry (equal infinities too); NaN never is."""
    got = np.asarray(got).astype(np.float64)
    want = np.broadcast_to(np.asarray(want, np.float64), got.shape)
    with np.errstate(invalid="ignore"):
        close = (got == want) | (np.abs(got - want) <= bound)
    if not np.all(close):
        bad = np.argwhere(~close)[:3]
        detail = ", ".join(f"at {tuple(int(i) for i in b)} got {got[tuple(b)]:.7g} want "
                           f"{want[tuple(b)]:.7g}" for b in bad)
        raise AssertionError(f"{what}: {np.sum(~close)} of {close.size} entries differ "
                             f"({detail})")


def _compare_with_reference(
    loss: Loss, reference: Loss, args: Sequence[Any], kwargs: dict[str, Any],
    argnums: int | Sequence[int], diff_kwargs: Sequence[str], rtol: float, atol: float,
    seed: int, forward: bool = True,
) -> float:
    names = _arg_names(loss, argnums, diff_kwargs)
    with jax.enable_x64(True):
        args64 = tuple(_to_float64(a) for a in args)
        kwargs64 = {k: _to_float64(v) for k, v in kwargs.items()}
        bind, primals = _bind(args64, kwargs64, argnums, diff_kwargs)
        out, pullback = jax.vjp(bind(loss), *primals)
        # Jitted: one compilation, where the eager reference would compile each operation.
        ref_out, ref_pullback = jax.vjp(jax.jit(bind(reference)), *primals)
        cotangent = _cotangent(out, seed)
        grads, ref_grads = pullback(cotangent), ref_pullback(cotangent)
    ref_out, ref_grads = np.asarray(ref_out), [np.asarray(r) for r in ref_grads]
    _assert_within(out, ref_out, atol + rtol * np.abs(ref_out), "value")
    errors = []
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        _assert_within(g, r, atol + rtol * np.abs(r), f"gradient of {name}")
        errors.append(float(np.max(np.abs(np.asarray(g) - r), initial=0.0)
                            / max(float(np.max(np.abs(r), initial=0.0)), 1e-300)))
    if forward:
        _compare_forward_with_reference(loss, reference, args, kwargs, argnums, diff_kwargs,
                                        rtol, atol, seed)
    return max(errors)


def _compare_forward_with_reference(
    loss: Loss, reference: Loss, args: Sequence[Any], kwargs: dict[str, Any],
    argnums: int | Sequence[int], diff_kwargs: Sequence[str], rtol: float, atol: float,
    seed: int,
) -> None:
    """Forward mode in float64 along random tangents (the same rule, transposed:
    :mod:`jaxloss._rules`) against the reference's own ``jax.jvp``. The bound is
    relative to the tangent's largest entry: an entry may cancel to near 0."""
    with jax.enable_x64(True):
        bind, primals = _bind(tuple(_to_float64(a) for a in args),
                              {k: _to_float64(v) for k, v in kwargs.items()}, argnums,
                              diff_kwargs)
        tangents = tuple(jnp.asarray(t) for t in _tangents(primals, seed))
        t_out = np.asarray(jax.jvp(bind(loss), tuple(primals), tangents)[1])
        ref_t = np.asarray(jax.jvp(jax.jit(bind(reference)), tuple(primals), tangents)[1])
    scale = np.max(np.abs(ref_t), initial=0.0)
    _assert_within(t_out, ref_t, atol + rtol * (np.abs(ref_t) + scale),
                   "forward-mode tangent (jax.jvp)")


def assert_vjp_matches_reference(
    loss: Loss,
    reference: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    diff_kwargs: Sequence[str] = (),
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int = 0,
    **kwargs: Any,
) -> float:
    """Asserts that ``loss``'s value and gradient equal ``reference``'s in float64.

    Both are pulled back along the same random cotangent (so per-example outputs are
    checked row by row, not only through their sum), with respect to the positional
    arguments ``argnums`` and the keyword arguments ``diff_kwargs``. Floating
    arguments are cast to float64; ``reference`` should be the plain textbook formula,
    differentiated by ``jax.vjp``. Each entry must satisfy
    ``|g - g_ref| <= atol + rtol |g_ref|``. Reverse mode only (a ``jax.custom_vjp`` of
    your own passes); :func:`assert_jvp_matches_reference` checks forward mode.

    Returns:
      The largest relative error, ``max|g - g_ref| / max|g_ref|`` over the arguments.
    """
    return _compare_with_reference(loss, reference, args, kwargs, argnums, diff_kwargs, rtol,
                                   atol, seed, forward=False)


def assert_jvp_matches_reference(
    loss: Loss,
    reference: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    diff_kwargs: Sequence[str] = (),
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int = 0,
    **kwargs: Any,
) -> None:
    """Asserts that ``jax.jvp`` of ``loss`` equals that of ``reference`` in float64,
    along random tangents of the positional arguments ``argnums`` and the keyword
    arguments ``diff_kwargs``: each entry within ``atol + rtol (|t_ref| + max|t_ref|)``
    (a tangent may cancel to near 0 in one entry)."""
    _compare_forward_with_reference(loss, reference, args, kwargs, argnums, diff_kwargs,
                                    rtol, atol, seed)


def _finite_differences(
    loss: Loss, args: Sequence[Any], kwargs: dict[str, Any], argnums: int | Sequence[int],
    diff_kwargs: Sequence[str], order: int, eps: float, atol: float, rtol: float,
    modes: Sequence[str] = ("fwd", "rev"),
) -> None:
    with jax.enable_x64(True):
        args64 = tuple(_to_float64(a) for a in args)
        kwargs64 = {k: _to_float64(v) for k, v in kwargs.items()}
        bind, primals = _bind(args64, kwargs64, argnums, diff_kwargs)
        check_grads(bind(loss), tuple(primals), order=order, modes=list(modes),
                    eps=eps, atol=atol, rtol=rtol)


def assert_finite_differences(
    loss: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    diff_kwargs: Sequence[str] = (),
    order: int = 2,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    modes: Sequence[str] = ("fwd", "rev"),
    **kwargs: Any,
) -> None:
    """``jax.test_util.check_grads(..., order, modes)`` in float64, with respect to the
    positional arguments ``argnums`` and the keyword arguments ``diff_kwargs``. Order 2
    checks the rule's own derivative (``jax.hessian`` relies on it), by default in both
    modes; ``modes=("rev",)`` for a loss of your own that is a ``jax.custom_vjp``
    (which JAX cannot differentiate in forward mode).
    """
    _finite_differences(loss, args, kwargs, argnums, diff_kwargs, order, eps, atol, rtol,
                        modes)


def assert_grads_finite(
    loss: Loss, *args: Any, argnums: int | Sequence[int] = 0, **kwargs: Any
) -> None:
    """Asserts that the loss and its gradient are finite at ``args`` (in their own
    dtypes). A weak check: prefer :func:`assert_matches_float64`, which also checks
    that they are the right values."""
    bind, primals = _bind(args, kwargs, argnums, ())
    out, pullback = jax.vjp(bind(loss), *primals)
    chex.assert_tree_all_finite(out)
    chex.assert_tree_all_finite(pullback(_cotangent(out, 0)))


def _rtol(dtype: Any) -> float:
    """About a hundred units in the last place of float32; a few of bf16 and fp16 (the
    gradient comes back rounded to the input's dtype)."""
    bits = jnp.dtype(dtype).itemsize * 8
    return {16: 1e-2, 32: 1e-5}.get(bits, 1e-9)


def _assert_close(got: Any, want: Any, rtol: float, *, gradient: bool, what: str) -> None:
    """``|got - want| <= rtol (|want| + scale)`` entry by entry, NaN never close.

    ``want`` beyond the range of ``got``'s dtype must be its correct rounding, +-inf;
    below its smallest normal number it may be flushed to 0 (XLA on CPU does). A
    value's scale is 1 (a loss is a sum of terms of order 1 and of its own size). A
    gradient's is its largest entry along the last axis, or over the whole array for a
    vector or scalar: ``softmax - target`` cancels to the precision of the row's largest
    terms, and an entry far below them (a probability of 1e-30) is only known to that.
    (So a row whose exact gradient cancels to 0 must come out exactly 0: an extreme
    should not be one, or should give it as an exact limit.)
    """
    info = jnp.finfo(got.dtype)
    want = np.broadcast_to(np.asarray(want, np.float64), got.shape)
    overflow = np.abs(want) > float(info.max)
    want = np.where(overflow, np.copysign(np.inf, want), want)
    if not gradient:
        scale = 1.0
    elif want.ndim >= 2:
        scale = np.max(np.abs(want), axis=-1, keepdims=True, where=~overflow, initial=0.0)
    else:
        scale = np.max(np.abs(want), where=~overflow, initial=0.0)
    _assert_within(got, want, rtol * (np.abs(want) + scale) + float(info.tiny),
                   f"{what} (rtol {rtol:g})")


def _canonical(x: Any) -> Any:
    """NumPy arrays as JAX arrays in the current precision (float64 -> float32 without
    x64), so that the float64 reference sees exactly the loss's inputs."""
    return jnp.asarray(x) if isinstance(x, np.ndarray | np.generic | jax.Array) else x


def _compare_at_extreme(
    loss: Loss, reference: Loss, args: Sequence[Any], kwargs: dict[str, Any],
    argnums: int | Sequence[int], diff_kwargs: Sequence[str],
    expected: tuple[Any, Sequence[Any]] | None, rtol: float | None, seed: int,
    forward: bool = True,
) -> None:
    names = _arg_names(loss, argnums, diff_kwargs)
    args = tuple(_canonical(a) for a in args)
    kwargs = {k: _canonical(v) for k, v in kwargs.items()}
    bind, primals = _bind(args, kwargs, argnums, diff_kwargs)
    out, pullback = jax.vjp(bind(loss), *primals)
    if expected is None:
        cotangent = _cotangent(out, seed)
        with jax.enable_x64(True):
            bind64, primals64 = _bind(tuple(_to_float64(a) for a in args),
                                      {k: _to_float64(v) for k, v in kwargs.items()},
                                      argnums, diff_kwargs)
            want, ref_pullback = jax.vjp(jax.jit(bind64(reference)), *primals64)
            want_grads = ref_pullback(cotangent.astype(np.float64))
    else:
        cotangent = np.ones(out.shape, out.dtype)
        want, want_grads = expected
    grads = pullback(cotangent)
    if expected is not None and len(_argnums(argnums)) <= len(want_grads) < len(grads):
        # Exact limits given for the first arguments only: the others' gradients are
        # compared at the case's own inputs.
        grads, names = grads[: len(want_grads)], names[: len(want_grads)]
    if len(want_grads) != len(grads):
        raise ValueError(f"expected {len(grads)} gradients, got {len(want_grads)}")
    _assert_close(out, want, rtol or _rtol(out.dtype), gradient=False, what="value")
    for name, g, w in zip(names, grads, want_grads, strict=True):
        _assert_close(g, w, rtol or _rtol(g.dtype), gradient=True, what=f"gradient of {name}")
    if forward:
        _assert_forward_is_transpose(bind(loss), primals, names, cotangent, grads, seed, rtol)


def _assert_forward_is_transpose(
    f: Callable[..., jax.Array], primals: Sequence[jax.Array], names: Sequence[str],
    cotangent: np.ndarray, grads: Sequence[Any], seed: int, rtol: float | None,
) -> None:
    r"""Forward mode at the inputs' own dtypes, by the dot-product test against the
    gradients just checked: :math:`\langle c, J_i t_i\rangle = \langle J_i^\top c,
    t_i\rangle` for a random tangent :math:`t_i` of each argument :math:`i` (to
    ``rtol`` of the sum of the terms' magnitudes; an infinite or NaN tangent where the
    gradient is finite fails). One argument at a time, as the gradients are compared: at
    logits of 1e30 the tangents of the hidden states and of the weight meet in one
    tangent of the logits, where the smaller is below the larger's precision (in any
    forward mode). An argument whose gradient is not finite is left out: a generic
    tangent's image is then inf or NaN."""
    tangents = _tangents(primals, seed)
    moving = [i for i, g in enumerate(grads) if np.all(np.isfinite(np.asarray(g, np.float64)))]

    def along(ps: Sequence[jax.Array], i: int, x: jax.Array) -> jax.Array:
        return f(*ps[:i], x, *ps[i + 1:])

    # One compilation; the primals are its arguments, traced as in jax.vjp (a concrete
    # one would meet a loss's checks of concrete values).
    @jax.jit
    def forward(ps: list[jax.Array], ts: list[jax.Array]) -> list[jax.Array]:
        return [jax.jvp(functools.partial(along, ps, i), (ps[i],), (t,))[1]
                for i, t in zip(moving, ts, strict=True)]

    c = np.asarray(cotangent, np.float64)
    t_outs = forward(list(primals), [jnp.asarray(tangents[i]) for i in moving])
    for i, t_out in zip(moving, t_outs, strict=True):
        terms = np.asarray(grads[i], np.float64) * np.asarray(tangents[i], np.float64)
        products = c * np.asarray(t_out, np.float64)
        lhs, rhs = np.sum(products), np.sum(terms)
        scale = np.sum(np.abs(products)) + np.sum(np.abs(terms))
        tol = rtol or _rtol(np.asarray(grads[i]).dtype)
        _assert_within(lhs, rhs, tol * scale + 1e-30,
                       f"forward mode in {names[i]}: <c, J t> against <J^T c, t>")


def assert_matches_float64(
    loss: Loss,
    reference: Loss,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    diff_kwargs: Sequence[str] = (),
    expected: tuple[Any, Sequence[Any]] | None = None,
    rtol: float | None = None,
    seed: int = 0,
    forward: bool = True,
    **kwargs: Any,
) -> None:
    """Asserts that the loss's value and gradient at ``args`` *in their own dtypes*
    (bf16, extreme magnitudes) are the right ones.

    The gradient, with respect to the positional arguments ``argnums`` and the keyword
    arguments ``diff_kwargs``, is pulled back along a random cotangent and compared
    with that of ``reference`` run in float64 on the same inputs: the reference must be
    numerically stable there (a log-sum-exp with its max subtracted, a softplus via
    ``logaddexp``). Or, with ``expected=(value, grads)``, with exact limits: the value
    and the gradient of ``sum(loss)`` (``grads`` of the positional ``argnums``, or of
    those and then ``diff_kwargs``). The tolerance is relative, per dtype of each
    output (``rtol``: 1e-5 for float32, 1e-2 for bf16 and fp16), scaled for a gradient
    to its row's largest entry; NaN is never close, and a result beyond the dtype's
    range must be +-inf. With ``forward`` (default) also forward mode there, argument by
    argument, by the dot-product test against the gradient just checked; False for a
    ``jax.custom_vjp`` of your own.
    """
    _compare_at_extreme(loss, reference, args, kwargs, argnums, diff_kwargs, expected, rtol,
                        seed, forward)


# ---------------------------------------------------------------------------------
# Cases and their results.


@dataclasses.dataclass(frozen=True)
class Extreme:
    """Inputs at the edge of their range for :func:`assert_matches_float64`: ``args``
    replace the case's positional arguments, ``kwargs`` update its keyword arguments,
    and ``expected`` (the value and the gradient of ``sum(loss)``) gives exact limits;
    without it the case's reference is run in float64. ``diff_kwargs``, where given,
    replaces the case's: for a gradient that the input dtype cannot hold to the
    tolerance there (it is still compared in float64 at the case's own inputs)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    expected: tuple[Any, tuple[Any, ...]] | None = None
    diff_kwargs: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One loss (and option set) to verify.

    ``reference`` is the textbook formula, numerically stable at the ``extremes`` (it
    is run in float64 there). ``argnums`` and ``diff_kwargs`` name every argument to
    differentiate. A plain tuple among ``extremes`` is ``Extreme(args)``.
    ``fd_order`` is the order of the finite differences; by default 2 for a custom_vjp
    (which also checks the backward pass's own derivative, as ``jax.hessian`` uses it)
    and 1 otherwise (the second derivative is JAX's own autodiff)."""

    name: str
    loss: Loss
    reference: Loss
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    extremes: tuple[Extreme | tuple[Any, ...], ...] = ()
    custom_vjp: bool = True
    argnums: tuple[int, ...] = (0,)
    diff_kwargs: tuple[str, ...] = ()
    fd_order: int | None = None

    @property
    def differentiates(self) -> tuple[str, ...]:
        """The names of the differentiated arguments."""
        return _arg_names(self.loss, self.argnums, self.diff_kwargs)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What :func:`run_case` found: whether the value and gradient match the float64
    reference (and the largest relative gradient error), the finite differences, and
    every extreme; ``error`` says how each failed."""

    name: str
    custom_vjp: bool
    max_rel_error: float
    matches_reference: bool
    finite_differences: bool
    extremes: bool
    differentiates: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.matches_reference and self.finite_differences and self.extremes


def _failure(stage: str, e: Exception) -> str:
    message = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
    return f"{stage}: {' '.join(message.split())[:300]}"


def run_case(case: CheckCase) -> CheckResult:
    """Runs the three checks on one case (every extreme); a check that raises is
    reported in the result, not raised."""
    diff, errors, rel = (case.argnums, case.diff_kwargs), [], [float("nan")]

    def attempt(stage: str, check: Callable[[], Any]) -> bool:
        try:
            check()
            return True
        except Exception as e:  # noqa: BLE001 (a wrong rule may raise anything)
            errors.append(_failure(stage, e))
            return False

    reference = attempt("vs the float64 reference", lambda: rel.append(_compare_with_reference(
        case.loss, case.reference, case.args, case.kwargs, *diff, rtol=1e-7, atol=1e-10,
        seed=0)))
    order = case.fd_order or (2 if case.custom_vjp else 1)
    fd = attempt("finite differences", lambda: _finite_differences(
        case.loss, case.args, case.kwargs, *diff, order=order, eps=1e-6, atol=1e-5,
        rtol=1e-5))
    extremes = [e if isinstance(e, Extreme) else Extreme(tuple(e)) for e in case.extremes]
    def at_extreme(e: Extreme) -> Callable[[], None]:
        return lambda: _compare_at_extreme(
            case.loss, case.reference, e.args, {**case.kwargs, **e.kwargs}, case.argnums,
            case.diff_kwargs if e.diff_kwargs is None else e.diff_kwargs,
            expected=e.expected, rtol=None, seed=0)

    at_extremes = [attempt(f"extreme {i}", at_extreme(e)) for i, e in enumerate(extremes)]
    return CheckResult(case.name, case.custom_vjp, rel[-1], reference, fd, all(at_extremes),
                       case.differentiates, "; ".join(errors))


def run_checks(cases: Sequence[CheckCase] | None = None) -> list[CheckResult]:
    """Runs every check over ``cases`` (default: :func:`builtin_cases`)."""
    return [run_case(case) for case in (builtin_cases() if cases is None else cases)]


# ---------------------------------------------------------------------------------
# References of the built-in losses, in the form the float64 checks need: the textbook
# formula, written so that it stays exact at the extremes (the max subtracted before
# exp, (m - x) + log s rather than lse - x, softplus via logaddexp) and with the
# library's conventions (0 for a class that does not exist, PyTorch's subgradient 0 of
# a norm at 0). None of them calls jaxloss.


def _reduce(
    losses: jax.Array, reduction: str = "none", where: jax.Array | None = None,
    weights: jax.Array | None = None, axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    """``"none"``/``"sum"``/``"mean"`` of ``losses`` over the entries ``where`` selects;
    ``"mean"`` divides by the sum of ``weights`` there (PyTorch's weighted mean)."""
    if where is not None:
        where = jnp.broadcast_to(where, losses.shape)
        losses = jnp.where(where, losses, 0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses, axis=axis)
    w = jnp.ones(losses.shape) if weights is None else jnp.broadcast_to(weights, losses.shape)
    if where is not None:
        w = jnp.where(where, w, 0)
    return jnp.sum(losses, axis=axis) / jnp.sum(w, axis=axis)


def _softplus(x: jax.Array) -> jax.Array:
    return jnp.logaddexp(x, 0.0)


def _abs0(x: jax.Array) -> jax.Array:
    """``|x|`` with the subgradient 0 at 0."""
    return x * jnp.sign(x)


def _norm(x: jax.Array) -> jax.Array:
    """The 2-norm over the last axis, with the subgradient 0 at 0."""
    squares = jnp.sum(x * x, axis=-1)
    zero = squares == 0
    return jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, squares)))


def _nll(x: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``-log softmax(x)`` over the last axis as ``(m - x) + log s``; 0, with a zero
    gradient, on the classes that do not exist (logit ``-inf``, or not ``valid``)."""
    exists = x > -jnp.inf if valid is None else valid & (x > -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(jnp.where(exists, x, -jnp.inf), axis=-1,
                                      keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    safe = jnp.where(exists, x, m)
    total = jnp.sum(jnp.where(exists, jnp.exp(safe - m), 0), axis=-1, keepdims=True)
    log_s = jnp.log(jnp.where(total > 0, total, 1))
    return jnp.where(exists, (m - safe) + log_s, 0), exists


def _class_mask(where: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """optax's ``where``: a mask of classes (``x.shape``) or of rows (the batch shape)."""
    if where is None:
        return None
    return jnp.broadcast_to(where if where.ndim == x.ndim else where[..., None], x.shape)


def _ref_squared(
    p: jax.Array, t: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    return _reduce((p - t) ** 2, reduction, where)


def _ref_l2(
    p: jax.Array, t: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    return _reduce(0.5 * (p - t) ** 2, reduction, where)


def _ref_huber(
    p: jax.Array, t: jax.Array, *, delta: float = 1.0, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    e = jnp.abs(p - t)
    return _reduce(jnp.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta)), reduction,
                   where)


def _ref_mse(
    p: jax.Array, t: jax.Array, *, axis: int | tuple[int, ...] | None = None,
    where: jax.Array | None = None, **_: object,
) -> jax.Array:
    return _reduce((p - t) ** 2, "mean", where, axis=axis)


def _ref_mae(
    p: jax.Array, t: jax.Array, *, axis: int | tuple[int, ...] | None = None,
    where: jax.Array | None = None, **_: object,
) -> jax.Array:
    return _reduce(_abs0(p - t), "mean", where, axis=axis)


def _ref_sigmoid_bce(
    x: jax.Array, y: jax.Array, *, pos_weight: float = 1.0, label_smoothing: float = 0.0,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    losses = pos_weight * y * _softplus(-x) + (1 - y) * _softplus(x)
    return _reduce(losses, reduction, where)


def _ref_bce(
    p: jax.Array, y: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    """PyTorch's BCELoss: each log clamped at -100 (its gradient rule differs from this
    formula's derivative only where ``p (1 - p) < 1e-12``: see :func:`_bce_limits`)."""
    losses = -(y * jnp.maximum(jnp.log(p), -100) + (1 - y) * jnp.maximum(jnp.log1p(-p), -100))
    return _reduce(losses, reduction, where)


def _bce_limits(p: np.ndarray, y: np.ndarray) -> tuple[Any, tuple[Any, Any]]:
    """BCELoss's value and PyTorch's gradients (of the sum) at probabilities 0, 1 and
    near them: ``(p - y) / max(p (1 - p), 1e-12)`` and ``log(1 - p) - log p``, each log
    clamped at -100."""
    p, y = p.astype(np.float64), y.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_not_p = np.maximum(np.log(p), -100), np.maximum(np.log1p(-p), -100)
    d_p = (p - y) / np.maximum(p * (1 - p), float(np.float32(1e-12)))
    return -(y * log_p + (1 - y) * log_not_p), (d_p, log_not_p - log_p)


def _ref_softmax_ce(
    x: jax.Array, y: jax.Array, *, where: jax.Array | None = None, label_smoothing: float = 0.0,
    reduction: str = "none", **_: object,
) -> jax.Array:
    valid = _class_mask(where, x)
    nll, exists = _nll(x, valid)
    uniform = exists / jnp.maximum(jnp.sum(exists, axis=-1, keepdims=True), 1)
    q = (1 - label_smoothing) * y + label_smoothing * uniform
    rows = None if valid is None else jnp.any(valid, axis=-1)
    return _reduce(jnp.sum(q * nll, axis=-1), reduction, rows)


def _ref_integer_ce(
    x: jax.Array, labels: jax.Array, *, where: jax.Array | None = None,
    ignore_index: int | None = None, label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    """PyTorch's CrossEntropyLoss; ``where`` is a mask of rows."""
    keep = where
    if ignore_index is not None:
        ignored = labels == ignore_index
        keep = ~ignored if keep is None else keep & ~ignored
        labels = jnp.where(ignored, 0, labels)
    c = x.shape[-1]
    w = jnp.ones(c) if class_weights is None else class_weights
    nll, exists = _nll(x)
    uniform = exists / jnp.sum(exists, axis=-1, keepdims=True)
    q = (1 - label_smoothing) * jax.nn.one_hot(labels, c, dtype=x.dtype) + (
        label_smoothing * uniform)
    return _reduce(jnp.sum(w * q * nll, axis=-1), reduction, keep, w[labels])


def _ref_categorical_ce(
    p: jax.Array, y: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    """Keras: renormalized, clipped to [1e-7, 1 - 1e-7]; ``where`` drops classes first."""
    rows = None
    valid = _class_mask(where, p)
    if valid is not None:
        rows = jnp.any(valid, axis=-1, keepdims=True)
        p = jnp.where(valid, p, jnp.where(rows, 0, 1))
        y = jnp.where(valid, y, 0)
        rows = rows[..., 0]
    ratio = jnp.clip(p / jnp.sum(p, axis=-1, keepdims=True), 1e-7, 1 - 1e-7)
    return _reduce(-jnp.sum(y * jnp.log(ratio), axis=-1), reduction, rows)


def _ref_distance(
    a: jax.Array, b: jax.Array, *, metric: str = "euclidean", **_: object,
) -> jax.Array:
    if metric == "euclidean":
        return _norm(a - b)
    if metric == "squared_euclidean":
        return jnp.sum((a - b) ** 2, axis=-1)
    norms = _norm(a) * _norm(b)  # cosine: similarity 0 where a vector is 0
    zero = norms == 0
    return 1 - jnp.where(zero, 0, jnp.sum(a * b, axis=-1) / jnp.where(zero, 1, norms))


def _ref_contrastive_from_distance(
    d: jax.Array, y: jax.Array, *, margin: float = 1.0, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    hinge = jnp.maximum(margin - d, 0)
    return _reduce(0.5 * (y * d**2 + (1 - y) * hinge**2), reduction, where)


def _ref_contrastive(
    a: jax.Array, b: jax.Array, y: jax.Array, *, metric: str = "euclidean", **kwargs: Any,
) -> jax.Array:
    return _ref_contrastive_from_distance(_ref_distance(a, b, metric=metric), y, **kwargs)


def _ref_triplet(
    a: jax.Array, p: jax.Array, n: jax.Array, *, margin: float = 1.0, norm_degree: int = 2,
    eps: float = 1e-6, swap: bool = False, reduction: str = "none", **_: object,
) -> jax.Array:
    def dist(x: jax.Array, y: jax.Array) -> jax.Array:
        z = x - y + eps
        return _norm(z) if norm_degree == 2 else jnp.sum(_abs0(z), axis=-1)

    negative = dist(a, n)
    if swap:
        negative = jnp.minimum(negative, dist(p, n))
    violation = dist(a, p) - negative + margin
    return _reduce(jnp.where(violation < 0, 0, violation), reduction)


def _masked_lse(s: jax.Array, mask: jax.Array) -> jax.Array:
    """Row log-sum-exp over ``mask``, the max subtracted; ``-inf`` for an empty row."""
    m = jax.lax.stop_gradient(jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, s, m) - m), 0), axis=-1)
    empty = total == 0
    return jnp.where(empty, -jnp.inf, m[..., 0] + jnp.log(jnp.where(empty, 1, total)))


def _ref_ntxent(
    e: jax.Array, labels: jax.Array, temperature: float = 0.07, **_: object,
) -> jax.Array:
    """optax's NT-Xent: the mean over positive pairs of ``-log(e^s / (e^s + negatives))``."""
    unit = e / _norm(e)[:, None]
    s = jnp.matmul(unit, unit.T, precision="highest") / temperature
    same = labels[:, None] == labels[None, :]
    positive = same & ~jnp.eye(len(labels), dtype=bool)
    per_pair = jnp.logaddexp(s, _masked_lse(s, ~same)[:, None]) - s
    count = jnp.sum(positive)
    return jnp.sum(jnp.where(positive, per_pair, 0)) / jnp.maximum(count, 1)


def _lse_terms(s: jax.Array, diagonal: jax.Array, axis: int) -> jax.Array:
    """``lse(s) - diagonal`` along ``axis`` as ``(m - diagonal) + log s``."""
    m = jax.lax.stop_gradient(jnp.max(s, axis=axis, keepdims=True))
    log_s = jnp.log(jnp.sum(jnp.exp(s - m), axis=axis))
    return (jnp.squeeze(m, axis) - diagonal) + log_s


def _ref_info_nce(
    q: jax.Array, k: jax.Array, *, temperature: float = 0.07, symmetric: bool = False,
    reduction: str = "none", **_: object,
) -> jax.Array:
    s = jnp.matmul(q, k.T, precision="highest") / temperature
    losses = _lse_terms(s, jnp.diagonal(s), 1)
    if symmetric:
        losses = 0.5 * (losses + _lse_terms(s, jnp.diagonal(s), 0))
    return _reduce(losses, reduction)


def _ref_siglip(
    x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array, *, reduction: str = "mean",
    **_: object,
) -> jax.Array:
    z = jnp.matmul(x, y.T, precision="highest") * t + b
    sign = 2 * jnp.eye(len(x)) - 1
    return _reduce(jnp.sum(_softplus(-sign * z), axis=1), reduction)  # -log sigmoid


def _ref_linear_ce(
    h: jax.Array, w: jax.Array, labels: jax.Array, *, bias: jax.Array | None = None,
    **kwargs: Any,
) -> jax.Array:
    x = jnp.matmul(h, w, precision="highest")
    return _ref_integer_ce(x if bias is None else x + bias, labels, **kwargs)


def _axes_of(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in (axis if isinstance(axis, tuple) else (axis,)))


def _reduce_rows(
    terms: jax.Array, axis: int | tuple[int, ...] | None, where: jax.Array | None,
    reduction: str,
) -> jax.Array:
    """optax's sum over ``axis`` of the selected elements, then ``reduction`` over the
    examples with an element selected."""
    axes = _axes_of(axis, terms.ndim)
    if where is None:
        return _reduce(jnp.sum(terms, axis=axes), reduction)
    where = jnp.broadcast_to(where, terms.shape)
    return _reduce(jnp.sum(jnp.where(where, terms, 0), axis=axes), reduction,
                   jnp.any(where, axis=axes))


def _xlogy_terms(lp: jax.Array, t: jax.Array) -> jax.Array:
    """``t (log t - lp)``, 0 (with gradient 0) where ``t = 0``."""
    zero = t == 0
    safe_t = jnp.where(zero, 1, t)
    return jnp.where(zero, 0, safe_t * (jnp.log(safe_t) - jnp.where(zero, 0, lp)))


def _ref_kl(
    lp: jax.Array, t: jax.Array, axis: int | tuple[int, ...] | None = -1,
    where: jax.Array | None = None, *, reduction: str = "none", **_: object,
) -> jax.Array:
    return _reduce_rows(_xlogy_terms(lp, t), axis, where, reduction)


def _ref_kl_log_targets(
    lp: jax.Array, lt: jax.Array, axis: int | tuple[int, ...] | None = -1,
    where: jax.Array | None = None, *, reduction: str = "none", **_: object,
) -> jax.Array:
    zero = lt == -jnp.inf
    safe_lt = jnp.where(zero, 0, lt)
    terms = jnp.where(zero, 0, jnp.exp(safe_lt) * (safe_lt - jnp.where(zero, 0, lp)))
    return _reduce_rows(terms, axis, where, reduction)


def _ref_generalized_kl(
    lp: jax.Array, t: jax.Array, axis: int | tuple[int, ...] | None = -1,
    where: jax.Array | None = None, *, reduction: str = "none", **_: object,
) -> jax.Array:
    return _reduce_rows(_xlogy_terms(lp, t) + jnp.exp(lp) - t, axis, where, reduction)


def _ref_log_cosh(
    p: jax.Array, t: jax.Array | None = None, *, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    e = p if t is None else p - t
    return _reduce(jnp.logaddexp(e, -e) - jnp.log(2.0), reduction, where)


def _ref_cosine(
    a: jax.Array, b: jax.Array, *, epsilon: float = 0.0, axis: int | tuple[int, ...] | None = -1,
    where: jax.Array | None = None, reduction: str = "none", distance: bool = False, **_: object,
) -> jax.Array:
    axes = _axes_of(axis, jnp.broadcast_shapes(a.shape, b.shape).__len__())
    if where is not None:
        a, b = jnp.where(where, a, 0), jnp.where(where, b, 0)

    def unit(x: jax.Array) -> jax.Array:
        squares = jnp.sum(x * x, axis=axes, keepdims=True)
        zero = squares == 0  # a zero vector: similarity 0, gradient 0 (epsilon 0)
        norm = jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, squares)))
        norm = jnp.maximum(norm, jnp.sqrt(epsilon))
        none = norm == 0
        return jnp.where(none, 0, x / jnp.where(none, 1, norm))

    s = jnp.sum(unit(a) * unit(b), axis=axes)
    rows = None if where is None else jnp.any(jnp.broadcast_to(where, a.shape), axis=axes)
    return _reduce(1 - s if distance else s, reduction, rows)


def _ref_cosine_distance(a: jax.Array, b: jax.Array, **kwargs: Any) -> jax.Array:
    return _ref_cosine(a, b, distance=True, **kwargs)


def _ref_hinge(
    p: jax.Array, t: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    z = 1 - p * t
    return _reduce(jnp.where(z > 0, z, 0), reduction, where)


def _ref_perceptron(
    p: jax.Array, t: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    z = -p * t
    return _reduce(jnp.where(z > 0, z, 0), reduction, where)


def _ref_multiclass_hinge(
    s: jax.Array, labels: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    perceptron: bool = False, **_: object,
) -> jax.Array:
    one_hot = jax.nn.one_hot(labels, s.shape[-1], dtype=s.dtype)
    top = jnp.max(s if perceptron else s + 1 - one_hot, axis=-1)
    return _reduce(top - jnp.sum(s * one_hot, axis=-1), reduction, where)


def _ref_multiclass_perceptron(s: jax.Array, labels: jax.Array, **kwargs: Any) -> jax.Array:
    return _ref_multiclass_hinge(s, labels, perceptron=True, **kwargs)


def _ref_focal(
    x: jax.Array, y: jax.Array, *, alpha: jax.Array | None = None, gamma: float = 2.0,
    where: jax.Array | None = None, reduction: str = "none", **_: object,
) -> jax.Array:
    """The textbook focal loss: alpha_t (1 - p_t)^gamma CE (moderate logits only)."""
    p = jax.nn.sigmoid(x)
    ce = y * _softplus(-x) + (1 - y) * _softplus(x)
    losses = ce * ((1 - y) * p + y * (1 - p)) ** gamma
    if alpha is not None:
        losses = (alpha * y + (1 - alpha) * (1 - y)) * losses
    return _reduce(losses, reduction, where)


def _ref_poly(
    x: jax.Array, y: jax.Array, *, epsilon: float = 2.0, where: jax.Array | None = None,
    reduction: str = "none", **_: object,
) -> jax.Array:
    valid = _class_mask(where, x)
    nll, exists = _nll(x, valid)
    p = jnp.where(exists, jnp.exp(-nll), 0)
    y = jnp.where(exists, y, 0) if valid is not None else y
    rows = None if valid is None else jnp.any(valid, axis=-1)
    return _reduce(jnp.sum(y * nll, axis=-1) + epsilon * jnp.sum(y * (1 - p), axis=-1),
                   reduction, rows)


def _ref_smooth_labels(
    y: jax.Array, alpha: jax.Array, *, where: jax.Array | None = None, **_: object,
) -> jax.Array:
    if where is None:
        return (1 - alpha) * y + alpha / y.shape[-1]
    count = jnp.sum(jnp.broadcast_to(where, y.shape), axis=-1, keepdims=True)
    return (1 - alpha) * y + jnp.where(count > 0, alpha / jnp.maximum(count, 1), 0)


# ---------------------------------------------------------------------------------
# The built-in cases.


def _ref_dice(
    x: jax.Array, t: jax.Array, *, class_weights: jax.Array | None = None, smooth: float = 1.0,
    alpha: float = 0.5, beta: float = 0.5, apply_softmax: bool = True, reduction: str = "mean",
    ignore_background: bool = False, axis: int | tuple[int, ...] | None = None, **_: object,
) -> jax.Array:
    """Soft Dice/Tversky per class (optax's), 0 where it is 0/0 (``smooth = 0`` and
    nothing predicted or targeted), as the limit ``smooth -> 0``."""
    if x.ndim == t.ndim - 1:
        x = x[..., None]
    if t.ndim == x.ndim - 1:
        t = t[..., None]
    if not apply_softmax:
        p = x
    elif x.shape[-1] == 1:
        p = jax.nn.sigmoid(x)
    else:
        e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
        p = e / jnp.sum(e, axis=-1, keepdims=True)
    axes = tuple(range(1, x.ndim - 1)) if axis is None else _axes_of(axis, x.ndim)
    i, ps, ts = (jnp.sum(v, axis=axes) for v in (p * t, p, t))
    num = i + smooth
    den = i + alpha * (ps - i) + beta * (ts - i) + smooth
    zero = (num == 0) & (den == 0)
    loss = jnp.where(zero, 0, 1 - jnp.where(zero, 0, num) / jnp.where(zero, 1, den))
    if class_weights is not None:
        loss = loss * class_weights
    if ignore_background and x.shape[-1] > 1:
        loss = loss[..., 1:]
    if reduction == "none":
        return loss
    return jnp.sum(loss, axis=-1) / (1 if reduction == "sum" else loss.shape[-1])


def _ref_binary_dice(
    x: jax.Array, t: jax.Array, *, smooth: float = 1.0, apply_sigmoid: bool = True, **_: object,
) -> jax.Array:
    if x.ndim == t.ndim and x.shape[-1] != 1:
        x, t = x[..., None], t[..., None]
    return _ref_dice(x, t, smooth=smooth, apply_softmax=apply_sigmoid)


def _ref_generalized_dice(
    x: jax.Array, t: jax.Array, *, smooth: float = 1.0, apply_softmax: bool = True,
    ignore_background: bool = False, **_: object,
) -> jax.Array:
    f = jnp.sum(t, axis=tuple(range(t.ndim - 1)))
    w = 1 / (f * f + 1e-7)
    w = w * (w.shape[0] / jnp.sum(w))
    return jnp.mean(_ref_dice(x, t, class_weights=w, smooth=smooth,
                              apply_softmax=apply_softmax, reduction="none",
                              ignore_background=ignore_background))


def _ref_sparsemax(
    x: jax.Array, labels: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    z = jnp.where(labels != 0, -x, x)
    return _reduce(jnp.where(z <= -1, 0, jnp.where(z >= 1, z, (z + 1) ** 2 / 4)), reduction,
                   where)


def _ref_multiclass_sparsemax(
    s: jax.Array, labels: jax.Array, *, where: jax.Array | None = None, reduction: str = "none",
    **_: object,
) -> jax.Array:
    """sparsemax with tau = max_j (sum of the entries >= z_j, less 1) / their count (no
    sort), on the scores less their largest."""
    z = s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    above = z[..., None, :] >= z[..., :, None]
    total = jnp.sum(jnp.where(above, z[..., None, :], 0), axis=-1)
    tau = jnp.max((total - 1) / jnp.sum(above, axis=-1), axis=-1, keepdims=True)
    support = z > tau  # then tau again, from the support (differentiated through it)
    tau = (jnp.sum(jnp.where(support, z, 0), axis=-1, keepdims=True) - 1) / jnp.sum(
        support, axis=-1, keepdims=True)
    p = jnp.where(support, z - tau, 0)
    one_hot = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)
    losses = (jnp.sum(p * jnp.where(p > 0, z, 0), axis=-1)
              - jnp.sum(jnp.where(one_hot, z, 0), axis=-1) + (1 - jnp.sum(p * p, axis=-1)) / 2)
    return _reduce(losses, reduction, where)


CASE_MODULES = ("jaxloss._cases_torch_a", "jaxloss._cases_torch_b", "jaxloss._cases_sequence",
                "jaxloss._cases_ranking", "jaxloss._cases_lm_head")


def builtin_cases(seed: int = 0) -> list[CheckCase]:
    """The cases ``jaxloss check`` runs: every public loss, each differentiable
    argument, and the options (``where``, ``ignore_index``, ``reduction``, metrics,
    ``swap``, ``bias``, smoothing, class weights, chunks).

    The custom_vjp cases run second-order finite differences, except option variants
    whose second derivative goes through the same backward pass as a second-order case.
    The matmul losses run at ``precision="highest"``."""
    rng = np.random.default_rng(seed)
    f32, bf16, fp16 = np.float32, jnp.bfloat16, jnp.float16
    n, c = 6, 5
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n)
    soft = rng.dirichlet(np.ones(c), size=n)
    probs = rng.uniform(0.05, 0.95, size=(n, c))
    preds, targets = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    weights = rng.uniform(0.5, 2.0, size=c)
    element_mask = rng.uniform(size=(n, c)) < 0.7
    row_mask = np.array([True, False, True, True, False, True])
    class_mask = np.tile([True, True, False, True, True], (n, 1))
    class_mask[3] = False  # a row with no class left
    ignored = np.where(row_mask, labels, -100)  # rows 1 and 4 ignored
    emb_a, emb_b, emb_n = (rng.normal(size=(n, 4)) for _ in range(3))
    similar = np.array([1.0, 0.0] * (n // 2))
    distances = rng.uniform(0.1, 3.0, size=n)
    groups = np.array([0, 0, 1, 1, 2, 2])
    hidden, vocab_weight = rng.normal(size=(n, 4)), rng.normal(size=(4, 10))
    vocab_bias, vocab_labels = rng.normal(size=10), rng.integers(0, 10, size=n)

    # Extremes, in their own dtypes.
    big = np.array([[1e30, -1e30, 0.0, 5.0, -5.0]] * 2, f32)
    masked = np.array([[2.0, -np.inf, 0.5, -np.inf, 1.0]] * 2, f32)
    near_max_bf16 = jnp.array([[3.0e38, -3.0e38, 1e4, -1e4, 0.0]] * 2, bf16)
    near_max_fp16 = jnp.array([[65504, -65504, 1e4, -1e4, 0.0]] * 2, fp16)
    two_labels = np.array([0, 2])
    two_onehot = np.eye(c, dtype=f32)[two_labels]
    # Several extremes of one dtype in one call: each call compiles.
    wide, wide_labels = np.concatenate([big, masked]), np.tile(two_labels, 2)
    wide_onehot = np.eye(c, dtype=f32)[wide_labels]
    edge_p = np.array([[0.0, 1.0, 1e-30, 1 - 1e-7, 0.5]] * 2, f32)
    edge_y = np.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0]], f32)
    # Tied huge logits: probabilities exactly [0, 1/2, 1/2], whatever the scale.
    ties, tie_label = np.array([[-1e30, 1e30, 1e30]], f32), np.array([2])
    tie_p, tie_onehot = np.array([[0.0, 0.5, 0.5]]), np.array([[0.0, 0.0, 1.0]], f32)
    tie_nll = np.array([[2e30, np.log(2), np.log(2)]])
    tie_q = np.array([[1e15, 0.0], [0.0, 1.0]], f32)
    tie_k = np.array([[1e15, 0.0], [1e15, 0.0]], f32)
    same = np.ones((2, 4), f32)  # distance 0
    zero_row = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 3.0]], f32)
    bf16_emb = jnp.asarray(rng.normal(size=(4, 4)) * 100, bf16)
    huge_a, huge_b = (np.asarray(rng.normal(size=(2, 4)) * 1e15, f32) for _ in range(2))
    huge_emb = np.asarray(rng.normal(size=(2, 4)) * 1e30, f32)
    huge_bf16 = jnp.asarray(rng.normal(size=(2, 4)) * 1e36, bf16)
    huge_weight = np.asarray(rng.normal(size=(4, 10)) * 1e15, f32)
    bf16_hidden = jnp.asarray(rng.normal(size=(2, 4)) * 1e18, bf16)
    bf16_weight = jnp.asarray(rng.normal(size=(4, 10)) * 1e18, bf16)

    def smoothed_tie(eps: float) -> tuple[np.ndarray, np.ndarray]:
        """The exact limits of smoothed cross-entropy at the tied logits, label 2."""
        q = (1 - eps) * tie_onehot + eps / 3
        return (np.sum(q * tie_nll, axis=-1), q)

    sce_tie_value, sce_tie_q = smoothed_tie(0.2)
    # The divergences, log-cosh, cosine and margin losses.
    probs_norm = probs / probs.sum(axis=-1, keepdims=True)
    # Targets 0 meet log-predictions -inf and -1e30; elsewhere log p = log t.
    kl_t = np.array([[0.0, 0.5, 0.5], [0.0, 0.25, 0.75]], f32)
    kl_log_t = np.array([[-np.inf, np.log(0.5), np.log(0.5)],
                         [-np.inf, np.log(0.25), np.log(0.75)]], f32)
    kl_lp = np.where(np.arange(2)[:, None] == 1, np.maximum(kl_log_t, -1e30), kl_log_t)
    edge_q = np.array([[1e-30, 1 - 1e-7, 1e-7, 0.5, 1.0]] * 2, f32)
    gkl_lp = np.array([[-np.inf, np.log(2.0), 0.0]], f32)
    gkl_t = np.array([[0.0, 2.0, 0.0]], f32)
    cosh_x = np.array([[0.0, 1e-4, -1e-3, 0.5, 88.0, 89.5], [-90.0, 500.0, 1e30, -1e30,
                                                             3e38, 1.0]], f32)
    cosh_far = np.array([[100.0, -100.0, 1e30, -3e38]], f32)
    norm_a_row = float(np.linalg.norm(zero_row[1]))
    unit_a_row, unit_b = zero_row[1] / norm_a_row, np.full(4, 0.5)
    cos_ab = float(unit_a_row @ unit_b)
    signs = np.where(rng.uniform(size=(n, c)) < 0.5, -1.0, 1.0)
    margin_p = np.array([1e30, -1e30, 1.0, 0.5], f32)  # the third at the kink f y = 1
    margin_t = np.array([-1.0, -1.0, 1.0, 1.0], f32)
    mc_scores = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0]], f32)
    mc_labels = np.array([0, 0])
    focal_x = np.array([1e4, -1e4, 1e4, -1e4, 100.0], f32)
    focal_y = np.array([1.0, 1.0, 0.0, 0.0, 0.0], f32)
    poly_x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], f32)
    poly_y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], f32)
    # d/dx = p - y (the poly term's gradient is 0 at p in {0, 1}); d/dy = nll + 2 (1 - p).
    poly_gx = np.array([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    poly_gy = np.array([[0.0, 20002.0, 10002.0], [20002.0, 0.0, 10002.0]])
    smooth_y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], f32)
    smooth_where = np.array([[True, True, False], [False, False, False]])
    # Segmentation: [batch 2, 3 x 2 pixels, 3 classes].
    seg_x = rng.normal(size=(2, 3, 2, 3))
    seg_t = np.eye(3)[rng.integers(0, 3, size=(2, 3, 2))]
    seg_probs = rng.dirichlet(np.ones(3), size=(2, 3, 2))
    seg_big = np.asarray(seg_x * 1e30, f32)
    seg_big_t = np.eye(3, dtype=f32)[np.argmax(seg_x[..., ::-1], axis=-1)]
    # Probabilities, smooth 0: row 0 empty (0/0: loss 0, gradient 0); row 1 exact, with
    # d/dp = d/dt = -(t/2 - (1 - t)/2) / I, I = 1.
    seg_p0 = np.array([[0.0, 0.0], [1.0, 0.0]], f32)[..., None]
    seg_t0 = seg_p0.copy()
    seg_g0 = np.array([[0.0, 0.0], [-0.5, 0.5]])[..., None]
    labels01 = (signs > 0).astype(np.int32)
    sparse_x = np.array([1e30, -1e30, 1.0, -1.0, 0.5, 3e38, -5.0], f32)
    sparse_y = np.array([0, 1, 0, 1, 1, 0, 0])
    highest = {"precision": "highest"}  # the matmul losses, compared with float64
    cases = [
        # Regression (no custom_vjp: autodiff of the library's own formula).
        CheckCase("squared_error", jaxloss.squared_error, _ref_squared, (preds, targets),
                  argnums=(0, 1), custom_vjp=False,
                  extremes=((np.full((2, 2), 1e18, f32), np.zeros((2, 2), f32)),
                            (jnp.full((2, 2), 1e18, bf16), jnp.zeros((2, 2), bf16)))),
        CheckCase("squared_error[where,sum]", jaxloss.squared_error, _ref_squared,
                  (preds, targets), {"where": element_mask, "reduction": "sum"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("l2_loss", jaxloss.l2_loss, _ref_l2, (preds, targets), argnums=(0, 1),
                  custom_vjp=False,
                  extremes=((np.full((2, 2), 1e18, f32), np.zeros((2, 2), f32)),)),
        CheckCase("l2_loss[where,mean]", jaxloss.l2_loss, _ref_l2, (preds, targets),
                  {"where": element_mask, "reduction": "mean"}, argnums=(0, 1),
                  custom_vjp=False),
        CheckCase("huber_loss", jaxloss.huber_loss, _ref_huber, (preds, targets),
                  {"delta": 0.7}, argnums=(0, 1), custom_vjp=False,
                  extremes=((big, np.zeros_like(big)),
                            (near_max_bf16, jnp.zeros_like(near_max_bf16)))),
        CheckCase("mean_squared_error", jaxloss.mean_squared_error, _ref_mse,
                  (preds, targets), argnums=(0, 1), custom_vjp=False,
                  extremes=((np.full((2, 2), 1e18, f32), np.zeros((2, 2), f32)),)),
        CheckCase("mean_squared_error[axis=-1,where]", jaxloss.mean_squared_error, _ref_mse,
                  (preds, targets), {"axis": -1, "where": element_mask}, argnums=(0, 1),
                  custom_vjp=False),
        CheckCase("mean_absolute_error", jaxloss.mean_absolute_error, _ref_mae,
                  (preds, targets), argnums=(0, 1), custom_vjp=False,
                  extremes=((big, np.zeros_like(big)),)),
        # Classification.
        CheckCase("sigmoid_binary_cross_entropy", jaxloss.sigmoid_binary_cross_entropy,
                  _ref_sigmoid_bce, (logits, soft), argnums=(0, 1),
                  extremes=((big, edge_y), (near_max_bf16, edge_y), (near_max_fp16, edge_y))),
        CheckCase("sigmoid_binary_cross_entropy[pos_weight,smoothing]",
                  jaxloss.sigmoid_binary_cross_entropy, _ref_sigmoid_bce, (logits, soft),
                  {"pos_weight": weights, "label_smoothing": 0.1}, argnums=(0, 1),
                  diff_kwargs=("pos_weight",), extremes=((big, edge_y),)),
        CheckCase("sigmoid_binary_cross_entropy[pos_weight,where,mean]",
                  jaxloss.sigmoid_binary_cross_entropy, _ref_sigmoid_bce, (logits, soft),
                  {"pos_weight": weights, "where": element_mask, "reduction": "mean"},
                  argnums=(0, 1), diff_kwargs=("pos_weight",), fd_order=1),
        CheckCase("binary_cross_entropy", jaxloss.binary_cross_entropy, _ref_bce,
                  (probs, soft), argnums=(0, 1),
                  extremes=(Extreme((edge_p, edge_y), expected=_bce_limits(edge_p, edge_y)),)),
        CheckCase("binary_cross_entropy[where,sum]", jaxloss.binary_cross_entropy, _ref_bce,
                  (probs, soft), {"where": element_mask, "reduction": "sum"},
                  argnums=(0, 1), fd_order=1),
        CheckCase("softmax_cross_entropy", jaxloss.softmax_cross_entropy, _ref_softmax_ce,
                  (logits, soft), argnums=(0, 1),
                  extremes=((wide, wide_onehot), (near_max_bf16, two_onehot),
                            (near_max_fp16, two_onehot),
                            Extreme((ties, tie_onehot),
                                    expected=([np.log(2)], (tie_p - tie_onehot, tie_nll))))),
        CheckCase("softmax_cross_entropy[smoothing]", jaxloss.softmax_cross_entropy,
                  _ref_softmax_ce, (logits, soft), {"label_smoothing": 0.2}, argnums=(0, 1),
                  extremes=((wide, wide_onehot),
                            Extreme((ties, tie_onehot), expected=(
                                sce_tie_value, (tie_p - sce_tie_q, 0.8 * tie_nll))))),
        CheckCase("softmax_cross_entropy[where,mean]", jaxloss.softmax_cross_entropy,
                  _ref_softmax_ce, (logits, soft),
                  {"where": class_mask, "label_smoothing": 0.1, "reduction": "mean"},
                  argnums=(0, 1), fd_order=1,
                  extremes=(Extreme((masked, two_onehot), {"where": class_mask[:2]}),)),
        CheckCase("softmax_cross_entropy_with_integer_labels",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, labels),
                  extremes=((wide, wide_labels), (near_max_bf16, two_labels),
                            (near_max_fp16, two_labels),
                            Extreme((ties, tie_label),
                                    expected=([np.log(2)], (tie_p - tie_onehot,))))),
        CheckCase("softmax_cross_entropy_with_integer_labels[weights,smoothing]",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, labels), {"class_weights": weights, "label_smoothing": 0.1},
                  diff_kwargs=("class_weights",),
                  extremes=((wide, wide_labels), (near_max_bf16, two_labels))),
        CheckCase("softmax_cross_entropy_with_integer_labels[weights,ignore_index,where,mean]",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, ignored),
                  {"class_weights": weights, "ignore_index": -100,
                   "where": np.roll(row_mask, 1), "reduction": "mean"},
                  diff_kwargs=("class_weights",), fd_order=1),
        CheckCase("softmax_cross_entropy_with_integer_labels[smoothing,sum]",
                  jaxloss.softmax_cross_entropy_with_integer_labels, _ref_integer_ce,
                  (logits, labels), {"label_smoothing": 0.3, "reduction": "sum"}, fd_order=1,
                  extremes=(Extreme((ties, tie_label), expected=(
                      np.sum(smoothed_tie(0.3)[0]), (tie_p - smoothed_tie(0.3)[1],))),)),
        CheckCase("categorical_cross_entropy", jaxloss.categorical_cross_entropy,
                  _ref_categorical_ce, (probs, soft), argnums=(0, 1),
                  extremes=((edge_p, two_onehot),)),
        CheckCase("categorical_cross_entropy[where,sum]", jaxloss.categorical_cross_entropy,
                  _ref_categorical_ce, (probs, soft),
                  {"where": class_mask, "reduction": "sum"}, argnums=(0, 1), fd_order=1),
        # Distances and contrastive losses.
        CheckCase("pairwise_distance", jaxloss.pairwise_distance, _ref_distance,
                  (emb_a, emb_b), argnums=(0, 1),
                  extremes=((np.concatenate([same, huge_emb]), np.concatenate([same, -huge_emb])),
                            (huge_bf16, -huge_bf16))),
        CheckCase("pairwise_distance[squared_euclidean]", jaxloss.pairwise_distance,
                  _ref_distance, (emb_a, emb_b), {"metric": "squared_euclidean"},
                  argnums=(0, 1), custom_vjp=False,
                  extremes=((np.concatenate([same, huge_a * 1e3]),
                             np.concatenate([same, huge_b * 1e3])),)),
        CheckCase("pairwise_distance[cosine]", jaxloss.pairwise_distance, _ref_distance,
                  (emb_a, emb_b), {"metric": "cosine"}, argnums=(0, 1), custom_vjp=False,
                  extremes=((np.concatenate([zero_row, huge_emb]), np.concatenate([same, huge_a])),
                            (huge_bf16, huge_bf16[::-1]))),
        CheckCase("contrastive_loss", jaxloss.contrastive_loss, _ref_contrastive,
                  (emb_a, emb_b, similar), {"margin": np.asarray(2.0)}, argnums=(0, 1, 2),
                  diff_kwargs=("margin",),
                  extremes=((same, same, np.array([1.0, 0.0], f32)),
                            (bf16_emb, bf16_emb[::-1], np.array([1.0, 0.0, 1.0, 0.0], f32)))),
        CheckCase("contrastive_loss[cosine,where,mean]", jaxloss.contrastive_loss,
                  _ref_contrastive, (emb_a, emb_b, similar),
                  {"margin": np.asarray(0.5), "metric": "cosine", "where": row_mask,
                   "reduction": "mean"},
                  argnums=(0, 1, 2), diff_kwargs=("margin",), fd_order=1),
        CheckCase("contrastive_loss[squared_euclidean,sum]", jaxloss.contrastive_loss,
                  _ref_contrastive, (emb_a, emb_b, similar),
                  {"margin": np.asarray(4.0), "metric": "squared_euclidean",
                   "reduction": "sum"},
                  argnums=(0, 1, 2), diff_kwargs=("margin",), custom_vjp=False),
        CheckCase("contrastive_loss_from_distance", jaxloss.contrastive_loss_from_distance,
                  _ref_contrastive_from_distance, (distances, similar),
                  {"margin": np.asarray(2.0)}, argnums=(0, 1), diff_kwargs=("margin",),
                  custom_vjp=False,
                  extremes=((np.array([0.0, 0.0, 1e18, 1e18], f32),
                             np.array([1.0, 0.0, 1.0, 0.0], f32)),)),
        CheckCase("contrastive_loss_from_distance[where,mean]",
                  jaxloss.contrastive_loss_from_distance, _ref_contrastive_from_distance,
                  (distances, similar),
                  {"margin": np.asarray(2.0), "where": row_mask, "reduction": "mean"},
                  argnums=(0, 1), diff_kwargs=("margin",), custom_vjp=False),
        CheckCase("triplet_margin_loss", jaxloss.triplet_margin_loss, _ref_triplet,
                  (emb_a, emb_b, emb_n), {"margin": np.asarray(3.0), "eps": np.asarray(1e-6)},
                  argnums=(0, 1, 2), diff_kwargs=("margin", "eps"),
                  extremes=((np.concatenate([same, huge_emb]),
                             np.concatenate([same, huge_emb * 0.5]),
                             np.concatenate([2 * same, -huge_emb])),)),
        CheckCase("triplet_margin_loss[norm_degree=1]", jaxloss.triplet_margin_loss,
                  _ref_triplet, (emb_a, emb_b, emb_n),
                  {"margin": np.asarray(3.0), "norm_degree": 1}, argnums=(0, 1, 2),
                  diff_kwargs=("margin",), custom_vjp=False, extremes=((same, same, same),)),
        CheckCase("triplet_margin_loss[swap,mean]", jaxloss.triplet_margin_loss, _ref_triplet,
                  (emb_a, emb_b, emb_n),
                  {"margin": np.asarray(3.0), "swap": True, "reduction": "mean"},
                  argnums=(0, 1, 2), diff_kwargs=("margin",), fd_order=1,
                  extremes=((same, same, same),)),
        CheckCase("ntxent", jaxloss.ntxent, _ref_ntxent, (emb_a, groups, np.asarray(0.5)),
                  highest, argnums=(0, 2), custom_vjp=False,
                  extremes=((same, np.array([0, 1]), f32(0.5)),
                            (bf16_emb, np.array([0, 0, 1, 1]), f32(0.5)))),
        CheckCase("info_nce", jaxloss.info_nce, _ref_info_nce, (emb_a, emb_b),
                  {"temperature": np.asarray(0.5), **highest}, argnums=(0, 1),
                  diff_kwargs=("temperature",),
                  extremes=((same, same), (bf16_emb, bf16_emb[::-1]),
                            # Scores [[1e30, 1e30], [0, 0]]: each row's softmax is 1/2, 1/2.
                            Extreme((tie_q, tie_k), {"temperature": f32(1.0)},
                                    expected=([np.log(2)] * 2, (
                                        np.zeros((2, 2)), [[-tie_q[0, 0] / 2, 0.5],
                                                           [tie_q[0, 0] / 2, -0.5]], 0.0))))),
        CheckCase("info_nce[symmetric,chunk_size=4,sum]", jaxloss.info_nce, _ref_info_nce,
                  (emb_a, emb_b),
                  {"temperature": np.asarray(0.5), "symmetric": True, "chunk_size": 4,
                   "reduction": "sum", **highest},
                  argnums=(0, 1), diff_kwargs=("temperature",), fd_order=1,
                  extremes=((bf16_emb, bf16_emb[::-1]),)),
        CheckCase("siglip_loss", jaxloss.siglip_loss, _ref_siglip,
                  (emb_a, emb_b, np.asarray(2.0), np.asarray(-1.0)), highest,
                  argnums=(0, 1, 2, 3), custom_vjp=False,
                  extremes=((huge_a, huge_b, f32(10.0), f32(-10.0)),
                            (jnp.asarray(bf16_emb * 1e13, bf16), bf16_emb, jnp.bfloat16(10.0),
                             jnp.bfloat16(-10.0)))),
        CheckCase("siglip_loss[none]", jaxloss.siglip_loss, _ref_siglip,
                  (emb_a, emb_b, np.asarray(2.0), np.asarray(-1.0)),
                  {"reduction": "none", **highest}, argnums=(0, 1, 2, 3), custom_vjp=False),
        CheckCase("linear_softmax_cross_entropy[chunk_size=4,V=10]",
                  jaxloss.linear_softmax_cross_entropy, _ref_linear_ce,
                  (hidden, vocab_weight, vocab_labels), {"chunk_size": 4, **highest},
                  argnums=(0, 1),
                  extremes=((huge_a, huge_weight, two_labels),
                            (bf16_hidden, bf16_weight, two_labels),
                            # hidden [[1]]: the logits are the weight itself.
                            Extreme((np.ones((1, 1), f32), ties, tie_label),
                                    expected=([np.log(2)], (np.zeros((1, 1)),
                                                            tie_p - tie_onehot))))),
        CheckCase("linear_softmax_cross_entropy[bias,smoothing,chunk_size=3]",
                  jaxloss.linear_softmax_cross_entropy, _ref_linear_ce,
                  (hidden, vocab_weight, vocab_labels),
                  {"bias": vocab_bias, "label_smoothing": 0.1, "chunk_size": 3, **highest},
                  argnums=(0, 1), diff_kwargs=("bias",),
                  extremes=(Extreme((huge_a, huge_weight, two_labels),
                                    {"bias": np.asarray(vocab_bias * 1e29, f32)}),)),
        CheckCase("linear_softmax_cross_entropy[bias,ignore_index,where,mean]",
                  jaxloss.linear_softmax_cross_entropy, _ref_linear_ce,
                  (hidden, vocab_weight, np.where(row_mask, vocab_labels, -100)),
                  {"bias": vocab_bias, "ignore_index": -100, "where": np.roll(row_mask, 1),
                   "reduction": "mean", **highest},
                  argnums=(0, 1), diff_kwargs=("bias",), fd_order=1),
        # A scalar reduction without smoothing or head options: the three-matmul rule.
        CheckCase("linear_softmax_cross_entropy[bias,sum]",
                  jaxloss.linear_softmax_cross_entropy, _ref_linear_ce,
                  (hidden, vocab_weight, vocab_labels),
                  {"bias": vocab_bias, "reduction": "sum", **highest},
                  argnums=(0, 1), diff_kwargs=("bias",),
                  extremes=(Extreme((huge_a, huge_weight, two_labels),
                                    {"bias": np.asarray(vocab_bias * 1e29, f32)}),
                            Extreme((bf16_hidden, bf16_weight, two_labels),
                                    {"bias": jnp.asarray(vocab_bias, jnp.bfloat16)}),
                            Extreme((np.ones((1, 1), f32), ties, tie_label),
                                    {"bias": np.zeros(ties.shape[1], f32)},
                                    expected=(np.log(2), (np.zeros((1, 1)),
                                                          tie_p - tie_onehot))))),
        # Divergences (no custom_vjp: a double where gives 0 log 0 = 0 a zero gradient).
        CheckCase("kl_divergence", jaxloss.kl_divergence, _ref_kl, (np.log(probs_norm), soft),
                  argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((kl_lp, kl_t), expected=(
                      [0.0, 0.0], (-kl_t, np.where(kl_t > 0, 1.0, 0.0)))),
                            (np.log(edge_q), two_onehot))),
        CheckCase("kl_divergence[axis=(1,2),where,mean]", jaxloss.kl_divergence, _ref_kl,
                  (np.log(probs_norm)[None], soft[None]),
                  {"axis": (1, 2), "where": element_mask, "reduction": "mean"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("kl_divergence_with_log_targets", jaxloss.kl_divergence_with_log_targets,
                  _ref_kl_log_targets, (np.log(probs_norm), np.log(soft)), argnums=(0, 1),
                  custom_vjp=False,
                  extremes=(Extreme((kl_lp, kl_log_t), expected=(
                      [0.0, 0.0], (-kl_t, kl_t))),)),
        CheckCase("generalized_kl_divergence", jaxloss.generalized_kl_divergence,
                  _ref_generalized_kl, (np.log(probs), 2 * soft), argnums=(0, 1),
                  custom_vjp=False,
                  extremes=(Extreme((gkl_lp, gkl_t), expected=(
                      [1.0], ([[0.0, 0.0, 1.0]], [[-1.0, 0.0, -1.0]]))),)),
        # Log-cosh and cosine similarity.
        CheckCase("log_cosh", jaxloss.log_cosh, _ref_log_cosh, (preds, targets),
                  argnums=(0, 1), custom_vjp=False,
                  extremes=((cosh_x, np.zeros_like(cosh_x)),
                            Extreme((cosh_far, np.zeros_like(cosh_far)), expected=(
                                np.abs(cosh_far.astype(np.float64)) - np.log(2.0),
                                (np.sign(cosh_far), -np.sign(cosh_far)))),
                            (jnp.asarray(cosh_x, bf16), jnp.zeros(cosh_x.shape, bf16)))),
        CheckCase("log_cosh[where,sum]", jaxloss.log_cosh, _ref_log_cosh, (preds, targets),
                  {"where": element_mask, "reduction": "sum"}, argnums=(0, 1),
                  custom_vjp=False),
        CheckCase("cosine_similarity", jaxloss.cosine_similarity, _ref_cosine,
                  (emb_a, emb_b), argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((zero_row, same), expected=(
                      [0.0, float(np.sum(zero_row[1]) / np.linalg.norm(zero_row[1]) / 2)],
                      (np.stack([np.zeros(4), unit_b - cos_ab * unit_a_row]) / np.stack(
                          [np.ones(4), np.full(4, norm_a_row)]),
                       np.stack([np.zeros(4), (unit_a_row - cos_ab * unit_b) / 2])))),
                            (huge_emb, huge_emb[::-1]), (huge_bf16, huge_bf16[::-1]))),
        CheckCase("cosine_similarity[epsilon,where,mean]", jaxloss.cosine_similarity,
                  _ref_cosine, (emb_a * 0.1, emb_b),
                  {"epsilon": 0.05, "where": element_mask[:, :4], "reduction": "mean"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("cosine_distance", jaxloss.cosine_distance, _ref_cosine_distance,
                  (emb_a, emb_b), argnums=(0, 1), custom_vjp=False,
                  extremes=((np.concatenate([zero_row, huge_emb]),
                             np.concatenate([same, huge_a])),)),
        # Margin losses (piecewise linear: subgradient 0 at a kink).
        CheckCase("hinge_loss", jaxloss.hinge_loss, _ref_hinge, (preds, signs),
                  argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((margin_p, margin_t), expected=(
                      [1e30, 0.0, 0.0, 0.5], ([1.0, 0.0, 0.0, -1.0], [-1e30, 0.0, 0.0, -0.5]))),)),
        CheckCase("hinge_loss[where,mean]", jaxloss.hinge_loss, _ref_hinge, (preds, signs),
                  {"where": element_mask, "reduction": "mean"}, argnums=(0, 1),
                  custom_vjp=False),
        CheckCase("perceptron_loss", jaxloss.perceptron_loss, _ref_perceptron,
                  (preds, signs), argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((margin_p, margin_t), expected=(
                      [1e30, 0.0, 0.0, 0.0], ([1.0, 0.0, 0.0, 0.0], [-1e30, 0.0, 0.0, 0.0]))),)),
        CheckCase("multiclass_hinge_loss", jaxloss.multiclass_hinge_loss,
                  _ref_multiclass_hinge, (logits, labels), custom_vjp=False,
                  extremes=(Extreme((mc_scores, mc_labels), expected=(
                      [0.0, 2e30], ([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]],))),
                            (near_max_bf16, two_labels))),
        CheckCase("multiclass_hinge_loss[where,sum]", jaxloss.multiclass_hinge_loss,
                  _ref_multiclass_hinge, (logits, labels),
                  {"where": row_mask, "reduction": "sum"}, custom_vjp=False),
        CheckCase("multiclass_perceptron_loss", jaxloss.multiclass_perceptron_loss,
                  _ref_multiclass_perceptron, (logits, labels), custom_vjp=False,
                  extremes=(Extreme((mc_scores, mc_labels), expected=(
                      [0.0, 2e30], ([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]],))),
                            (near_max_bf16, two_labels))),
        # Dice losses (no custom_vjp: a double where gives the 0/0 of smooth = 0 the
        # value 0 and a zero gradient).
        CheckCase("dice_loss", jaxloss.dice_loss, _ref_dice, (seg_x, seg_t), argnums=(0, 1),
                  custom_vjp=False,
                  extremes=((seg_big, seg_big_t),
                            (jnp.asarray(seg_big, bf16), jnp.asarray(seg_big_t, bf16)),
                            Extreme((seg_p0, seg_t0), {"apply_softmax": False, "smooth": 0.0,
                                                       "reduction": "none"},
                                    expected=([[0.0], [0.0]], (seg_g0, seg_g0))))),
        CheckCase("dice_loss[class_weights,alpha,beta,ignore_background,sum]",
                  jaxloss.dice_loss, _ref_dice, (seg_x, seg_t),
                  {"class_weights": weights[:3], "smooth": np.asarray(0.5),
                   "alpha": np.asarray(0.3), "beta": np.asarray(0.7),
                   "ignore_background": True, "reduction": "sum"},
                  argnums=(0, 1), diff_kwargs=("class_weights", "smooth", "alpha", "beta"),
                  custom_vjp=False),
        CheckCase("dice_loss[probabilities,axis=(0,1),none]", jaxloss.dice_loss, _ref_dice,
                  (seg_probs, seg_t), {"apply_softmax": False, "axis": (0, 1),
                                       "reduction": "none"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("binary_dice_loss", jaxloss.binary_dice_loss, _ref_binary_dice,
                  (seg_x[..., 0], seg_t[..., 0]), {"smooth": np.asarray(1.0)},
                  argnums=(0, 1), diff_kwargs=("smooth",), custom_vjp=False,
                  extremes=(Extreme((np.full((2, 3), -1e30, f32), np.zeros((2, 3), f32)),
                                    {"smooth": f32(0.0)},
                                    expected=([0.0, 0.0], (np.zeros((2, 3)), np.zeros((2, 3)),
                                                           0.0))),)),
        CheckCase("binary_dice_loss[probabilities]", jaxloss.binary_dice_loss,
                  _ref_binary_dice, (seg_probs[..., 0], seg_t[..., 0]),
                  {"apply_sigmoid": False}, argnums=(0, 1), custom_vjp=False),
        CheckCase("multiclass_generalized_dice_loss", jaxloss.multiclass_generalized_dice_loss,
                  _ref_generalized_dice, (seg_x, seg_t), argnums=(0, 1), custom_vjp=False,
                  extremes=((seg_big, seg_big_t),)),
        CheckCase("multiclass_generalized_dice_loss[ignore_background,smooth]",
                  jaxloss.multiclass_generalized_dice_loss, _ref_generalized_dice,
                  (seg_x, seg_t), {"smooth": np.asarray(0.1), "ignore_background": True},
                  argnums=(0, 1), diff_kwargs=("smooth",), custom_vjp=False),
        # Sparsemax losses (no custom_vjp).
        CheckCase("sparsemax_loss", jaxloss.sparsemax_loss, _ref_sparsemax,
                  (preds * 2, labels01), custom_vjp=False,
                  extremes=(Extreme((sparse_x, sparse_y), expected=(
                      [1e30, 1e30, 1.0, 1.0, 0.0625, 3e38, 0.0],
                      ([1.0, -1.0, 1.0, -1.0, -0.25, 1.0, 0.0],))),)),
        CheckCase("sparsemax_loss[where,mean]", jaxloss.sparsemax_loss, _ref_sparsemax,
                  (preds * 2, labels01), {"where": element_mask, "reduction": "mean"},
                  custom_vjp=False),
        CheckCase("multiclass_sparsemax_loss", jaxloss.multiclass_sparsemax_loss,
                  _ref_multiclass_sparsemax, (logits, labels), custom_vjp=False,
                  extremes=((mc_scores, mc_labels), (masked, two_labels),
                            (near_max_bf16, two_labels))),
        CheckCase("multiclass_sparsemax_loss[where,sum]", jaxloss.multiclass_sparsemax_loss,
                  _ref_multiclass_sparsemax, (logits, labels),
                  {"where": row_mask, "reduction": "sum"}, custom_vjp=False),
        # Focal, poly and safe cross-entropies; label smoothing.
        CheckCase("sigmoid_focal_loss", jaxloss.sigmoid_focal_loss, _ref_focal,
                  (logits, soft), argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((focal_x, focal_y), expected=(
                      [0.0, 1e4, 1e4, 0.0, 100.0],
                      ([0.0, -1.0, 1.0, 0.0, 1.0], [0.0, 3e4, -3e4, 0.0, -300.0]))),)),
        CheckCase("sigmoid_focal_loss[alpha,gamma=0.5,where,mean]", jaxloss.sigmoid_focal_loss,
                  _ref_focal, (logits, soft),
                  {"alpha": np.asarray(0.25), "gamma": np.asarray(0.5), "where": element_mask,
                   "reduction": "mean"},
                  argnums=(0, 1), diff_kwargs=("alpha", "gamma"), custom_vjp=False),
        CheckCase("poly_loss_cross_entropy", jaxloss.poly_loss_cross_entropy, _ref_poly,
                  (logits, soft), {"epsilon": np.asarray(2.0)}, argnums=(0, 1),
                  diff_kwargs=("epsilon",), custom_vjp=False,
                  extremes=(Extreme((poly_x, poly_y), expected=(
                      [0.0, 20002.0], (poly_gx, poly_gy, 1.0))), (masked, two_onehot))),
        CheckCase("poly_loss_cross_entropy[where,sum]", jaxloss.poly_loss_cross_entropy,
                  _ref_poly, (logits, soft),
                  {"epsilon": np.asarray(-1.0), "where": class_mask, "reduction": "sum"},
                  argnums=(0, 1), custom_vjp=False),
        CheckCase("safe_softmax_cross_entropy", jaxloss.safe_softmax_cross_entropy,
                  _ref_softmax_ce, (logits, soft), argnums=(0, 1), fd_order=1,
                  extremes=((wide, wide_onehot),
                            Extreme((ties, tie_onehot),
                                    expected=([np.log(2)], (tie_p - tie_onehot, tie_nll))))),
        CheckCase("smooth_labels", jaxloss.smooth_labels, _ref_smooth_labels,
                  (soft, np.asarray(0.1)), argnums=(0, 1), custom_vjp=False,
                  extremes=(Extreme((smooth_y, f32(0.2)), {"where": smooth_where}, expected=(
                      np.array([[0.9, 0.1, 0.1], [0.0, 0.8, 0.0]]),
                      (np.full((2, 3), 0.8), -0.5))),)),
    ]
    # The families added later keep their references and cases in their own modules.
    for i, module in enumerate(CASE_MODULES):
        cases += importlib.import_module(module).cases(np.random.default_rng([seed, i]))
    return cases
