"""The public verification helpers catch what they claim to, and `jaxloss check` reports
each wrong backward rule planted in the library as FAIL."""

import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import classification, cli, contrastive, large_vocab, testing
from jaxloss.testing import (
    CheckCase,
    Extreme,
    assert_finite_differences,
    assert_grads_finite,
    assert_matches_float64,
    assert_vjp_matches_reference,
    builtin_cases,
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


def _scaled_loss(weight_scale):
    """``w * x**2`` whose backward pass for the keyword ``w`` is ``weight_scale`` times
    the true one."""

    @jax.custom_vjp
    def f(x, w):
        return w * x**2

    f.defvjp(lambda x, w: (w * x**2, (x, w)),
             lambda res, g: (2 * res[1] * res[0] * g,
                             weight_scale * jnp.sum(res[0] ** 2 * g)))
    return lambda x, *, w: f(x, w)


def test_helpers_differentiate_keyword_arguments():
    ref = lambda x, *, w: w * x**2  # noqa: E731
    wrong = _scaled_loss(10.0)
    # Only the keyword argument's rule is wrong: invisible unless it is differentiated.
    assert_vjp_matches_reference(wrong, ref, X, w=np.asarray(0.5))
    with pytest.raises(AssertionError, match="gradient of w"):
        assert_vjp_matches_reference(wrong, ref, X, w=np.asarray(0.5), diff_kwargs=("w",))
    with pytest.raises(AssertionError):
        assert_finite_differences(wrong, X, w=np.asarray(0.5), diff_kwargs=("w",), order=1,
                                  modes=("rev",))
    assert_vjp_matches_reference(_scaled_loss(1.0), ref, X, w=np.asarray(0.5),
                                 diff_kwargs=("w",))


def test_finite_differences_catch_a_wrong_rule():
    # A jax.custom_vjp of one's own has no forward mode: reverse mode only, as the docs say.
    assert_finite_differences(_squared_with_vjp(1.0), X, modes=("rev",))
    with pytest.raises(AssertionError):
        assert_finite_differences(_squared_with_vjp(1.01), X, modes=("rev",))
    with pytest.raises(TypeError, match="custom_vjp"):
        assert_finite_differences(_squared_with_vjp(1.0), X)


def _squared_with_jvp(scale):
    """x**2 whose tangent is `scale` times the true one."""

    @jax.custom_jvp
    def f(x):
        return x**2

    f.defjvp(lambda primals, tangents: (primals[0] ** 2, scale * 2 * primals[0] * tangents[0]))
    return f


def test_forward_mode_helpers_catch_a_wrong_tangent():
    assert_finite_differences(_squared_with_jvp(1.0), X)
    testing.assert_jvp_matches_reference(_squared_with_jvp(1.0), reference, X)
    with pytest.raises(AssertionError, match="forward-mode tangent"):
        testing.assert_jvp_matches_reference(_squared_with_jvp(1.001), reference, X)
    with pytest.raises(AssertionError):
        assert_finite_differences(_squared_with_jvp(1.01), X, modes=("fwd",), order=1)


def test_grads_finite_catches_the_naive_norm_at_zero():
    def naive_distance(a, b):
        return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))

    same = np.ones((2, 3), np.float32)
    with pytest.raises(AssertionError):
        assert_grads_finite(naive_distance, same, same)
    assert_grads_finite(jaxloss.softmax_cross_entropy_with_integer_labels,
                        np.array([[1e30, -np.inf, 0.0]], np.float32), np.array([0]))


def _cross_entropy(x, labels, *, lse_in_one_number=False):
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    log_s = jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))
    picked = jnp.take_along_axis(x, labels[:, None], axis=-1)
    if lse_in_one_number:  # at |m| = 1e30, m + log s is m: log s is lost
        return ((m + log_s) - picked)[:, 0]
    return ((m - picked) + log_s)[:, 0]


def test_extreme_check_wants_the_right_values_not_only_finite_ones():
    ties, label = np.array([[-1e30, 1e30, 1e30]], np.float32), np.array([2])
    loss = jaxloss.softmax_cross_entropy_with_integer_labels
    assert_matches_float64(loss, _cross_entropy, ties, label)
    assert_matches_float64(loss, None, ties, label,
                           expected=([np.log(2)], ([[0.0, 0.5, -0.5]],)))
    with pytest.raises(AssertionError, match="gradient of logits"):
        assert_matches_float64(loss, None, ties, label,
                               expected=([np.log(2)], ([[0.0, 1.0, -1.0]],)))
    # Finite, and wrong: loss 0 and probabilities [0, 1, 1].
    naive = lambda x, y: _cross_entropy(x, y, lse_in_one_number=True)  # noqa: E731
    assert_grads_finite(naive, ties, label)
    with pytest.raises(AssertionError, match="value"):
        assert_matches_float64(naive, _cross_entropy, ties, label)


