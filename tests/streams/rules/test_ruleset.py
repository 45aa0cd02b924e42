"""Ruleset documents: compile, evaluate with bands and reasons, and precise rejections."""

import json

import numpy as np
import pytest

from vigil.streams.pipeline import RULE_NAMES
from vigil.streams.rules import RuleError, load_ruleset, parse_ruleset

DOC = {
    "ruleset": "test",
    "version": "7",
    "lists": {"high_risk": ["KP", "IR"]},
    "rules": [
        {
            "name": "risky_country",
            "typology": "high_risk_geography",
            "when": "country in lists.high_risk",
            "score": 0.6,
            "reason": "payment to {country} ({amount:.0f} {currency})",
        },
        {
            "name": "velocity",
            "typology": "velocity_spike",
            "when": "count_1h >= 3",
            "bands": [
                {"when": "count_1h >= 10", "score": 0.9},
                {"when": "count_1h >= 5", "score": 0.7},
                {"score": 0.4},
            ],
            "reason": "{count_1h:.0f} transactions in 1 h",
            "code": "VELOCITY",
        },
        {
            "name": "off",
            "typology": "x",
            "when": "amount > 0",
            "score": 1.0,
            "reason": "r",
            "enabled": False,
        },
    ],
}


def cols(**kw):
    n = len(next(iter(kw.values())))
    base = {
        "country": ["DE"] * n,
        "amount": [1.0] * n,
        "currency": ["EUR"] * n,
        "count_1h": [0.0] * n,
    }
    base.update(kw)
    return {
        k: np.array(v, dtype=object if isinstance(v[0], str) else float) for k, v in base.items()
    }, n


def test_bands_pick_the_first_match_and_reasons_render():
    rs = parse_ruleset(DOC, RULE_NAMES)
    assert (rs.name, rs.version, [r.name for r in rs.rules]) == (
        "test",
        "7",
        ["risky_country", "velocity"],
    )
    c, n = cols(
        count_1h=[0.0, 3.0, 5.0, 12.0, np.nan],
        country=["KP", "DE", "DE", "IR", "DE"],
        amount=[99.6, 1.0, 1.0, 5.0, 1.0],
    )
    out = rs.evaluate_batch(c, n)
    assert [[(f.rule, f.score) for f in row] for row in out] == [
        [("risky_country", 0.6)],
        [("velocity", 0.4)],
        [("velocity", 0.7)],
        [("risky_country", 0.6), ("velocity", 0.9)],
        [],
    ]
    assert out[0][0].detail == "payment to KP (100 EUR)" and out[0][0].code == "RISKY_COUNTRY"
    assert out[3][1].detail == "12 transactions in 1 h" and out[3][1].code == "VELOCITY"


def test_a_rule_whose_bands_do_not_cover_a_row_does_not_fire():
    doc = {
        **DOC,
        "rules": [
            {
                "name": "r",
                "typology": "t",
                "when": "amount > 0",
                "bands": [{"when": "amount > 10", "score": 0.5}],
                "reason": "x",
            }
        ],
    }
    c, n = cols(amount=[5.0, 50.0])
    assert [len(row) for row in parse_ruleset(doc, RULE_NAMES).evaluate_batch(c, n)] == [0, 1]


def rule(**over):
    """A one-rule document; a value of ... removes that key."""
    base = {"name": "r1", "typology": "t", "when": "amount > 1", "score": 0.5, "reason": "x"}
    merged = {k: v for k, v in {**base, **over}.items() if v is not ...}
    return {"ruleset": "s", "version": "1", "rules": [merged]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            rule(when="amout > 1"),
            "rule 'r1', field 'when': unknown name 'amout' (did you mean 'amount'?)",
        ),
        (rule(when="amount + 1"), "rule 'r1', field 'when': must be a condition, got num"),
        (rule(score=1.5), "rule 'r1', field 'score': Input should be less than or equal to 1"),
        (rule(scroe=0.5), "rule 'r1', field 'scroe': Extra inputs are not permitted"),
        (rule(bands=[{"score": 0.2}]), "give exactly one of 'score' or 'bands'"),
        (rule(name="Bad Name"), "field 'name': String should match pattern"),
        (rule(reason="{amount.__class__}"), "rule 'r1', field 'reason': bad placeholder"),
        (rule(reason="{nope}"), "bad placeholder {nope} (unknown name)"),
        (rule(reason="{amount:q}"), "format {amount:q}"),
        (rule(reason="{country!r}"), "bad placeholder"),
        (
            rule(score=..., bands=[{"when": "amount >", "score": 0.1}]),
            "field 'bands.0.when': expected a value",
        ),
        (
            {"ruleset": "s", "version": "1", "rules": []},
            "field 'rules': List should have at least 1",
        ),
        ({"version": "1", "rules": [rule()["rules"][0]]}, "field 'ruleset': Field required"),
        ("just text", "invalid ruleset"),
    ],
)
def test_invalid_rulesets_name_the_rule_and_the_field(doc, message):
    with pytest.raises(RuleError) as exc:
        parse_ruleset(doc, RULE_NAMES)
    assert message in str(exc.value)


def test_duplicate_rule_names_are_rejected():
    doc = rule()
    doc["rules"].append(dict(doc["rules"][0]))
    with pytest.raises(RuleError, match="rule 'r1': duplicate rule name"):
        parse_ruleset(doc, RULE_NAMES)


def test_files_load_as_yaml_or_json(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(DOC))
    assert load_ruleset(tmp_path / "r.json", RULE_NAMES).version == "7"
    (tmp_path / "bad.yaml").write_text("rules: [unclosed")
    with pytest.raises(RuleError, match="not valid YAML/JSON"):
        load_ruleset(tmp_path / "bad.yaml", RULE_NAMES)
    with pytest.raises(RuleError, match="cannot read ruleset"):
        load_ruleset(tmp_path / "missing.yaml", RULE_NAMES)
