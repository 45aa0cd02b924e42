"""The table store's local files (apps/store.py): what a restarted risk worker loads
instead of replaying its whole changelog. The files are SQLite, read back here through
Python's own sqlite3 as well as through the store; the worker-level proof (a killed and
restarted worker's features equal an uninterrupted run's) is in test_risk_worker.py."""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import faust
import pytest
from faust.stores import base, memory
from faust.tables.recovery import Recovery

from vigil.apps import store
from vigil.apps.broker import topic_id
from vigil.apps.store import PartitionFile, _Writer

# upstream (class, method) -> its parameters, as the store was written against them
# (faust-streaming 0.15.3): a change upstream fails here first
OVERRIDDEN = {
    (memory.Store, "__post_init__"): ["self"],
    (memory.Store, "persisted_offset"): ["self", "tp"],
    (base.Store, "set_persisted_offset"): ["self", "tp", "offset"],
    (memory.Store, "apply_changelog_batch"): ["self", "batch", "to_key", "to_value"],
    (base.Store, "on_rebalance"): [
        "self",
        "assigned",
        "revoked",
        "newly_assigned",
        "generation_id",
    ],
    (memory.Store, "reset_state"): ["self"],
    (base.Store, "on_stop"): ["self"],
    (faust.App, "on_first_start"): ["self"],  # VigilApp.at_start (apps/transport.py)
}


@pytest.mark.parametrize("where", OVERRIDDEN, ids=lambda w: f"{w[0].__name__}.{w[1]}")
def test_the_upstream_methods_the_store_extends_keep_their_signature(where):
    cls, name = where
    assert list(inspect.signature(getattr(cls, name)).parameters) == OVERRIDDEN[where]


def test_faust_finds_the_store_by_scheme_and_recovers_from_its_offsets():
    assert faust.stores.by_url(f"{store.SCHEME}://") is store.Store
    # recovery starts a changelog partition at the store's offset, and the memory store
    # keeps the key -> partition map the store maintains
    assert "table.persisted_offset(tp)" in inspect.getsource(Recovery._add)
    assert "self._key_partition[key] = event.message.partition" in inspect.getsource(memory.Store)


