"""The risk worker end to end on a real broker (embedded Tansu), as a separate process."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time

import pytest
from confluent_kafka import Producer

from tests.apps.helpers import collect, where_missing, with_faults
from tests.conftest import worker_env
from tests.reference import expected_decision, features_by_tx, own, wire
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

pytestmark = pytest.mark.integration

# Written by hand, as a client in another language would send it: contract JSON, no Vigil code.
FOREIGN_TX = (
    b'{"tx_id":"foreign-1","ts_ms":1767225600123,"account_id":"ext-9","counterparty_id":"x",'
    b'"amount":750000.0,"currency":"USD","channel":"wire","country":"KY","device_id":null,'
    b'"merchant_category":null,"note":"unknown fields are kept and ignored"}'
)


def _worker(settings, tmp_path, name="worker", faults=None):
    env = with_faults(worker_env(settings), faults)
    return WorkerProcess("risk", env, tmp_path / f"{name}.log")


def _log(tmp_path, name="worker"):
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def test_known_set_gives_exact_alerts_a_score_per_valid_and_a_dead_letter_per_invalid(
    settings, bootstrap, tmp_path
):
    cfg = GeneratorConfig(
        seed=4, accounts=80, large_rate=0.02, burst_rate=0.01, malformed_rate=0.03
    )
    gen = TransactionGenerator(cfg).take(2500)
    publish(bootstrap, settings.topics.transactions, [(g.key, g.value) for g in gen])
    raw = Producer({"bootstrap.servers": bootstrap})
    raw.produce(settings.topics.transactions, FOREIGN_TX, b"ext-9")
    raw.produce(settings.topics.transactions, b"{not json", None)  # and no key
    raw.flush(10)

    valid = [g.tx for g in gen if g.tx] + [json.loads(FOREIGN_TX)]
    n_invalid = sum(1 for g in gen if g.raw) + 1
    ref = features_by_tx(valid)
    want = {t["tx_id"]: expected_decision(t, ref[t["tx_id"]]) for t in valid}
    want_alerts = {k: v for k, v in want.items() if v[0] != "allow"}
    assert want["foreign-1"] == ("review", ["large_transfer"])

    with _worker(settings, tmp_path) as worker:
        ids = {t["tx_id"] for t in valid}
        scores = collect(
            bootstrap,
            settings.topics.scores,
            lambda got: len({s["tx_id"] for s in got}) >= len(ids),
            alive=lambda: worker.running,
        )
        assert {s["tx_id"] for s in scores} == ids, _log(tmp_path)
        alerts = collect(
            bootstrap, settings.topics.alerts, lambda got: len(got) >= len(want_alerts)
        )
        dead = collect(bootstrap, settings.topics.dlq, lambda got: len(got) >= n_invalid)

    for s in scores:
        assert own(FEATURE_SPEC.as_dict(s["features"])) == pytest.approx(ref[s["tx_id"]]), s[
            "tx_id"
        ]
        assert (s["decision"], [h["rule"] for h in s["rule_hits"]]) == want[s["tx_id"]]
        assert s["model_version"] == "rules-only"
    assert {a["tx_id"]: (a["decision"], [h["rule"] for h in a["rule_hits"]]) for a in alerts} == (
        want_alerts
    )
    assert len(alerts) == len(want_alerts)  # exactly one alert each
    assert len(dead) == n_invalid
    errors = " | ".join(d["error"] for d in dead)
    for reason in (
        "invalid JSON",
        "missing field",
        "greater than 0",
        "ISO-4217",
        "ISO-3166",
        "timestamp out of range",
        "valid number",
        "expected a JSON object",
    ):
        assert reason in errors, reason
    assert any(d["key_b64"] is None for d in dead)


# slow-seek: the restarted worker's seek to committed offsets returns 1 s late and its small
# micro-batches flush slowly; without apps.transport.Consumer (its safe resume) that lost the
# records fetched during the seek (a faust race, otherwise a few milliseconds wide).
# kill: the restarted worker loads the account states from its local files and reads the
# changelog after them (apps/store.py); memory-only: from the whole changelog.
@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill", "kill-memory-only", "slow-seek"])
def test_restart_mid_stream_loses_nothing_and_features_match_an_uninterrupted_run(
    settings, bootstrap, tmp_path, how
):
    gen = TransactionGenerator(GeneratorConfig(seed=9, accounts=150, burst_rate=0.005)).take(5000)
    topic = settings.topics.transactions
    publish(bootstrap, topic, [(g.key, g.value) for g in gen[:3000]])
    memory_only = {"VIGIL_STATE_ON_DISK": "false"} if how == "kill-memory-only" else None

    worker = _worker(settings, tmp_path, "first", memory_only).start()
    got = collect(
        bootstrap, settings.topics.scores, lambda s: len(s) >= 1000, alive=lambda: worker.running
    )
    assert len(got) >= 1000, _log(tmp_path, "first")
    if how == "kill":  # the store's files follow the changelog by up to a second
        deadline = time.monotonic() + 10
        while not list(tmp_path.rglob("*.sqlite3")) and time.monotonic() < deadline:
            time.sleep(0.05)
    worker.kill() if how.startswith("kill") else worker.stop()  # kill: no commit, no LeaveGroup
    publish(bootstrap, topic, [(g.key, g.value) for g in gen[3000:]])

    faults = {
        "VIGIL_FAULT_SLOW_SEEK_S": "1",
        "VIGIL_FAULT_SLOW_FLUSH_S": "0.1",
        "VIGIL_BATCH_SIZE": "100",  # so the worker is still busy when the seek returns
    }
    env = faults if how == "slow-seek" else memory_only
    with _worker(settings, tmp_path, "second", env) as worker:
        scores = collect(
            bootstrap,
            settings.topics.scores,
            lambda s: len({r["tx_id"] for r in s}) >= len(gen),
            alive=lambda: worker.running,
        )
    second = (tmp_path / "second.log").read_text(errors="replace")
    loaded = re.findall(r"partition \d+: (\d+) keys from .*, changelog read from offset", second)
    if memory_only:
        assert not loaded and not list(tmp_path.rglob("*.sqlite3")), second[-3000:]
    else:
        assert loaded and sum(map(int, loaded)) > 0, second[-3000:]  # the tail from the changelog
    txs = [g.tx for g in gen]
    seen = {s["tx_id"] for s in scores}
    if seen != {t["tx_id"] for t in txs}:
        group = f"{settings.namespace}-risk"
        pytest.fail(
            f"{len(seen)} of {len(txs)} scored; " + where_missing(bootstrap, topic, group, seen)
        )
    ref = features_by_tx(txs)
    by_id = {t["tx_id"]: t for t in txs}
    for s in scores:  # duplicates from redelivery, if any, must be identical
        assert own(FEATURE_SPEC.as_dict(s["features"])) == pytest.approx(ref[s["tx_id"]]), s[
            "tx_id"
        ]
        assert s["decision"] == expected_decision(by_id[s["tx_id"]], ref[s["tx_id"]])[0]


def test_records_that_raise_or_are_too_large_are_dead_lettered_and_nothing_else_is_lost(
    settings, bootstrap, tmp_path
):
    """The loss triggers of issue 21 on the real worker: a bug that raises on some records
    (injected: tests/apps/faults), a 900 KB malformed record and a 400 KB key whose dead
    letters are over the broker's record size."""
    gen = TransactionGenerator(GeneratorConfig(seed=21, accounts=60)).take(1500)
    txs = [g.tx for g in gen]
    poisoned = {t["tx_id"] for t in txs[50:1450:70]}
    for t in txs:
        if t["tx_id"] in poisoned:
            t["note"] = "poison"  # unknown fields are kept and ignored by the contract
    topic = settings.topics.transactions
    publish(bootstrap, topic, [(t["account_id"], json.dumps(t).encode()) for t in txs[:700]])
    huge_key = b"k" * 400_000
    oversized = [
        (b"big", b"{" + b"x" * 900_000),  # malformed, 900 KB
        (huge_key, json.dumps(txs[0] | {"account_id": "a" * 400_000}).encode()),
    ]
    raw = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    for key, value in oversized:
        raw.produce(topic, value, key)
    raw.flush(10)
    publish(bootstrap, topic, [(t["account_id"], json.dumps(t).encode()) for t in txs[700:]])

    clean = [t for t in txs if t["tx_id"] not in poisoned]
    faults = {"VIGIL_FAULT_RAISE_ON": '"poison"'}
    with _worker(settings, tmp_path, faults=faults) as worker:
        scores = collect(
            bootstrap,
            settings.topics.scores,
            lambda got: len({s["tx_id"] for s in got}) >= len(clean),
            alive=lambda: worker.running,
        )
        n_dead = len(poisoned) + len(oversized)
        dead = collect(bootstrap, settings.topics.dlq, lambda got: len(got) >= n_dead)
        assert worker.running, _log(tmp_path)

    assert {s["tx_id"] for s in scores} == {t["tx_id"] for t in clean}, _log(tmp_path)
    ref = features_by_tx(clean)  # the failed records never touched any state
    for s in scores:
        assert own(FEATURE_SPEC.as_dict(s["features"])) == pytest.approx(ref[s["tx_id"]]), s[
            "tx_id"
        ]
    assert len(dead) == n_dead
    raised = [d for d in dead if "processing raised RuntimeError: injected fault" in d["error"]]
    assert {json.loads(base64.b64decode(d["value_b64"]))["tx_id"] for d in raised} == poisoned
    cut = {d["truncated"]["value_sha256"]: d for d in dead if "truncated" in d}
    malformed, long_key = (cut[hashlib.sha256(v).hexdigest()] for _, v in oversized)
    assert "invalid JSON" in malformed["error"] and "account_id" in long_key["error"]
    assert long_key["truncated"]["key_sha256"] == hashlib.sha256(huge_key).hexdigest()


