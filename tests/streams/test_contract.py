"""The contract's JSON Schemas (streams/contract.py): the shipped files are the models'
schemas; a JSON Schema validator (jsonschema, independent of pydantic) agrees with the
workers' own decoding on a catalogue of good and hostile transactions and labels; what the
pipeline writes validates; the docs' examples validate; `vigil schema` prints them."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from tests.reference import wire
from vigil.apps.cli import app
from vigil.streams.contract import JSON_TOPICS, NOT_JSON, json_schema, shipped_schema
from vigil.streams.currency import default_rates
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import (
    DLQ_REASONS,
    DeadLetter,
    Label,
    RawRecord,
    decode_transactions,
)
from vigil.streams.topics import CONTRACT_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def validator(suffix: str) -> Draft202012Validator:
    return Draft202012Validator(shipped_schema(suffix))


def test_the_shipped_files_are_the_models_schemas_and_valid_json_schema():
    folder = resources.files("vigil.streams").joinpath("jsonschema")
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    assert shipped == sorted(f"vigil.{s}.json" for s in JSON_TOPICS)
    for suffix in JSON_TOPICS:
        assert shipped_schema(suffix) == json_schema(suffix), (
            f"vigil.{suffix}: regenerate with `vigil schema --out streams/jsonschema`"
        )
        Draft202012Validator.check_schema(shipped_schema(suffix))
    # every contract topic has a schema, or is said not to be JSON
    assert {t.suffix for t in CONTRACT_TOPICS} == set(JSON_TOPICS) | set(NOT_JSON)


GOOD = wire("t1", "a1", "c1", 0, 12.5) | {"device_id": "d-1", "merchant_category": "5411"}
HOSTILE = [
    {},
    GOOD | {"amount": 0},
    GOOD | {"amount": -1},
    GOOD | {"amount": 1e15},
    GOOD | {"amount": 1.0000001e15},
    GOOD | {"amount": 5e-324},
    GOOD | {"amount": "12.5"},
    GOOD | {"amount": True},
    GOOD | {"amount": None},
    GOOD | {"amount": 12},
    GOOD | {"ts_ms": 1_767_225_600},  # seconds
    GOOD | {"ts_ms": 946_684_800_000},
    GOOD | {"ts_ms": 946_684_799_999},
    GOOD | {"ts_ms": 4_102_444_800_000},
    GOOD | {"ts_ms": "1767225600000"},
    GOOD | {"ts_ms": 10**30},
    GOOD | {"tx_id": ""},
    GOOD | {"tx_id": "x" * 128},
    GOOD | {"tx_id": "x" * 129},
    GOOD | {"tx_id": 7},
    GOOD | {"account_id": "é" * 128},
    GOOD | {"currency": "eur"},
    GOOD | {"currency": "EURO"},
    GOOD | {"currency": "EU\n"},
    GOOD | {"country": "DEU"},
    GOOD | {"country": "D\u0415"},  # a Cyrillic E
    GOOD | {"channel": "fax"},
    GOOD | {"channel": "CARD"},
    GOOD | {"device_id": None, "merchant_category": None},
    GOOD | {"device_id": {"nested": [1, {"deep": True}]}},
    GOOD | {"device_id": 42},
    GOOD | {"extra": {"anything": [1, 2, 3]}},
    {k: v for k, v in GOOD.items() if k != "counterparty_id"},
    {k: v for k, v in GOOD.items() if k not in ("device_id", "merchant_category")},
]


@pytest.mark.parametrize("doc", [GOOD, *HOSTILE], ids=lambda d: json.dumps(d)[:60])
def test_the_transaction_schema_accepts_exactly_what_the_workers_accept(doc):
    text = json.dumps(doc).encode()
    valid, _dead = decode_transactions([RawRecord("t", 0, 0, b"k", text)], now_ms=0)
    assert validator("transactions").is_valid(doc) == bool(valid)


def test_what_the_schema_cannot_tell_is_written_in_it():
    # JSON Schema reads 1767225600000.0 as an integer; the workers do not (strict): the
    # schema says so in words
    doc = GOOD | {"ts_ms": 1_767_225_600_000.0}
    valid, _dead = decode_transactions([RawRecord("t", 0, 0, b"k", json.dumps(doc).encode())], 0)
    assert not valid and validator("transactions").is_valid(doc)
    ts = shipped_schema("transactions")["properties"]["ts_ms"]
    assert "not 1767225600000.0" in ts["description"]


@pytest.mark.parametrize(
    "doc",
    [
        {"tx_id": "t1", "label": 1, "ts_ms": 1_767_225_600_000},
        {"tx_id": "t1", "label": 0, "typology": None, "ts_ms": 1_767_225_600_000, "x": 1},
        {"tx_id": "t1", "label": 2, "ts_ms": 1_767_225_600_000},
        {"tx_id": "t1", "label": True, "ts_ms": 1_767_225_600_000},
        {"tx_id": "t1", "label": "1", "ts_ms": 1_767_225_600_000},
        {"tx_id": "", "label": 1, "ts_ms": 1_767_225_600_000},
        {"tx_id": "t1", "label": 1},
        {"tx_id": "t1", "label": 1, "ts_ms": 5},
    ],
)
def test_the_label_schema_accepts_exactly_what_the_model_accepts(doc):
    try:
        Label.model_validate_json(json.dumps(doc))
        accepted = True
    except ValueError:
        accepted = False
    assert validator("labels").is_valid(doc) == accepted


def test_what_the_pipeline_writes_validates_against_its_topics_schemas():
    pipeline = RiskPipeline(default_ruleset(RULE_NAMES), rates=default_rates())
    txs = [wire(f"t{i}", "a1", f"c{i % 3}", i, 600_000.0 * (i % 2) + 10) for i in range(12)]
    records = [
        RawRecord("vigil.transactions", 0, i, b"a1", json.dumps(t).encode())
        for i, t in enumerate(txs)
    ]
    records.append(RawRecord("vigil.transactions", 0, 12, b"a1", b"{not json"))
    result = pipeline.process_local(records, {})
    scores = [json.loads(v) for _k, v in result.scores]
    alerts = [json.loads(v) for _k, v in result.alerts]
    dead = [json.loads(v) for _k, v in result.dead]
    assert len(scores) == 12 and alerts and len(dead) == 1
    for suffix, docs in (("risk.scores", scores), ("risk.alerts", alerts), ("dlq", dead)):
        for doc in docs:
            errors = list(validator(suffix).iter_errors(doc))
            assert not errors, (suffix, errors[0].message)


def test_every_dead_letter_reason_is_in_the_schema_and_no_other():
    reason = shipped_schema("dlq")["properties"]["reason"]
    assert set(reason["enum"]) == set(DLQ_REASONS)
    letter = DeadLetter.of(RawRecord("t", 0, 1, None, b"x"), "bad", 0, "invalid")
    doc = json.loads(letter.model_dump_json())
    assert validator("dlq").is_valid(doc)
    assert not validator("dlq").is_valid(doc | {"reason": "because"})


def test_the_shipped_ruleset_and_rates_table_validate():
    import yaml

    rules = resources.files("vigil.streams.rules").joinpath("rulesets")
    for path in rules.iterdir():
        if path.name.endswith(".yaml"):
            assert validator("rules").is_valid(yaml.safe_load(path.read_text())), path.name
    rates = resources.files("vigil.streams.rates").joinpath("reference.yaml")
    assert validator("rates").is_valid(yaml.safe_load(rates.read_text()))


def test_the_readmes_and_docs_example_transactions_validate():
    examples = []
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        examples += re.findall(r"'(\{\"tx_id\".*?\})'", doc.read_text())
    assert examples, "no example transaction found in the docs"
    for text in examples:
        errors = list(validator("transactions").iter_errors(json.loads(text)))
        assert not errors, (text, errors[0].message)


def test_vigil_schema_prints_one_or_all_and_writes_files(tmp_path):
    runner = CliRunner()
    one = runner.invoke(app, ["schema", "transactions"])
    assert one.exit_code == 0 and json.loads(one.stdout) == json_schema("transactions")
    namespaced = runner.invoke(app, ["schema", "prod.risk.alerts"])
    assert json.loads(namespaced.stdout)["title"] == "vigil.risk.alerts"
    every = json.loads(runner.invoke(app, ["schema"]).stdout)
    assert set(every) == {f"vigil.{s}" for s in JSON_TOPICS}
    frames = runner.invoke(app, ["schema", "frames"])
    assert frames.exit_code == 2 and "no JSON Schema" in frames.output
    unknown = runner.invoke(app, ["schema", "trades"])
    assert unknown.exit_code == 2 and "vigil.trades" in unknown.output
    written = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert written.exit_code == 0
    for suffix in JSON_TOPICS:
        assert json.loads((tmp_path / f"vigil.{suffix}.json").read_text()) == json_schema(suffix)
