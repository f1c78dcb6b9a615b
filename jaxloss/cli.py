"""The ``jaxloss`` command: ``jaxloss demo``, ``jaxloss check``, ``jaxloss --version``."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import pathlib
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jaxloss

TASKS = ("regression", "binary", "multiclass", "siamese")
"""The tasks of ``--task all``; ``--task lm`` (the language model) runs only by name."""


# ---------------------------------------------------------------------------------
# jaxloss check


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a case name holds one of ``patterns`` as a substring or matches it as a
    glob (``*``, ``?``, ``[...]``)."""
    return any(p in name or fnmatch.fnmatchcase(name, p) for p in patterns)


def _check(args: argparse.Namespace) -> int:
    from jaxloss import testing

    def mark(passed: bool) -> str:
        return "ok" if passed else "FAIL"

    cases = testing.builtin_cases()
    if args.filter:
        cases = [case for case in cases if _matches(case.name, args.filter)]
        if not cases:
            given = " ".join(f"--filter {p!r}" for p in args.filter)
            print(f"jaxloss check: error: {given}: no case matches (jaxloss check --list "
                  "names them)", file=sys.stderr)
            return 2
    if args.list:
        for case in cases:
            print(case.name)
        return 0

    results = []
    began = time.perf_counter()
    width = len(str(len(cases)))
    for i, case in enumerate(cases, 1):
        tick = time.perf_counter()
        result = testing.run_case(case)
        results.append(result)
        if not args.quiet:  # progress on stderr: stdout keeps the report alone
            print(f"[{i:{width}d}/{len(cases)}] {case.name} ... {mark(result.ok)} "
                  f"({time.perf_counter() - tick:.1f} s)", file=sys.stderr, flush=True)
    if not args.quiet:
        print(f"{len(cases)} case(s) in {time.perf_counter() - began:.1f} s\n",
              file=sys.stderr, flush=True)
    header = ("loss", "custom_vjp", "differentiates", "vs float64 (rel err)", "finite diff",
              "extremes", "status")
    rows = [
        (r.name, "yes" if r.custom_vjp else "no", ", ".join(r.differentiates),
         f"ok ({r.max_rel_error:.0e})" if r.matches_reference else "FAIL",
         mark(r.finite_differences), mark(r.extremes), mark(r.ok))
        for r in results
    ]
    _print_table(header, rows)
    failures = [r for r in results if not r.ok]
    for r in failures:
        print(f"FAIL {r.name}: {r.error}", file=sys.stderr)
    print(f"\n{len(results) - len(failures)}/{len(results)} checks ok")
    return 1 if failures else 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------------------
# jaxloss demo


@dataclasses.dataclass(frozen=True)
class DemoTask:
    """One demo: a dataset, a model's output size, the loss and its test metric."""

    name: str
    loss_name: str
    load: Callable[[], Any]
    outputs: int
    epochs: int
    batch_size: int
    learning_rate: float
    metric_name: str


DEMO_TASKS = {
    "regression": DemoTask("regression", "mean_squared_error", lambda: _data().load_diabetes(),
                           1, 10, 32, 1e-3, "R²"),  # diabetes overfits past ~10 epochs
    "binary": DemoTask("binary", "sigmoid_binary_cross_entropy",
                       lambda: _data().load_breast_cancer(), 1, 30, 32, 3e-3, "accuracy"),
    "multiclass": DemoTask("multiclass", "softmax_cross_entropy_with_integer_labels",
                           lambda: _data().load_digits(), 10, 30, 64, 3e-3, "accuracy"),
    "siamese": DemoTask("siamese", "contrastive_loss", lambda: _data().digit_pairs(),
                        16, 12, 128, 3e-3, "pair accuracy"),
}


def _data() -> types.ModuleType:
    from jaxloss import data

    return data


