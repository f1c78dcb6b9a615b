"""Flax NNX training: adapters, steps, data parallelism, the fit loop and checkpoints."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state

import jaxloss
from jaxloss import data, training

# The tests compare results of the same models computed two ways (jitted steps, eager
# calls, sharded or not): their float32 matmuls at full precision (a GPU's default is
# TF32). The data-parallel tests run on the 4 CPU devices of conftest.py (on_cpu).
pytestmark = pytest.mark.usefixtures("highest_matmul_precision")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype(np.float32)
Y = RNG.integers(0, 3, size=32).astype(np.int32)
PAIRS = {"a": X[:16], "b": X[16:], "similar": (Y[:16] == Y[16:])}


class MLP(nnx.Module):
    def __init__(self, din: int, dout: int, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.hidden = nnx.Linear(din, 16, rngs=rngs)
        self.out = nnx.Linear(16, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_supervised_adapter_is_the_mean_loss_with_metrics():
    model = MLP(6, 3)
    accuracy = lambda out, batch: {  # noqa: E731
        "accuracy": jnp.mean(jnp.argmax(out, -1) == batch["y"])}
    loss_fn = training.supervised(jaxloss.softmax_cross_entropy_with_integer_labels,
                                  metrics=accuracy, label_smoothing=0.1)
    value, metrics = loss_fn(model, {"x": X, "y": Y})
    want = jaxloss.softmax_cross_entropy_with_integer_labels(
        model(X), Y, label_smoothing=0.1, reduction="mean")
    chex.assert_trees_all_close(value, want)
    chex.assert_trees_all_close(metrics["accuracy"], jnp.mean(jnp.argmax(model(X), -1) == Y))
    # A loss that is a mean by definition (no reduction argument) works too.
    value, _ = training.supervised(jaxloss.mse)(model, {"x": X, "y": model(X) + 1.0})
    chex.assert_trees_all_close(value, 1.0, rtol=1e-6)


def test_siamese_adapter_shares_one_network():
    model = MLP(6, 4)
    value, _ = training.siamese(jaxloss.contrastive_loss, margin=2.0)(model, PAIRS)
    want = jaxloss.contrastive_loss(model(PAIRS["a"]), model(PAIRS["b"]), PAIRS["similar"],
                                    margin=2.0, reduction="mean")
    chex.assert_trees_all_close(value, want)
    # Identical inputs on both sides: distance 0, and still a finite gradient.
    same = {"a": X[:4], "b": X[:4], "similar": np.array([True, False, True, False])}
    step = training.make_train_step(training.siamese(jaxloss.contrastive_loss))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    step(model, optimizer, same)
    chex.assert_tree_all_finite(params(model))


def test_train_step_learns_and_eval_step_reports():
    model = MLP(6, 3)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    loss_fn = training.supervised(jaxloss.softmax_cross_entropy_with_integer_labels)
    step = training.make_train_step(loss_fn)
    evaluate = training.make_eval_step(loss_fn)
    before = float(evaluate(model, {"x": X, "y": Y})["loss"])
    for _ in range(50):
        step(model, optimizer, {"x": X, "y": Y})
    after = float(evaluate(model, {"x": X, "y": Y})["loss"])
    assert after < 0.5 * before


def _five_sgd_steps(mesh):
    model = MLP(6, 3, seed=1)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    step = training.make_train_step(
        training.supervised(jaxloss.softmax_cross_entropy_with_integer_labels), mesh=mesh)
    losses = []
    for i in range(5):
        batch = {"x": X[i % 2 * 16:][:16], "y": Y[i % 2 * 16:][:16]}
        losses.append(float(step(model, optimizer, batch)["loss"]))
    return model, losses


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Explicit,
                                       jax.sharding.AxisType.Auto])
def test_sharded_steps_equal_single_device_steps(axis_type, on_cpu):
    mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,), devices=on_cpu)
    single, single_losses = _five_sgd_steps(None)
    sharded, sharded_losses = _five_sgd_steps(mesh)
    chex.assert_trees_all_close(params(sharded), params(single), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    leaf = jax.tree.leaves(nnx.state(sharded, nnx.Param))[0]
    assert leaf.sharding.mesh.shape == {"data": 4}
    assert leaf.sharding.is_fully_replicated


def test_shard_batch_splits_the_leading_axis_and_replicates_the_rest(on_cpu):
    mesh = jax.make_mesh((4,), ("data",), devices=on_cpu)
    placed = training.shard_batch({"x": X[:8], "odd": X[:6]}, mesh)
    assert placed["x"].sharding.spec[0] == "data"
    assert placed["odd"].sharding.is_fully_replicated  # 6 rows do not split over 4
    with pytest.raises(ValueError, match="'data' axis"):
        training.make_train_step(lambda m, b: (0.0, {}),
                                 mesh=jax.make_mesh((4,), ("batch",), devices=on_cpu))


def test_linen_train_state_step():
    class Dense(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(x)

    module = Dense()
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=module.init(jax.random.key(0), X)["params"],
        tx=optax.adam(1e-2))
    loss_fn = training.supervised(jaxloss.softmax_cross_entropy_with_integer_labels)
    step = training.make_linen_train_step(loss_fn)
    state, first = step(state, {"x": X, "y": Y})
    want = jaxloss.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": train_state.TrainState.create(
            apply_fn=module.apply, params=module.init(jax.random.key(0), X)["params"],
            tx=optax.adam(1e-2)).params}, X), Y, reduction="mean")
    chex.assert_trees_all_close(first["loss"], want)
    for _ in range(30):
        state, last = step(state, {"x": X, "y": Y})
    assert float(last["loss"]) < float(first["loss"])
    assert int(state.step) == 31


def test_fit_history_and_evaluation():
    model = MLP(6, 3)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    loader = data.Loader({"x": X, "y": Y}, 8)
    history = training.fit(
        model, optimizer, loader,
        loss_fn=training.supervised(jaxloss.softmax_cross_entropy_with_integer_labels),
        epochs=3, eval=data.Loader({"x": X, "y": Y}, 10, shuffle=False), progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert all(h["examples_per_second"] > 0 for h in history)
    # The evaluation is the example-weighted mean over uneven batches (10, 10, 10, 2).
    want = jaxloss.softmax_cross_entropy_with_integer_labels(model(X), Y, reduction="mean")
    np.testing.assert_allclose(history[-1]["eval_loss"], want, rtol=1e-5)


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import jax, optax
    from flax import nnx
    import jaxloss
    from jaxloss import data, training

    checkpoint_dir, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 16)).astype(np.float32)
    y = (x[:, :4].sum(-1) > 0).astype(np.int32)

    class MLP(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.hidden = nnx.Linear(16, 64, rngs=rngs)
            self.out = nnx.Linear(64, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.hidden(x)))

    model = MLP()
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    history = training.fit(model, optimizer, data.Loader({"x": x, "y": y}, 16),
                 loss_fn=training.supervised(
                     jaxloss.softmax_cross_entropy_with_integer_labels),
                 epochs=epochs, checkpoint_dir=checkpoint_dir, progress=False, seed=3)
    flat = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    np.savez(out, *[np.asarray(a) for a in flat])
    print("epochs run:", [h["epoch"] for h in history])
""")


