"""Flax NNX training steps, a fit loop with checkpoints, and data parallelism with JAX's
own sharding.

A training objective is ``loss_fn(model, batch) -> (scalar, metrics)``;
:func:`supervised` and :func:`siamese` build one from any jaxloss loss. The same step
runs on one CPU, several devices or a TPU slice: given a ``jax.sharding.Mesh`` with a
``"data"`` axis, the batch is split over that axis and the model replicated, and XLA
inserts the gradient all-reduce.

Example::

    model = MLP(...)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    loss_fn = supervised(jaxloss.softmax_cross_entropy_with_integer_labels)
    step = make_train_step(loss_fn, mesh=jax.make_mesh((jax.device_count(),), ("data",)))
    for batch in batches:
        metrics = step(model, optimizer, batch)
"""

from __future__ import annotations

import inspect
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch], tuple[jax.Array, Metrics]]
Step = Callable[..., Metrics]

DATA_AXIS = "data"


def _mean(loss: Callable[..., jax.Array], *args: Any, **kwargs: Any) -> jax.Array:
    """The loss as a scalar: ``reduction="mean"`` where the loss has it."""
    if "reduction" in inspect.signature(loss).parameters and "reduction" not in kwargs:
        kwargs["reduction"] = "mean"
    value = loss(*args, **kwargs)
    return value if value.ndim == 0 else jnp.mean(value)


