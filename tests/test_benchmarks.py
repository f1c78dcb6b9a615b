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
    "ctc_loss",
}


def _has_memory_stats():
    """Whether JAX's default device reports memory statistics: not the CPU (the tests'
    default backend), a GPU (``make test-gpu``) does."""
    return jax.devices()[0].memory_stats() is not None


def _on_gpu():
    return jax.default_backend() == "gpu"


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
    # Mostly compilation: a few seconds on an idle 2-core machine. A wall-clock bound
    # for the CPU only (a GPU compiler has been seen to take minutes on one row).
    if jax.default_backend() == "cpu":
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
    # No row of this set gets a JAX peak (only the GPU set's own rows do).
    assert environment["jax_peaks"] == ("gpu-rows" if _has_memory_stats() else "none")

    assert report["mismatches"] == []  # every library agreed with jaxloss on every row
    rows = report["rows"]
    expected = set(OPTAX_NAMESAKES)
    if hasattr(jaxloss, "linear_softmax_cross_entropy"):
        expected.add("linear_softmax_cross_entropy")
    expected.add("softmax_cross_entropy_with_integer_labels(hidden @ weight)")
    # The InfoNCE rows: symmetric, chunked and not, against optax's CE both ways.
    expected |= {"info_nce(symmetric=True)", "info_nce(symmetric=True, chunk_size=8)"}
    assert {row["loss"] for row in rows} == expected
    assert len(rows) == len(expected)  # tiny: one row per loss
    for row in rows:
        for mode in ("forward", "value_and_grad"):
            result = row[mode]
            assert result["jaxloss_s"] > 0 and result["optax_s"] > 0, row
            assert result["torch_s"] is None
            assert math.isfinite(result["ratio"]) and result["ratio"] > 0, row
            assert result["jaxloss_temp_bytes"] >= 0 and result["optax_temp_bytes"] >= 0
            assert result["jaxloss_peak_bytes"] is None and result["optax_peak_bytes"] is None
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


# ---------------------------------------------------------------------------------
# The GPU set, at toy sizes on the CPU.

# The GPU set's own rows (and, in gpu-tiny, the tiny rows of the same names).
GPU_ROW_FILTER = (r"^(linear_softmax_cross_entropy|softmax_cross_entropy_with_integer_labels"
                  r"|info_nce.*)$")


def test_the_gpu_set_is_the_issue_rows_then_every_quick_row():
    run = _load_script()
    assert run.default_sizes("gpu", quick=False) == run.default_sizes("gpu", quick=True) == "gpu"
    assert run.default_sizes("cpu", quick=False) == "full"
    assert run.default_sizes("cpu", quick=True) == "quick"
    assert run.SIZES["gpu"] == dataclasses.replace(
        run.SIZES["quick"], fused_linear=(8192, 2304, 256000), integer_ce=(8192, 131072),
        clip=(32768, 512, 4096))
    gpu_rows = ["linear_softmax_cross_entropy",
                "softmax_cross_entropy_with_integer_labels",  # bfloat16
                "softmax_cross_entropy_with_integer_labels",  # float32
                "info_nce(symmetric=True, chunk_size=4096)", "info_nce(symmetric=True)"]
    # Specs allocate nothing until built.
    names = [spec.loss for spec in run.case_specs(run.SIZES["gpu"], None, None)]
    quick = [spec.loss for spec in run.case_specs(run.SIZES["quick"], None, None)]
    assert names == gpu_rows + quick
    tiny = [spec.loss for spec in run.case_specs(run.SIZES["tiny"], None, None)]
    assert [spec.loss for spec in run.case_specs(run.SIZES["gpu-tiny"], None, None)] == [
        *gpu_rows[:3], "info_nce(symmetric=True, chunk_size=32)", gpu_rows[4], *tiny]
    # Without PyTorch, Liger and CCE do not run: left out on the CPU, "—" on a GPU.
    modules, status = run._import_kernels(None, None)
    assert modules == {}
    assert set(status) == ({"liger", "cce"} if _on_gpu() else set())


