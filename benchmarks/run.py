"""Times jaxloss against optax (and PyTorch, when installed), and compares their memory.

For every jaxloss loss with an optax namesake, and for the cross-entropies at three
(batch N, classes V) sizes in float32 and bfloat16, this measures

- the median time of the forward pass (the per-example losses) and of
  ``jax.value_and_grad`` of their sum with respect to the logits / predictions, for
  jaxloss, optax and PyTorch's ``torch.nn.functional`` equivalent where there is one;
- the ratio jaxloss / optax of those times (below 1: jaxloss is faster);
- the temporary memory XLA allocates for each compiled function,
  ``jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes``, which is
  exact and repeatable, unlike timings.

Before a row is timed, the libraries must agree on its inputs: the warm-up call's
losses (forward) and value and gradients (``value_and_grad``) of optax and PyTorch are
compared with jaxloss's, and a row whose largest difference exceeds ``TOLERANCES``
(relative to the largest magnitude: 1e-4 in float32, 2e-2 in bfloat16) is not timed
but reported as a mismatch, and the run exits with status 1.

When jaxloss has ``linear_softmax_cross_entropy``, a last row compares it with optax's
integer-label cross-entropy of the materialized logits ``hidden @ weight``.

Method: every JAX function is jitted and compiled ahead of time, called once to warm
up, then timed call by call with ``jax.block_until_ready``; the libraries are measured
in the same process and interleaved (one sample of each in turn, the order rotated
every round) so that drift in the machine's speed hits them alike. A sample is enough
back-to-back calls to last ``min_sample_s``; the result is the median over samples.
Ratios are the numbers to read: absolute times depend on the machine and its load.

Usage::

    python benchmarks/run.py            # the full run (about 5 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # every row, fewer samples: under 2 minutes
    python benchmarks/run.py --filter softmax --out my-results

It writes ``<backend>-<device>.md``, ``.json`` and ``.png`` (the ratios, plotted) to
``benchmarks/results/`` or ``--out``. PyTorch is optional (``pip install -e ".[bench]"``);
without it the PyTorch column shows "—".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxloss

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LIBRARIES = ("jaxloss", "optax", "torch")
MODES = ("forward", "value_and_grad")
DASH = "—"
# The largest difference allowed between two libraries' losses, values or gradients,
# relative to the largest magnitude of the two: float32 results differ in the order
# of their sums; bfloat16 ones also where a library rounds to bfloat16 inside.
TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run."""

    elementwise: tuple[int, int]  # [N, D] for the regression and sigmoid losses
    cross_entropy: tuple[tuple[int, int], ...]  # (N, V) for the softmax losses
    cross_entropy_dtypes: tuple[str, ...]
    ntxent: tuple[int, int]  # [B, D]
    triplet: tuple[int, int]  # [N, D]
    linear: tuple[int, int, int]  # (N, D, V) for linear_softmax_cross_entropy
    # (N, D, V): the integer-label cross-entropy of hidden @ weight, differentiated with
    # respect to both, as in a training step (None: no such row)
    composed: tuple[int, int, int] | None = None


