"""The console's state (apps/console/state.py) fed lists of records, with a fake clock:
cases per account and their status, filters, what a label names, rates and latency
percentiles against numpy, inspection alerts matched to their frame."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.apps.console.state import FRAMES_PER_CAMERA, ConsoleState, HeldFrame
from vigil.streams.features.library import FEATURE_SPEC


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alert(n: int, account: str, decision: str = "review", score: float = 0.6) -> dict:
    return {
        "alert_id": f"al{n}",
        "tx_id": f"tx{n}",
        "account_id": account,
        "ts_ms": 1_000 + n,
        "score": score,
        "decision": decision,
        "reasons": [],
        "rule_hits": [],
        "model_version": "m",
        "processed_ms": 10_000 + n,
    }


def test_alerts_group_into_cases_that_close_when_every_alert_has_a_disposition():
    s = ConsoleState()
    for n, account in enumerate(["a", "a", "b"]):
        s.on_alert(alert(n, account, "block" if n == 2 else "review", 0.5 + n / 10))
    s.on_alert(alert(0, "a"))  # the same alert again (at-least-once): one alert
    cases = {c["account_id"]: c for c in s.cases(status=None)}
    assert cases["a"]["alerts"] == 2 and cases["a"]["status"] == "open"
    assert cases["b"]["decisions"] == ["block"] and cases["b"]["max_score"] == pytest.approx(0.7)
    s.on_label({"tx_id": "tx0", "label": 1})
    assert s.cases(status=None)[0]["account_id"] in ("a", "b")
    s.on_label({"tx_id": "tx1", "label": 0})
    assert [c["account_id"] for c in s.cases(status="open")] == ["b"]
    assert [c["account_id"] for c in s.cases(status="closed")] == ["a"]
    assert [c["account_id"] for c in s.cases(status=None, decision="block")] == ["b"]
    assert [c["account_id"] for c in s.cases(status=None, min_score=0.65)] == ["b"]
    assert [c["account_id"] for c in s.cases(status=None, query="A")] == ["a"]
    s.on_label({"tx_id": "tx2", "label": True})  # not a label: ignored
    assert s.cases(status="open")[0]["undecided"] == 1


def test_a_case_carries_its_score_records_features_and_a_label_names_both_sides():
    s = ConsoleState()
    vector = [float(i) for i in range(len(FEATURE_SPEC.names))]
    s.on_transaction({"tx_id": "tx5", "account_id": "a", "counterparty_id": "p"}, 9_000)
    s.on_score(
        {
            "tx_id": "tx5",
            "decision": "review",
            "feature_spec": FEATURE_SPEC.label,
            "features": vector,
            "processed_ms": 9_120,
        },
        partition=2,
    )
    s.on_score({"tx_id": "tx6", "decision": "allow", "features": vector}, partition=2)
    s.on_alert(alert(5, "a"))
    (detail,) = s.case("a")["alerts"]
    assert detail["features"] == vector and detail["feature_names"] == list(FEATURE_SPEC.names)
    assert "tx6" not in s.features  # allowed transactions' vectors are not kept
    assert s.transaction_for_label("tx5") == {
        "tx_id": "tx5",
        "account_id": "a",
        "counterparty_id": "p",
        "ts_ms": 1_005,
    }
    assert s.transaction_for_label("tx-unknown") is None
    assert s.case("nobody") is None


def test_rates_count_per_second_and_latency_percentiles_match_numpy():
    clock = Clock(2_000.0)
    s = ConsoleState(window_s=5, clock=clock)
    rng = np.random.default_rng(1)
    latencies = rng.integers(1, 500, 40)
    for i, lat in enumerate(latencies):
        s.on_transaction({"tx_id": f"t{i}"}, 1_000_000)
        s.on_score({"tx_id": f"t{i}", "processed_ms": 1_000_000 + int(lat)}, partition=0)
    clock.t = 2_001.5
    s.on_score({"tx_id": "never-seen", "processed_ms": 5}, partition=1)  # counted, no latency
    assert s.overview()["risk"][-1]["t"] == 2_000  # 2001 is still filling
    clock.t = 2_002.0
    series = s.overview()["risk"]
    assert [p["t"] for p in series] == [1_997, 1_998, 1_999, 2_000, 2_001]
    assert [p["count"] for p in series] == [0, 0, 0, 40, 1]
    at = series[3]
    assert at["p50_ms"] == pytest.approx(np.percentile(latencies, 50))
    assert at["p99_ms"] == pytest.approx(np.percentile(latencies, 99))
    assert series[4]["p50_ms"] is None
    clock.t = 2_010.0
    assert sum(p["count"] for p in s.overview()["risk"]) == 0  # out of the window


def test_dead_letters_count_by_reason_and_versions_by_partition():
    s = ConsoleState()
    for reason in ["invalid", "invalid", "currency"]:
        s.on_dead_letter({"reason": reason})
    s.on_score({"tx_id": "x", "model_version": "m1", "ruleset_version": "r1"}, partition=1)
    s.on_score({"tx_id": "y", "model_version": "m2", "ruleset_version": "r1"}, partition=1)
    s.on_clip({"model_version": "i1", "ts_ms": 5, "processed_ms": 9}, partition=0)
    o = s.overview()
    assert o["dlq"] == {"invalid": 2, "currency": 1}
    assert [(v["worker"], v["partition"], v["model_version"]) for v in o["versions"]] == [
        ("inspection", 0, "i1"),
        ("risk", 1, "m2"),
    ]


def test_an_inspection_alert_gets_the_frame_it_points_at_while_it_is_held():
    s = ConsoleState()
    for seq in range(FRAMES_PER_CAMERA + 10):
        s.on_frame("c1", HeldFrame(seq, bytes([seq % 256]), ()))
    s.on_inspection_alert({"alert_id": "i1", "camera_id": "c1", "ref_seq": 9})  # gone
    s.on_inspection_alert({"alert_id": "i2", "camera_id": "c1", "ref_seq": 500})
    s.on_inspection_alert({"alert_id": "i3", "camera_id": "c2", "ref_seq": 500})
    assert s.alert_frame("i1") is None and s.alert_frame("i3") is None
    found = s.alert_frame("i2")
    assert found is not None and found[1].seq == 500 and found[1].value == bytes([500 % 256])
    assert [a["has_frame"] for a in s.inspection_list()] == [False, True, False]
