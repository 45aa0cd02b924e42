"""No exception loses an event: records whose processing raises are isolated and
dead-lettered with the exception, every other record is scored exactly as if the failing
ones had never been sent; a score the pipeline cannot stand behind is never ``allow``;
dead letters always fit the broker's record size."""

from __future__ import annotations

import base64
import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import expected_decision, features_by_tx, own, wire
from vigil.models.serving import ModelHolder
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import Alert, DeadLetter, RawRecord, ScoreRecord
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

SEED = default_ruleset(RULE_NAMES, "seed")
POISON = 4321.5  # the amount the buggy model below cannot take
LOG10 = FEATURE_SPEC.index("amount_log10")


class BuggyModel:
    """A model with a bug that raises on some rows (a stand-in for any bug in the batch
    path: the pipeline cannot tell one from another)."""

    version = "buggy-1"

    def score_batch(self, matrix: np.ndarray) -> np.ndarray:
        if np.any(np.isclose(matrix[:, LOG10], math.log10(POISON))):
            raise RuntimeError("model kernel failed")
        return np.full(len(matrix), 0.1)


def run_isolated(pipeline: RiskPipeline, recs: list[RawRecord], store: dict, batch: int = 500):
    """As the worker does: each part's states saved before the next part runs."""
    scores, alerts, dead = [], [], []
    for i in range(0, len(recs), batch):
        for r in pipeline.process_isolated(recs[i : i + batch], store.get, consumed_ms=1):
            pipeline.save_states(r, store)
            scores += [json.loads(v) for _, v in r.scores]
            alerts += [json.loads(v) for _, v in r.alerts]
            dead += [json.loads(v) for _, v in r.dead]
    return scores, alerts, dead


def as_records(txs: list[dict]) -> list[RawRecord]:
    return [
        RawRecord("vigil.transactions", 0, i, t["account_id"].encode(), json.dumps(t).encode())
        for i, t in enumerate(txs)
    ]


def test_records_that_raise_are_dead_lettered_and_the_rest_scored_as_if_they_never_came():
    gen = TransactionGenerator(GeneratorConfig(seed=5, accounts=40, large_rate=0.02)).take(1500)
    txs = [g.tx for g in gen if g.tx is not None]
    poisoned = {t["tx_id"] for t in txs[100:1400:97]}
    for t in txs:
        if t["tx_id"] in poisoned:
            t["amount"], t["currency"] = POISON, "EUR"  # as the model sees it
    pipeline = RiskPipeline(SEED, model=ModelHolder(BuggyModel()))
    scores, alerts, dead = run_isolated(pipeline, as_records(txs), {})

    assert sorted(json.loads(base64.b64decode(d["value_b64"]))["tx_id"] for d in dead) == sorted(
        poisoned
    )
    assert all(d["error"].startswith("processing raised RuntimeError: model kernel") for d in dead)
    assert {d["reason"] for d in dead} == {"raised"}
    clean = [t for t in txs if t["tx_id"] not in poisoned]
    assert [s["tx_id"] for s in scores] == [t["tx_id"] for t in clean]  # in order, once each
    ref = features_by_tx(clean)  # the failed records were never applied to any state
    for s in scores:
        assert own(FEATURE_SPEC.as_dict(s["features"])) == pytest.approx(
            ref[s["tx_id"]], nan_ok=True
        )
    assert pipeline.counters["failed"] == len(poisoned)
    assert pipeline.counters["events"] == len(txs)
    assert pipeline.counters["scored"] == len(clean)
    assert pipeline.counters["dlq"] == len(poisoned)


def test_a_batch_that_raises_changes_no_state_and_no_counter():
    txs = [wire(f"t{i}", "a", "b", i, 100.0 + i) for i in range(5)]
    txs[2]["amount"] = POISON
    pipeline, store = RiskPipeline(SEED, model=ModelHolder(BuggyModel())), {}
    with pytest.raises(RuntimeError):
        pipeline.process(as_records(txs), store.get)
    assert not store and not pipeline.counters
    parts = list(pipeline.process_isolated(as_records(txs), lambda a: store.get(a)))
    # the first part raised again, so its state was never handed out: nothing to save
    assert sum(p.failed for p in parts) == 1


