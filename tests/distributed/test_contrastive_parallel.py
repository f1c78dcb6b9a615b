"""The contrastive losses across devices (``axis_name`` inside ``jax.shard_map``):
values and gradients equal the single-device ones, on every CPU device that
``tests/conftest.py`` creates (4 in the normal suite, 8 in tests/test_distributed.py's
run of this directory). The CPU devices are used whatever JAX's default backend is, and
the single-device references run on the CPU too (the ``on_cpu`` fixture); the matmuls
run at precision="highest" on both sides."""

import functools
import importlib.util
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss import distributed

pytestmark = pytest.mark.usefixtures("on_cpu")

CPU = jax.devices("cpu")
N = len(CPU)
B, D = 32, 16  # B a multiple of 8: 8 (4 devices) or 4 (8 devices) rows per device
TOL = {"rtol": 1e-5, "atol": 1e-5}
RNG = np.random.default_rng(0)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


Q = _unit(RNG.normal(size=(B, D)))
K = _unit(Q + 0.7 * RNG.normal(size=(B, D)))
W = RNG.uniform(0.5, 1.5, size=B).astype(np.float32)  # cotangent of the per-row losses
LABELS = RNG.integers(0, 6, size=B).astype(np.int32)  # groups spread over the devices
TAU = np.float32(0.1)
SCALE, BIAS = np.float32(10.0), np.float32(-5.0)  # SigLIP's t and b (big_vision's init)
ROWS, REPLICATED = P("data"), P()
MEMORY_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distributed_memory.py"

# The matmul losses at full float32 precision (a GPU's default is TF32).
info_nce = functools.partial(jaxloss.info_nce, precision="highest")
ntxent = functools.partial(jaxloss.ntxent, precision="highest")
siglip_loss = functools.partial(jaxloss.siglip_loss, precision="highest")


@pytest.fixture(scope="module")
def mesh():
    return distributed.data_mesh(devices=CPU)


def _assert_matches_one_device(mesh, loss, args, specs, argnums):
    """``loss(*args, reduction=..., axis_name=...)`` inside a shard_map over ``mesh``
    against the same loss on one device: the per-row ("none"), "mean" and "sum" values,
    and the gradients (``argnums`` of ``args``) of ``mean + sum(w * none) + sum / 10``,
    in which a wrong gradient of any of the three shows."""

    def values(*a, axis_name=None):
        return tuple(loss(*a, reduction=r, axis_name=axis_name)
                     for r in ("none", "mean", "sum"))

    across = jax.shard_map(functools.partial(values, axis_name="data"), mesh=mesh,
                           in_specs=specs, out_specs=(ROWS, REPLICATED, REPLICATED))

    def objective(fn, w, *a):
        none, mean, total = fn(*a)
        return mean + jnp.sum(w * none) + 0.1 * total, (none, mean, total)

    grad = functools.partial(jax.value_and_grad, argnums=tuple(i + 1 for i in argnums),
                             has_aux=True)
    (_, got), got_grads = jax.jit(grad(functools.partial(objective, across)))(W, *args)
    (_, want), want_grads = jax.jit(grad(functools.partial(objective, values)))(W, *args)
    chex.assert_trees_all_close(got, want, **TOL)
    chex.assert_trees_all_close(got_grads, want_grads, **TOL)
    chex.assert_tree_all_finite(got_grads)


# ---------------------------------------------------------------------------------
# info_nce: gathered keys, b x B blocks.


@pytest.mark.parametrize("symmetric, chunk_size", [(False, None), (True, None), (True, 3)])
def test_info_nce_matches_one_device(mesh, symmetric, chunk_size):
    """Gradients of queries, keys and the replicated temperature; a chunk of 3 leaves a
    remainder of the 8 or 4 rows per device."""

    def loss(q, k, t, **kw):
        return info_nce(q, k, temperature=t, symmetric=symmetric,
                        chunk_size=chunk_size, **kw)

    _assert_matches_one_device(mesh, loss, (Q, K, TAU), (ROWS, ROWS, REPLICATED),
                               argnums=(0, 1, 2))


