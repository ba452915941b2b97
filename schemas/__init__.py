"""The project's contracts: metadata columns (columns.json), the curation config (config.py) and what a
run hands back (outputs.py: the manifest, a shard job's result)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).parent
TYPES = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64(),
          "bool": pa.bool_(), "list<string>": pa.list_(pa.string())}


@lru_cache(maxsize=None)
def columns() -> dict[str, dict]:
    return json.loads((HERE / "columns.json").read_text())["columns"]


def arrow_type(name: str) -> pa.DataType:
    """Arrow type of a declared column; extra score columns ``clip_score_<tag>`` are clip_score's type."""
    if name in columns():
        return TYPES[columns()[name]["type"]]
    if name.startswith("clip_score_"):
        return TYPES[columns()["clip_score"]["type"]]
    raise KeyError(f"column {name!r} is not declared in schemas/columns.json")


def table(rows: dict[str, list], names: list[str]) -> pa.Table:
    """Build an Arrow table whose columns have their declared types (fails on undeclared ones)."""
    return pa.table({n: pa.array(rows[n], type=arrow_type(n)) for n in names})


def validate(tbl: pa.Table) -> None:
    """Raise ValueError naming each column whose type differs from the contract."""
    bad = []
    for field in tbl.schema:
        try:
            want = arrow_type(field.name)
        except KeyError:
            continue  # extra columns (scores from user metadata) are allowed
        if field.type != want:
            bad.append(f"{field.name}: {field.type} (declared {want})")
    if bad:
        raise ValueError("metadata columns do not match schemas/columns.json: " + "; ".join(bad))