def test_extreme_check_takes_an_overflow_as_inf_and_nan_as_wrong():
    x = np.array([2e38, -2e38], np.float32)
    assert_matches_float64(lambda v: v * 2.0, lambda v: v * 2.0, x)  # 4e38 rounds to inf
    with pytest.raises(AssertionError):
        assert_matches_float64(lambda v: v * jnp.nan, lambda v: v * 2.0,
                               np.ones(2, np.float32))


def test_run_checks_reports_a_broken_case():
    (result,) = run_checks([CheckCase("broken", _squared_with_vjp(1.5), reference, (X,))])
    assert not result.ok
    assert not result.matches_reference
    assert not result.finite_differences
    assert "float64 reference" in result.error
    assert "gradient of x" in result.error


def test_run_checks_reports_an_exception_instead_of_raising():
    def raises(x):
        raise ValueError("no such loss")

    (result,) = run_checks([CheckCase("raises", raises, reference, (X,),
                                      extremes=(Extreme((X,)),))])
    assert not result.ok and not result.extremes
    assert "ValueError: no such loss" in result.error


# ---------------------------------------------------------------------------------
# What the built-in cases cover.

def test_builtin_case_names_are_unique():
    # Which public names the cases cover is tests/test_registry.py's check.
    names = [case.name for case in builtin_cases()]
    assert len(set(names)) == len(names)


def test_builtin_cases_differentiate_every_differentiable_argument():
    cases = builtin_cases()
    differentiated = {(case.loss, name) for case in cases for name in case.differentiates}
    for fn, names in [
        (jaxloss.sigmoid_binary_cross_entropy, ("logits", "labels", "pos_weight")),
        (jaxloss.binary_cross_entropy, ("probabilities", "labels")),
        (jaxloss.softmax_cross_entropy, ("logits", "labels")),
        (jaxloss.softmax_cross_entropy_with_integer_labels, ("logits", "class_weights")),
        (jaxloss.categorical_cross_entropy, ("probabilities", "labels")),
        (jaxloss.contrastive_loss, ("embeddings_a", "embeddings_b", "similar", "margin")),
        (jaxloss.contrastive_loss_from_distance, ("distances", "similar", "margin")),
        (jaxloss.triplet_margin_loss, ("anchors", "positives", "negatives", "margin", "eps")),
        (jaxloss.ntxent, ("embeddings", "temperature")),
        (jaxloss.info_nce, ("queries", "keys", "temperature")),
        (jaxloss.siglip_loss, ("image_embeddings", "text_embeddings", "temperature", "bias")),
        (jaxloss.linear_softmax_cross_entropy, ("hidden", "weight", "bias")),
        (jaxloss.squared_error, ("predictions", "targets")),
    ]:
        for name in names:
            assert (fn, name) in differentiated, (fn.__name__, name)


def test_builtin_cases_exercise_the_options():
    options = {(key, str(value)) for case in builtin_cases()
               for key, value in case.kwargs.items()
               if isinstance(value, str | bool | int | float)}
    keys = {key for case in builtin_cases() for key in case.kwargs}
    assert {"where", "ignore_index", "class_weights", "pos_weight", "label_smoothing", "bias",
            "chunk_size", "axis"} <= keys
    assert {("reduction", "mean"), ("reduction", "sum"), ("reduction", "none"),
            ("metric", "cosine"), ("metric", "squared_euclidean"), ("swap", "True"),
            ("symmetric", "True"), ("norm_degree", "1")} <= options


def test_matmul_losses_are_checked_at_the_highest_precision():
    matmul = {jaxloss.linear_softmax_cross_entropy, jaxloss.info_nce, jaxloss.ntxent,
              jaxloss.siglip_loss}
    for case in builtin_cases():
        if case.loss in matmul:
            assert case.kwargs.get("precision") == "highest", case.name


def _extreme_args(case):
    return [e.args if isinstance(e, Extreme) else e for e in case.extremes]


def test_extremes_keep_their_dtypes():
    """A NumPy product promotes bf16 to float32: the bf16 extremes must still be bf16."""
    cases = {case.name: case for case in builtin_cases()}
    for name in ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels",
                 "sigmoid_binary_cross_entropy", "siglip_loss", "info_nce", "ntxent",
                 "pairwise_distance"):
        assert any(jnp.asarray(args[0]).dtype == jnp.bfloat16
                   for args in _extreme_args(cases[name])), name
    linear = cases["linear_softmax_cross_entropy[chunk_size=4,V=10]"]
    assert any(jnp.asarray(args[0]).dtype == jnp.asarray(args[1]).dtype == jnp.bfloat16
               for args in _extreme_args(linear))


