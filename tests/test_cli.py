"""`jaxloss demo`: the table, the PNG plots, data parallelism and argument errors; and
`jaxloss check`'s help, --list, --filter and progress lines.

The demo runs with each task's own settings (the README's, a few seconds a task) and
its test metric must reach the README's threshold. `check`'s report and `--version` are
covered in test_testing.py.
"""

import math
import pathlib
import re
import subprocess
import sys
import time

import jax
import matplotlib
import numpy as np
import pytest

from jaxloss import cli

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "demo.md"

# The least test metric each task must reach at its default settings and seed 0. The
# demo page's table reports (on a 2-core CPU) R² 0.489, accuracy 0.986 and 0.969 and
# pair accuracy 0.953; seeds 1-3 gave 0.458-0.518, 0.986-0.993, 0.969-0.978 and
# 0.940-0.958.
THRESHOLDS = {"regression": ("R²", 0.4), "binary": ("accuracy", 0.95),
              "multiclass": ("accuracy", 0.95), "siamese": ("pair accuracy", 0.9)}


def _assert_png(path):
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.01  # not a blank canvas


def _row(out, task):
    """The table row of a task, split on runs of two or more spaces."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task"))
    for name in ("loss", "dataset", "final train loss", "test metric", "seconds"):
        assert name in lines[header]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    (row,) = [line for line in lines[header + 2:] if line.startswith(task + " ")]
    return [cell.strip() for cell in row.split("  ") if cell.strip()]


def _metric(cell, name):
    assert cell.startswith(name + " ")
    return float(cell[len(name) + 1:])


def _assert_meets_threshold(task, metric_cell):
    name, threshold = THRESHOLDS[task]
    value = _metric(metric_cell, name)
    assert value >= threshold, f"{task}: {name} {value} below the README's {threshold}"
    assert value <= 1.0


def test_readme_demo_table_meets_the_thresholds():
    """The demo page's figures are the ones the tests hold the demo to."""
    section = DEMO_PAGE.read_text()
    for task, (name, threshold) in THRESHOLDS.items():
        (row,) = re.findall(rf"^\| {task} \|.*$", section, re.MULTILINE)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert _metric(cells[4], name) >= threshold, row


def _assert_short_error(err, *words):
    assert err.strip(), "no message on stderr"
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 8
    for word in words:
        assert word in err


@pytest.fixture
def four_devices():
    """Starts JAX's backend with conftest's 4 CPU devices, so that `--devices N` can no
    longer re-split the host of this test process."""
    assert jax.device_count() == 4
    yield
    assert jax.device_count() == 4