FULL = Sizes(
    elementwise=(4096, 1024),
    cross_entropy=((4096, 1024), (1024, 32768), (256, 131072)),
    cross_entropy_dtypes=("float32", "bfloat16"),
    ntxent=(1024, 256),
    triplet=(4096, 256),
    linear=(4096, 512, 32768),
    composed=(1024, 256, 32768),
)
SIZES = {
    "full": FULL,
    # Every row of the full run; two shrink: the linear layer (68 GFLOP forward at
    # N=4096) and ntxent (optax's gradient takes seconds and GiBs at B=1024).
    "quick": dataclasses.replace(FULL, ntxent=(512, 256), linear=(512, 512, 32768)),
    # Every loss once at a toy size: a smoke test (tests/test_benchmarks.py) whose time
    # is mostly compilation.
    "tiny": Sizes(
        elementwise=(64, 32),
        cross_entropy=((32, 64),),
        cross_entropy_dtypes=("float32",),
        ntxent=(32, 16),
        triplet=(64, 16),
        linear=(32, 16, 64),
        composed=(16, 8, 64),
    ),
}


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long and how often to measure."""

    samples: int  # rounds of interleaved samples, at most
    min_sample_s: float  # a sample repeats the call until it lasts this long
    budget_s: float  # stop a measurement after this long (and at least 3 rounds)


TIMINGS = {
    "full": Timing(samples=21, min_sample_s=0.05, budget_s=15.0),
    "quick": Timing(samples=7, min_sample_s=0.02, budget_s=1.0),
    "smoke": Timing(samples=3, min_sample_s=0.0, budget_s=0.0),  # --sizes tiny
}


@dataclasses.dataclass
class Case:
    """One row: the same loss from each library, on the same inputs."""

    loss: str
    shape: str
    dtype: str
    jaxloss: Callable[..., jax.Array]
    optax: Callable[..., jax.Array]
    args: tuple[Any, ...]
    # The arguments differentiated: the logits / predictions, or (hidden, weight).
    argnums: tuple[int, ...] = (0,)
    torch: Callable[..., Any] | None = None
    torch_args: tuple[Any, ...] = ()
    note: str = ""
    # A lower bound for value_and_grad: the same arguments, writing an output the size
    # and dtype of the gradient (one read, one write; no loss can do less).
    floor: Callable[..., jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """A row before its inputs exist, so a filtered-out row allocates nothing."""

    loss: str
    build: Callable[[], Case]


# ---------------------------------------------------------------------------------
# The rows.


class _Inputs:
    """Random inputs as JAX arrays and, with the same values, as PyTorch tensors."""

    def __init__(self, seed: int, torch: ModuleType | None, torch_device: str | None):
        self.rng = np.random.default_rng(seed)
        self.torch = torch
        self.torch_device = torch_device

    def normal(self, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
        return scale * self.rng.standard_normal(shape, dtype=np.float32)

    def jax(self, x: np.ndarray, dtype: str | None = None) -> jax.Array:
        return jnp.asarray(x, dtype=dtype)

    def to_torch(self, x: np.ndarray, dtype: str | None = None) -> Any:
        if self.torch is None:
            return None
        tensor = self.torch.from_numpy(x).to(self.torch_device)
        return tensor.to(getattr(self.torch, dtype)) if dtype is not None else tensor


def case_specs(
    sizes: Sizes, torch: ModuleType | None, torch_device: str | None, seed: int = 0
) -> list[CaseSpec]:
    """Every row of the benchmark, in table order."""
    data = _Inputs(seed, torch, torch_device)
    # torch.nn.functional; the PyTorch lambdas below are called only when it exists.
    F: Any = None if torch is None else torch.nn.functional
    specs: list[CaseSpec] = []

    n, d = sizes.elementwise
    regression: list[tuple[str, Callable[..., Any], Callable[..., Any], Any]] = [
        ("squared_error", jaxloss.squared_error, optax.losses.squared_error,
         lambda p, t: F.mse_loss(p, t, reduction="none")),
        ("l2_loss", jaxloss.l2_loss, optax.losses.l2_loss,
         lambda p, t: 0.5 * F.mse_loss(p, t, reduction="none")),
        ("huber_loss", jaxloss.huber_loss, optax.losses.huber_loss,
         lambda p, t: F.huber_loss(p, t, reduction="none", delta=1.0)),
    ]
    for name, ours, theirs, reference in regression:
        def build(name=name, ours=ours, theirs=theirs, reference=reference) -> Case:
            predictions, targets = data.normal((n, d)), data.normal((n, d))
            return Case(name, f"{n}×{d}", "float32", ours, theirs,
                        (data.jax(predictions), data.jax(targets)),
                        torch=reference,
                        torch_args=(data.to_torch(predictions), data.to_torch(targets)))
        specs.append(CaseSpec(name, build))

    def build_sigmoid() -> Case:
        logits = data.normal((n, d), scale=3.0)
        labels = (data.rng.random((n, d)) < 0.5).astype(np.float32)
        return Case("sigmoid_binary_cross_entropy", f"{n}×{d}", "float32",
                    jaxloss.sigmoid_binary_cross_entropy,
                    optax.losses.sigmoid_binary_cross_entropy,
                    (data.jax(logits), data.jax(labels)),
                    torch=lambda x, y: F.binary_cross_entropy_with_logits(
                        x, y, reduction="none"),
                    torch_args=(data.to_torch(logits), data.to_torch(labels)))
    specs.append(CaseSpec("sigmoid_binary_cross_entropy", build_sigmoid))

    for n_ce, v in sizes.cross_entropy:
        for dtype in sizes.cross_entropy_dtypes:
            def build_dense(n_ce: int = n_ce, v: int = v, dtype: str = dtype) -> Case:
                logits = data.normal((n_ce, v), scale=2.0)
                onehot = np.zeros((n_ce, v), np.float32)
                onehot[np.arange(n_ce), data.rng.integers(0, v, n_ce)] = 1.0
                return Case("softmax_cross_entropy", f"N={n_ce} V={v}", dtype,
                            jaxloss.softmax_cross_entropy, optax.losses.softmax_cross_entropy,
                            (data.jax(logits, dtype), data.jax(onehot, dtype)),
                            torch=lambda x, y: F.cross_entropy(x, y, reduction="none"),
                            torch_args=(data.to_torch(logits, dtype),
                                        data.to_torch(onehot, dtype)),
                            floor=_write_floor)

            def build_integer(n_ce: int = n_ce, v: int = v, dtype: str = dtype) -> Case:
                logits = data.normal((n_ce, v), scale=2.0)
                labels = data.rng.integers(0, v, n_ce).astype(np.int32)
                return Case("softmax_cross_entropy_with_integer_labels",
                            f"N={n_ce} V={v}", dtype,
                            jaxloss.softmax_cross_entropy_with_integer_labels,
                            optax.losses.softmax_cross_entropy_with_integer_labels,
                            (data.jax(logits, dtype), data.jax(labels)),
                            torch=lambda x, y: F.cross_entropy(x, y, reduction="none"),
                            torch_args=(data.to_torch(logits, dtype),
                                        data.to_torch(labels.astype(np.int64))),
                            floor=_write_floor)

            specs.append(CaseSpec("softmax_cross_entropy", build_dense))
            specs.append(CaseSpec("softmax_cross_entropy_with_integer_labels", build_integer))

    b, d_nt = sizes.ntxent

    def build_ntxent() -> Case:
        embeddings = data.normal((b, d_nt))
        labels = np.arange(b, dtype=np.int32) // 2  # pairs of positives
        return Case("ntxent", f"B={b} D={d_nt}", "float32", jaxloss.ntxent,
                    optax.losses.ntxent, (data.jax(embeddings), data.jax(labels)),
                    note="no PyTorch built-in")
    specs.append(CaseSpec("ntxent", build_ntxent))

    n_tr, d_tr = sizes.triplet

    def build_triplet() -> Case:
        triplet = [data.normal((n_tr, d_tr)) for _ in range(3)]
        return Case("triplet_margin_loss", f"N={n_tr} D={d_tr}", "float32",
                    jaxloss.triplet_margin_loss, optax.losses.triplet_margin_loss,
                    tuple(data.jax(x) for x in triplet),
                    torch=lambda a, p, q: F.triplet_margin_loss(
                        a, p, q, margin=1.0, p=2, eps=1e-6, reduction="none"),
                    torch_args=tuple(data.to_torch(x) for x in triplet),
                    note="gradient w.r.t. the anchors")
    specs.append(CaseSpec("triplet_margin_loss", build_triplet))

    # linear_softmax_cross_entropy(hidden, weight, labels) against the [N, V] logits
    # materialized: optax's integer-label cross-entropy of hidden @ weight.
    if hasattr(jaxloss, "linear_softmax_cross_entropy"):
        n_lin, d_lin, v_lin = sizes.linear

        def build_linear() -> Case:
            hidden = data.normal((n_lin, d_lin))
            weight = data.normal((d_lin, v_lin), scale=d_lin**-0.5)
            labels = data.rng.integers(0, v_lin, n_lin).astype(np.int32)
            return Case("linear_softmax_cross_entropy", f"N={n_lin} D={d_lin} V={v_lin}",
                        "float32", jaxloss.linear_softmax_cross_entropy,
                        lambda h, w, y: optax.losses.softmax_cross_entropy_with_integer_labels(
                            h @ w, y),
                        (data.jax(hidden), data.jax(weight), data.jax(labels)),
                        argnums=(0, 1),
                        torch=lambda h, w, y: F.cross_entropy(h @ w, y, reduction="none"),
                        torch_args=(data.to_torch(hidden), data.to_torch(weight),
                                    data.to_torch(labels.astype(np.int64))),
                        note="optax/PyTorch on hidden @ weight; gradient w.r.t. both")
        specs.append(CaseSpec("linear_softmax_cross_entropy", build_linear))

    # The cross-entropy inside a training step: the logits come from a matmul and the
    # gradient flows on to the weight, so the loss's residuals and its gradient of the
    # logits are XLA temporaries (a standalone value_and_grad returns the latter).
    if sizes.composed is not None:
        n_c, d_c, v_c = sizes.composed

        def build_composed() -> Case:
            hidden = data.normal((n_c, d_c))
            weight = data.normal((d_c, v_c), scale=d_c**-0.5)
            labels = data.rng.integers(0, v_c, n_c).astype(np.int32)
            return Case(
                "softmax_cross_entropy_with_integer_labels(hidden @ weight)",
                f"N={n_c} D={d_c} V={v_c}", "float32",
                lambda h, w, y: jaxloss.softmax_cross_entropy_with_integer_labels(h @ w, y),
                lambda h, w, y: optax.losses.softmax_cross_entropy_with_integer_labels(
                    h @ w, y),
                (data.jax(hidden), data.jax(weight), data.jax(labels)), argnums=(0, 1),
                torch=lambda h, w, y: F.cross_entropy(h @ w, y, reduction="none"),
                torch_args=(data.to_torch(hidden), data.to_torch(weight),
                            data.to_torch(labels.astype(np.int64))),
                note="both on the materialized logits; gradient w.r.t. hidden and weight")
        specs.append(CaseSpec("softmax_cross_entropy_with_integer_labels", build_composed))
    return specs


# ---------------------------------------------------------------------------------
# Measuring.


def _write_floor(logits: jax.Array, *_: Any) -> jax.Array:
    """A fresh array the size of the gradient: the least a value_and_grad must write."""
    return -logits


def _objective(loss: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The scalar differentiated, the same for every library: the sum of the losses."""
    return lambda *args: jnp.sum(loss(*args).astype(jnp.float32))


