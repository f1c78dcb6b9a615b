"""``checked(loss)``: the value checks that cannot raise under ``jit``.

What each built-in loss requires of its values is declared once, as plain data, in the
``domain`` column of ``jaxloss/_registry.py``: rules such as ``"labels: class_ids(logits,
axis)"`` or ``"predictions: probability if not apply_softmax"``. :func:`parse_rule` reads
them, :data:`KINDS` lists their kinds, and :func:`checked` checks them.

The checks are plain array expressions (NumPy for host values, else jax.numpy) whose
failures raise checkify's ``JaxRuntimeError``; traced, they report through
``jax.debug.callback``. They are not run under ``jax.experimental.checkify.checkify``:
that compiled a program per loss and shape (about half a second each on a CPU), and
under autodiff checkify met the losses' custom_vjp (``jax.grad`` of a checked loss
failed).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxloss import _registry

P = ParamSpec("P")
R = TypeVar("R")

# The kinds of the rules of ``Entry.domain`` and what each requires. Every floating
# input is checked for NaN besides, whatever its rules.
KINDS: dict[str, str] = {
    "finite": "no +inf or -inf (embeddings, matmul operands)",
    "logits": "no +inf; -inf is allowed (a masked class)",
    "probability": "in [0, 1]",
    "non_negative": ">= 0 (targets, weights, variances, margins, ...)",
    "positive": "> 0 (temperature, softcap, ...)",
    "log_probability": "<= 0; -inf is allowed (a probability of 0)",
    "signs": "each -1 or 1",
    "paddings": "each 0 or 1, right-padded: no 0 after a 1 along the last axis",
    "class_ids": "class_ids(ref[, axis][, paddings=p]): integer class ids in [0, C), C the "
                 "size of ref's class axis or axes (axis: the parameter that holds them, or "
                 "an int; default -1); the call's ignore_index passes, and so does any "
                 "entry where the array p is nonzero",
    "class_lists": "class_lists(ref): class ids in [0, C) along the last axis (C as for "
                   "class_ids), up to the first negative one: the padding, which ends the "
                   "list",
    "unsupported": "must be None (axis_name): checked raises a ValueError at once otherwise",
}

_RULE = re.compile(r"\s*(\w+)\s*:\s*(\w+)\s*(?:\(([^()]*)\))?\s*(?:if\s+(not\s+)?(\w+))?\s*")
_INT = re.compile(r"-?\d+")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of a loss's ``domain``: ``param`` must be of ``kind`` (with ``args`` and
    ``options``), when the boolean argument ``flag`` is true (false if ``negated``)."""

    param: str
    kind: str
    args: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    flag: str | None = None
    negated: bool = False

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)