def test_float32_rows_multiply_in_float32_off_the_cpu(monkeypatch):
    run = _load_script()
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert run.matmul_precision("float32") is None  # exact at any setting: unchanged
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # TF32 by default there
    assert run.matmul_precision("float32") == "highest"
    assert run.matmul_precision("bfloat16") is None


def test_gpu_tiny_run_reports_the_gpu_rows_and_their_memory(tmp_path, monkeypatch):
    run = _load_script()
    # As on a GPU: memory statistics, and a peak from the fresh process (which
    # test_jax_peak_memory_from_a_fresh_process runs), for the GPU rows only.
    measured = []
    monkeypatch.setattr(run, "_has_memory_stats", lambda: True)
    monkeypatch.setattr(run, "_jax_peak_in_child",
                        lambda executable, args: measured.append(args) or 3 * 2**20)
    started = time.perf_counter()
    assert run.main(["--sizes", "gpu-tiny", "--no-torch", "--filter", GPU_ROW_FILTER,
                     "--out", str(tmp_path)]) == 0
    if jax.default_backend() == "cpu":  # mostly compilation: seconds (CPU bound only)
        assert time.perf_counter() - started < 120

    stem = tmp_path / run.result_stem()
    report = json.loads(stem.with_suffix(".json").read_text())
    environment = report["environment"]
    assert environment["sizes"] == "gpu-tiny"
    assert environment["kernels"] == {}  # no CUDA
    assert environment["jax_peaks"] == "gpu-rows"
    assert len(measured) == 5 * 2 * 2  # GPU rows × (jaxloss, optax) × (fwd, v&g)
    assert report["mismatches"] == []
    rows = {(row["loss"], row["shape"], row["dtype"]): row for row in report["rows"]}
    gpu_rows = [
        ("linear_softmax_cross_entropy", "N=32 D=48 V=1000", "bfloat16"),
        ("softmax_cross_entropy_with_integer_labels", "N=32 V=2048", "bfloat16"),
        ("softmax_cross_entropy_with_integer_labels", "N=32 V=2048", "float32"),
        ("info_nce(symmetric=True, chunk_size=32)", "B=128 D=16", "bfloat16"),
        ("info_nce(symmetric=True)", "B=128 D=16", "bfloat16"),
    ]
    assert [key for key in rows if key in gpu_rows] == gpu_rows  # first, in this order
    for key in gpu_rows:
        for mode in ("forward", "value_and_grad"):
            result = rows[key][mode]
            assert result["jaxloss_s"] > 0 and result["optax_s"] > 0
            assert result["jaxloss_temp_bytes"] >= 0 and result["optax_temp_bytes"] >= 0
            assert result["jaxloss_peak_bytes"] == result["optax_peak_bytes"] == 3 * 2**20
            assert result["torch_peak_bytes"] is None
            assert result["jaxloss_compile_s"] > 0
    linear = rows[gpu_rows[0]]
    assert linear["floor"] == "one matmul"  # timed in both passes
    assert linear["forward"]["floor_s"] > 0 and linear["value_and_grad"]["floor_s"] > 0
    assert rows[gpu_rows[1]]["floor"] == "-x"
    assert rows[gpu_rows[1]]["forward"]["floor_s"] is None
    tiny = rows["linear_softmax_cross_entropy", "N=32 D=16 V=64", "float32"]
    assert tiny["value_and_grad"]["jaxloss_peak_bytes"] is None  # not a GPU row

    markdown = stem.with_suffix(".md").read_text()
    assert "gpu-tiny sizes" in markdown
    assert "| loss | shape | dtype | pass | jaxloss | optax | torch | ref | ratio |" in markdown
    assert ("| loss | shape | dtype | pass | temp jaxloss | temp optax | peak jaxloss "
            "| peak optax | peak torch |") in markdown
    if _on_gpu():  # columns of "—": Liger and CCE need PyTorch with CUDA
        assert "| Liger |" in markdown and "Liger not run (needs PyTorch with CUDA)" in markdown
    else:  # no columns
        assert "| Liger |" not in markdown and "peak Liger" not in markdown
        assert "left out (their kernels need PyTorch on CUDA)" in markdown
    assert "each in a fresh process" in markdown and "on the GPU rows" in markdown
    (line,) = [line for line in markdown.split("## Memory")[1].splitlines() if line.startswith(
        "| `linear_softmax_cross_entropy` | N=32 D=48 V=1000 | bfloat16 | v&g |")]
    assert " | 3 | 3 | — |" in line  # peak jaxloss, optax, torch in MiB
    assert ("| `info_nce(symmetric=True, chunk_size=32)` | B=128 D=16 | bfloat16 | v&g |"
            in markdown)
    assert "Approximate" not in markdown and "Mismatches" not in markdown