def _compile(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Callable[[], Any], int | None]:
    """The ahead-of-time compiled ``fn`` as a blocking thunk, and its temp bytes."""
    compiled = jax.jit(fn).lower(*args).compile()
    stats = compiled.memory_analysis()
    temp = None if stats is None else int(stats.temp_size_in_bytes)
    return (lambda: jax.block_until_ready(compiled(*args))), temp


def _torch_calls(case: Case, torch: ModuleType, device: str) -> dict[str, Callable[[], Any]]:
    """PyTorch's forward (no autograd graph) and value-and-gradient, as blocking thunks."""
    assert case.torch is not None
    fn = case.torch
    leaves = list(case.torch_args)
    for i in case.argnums:
        leaves[i] = leaves[i].detach().clone().requires_grad_(True)
    inputs = [leaves[i] for i in case.argnums]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward() -> Any:
        with torch.no_grad():
            out = fn(*leaves)
        sync()
        return out

    def value_and_grad() -> Any:
        value = fn(*leaves).float().sum()
        grads = torch.autograd.grad(value, inputs)
        sync()
        return value, grads

    return {"forward": forward, "value_and_grad": value_and_grad}


class MismatchError(Exception):
    """Two libraries' losses, values or gradients for one row differ beyond tolerance."""


def _as_arrays(output: Any) -> list[np.ndarray]:
    """A call's result (the losses, or the value and the gradients) as a flat list of
    float32 NumPy arrays; JAX arrays and PyTorch tensors alike."""
    if isinstance(output, (tuple, list)):
        return [array for item in output for array in _as_arrays(item)]
    if hasattr(output, "detach"):  # a PyTorch tensor
        output = output.detach().float().cpu().numpy()
    return [np.asarray(output).astype(np.float32)]


