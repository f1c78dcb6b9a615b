"""Numeric options are values, not compile-time constants, for every registry loss.

A schedule (label smoothing warmed up, a temperature annealed, a margin grown) passes a
new value at every step: the loss must take it as a traced value, inside the caller's
jit and eagerly, without compiling again. Options that change what is computed
(``reduction``, ``axis``, ``chunk_size``, ``norm_degree``, whether ``softcap`` is on at
all) stay static, and an unhashable value for one of them raises an error that names it.
The sample inputs are each registry loss's first ``jaxloss check`` case.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import _registry
from jaxloss.testing import builtin_cases

# Numeric options whose default is None (off) but which take a value.
NONE_DEFAULT = {"softcap": 3.0}
# Integer options that are values too.
INTEGER = {"ignore_index": (-100, -7)}
# The helpers that are not losses of arrays: make_pairs samples (its options size the
# output), make_fenchel_young_loss builds a loss, shift_labels takes Python ints.
NOT_LOSSES = {"make_pairs", "make_fenchel_young_loss", "shift_labels", "smooth_labels"}


@pytest.fixture(scope="module")
def cases():
    first = {}
    for case in builtin_cases():
        first.setdefault(case.name.split("[")[0], case)
    return first


def _options(fn):
    """``(name, value_1, value_2)`` for every numeric option of ``fn``."""
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        d = p.default
        if name in INTEGER:
            out.append((name, *INTEGER[name]))
        elif isinstance(d, float):
            out.append((name, 0.1, 0.2) if d == 0 else (name, 0.9 * d, 0.8 * d))
        elif d is None and name in NONE_DEFAULT:
            v = NONE_DEFAULT[name]
            out.append((name, v, 1.5 * v))
    return out


LOSSES = [e for e in _registry.ENTRIES if e.family != "utility" and e.name not in NOT_LOSSES]
WITH_OPTIONS = [e for e in LOSSES if _options(getattr(jaxloss, e.name))]


class _Compiles:
    """Counts XLA compilations (JAX's backend-compile events)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


@pytest.fixture(scope="module")
def compiles():
    return _Compiles()


def test_every_loss_has_a_sample(cases):
    missing = {e.name for e in LOSSES} - set(cases)
    assert not missing, f"no `jaxloss check` case to take sample inputs from: {missing}"


@pytest.mark.parametrize("entry", WITH_OPTIONS, ids=lambda e: e.name)
def test_numeric_options_are_traced_values(entry, cases, compiles):
    """Each numeric option: traced inside the caller's jit (one compile for two values),
    and eagerly a second value compiles nothing."""
    case = cases[entry.name]
    signature = inspect.signature(case.loss)
    for name, first, second in _options(case.loss):

        def call(value, name=name):
            bound = signature.bind_partial(*case.args, **case.kwargs)
            bound.arguments[name] = value
            out = case.loss(*bound.args, **bound.kwargs)
            return jax.tree.map(lambda x: jnp.sum(x.astype(jnp.float32)), out)

        jitted = jax.jit(call)
        dtype = jnp.int32 if name in INTEGER else jnp.float32
        a = jitted(jnp.asarray(first, dtype))
        before = compiles.count
        b = jitted(jnp.asarray(second, dtype))
        assert compiles.count == before, f"{entry.name}: a new traced {name} recompiled"
        jax.block_until_ready((a, b))

        call(first)  # eagerly: the first value compiles what it needs
        before = compiles.count
        eager = call(second)
        assert compiles.count == before, (
            f"{entry.name}: {name}={second} after {name}={first} compiled "
            f"{compiles.count - before} more program(s): the option is a compile-time "
            "constant")
        np.testing.assert_allclose(np.asarray(jax.tree.leaves(eager)[0]),
                                   np.asarray(jax.tree.leaves(b)[0]), rtol=1e-5,
                                   err_msg=f"{entry.name}: {name} eager vs traced")


def test_a_schedule_over_smoothing_and_temperature_compiles_once(compiles):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 16, size=8))
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    loss(logits, labels, label_smoothing=0.01, temperature=0.5)
    before = compiles.count
    values = [loss(logits, labels, label_smoothing=0.01 * (i + 2), temperature=0.5 + 0.02 * i)
              for i in range(20)]
    assert compiles.count == before
    assert len({float(jnp.sum(v)) for v in values}) == 20  # each value was used


