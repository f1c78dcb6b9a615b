"""JAX for the tests; this module runs before JAX starts.

Backend. By default the tests run on the CPU (``JAX_PLATFORMS=cpu`` unless it is set).
With ``JAXLOSS_TEST_BACKEND=default`` (``make test-gpu``) ``JAX_PLATFORMS`` is left as it
is, so that JAX's default backend is the accelerator where there is one; GPU memory is
then not preallocated (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set), so that the
pytest-xdist workers can share one GPU. The header of pytest's report names the backend.

Devices. Four host CPU devices exist either way, ``jax.devices("cpu")``
(``JAXLOSS_TEST_DEVICES`` overrides the count, for the 8-device run of
tests/distributed). The pmap and sharding tests run on them explicitly, with the
``cpu_devices`` and ``on_cpu`` fixtures below, whatever the default backend is.

Tests that assert the CPU's memory or time ratios are marked ``cpu_backend_only`` and
skip on any other default backend.
"""

import os

BACKEND = os.environ.get("JAXLOSS_TEST_BACKEND", "cpu")
if BACKEND == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
elif BACKEND != "default":
    raise RuntimeError(f"JAXLOSS_TEST_BACKEND must be 'cpu' or 'default', got {BACKEND!r}")
if os.environ.get("JAX_PLATFORMS") != "cpu":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# On the CPU backend the suite's time is mostly XLA compiling small programs, and most
# of a compile is LLVM's optimization. Level 0 makes the compiled code slower, not
# different: XLA's HLO passes (fusion, layout, buffer assignment: what memory_analysis
# reports) are the same and XLA's CPU code uses no fast-math. The test that compiles
# for another x86 CPU (tests/test_numerics.py) runs at the default level, and
# JAXLOSS_TEST_XLA_OPT=default keeps the default everywhere.
XLA_OPT = "--xla_backend_optimization_level=0"
if (BACKEND == "cpu" and os.environ.get("JAXLOSS_TEST_XLA_OPT") != "default"
        and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_OPT}".strip()

import chex  # noqa: E402

chex.set_n_cpu_devices(int(os.environ.get("JAXLOSS_TEST_DEVICES", "4")))

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# chex skips its pmap variant where jax.device_count() < 2 (one GPU); ours pass
# devices=jax.devices("cpu"), so they run there instead.
flags.FLAGS["chex_skip_pmap_variant_if_single_device"].value = False

CPU_RATIOS = "memory/time ratios are asserted for the CPU backend only"


def default_backend_is_cpu() -> bool:
    """Whether JAX's default backend (where uncommitted arrays and jit run) is the CPU."""
    return jax.default_backend() == "cpu"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cpu_backend_only(reason=...): skip unless JAX's default backend is the CPU "
        f"(default reason: {CPU_RATIOS!r})")


def pytest_report_header(config):
    cpus = len(jax.devices("cpu"))
    return (f"jax {jax.__version__}, default backend {jax.default_backend()}: "
            f"{jax.devices()}; {cpus} CPU devices for the multi-device tests")


# The longest tests (subprocesses, notebooks, training runs), started first: with
# pytest-xdist's load scheduling a long test collected last would leave the other
# workers idle at the end of the run.
LONGEST_FIRST = (
    "tests/test_mesh.py",
    "tests/test_distributed.py::test_distributed_tests_on_8_devices",
    "tests/test_notebooks.py::test_notebook_runs",
    "tests/test_training.py::test_killed_run_resumes_to_identical_parameters",
    "tests/test_benchmarks.py::test_tiny_run_writes_the_reports",
    "tests/test_benchmarks.py::test_gpu_tiny_run",
    "tests/test_cli.py::test_demo",
    "tests/test_cli.py::test_python_dash_m_jaxloss_demo",
    "tests/test_testing.py::test_jaxloss_check_command",
    "tests/test_numerics.py::test_linear_loss_exact_when_compiled_for_another_x86_cpu",
    "tests/test_readme.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
    if default_backend_is_cpu():
        return
    for item in items:
        marker = item.get_closest_marker("cpu_backend_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=marker.kwargs.get("reason", CPU_RATIOS)))


@pytest.fixture
def x64():
    """float64 for references and finite differences, scoped to one test."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def cpu_devices():
    """The host CPU devices (4, or JAXLOSS_TEST_DEVICES), for meshes and pmap."""
    devices = jax.devices("cpu")
    assert len(devices) == int(os.environ.get("JAXLOSS_TEST_DEVICES", "4")), devices
    return devices


@pytest.fixture
def on_cpu(cpu_devices):
    """The CPU as the default device for one test, so that its single-device reference
    runs where its pmap or mesh (over ``cpu_devices``) does; yields ``cpu_devices``."""
    with jax.default_device(cpu_devices[0]):
        yield cpu_devices


@pytest.fixture
def highest_matmul_precision():
    """float32 matmuls at full precision ("highest") for one test, also inside models
    (a GPU's default is TF32), for comparisons that claim float32 exactness."""
    with jax.default_matmul_precision("highest"):
        yield