def _parts(mode: str, argnums: Sequence[int]) -> list[str]:
    if mode == "forward":
        return ["the losses"]
    return ["the value", *(f"the gradient w.r.t. argument {i}" for i in argnums)]


def compare(outputs: Mapping[str, Any], *, row: str, mode: str, dtype: str,
            argnums: Sequence[int] = (0,)) -> list[str]:
    """What differs between each library's result and jaxloss's; empty when they agree.

    ``outputs`` maps a library to its result for one mode (the forward's losses, or
    ``(value, gradients)``). Two arrays agree when their largest absolute difference is
    at most ``TOLERANCES[dtype]`` times the largest magnitude of either; a shape that
    differs or a value that is not finite is a mismatch too.
    """
    rtol = TOLERANCES[dtype]
    parts = _parts(mode, argnums)
    reference = _as_arrays(outputs["jaxloss"])
    problems = []
    for library, output in outputs.items():
        if library == "jaxloss":
            continue
        theirs = _as_arrays(output)
        where = f"{row}, {mode}: {library} against jaxloss"
        if len(theirs) != len(reference) or len(reference) != len(parts):
            problems.append(f"{where}: {len(theirs)} against {len(reference)} arrays "
                            f"(expected {', '.join(parts)})")
            continue
        for part, a, b in zip(parts, reference, theirs, strict=True):
            if a.shape != b.shape:
                problems.append(f"{where}, {part}: shape {b.shape} against {a.shape}")
            elif not (np.isfinite(a).all() and np.isfinite(b).all()):
                problems.append(f"{where}, {part}: not finite "
                                f"({np.sum(~np.isfinite(b))} against {np.sum(~np.isfinite(a))})")
            else:
                scale = max(float(np.max(np.abs(a), initial=0)),
                            float(np.max(np.abs(b), initial=0)))
                error = float(np.max(np.abs(a - b), initial=0))
                if error > rtol * scale:
                    problems.append(
                        f"{where}, {part}: max |difference| {error:.3g} > {rtol:g} "
                        f"({dtype}) x max |value| {scale:.3g}")
    return problems


