"""Every mode of differentiation on every public loss, the way users call them.

``jax.jvp``, ``jax.linearize`` and ``jax.jacfwd`` on the sample call of each registry
loss (``tests/test_mesh.py``'s ``SAMPLES``, which must cover the registry), in float64,
with respect to every floating argument, each against reverse mode by the dot-product
test. The custom rules serve forward mode by transposing their backward pass
(``jaxloss._rules``); a loss added later is covered without a change here. The values
against float64 references and ``jax.test_util.check_grads(order=2, modes=("fwd",
"rev"))`` are ``jaxloss check``'s, on every registry loss (``make test`` runs it).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_mesh import SAMPLES

import jaxloss
from jaxloss import _rules


def _floating(x: Any) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def _bound(name: str) -> tuple[Callable[..., Any], list[jax.Array]]:
    """The sample's loss as a function of its floating arguments (float64), and those."""
    loss, args = SAMPLES[name]()
    slots = [i for i, a in enumerate(args) if _floating(a)]

    def f(*primals: jax.Array) -> Any:
        full = list(args)
        for i, p in zip(slots, primals, strict=True):
            full[i] = p
        return loss(*full)

    return f, [jnp.asarray(np.asarray(args[i], np.float64)) for i in slots]


def _tangents(primals: list[jax.Array]) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(1)
    return tuple(jnp.asarray(rng.standard_normal(p.shape)) for p in primals)


def _modes(f: Callable[..., Any], primals: list[jax.Array], tangents: tuple[jax.Array, ...],
           cotangent: Any) -> tuple[Any, Any, Any, Any]:
    """jvp's and linearize's tangents, the pullback of ``cotangent`` and jacfwd's
    Jacobian: one compilation."""
    t_out = jax.jvp(f, tuple(primals), tangents)[1]
    t_lin = jax.linearize(f, *primals)[1](*tangents)
    grads = jax.vjp(f, *primals)[1](cotangent)
    jacobian = jax.jacfwd(f, argnums=tuple(range(len(primals))))(*primals)
    return t_out, t_lin, grads, jacobian


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_mode_of_differentiation(name):
    with jax.enable_x64(True):
        f, primals = _bound(name)
        tangents = _tangents(primals)
        out = jax.eval_shape(f, *primals)
        rng = np.random.default_rng(2)
        cotangent = [rng.standard_normal(o.shape) for o in jax.tree.leaves(out)]
        t_out, t_lin, grads, jacobian = jax.jit(lambda p, t, c: _modes(f, p, t, c))(
            primals, tangents, jax.tree.unflatten(jax.tree.structure(out), cotangent))
    # linearize: the same tangent map as jvp, evaluated later.
    for a, b in zip(jax.tree.leaves(t_lin), jax.tree.leaves(t_out), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # The dot-product test: <c, J t> = <J^T c, t>, forward mode against reverse, with
    # J t from jax.jvp and from jax.jacfwd's full Jacobian.
    reverse = sum(float(np.vdot(g, t)) for g, t in zip(grads, tangents, strict=True))
    forward = sum(float(np.vdot(c, t)) for c, t in
                  zip(cotangent, jax.tree.leaves(t_out), strict=True))
    blocks = iter(jax.tree.leaves(jacobian))
    full = 0.0
    for c in cotangent:  # per output, then per argument (jacfwd's layout)
        for t in tangents:
            full += float(np.vdot(c, np.tensordot(np.asarray(next(blocks)), np.asarray(t),
                                                  axes=t.ndim)))
    scale = sum(float(np.sum(np.abs(np.asarray(g) * np.asarray(t))))
                for g, t in zip(grads, tangents, strict=True))
    for got in (forward, full):
        np.testing.assert_allclose(got, reverse, rtol=0, atol=1e-10 * (1 + scale))


def test_forward_mode_through_jit_and_vmap():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5)), jnp.float32)
    labels = jnp.array([[0, 1, 2, -100], [4, 3, 2, 1], [1, 1, 1, 1]])

    def loss(x: jax.Array, y: jax.Array) -> jax.Array:
        return jaxloss.softmax_cross_entropy_with_integer_labels(x, y, reduction="mean")

    tangent = jnp.ones_like(logits)
    batched = jax.jit(jax.vmap(lambda x, y, t: jax.jvp(lambda x: loss(x, y), (x,), (t,))[1]))(
        logits, labels, tangent)
    for i in range(3):
        want = jnp.vdot(jax.grad(loss)(logits[i], labels[i]), tangent[i])
        np.testing.assert_allclose(batched[i], want, rtol=1e-5, atol=1e-6)


def test_an_input_held_fixed_costs_nothing_and_stays_exact():
    # At an infinite logit the derivative in the labels is infinite; a jvp in the logits
    # alone must not multiply it by a zero tangent (0 * inf).
    logits = jnp.array([[jnp.inf, 0.5], [-jnp.inf, 1.0]])
    labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    f = jaxloss.sigmoid_binary_cross_entropy
    t_out = jax.jvp(lambda x: f(x, labels), (logits,), (jnp.ones_like(logits),))[1]
    np.testing.assert_array_equal(np.isfinite(t_out), True)
    np.testing.assert_allclose(t_out, jax.grad(lambda x: f(x, labels).sum())(logits),
                               rtol=1e-6)


def test_the_rule_is_the_one_source_of_the_derivative():
    # A planted fault in a backward pass must show in forward mode too (not only in
    # jax.grad): forward mode transposes that same rule.
    calls = []
    rule = _rules.rule()

    @rule
    def square(x: jax.Array) -> jax.Array:
        return x * x

    def fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x * x, x

    def bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        calls.append(1)
        return (3 * x * g,)  # planted: the true derivative is 2 x

    square.defvjp(fwd, bwd)
    x = jnp.array([1.0, 2.0])
    assert float(jax.grad(lambda x: square(x).sum())(x)[1]) == 6.0
    assert float(jax.jvp(square, (x,), (jnp.ones(2),))[1][1]) == 6.0
    assert calls