def supervised(
    loss: Callable[..., jax.Array],
    *,
    metrics: Callable[[jax.Array, Batch], Metrics] | None = None,
    **loss_kwargs: Any,
) -> LossFn:
    """``loss_fn(model, batch)`` for batches ``{"x", "y"}``: ``loss(model(x), y)``.

    Args:
      loss: a jaxloss loss (or any ``loss(outputs, targets, **kwargs)``).
      metrics: optional ``metrics(outputs, batch) -> dict`` reported beside the loss.
      **loss_kwargs: options for the loss (``label_smoothing=0.1``, ...).
    """

    def loss_fn(model: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
        outputs = model(batch["x"])
        value = _mean(loss, outputs, batch["y"], **loss_kwargs)
        return value, ({} if metrics is None else metrics(outputs, batch))

    return loss_fn


def siamese(
    loss: Callable[..., jax.Array],
    *,
    metrics: Callable[[jax.Array, jax.Array, Batch], Metrics] | None = None,
    **loss_kwargs: Any,
) -> LossFn:
    """``loss_fn(model, batch)`` for pairs ``{"a", "b", "similar"}``.

    One network embeds both sides (shared weights, the Siamese architecture):
    ``loss(model(a), model(b), similar)``.
    """

    def loss_fn(model: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
        embedding_a, embedding_b = model(batch["a"]), model(batch["b"])
        value = _mean(loss, embedding_a, embedding_b, batch["similar"], **loss_kwargs)
        extra = {} if metrics is None else metrics(embedding_a, embedding_b, batch)
        return value, extra

    return loss_fn


# ---------------------------------------------------------------------------------
# Placement on a mesh.


def _data_parallel_size(mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis, got axes {mesh.axis_names}")
    size: int = mesh.shape[DATA_AXIS]  # Mesh.shape is annotated Any
    return size


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Splits each array's leading axis over the mesh's ``"data"`` axis.

    A batch whose size the axis does not divide is replicated instead (an evaluation
    set's last batch, say): the result is the same, only not split.
    """
    size = _data_parallel_size(mesh)

    def place(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        spec = P(DATA_AXIS) if x.ndim and x.shape[0] % size == 0 else P()
        placed: jax.Array = jax.device_put(x, NamedSharding(mesh, spec))  # annotated Any
        return placed

    return {k: place(v) for k, v in batch.items()}


def replicate(mesh: Mesh, *nodes: Any) -> None:
    """Places every array of the given NNX objects (model, optimizer) on all devices.

    State already replicated on ``mesh`` is left alone, so calling this every step
    costs one look at the first leaf."""
    replicated = NamedSharding(mesh, P())
    for node in nodes:
        state = nnx.state(node)
        leaves = jax.tree.leaves(state)
        first = leaves[0].sharding if leaves else None
        if isinstance(first, NamedSharding) and first.mesh == mesh and (
                first.is_fully_replicated):
            continue
        nnx.update(node, jax.device_put(state, replicated))


# ---------------------------------------------------------------------------------
# Steps.


def make_train_step(loss_fn: LossFn, *, mesh: Mesh | None = None) -> Step:
    """``step(model, optimizer, batch) -> metrics``: one optimizer update, compiled with
    ``nnx.jit``. The model and optimizer are updated in place.

    With ``mesh`` (an Explicit mesh from ``jax.make_mesh`` or an Auto one), the batch
    is sharded over its ``"data"`` axis and the model and optimizer state replicated;
    the gradient's mean over the global batch is what a single device would compute.
    """

    @nnx.jit
    def step(model: Any, optimizer: nnx.Optimizer[Any], batch: Batch) -> Metrics:
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(model, batch)
        optimizer.update(model, grads)
        return {"loss": loss, **metrics}

    if mesh is None:
        return step
    _data_parallel_size(mesh)

    def sharded_step(model: Any, optimizer: nnx.Optimizer[Any], batch: Batch) -> Metrics:
        replicate(mesh, model, optimizer)
        with jax.set_mesh(mesh):
            return step(model, optimizer, shard_batch(batch, mesh))

    return sharded_step


def make_eval_step(loss_fn: LossFn, *, mesh: Mesh | None = None) -> Step:
    """``step(model, batch) -> metrics``, the loss and metrics without an update."""

    @nnx.jit
    def step(model: Any, batch: Batch) -> Metrics:
        loss, metrics = loss_fn(model, batch)
        return {"loss": loss, **metrics}

    if mesh is None:
        return step
    _data_parallel_size(mesh)

    def sharded_step(model: Any, batch: Batch) -> Metrics:
        replicate(mesh, model)
        with jax.set_mesh(mesh):
            return step(model, shard_batch(batch, mesh))

    return sharded_step


def make_linen_train_step(loss_fn: LossFn) -> Callable[[Any, Batch], tuple[Any, Metrics]]:
    """``step(state, batch) -> (state, metrics)`` for ``flax.training.train_state.TrainState``.

    The adapters call ``model(x)``; here the model is ``state.apply_fn`` bound to the
    parameters being differentiated, so :func:`supervised` and :func:`siamese` serve
    Linen as they serve NNX.
    """

    @jax.jit
    def step(state: Any, batch: Batch) -> tuple[Any, Metrics]:
        def objective(params: Any) -> tuple[jax.Array, Metrics]:
            def model(x: jax.Array) -> jax.Array:
                out: jax.Array = state.apply_fn({"params": params}, x)
                return out

            return loss_fn(model, batch)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, **metrics}

    return step


# ---------------------------------------------------------------------------------
# The fit loop.


def evaluate(eval_step: Step, model: Any, batches: Iterable[Batch]) -> dict[str, float]:
    """Metrics averaged over batches, weighted by batch size."""
    totals: dict[str, float] = {}
    count = 0
    for batch in batches:
        n = len(next(iter(batch.values())))
        for name, value in eval_step(model, batch).items():
            totals[name] = totals.get(name, 0.0) + float(value) * n
        count += n
    return {name: total / max(count, 1) for name, total in totals.items()}


def _checkpoint_target(model: Any, optimizer: nnx.Optimizer[Any],
                       epoch: int) -> dict[str, Any]:
    return {"model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
            "epoch": np.asarray(epoch, np.int32)}


def _restore(manager: Any, model: Any, optimizer: nnx.Optimizer[Any]) -> int:
    """Loads the latest checkpoint into model and optimizer; returns the next epoch."""
    import orbax.checkpoint as ocp

    latest = manager.latest_step()
    if latest is None:
        return 0
    restored = manager.restore(
        latest, args=ocp.args.StandardRestore(_checkpoint_target(model, optimizer, 0)))
    for node, values in ((model, restored["model"]), (optimizer, restored["optimizer"])):
        state = nnx.state(node)
        nnx.replace_by_pure_dict(state, values)
        nnx.update(node, state)
    return int(restored["epoch"]) + 1


def fit(
    model: Any,
    optimizer: nnx.Optimizer[Any],
    train: Callable[[int, int], Iterable[Batch]],
    *,
    loss_fn: LossFn,
    epochs: int,
    eval: Callable[[int, int], Iterable[Batch]] | None = None,  # noqa: A002 (the issue's name)
    checkpoint_dir: str | pathlib.Path | None = None,
    progress: bool = True,
    seed: int = 0,
    mesh: Mesh | None = None,
) -> list[dict[str, float]]:
    """Trains for ``epochs``, evaluating after each, optionally checkpointing.

    Args:
      model: the NNX model, updated in place.
      optimizer: its ``nnx.Optimizer``, updated in place.
      train: ``train(epoch, seed)`` yields the epoch's batches (a
        :class:`jaxloss.data.Loader`); the order must depend only on its arguments, so
        that a resumed run repeats an uninterrupted one exactly.
      loss_fn: the objective, e.g. ``supervised(jaxloss.mse)``.
      epochs: the total number of epochs (a resumed run does the remaining ones).
      eval: like ``train``, evaluated with the same ``loss_fn`` after each epoch.
      checkpoint_dir: with it, orbax saves model, optimizer state and epoch after every
        epoch, and a new call resumes from the latest checkpoint there.
      progress: show a rich progress bar with the loss and examples/s.
      seed: passed to ``train`` for the shuffling.
      mesh: a mesh with a ``"data"`` axis for data parallelism.

    Returns:
      One dict per epoch run: ``epoch``, ``train_loss`` (mean over the epoch),
      ``examples_per_second``, ``seconds`` and ``eval_<metric>`` for each eval metric.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    train_step = make_train_step(loss_fn, mesh=mesh)
    eval_step = make_eval_step(loss_fn, mesh=mesh) if eval is not None else None
    manager, start = None, 0
    if checkpoint_dir is not None:
        import orbax.checkpoint as ocp

        manager = ocp.CheckpointManager(
            pathlib.Path(checkpoint_dir).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        start = _restore(manager, model, optimizer)

    history: list[dict[str, float]] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"),
               TextColumn("{task.fields[rate]:,.0f} ex/s"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("training", total=None, loss=0.0, rate=0.0)
        for epoch in range(start, epochs):
            batches = list(train(epoch, seed))
            if epoch == start:
                bar.update(task, total=len(batches) * (epochs - start))
            bar.update(task, description=f"epoch {epoch + 1}/{epochs}")
            began, seen, total = time.perf_counter(), 0, jnp.zeros(())
            for batch in batches:
                metrics = train_step(model, optimizer, batch)
                total = total + metrics["loss"]
                seen += len(next(iter(batch.values())))
                rate = seen / max(time.perf_counter() - began, 1e-9)
                bar.update(task, advance=1, loss=float(metrics["loss"]), rate=rate)
            train_loss = float(total) / max(len(batches), 1)
            seconds = time.perf_counter() - began
            record = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds,
                      "examples_per_second": seen / max(seconds, 1e-9)}
            if eval_step is not None:
                assert eval is not None  # eval_step exists only with eval
                evaluated = evaluate(eval_step, model, eval(epoch, seed))
                record |= {f"eval_{name}": value for name, value in evaluated.items()}
            history.append(record)
            if manager is not None:
                manager.save(epoch, args=ocp.args.StandardSave(
                    _checkpoint_target(model, optimizer, epoch)))
                manager.wait_until_finished()
    if manager is not None:
        manager.close()
    return history
