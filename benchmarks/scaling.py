"""How the fused linear cross-entropy's cost grows, against the materialized logits.

``value_and_grad`` of the summed loss of ``hidden @ weight`` with respect to both, for
``jaxloss.linear_softmax_cross_entropy`` (``reduction="sum"``), optax's integer-label
cross-entropy of the materialized logits and, when installed, PyTorch's
``F.cross_entropy`` of them: the time (median of a few calls, every library in turn)
and JAX's temporary memory (``memory_analysis().temp_size_in_bytes``) against the
vocabulary V at fixed N and against N at fixed V, on a log-log plot.

Usage::

    python benchmarks/scaling.py [--out DIR] [--quick]

writes ``scaling-<machine>.png``, ``.md`` and ``.json`` beside ``run.py``'s results
(``<machine>`` as :func:`run.result_stem` names it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxloss

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (this folder's benchmark: its machine names and allocator)

D = 256
N_FIXED, V_FIXED = 1024, 32768
VOCABS = (8192, 16384, 32768, 65536, 131072, 262144)
ROWS = (256, 512, 1024, 2048, 4096, 8192)
LIBRARIES = ("jaxloss", "optax", "torch")


def _fused(h: jax.Array, w: jax.Array, y: jax.Array) -> jax.Array:
    return jaxloss.linear_softmax_cross_entropy(h, w, y, reduction="sum")


def _materialized(h: jax.Array, w: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(optax.losses.softmax_cross_entropy_with_integer_labels(h @ w, y))


def _median_time(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(n: int, v: int, torch: Any, repeats: int) -> dict[str, Any]:
    """Seconds and temporary bytes of each library's value_and_grad at one size."""
    rng = np.random.default_rng(0)
    h_np = rng.normal(size=(n, D)).astype(np.float32)
    w_np = (rng.normal(size=(D, v)) * D**-0.5).astype(np.float32)
    y_np = rng.integers(0, v, n).astype(np.int32)
    args = (jnp.asarray(h_np), jnp.asarray(w_np), jnp.asarray(y_np))
    point: dict[str, Any] = {"n": n, "v": v}
    for name, fn in (("jaxloss", _fused), ("optax", _materialized)):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        point[f"{name}_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
        point[f"{name}_s"] = _median_time(
            lambda c=compiled: jax.block_until_ready(c(*args)), repeats)
    if torch is not None:
        h = torch.tensor(h_np, requires_grad=True)
        w = torch.tensor(w_np, requires_grad=True)
        y = torch.tensor(y_np.astype(np.int64))

        def torch_call() -> None:
            h.grad = w.grad = None
            torch.nn.functional.cross_entropy(h @ w, y, reduction="sum").backward()

        point["torch_s"] = _median_time(torch_call, repeats)
    return point


def plot(points: dict[str, list[dict[str, Any]]], path: Path, title: str) -> bool:
    """Time and temporary memory against V and against N, log-log; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    styles = {"jaxloss": ("tab:blue", "fused (jaxloss)"),
              "optax": ("tab:orange", "materialized (optax)"),
              "torch": ("tab:green", "materialized (PyTorch)")}
    for col, (sweep, key, fixed) in enumerate((("vocab", "v", f"N={N_FIXED}"),
                                               ("rows", "n", f"V={V_FIXED}"))):
        xs = [p[key] for p in points[sweep]]
        for library in LIBRARIES:
            color, label = styles[library]
            if all(f"{library}_s" in p for p in points[sweep]):
                axes[0][col].plot(xs, [p[f"{library}_s"] for p in points[sweep]], "o-",
                                  color=color, label=label)
            if all(f"{library}_temp_bytes" in p for p in points[sweep]):
                axes[1][col].plot(xs, [p[f"{library}_temp_bytes"] / 2**20
                                       for p in points[sweep]], "o-", color=color,
                                  label=label)
        axes[0][col].set_title(f"value_and_grad time vs {key.upper()} ({fixed}, D={D})")
        axes[1][col].set_title(f"XLA temporary memory vs {key.upper()} ({fixed}, D={D})")
        axes[0][col].set_ylabel("seconds")
        axes[1][col].set_ylabel("MiB")
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(key.upper())
            ax.grid(True, which="both", linewidth=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(points: dict[str, list[dict[str, Any]]], header: list[str]) -> str:
    lines = [*header, "",
             "| N | V | fused s | optax s | PyTorch s | fused temp MiB | optax temp MiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    seen = set()
    for sweep in ("vocab", "rows"):
        for p in points[sweep]:
            if (p["n"], p["v"]) in seen:
                continue
            seen.add((p["n"], p["v"]))
            torch_s = f"{p['torch_s']:.3g}" if "torch_s" in p else run.DASH
            lines.append(f"| {p['n']} | {p['v']} | {p['jaxloss_s']:.3g} | {p['optax_s']:.3g} "
                         f"| {torch_s} | {p['jaxloss_temp_bytes'] / 2**20:.1f} "
                         f"| {p['optax_temp_bytes'] / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="the three smallest sizes of each sweep, one timed call each")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    torch, _ = run._import_torch(not args.no_torch)
    vocabs, rows = (VOCABS[:3], ROWS[:3]) if args.quick else (VOCABS, ROWS)
    repeats = 1 if args.quick else 3
    started = time.perf_counter()
    points: dict[str, list[dict[str, Any]]] = {"vocab": [], "rows": []}
    for sweep, sizes in (("vocab", [(N_FIXED, v) for v in vocabs]),
                         ("rows", [(n, V_FIXED) for n in rows])):
        for n, v in sizes:
            points[sweep].append(measure(n, v, torch, repeats))
            print(f"{sweep}: N={n} V={v} {points[sweep][-1]}", file=sys.stderr, flush=True)
    env = run.environment("quick" if args.quick else "full", "scaling", torch,
                          None if torch is None else "cpu")
    env["seconds"] = round(time.perf_counter() - started, 1)
    header = run._header(env, "Fused linear cross-entropy: how cost grows")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scaling-{run.result_stem()}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "points": points},
                                                    indent=1))
    stem.with_suffix(".md").write_text(markdown(points, header))
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    title = f"{env['cpu']} ({env['isa']}), jax {env['jax']}, value_and_grad of the summed loss"
    if plot(points, stem.with_suffix(".png"), title):
        written.append(stem.with_suffix(".png"))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run._with_steady_allocator(sys.argv[1:])
    sys.exit(main())
