"""Vocabulary-parallel (Megatron-style) cross-entropy: the class axis sharded over every
CPU device that ``tests/conftest.py`` creates (4 in the normal suite, 8 in
tests/test_distributed.py's run of this directory), inside ``jax.shard_map``. Values and
gradients equal the unsharded losses', and the ``[N, V]`` logits are never gathered.
The CPU devices are used whatever JAX's default backend is, and the unsharded references
run on the CPU too (the ``on_cpu`` fixture); the matmuls run at precision="highest"."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss

pytestmark = pytest.mark.usefixtures("on_cpu")

AXIS = "model"
CPU = jax.devices("cpu")
DEVICES = len(CPU)
N, D, V, CHUNK = 16, 8, 64, 5  # V a multiple of 8; a chunk of 5 leaves a remainder
TOL = {"rtol": 1e-5, "atol": 1e-6}
RNG = np.random.default_rng(0)
LOGITS = (3 * RNG.normal(size=(N, V))).astype(np.float32)
LABELS = RNG.integers(0, V, size=N).astype(np.int32)
CLASS_WEIGHTS = RNG.uniform(0.2, 2.0, size=V).astype(np.float32)
ROW_MASK = np.arange(N) % 4 != 1
HIDDEN = RNG.normal(size=(N, D)).astype(np.float32)
WEIGHT = (0.8 * RNG.normal(size=(D, V))).astype(np.float32)
BIAS = RNG.normal(size=V).astype(np.float32)

# Classes masked with -inf: all of the second shard's block (on 8 devices, the second
# and third) in rows 0 to 3, and a scattered few in every row.
MASKED = np.zeros((N, V), bool)
MASKED[:4, V // 4: V // 2] = True
MASKED[:, [1, 5, V - 1]] = True
MASKED_LABELS = np.where(MASKED[np.arange(N), LABELS], 0, LABELS).astype(np.int32)
BIAS_MASK = MASKED[0]  # the bias masks the same classes in every row

# Where each array lives inside the shard_map: classes split over AXIS, the rest
# replicated (None: the default of the array's rank).
SPECS = {"logits": P(None, AXIS), "class_weights": P(AXIS), "hidden": P(),
         "weight": P(None, AXIS), "bias": P(AXIS), "labels": P()}
# The numeric options, as arrays replicated over the mesh: values, differentiated too.
OPTIONS = {"label_smoothing": np.float32(0.2), "temperature": np.float32(0.7),
           "z_loss": np.float32(0.05), "softcap": np.float32(4.0)}
SPECS.update(dict.fromkeys(OPTIONS, P()))
DIFFERENTIABLE = ("logits", "class_weights", "hidden", "weight", "bias", *OPTIONS)


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((DEVICES,), (AXIS,), devices=CPU)


def _spec(name, value):
    if name == "where":  # a row mask, or a class mask sharded like the logits
        return P() if np.ndim(value) == 1 else P(None, AXIS)
    return SPECS[name]


# The sharded integer cross-entropy under test: the public keyword (which calls
# large_vocab._vocab_parallel_integer_ce).
INTEGER_CE = [pytest.param(jaxloss.softmax_cross_entropy_with_integer_labels, id="public")]
_public_ce = jaxloss.softmax_cross_entropy_with_integer_labels


def _values_and_grads(loss, arrays, options, mesh=None, check_vma=True):
    """Per-row losses, and the value and gradients (every differentiable array) of
    ``"mean"``, in one jit; sharded over ``mesh`` (the loss called with ``axis_name``)
    or, without it, on the unsharded arrays."""
    names = list(arrays)
    diff = [n for n in names if n in DIFFERENTIABLE]

    def call(reduction, *values):
        a = dict(zip(names, values, strict=True))
        first = ((a.pop("logits"),) if "logits" in a else (a.pop("hidden"), a.pop("weight")))
        labels = a.pop("labels")
        extra = {} if mesh is None else {"axis_name": AXIS}
        return loss(*first, labels, reduction=reduction, **a, **options, **extra)

    def per_reduction(reduction):
        if mesh is None:
            return lambda *v: call(reduction, *v)
        return jax.shard_map(lambda *v: call(reduction, *v), mesh=mesh,
                             in_specs=tuple(_spec(n, arrays[n]) for n in names),
                             out_specs=P(), check_vma=check_vma)

    def f(*values):
        def mean(*d):
            v = list(values)
            for n, x in zip(diff, d, strict=True):
                v[names.index(n)] = x
            return per_reduction("mean")(*v)

        grads = jax.value_and_grad(mean, argnums=tuple(range(len(diff))))(
            *(values[names.index(n)] for n in diff))
        return per_reduction("none")(*values), grads

    values = [arrays[n] for n in names]
    if mesh is not None:
        values = [jax.device_put(v, NamedSharding(mesh, _spec(n, v)))
                  for n, v in zip(names, values, strict=True)]
    return jax.jit(f)(*values)


def _assert_matches_unsharded(loss, unsharded, arrays, options, mesh, check_vma=True,
                              finite=True, scaled=False):
    """``scaled``: each leaf to 1e-6 of its largest entry as well (inputs near 1e29,
    whose gradients cancel: the devices' shares are summed in another order)."""
    got = _values_and_grads(loss, arrays, options, mesh, check_vma)
    want = _values_and_grads(unsharded, arrays, options)
    if scaled:
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=TOL["rtol"],
                                       atol=max(TOL["atol"], 1e-6 * float(np.max(np.abs(w)))))
    else:
        chex.assert_trees_all_close(got, want, **TOL)
    if finite:
        chex.assert_tree_all_finite(got)
    return got


