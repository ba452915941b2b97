"""The manifest's contract: schemas/manifest.schema.json is generated from schemas.outputs.Manifest,
documents every field, and a run's manifest.json satisfies it, in the model's field order."""
import json
from pathlib import Path

import jsonschema
import pydantic
import pytest

from pipeline.run import run_curation
from schemas import outputs
from fixtures.shardmaker import make_pool


def test_manifest_json_schema_is_current():
    assert outputs.SCHEMA_FILE.read_text() == outputs.json_schema(), "run: python -m schemas.outputs"


def _properties(schema: dict):
    for name, sub in schema.get("$defs", {}).items():
        for field, spec in sub.get("properties", {}).items():
            yield f"{name}.{field}", spec
    for field, spec in schema["properties"].items():
        yield f"Manifest.{field}", spec


def test_every_manifest_field_is_documented():
    schema = json.loads(outputs.SCHEMA_FILE.read_text())
    undocumented = [name for name, spec in _properties(schema) if not spec.get("description")]
    assert undocumented == []


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    make_pool(root / "pool", n=30, per_shard=10, plant={2: "corrupt", 5: "dup"})
    tar = root / "pool" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:6000])  # broken: truncated
    m = run_curation(str(root / "pool"), root / "out", {"filters": [{"type": "exact_dedup"}]}, progress=False)
    return root, m


def test_a_runs_manifest_satisfies_the_schema_in_field_order(curated):
    root, m = curated
    text = (root / "out" / "manifest.json").read_text()
    data = json.loads(text)
    jsonschema.validate(data, json.loads(outputs.SCHEMA_FILE.read_text()))
    assert list(data) == list(outputs.Manifest.model_fields)
    assert outputs.Manifest.model_validate_json(text).to_json() == text
    assert [b["shard"] for b in data["broken_shards"]] == [str(root / "pool" / "00001.tar")]
    assert {"exact_dedup": 1, "format": 1}.items() <= data["dropped_by_reason"].items()  # planted
    assert m["kept"] == data["kept"] and m["report"] == str(Path(m["root"]) / "report.html")


def test_a_manifest_that_breaks_the_contract_is_refused(curated):
    root, _ = curated
    data = json.loads((root / "out" / "manifest.json").read_text())
    with pytest.raises(pydantic.ValidationError, match="kept"):
        outputs.Manifest.model_validate({**data, "kept": -1})
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        outputs.Manifest.model_validate({**data, "surprise": 1})


def test_a_shard_job_returns_a_typed_result(tmp_path):
    from pipeline.run import annotate_job

    make_pool(tmp_path / "pool", n=4, per_shard=4)
    r = annotate_job((str(tmp_path / "pool" / "00000.tar"), str(tmp_path / "work"), [], False, [], {}, []))
    assert isinstance(r, outputs.ShardResult)
    assert (r.shard, r.rows, r.info.samples_found, r.info.error, r.ran) == ("00000", 4, 4, None, ["ingest", "thumbs"])
