"""Vigil's faust table store: faust's in-memory store, kept on local disk too, so that a
restarted worker reads only the tail of its table's changelog instead of all of it.

faust's memory store rebuilds a table after every start by replaying its changelog from
the beginning. On Apache Kafka the changelog is compacted (about one record per key), but
the embedded broker never compacts, so replay grew with every batch a worker ever wrote: 5 s
of a SIGKILLed risk worker's 10 s restart after 50,000 transactions. faust's own answer,
its RocksDB store, serialises on every read and write of the hot path; this store keeps
faust's dict for every read and write and adds a file beside it.

- One SQLite file per changelog partition, under the app's table directory, named after
  the changelog (so after the app and its namespace): the rows as they are on the
  changelog (raw key, raw value, both as blobs), the offset of the newest changelog record
  they include, and the changelog topic's id.
- The worker hands the store what it wrote to the changelog once the broker has
  acknowledged it, with the offsets from the delivery reports (:meth:`Store.persist`);
  records read back during recovery go the same way. The store merges them (the newest
  value of a key wins) and hands them to a writer thread at most once a second, which
  writes them in order, one transaction per file: a file always holds a state the
  changelog passed through, and its offset says where that state ends.
- When faust assigns a partition, its file is loaded into memory and faust is told its
  offset (``persisted_offset``): recovery reads the changelog from there on.
- A file made for another changelog is recognised by the topic id and discarded (the
  embedded broker keeps no topic across restarts, and a recreated topic starts its offsets
  again). A missing, unreadable or failed file costs time only: the partition is recovered
  from the changelog's start, as with the memory store.
- Two processes may share the directory (workers of one group on one host): a file is
  written in transactions and only ever read whole, and an offset lower than the rows it
  sits beside only makes recovery read more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from itertools import accumulate
from pathlib import Path
from typing import Any

from faust.stores import memory
from faust.types import TP, EventT
from mode import Service

from vigil.apps.broker import topic_id

__all__ = ["SCHEME", "PartitionFile", "Store"]

log = logging.getLogger("vigil.store")
SCHEME = "vigil"  # store="vigil://" (registered under the faust.stores entry point)
FORMAT = "vigil-table-2"  # 1: keys and values in hex
# rows go to the files about this often: a file lags the changelog by about that much (a
# restart reads that much more of it)
FLUSH_EVERY_S = 1.0
# Rows go in as few parameters per statement: the chunk's keys as one blob, its values as
# another, and where each starts and ends in them as JSON; SQLite cuts them apart with the
# GIL released. ``executemany`` binds row by row, taking the GIL back for each: beside a
# busy event loop it took 3 s for 4,000 rows. And whatever this thread does while it holds
# the GIL (hex and JSON text of every value, as version 1 did: 10 MB/s at 5,000 tx/s) the
# event loop waits for: the risk bench's p99 at 5,000 tx/s was 3x that of a worker without
# the files; joining the blobs and the spans are a few C calls per chunk.
CHUNK_ROWS = 500  # rows per statement: the Python part between two GIL releases stays short
UPSERT = (
    "INSERT OR REPLACE INTO state (key, value) "
    "SELECT substr(?1, j.value ->> 0, j.value ->> 1), substr(?2, j.value ->> 2, j.value ->> 3) "
    "FROM json_each(?3) AS j"
)
DELETE = (
    "DELETE FROM state WHERE key IN "
    "(SELECT substr(?1, j.value ->> 0, j.value ->> 1) FROM json_each(?2) AS j)"
)

Rows = Mapping[bytes, bytes | None]  # raw key -> raw value, None: the key was deleted


def _joined(parts: list[bytes]) -> tuple[bytes, tuple[list[int], list[int]]]:
    """``parts`` as one blob, with where each starts in it (from 1, as SQL's ``substr``)
    and its length."""
    lengths = [len(p) for p in parts]
    return b"".join(parts), (list(accumulate(lengths[:-1], initial=1)), lengths)


class PartitionFile:
    """One changelog partition's rows, and the offset of the newest changelog record they
    include, in a SQLite file. Used from one thread (the store's writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0)
            # WAL: a reader never blocks the writer; NORMAL: a killed process loses no
            # committed transaction (a power cut may lose the newest: recovery reads more)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS state (key BLOB PRIMARY KEY, value BLOB NOT NULL)"
                " WITHOUT ROWID"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            self._conn = conn
        return self._conn

    def read(self, topic: str) -> tuple[int | None, list[tuple[bytes, bytes]]]:
        """(offset, rows) if the file holds rows of the changelog whose id is ``topic``;
        (None, []) otherwise, and a file of another changelog is removed."""
        if not self.path.exists():
            return None, []
        conn = self._open()
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        if not meta:  # created, never written
            self.remove()
            return None, []
        if meta.get("format") != FORMAT or meta.get("topic_id") != topic:
            log.warning(
                "%s was written in format %s for changelog id %s (now %s for %s): removed; "
                "the partition is recovered from the changelog",
                self.path,
                meta.get("format"),
                meta.get("topic_id"),
                FORMAT,
                topic,
            )
            self.remove()
            return None, []
        rows = conn.execute("SELECT key, value FROM state").fetchall()
        return int(meta["offset"]), rows

    def write(self, rows: Rows, offset: int, topic: str) -> None:
        """Apply ``rows`` and record ``offset``, in one transaction."""
        conn = self._open()
        items = list(rows.items())
        with conn:
            for i in range(0, len(items), CHUNK_ROWS):
                chunk = items[i : i + CHUNK_ROWS]
                kept = [(k, v) for k, v in chunk if v is not None]
                gone = [k for k, v in chunk if v is None]
                if kept:
                    keys, key_spans = _joined([k for k, _v in kept])
                    values, value_spans = _joined([v for _k, v in kept])
                    spans = json.dumps([*zip(*key_spans, *value_spans, strict=True)])
                    conn.execute(UPSERT, (keys, values, spans))
                if gone:
                    keys, key_spans = _joined(gone)
                    conn.execute(DELETE, (keys, json.dumps([*zip(*key_spans, strict=True)])))
            conn.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("format", FORMAT), ("topic_id", topic), ("offset", str(offset))],
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def remove(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()


class _Writer(threading.Thread):
    """Applies the store's hand-overs in order, one transaction per partition file,
    merging whatever queued up meanwhile (the newest value of a key wins, and the newest
    offset)."""

    def __init__(self, directory: Path, name: str) -> None:
        super().__init__(name=f"store-{name}", daemon=True)
        self.directory, self.name = directory, name
        self.jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.files: dict[int, PartitionFile] = {}
        self.failed: set[int] = set()  # partitions whose file failed: not written again
        self._busy = threading.Event()  # set from a job's arrival until it is written

    def idle(self) -> bool:
        """Nothing queued or being written."""
        return not self._busy.is_set() and self.jobs.empty()

    def file(self, partition: int) -> PartitionFile:
        if partition not in self.files:
            path = self.directory / f"{self.name}-{partition}.sqlite3"
            self.files[partition] = PartitionFile(path)
        return self.files[partition]

    def write(self, parts: Mapping[int, tuple[Rows, int]], topic: str) -> None:
        """``{partition: (rows, offset)}``, written in the order handed over."""
        self.jobs.put(("write", parts, topic))

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Runs ``fn`` in this thread after every write queued before it."""
        done: Future[Any] = Future()
        self.jobs.put(("call", fn, done))
        return done

    def close(self, timeout_s: float = 10.0) -> None:
        self.jobs.put(None)
        self.join(timeout_s)

    def run(self) -> None:
        pending: dict[int, tuple[dict[bytes, bytes | None], int, str]] = {}
        while True:
            self._busy.clear()
            jobs = [self.jobs.get()]
            self._busy.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    jobs.append(self.jobs.get_nowait())
            for job in jobs:
                if job is None:  # close()
                    self._flush(pending)
                    for f in self.files.values():
                        f.close()
                    return
                if job[0] == "write":
                    _, parts, topic = job
                    for partition, (rows, offset) in parts.items():
                        held = pending.setdefault(partition, ({}, offset, topic))[0]
                        held.update(rows)
                        pending[partition] = (held, offset, topic)
                else:  # a call, after every write queued before it
                    self._flush(pending)
                    _, fn, done = job
                    try:
                        done.set_result(fn())
                    except BaseException as exc:  # the caller's to handle
                        done.set_exception(exc)
            self._flush(pending)

    def _flush(self, pending: dict[int, tuple[dict[bytes, bytes | None], int, str]]) -> None:
        for partition, (rows, offset, topic) in pending.items():
            if partition in self.failed:
                continue
            try:
                self.file(partition).write(rows, offset, topic)
            except Exception:
                # the file would miss these rows while later offsets moved past them:
                # removed, and left alone until the partition is loaded again
                log.exception(
                    "writing %s failed: removed; partition %d will be recovered from the "
                    "changelog after the next restart",
                    self.file(partition).path,
                    partition,
                )
                self.failed.add(partition)
                with contextlib.suppress(Exception):
                    self.file(partition).remove()
        pending.clear()

    def load(self, partitions: Iterable[int], topic: str) -> dict[int, tuple[int | None, list]]:
        """Each partition's (offset, rows), read in this thread; a failed file is reset."""
        out: dict[int, tuple[int | None, list]] = {}
        for partition in partitions:
            self.failed.discard(partition)
            f = self.file(partition)
            try:
                out[partition] = f.read(topic)
            except sqlite3.Error as exc:
                log.warning("%s unreadable (%s): removed", f.path, exc)
                f.remove()
                out[partition] = (None, [])
        return out


class Store(memory.Store):
    """faust's memory store, each changelog partition also kept in a local file (module
    notes). Reads and writes go to memory; the worker calls :meth:`persist` with what the
    broker has acknowledged on the changelog."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # rows persisted since the last hand-over to the writer: partition -> (rows, offset)
        self._pending: dict[int, tuple[dict[bytes, bytes | None], int]] = {}
        self._handed_at = 0.0  # at most one hand-over per FLUSH_EVERY_S; the timer, the rest
        self._offsets: dict[int, int] = {}  # partition -> its file's changelog offset
        self._topic_id: str | None = None
        self._writer: _Writer | None = None
        self._disabled = False

    @property
    def _changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _start_writer(self) -> _Writer:
        if self._writer is None:
            # named by the changelog, which names the app (faust's table directory does not)
            self._writer = _Writer(Path(self.app.conf.tabledir), self._changelog)
            self._writer.start()
        return self._writer

    def persisted_offset(self, tp: TP) -> int | None:
        """The offset of the newest changelog record the partition's file includes."""
        return self._offsets.get(tp.partition) if tp.topic == self._changelog else None

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """faust calls this for changelog records it sent itself; the value is in memory
        but not in the file, so the file's offset must not move: only :meth:`persist`
        moves it, with the rows."""

    def persist(self, rows: Mapping[int, Rows], offsets: Mapping[int, int]) -> None:
        """What was written to the changelog and acknowledged: per partition, the rows (the
        table's keys, which are the records' raw keys, and the raw values, None for a
        tombstone) and the offset of that partition's newest record among them."""
        where = self._key_partition
        for partition, part in rows.items():
            for key, value in part.items():
                if value is None:
                    where.pop(key, None)
                else:
                    where[key] = partition
            self._keep(partition, part, offsets[partition])

    def _keep(self, partition: int, rows: Rows, offset: int) -> None:
        """Rows for the next hand-over (merged here, in the event loop's thread: a writer
        thread woken for every micro-batch took the GIL from the loop each time, and cost
        the worker some 35 ms of p99 at 5,000 tx/s)."""
        if self._writer is None or self._topic_id is None:
            return
        held = self._pending.get(partition)
        if held is None:
            self._pending[partition] = (dict(rows), offset)
        else:
            held[0].update(rows)
            self._pending[partition] = (held[0], offset)
        if time.monotonic() - self._handed_at >= FLUSH_EVERY_S:
            self._hand_over()

    @Service.timer(FLUSH_EVERY_S)
    async def _hand_over_timer(self) -> None:
        self._hand_over()

    def _hand_over(self, force: bool = False) -> None:
        """What was kept since the last hand-over, to the writer thread: unless ``force``,
        only once it has written the last one (meanwhile rows keep merging here, so a slow
        disk costs memory for one set of rows, not a queue of them)."""
        writer = self._writer
        if not self._pending or writer is None or self._topic_id is None:
            return
        if force or writer.idle():
            writer.write(self._pending, self._topic_id)
            self._handed_at = time.monotonic()
            self._pending = {}

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Recovery's records: into memory, and on to the files with their offsets."""
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        parts: dict[int, tuple[dict[bytes, bytes | None], int]] = {}
        for event in events:
            msg = event.message
            rows, newest = parts.get(msg.partition, ({}, -1))
            rows[msg.key] = msg.value
            parts[msg.partition] = (rows, max(newest, msg.offset))
        for partition, (rows, newest) in parts.items():
            self._keep(partition, rows, newest)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """Newly assigned partitions: their files into memory, their offsets to faust."""
        changelog = self._changelog
        for tp in revoked:
            if tp.topic == changelog:
                self._offsets.pop(tp.partition, None)
        partitions = sorted(tp.partition for tp in newly_assigned if tp.topic == changelog)
        if not partitions or not await self._check_topic(changelog):
            return
        writer = self._start_writer()
        self._hand_over(force=True)  # the files hold everything persisted before they are read
        loaded = await asyncio.wrap_future(
            writer.call(lambda: writer.load(partitions, self._topic_id or ""))
        )
        for partition, (offset, rows) in loaded.items():
            self._drop(partition)
            for raw_key, raw_value in rows:
                key = self._decode_key(raw_key)
                self.data[key] = self._decode_value(raw_value)
                self._key_partition[key] = partition
            if offset is None:
                self._offsets.pop(partition, None)
            else:
                self._offsets[partition] = offset
                log.info(
                    "%s partition %d: %d keys from %s, changelog read from offset %d on",
                    self.table_name,
                    partition,
                    len(rows),
                    writer.file(partition).path,
                    offset + 1,
                )

    async def _check_topic(self, changelog: str) -> bool:
        """Learns the changelog's topic id once; False: the files are not used."""
        if self._topic_id is not None:
            return True
        if self._disabled:
            return False
        bootstrap = getattr(self.app, "bootstrap", None)
        try:
            found = await asyncio.to_thread(topic_id, bootstrap, changelog) if bootstrap else None
        except Exception as exc:  # the broker's to explain; the store works without files
            log.warning("could not read the topic id of %s: %s", changelog, exc)
            found = None
        if found is None:
            self._disabled = True
            log.warning(
                "no topic id for %s: table state is not kept on disk, and every restart "
                "recovers it from the changelog's start",
                changelog,
            )
            return False
        self._topic_id = found
        return True

    def _drop(self, partition: int) -> None:
        """Forgets the keys held in memory for ``partition`` (it is about to be loaded)."""
        stale = [k for k, p in self._key_partition.items() if p == partition]
        for key in stale:
            self.data.pop(key, None)
            del self._key_partition[key]

    def reset_state(self) -> None:
        """Removes the files (faust calls this to start a table from scratch)."""
        directory = Path(self.app.conf.tabledir)
        for path in directory.glob(f"{self._changelog}-*.sqlite3*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._offsets.clear()

    async def on_stop(self) -> None:
        """Writes what has queued up, then closes the files."""
        self._hand_over(force=True)
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.close)
