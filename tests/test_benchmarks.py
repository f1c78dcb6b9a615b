"""benchmarks/run.py end to end at a toy size: the reports are written and well formed,
and a row whose libraries disagree is reported instead of timed."""

import dataclasses
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxloss

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
OPTAX_NAMESAKES = {
    "squared_error",
    "l2_loss",
    "huber_loss",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "ntxent",
    "triplet_margin_loss",
}


def _load_script():
    spec = importlib.util.spec_from_file_location("jaxloss_benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_reports(tmp_path):
    run = _load_script()
    started = time.perf_counter()
    assert run.main(["--sizes", "tiny", "--no-torch", "--out", str(tmp_path)]) == 0
    # Mostly compilation: a few seconds on an idle 2-core machine.
    assert time.perf_counter() - started < 120

    stem = tmp_path / run.result_stem()
    for suffix in (".md", ".json", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 0
    assert stem.with_suffix(".png").read_bytes().startswith(b"\x89PNG")

    report = json.loads(stem.with_suffix(".json").read_text())
    environment = report["environment"]
    for key in ("date", "jax", "optax", "torch", "cpu_count", "os", "device"):
        assert key in environment
    assert environment["torch"] is None

    assert report["mismatches"] == []  # every library agreed with jaxloss on every row
    rows = report["rows"]
    expected = set(OPTAX_NAMESAKES)
    if hasattr(jaxloss, "linear_softmax_cross_entropy"):
        expected.add("linear_softmax_cross_entropy")
    expected.add("softmax_cross_entropy_with_integer_labels(hidden @ weight)")
    assert {row["loss"] for row in rows} == expected
    assert len(rows) == len(expected)  # tiny: one row per loss
    for row in rows:
        for mode in ("forward", "value_and_grad"):
            result = row[mode]
            assert result["jaxloss_s"] > 0 and result["optax_s"] > 0, row
            assert result["torch_s"] is None
            assert math.isfinite(result["ratio"]) and result["ratio"] > 0, row
            assert result["jaxloss_temp_bytes"] >= 0 and result["optax_temp_bytes"] >= 0
        # The cross-entropy rows carry the gradient-write floor, the others none.
        floor = row["value_and_grad"]["floor_s"]
        standalone = row["loss"] in ("softmax_cross_entropy",
                                     "softmax_cross_entropy_with_integer_labels")
        assert (floor is not None and floor > 0) == standalone, row

    markdown = stem.with_suffix(".md").read_text()
    for name in expected:
        assert f"`{name}`" in markdown
    assert "—" in markdown  # the empty PyTorch column
    assert "checked before it was timed" in markdown
    assert "Mismatches" not in markdown


def test_filter_keeps_only_the_matching_losses(tmp_path):
    run = _load_script()
    assert run.main(["--sizes", "tiny", "--no-torch", "--filter", "^huber_loss$",
                     "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"{run.result_stem()}.json").read_text())["rows"]
    assert [row["loss"] for row in rows] == ["huber_loss"]
    assert run.main(["--sizes", "tiny", "--filter", "no-such-loss", "--out",
                     str(tmp_path)]) == 2


def _tiny_case(run, loss):
    (spec,) = [spec for spec in run.case_specs(run.SIZES["tiny"], None, None)
               if spec.loss == loss]
    return spec.build()


def test_a_loss_with_wrong_values_is_reported_not_timed(tmp_path, monkeypatch, capsys):
    run = _load_script()
    huber = jaxloss.huber_loss
    # 0.1 % off: far inside any plot's resolution, ten times float32's tolerance.
    monkeypatch.setattr(jaxloss, "huber_loss", lambda p, t, **kw: 1.001 * huber(p, t, **kw))
    assert run.main(["--sizes", "tiny", "--no-torch", "--filter", "^huber_loss$",
                     "--out", str(tmp_path)]) == 1
    stem = tmp_path / run.result_stem()
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["rows"] == []  # not timed
    (mismatch,) = report["mismatches"]
    assert (mismatch["loss"], mismatch["dtype"]) == ("huber_loss", "float32")
    message = mismatch["mismatch"]
    assert "forward: optax against jaxloss, the losses: max |difference|" in message
    assert "> 0.0001 (float32)" in message
    assert "Mismatches (not timed)" in stem.with_suffix(".md").read_text()
    assert not stem.with_suffix(".png").exists()
    err = capsys.readouterr().err
    assert "MISMATCH, not timed" in err and "1 row(s) where the libraries disagree" in err


def test_a_wrong_gradient_is_reported_when_the_values_agree():
    run = _load_script()
    case = _tiny_case(run, "huber_loss")

    def wrong_gradient(p, t):  # the same values; the gradient 0.5 too large
        return jaxloss.huber_loss(p, t) + 0.5 * (p - jax.lax.stop_gradient(p))

    once = run.Timing(samples=1, min_sample_s=0.0, budget_s=0.0)
    with pytest.raises(run.MismatchError) as error:
        run.run_case(dataclasses.replace(case, jaxloss=wrong_gradient), once, None, None)
    message = str(error.value)
    assert message.startswith("huber_loss 64×32 float32, value_and_grad: optax against")
    assert "the gradient w.r.t. argument 0" in message
    assert "the value" not in message and "forward" not in message
    # The unchanged row passes the same check.
    assert run.run_case(case, once, None, None)["value_and_grad"]["ratio"] > 0


class _FakeTensor:
    """What compare() uses of a PyTorch tensor."""

    def __init__(self, array):
        self.array = np.asarray(array)

    def detach(self):
        return self

    def float(self):
        return _FakeTensor(self.array.astype(np.float32))

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_compare_tolerance_follows_the_dtype():
    run = _load_script()
    x = np.linspace(-3.0, 5.0, 12, dtype=np.float32)
    off = x + 1e-3 * 5.0  # 1e-3 of the largest magnitude
    kwargs = {"row": "r", "mode": "forward"}
    assert run.compare({"jaxloss": x, "optax": off}, dtype="bfloat16", **kwargs) == []
    (problem,) = run.compare({"jaxloss": x, "optax": off}, dtype="float32", **kwargs)
    assert problem.startswith("r, forward: optax against jaxloss, the losses")
    assert run.compare({"jaxloss": x, "optax": x * (1 + 3e-5)}, dtype="float32",
                       **kwargs) == []

    # value_and_grad: (value, (gradient,)) from JAX, (value, (tensor,)) from PyTorch.
    grad = np.ones((3, 4), np.float32)
    ours = (np.float32(2.0), (grad,))
    vg = {"row": "r", "mode": "value_and_grad", "dtype": "float32", "argnums": (0,)}
    torch_like = (_FakeTensor(2.0), (_FakeTensor(grad),))
    assert run.compare({"jaxloss": ours, "torch": torch_like}, **vg) == []
    problems = run.compare({"jaxloss": ours, "optax": (np.float32(2.0), (-grad,)),
                            "torch": (_FakeTensor(2.5), (_FakeTensor(grad.T),))}, **vg)
    assert problems == [
        "r, value_and_grad: optax against jaxloss, the gradient w.r.t. argument 0: "
        "max |difference| 2 > 0.0001 (float32) x max |value| 1",
        "r, value_and_grad: torch against jaxloss, the value: "
        "max |difference| 0.5 > 0.0001 (float32) x max |value| 2.5",
        "r, value_and_grad: torch against jaxloss, the gradient w.r.t. argument 0: "
        "shape (4, 3) against (3, 4)",
    ]
    (nan,) = run.compare({"jaxloss": x, "optax": np.where(x > 0, np.nan, x)},
                         dtype="bfloat16", **kwargs)
    assert "not finite" in nan
