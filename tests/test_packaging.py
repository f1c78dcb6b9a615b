"""Packaging: one version everywhere, a changelog entry for it, and CI's wheel check.

Nothing is built here (that takes minutes): `make wheel-check` (.ci/wheel-check) builds
the sdist and the wheel, twine-checks them and runs the installed wheel from outside
the tree; these tests only prove that it exists, is wired into CI, and that the facts it
relies on hold.
"""

import pathlib
import re
import tomllib

import pytest

import jaxloss
from jaxloss import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_version_is_read_from_the_package():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "jaxloss.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", jaxloss.__version__)


def test_changelog_has_an_entry_for_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    heading = re.search(rf"^## \[{re.escape(jaxloss.__version__)}\] - (\S+)$", text, re.M)
    assert heading, f"CHANGELOG.md has no '## [{jaxloss.__version__}] - <date>' entry"
    assert re.fullmatch(r"unreleased|\d{4}-\d{2}-\d{2}", heading[1])
    # The newest entry comes first.
    assert heading[0] == re.search(r"^## \[.*$", text, re.M)[0]


def test_cli_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxloss {jaxloss.__version__}"


def test_metadata():
    assert PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    # PEP 639: with a license expression, no license classifier (setuptools refuses it).
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]
    pythons = {c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"]
               if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert pythons == {"3.11", "3.12", "3.13"}
    assert PROJECT["scripts"] == {"jaxloss": "jaxloss.cli:main"}
    assert (ROOT / "jaxloss" / "py.typed").is_file()
    assert {"build>=1.2", "twine>=6.1"} <= set(PROJECT["optional-dependencies"]["dev"])


def test_ci_runs_the_tests_lint_docs_then_the_wheel_check():
    script = ROOT / ".ci" / "wheel-check"
    assert script.is_file()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^wheel-check:.*\n\t.*\.ci/wheel-check", makefile, re.M)
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.startswith("make ")]
    assert steps == ["make test", "make lint", "make docs", "make wheel-check"]
    text = script.read_text()
    for step in ("-m build", "twine check --strict", "-m venv", "jaxloss\" --version",
                 "jaxloss\" check", "README.md", "unset PYTHONPATH"):
        assert step in text, step
