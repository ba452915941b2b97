"""The stage registry: every module in this package that defines a ``Stage`` subclass with a ``name``
is a per-shard stage. A new per-sample score is one file here (see ``head.py``) and its test, or a
class in another installed package named by a ``curate.stages`` entry point (shardio/plugins.py).

``plan`` lists the stages a config runs, in order: ingest, thumbnails, language id, one per scorer,
then the configured ``stages:`` entries as listed. The per-shard pass (pipeline/annotate.py) reads
each tar once and feeds them; ``load_columns`` joins their columns in the same order.
"""
from __future__ import annotations

import importlib
import pkgutil
import typing

from shardio import plugins
from pipeline.stages.base import Batch, Needs, Source, Stage, check_columns, check_declaration

__all__ = ["Batch", "Needs", "Source", "Stage", "check_columns", "plan", "plan_for", "registry", "configurable"]


def registry() -> dict[str, type[Stage]]:
    """``name`` -> stage class, from every module of this package (imported once)."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, type[Stage]] = {}
        for mod in pkgutil.iter_modules(__path__):
            if mod.name == "base":
                continue
            m = importlib.import_module(f"{__name__}.{mod.name}")
            for obj in vars(m).values():
                if isinstance(obj, type) and issubclass(obj, Stage) and obj.__module__ == m.__name__ and obj.name:
                    if obj.name in found:
                        raise TypeError(f"stage {obj.name!r} is defined twice: {found[obj.name].__module__}, "
                                        f"{m.__name__}")
                    check_declaration(obj, obj.columns)
                    found[obj.name] = obj
        for cls, where, direct in plugins.classes(plugins.GROUPS["stages"], Stage):
            if direct or cls.name:
                _add_plugin(found, cls, where)
        _REGISTRY = found
    return _REGISTRY


def _add_plugin(found: dict[str, type[Stage]], cls: type[Stage], where: str) -> None:
    if not cls.name:
        raise plugins.PluginError(f"{where}: {cls.__name__} has no `name`")
    if cls.name in found:
        raise plugins.PluginError(f"{where}: stage name {cls.name!r} is taken by {found[cls.name].__module__}; "
                                  "rename it")
    if cls.Config is None:
        raise plugins.PluginError(f"{where}: {cls.__name__} has no `Config` (a plug-in stage runs where a "
                                  "config lists it under `stages:`, by its `type`)")
    taken = {_config_type(c): c for c in found.values() if c.Config is not None}
    t = _config_type(cls)
    if t is None or t in taken:
        raise plugins.PluginError(f"{where}: {cls.__name__}.Config needs a `type: Literal[\"...\"]` no other stage "
                                  f"uses ({'taken by ' + taken[t].__module__ if t in taken else 'none given'})")
    try:
        check_declaration(cls, cls.columns)
    except TypeError as e:
        raise plugins.PluginError(f"{where}: {e}") from None
    found[cls.name] = cls


_REGISTRY: dict[str, type[Stage]] | None = None


def _config_type(cls: type[Stage]) -> str | None:
    field = cls.Config.model_fields.get("type") if cls.Config is not None else None
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def configurable() -> dict[str, type[Stage]]:
    """Config ``type`` -> stage class, for the stages users list under ``stages:``."""
    return {t: cls for cls in registry().values() if (t := _config_type(cls)) is not None}


def plan(clip: list, languages: bool, configured: list = (), metadata: bool = False,
         embeddings: list[str] | None = None) -> list[Stage]:
    """The stages of a run: the built-in ones (each class's ``instances``), then the configured ones.
    ``embeddings``: the scorer columns whose embeddings the run reads (None: all of them)."""
    stages: list[Stage] = []
    builtin = sorted((c for c in registry().values() if c.Config is None), key=lambda c: c.order)
    for cls in builtin:
        stages.extend(cls.instances(clip, languages, metadata))
    if embeddings is not None:
        for st in stages:
            if hasattr(st, "embeddings"):
                st.embeddings = st.folder in embeddings
    by_type = configurable()
    stages.extend(by_type[c.type](c) for c in configured)
    return stages


def plan_for(config, metadata: bool = False) -> list[Stage]:
    """``plan`` for a curation config (pipeline/config.py)."""
    return plan(config.clip, config.needs_languages, config.stages, metadata, config.embedding_columns())