def test_demo_binary_prints_the_row_and_writes_a_png(tmp_path, capsys):
    out = tmp_path / "new" / "plots"  # created, parents included
    assert cli.main(["demo", "--task", "binary", "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    task, loss, dataset, train_loss, metric, seconds = _row(stdout, "binary")
    assert (task, loss, dataset) == ("binary", "sigmoid_binary_cross_entropy", "breast_cancer")
    assert math.isfinite(float(train_loss)) and float(train_loss) > 0
    _assert_meets_threshold("binary", metric)
    assert float(seconds) >= 0
    for other in ("regression", "multiclass", "siamese"):
        assert not any(line.startswith(other + " ") for line in stdout.splitlines())
    _assert_png(out / "loss_curves.png")
    assert not (out / "siamese_embedding.png").exists()
    assert "loss_curves.png" in stdout


def test_demo_siamese_writes_the_embedding_plot(tmp_path, capsys):
    assert cli.main(["demo", "--task", "siamese", "--out", str(tmp_path), "--quiet"]) == 0
    task, loss, dataset, train_loss, metric, _ = _row(capsys.readouterr().out, "siamese")
    assert (task, loss, dataset) == ("siamese", "contrastive_loss", "digit_pairs")
    assert math.isfinite(float(train_loss))
    _assert_meets_threshold("siamese", metric)
    _assert_png(tmp_path / "loss_curves.png")
    _assert_png(tmp_path / "siamese_embedding.png")


@pytest.mark.cpu_backend_only(reason="the demo's --devices splits jax.devices(): the 4 CPU "
                                     "devices here, one GPU on a GPU host")
def test_demo_data_parallel_on_two_of_the_four_devices(tmp_path, capsys, monkeypatch,
                                                       four_devices):
    meshes = []
    original = cli.run_demo_task

    def spy(task, **kwargs):
        meshes.append(kwargs["mesh"])
        return original(task, **kwargs)

    monkeypatch.setattr(cli, "run_demo_task", spy)
    assert cli.main(["demo", "--devices", "2", "--task", "multiclass",
                     "--out", str(tmp_path), "--quiet"]) == 0
    (mesh,) = meshes
    assert mesh is not None
    assert dict(mesh.shape) == {"data": 2}
    assert len(set(mesh.devices.flat)) == 2
    task, loss, dataset, train_loss, metric, _ = _row(capsys.readouterr().out, "multiclass")
    assert (task, loss, dataset) == ("multiclass", "softmax_cross_entropy_with_integer_labels",
                                     "digits")
    assert math.isfinite(float(train_loss))
    _assert_meets_threshold("multiclass", metric)  # split over 2 devices, same threshold
    _assert_png(tmp_path / "loss_curves.png")


def test_demo_epochs_sets_the_number_of_epochs(tmp_path, capsys, monkeypatch):
    histories = []
    original = cli.run_demo_task

    def spy(task, **kwargs):
        result = original(task, **kwargs)
        histories.append((kwargs["epochs"], result["history"]))
        return result

    monkeypatch.setattr(cli, "run_demo_task", spy)
    assert cli.main(["demo", "--task", "binary", "--epochs", "2", "--out", str(tmp_path),
                     "--quiet"]) == 0
    ((epochs, history),) = histories
    assert epochs == 2
    assert [record["epoch"] for record in history] == [0, 1]
    _row(capsys.readouterr().out, "binary")


@pytest.mark.cpu_backend_only(reason="counts the 4 CPU devices of the default backend")
def test_demo_more_devices_than_available_exits_2(tmp_path, capsys, monkeypatch, four_devices):
    def never(*args, **kwargs):
        raise AssertionError("trained despite too many --devices")

    monkeypatch.setattr(cli, "run_demo_task", never)
    assert cli.main(["demo", "--devices", "64", "--task", "binary", "--epochs", "1",
                     "--out", str(tmp_path), "--quiet"]) == 2
    captured = capsys.readouterr()
    _assert_short_error(captured.err, "--devices", "64", "device")
    assert "4" in captured.err  # how many there are


@pytest.mark.parametrize("args, words", [
    (["--task", "nope"], ["jaxloss demo", "--task", "nope"]),
    (["--epochs", "0"], ["jaxloss demo", "--epochs", "0"]),
    (["--epochs", "x"], ["jaxloss demo", "--epochs", "x"]),
    (["--epochs", "-3"], ["jaxloss demo", "--epochs"]),
    (["--devices", "0"], ["jaxloss demo", "--devices", "0"]),
    (["--devices", "two"], ["jaxloss demo", "--devices"]),
    (["--seed", "1.5"], ["jaxloss demo", "--seed"]),
    (["--no-such-flag"], ["jaxloss", "--no-such-flag"]),  # argparse: the top parser's
], ids=["task-nope", "epochs-0", "epochs-x", "epochs-negative", "devices-0", "devices-two",
        "seed-float", "unknown-flag"])
def test_demo_bad_arguments_exit_2_with_a_short_message(args, words, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setattr(cli, "run_demo_task", _never_trains)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *args, "--out", str(tmp_path / "out"), "--quiet"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_short_error(captured.err, "error", *words)
    assert not (tmp_path / "out").exists()


def _never_trains(*args, **kwargs):
    raise AssertionError("run_demo_task was called")


def test_demo_unwritable_out_is_reported_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_demo_task", _never_trains)
    blocker = tmp_path / "f"
    blocker.write_text("a regular file")
    began = time.perf_counter()
    assert cli.main(["demo", "--task", "binary", "--epochs", "1", "--out",
                     str(blocker / "sub"), "--quiet"]) == 2
    assert time.perf_counter() - began < 5
    captured = capsys.readouterr()
    _assert_short_error(captured.err, "--out", str(blocker / "sub"))
    assert "task" not in captured.out  # no table
    assert blocker.read_text() == "a regular file"


def test_demo_out_that_is_a_file_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_demo_task", _never_trains)
    target = tmp_path / "plots.png"
    target.write_bytes(b"not a folder")
    assert cli.main(["demo", "--task", "regression", "--out", str(target), "--quiet"]) == 2
    _assert_short_error(capsys.readouterr().err, "--out")
    assert target.read_bytes() == b"not a folder"


def test_python_dash_m_jaxloss_demo_regression(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "jaxloss", "demo", "--task", "regression", "--quiet",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    task, loss, dataset, train_loss, metric, _ = _row(result.stdout, "regression")
    assert (task, loss, dataset) == ("regression", "mean_squared_error", "diabetes")
    assert math.isfinite(float(train_loss))
    _assert_meets_threshold("regression", metric)
    _assert_png(out / "loss_curves.png")


# ---------------------------------------------------------------------------------
# `jaxloss check`: its help, --list, --filter and the progress lines (the report itself
# is test_testing.py's).


def test_check_help_says_what_it_checks(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["check", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("float64 reference", "finite differences", "extreme inputs",
                  "every built-in loss", "--filter PATTERN", "--list", "glob"):
        assert words in text, words


def _never_runs(case):
    raise AssertionError(f"ran {case.name}")


def test_check_list_prints_every_case_name_and_runs_nothing(capsys, monkeypatch):
    from jaxloss import testing

    monkeypatch.setattr(testing, "run_case", _never_runs)
    assert cli.main(["check", "--list"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [case.name for case in testing.builtin_cases()]
    assert captured.err == ""


def test_check_list_filter_takes_substrings_and_globs(capsys, monkeypatch):
    from jaxloss import testing

    monkeypatch.setattr(testing, "run_case", _never_runs)
    names = [case.name for case in testing.builtin_cases()]
    assert cli.main(["check", "--list", "--filter", "squared_error"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [n for n in names if "squared_error" in n]
    assert "mean_squared_error" in listed and "squared_error[where,sum]" in listed
    # A glob: the name must match it whole.
    assert cli.main(["check", "--list", "--filter", "squared_error*"]) == 0
    assert capsys.readouterr().out.splitlines() == ["squared_error", "squared_error[where,sum]"]
    # Brackets in a name are matched as a substring; --filter repeats.
    assert cli.main(["check", "--list", "--filter", "nll_loss[weights",
                     "--filter", "hinge_loss"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        n for n in names if "nll_loss[weights" in n or "hinge_loss" in n]


def test_check_filter_runs_only_the_matching_cases_with_progress(capsys, monkeypatch):
    from jaxloss import testing

    ran = []
    real = testing.run_case

    def recording(case):
        ran.append(case.name)
        return real(case)

    monkeypatch.setattr(testing, "run_case", recording)
    assert cli.main(["check", "--filter", "l2_loss"]) == 0  # two cheap cases
    captured = capsys.readouterr()
    assert ran == ["l2_loss", "l2_loss[where,mean]"]
    # The report on stdout, as without --filter: a row per case, then the count.
    lines = captured.out.splitlines()
    assert lines[0].split()[0] == "loss"
    rows = [line for line in lines if line.startswith("l2_loss")]
    assert [row.split("  ")[0] for row in rows] == ran
    assert all(row.split()[-1] == "ok" for row in rows)
    assert lines[-1] == "2/2 checks ok"
    # One progress line per case on stderr, as each finishes.
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [re.match(r"\[(\d)/2\] (\S+) \.\.\. ok \(\d+\.\d s\)$", line).groups()
            for line in progress] == [("1", "l2_loss"), ("2", "l2_loss[where,mean]")]


def test_check_quiet_drops_the_progress_lines(capsys, monkeypatch):
    from jaxloss import testing

    monkeypatch.setattr(testing, "run_case", lambda case: testing.CheckResult(
        case.name, False, 0.0, True, True, True))
    assert cli.main(["check", "--quiet", "--filter", "huber_loss"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines()[-1] == "1/1 checks ok"


@pytest.mark.parametrize("extra", [[], ["--list"]], ids=["run", "list"])
def test_check_filter_that_matches_nothing_exits_2(extra, capsys, monkeypatch):
    from jaxloss import testing

    monkeypatch.setattr(testing, "run_case", _never_runs)
    assert cli.main(["check", *extra, "--filter", "no_such_loss"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_short_error(captured.err, "jaxloss check", "--filter", "no_such_loss",
                        "no case matches", "--list")
