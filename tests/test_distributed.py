"""tests/distributed again on 8 CPU devices, in a subprocess (the device count is fixed
when JAX starts): every cross-device loss equals its single-device value on 4 devices
(the normal suite) and on 8. The subprocess runs on the CPU backend alone, also where
the suite itself runs on an accelerator (``make test-gpu``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_distributed_tests_on_8_devices():
    env = {**os.environ, "JAXLOSS_TEST_DEVICES": "8", "JAX_PLATFORMS": "cpu",
           "JAXLOSS_TEST_BACKEND": "cpu"}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/distributed", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