# ---------------------------------------------------------------------------------
# Integer-label cross-entropy of logit shards.


INTEGER_CASES = {
    "plain": ({}, {}),
    "options": ({"class_weights": CLASS_WEIGHTS, "where": ROW_MASK,
                 "labels": np.where(np.arange(N) % 4 == 2, -100, LABELS).astype(np.int32),
                 **OPTIONS},
                {"ignore_index": -100}),
    # -inf logits (a whole shard's block in some rows) and a class mask.
    "masked": ({"logits": np.where(MASKED, -np.inf, LOGITS), "labels": MASKED_LABELS,
                "where": ~np.isin(np.arange(V), [2, 40])[None].repeat(N, 0),
                "class_weights": CLASS_WEIGHTS},
               {"label_smoothing": 0.3}),
    # |logits| ~ 1e30: the textbook softmax overflows.
    "huge": ({"logits": LOGITS * np.float32(1e29)}, {"label_smoothing": 0.1}),
}


@pytest.mark.parametrize("loss", INTEGER_CE)
@pytest.mark.parametrize("case", list(INTEGER_CASES))
def test_integer_ce_matches_unsharded(mesh, loss, case):
    changed, options = INTEGER_CASES[case]
    arrays = {"logits": LOGITS, "labels": LABELS, **changed}
    if case == "masked":  # keep the label off the where-masked classes too
        arrays["labels"] = np.where(np.isin(MASKED_LABELS, [2, 40]), 3,
                                    MASKED_LABELS).astype(np.int32)
    (per_row, (value, grads)) = _assert_matches_unsharded(
        loss, _public_ce, arrays, options, mesh)
    assert per_row.shape == (N,) and value.shape == ()
    if case == "masked":
        d_logits = np.asarray(grads[0])
        np.testing.assert_array_equal(d_logits[MASKED], 0.0)
    if case == "huge":
        assert float(jnp.max(per_row)) > 1e28


@pytest.mark.parametrize("loss", INTEGER_CE)
def test_integer_ce_without_replication_checks(mesh, loss):
    """check_vma=False: shard_map hands the loss a share of its cotangent per device."""
    changed, options = INTEGER_CASES["options"]
    _assert_matches_unsharded(loss, _public_ce, {"logits": LOGITS, "labels": LABELS,
                                                 **changed}, options, mesh, check_vma=False)


@pytest.mark.parametrize("loss", INTEGER_CE)
def test_integer_ce_out_of_range_label_gives_nan(mesh, loss):
    labels = LABELS.copy()
    labels[[3, 6]] = [V, -1]
    per_row, (_, (d_logits,)) = _assert_matches_unsharded(
        loss, _public_ce, {"logits": LOGITS, "labels": labels}, {}, mesh, finite=False)
    bad = np.isin(np.arange(N), [3, 6])
    assert np.isnan(per_row[bad]).all() and np.isfinite(per_row[~bad]).all()
    assert np.isnan(d_logits[bad]).all() and np.isfinite(d_logits[~bad]).all()