def test_info_nce_mean_temperature_gradient(mesh):
    """jax.grad of the global mean w.r.t. the temperature alone (the replicated input's
    cotangent summed over the devices once), with check_vma on and off."""

    def body(q, k, t):
        return info_nce(q, k, temperature=t, symmetric=True, reduction="mean",
                        axis_name="data")

    want = jax.grad(lambda t: info_nce(Q, K, temperature=t, symmetric=True,
                                       reduction="mean"))(TAU)
    for check_vma in (True, False):
        across = jax.shard_map(body, mesh=mesh, in_specs=(ROWS, ROWS, REPLICATED),
                               out_specs=REPLICATED, check_vma=check_vma)
        got = jax.jit(jax.grad(across, argnums=2))(Q, K, TAU)
        chex.assert_trees_all_close(got, want, **TOL)


def test_info_nce_over_two_mesh_axes():
    """A tuple axis_name: the batch split over both axes of a (data, model) mesh."""
    mesh = distributed.model_mesh(2, devices=CPU)
    both = ("data", "model")
    across = jax.shard_map(
        lambda q, k: info_nce(q, k, symmetric=True, axis_name=both),
        mesh=mesh, in_specs=(P(both), P(both)), out_specs=P(both))
    chex.assert_trees_all_close(jax.jit(across)(Q, K),
                                info_nce(Q, K, symmetric=True), **TOL)


def test_info_nce_second_derivative_across_devices(mesh):
    """Reverse-over-reverse through the symmetric loss across devices (its column
    log-sum-exp's pmax takes no derivative): d2/dt2 and the Hessian-vector product
    in the queries equal the single-device ones (chunked: both paths share the
    column combination, and the scan is the harder one to differentiate twice)."""
    v = _unit(RNG.normal(size=(B, D)))
    for chunk_size in (2,):
        def loss(q, k, t, axis_name=None, chunk_size=chunk_size):
            return info_nce(q, k, temperature=t, symmetric=True, reduction="mean",
                            chunk_size=chunk_size, axis_name=axis_name)

        across = jax.shard_map(functools.partial(loss, axis_name="data"), mesh=mesh,
                               in_specs=(ROWS, ROWS, REPLICATED), out_specs=REPLICATED)
        for f, fn in (("across", across), ("one", loss)):
            # Compiled: eager reverse-over-reverse through the scan dispatches op by op.
            d2t = jax.jit(jax.grad(jax.grad(fn, argnums=2), argnums=2))(Q, K, TAU)
            hvp = jax.jit(jax.grad(lambda q, fn=fn: jnp.vdot(jax.grad(fn)(q, K, TAU), v)))(Q)
            if f == "across":
                got = (d2t, hvp)
            else:
                chex.assert_trees_all_close(got, (d2t, hvp), rtol=1e-4, atol=1e-5)


def test_info_nce_inputs_varying_over_another_axis():
    """On a (data, model) mesh, embeddings that also vary over "model" (e.g. a
    different projection per model shard) with axis_name="data": values and gradients
    equal the one-device loss of each model shard's inputs."""
    mesh = distributed.model_mesh(2, devices=CPU)
    q2 = np.stack([Q, K])  # model shard 0 sees Q, shard 1 sees K as queries
    k2 = np.stack([K, Q])

    def body(q, k, t):
        loss = info_nce(q[0], k[0], temperature=t, symmetric=True,
                        reduction="mean", axis_name="data")
        return loss[None]

    across = jax.shard_map(body, mesh=mesh, in_specs=(P("model", "data"), P("model", "data"),
                                                      REPLICATED),
                           out_specs=P("model"))
    value, grads = jax.jit(jax.value_and_grad(lambda q, k, t: jnp.sum(across(q, k, t)),
                                              argnums=(0, 1, 2)))(q2, k2, TAU)

    def one(q, k, t):
        return sum(info_nce(q[i], k[i], temperature=t, symmetric=True,
                            reduction="mean") for i in range(2))

    want_value, want_grads = jax.value_and_grad(one, argnums=(0, 1, 2))(q2, k2, TAU)
    chex.assert_trees_all_close(value, want_value, **TOL)
    chex.assert_trees_all_close(grads, want_grads, **TOL)


