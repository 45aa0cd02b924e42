"""Every hostile kind ends as it must in the pipeline: the invalid ones dead-lettered (each
letter within the record size, keeping its chaos-id header), the extreme valid ones scored
with a valid score, never allowed on a score that is not one."""

from __future__ import annotations

import base64
import json

import pytest

from tests.streams.test_isolation import OddModel, run_isolated
from vigil.models.serving import ModelHolder
from vigil.streams.pipeline import RiskPipeline
from vigil.streams.schemas import RawRecord, ScoreRecord
from vigil.streams.sources.hostile import HOSTILE_KINDS, hostile_records


@pytest.mark.parametrize("model", [None, [0.2, float("nan"), 7.0]])
def test_each_hostile_record_is_scored_or_dead_lettered_as_its_kind_says(model):
    records = hostile_records(len(HOSTILE_KINDS) * 2, seed=3)
    raw = [
        RawRecord("vigil.transactions", 0, i, r.key, r.value, tuple(r.headers))
        for i, r in enumerate(records)
    ]
    pipeline = RiskPipeline(model=ModelHolder(OddModel(model)) if model else None)
    scores, _alerts, dead = run_isolated(pipeline, raw, {}, batch=16)
    dead_ids = {
        int(base64.b64decode(dict(map(tuple, d["headers"]))["chaos-id"]))
        for d in dead
        if d.get("headers")
    } | {d["offset"] for d in dead if "truncated" in d}  # a cut letter drops its headers
    scored = {s["tx_id"] for s in scores}
    for i, r in enumerate(records):
        if r.expect == "dead":
            assert i in dead_ids, r.kind
        else:
            assert r.tx_id in scored and i not in dead_ids, r.kind
    assert len(scores) + len(dead) == len(records)
    # each letter says why in a word, and the pipeline counts them by it
    reason = {d["offset"]: d["reason"] for d in dead}
    special = {"empty": "empty", "tombstone": "empty", "currency_not_in_rates": "currency"}
    for i, r in enumerate(records):
        if r.expect == "dead":
            assert reason[i] == special.get(r.kind, "invalid"), r.kind
    by_reason = {k: v for k, v in pipeline.counters.items() if k.startswith("dlq:")}
    assert by_reason == {f"dlq:{w}": list(reason.values()).count(w) for w in set(reason.values())}
    for s in scores:
        ScoreRecord.model_validate(s)
    assert all(len(json.dumps(d)) <= pipeline.max_record_bytes for d in dead)
