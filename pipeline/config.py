"""The curation config: scorers (schemas/config.py), the filters of pipeline/filters/, export settings.

A config file (YAML or JSON) or a preset name (``basic``, ``datacomp/basic``, ``laion-subset``) is
validated here; errors name the field and what is wrong. ``schemas/curate_config.schema.json`` is the
JSON Schema of this model (``python -m pipeline.config`` rewrites it; a test checks it is current).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, model_validator

import schemas
from pipeline.filters import Filter, registry
from pipeline.stages import configurable
from schemas.config import ClipModel, CurateBase
from shardio import plugins

PRESETS = Path(__file__).resolve().parent / "presets"  # shipped in the wheel; ``configs/`` links here

FilterSpec = Annotated[Union[tuple(registry().values())], Field(discriminator="type")]  # type: ignore[misc]
StageSpec = Annotated[Union[tuple(c.Config for c in configurable().values())],  # type: ignore[misc]
                      Field(discriminator="type")]
BUILTIN_FOLDERS = ("ingest", "thumbs", "lang")


class CurateConfig(CurateBase):
    filters: list[FilterSpec] = Field(default_factory=list,  # type: ignore[valid-type]
                                      description="applied in order; unusable samples always drop first")
    stages: list[StageSpec] = Field(default_factory=list,  # type: ignore[valid-type]
                                    description="more per-shard stages (pipeline/stages/), e.g. a head: "
                                                "{type: head, name: aesthetic, weights: head.safetensors}")
    # credentials: left out of model_dump (so of the manifest, the config hash and the log) and of repr
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, exclude=True, repr=False,
        description="per URL scheme (s3, gs, az, https): fsspec filesystem options for pools in object storage "
                    "(endpoint_url, key, secret, profile, anon, client_kwargs, ...); never written to the "
                    "manifest or the log")

    @property
    def needs_languages(self) -> bool:
        return self.languages or any(f.needs_languages() for f in self.filters)

    def embedding_columns(self) -> list[str]:
        """Scorer columns whose embeddings a filter or a stage reads (not only the scores)."""
        cols = {c for f in self.filters if f.reads_embeddings for c in f.scorer_columns()}
        cols.update(c for spec in self.stages for c in getattr(spec, "scorer_columns", lambda: [])())
        return sorted(cols)

    def plugins(self) -> list[dict[str, str]]:
        """The config's filters and stages that come from installed plug-ins, each with its package's
        name and version (the manifest records them)."""
        by_type = configurable()
        used = [("filter", f.type, type(f)) for f in self.filters] + [("stage", s.type, by_type[s.type])
                                                                     for s in self.stages]
        out: dict[tuple[str, str], dict[str, str]] = {}
        for kind, t, cls in used:
            if (o := plugins.origin(cls)) is not None:
                out.setdefault((kind, t), {"kind": kind, "type": t, "qualname": f"{cls.__module__}.{cls.__qualname__}",
                                           **o})
        return list(out.values())

    def stage_columns(self) -> dict[str, str]:
        """Columns the configured stages write -> arrow type (export checks them against these)."""
        by_type = configurable()
        return {c: t for spec in self.stages for c, t in by_type[spec.type](spec).out_columns().items()}

    @model_validator(mode="after")
    def _needs(self):
        provided = {c.column: c for c in self.clip}
        if len(provided) != len(self.clip):
            raise ValueError("two clip scorers write the same column; give each its own 'column'")
        self._check_stages(provided)
        names: dict[str, Filter] = {}
        for f in self.filters:
            if f.instance in names:
                raise ValueError(f"two filters are both named {f.instance!r}; give one of them a 'name:'")
            names[f.instance] = f
            for col in f.scorer_columns():
                if col not in provided:
                    raise ValueError(f"filter {f.instance!r} needs column {col!r}, but no clip scorer writes it "
                                     f"(scorers write: {sorted(provided) or 'nothing'})")
                if f.needs_model and not provided[col].model:
                    raise ValueError(f"filter {f.instance!r} embeds new images/prompts: scorer {col!r} needs a "
                                     "'model' (the weights that made the precomputed embeddings)")
            for col in getattr(f, "stage_columns", lambda: [])():
                if col not in self.stage_columns():
                    raise ValueError(f"filter {f.instance!r} reads column {col!r}, but no stage writes it "
                                     f"(stages write: {sorted(self.stage_columns()) or 'nothing'})")
        return self

    def _check_stages(self, provided: dict) -> None:
        by_type = configurable()
        taken = set(BUILTIN_FOLDERS) | set(provided) | set(schemas.columns())
        for spec in self.stages:
            st = by_type[spec.type](spec)
            for name in {st.folder, *st.out_columns()}:
                if name in taken:
                    raise ValueError(f"stage {st.folder!r}: {name!r} is taken (a built-in stage, a scorer column, "
                                     "a core column or another stage); give it another 'name'")
                taken.add(name)
            for col in getattr(spec, "scorer_columns", lambda: [])():
                if col not in provided:
                    raise ValueError(f"stage {st.folder!r} reads scorer {col!r}'s embeddings, but no clip scorer "
                                     f"writes it (scorers write: {sorted(provided) or 'nothing'})")


def presets() -> dict[str, Path]:
    """Preset name -> file: ``laion-subset``, ``datacomp/basic`` (also plain ``basic``)."""
    out: dict[str, Path] = {}
    for p in sorted(PRESETS.rglob("*.yaml")):
        name = p.relative_to(PRESETS).with_suffix("").as_posix()
        out.setdefault(name, p)
    for name, p in list(out.items()):
        out.setdefault(p.stem, p)  # a short name where it is unambiguous enough (datacomp/basic -> basic)
    return out


def resolve(source: str | Path) -> Path:
    """A config path, or a preset name; a clear error listing the presets otherwise."""
    path = Path(source)
    if path.is_file():
        return path
    found = presets().get(str(source).removesuffix(".yaml"))
    if found is not None:
        return found
    if path.exists():
        raise ValueError(f"config {path} is not a file")
    names = sorted(n for n in presets() if "/" in n or n in ("laion-subset", "no-filter"))
    raise ValueError(f"config file {path} does not exist, and it is no preset name (presets: {', '.join(names)})")


def load_config(source: str | Path | dict) -> CurateConfig:
    """Load and validate a config from a file, a preset name or a dict; raise ValueError in plain words."""
    if isinstance(source, dict):
        data, where = source, "config"
    else:
        path = resolve(source)
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - a parse error becomes one readable line
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ValueError(f"config {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}{at}: "
                             f"{getattr(e, 'problem', None) or e}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must be a mapping of settings, not {type(data).__name__}")
        where = str(path)
    try:
        return CurateConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"invalid curation config {where}:\n" + "\n".join(lines)) from None


SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "curate_config.schema.json"


def json_schema() -> str:
    return json.dumps(CurateConfig.model_json_schema(), indent=2) + "\n"


__all__ = ["ClipModel", "CurateConfig", "load_config", "presets", "resolve", "json_schema"]

if __name__ == "__main__":  # python -m pipeline.config: rewrite the schema file
    SCHEMA_FILE.write_text(json_schema())