def test_integer_ce_over_two_mesh_axes():
    """Classes sharded over a tuple of axes, in PartitionSpec order."""
    mesh = jax.make_mesh((2, DEVICES // 2), ("a", "b"), devices=CPU)
    x = jax.device_put(LOGITS, NamedSharding(mesh, P(None, ("a", "b"))))
    w = jax.device_put(CLASS_WEIGHTS, NamedSharding(mesh, P(("a", "b"))))

    def loss(x, w, reduction):
        return _public_ce(x, LABELS, axis_name=("a", "b"), class_weights=w,
                          label_smoothing=0.1, reduction=reduction)

    sharded = jax.shard_map(lambda x, w: loss(x, w, "mean"), mesh=mesh,
                            in_specs=(P(None, ("a", "b")), P(("a", "b"))), out_specs=P())
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(x, w)
    want = jax.jit(jax.value_and_grad(
        lambda x, w: _public_ce(x, LABELS, class_weights=w, label_smoothing=0.1,
                                reduction="mean"), argnums=(0, 1)))(LOGITS, CLASS_WEIGHTS)
    chex.assert_trees_all_close(got, want, **TOL)


def test_integer_ce_with_rows_over_a_data_axis():
    """2-D mesh: rows over "data", classes over "model"; the class weights, replicated
    over "data", get the sum of every row block's gradient."""
    mesh = jax.make_mesh((2, DEVICES // 2), ("data", AXIS), devices=CPU)
    specs = (P("data", AXIS), P("data"), P(AXIS))

    def loss(x, y, w):
        return _public_ce(x, y, axis_name=AXIS, class_weights=w, label_smoothing=0.2)

    sharded = jax.shard_map(loss, mesh=mesh, in_specs=specs, out_specs=P("data"))
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((LOGITS, LABELS, CLASS_WEIGHTS), specs, strict=True)]

    def weighted_sum(fn):
        return jax.jit(jax.value_and_grad(
            lambda x, y, w: jnp.sum(fn(x, y, w) * HIDDEN[:, 0]), argnums=(0, 2)))

    want = weighted_sum(lambda x, y, w: _public_ce(x, y, class_weights=w, label_smoothing=0.2))
    chex.assert_trees_all_close(weighted_sum(sharded)(*args),
                                want(LOGITS, LABELS, CLASS_WEIGHTS), **TOL)


# ---------------------------------------------------------------------------------
# linear_softmax_cross_entropy with the weight's columns sharded.


def _linear(hidden, weight, labels, **kwargs):
    return jaxloss.linear_softmax_cross_entropy(hidden, weight, labels, chunk_size=CHUNK,
                                                precision="highest", **kwargs)


LINEAR_CASES = {
    "plain": ({}, {}),
    "options": ({"where": ROW_MASK,
                 "labels": np.where(np.arange(N) % 4 == 2, -100, LABELS).astype(np.int32),
                 **OPTIONS},
                {"ignore_index": -100}),
    "masked": ({"bias": np.where(BIAS_MASK, -np.inf, BIAS).astype(np.float32),
                "labels": np.where(BIAS_MASK[LABELS], 0, LABELS).astype(np.int32)},
               {"label_smoothing": 0.3}),
    "huge": ({"weight": WEIGHT * np.float32(1e29)}, {"label_smoothing": 0.1}),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_ce_matches_unsharded(mesh, case):
    changed, options = LINEAR_CASES[case]
    arrays = {"hidden": HIDDEN, "weight": WEIGHT, "bias": BIAS, "labels": LABELS, **changed}
    per_row, (_, grads) = _assert_matches_unsharded(_linear, _linear, arrays, options, mesh,
                                                    scaled=case == "huge")
    assert per_row.shape == (N,)
    if case == "masked":
        np.testing.assert_array_equal(np.asarray(grads[1])[:, BIAS_MASK], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[BIAS_MASK], 0.0)


def test_linear_ce_without_replication_checks(mesh):
    changed, options = LINEAR_CASES["options"]
    arrays = {"hidden": HIDDEN, "weight": WEIGHT, "bias": BIAS, "labels": LABELS, **changed}
    _assert_matches_unsharded(_linear, _linear, arrays, options, mesh, check_vma=False)


def test_linear_ce_with_rows_over_a_data_axis():
    """2-D mesh: hidden's rows over "data", the vocabulary over "model"; no bias; the
    per-row losses come out sharded by rows and are summed outside the shard_map."""
    model = DEVICES // 2
    mesh = jax.make_mesh((2, model), ("data", AXIS), devices=CPU)
    specs = (P("data"), P(None, AXIS), P("data"))
    sharded = jax.shard_map(lambda h, w, y: _linear(h, w, y, axis_name=AXIS),
                            mesh=mesh, in_specs=specs, out_specs=P("data"))
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((HIDDEN, WEIGHT, LABELS), specs, strict=True)]

    def total(fn):
        return jax.jit(jax.value_and_grad(lambda h, w, y: jnp.sum(fn(h, w, y) * HIDDEN[:, 0]),
                                          argnums=(0, 1)))

    chex.assert_trees_all_close(total(sharded)(*args),
                                total(_linear)(HIDDEN, WEIGHT, LABELS), **TOL)


def test_linear_ce_data_parallel_without_axis_name():
    """Without axis_name inside a shard_map over rows (the weight replicated): the
    scan's carries and the weight's gradient are typed as the rows are."""
    mesh = jax.make_mesh((DEVICES,), ("data",), devices=CPU)
    specs = (P("data"), P(), P(), P("data"))
    sharded = jax.shard_map(lambda h, w, b, y: _linear(h, w, y, bias=b, label_smoothing=0.1),
                            mesh=mesh, in_specs=specs, out_specs=P("data"))
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip((HIDDEN, WEIGHT, BIAS, LABELS), specs, strict=True)]

    def total(fn):
        return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2)))

    chex.assert_trees_all_close(
        total(sharded)(*args),
        total(lambda h, w, b, y: _linear(h, w, y, bias=b, label_smoothing=0.1))(
            HIDDEN, WEIGHT, BIAS, LABELS), **TOL)


