"""The reference site: its examples run, its tables come from the registry, its build
is strict and its checker catches a page without the signature.

The docstring examples (``>>>``) of every jaxloss module run with doctest, and the
```python blocks of docs/*.md run as written, so no example in the reference can rot.
"""

import doctest
import importlib
import importlib.util
import logging
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest

import jaxloss
from jaxloss import _registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The losses whose docstrings must carry a runnable example (issue 14).
WITH_EXAMPLES = {
    "regression.squared_error", "regression.mean_squared_error",
    "classification.sigmoid_binary_cross_entropy", "classification.softmax_cross_entropy",
    "classification.softmax_cross_entropy_with_integer_labels", "classification.nll_loss",
    "large_vocab.linear_softmax_cross_entropy", "divergence.kl_divergence",
    "contrastive.contrastive_loss", "contrastive.triplet_margin_loss",
    "contrastive.info_nce", "sequence.ctc_loss",
}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in pkgutil.iter_modules(jaxloss.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"jaxloss.{info.name}")
        tests += [t for t in finder.find(module, globs=vars(module).copy()) if t.examples]
    return tests


def test_docstring_examples_run():
    tests = _doctests()
    found = {t.name.removeprefix("jaxloss.") for t in tests}
    assert WITH_EXAMPLES <= found, f"no doctest examples in {WITH_EXAMPLES - found}"
    assert sum(len(t.examples) for t in tests) >= 4 * len(WITH_EXAMPLES)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def _blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if _blocks(p)))
def test_doc_page_python_blocks_run(page):
    for block in _blocks(DOCS / page):
        exec(compile(block, str(DOCS / page), "exec"), {})


def test_doc_pages_have_examples():
    assert sum(len(_blocks(p)) for p in DOCS.glob("*.md")) >= 8


def test_every_registry_entry_is_in_one_table():
    hook = _load(DOCS / "hooks" / "site.py", "_jaxloss_docs_site")
    placeholders = [m for p in DOCS.glob("*.md")
                    for m in hook._TABLE.finditer(p.read_text(encoding="utf-8"))]
    rows = "\n".join(hook.table(m.group(1), m.group(2) and m.group(2).split(","))
                     for m in placeholders)
    for entry in _registry.ENTRIES:
        assert rows.count(f"[{entry.call}][{hook.identifier(entry)}]") == 1, entry.name
    assert hook.version() == jaxloss.__version__


def test_rst_docstrings_become_markdown():
    ext = _load(DOCS / "hooks" / "griffe_rst.py", "_jaxloss_docs_griffe_rst")
    text = ("With :math:`x_n` and :func:`softmax` (:func:`_private`), see\n"
            "`a paper <https://x.org>`_::\n\n  code()\n\n.. math::\n  a = b\n")
    out = ext.to_markdown(text, "jaxloss.m")
    assert r"\(x_n\)" in out and "[`softmax`][jaxloss.m.softmax]" in out
    assert "`_private`" in out and "[a paper](https://x.org):" in out
    assert "```python\ncode()\n```" in out and "$$\na = b\n$$" in out


def test_missing_docstring_is_a_build_warning(tmp_path, caplog):
    griffe = pytest.importorskip("griffe")
    ext = _load(DOCS / "hooks" / "griffe_rst.py", "_jaxloss_docs_griffe_rst")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('__all__ = ["f", "g"]\n\n\ndef f():\n'
                                                  '    """Documented."""\n\n\ndef g():\n'
                                                  "    pass\n")
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins.jaxloss"):
        griffe.load("pkg", search_paths=[str(tmp_path)],
                    extensions=griffe.load_extensions(ext.RstToMarkdown()))
    assert [r.getMessage() for r in caplog.records] == ["pkg.g: public, without a docstring"]


SIGNATURE_PAGE = """<h2 id="jaxloss.large_vocab.linear_softmax_cross_entropy">
<code>linear_softmax_cross_entropy</code></h2><pre><code><span>linear_softmax_cross_entropy
</span>(<br>    hidden: ArrayLike,<br>    weight: ArrayLike,<br>    labels: ArrayLike, *,
)</code></pre><div class="arithmatex">\\[\\frac{\\partial}{\\partial H} = (P - Y)\\,W^\\top
\\]</div>"""


def test_site_checker_is_run_by_make_docs_and_catches_a_missing_signature(tmp_path):
    recipe = (ROOT / "Makefile").read_text().split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs build --strict" in recipe and "docs/check_site.py" in recipe
    check = _load(DOCS / "check_site.py", "_jaxloss_docs_check_site")
    page = tmp_path / "large_vocab" / "index.html"
    page.parent.mkdir()
    page.write_text(SIGNATURE_PAGE)
    assert check.problems(tmp_path) == []
    page.write_text(SIGNATURE_PAGE.replace("hidden", "inputs"))
    assert check.main([str(tmp_path)]) == 1
    assert "no signature" in check.problems(tmp_path)[0]


@pytest.mark.skipif(shutil.which("mkdocs", path=str(pathlib.Path(sys.executable).parent))
                    is None, reason="the docs extra is not installed")
def test_site_builds_strict_and_holds_the_signature(tmp_path):
    """The whole site, --strict, as `make docs` builds it (a few seconds)."""
    mkdocs = pathlib.Path(sys.executable).parent / "mkdocs"
    site = tmp_path / "site"
    # Not -q: mkdocs counts only the warnings it logs, so --strict -q lets them pass.
    run = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={"NO_MKDOCS_2_WARNING": "1", **__import__("os").environ})
    assert run.returncode == 0, run.stderr[-4000:]
    check = _load(DOCS / "check_site.py", "_jaxloss_docs_check_site")
    assert check.problems(site, jaxloss.__version__) == []
