"""Griffe extensions for the API reference: render the library's docstrings as the sources intend them.

The docstrings are Google style with two habits that griffe reads differently:

* doctests are titled ``Example:`` (Google style allows the singular), but griffe only recognises ``Examples:``
  as an examples section and renders ``Example:`` as an admonition of Markdown text, where ``>>>`` lines become
  nested block quotes and ``x["a"]["b"]`` looks like a reference link;
* cross-references use Sphinx roles (``:class:`~panoptic.structures.PanopticResult```), which Markdown shows
  verbatim.

The extensions fix both at load time, without touching the sources: the title is renamed, and each role
becomes an optional cross-reference (a link when the target is rendered somewhere in the site, plain code
otherwise, never a build warning).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.M)
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)`")


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each module, class, function and attribute once it is loaded."""
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(r"\1Examples:", obj.docstring.value)


class SphinxRoles(griffe.Extension):
    """Turn Sphinx roles into optional mkdocs-autorefs cross-references, resolved against the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the package once all its modules are loaded (targets can be anywhere)."""
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: _reference(m, o), obj.docstring.value)

    # griffe < 2 names the same event on_package_loaded; the rewrite is idempotent.
    on_package_loaded = on_package


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:  # imported names are documented where they are defined
            yield from _walk(member)


def _reference(match: re.Match[str], obj: griffe.Object) -> str:
    short, name = match[1] == "~", match[2]
    text = name.rsplit(".", 1)[-1] if short else name
    path = _resolve(name, obj)
    if path is None:
        return f"`{text}`"
    return f'<autoref identifier="{path}" optional><code>{text}</code></autoref>'


def _resolve(name: str, obj: griffe.Object) -> str | None:
    """Canonical path of ``name`` seen from ``obj``: absolute, or relative to ``obj`` and its parents."""
    collection = obj.modules_collection
    scopes: list[str] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    for candidate in [name, *(f"{s}.{name}" for s in scopes)]:
        try:
            target = collection.get_member(candidate)
            return target.final_target.path if target.is_alias else target.path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None