def _stand_in_kernels(torch):
    """Liger's and Cut Cross-Entropy's APIs, computed with PyTorch (on the CPU). The
    filtered CCE is 3 % off, beyond the bfloat16 tolerance, as an approximation may be."""
    from types import SimpleNamespace

    F = torch.nn.functional
    calls = []

    class FusedLinearCrossEntropyLoss:
        def __init__(self, reduction="mean"):
            self.reduction = reduction

        def __call__(self, weight, hidden, targets):  # weight [V, D] first
            calls.append("liger fused")
            return F.cross_entropy((hidden @ weight.T).float(), targets,
                                   reduction=self.reduction)

    class CrossEntropyLoss:
        def __init__(self, reduction="mean"):
            self.reduction = reduction

        def __call__(self, logits, targets):
            calls.append("liger")
            return F.cross_entropy(logits.float(), targets, reduction=self.reduction)

    def linear_cross_entropy(e, c, targets, reduction="mean", filter_eps="auto"):
        calls.append(f"cce {filter_eps}")
        loss = F.cross_entropy((e @ c.T).float(), targets, reduction=reduction)
        return loss if filter_eps is None else 1.03 * loss

    liger = SimpleNamespace(LigerFusedLinearCrossEntropyLoss=FusedLinearCrossEntropyLoss,
                            LigerCrossEntropyLoss=CrossEntropyLoss)
    cce = SimpleNamespace(linear_cross_entropy=linear_cross_entropy)
    return {"liger": liger, "cce": cce}, calls


