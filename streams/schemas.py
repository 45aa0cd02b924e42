"""Wire contract v1 as pydantic models, and micro-batch decoding with dead-lettering.

Every invalid record becomes a :class:`DeadLetter` that names the field, what is wrong
and the value that was seen; nothing is dropped silently.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
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

TsMs = Annotated[int, Field(ge=MIN_TS_MS, lt=MAX_TS_MS)]
Channel = Literal["card", "wire", "ach", "cash", "crypto", "p2p"]


class Transaction(BaseModel):
    """``vigil.transactions`` value. Unknown extra fields are kept and ignored."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    tx_id: str = Field(min_length=1, max_length=128)
    ts_ms: TsMs
    account_id: str = Field(min_length=1, max_length=128)
    counterparty_id: str = Field(min_length=1, max_length=128)
    amount: float = Field(gt=0, allow_inf_nan=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO-4217")
    channel: Channel
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO-3166 alpha-2 of the counterparty")
    device_id: str | None = None
    merchant_category: str | None = None


class Label(BaseModel):
    """``vigil.labels`` value: late ground truth."""

    model_config = ConfigDict(strict=True, extra="allow")

    tx_id: str = Field(min_length=1)
    label: Literal[0, 1]
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


class DeadLetter(BaseModel):
    """``vigil.dlq`` value."""

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str | None
    error: str
    ts_ms: int
    # extends contract v1: the record's headers, [name, base64 value], where it had any
    # (left out of the JSON when it had none)
    headers: list[tuple[str, str | None]] | None = None

    @model_serializer(mode="wrap")
    def _without_empty_headers(self, handler: Any) -> dict[str, Any]:
        doc = handler(self)
        if doc.get("headers") is None:
            doc.pop("headers", None)
        return doc

    @classmethod
    def of(cls, record: RawRecord, error: str, now_ms: int) -> DeadLetter:
        return cls(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key_b64=_b64(record.key),
            value_b64=_b64(record.value),
            error=error,
            ts_ms=now_ms,
            headers=[(k, _b64(v)) for k, v in record.headers] if record.headers else None,
        )


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
            dead.append((record, DeadLetter.of(record, error, now_ms)))
            continue
        try:
            valid.append((record, validate(record.value)))
        except ValidationError as exc:
            dead.append((record, DeadLetter.of(record, describe_validation_error(exc), now_ms)))
    return valid, dead
