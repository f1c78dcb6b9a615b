"""A griffe extension: jaxloss's docstrings are written in reStructuredText roles and
directives (as optax's are) inside Google sections; mkdocstrings renders Markdown. This
rewrites each docstring, before it is parsed, into what the site renders:

- ``.. math::`` blocks become ``$$ ... $$`` (KaTeX, through pymdownx.arithmatex);
- ``:math:`x``` becomes ``\\(x\\)``;
- ``:func:``, ``:class:``, ``:data:``, ``:mod:`` become cross-references (autorefs);
  a private target (a ``_`` name) stays code, since the reference does not render it;
- a literal block after ``::`` becomes a fenced Python block;
- ```text <url>`_`` links become Markdown links.

It also warns (so fails the strict build) for a public function or class, one named in
a public module's ``__all__``, without a docstring.

Only the rendering changes: the package's docstrings stay as they are.
"""

from __future__ import annotations

import logging
import re

import griffe

# Under the "mkdocs" logger, so that `mkdocs build --strict` counts its warnings.
log = logging.getLogger("mkdocs.plugins.jaxloss")

_ROLE = re.compile(r":(func|class|data|mod|meth|attr|exc|obj):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>`]+)>`__?", re.S)
_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines after ``start`` indented deeper than ``base`` (blank lines included,
    trailing ones not), and the index after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    block = lines[start:end]
    depth = min((_indent(line) for line in block if line.strip()), default=base)
    return [line[depth:] if line.strip() else "" for line in block], end


def _blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            pad = directive.group(1)
            body, i = _block(lines, i + 1, len(pad))
            body = [directive.group(2)] + body if directive.group(2) else body
            out += ["", pad + "$$", *(pad + b if b else "" for b in body), pad + "$$", ""]
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            pad = " " * _indent(line)
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(head + ":")
            body, i = _block(lines, i + 1, len(pad))
            if any(b.strip() for b in body):
                while body and not body[0].strip():
                    body.pop(0)
                out += ["", pad + "```python", *(pad + b if b else "" for b in body),
                        pad + "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _role(module: str):
    def replace(match: re.Match[str]) -> str:
        _, short, target = match.groups()
        target = target.strip().rstrip("()")
        text = target.rsplit(".", 1)[-1] if short else target
        if any(part.startswith("_") for part in target.split(".")):
            return f"`{text}`"
        path = target if target.startswith("jaxloss") else f"{module}.{target}"
        return f"[`{text}`][{path}]"

    return replace


def to_markdown(text: str, module: str = "jaxloss") -> str:
    """``text``, a docstring of an object of ``module``, in Markdown."""
    text = _blocks(text)
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    text = _ROLE.sub(_role(module), text)
    return _LINK.sub(lambda m: f"[{' '.join(m.group(1).split())}]({m.group(2)})", text)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, node, obj: griffe.Object, agent, **kwargs) -> None:
        if obj.docstring is not None and obj.path.startswith("jaxloss"):
            module = obj.module.path if not obj.is_module else obj.path
            obj.docstring.value = to_markdown(obj.docstring.value, module)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for module in [pkg, *_public_modules(pkg)]:
            for name in module.exports or ():
                member = module.get_member(str(name))
                try:
                    target = member.final_target if member.is_alias else member
                except griffe.AliasResolutionError:
                    continue  # defined outside the package
                if (target.is_function or target.is_class) and not target.docstring:
                    log.warning(f"{module.path}.{name}: public, without a docstring")


def _public_modules(module: griffe.Module):
    for child in module.modules.values():
        if not child.is_alias and not child.name.startswith("_"):
            yield child
            yield from _public_modules(child)
