"""The wire contract as JSON Schema (draft 2020-12): one schema per topic whose values are
JSON, generated from the pydantic models that the workers validate with and write from.

``vigil schema [TOPIC]`` prints them; the package ships them as files
(``vigil/streams/jsonschema/vigil.<topic>.json``, kept equal to the models by a
test) for clients
that validate before they publish, and ``vigil topics`` registers them with a schema
registry when ``VIGIL_SCHEMA_REGISTRY_URL`` is set.

``vigil.frames`` carries an encoded image (its metadata in Kafka headers) and
``vigil.models`` signed binary chunks: neither is JSON, neither has a schema here.

>>> json_schema("transactions")["required"][:3]
['tx_id', 'ts_ms', 'account_id']
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pydantic import BaseModel

from vigil.errors import NotFoundError
from vigil.streams.currency import RatesDocument
from vigil.streams.rules.ruleset import RulesetDocument
from vigil.streams.schemas import (
    Alert,
    DeadLetter,
    InspectionAlert,
    Label,
    ScoreRecord,
    Transaction,
)

__all__ = ["JSON_TOPICS", "NOT_JSON", "json_schema", "shipped_schema", "schema_file_name"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# topic suffix -> the model its values are (what producers send, what Vigil writes)
JSON_TOPICS: dict[str, type[BaseModel]] = {
    "transactions": Transaction,
    "labels": Label,
    "risk.scores": ScoreRecord,
    "risk.alerts": Alert,
    "inspection.alerts": InspectionAlert,
    "dlq": DeadLetter,
    "rules": RulesetDocument,
    "rates": RatesDocument,
}
NOT_JSON = {
    "frames": "an encoded image (raw, PNG or JPEG) with its metadata in Kafka headers "
    "(docs/wire-contract.md)",
    "models": "signed, chunked binary model releases (docs/releases.md)",
}
# checked by code, not expressible in the schema
CODE_ONLY = {
    "rules": "the rule expressions, one of score or bands per rule, list sizes: `vigil rules "
    "validate` checks them all",
    "rates": "positive finite rates, the base currency at 1: `vigil rates validate` checks "
    "them all",
}


def json_schema(suffix: str) -> dict[str, Any]:
    """The JSON Schema of ``vigil.<suffix>`` values (the contract's namespace, ``vigil``)."""
    try:
        model = JSON_TOPICS[suffix]
    except KeyError:
        raise NotFoundError(_unknown(suffix)) from None
    schema = model.model_json_schema(mode="validation")
    topic = f"vigil.{suffix}"
    doc = schema.pop("description", None) or ""
    notes = f" Also checked by code: {CODE_ONLY[suffix]}." if suffix in CODE_ONLY else ""
    schema.pop("title", None)
    return {
        "$schema": DIALECT,
        "$id": f"urn:vigil:contract:v1:{topic}",
        "title": topic,
        "description": " ".join(doc.replace("``", "`").split()) + notes,
        **schema,
    }


def schema_file_name(suffix: str) -> str:
    return f"vigil.{suffix}.json"


def shipped_schema(suffix: str) -> dict[str, Any]:
    """The schema file the package ships for ``vigil.<suffix>``."""
    if suffix not in JSON_TOPICS:
        raise NotFoundError(_unknown(suffix))
    path = resources.files("vigil.streams").joinpath("jsonschema", schema_file_name(suffix))
    return json.loads(path.read_text())


def _unknown(suffix: str) -> str:
    if suffix in NOT_JSON:
        return f"vigil.{suffix} carries {NOT_JSON[suffix]}: no JSON Schema"
    return f"no topic vigil.{suffix} in the contract; one of {', '.join(JSON_TOPICS)}"
