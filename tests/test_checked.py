"""``jaxloss.checked``: every loss of the registry differentiates through it as itself
(grad, vjp, value_and_grad, jit), and every rule of every loss's ``domain``
(jaxloss/_registry.py) catches a bad value planted into valid input, which the loss
itself lets through.

The valid inputs are those of ``jaxloss check`` (``jaxloss.testing.builtin_cases``), so
a loss added to the registry is covered as soon as it has cases and a domain.
"""

import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxloss
from jaxloss import _checked
from jaxloss._registry import ENTRIES
from jaxloss.testing import Extreme, builtin_cases

CASES = builtin_cases()
LOSSES = [e for e in ENTRIES if e.checked]
BY_NAME: dict[str, list] = {}
for _case in CASES:
    BY_NAME.setdefault(_case.name.split("[")[0], []).append(_case)
RULES = [(e.name, text) for e in LOSSES for text in e.domain or ()]

# A value outside each kind of range (see jaxloss._checked.KINDS).
BAD = {"finite": -np.inf, "logits": np.inf, "probability": 1.5, "non_negative": -1.0,
       "positive": 0.0, "log_probability": 0.5, "signs": 0.0}


def _loss_of(case):
    """The registry's function of ``case`` (the case may wrap it, e.g. to take one of its
    outputs), or the loss a registry factory made."""
    name = case.name.split("[")[0]
    if getattr(case.loss, "__qualname__", "").startswith(f"{name}.<locals>."):
        return case.loss
    return getattr(jaxloss, name)


def _sum(out):
    """The sum of every floating output (the aux outputs' integer counts left out)."""
    return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(out)
               if jnp.issubdtype(jnp.result_type(leaf), jnp.floating))


def _first_float(case):
    return next(i for i, a in enumerate(case.args)
                if jnp.issubdtype(jnp.result_type(a), jnp.floating))


def _arguments(loss, args, kwargs, defaults=True):
    bound = inspect.signature(loss).bind(*args, **kwargs)
    if defaults:
        bound.apply_defaults()
    return bound


def _holds(rule, arguments):
    return rule.flag is None or bool(arguments[rule.flag]) != rule.negated


def test_every_loss_declares_its_domain():
    missing = [e.name for e in LOSSES if e.domain is None]
    assert not missing, (
        f"{missing}: declare what the loss requires of its values, domain=(...), in "
        f"jaxloss/_registry.py (domain=() if nothing beyond 'not NaN'; the kinds are "
        f"jaxloss._checked.KINDS), so that jaxloss.checked checks it")
    stray = [e.name for e in ENTRIES if not e.checked and e.domain is not None]
    assert not stray, f"{stray}: a domain without jaxloss check cases is never tested"


def test_every_rule_parses_and_names_the_loss_arguments():
    for entry in LOSSES:
        assert BY_NAME.get(entry.name), f"{entry.name} has no jaxloss check case"
        params = inspect.signature(_loss_of(BY_NAME[entry.name][0])).parameters
        for text in entry.domain or ():
            rule = _checked.parse_rule(text)
            named = [rule.param, *rule.args[:1], *(v for _, v in rule.options)]
            if rule.flag is not None:
                named.append(rule.flag)
            if rule.kind == "class_ids" and len(rule.args) > 1 and not rule.args[1].lstrip(
                    "-").isdigit():
                named.append(rule.args[1])
            for name in named:
                assert name in params, f"{entry.name}: {text!r} names {name}, not an argument"
    with pytest.raises(ValueError, match="bad domain rule 'labels: class_id"):
        _checked.parse_rule("labels: class_id(logits)")
    with pytest.raises(ValueError, match="needs the argument"):
        _checked.parse_rule("labels: class_ids")


def test_checked_finds_each_loss_in_the_registry():
    for entry in LOSSES:
        loss = _loss_of(BY_NAME[entry.name][0])  # for a factory, the loss it made
        for wrapped in (loss, functools.partial(loss), jax.jit(loss)):
            target = _checked._target(wrapped)
            assert target.name == entry.name
            assert target.rules == tuple(map(_checked.parse_rule, entry.domain))
    assert _checked._target(jaxloss.mse).name == "mean_squared_error"
    assert _checked._target(lambda x: x).rules is None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_valid_inputs_pass_the_checks(case):
    """No rule rejects a valid input: the cases' own and their extremes (-inf masked
    classes, ±1e30 logits, probabilities 0 and 1, the bf16/fp16 range)."""
    calls = [(case.args, case.kwargs)]
    for extreme in case.extremes:
        extreme = extreme if isinstance(extreme, Extreme) else Extreme(extreme)
        calls.append((extreme.args, {**case.kwargs, **extreme.kwargs}))
    for args, kwargs in calls:
        _checked.check_arguments(_loss_of(case), *args, **kwargs)