def test_custom_vjp_losses_inside_shard_map_without_axis_name(mesh):
    """Each device's own loss (no axis_name) differentiates inside jax.shard_map: the
    replicated temperature and epsilon are cast to the rows' type, so the backward
    passes return cotangents of their inputs' types; the gradient is the sum of the
    per-device losses' gradients."""

    def per_device(q, k, t):
        return (info_nce(q, k, temperature=t, symmetric=True, reduction="sum")
                + jnp.sum(jaxloss.pairwise_distance(q, k))
                + jnp.sum(jaxloss.triplet_margin_loss(q, k, k[::-1])))

    across = jax.shard_map(lambda *a: jax.lax.psum(per_device(*a), "data"), mesh=mesh,
                           in_specs=(ROWS, ROWS, REPLICATED), out_specs=REPLICATED)
    blocks = lambda x: x.reshape(N, B // N, D)  # noqa: E731
    want = jax.grad(lambda q, k, t: jnp.sum(jax.vmap(per_device, (0, 0, None))(
        blocks(q), blocks(k), t)), argnums=(0, 1, 2))(Q, K, TAU)
    got = jax.jit(jax.grad(across, argnums=(0, 1, 2)))(Q, K, TAU)
    chex.assert_trees_all_close(got, want, **TOL)


# ---------------------------------------------------------------------------------
# ntxent: gathered embeddings and labels, psum-med pair sum and count.


@pytest.mark.parametrize("check_vma", [True, False])
def test_ntxent_and_siglip_mean_match_one_device(mesh, check_vma):
    """ntxent and siglip's mean across devices, with shard_map's check_vma on and off
    (off, shard_map itself sums the replicated inputs' cotangents)."""
    want = jax.jit(jax.value_and_grad(ntxent, argnums=(0, 2)))(Q, LABELS, TAU)
    across = jax.shard_map(lambda e, y, t: ntxent(e, y, t, axis_name="data"),
                           mesh=mesh, in_specs=(ROWS, ROWS, REPLICATED),
                           out_specs=REPLICATED, check_vma=check_vma)
    got = jax.jit(jax.value_and_grad(across, argnums=(0, 2)))(Q, LABELS, TAU)
    chex.assert_trees_all_close(got, want, **TOL)
    chex.assert_tree_all_finite(got)

    want = jax.value_and_grad(siglip_loss, argnums=(0, 1, 2, 3))(Q, K, SCALE, BIAS)
    across = jax.shard_map(
        lambda x, y, t, b: siglip_loss(x, y, t, b, axis_name="data"), mesh=mesh,
        in_specs=(ROWS, ROWS, REPLICATED, REPLICATED), out_specs=REPLICATED,
        check_vma=check_vma)
    got = jax.jit(jax.value_and_grad(across, argnums=(0, 1, 2, 3)))(Q, K, SCALE, BIAS)
    chex.assert_trees_all_close(got, want, **TOL)


# ---------------------------------------------------------------------------------
# siglip_loss: text blocks around the ring.


def test_siglip_matches_one_device(mesh):
    """Gradients of images, texts, the logit scale and the bias."""

    def loss(x, y, t, b, **kw):
        return siglip_loss(x, y, t, b, **kw)

    _assert_matches_one_device(mesh, loss, (Q, K, SCALE, BIAS),
                               (ROWS, ROWS, REPLICATED, REPLICATED), argnums=(0, 1, 2, 3))


def ref_siglip(x, y, t, b):
    """The paper's loss written out: -sum_ij log(1 / (1 + exp(-label_ij z_ij))) per row."""
    z = x @ y.T * t + b
    labels = 2 * jnp.eye(x.shape[0]) - 1
    return -jnp.sum(jnp.log(1 / (1 + jnp.exp(-labels * z))), axis=1)


def test_siglip_matches_float64_reference(x64):
    args = tuple(np.asarray(a, np.float64) for a in (Q, K, SCALE, BIAS))

    @jax.jit
    def both(*a):
        values = tuple(siglip_loss(*a, reduction=r) for r in ("none", "mean", "sum"))
        per_row = ref_siglip(*a)
        grads = (jax.grad(siglip_loss, argnums=(0, 1, 2, 3))(*a),
                 jax.grad(lambda *a: jnp.mean(ref_siglip(*a)), argnums=(0, 1, 2, 3))(*a))
        return values, (per_row, jnp.mean(per_row), jnp.sum(per_row)), grads

    got, want, (got_grads, want_grads) = both(*args)
    chex.assert_trees_all_close(got, want, rtol=1e-12)
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-10, atol=1e-12)


def test_siglip_extremes_and_dtypes():
    """Logits of +-1e30 (where the naive log(1 / (1 + exp)) is -inf): finite loss and
    gradients; bf16 embeddings: a float32 loss, bf16 gradients; NaN in, NaN out."""
    grad = jax.value_and_grad(siglip_loss, argnums=(0, 1, 2, 3))
    for bias in (1e30, -1e30):
        value, grads = grad(Q, K, np.float32(1e20), np.float32(bias))
        chex.assert_tree_all_finite((value, grads))
    value, grads = grad(jnp.asarray(Q, jnp.bfloat16), jnp.asarray(K, jnp.bfloat16),
                        SCALE, BIAS)
    assert value.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
    chex.assert_tree_all_finite((value, grads))
    nan = Q.copy()
    nan[0, 0] = np.nan
    assert jnp.isnan(siglip_loss(nan, K, SCALE, BIAS))