def _mlp(num_inputs: int, num_outputs: int, seed: int) -> Any:
    from flax import nnx

    class MLP(nnx.Module):
        """Two hidden ReLU layers; a single output is squeezed to one value per row."""

        def __init__(self, rngs: nnx.Rngs) -> None:
            self.hidden1 = nnx.Linear(num_inputs, 64, rngs=rngs)
            self.hidden2 = nnx.Linear(64, 64, rngs=rngs)
            self.out = nnx.Linear(64, num_outputs, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            import jax

            y = self.out(jax.nn.relu(self.hidden2(jax.nn.relu(self.hidden1(x)))))
            return y[..., 0] if num_outputs == 1 else y

    return MLP(nnx.Rngs(seed))


def best_threshold(distances: Any, similar: Any) -> float:
    """The distance t for which ``distance <= t`` predicts ``similar`` best."""
    import numpy as np

    order = np.argsort(distances)
    ranked, similar = np.asarray(distances)[order], np.asarray(similar, bool)[order]
    # Predicting the k nearest pairs similar: right on the similar among them and on
    # the dissimilar beyond them.
    correct = np.cumsum(similar) + (np.sum(~similar) - np.cumsum(~similar))
    return float(ranked[int(np.argmax(correct))])


def run_demo_task(task: DemoTask, *, epochs: int | None, mesh: Any, seed: int,
                  progress: bool) -> dict[str, Any]:
    """Trains one task; returns its table row, history and (Siamese) test embedding."""
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxloss import data, training

    began = time.perf_counter()
    dataset = task.load()
    model = _mlp(dataset.num_features, task.outputs, seed)
    optimizer = nnx.Optimizer(model, optax.adam(task.learning_rate), wrt=nnx.Param)
    loss = getattr(jaxloss, task.loss_name)
    adapter = training.siamese if task.name == "siamese" else training.supervised
    pair_keys = ("a", "b", "similar")
    train_arrays = {k: v for k, v in dataset.train.items()
                    if task.name != "siamese" or k in pair_keys}
    test_arrays = {k: v for k, v in dataset.test.items()
                   if task.name != "siamese" or k in pair_keys}
    history = training.fit(
        model, optimizer, data.Loader(train_arrays, task.batch_size),
        loss_fn=adapter(loss), epochs=epochs or task.epochs,
        eval=data.Loader(test_arrays, 512, shuffle=False), progress=progress, seed=seed,
        mesh=mesh)

    embedding = None
    if task.name == "regression":
        predictions = np.asarray(model(jnp.asarray(dataset.test["x"])))
        y = dataset.test["y"]
        metric = 1 - np.sum((y - predictions) ** 2) / np.sum((y - y.mean()) ** 2)
    elif task.name == "binary":
        logits = np.asarray(model(jnp.asarray(dataset.test["x"])))
        metric = np.mean((logits > 0) == (dataset.test["y"] == 1))
    elif task.name == "multiclass":
        logits = np.asarray(model(jnp.asarray(dataset.test["x"])))
        metric = np.mean(np.argmax(logits, -1) == dataset.test["y"])
    else:
        def distances(pairs: dict[str, Any]) -> Any:
            return np.asarray(jaxloss.pairwise_distance(
                model(jnp.asarray(pairs["a"])), model(jnp.asarray(pairs["b"]))))

        # The threshold is chosen on the training pairs and scored on the test pairs.
        threshold = best_threshold(distances(dataset.train), dataset.train["similar"])
        metric = np.mean((distances(dataset.test) <= threshold) == dataset.test["similar"])
        embedding = (np.asarray(model(jnp.asarray(dataset.test["x"]))), dataset.test["y"])
    return {"task": task.name, "loss": task.loss_name, "dataset": dataset.name,
            "train_loss": history[-1]["train_loss"] if history else float("nan"),
            "metric_name": task.metric_name, "metric": float(metric),
            "seconds": time.perf_counter() - began, "history": history,
            "embedding": embedding}


def _plot(results: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        epochs = [h["epoch"] + 1 for h in result["history"]]
        ax.plot(epochs, [h["train_loss"] for h in result["history"]], label="train")
        ax.plot(epochs, [h["eval_loss"] for h in result["history"]], label="test")
        ax.set_title(f"{result['task']}: {result['loss']}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "loss_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    for result in results:
        if result["embedding"] is None:
            continue
        points, labels = result["embedding"]
        # The two principal directions of the learned embedding.
        centered = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T
        fig, ax = plt.subplots(figsize=(5, 4.5))
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=8)
        ax.legend(*scatter.legend_elements(), title="digit", fontsize=7, loc="best")
        ax.set_title("Siamese embedding of the test digits (contrastive loss, PCA)", fontsize=9)
        fig.tight_layout()
        written.append(out / "siamese_embedding.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def _writable(out: pathlib.Path) -> str | None:
    """Why ``out`` cannot take the plots, or None."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        return f"--out {out}: cannot write there ({e.strerror or e})"
    return None


def _mesh(devices: int) -> Any:
    import jax

    available = jax.devices()
    if devices > len(available):
        raise SystemExit(
            f"jaxloss demo: error: --devices {devices}: only {len(available)} device(s) "
            f"available ({available[0].platform})")
    if devices == 1:
        return None
    return jax.make_mesh((devices,), ("data",), devices=available[:devices])


def _demo(args: argparse.Namespace) -> int:
    lm = args.task == "lm"
    misplaced = ([f"--epochs {args.epochs}"] * (args.epochs is not None)
                 + [f"--devices {args.devices}"] * (args.devices != 1)) if lm else (
        [f"--steps {args.steps}"] * (args.steps is not None)
        + [f"--vocab-size {args.vocab_size}"] * (args.vocab_size is not None)
        + [f"--max-files {args.max_files}"] * (args.max_files is not None)
        + [f"--size {args.size}"] * (args.size != "default")
        + [f"--fit-memory {args.fit_memory}"] * (args.fit_memory is not None)
        + ["--report-only"] * args.report_only)
    if misplaced:
        which = "--task lm" if lm else "the MLP tasks"
        other = "the MLP tasks" if lm else "--task lm"
        print(f"jaxloss demo: error: {', '.join(misplaced)}: not an option of {which} "
              f"(only of {other})", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401

        if lm:
            import tokenizers  # noqa: F401
        else:
            import sklearn  # noqa: F401
    except ImportError:
        print("jaxloss demo: error: the demo needs its extra: pip install 'jaxloss[demo]'",
              file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    problem = _writable(out)
    if problem is not None:
        print(f"jaxloss demo: error: {problem}", file=sys.stderr)
        return 2
    if lm:
        return _demo_lm(args, out)
    if args.devices > 1:
        import jax

        try:  # on the CPU, split the host into that many devices (before JAX starts)
            jax.config.update("jax_num_cpu_devices", args.devices)
        except RuntimeError:
            pass  # already started: use the devices it has
    mesh = _mesh(args.devices)
    names = TASKS if args.task == "all" else (args.task,)
    began = time.perf_counter()
    results = [run_demo_task(DEMO_TASKS[name], epochs=args.epochs, mesh=mesh, seed=args.seed,
                             progress=not args.quiet) for name in names]
    rows = [(r["task"], r["loss"], r["dataset"], f"{r['train_loss']:.4f}",
             f"{r['metric_name']} {r['metric']:.3f}", f"{r['seconds']:.1f}") for r in results]
    print()
    _print_table(("task", "loss", "dataset", "final train loss", "test metric", "seconds"), rows)
    written = _plot(results, out)
    print(f"\n{len(results)} task(s) in {time.perf_counter() - began:.1f} s; plots: "
          + ", ".join(str(p) for p in written))
    return 0


def _demo_lm(args: argparse.Namespace, out: pathlib.Path) -> int:
    """``jaxloss demo --task lm``: the Transformer language model of
    :mod:`jaxloss.lm_demo`; exit 1 when a promised figure does not hold (with
    ``--report-only``, only when the run itself fails)."""
    from jaxloss import lm_demo

    base = lm_demo.LARGE if args.size == "large" else lm_demo.LMConfig()
    config = dataclasses.replace(base, seed=args.seed)
    overrides = {"steps": args.steps, "vocab_size": args.vocab_size,
                 "max_files": args.max_files}
    config = dataclasses.replace(
        config, **{k: v for k, v in overrides.items() if v is not None})

    def log(line: str) -> None:
        # --quiet keeps the report and drops the progress lines.
        if not args.quiet or not line.startswith("step "):
            print(line, flush=True)

    if args.fit_memory is not None:
        return _fit_memory(lm_demo, config, args.fit_memory)
    try:
        result = lm_demo.run(config, out, log=log, check=False)
        print("\nthresholds" + (" (--report-only: not enforced)" if args.report_only
                                else " (exit 1 unless each is ok)") + ":")
        for threshold in lm_demo.thresholds(result):
            print(f"  {threshold.line()}")
        if not args.report_only:
            lm_demo.check_thresholds(result)
    except lm_demo.ThresholdError as e:  # a threshold, or a non-finite training loss
        print(f"jaxloss demo: error: --task lm: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # too little data for the settings (a small --max-files)
        print(f"jaxloss demo: error: --task lm: {e}", file=sys.stderr)
        return 2
    return 0


def _fit_memory(lm_demo: Any, config: Any, gib: float) -> int:
    """``--fit-memory GIB``: the largest batch of each train step in that much device
    memory (compiled, never run)."""
    import jax

    budget = int(gib * 2**30)
    print(f"the largest batch whose whole train step fits in {gib:g} GiB on "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}): "
          f"{config.num_layers} layers, d_model {config.d_model}, context {config.seq_len}, "
          f"V = {config.vocab_size}; XLA memory_analysis of the compiled step, not run",
          flush=True)
    rows = []
    for name, loss in (("fused (jaxloss)", lm_demo.fused_loss),
                       ("materialized (optax)", lm_demo.materialized_loss)):
        began = time.perf_counter()
        batch, footprint = lm_demo.largest_batch(config, config.vocab_size, loss, budget)
        rows.append((name, str(batch), f"{batch * config.seq_len:,}",
                     f"{footprint / 2**30:.2f}", f"{time.perf_counter() - began:.0f}"))
    _print_table(("train step", "batch (sequences)", "tokens", "GiB used", "search s"), rows)
    return 0


# ---------------------------------------------------------------------------------
# The parser.


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxloss", description="Numerically exact loss functions for JAX."
    )
    parser.add_argument("--version", action="version", version=f"jaxloss {jaxloss.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check", help="verify every built-in loss's gradient (float64 reference, "
        "finite differences, extreme inputs)",
        description="Verifies every built-in loss with its options (where, ignore_index, "
        "the reductions, smoothing, class weights, ...), one case each: the value and the "
        "gradient with respect to every differentiable argument against jax.grad of a "
        "float64 reference, finite differences (to second order for a custom_vjp), and "
        "extreme inputs (+-1e30, the bf16/fp16 range, -inf classes, distance 0, ties) "
        "against float64 references or exact limits. Prints one progress line per case "
        "to stderr, then a table and 'N/M checks ok' to stdout; exits 1 when a case "
        "fails. The whole run takes a minute or more on a CPU.")
    check.add_argument("--filter", action="append", metavar="PATTERN",
                       help="run only the cases whose name contains PATTERN or matches it "
                       "as a glob (e.g. softmax_cross_entropy, 'l2_loss*'); repeat for "
                       "several")
    check.add_argument("--list", action="store_true",
                       help="print the case names (those --filter selects) and run nothing")
    check.add_argument("--quiet", action="store_true",
                       help="no progress lines on stderr")
    check.set_defaults(run=_check)
    demo = commands.add_parser(
        "demo", help="train small Flax models on scikit-learn's bundled data with jaxloss "
        "losses; print a table and write plots (--task lm: a Transformer language model "
        "on the Python standard library)")
    demo.add_argument("--task", choices=("all", *TASKS, "lm"), default="all",
                      help="all: the four MLP tasks; lm: the language model (run alone)")
    demo.add_argument("--epochs", type=_positive_int, default=None,
                      help="epochs per task (default: each task's own)")
    demo.add_argument("--out", default="demo-output",
                      help="folder for the PNG plots (and --task lm's tokenizer cache)")
    demo.add_argument("--devices", type=_positive_int, default=1,
                      help="data-parallel over this many devices (CPU: split the host)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="--task lm: training steps (default 150)")
    demo.add_argument("--vocab-size", type=_at_least(260), default=None,
                      help="--task lm: BPE vocabulary size (default 32768)")
    demo.add_argument("--max-files", type=_at_least(2), default=None,
                      help="--task lm: use only this many standard-library files "
                      "(default: all)")
    demo.add_argument("--size", choices=("default", "large"), default="default",
                      help="--task lm: the model and batch (large: for an accelerator)")
    demo.add_argument("--fit-memory", type=_positive_float, default=None, metavar="GIB",
                      help="--task lm: instead of training, report the largest batch whose "
                      "train step (fused, and optax on materialized logits) fits in GIB of "
                      "device memory")
    demo.add_argument("--report-only", action="store_true",
                      help="--task lm: print the figures and each threshold (ok or FAIL) "
                      "but exit 0 when one fails, as a short run (a small --steps) does")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)  # argparse.Namespace attributes are Any
        return code
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

