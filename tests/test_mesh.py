"""Every public loss on a data-parallel mesh, the way users call it.

A batch split over a ``"data"`` axis (``jax.device_put(x, NamedSharding(mesh,
P("data")))``) must give the jitted ``jax.value_and_grad`` of the mean loss the values
and gradients of the unsplit batch, on JAX's default mesh (``jax.make_mesh`` gives
Explicit axes, whose shardings are part of the arrays' types) and on an Auto one, with
``jax.set_mesh`` and without it.

The test iterates over ``jaxloss._registry.ENTRIES``: a loss added later is covered
automatically, and ``test_every_registry_loss_has_a_sample`` fails until :data:`SAMPLES`
has inputs for it. The vocabulary-parallel paths (``axis_name=``, inside
``jax.shard_map``) are tested with their losses, not here.
"""

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss import training
from jaxloss._registry import ENTRIES

B = 8  # the batch: every batch-major input has B rows (and no other input has B rows)
HIGHEST = {"precision": "highest"}  # the matmul losses, so that equality holds

# Public names of the registry that are not losses, and why each is left out. (The
# family "utility" -- reduce, checked, CrossEntropyAux -- is left out as a whole.)
NOT_LOSSES = {
    "make_pairs": "samples pairs of indices at random: integers, no value to differentiate",
    "shift_labels": "turns tokens into next-token integer labels: nothing to differentiate",
}

Sample = tuple[Callable[..., Any], tuple[Any, ...]]