def test_defaults_compile_the_plain_path():
    """A Python number equal to the option's off value is the path without the option:
    the same program as the defaults (bit for bit)."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(8, 16)) * 5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 16, size=8))
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    plain = jax.value_and_grad(lambda x: loss(x, labels, reduction="mean"))(logits)
    explicit = jax.value_and_grad(lambda x: loss(
        x, labels, reduction="mean", label_smoothing=0.0, temperature=1.0, z_loss=0.0,
        softcap=None))(logits)
    for p, e in zip(jax.tree.leaves(plain), jax.tree.leaves(explicit), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(e))


@pytest.mark.parametrize("name", ["label_smoothing", "temperature", "z_loss", "softcap"])
def test_traced_options_match_python_values(name):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(6, 5)) * 3, jnp.float32)
    labels = jnp.asarray([0, 1, -100, 3, 4, 2])
    value = {"label_smoothing": 0.2, "temperature": 0.7, "z_loss": 0.05, "softcap": 2.5}[name]
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    want = loss(logits, labels, **{name: value})
    got = jax.jit(lambda v: loss(logits, labels, **{name: v}))(jnp.float32(value))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_temperature_is_differentiable_in_every_softmax_cross_entropy():
    """d loss / d temperature, against central differences in float64, as for
    info_nce's temperature."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        logits = jnp.asarray(rng.normal(size=(6, 5)) * 3)
        labels = jnp.asarray([0, 1, -100, 3, 4, 2])
        hidden, weight = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.normal(size=(4, 5)))
        calls = {
            "integer": lambda t: jaxloss.softmax_cross_entropy_with_integer_labels(
                logits, labels, temperature=t, reduction="mean"),
            "dense": lambda t: jaxloss.softmax_cross_entropy(
                logits, jax.nn.one_hot(jnp.maximum(labels, 0), 5), temperature=t,
                reduction="mean"),
            "linear": lambda t: jaxloss.linear_softmax_cross_entropy(
                hidden, weight, labels, temperature=t, reduction="mean", chunk_size=2),
            "log_probs": lambda t: jnp.sum(jaxloss.linear_log_probs(
                hidden, weight, labels, temperature=t, chunk_size=2)),
            "info_nce": lambda t: jnp.mean(jaxloss.info_nce(hidden, hidden[::-1],
                                                            temperature=t)),
        }
        for what, f in calls.items():
            t, h = 0.7, 1e-6
            numeric = (f(t + h) - f(t - h)) / (2 * h)
            np.testing.assert_allclose(float(jax.grad(f)(t)), float(numeric), rtol=1e-6,
                                       err_msg=what)


def test_an_unhashable_static_option_names_itself():
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(TypeError, match="reduction"):
        jaxloss.softmax_cross_entropy_with_integer_labels(logits, labels,
                                                          reduction=jnp.array(0))
    with pytest.raises(TypeError, match="chunk_size"):
        jaxloss.linear_softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((3, 4)), labels,
                                             chunk_size=jnp.array(2))


def test_option_values_are_still_checked_when_known():
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    with pytest.raises(ValueError, match="label_smoothing"):
        loss(logits, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        loss(logits, labels, label_smoothing=jnp.float32(1.5))
    with pytest.raises(ValueError, match="temperature"):
        loss(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="z_loss"):
        loss(logits, labels, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        loss(logits, labels, softcap=jnp.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="ignore_index"):
        loss(logits, labels, ignore_index=1.5)