def _rows(path: Path) -> dict[bytes, bytes]:
    """The rows as any SQLite client reads them: keys and values as blobs."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key, value FROM state").fetchall()
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in rows)
    return dict(rows)


def test_a_file_keeps_the_newest_value_of_each_key_deletes_tombstones_and_the_offset(tmp_path):
    f = PartitionFile(tmp_path / "t-0.sqlite3")
    f.write({b"a": b"1", b"b": b"2", b"\x00\xff": b"5"}, 10, "topic-x")
    f.write({b"a": b"3", b"b": None, b"c": b"4", b"\x00\xff": None}, 17, "topic-x")
    f.close()
    assert _rows(f.path) == {b"a": b"3", b"c": b"4"}  # independent reader
    assert PartitionFile(f.path).read("topic-x") == (17, [(b"a", b"3"), (b"c", b"4")])


def test_a_file_of_another_changelog_is_removed_not_loaded(tmp_path):
    f = PartitionFile(tmp_path / "t-0.sqlite3")
    f.write({b"a": b"1"}, 5, "old-topic-id")
    f.close()
    assert PartitionFile(f.path).read("new-topic-id") == (None, [])
    assert not f.path.exists()


def test_a_file_of_the_hex_format_before_is_removed_not_loaded(tmp_path):
    path = tmp_path / "t-0.sqlite3"
    with sqlite3.connect(path) as conn:  # as version 1 wrote it: keys and values in hex
        conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO state VALUES (?, ?)", (b"a".hex(), b"1".hex()))
        meta = [("format", "vigil-table-1"), ("topic_id", "id"), ("offset", "4")]
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta)
    conn.close()
    assert PartitionFile(path).read("id") == (None, [])
    assert not path.exists()


def test_no_file_and_an_empty_file_mean_recover_from_the_changelog(tmp_path):
    assert PartitionFile(tmp_path / "none.sqlite3").read("t") == (None, [])
    (tmp_path / "zero.sqlite3").write_bytes(b"")
    assert PartitionFile(tmp_path / "zero.sqlite3").read("t") == (None, [])
    unwritten = PartitionFile(tmp_path / "unwritten.sqlite3")
    unwritten.write({}, 0, "t")  # creates the tables...
    with sqlite3.connect(unwritten.path) as conn:
        conn.execute("DELETE FROM meta")  # ...as a process killed before its first commit
    unwritten.close()
    assert PartitionFile(unwritten.path).read("t") == (None, [])


def test_any_bytes_and_more_rows_than_one_statement_takes_come_back_as_written(tmp_path):
    f = PartitionFile(tmp_path / "t-0.sqlite3")
    rows = {bytes([i % 256, i // 256]) + b"\x00": bytes(range(i % 256)) for i in range(2500)}
    f.write(rows, 1, "id")
    f.write({k: None for k in list(rows)[:1200]}, 2, "id")  # tombstones across chunks
    f.close()
    want = dict(list(rows.items())[1200:])
    assert _rows(f.path) == want
    offset, got = PartitionFile(f.path).read("id")
    assert offset == 2 and dict(got) == want


def test_the_writer_applies_writes_in_order_and_a_corrupt_file_is_reset(tmp_path):
    writer = _Writer(tmp_path, "t")
    writer.start()
    try:
        for i in range(200):  # queued faster than written: coalesced, newest wins
            writer.write({i % 2: ({b"k%d" % (i % 7): b"v%d" % i}, i)}, "id")
        loaded = writer.call(lambda: writer.load([0, 1], "id")).result(30)
        assert loaded[0][0] == 198 and loaded[1][0] == 199
        want = {p: {} for p in (0, 1)}
        for i in range(200):
            want[i % 2][b"k%d" % (i % 7)] = b"v%d" % i
        assert {p: dict(rows) for p, (_o, rows) in loaded.items()} == want

        garbage = tmp_path / "t-2.sqlite3"
        garbage.write_bytes(b"not a database" * 100)
        assert writer.call(lambda: writer.load([2], "id")).result(30) == {2: (None, [])}
        assert not garbage.exists()
        writer.write({2: ({b"x": b"y"}, 3)}, "id")  # and it is written again from scratch
        assert writer.call(lambda: writer.load([2], "id")).result(30) == {2: (3, [(b"x", b"y")])}
    finally:
        writer.close()


def test_a_failed_write_removes_the_file_and_stops_writing_it(tmp_path):
    writer = _Writer(tmp_path, "t")
    writer.start()
    try:
        writer.write({0: ({b"a": b"1"}, 1)}, "id")
        writer.call(lambda: None).result(30)
        # a value that is not bytes (the rows are bytes): the transaction fails
        writer.write({0: ({b"b": object()}, 2)}, "id")  # type: ignore[dict-item]
        writer.write({0: ({b"c": b"3"}, 3)}, "id")  # must not land with offset 3 and "b" missing
        writer.call(lambda: None).result(30)
        assert not (tmp_path / "t-0.sqlite3").exists()
        assert writer.call(lambda: writer.load([0], "id")).result(30) == {0: (None, [])}
    finally:
        writer.close()


@pytest.mark.integration
def test_the_broker_names_each_topic_by_its_own_id(bootstrap, namespace):
    from vigil.apps.broker import ensure_topics

    ensure_topics(bootstrap, {f"{namespace}-a": 1, f"{namespace}-b": 1})
    a, b = topic_id(bootstrap, f"{namespace}-a"), topic_id(bootstrap, f"{namespace}-b")
    assert a and b and a != b
    assert topic_id(bootstrap, f"{namespace}-a") == a


def test_the_writer_says_when_it_is_idle_so_a_slow_disk_queues_no_more_than_one_set(
    tmp_path, monkeypatch
):
    import threading

    release = threading.Event()
    real_write = PartitionFile.write

    def slow_write(self, rows, offset, topic):  # a disk that takes its time
        release.wait(30)
        real_write(self, rows, offset, topic)

    monkeypatch.setattr(PartitionFile, "write", slow_write)
    writer = _Writer(tmp_path, "t")
    writer.start()
    try:
        assert writer.idle()
        writer.write({0: ({b"a": b"1"}, 1)}, "id")
        for _ in range(200):  # until the writer has taken it (and is stuck writing)
            if writer.jobs.empty():
                break
            release.wait(0.01)
        assert not writer.idle()  # the store keeps merging instead of queueing more
        release.set()
        assert writer.call(lambda: writer.load([0], "id")).result(30) == {0: (1, [(b"a", b"1")])}
        for _ in range(200):
            if writer.idle():
                break
            release.wait(0.01)
        assert writer.idle()
    finally:
        release.set()
        writer.close()
