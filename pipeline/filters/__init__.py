"""The filter registry: every module in this package that defines a ``Filter`` subclass with a
``type`` is a filter. A new filter is one file here (and its test)."""
from __future__ import annotations

import importlib
import pkgutil
import typing

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
        _REGISTRY = dict(sorted(found.items()))
    return _REGISTRY


_REGISTRY: dict[str, type[Filter]] | None = None