def _sample(loss: Callable[..., Any], *args: Any, **kwargs: Any) -> Sample:
    """The call ``loss(*args, **kwargs)``: the positional arguments are the arrays
    (batch-major ones sharded, floating ones differentiated), the keywords static."""
    return functools.partial(loss, **kwargs), args


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    c = 5

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(f32)

    logits = normal(B, c) * 2
    labels = rng.integers(0, c, size=B).astype(np.int32)
    soft = rng.dirichlet(np.ones(c), size=B).astype(f32)
    seg = normal(B, 3, 2, 3)
    frames, max_labels = 6, 3
    multilabel = np.full((B, c), -1, np.int32)  # PyTorch's -1-padded targets
    for i in range(B):
        picked = rng.permutation(c)[: 1 + i % 3]
        multilabel[i, : len(picked)] = picked
    return {
        "logits": logits, "labels": labels, "soft": soft,
        "onehot": np.eye(c, dtype=f32)[labels],
        "probs": rng.uniform(0.05, 0.95, size=(B, c)).astype(f32),
        "simplex": (soft * 0.9 + 0.1 / c).astype(f32),
        "binary": (rng.uniform(size=(B, c)) < 0.5).astype(f32),
        "signs": np.where(rng.uniform(size=(B, c)) < 0.5, -1.0, 1.0).astype(f32),
        "preds": normal(B, c), "targets": normal(B, c),
        "positive": rng.uniform(0.5, 2.0, size=(B, c)).astype(f32),
        "multilabel": multilabel,
        "a": normal(B, 4), "b": normal(B, 4), "c": normal(B, 4),
        "rows": normal(B), "rows2": normal(B),
        "row_signs": np.where(np.arange(B) % 3 == 0, -1.0, 1.0).astype(f32),
        "similar": (np.arange(B) % 2).astype(f32),
        "distances": rng.uniform(0.1, 3.0, size=B).astype(f32),
        "groups": np.repeat(np.arange(B // 2), 2).astype(np.int32),
        "hidden": normal(B, 4), "vocab_weight": normal(4, 10),
        "vocab_labels": rng.integers(0, 10, size=B).astype(np.int32),
        "seg": seg, "seg_t": np.eye(3, dtype=f32)[rng.integers(0, 3, size=(B, 3, 2))],
        "ctc_logits": normal(B, frames, 4) * 2,
        "ctc_logit_pads": (np.arange(frames)[None, :]
                           >= np.array([6, 5, 6, 4, 6, 6, 5, 6])[:, None]).astype(np.int32),
        "ctc_labels": rng.integers(1, 4, size=(B, max_labels)).astype(np.int32),
        "ctc_label_pads": (np.arange(max_labels)[None, :]
                           >= np.array([3, 2, 1, 3, 0, 2, 3, 1])[:, None]).astype(np.int32),
    }


X = _inputs()
FY_LOSS = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp, shift_equivariant=True)

# name -> the sample call of that loss. Every loss of the registry has one (see
# test_every_registry_loss_has_a_sample); "name[variant]" adds an option set of a loss.
SAMPLES: dict[str, Callable[[], Sample]] = {
    # Regression.
    "squared_error": lambda: _sample(jaxloss.squared_error, X["preds"], X["targets"]),
    "l2_loss": lambda: _sample(jaxloss.l2_loss, X["preds"], X["targets"]),
    "huber_loss": lambda: _sample(jaxloss.huber_loss, X["preds"], X["targets"], delta=0.7),
    "mean_squared_error": lambda: _sample(jaxloss.mean_squared_error, X["preds"],
                                          X["targets"]),
    "mean_absolute_error": lambda: _sample(jaxloss.mean_absolute_error, X["preds"],
                                           X["targets"], axis=-1),
    "log_cosh": lambda: _sample(jaxloss.log_cosh, X["preds"], X["targets"]),
    "smooth_l1_loss": lambda: _sample(jaxloss.smooth_l1_loss, X["preds"], X["targets"]),
    "poisson_nll_loss": lambda: _sample(jaxloss.poisson_nll_loss, X["preds"], X["positive"]),
    "gaussian_nll_loss": lambda: _sample(jaxloss.gaussian_nll_loss, X["preds"], X["targets"],
                                         X["positive"]),
    # Classification.
    "sigmoid_binary_cross_entropy": lambda: _sample(
        jaxloss.sigmoid_binary_cross_entropy, X["logits"], X["soft"]),
    "binary_cross_entropy": lambda: _sample(jaxloss.binary_cross_entropy, X["probs"],
                                            X["binary"]),
    "softmax_cross_entropy": lambda: _sample(jaxloss.softmax_cross_entropy, X["logits"],
                                             X["soft"]),
    "softmax_cross_entropy_with_integer_labels": lambda: _sample(
        jaxloss.softmax_cross_entropy_with_integer_labels, X["logits"], X["labels"]),
    "categorical_cross_entropy": lambda: _sample(jaxloss.categorical_cross_entropy,
                                                 X["simplex"], X["onehot"]),
    "safe_softmax_cross_entropy": lambda: _sample(jaxloss.safe_softmax_cross_entropy,
                                                  X["logits"], X["soft"]),
    "nll_loss": lambda: _sample(jaxloss.nll_loss, np.asarray(jax.nn.log_softmax(X["logits"])),
                                X["labels"]),
    "sigmoid_focal_loss": lambda: _sample(jaxloss.sigmoid_focal_loss, X["logits"],
                                          X["binary"]),
    "poly_loss_cross_entropy": lambda: _sample(jaxloss.poly_loss_cross_entropy, X["logits"],
                                               X["soft"]),
    "soft_margin_loss": lambda: _sample(jaxloss.soft_margin_loss, X["preds"], X["signs"]),
    "multilabel_soft_margin_loss": lambda: _sample(jaxloss.multilabel_soft_margin_loss,
                                                   X["logits"], X["binary"]),
    "smooth_labels": lambda: _sample(jaxloss.smooth_labels, X["onehot"], np.float32(0.1)),
    "linear_softmax_cross_entropy": lambda: _sample(
        jaxloss.linear_softmax_cross_entropy, X["hidden"], X["vocab_weight"],
        X["vocab_labels"], chunk_size=4, **HIGHEST),
    "linear_softmax_cross_entropy[unchunked]": lambda: _sample(
        jaxloss.linear_softmax_cross_entropy, X["hidden"], X["vocab_weight"],
        X["vocab_labels"], **HIGHEST),
    "linear_log_probs": lambda: _sample(
        jaxloss.linear_log_probs, X["hidden"], X["vocab_weight"], X["vocab_labels"],
        return_entropy=True, chunk_size=4, **HIGHEST),
    # Divergences.
    "kl_divergence": lambda: _sample(jaxloss.kl_divergence,
                                     np.asarray(jax.nn.log_softmax(X["logits"])), X["soft"]),
    "kl_divergence_with_log_targets": lambda: _sample(
        jaxloss.kl_divergence_with_log_targets, np.asarray(jax.nn.log_softmax(X["logits"])),
        np.log(X["soft"])),
    "generalized_kl_divergence": lambda: _sample(
        jaxloss.generalized_kl_divergence, np.log(X["positive"]), X["soft"] * 2),
    # Margin and ranking.
    "hinge_loss": lambda: _sample(jaxloss.hinge_loss, X["preds"], X["signs"]),
    "perceptron_loss": lambda: _sample(jaxloss.perceptron_loss, X["preds"], X["signs"]),
    "multiclass_hinge_loss": lambda: _sample(jaxloss.multiclass_hinge_loss, X["logits"],
                                             X["labels"]),
    "multiclass_perceptron_loss": lambda: _sample(jaxloss.multiclass_perceptron_loss,
                                                  X["logits"], X["labels"]),
    "multi_margin_loss": lambda: _sample(jaxloss.multi_margin_loss, X["logits"], X["labels"]),
    "multilabel_margin_loss": lambda: _sample(jaxloss.multilabel_margin_loss, X["logits"],
                                              X["multilabel"]),
    "margin_ranking_loss": lambda: _sample(jaxloss.margin_ranking_loss, X["rows"],
                                           X["rows2"], X["row_signs"], margin=0.5),
    "hinge_embedding_loss": lambda: _sample(jaxloss.hinge_embedding_loss, X["positive"],
                                            X["signs"]),
    "ranking_softmax_loss": lambda: _sample(jaxloss.ranking_softmax_loss, X["logits"],
                                            X["binary"]),
    # Sparse, structured and sequence outputs.
    "sparsemax_loss": lambda: _sample(jaxloss.sparsemax_loss, X["preds"],
                                      X["binary"].astype(np.int32)),
    "multiclass_sparsemax_loss": lambda: _sample(jaxloss.multiclass_sparsemax_loss,
                                                 X["logits"], X["labels"]),
    "make_fenchel_young_loss": lambda: _sample(FY_LOSS, X["logits"], X["soft"]),
    "ctc_loss": lambda: _sample(jaxloss.ctc_loss, X["ctc_logits"], X["ctc_logit_pads"],
                                X["ctc_labels"], X["ctc_label_pads"]),
    "ctc_loss_with_forward_probs": lambda: _sample(
        jaxloss.ctc_loss_with_forward_probs, X["ctc_logits"], X["ctc_logit_pads"],
        X["ctc_labels"], X["ctc_label_pads"]),
    # Segmentation.
    "dice_loss": lambda: _sample(jaxloss.dice_loss, X["seg"], X["seg_t"]),
    "binary_dice_loss": lambda: _sample(jaxloss.binary_dice_loss, X["preds"], X["binary"]),
    "multiclass_generalized_dice_loss": lambda: _sample(
        jaxloss.multiclass_generalized_dice_loss, X["seg"], X["seg_t"]),
    # Similarity, contrastive and metric learning.
    "cosine_similarity": lambda: _sample(jaxloss.cosine_similarity, X["a"], X["b"]),
    "cosine_distance": lambda: _sample(jaxloss.cosine_distance, X["a"], X["b"]),
    "cosine_embedding_loss": lambda: _sample(jaxloss.cosine_embedding_loss, X["a"], X["b"],
                                             X["row_signs"], margin=0.2),
    "pairwise_distance": lambda: _sample(jaxloss.pairwise_distance, X["a"], X["b"]),
    "contrastive_loss": lambda: _sample(jaxloss.contrastive_loss, X["a"], X["b"],
                                        X["similar"], margin=2.0),
    "contrastive_loss_from_distance": lambda: _sample(
        jaxloss.contrastive_loss_from_distance, X["distances"], X["similar"], margin=2.0),
    "triplet_margin_loss": lambda: _sample(jaxloss.triplet_margin_loss, X["a"], X["b"],
                                           X["c"], swap=True),
    "triplet_margin_with_distance_loss": lambda: _sample(
        jaxloss.triplet_margin_with_distance_loss, X["a"], X["b"], X["c"]),
    "ntxent": lambda: _sample(jaxloss.ntxent, X["a"], X["groups"], np.float32(0.5),
                              **HIGHEST),
    "info_nce": lambda: _sample(jaxloss.info_nce, X["a"], X["b"], **HIGHEST),
    "info_nce[symmetric,chunk_size=3]": lambda: _sample(
        jaxloss.info_nce, X["a"], X["b"], symmetric=True, chunk_size=3, **HIGHEST),
    # Temperature and bias of shape (1,), as big_vision's learned parameters.
    "siglip_loss": lambda: _sample(jaxloss.siglip_loss, X["a"], X["b"],
                                   np.full((1,), 2.0, np.float32),
                                   np.full((1,), -1.0, np.float32), **HIGHEST),
}


def registry_losses() -> list[str]:
    return [e.name for e in ENTRIES if e.family != "utility" and e.name not in NOT_LOSSES]


def test_every_registry_loss_has_a_sample():
    missing = [name for name in registry_losses() if name not in SAMPLES]
    assert not missing, f"add sample inputs to tests/test_mesh.py SAMPLES for: {missing}"
    unknown = {name.split("[")[0] for name in SAMPLES} - set(registry_losses())
    assert not unknown, f"SAMPLES names no registry loss: {sorted(unknown)}"
    for name in NOT_LOSSES:
        assert name in {n for e in ENTRIES for n in e.names}, name


# (devices, axis type, under jax.set_mesh): the 2 x 2 meshes, each axis type with and
# without set_mesh. None: the reference, unsharded on one device.
CONFIGS: dict[str, tuple[int, AxisType, bool]] = {
    "explicit-2-set_mesh": (2, AxisType.Explicit, True),
    "explicit-4": (4, AxisType.Explicit, False),
    "auto-2": (2, AxisType.Auto, False),
    "auto-4-set_mesh": (4, AxisType.Auto, True),
}


def _mesh_context(config: str | None) -> tuple[Callable[[np.ndarray], Any], Any]:
    """How ``config`` places an input, and the context to trace and run it in."""
    if config is None:
        return (lambda x: x), contextlib.nullcontext()
    n, axis_type, set_mesh = CONFIGS[config]
    mesh = jax.make_mesh((n,), ("data",), axis_types=(axis_type,),
                         devices=jax.devices("cpu")[:n])

    def place(x: np.ndarray) -> jax.Array:
        spec = P("data") if x.ndim and x.shape[0] == B else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return place, (jax.set_mesh(mesh) if set_mesh else contextlib.nullcontext())


def _objective(name: str, floating: list[bool]) -> Callable[..., Any]:
    """``(diff, rest) -> (value, gradient)``: the mean of every floating output of
    ``name``'s sample call (a loss, or its forward variables too), differentiated in
    its floating arguments ``diff``; ``rest`` are the others."""
    call, _ = SAMPLES[name]()

    def value_and_grad(diff: list[jax.Array], rest: list[jax.Array]) -> Any:
        def objective(diff: list[jax.Array]) -> jax.Array:
            d, r = iter(diff), iter(rest)
            outs = jax.tree.leaves(call(*(next(d) if f else next(r) for f in floating)))
            return sum(jnp.mean(o) for o in outs if jnp.issubdtype(o.dtype, jnp.floating))

        return jax.value_and_grad(objective)(diff)

    return value_and_grad


class _Program:
    """Every sample of :data:`SAMPLES` placed as ``config`` places it, traced and lowered
    into one jitted program (the exceptions of the samples that fail to trace kept
    apart), compiled later."""

    def __init__(self, config: str | None) -> None:
        self.config = config
        place, self.context = _mesh_context(config)
        self.inputs, self.functions, self.errors = {}, {}, {}
        for name in SAMPLES:
            _, args = SAMPLES[name]()
            floating = [np.issubdtype(np.asarray(x).dtype, np.floating) for x in args]
            placed = [place(np.asarray(x)) for x in args]
            self.inputs[name] = ([x for x, f in zip(placed, floating, strict=True) if f],
                                 [x for x, f in zip(placed, floating, strict=True) if not f])
            self.functions[name] = _objective(name, floating)

        def every(inputs: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for name, (diff, rest) in inputs.items():
                try:
                    out[name] = self.functions[name](diff, rest)
                except Exception as e:  # noqa: BLE001 (reported by the loss's test)
                    self.errors[name] = e
            return out

        with self.context:
            self.lowered = jax.jit(every).lower(self.inputs)

    def results(self, compiled: Any) -> dict[str, Any]:
        """name -> the value and gradient (numpy), or the exception that stopped it. If
        the program did not compile (``compiled`` is the exception), one per sample."""
        if not isinstance(compiled, Exception):
            with self.context:
                return {**jax.tree.map(np.asarray, compiled(self.inputs)), **self.errors}
        out: dict[str, Any] = {}
        with self.context:
            for name, f in self.functions.items():
                try:
                    out[name] = jax.tree.map(np.asarray, jax.jit(f)(*self.inputs[name]))
                except Exception as e:  # noqa: BLE001
                    out[name] = e
        return out


def _compile(program: _Program) -> Any:
    try:
        return program.lowered.compile()
    except Exception as e:  # noqa: BLE001 (then each sample alone finds the one at fault)
        return e


@functools.cache
def _results(config: str | None) -> dict[str, Any]:
    """sample name -> value and gradient under ``config`` (None: the reference), or the
    exception that stopped it. Compiling one program of every sample is most of this
    file's time; each process compiles the reference once and each configuration it
    tests once (a test per configuration, so that two pytest-xdist workers share them)."""
    program = _Program(config)
    return program.results(_compile(program))


@pytest.mark.parametrize("config", CONFIGS)
def test_sharded_batch_equals_unsharded(config, on_cpu):
    """Every sample: the value and gradient of its mean with the batch split over
    ``config``'s mesh equal the unsharded ones; a failure names each loss at fault."""
    reference, sharded = _results(None), _results(config)
    failures = []
    for name in SAMPLES:
        want, got = reference[name], sharded[name]
        try:
            if isinstance(want, Exception):
                raise want
            if isinstance(got, Exception):
                raise got
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
        except Exception as e:  # noqa: BLE001 (collected: every loss at fault is named)
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    assert not failures, f"{len(failures)} of {len(SAMPLES)} losses fail on {config}:\n" + \
        "\n".join(failures)


# ---------------------------------------------------------------------------------
# A training step on the default (Explicit) mesh, with the batch-level losses.


class _Tower(nnx.Module):
    """An embedding network, and a vocabulary matrix for the fused linear
    cross-entropy (a parameter of the loss, replicated like the network's)."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.body = nnx.Linear(6, 4, rngs=rngs)
        self.vocab = nnx.Param(jax.random.normal(rngs.params(), (4, 10)) * 0.5)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.body(x)


TRAIN_LOSSES = {
    "linear_softmax_cross_entropy": lambda model, batch: jaxloss.linear_softmax_cross_entropy(
        model(batch["x"]), model.vocab[...], batch["token"], chunk_size=4, reduction="mean",
        **HIGHEST),
    "ntxent": lambda model, batch: jaxloss.ntxent(model(batch["x"]), batch["group"], 0.5,
                                                  **HIGHEST),
}


def _train(loss: Callable[..., jax.Array], mesh: Any) -> tuple[Any, list[float]]:
    rng = np.random.default_rng(1)
    model = _Tower()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    step = training.make_train_step(lambda m, b: (loss(m, b), {}), mesh=mesh)
    losses = []
    for _ in range(3):
        batch = {"x": rng.normal(size=(16, 6)).astype(np.float32),
                 "token": rng.integers(0, 10, size=16).astype(np.int32),
                 "group": np.repeat(np.arange(8), 2).astype(np.int32)}
        losses.append(float(step(model, optimizer, batch)["loss"]))
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))), losses


@pytest.mark.usefixtures("highest_matmul_precision")
@pytest.mark.parametrize("loss", TRAIN_LOSSES.values(), ids=TRAIN_LOSSES.keys())
def test_train_step_on_the_default_mesh(loss, on_cpu):
    mesh = jax.make_mesh((4,), ("data",), devices=on_cpu)
    assert mesh.axis_types == (AxisType.Explicit,)  # JAX's default
    params, losses = _train(loss, mesh)
    want_params, want_losses = _train(loss, None)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    chex.assert_trees_all_close(params, want_params, rtol=1e-5, atol=1e-6)
