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


def test_committed_tables_and_version_are_fresh():
    """The raw pages (a forge renders docs/*.md as they are) hold the tables and the
    version between their markers, as the registry and jaxloss/__init__.py give them."""
    hook = _load(DOCS / "hooks" / "site.py", "_jaxloss_docs_site")
    stale = [str(p.relative_to(ROOT)) for p in hook.stale()]
    assert stale == [], f"stale: {stale}; run python docs/hooks/site.py"
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert (f"Version <!-- jaxloss:version -->{jaxloss.__version__}<!-- /jaxloss:version -->."
            in index)
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for match in hook._TABLE_REGION.finditer(text):
            rows = [line for line in match.group(0).splitlines() if line.startswith("| `")]
            assert rows, f"{page.name}: an empty table between {match.group(0).splitlines()[0]}"
            assert "][jaxloss." not in match.group(0)  # no site-only links in the raw page


def test_the_site_gets_the_linked_tables_and_the_version_without_markers():
    hook = _load(DOCS / "hooks" / "site.py", "_jaxloss_docs_site")
    for page in DOCS.glob("*.md"):
        built = hook.fill(page.read_text(encoding="utf-8"), site=True, page=page.name)
        assert "jaxloss:" not in built.replace("::: jaxloss", ""), page.name
        assert "](../notebooks/" not in built, page.name
    built = hook.fill((DOCS / "regression.md").read_text(encoding="utf-8"), site=True)
    assert "| [`squared_error`][jaxloss.regression.squared_error] |" in built
    index = hook.fill((DOCS / "index.md").read_text(encoding="utf-8"), site=True)
    assert f"Version {jaxloss.__version__}." in index
    assert "](notebooks/01_mean_squared_error.ipynb)" in index


def test_stale_and_unclosed_markers_are_caught(tmp_path):
    hook = _load(DOCS / "hooks" / "site.py", "_jaxloss_docs_site")
    page = tmp_path / "page.md"
    fresh = hook.fill("# P\n\n<!-- jaxloss:table family=divergence -->\n<!-- /jaxloss:table -->\n"
                      "\nv<!-- jaxloss:version --><!-- /jaxloss:version -->\n", site=False)
    assert "| `kl_divergence` |" in fresh and f"v<!-- jaxloss:version -->{hook.version()}<" in fresh
    page.write_text(fresh)
    assert hook.stale(tmp_path) == []
    page.write_text(fresh.replace("| `kl_divergence` |", "| `kl_div` |"))
    assert hook.stale(tmp_path) == [page]
    page.write_text(fresh.replace(hook.version(), "0.0.0"))
    assert hook.stale(tmp_path) == [page]
    for unclosed in ("<!-- jaxloss:table family=divergence -->\n\ntext\n",
                     "Version <!-- jaxloss:version -->.\n"):
        with pytest.raises(ValueError, match="without its"):
            hook.fill(unclosed, site=True, page="page.md")


def test_every_notebook_is_linked_from_the_docs_the_nav_and_the_readme():
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in notebooks:
        # ../notebooks/ from docs/: right on a forge; the hook points it at the site's page.
        assert f"](../notebooks/{name})" in index, name
        assert f": notebooks/{name}" in nav, name
        assert f"](notebooks/{name})" in readme, name
    # No count of them to go stale.
    assert not re.search(r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten) executed "
                         r"notebooks", index, re.I)


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
