"""A user's history from files: the warm-up days fill the state and are not kept."""

import json

import pytest

from vigil.errors import DataError
from vigil.models.risk.data import history_from_files
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    where = tmp_path_factory.mktemp("history")
    gen = TransactionGenerator(GeneratorConfig(seed=3, accounts=60, malformed_rate=0.01)).take(900)
    tx, labels = where / "tx.jsonl", where / "labels.jsonl"
    tx.write_bytes(b"".join(g.value + b"\n" for g in gen))
    records = [g.label_record() for g in gen if g.tx is not None]
    labels.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(tx), str(labels), [g.tx for g in gen if g.tx is not None]


def test_the_warm_up_days_are_featurised_and_not_kept(files):
    tx, labels, txs = files
    everything = history_from_files(tx, labels)
    assert sorted(everything.tx_ids) == sorted(t["tx_id"] for t in txs)
    begin = min(t["ts_ms"] for t in txs) + 2 * DAY_MS
    kept = history_from_files(tx, labels, warmup_days=2)
    assert sorted(kept.tx_ids) == sorted(t["tx_id"] for t in txs if t["ts_ms"] >= begin)
    # the same rows as without a warm-up: the state before them was filled all the same
    rows = {t: i for i, t in enumerate(everything.tx_ids)}
    for i, t in enumerate(kept.tx_ids):
        assert kept.features[i].tobytes() == everything.features[rows[t]].tobytes()
    with pytest.raises(DataError, match="no labelled transaction after the 30 warm-up days"):
        history_from_files(tx, labels, warmup_days=30)
