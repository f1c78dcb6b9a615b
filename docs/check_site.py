"""Checks the built site (``make docs`` runs it after ``mkdocs build --strict``).

``python docs/check_site.py [SITE_DIR]`` exits with status 1, naming what is missing,
unless the ``linear_softmax_cross_entropy`` reference page holds the function's
signature as mkdocstrings renders it, ``linear_softmax_cross_entropy(hidden, weight,
labels, ...`` (each parameter possibly annotated), and its math (the derivative of the
custom_vjp, left to KaTeX), and the entry page shows the package's version.
"""

from __future__ import annotations

import html
import pathlib
import re
import sys

PAGE = pathlib.Path("large_vocab", "index.html")
SIGNATURE = re.compile(
    r"linear_softmax_cross_entropy\s*\(\s*hidden\b[^,()]*,\s*weight\b[^,()]*,\s*labels\b")
MATH = (r'class="arithmatex"', r"\frac{\partial}{\partial H} = (P - Y)\,W^\top")


def text(page: str) -> str:
    """The page's text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


def version(root: pathlib.Path) -> str:
    init = (root / "jaxloss" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)


def problems(site: pathlib.Path, expected_version: str | None = None) -> list[str]:
    found = []
    page = site / PAGE
    if not page.is_file():
        return [f"{page} was not built"]
    raw = page.read_text(encoding="utf-8")
    if not SIGNATURE.search(text(raw)):
        found.append(f"{page}: no signature linear_softmax_cross_entropy(hidden, weight, "
                     "labels, ...")
    found += [f"{page}: no math {m!r}" for m in MATH if m not in html.unescape(raw)]
    if expected_version is not None:
        entry = site / "index.html"
        if not entry.is_file() or f"jaxloss {expected_version}" not in text(
                entry.read_text(encoding="utf-8")):
            found.append(f"{entry}: no version jaxloss {expected_version}")
    return found


def main(argv: list[str]) -> int:
    root = pathlib.Path(__file__).resolve().parents[1]
    site = pathlib.Path(argv[0]) if argv else root / "site"
    found = problems(site, version(root))
    for problem in found:
        print(f"check_site: {problem}", file=sys.stderr)
    if not found:
        print(f"check_site: {site / PAGE} holds the signature and the math")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
