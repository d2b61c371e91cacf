"""policies/schema.json: a valid draft 2020-12 schema that agrees with the loader."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from policy_cases import BASE, CASES, EXAMPLE, ROOT, VALID

from featureguard.audit.sink import FSYNC_MODES as SINK_FSYNC_MODES
from featureguard.policy import (
    ACTIONS,
    FAIL_MODES,
    SCOPES,
    SEVERITIES,
    AuditSpec,
    FeatureSpec,
    Policy,
    PolicySet,
    SAESpec,
    SteerSpec,
    SuppressSpec,
)
from featureguard.policy.model import (
    FSYNC_MODES,
    SUPPRESS_METHODS,
    SUPPRESS_MODES,
    CalibrationSpec,
    RotateSpec,
    TraceSpec,
)

SCHEMA = json.loads((ROOT / "policies" / "schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

# Malformed cases the schema cannot reject, and why: they need the YAML text itself, or compare
# values across items. The loader rejects every one of them (tests/policy/test_load.py).
LOADER_ONLY = {
    "threshold-nan": "JSON has no NaN, and NaN passes any numeric bound",
    "weight-nan": "JSON has no NaN, and NaN passes any numeric bound",
    "index-whole-float": "JSON Schema counts 12.0 as an integer",
    "undefined-sae": "a reference from one part of the document to another",
    "duplicate-index": "uniqueness of one property across list items",
    "duplicate-policy-name": "uniqueness of one property across list items",
    "duplicate-yaml-key": "a YAML parser keeps the last of duplicate keys",
    "duplicate-sae-name": "a YAML parser keeps the last of duplicate keys",
    "bad-yaml": "not YAML at all",
    "tab-indent": "not YAML at all",
    "two-documents": "not one YAML document",
    "unknown-tag": "a YAML tag: the parser refuses it before a schema sees any data",
    "merge-key": "YAML merge keys are resolved by the parser",
}

# Each object of the schema, the dataclass it becomes, and the fields that are not YAML keys.
OBJECTS = [
    (SCHEMA, PolicySet, {"file", "where"}),
    (SCHEMA["$defs"]["sae"], SAESpec, {"name", "where"}),
    (SCHEMA["$defs"]["feature"], FeatureSpec, {"where"}),
    (SCHEMA["$defs"]["policy"], Policy, {"where"}),
    (SCHEMA["$defs"]["suppress"], SuppressSpec, {"where"}),
    (SCHEMA["$defs"]["steer"], SteerSpec, {"where"}),
    (SCHEMA["$defs"]["audit"], AuditSpec, {"where"}),
    (SCHEMA["$defs"]["calibration"], CalibrationSpec, {"where"}),
    (SCHEMA["$defs"]["trace"], TraceSpec, {"where"}),
    (SCHEMA["$defs"]["rotate"], RotateSpec, {"where"}),
]


def _parse(text: str) -> Any:
    return yaml.safe_load(text)


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside `node` (a schema or a document), `node` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _subschemas(value)


def test_schema_is_valid_draft_2020_12() -> None:
    """The schema itself validates against the draft 2020-12 metaschema."""
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_schema_enums_equal_the_python_tuples() -> None:
    """The schema's enums list exactly the values the loader accepts."""
    defs, top = SCHEMA["$defs"], SCHEMA["properties"]
    assert tuple(defs["policy"]["properties"]["action"]["enum"]) == ACTIONS
    assert tuple(defs["policy"]["properties"]["scope"]["enum"]) == SCOPES
    assert tuple(defs["policy"]["properties"]["severity"]["enum"]) == SEVERITIES
    assert tuple(top["fail_mode"]["enum"]) == FAIL_MODES
    assert tuple(defs["suppress"]["properties"]["method"]["enum"]) == SUPPRESS_METHODS
    assert tuple(defs["suppress"]["properties"]["mode"]["enum"]) == SUPPRESS_MODES
    assert tuple(defs["audit"]["properties"]["fsync"]["enum"]) == FSYNC_MODES == SINK_FSYNC_MODES


def test_every_object_forbids_additional_properties() -> None:
    """Every object in the schema sets additionalProperties to false."""
    objects = [s for s in _subschemas(SCHEMA) if s.get("type") == "object"]
    assert len(objects) == len(OBJECTS) + 1  # the saes mapping is an object too
    assert all(s.get("additionalProperties") is False for s in objects)


@pytest.mark.parametrize(
    ("schema", "cls", "extra"), OBJECTS, ids=lambda x: getattr(x, "__name__", "")
)
def test_schema_keys_and_defaults_match_the_dataclass(schema: dict, cls: type, extra: set) -> None:
    """Each schema object has one key per dataclass field, with the same default."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in extra}
    assert set(schema["properties"]) == set(fields)
    for name, spec in schema["properties"].items():
        default = fields[name].default
        if "default" in spec:
            assert spec["default"] == default, name
        elif name != "version":  # required in a file, defaulted for objects built in code
            assert default is dataclasses.MISSING or default is None, name


@pytest.mark.parametrize("text", [VALID, BASE, EXAMPLE.read_text(encoding="utf-8")])
def test_schema_accepts_valid_files(text: str) -> None:
    """Files the loader accepts are accepted by the schema too."""
    assert [e.message for e in VALIDATOR.iter_errors(_parse(text))] == []


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in LOADER_ONLY], ids=lambda c: c.id)
def test_schema_rejects_malformed_files(case: Any) -> None:
    """Each malformed file the schema can describe is rejected by it."""
    assert not VALIDATOR.is_valid(_parse(case.text))


@pytest.mark.parametrize("case", [c for c in CASES if c.id in LOADER_ONLY], ids=lambda c: c.id)
def test_loader_only_cases_are_listed_for_a_reason(case: Any) -> None:
    """Cases listed as loader-only do get past the schema (or are not even YAML for it)."""
    try:
        doc = _parse(case.text)
    except yaml.YAMLError:
        return
    assert VALIDATOR.is_valid(doc)


def test_loader_only_list_names_real_cases() -> None:
    """Every loader-only entry names a case of the malformed table."""
    assert set(LOADER_ONLY) <= {case.id for case in CASES}


def test_example_uses_every_key() -> None:
    """policies/example.yaml shows every key the schema defines."""
    doc = _parse(EXAMPLE.read_text(encoding="utf-8"))
    used = {key for node in _subschemas(doc) for key in node}  # every mapping of the example
    defined = {key for node in _subschemas(SCHEMA) for key in node.get("properties", {})}
    assert defined <= used, defined - used


def test_schema_is_referenced_by_the_example() -> None:
    """The example file points editors at the schema."""
    first = Path(EXAMPLE).read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema.json"
