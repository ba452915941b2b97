"""The filter registry: every module in this package that defines a ``Filter`` subclass with a
``type`` is a filter. A new filter is one file here (and its test), or a class in another installed
package named by a ``curate.filters`` entry point (shardio/plugins.py)."""
from __future__ import annotations

import importlib
import pkgutil
import typing

import schemas
from shardio import plugins
from pipeline.filters.base import Context, Filter, Result

__all__ = ["Context", "Filter", "Result", "registry"]


def _type_of(cls: type[Filter]) -> str | None:
    field = cls.model_fields.get("type")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def registry() -> dict[str, type[Filter]]:
    """``type`` -> filter class, from every module of this package (imported once)."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, type[Filter]] = {}
        for mod in pkgutil.iter_modules(__path__):
            if mod.name == "base":
                continue
            m = importlib.import_module(f"{__name__}.{mod.name}")
            for obj in vars(m).values():
                if isinstance(obj, type) and issubclass(obj, Filter) and obj.__module__ == m.__name__:
                    t = _type_of(obj)
                    if t is None:
                        continue
                    if t in found:
                        raise TypeError(f"filter type {t!r} is defined twice: {found[t].__module__}, {m.__name__}")
                    found[t] = obj
        for cls, where, direct in plugins.classes(plugins.GROUPS["filters"], Filter):
            if direct or _type_of(cls) is not None:
                _add_plugin(found, cls, where)
        _REGISTRY = dict(sorted(found.items()))
    return _REGISTRY


def _add_plugin(found: dict[str, type[Filter]], cls: type[Filter], where: str) -> None:
    t = _type_of(cls)
    if t is None:
        raise plugins.PluginError(f"{where}: {cls.__name__} has no `type: Literal[\"...\"]` field")
    if t in found:
        raise plugins.PluginError(f"{where}: filter type {t!r} is taken by {found[t].__module__}; rename it")
    bad = {c: k for c, k in cls.outputs.items() if k not in schemas.TYPES}
    if bad:
        raise plugins.PluginError(f"{where}: {cls.__name__}.outputs has unknown types {bad} "
                                  f"(known: {', '.join(sorted(schemas.TYPES))})")
    found[t] = cls


_REGISTRY: dict[str, type[Filter]] | None = None
