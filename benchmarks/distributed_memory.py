"""Per-device memory of the distributed InfoNCE against the all-gathered full matrix.

Forces 8 CPU devices, builds the value-and-grad of ``jaxloss.info_nce(...,
axis_name="data", chunk_size=...)`` inside ``jax.shard_map`` (each device: its B/8 rows
against the gathered B keys, chunk rows at a time) and of the naive data-parallel
version (each device gathers every query and key and computes the whole B x B loss,
unchunked), compiles both (nothing runs) and prints each device's
``memory_analysis().temp_size_in_bytes`` and their ratio.

    python benchmarks/distributed_memory.py [--batch 16384] [--dim 256] [--chunk 256]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jaxloss
from jaxloss import distributed

DEVICES = 8


def _temp_bytes(fn, *args) -> int:
    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def measure(mesh: jax.sharding.Mesh, batch: int, dim: int, chunk: int | None,
            axis_name: str = "data") -> tuple[int, int]:
    """``(distributed, full)`` temp bytes per device of the mean InfoNCE's value and
    gradients (queries, keys, temperature) over ``mesh``'s ``axis_name``."""
    rows, replicated = P(axis_name), P()

    def local(q, k, t):  # this device's rows against the gathered keys, chunked
        return jaxloss.info_nce(q, k, temperature=t, chunk_size=chunk, reduction="mean",
                                axis_name=axis_name)

    def full(q, k, t):  # every device gathers everything and computes the B x B loss
        q_all = distributed.all_gather_with_grad(q, axis_name)
        k_all = distributed.all_gather_with_grad(k, axis_name)
        # The same value on every device; pmean types it replicated (and keeps the
        # gradient: each device's copy weighs 1/n).
        return jax.lax.pmean(jaxloss.info_nce(q_all, k_all, temperature=t,
                                              reduction="mean"), axis_name)

    shapes = (jax.ShapeDtypeStruct((batch, dim), jnp.float32),
              jax.ShapeDtypeStruct((batch, dim), jnp.float32),
              jax.ShapeDtypeStruct((), jnp.float32))
    results = []
    for body in (local, full):
        loss = jax.shard_map(body, mesh=mesh, in_specs=(rows, rows, replicated),
                             out_specs=replicated)
        results.append(_temp_bytes(jax.value_and_grad(loss, argnums=(0, 1, 2)), *shapes))
    return results[0], results[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16384, help="global batch B")
    parser.add_argument("--dim", type=int, default=256, help="embedding width D")
    parser.add_argument("--chunk", type=int, default=256,
                        help="rows per block of the distributed loss (0: unchunked)")
    args = parser.parse_args(argv)
    # Before JAX starts its backends: 8 host devices.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    jax.config.update("jax_num_cpu_devices", DEVICES)
    mesh = distributed.data_mesh()
    n = mesh.shape["data"]
    dist_bytes, full_bytes = measure(mesh, args.batch, args.dim, args.chunk or None)
    print(f"devices: {n} x {jax.devices()[0].platform}, B = {args.batch}, D = {args.dim}, "
          f"chunk = {args.chunk or 'none'}")
    print(f"distributed info_nce (b x B blocks), temp bytes per device: {dist_bytes:>14,}")
    print(f"all-gathered full B x B loss,        temp bytes per device: {full_bytes:>14,}")
    ratio = dist_bytes / full_bytes
    print(f"ratio: {ratio:.4f} (1/{1 / ratio:.1f}; goal <= 1/{n})")
    return 0 if ratio <= 1 / n else 1


if __name__ == "__main__":
    sys.exit(main())