def measure(calls: Mapping[str, Callable[[], Any]], timing: Timing,
            check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each thunk, sampled in turn (interleaved).

    ``check``, when given, receives the warm-up calls' results, before any sample is
    timed (it raises to stop the measurement)."""
    names = list(calls)
    inner: dict[str, int] = {}
    results: dict[str, Any] = {}
    for name in names:  # warm-up, whose time sizes the samples
        start = time.perf_counter()
        results[name] = calls[name]()
        elapsed = time.perf_counter() - start
        inner[name] = max(1, math.ceil(timing.min_sample_s / max(elapsed, 1e-7)))
    if check is not None:
        check(results)
    del results
    samples: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    for round_ in range(timing.samples):
        shift = round_ % len(names)  # rotate who goes first
        for name in names[shift:] + names[:shift]:
            call, k = calls[name], inner[name]
            start = time.perf_counter()
            for _ in range(k):
                call()
            samples[name].append((time.perf_counter() - start) / k)
        if round_ >= 2 and time.perf_counter() - began > timing.budget_s:
            break
    return {name: statistics.median(values) for name, values in samples.items()}


def run_case(
    case: Case, timing: Timing, torch: ModuleType | None, torch_device: str | None
) -> dict[str, Any]:
    """Times and memory of one row, as a JSON-ready dict.

    Raises:
      MismatchError: optax or PyTorch disagrees with jaxloss on the row's inputs (the
        row is then not timed).
    """
    row: dict[str, Any] = {"loss": case.loss, "shape": case.shape, "dtype": case.dtype,
                           "note": case.note}
    functions = {"jaxloss": case.jaxloss, "optax": case.optax}
    torch_calls = (_torch_calls(case, torch, torch_device)
                   if torch is not None and torch_device is not None and case.torch is not None
                   else None)
    for mode in MODES:
        calls: dict[str, Callable[[], Any]] = {}
        temps: dict[str, int | None] = {}
        for library, fn in functions.items():
            if mode == "value_and_grad":
                fn = jax.value_and_grad(_objective(fn), argnums=case.argnums)
            calls[library], temps[library] = _compile(fn, case.args)
        if torch_calls is not None:
            calls["torch"] = torch_calls[mode]
        if mode == "value_and_grad" and case.floor is not None:
            calls["floor"] = _compile(case.floor, case.args)[0]

        def check(results: dict[str, Any], mode: str = mode) -> None:
            problems = compare({k: v for k, v in results.items() if k in LIBRARIES},
                               row=f"{case.loss} {case.shape} {case.dtype}", mode=mode,
                               dtype=case.dtype, argnums=case.argnums)
            if problems:
                raise MismatchError("\n".join(problems))

        seconds = measure(calls, timing, check)
        row[mode] = {
            **{f"{library}_s": seconds.get(library) for library in LIBRARIES},
            "floor_s": seconds.get("floor"),
            "ratio": seconds["jaxloss"] / seconds["optax"],
            "jaxloss_temp_bytes": temps["jaxloss"],
            "optax_temp_bytes": temps["optax"],
        }
    return row


# ---------------------------------------------------------------------------------
# Reporting.


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(mode: str, sizes: str, torch: ModuleType | None,
                torch_device: str | None) -> dict[str, Any]:
    """Where and with what the numbers were taken."""
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "sizes": sizes,
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "device_count": jax.device_count(),
        "os": platform.system(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": optax.__version__,
        "jaxloss": jaxloss.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_device": torch_device,
    }


def result_stem() -> str:
    """``<backend>-<device>``, e.g. ``cpu-cpu`` or ``gpu-nvidia-h100-80gb-hbm3``."""
    kind = re.sub(r"[^a-z0-9]+", "-", jax.devices()[0].device_kind.lower()).strip("-")
    return f"{jax.default_backend()}-{kind or 'unknown'}"


def _ms(seconds: float | None) -> str:
    return DASH if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(size: int | None) -> str:
    return DASH if size is None else f"{size / 2**20:.3g}"


def markdown(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
             mismatches: Sequence[Mapping[str, Any]] = ()) -> str:
    """The results as a Markdown report; ``mismatches`` are the rows not timed."""
    torch = f"{env['torch']} ({env['torch_device']})" if env["torch"] else "not installed"
    lines = [
        f"# jaxloss vs optax: {env['backend']} ({env['device']})",
        "",
        f"{env['date']}, {env['mode']} run, {env['sizes']} sizes, {env['seconds']} s. "
        f"{env['os']}; {env['cpu']}, "
        f"{env['cpu_count']} CPUs; {env['device_count']} {env['backend']} device(s).",
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, optax {env['optax']}, "
        f"jaxloss {env['jaxloss']}, PyTorch {torch}, Python {env['python']}.",
        "",
        "Median milliseconds per call of the forward pass (the per-example losses) and of "
        "`value_and_grad` of their sum with respect to the first argument; **ratio** is "
        "jaxloss / optax (below 1: jaxloss is faster); **temp** is XLA's temporary "
        "memory for the compiled function in MiB, jaxloss / optax. **v&g floor** is the "
        "time of writing a fresh array the size of the gradient (`-logits`), the least "
        "any value_and_grad must do. Every row was checked before it was timed: optax's "
        "and PyTorch's losses, values and gradients agree with jaxloss's to "
        + ", ".join(f"{rtol:g} ({dtype})" for dtype, rtol in TOLERANCES.items())
        + " of the largest magnitude.",
        "",
        "| loss | shape | dtype | fwd jaxloss | fwd optax | fwd torch | fwd ratio "
        "| v&g jaxloss | v&g optax | v&g torch | v&g ratio | v&g floor | fwd temp "
        "| v&g temp |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [f"`{row['loss']}`", row["shape"], row["dtype"]]
        for mode in MODES:
            result = row[mode]
            cells += [_ms(result[f"{library}_s"]) for library in LIBRARIES]
            cells.append(f"**{result['ratio']:.2f}**")
        cells.append(_ms(row["value_and_grad"]["floor_s"]))
        for mode in MODES:
            result = row[mode]
            cells.append(f"{_mib(result['jaxloss_temp_bytes'])} / "
                         f"{_mib(result['optax_temp_bytes'])}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{row['loss']}` {row['shape']}: {row['note']}." for row in rows if row["note"]]
    if notes:
        lines += ["", *dict.fromkeys(notes)]
    if mismatches:
        lines += ["", "## Mismatches (not timed)", "",
                  "These rows' libraries disagree on the same inputs, so their times would "
                  "compare different computations:", ""]
        lines += [f"- `{m['loss']}` {m['shape']} {m['dtype']}: "
                  + "; ".join(m["mismatch"].splitlines()) for m in mismatches]
    return "\n".join(lines) + "\n"


def plot(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """A bar chart of the jaxloss / optax ratios; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    labels = [f"{row['loss']}  {row['shape']}  {row['dtype']}" for row in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.38 * len(rows)))
    height = 0.38
    for offset, mode, color in ((-height / 2, "forward", "tab:blue"),
                                (height / 2, "value_and_grad", "tab:orange")):
        bars = ax.barh(y + offset, [row[mode]["ratio"] for row in rows], height, label=mode,
                       color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.margins(x=0.12)
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                   if low <= t <= high])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time jaxloss / time optax  (below 1: jaxloss faster)")
    ax.set_title(f"jaxloss vs optax on {env['backend']} ({env['device']}), {env['date'][:10]}",
                 pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                  out: Path, mismatches: Sequence[Mapping[str, Any]] = ()) -> list[Path]:
    """Writes ``<backend>-<device>.md``, ``.json`` and ``.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / result_stem()
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    written[0].write_text(markdown(env, rows, mismatches))
    written[1].write_text(json.dumps(
        {"environment": env, "rows": list(rows), "mismatches": list(mismatches)},
        indent=2) + "\n")
    if not rows:
        print("no row was timed: no plot", file=sys.stderr)
    elif plot(env, rows, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    else:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    return written


# ---------------------------------------------------------------------------------
# Command line.


def _import_torch(enabled: bool) -> tuple[ModuleType | None, str | None]:
    """PyTorch and the device it runs on, matching JAX's backend; (None, None) if absent."""
    if not enabled:
        return None, None
    try:
        import torch
    except ImportError:
        return None, None
    backend = jax.default_backend()
    if backend == "cpu":
        return torch, "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return torch, "cuda"
    return torch, None  # no PyTorch build for this accelerator: the column stays empty


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="at most 7 samples (3 for the large sizes) instead of 21; ntxent "
                        "at B=512 and linear_softmax_cross_entropy at N=512")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"output folder (default {RESULTS_DIR})")
    parser.add_argument("--filter", default=None, metavar="REGEX",
                        help="only the losses whose name matches REGEX, e.g. 'softmax'")
    parser.add_argument("--sizes", choices=sorted(SIZES), default=None,
                        help="default: 'quick' with --quick, else 'full'; 'tiny': every loss "
                        "once at a toy size, timed 3 times (a smoke test)")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave PyTorch out even when it is installed")
    return parser.parse_args(argv)


