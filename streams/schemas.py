"""Wire contract v1 as pydantic models, and micro-batch decoding with dead-lettering.

Every invalid record becomes a :class:`DeadLetter` that names the field, what is wrong
and the value that was seen; nothing is dropped silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

__all__ = [
    "MIN_TS_MS",
    "MAX_TS_MS",
    "Transaction",
    "Label",
    "RuleHit",
    "Reason",
    "ScoreRecord",
    "Alert",
    "DeadLetter",
    "MAX_AMOUNT",
    "MAX_RECORD_BYTES",
    "ClipScore",
    "InspectionAlert",
    "RawRecord",
    "decode_transactions",
    "describe_validation_error",
]

# Accepted event-time range: 2000-01-01 .. 2100-01-01 (epoch ms). Outside it a
# timestamp is almost certainly seconds, microseconds or garbage.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000

# Largest record a worker produces (key + value), below librdkafka's and Kafka's default
# message.max.bytes (1,000,000); the setting VIGIL_MAX_RECORD_BYTES overrides it.
MAX_RECORD_BYTES = 1_000_000
# Largest amount accepted (in currency units): above any real payment in any currency,
# and far enough below float64's range that sums over a window stay finite.
MAX_AMOUNT = 1e15

TsMs = Annotated[
    int,
    Field(
        ge=MIN_TS_MS,
        lt=MAX_TS_MS,
        description="epoch milliseconds in 2000-2100, written as an integer (1767225600000, "
        "not 1767225600000.0 or 1.7672256e12)",
    ),
]
Channel = Literal["card", "wire", "ach", "cash", "crypto", "p2p"]


class Transaction(BaseModel):
    """``vigil.transactions`` value. Unknown extra fields are kept and ignored."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    tx_id: str = Field(min_length=1, max_length=128)
    ts_ms: TsMs
    account_id: str = Field(min_length=1, max_length=128)
    counterparty_id: str = Field(min_length=1, max_length=128)
    amount: float = Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO-4217")
    channel: Channel
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO-3166 alpha-2 of the counterparty")
    device_id: str | None = None
    merchant_category: str | None = None


class Label(BaseModel):
    """``vigil.labels`` value: late ground truth."""

    model_config = ConfigDict(strict=True, extra="allow")

    tx_id: str = Field(min_length=1)
    # 0 or 1 as an integer: Literal[0, 1] let `true` through (True == 1 in Python)
    label: Annotated[int, Strict(), Field(ge=0, le=1)]
    typology: str | None = None
    ts_ms: TsMs


class RuleHit(BaseModel):
    rule: str
    typology: str
    score: float = Field(ge=0, le=1)


class Reason(BaseModel):
    code: str
    detail: str
    weight: float


class ScoreRecord(BaseModel):
    """``vigil.risk.scores`` value: one per processed transaction.

    ``ruleset_version``, ``consumed_ms``, ``feature_spec`` and ``features`` extend contract
    v1 (clients must ignore unknown fields). ``features`` is the feature vector in the order
    of the spec named by ``feature_spec`` (``FEATURE_SPEC.as_dict`` maps it to names); null
    where a feature has no value.
    """

    tx_id: str
    account_id: str
    ts_ms: int
    score: float = Field(ge=0, le=1)
    decision: Literal["allow", "review", "block"]
    rule_hits: list[RuleHit]
    model_version: str
    ruleset_version: str
    # extends contract v1: the rates table the amount was converted with (name:version)
    rates_version: str | None = None
    processed_ms: int
    consumed_ms: int
    feature_spec: str
    features: list[float | None]


class Alert(BaseModel):
    """``vigil.risk.alerts`` value, only for decisions other than ``allow``."""

    alert_id: str
    tx_id: str
    account_id: str
    ts_ms: int
    score: float = Field(ge=0, le=1)
    decision: Literal["review", "block"]
    reasons: list[Reason]
    rule_hits: list[RuleHit]
    model_version: str
    processed_ms: int
    # extend contract v1: the amount and currency as paid, the amount in the reporting
    # currency that rules and features compared, and the rates table that converted it
    amount: float | None = None
    currency: str | None = None
    reporting_amount: float | None = None
    reporting_currency: str | None = None
    ruleset_version: str | None = None
    rates_version: str | None = None