@functools.cache
def parse_rule(text: str) -> Rule:
    """``"<param>: <kind>[(<arg>, <key>=<value>, ...)] [if [not] <flag>]"`` as a
    :class:`Rule`; a ValueError for anything else, or a kind not in :data:`KINDS`."""
    match = _RULE.fullmatch(text)
    if match is None or match.group(2) not in KINDS:
        raise ValueError(
            f"bad domain rule {text!r} in jaxloss/_registry.py: expected '<argument>: "
            f"<kind>[(...)] [if [not] <flag>]' with a kind among {sorted(KINDS)}")
    param, kind, inner, negated, flag = match.groups()
    args: list[str] = []
    options: list[tuple[str, str]] = []
    for part in (p.strip() for p in (inner or "").split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if eq:
            options.append((key.strip(), value.strip()))
        else:
            args.append(part)
    if kind in ("class_ids", "class_lists") and not args:
        raise ValueError(f"bad domain rule {text!r}: {kind} needs the argument that holds "
                         f"the classes, e.g. {kind}(logits)")
    return Rule(param, kind, tuple(args), tuple(options), flag, negated is not None)


@dataclasses.dataclass(frozen=True)
class _Target:
    """What ``checked`` wraps: the function, the arguments a ``functools.partial`` bound,
    and the registry's rules (None: not a built-in loss, so the NaN check alone)."""

    fn: Callable[..., Any]
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rules: tuple[Rule, ...] | None


@functools.cache
def _registered() -> dict[Any, _registry.Entry]:
    """Each public function of the registry (aliases included), to its entry."""
    import jaxloss  # the public API imports this module: not at import time

    table: dict[Any, _registry.Entry] = {}
    for entry in _registry.ENTRIES:
        for name in entry.names:
            fn = getattr(jaxloss, name, None)
            if fn is not None:
                table[fn] = entry
    return table


def _entry(fn: Callable[..., Any]) -> _registry.Entry | None:
    """The registry entry of ``fn``: a public function (also through ``__wrapped__``, as
    ``jax.jit`` leaves it) or the loss a public factory made (``make_fenchel_young_loss``'s
    ``fenchel_young_loss``)."""
    table = _registered()
    seen: Any = fn
    while True:
        try:
            if seen in table:
                return table[seen]
        except TypeError:  # unhashable
            break
        if not hasattr(seen, "__wrapped__"):
            break
        seen = seen.__wrapped__
    module, qualname = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
    for entry in _registry.ENTRIES:
        if (module == f"jaxloss.{entry.module}"
                and qualname.startswith(f"{entry.name}.<locals>.")):
            return entry
    return None


def _target(loss: Callable[..., Any]) -> _Target:
    fn: Any = loss
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    entry = _entry(fn)
    rules = None
    if entry is not None and entry.domain is not None:
        rules = tuple(parse_rule(text) for text in entry.domain)
    name = entry.name if entry is not None else getattr(fn, "__name__", "loss")
    return _Target(fn, name, args, kwargs, rules)


def _arguments(target: _Target, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of the call by name, defaults included (``*args`` as ``args[i]``,
    ``**kwargs`` by their keys); a TypeError where the call does not fit the signature."""
    args = (*target.args, *args)
    kwargs = {**target.kwargs, **kwargs}
    try:
        signature = inspect.signature(target.fn)
    except (TypeError, ValueError):
        return {**{f"argument {i}": a for i, a in enumerate(args)}, **kwargs}
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _is_float(x: Any) -> bool:
    if isinstance(x, float):
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _is_numeric(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int | float) or (
        hasattr(x, "dtype") and hasattr(x, "shape")
        and (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)))


def _refuse_unsupported(target: _Target, arguments: dict[str, Any]) -> None:
    for rule in target.rules or ():
        value = arguments.get(rule.param)
        if rule.kind == "unsupported" and value is not None:
            raise ValueError(
                f"{target.name}: {rule.param}={value!r} is not supported by jaxloss.checked: "
                f"inside jax.shard_map the checks cannot see the other devices' part. Check "
                f"the global arrays before sharding them (checked(loss) without "
                f"{rule.param}), or call the loss unchecked")


# A plan is a tuple of steps, each (kind, argument, *details known before the values:
# the class count, ignore_index when it is a number, ...); the arrays it checks go beside
# it, by argument name.
Step = tuple[Any, ...]


def _plan(target: _Target, arguments: dict[str, Any]) -> tuple[tuple[Step, ...], dict[str, Any]]:
    """The steps that check the call's ``arguments`` (by name, defaults included)."""
    steps: list[Step] = []
    arrays: dict[str, Any] = {}
    for name, value in arguments.items():
        if _is_float(value) and np.size(value):
            arrays[name] = value
            steps.append(("nan", name))
    for rule in target.rules or ():
        if rule.flag is not None and bool(arguments.get(rule.flag)) == rule.negated:
            continue
        given: Any = arguments.get(rule.param)
        if rule.kind == "unsupported" or not _is_numeric(given) or not np.size(given):
            continue
        arrays[rule.param] = given
        if rule.kind in ("class_ids", "class_lists"):
            ref = rule.args[0]
            axis: Any = -1
            if rule.kind == "class_ids" and len(rule.args) > 1:
                spec = rule.args[1]
                axis = int(spec) if _INT.fullmatch(spec) else arguments.get(spec, -1)
            axes = (axis,) if isinstance(axis, int) else tuple(axis)
            shape = np.shape(arguments[ref])
            classes = math.prod(shape[a] for a in axes)
            where = f"{ref}.shape[{axis}]" if isinstance(axis, int) else f"{ref}'s axes {axes}"
            if rule.kind == "class_lists":
                steps.append(("class_lists", rule.param, classes, where))
                continue
            ignore: int | str | None = None
            ignore_index = arguments.get("ignore_index")
            if isinstance(ignore_index, int | np.integer | np.ndarray | jax.Array) and not (
                    isinstance(ignore_index, bool | jax.core.Tracer)) and not np.ndim(
                        ignore_index):
                ignore = int(ignore_index)
            elif ignore_index is not None:  # traced
                arrays["ignore_index"] = ignore_index
                ignore = "ignore_index"
            paddings = rule.option("paddings")
            if paddings is not None and arguments.get(paddings) is not None:
                arrays[paddings] = arguments[paddings]
            else:
                paddings = None
            steps.append(("class_ids", rule.param, classes, where, ignore, paddings))
        else:
            steps.append((rule.kind, rule.param))
    return tuple(steps), arrays


# What each kind of range requires: (test, the message's "must ..."). Each test takes
# the array module (NumPy for host values, jax.numpy otherwise) and the array.
Array = Any  # a NumPy or a JAX array
_RANGES: dict[str, tuple[Callable[[Any, Array], Array], str]] = {
    "finite": (lambda xp, x: xp.isfinite(x), "be finite (no +inf or -inf)"),
    "logits": (lambda xp, x: x != xp.inf, "not be +inf (-inf, a masked class, is allowed)"),
    "probability": (lambda xp, x: (x >= 0) & (x <= 1), "lie in [0, 1]"),
    "non_negative": (lambda xp, x: x >= 0, "lie in [0, inf]"),
    "positive": (lambda xp, x: x > 0, "lie in (0, inf]"),
    "log_probability": (lambda xp, x: x <= 0, "lie in [-inf, 0] (log-probabilities)"),
    "signs": (lambda xp, x: (x == 1) | (x == -1), "be -1 or 1"),
    "paddings": (lambda xp, x: (x == 0) | (x == 1), "be 0 or 1"),
}
_VALUES = "; {count} value(s) do not (first: {first})"


@dataclasses.dataclass(frozen=True)
class _Verdict:
    """One test of a plan: where ``ok`` is false, ``x`` fails; ``message`` (with
    ``{count}`` and ``{first}``) says how."""

    message: str
    x: Array
    ok: Array


def _on_host(x: Any) -> bool:
    return isinstance(x, np.ndarray | np.generic | int | float)


def _verdicts(loss: str, plan: tuple[Step, ...], arrays: dict[str, Any]) -> list[_Verdict]:
    """The tests of ``plan``: in NumPy for host values (NumPy arrays, Python numbers:
    nothing to compile or transfer), else as jax.numpy expressions, run eagerly op by op
    on concrete values (kernels that every loss shares) or traced into the caller's
    ``jit``."""
    def array(name: str) -> tuple[Any, Array]:
        value = arrays[name]
        return (np, np.asarray(value)) if _on_host(value) else (jnp, jnp.asarray(value))

    out: list[_Verdict] = []
    for step in plan:
        kind, name = step[0], step[1]
        xp, x = array(name)
        if kind == "nan":
            out.append(_Verdict(f"{loss}: {name} contains {{count}} NaN value(s)", x,
                                ~xp.isnan(x)))
        elif kind == "class_ids":
            classes, where, ignore, paddings = step[2:]
            ok = (x >= 0) & (x < classes)
            message = f"{loss}: {name} must be class ids in [0, {classes}) ({where})"
            if isinstance(ignore, int):
                ok = ok | (x == ignore)
                message += f" or ignore_index={ignore}"
            elif ignore is not None:
                ok = ok | (x == array(ignore)[1])
                message += " or ignore_index (the array passed)"
            if paddings is not None:
                ok = ok | (array(paddings)[1] != 0)
                message += f" where {paddings} is 0"
            out.append(_Verdict(message + _VALUES, x, ok))
        elif kind == "class_lists":
            classes, where = step[2:]
            listed = xp.cumsum(x < 0, axis=-1) == 0
            out.append(_Verdict(f"{loss}: {name} must be class ids in [0, {classes}) "
                                f"({where}) up to the first negative one (the padding)"
                                + _VALUES, x, ~listed | (x < classes)))
        else:
            test, must = _RANGES[kind]
            out.append(_Verdict(f"{loss}: {name} must {must}" + _VALUES, x, test(xp, x)))
            if kind == "paddings" and x.ndim and x.shape[-1] > 1:
                rows = ~xp.any(x[..., 1:] < x[..., :-1], axis=-1)
                out.append(_Verdict(
                    f"{loss}: {name} must be right-padded (no 0 after a 1 along the last "
                    f"axis); {{count}} row(s) are not (first: row {{first}})",
                    xp.arange(rows.size).reshape(rows.shape), rows))
    return out


def _raise(message: str, count: int, first: Any) -> None:
    raise checkify.JaxRuntimeError(message.format(count=count, first=str(first)))


def _raise_first_eagerly(verdicts: list[_Verdict]) -> None:
    if not verdicts:
        return
    counts: list[Any] = [np.sum(~np.broadcast_to(v.ok, v.x.shape)) if _on_host(v.ok)
                         else jnp.sum(~jnp.broadcast_to(v.ok, v.x.shape), dtype=jnp.int32)
                         for v in verdicts]
    on_device = [i for i, c in enumerate(counts) if not _on_host(c)]
    if on_device:  # one transfer
        for i, c in zip(on_device, np.asarray(jnp.stack([counts[i] for i in on_device])),
                        strict=True):
            counts[i] = c
    for verdict, count in zip(verdicts, counts, strict=True):
        if count:
            x = np.asarray(verdict.x)
            ok = np.broadcast_to(np.asarray(verdict.ok), x.shape)
            _raise(verdict.message, int(count), x.ravel()[np.argmin(ok.ravel())])


def _raise_first_traced(verdicts: list[_Verdict]) -> None:
    """A host callback that raises when the computation runs."""
    counts, firsts = [], []
    for v in verdicts:
        bad = ~jnp.broadcast_to(v.ok, v.x.shape).ravel()
        counts.append(jnp.sum(bad, dtype=jnp.int32))
        index = jnp.min(jnp.where(bad, jnp.arange(bad.size), bad.size - 1))
        firsts.append(jnp.asarray(v.x).ravel()[index].astype(jnp.float32))
    integer = tuple(not jnp.issubdtype(v.x.dtype, jnp.floating) for v in verdicts)
    messages = tuple(v.message for v in verdicts)

    def report(counts: np.ndarray, firsts: np.ndarray) -> None:
        for message, count, first, is_int in zip(messages, counts, firsts, integer,
                                                 strict=True):
            if count:
                _raise(message, int(count), int(first) if is_int else first)

    jax.debug.callback(report, jnp.stack(counts), jnp.stack(firsts))


def _verdicts_of(target: _Target, arguments: dict[str, Any]) -> tuple[list[_Verdict], bool]:
    """The verdicts of the call's checks, and whether they are traced."""
    plan, arrays = _plan(target, arguments)
    # The checks never meet autodiff: under grad the values (the primal) are checked.
    arrays = {k: jax.lax.stop_gradient(v) if isinstance(v, jax.core.Tracer) else v
              for k, v in arrays.items()}
    traced = any(isinstance(v, jax.core.Tracer) for v in arrays.values())
    return _verdicts(target.name, plan, arrays), traced


def _report(verdicts: list[_Verdict], traced: bool) -> None:
    """Raises on the first failed verdict: now where the values are known (also the
    host values of a traced call), else (under ``jit``, ``vmap``) when the computation
    runs, from a host callback."""
    if traced:
        _raise_first_eagerly([v for v in verdicts if _on_host(v.ok)])
        verdicts = [v for v in verdicts if not _on_host(v.ok)]
    if not verdicts:
        return
    if traced:
        _raise_first_traced(verdicts)
    else:
        _raise_first_eagerly(verdicts)


def check_arguments(loss: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """The checks of ``checked(loss)(*args, **kwargs)`` without the call of ``loss``."""
    target = _target(loss)
    arguments = _arguments(target, args, kwargs)
    _refuse_unsupported(target, arguments)
    _report(*_verdicts_of(target, arguments))


def checked(loss: Callable[P, R]) -> Callable[P, R]:
    """Wraps ``loss`` so that values outside its domain raise instead of giving NaN or a
    meaningless number.

    Under ``jit`` a loss cannot raise on values (an out-of-range label gives NaN). The
    wrapped loss first checks

    - that no floating input (array or Python number) is NaN, and
    - for a built-in loss (also through ``functools.partial``, or ``jax.jit`` of it), that
      every argument lies in the domain the loss declares in ``jaxloss/_registry.py``:
      integer labels in ``[0, C)`` for the ``C`` classes of the class axis (or equal to
      the ``ignore_index`` of the call, the partial or the signature's default; CTC's
      padded labels are free), probabilities and soft labels in [0, 1], targets,
      weights, variances and distances >= 0, log-probabilities <= 0, targets in
      {-1, 1} where the loss needs signs, CTC's label paddings 0/1 and right-padded,
      softmax logits without +inf (-inf is a masked class), embeddings finite, and
      numeric options in range, also when given as arrays (``label_smoothing`` in
      [0, 1], ``temperature`` and ``softcap`` > 0, ``z_loss`` and margins >= 0, ...),

    then calls ``loss`` unchanged: the values and gradients are exactly the loss's.

    A failed check names the loss, the argument, what it must be, how many values are
    not and the first of them. Where it raises:

    - On concrete values (an eager call, and also under ``jax.grad``, ``jax.vjp`` and
      ``jax.value_and_grad``, where the checks see the primal values through
      ``jax.lax.stop_gradient`` and autodiff never sees them): at once, before the loss
      runs, a ``jax.experimental.checkify.JaxRuntimeError``, which is a ``ValueError``.
    - On traced values (under ``jax.jit``, ``jax.vmap``): the checks become part of the
      computation and a ``jax.debug.callback`` raises when it runs. Under ``jit`` XLA
      passes that on as a ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``, raised by
      the call or at the latest when its result is read) whose message holds the
      check's; JAX also logs the callback's traceback. Under ``vmap`` without ``jit`` the
      ``ValueError`` itself, from the first example that fails.

    The checks cost a pass over the inputs (on the host for NumPy inputs) and, under
    ``jit``, a host callback per call: this is for debugging and data validation, not the
    training step. ``axis_name`` (inside ``jax.shard_map``) is not supported: a
    ValueError at once; check the global arrays before sharding them instead. Every entry
    is checked, also those that ``where`` leaves out. A callable that is not a built-in
    loss gets the NaN check alone.

    Example::

      safe_ce = jaxloss.checked(jaxloss.softmax_cross_entropy_with_integer_labels)
      safe_ce(logits, labels)   # raises if a label is out of range
      jax.grad(lambda x: safe_ce(x, labels).sum())(logits)   # checks, then differentiates
    """
    target = _target(loss)
    # The wrapper passes the arguments on unchanged, which P cannot express.
    call: Callable[..., R] = loss

    @functools.wraps(loss)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            arguments = _arguments(target, args, kwargs)
        except TypeError:
            call(*args, **kwargs)  # the loss's own error, naming the argument
            raise
        _refuse_unsupported(target, arguments)
        try:
            verdicts = _verdicts_of(target, arguments)
        except (IndexError, TypeError, ValueError):
            call(*args, **kwargs)  # shapes or dtypes that do not fit: the loss says which
            raise
        _report(*verdicts)
        return call(*args, **kwargs)

    return wrapper