def test_jaxloss_check_command(capsys, monkeypatch):
    # The command's report and exit status, over a few cases. Every case runs in
    # `make test` (`jaxloss check` after pytest) and, from the installed wheel, in
    # `make wheel-check`: running all of them here too would double the suite's time.
    from jaxloss import testing

    cases = builtin_cases()
    chosen = ("squared_error", "hinge_loss", "nll_loss[weights,ignore_index,where,mean]")
    subset = [c for c in cases if c.name in chosen]
    monkeypatch.setattr(testing, "builtin_cases", lambda: subset)
    code = cli.main(["check"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    names = [case.name for case in subset]
    status = {}
    for line in lines:
        name = line.split("  ")[0]
        if name in names:
            status[name] = line.split()[-1]
    assert set(status) == set(names)  # one line per case
    assert {name: status[name] for name in names if status[name] != "ok"} == {}
    assert lines[-1] == f"{len(names)}/{len(names)} checks ok"
    assert code == 0


def test_command_line_version_and_usage_errors():
    version = subprocess.run([sys.executable, "-m", "jaxloss", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"jaxloss {jaxloss.__version__}"
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert cli.main([]) == 2


# ---------------------------------------------------------------------------------
# Planted faults: each wrong backward rule must make `jaxloss check` report FAIL.


@contextlib.contextmanager
def planted(rule, wrong: Callable):
    """Swaps ``wrong(bwd)`` in for the backward pass of the library's custom_vjp ``rule``;
    the caches are cleared so that the jitted public losses trace it (and, after, the
    right one again)."""
    fwd, bwd, zeros = rule.fwd, rule.bwd, rule.symbolic_zeros
    rule.defvjp(fwd, wrong(bwd), symbolic_zeros=zeros)
    jax.clear_caches()
    try:
        yield
    finally:
        rule.defvjp(fwd, bwd, symbolic_zeros=zeros)
        jax.clear_caches()


def _edit(change):
    """A wrong rule: the right one's cotangents, then ``change(grads, residuals, g)``."""

    def wrong(bwd):
        def rule(*args):  # (*nondiff_args, residuals, g)
            grads = list(bwd(*args))
            change(grads, args[-2], args[-1])
            return tuple(grads)

        return rule

    return wrong


def _zero_where_huge(rows: bool):
    """The logits' gradient zeroed where |logit| > 1e20 (on the whole row with ``rows``)."""

    def change(grads, residuals, g):
        x = residuals[0].astype(jnp.float32)  # 1e20 does not fit fp16
        huge = jnp.isfinite(x) & (jnp.abs(x) > 1e20)
        if rows:
            huge = jnp.any(huge, axis=-1, keepdims=True)
        grads[0] = jnp.where(huge, 0, grads[0])

    return _edit(change)


def _scale(index: int, factor: float):
    def change(grads, residuals, g):
        if grads[index] is not None:
            grads[index] = grads[index] * factor

    return _edit(change)


def _uniform(x, valid):
    support = x > -jnp.inf if valid is None else valid & (x > -jnp.inf)
    return support / jnp.maximum(jnp.sum(support, axis=-1, keepdims=True), 1)


def _dense_without_smoothing(grads, residuals, g):
    """``p sum(q) - (1 - eps) y``: the target's smoothing term ``eps u`` left out."""
    logits, labels, smoothing, valid = residuals[:4]
    if smoothing is not None:
        x = logits.astype(labels.dtype)
        grads[0] = (grads[0] + g[..., None] * smoothing * _uniform(x, valid)).astype(logits.dtype)


def _integer_without_smoothing(grads, residuals, g):
    """The term ``- g * smooth`` (``smooth = eps w u``) left out."""
    logits, _, class_weights, smoothing, valid = residuals[:5]
    if smoothing is not None:
        smooth = smoothing * _uniform(logits.astype(smoothing.dtype), valid)
        if class_weights is not None:
            smooth = smooth * class_weights
        grads[0] = (grads[0] + g[..., None] * smooth).astype(logits.dtype)


def _zero(index: int):
    def change(grads, residuals, g):
        if grads[index] is not None:
            grads[index] = jnp.zeros_like(grads[index])

    return _edit(change)


def _flip_signs(grads, residuals, g):
    for i, d in enumerate(grads):
        grads[i] = None if d is None else -d


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    rule: Callable
    wrong: Callable
    caught_by: tuple[str, ...]  # built-in cases that must FAIL
    at_extremes_only: bool = False  # invisible at ordinary inputs


SIGMOID, SOFTMAX = "sigmoid_binary_cross_entropy", "softmax_cross_entropy"
INTEGER, LINEAR = "softmax_cross_entropy_with_integer_labels", "linear_softmax_cross_entropy"
FAULTS = [
    Fault("sigmoid_bce_zero_where_huge", classification._sigmoid_bce, _zero_where_huge(False),
          (SIGMOID,), at_extremes_only=True),
    Fault("softmax_ce_zero_huge_rows", classification._softmax_ce, _zero_where_huge(True),
          (SOFTMAX, f"{SOFTMAX}[smoothing]"), at_extremes_only=True),
    Fault("integer_ce_zero_huge_rows", classification._integer_ce, _zero_where_huge(True),
          (INTEGER, f"{INTEGER}[smoothing,sum]"), at_extremes_only=True),
    Fault("sigmoid_bce_labels_grad_x10", classification._sigmoid_bce, _scale(1, 10.0),
          (SIGMOID,)),
    Fault("sigmoid_bce_pos_weight_grad_x10", classification._sigmoid_bce, _scale(2, 10.0),
          (f"{SIGMOID}[pos_weight,smoothing]",)),
    Fault("softmax_ce_target_grad_x10", classification._softmax_ce, _scale(1, 10.0),
          (f"{SOFTMAX}[smoothing]", f"{SOFTMAX}[where,mean]")),
    Fault("integer_ce_class_weights_grad_sign", classification._integer_ce, _scale(2, -1.0),
          (f"{INTEGER}[weights,ignore_index,where,mean]",)),
    Fault("softmax_ce_smoothing_grad_zeroed", classification._softmax_ce,
          _edit(_dense_without_smoothing), (f"{SOFTMAX}[smoothing]",)),
    Fault("integer_ce_smoothing_grad_zeroed", classification._integer_ce,
          _edit(_integer_without_smoothing), (f"{INTEGER}[smoothing,sum]",)),
    Fault("info_nce_temperature_grad_x10", contrastive._info_nce, _scale(3, 10.0),
          ("info_nce",)),
    Fault("linear_ce_bias_grad_zeroed", large_vocab._linear_ce, _zero(2),
          (f"{LINEAR}[bias,smoothing,chunk_size=3]",)),
    Fault("linear_ce_weight_grad_x1.001", large_vocab._linear_ce, _scale(1, 1.001),
          (f"{LINEAR}[chunk_size=4,V=10]",)),
    Fault("euclidean_grad_sign_flipped", contrastive._euclidean, _edit(_flip_signs),
          ("pairwise_distance", "triplet_margin_loss")),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_check_reports_a_planted_wrong_rule(fault):
    cases = {case.name: case for case in builtin_cases()}
    chosen = [cases[name] for name in fault.caught_by]
    if not fault.at_extremes_only:
        # Only the comparison with the reference is asserted below: the extremes and the
        # second-order differences (the costly compilations) are left out.
        chosen = [dataclasses.replace(c, extremes=(), fd_order=1) for c in chosen]
    bwd = fault.rule.bwd
    with planted(fault.rule, fault.wrong):
        results = run_checks(chosen)
    assert fault.rule.bwd is bwd
    for result in results:
        assert not result.ok, f"{fault.name} not caught by {result.name}"
        assert "Error: " not in result.error, result.error  # a comparison, not a crash
        if fault.at_extremes_only:
            # A fault at |logit| > 1e20 shows only where the extremes are compared.
            assert result.matches_reference and result.finite_differences, result.error
            assert not result.extremes
        else:
            assert not result.matches_reference, result.error


@pytest.mark.parametrize("fault", [f for f in FAULTS if not f.at_extremes_only],
                         ids=lambda f: f.name)
def test_forward_mode_carries_the_planted_fault(fault):
    # Forward mode transposes the same backward pass: the fault shows in jax.jvp too,
    # and the check's forward-mode comparison alone reports it.
    case = {case.name: case for case in builtin_cases()}[fault.caught_by[0]]
    with planted(fault.rule, fault.wrong), pytest.raises(AssertionError,
                                                          match="forward-mode tangent"):
        testing._compare_forward_with_reference(
            case.loss, case.reference, case.args, case.kwargs, case.argnums,
            case.diff_kwargs, rtol=1e-7, atol=1e-10, seed=0)