@pytest.mark.slow
def test_idle_account_state_is_forgotten_and_stays_forgotten_after_a_restart(
    settings, bootstrap, tmp_path
):
    day_min = 24 * 60
    topic = settings.topics.transactions
    old = [wire(f"old{i}", "sleeper", "payee", i, 100.0 + i) for i in range(5)]
    # 40 days later, enough traffic to move the watermark past the 32-day TTL
    busy = [wire(f"b{i}", f"busy{i % 7}", "shop", 40 * day_min + i, 50.0) for i in range(200)]
    faults = {"VIGIL_STATE_TTL_DAYS": "32", "VIGIL_STATE_SWEEP_S": "0.5", "VIGIL_BATCH_SIZE": "50"}
    publish(bootstrap, topic, [(t["account_id"], json.dumps(t).encode()) for t in old + busy])
    with _worker(settings, tmp_path, "first", faults) as worker:
        got = collect(bootstrap, settings.topics.scores, lambda s: len(s) >= 205,
                      alive=lambda: worker.running)  # fmt: skip
        assert len(got) == 205, _log(tmp_path, "first")

        # sweeps run between batches: keep batches coming until both idle keys are gone
        def forgotten() -> int:
            text = (tmp_path / "first.log").read_text(errors="replace")
            return sum(int(n) for n in re.findall(r"forgot (\d+) idle account states", text))

        for i in range(120):
            if forgotten() >= 2:
                break
            t = wire(f"k{i}", "busy0", "shop", 40 * day_min + 300 + i, 50.0)
            publish(bootstrap, topic, [("busy0", json.dumps(t).encode())])
            time.sleep(0.5)
        assert forgotten() == 2, _log(tmp_path, "first")  # the sleeper and its payee
    back = wire("back", "sleeper", "payee", 41 * day_min, 7.0)
    publish(bootstrap, topic, [("sleeper", json.dumps(back).encode())])
    with _worker(settings, tmp_path, "second", faults) as worker:  # recovers the changelog
        got = collect(
            bootstrap,
            settings.topics.scores,
            lambda s: any(r["tx_id"] == "back" for r in s),
            alive=lambda: worker.running,
        )
    score = next(s for s in got if s["tx_id"] == "back")
    # forgotten: the account starts again, as if "back" were its first payment
    assert own(FEATURE_SPEC.as_dict(score["features"])) == pytest.approx(
        features_by_tx([back])["back"]
    )
