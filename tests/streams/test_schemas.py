import base64
import json

import pytest

from vigil.streams.schemas import MAX_TS_MS, MIN_TS_MS, DeadLetter, RawRecord, decode_transactions

GOOD = {
    "tx_id": "t1",
    "ts_ms": 1_767_225_600_000,
    "account_id": "a1",
    "counterparty_id": "c1",
    "amount": 12.5,
    "currency": "EUR",
    "channel": "card",
    "country": "DE",
    "device_id": None,
    "merchant_category": "5411",
}


def rec(value: bytes | None, offset: int = 0, key: bytes | None = b"a1") -> RawRecord:
    return RawRecord("vigil.transactions", 3, offset, key, value)


def with_(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"tx_id": "t1", "amount": ', "invalid JSON"),
        (b"\xff\xfe not utf-8", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'"just a string"', "expected a JSON object"),
        (with_(amount=...), "missing field 'amount'"),
        (with_(tx_id=...), "missing field 'tx_id'"),
        (with_(amount="12.50"), "field 'amount': input should be a valid number"),
        (with_(ts_ms=1.5e12), "field 'ts_ms'"),
        (with_(channel="fax"), "field 'channel'"),
        (with_(amount=0), "field 'amount': input should be greater than 0 (got 0)"),
        (with_(amount=-3), "field 'amount': input should be greater than 0 (got -3)"),
        (with_(currency="euro"), "field 'currency': malformed ISO-4217 currency code (got 'euro')"),
        (with_(currency="EU"), "malformed ISO-4217"),
        (with_(country="Germany"), "field 'country': malformed ISO-3166 alpha-2 code"),
        (with_(country="de"), "malformed ISO-3166"),
        (with_(ts_ms=1_767_225_600), "field 'ts_ms': timestamp out of range"),
        (with_(ts_ms=MAX_TS_MS), "field 'ts_ms': timestamp out of range"),
        (with_(ts_ms=MIN_TS_MS - 1), "timestamp out of range"),
        (b"", "empty value"),
        (None, "empty value"),
    ],
)
def test_each_invalid_record_becomes_a_dead_letter_with_a_precise_reason(value, reason):
    valid, dead = decode_transactions([rec(value, offset=41)], now_ms=123)
    assert valid == []
    [(record, letter)] = dead
    assert reason in letter.error, letter.error
    assert (letter.source_topic, letter.partition, letter.offset, letter.ts_ms) == (
        "vigil.transactions",
        3,
        41,
        123,
    )
    assert letter.value_b64 == (None if value is None else base64.b64encode(value).decode())
    assert letter.key_b64 == base64.b64encode(b"a1").decode()
    assert record.offset == 41


def test_several_problems_in_one_record_are_all_named():
    _, [(_, letter)] = decode_transactions([rec(with_(amount=-1, currency="x"))], now_ms=0)
    assert "amount" in letter.error and "currency" in letter.error


def test_a_batch_keeps_order_and_splits_valid_from_invalid():
    values = [
        with_(tx_id="a"),
        b"nope",
        with_(tx_id="b", extra_field={"kept": True}),
        with_(amount=-1),
        with_(tx_id="c", device_id="d9"),
    ]
    valid, dead = decode_transactions([rec(v, offset=i) for i, v in enumerate(values)], 0)
    assert [tx.tx_id for _, tx in valid] == ["a", "b", "c"]
    assert [r.offset for r, _ in valid] == [0, 2, 4]
    assert [r.offset for r, _ in dead] == [1, 3]
    assert valid[1][1].model_extra == {"extra_field": {"kept": True}}  # kept, ignored
    assert valid[2][1].device_id == "d9"


def test_dead_letter_is_contract_json():
    _, [(_, letter)] = decode_transactions([rec(b"{")], now_ms=5)
    doc = json.loads(letter.model_dump_json())
    assert set(doc) == {
        "source_topic",
        "partition",
        "offset",
        "key_b64",
        "value_b64",
        "error",
        "ts_ms",
        "reason",  # extends contract v1
    }
    assert doc["reason"] == "invalid"
    assert DeadLetter.model_validate(doc) == letter