def test_an_output_over_the_record_size_is_dead_lettered_and_the_letter_fits():
    # an unknown field (kept and ignored) makes each letter too large to carry its record
    txs = [wire(f"t{i}", f"acct{i % 3}", "b", i, 100.0) | {"note": "n" * 2000} for i in range(6)]
    limit = 600  # below any score record (~650 bytes with the feature vector)
    pipeline = RiskPipeline(SEED, max_record_bytes=limit)
    recs = as_records(txs)
    parts = list(pipeline.process_isolated(recs, {}.get))
    dead = [(k, v) for p in parts for k, v in p.dead]
    assert len(dead) == len(txs) and not any(p.scores for p in parts)
    for (key, value), rec in zip(dead, recs, strict=True):
        assert len(key or b"") + len(value) <= limit
        letter = json.loads(value)
        assert "OutputTooLarge" in letter["error"] and "record limit" in letter["error"]
        assert (letter["partition"], letter["offset"]) == (rec.partition, rec.offset)
        assert letter["truncated"]["value_sha256"] == hashlib.sha256(rec.value).hexdigest()
        assert rec.value.startswith(base64.b64decode(letter["value_b64"]))


@pytest.mark.parametrize(
    ("value_bytes", "key_bytes", "headers"),
    [(900_000, 10, 0), (100, 500_000, 0), (900_000, 500_000, 3), (10, 10, 50_000), (0, 0, 0)],
)
def test_a_dead_letter_always_fits_and_keeps_the_reason_the_coordinates_and_digests(
    value_bytes, key_bytes, headers
):
    value = b"x" * value_bytes or None
    key = b"k" * key_bytes or None
    hdrs = tuple((f"h{i}", b"v" * 20) for i in range(headers)) or None
    rec = RawRecord("vigil.transactions", 3, 77, key, value, hdrs)
    limit = 1_000_000
    out_key, out = DeadLetter.of(rec, "bad", 5, "invalid").encode(rec, limit)
    assert len(out_key or b"") + len(out) <= limit
    letter = DeadLetter.model_validate_json(out)
    assert (letter.source_topic, letter.partition, letter.offset, letter.error) == (
        "vigil.transactions",
        3,
        77,
        "bad",
    )
    whole = DeadLetter.of(rec, "bad", 5, "invalid").model_dump_json().encode()
    if len(whole) + len(key or b"") <= limit:  # fits: as is, headers kept
        assert out == whole and out_key == key and letter.truncated is None
        assert [tuple(h) for h in letter.headers or []] == [
            (k, base64.b64encode(v).decode()) for k, v in hdrs or ()
        ]
        return
    cut = letter.truncated
    assert cut is not None and cut["headers"] == headers
    for name, data in (("value", value), ("key", key)):
        if data is not None:
            assert cut[f"{name}_bytes"] == len(data)
            assert cut[f"{name}_sha256"] == hashlib.sha256(data).hexdigest()
    assert value is None or value.startswith(base64.b64decode(letter.value_b64 or ""))
    if key is not None and len(key) > limit // 8:
        assert out_key == b"sha256:" + hashlib.sha256(key).hexdigest().encode()
    else:
        assert out_key == key


def test_the_dead_letter_keeps_the_records_headers():
    rec = RawRecord("t", 0, 1, b"k", b"{", (("trace", b"abc"), ("empty", None)))
    _, out = RiskPipeline(SEED).process([rec], {}.get).dead[0]
    assert json.loads(out)["headers"] == [["trace", "YWJj"], ["empty", None]]


class OddModel:
    """Returns what a broken or hostile model file could: NaN, infinities, out of range."""

    version = "odd-1"

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def score_batch(self, matrix: np.ndarray) -> np.ndarray:
        return np.resize(np.array(self.values, dtype=np.float32), len(matrix))


def test_a_score_that_is_not_a_number_in_0_1_is_never_allow():
    bad = [math.nan, math.inf, -math.inf, 1.5, -0.2, 0.1]
    txs = [wire(f"t{i}", f"a{i}", "b", i, 10.0) for i in range(len(bad))]
    pipeline = RiskPipeline(SEED, model=ModelHolder(OddModel(bad)))
    out = pipeline.process(as_records(txs), {}.get)
    scores = [json.loads(v) for _, v in out.scores]
    alerts = {json.loads(v)["tx_id"]: json.loads(v) for _, v in out.alerts}
    for s, model_score in zip(scores, bad, strict=True):
        ScoreRecord.model_validate(s)
        if 0 <= model_score <= 1:
            assert s["decision"] == "allow" and s["score"] == pytest.approx(0.1)
            continue
        assert s["decision"] != "allow"
        assert "invalid_score" in [h["rule"] for h in s["rule_hits"]]
        alert = Alert.model_validate(alerts[s["tx_id"]])
        assert alert.reasons[0].code == "INVALID_SCORE"
    assert pipeline.counters["invalid_scores"] == 5


