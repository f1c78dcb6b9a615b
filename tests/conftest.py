"""Four CPU devices for the pmap and sharding tests (JAXLOSS_TEST_DEVICES overrides it,
for the 8-device run of tests/distributed); must run before JAX starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import chex  # noqa: E402

chex.set_n_cpu_devices(int(os.environ.get("JAXLOSS_TEST_DEVICES", "4")))

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """float64 for references and finite differences, scoped to one test."""
    with jax.enable_x64(True):
        yield