def _total(loss, case, i):
    """``x -> sum(loss(...))``, ``x`` the case's argument ``i``."""
    return lambda x: _sum(loss(*case.args[:i], x, *case.args[i + 1:], **case.kwargs))


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_checked_differentiates_as_the_loss(name):
    """grad, vjp and value_and_grad of checked(loss) give exactly the loss's value and
    gradient (in the first floating argument); so does jit, to rounding (one program
    compiled with the checks and the loss inlined)."""
    case = BY_NAME[name][0]
    i = _first_float(case)
    x = jnp.asarray(case.args[i])
    loss, safe = _total(_loss_of(case), case, i), _total(jaxloss.checked(_loss_of(case)), case, i)
    value, grad = jax.value_and_grad(loss)(x)
    got_value, got_grad = jax.value_and_grad(safe)(x)
    np.testing.assert_array_equal(got_value, value)
    np.testing.assert_array_equal(got_grad, grad)
    np.testing.assert_array_equal(jax.grad(safe)(x), grad)
    out, pullback = jax.vjp(safe, x)
    np.testing.assert_array_equal(out, value)
    np.testing.assert_array_equal(pullback(jnp.ones_like(out))[0], grad)
    np.testing.assert_allclose(jax.jit(safe)(x), value, rtol=1e-6, atol=1e-6)


JIT_GRAD = ["sigmoid_binary_cross_entropy", "softmax_cross_entropy_with_integer_labels",
            "linear_softmax_cross_entropy"]


@pytest.mark.parametrize("name", JIT_GRAD)
def test_jit_of_the_gradient_of_checked(name):
    """jit(value_and_grad(checked(loss))) of custom_vjp losses: the loss's values and
    gradients (to rounding)."""
    case = BY_NAME[name][0]
    i = _first_float(case)
    x = jnp.asarray(case.args[i])
    value, grad = jax.value_and_grad(_total(_loss_of(case), case, i))(x)
    got = jax.jit(jax.value_and_grad(_total(jaxloss.checked(_loss_of(case)), case, i)))(x)
    np.testing.assert_allclose(got[0], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], grad, rtol=1e-5, atol=1e-6)


def _case_for(name, rule):
    """A case of ``name`` where ``rule`` applies, preferring one that passes its argument;
    with none, the first case with the rule's flag turned and its argument valid."""
    cases = BY_NAME[name]
    for want_value in (True, False):
        for case in cases:
            arguments = _arguments(_loss_of(case), case.args, case.kwargs).arguments
            if _holds(rule, arguments) and (arguments[rule.param] is not None
                                            or not want_value):
                return _loss_of(case), list(case.args), dict(case.kwargs)
    case = cases[0]
    bound = _arguments(_loss_of(case), case.args, case.kwargs, defaults=False)
    bound.arguments[rule.flag] = rule.negated is False
    assert BAD[rule.kind] != 0.5
    bound.arguments[rule.param] = np.full(np.shape(bound.arguments[rule.param]), 0.5)
    return _loss_of(case), list(bound.args), dict(bound.kwargs)


def _plant(rule, value, arguments):
    """``value`` with one entry outside ``rule``'s domain (an option: a 0-d array)."""
    if rule.kind in BAD:
        if value is None or np.ndim(value) == 0:
            return np.asarray(BAD[rule.kind], np.float32)
        x = np.array(value, dtype=np.result_type(value, np.float32))
        x.flat[0] = BAD[rule.kind]
        return x
    x = np.array(value)
    if rule.kind == "paddings":
        x = x.astype(np.float32)
        x[0, 0], x[0, -1] = 1.0, 0.0  # a padded slot before a label
        return x
    ref = np.shape(arguments[rule.args[0]])
    axis = -1
    if len(rule.args) > 1:
        axis = arguments[rule.args[1]] if rule.args[1] in arguments else int(rule.args[1])
    classes = int(np.prod([ref[a] for a in np.atleast_1d(axis)]))
    if rule.kind == "class_lists":
        x[..., 0] = classes  # the first slot is always in the list
    elif rule.kind == "class_ids":
        free = np.zeros(x.shape, bool)
        if arguments.get("ignore_index") is not None:
            free |= x == arguments["ignore_index"]
        if rule.option("paddings") is not None:
            free |= np.broadcast_to(np.asarray(arguments[rule.option("paddings")]) != 0, x.shape)
        x.flat[np.argmin(free.ravel())] = classes  # a label equal to the class count
    else:
        raise AssertionError(f"no planted value for {rule.kind}")
    return x


