r"""Cross-device helpers: meshes from ``jax.devices()`` and the collectives that the
losses' ``axis_name`` option uses inside ``jax.shard_map``.

A loss called with ``axis_name="data"`` inside ``jax.shard_map`` over a mesh axis of
:math:`n` devices sees only its device's :math:`b = B/n` rows. The contrastive losses
need every key, so they gather them; the collectives here are the pieces:

- :func:`all_gather_with_grad`: the keys of all devices, ``[B, D]`` on every device.
  Its transpose is a reduce-scatter (``psum_scatter``) of the cotangent: each device
  gets back the sum over devices of the gradient of *its own* rows (OpenCLIP's
  ``gather_with_grad``), so no gradient is lost and none is counted twice.
- :func:`ring_shift`: ``ppermute`` by one step around the axis; :math:`n - 1` shifts
  bring every device's block by in turn, so that a loss forms one :math:`b \times b`
  block of scores at a time (SigLIP's chunked loss). Its transpose is the shift the
  other way.
- :func:`axis_size` / :func:`axis_index`: :math:`n` and this device's position, with an
  error that says what to do when the axis is not bound (the loss was called outside
  ``jax.shard_map``).
- :func:`varying` / :func:`match_varying`: mark a replicated value (a learned
  temperature) as varying over the axis, so that its cotangent, a per-device partial
  sum, is ``psum``-med over the devices by JAX's transpose of that cast. Every
  ``jax.custom_vjp`` here casts its inputs so: its backward pass must return each
  cotangent with its input's type, and does so inside ``jax.shard_map`` too.

Row :math:`i` of device :math:`r` is global row :math:`r b + i`: the order of
``jax.lax.axis_index`` is the order of the tiled ``all_gather`` and of a
``PartitionSpec("data")`` split of the global batch, so the local row's positive key is
column :math:`r b + i` of the gathered keys.

Meshes
------
:func:`data_mesh` is a 1-D mesh over all devices (data parallel); :func:`model_mesh` a
2-D ``("data", "model")`` mesh (e.g. a vocabulary split over ``"model"``). Both are
built with ``jax.make_mesh`` from ``jax.devices()``, which after
``jax.distributed.initialize()`` lists the devices of *every* process, so the same code
runs on one host or many. The axes are ``Auto`` by default: ``jax.shard_map`` with
explicit ``in_specs`` then places (reshards) its inputs itself; pass
``axis_types=(jax.sharding.AxisType.Explicit, ...)`` for explicit sharding.

Multi-host
----------
Run the same script on every host, with ``jax.distributed.initialize()`` called first
(before any other JAX call). Outside a managed cluster, tell it the coordinator, the
number of processes and this process's id::

    # on each of N hosts (process id 0 .. N-1), host 0 reachable as HOST0:
    python train.py --coordinator HOST0:1234 --num-processes N --process-id i

    # train.py
    import jax
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
    mesh = jaxloss.distributed.data_mesh()   # the devices of all N processes

On SLURM (``srun``), Cloud TPU pods and Open MPI, ``jax.distributed.initialize()``
takes no arguments: it detects the cluster. Each process then feeds its own slice of
the global batch, e.g. with
``jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local_batch)``,
and the ``jax.shard_map`` over the mesh runs unchanged.

References:
  OpenCLIP's ``gather_features`` and ``ClipLoss(local_loss=True, gather_with_grad=True)``,
  https://github.com/mlfoundations/open_clip; Zhai et al., `Sigmoid Loss for Language
  Image Pre-Training <https://arxiv.org/abs/2303.15343>`_, 2023, section 3.3 (the
  chunked, ``ppermute``-based loss); JAX, `Manual parallelism with shard_map
  <https://docs.jax.dev/en/latest/notebooks/shard_map.html>`_.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AxisName",
    "all_gather_with_grad",
    "axis_index",
    "axis_size",
    "axis_tuple",
    "data_mesh",
    "match_varying",
    "model_mesh",
    "ring_shift",
    "varying",
    "varying_axes",
]

AxisName = str | tuple[str, ...]


def axis_tuple(axis_name: AxisName) -> tuple[str, ...]:
    """``axis_name`` as a tuple of mesh axis names (``"data"`` -> ``("data",)``), for
    the collectives; TypeError for anything else."""
    if isinstance(axis_name, str):
        return (axis_name,)
    if isinstance(axis_name, tuple) and axis_name and all(isinstance(a, str) for a in axis_name):
        return axis_name
    raise TypeError(f"axis_name must be a mesh axis name (str) or a tuple of them, "
                    f"got {axis_name!r}")


def axis_size(axis_name: AxisName) -> int:
    """The number of devices along ``axis_name`` (a static int).

    Raises:
      ValueError: the axis is not bound, i.e. the caller is not inside a
        ``jax.shard_map`` (or ``pmap``) over a mesh with that axis.
    """
    axes = axis_tuple(axis_name)
    try:
        return int(jax.lax.axis_size(axes if len(axes) > 1 else axes[0]))
    except NameError as e:
        raise ValueError(
            f"axis_name={axis_name!r} is not bound here: call the loss inside "
            f"jax.shard_map over a mesh with that axis (e.g. jaxloss.distributed."
            f"data_mesh()), or leave axis_name=None ({e})"
        ) from None


def axis_index(axis_name: AxisName) -> jax.Array:
    """This device's position along ``axis_name``, in ``0 .. axis_size - 1``; for a
    tuple of axes the row-major position, the order of a tiled ``all_gather``."""
    axes = axis_tuple(axis_name)
    axis_size(axes)  # the clear error when unbound
    return jax.lax.axis_index(axes if len(axes) > 1 else axes[0])


def varying(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """``x`` typed as varying over ``axis_name`` (a no-op where it already is, or where
    ``jax.shard_map(..., check_vma=False)`` tracks no types).

    A replicated input of a ``jax.custom_vjp`` whose backward pass returns a
    per-device partial cotangent (e.g. a temperature) must be cast first: the
    transpose of the cast is a ``psum``, which adds the partials up.
    """
    have = varying_axes(x)
    missing = tuple(a for a in axis_tuple(axis_name) if a not in have)
    if not missing:
        return x
    return jax.lax.pcast(x, missing, to="varying")


def varying_axes(x: jax.Array) -> frozenset[str]:
    """The manual mesh axes that ``x``'s type varies over inside ``jax.shard_map``
    (empty outside it, and under ``check_vma=False``)."""
    manual = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", frozenset()))


@overload
def match_varying(*xs: jax.Array) -> tuple[jax.Array, ...]: ...


@overload
def match_varying(*xs: jax.Array | None) -> tuple[jax.Array | None, ...]: ...


def match_varying(*xs: jax.Array | None) -> tuple[jax.Array | None, ...]:
    """``xs``, each typed as varying over every manual axis that any of them varies
    over (a no-op outside ``jax.shard_map``; ``None`` passes through).

    A ``jax.custom_vjp``'s backward pass must return each cotangent with its input's
    type. Inside ``jax.shard_map`` a replicated scalar (a temperature, an epsilon) that
    meets per-device rows gets a per-device cotangent; cast first, the scalar's
    cotangent is summed over the devices by the cast's transpose.
    """
    axes = frozenset().union(*(varying_axes(x) for x in xs if x is not None))
    if not axes:
        return xs
    names = tuple(sorted(axes))
    return tuple(None if x is None else varying(x, names) for x in xs)


def all_gather_with_grad(x: jax.Array, axis_name: AxisName) -> jax.Array:
    r"""The blocks ``x`` of every device along ``axis_name``, concatenated on axis 0.

    ``[b, ...]`` on each of :math:`n` devices gives ``[n b, ...]``, device :math:`r`'s
    block at rows :math:`r b .. (r + 1) b - 1`. Differentiable: the transpose is
    ``jax.lax.psum_scatter`` (a reduce-scatter), so device :math:`r` receives
    :math:`\sum_{r'} \partial L_{r'} / \partial x_r`, the gradient of every device's
    loss with respect to its own rows (OpenCLIP's ``gather_with_grad=True``).
    """
    axes = axis_tuple(axis_name)
    axis_size(axes)
    return jax.lax.all_gather(x, axes if len(axes) > 1 else axes[0], axis=0, tiled=True)


def ring_shift(x: jax.Array, axis_name: AxisName, shift: int = 1) -> jax.Array:
    r"""Device :math:`r` gets the ``x`` of device :math:`r - \text{shift}` (mod :math:`n`):
    every device passes its block ``shift`` steps along the ring. Differentiable (the
    transpose shifts back)."""
    axes = axis_tuple(axis_name)
    n = axis_size(axes)
    perm = [(r, (r + shift) % n) for r in range(n)]
    return jax.lax.ppermute(x, axes if len(axes) > 1 else axes[0], perm)


def _mesh(shape: tuple[int, ...], names: tuple[str, ...],
          axis_types: Sequence[AxisType] | None,
          devices: Sequence[jax.Device] | None) -> Mesh:
    if axis_types is None:
        axis_types = (AxisType.Auto,) * len(names)
    return jax.make_mesh(shape, names, axis_types=tuple(axis_types), devices=devices)


def data_mesh(
    axis_name: str = "data",
    *,
    axis_types: Sequence[AxisType] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 1-D mesh over every device (of every process after
    ``jax.distributed.initialize()``), for data parallelism.

    Args:
      axis_name: the name of the mesh axis, to pass as the losses' ``axis_name``.
      axis_types: ``jax.sharding.AxisType`` of the axis (default ``Auto``).
      devices: the devices (default ``jax.devices()``).

    Returns:
      ``jax.sharding.Mesh`` of shape ``{axis_name: len(devices)}``.
    """
    devices = list(jax.devices() if devices is None else devices)
    return _mesh((len(devices),), (axis_name,), axis_types, devices)


def model_mesh(
    model: int,
    *,
    axis_names: tuple[str, str] = ("data", "model"),
    axis_types: Sequence[AxisType] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 2-D ``(data, model)`` mesh: ``model`` devices per model replica (e.g. the
    vocabulary split across them), ``len(devices) // model`` replicas.

    Args:
      model: devices along the model axis; must divide the device count.
      axis_names: the names of the (data, model) axes.
      axis_types: ``jax.sharding.AxisType`` of each axis (default ``Auto``).
      devices: the devices (default ``jax.devices()``).

    Returns:
      ``jax.sharding.Mesh`` of shape ``{data: len(devices) // model, model: model}``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(model, bool) or not isinstance(model, int) or model < 1 \
            or len(devices) % model:
        raise ValueError(f"model must be a positive int dividing the {len(devices)} "
                         f"devices, got {model!r}")
    if len(axis_names) != 2 or axis_names[0] == axis_names[1]:
        raise ValueError(f"axis_names must be two distinct names, got {axis_names!r}")
    return _mesh((len(devices) // model, model), tuple(axis_names), axis_types, devices)


def replicated_sharding(*xs: jax.Array | None) -> NamedSharding | None:
    """A replicated ``NamedSharding`` on the Explicit mesh that any of ``xs`` is sharded
    over (JAX's default axes: ``jax.make_mesh`` without ``axis_types``), or None where
    none is (single device, Auto axes, inside ``jax.shard_map``).

    A contraction over a batch axis split over an Explicit axis (``hidden.T @ grad``,
    the weight's gradient summed over the rows) has no output sharding JAX can infer:
    it must be given, and the sum of every device's rows is replicated."""
    for x in xs:
        if x is None:
            continue
        mesh = getattr(jax.typeof(x).sharding, "mesh", None)
        types = getattr(mesh, "axis_types", ())
        if mesh is not None and types and all(t == AxisType.Explicit for t in types):
            spec = jax.typeof(x).sharding.spec
            if any(s is not None for s in spec):
                return NamedSharding(mesh, PartitionSpec())
    return None