def _finished_epochs(checkpoint_dir: pathlib.Path) -> list[int]:
    if not checkpoint_dir.exists():
        return []
    return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit())


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    epochs = 40
    # One CPU device; the suite's LLVM level (conftest.py), the same in all three runs.
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}

    def run(checkpoint_dir, out):
        return subprocess.run([sys.executable, str(script), str(checkpoint_dir), str(out),
                               str(epochs)], env=env, capture_output=True, text=True,
                              timeout=300)

    straight = run(tmp_path / "straight", tmp_path / "straight.npz")
    assert straight.returncode == 0, straight.stderr

    interrupted = tmp_path / "interrupted"
    child = subprocess.Popen([sys.executable, str(script), str(interrupted),
                              str(tmp_path / "never.npz"), str(epochs)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(e >= 2 for e in _finished_epochs(interrupted)):
        assert child.poll() is None, "the child ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = max(_finished_epochs(interrupted))
    assert killed_at < epochs - 1, "the kill came after the last epoch: nothing to resume"
    assert not (tmp_path / "never.npz").exists()

    resumed = run(interrupted, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    # It resumed (ran only the remaining epochs) rather than starting over.
    assert f"epochs run: {list(range(killed_at + 1, epochs))}" in resumed.stdout
    assert f"epochs run: {list(range(epochs))}" in straight.stdout
    want, got = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert want.files == got.files
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name])
