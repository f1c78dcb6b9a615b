"""benchmarks/run.py end to end at a toy size: the reports are written and well formed."""

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

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


def test_filter_keeps_only_the_matching_losses(tmp_path):
    run = _load_script()
    assert run.main(["--sizes", "tiny", "--no-torch", "--filter", "^huber_loss$",
                     "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"{run.result_stem()}.json").read_text())["rows"]
    assert [row["loss"] for row in rows] == ["huber_loss"]
    assert run.main(["--sizes", "tiny", "--filter", "no-such-loss", "--out",
                     str(tmp_path)]) == 2
