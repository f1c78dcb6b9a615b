"""The public verification helpers catch what they claim to, and `jaxloss check`."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import cli
from jaxloss.testing import (
    CheckCase,
    assert_finite_differences,
    assert_grads_finite,
    assert_vjp_matches_reference,
    run_checks,
)

X = np.linspace(-2.0, 2.0, 6).reshape(2, 3)


def _squared_with_vjp(scale):
    """x**2 whose backward pass is `scale` times the true derivative."""

    @jax.custom_vjp
    def f(x):
        return x**2

    f.defvjp(lambda x: (x**2, x), lambda x, g: (scale * 2 * x * g,))
    return f


def reference(x):
    return x**2


def test_vjp_helper_passes_a_correct_rule_and_reports_its_error():
    err = assert_vjp_matches_reference(_squared_with_vjp(1.0), reference, X)
    assert err == 0.0


def test_vjp_helper_catches_a_wrong_rule():
    with pytest.raises(AssertionError):
        assert_vjp_matches_reference(_squared_with_vjp(1.001), reference, X)


def test_finite_differences_catch_a_wrong_rule():
    assert_finite_differences(_squared_with_vjp(1.0), X)
    with pytest.raises(AssertionError):
        assert_finite_differences(_squared_with_vjp(1.01), X)


def test_grads_finite_catches_the_naive_norm_at_zero():
    def naive_distance(a, b):
        return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))

    same = np.ones((2, 3), np.float32)
    with pytest.raises(AssertionError):
        assert_grads_finite(naive_distance, same, same)
    assert_grads_finite(jaxloss.softmax_cross_entropy_with_integer_labels,
                        np.array([[1e30, -np.inf, 0.0]], np.float32), np.array([0]))


def test_run_checks_reports_a_broken_case():
    (result,) = run_checks([CheckCase("broken", _squared_with_vjp(1.5), reference, (X,))])
    assert not result.ok
    assert not result.finite_differences
    assert "gradient differs" in result.error


def test_jaxloss_check_command(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax_cross_entropy_with_integer_labels", "sigmoid_binary_cross_entropy",
                 "binary_cross_entropy", "categorical_cross_entropy", "mean_squared_error",
                 "pairwise_distance", "contrastive_loss", "triplet_margin_loss", "ntxent",
                 "info_nce", "siglip_loss", "linear_softmax_cross_entropy"):
        assert name in out
    assert "FAIL" not in out
    assert "21/21 checks ok" in out


def test_command_line_version_and_usage_errors():
    version = subprocess.run([sys.executable, "-m", "jaxloss", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"jaxloss {jaxloss.__version__}"
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert cli.main([]) == 2
