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

The GPU set (``--sizes gpu``, the default where JAX's backend is a GPU) has every row
of ``--quick`` and, first, the workloads of large-vocabulary and contrastive training
in bfloat16 (``GPU_ROWS``): the linear cross-entropy at N=8192, D=2304, V=256000 against
optax and PyTorch on the materialized logits, Liger's fused linear cross-entropy and
Cut Cross-Entropy (exact, and with its default gradient filter, which is approximate:
its difference from jaxloss is reported, not checked), with one matmul as a reference;
the integer-label cross-entropy at N=8192, V=131072 in bfloat16 and float32 (with
Liger's); the symmetric InfoNCE (CLIP) loss at B=32768, D=512, chunked and not. Liger and
Cut Cross-Entropy (Triton kernels) get columns where PyTorch runs on CUDA and they can be
imported. Its report also gives each library's peak device memory during one call,
above what was in use before it (the inputs): for jaxloss and optax from
``device.memory_stats()`` in a fresh process per function (the peak cannot be reset),
for PyTorch's libraries from ``torch.cuda.max_memory_allocated()``. ``--sizes gpu-tiny``
runs the same rows at toy sizes, on any backend (the tests run it on the CPU).

Method: every JAX function is jitted and compiled ahead of time, called once to warm
up, then timed call by call with ``jax.block_until_ready``; the libraries are measured
in the same process and interleaved (one sample of each in turn, the order rotated
every round) so that drift in the machine's speed hits them alike. PyTorch and its
kernels are interleaved among themselves, after the JAX functions: on a CPU its OpenMP
threads keep spinning after a call, and whichever function ran next lost cores to them
(identical compiled code measured 1.04-1.50x behind optax because it followed PyTorch
more often). A sample is enough back-to-back calls to last ``min_sample_s``; the result
is the median over samples.
Ratios are the numbers to read: absolute times depend on the machine and its load.

Usage::

    python benchmarks/run.py            # the full run (about 5 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # every row, fewer samples: under 2 minutes
    python benchmarks/run.py --filter softmax --out my-results
    python benchmarks/run.py --sizes gpu-tiny --out build/gpu-tiny  # the GPU set, toy sizes

It writes ``<backend>-<device>.md``, ``.json`` and ``.png`` (the ratios, plotted) to
``benchmarks/results/`` or ``--out``. PyTorch is optional (``pip install -e ".[bench]"``);
without it the PyTorch column shows "—".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import serialize_executable

import jaxloss

SCRIPT = Path(__file__).resolve()
RESULTS_DIR = SCRIPT.parent / "results"
LIBRARIES = ("jaxloss", "optax", "torch")
JAX_LIBRARIES = ("jaxloss", "optax")
# PyTorch libraries of GPU (Triton) kernels: column -> the module imported for it. Their
# columns appear in the GPU set's report where PyTorch runs on CUDA; "cce_filtered" is
# Cut Cross-Entropy with its default gradient filter.
KERNEL_MODULES = {"liger": "liger_kernel.transformers", "cce": "cut_cross_entropy"}
KERNEL_PACKAGES = {"liger": "liger-kernel", "cce": "cut-cross-entropy"}
KERNEL_COLUMNS = ("liger", "cce", "cce_filtered")
TITLES = {"jaxloss": "jaxloss", "optax": "optax", "torch": "torch", "liger": "Liger",
          "cce": "CCE", "cce_filtered": "CCE filtered ≈"}
# Approximate by design: checked for shape and finiteness only; the largest difference
# from jaxloss is reported instead.
APPROXIMATE = frozenset({"cce_filtered"})
MODES = ("forward", "value_and_grad")
DASH = "—"
# The largest difference allowed between two libraries' losses, values or gradients,
# relative to the largest magnitude of the two: float32 results differ in the order
# of their sums; bfloat16 ones also where a library rounds to bfloat16 inside.
TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}
TEMPERATURE = 0.07  # of the InfoNCE rows
# A compile longer than this is reported on stderr as it happens (one of the ntxent
# rows was seen compiling for minutes on a GPU).
SLOW_COMPILE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run."""

    elementwise: tuple[int, int]  # [N, D] for the regression and sigmoid losses
    cross_entropy: tuple[tuple[int, int], ...]  # (N, V) for the softmax losses
    cross_entropy_dtypes: tuple[str, ...]
    ntxent: tuple[int, int]  # [B, D]
    triplet: tuple[int, int]  # [N, D]
    linear: tuple[int, int, int]  # (N, D, V) for linear_softmax_cross_entropy
    ctc: tuple[int, int, int, int]  # (B, T, K, L): batch, frames, classes, labels
    # (N, D, V): the integer-label cross-entropy of hidden @ weight, differentiated with
    # respect to both, as in a training step (None: no such row)
    composed: tuple[int, int, int] | None = None
    # The GPU set's own rows, in bfloat16 (None: none). (N, D, V): the linear
    # cross-entropy against PyTorch, Liger and Cut Cross-Entropy, with one matmul as a
    # reference.
    fused_linear: tuple[int, int, int] | None = None
    # (N, V): integer-label cross-entropy, bfloat16 and float32, with Liger's.
    integer_ce: tuple[int, int] | None = None
    # (B, D, chunk): symmetric info_nce with chunk_size=chunk and unchunked, against
    # optax's cross-entropy of the B×B scores and PyTorch's CLIP loss.
    clip: tuple[int, int, int] | None = None
    # (B, D, chunk): the same rows in float32 (the CPU's InfoNCE rows).
    info_nce: tuple[int, int, int] | None = None


FULL = Sizes(
    elementwise=(4096, 1024),
    cross_entropy=((4096, 1024), (1024, 32768), (256, 131072)),
    cross_entropy_dtypes=("float32", "bfloat16"),
    ntxent=(1024, 256),
    triplet=(4096, 256),
    linear=(4096, 512, 32768),
    ctc=(32, 400, 64, 80),
    composed=(1024, 256, 32768),
    info_nce=(4096, 256, 512),
)
QUICK = dataclasses.replace(FULL, ntxent=(512, 256), linear=(512, 512, 32768),
                            info_nce=(1024, 256, 256))
TINY = Sizes(
    elementwise=(64, 32),
    cross_entropy=((32, 64),),
    cross_entropy_dtypes=("float32",),
    ntxent=(32, 16),
    triplet=(64, 16),
    linear=(32, 16, 64),
    ctc=(4, 12, 6, 4),
    composed=(16, 8, 64),
    info_nce=(32, 8, 8),
)
# The GPU workloads of the project's issue 12, the sizes of its reference figures.
GPU_ROWS = {"fused_linear": (8192, 2304, 256000), "integer_ce": (8192, 131072),
            "clip": (32768, 512, 4096)}
SIZES = {
    "full": FULL,
    # Every row of the full run; two shrink: the linear layer (68 GFLOP forward at
    # N=4096) and ntxent (optax's gradient takes seconds and GiBs at B=1024).
    "quick": QUICK,
    # Every loss once at a toy size: a smoke test (tests/test_benchmarks.py) whose time
    # is mostly compilation.
    "tiny": TINY,
    # The GPU set: the GPU rows, then every row of --quick.
    "gpu": dataclasses.replace(QUICK, **GPU_ROWS),
    # The same rows at toy sizes (the GPU rows shrunk 32 to 256 times), for the tests.
    "gpu-tiny": dataclasses.replace(TINY, fused_linear=(32, 48, 1000),
                                    integer_ce=(32, 2048), clip=(128, 16, 32)),
}
GPU_SETS = ("gpu", "gpu-tiny")


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long and how often to measure."""

    samples: int  # rounds of interleaved samples, at most
    min_sample_s: float  # a sample repeats the call until it lasts this long
    budget_s: float  # stop a measurement after this long (and at least 3 rounds)


TIMINGS = {
    "full": Timing(samples=21, min_sample_s=0.05, budget_s=15.0),
    "quick": Timing(samples=7, min_sample_s=0.02, budget_s=1.0),
    "smoke": Timing(samples=3, min_sample_s=0.0, budget_s=0.0),  # --sizes tiny, gpu-tiny
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
    # and dtype of the gradient (one read, one write; no loss can do less). Or another
    # reference (``floor_label``), timed in ``floor_modes``.
    floor: Callable[..., jax.Array] | None = None
    floor_label: str = "-x"
    floor_modes: tuple[str, ...] = ("value_and_grad",)
    # PyTorch GPU kernels (KERNEL_COLUMNS), functions of ``torch_args`` returning the
    # loss (per row or summed), timed in value_and_grad only.
    kernels: dict[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    # Positions in ``args`` whose PyTorch tensor is the transpose of the JAX array (a
    # weight [V, D], PyTorch's layout, where JAX has [D, V]); their gradients are
    # transposed back before the check.
    torch_transposed: tuple[int, ...] = ()
    # The agreement tolerance where TOLERANCES[dtype] is too tight for the others' own
    # rounding (None: TOLERANCES[dtype]); the note says why.
    rtol: float | None = None


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """A row before its inputs exist, so a filtered-out row allocates nothing."""

    loss: str
    build: Callable[[], Case]
    gpu_row: bool = False  # one of the GPU set's own rows (Sizes.fused_linear, ...)


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


def gpu_case_specs(sizes: Sizes, data: _Inputs, torch: ModuleType | None,
                   kernels: Mapping[str, ModuleType]) -> list[CaseSpec]:
    """The GPU set's own rows (none where ``sizes`` has none), in bfloat16 unless said.

    ``kernels`` maps "liger" / "cce" to ``liger_kernel.transformers`` /
    ``cut_cross_entropy`` where they were imported. The calls below follow their APIs
    (liger-kernel 0.8, cut-cross-entropy 25.1) but have run only with stand-ins here,
    on the CPU; the real kernels need CUDA.
    """
    F: Any = None if torch is None else torch.nn.functional
    liger, cce = kernels.get("liger"), kernels.get("cce")
    specs: list[CaseSpec] = []

    if sizes.fused_linear is not None:
        n, d, v = sizes.fused_linear

        def build_fused_linear(n: int = n, d: int = d, v: int = v) -> Case:
            hidden = data.normal((n, d))
            weight = data.normal((d, v), scale=d**-0.5)
            labels = data.rng.integers(0, v, n).astype(np.int32)
            # The kernels' objective is the sum of the losses, like everyone's here (the
            # libraries' default is the mean: the same kernels, gradients scaled by 1/N).
            fused: dict[str, Callable[..., Any]] = {}
            if liger is not None:
                liger_loss = liger.LigerFusedLinearCrossEntropyLoss(reduction="sum")
                fused["liger"] = lambda h, w, y: liger_loss(w, h, y)  # weight [V, D] first
            if cce is not None:
                fused["cce"] = lambda h, w, y: cce.linear_cross_entropy(
                    h, w, y, reduction="sum", filter_eps=None)  # exact
                fused["cce_filtered"] = lambda h, w, y: cce.linear_cross_entropy(
                    h, w, y, reduction="sum")  # the default filter_eps="auto": approximate
            return Case(
                "linear_softmax_cross_entropy", f"N={n} D={d} V={v}", "bfloat16",
                jaxloss.linear_softmax_cross_entropy,
                lambda h, w, y: optax.losses.softmax_cross_entropy_with_integer_labels(
                    h @ w, y),
                (data.jax(hidden, "bfloat16"), data.jax(weight, "bfloat16"),
                 data.jax(labels)),
                argnums=(0, 1),
                torch=lambda h, w, y: F.cross_entropy(h @ w.T, y, reduction="none"),
                torch_args=(data.to_torch(hidden, "bfloat16"),
                            data.to_torch(np.ascontiguousarray(weight.T), "bfloat16"),
                            data.to_torch(labels.astype(np.int64))),
                torch_transposed=(1,), kernels=fused,
                floor=lambda h, w, y: h @ w, floor_label="one matmul", floor_modes=MODES,
                note="jaxloss's default chunk; optax on the bf16 logits hidden @ weight; "
                     "PyTorch, Liger and CCE with the weight [V, D] (PyTorch: "
                     "cross_entropy(h @ w.T)); gradient w.r.t. hidden and weight; ref: one "
                     "matmul hidden @ weight")
        specs.append(CaseSpec("linear_softmax_cross_entropy", build_fused_linear, True))

    if sizes.integer_ce is not None:
        n, v = sizes.integer_ce
        for dtype in ("bfloat16", "float32"):
            def build_integer(n: int = n, v: int = v, dtype: str = dtype) -> Case:
                logits = data.normal((n, v), scale=2.0)
                labels = data.rng.integers(0, v, n).astype(np.int32)
                # Liger's kernel writes the gradient over its input logits (its own copy
                # here): the timed calls after the first see other values, in the same time.
                ce = {} if liger is None else {
                    "liger": liger.LigerCrossEntropyLoss(reduction="sum")}
                return Case("softmax_cross_entropy_with_integer_labels", f"N={n} V={v}",
                            dtype, jaxloss.softmax_cross_entropy_with_integer_labels,
                            optax.losses.softmax_cross_entropy_with_integer_labels,
                            (data.jax(logits, dtype), data.jax(labels)),
                            torch=lambda x, y: F.cross_entropy(x, y, reduction="none"),
                            torch_args=(data.to_torch(logits, dtype),
                                        data.to_torch(labels.astype(np.int64))),
                            floor=_write_floor, kernels=ce)
            specs.append(CaseSpec("softmax_cross_entropy_with_integer_labels", build_integer,
                                  True))

    if sizes.clip is not None:
        specs += _clip_specs(sizes.clip, "bfloat16", data, torch, gpu_row=True)
    return specs


def _clip_specs(size: tuple[int, int, int], dtype: str, data: _Inputs,
                torch: ModuleType | None, gpu_row: bool) -> list[CaseSpec]:
    """Symmetric info_nce, chunked and not, against optax's cross-entropy of the B×B
    scores both ways and PyTorch's CLIP loss."""
    b, d, chunk = size
    F: Any = None if torch is None else torch.nn.functional

    def optax_clip(q: jax.Array, k: jax.Array) -> jax.Array:
        scores = (q @ k.T) / TEMPERATURE
        labels = jnp.arange(scores.shape[0])
        ce = optax.losses.softmax_cross_entropy_with_integer_labels
        return 0.5 * (ce(scores, labels) + ce(scores.T, labels))

    def torch_clip(q: Any, k: Any) -> Any:  # CLIP's loss, per pair
        scores = q @ k.T / TEMPERATURE
        labels = torch.arange(scores.shape[0], device=scores.device)
        return 0.5 * (F.cross_entropy(scores, labels, reduction="none")
                      + F.cross_entropy(scores.T, labels, reduction="none"))

    specs = []
    for chunk_size in (chunk, None):
        name = "info_nce(symmetric=True" + (
            f", chunk_size={chunk_size})" if chunk_size else ")")

        def build_clip(chunk_size: int | None = chunk_size, name: str = name) -> Case:
            pair = []
            for _ in range(2):  # unit rows, as CLIP normalizes its embeddings
                x = data.normal((b, d))
                pair.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
            return Case(name, f"B={b} D={d}", dtype,
                        functools.partial(jaxloss.info_nce, temperature=TEMPERATURE,
                                          symmetric=True, chunk_size=chunk_size),
                        optax_clip, tuple(data.jax(x, dtype) for x in pair),
                        argnums=(0, 1), torch=torch_clip,
                        torch_args=tuple(data.to_torch(x, dtype) for x in pair),
                        note="optax: cross-entropy of the B×B scores both ways; "
                             "PyTorch: CLIP's loss; gradient w.r.t. both sides")
        specs.append(CaseSpec(name, build_clip, gpu_row))
    return specs


def case_specs(
    sizes: Sizes, torch: ModuleType | None, torch_device: str | None, seed: int = 0,
    kernels: Mapping[str, ModuleType] | None = None,
) -> list[CaseSpec]:
    """Every row of the benchmark, in table order: the GPU set's own rows first."""
    data = _Inputs(seed, torch, torch_device)
    specs = gpu_case_specs(sizes, data, torch, kernels or {})
    # torch.nn.functional; the PyTorch lambdas below are called only when it exists.
    F: Any = None if torch is None else torch.nn.functional

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

    if sizes.info_nce is not None:
        specs += _clip_specs(sizes.info_nce, "float32", data, torch, gpu_row=False)

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
            # Summed, as a training step reduces it: jaxloss's three-matmul path.
            return Case("linear_softmax_cross_entropy", f"N={n_lin} D={d_lin} V={v_lin}",
                        "float32",
                        functools.partial(jaxloss.linear_softmax_cross_entropy,
                                          reduction="sum"),
                        lambda h, w, y: jnp.sum(
                            optax.losses.softmax_cross_entropy_with_integer_labels(h @ w, y)),
                        (data.jax(hidden), data.jax(weight), data.jax(labels)),
                        argnums=(0, 1),
                        torch=lambda h, w, y: F.cross_entropy(h @ w, y, reduction="sum"),
                        torch_args=(data.to_torch(hidden), data.to_torch(weight),
                                    data.to_torch(labels.astype(np.int64))),
                        note="reduction='sum'; optax/PyTorch on hidden @ weight; gradient "
                             "w.r.t. both")
        specs.append(CaseSpec("linear_softmax_cross_entropy", build_linear))

    # CTC over sequences of varied lengths, the gradient of the logits; PyTorch on the
    # log-softmax of the same logits, in its [T, B, K] layout.
    b_ctc, t_ctc, k_ctc, l_ctc = sizes.ctc

    def build_ctc() -> Case:
        logits = data.normal((b_ctc, t_ctc, k_ctc))
        frames = data.rng.integers(t_ctc // 2, t_ctc + 1, b_ctc)
        lengths = data.rng.integers(1, l_ctc + 1, b_ctc)
        logit_paddings = (np.arange(t_ctc) >= frames[:, None]).astype(np.float32)
        label_paddings = (np.arange(l_ctc) >= lengths[:, None]).astype(np.float32)
        labels = data.rng.integers(1, k_ctc, (b_ctc, l_ctc)).astype(np.int32)

        def torch_ctc(x: Any) -> Any:
            return F.ctc_loss(x.log_softmax(-1).transpose(0, 1), targets, input_lengths,
                              target_lengths, blank=0, reduction="none")

        if torch is not None:
            targets = data.to_torch(labels.astype(np.int64))
            input_lengths = data.to_torch(frames.astype(np.int64))
            target_lengths = data.to_torch(lengths.astype(np.int64))
        return Case("ctc_loss", f"B={b_ctc} T={t_ctc} K={k_ctc} L={l_ctc}", "float32",
                    jaxloss.ctc_loss, optax.losses.ctc_loss,
                    (data.jax(logits), data.jax(logit_paddings), data.jax(labels),
                     data.jax(label_paddings)),
                    torch=torch_ctc, torch_args=(data.to_torch(logits),),
                    # At T=400, optax's and PyTorch's float32 gradients are 1.5e-3 and
                    # 2.2e-3 of the largest entry from float64's, jaxloss's 3.5e-5.
                    rtol=5e-3,
                    note="varied lengths; gradient w.r.t. the logits (agreement to 5e-3: "
                         "optax and PyTorch accumulate float32 error over the frames)")
    specs.append(CaseSpec("ctc_loss", build_ctc))

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


@dataclasses.dataclass
class Compiled:
    """An ahead-of-time compiled JAX function on its arguments."""

    call: Callable[[], Any]  # blocking
    temp_bytes: int | None
    executable: Any  # jax.stages.Compiled
    seconds: float  # lowering and compiling


def matmul_precision(dtype: str) -> str | None:
    """JAX's matmul precision for a row: "highest" (true float32) for float32 rows off
    the CPU, None (JAX's default) otherwise.

    On NVIDIA GPUs JAX's default multiplies float32 in TF32 (about 1e-3 relative),
    PyTorch's in float32; the float32 rows compare, and check to 1e-4, the libraries
    on the same products. The CPU multiplies float32 exactly at any setting, and
    bfloat16 inputs are exact in any precision."""
    return "highest" if dtype == "float32" and jax.default_backend() != "cpu" else None


def _compile(fn: Callable[..., Any], args: tuple[Any, ...],
             precision: str | None = None) -> Compiled:
    """The ahead-of-time compiled ``fn``, with its temp bytes; traced with
    ``jax.default_matmul_precision(precision)`` (None: JAX's default)."""
    start = time.perf_counter()
    with (contextlib.nullcontext() if precision is None
          else jax.default_matmul_precision(precision)):
        compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    temp = None if stats is None else int(stats.temp_size_in_bytes)
    return Compiled(lambda: jax.block_until_ready(compiled(*args)), temp, compiled, seconds)


def _torch_calls(fn: Callable[..., Any], case: Case, torch: ModuleType,
                 device: str) -> dict[str, Callable[[], Any]]:
    """PyTorch's forward (no autograd graph) and value-and-gradient, as blocking thunks.

    The differentiated arguments are copied for each library, so a kernel that writes
    over its inputs (Liger's cross-entropy) changes only its own."""
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


def _torch_peak_bytes(torch: ModuleType, call: Callable[[], Any]) -> int:
    """The most CUDA memory PyTorch allocated during ``call()`` above what was allocated
    before it (the inputs), outputs included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()  # synchronizes
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return int(peak)


def jax_peak_bytes(call: Callable[[], Any], device: Any) -> int | None:
    """The peak device memory in use during ``call()`` above what was in use before it
    (the inputs), outputs included, from ``device.memory_stats()``; None where the
    device keeps no such statistics (the CPU).

    The peak cannot be reset: this is the call's own only in a process where nothing
    used more before it, hence one fresh process per function (``_jax_peak_in_child``).
    """
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats or "bytes_in_use" not in stats:
        return None
    before = int(stats["bytes_in_use"])
    result = call()  # blocking; kept until the peak is read, as the outputs count
    peak = int(device.memory_stats()["peak_bytes_in_use"]) - before
    del result
    return peak


def peak_of(path: Path, device: Any = None) -> dict[str, Any]:
    """In a fresh process (``run.py --peak-of PATH``): loads the executable that
    ``_jax_peak_in_child`` wrote, calls it once on zeros of its arguments' shapes (the
    memory does not depend on the values) and returns its ``jax_peak_bytes``."""
    serialized, in_tree, out_tree, shapes = pickle.loads(Path(path).read_bytes())
    default = jax.devices()[0]  # where the parent compiled it
    compiled = serialize_executable.deserialize_and_load(
        serialized, in_tree, out_tree, execution_devices=[default])
    args = [jax.block_until_ready(jnp.zeros(shape, dtype, device=default))
            for shape, dtype in shapes]
    device = default if device is None else device
    return {"peak_bytes": jax_peak_bytes(
        lambda: jax.block_until_ready(compiled(*args)), device)}


def _jax_peak_in_child(executable: Any, args: Sequence[Any]) -> int | None:
    """``jax_peak_bytes`` of a compiled function, measured in a fresh process (none on a
    backend without memory statistics); None, with a message, where that fails."""
    serialized, in_tree, out_tree = serialize_executable.serialize(executable)
    shapes = [(tuple(a.shape), str(a.dtype)) for a in args]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "executable.pickle"
        path.write_bytes(pickle.dumps((serialized, in_tree, out_tree, shapes)))
        # Not preallocating, so that it fits beside this process's memory.
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        stderr = ""
        try:
            done = subprocess.run([sys.executable, str(SCRIPT), "--peak-of", str(path)],
                                  capture_output=True, text=True, env=env, timeout=600)
            stderr = done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
        except (subprocess.SubprocessError, IndexError, KeyError, ValueError) as error:
            print(f"peak memory not measured: {error!r}\n{stderr[-2000:]}", file=sys.stderr,
                  flush=True)
            return None


def _has_memory_stats() -> bool:
    """Whether JAX's default device reports memory statistics (GPUs do, the CPU not)."""
    try:
        return jax.devices()[0].memory_stats() is not None
    except Exception:  # noqa: BLE001  (an unimplemented method raises on some backends)
        return False


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


def _untranspose(output: Any, mode: str, case: Case) -> Any:
    """A PyTorch value_and_grad result with the gradients of ``case.torch_transposed``
    arguments transposed to the JAX layout."""
    if mode != "value_and_grad" or not case.torch_transposed:
        return output
    value, grads = output
    return value, tuple(g.T if i in case.torch_transposed else g
                        for i, g in zip(case.argnums, grads, strict=True))


def compare(outputs: Mapping[str, Any], *, row: str, mode: str, dtype: str,
            argnums: Sequence[int] = (0,), approximate: Collection[str] = (),
            differences: dict[str, dict[str, float]] | None = None,
            rtol: float | None = None) -> list[str]:
    """What differs between each library's result and jaxloss's; empty when they agree.

    ``outputs`` maps a library to its result for one mode (the forward's losses, or
    ``(value, gradients)``). Two arrays agree when their largest absolute difference is
    at most ``TOLERANCES[dtype]`` times the largest magnitude of either; a shape that
    differs or a value that is not finite is a mismatch too. The libraries in
    ``approximate`` are checked for shapes and finiteness only; their differences,
    relative to the largest magnitude, go to ``differences[library][part]``.
    """
    rtol = TOLERANCES[dtype] if rtol is None else rtol
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
                if library in approximate:
                    if differences is not None:
                        differences.setdefault(library, {})[part] = (
                            error / scale if scale > 0 else 0.0)
                elif error > rtol * scale:
                    problems.append(
                        f"{where}, {part}: max |difference| {error:.3g} > {rtol:g} "
                        f"({dtype}) x max |value| {scale:.3g}")
    return problems


def measure(calls: Mapping[str, Callable[[], Any]], timing: Timing,
            check: Callable[[dict[str, Any]], None] | None = None,
            apart: Collection[str] = ()) -> dict[str, float]:
    """Median seconds per call of each thunk, sampled in turn (interleaved); those
    named in ``apart`` are interleaved among themselves, after the others.

    ``check``, when given, receives the warm-up calls' results, before any sample is
    timed (it raises to stop the measurement)."""
    names = list(calls)
    inner: dict[str, int] = {}
    results: dict[str, Any] = {}
    # Warm-up, whose time sizes the samples (the set apart first: see the module doc).
    for name in sorted(names, key=lambda name: name not in apart):
        start = time.perf_counter()
        results[name] = calls[name]()
        elapsed = time.perf_counter() - start
        inner[name] = max(1, math.ceil(timing.min_sample_s / max(elapsed, 1e-7)))
    if check is not None:
        check(results)
    del results
    samples: dict[str, list[float]] = {name: [] for name in names}
    for group in ([n for n in names if n not in apart], [n for n in names if n in apart]):
        began = time.perf_counter()
        for round_ in range(timing.samples if group else 0):
            shift = round_ % len(group)  # rotate who goes first
            for name in group[shift:] + group[:shift]:
                call, k = calls[name], inner[name]
                start = time.perf_counter()
                for _ in range(k):
                    call()
                samples[name].append((time.perf_counter() - start) / k)
            if round_ >= 2 and time.perf_counter() - began > timing.budget_s:
                break
    return {name: statistics.median(values) for name, values in samples.items()}


def run_case(
    case: Case, timing: Timing, torch: ModuleType | None, torch_device: str | None,
    *, jax_peaks: bool = False,
) -> dict[str, Any]:
    """Times and memory of one row, as a JSON-ready dict.

    ``jax_peaks``: measure jaxloss's and optax's peak memory, each function in a fresh
    process (on a backend with memory statistics). PyTorch's libraries' peaks are
    measured where they run on CUDA.

    Raises:
      MismatchError: optax or PyTorch disagrees with jaxloss on the row's inputs (the
        row is then not timed).
    """
    row: dict[str, Any] = {"loss": case.loss, "shape": case.shape, "dtype": case.dtype,
                           "note": case.note}
    if case.floor is not None:
        row["floor"] = case.floor_label
    precision = matmul_precision(case.dtype)
    if precision is not None:
        row["matmul_precision"] = precision
    functions = {"jaxloss": case.jaxloss, "optax": case.optax}
    # PyTorch and its GPU kernels: library -> {mode: thunk}.
    torch_calls: dict[str, dict[str, Callable[[], Any]]] = {}
    if torch is not None and torch_device is not None:
        if case.torch is not None:
            torch_calls["torch"] = _torch_calls(case.torch, case, torch, torch_device)
        for library, fn in case.kernels.items():
            torch_calls[library] = {"value_and_grad": _torch_calls(
                fn, case, torch, torch_device)["value_and_grad"]}
    on_cuda = torch_device is not None and torch_device.startswith("cuda")
    differences: dict[str, dict[str, float]] = {}
    for mode in MODES:
        calls: dict[str, Callable[[], Any]] = {}
        compiled: dict[str, Compiled] = {}
        for library, fn in functions.items():
            if mode == "value_and_grad":
                fn = jax.value_and_grad(_objective(fn), argnums=case.argnums)
            compiled[library] = _compile(fn, case.args, precision)
            calls[library] = compiled[library].call
            if compiled[library].seconds > SLOW_COMPILE_S:
                print(f"slow compile: {case.loss} {case.shape} {case.dtype}, {library} "
                      f"{mode}: {compiled[library].seconds:.0f} s", file=sys.stderr,
                      flush=True)
        for library, thunks in torch_calls.items():
            if mode in thunks:
                calls[library] = thunks[mode]
        if case.floor is not None and mode in case.floor_modes:
            calls["floor"] = _compile(case.floor, case.args, precision).call

        def check(results: dict[str, Any], mode: str = mode) -> None:
            outputs = {library: result if library in functions
                       else _untranspose(result, mode, case)
                       for library, result in results.items() if library != "floor"}
            problems = compare(outputs, row=f"{case.loss} {case.shape} {case.dtype}",
                               mode=mode, dtype=case.dtype, argnums=case.argnums,
                               approximate=APPROXIMATE, differences=differences,
                               rtol=case.rtol)
            if problems:
                raise MismatchError("\n".join(problems))

        seconds = measure(calls, timing, check, apart=torch_calls)
        peaks: dict[str, int | None] = {}
        if jax_peaks:
            if on_cuda:
                assert torch is not None
                torch.cuda.empty_cache()  # room for the fresh process
            for library in functions:
                peaks[library] = _jax_peak_in_child(compiled[library].executable, case.args)
        if on_cuda:
            assert torch is not None
            for library, thunks in torch_calls.items():
                if mode in thunks:
                    peaks[library] = _torch_peak_bytes(torch, thunks[mode])
        others = (*LIBRARIES, *case.kernels)
        row[mode] = {
            **{f"{library}_s": seconds.get(library) for library in others},
            "floor_s": seconds.get("floor"),
            "ratio": seconds["jaxloss"] / seconds["optax"],
            "jaxloss_temp_bytes": compiled["jaxloss"].temp_bytes,
            "optax_temp_bytes": compiled["optax"].temp_bytes,
            **{f"{library}_peak_bytes": peaks.get(library) for library in others},
            **{f"{library}_compile_s": round(compiled[library].seconds, 3)
               for library in functions},
        }
    if differences:
        row["approximate"] = differences
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
                torch_device: str | None, kernels: Mapping[str, str] | None = None,
                jax_peaks: str = "none") -> dict[str, Any]:
    """Where and with what the numbers were taken. ``kernels`` maps "liger" / "cce" to
    their version or why they did not run ({} where their columns are left out);
    ``jax_peaks``: the rows whose JAX peak memory was measured (``--jax-peaks``)."""
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
        "isa": _isa(),
        "allocator": ", ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ)
                     or "the system's defaults",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": optax.__version__,
        "jaxloss": jaxloss.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_device": torch_device,
        "kernels": dict(kernels or {}),
        "jax_peaks": jax_peaks,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _isa() -> str:
    """The widest x86 vector extension the CPU has (``avx512``, ``+amx``), and XLA's cap
    on it where ``XLA_FLAGS`` sets ``--xla_cpu_max_isa``: XLA's CPU code, and so the
    ratios, differ per instruction set."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = ("avx512" if "avx512f" in flags else "avx2" if "avx2" in flags
           else "avx" if "avx" in flags else platform.machine().lower())
    if "amx_tile" in flags:
        isa += "+amx"
    cap = re.search(r"--xla_cpu_max_isa=(\w+)", os.environ.get("XLA_FLAGS", ""))
    return isa if cap is None else f"{isa}, XLA max {cap.group(1).lower()}"


def result_stem() -> str:
    """``<backend>-<device>``, e.g. ``gpu-nvidia-h100-80gb-hbm3``; on a CPU the model and
    instruction set, e.g. ``cpu-amd-epyc-avx2`` or ``cpu-intel-xeon-...-avx512-amx``,
    so that two machines' (or two ISA caps') results sit side by side."""
    if jax.default_backend() == "cpu":
        return f"cpu-{_slug(_cpu_model())}-{_slug(_isa())}"
    kind = _slug(jax.devices()[0].device_kind)
    return f"{jax.default_backend()}-{kind or 'unknown'}"


def _ms(seconds: float | None) -> str:
    return DASH if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(size: int | None) -> str:
    return DASH if size is None else f"{size / 2**20:.3g}"


def _tolerances() -> str:
    return ", ".join(f"{rtol:g} ({dtype})" for dtype, rtol in TOLERANCES.items())


def _header(env: Mapping[str, Any], title: str) -> list[str]:
    torch = f"{env['torch']} ({env['torch_device']})" if env["torch"] else "not installed"
    return [
        f"# {title}: {env['backend']} ({env['device']})",
        "",
        f"{env['date']}, {env['mode']} run, {env['sizes']} sizes, {env['seconds']} s. "
        f"{env['os']}; {env['cpu']}, "
        f"{env['cpu_count']} CPUs; {env['device_count']} {env['backend']} device(s).",
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, optax {env['optax']}, "
        f"jaxloss {env['jaxloss']}, PyTorch {torch}, Python {env['python']}.",
        f"Instruction set: {env.get('isa', DASH)}. Allocator: {env.get('allocator', DASH)}.",
    ]


def _trailer(rows: Sequence[Mapping[str, Any]],
             mismatches: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    notes = [f"- `{row['loss']}` {row['shape']}: {row['note']}." for row in rows if row["note"]]
    if notes:
        lines += ["", *dict.fromkeys(notes)]
    if mismatches:
        lines += ["", "## Mismatches (not timed)", "",
                  "These rows' libraries disagree on the same inputs, so their times would "
                  "compare different computations:", ""]
        lines += [f"- `{m['loss']}` {m['shape']} {m['dtype']}: "
                  + "; ".join(m["mismatch"].splitlines()) for m in mismatches]
    return lines


def markdown(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
             mismatches: Sequence[Mapping[str, Any]] = ()) -> str:
    """The results as a Markdown report; ``mismatches`` are the rows not timed. The GPU
    set's report (``gpu_markdown``) has its own layout."""
    if env["sizes"] in GPU_SETS:
        return gpu_markdown(env, rows, mismatches)
    lines = [
        *_header(env, "jaxloss vs optax"),
        "",
        "Median milliseconds per call of the forward pass (the per-example losses) and of "
        "`value_and_grad` of their sum with respect to the first argument; **ratio** is "
        "jaxloss / optax (below 1: jaxloss is faster); **temp** is XLA's temporary "
        "memory for the compiled function in MiB, jaxloss / optax. **v&g floor** is the "
        "time of writing a fresh array the size of the gradient (`-logits`), the least "
        "any value_and_grad must do. Every row was checked before it was timed: optax's "
        "and PyTorch's losses, values and gradients agree with jaxloss's to "
        + _tolerances() + " of the largest magnitude.",
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
    lines += _trailer(rows, mismatches)
    return "\n".join(lines) + "\n"


def _kernel_line(kernels: Mapping[str, str]) -> str:
    if not kernels:
        return ("Liger and Cut Cross-Entropy: left out (their kernels need PyTorch on "
                "CUDA).")
    return f"Liger {kernels.get('liger', DASH)}, Cut Cross-Entropy {kernels.get('cce', DASH)}."


def gpu_markdown(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 mismatches: Sequence[Mapping[str, Any]] = ()) -> str:
    """The GPU set's report: a time table and a memory table, one line per row and pass
    (fwd, v&g), with Liger's and Cut Cross-Entropy's columns where ``env["kernels"]``
    names them."""
    kernels = env.get("kernels", {})
    columns = [*LIBRARIES, *(KERNEL_COLUMNS if kernels else ())]
    titles = [TITLES[library] for library in columns]
    passes = {"forward": "fwd", "value_and_grad": "v&g"}
    approximate = [TITLES[library] for library in columns if library in APPROXIMATE]
    jax_peaks = env.get("jax_peaks", "none")
    peak_source = (
        "jaxloss and optax: not measured (no memory statistics on this backend, or "
        "`--jax-peaks none`)" if jax_peaks == "none" else
        "jaxloss and optax each in a fresh process, from "
        "`device.memory_stats()[\"peak_bytes_in_use\"]` (which cannot be reset)"
        + (", on the GPU rows (`--jax-peaks all` for every row)"
           if jax_peaks == "gpu-rows" else ""))
    lines = [
        *_header(env, "jaxloss vs optax, PyTorch, Liger and Cut Cross-Entropy"),
        _kernel_line(kernels),
        "",
        "Every row was checked before it was timed: "
        + ("optax's, PyTorch's, Liger's and CCE's" if kernels else "optax's and PyTorch's")
        + " losses, values and gradients agree with jaxloss's to " + _tolerances()
        + " of the largest magnitude"
        + (f", except **{', '.join(approximate)}** (Cut Cross-Entropy with its default "
           "gradient filter), approximate by design: its largest differences are listed "
           "below the tables, not checked." if approximate else "."),
        "",
        "## Time",
        "",
        "Median milliseconds per call. **fwd**: the per-example losses; **v&g**: the "
        "value and gradients of their sum (with respect to the first argument, or as the "
        "notes say). **ref**: `-x` on the cross-entropy rows (writing an array the size "
        "of the gradient, the least a value_and_grad must do), one matmul "
        "`hidden @ weight` on the bf16 linear row. **ratio**: jaxloss / optax (below 1: "
        "jaxloss is faster)."
        + (" The float32 rows' JAX matmuls ran at precision \"highest\" (true float32, "
           "PyTorch's default) instead of JAX's default (TF32 on NVIDIA GPUs)."
           if env["backend"] != "cpu" else "")
        + (" Liger and CCE are timed in v&g only (their forward computes the gradients)."
           if kernels else ""),
        "",
        "| loss | shape | dtype | pass | " + " | ".join(titles) + " | ref | ratio |",
        "| --- | --- | --- | --- |" + " ---: |" * (len(columns) + 2),
    ]
    for row in rows:
        for mode, short in passes.items():
            result = row[mode]
            cells = [f"`{row['loss']}`", row["shape"], row["dtype"], short,
                     *(_ms(result.get(f"{library}_s")) for library in columns),
                     _ms(result.get("floor_s")), f"**{result['ratio']:.2f}**"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Memory",
        "",
        "MiB. **temp**: XLA's temporary memory for the compiled function "
        "(`memory_analysis().temp_size_in_bytes`). **peak**: the most device memory in "
        "use during one call above what was in use before it (the inputs), outputs "
        f"included: {peak_source}; PyTorch's libraries from "
        "`torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, where "
        "they run on CUDA. —: not measured or not run.",
        "",
        "| loss | shape | dtype | pass | temp jaxloss | temp optax | "
        + " | ".join(f"peak {title}" for title in titles) + " |",
        "| --- | --- | --- | --- |" + " ---: |" * (len(columns) + 2),
    ]
    for row in rows:
        for mode, short in passes.items():
            result = row[mode]
            cells = [f"`{row['loss']}`", row["shape"], row["dtype"], short,
                     _mib(result.get("jaxloss_temp_bytes")), _mib(result.get("optax_temp_bytes")),
                     *(_mib(result.get(f"{library}_peak_bytes")) for library in columns)]
            lines.append("| " + " | ".join(cells) + " |")
    approximations = [
        f"- **{TITLES[library]}** on `{row['loss']}` {row['shape']} {row['dtype']}: "
        "largest |difference| from jaxloss, relative to the largest magnitude: "
        + ", ".join(f"{part} {value:.2g}" for part, value in parts.items()) + "."
        for row in rows for library, parts in row.get("approximate", {}).items()]
    if approximations:
        lines += ["", "## Approximate results (not checked)", "", *approximations]
    lines += _trailer(rows, mismatches)
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


def _import_kernels(torch: ModuleType | None,
                    torch_device: str | None) -> tuple[dict[str, ModuleType], dict[str, str]]:
    """Liger and Cut Cross-Entropy, imported where they can run (PyTorch on CUDA), and
    each one's version or why it does not run. Where JAX's backend is not a GPU and
    PyTorch is not on CUDA, both are empty: their columns are left out."""
    on_cuda = torch is not None and torch_device is not None and torch_device.startswith("cuda")
    if not on_cuda:
        if jax.default_backend() != "gpu":
            return {}, {}
        return {}, {name: "not run (needs PyTorch with CUDA)" for name in KERNEL_MODULES}
    modules: dict[str, ModuleType] = {}
    status: dict[str, str] = {}
    for name, module in KERNEL_MODULES.items():
        try:
            modules[name] = importlib.import_module(module)
        except ImportError:
            status[name] = "not installed"
        except Exception as error:  # noqa: BLE001  (a broken Triton, say: report it, go on)
            status[name] = f"not importable ({type(error).__name__}: {error})"
        else:
            status[name] = _version(KERNEL_PACKAGES[name]) or "installed"
    return modules, status


def default_sizes(backend: str, quick: bool) -> str:
    """The size set when ``--sizes`` is not given: the GPU set on a GPU, else the CPU's
    ('quick' with ``--quick``, else 'full')."""
    if backend == "gpu":
        return "gpu"
    return "quick" if quick else "full"


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
                        help="default: 'gpu' where JAX's backend is a GPU, else 'quick' with "
                        "--quick, else 'full'; 'gpu': the GPU rows (linear cross-entropy "
                        "V=256000, cross-entropy V=131072, InfoNCE B=32768, with Liger and "
                        "Cut Cross-Entropy) and every --quick row; 'tiny' and 'gpu-tiny': "
                        "the same rows at toy sizes, timed 3 times (smoke tests)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep the system allocator's defaults (by default the run "
                             "restarts with fixed glibc thresholds: see MALLOC_ENV)")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave PyTorch (and Liger and Cut Cross-Entropy) out even when "
                        "installed")
    parser.add_argument("--jax-peaks", choices=("gpu-rows", "all", "none"),
                        default="gpu-rows",
                        help="the rows whose jaxloss and optax peak memory is measured, "
                        "one fresh process per function and pass, a few seconds each, on a "
                        "backend with memory statistics (default: the GPU set's own rows)")
    # Internal: the fresh process that measures one compiled function's peak memory.
    parser.add_argument("--peak-of", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def iter_rows(specs: Sequence[CaseSpec], timing: Timing, torch: ModuleType | None,
              torch_device: str | None, *, jax_peaks: str = "none") -> Iterator[dict[str, Any]]:
    """Builds, measures and frees one row at a time. A row whose libraries disagree
    comes back untimed, as ``{"loss", "shape", "dtype", "note", "mismatch"}``.
    ``jax_peaks``: "gpu-rows", "all" or "none", the rows whose JAX peaks are measured."""
    for spec in specs:
        case = spec.build()
        peaks = jax_peaks == "all" or (jax_peaks == "gpu-rows" and spec.gpu_row)
        try:
            row = run_case(case, timing, torch, torch_device, jax_peaks=peaks)
        except MismatchError as error:
            row = {"loss": case.loss, "shape": case.shape, "dtype": case.dtype,
                   "note": case.note, "mismatch": str(error)}
        del case
        gc.collect()
        if torch is not None and torch_device is not None and torch_device.startswith("cuda"):
            torch.cuda.empty_cache()  # leave the GPU's memory to the next row's JAX arrays
        yield row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peak_of is not None:
        print(json.dumps(peak_of(args.peak_of)))
        return 0
    # Before JAX starts its backend (no effect once it has): JAX and PyTorch, and the
    # peak-memory processes, share the GPU, so JAX takes memory as it needs it instead
    # of 75 % of the GPU up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    mode = "quick" if args.quick else "full"
    sizes = args.sizes or default_sizes(jax.default_backend(), args.quick)
    timing = TIMINGS["smoke" if sizes in ("tiny", "gpu-tiny") else mode]
    torch, torch_device = _import_torch(not args.no_torch)
    kernels, kernel_status = (_import_kernels(torch, torch_device) if sizes in GPU_SETS
                              else ({}, {}))
    jax_peaks = args.jax_peaks if _has_memory_stats() else "none"
    specs = case_specs(SIZES[sizes], torch, torch_device, kernels=kernels)
    if args.filter is not None:
        specs = [spec for spec in specs if re.search(args.filter, spec.loss)]
        if not specs:
            print(f"no loss matches --filter {args.filter!r}", file=sys.stderr)
            return 2
    env = environment(mode, sizes, torch, torch_device, kernel_status, jax_peaks)
    started = time.perf_counter()
    rows, mismatches = [], []
    for row in iter_rows(specs, timing, torch, torch_device, jax_peaks=jax_peaks):
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


# glibc returns large freed blocks to the system, and every fresh 16 MiB output then
# costs its page faults again: on one 2-core machine writing a [4096, 1024] float32 array
# took 8-10 ms in some processes and 1.4 ms in others, which drowned every ratio. Fixed
# thresholds keep freed blocks for reuse, as a training loop's steady state does; the
# header says which allocator settings a run had (--system-malloc: none).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
              "MALLOC_TOP_PAD_": str(512 << 20)}


def _with_steady_allocator(argv: Sequence[str]) -> None:
    """Runs this script again with :data:`MALLOC_ENV` (glibc reads it at start-up)."""
    if ("--system-malloc" in argv or platform.system() != "Linux"
            or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


if __name__ == "__main__":
    _with_steady_allocator(sys.argv[1:])
    sys.exit(main())
