"""mkdocs hooks (``hooks:`` in mkdocs.yml): the version, the options tables and the
tutorials come from the repository, so the site cannot drift from it.

- the version is read from ``jaxloss/__init__.py`` and shown in the header (the site
  name) and wherever a page says ``<!-- jaxloss:version -->``;
- ``<!-- jaxloss:table family=F [modules=a,b] -->`` becomes the options table of
  ``jaxloss._registry.ENTRIES`` of family ``F`` (those defined in modules ``a``, ``b``
  when given), each name a link to its reference;
- the executed notebooks of ``notebooks/`` become the pages ``notebooks/<name>/``
  (mkdocs-jupyter renders them; they are not copied into ``docs/``).
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
_TABLE = re.compile(r"<!-- jaxloss:table family=(\w+)(?: modules=([\w,]+))? -->")
_VERSION = "<!-- jaxloss:version -->"
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


def table(family: str, modules: list[str] | None = None) -> str:
    reg = registry()
    if family not in reg.FAMILIES:
        raise ValueError(f"no family {family!r} in jaxloss/_registry.py")
    rows = [f"| [{e.call}][{identifier(e)}] | {e.optax} | {e.torch} | {e.keras} | {e.notes} |"
            for e in reg.ENTRIES
            if e.family == family and (modules is None or e.module in modules)]
    if not rows:
        raise ValueError(f"no entries of family {family!r} in modules {modules}")
    return "\n".join(HEADER + rows)


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
    def replace(match):
        modules = match.group(2).split(",") if match.group(2) else None
        return table(match.group(1), modules)

    return _TABLE.sub(replace, markdown).replace(_VERSION, version())
