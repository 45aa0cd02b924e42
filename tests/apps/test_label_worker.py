"""Labels through the risk worker on a real broker: a label folds into its counterparty's
and its account's state, is seen only by transactions after the hour it became known
(however early the stream delivers it), and a restarted worker keeps both facts."""

from __future__ import annotations

import json

import pytest

from tests.apps.helpers import collect, wait_for_log
from tests.apps.test_risk_worker import _log, _worker
from tests.reference import T0, wire
from vigil.apps.clients import publish
from vigil.streams.features.library import FEATURE_SPEC, HOUR_MS

pytestmark = pytest.mark.integration


def _card(tx_id: str, payer: str, hours: float) -> dict:
    tx = wire(tx_id, payer, "shop-1", 0, 20.0)
    tx["ts_ms"] = T0 + int(hours * HOUR_MS)
    tx["channel"] = "card"
    return tx


def _label(tx_id: str, payer: str, known_hours: float) -> dict:
    return {
        "tx_id": tx_id,
        "label": 1,
        "typology": "card_fraud",
        "ts_ms": T0 + int(known_hours * HOUR_MS),
        "account_id": payer,
        "counterparty_id": "shop-1",
    }


def _features(bootstrap, settings, tx_id, worker):
    got = collect(
        bootstrap,
        settings.topics.scores,
        lambda s: any(r.get("tx_id") == tx_id for r in s),
        alive=lambda: worker.running,
    )
    record = next(r for r in got if r.get("tx_id") == tx_id)
    return FEATURE_SPEC.as_dict(record["features"])


def test_a_label_reaches_both_sides_only_once_known_and_across_a_restart(
    settings, bootstrap, tmp_path
):
    topic, labels = settings.topics.transactions, settings.topics.labels

    def send(*txs):
        publish(bootstrap, topic, [(t["account_id"], json.dumps(t).encode()) for t in txs])

    def tell(*docs):
        publish(bootstrap, labels, [(d["tx_id"], json.dumps(d).encode()) for d in docs])

    send(_card("a", "victim", 0))
    # a's fraud becomes known 2 h on; another fraud at the shop becomes known in 10 days,
    # but the stream delivers both now
    tell(_label("a", "victim", 2), _label("later", "other", 10 * 24))
    with _worker(settings, tmp_path, "first") as worker:
        _features(bootstrap, settings, "a", worker)
        # 2 labels x (account + counterparty) folded
        folded = wait_for_log(tmp_path / "first.log", r"labels_folded=4\b", lambda: worker.running)
        assert folded, _log(tmp_path, "first")
        send(_card("b", "someone", 3), _card("c", "victim", 3))
        b = _features(bootstrap, settings, "b", worker)
        c = _features(bootstrap, settings, "c", worker)
    assert (b["payee_frauds_24h"], b["payee_frauds_30d"], b["payee_fraud_risk_30d"]) == (1, 1, 1)
    assert b["account_frauds_30d"] == 0  # "someone" has no label
    assert c["account_frauds_7d"] == 1 and c["payee_frauds_30d"] == 1

    send(_card("d", "third", 4), _card("e", "fourth", 10 * 24 + 1))
    with _worker(settings, tmp_path, "second") as worker:  # state from the changelog / files
        d = _features(bootstrap, settings, "d", worker)
        e = _features(bootstrap, settings, "e", worker)
    assert d["payee_frauds_30d"] == 1  # the future label is still not known at hour 4
    assert e["payee_frauds_30d"] == 2 and e["payee_frauds_24h"] == 1  # now it is
    assert e["payee_frauds_7d"] == 1  # a's label is 10 days old by then
    assert d["payee_count_30d"] >= 1  # the shop's earlier payments reached its state