def iter_rows(specs: Sequence[CaseSpec], timing: Timing, torch: ModuleType | None,
              torch_device: str | None) -> Iterator[dict[str, Any]]:
    """Builds, measures and frees one row at a time. A row whose libraries disagree
    comes back untimed, as ``{"loss", "shape", "dtype", "note", "mismatch"}``."""
    for spec in specs:
        case = spec.build()
        try:
            row = run_case(case, timing, torch, torch_device)
        except MismatchError as error:
            row = {"loss": case.loss, "shape": case.shape, "dtype": case.dtype,
                   "note": case.note, "mismatch": str(error)}
        del case
        yield row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    sizes = args.sizes or mode
    timing = TIMINGS["smoke" if sizes == "tiny" else mode]
    torch, torch_device = _import_torch(not args.no_torch)
    specs = case_specs(SIZES[sizes], torch, torch_device)
    if args.filter is not None:
        specs = [spec for spec in specs if re.search(args.filter, spec.loss)]
        if not specs:
            print(f"no loss matches --filter {args.filter!r}", file=sys.stderr)
            return 2
    env = environment(mode, sizes, torch, torch_device)
    started = time.perf_counter()
    rows, mismatches = [], []
    for row in iter_rows(specs, timing, torch, torch_device):
        label = f"{row['loss']:<42} {row['shape']:<22} {row['dtype']:<9}"
        if "mismatch" in row:
            mismatches.append(row)
            print(f"{label} MISMATCH, not timed:\n  " + row["mismatch"].replace("\n", "\n  "),
                  file=sys.stderr, flush=True)
            continue
        rows.append(row)
        print(f"{label} "
              f"fwd {row['forward']['ratio']:5.2f}  v&g {row['value_and_grad']['ratio']:5.2f}"
              f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    env["seconds"] = round(time.perf_counter() - started, 1)
    written = write_results(env, rows, args.out, mismatches)
    print(markdown(env, rows, mismatches))
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    if mismatches:
        print(f"{len(mismatches)} row(s) where the libraries disagree: not timed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
