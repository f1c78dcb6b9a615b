"""mkdocs hooks (``hooks:`` in mkdocs.yml): the version, the options tables and the
tutorials come from the repository, so the site cannot drift from it.

- the version is read from ``jaxloss/__init__.py`` and shown in the header (the site
  name) and between ``<!-- jaxloss:version -->`` and ``<!-- /jaxloss:version -->``;
- between ``<!-- jaxloss:table family=F [modules=a,b] -->`` and
  ``<!-- /jaxloss:table -->`` goes the options table of ``jaxloss._registry.ENTRIES`` of
  family ``F`` (those defined in modules ``a``, ``b`` when given), each name a link to
  its reference on the site;
- the executed notebooks of ``notebooks/`` become the pages ``notebooks/<name>/``
  (mkdocs-jupyter renders them; they are not copied into ``docs/``), and a page's links
  to ``../notebooks/<name>.ipynb`` (right where the raw ``docs/*.md`` are read, on a
  forge) point there.

The pages are read raw too (a forge renders ``docs/*.md`` as they are), so the content
between the markers is committed, in plain Markdown (the names as code, no site links),
and the build replaces it with the linked form. ``python docs/hooks/site.py`` rewrites
it from the registry and the version (to add a table, write the two markers and run
it); ``--check`` only says which pages are stale (tests/test_docs.py fails on them).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import sys

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_TABLE = re.compile(r"<!-- jaxloss:table family=(\w+)(?: modules=([\w,]+))? -->")
_END_TABLE = "<!-- /jaxloss:table -->"
# An opener, then anything up to its end marker that holds no other opener.
_TABLE_REGION = re.compile(_TABLE.pattern + r"(?:(?!<!-- jaxloss:).)*?"
                           + re.escape(_END_TABLE), re.S)
_VERSION = "<!-- jaxloss:version -->"
_END_VERSION = "<!-- /jaxloss:version -->"
_VERSION_REGION = re.compile(re.escape(_VERSION) + r"[^<\n]*" + re.escape(_END_VERSION))
_NOTEBOOK_LINK = re.compile(r"\]\(\.\./notebooks/([\w.-]+\.ipynb)\)")
HEADER = ["| jaxloss | optax | PyTorch | Keras and others | notes |",
          "| --- | --- | --- | --- | --- |"]


def version() -> str:
    text = (ROOT / "jaxloss" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


@functools.cache
def registry():
    """``jaxloss/_registry.py``, loaded on its own (plain data: no JAX import)."""
    spec = importlib.util.spec_from_file_location("_jaxloss_registry",
                                                  ROOT / "jaxloss" / "_registry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up there
    spec.loader.exec_module(module)
    return module


def identifier(entry) -> str:
    """The reference anchor of an entry (a private module's names are rendered as
    ``jaxloss.<name>``)."""
    if entry.module.startswith("_"):
        return f"jaxloss.{entry.name}"
    return f"jaxloss.{entry.module}.{entry.name}"


def table(family: str, modules: list[str] | None = None, *, links: bool = True) -> str:
    """The options table of a family; with ``links``, each name links to its reference
    (autorefs, on the site), else it is plain code (the committed, raw form)."""
    reg = registry()
    if family not in reg.FAMILIES:
        raise ValueError(f"no family {family!r} in jaxloss/_registry.py")
    rows = [f"| {f'[{e.call}][{identifier(e)}]' if links else e.call} | {e.optax} | "
            f"{e.torch} | {e.keras} | {e.notes} |"
            for e in reg.ENTRIES
            if e.family == family and (modules is None or e.module in modules)]
    if not rows:
        raise ValueError(f"no entries of family {family!r} in modules {modules}")
    return "\n".join(HEADER + rows)


def fill(markdown: str, *, site: bool, page: str = "page") -> str:
    """``markdown`` with the content between the markers made anew: for the site (the
    tables linked, the markers dropped), or for the committed page (plain, the markers
    kept). An opener without its end marker raises ValueError naming ``page``."""
    for opener, region, end in ((_TABLE, _TABLE_REGION, _END_TABLE),
                                (re.compile(re.escape(_VERSION)), _VERSION_REGION,
                                 _END_VERSION)):
        if len(opener.findall(markdown)) != len(region.findall(markdown)):
            raise ValueError(f"{page}: a {opener.pattern!r} without its {end!r} after it "
                             "(on the same line for the version; no other marker between)")

    def replace(match: re.Match[str]) -> str:
        modules = match.group(2).split(",") if match.group(2) else None
        rows = table(match.group(1), modules, links=site)
        opener = match.group(0).split("-->", 1)[0] + "-->"
        return rows if site else f"{opener}\n\n{rows}\n\n{_END_TABLE}"

    markdown = _TABLE_REGION.sub(replace, markdown)
    stamp = version() if site else f"{_VERSION}{version()}{_END_VERSION}"
    markdown = _VERSION_REGION.sub(lambda _: stamp, markdown)
    if site:
        markdown = _NOTEBOOK_LINK.sub(r"](notebooks/\1)", markdown)
    return markdown


def stale(docs: pathlib.Path = DOCS) -> list[pathlib.Path]:
    """The pages whose committed content between the markers is not what
    :func:`fill` makes of it."""
    return [p for p in sorted(docs.glob("*.md"))
            if fill(text := p.read_text(encoding="utf-8"), site=False, page=str(p)) != text]


def on_config(config):
    config.site_name = f"jaxloss {version()}"
    config.extra["version"] = version()
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which converts .ipynb files
def on_files(files, config):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{notebook.name}", src_dir=str(ROOT),
                          dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    return fill(markdown, site=True, page=page.file.src_uri)


def main(argv: list[str]) -> int:
    """``python docs/hooks/site.py [--check]``: rewrites (or, with --check, lists) the
    stale pages of docs/."""
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python docs/hooks/site.py [--check]", file=sys.stderr)
        return 2
    pages = stale()
    for page in pages:
        name = page.relative_to(ROOT)
        if check:
            print(f"{name}: stale (run python docs/hooks/site.py)", file=sys.stderr)
        else:
            page.write_text(fill(page.read_text(encoding="utf-8"), site=False, page=str(name)),
                            encoding="utf-8")
            print(f"{name}: rewritten")
    return 1 if check and pages else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