@pytest.mark.parametrize("name, text", RULES, ids=[f"{n}:{t}" for n, t in RULES])
def test_planted_bad_value_raises(name, text):
    """One value outside the rule's domain, planted into valid input: checked(loss)
    raises, naming the argument; the loss alone does not."""
    rule = _checked.parse_rule(text)
    loss, args, kwargs = _case_for(name, rule)
    safe = jaxloss.checked(loss)
    if rule.kind == "unsupported":
        with pytest.raises(ValueError, match=f"{rule.param}='batch' is not supported"):
            safe(*args, **kwargs, **{rule.param: "batch"})
        return
    arguments = _arguments(loss, args, kwargs).arguments
    bad = _plant(rule, arguments[rule.param], arguments)
    bound = _arguments(loss, args, kwargs, defaults=False)
    bound.arguments[rule.param] = bad
    with pytest.raises(checkify.JaxRuntimeError,
                       match=re.escape(f"{name}: {rule.param} must")):  # a ValueError
        safe(*bound.args, **bound.kwargs)
    # The loss itself lets the value through: the check is what catches it.
    try:
        jax.block_until_ready(loss(*bound.args, **bound.kwargs))
    except ValueError as error:
        # It checks a known value itself (an option's range; optax's check that dice
        # predictions are distributions); a traced one (under jit) it cannot.
        assert rule.param in str(error) or "probability distributions" in str(error), error

        def traced(v):
            bound.arguments[rule.param] = v
            return loss(*bound.args, **bound.kwargs)

        try:
            jax.eval_shape(traced, bad)
        except TypeError as static:  # a static option: its value is always known
            assert rule.param in str(static), static


def test_planted_bad_value_raises_under_jit():
    """Under jit the check raises from a host callback when the computation runs: XLA
    passes it on as its runtime error, with the check's message."""
    case = BY_NAME["softmax_cross_entropy_with_integer_labels"][0]
    logits, labels = case.args
    bad = np.array(labels)
    bad[3] = logits.shape[-1]
    safe = jax.jit(jaxloss.checked(jaxloss.softmax_cross_entropy_with_integer_labels))
    np.testing.assert_allclose(safe(logits, labels), case.loss(logits, labels), rtol=1e-6)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"labels must be class ids in \[0, 5\) \(logits.shape\[-1\]\)"):
        jax.block_until_ready(safe(logits, bad))
    # Also under jit of grad, and for an option given as a traced array.
    grad = jax.jit(jax.grad(lambda x, y: jaxloss.checked(case.loss)(x, y).sum()))
    with pytest.raises(jax.errors.JaxRuntimeError, match="labels must be class ids"):
        jax.block_until_ready(grad(logits, bad))
    sbce = jax.jit(jaxloss.checked(jaxloss.sigmoid_binary_cross_entropy))
    targets = np.full(logits.shape, 0.5, np.float32)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"pos_weight must lie in \[0, inf\]"):
        jax.block_until_ready(sbce(logits, targets, pos_weight=-np.ones(5, np.float32)))


def test_vmap_of_checked():
    """Under vmap (without jit) each example is checked; the error is the ValueError."""
    case = BY_NAME["multiclass_hinge_loss"][0]
    scores, labels = (np.asarray(a) for a in case.args)
    safe = jax.vmap(jaxloss.checked(jaxloss.multiclass_hinge_loss))
    np.testing.assert_array_equal(safe(scores, labels),
                                  jax.vmap(jaxloss.multiclass_hinge_loss)(scores, labels))
    bad = labels.copy()
    bad[2] = -1
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 5\)"):
        safe(scores, bad)


def test_ignore_index_is_read_from_the_call():
    """The signature's default (or the call's, or a partial's) decides which label is
    free; None frees none."""
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    case = BY_NAME[loss.__name__][0]
    logits, labels = case.args
    ignored = np.where(np.arange(len(labels)) == 1, -100, labels)
    safe = jaxloss.checked(loss)
    if inspect.signature(loss).parameters["ignore_index"].default == -100:
        safe(logits, ignored)
    else:
        with pytest.raises(ValueError, match="labels must be class ids"):
            safe(logits, ignored)
    safe(logits, ignored, ignore_index=-100)
    with pytest.raises(ValueError, match=r"class ids in \[0, 5\) \(logits.shape\[-1\]\);"):
        safe(logits, ignored, ignore_index=None)
    jaxloss.checked(functools.partial(loss, ignore_index=-100))(logits, ignored)
    with pytest.raises(ValueError, match="or ignore_index=-1;"):
        jaxloss.checked(functools.partial(loss, ignore_index=-1))(logits, ignored)
    # An ignore_index given as an array (traced, say) is compared as a value.
    _checked.check_arguments(loss, logits, ignored, ignore_index=jnp.asarray(-100))
    with pytest.raises(ValueError, match="or ignore_index=-7;"):
        _checked.check_arguments(loss, logits, ignored, ignore_index=jnp.asarray(-7))
    check = jax.jit(lambda i: _checked.check_arguments(loss, logits, ignored, ignore_index=i))
    check(-100)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"or ignore_index \(the array passed\); 1 value\(s\) do not"):
        jax.block_until_ready(check(-7))


def test_any_callable_gets_the_nan_check():
    safe = jaxloss.checked(lambda predictions, *rest: jnp.sum(predictions))
    assert float(safe(np.ones(3, np.float32))) == 3.0
    with pytest.raises(ValueError, match="<lambda>: predictions contains 1 NaN"):
        safe(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match=r"rest\[0\] contains 2 NaN"):
        safe(np.ones(2), np.full(2, np.nan))
