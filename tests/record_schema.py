"""The decision record's JSON Schema (docs/decision-record.schema.json), as the tests apply it to
every record they see: whatever the proxy, DNS mode, explain or the audit writes must match the
documented contract."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "decision-record.schema.json"


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_record(record: dict[str, Any]) -> None:
    """Raise AssertionError, with every mismatch, if `record` is not a valid decision record."""
    # a record is checked as a reader sees it: after a JSON round trip
    seen = json.loads(json.dumps(record, default=str))
    errors = sorted(validator().iter_errors(seen), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise AssertionError("record does not match docs/decision-record.schema.json:\n" + "\n".join(lines))