def test_siglip_bad_input():
    with pytest.raises(ValueError, match="text_embeddings"):
        siglip_loss(Q, K[:4], SCALE, BIAS)
    with pytest.raises(ValueError, match="temperature"):
        siglip_loss(Q, K, -1.0, BIAS)
    with pytest.raises(ValueError, match="bias"):
        siglip_loss(Q, K, SCALE, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="image_embeddings"):
        siglip_loss(Q.astype(np.int32), K, SCALE, BIAS)


# ---------------------------------------------------------------------------------
# Bad use, collectives, meshes, memory.


@pytest.mark.parametrize("call", [
    lambda: info_nce(Q, K, axis_name="data"),
    lambda: ntxent(Q, LABELS, axis_name="data"),
    lambda: siglip_loss(Q, K, SCALE, BIAS, axis_name="data"),
], ids=["info_nce", "ntxent", "siglip_loss"])
def test_axis_name_outside_shard_map_raises(call):
    with pytest.raises(ValueError, match=r"axis_name='data' is not bound.*shard_map"):
        call()


def test_axis_name_must_be_a_name():
    with pytest.raises(TypeError, match="axis_name"):
        info_nce(Q, K, axis_name=0)


def test_all_gather_with_grad_and_ring_shift(mesh):
    """The gather's gradient reaches the rows' owner, summed over the devices' losses;
    the ring passes device r's block to device r + 1."""
    x = np.arange(B, dtype=np.float32)

    def body(x):
        weight = (distributed.axis_index("data") + 1).astype(jnp.float32)
        gathered = distributed.all_gather_with_grad(x, "data")
        return jax.lax.psum(weight * jnp.sum(gathered * jnp.arange(B)), "data")

    across = jax.shard_map(body, mesh=mesh, in_specs=ROWS, out_specs=REPLICATED)
    chex.assert_trees_all_close(jax.jit(jax.grad(across))(x),
                                N * (N + 1) / 2 * np.arange(B, dtype=np.float32))
    shifted = jax.shard_map(lambda x: distributed.ring_shift(x, "data"), mesh=mesh,
                            in_specs=ROWS, out_specs=ROWS)(x)
    chex.assert_trees_all_close(shifted, np.roll(x, B // N))


def test_meshes():
    # By default over jax.devices() (the default backend's), else over the devices given.
    mesh = distributed.data_mesh()
    assert dict(mesh.shape) == {"data": jax.device_count()}
    assert set(mesh.devices.flat) == set(jax.devices())
    mesh = distributed.model_mesh(jax.device_count(), axis_names=("dp", "tp"))
    assert dict(mesh.shape) == {"dp": 1, "tp": jax.device_count()}
    assert set(mesh.devices.flat) == set(jax.devices())
    mesh = distributed.data_mesh(devices=CPU)
    assert dict(mesh.shape) == {"data": N}
    assert list(mesh.devices.flat) == CPU
    assert dict(distributed.data_mesh("batch", devices=CPU).shape) == {"batch": N}
    mesh = distributed.model_mesh(2, devices=CPU)
    assert dict(mesh.shape) == {"data": N // 2, "model": 2}
    assert set(mesh.devices.flat) == set(CPU)
    assert dict(distributed.model_mesh(N, axis_names=("dp", "tp"), devices=CPU).shape) == {
        "dp": 1, "tp": N}
    with pytest.raises(ValueError, match="model"):
        distributed.model_mesh(3, devices=CPU)


def _load_memory_script():
    spec = importlib.util.spec_from_file_location("jaxloss_distributed_memory", MEMORY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.cpu_backend_only
def test_distributed_info_nce_memory_is_a_device_share(mesh):
    """benchmarks/distributed_memory.py at a small size: each device's temp bytes of
    the distributed, chunked value-and-grad are at most 1/n of the all-gathered
    full-matrix version's (compiled only)."""
    script = _load_memory_script()
    distributed_bytes, full_bytes = script.measure(mesh, batch=64 * N, dim=16, chunk=16)
    assert 0 < distributed_bytes <= full_bytes / N, (distributed_bytes, full_bytes)
