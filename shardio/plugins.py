"""Plug-ins from other installed packages, through Python entry points (as pytest and Prefect find
theirs): a package declares, in its ``pyproject.toml``,

    [project.entry-points."curate.filters"]
    no_digits = "my_package.filters"              # a module: its Filter subclasses with a ``type``
    [project.entry-points."curate.stages"]
    caption_chars = "my_package.stages:CaptionChars"   # or one class
    [project.entry-points."curate.objectives"]
    rotnet = "my_package.rotnet:RotNet"            # an Objective subclass with a ``Config``

and, once installed where curate runs (every Dask or Prefect worker too), its filters and stages are
used like the built-in ones (by ``type`` in a config: pipeline/filters, pipeline/stages), its
objectives by ``curate train --objective NAME`` (training/objective.py). A plug-in that fails to
import or that clashes with a name already taken stops with an error naming the entry point and its
package: a config never silently runs another filter than the one it names. Runs record each
plug-in they used with its package's version (the manifest's ``plugins``, a training's result).
"""
from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any

GROUPS = {"filters": "curate.filters", "stages": "curate.stages", "objectives": "curate.objectives"}


_ORIGIN: dict[type, dict[str, str]] = {}  # plug-in class -> its entry point, package and version


def origin(cls: type) -> dict[str, str] | None:
    """Where a plug-in class came from (None for a built-in one)."""
    return _ORIGIN.get(cls)


class PluginError(ValueError):
    """An installed plug-in that cannot be used; the message names it and what is wrong."""


def _where(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"plug-in {ep.name!r} = {ep.value!r} (group {ep.group!r}, package {dist.name if dist else '?'!r})"


def classes(group: str, base: type) -> list[tuple[type, str, bool]]:
    """(class, where it came from, named directly) for each ``base`` subclass the ``group``'s entry
    points name: a class (named directly: it must be usable), or every subclass a named module defines
    (a registry skips those that declare nothing, e.g. a shared base class)."""
    out: list[tuple[type, str, bool]] = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
        where = _where(ep)
        try:
            obj: Any = ep.load()
        except Exception as e:  # noqa: BLE001 - any import failure becomes one error naming the plug-in
            raise PluginError(f"{where} could not be loaded: {type(e).__name__}: {e} "
                              "(fix or uninstall that package)") from e
        if inspect.ismodule(obj):
            found = [v for v in vars(obj).values()
                     if isinstance(v, type) and issubclass(v, base) and v is not base and v.__module__ == obj.__name__]
            if not found:
                raise PluginError(f"{where}: module {obj.__name__} defines no {base.__name__} subclass")
        elif isinstance(obj, type) and issubclass(obj, base):
            found = [obj]
        else:
            raise PluginError(f"{where} names {obj!r}, which is not a {base.__name__} subclass or a module")
        dist = getattr(ep, "dist", None)
        for cls in found:
            if any(c is cls for c, _, _ in out):
                continue  # one class named twice (a module and its class, or one package on two paths)
            _ORIGIN[cls] = {"entry_point": ep.name, "package": dist.name if dist else "?",
                            "version": dist.version if dist else "?"}
            out.append((cls, where, not inspect.ismodule(obj)))
    return out