def test_gpu_tiny_run_with_stand_in_kernels(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    run = _load_script()
    kernels, calls = _stand_in_kernels(torch)
    monkeypatch.setattr(run, "_import_kernels", lambda torch, device: (
        kernels, {"liger": "stand-in", "cce": "stand-in"}))
    assert run.main(["--sizes", "gpu-tiny", "--jax-peaks", "none", "--filter",
                     r"^(linear_softmax_cross_entropy|softmax_cross_entropy_with_integer_labels)$",
                     "--out", str(tmp_path)]) == 0
    assert {"liger fused", "liger", "cce None", "cce auto"} <= set(calls)

    stem = tmp_path / run.result_stem()
    report = json.loads(stem.with_suffix(".json").read_text())
    cuda = report["environment"]["torch_device"] == "cuda"  # under make test-gpu
    assert report["mismatches"] == []  # the 3 % of the filtered CCE is not a mismatch
    rows = {(row["loss"], row["dtype"], row["shape"]): row for row in report["rows"]}
    linear = rows["linear_softmax_cross_entropy", "bfloat16", "N=32 D=48 V=1000"]
    for library in ("torch", "liger", "cce", "cce_filtered"):
        assert linear["value_and_grad"][f"{library}_s"] > 0, library
        peak = linear["value_and_grad"][f"{library}_peak_bytes"]
        assert (peak > 0) if cuda else (peak is None)
    for library in ("liger", "cce", "cce_filtered"):
        assert linear["forward"][f"{library}_s"] is None  # value_and_grad only
    approximate = linear["approximate"]["cce_filtered"]
    assert set(approximate) == {"the value", "the gradient w.r.t. argument 0",
                                "the gradient w.r.t. argument 1"}
    for difference in approximate.values():
        assert 0.02 < difference < 0.04
    for dtype in ("bfloat16", "float32"):
        ce = rows["softmax_cross_entropy_with_integer_labels", dtype, "N=32 V=2048"]
        assert ce["value_and_grad"]["liger_s"] > 0 and "cce_s" not in ce["value_and_grad"]
        assert "approximate" not in ce

    markdown = stem.with_suffix(".md").read_text()
    assert "Liger stand-in, Cut Cross-Entropy stand-in." in markdown
    assert ("| loss | shape | dtype | pass | jaxloss | optax | torch | Liger | CCE "
            "| CCE filtered ≈ | ref | ratio |") in markdown
    assert "| peak torch | peak Liger | peak CCE | peak CCE filtered ≈ |" in markdown
    assert "except **CCE filtered ≈**" in markdown
    assert "## Approximate results (not checked)" in markdown
    assert ("- **CCE filtered ≈** on `linear_softmax_cross_entropy` N=32 D=48 V=1000 "
            "bfloat16: largest |difference| from jaxloss") in markdown
    # The tiny float32 rows of the same names have no kernels: their columns say "—".
    time_table = markdown.split("## Memory")[0]
    (line,) = [line for line in time_table.splitlines()
               if line.startswith("| `linear_softmax_cross_entropy` | N=32 D=16 V=64 "
                                  "| float32 | v&g |")]
    assert line.split(" | ")[7:10] == ["—", "—", "—"]


def test_approximate_results_are_reported_not_checked():
    run = _load_script()
    x = np.linspace(-3.0, 5.0, 12, dtype=np.float32)
    off = 1.03 * x
    differences = {}
    problems = run.compare({"jaxloss": x, "cce": off, "cce_filtered": off}, row="r",
                           mode="forward", dtype="bfloat16", approximate={"cce_filtered"},
                           differences=differences)
    assert len(problems) == 1 and problems[0].startswith("r, forward: cce against jaxloss")
    assert differences == {"cce_filtered": {"the losses": pytest.approx(0.03 / 1.03, rel=1e-5)}}
    # Approximate is no licence for a wrong shape or a NaN.
    assert run.compare({"jaxloss": x, "cce_filtered": np.full_like(x, np.nan)}, row="r",
                       mode="forward", dtype="bfloat16", approximate={"cce_filtered"})


def _gpu_row(peak=2**20):
    result = {"jaxloss_s": 1e-3, "optax_s": 2e-3, "torch_s": 3e-3, "liger_s": None,
              "cce_s": 4e-3, "cce_filtered_s": 2.5e-3, "floor_s": 5e-4, "ratio": 0.5,
              "jaxloss_temp_bytes": 3 * 2**20, "optax_temp_bytes": 2**30,
              "jaxloss_peak_bytes": peak, "optax_peak_bytes": 4 * peak,
              "torch_peak_bytes": 5 * peak, "liger_peak_bytes": None,
              "cce_peak_bytes": 6 * peak, "cce_filtered_peak_bytes": 7 * peak}
    return {"loss": "linear_softmax_cross_entropy", "shape": "N=8192 D=2304 V=256000",
            "dtype": "bfloat16", "note": "", "floor": "one matmul", "forward": dict(result),
            "value_and_grad": dict(result),
            "approximate": {"cce_filtered": {"the value": 1e-5,
                                             "the gradient w.r.t. argument 1": 0.004}}}


def test_gpu_report_layout_from_fake_results():
    run = _load_script()
    env = run.environment("full", "gpu", None, None,
                          {"liger": "not installed", "cce": "25.1.1"}, jax_peaks="all")
    env["seconds"] = 1.0
    markdown = run.markdown(env, [_gpu_row()])
    assert "Liger not installed, Cut Cross-Entropy 25.1.1." in markdown
    assert "jaxloss and optax each in a fresh process" in markdown
    lines = markdown.splitlines()
    assert ("| `linear_softmax_cross_entropy` | N=8192 D=2304 V=256000 | bfloat16 | v&g "
            "| 1 | 2 | 3 | — | 4 | 2.5 | 0.5 | **0.50** |") in lines
    assert ("| `linear_softmax_cross_entropy` | N=8192 D=2304 V=256000 | bfloat16 | fwd "
            "| 3 | 1.02e+03 | 1 | 4 | 5 | — | 6 | 7 |") in lines
    assert ("- **CCE filtered ≈** on `linear_softmax_cross_entropy` N=8192 D=2304 V=256000 "
            "bfloat16: largest |difference| from jaxloss, relative to the largest "
            "magnitude: the value 1e-05, the gradient w.r.t. argument 1 0.004.") in lines
    # The CPU sets keep their report: one line per row, no memory table.
    env["sizes"] = "quick"
    cpu = run.markdown(env, [_gpu_row()])
    assert ("| loss | shape | dtype | fwd jaxloss | fwd optax | fwd torch | fwd ratio "
            "| v&g jaxloss | v&g optax | v&g torch | v&g ratio | v&g floor | fwd temp "
            "| v&g temp |") in cpu
    assert "## Memory" not in cpu and "Liger" not in cpu


class _FakeDevice:
    """memory_stats() as a GPU reports it: the peak rises during the call."""

    def __init__(self):
        self.calls = 0

    def memory_stats(self):
        self.calls += 1
        if self.calls == 1:
            return {"bytes_in_use": 1000, "peak_bytes_in_use": 1000}
        return {"bytes_in_use": 1000, "peak_bytes_in_use": 1000 + 4096}


def test_jax_peak_memory_from_a_fresh_process(tmp_path):
    run = _load_script()
    args = (jax.numpy.ones((4, 8)), jax.numpy.zeros((4,), jax.numpy.int32))
    fn = jax.value_and_grad(lambda x, y: jaxloss.softmax_cross_entropy_with_integer_labels(
        x, y).sum())
    compiled = run._compile(fn, args).executable
    assert run.jax_peak_bytes(lambda: None, _FakeDevice()) == 4096

    # The file the parent writes, read back as the fresh process does.
    import pickle

    from jax.experimental import serialize_executable

    path = tmp_path / "executable.pickle"
    path.write_bytes(pickle.dumps((*serialize_executable.serialize(compiled),
                                   [((4, 8), "float32"), ((4,), "int32")])))
    assert run.peak_of(path, _FakeDevice()) == {"peak_bytes": 4096}
    # The real thing, here and in `run.py --peak-of` in a subprocess: None on the CPU,
    # which keeps no statistics; on a GPU, at least the gradient's 128 bytes.
    for peak in (run.peak_of(path)["peak_bytes"], run._jax_peak_in_child(compiled, args)):
        assert (peak >= 128) if _has_memory_stats() else (peak is None)


def test_torch_peak_memory_is_above_what_was_allocated_before():
    from types import SimpleNamespace

    run = _load_script()
    state = {"allocated": 100, "peak": 900}

    def reset_peak_memory_stats():
        state["peak"] = state["allocated"]

    def call():
        state["peak"] = max(state["peak"], state["allocated"] + 250)
        return "result"

    cuda = SimpleNamespace(synchronize=lambda: None,
                           reset_peak_memory_stats=reset_peak_memory_stats,
                           memory_allocated=lambda: state["allocated"],
                           max_memory_allocated=lambda: state["peak"])
    assert run._torch_peak_bytes(SimpleNamespace(cuda=cuda), call) == 250
