"""optax's own loss tests, run against jaxloss: the proof that jaxloss is drop-in.

The optax wheel ships its tests (``optax/losses/_*_test.py``). Each is loaded from the
installed optax (nothing of it is copied here) with its ``optax.losses._<module>``
replaced by a module whose names resolve to jaxloss's function of the same name (and
to optax's own for the helpers jaxloss does not have), and every test runs as one
pytest item. The tests where jaxloss differs on purpose are listed in
:data:`DEVIATIONS` with the reason; they must fail (strict), so that a listed
difference that disappears is noticed. docs/index.md ("Differences from optax") says
the same.
"""

import importlib.util
import pathlib
import re
import sys
import types
import unittest
import warnings

import optax
import optax.losses
import pytest

import jaxloss

MODULES = ("_classification", "_regression", "_segmentation", "_ranking", "_fenchel_young",
           "_self_supervised", "_smoothing")
LOSSES = pathlib.Path(optax.losses.__file__).parent

# optax's test id -> why jaxloss gives another result, and what it gives.
DEVIATIONS: dict[str, str] = {}


class _Jaxloss(types.ModuleType):
    """``optax.losses._<module>`` with each name jaxloss exports taken from jaxloss."""

    def __init__(self, original: types.ModuleType):
        super().__init__(original.__name__)
        self._original = original

    def __getattr__(self, name):
        if name in jaxloss.__all__:
            return getattr(jaxloss, name)
        return getattr(self._original, name)


def _load(name: str) -> types.ModuleType:
    """The test module of ``optax.losses.<name>``, its imports of optax.losses' modules
    resolved to :class:`_Jaxloss` while it loads (it keeps those references)."""
    saved = {}
    for module in MODULES:
        original = sys.modules.get(f"optax.losses.{module}") or importlib.import_module(
            f"optax.losses.{module}")
        saved[module] = original
        shim = _Jaxloss(original)
        sys.modules[f"optax.losses.{module}"] = shim
        setattr(optax.losses, module, shim)
    try:
        spec = importlib.util.spec_from_file_location(f"optax_suite{name}_test",
                                                      LOSSES / f"{name}_test.py")
        test_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(test_module)
    finally:
        for module, original in saved.items():
            sys.modules[f"optax.losses.{module}"] = original
            setattr(optax.losses, module, original)
    return test_module


def _cases() -> dict[str, unittest.TestCase]:
    out = {}
    for name in MODULES:
        suite = unittest.TestLoader().loadTestsFromModule(_load(name))
        stack = [suite]
        while stack:
            item = stack.pop()
            if isinstance(item, unittest.TestSuite):
                stack.extend(item)
            else:
                # Without the functions' addresses (``<function f at 0x...>`` in a
                # parametrized name): every pytest-xdist worker collects the same ids.
                test_id = re.sub(r" at 0x[0-9a-fA-F]+", "", item.id().split(".", 1)[1])
                out[f"{name}_test::{test_id}"] = item
    return dict(sorted(out.items()))


CASES = _cases()


def test_the_suite_is_there():
    """optax 0.2.8 ships 178 loss tests; a much smaller count means the loading broke."""
    assert len(CASES) > 150, len(CASES)
    assert set(DEVIATIONS) <= set(CASES), set(DEVIATIONS) - set(CASES)
    assert len(set(map(_readable, CASES))) == len(CASES)


def _readable(test_id: str) -> str:
    """The pytest id of optax's test: each run of characters other than letters, digits
    and ``_.:[]-`` (the parameters' ``(axis=(1, 3), ...)``) as one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.:\[\]-]+", "_", test_id).rstrip("_")


@pytest.mark.parametrize("test_id", list(CASES), ids=_readable)
def test_optax(test_id):
    result = unittest.TestResult()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        CASES[test_id].run(result)
    problems = [f"{kind}: {text}" for kind, items in (("FAIL", result.failures),
                                                      ("ERROR", result.errors))
                for _, text in items]
    if test_id in DEVIATIONS:
        assert problems, f"listed as a deviation ({DEVIATIONS[test_id]}) but passes"
        return
    assert result.testsRun == 1 and not problems, "\n".join(problems)[-3000:]