class InspectionAlert(BaseModel):
    """``vigil.inspection.alerts`` value: a clip the classifier found a defect in.

    The clip is frames ``seq_start..seq_end`` of one camera, aligned to its reference
    frame ``ref_seq`` (taken at ``ts_ms``), in whose pixels ``bbox`` is drawn: the coarse
    location cell. ``ref_seq``, ``cell`` and ``processed_ms`` extend contract v1.
    """

    alert_id: str
    camera_id: str
    seq_start: int
    seq_end: int
    ts_ms: int
    score: float = Field(ge=0, le=1)
    bbox: list[int] | None
    model_version: str
    ref_seq: int
    cell: int | None
    processed_ms: int


class ClipScore(BaseModel):
    """``vigil.inspection.clips`` value (internal, not contract): one per classified clip,
    alerted or not, for monitoring, evaluation and the benchmark."""

    camera_id: str
    seq_start: int
    seq_end: int
    ts_ms: int
    score: float
    alerted: bool
    model_version: str
    consumed_ms: int
    processed_ms: int


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as consumed, before decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] | None = None


def record_batches(lines: Iterable[bytes], topic: str, size: int) -> Iterator[list[RawRecord]]:
    """Raw values (a file, a generator) as records of one partition, ``size`` at a time:
    the micro-batches the in-process runs (backtest, training data) feed the pipeline."""
    batch: list[RawRecord] = []
    for offset, line in enumerate(lines):
        batch.append(RawRecord(topic, 0, offset, None, line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# Why a record went to the DLQ, in a word (``reason`` on the record; the workers count dead
# letters by it)
DLQ_REASONS = {
    "empty": "no value (a tombstone or a missing payload)",
    "invalid": "not a valid record of its topic (JSON, schema, limits)",
    "currency": "a currency the rates table does not list",
    "state": "the account's saved state could not be read",
    "internal": "an internal record between workers could not be read",
    "label": "a record on the labels topic that is no label",
    "raised": "processing it raised (the batch went on without it)",
}
DlqReason = Literal["empty", "invalid", "currency", "state", "internal", "label", "raised"]
DLQ_COUNTER_PREFIX = "dlq:"  # a worker's counter of dead letters with one reason


def dlq_counter(reason: str) -> str:
    """The name of a worker's counter of dead letters with ``reason``."""
    return DLQ_COUNTER_PREFIX + reason


class DeadLetter(BaseModel):
    """``vigil.dlq`` value."""

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str | None
    error: str
    ts_ms: int
    # extends contract v1: why, as one of ``DLQ_REASONS`` (the error says it in words)
    reason: DlqReason = "invalid"
    # extends contract v1: the record's headers, [name, base64 value], where it had any
    # (left out of the JSON when it had none)
    headers: list[tuple[str, str | None]] | None = None

    # extends contract v1: set when the letter had to be cut to fit the broker's record
    # size: the original's sizes and SHA-256 digests (hex), the value and key cut to a
    # prefix, headers left out (left out of the JSON when nothing was cut)
    truncated: dict[str, int | str] | None = None

    @model_serializer(mode="wrap")
    def _without_empty_fields(self, handler: Any) -> dict[str, Any]:
        doc = handler(self)
        for name in ("headers", "truncated"):
            if doc.get(name) is None:
                doc.pop(name, None)
        return doc

    @classmethod
    def of(cls, record: RawRecord, error: str, now_ms: int, reason: str) -> DeadLetter:
        if reason not in DLQ_REASONS:
            raise ValueError(f"dead-letter reason {reason!r} is not one of {sorted(DLQ_REASONS)}")
        return cls(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key_b64=_b64(record.key),
            value_b64=_b64(record.value),
            error=_cut(error, MAX_ERROR_CHARS),
            ts_ms=now_ms,
            reason=reason,
            headers=[(k, _b64(v)) for k, v in record.headers] if record.headers else None,
        )

    def encode(
        self, record: RawRecord, max_bytes: int = MAX_RECORD_BYTES
    ) -> tuple[bytes | None, bytes]:
        """The DLQ record (Kafka key, JSON value) of this letter about ``record``, together
        at most ``max_bytes``: as is where it fits, else with the original's value and key
        cut to prefixes beside their sizes and digests, so the reason and the source
        coordinates always reach the DLQ. The Kafka key is the original key, or
        ``sha256:<hex>`` of it where it is over an eighth of ``max_bytes``."""
        value = self.model_dump_json().encode()
        key = record.key
        if len(value) + len(key or b"") <= max_bytes:
            return key, value
        if key is not None and len(key) > max_bytes // 8:
            key = b"sha256:" + hashlib.sha256(key).hexdigest().encode()
        truncated: dict[str, int | str] = {"headers": len(record.headers or ())}
        for name, data in (("value", record.value), ("key", record.key)):
            if data is not None:
                truncated[f"{name}_bytes"] = len(data)
                truncated[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
        cut = self.model_copy(
            update={"key_b64": None, "value_b64": None, "headers": None, "truncated": truncated}
        )
        # what is left for the two prefixes, in base64 (4 characters per 3 bytes)
        room = max_bytes - len(key or b"") - len(cut.model_dump_json()) - 64
        room_bytes = max(0, room // 4 * 3)
        key_prefix = (record.key or b"")[: room_bytes // 8]
        value_prefix = (record.value or b"")[: room_bytes - len(key_prefix)]
        cut = cut.model_copy(
            update={
                "key_b64": None if record.key is None else _b64(key_prefix),
                "value_b64": None if record.value is None else _b64(value_prefix),
            }
        )
        return key, cut.model_dump_json().encode()


MAX_ERROR_CHARS = 2000  # of a dead letter's error: an exception's text can be any length


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


_TX_ADAPTER: TypeAdapter[Transaction] = TypeAdapter(Transaction)
_MAX_SHOWN = 60  # characters of a bad value quoted in an error


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field 'amount': must be greater than 0 (got -5)``."""
    parts = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        field = ".".join(str(p) for p in err["loc"])
        if kind == "json_invalid":
            parts.append(f"invalid JSON: {err['ctx'].get('error', err['msg'])}")
        elif kind in ("model_type", "model_attributes_type"):
            parts.append(f"expected a JSON object, got {_shown(err['input'])}")
        elif kind == "missing":
            parts.append(f"missing field '{field}'")
        elif kind == "string_pattern_mismatch" and field in ("currency", "country"):
            what = "ISO-4217 currency code" if field == "currency" else "ISO-3166 alpha-2 code"
            parts.append(f"field '{field}': malformed {what} (got {_shown(err['input'])})")
        elif field == "ts_ms" and kind in ("greater_than_equal", "less_than"):
            parts.append(
                f"field 'ts_ms': timestamp out of range [{MIN_TS_MS}, {MAX_TS_MS}) epoch ms "
                f"(got {_shown(err['input'])})"
            )
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            parts.append(f"field '{field}': {msg} (got {_shown(err['input'])})")
    return "; ".join(parts)


def decode_transactions(
    records: Sequence[RawRecord], now_ms: int
) -> tuple[list[tuple[RawRecord, Transaction]], list[tuple[RawRecord, DeadLetter]]]:
    """Decode one micro-batch: the valid transactions in order, and a dead letter per bad record.

    Validation runs in pydantic-core (Rust) straight from the bytes, ~µs per record, so
    the loop here is only bookkeeping.
    """
    valid: list[tuple[RawRecord, Transaction]] = []
    dead: list[tuple[RawRecord, DeadLetter]] = []
    validate = _TX_ADAPTER.validate_json
    for record in records:
        if not record.value:
            error = "empty value (tombstone or missing payload)"
            dead.append((record, DeadLetter.of(record, error, now_ms, "empty")))
            continue
        try:
            valid.append((record, validate(record.value)))
        except ValidationError as exc:
            error = describe_validation_error(exc)
            dead.append((record, DeadLetter.of(record, error, now_ms, "invalid")))
    return valid, dead