def test_amounts_at_the_edges_are_scored_or_dead_lettered_never_left_allowed_as_nan():
    amounts = [1e40, 1e308, 1e15, 1e15 * (1 + 1e-15), 5e-324, 1e-320, 1e-9]
    txs = [wire(f"t{i}", "same", "b", i, a) for i, a in enumerate(amounts)]
    txs.append(wire("after", "same", "b", 10, 600_000.0))  # large_transfer must still fire
    pipeline = RiskPipeline(SEED)
    out = pipeline.process(as_records(txs), {}.get)
    dead = [json.loads(v) for _, v in out.dead]
    scores = {json.loads(v)["tx_id"]: json.loads(v) for _, v in out.scores}
    assert len(dead) == 3 and all(
        "less than or equal to 1000000000000000" in d["error"] for d in dead
    )
    assert set(scores) == {"t2", "t4", "t5", "t6", "after"}
    for s in scores.values():
        ScoreRecord.model_validate(s)
    ref = features_by_tx([t for t in txs if t["tx_id"] in scores])
    assert scores["after"]["decision"] == expected_decision(txs[-1], ref["after"])[0] != "allow"


# ------------------------------------------------------------------ hostile input, property

_text = st.text(max_size=140) | st.sampled_from(["", "a", "\x00", "A" * 129])
_number = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([5e-324, 1e-320, 1e15, 1.0000000000000002e15, 1e308, -0.0, 0.0])
    | st.integers(min_value=-(2**70), max_value=2**70)
)
_json = st.recursive(
    st.none() | st.booleans() | _number | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


_id = st.text(min_size=1, max_size=128) | st.sampled_from(["a", "b", "é" * 128, "\x00"])


@st.composite
def hostile_transaction(draw) -> bytes:
    """Contract-valid at the extremes (tiny, huge, long, unicode, deep unknown fields),
    then sometimes one or two fields broken."""
    tx = {
        "tx_id": draw(_id),
        "ts_ms": draw(st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999)),
        "account_id": draw(st.sampled_from(["a", "b"]) | _id),
        "counterparty_id": draw(st.sampled_from(["a", "b", "c"]) | _id),
        "amount": draw(
            st.floats(min_value=5e-324, max_value=1e15)
            | st.sampled_from([5e-324, 1e-320, 1e-9, 0.01, 9_999.99, 1e15])
        ),
        "currency": draw(st.sampled_from(["EUR", "USD", "XAU"])),
        "channel": draw(st.sampled_from(["card", "wire", "ach", "cash", "crypto", "p2p"])),
        "country": draw(st.sampled_from(["DE", "KP", "IR", "US"])),
        "device_id": draw(st.none() | _id),
        "merchant_category": draw(st.none() | st.sampled_from(["5411", "6051", "7995"]) | _id),
    }
    for name in draw(st.lists(st.sampled_from(list(tx)), max_size=2)):
        if draw(st.booleans()):
            tx.pop(name, None)
        else:
            tx[name] = draw(_json)
    if draw(st.booleans()):
        tx["extra"] = draw(_json)
    text = json.dumps(tx, ensure_ascii=draw(st.booleans()))
    depth = draw(st.sampled_from([0] * 8 + [300, 5000]))
    if depth:  # a deeply nested unknown field
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    return text.encode()


_record_value = hostile_transaction() | st.binary(max_size=64) | st.sampled_from([b"", b"null"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_record_value, min_size=1, max_size=30), model=st.booleans())
def test_every_hostile_record_ends_scored_with_a_valid_score_or_dead_lettered(values, model):
    recs = [RawRecord("vigil.transactions", 0, i, b"k", v) for i, v in enumerate(values)]
    scorer = ModelHolder(OddModel([0.3, math.nan, 2.0])) if model else None
    pipeline = RiskPipeline(SEED, model=scorer)
    scores, alerts, dead = run_isolated(pipeline, recs, {}, batch=7)
    assert len(scores) + len(dead) == len(recs)
    assert sorted(d["offset"] for d in dead) == sorted(set(d["offset"] for d in dead))
    for s in scores:
        record = ScoreRecord.model_validate(s)
        assert record.decision != "allow" or record.score < pipeline.thresholds.review
    for a in alerts:
        Alert.model_validate(a)
    assert len(alerts) == sum(s["decision"] != "allow" for s in scores)