# ---------------------------------------------------------------------------------
# The [N, V] logits are never gathered.


def _shard_map_bodies(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "shard_map":
            yield eqn.params["jaxpr"]
        for sub in _sub_jaxprs(eqn):
            yield from _shard_map_bodies(sub)


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _primitives_and_sizes(jaxpr):
    """Every primitive in ``jaxpr`` (nested), and the largest value it makes."""
    names, largest = set(), 0
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        for sub in _sub_jaxprs(eqn):
            more, size = _primitives_and_sizes(sub)
            names |= more
            largest = max(largest, size)
    return names, largest


@pytest.mark.parametrize("which", ["integer", "linear"])
def test_logits_are_never_gathered(mesh, which):
    """In the value and gradient's jaxpr, the shard_map bodies hold no all-gather and
    no value larger than the local logits [N, V/n] (integer) or the local inputs
    (linear: the [N, chunk] logits only)."""
    if which == "integer":
        names = ("logits", "class_weights", "labels")
        arrays = (LOGITS, CLASS_WEIGHTS, LABELS)
        limit = N * V // DEVICES

        def loss(x, w, y):
            return _public_ce(x, y, axis_name=AXIS, class_weights=w,
                              label_smoothing=0.1, reduction="mean")
    else:
        names = ("hidden", "weight", "bias", "labels")
        arrays = (HIDDEN, WEIGHT, BIAS, LABELS)
        limit = max(N * D, D * V // DEVICES)

        def loss(h, w, b, y):
            return _linear(h, w, y, bias=b, axis_name=AXIS, label_smoothing=0.1,
                           reduction="mean")

    specs = tuple(SPECS[n] for n in names)
    sharded = jax.shard_map(loss, mesh=mesh, in_specs=specs, out_specs=P())
    args = [jax.device_put(a, NamedSharding(mesh, s))
            for a, s in zip(arrays, specs, strict=True)]
    argnums = tuple(range(len(names) - 1))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(sharded, argnums=argnums))(*args).jaxpr
    bodies = list(_shard_map_bodies(jaxpr))
    assert len(bodies) >= 2  # the forward and the transposed shard_map
    collectives = set()
    for body in bodies:
        primitives, largest = _primitives_and_sizes(body)
        assert not primitives & {"all_gather", "all_to_all", "ppermute"}, primitives
        assert largest <= limit, (largest, limit)
        collectives |= {p for p in primitives if p.startswith(("psum", "pmax"))}
    assert "pmax" in collectives and len(collectives) >= 2, collectives


def test_axis_name_outside_shard_map_says_so():
    with pytest.raises(ValueError, match="axis_name='model' is not bound"):
        _linear(HIDDEN, WEIGHT, LABELS, axis_name=AXIS)
    with pytest.raises(ValueError, match="axis_name='model' is not bound"):
        _public_ce(LOGITS, LABELS, axis_name=AXIS)
    with pytest.raises(ValueError, match="single class axis"):
        _public_ce(LOGITS.reshape(N, 2, V // 2), LABELS, axis=(1, 2), axis_name=AXIS)
