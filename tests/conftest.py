"""Four CPU devices for the pmap and sharding tests; must run before JAX starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import chex  # noqa: E402

chex.set_n_cpu_devices(4)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """float64 for references and finite differences, scoped to one test."""
    with jax.enable_x64(True):
        yield
