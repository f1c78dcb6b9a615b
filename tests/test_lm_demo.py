"""`jaxloss demo --task lm` and jaxloss.lm_demo: a tiny end-to-end run of the command, the
tokenizer cache, the split by file, the unigram baseline, the two losses it compares and
the memory claim at the default size.

The tiny run (80 files, V = 512, 6 steps) is too small for the perplexity threshold, so the
command must exit 1 and say so, and exit 0 with --report-only (its figures replayed, not
trained again); the full-size figures are the docs page's, which the last test holds to
the thresholds.
"""

import contextlib
import io
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from jaxloss import cli, lm_demo

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "language_model.md"
TINY = ["--vocab-size", "512", "--max-files", "80", "--steps", "6"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny `jaxloss demo --task lm`: (exit code, stdout, stderr, out folder, the
    figures lm_demo.run returned)."""
    out = tmp_path_factory.mktemp("lm") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    results = []
    real_run = lm_demo.run

    def recording(*args, **kwargs):
        results.append(real_run(*args, **kwargs))
        return results[-1]

    with (pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr)):
        patch.setattr(lm_demo, "run", recording)
        code = cli.main(["demo", "--task", "lm", *TINY, "--out", str(out), "--quiet"])
    (result,) = results
    return code, stdout.getvalue(), stderr.getvalue(), out, result


def _threshold_lines(stdout):
    """The lines after ``thresholds ...:``, stripped."""
    lines = stdout.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("thresholds (")]
    return lines[start], [line.strip() for line in lines[start + 1:] if line.startswith("  ")]


def _field(stdout, name):
    """The text after ``name: `` on its line of the report."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(name + ": ")]
    return line[len(name) + 2:]


def _number(text):
    return float(re.match(r"[-+0-9.,e]+", text).group(0).replace(",", ""))


def test_tiny_run_reports_every_figure_and_fails_the_perplexity_threshold(tiny_run):
    code, stdout, stderr, out, _ = tiny_run
    # At 6 steps the model is no better than the unigram baseline: the demo says so.
    assert code == 1
    assert "Traceback" not in stderr
    assert "jaxloss demo: error: --task lm: validation perplexity" in stderr
    assert "unigram perplexity" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not any(line.startswith("step ") for line in stdout.splitlines())  # --quiet

    assert "V = 512" in _field(stdout, "tokenizer")
    assert "trained and encoded" in _field(stdout, "tokenizer")  # a cold cache
    train, val = _number(_field(stdout, "train loss")), _number(_field(stdout, "validation loss"))
    assert 0 < train < 2 * math.log(512) and 0 < val < 2 * math.log(512)
    ppl = _number(_field(stdout, "validation perplexity"))
    unigram_text = _field(stdout, "unigram perplexity")
    unigram = _number(unigram_text)
    assert 1 < ppl and 1 < unigram < 512
    printed_ratio = float(re.search(r"ratio ([0-9.]+)", unigram_text).group(1))
    assert printed_ratio == pytest.approx(ppl / unigram, abs=2e-3)  # of the rounded figures
    assert _number(_field(stdout, "training")) > 0
    assert "tokens/s" in _field(stdout, "training")

    memory = _field(stdout, "train step temp memory")
    fused, materialized, ratio = (float(x) for x in re.match(
        r"fused ([0-9.]+) MiB, materialized ([0-9.]+) MiB, ratio ([0-9.]+)", memory).groups())
    assert 0 < fused < materialized
    assert ratio == pytest.approx(fused / materialized, abs=2e-3)

    assert _field(stdout, "sample").startswith("'def __init__(self")
    png = out / "lm_loss.png"
    assert _field(stdout, "plot") == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.01

    # Each threshold, after the figures, with its value and its verdict.
    header, lines = _threshold_lines(stdout)
    assert header == "thresholds (exit 1 unless each is ok):"
    value = re.fullmatch(r"validation perplexity / unigram perplexity: ([0-9.]+) "
                         r"\(at most 0\.5\): FAIL", lines[0]).group(1)
    assert float(value) == pytest.approx(ppl / unigram, abs=2e-3)  # of the rounded figures
    assert re.fullmatch(r"fused / materialized train step temp memory: ([0-9.]+) "
                        r"\(at most 0\.25\): (ok|FAIL)", lines[1])
    assert len(lines) == 2


def _replay(result):
    """lm_demo.run as the tiny run ran it: its report, its figures (no training)."""
    def run(config, out, *, log=print, check=True):
        assert not check  # the command weighs the thresholds itself
        lm_demo.report(result, config, log)
        return result

    return run


@pytest.mark.parametrize("flag, code", [([], 1), (["--report-only"], 0)],
                         ids=["default", "report-only"])
def test_report_only_prints_each_threshold_and_exits_0(flag, code, tiny_run, tmp_path, capsys,
                                                       monkeypatch):
    """The tiny run's own figures (which miss the perplexity threshold), through the
    command with and without --report-only; the training is not run again."""
    result = tiny_run[4]
    monkeypatch.setattr(lm_demo, "run", _replay(result))
    assert cli.main(["demo", "--task", "lm", *TINY, *flag, "--out", str(tmp_path),
                     "--quiet"]) == code
    captured = capsys.readouterr()
    assert _field(captured.out, "validation perplexity") == f"{result['val_perplexity']:.1f}"
    header, lines = _threshold_lines(captured.out)
    ratio = result["val_perplexity"] / result["unigram_perplexity"]
    memory = result["memory_ratio"]
    assert lines == [
        f"validation perplexity / unigram perplexity: {ratio:.3f} (at most 0.5): FAIL",
        f"fused / materialized train step temp memory: {memory:.3f} (at most 0.25): "
        + ("ok" if memory <= 0.25 else "FAIL")]
    if flag:
        assert header == "thresholds (--report-only: not enforced):"
        assert captured.err == ""
    else:
        assert header == "thresholds (exit 1 unless each is ok):"
        assert captured.err.startswith("jaxloss demo: error: --task lm: validation perplexity")
        assert len(captured.err.strip().splitlines()) == 1


def test_report_only_still_exits_1_when_the_run_fails(tmp_path, capsys, monkeypatch):
    def diverges(*args, **kwargs):
        raise lm_demo.ThresholdError("the training loss is nan at step 3")

    monkeypatch.setattr(lm_demo, "run", diverges)
    assert cli.main(["demo", "--task", "lm", *TINY, "--report-only", "--out", str(tmp_path),
                     "--quiet"]) == 1
    assert "the training loss is nan" in capsys.readouterr().err


@pytest.mark.parametrize("ppl, fused, passed", [
    (50.0, 25.0, [True, True]),      # both at their limits exactly
    (50.1, 25.1, [False, False]),
    (float("nan"), 10.0, [False, True]),  # NaN fails
])
def test_thresholds_and_their_lines(ppl, fused, passed):
    result = {"val_perplexity": ppl, "unigram_perplexity": 100.0, "fused_temp_mib": fused,
              "materialized_temp_mib": 100.0, "memory_ratio": fused / 100.0}
    thresholds = lm_demo.thresholds(result)
    assert [t.passed for t in thresholds] == passed
    assert [t.line().endswith(": ok" if p else ": FAIL")
            for t, p in zip(thresholds, passed, strict=True)] == [True, True]
    assert thresholds[0].line().startswith("validation perplexity / unigram perplexity: ")
    if all(passed):
        lm_demo.check_thresholds(result)
    else:
        with pytest.raises(lm_demo.ThresholdError) as info:
            lm_demo.check_thresholds(result)
        assert str(info.value).count(";") == passed.count(False) - 1


def test_a_second_run_reads_the_tokenizer_and_tokens_from_the_cache(tiny_run, monkeypatch):
    out = tiny_run[3]
    (folder,) = (out / "lm-cache").iterdir()
    written = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    assert set(written) == {"tokenizer.json", "train.npy", "validation.npy", "meta.json"}

    def never(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(lm_demo, "train_tokenizer", never)
    monkeypatch.setattr(lm_demo, "encode_files", never)
    corpus = lm_demo.prepare_corpus(out / "lm-cache", vocab_size=512, max_files=80)
    assert corpus.cached
    assert corpus.vocab_size == 512
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == written
    for stream in (corpus.train, corpus.validation):
        assert stream.dtype == np.int32
        assert 0 <= stream.min() and stream.max() < 512
    # Each file's tokens end with the separator.
    eot = corpus.tokenizer.token_to_id(lm_demo.END_OF_TEXT)
    assert np.sum(corpus.validation == eot) == len(corpus.validation_files)
    assert corpus.validation[-1] == eot


PATHS = [f"pkg{i % 7}/module_{i}.py" for i in range(300)]


def test_split_is_by_file_deterministic_and_independent_of_the_other_files():
    train, validation = lm_demo.split_by_file(PATHS, validation_fraction=0.2)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(PATHS)
    assert train == sorted(train) and validation == sorted(validation)
    assert 0.1 < len(validation) / len(PATHS) < 0.3
    # The same split whatever the order, and a file's side depends on its name only.
    assert lm_demo.split_by_file(PATHS[::-1], validation_fraction=0.2) == (train, validation)
    half_train, half_validation = lm_demo.split_by_file(PATHS[::2], validation_fraction=0.2)
    assert set(half_validation) == set(validation) & set(PATHS[::2])
    assert set(half_train) == set(train) & set(PATHS[::2])


def test_max_files_keeps_a_deterministic_sample_and_each_side_nonempty():
    train, validation = lm_demo.split_by_file(PATHS, max_files=40)
    assert len(train) + len(validation) == 40
    assert lm_demo.split_by_file(PATHS[::-1], max_files=40) == (train, validation)
    assert set(train + validation) < set(PATHS)
    # A sample spread over the list, not its first 40 names.
    assert max(int(p.split("_")[1][:-3]) for p in train + validation) > 100
    for n in (2, 3, 5):
        train, validation = lm_demo.split_by_file(PATHS, max_files=n)
        assert train and validation and len(train) + len(validation) == n
    with pytest.raises(ValueError, match="max_files"):
        lm_demo.split_by_file(PATHS, max_files=1)
    with pytest.raises(ValueError, match="validation_fraction"):
        lm_demo.split_by_file(PATHS, validation_fraction=1.0)


def test_the_stdlib_sources_are_python_files_without_site_packages():
    sources = lm_demo.stdlib_sources()
    assert sources == sorted(sources)
    assert "os.py" in sources and "json/__init__.py" in sources
    assert all(p.endswith(".py") and "site-packages" not in p for p in sources)


def test_unigram_perplexity_by_hand():
    # Counts of tokens 0, 1, 2 in the training stream: 2, 1, 0 (N = 3, V = 3), so with
    # add-one smoothing p = 3/6, 2/6, 1/6. Targets 0 and 2 (the -100 is skipped):
    # exp(-(log 1/2 + log 1/6) / 2) = sqrt(12).
    value = lm_demo.unigram_perplexity(np.array([0, 0, 1]), np.array([[0, 2, -100]]), 3)
    assert value == pytest.approx(math.sqrt(12), rel=1e-12)
    # A uniform training stream gives perplexity V on anything.
    assert lm_demo.unigram_perplexity(np.arange(5), np.array([4, 4, 1]), 5) == pytest.approx(5)
    with pytest.raises(ValueError, match="vocab_size"):
        lm_demo.unigram_perplexity(np.array([0, 7]), np.array([0]), 3)


def test_fused_and_materialized_losses_agree():
    """The memory comparison is between two computations of the same loss."""
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = 3 * jax.random.normal(keys[0], (48, 16))
    weight = jax.random.normal(keys[1], (16, 300))
    labels = jax.random.randint(keys[2], (48,), 0, 300).at[::5].set(lm_demo.IGNORE_INDEX)

    def value_and_grads(loss):
        return jax.value_and_grad(lambda h, w: loss(h, w, labels), argnums=(0, 1),
                                  has_aux=True)(hidden, weight)

    (fused, fused_metrics), fused_grads = value_and_grads(lm_demo.fused_loss)
    (dense, dense_metrics), dense_grads = value_and_grads(lm_demo.materialized_loss)
    np.testing.assert_allclose(fused, dense, rtol=1e-5)
    for name in ("ce", "accuracy"):
        np.testing.assert_allclose(fused_metrics[name], dense_metrics[name], rtol=1e-5)
    assert float(fused) > float(fused_metrics["ce"])  # the z-term is in the loss
    for a, b in zip(fused_grads, dense_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.cpu_backend_only(reason="the memory ratio is measured for the CPU backend")
def test_fused_step_needs_under_a_quarter_of_the_materialized_steps_memory():
    """At the command's default size (V = 32768, 16 x 128 tokens), compiled only."""
    config = lm_demo.LMConfig()
    model = lm_demo.build_model(config, config.vocab_size)
    graphdef, params = lm_demo.nnx.split(model)
    optimizer = lm_demo.make_optimizer(config)
    opt_state = optimizer.init(params)
    tokens = jnp.zeros((config.batch_size, config.seq_len), jnp.int32)
    fused, materialized = (
        lm_demo.temp_bytes(lm_demo.compile_step(lm_demo.make_train_step(graphdef, optimizer, loss),
                                                params, opt_state, tokens))
        for loss in (lm_demo.fused_loss, lm_demo.materialized_loss))
    # The logits alone take 2048 x 32768 x 4 bytes = 256 MiB.
    assert materialized > 256 * 2**20
    assert fused <= materialized / 4, (fused / 2**20, materialized / 2**20)


@pytest.mark.parametrize("args, words", [
    (["--task", "lm", "--epochs", "2"], ["--epochs 2", "--task lm"]),
    (["--task", "lm", "--devices", "2"], ["--devices 2", "--task lm"]),
    (["--task", "binary", "--steps", "5"], ["--steps 5", "--task lm"]),
    (["--task", "all", "--max-files", "5"], ["--max-files 5", "--task lm"]),
    (["--task", "binary", "--fit-memory", "1"], ["--fit-memory 1", "--task lm"]),
    (["--task", "all", "--report-only"], ["--report-only", "--task lm"]),
], ids=["lm-epochs", "lm-devices", "binary-steps", "all-max-files", "binary-fit-memory",
        "all-report-only"])
def test_options_of_the_other_kind_of_task_exit_2(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lm_demo, "run", _never)
    monkeypatch.setattr(cli, "run_demo_task", _never)
    assert cli.main(["demo", *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    for word in words:
        assert word in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--vocab-size", "100"], ["--max-files", "1"],
                                  ["--steps", "0"], ["--fit-memory", "0"],
                                  ["--fit-memory", "inf"], ["--size", "huge"]])
def test_bad_lm_numbers_exit_2(args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lm_demo, "run", _never)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--task", "lm", *args, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert args[0] in capsys.readouterr().err


def test_task_all_runs_the_four_mlp_tasks_and_not_the_lm(tmp_path, capsys, monkeypatch):
    ran = []

    def fake(task, **kwargs):
        ran.append(task.name)
        return {"task": task.name, "loss": task.loss_name, "dataset": "d", "train_loss": 1.0,
                "metric_name": task.metric_name, "metric": 1.0, "seconds": 0.0,
                "history": [], "embedding": None}

    monkeypatch.setattr(cli, "run_demo_task", fake)
    monkeypatch.setattr(cli, "_plot", lambda results, out: [])
    monkeypatch.setattr(lm_demo, "run", _never)
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    assert ran == ["regression", "binary", "multiclass", "siamese"]


def _never(*args, **kwargs):
    raise AssertionError("trained")


def _table(page):
    """The measured table of the docs page: {row name: [cells]}."""
    rows = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not set(cells[0]) <= {"-", ""}:
            rows[cells[0]] = cells[1:]
    return rows


def test_the_docs_figures_meet_the_thresholds():
    rows = _table(PAGE.read_text())
    runs = len(rows["validation perplexity"])
    assert runs >= 1
    for i in range(runs):
        ppl = _number(rows["validation perplexity"][i])
        unigram = _number(rows["unigram perplexity (same tokens)"][i])
        assert ppl <= unigram / 2
        fused = _number(rows["train step temp memory, fused (MiB)"][i])
        materialized = _number(rows["train step temp memory, materialized (MiB)"][i])
        assert fused <= materialized / 4
        assert _number(rows["wall time, cold cache (s)"][i]) <= 180


@pytest.mark.parametrize("limit", [1, 7, 64, 1000])
def test_bisect_largest_finds_the_last_batch_that_fits(limit):
    """Against every budget of a stepped, growing footprint (padding makes equal steps)."""
    def footprint(b):
        calls.append(b)
        return 100 + 40 * ((b + 3) // 4) + b

    for budget in range(0, 1500, 7):
        calls = []
        batch, used = lm_demo.bisect_largest(footprint, budget, limit)
        searched = len(calls)
        fitting = [b for b in range(1, limit + 1) if footprint(b) <= budget]
        assert batch == (max(fitting) if fitting else 0), budget
        assert used == footprint(max(batch, 1))
        assert searched <= 2 * math.log2(limit) + 2


def test_largest_batch_compiles_the_whole_step():
    """One real search: the budget of the materialized step at one sequence fits two
    sequences of the fused step, whose footprint is dominated by the parameters and
    AdamW's state."""
    from flax import nnx

    config = lm_demo.LMConfig(d_model=16, num_heads=2, num_layers=1, seq_len=16)
    vocab = 16384  # each sequence's [16, V] logits: 1 MiB, and as much again in bwd
    graphdef, params = nnx.split(lm_demo.build_model(config, vocab))
    optimizer = lm_demo.make_optimizer(config)
    step = jax.jit(lm_demo.make_train_step(graphdef, optimizer, lm_demo.materialized_loss),
                   donate_argnums=(0, 1))
    tokens = jax.ShapeDtypeStruct((1, config.seq_len), jnp.int32)
    one = lm_demo.step_footprint(step.lower(params, optimizer.init(params), tokens).compile())
    budget = one + 4096  # the two steps' footprints at one sequence differ by a few bytes
    assert lm_demo.largest_batch(config, vocab, lm_demo.materialized_loss, budget) == (1, one)
    assert lm_demo.largest_batch(config, vocab, lm_demo.fused_loss, budget, limit=2)[0] == 2
