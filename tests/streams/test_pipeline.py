"""The risk pipeline without a broker: outputs, dead letters, redelivery, state restore."""

import json

import pytest

from tests.reference import expected_decision, features_by_tx, own
from vigil.models.serving import ModelHolder
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import Alert, RawRecord, ScoreRecord
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

SEED = default_ruleset(RULE_NAMES, "seed")  # the decisions tests.reference recomputes

CFG = GeneratorConfig(seed=3, accounts=60, large_rate=0.01, burst_rate=0.01, malformed_rate=0.02)


def records(n: int = 3000, partitions: int = 4) -> tuple[list[RawRecord], list]:
    """Records as a keyed producer would lay them out: per account one partition."""
    gen = TransactionGenerator(CFG).take(n)
    next_offset = [0] * partitions
    out = []
    for g in gen:
        p = hash(g.key) % partitions
        out.append(RawRecord("vigil.transactions", p, next_offset[p], g.key.encode(), g.value))
        next_offset[p] += 1
    return out, gen


def run(pipeline: RiskPipeline, recs: list[RawRecord], store: dict, batch: int = 500):
    scores, alerts, dead = [], [], []
    for i in range(0, len(recs), batch):
        r = pipeline.process(recs[i : i + batch], store.get, consumed_ms=1)
        for account, st in r.states.items():
            snap = st.snapshot()
            store[account] = snap
            pipeline.remember(account, snap, st)
        scores += [json.loads(v) for _, v in r.scores]
        alerts += [json.loads(v) for _, v in r.alerts]
        dead += [json.loads(v) for _, v in r.dead]
    return scores, alerts, dead


def test_every_record_gets_a_score_or_a_dead_letter_and_alerts_match_the_reference():
    recs, gen = records()
    pipeline = RiskPipeline(SEED)
    scores, alerts, dead = run(pipeline, recs, {})
    valid = [g.tx for g in gen if g.tx is not None]
    assert sorted(s["tx_id"] for s in scores) == sorted(t["tx_id"] for t in valid)
    assert len(dead) == sum(1 for g in gen if g.raw is not None) > 0
    ref = features_by_tx(valid)
    by_id = {t["tx_id"]: t for t in valid}
    want_alerts = {}
    for s in scores:
        ScoreRecord.model_validate(s)
        assert own(FEATURE_SPEC.as_dict(s["features"])) == pytest.approx(ref[s["tx_id"]])
        decision, rules = expected_decision(by_id[s["tx_id"]], ref[s["tx_id"]])
        assert (s["decision"], [h["rule"] for h in s["rule_hits"]]) == (decision, rules)
        if decision != "allow":
            want_alerts[s["tx_id"]] = decision
    assert {a["tx_id"]: a["decision"] for a in alerts} == want_alerts
    assert {"review", "block"} <= set(want_alerts.values())
    for a in alerts:
        Alert.model_validate(a)
        assert [r["code"] for r in a["reasons"]]
    assert pipeline.counters["dlq"] == len(dead)
    assert pipeline.counters["scored"] == len(scores)
    assert pipeline.counters["events"] == len(recs)


def test_redelivered_events_are_not_applied_twice():
    recs, _ = records(1500)
    once = run(RiskPipeline(SEED), recs, {})[0]
    store: dict = {}
    pipeline = RiskPipeline(SEED)
    first = run(pipeline, recs[:1000], store)[0]
    # restart: the last 400 records come again, then the rest
    again = run(RiskPipeline(SEED), recs[600:], store)[0]
    assert pipeline.counters["redelivered"] == 0
    by_id = {s["tx_id"]: s for s in first + again}
    assert len(first) + len(again) == len(by_id)  # nothing scored twice
    assert {k: v["features"] for k, v in by_id.items()} == {s["tx_id"]: s["features"] for s in once}


def test_live_state_cache_is_not_used_when_the_store_changed_underneath():
    recs, _ = records(800)
    want = run(RiskPipeline(SEED), recs, {})[0]
    pipeline, store = RiskPipeline(SEED), {}
    got = run(pipeline, recs[:400], store)[0]
    store = json.loads(json.dumps(store))  # e.g. recovered from the changelog: new objects
    got += run(pipeline, recs[400:], store)[0]
    assert [s["features"] for s in got] == [s["features"] for s in want]


def test_unreadable_state_sends_the_record_to_the_dlq_not_a_crash():
    recs, gen = records(50)
    first_valid = next(r for r, g in zip(recs, gen, strict=True) if g.tx is not None)
    store = {first_valid.key.decode(): {"v": "old-version"}}
    _, _, dead = run(RiskPipeline(SEED), [first_valid], store)
    assert "account state unreadable" in dead[0]["error"] and "old-version" in dead[0]["error"]
    assert dead[0]["reason"] == "state"


def test_model_score_blends_and_version_is_stamped():
    class Fixed:
        version = "m-7"

        def score_batch(self, rows):
            return [0.6] * len(rows)

    recs, _ = records(200)
    scores, alerts, _ = run(RiskPipeline(SEED, model=ModelHolder(Fixed())), recs, {})
    assert {s["model_version"] for s in scores} == {"m-7"}
    plain = [s for s in scores if not s["rule_hits"]]
    assert plain and all(s["score"] == 0.6 and s["decision"] == "review" for s in plain)


def test_a_shadow_ruleset_is_recorded_but_never_alerts():
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import parse_ruleset

    recs, _ = records(300)
    live_only = run(RiskPipeline(SEED), recs, {})
    pipeline = RiskPipeline(SEED)
    pipeline.set_ruleset(
        parse_ruleset(
            {
                "ruleset": "cand",
                "version": "2",
                "mode": "shadow",
                "rules": [
                    {
                        "name": "any",
                        "typology": "t",
                        "when": "amount > 0",
                        "score": 1.0,
                        "reason": "x",
                    }
                ],
            },
            RULE_NAMES,
        )
    )
    scores, alerts, _ = run(pipeline, recs, {})

    def timeless(rows):
        return [{k: v for k, v in r.items() if k != "processed_ms"} for r in rows]

    assert timeless(alerts) == timeless(live_only[1])
    assert [s["decision"] for s in scores] == [s["decision"] for s in live_only[0]]
    assert {s["shadow"]["decision"] for s in scores} == {"block"}
    assert {s["shadow"]["ruleset_version"] for s in scores} == {"cand:2"}
    assert pipeline.counters["shadow_hits"] == len(scores)


def test_fewer_collections_sets_the_worker_policy_and_restores_the_collector():
    import gc

    from vigil.streams.pipeline import GC_THRESHOLDS, fewer_collections

    before, start = gc.get_threshold(), gc.get_freeze_count()
    kept = [[i] for i in range(1000)]  # allocated before the block: frozen in it
    with fewer_collections():
        assert gc.get_threshold() == GC_THRESHOLDS != before
        assert gc.get_freeze_count() >= start + len(kept)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0 if start == 0 else gc.get_freeze_count() >= start
    # what the caller froze stays frozen
    gc.freeze()
    try:
        with fewer_collections():
            pass
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
