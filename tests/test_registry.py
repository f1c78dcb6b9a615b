"""jaxloss/_registry.py is the one list of the public names; every other list must agree.

Each test names what is missing where, so adding a loss to the registry tells you the
rest of the work.
"""

import importlib
import importlib.util
import inspect
import pathlib
import sys

import jaxloss
from jaxloss import _registry
from jaxloss.testing import builtin_cases

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOSSES = [e for e in _registry.ENTRIES if e.family != "utility"]


def _load_benchmarks():
    spec = importlib.util.spec_from_file_location("jaxloss_benchmarks_run_registry",
                                                  ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_all_is_the_registry():
    exported = set(jaxloss.__all__) - {"__version__"}
    listed = set(_registry.public_names())
    assert not exported - listed, f"in jaxloss.__all__, not in the registry: {exported - listed}"
    assert not listed - exported, f"in the registry, not in jaxloss.__all__: {listed - exported}"
    assert len(listed) == sum(len(e.names) for e in _registry.ENTRIES), "a name listed twice"


def test_each_name_lives_in_its_module_and_aliases_are_the_same_function():
    for entry in _registry.ENTRIES:
        module = importlib.import_module(f"jaxloss.{entry.module}")
        assert entry.family in _registry.FAMILIES, entry
        assert set(entry.deprecated) <= set(entry.names[1:]), entry
        for name in entry.names:
            if name in entry.deprecated:  # a function of its own, that warns
                assert getattr(module, name) is getattr(jaxloss, name), (entry.module, name)
                assert getattr(jaxloss, name) is not getattr(jaxloss, entry.name), name
            else:
                assert getattr(module, name) is getattr(jaxloss, entry.name), (entry.module, name)


def test_every_public_loss_is_documented_and_typed():
    for entry in _registry.ENTRIES:
        fn = getattr(jaxloss, entry.name)
        doc = inspect.getdoc(fn) or ""
        if entry.checked:  # a loss: its math and where it comes from
            assert "References:" in doc, f"{entry.name}: no references"
            assert ":math:" in doc or ".. math::" in doc, f"{entry.name}: no math"
        hints = inspect.get_annotations(fn)
        if inspect.isclass(fn):  # a result type: every field typed and described
            assert hints and all(f"{field}:" in doc for field in hints), entry.name
        else:
            assert "return" in hints, f"{entry.name}: no return annotation"


def test_check_cases_cover_exactly_the_checked_entries():
    covered = {case.name.split("[")[0] for case in builtin_cases()}
    want = {e.name for e in _registry.ENTRIES if e.checked}
    assert not want - covered, f"registered, without a `jaxloss check` case: {want - covered}"
    assert not covered - want, f"check cases of names the registry does not mark: " \
                               f"{covered - want}"


def test_benchmark_rows_are_the_marked_entries():
    run = _load_benchmarks()
    specs = [*run.case_specs(run.SIZES["tiny"], None, None),
             *run.case_specs(run.SIZES["gpu-tiny"], None, None)]
    rows = {spec.loss.split("(")[0] for spec in specs}  # "info_nce(symmetric=True)" too
    names = {e.name for e in _registry.ENTRIES}
    benchmarked = {e.name for e in _registry.ENTRIES if e.benchmark}
    assert not benchmarked - rows, f"marked benchmark=True, without a row: {benchmarked - rows}"
    assert not (rows & names) - benchmarked, \
        f"rows of names not marked benchmark=True: {(rows & names) - benchmarked}"


def test_readme_tables_are_rendered_from_the_registry():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _registry.BEGIN in text and _registry.END in text
    block = text.split(_registry.BEGIN, 1)[1].split(_registry.END, 1)[0]
    assert block.strip() == _registry.readme_tables().strip(), (
        "README's loss tables differ from jaxloss/_registry.py: run `make readme-tables`")
    for entry in LOSSES:
        assert f"`{entry.name}" in block, entry.name
